# nn.pxi: bindings of loss.c, optim.c and mask.c for minillm.functional, minillm.optim and
# minillm.nn.utils. No autograd here: these take and return plain Tensors.

cdef Tensor _nn_f32(object t, str what):
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}: expected a minillm Tensor, got {type(t).__name__}")
    cdef Tensor x = <Tensor>t
    if x.dtype_ != C.MLL_F32:
        raise TypeError(f"{what}: expected a float32 tensor, got {t.dtype}")
    return x


cdef Tensor _nn_inplace(object t, str what):
    """A float32 tensor updated in place: it must be contiguous (parameters and states are)."""
    cdef Tensor x = _nn_f32(t, what)
    if not is_contig(x):
        raise ValueError(f"{what}: tensor of shape {t.shape} must be contiguous to be updated in place")
    return x


cdef Tensor _nn_index64(object t, str what):
    """Class/row ids as a contiguous int64 tensor (int32 is widened)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}: expected a minillm Tensor of int64 ids, got {type(t).__name__}")
    cdef Tensor x = <Tensor>t
    if x.dtype_ == C.MLL_I64:
        return as_contig(x)
    if x.dtype_ == C.MLL_I32:
        return as_contig(<Tensor>(t.astype("int64")))
    raise TypeError(f"{what}: expected int64 or int32 ids, got {t.dtype}")


def all_finite(t):
    """True if no element of the float32 tensor t is NaN or inf."""
    cdef Tensor x = as_contig(_nn_f32(t, "all_finite"))
    cdef int r
    cdef float *p = fptr(x)
    cdef int64_t n = numel(x)
    with nogil:
        r = C.mll_all_finite(p, n)
    return r != 0


# ------------------------------------------------------------------------ loss.c
def cross_entropy(logits, targets, int64_t ignore_index=-100, float label_smoothing=0.0,
                  str reduction="mean"):
    """Fused log-softmax + NLL. logits (N, V) float32 (rows may be strided), targets (N)
    int64/int32. Returns (loss, lse (N), count): loss is (N) for reduction 'none', else
    0-d; count is the number of rows whose target is not ignore_index."""
    cdef Tensor x = _nn_f32(logits, "cross_entropy")
    if x.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, V), got shape {logits.shape}")
    if x.strides_[1] != 1:
        x = as_contig(x)
    cdef Tensor t = _nn_index64(targets, "cross_entropy")
    cdef int64_t N = x.shape_[0], V = x.shape_[1], ld = x.strides_[0]
    if t.ndim != 1 or t.shape_[0] != N:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape ({N},), "
                         f"got {targets.shape}")
    if V == 0:
        raise ValueError("cross_entropy: logits have 0 classes")
    cdef Tensor losses = new_tensor((N,), C.MLL_F32)
    cdef Tensor lse = new_tensor((N,), C.MLL_F32)
    cdef const float *xp = fptr(x)
    cdef const int64_t *tp = <const int64_t *>t.ptr
    cdef float *lp = fptr(losses)
    cdef float *sp = fptr(lse)
    cdef int64_t bad
    with nogil:
        bad = C.mll_cross_entropy_forward(xp, ld, tp, lp, sp, N, V, ignore_index, label_smoothing)
    if bad >= 0:
        raise IndexError(f"cross_entropy: target {tp[bad]} at row {bad} is outside [0, {V}) "
                         f"(and is not ignore_index={ignore_index})")
    cdef int64_t i, count = 0
    cdef double total = 0.0
    for i in range(N):
        if tp[i] != ignore_index:
            count += 1
        total += lp[i]
    if reduction == "none":
        return losses, lse, count
    cdef Tensor out = new_tensor((), C.MLL_F32)
    if reduction == "sum":
        fptr(out)[0] = <float>total
    elif reduction == "mean":
        fptr(out)[0] = <float>(total / count) if count > 0 else float("nan")
    else:
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}")
    return out, lse, count


def cross_entropy_backward(logits, targets, lse, dloss, str reduction, int64_t count,
                           int64_t ignore_index=-100, float label_smoothing=0.0):
    """d loss / d logits (N, V) for cross_entropy's outputs; dloss is the upstream
    gradient: (N) or any shape of N elements for 'none', 0-d for 'mean' and 'sum'."""
    cdef Tensor x = _nn_f32(logits, "cross_entropy_backward")
    if x.strides_[1] != 1:
        x = as_contig(x)
    cdef Tensor t = _nn_index64(targets, "cross_entropy_backward")
    cdef Tensor s = as_contig(_nn_f32(lse, "cross_entropy_backward"))
    cdef Tensor d = as_contig(_nn_f32(dloss, "cross_entropy_backward"))
    cdef int64_t N = x.shape_[0], V = x.shape_[1], ld = x.strides_[0]
    cdef const float *dp = NULL
    cdef float scale
    if reduction == "none":
        if numel(d) != N:
            raise ValueError(f"cross_entropy_backward: gradient of shape {dloss.shape} for {N} rows")
        dp = fptr(d)
        scale = 1.0
    else:
        if numel(d) != 1:
            raise ValueError(f"cross_entropy_backward: expected a scalar gradient, got {dloss.shape}")
        scale = fptr(d)[0]
        if reduction == "mean":
            scale = scale / count if count > 0 else float("nan")
    cdef Tensor out = new_tensor((N, V), C.MLL_F32)
    cdef const float *xp = fptr(x)
    cdef const int64_t *tp = <const int64_t *>t.ptr
    cdef const float *sp = fptr(s)
    cdef float *op = fptr(out)
    with nogil:
        C.mll_cross_entropy_backward(xp, ld, tp, sp, dp, scale, op, N, V, ignore_index, label_smoothing)
    return out


# ------------------------------------------------------------------------ mask.c
def dropout_mask(shape, float p, uint64_t seed, uint64_t offset):
    """A float32 tensor of `shape`: 1/(1-p) with probability 1-p, else 0, drawn from the
    Philox stream (seed, offset). 0 <= p < 1."""
    if not (0.0 <= p < 1.0):
        raise ValueError(f"dropout_mask: p must be in [0, 1), got {p}")
    cdef Tensor m = new_tensor(tuple(shape), C.MLL_F32)
    cdef float *mp = fptr(m)
    cdef int64_t n = numel(m)
    with nogil:
        C.mll_dropout_mask(seed, offset, mp, n, p)
    return m


def causal_fill_(x, float value):
    """In place on contiguous float32 x (..., T, S): x[..., i, j] = value for j > i + S - T."""
    cdef Tensor t = _nn_inplace(x, "causal_fill_")
    if t.ndim < 2:
        raise ValueError(f"causal_fill_: expected (..., T, S), got shape {x.shape}")
    cdef int64_t T = t.shape_[t.ndim - 2], S = t.shape_[t.ndim - 1]
    cdef int64_t n = numel(t)
    cdef int64_t batch = n // (T * S) if T * S > 0 else 0
    cdef float *p = fptr(t)
    with nogil:
        C.mll_causal_fill(p, batch, T, S, value)
    return x


def onehot_rows(idx, val, int64_t cols):
    """(R, cols) float32 zeros with out[r, idx[r]] = val[r]; idx (R) int64 in [0, cols),
    val (R) float32."""
    cdef Tensor i = _nn_index64(idx, "onehot_rows")
    cdef Tensor v = as_contig(_nn_f32(val, "onehot_rows"))
    cdef int64_t R = numel(i), r
    if numel(v) != R:
        raise ValueError(f"onehot_rows: {R} ids but {numel(v)} values")
    cdef const int64_t *ip = <const int64_t *>i.ptr
    for r in range(R):
        if ip[r] < 0 or ip[r] >= cols:
            raise IndexError(f"onehot_rows: id {ip[r]} at row {r} is outside [0, {cols})")
    cdef Tensor out = new_tensor((R, cols), C.MLL_F32)
    cdef float *op = fptr(out)
    cdef const float *vp = fptr(v)
    with nogil:
        C.mll_onehot_rows(ip, vp, op, R, cols)
    return out


# ----------------------------------------------------------------------- optim.c
cdef inline void _nn_same_size(Tensor a, Tensor b, str what, object sa, object sb) except *:
    if numel(a) != numel(b):
        raise ValueError(f"{what}: shapes {sa} and {sb} differ")


def sgd_step_(param, grad, buf, float lr, float momentum=0.0, float dampening=0.0,
              float weight_decay=0.0, bint nesterov=False, bint first_step=True):
    """One fused SGD update, in place on param and buf (the momentum buffer, None when
    momentum is 0). All float32, same shape; param and buf contiguous."""
    cdef Tensor p = _nn_inplace(param, "sgd_step_")
    cdef Tensor g = as_contig(_nn_f32(grad, "sgd_step_"))
    _nn_same_size(p, g, "sgd_step_ param/grad", param.shape, grad.shape)
    cdef float *bp = NULL
    cdef Tensor b
    if buf is not None:
        b = _nn_inplace(buf, "sgd_step_")
        _nn_same_size(p, b, "sgd_step_ param/momentum buffer", param.shape, buf.shape)
        bp = fptr(b)
    elif momentum != 0.0:
        raise ValueError("sgd_step_: momentum != 0 needs a momentum buffer")
    cdef float *pp = fptr(p)
    cdef const float *gp = fptr(g)
    cdef int64_t n = numel(p)
    with nogil:
        C.mll_sgd_step(pp, gp, bp, n, lr, momentum, dampening, weight_decay, nesterov, first_step)


def adam_step_(param, grad, exp_avg, exp_avg_sq, float lr, float beta1, float beta2, float eps,
               float weight_decay, bint decoupled, int64_t step):
    """One fused Adam (decoupled False) or AdamW (decoupled True) update, in place on
    param, exp_avg and exp_avg_sq. All float32, same shape, contiguous; step >= 1."""
    if step < 1:
        raise ValueError(f"adam_step_: step must be >= 1, got {step}")
    cdef Tensor p = _nn_inplace(param, "adam_step_")
    cdef Tensor g = as_contig(_nn_f32(grad, "adam_step_"))
    cdef Tensor m = _nn_inplace(exp_avg, "adam_step_")
    cdef Tensor v = _nn_inplace(exp_avg_sq, "adam_step_")
    _nn_same_size(p, g, "adam_step_ param/grad", param.shape, grad.shape)
    _nn_same_size(p, m, "adam_step_ param/exp_avg", param.shape, exp_avg.shape)
    _nn_same_size(p, v, "adam_step_ param/exp_avg_sq", param.shape, exp_avg_sq.shape)
    cdef float *pp = fptr(p)
    cdef const float *gp = fptr(g)
    cdef float *mp = fptr(m)
    cdef float *vp = fptr(v)
    cdef int64_t n = numel(p)
    with nogil:
        C.mll_adam_step(pp, gp, mp, vp, n, lr, beta1, beta2, eps, weight_decay, decoupled, step)


def sumsq_list(tensors):
    """sum over the float32 tensors of sum(t^2), as a Python float: each tensor's sum is
    taken in fixed blocks and the tensors are added in list order (deterministic)."""
    cdef double total = 0.0, part
    cdef Tensor x
    cdef float *p
    cdef int64_t n
    for t in tensors:
        x = as_contig(_nn_f32(t, "sumsq_list"))
        p = fptr(x)
        n = numel(x)
        with nogil:
            part = C.mll_sumsq_all(p, n)
        total += part
    return total


def scale_list_(tensors, float alpha):
    """t *= alpha for each contiguous float32 tensor t, in place."""
    cdef Tensor x
    cdef float *p
    cdef int64_t n
    for t in tensors:
        x = _nn_inplace(t, "scale_list_")
        p = fptr(x)
        n = numel(x)
        with nogil:
            C.mll_scale(p, alpha, n)
