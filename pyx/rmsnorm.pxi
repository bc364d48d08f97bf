# rmsnorm.pxi: bindings of rmsnorm.c: RMSNorm over the last axis, forward and backward, for
# minillm.functional.rms_norm (no autograd here: plain Tensors in and out).


cdef Tensor _rms_rows(object x, str what, int64_t *rows, int64_t *cols):
    """x as a contiguous float32 tensor of >= 1 dims, with rows * cols = its size."""
    cdef Tensor t = as_contig(as_f32(x, what))
    if t.ndim == 0:
        raise ValueError(f"{what}: needs at least one dimension, got a 0-d tensor")
    cols[0] = t.shape_[t.ndim - 1]
    rows[0] = numel(t) // cols[0] if cols[0] else 0
    return t


cdef const float *_rms_weight(object weight, int64_t cols, tuple xshape, str what) except? NULL:
    if weight is None:
        return NULL
    cdef Tensor w = as_contig(as_f32(weight, f"{what} weight"))
    if w.shape != (cols,):
        raise ValueError(f"{what}: weight shape {w.shape} != ({cols},) for input {xshape}")
    return fptr(w)


def rms_norm(x, weight, float eps=1e-6):
    """RMSNorm over the last axis: x (..., C) float32, weight (C) or None ->
    (y shaped like x, rstd (rows,)), rstd = 1 / sqrt(mean(x^2) + eps) kept for backward."""
    cdef int64_t rows, cols
    cdef Tensor xx = _rms_rows(x, "rms_norm", &rows, &cols)
    if not eps >= 0:
        raise ValueError(f"rms_norm: eps must be >= 0, got {eps}")
    w = None if weight is None else as_contig(as_f32(weight, "rms_norm weight"))
    cdef const float *wp = _rms_weight(w, cols, xx.shape, "rms_norm")
    cdef Tensor y = new_like_shape(xx, C.MLL_F32)
    cdef Tensor rs = new_tensor((rows,), C.MLL_F32)
    with nogil:
        C.mll_rmsnorm_forward(fptr(xx), wp, fptr(y), fptr(rs), rows, cols, eps)
    return y, rs


def rms_norm_backward(x, weight, rstd, dy, bint need_weight_grad=True):
    """Backward of rms_norm: x, dy (..., C), weight (C) or None, rstd (rows,) from the forward
    -> (dx shaped like x, dweight (C) or None)."""
    cdef int64_t rows, cols
    cdef Tensor xx = _rms_rows(x, "rms_norm_backward", &rows, &cols)
    cdef Tensor d = as_contig(as_f32(dy, "rms_norm_backward dy"))
    if d.shape != xx.shape:
        raise ValueError(f"rms_norm_backward: gradient shape {d.shape} != input shape {xx.shape}")
    cdef Tensor rs = as_contig(as_f32(rstd, "rms_norm_backward rstd"))
    if rs.shape != (rows,):
        raise ValueError(f"rms_norm_backward: rstd shape {rs.shape} != ({rows},)")
    w = None if weight is None else as_contig(as_f32(weight, "rms_norm weight"))
    cdef const float *wp = _rms_weight(w, cols, xx.shape, "rms_norm_backward")
    cdef Tensor dx = new_like_shape(xx, C.MLL_F32)
    cdef Tensor dw = None
    cdef float *dwp = NULL
    cdef int rc
    if need_weight_grad:
        dw = new_tensor((cols,), C.MLL_F32)
        dwp = fptr(dw)
    with nogil:
        rc = C.mll_rmsnorm_backward(fptr(xx), wp, fptr(rs), fptr(d), fptr(dx), dwp, rows, cols)
    if rc != 0:
        raise MemoryError(f"rms_norm_backward: out of memory for the weight-gradient partials of {xx.shape}")
    return dx, dw
