# attention.pxi: bindings of attention.c: fused causal attention, forward and backward, for
# minillm.functional. No autograd here: these take and return plain Tensors.


cdef inline void _head_strides(Tensor t, int64_t *s) noexcept:
    # {batch, head, row} element strides of a (B, nh, T, hs) tensor
    s[0] = t.strides_[0]
    s[1] = t.strides_[1]
    s[2] = t.strides_[2]


cdef Tensor _attn_out_like(Tensor like, Py_ssize_t B, Py_ssize_t nh, Py_ssize_t T, Py_ssize_t hs):
    """A fresh (B, nh, T, hs) tensor. When `like` has its rows farther apart than its heads
    (a head view of a (B, T, C) activation), the new tensor is a (B, T, nh, hs) buffer seen
    through transpose(1, 2), so transposing it back to (B, T, nh, hs) and reshaping to
    (B, T, C) copies nothing; otherwise it is contiguous."""
    if like.strides_[2] > like.strides_[1]:
        return <Tensor>transpose(new_tensor((B, T, nh, hs), C.MLL_F32), 1, 2)
    return new_tensor((B, nh, T, hs), C.MLL_F32)


cdef tuple _attn_check(object q, object k, object v, double scale, str what):
    cdef Tensor tq = as_lastdim_f32(q, what, "q")
    cdef Tensor tk = as_lastdim_f32(k, what, "k")
    cdef Tensor tv = as_lastdim_f32(v, what, "v")
    if tq.ndim != 4 or tk.ndim != 4 or tv.ndim != 4:
        raise ValueError(f"{what}: expected q, k, v of shape (B, nh, T, hs), got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if (tk.shape != tv.shape or tq.shape_[0] != tk.shape_[0] or tq.shape_[1] != tk.shape_[1]
            or tq.shape_[3] != tk.shape_[3]):
        raise ValueError(f"{what}: q {q.shape}, k {k.shape}, v {v.shape} do not fit (B, nh, Tq, hs), "
                         f"(B, nh, Tk, hs), (B, nh, Tk, hs)")
    if tq.shape_[2] > tk.shape_[2]:
        raise ValueError(f"{what}: q has {tq.shape_[2]} rows but only {tk.shape_[2]} keys "
                         f"(causal attention needs Tq <= Tk)")
    if not scale > 0.0:
        raise ValueError(f"{what}: scale must be > 0, got {scale}")
    return tq, tk, tv


def attention_forward(q, k, v, double scale):
    """Fused causal attention: softmax(q k^T * scale + causal mask) v.

    q (B, nh, Tq, hs), k, v (B, nh, Tk, hs), float32, Tq <= Tk, any strides with a contiguous
    last axis (head views of a (B, T, 3C) projection are read in place). Query i sits at
    position Tk - Tq + i. Returns (out (B, nh, Tq, hs), lse (B, nh, Tq)); out is laid out as
    (B, Tq, nh, hs) in memory when q's rows are farther apart than its heads."""
    cdef Tensor tq, tk, tv
    tq, tk, tv = _attn_check(q, k, v, scale, "attention_forward")
    cdef int64_t B = tq.shape_[0], nh = tq.shape_[1], Tq = tq.shape_[2], Tk = tk.shape_[2]
    cdef int64_t hs = tq.shape_[3]
    cdef Tensor out = _attn_out_like(tq, B, nh, Tq, hs)
    cdef Tensor lse = new_tensor((B, nh, Tq), C.MLL_F32)
    if B * nh * Tq * hs == 0:
        return out, lse
    cdef int64_t qs[3]
    cdef int64_t ks[3]
    cdef int64_t vs[3]
    cdef int64_t os[3]
    _head_strides(tq, qs)
    _head_strides(tk, ks)
    _head_strides(tv, vs)
    _head_strides(out, os)
    cdef const float *qp = fptr(tq)
    cdef const float *kp = fptr(tk)
    cdef const float *vp = fptr(tv)
    cdef float *op = fptr(out)
    cdef float *lp = fptr(lse)
    cdef float sc = <float>scale
    cdef int rc
    with nogil:
        rc = C.mll_attention_forward(qp, qs, kp, ks, vp, vs, op, os, lp, B, nh, Tq, Tk, hs, sc)
    if rc != 0:
        raise MemoryError(f"attention_forward: no scratch memory for q {q.shape}, k {k.shape}")
    return out, lse


