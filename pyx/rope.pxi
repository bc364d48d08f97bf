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


cdef tuple _qk_rope_args(object qkv, int64_t n_head, object cos, object sin, object q_weight, object k_weight,
                         str what):
    """(qkv as float32, hs, cos, sin, q gain, k gain), checked: qkv (B, T, 3 n_head hs); cos, sin
    (T, hs / 2) or both None; the gains (hs,) or both None."""
    cdef Tensor t = as_f32(qkv, f"{what} qkv")
    if t.ndim != 3 or n_head < 1 or t.shape_[2] % (3 * n_head):
        raise ValueError(f"{what}: expected qkv (B, T, 3 C) with C a multiple of n_head {n_head}, got {t.shape}")
    cdef int64_t T = t.shape_[1], hs = t.shape_[2] // (3 * n_head)
    if (cos is None) != (sin is None) or (q_weight is None) != (k_weight is None):
        raise ValueError(f"{what}: give cos and sin together, and q_weight and k_weight together")
    c = s = qw = kw = None
    if cos is not None:
        if hs % 2:
            raise ValueError(f"{what}: rotary needs an even head size, got {hs}")
        c, s = as_contig(as_f32(cos, f"{what} cos")), as_contig(as_f32(sin, f"{what} sin"))
        if c.shape != (T, hs // 2) or s.shape != (T, hs // 2):
            raise ValueError(f"{what}: cos, sin must be ({T}, {hs // 2}), got {c.shape} and {s.shape}")
    if q_weight is not None:
        qw, kw = as_contig(as_f32(q_weight, f"{what} q_weight")), as_contig(as_f32(k_weight, f"{what} k_weight"))
        if qw.shape != (hs,) or kw.shape != (hs,):
            raise ValueError(f"{what}: q_weight, k_weight must be ({hs},), got {qw.shape} and {kw.shape}")
    return t, hs, c, s, qw, kw


def qk_rope(qkv, int64_t n_head, cos, sin, q_weight, k_weight, float eps=1e-5):
    """The q and k heads of a fused projection qkv (B, T, 3 C) float32 (q, k, v side by side,
    n_head heads each): RMS-normed per head by the gains q_weight, k_weight (C / n_head) (both
    None: no norm), then rotated by the table rows cos, sin (T, hs / 2) (both None: no rotation)
    -> (a new contiguous (B, T, 3 C) tensor with v as it was, rstd (B T, 2 n_head) or None)."""
    t, hs, c, s, qw, kw = _qk_rope_args(qkv, n_head, cos, sin, q_weight, k_weight, "qk_rope")
    if not eps >= 0:
        raise ValueError(f"qk_rope: eps must be >= 0, got {eps}")
    cdef Tensor x = <Tensor>t
    cdef int64_t B = x.shape_[0], T = x.shape_[1], ld = x.shape_[2]
    cdef Tensor out = copy_contig(x)
    cdef Tensor rs = new_tensor((B * T, 2 * n_head), C.MLL_F32) if qw is not None else None
    cdef const float *cp = NULL if c is None else fptr(c)
    cdef const float *sp = NULL if s is None else fptr(s)
    cdef const float *qp = NULL if qw is None else fptr(qw)
    cdef const float *kp = NULL if kw is None else fptr(kw)
    cdef float *rp = NULL if rs is None else fptr(rs)
    cdef int64_t d = hs
    with nogil:
        C.mll_qk_rope_forward(fptr(out), ld, B, T, n_head, n_head, d, cp, sp, qp, kp, eps, rp)
    return out, rs


def qk_rope_backward(dy, qkv, int64_t n_head, cos, sin, q_weight, k_weight, rstd):
    """Backward of qk_rope: dy (B, T, 3 C) the output's gradient, qkv the forward's input, rstd its
    second result -> (dqkv (B, T, 3 C), d q_weight, d k_weight (None without the norm))."""
    t, hs, c, s, qw, kw = _qk_rope_args(qkv, n_head, cos, sin, q_weight, k_weight, "qk_rope_backward")
    cdef Tensor x = as_contig(<Tensor>t)
    cdef int64_t B = x.shape_[0], T = x.shape_[1], ld = x.shape_[2]
    cdef Tensor g = as_f32(dy, "qk_rope_backward dy")
    if g.shape != x.shape:
        raise ValueError(f"qk_rope_backward: gradient shape {g.shape} != qkv shape {x.shape}")
    cdef Tensor rs = None
    if qw is not None:
        rs = as_contig(as_f32(rstd, "qk_rope_backward rstd"))
        if rs.shape != (B * T, 2 * n_head):
            raise ValueError(f"qk_rope_backward: rstd shape {rs.shape} != ({B * T}, {2 * n_head})")
    cdef Tensor dx = copy_contig(g)
    cdef Tensor dqw = new_tensor((hs,), C.MLL_F32) if qw is not None else None
    cdef Tensor dkw = new_tensor((hs,), C.MLL_F32) if qw is not None else None
    cdef const float *cp = NULL if c is None else fptr(c)
    cdef const float *sp = NULL if s is None else fptr(s)
    cdef const float *qp = NULL if qw is None else fptr(qw)
    cdef const float *kp = NULL if kw is None else fptr(kw)
    cdef const float *rp = NULL if rs is None else fptr(rs)
    cdef float *dqp = NULL if dqw is None else fptr(dqw)
    cdef float *dkp = NULL if dkw is None else fptr(dkw)
    cdef int64_t d = hs
    cdef int rc
    with nogil:
        rc = C.mll_qk_rope_backward(fptr(dx), fptr(x), ld, B, T, n_head, n_head, d, cp, sp, qp, kp, rp, dqp, dkp)
    if rc:
        raise MemoryError("qk_rope_backward: out of memory for the gain partials")
    return dx, dqw, dkw
