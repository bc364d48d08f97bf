"""Every differentiable op: forward against a float64 NumPy reference, gradients against
central finite differences of that reference, and, where torch is installed, forward and
gradients against PyTorch autograd on the same float32 inputs (relative error <= 1e-4)."""
import math

import numpy as np
import pytest

import minillm
import minillm.functional as F

FD_EPS = 1e-6
FD_TOL = 2e-3      # float32 forward/backward vs the float64 derivative of the reference
FWD_TOL = 1e-4     # float32 forward vs float64 reference (relative to the largest value)
TORCH_TOL = 1e-4   # relative error vs PyTorch float32


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.max(np.abs(b)) if b.size else 0.0, 1e-6)
    return float(np.max(np.abs(a - b)) / scale) if a.size else 0.0


def as_f32_64(a):
    """float32-representable values, as float64 (so both sides see the same inputs)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def numerical_grads(fn_np, arrays, R):
    """d sum(fn(arrays) * R) / d arrays by central differences in float64."""
    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        flat = a.reshape(-1)
        gflat = g.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + FD_EPS
            fp = np.sum(fn_np(*arrays) * R)
            flat[j] = old - FD_EPS
            fm = np.sum(fn_np(*arrays) * R)
            flat[j] = old
            gflat[j] = (fp - fm) / (2 * FD_EPS)
        grads.append(g)
    return grads


def check(fn_mll, fn_np, arrays, fn_torch=None, seed=1, fd=True):
    """Run the three comparisons for an op with differentiable float inputs `arrays`."""
    arrays = [as_f32_64(a) for a in arrays]
    ts = [minillm.tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    out = fn_mll(*ts)
    ref = fn_np(*arrays)
    assert tuple(out.shape) == np.shape(ref)
    assert rel_err(out.numpy(), ref) <= FWD_TOL, "forward differs from the NumPy reference"
    R = as_f32_64(np.random.default_rng(seed).standard_normal(np.shape(ref)))
    loss = F.sum(F.mul(out, minillm.tensor(R.astype(np.float32))))
    loss.backward()
    grads = [t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in ts]
    if fd:
        for i, (g, ng) in enumerate(zip(grads, numerical_grads(fn_np, arrays, R))):
            assert rel_err(g, ng) <= FD_TOL, f"input {i}: gradient differs from finite differences"
    if fn_torch is not None:
        torch = pytest.importorskip("torch")
        tts = [torch.tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
        tout = fn_torch(*tts)
        assert rel_err(out.numpy(), tout.detach().numpy()) <= TORCH_TOL, "forward differs from torch"
        (tout * torch.tensor(R.astype(np.float32))).sum().backward()
        for i, (g, tt) in enumerate(zip(grads, tts)):
            tg = tt.grad.numpy() if tt.grad is not None else np.zeros(tt.shape)
            assert rel_err(g, tg) <= TORCH_TOL, f"input {i}: gradient differs from torch"
    return out, grads


def randn(*shape, seed=0):
    return np.random.default_rng(seed + 17 * len(shape) + sum(shape)).standard_normal(shape)


# ------------------------------------------------------------------ arithmetic
BROADCAST_CASES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((5,), (2, 3, 5)), ((1,), (2, 2))]


@pytest.mark.parametrize("sa,sb", BROADCAST_CASES)
def test_add_sub_mul_broadcast_gradients(sa, sb):
    a, b = randn(*sa, seed=1), randn(*sb, seed=2)
    check(F.add, np.add, [a, b], lambda x, y: x + y)
    check(F.sub, np.subtract, [a, b], lambda x, y: x - y)
    check(F.mul, np.multiply, [a, b], lambda x, y: x * y)


@pytest.mark.parametrize("sa,sb", BROADCAST_CASES[:3])
def test_div_broadcast_gradients(sa, sb):
    a = randn(*sa, seed=3)
    b = np.abs(randn(*sb, seed=4)) + 0.5
    check(F.div, np.divide, [a, b], lambda x, y: x / y)


def test_ops_with_python_numbers():
    a = randn(3, 4)
    check(lambda x: F.add(x, 2.5), lambda x: x + 2.5, [a], lambda x: x + 2.5)
    check(lambda x: F.sub(1.0, x), lambda x: 1.0 - x, [a], lambda x: 1.0 - x)
    check(lambda x: F.mul(x, -3.0), lambda x: x * -3.0, [a], lambda x: x * -3.0)
    check(lambda x: F.div(2.0, x), lambda x: 2.0 / x, [np.abs(a) + 1], lambda x: 2.0 / x)
    check(F.neg, np.negative, [a], lambda x: -x)
    check(lambda x: F.pow(x, 3), lambda x: x ** 3, [a], lambda x: x ** 3)


def test_tensor_operators_route_to_functional():
    a = randn(3, 4)
    check(lambda x, y: (x * y + x / (y * y + 1.0) - 2.0 * x) @ y.T,
          lambda x, y: (x * y + x / (y * y + 1.0) - 2.0 * x) @ y.T, [a, randn(3, 4, seed=9)],
          lambda x, y: (x * y + x / (y * y + 1.0) - 2.0 * x) @ y.T)


# ---------------------------------------------------------------------- matmul
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                   ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 3)), ((3, 4), (4,)),
                                   ((4,), (4,)), ((3, 4), (2, 4, 5))])
def test_matmul_gradients(sa, sb):
    check(F.matmul, np.matmul, [randn(*sa, seed=5), randn(*sb, seed=6)], lambda x, y: x @ y)


def test_matmul_transposed_operand_is_differentiable():
    a, b = randn(4, 3), randn(5, 4)
    check(lambda x, y: F.matmul(F.transpose(x, 0, 1), F.transpose(y, 0, 1)),
          lambda x, y: x.T @ y.T, [a, b], lambda x, y: x.T @ y.T)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias):
    x, w, b = randn(2, 3, 4), randn(5, 4, seed=1), randn(5, seed=2)
    if bias:
        check(F.linear, lambda x, w, b: x @ w.T + b, [x, w, b],
              lambda x, w, b: __import__("torch").nn.functional.linear(x, w, b))
    else:
        check(F.linear, lambda x, w: x @ w.T, [x, w],
              lambda x, w: __import__("torch").nn.functional.linear(x, w))


# ----------------------------------------------------------------------- views
def test_view_ops_gradients():
    x = randn(2, 3, 4)
    check(lambda t: F.reshape(t, (4, 6)), lambda t: t.reshape(4, 6), [x], lambda t: t.reshape(4, 6))
    check(lambda t: F.reshape(t, (-1,)), lambda t: t.reshape(-1), [x], lambda t: t.reshape(-1))
    check(lambda t: F.transpose(t, 0, 2), lambda t: t.transpose(2, 1, 0), [x], lambda t: t.transpose(0, 2))
    check(lambda t: F.permute(t, (1, 2, 0)), lambda t: t.transpose(1, 2, 0), [x], lambda t: t.permute(1, 2, 0))
    check(lambda t: F.unsqueeze(t, 1), lambda t: t[:, None], [x], lambda t: t.unsqueeze(1))
    check(lambda t: F.squeeze(F.reshape(t, (2, 1, 12)), 1), lambda t: t.reshape(2, 12), [x],
          lambda t: t.reshape(2, 1, 12).squeeze(1))
    check(lambda t: F.expand(F.reshape(t, (2, 1, 12)), (2, 3, 12)),
          lambda t: np.broadcast_to(t.reshape(2, 1, 12), (2, 3, 12)), [x],
          lambda t: t.reshape(2, 1, 12).expand(2, 3, 12))
    # a transpose followed by a reshape forces a copy inside reshape
    check(lambda t: F.reshape(F.transpose(t, 0, 1), (3, 8)), lambda t: t.transpose(1, 0, 2).reshape(3, 8),
          [x], lambda t: t.transpose(0, 1).reshape(3, 8))


@pytest.mark.parametrize("key", [(slice(1, 3),), (0,), (slice(None), slice(0, 4, 2)), (Ellipsis, 1),
                                 (1, slice(1, None), None)])
def test_getitem_gradients(key):
    x = randn(3, 4, 5)
    check(lambda t: F.getitem(t, key), lambda t: t[key], [x], lambda t: t[key])


def test_cat_split_stack_gradients():
    a, b, c = randn(2, 3), randn(2, 1, seed=1), randn(2, 4, seed=2)
    check(lambda x, y, z: F.cat([x, y, z], 1), lambda x, y, z: np.concatenate([x, y, z], 1), [a, b, c],
          lambda x, y, z: __import__("torch").cat([x, y, z], 1))
    check(lambda x, y: F.cat([x, y], 0), lambda x, y: np.concatenate([x, y], 0), [a, randn(3, 3)],
          lambda x, y: __import__("torch").cat([x, y], 0))
    check(lambda x, y: F.stack([x, y], 1), lambda x, y: np.stack([x, y], 1), [a, a * 2],
          lambda x, y: __import__("torch").stack([x, y], 1))
    x = randn(7, 3)
    # weight the pieces differently so a misrouted gradient shows
    check(lambda t: F.cat([F.mul(p, float(i + 1)) for i, p in enumerate(F.split(t, 3, 0))], 0),
          lambda t: np.concatenate([t[0:3] * 1, t[3:6] * 2, t[6:7] * 3], 0), [x])
    pieces = F.split(minillm.tensor(x.astype(np.float32)), [2, 5], 0)
    assert [p.shape for p in pieces] == [(2, 3), (5, 3)]


# ------------------------------------------------------------------ reductions
@pytest.mark.parametrize("axis,keepdim", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_sum_mean_gradients(axis, keepdim):
    x = randn(2, 3, 4)
    check(lambda t: F.sum(t, axis, keepdim), lambda t: np.sum(t, axis=axis, keepdims=keepdim), [x],
          lambda t: t.sum(dim=axis, keepdim=keepdim) if axis is not None else t.sum())
    check(lambda t: F.mean(t, axis, keepdim), lambda t: np.mean(t, axis=axis, keepdims=keepdim), [x],
          lambda t: t.mean(dim=axis, keepdim=keepdim) if axis is not None else t.mean())


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_max_gradient_goes_to_the_maximum(axis):
    x = randn(3, 5)
    check(lambda t: F.max(t, axis), lambda t: np.max(t, axis=axis), [x],
          lambda t: t.max() if axis is None else t.max(dim=axis).values)


# --------------------------------------------------------------------- unary
UNARY = {
    "exp": (F.exp, np.exp, "exp", False),
    "log": (F.log, np.log, "log", True),
    "sqrt": (F.sqrt, np.sqrt, "sqrt", True),
    "tanh": (F.tanh, np.tanh, "tanh", False),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), "sigmoid", False),
    "relu": (F.relu, lambda x: np.maximum(x, 0), "relu", False),
    "abs": (F.abs, np.abs, "abs", False),
    "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
                  "tanh", False),
    "gelu": (F.gelu, lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))), "none", False),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradients(name):
    fn, ref, tname, positive = UNARY[name]
    x = randn(4, 5) * 1.5
    if positive:
        x = np.abs(x) + 0.2
    x[np.abs(x) < 1e-2] = 0.3  # keep finite differences away from the kinks of relu/abs
    if name.startswith("gelu"):
        def fn_t(t):
            import torch
            return torch.nn.functional.gelu(t, approximate=tname)
    else:
        def fn_t(t):
            return getattr(t, tname)()
    check(fn, ref, [x], fn_t)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch_forward_and_gradient(approximate):
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed: F.gelu is checked against NumPy only")
    x = np.linspace(-8, 8, 1601).astype(np.float32)
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    xm = minillm.tensor(x, requires_grad=True)
    ym = F.gelu(xm, approximate=approximate)
    ym.backward(minillm.tensor(dy))
    # torch in float64 on the same float32 inputs (its float32 erf form loses the left tail
    # to cancellation in 1 + erf, which minillm's erfc form keeps)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate=approximate)
    yt.backward(torch.tensor(dy.astype(np.float64)))
    np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_gelu_none_is_the_exact_erf_form():
    # x Phi(x) at x = -2 is -0.0455003; the tanh form gives -0.0454023
    exact = -2 * 0.5 * math.erfc(2 / math.sqrt(2))
    assert abs(float(F.gelu(minillm.tensor([-2.0]))[0]) - exact) < 1e-7
    assert abs(float(F.gelu(minillm.tensor([-2.0]), approximate="tanh")[0]) - exact) > 5e-5
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(minillm.tensor([1.0]), approximate="erf")


# ------------------------------------------------------------------- softmax
def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_log_softmax_gradients(axis):
    x = randn(3, 4, 5)
    check(lambda t: F.softmax(t, axis), lambda t: np_softmax(t, axis), [x], lambda t: t.softmax(axis))
    check(lambda t: F.log_softmax(t, axis), lambda t: np.log(np_softmax(t, axis)), [x],
          lambda t: t.log_softmax(axis))


# ----------------------------------------------------------------- layer norm
def np_layer_norm(x, w=None, b=None, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def test_layer_norm_gradients():
    torch = pytest.importorskip("torch")
    x, w, b = randn(2, 3, 6), 1 + 0.3 * randn(6, seed=1), randn(6, seed=2)
    check(lambda x, w, b: F.layer_norm(x, (6,), w, b), np_layer_norm, [x, w, b],
          lambda x, w, b: torch.nn.functional.layer_norm(x, (6,), w, b))
    check(lambda x: F.layer_norm(x, 6), np_layer_norm, [x],
          lambda x: torch.nn.functional.layer_norm(x, (6,)))


def test_layer_norm_over_two_axes():
    x = randn(2, 3, 4)
    check(lambda t: F.layer_norm(t, (3, 4)),
          lambda t: np_layer_norm(t.reshape(2, 12)).reshape(2, 3, 4), [x])


# ------------------------------------------------------------------ embedding
def test_embedding_gradient_accumulates_repeated_ids():
    torch = pytest.importorskip("torch")
    ids = np.array([[1, 3, 1], [0, 3, 3]], dtype=np.int64)
    w = randn(5, 4)
    idx = minillm.tensor(ids)
    check(lambda w: F.embedding(idx, w), lambda w: w[ids], [w],
          lambda w: torch.nn.functional.embedding(torch.tensor(ids), w))


# --------------------------------------------------------------------- losses
def np_cross_entropy(x, t, ignore_index=-100, reduction="mean", smoothing=0.0):
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = t != ignore_index
    tt = np.where(keep, t, 0)
    nll = -np.take_along_axis(logp, tt[..., None], -1)[..., 0]
    smooth = -logp.mean(-1)
    loss = np.where(keep, (1 - smoothing) * nll + smoothing * smooth, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gradients(reduction, smoothing):
    torch = pytest.importorskip("torch")
    x = randn(6, 5) * 2
    t = np.array([0, 4, -100, 2, 2, 1], dtype=np.int64)
    tm = minillm.tensor(t)
    check(lambda x: F.cross_entropy(x, tm, reduction=reduction, label_smoothing=smoothing),
          lambda x: np_cross_entropy(x, t, reduction=reduction, smoothing=smoothing), [x],
          lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(t), reduction=reduction,
                                                      label_smoothing=smoothing))


def test_cross_entropy_class_axis_last_for_3d_logits():
    x = randn(2, 3, 7)
    t = np.array([[1, 2, 3], [6, 0, 5]], dtype=np.int64)
    tm = minillm.tensor(t)
    check(lambda x: F.cross_entropy(x, tm), lambda x: np_cross_entropy(x, t), [x])


def test_cross_entropy_large_vocab_matches_reference():
    x = randn(3, 1000) * 3
    t = np.array([5, 999, 0], dtype=np.int64)
    out = F.cross_entropy(minillm.tensor(x.astype(np.float32)), minillm.tensor(t))
    assert abs(out.item() - np_cross_entropy(as_f32_64(x), t)) <= 1e-5 * abs(out.item()) + 1e-6


def test_cross_entropy_bad_target_raises_naming_it():
    x = minillm.zeros((2, 3))
    with pytest.raises(IndexError, match="target 7 at row 1"):
        F.cross_entropy(x, minillm.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"targets of shape \(2,\)"):
        F.cross_entropy(x, minillm.tensor([0, 1, 2]))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("N, V", [(5, 3), (33, 37), (64, 50257)])
def test_cross_entropy_gradient_in_forward_matches_float64_reference(isa, N, V):
    # 'mean' with a gradient wanted: the loss kernel writes d loss / d logits in the forward
    # and backward only scales it; the way the language models call it (ignore_index=-1)
    if isa not in minillm.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} path")
    rng = np.random.default_rng(N + V)
    x = rng.normal(0, 4, (N, V)).astype(np.float32)
    t = rng.integers(0, V, N)
    t[1] = -1                                         # ignored row
    prev = minillm.get_isa()
    minillm.set_isa(isa)
    try:
        xt = minillm.tensor(x, requires_grad=True)
        loss = F.cross_entropy(F.mul(xt, 1.0), minillm.tensor(t), ignore_index=-1)  # a non-leaf input
        F.mul(loss, 3.0).backward()                                               # upstream grad != 1
    finally:
        minillm.set_isa(prev)
    x64 = x.astype(np.float64)
    ref = np_cross_entropy(x64, t, ignore_index=-1)
    g = np_softmax(x64)
    valid = t != -1
    g[np.arange(N)[valid], t[valid]] -= 1
    g[~valid] = 0
    g *= 3.0 / valid.sum()
    assert abs(float(loss) - ref) < 2e-6 * max(1.0, abs(ref))
    np.testing.assert_allclose(xt.grad.numpy(), g, rtol=0, atol=2e-6 * np.abs(g).max())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient_in_forward_equals_the_recomputing_backward(reduction):
    # same inputs through both kernels: the kept gradient (grad on in the forward) and the
    # softmax-recompute backward (reduction 'none' summed), with label smoothing
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (17, 300)).astype(np.float32)
    t = rng.integers(0, 300, 17)
    t[4] = -100
    grads = []
    for red in (reduction, "none"):
        xt = minillm.tensor(x, requires_grad=True)
        loss = F.cross_entropy(xt, minillm.tensor(t), reduction=red, label_smoothing=0.1)
        if red == "none":
            loss = F.sum(loss)
            if reduction == "mean":
                loss = F.mul(loss, 1.0 / 16)
        F.mul(loss, 0.5).backward()
        grads.append(xt.grad.numpy().copy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=2e-6, atol=1e-7)


def test_cross_entropy_kept_gradient_survives_a_second_backward():
    # retain_graph: the first backward hands its kept buffer out (here it becomes x.grad);
    # the second must still give the right gradient, and the first x.grad must not change
    x = minillm.tensor(np.random.default_rng(4).normal(0, 2, (6, 9)).astype(np.float32),
                       requires_grad=True)
    t = minillm.tensor([1, 2, 3, 4, 5, -100])
    loss = F.cross_entropy(x, t)
    loss.backward(retain_graph=True)
    first = x.grad
    first_values = first.numpy().copy()
    loss.backward()
    np.testing.assert_array_equal(first.numpy(), first_values)
    np.testing.assert_allclose(x.grad.numpy(), 2 * first_values, rtol=1e-6, atol=1e-8)


def test_cross_entropy_with_grad_names_a_bad_target():
    x = minillm.zeros((3, 4), requires_grad=True)
    with pytest.raises(IndexError, match="target 9 at row 2 is outside \\[0, 4\\)"):
        F.cross_entropy(x, minillm.tensor([0, 1, 9]), ignore_index=-1)


def test_mse_loss_gradients():
    a, b = randn(3, 4), randn(3, 4, seed=1)
    torch = pytest.importorskip("torch")
    for red in ("mean", "sum", "none"):
        ref = {"mean": lambda x, y: ((x - y) ** 2).mean(), "sum": lambda x, y: ((x - y) ** 2).sum(),
               "none": lambda x, y: (x - y) ** 2}[red]
        check(lambda x, y: F.mse_loss(x, y, reduction=red), ref, [a, b],
              lambda x, y: torch.nn.functional.mse_loss(x, y, reduction=red))


# ------------------------------------------------------------------- attention
def np_attention(q, k, v, causal):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T, S = s.shape[-2:]
        s = np.where(np.tril(np.ones((T, S), dtype=bool), S - T), s, -np.inf)
    return np_softmax(s) @ v


@pytest.mark.parametrize("causal", [True, False])
def test_scaled_dot_product_attention_gradients(causal):
    torch = pytest.importorskip("torch")
    q, k, v = randn(2, 2, 4, 3, seed=1), randn(2, 2, 4, 3, seed=2), randn(2, 2, 4, 3, seed=3)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
          lambda q, k, v: np_attention(q, k, v, causal), [q, k, v],
          lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_attention_boolean_mask_matches_causal():
    q = minillm.tensor(randn(1, 4, 3).astype(np.float32))
    mask = minillm.tensor(np.tril(np.ones((4, 4), dtype=np.uint8)))
    a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    b = F.scaled_dot_product_attention(q, q, q, attn_mask=mask, is_causal=False)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------- dropout
def test_dropout_is_seeded_scaled_and_masks_the_gradient():
    x = minillm.ones((64, 64), requires_grad=True)
    g1 = minillm.random.Generator(123)
    y = F.dropout(x, 0.25, generator=g1)
    arr = y.numpy()
    kept = arr != 0
    assert np.allclose(arr[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.03
    y2 = F.dropout(x.detach(), 0.25, generator=minillm.random.Generator(123))
    np.testing.assert_array_equal(arr, y2.numpy())
    F.sum(y).backward()
    np.testing.assert_array_equal(x.grad.numpy(), arr)
    assert F.dropout(x, 0.5, training=False) is x


def test_dropout_bad_p_raises():
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(minillm.ones((2,)), 1.5)


# ---------------------------------------------------------------- bad input
def test_shape_mismatch_errors_name_the_shapes():
    a = minillm.ones((2, 3), requires_grad=True)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        F.add(a, minillm.ones((4,)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        F.matmul(a, minillm.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        F.linear(a, minillm.ones((4, 5)))


def test_cross_entropy_extreme_logits_stay_finite_and_exact():
    x = np.array([[1000.0, -1000.0, 0.0, 999.0], [-50.0, -50.0, -50.0, -50.0]], dtype=np.float32)
    t = np.array([1, 2], dtype=np.int64)
    xm = minillm.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xm, minillm.tensor(t), reduction="none")
    np.testing.assert_allclose(loss.numpy(), np_cross_entropy(x.astype(np.float64), t, reduction="none"),
                               rtol=1e-6)
    F.sum(loss).backward()
    g = xm.grad.numpy()
    assert np.isfinite(g).all()
    p = np_softmax(x.astype(np.float64))
    p[[0, 1], t] -= 1
    # lse ~ 1000 is stored in float32, whose spacing there is 6e-5
    np.testing.assert_allclose(g, p, atol=1e-4)


def test_kernels_are_bitwise_identical_for_one_and_two_threads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 700)).astype(np.float32) * 4
    t = rng.integers(0, 700, 300)
    results = []
    for n in (1, 2):
        minillm.set_num_threads(n)
        xm = minillm.tensor(x, requires_grad=True)
        loss = F.cross_entropy(xm, minillm.tensor(t), label_smoothing=0.1)
        loss.backward()
        p = minillm.tensor(x.reshape(-1).copy())
        m, v = minillm.zeros(p.shape), minillm.zeros(p.shape)
        for step in range(1, 4):
            minillm._C.adam_step_(p, xm.grad.reshape(-1), m, v, 1e-2, 0.9, 0.99, 1e-8, 0.1, True, step)
        results.append((loss.item(), xm.grad.numpy().copy(), p.numpy().copy()))
    minillm.set_num_threads(2)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_matmul_with_transpose_flags_gradients(ta, tb, batched):
    """The internal op behind attention's q @ k^T: alpha * op(a) @ op(b), every flag."""
    M, K, N = 3, 4, 2
    sa = (K, M) if ta else (M, K)
    sb = (N, K) if tb else (K, N)
    if batched:
        sa = (2,) + sa

    def ref(a, b):
        a2 = np.swapaxes(a, -1, -2) if ta else a
        b2 = np.swapaxes(b, -1, -2) if tb else b
        return 0.5 * (a2 @ b2)
    check(lambda a, b: F._matmul_t(a, b, ta, tb, 0.5), ref, [randn(*sa, seed=1), randn(*sb, seed=2)])


def test_layer_norm_bias_without_weight_gets_its_gradient():
    x, b = randn(4, 5), randn(5, seed=3)
    check(lambda x, b: F.layer_norm(x, 5, None, b), lambda x, b: np_layer_norm(x, None, b), [x, b])
