# silu.pxi: bindings of silu.c: the gated SiLU product of a SwiGLU MLP, forward and backward,
# for minillm.functional.silu_mul (no autograd here: plain Tensors in and out).


cdef Tensor _silu_operand(object t, tuple shape, str what):
    cdef Tensor x = as_contig(as_f32(t, what))
    if shape is not None and x.shape != shape:
        raise ValueError(f"{what}: shape {x.shape} != {shape}")
    return x


def silu_mul(g, u):
    """silu(g) * u elementwise: g, u float32 of one shape -> a new tensor of that shape."""
    cdef Tensor gg = _silu_operand(g, None, "silu_mul gate")
    cdef Tensor uu = _silu_operand(u, gg.shape, "silu_mul up")
    cdef Tensor y = new_like_shape(gg, C.MLL_F32)
    cdef int64_t n = numel(gg)
    with nogil:
        C.mll_silu_mul_forward(fptr(gg), fptr(uu), fptr(y), n)
    return y


def silu_mul_backward(g, u, dy):
    """Backward of silu_mul: g, u, dy of one shape -> (dg, du)."""
    cdef Tensor gg = _silu_operand(g, None, "silu_mul_backward gate")
    cdef Tensor uu = _silu_operand(u, gg.shape, "silu_mul_backward up")
    cdef Tensor d = _silu_operand(dy, gg.shape, "silu_mul_backward dy")
    cdef Tensor dg = new_like_shape(gg, C.MLL_F32)
    cdef Tensor du = new_like_shape(gg, C.MLL_F32)
    cdef int64_t n = numel(gg)
    with nogil:
        C.mll_silu_mul_backward(fptr(gg), fptr(uu), fptr(d), fptr(dg), fptr(du), n)
    return dg, du
