"""F.linear_cross_entropy, the LM head fused with its loss: the same value and gradients
(x, weight, bias) as F.cross_entropy(F.linear(x, weight, bias), targets), for chunk sizes
that do and do not divide the rows, with ignored rows; against float64 finite differences
on a tiny case and PyTorch where installed; bitwise the same for 1 and 2 threads; clear
errors for bad shapes."""
import numpy as np
import pytest

import minillm
import minillm.functional as F


def make(N, C, V, seed=0, ignore=(), ignore_index=-100, lead=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (N, C)).astype(np.float32)
    w = rng.normal(0, 0.5, (V, C)).astype(np.float32)
    b = rng.normal(0, 0.5, (V,)).astype(np.float32)
    t = rng.integers(0, V, N)
    t[list(ignore)] = ignore_index
    if lead is not None:
        x, t = x.reshape(lead + (C,)), t.reshape(lead)
    return x, w, b, t


def run(fn, x, w, b, t, upstream=1.0):
    """(loss, dx, dw, db) of fn(x, w, t, b) scaled by upstream, b None for no bias."""
    xt = minillm.tensor(x, requires_grad=True)
    wt = minillm.tensor(w, requires_grad=True)
    bt = None if b is None else minillm.tensor(b, requires_grad=True)
    loss = fn(xt, wt, minillm.tensor(t), bt)
    F.mul(loss, upstream).backward()
    return (float(loss), xt.grad.numpy().copy(), wt.grad.numpy().copy(),
            None if b is None else bt.grad.numpy().copy())


def composed(ignore_index=-100):
    return lambda x, w, t, b: F.cross_entropy(F.linear(x, w, b), t, ignore_index=ignore_index)


def fused(chunk_size=None, ignore_index=-100):
    return lambda x, w, t, b: F.linear_cross_entropy(x, w, t, bias=b, ignore_index=ignore_index,
                                                     chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 16, 37, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_linear_then_cross_entropy_in_value_and_gradient(chunk_size, with_bias):
    # 37 rows: chunks of 7 and 16 leave a short last chunk; 100 is more than all rows
    x, w, b, t = make(37, 24, 53, ignore=(0, 5, 36))
    b = b if with_bias else None
    ref = run(composed(), x, w, b, t, upstream=2.5)
    got = run(fused(chunk_size), x, w, b, t, upstream=2.5)
    assert abs(got[0] - ref[0]) <= 1e-6 * abs(ref[0])
    for name, g, r in zip(("dx", "dw", "db"), got[1:], ref[1:]):
        if r is None:
            assert g is None
            continue
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * np.abs(r).max(), err_msg=name)


def test_leading_axes_and_ignore_index_minus_one_as_the_models_use_it():
    x, w, b, t = make(12, 8, 30, ignore=(3, 4), ignore_index=-1, lead=(3, 4))
    ref = run(composed(-1), x, w, None, t)
    got = run(fused(5, -1), x, w, None, t)
    assert got[1].shape == (3, 4, 8)
    assert abs(got[0] - ref[0]) <= 1e-6 * abs(ref[0])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-5, atol=1e-7)


