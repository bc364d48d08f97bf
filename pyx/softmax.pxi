# softmax.pxi: bindings of softmax.c: softmax and log-softmax over an axis, and their backward.


def softmax(Tensor x, axis=-1):
    """Softmax over `axis` (last by default), max-subtracted."""
    cdef int64_t rows, cols
    if x.ndim == 0:
        raise ValueError("softmax needs at least one dimension, got a 0-d tensor")
    axis = norm_axis(axis, x.ndim)
    if axis != x.ndim - 1:
        return transpose(softmax(transpose(x, axis, -1), -1), axis, -1)
    x = as_rows_f32(x, "softmax", &rows, &cols)
    cdef Tensor y = new_like_shape(x, C.MLL_F32)
    with nogil:
        C.mll_softmax_forward(fptr(x), fptr(y), rows, cols)
    return y


def softmax_backward(Tensor y, Tensor dy):
    """dx = y * (dy - sum(dy * y)) over the last axis."""
    cdef int64_t rows, cols
    y = as_rows_f32(y, "softmax backward", &rows, &cols)
    dy = as_contig(as_f32(dy, "softmax backward"))
    if dy.shape != y.shape:
        raise ValueError(f"softmax backward: gradient shape {dy.shape} != output shape {y.shape}")
    cdef Tensor dx = new_like_shape(y, C.MLL_F32)
    with nogil:
        C.mll_softmax_backward(fptr(y), fptr(dy), fptr(dx), rows, cols)
    return dx


def log_softmax(Tensor x, axis=-1):
    """log(softmax(x)) over `axis` (last by default), computed stably."""
    cdef int64_t rows, cols
    if x.ndim == 0:
        raise ValueError("log_softmax needs at least one dimension, got a 0-d tensor")
    axis = norm_axis(axis, x.ndim)
    if axis != x.ndim - 1:
        return transpose(log_softmax(transpose(x, axis, -1), -1), axis, -1)
    x = as_rows_f32(x, "log_softmax", &rows, &cols)
    cdef Tensor y = new_like_shape(x, C.MLL_F32)
    with nogil:
        C.mll_log_softmax_forward(fptr(x), fptr(y), rows, cols)
    return y


def log_softmax_backward(Tensor y, Tensor dy):
    """dx = dy - exp(y) * sum(dy) over the last axis (y is the log-softmax output)."""
    cdef int64_t rows, cols
    y = as_rows_f32(y, "log_softmax backward", &rows, &cols)
    dy = as_contig(as_f32(dy, "log_softmax backward"))
    if dy.shape != y.shape:
        raise ValueError(f"log_softmax backward: gradient shape {dy.shape} != output shape {y.shape}")
    cdef Tensor dx = new_like_shape(y, C.MLL_F32)
    with nogil:
        C.mll_log_softmax_backward(fptr(y), fptr(dy), fptr(dx), rows, cols)
    return dx
