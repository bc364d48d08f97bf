"""The Llama-family kernels (csrc/rmsnorm.c, rope.c, silu.c), forward and backward, against
NumPy references in float64 on every ISA path (the `isa` fixture), bitwise the same with 1
and 2 threads; their autograd ops (F.rms_norm, F.rotary, F.silu_mul, nn.RMSNorm) against
finite differences and torch."""
import numpy as np
import pytest

import minillm
from minillm import _C, nn
from minillm import functional as F
from minillm.models.rotary import rope_inv_freq, rope_table

pytestmark = pytest.mark.usefixtures("isa")

# rows x cols with tails of every vector width, and one above the parallel threshold
SHAPES = [(1, 1), (3, 7), (5, 33), (17, 64), (300, 257)]


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def both_threads(compute):
    old = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        r1 = compute()
        _C.set_num_threads(2)
        r2 = compute()
    finally:
        _C.set_num_threads(old)
    for a, b in zip(r1, r2):
        assert (a is None and b is None) or np.asarray(a).tobytes() == np.asarray(b).tobytes(), \
            "1 and 2 threads gave different bits"
    return r1


def t(a):
    return minillm.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# ------------------------------------------------------------------------ rmsnorm.c
def rms_ref(x, w, eps):
    x = x.astype(np.float64)
    rs = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * rs * (1.0 if w is None else w.astype(np.float64)), rs[..., 0]


def rms_backward_ref(x, w, dy, eps):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    w = np.ones(x.shape[-1]) if w is None else w.astype(np.float64)
    n = x.shape[-1]
    rs = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    g = dy * w
    dx = rs * (g - x * rs ** 2 * (g * x).sum(-1, keepdims=True) / n)
    dw = (dy * x * rs).reshape(-1, n).sum(0)
    return dx, dw


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_rmsnorm_forward_and_backward_match_numpy(shape, with_weight):
    x, dy = rand(shape, 1), rand(shape, 2)
    w = rand(shape[-1:], 3) if with_weight else None
    y, rstd = both_threads(lambda: tuple(np.array(a) for a in _C.rms_norm(t(x), None if w is None else t(w), 1e-5)))
    y_ref, rs_ref = rms_ref(x, w, 1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(rstd, rs_ref, rtol=2e-6)
    dx, dw = both_threads(lambda: tuple(None if a is None else np.array(a) for a in _C.rms_norm_backward(
        t(x), None if w is None else t(w), t(rstd), t(dy), True)))
    dx_ref, dw_ref = rms_backward_ref(x, w, dy, 1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


def test_rmsnorm_rejects_mismatched_weight():
    with pytest.raises(ValueError, match=r"weight shape \(5,\) != \(4,\)"):
        _C.rms_norm(t(rand((2, 4))), t(rand((5,))), 1e-6)


# --------------------------------------------------------------------------- rope.c
def rope_ref(x, cos, sin, sign=1.0):
    """x (B, T, H, d) rotated by (T, d/2) tables ("rotate half" pairs), float64."""
    x = x.astype(np.float64)
    half = x.shape[-1] // 2
    c, s = cos[None, :, None, :].astype(np.float64), sign * sin[None, :, None, :].astype(np.float64)
    lo, hi = x[..., :half], x[..., half:]
    return np.concatenate([lo * c - hi * s, hi * c + lo * s], axis=-1)


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 5, 3, 8), (2, 70, 4, 64), (1, 3, 2, 22)])
def test_rope_forward_and_backward_match_numpy(shape):
    B, T, H, d = shape
    cos, sin = rope_table(rope_inv_freq(d, 10000.0), T + 5)
    c, s = np.array(cos)[5:], np.array(sin)[5:]            # positions 5 .. T + 4
    x = rand(shape, 4)
    y, = both_threads(lambda: (np.array(_C.rope(t(x), t(c), t(s))),))
    np.testing.assert_allclose(y, rope_ref(x, c, s), rtol=1e-6, atol=1e-6)
    dx, = both_threads(lambda: (np.array(_C.rope(t(x), t(c), t(s), True)),))
    np.testing.assert_allclose(dx, rope_ref(x, c, s, -1.0), rtol=1e-6, atol=1e-6)


