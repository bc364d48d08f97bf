# bias_gelu.pxi: bindings of bias_gelu.c: the fused bias + GELU (tanh form) and the exact (erf)
# GELU, forward and backward. No autograd here.


cdef tuple _bias_gelu_check(object x, object b, str what):
    cdef Tensor tx = as_contig(as_lastdim_f32(x, what, "x"))
    cdef Tensor tb = as_contig(as_lastdim_f32(b, what, "bias"))
    if tx.ndim < 1 or tb.ndim != 1 or tb.shape_[0] != tx.shape_[tx.ndim - 1]:
        raise ValueError(f"{what}: x {x.shape} and bias {b.shape} do not fit (..., C) and (C,)")
    return tx, tb


def bias_gelu(x, b):
    """y = gelu(x + b) (tanh form), fused: x (..., C), b (C) float32 -> y shaped like x."""
    cdef Tensor tx, tb
    tx, tb = _bias_gelu_check(x, b, "bias_gelu")
    cdef int64_t Cn = tb.shape_[0]
    cdef int64_t N = numel(tx) // Cn if Cn else 0
    cdef Tensor y = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef const float *xp = fptr(tx)
    cdef const float *bp = fptr(tb)
    cdef float *yp = fptr(y)
    if N * Cn:
        with nogil:
            C.mll_bias_gelu_forward(xp, bp, yp, N, Cn)
    return y


def bias_gelu_backward(x, b, dy, bint need_db=True):
    """Gradients of bias_gelu from its input x (..., C), bias b (C) and upstream dy
    (shaped like x): (dx shaped like x, db (C) or None when need_db is False)."""
    cdef Tensor tx, tb
    tx, tb = _bias_gelu_check(x, b, "bias_gelu_backward")
    cdef Tensor td = as_contig(as_lastdim_f32(dy, "bias_gelu_backward", "dy"))
    if td.shape != x.shape:
        raise ValueError(f"bias_gelu_backward: dy {dy.shape} must match x {x.shape}")
    cdef int64_t Cn = tb.shape_[0]
    cdef int64_t N = numel(tx) // Cn if Cn else 0
    cdef Tensor dx = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef Tensor db = new_tensor((Cn,), C.MLL_F32) if need_db else None
    cdef const float *xp = fptr(tx)
    cdef const float *bp = fptr(tb)
    cdef const float *dp = fptr(td)
    cdef float *dxp = fptr(dx)
    cdef float *dbp = fptr(db) if need_db else NULL
    cdef int rc = 0
    if N * Cn:
        with nogil:
            rc = C.mll_bias_gelu_backward(xp, bp, dp, dxp, dbp, N, Cn)
    elif need_db and Cn:
        C.mll_fill(dbp, 0.0, Cn)
    if rc != 0:
        raise MemoryError(f"bias_gelu_backward: no scratch memory for x {x.shape}")
    return dx, db


def gelu_erf(x):
    """Exact GELU, x Phi(x) (erf form): x float32, any shape -> y shaped like x."""
    cdef Tensor tx = as_contig(as_lastdim_f32(x, "gelu_erf", "x"))
    cdef Tensor y = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef const float *xp = fptr(tx)
    cdef float *yp = fptr(y)
    cdef int64_t n = numel(tx)
    with nogil:
        C.mll_gelu_erf_forward(xp, yp, n)
    return y


def gelu_erf_backward(x, dy):
    """dx = dy * gelu'(x) for the exact GELU: x, dy float32 of one shape -> dx of that shape."""
    cdef Tensor tx = as_contig(as_lastdim_f32(x, "gelu_erf_backward", "x"))
    cdef Tensor td = as_contig(as_lastdim_f32(dy, "gelu_erf_backward", "dy"))
    if td.shape != tx.shape:
        raise ValueError(f"gelu_erf_backward: dy {dy.shape} must match x {x.shape}")
    cdef Tensor dx = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef const float *xp = fptr(tx)
    cdef const float *dp = fptr(td)
    cdef float *dxp = fptr(dx)
    cdef int64_t n = numel(tx)
    with nogil:
        C.mll_gelu_erf_backward(xp, dp, dxp, n)
    return dx
