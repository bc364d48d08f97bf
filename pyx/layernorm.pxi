# layernorm.pxi: bindings of layernorm.c: LayerNorm over the last axis, its backward, and the
# residual add fused into it.


def layer_norm(Tensor x, weight, bias, float eps=1e-5):
    """LayerNorm over the last axis: x (..., C), weight/bias (C) or None.
    Returns (y, mean, rstd) with mean/rstd of shape (rows,) saved for backward."""
    cdef int64_t rows, cols
    x = as_rows_f32(x, "layer_norm", &rows, &cols)
    cdef Tensor w = None, b = None
    cdef const float *wp = NULL
    cdef const float *bp = NULL
    if weight is not None:
        w = as_contig(as_f32(weight, "layer_norm weight"))
        if w.shape != (cols,):
            raise ValueError(f"layer_norm: weight shape {w.shape} != ({cols},) for input {x.shape}")
        wp = fptr(w)
    if bias is not None:
        b = as_contig(as_f32(bias, "layer_norm bias"))
        if b.shape != (cols,):
            raise ValueError(f"layer_norm: bias shape {b.shape} != ({cols},) for input {x.shape}")
        bp = fptr(b)
    cdef Tensor y = new_like_shape(x, C.MLL_F32)
    cdef Tensor mu = new_tensor((rows,), C.MLL_F32)
    cdef Tensor rs = new_tensor((rows,), C.MLL_F32)
    with nogil:
        C.mll_layernorm_forward(fptr(x), wp, bp, fptr(y), fptr(mu), fptr(rs), rows, cols, eps)
    return y, mu, rs


def layer_norm_backward(Tensor x, weight, Tensor mean, Tensor rstd, Tensor dy, bint need_bias_grad=True):
    """Backward of layer_norm: returns (dx, dweight or None, dbias or None)."""
    cdef int64_t rows, cols
    x = as_rows_f32(x, "layer_norm backward", &rows, &cols)
    dy = as_contig(as_f32(dy, "layer_norm backward"))
    if dy.shape != x.shape:
        raise ValueError(f"layer_norm backward: gradient shape {dy.shape} != input shape {x.shape}")
    cdef Tensor w = None
    cdef const float *wp = NULL
    cdef Tensor dx = new_like_shape(x, C.MLL_F32)
    cdef Tensor dw = None, db = None
    cdef float *dwp = NULL
    cdef float *dbp = NULL
    mean = as_f32_shaped(mean, "layer_norm backward mean", (rows,))
    rstd = as_f32_shaped(rstd, "layer_norm backward rstd", (rows,))
    if weight is not None:
        w = as_f32_shaped(weight, "layer_norm backward weight", (cols,))
        wp = fptr(w)
        dw = new_tensor((cols,), C.MLL_F32)
        dwp = fptr(dw)
        if need_bias_grad:
            db = new_tensor((cols,), C.MLL_F32)
            dbp = fptr(db)
    with nogil:
        C.mll_layernorm_backward(fptr(x), wp, fptr(mean), fptr(rstd), fptr(dy), fptr(dx), dwp, dbp,
                                 rows, cols)
    return dx, dw, db


def add_layer_norm(x, r, weight, bias, float eps=1e-5):
    """s = x + r and y = LayerNorm(s) over the last axis in one pass: x, r (..., C) float32 of
    the same shape, weight/bias (C) or None. Returns (s, y, mean, rstd), mean/rstd (rows,)
    as layer_norm saves them for layer_norm_backward(s, weight, mean, rstd, dy)."""
    cdef Tensor tx = as_contig(as_lastdim_f32(x, "add_layer_norm", "x"))
    cdef Tensor tr = as_contig(as_lastdim_f32(r, "add_layer_norm", "residual"))
    if tx.ndim < 1 or tx.shape != tr.shape:
        raise ValueError(f"add_layer_norm: x {x.shape} and residual {r.shape} must have the same shape (..., C)")
    cdef int64_t cols = tx.shape_[tx.ndim - 1]
    cdef int64_t rows = numel(tx) // cols if cols else 0
    cdef Tensor w = None, b = None
    cdef const float *wp = NULL
    cdef const float *bp = NULL
    if weight is not None:
        w = as_contig(as_lastdim_f32(weight, "add_layer_norm", "weight"))
        if w.shape != (cols,):
            raise ValueError(f"add_layer_norm: weight shape {w.shape} != ({cols},) for input {x.shape}")
        wp = fptr(w)
    if bias is not None:
        b = as_contig(as_lastdim_f32(bias, "add_layer_norm", "bias"))
        if b.shape != (cols,):
            raise ValueError(f"add_layer_norm: bias shape {b.shape} != ({cols},) for input {x.shape}")
        bp = fptr(b)
    cdef Tensor s = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef Tensor y = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef Tensor mu = new_tensor((rows,), C.MLL_F32)
    cdef Tensor rs = new_tensor((rows,), C.MLL_F32)
    if rows * cols:
        with nogil:
            C.mll_add_layernorm_forward(fptr(tx), fptr(tr), wp, bp, fptr(s), fptr(y), fptr(mu), fptr(rs),
                                        rows, cols, eps)
    return s, y, mu, rs