cdef Tensor _attn_grad_out(object given, Tensor like, Py_ssize_t B, Py_ssize_t nh, Py_ssize_t T,
                           Py_ssize_t hs, str name):
    """The caller's (B, nh, T, hs) float32 output tensor (any strides, last axis contiguous),
    or a fresh one laid out like `like`."""
    if given is None:
        return _attn_out_like(like, B, nh, T, hs)
    cdef Tensor t = as_f32(given, f"attention_backward {name}")
    if t.shape != (B, nh, T, hs) or (hs > 1 and t.strides_[3] != 1):
        raise ValueError(f"attention_backward: {name} must have shape {(B, nh, T, hs)} and a contiguous "
                         f"last axis, got shape {given.shape} strides {given.strides}")
    return t


def attention_backward(q, k, v, out, lse, dout, double scale, dq=None, dk=None, dv=None):
    """Gradients of attention_forward: (dq, dk, dv) shaped like q, k, v, from the saved
    out (B, nh, Tq, hs) and lse (B, nh, Tq) and the upstream dout (B, nh, Tq, hs).
    Each gradient is laid out like its input (see attention_forward), or written into the
    given dq / dk / dv (e.g. strided views of one (B, T, 3C) gradient buffer)."""
    cdef Tensor tq, tk, tv
    tq, tk, tv = _attn_check(q, k, v, scale, "attention_backward")
    cdef Tensor to = as_lastdim_f32(out, "attention_backward", "out")
    cdef Tensor td = as_lastdim_f32(dout, "attention_backward", "dout")
    cdef Tensor tl = as_contig(as_lastdim_f32(lse, "attention_backward", "lse"))
    cdef int64_t B = tq.shape_[0], nh = tq.shape_[1], Tq = tq.shape_[2], Tk = tk.shape_[2]
    cdef int64_t hs = tq.shape_[3]
    if to.shape != q.shape or td.shape != q.shape or tl.shape != (B, nh, Tq):
        raise ValueError(f"attention_backward: out {out.shape} and dout {dout.shape} must match q "
                         f"{q.shape}, lse {lse.shape} must be {(B, nh, Tq)}")
    cdef Tensor gq = _attn_grad_out(dq, tq, B, nh, Tq, hs, "dq")
    cdef Tensor gk = _attn_grad_out(dk, tk, B, nh, Tk, hs, "dk")
    cdef Tensor gv = _attn_grad_out(dv, tv, B, nh, Tk, hs, "dv")
    if B * nh * Tq * hs == 0:
        if numel(gk):
            fill_(gk, 0.0)
            fill_(gv, 0.0)
        return gq, gk, gv
    cdef int64_t qs[3]
    cdef int64_t ks[3]
    cdef int64_t vs[3]
    cdef int64_t os[3]
    cdef int64_t ds[3]
    cdef int64_t dqs[3]
    cdef int64_t dks[3]
    cdef int64_t dvs[3]
    _head_strides(tq, qs)
    _head_strides(tk, ks)
    _head_strides(tv, vs)
    _head_strides(to, os)
    _head_strides(td, ds)
    _head_strides(gq, dqs)
    _head_strides(gk, dks)
    _head_strides(gv, dvs)
    cdef const float *qp = fptr(tq)
    cdef const float *kp = fptr(tk)
    cdef const float *vp = fptr(tv)
    cdef const float *op = fptr(to)
    cdef const float *lp = fptr(tl)
    cdef const float *dp = fptr(td)
    cdef float *dqp = fptr(gq)
    cdef float *dkp = fptr(gk)
    cdef float *dvp = fptr(gv)
    cdef float sc = <float>scale
    cdef int rc
    with nogil:
        rc = C.mll_attention_backward(qp, qs, kp, ks, vp, vs, op, os, lp, dp, ds, dqp, dqs, dkp, dks,
                                      dvp, dvs, B, nh, Tq, Tk, hs, sc)
    if rc != 0:
        raise MemoryError(f"attention_backward: no scratch memory for q {q.shape}, k {k.shape}")
    return gq, gk, gv
