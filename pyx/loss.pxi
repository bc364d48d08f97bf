# loss.pxi: bindings of loss.c: fused cross-entropy (forward, backward, and the forward with
# its gradient in the same pass) for minillm.functional. No autograd here.


def cross_entropy(logits, targets, int64_t ignore_index=-100, float label_smoothing=0.0,
                  str reduction="mean"):
    """Fused log-softmax + NLL. logits (N, V) float32 (rows may be strided), targets (N)
    int64/int32. Returns (loss, lse (N), count): loss is (N) for reduction 'none', else
    0-d; count is the number of rows whose target is not ignore_index."""
    cdef Tensor x = as_f32(logits, "cross_entropy")
    if x.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, V), got shape {logits.shape}")
    if x.strides_[1] != 1:
        x = as_contig(x)
    cdef Tensor t = as_ids(targets, "cross_entropy")
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
    cdef Tensor x = as_f32(logits, "cross_entropy_backward")
    if x.ndim != 2:
        raise ValueError(f"cross_entropy_backward: logits must be (N, V), got shape {x.shape}")
    if x.strides_[1] != 1:
        x = as_contig(x)
    cdef int64_t N = x.shape_[0], V = x.shape_[1], ld = x.strides_[0]
    cdef Tensor t = as_ids(targets, "cross_entropy_backward")
    if t.shape != (N,):
        raise ValueError(f"cross_entropy_backward: logits {x.shape} need targets of shape ({N},), got {t.shape}")
    cdef Tensor s = as_f32_shaped(lse, "cross_entropy_backward lse", (N,))
    cdef Tensor d = as_contig(as_f32(dloss, "cross_entropy_backward"))
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


def count_targets(targets, int64_t ignore_index, int64_t num_classes=-1):
    """The number of entries of targets (int64/int32, any shape) that are not ignore_index.
    With num_classes >= 0, IndexError names the first other entry outside [0, num_classes)."""
    cdef Tensor t = as_ids(targets, "count_targets")
    cdef const int64_t *tp = <const int64_t *>t.ptr
    cdef int64_t i, n = numel(t), count = 0, bad = -1
    with nogil:
        for i in range(n):
            if tp[i] != ignore_index:
                count += 1
                if num_classes >= 0 and bad < 0 and (tp[i] < 0 or tp[i] >= num_classes):
                    bad = i
    if bad >= 0:
        raise IndexError(f"cross_entropy: target {tp[bad]} at row {bad} is outside [0, {num_classes}) "
                         f"(and is not ignore_index={ignore_index})")
    return count


def cross_entropy_grad(logits, targets, int64_t ignore_index=-100, float label_smoothing=0.0,
                       str reduction="mean", float grad_scale=1.0, dlogits=None):
    """Fused log-softmax + NLL with its gradient in the same pass. logits (N, V) float32
    (rows may be strided), targets (N) int64/int32. reduction 'mean' or 'sum'.
    Returns (loss 0-d float32, count, dlogits): count = rows whose target is not
    ignore_index; dlogits (N, V) = d (grad_scale * loss) / d logits, written into `dlogits`
    when given ((N, V) float32, contiguous; it may be `logits` itself, whose values are
    then replaced by the gradient), else into a new tensor. IndexError names a bad target."""
    cdef Tensor x = as_f32(logits, "cross_entropy")
    if x.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, V), got shape {logits.shape}")
    if x.strides_[1] != 1:
        x = as_contig(x)
    cdef Tensor t = as_ids(targets, "cross_entropy")
    cdef int64_t N = x.shape_[0], V = x.shape_[1], ld = x.strides_[0]
    if t.ndim != 1 or t.shape_[0] != N:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape ({N},), "
                         f"got {targets.shape}")
    if V == 0:
        raise ValueError("cross_entropy: logits have 0 classes")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"cross_entropy_grad: reduction must be 'mean' or 'sum', got {reduction!r}")
    cdef Tensor d
    if dlogits is None:
        d = new_tensor((N, V), C.MLL_F32)
    else:
        d = as_inplace_f32(dlogits, "cross_entropy_grad dlogits")
        if d.shape != (N, V):
            raise ValueError(f"cross_entropy_grad: dlogits must have shape {(N, V)}, got {dlogits.shape}")
        if d.ptr == x.ptr and ld != V:
            raise ValueError("cross_entropy_grad: in place needs contiguous logits")
        if d.ptr != x.ptr and d.ptr < x.ptr + 4 * N * ld and x.ptr < d.ptr + 4 * N * V:
            raise ValueError("cross_entropy_grad: dlogits overlaps logits without being them")
    cdef int64_t count = count_targets(t, ignore_index)
    cdef Tensor losses = new_tensor((N,), C.MLL_F32)
    cdef Tensor lse = new_tensor((N,), C.MLL_F32)
    cdef float scale = grad_scale
    if reduction == "mean":
        scale = grad_scale / count if count > 0 else 0.0
    cdef const float *xp = fptr(x)
    cdef const int64_t *tp = <const int64_t *>t.ptr
    cdef float *lp = fptr(losses)
    cdef float *sp = fptr(lse)
    cdef float *dp = fptr(d)
    cdef int64_t bad, i
    with nogil:
        bad = C.mll_cross_entropy_forward_grad(xp, ld, tp, lp, sp, dp, V, scale, N, V, ignore_index,
                                               label_smoothing)
    if bad >= 0:
        raise IndexError(f"cross_entropy: target {tp[bad]} at row {bad} is outside [0, {V}) "
                         f"(and is not ignore_index={ignore_index})")
    cdef double total = 0.0
    for i in range(N):
        total += lp[i]
    cdef Tensor out = new_tensor((), C.MLL_F32)
    if reduction == "sum":
        fptr(out)[0] = <float>total
    else:
        fptr(out)[0] = <float>(total / count) if count > 0 else float("nan")
    return out, count, d
