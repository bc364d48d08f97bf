"""Fused kernels (csrc/attention.c, csrc/bias_gelu.c) against a NumPy float64 reference and
against the composed ops they replace, in value and gradient.

Every test runs on every ISA path this CPU can run (the autouse `isa` fixture). Tolerances:
float32 kernels vs the float64 reference agree to 2e-5 absolute on O(1) data (the error
of float32 dot products of length <= 130 plus exp to a few ulp).
"""
import numpy as np
import pytest

import minillm
import minillm.functional as F
from minillm import _C

# every test runs once per instruction-set path (the isa fixture, tests/conftest.py)
pytestmark = pytest.mark.usefixtures("isa")
ATOL = 2e-5


@pytest.fixture
def composed():
    """Run the body with the fused kernels switched off."""
    with F.set_fused_enabled(False):
        yield


def _t(a, requires_grad=False):
    t = minillm.Tensor.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return t.requires_grad_(True) if requires_grad else t


def _np(t):
    return np.asarray(t.contiguous()).copy()


# ------------------------------------------------------------------ NumPy reference
def ref_attention(q, k, v, scale=None):
    """float64 causal attention with query i at position Tk - Tq + i; returns (out, P)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    Tq, Tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / np.sqrt(hs) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    visible = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)
    s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ v, p


def ref_attention_grad(q, k, v, dout, scale=None):
    """float64 (dq, dk, dv) of ref_attention for the upstream gradient dout."""
    hs = q.shape[-1]
    scale = 1.0 / np.sqrt(hs) if scale is None else scale
    _, p = ref_attention(q, k, v, scale)
    q, k, v, dout = (np.asarray(a, np.float64) for a in (q, k, v, dout))
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, dv


def ref_gelu(u):
    return 0.5 * u * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (u + 0.044715 * u ** 3)))


def ref_gelu_grad(u):
    c = np.sqrt(2.0 / np.pi)
    th = np.tanh(c * (u + 0.044715 * u ** 3))
    return 0.5 * (1.0 + th) + 0.5 * u * (1.0 - th ** 2) * c * (1.0 + 3 * 0.044715 * u ** 2)


def _qkv(rng, B, nh, Tq, Tk, hs):
    return (rng.standard_normal((B, nh, Tq, hs)).astype(np.float32),
            rng.standard_normal((B, nh, Tk, hs)).astype(np.float32),
            rng.standard_normal((B, nh, Tk, hs)).astype(np.float32))


def _fused_grads(q, k, v, dout):
    tq, tk, tv = _t(q, True), _t(k, True), _t(v, True)
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    _fused_grads.last_op = out.grad_fn.name  # the node is freed by backward
    out.backward(_t(dout))
    return out, tq.grad, tk.grad, tv.grad


# ------------------------------------------------------------------------ attention
@pytest.mark.parametrize("hs", [8, 16, 32, 64])
@pytest.mark.parametrize("T", [1, 37, 64, 130])
def test_fused_attention_matches_float64_reference(hs, T):
    rng = np.random.default_rng(hs * 1000 + T)
    q, k, v = _qkv(rng, 2, 2, T, T, hs)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, dq, dk, dv = _fused_grads(q, k, v, dout)
    assert _fused_grads.last_op == "_fused_attention"
    ref, _ = ref_attention(q, k, v)
    np.testing.assert_allclose(_np(out), ref, atol=ATOL, rtol=0)
    for got, want in zip((dq, dk, dv), ref_attention_grad(q, k, v, dout)):
        np.testing.assert_allclose(_np(got), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("T", [1, 65, 129])
def test_fused_attention_matches_composed_ops(T):
    rng = np.random.default_rng(T)
    q, k, v = _qkv(rng, 2, 3, T, T, 16)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    fused = _fused_grads(q, k, v, dout)
    with F.set_fused_enabled(False):
        composed = _fused_grads(q, k, v, dout)
        assert _fused_grads.last_op != "_fused_attention"
    for a, b in zip(fused, composed):
        np.testing.assert_allclose(_np(a), _np(b), atol=ATOL, rtol=0)


def test_fused_attention_large_scores_stay_finite():
    # scores of +-300 overflow a naive exp; the running max keeps every exponent <= 0
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 2, 70, 70, 16)
    q *= 40.0
    out, lse = _C.attention_forward(_t(q), _t(k), _t(v), 0.25)
    ref, _ = ref_attention(q, k, v, 0.25)
    assert np.isfinite(_np(out)).all() and np.isfinite(_np(lse)).all()
    np.testing.assert_allclose(_np(out), ref, atol=1e-4, rtol=0)


def test_fused_attention_bitwise_same_for_1_and_2_threads():
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, 2, 3, 100, 100, 32)
    dout = _t(rng.standard_normal(q.shape))
    results = []
    old = _C.get_num_threads()
    try:
        for n in (1, 2):
            _C.set_num_threads(n)
            out, lse = _C.attention_forward(_t(q), _t(k), _t(v), 0.2)
            grads = _C.attention_backward(_t(q), _t(k), _t(v), out, lse, dout, 0.2)
            results.append([_np(t) for t in (out, lse) + tuple(grads)])
    finally:
        _C.set_num_threads(old)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 77), (3, 77), (64, 130), (70, 70)])
def test_kv_cache_decode_matches_full_recompute(Tq, Tk):
    # the last Tq queries against all Tk keys = the last Tq rows of full causal attention
    rng = np.random.default_rng(Tq * 100 + Tk)
    qfull, k, v = _qkv(rng, 2, 2, Tk, Tk, 32)
    full, _ = _C.attention_forward(_t(qfull), _t(k), _t(v), 0.125)
    q = qfull[:, :, Tk - Tq:]
    out = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), is_causal=True, scale=0.125)
    np.testing.assert_allclose(_np(out), _np(full)[:, :, Tk - Tq:], atol=1e-6, rtol=0)
    np.testing.assert_allclose(_np(out), ref_attention(q, k, v, 0.125)[0], atol=ATOL, rtol=0)


def test_kv_cache_decode_gradient_matches_reference():
    rng = np.random.default_rng(11)
    q, k, v = _qkv(rng, 1, 2, 5, 90, 16)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, dq, dk, dv = _fused_grads(q, k, v, dout)
    for got, want in zip((dq, dk, dv), ref_attention_grad(q, k, v, dout)):
        np.testing.assert_allclose(_np(got), want, atol=ATOL, rtol=0)


def test_head_strided_views_of_qkv_are_read_in_place():
    # q, k, v as views of a (B, T, 3C) projection, as a GPT block makes them
    B, T, nh, hs = 2, 45, 3, 16
    Cw = nh * hs
    rng = np.random.default_rng(5)
    qkv_np = rng.standard_normal((B, T, 3 * Cw)).astype(np.float32)
    dy_np = rng.standard_normal((B, T, Cw)).astype(np.float32)

    def block(fused):
        with F.set_fused_enabled(fused):
            qkv = _t(qkv_np, True)
            q, k, v = (F.transpose(F.reshape(F.getitem(qkv, (slice(None), slice(None), slice(i * Cw, (i + 1) * Cw))),
                                             (B, T, nh, hs)), 1, 2) for i in range(3))
            if fused:
                assert not q.is_contiguous()
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = F.transpose(y, 1, 2)
            if fused:
                assert y.is_contiguous()  # written as (B, T, nh, hs): no copy before c_proj
            y = F.reshape(y, (B, T, Cw))
            y.backward(_t(dy_np))
            return _np(y), _np(qkv.grad)

    (y1, g1), (y2, g2) = block(True), block(False)
    np.testing.assert_allclose(y1, y2, atol=ATOL, rtol=0)
    np.testing.assert_allclose(g1, g2, atol=ATOL, rtol=0)


@pytest.mark.parametrize("T", [1, 50])
def test_causal_self_attention_matches_split_heads_sdpa(T):
    B, nh, hs = 2, 4, 8
    Cw = nh * hs
    rng = np.random.default_rng(T)
    qkv_np = rng.standard_normal((B, T, 3 * Cw)).astype(np.float32)
    dy_np = rng.standard_normal((B, T, Cw)).astype(np.float32)
    qkv = _t(qkv_np, True)
    y = F.causal_self_attention(qkv, nh)
    assert tuple(y.shape) == (B, T, Cw) and y.is_contiguous()
    y.backward(_t(dy_np))
    # float64 reference: split heads, attend, merge heads
    heads = qkv_np.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)
    ref, _ = ref_attention(*heads)
    np.testing.assert_allclose(_np(y), ref.transpose(0, 2, 1, 3).reshape(B, T, Cw), atol=ATOL, rtol=0)
    dout = dy_np.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    grads = np.stack(ref_attention_grad(*heads, dout))           # (3, B, nh, T, hs)
    np.testing.assert_allclose(_np(qkv.grad), grads.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * Cw),
                               atol=ATOL, rtol=0)


def test_causal_self_attention_rejects_bad_width():
    with pytest.raises(ValueError, match="n_head=4"):
        F.causal_self_attention(_t(np.zeros((1, 3, 30))), 4)


def test_sdpa_uses_composed_path_with_mask_or_dropout():
    rng = np.random.default_rng(2)
    q, k, v = (_t(a, True) for a in _qkv(rng, 1, 1, 4, 4, 8))
    mask = _t(np.zeros((4, 4)))
    assert F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True).grad_fn.name != "_fused_attention"
    assert F.scaled_dot_product_attention(q, k, v, is_causal=False).grad_fn.name != "_fused_attention"


def test_attention_kernel_rejects_bad_shapes():
    rng = np.random.default_rng(0)
    q, k, v = (_t(a) for a in _qkv(rng, 1, 2, 4, 4, 8))
    with pytest.raises(ValueError, match="Tq <= Tk"):
        _C.attention_forward(_t(np.zeros((1, 2, 5, 8))), k, v, 0.5)
    with pytest.raises(ValueError, match="do not fit"):
        _C.attention_forward(q, k, _t(np.zeros((1, 2, 4, 16))), 0.5)
    with pytest.raises(ValueError, match=r"\(B, nh, T, hs\)"):
        _C.attention_forward(_t(np.zeros((2, 4, 8))), k, v, 0.5)
    with pytest.raises(ValueError, match="scale"):
        _C.attention_forward(q, k, v, 0.0)
    with pytest.raises(TypeError, match="float32"):
        _C.attention_forward(q.astype("int32"), k, v, 0.5)


# ------------------------------------------------------------------------ bias + GELU
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 40, 96), (70, 33)])
def test_bias_gelu_matches_float64_reference(shape):
    rng = np.random.default_rng(shape[-1])
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    tx, tb = _t(x, True), _t(b, True)
    y = F.bias_gelu(tx, tb)
    y.backward(_t(dy))
    u = x.astype(np.float64) + b
    np.testing.assert_allclose(_np(y), ref_gelu(u), atol=1e-5, rtol=1e-5)
    dx = dy * ref_gelu_grad(u)
    np.testing.assert_allclose(_np(tx.grad), dx, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(_np(tb.grad), dx.reshape(-1, shape[-1]).sum(0), atol=1e-4, rtol=1e-5)


def test_bias_gelu_matches_composed_ops():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 24)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    dy = rng.standard_normal((50, 24)).astype(np.float32)
    results = []
    for fused in (True, False):
        with F.set_fused_enabled(fused):
            tx, tb = _t(x, True), _t(b, True)
            y = F.bias_gelu(tx, tb)
            y.backward(_t(dy))
            results.append((_np(y), _np(tx.grad), _np(tb.grad)))
    for a, c in zip(*results):
        np.testing.assert_allclose(a, c, atol=2e-6, rtol=1e-5)


def test_linear_gelu_matches_composed_ops():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 16)).astype(np.float32)
    w = (rng.standard_normal((40, 16)) * 0.3).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    dy = rng.standard_normal((2, 9, 40)).astype(np.float32)
    results = []
    for fn in (F.linear_gelu, lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh")):
        tx, tw, tb = _t(x, True), _t(w, True), _t(b, True)
        y = fn(tx, tw, tb)
        y.backward(_t(dy))
        results.append([_np(t) for t in (y, tx.grad, tw.grad, tb.grad)])
    for a, c in zip(*results):
        np.testing.assert_allclose(a, c, atol=1e-5, rtol=1e-5)


def test_bias_gelu_backward_bitwise_same_for_1_and_2_threads():
    rng = np.random.default_rng(9)
    x, dy = (_t(rng.standard_normal((1000, 96))) for _ in range(2))
    b = _t(rng.standard_normal(96))
    results = []
    old = _C.get_num_threads()
    try:
        for n in (1, 2):
            _C.set_num_threads(n)
            dx, db = _C.bias_gelu_backward(x, b, dy)
            results.append((_np(_C.bias_gelu(x, b)), _np(dx), _np(db)))
    finally:
        _C.set_num_threads(old)
    for a, c in zip(*results):
        assert np.array_equal(a, c)


def test_bias_gelu_rejects_mismatched_bias():
    with pytest.raises(ValueError, match=r"\(C,\)"):
        _C.bias_gelu(_t(np.zeros((3, 4))), _t(np.zeros(5)))
    with pytest.raises(ValueError, match="must match"):
        _C.bias_gelu_backward(_t(np.zeros((3, 4))), _t(np.zeros(4)), _t(np.zeros((4, 4))))


# ------------------------------------------------------------- residual add + layernorm
@pytest.mark.parametrize("shape", [(1, 1), (5, 33), (2, 7, 256)])
def test_add_layer_norm_matches_float64_reference_and_composed_ops(shape):
    rng = np.random.default_rng(shape[-1])
    C = shape[-1]
    x, r, dy_s, dy_y = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    w, b = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
    results = []
    for fused in (True, False):
        with F.set_fused_enabled(fused):
            tx, tr, tw, tb = _t(x, True), _t(r, True), _t(w, True), _t(b, True)
            s, y = F.add_layer_norm(tx, tr, tw, tb)
            # the residual stream goes on (s) and into the next sublayer (y), as in a GPT block
            loss = F.add(F.sum(F.mul(s, _t(dy_s))), F.sum(F.mul(y, _t(dy_y))))
            loss.backward()
            results.append([_np(t) for t in (s, y, tx.grad, tr.grad, tw.grad, tb.grad)])
    for a, c in zip(*results):
        np.testing.assert_allclose(a, c, atol=2e-5, rtol=1e-5)
    s64 = x.astype(np.float64) + r
    xhat = (s64 - s64.mean(-1, keepdims=True)) / np.sqrt(s64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(results[0][0], s64, atol=1e-6, rtol=0)
    np.testing.assert_allclose(results[0][1], xhat * w + b, atol=2e-5, rtol=1e-5)


def test_add_layer_norm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        _C.add_layer_norm(_t(np.zeros((3, 4))), _t(np.zeros((3, 5))), None, None)


def test_fused_switch_is_per_thread_and_restored_by_with(held_in_another_thread):
    with held_in_another_thread(lambda: F.set_fused_enabled(False), lambda: not F.is_fused_enabled()):
        assert F.is_fused_enabled()                  # the other thread's block does not leak
    with F.set_fused_enabled(False):
        assert not F.is_fused_enabled()
    assert F.is_fused_enabled()
    # the older call form: the returned switch restores the setting it replaced
    prev = F.set_fused_enabled(False)
    assert not F.is_fused_enabled()
    F.set_fused_enabled(prev)
    assert F.is_fused_enabled()


def test_set_isa_is_a_switch_like_the_others():
    """set_isa: a call, a context manager restoring the previous path, a decorator; process-wide."""
    import threading
    start = minillm.get_isa()
    with minillm.set_isa("generic"):
        assert minillm.get_isa() == "generic"
        seen = []
        t = threading.Thread(target=lambda: seen.append(minillm.get_isa()))
        t.start()
        t.join()
        assert seen == ["generic"]                 # one setting for the whole process
    assert minillm.get_isa() == start

    @minillm.set_isa("generic")
    def inside():
        return minillm.get_isa()

    assert minillm.get_isa() == start and inside() == "generic" and minillm.get_isa() == start
    with pytest.raises(ValueError, match="unknown ISA 'neon'"):
        minillm.set_isa("neon")
    assert minillm.get_isa() == start
