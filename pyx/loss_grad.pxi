# loss_grad.pxi: bindings of loss.c's gradient-in-forward cross-entropy, for
# minillm.functional.cross_entropy and linear_cross_entropy. No autograd here.

def count_targets(targets, int64_t ignore_index, int64_t num_classes=-1):
    """The number of entries of targets (int64/int32, any shape) that are not ignore_index.
    With num_classes >= 0, IndexError names the first other entry outside [0, num_classes)."""
    cdef Tensor t = _nn_index64(targets, "count_targets")
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
    if reduction not in ("mean", "sum"):
        raise ValueError(f"cross_entropy_grad: reduction must be 'mean' or 'sum', got {reduction!r}")
    cdef Tensor d
    if dlogits is None:
        d = new_tensor((N, V), C.MLL_F32)
    else:
        d = _nn_inplace(dlogits, "cross_entropy_grad dlogits")
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


def alloc_trim():
    """Give every block the caching allocator holds back to the OS (see csrc/runtime.c)."""
    C.mll_alloc_trim()