def test_gradients_match_float64_finite_differences():
    x, w, b, t = make(5, 3, 4, seed=1, ignore=(2,))
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))

    def loss64(x, w, b):
        z = x @ w.T + b
        m = z.max(1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
        keep = t != -100
        return (lse - z[np.arange(5), np.where(keep, t, 0)])[keep].mean()

    got = run(fused(2), x, w, b, t)
    assert abs(got[0] - loss64(x64, w64, b64)) < 1e-6
    eps = 1e-6
    for i, name in enumerate(("x", "w", "b")):
        args = [x64, w64, b64]
        num = np.zeros_like(args[i])
        for j in range(num.size):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[i].flat[j] += eps
            minus[i].flat[j] -= eps
            num.flat[j] = (loss64(*plus) - loss64(*minus)) / (2 * eps)
        np.testing.assert_allclose(got[1 + i], num, rtol=1e-4, atol=1e-6, err_msg=name)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x, w, b, t = make(29, 16, 41, seed=2, ignore=(1, 28))
    got = run(fused(8), x, w, b, t)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(xt, wt, bt), torch.tensor(t))
    loss.backward()
    assert abs(got[0] - loss.item()) <= 1e-5 * abs(loss.item())
    for g, r in zip(got[1:], (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-6)


def test_bitwise_identical_for_one_and_two_threads():
    x, w, b, t = make(300, 64, 700, seed=3, ignore=(7,))
    results = []
    prev = minillm.get_num_threads()
    try:
        for n in (1, 2):
            minillm.set_num_threads(n)
            results.append(run(fused(64), x, w, None, t))
    finally:
        minillm.set_num_threads(prev)
    assert results[0][0] == results[1][0]
    for a, c in zip(results[0][1:3], results[1][1:3]):
        np.testing.assert_array_equal(a, c)


def test_no_grad_gives_the_loss_only():
    x, w, b, t = make(10, 4, 9, seed=4)
    ref = float(F.cross_entropy(F.linear(minillm.tensor(x), minillm.tensor(w)), minillm.tensor(t)))
    with minillm.no_grad():
        loss = F.linear_cross_entropy(minillm.tensor(x), minillm.tensor(w, requires_grad=True),
                                      minillm.tensor(t), chunk_size=3)
    assert not loss.requires_grad
    assert abs(float(loss) - ref) <= 1e-6 * abs(ref)


def test_only_the_weight_needs_grad_as_with_a_frozen_input():
    x, w, b, t = make(11, 6, 13, seed=5)
    wt = minillm.tensor(w, requires_grad=True)
    F.linear_cross_entropy(minillm.tensor(x), wt, minillm.tensor(t), chunk_size=4).backward()
    ref = run(composed(), x, w, None, t)[2]
    np.testing.assert_allclose(wt.grad.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_second_backward_through_a_retained_graph():
    x, w, b, t = make(9, 5, 7, seed=6)
    xt, wt = minillm.tensor(x, requires_grad=True), minillm.tensor(w, requires_grad=True)
    loss = F.linear_cross_entropy(xt, wt, minillm.tensor(t), chunk_size=4)
    loss.backward(retain_graph=True)
    first = wt.grad.numpy().copy()
    loss.backward()
    np.testing.assert_allclose(wt.grad.numpy(), 2 * first, rtol=1e-6, atol=1e-8)


def test_all_rows_ignored_gives_nan_loss_and_zero_gradient():
    x, w, b, t = make(4, 3, 5, ignore=(0, 1, 2, 3))
    xt = minillm.tensor(x, requires_grad=True)
    loss = F.linear_cross_entropy(xt, minillm.tensor(w), minillm.tensor(t))
    assert np.isnan(float(loss))
    loss.backward()
    assert not xt.grad.numpy().any()


def test_bad_shapes_and_targets_raise_clear_errors():
    x, w, t = minillm.zeros((4, 3)), minillm.zeros((5, 3)), minillm.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"x of shape \(4, 3\) does not match weight of shape \(5, 4\)"):
        F.linear_cross_entropy(x, minillm.zeros((5, 4)), t)
    with pytest.raises(ValueError, match=r"needs targets of shape \(4,\), got \(3,\)"):
        F.linear_cross_entropy(x, w, minillm.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\), got \(4,\)"):
        F.linear_cross_entropy(x, w, t, bias=minillm.zeros((4,)))
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        F.linear_cross_entropy(x, w, t, chunk_size=0)
    with pytest.raises(TypeError, match="targets must be int64 or int32"):
        F.linear_cross_entropy(x, w, minillm.zeros((4,)))
    with pytest.raises(IndexError, match=r"target 5 at row 2 is outside \[0, 5\)"):
        F.linear_cross_entropy(x, w, minillm.tensor([0, 1, 5, 3]), chunk_size=2)   # row of all N


def test_bf16_autocast_matches_linear_then_cross_entropy_under_autocast():
    # both sides round the products' inputs to bf16 with float32 sums: the same numbers up
    # to summation order
    if "avx512" not in minillm.supported_isas():
        pytest.skip("bf16 products need the AVX-512 path")
    x, w, b, t = make(40, 32, 70, seed=7, ignore=(3,))
    with minillm.autocast(dtype="bfloat16"):
        ref = run(composed(), x, w, None, t)
        got = run(fused(16), x, w, None, t)
    exact = run(fused(16), x, w, None, t)
    assert abs(got[0] - ref[0]) <= 1e-5 * abs(ref[0])
    assert got[0] != exact[0]                  # the autocast products were taken
    for g, r in zip(got[1:3], ref[1:3]):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_no_rows_gives_nan_loss_and_zero_weight_gradient():
    wt = minillm.tensor(np.ones((5, 3), np.float32), requires_grad=True)
    loss = F.linear_cross_entropy(minillm.zeros((0, 3)), wt, minillm.tensor(np.zeros(0, np.int64)))
    assert np.isnan(float(loss))
    loss.backward()
    assert wt.grad.shape == (5, 3) and not wt.grad.numpy().any()