def test_rope_reads_strided_heads():
    x = rand((2, 4, 3, 16), 5)
    cos, sin = rope_table(rope_inv_freq(16), 4)
    # (B, H, T, d) transposed to (B, T, H, d): a non-contiguous view
    xt = _C.transpose(t(np.ascontiguousarray(x.transpose(0, 2, 1, 3))), 1, 2)
    np.testing.assert_allclose(np.array(_C.rope(xt, cos, sin)), rope_ref(x, np.array(cos), np.array(sin)),
                               rtol=1e-6, atol=1e-6)


def test_rope_rejects_a_table_of_the_wrong_size():
    cos, sin = rope_table(rope_inv_freq(8), 3)
    with pytest.raises(ValueError, match="cos, sin must be"):
        _C.rope(t(rand((1, 4, 2, 8))), cos, sin)
    with pytest.raises(ValueError, match="even"):
        _C.rope(t(rand((1, 3, 2, 7))), cos, sin)


# --------------------------------------------------------------------------- silu.c
@pytest.mark.parametrize("n", [1, 7, 33, 1000, 70001])
def test_silu_mul_forward_and_backward_match_numpy(n):
    g, u, dy = rand((n,), 6) * 4, rand((n,), 7), rand((n,), 8)
    y, = both_threads(lambda: (np.array(_C.silu_mul(t(g), t(u))),))
    g64, u64, dy64 = g.astype(np.float64), u.astype(np.float64), dy.astype(np.float64)
    s = 1 / (1 + np.exp(-g64))
    np.testing.assert_allclose(y, g64 * s * u64, rtol=1e-5, atol=1e-6)
    dg, du = both_threads(lambda: tuple(np.array(a) for a in _C.silu_mul_backward(t(g), t(u), t(dy))))
    np.testing.assert_allclose(du, dy64 * g64 * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dg, dy64 * u64 * s * (1 + g64 * (1 - s)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- autograd ops
def finite_difference(f, x, eps=1e-3):
    """d sum(f(x) * probe) / dx by central differences, in float64 arithmetic on float32 x."""
    g = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f(x)
        flat[i] = old - eps
        lo = f(x)
        flat[i] = old
        g.reshape(-1)[i] = (hi - lo) / (2 * eps)
    return g


def test_ops_gradients_match_finite_differences():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 2, 6)).astype(np.float32)
    w = rng.standard_normal((6,)).astype(np.float32)
    probe = rng.standard_normal((2, 3, 2, 6))
    cos, sin = rope_table(rope_inv_freq(6, 100.0), 3)

    def loss(xv, wv):
        return float((np.array(F.silu_mul(F.rotary(F.rms_norm(t(xv), t(wv), 1e-5), cos, sin),
                                          t(xv))) * probe).sum())
    xt, wt = t(x.copy()), t(w.copy())
    xt.requires_grad = wt.requires_grad = True
    out = F.silu_mul(F.rotary(F.rms_norm(xt, wt, 1e-5), cos, sin), xt)
    F.sum(F.mul(out, t(probe))).backward()
    np.testing.assert_allclose(np.array(xt.grad), finite_difference(lambda v: loss(v, w), x.copy()),
                               rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(np.array(wt.grad), finite_difference(lambda v: loss(x, v), w.copy()),
                               rtol=2e-2, atol=2e-3)


def test_rmsnorm_module_matches_torch():
    torch = pytest.importorskip("torch")
    x = rand((4, 5, 24), 10)
    ours = nn.RMSNorm(24, eps=1e-5)
    np.asarray(ours.weight)[...] = rand((24,), 11)       # the parameter's own storage
    ref = torch.nn.RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.array(ours.weight.detach())))
    xt = t(x)
    xt.requires_grad = True
    F.sum(F.mul(ours(xt), xt)).backward()
    xr = torch.from_numpy(x).requires_grad_()
    (ref(xr) * xr).sum().backward()
    np.testing.assert_allclose(np.array(xt.grad), xr.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(ours.weight.grad), ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- fused q/k norm + rotation
def qk_rope_ref(qkv, nh, cos, sin, qw, kw, eps=1e-5):
    """The fused op by its definition, float64: per-head RMSNorm of q and k, then rotate half."""
    B, T, C3 = qkv.shape
    hs = C3 // (3 * nh)
    x = qkv.astype(np.float64).reshape(B, T, 3, nh, hs).copy()
    for i, w in ((0, qw), (1, kw)):
        h = x[:, :, i]
        if w is not None:
            h = h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * w
        if cos is not None:
            a, b = h[..., :hs // 2], h[..., hs // 2:]
            c, s = cos[None, :, None].astype(np.float64), sin[None, :, None].astype(np.float64)
            h = np.concatenate([a * c - b * s, b * c + a * s], -1)
        x[:, :, i] = h
    return x.reshape(B, T, C3)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("rotate", [True, False])
@pytest.mark.parametrize("B, T, nh, hs", [(1, 1, 1, 2), (2, 5, 3, 8), (3, 70, 4, 32)])
def test_qk_norm_rotary_forward_and_backward(B, T, nh, hs, norm, rotate):
    qkv = rand((B, T, 3 * nh * hs), 1)
    cos, sin = (np.asarray(x.numpy()) for x in rope_table(rope_inv_freq(hs, 10000.0), T)) if rotate else (None, None)
    qw, kw = (rand((hs,), 2) + 1.0, rand((hs,), 3) + 1.0) if norm else (None, None)
    tt = lambda a: None if a is None else t(a)  # noqa: E731
    y, = both_threads(lambda: (_C.qk_rope(t(qkv), nh, tt(cos), tt(sin), tt(qw), tt(kw))[0].numpy(),))
    np.testing.assert_allclose(y, qk_rope_ref(qkv, nh, cos, sin, qw, kw), rtol=1e-5, atol=1e-5)
    # backward against the composite autograd ops (F.rms_norm, F.rotary), which are tested on their own
    dy = rand((B, T, 3 * nh * hs), 4)
    x = t(qkv)
    x.requires_grad = True
    wq, wk = (tt(qw), tt(kw))
    for w in (wq, wk):
        if w is not None:
            w.requires_grad = True
    F.qk_norm_rotary(x, nh, tt(cos), tt(sin), wq, wk).backward(t(dy))
    got = [x.grad.numpy()] + ([wq.grad.numpy(), wk.grad.numpy()] if norm else [])
    x2 = t(qkv)
    x2.requires_grad = True
    parts = F.reshape(x2, (B, T, 3, nh, hs))
    q, k, v = (F.getitem(parts, (slice(None), slice(None), i)) for i in range(3))
    wq2, wk2 = tt(qw), tt(kw)
    if norm:
        wq2.requires_grad = wk2.requires_grad = True
        q, k = F.rms_norm(q, wq2, 1e-5), F.rms_norm(k, wk2, 1e-5)
    if rotate:
        q, k = F.rotary(q, t(cos), t(sin)), F.rotary(k, t(cos), t(sin))
    F.reshape(F.stack([q, k, v], axis=2), (B, T, 3 * nh * hs)).backward(t(dy))
    want = [x2.grad.numpy()] + ([wq2.grad.numpy(), wk2.grad.numpy()] if norm else [])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    # thread counts give the same bits for the backward too
    both_threads(lambda: _C.qk_rope_backward(t(dy), t(qkv), nh, tt(cos), tt(sin), tt(qw), tt(kw),
                                             _C.qk_rope(t(qkv), nh, tt(cos), tt(sin), tt(qw), tt(kw))[1]))


@pytest.mark.parametrize("args, match", [
    (dict(shape=(2, 3, 10), nh=2), "3 C"),
    (dict(shape=(2, 3, 12), nh=2, cos=(3, 1), sin=None), "together"),
    (dict(shape=(2, 3, 12), nh=2, cos=(4, 1), sin=(4, 1)), "cos, sin must be"),
    (dict(shape=(2, 3, 18), nh=2, cos=(3, 1), sin=(3, 1)), "even head size"),
    (dict(shape=(2, 3, 12), nh=2, qw=(3,), kw=(2,)), "q_weight, k_weight must be"),
])
def test_qk_rope_checks_its_arguments(args, match):
    z = lambda s: None if s is None else _C.zeros(s)  # noqa: E731
    with pytest.raises(ValueError, match=match):
        _C.qk_rope(_C.zeros(args["shape"]), args["nh"], z(args.get("cos")), z(args.get("sin")), z(args.get("qw")),
                   z(args.get("kw")))
