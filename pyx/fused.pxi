# fused.pxi: bindings of the fused kernels (attention.c, bias_gelu.c, layernorm.c: the fused residual add) for
# minillm.functional.
# No autograd here: these take and return plain Tensors.

cdef Tensor _fused_f32(object t, str what, str name):
    """A float32 Tensor whose last axis is contiguous (copied if it is not)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}: {name} must be a minillm Tensor, got {type(t).__name__}")
    cdef Tensor x = <Tensor>t
    if x.dtype_ != C.MLL_F32:
        raise TypeError(f"{what}: {name} must be float32, got {t.dtype}")
    if x.ndim > 0 and x.strides_[x.ndim - 1] != 1 and x.shape_[x.ndim - 1] > 1:
        x = copy_contig(x)
    return x


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
    cdef Tensor tq = _fused_f32(q, what, "q")
    cdef Tensor tk = _fused_f32(k, what, "k")
    cdef Tensor tv = _fused_f32(v, what, "v")
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
    if not isinstance(given, Tensor) or (<Tensor>given).dtype_ != C.MLL_F32:
        raise TypeError(f"attention_backward: {name} must be a float32 minillm Tensor")
    cdef Tensor t = <Tensor>given
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
    cdef Tensor to = _fused_f32(out, "attention_backward", "out")
    cdef Tensor td = _fused_f32(dout, "attention_backward", "dout")
    cdef Tensor tl = as_contig(_fused_f32(lse, "attention_backward", "lse"))
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


cdef tuple _bias_gelu_check(object x, object b, str what):
    cdef Tensor tx = as_contig(_fused_f32(x, what, "x"))
    cdef Tensor tb = as_contig(_fused_f32(b, what, "bias"))
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
    cdef Tensor td = as_contig(_fused_f32(dy, "bias_gelu_backward", "dy"))
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
    cdef Tensor tx = as_contig(_fused_f32(x, "gelu_erf", "x"))
    cdef Tensor y = new_tensor(tuple(x.shape), C.MLL_F32)
    cdef const float *xp = fptr(tx)
    cdef float *yp = fptr(y)
    cdef int64_t n = numel(tx)
    with nogil:
        C.mll_gelu_erf_forward(xp, yp, n)
    return y


def gelu_erf_backward(x, dy):
    """dx = dy * gelu'(x) for the exact GELU: x, dy float32 of one shape -> dx of that shape."""
    cdef Tensor tx = as_contig(_fused_f32(x, "gelu_erf_backward", "x"))
    cdef Tensor td = as_contig(_fused_f32(dy, "gelu_erf_backward", "dy"))
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


def add_layer_norm(x, r, weight, bias, float eps=1e-5):
    """s = x + r and y = LayerNorm(s) over the last axis in one pass: x, r (..., C) float32 of
    the same shape, weight/bias (C) or None. Returns (s, y, mean, rstd), mean/rstd (rows,)
    as layer_norm saves them for layer_norm_backward(s, weight, mean, rstd, dy)."""
    cdef Tensor tx = as_contig(_fused_f32(x, "add_layer_norm", "x"))
    cdef Tensor tr = as_contig(_fused_f32(r, "add_layer_norm", "residual"))
    if tx.ndim < 1 or tx.shape != tr.shape:
        raise ValueError(f"add_layer_norm: x {x.shape} and residual {r.shape} must have the same shape (..., C)")
    cdef int64_t cols = tx.shape_[tx.ndim - 1]
    cdef int64_t rows = numel(tx) // cols if cols else 0
    cdef Tensor w = None, b = None
    cdef const float *wp = NULL
    cdef const float *bp = NULL
    if weight is not None:
        w = as_contig(_fused_f32(weight, "add_layer_norm", "weight"))
        if w.shape != (cols,):
            raise ValueError(f"add_layer_norm: weight shape {w.shape} != ({cols},) for input {x.shape}")
        wp = fptr(w)
    if bias is not None:
        b = as_contig(_fused_f32(bias, "add_layer_norm", "bias"))
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
