# rope.pxi: bindings of rope.c: the rotary position table (the rotation itself runs inside
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
