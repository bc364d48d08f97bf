# lm_xent.pxi: binding of csrc/lm_xent.c (the LM loss with its gradient in one pass) for
# minillm.models._ops. No autograd here.

def lm_xent(logits, targets, int64_t ignore_index=-1, bint want_grad=True):
    """Mean cross-entropy of logits (N, V) float32 (rows may be strided) against targets (N)
    int64/int32, over the rows whose target is not ignore_index. Returns (loss 0-d float32,
    dlogits (N, V) float32 = d loss / d logits, or None when want_grad is false).
    IndexError names a target outside [0, V)."""
    cdef Tensor x = _nn_f32(logits, "lm_xent")
    if x.ndim != 2:
        raise ValueError(f"lm_xent: logits must be (N, V), got shape {logits.shape}")
    if x.strides_[1] != 1:
        x = as_contig(x)
    cdef Tensor t = _nn_index64(targets, "lm_xent")
    cdef int64_t N = x.shape_[0], V = x.shape_[1], ld = x.strides_[0]
    if t.ndim != 1 or t.shape_[0] != N:
        raise ValueError(f"lm_xent: logits {logits.shape} need targets of shape ({N},), got {targets.shape}")
    if V == 0:
        raise ValueError("lm_xent: logits have 0 classes")
    cdef const int64_t *tp = <const int64_t *>t.ptr
    cdef int64_t i, count = 0
    for i in range(N):
        if tp[i] != ignore_index:
            count += 1
    cdef Tensor losses = new_tensor((N,), C.MLL_F32)
    cdef Tensor dl = new_tensor((N, V), C.MLL_F32) if want_grad else None
    cdef float *dp = fptr(dl) if want_grad else NULL
    cdef const float *xp = fptr(x)
    cdef float *lp = fptr(losses)
    cdef float scale = 1.0 / count if count > 0 else 0.0
    cdef int64_t bad
    with nogil:
        bad = C.mll_lm_xent(xp, ld, tp, N, V, ignore_index, scale, lp, dp)
    if bad >= 0:
        raise IndexError(f"lm_xent: target {tp[bad]} at row {bad} is outside [0, {V}) "
                         f"(and is not ignore_index={ignore_index})")
    cdef double total = 0.0
    for i in range(N):
        total += lp[i]
    cdef Tensor out = new_tensor((), C.MLL_F32)
    fptr(out)[0] = <float>(total / count) if count > 0 else float("nan")
    return out, dl
