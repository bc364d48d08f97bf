# rope.pxi: bindings of rope.c: the rotary position table, and the rotation of (B, T, H, d)
# heads forward and backward for minillm.functional.rotary (decoding rotates inside
# decode_step.c's block step).


def rope_table(inv_freq, int64_t n_pos, float scale=1.0):
    """The rotary table of positions 0 .. n_pos - 1: inv_freq (half,) float32 (the angle of
    dims (i, i + half) at position p is p * inv_freq[i]) -> (cos, sin), each (n_pos, half)
    float32, scaled by `scale` (1 for Llama; some scaled ropes use another). Angles in double."""
    cdef Tensor f = as_contig(as_f32(inv_freq, "rope_table inv_freq"))
    if f.ndim != 1 or f.shape_[0] < 1:
        raise ValueError(f"rope_table: inv_freq must be (half,) with half >= 1, got shape {inv_freq.shape}")
    if n_pos < 0:
        raise ValueError(f"rope_table: n_pos must be >= 0, got {n_pos}")
    cdef int64_t half = f.shape_[0]
    cdef Tensor c = new_tensor((n_pos, half), C.MLL_F32)
    cdef Tensor s = new_tensor((n_pos, half), C.MLL_F32)
    with nogil:
        C.mll_rope_table(fptr(f), fptr(c), fptr(s), n_pos, half, scale)
    return c, s


def rope(x, cos, sin, bint backward=False):
    """Rotary embedding of x (B, T, H, d) float32 (any strides) by the table rows cos, sin
    (T, d/2) (row t for time t; slice a rope_table to start at another position) -> a new
    contiguous (B, T, H, d) tensor. backward=True rotates by the opposite angle: the gradient
    of the forward rotation (dy in x's place gives dx)."""
    cdef Tensor t = as_f32(x, "rope x")
    if t.ndim != 4:
        raise ValueError(f"rope: expected x of shape (B, T, H, d), got {t.shape}")
    cdef int64_t B = t.shape_[0], T = t.shape_[1], H = t.shape_[2], d = t.shape_[3]
    if d % 2:
        raise ValueError(f"rope: head size d must be even, got {d}")
    cdef Tensor c = as_contig(as_f32(cos, "rope cos")), s = as_contig(as_f32(sin, "rope sin"))
    if c.shape != (T, d // 2) or s.shape != (T, d // 2):
        raise ValueError(f"rope: cos, sin must be ({T}, {d // 2}) for x {t.shape}, got {c.shape} and {s.shape}")
    cdef Tensor out = copy_contig(t)
    with nogil:
        if backward:
            C.mll_rope_backward(fptr(out), H * d, fptr(c), fptr(s), B, T, H, d)
        else:
            C.mll_rope_forward(fptr(out), H * d, fptr(c), fptr(s), B, T, H, d)
    return out
