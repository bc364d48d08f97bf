"""bfloat16 mixed precision: rounding, the bf16 GEMM (csrc/gemm_bf16.c) and autocast training.

Rounding is checked bit for bit against a NumPy model of round-to-nearest-even on the float32
bits. The GEMM is checked against float64 products of the bf16-rounded inputs: with exact
bf16 x bf16 products (8-bit significands: the product fits a float32) and float32 sums, an
entry of a length-K product is within (K + 2) u sum_k |a_ik b_kj| of that reference
(u = 2^-24, Higham 3.1); the tests allow (K + 4) u (|alpha| |A| |B| + |beta C|). Multiplying the
unrounded float32 inputs instead would miss by up to 2^-8 |A| |B| (tens of times more here), so the
tests also tell whether the packing rounds at all, and rounds to nearest even.
"""
import numpy as np
import pytest

import minillm
from minillm import _C
from minillm import _testing
import minillm.functional as F
from minillm.models import build_model
from conftest import bf16_values, round_bf16_bits, widen_bf16

U = 2.0 ** -24


# ------------------------------------------------------------------ rounding

def test_bf16_round_trip_is_exact_on_representable_values():
    bits = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
    values = widen_bf16(bits)
    finite = ~np.isnan(values)
    out = _testing.k_round_bf16(values[finite])
    np.testing.assert_array_equal(out, bits[finite])
    t = minillm.from_numpy(values[finite].copy()).astype("bfloat16")
    np.testing.assert_array_equal(np.asarray(t), bits[finite])


def test_bf16_rounding_is_nearest_even_with_nan_and_inf_kept():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    ties = widen_bf16(np.arange(0, 1 << 16, 97, dtype=np.uint32).astype(np.uint16)).view(np.uint32) | 0x8000
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1.0 + 2.0 ** -8,
                         1.0 + 3 * 2.0 ** -8, np.float32(3.3961776e38)], dtype=np.float32)
    x = np.concatenate([x, ties.view(np.float32), specials])
    out = _testing.k_round_bf16(x)
    np.testing.assert_array_equal(out, round_bf16_bits(x))
    np.testing.assert_array_equal(np.asarray(minillm.from_numpy(x.copy()).astype("bfloat16")), round_bf16_bits(x))
    # ties go to the even neighbour: 1 + 2^-8 is halfway between 1 and 1 + 2^-7
    assert widen_bf16(_testing.k_round_bf16(np.array([1.0 + 2.0 ** -8], np.float32)))[0] == 1.0
    assert widen_bf16(_testing.k_round_bf16(np.array([1.0 + 3 * 2.0 ** -8], np.float32)))[0] == 1.0 + 2.0 ** -6
    back = widen_bf16(_testing.k_round_bf16(np.array([np.inf, -np.inf, np.nan], np.float32)))
    assert back[0] == np.inf and back[1] == -np.inf and np.isnan(back[2])
    # values past the largest bf16 round to infinity
    assert widen_bf16(_testing.k_round_bf16(np.array([3.4e38], np.float32)))[0] == np.inf


# ------------------------------------------------------------------ GEMM

def check(out, a, b, transa, transb, alpha=1.0, beta=0.0, c0=None):
    A = bf16_values(a).astype(np.float64)
    B = bf16_values(b).astype(np.float64)
    A, B = (A.T if transa else A), (B.T if transb else B)
    ref = alpha * (A @ B)
    bound = abs(alpha) * (np.abs(A) @ np.abs(B))
    if c0 is not None and beta != 0.0:
        ref = ref + beta * c0.astype(np.float64)
        bound = bound + abs(beta) * np.abs(c0)
    K = A.shape[1]
    err = np.abs(out.astype(np.float64) - ref)
    tol = (K + 4) * U * bound + 1e-30
    assert (err <= tol).all(), f"max error {err.max()} over tolerance {tol[err.argmax() // tol.shape[1]].max()}"


SIZES = [(1, 1, 1), (3, 5, 7), (13, 31, 2), (14, 32, 3), (15, 33, 17), (29, 65, 769), (130, 97, 1537),
         (257, 40, 64)]


@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
@pytest.mark.parametrize("M,N,K", SIZES)
def test_gemm_bf16_matches_float64_of_rounded_inputs(isa, M, N, K, transa, transb):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    a = rng.standard_normal((K, M) if transa else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if transb else (K, N)).astype(np.float32)
    out = _C.matmul_bf16(minillm.from_numpy(a), minillm.from_numpy(b), transpose_a=transa, transpose_b=transb)
    check(out.numpy(), a, b, transa, transb)


def test_gemm_bf16_is_not_the_float32_product():
    # guards the test above: unrounded inputs would be outside its tolerance
    rng = np.random.default_rng(5)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = rng.standard_normal((300, 50)).astype(np.float32)
    out = _C.matmul_bf16(minillm.from_numpy(a), minillm.from_numpy(b)).numpy()
    exact = a.astype(np.float64) @ b.astype(np.float64)
    tol = (300 + 4) * U * (np.abs(a) @ np.abs(b))
    assert (np.abs(out - exact) / tol).max() > 10


@pytest.mark.parametrize("transa,transb", [(False, False), (False, True), (True, False), (True, True)])
def test_gemm_bf16_reads_bf16_operands_like_rounded_float32(isa, transa, transb):
    rng = np.random.default_rng(7)
    M, N, K = 45, 70, 301
    a = rng.standard_normal((K, M) if transa else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if transb else (K, N)).astype(np.float32)
    ta, tb = minillm.from_numpy(a), minillm.from_numpy(b)
    want = _C.matmul_bf16(ta, tb, transpose_a=transa, transpose_b=transb).numpy()
    for x, y in [(ta.astype("bfloat16"), tb), (ta, tb.astype("bfloat16")),
                 (ta.astype("bfloat16"), tb.astype("bfloat16"))]:
        got = _C.matmul_bf16(x, y, transpose_a=transa, transpose_b=transb).numpy()
        np.testing.assert_array_equal(got, want)


def test_gemm_bf16_alpha_beta_strided_and_batched(isa):
    rng = np.random.default_rng(11)
    wide = rng.standard_normal((50, 90)).astype(np.float32)
    a = wide[:, 5:75]                                          # (50, 70), row stride 90
    b = rng.standard_normal((70, 33)).astype(np.float32)
    c0 = rng.standard_normal((50, 33)).astype(np.float32)
    out = minillm.from_numpy(c0.copy())
    _C.matmul_bf16(minillm.from_numpy(wide)[:, 5:75], minillm.from_numpy(b), out=out, alpha=0.5, beta=-2.0)
    check(out.numpy(), a, b, False, False, alpha=0.5, beta=-2.0, c0=c0)
    # batched with a broadcast 2-D right operand, and a fully batched product
    x = rng.standard_normal((3, 4, 20, 70)).astype(np.float32)
    y = _C.matmul_bf16(minillm.from_numpy(x), minillm.from_numpy(b)).numpy()
    for i in range(3):
        for j in range(4):
            check(y[i, j], x[i, j], b, False, False)
    bb = rng.standard_normal((3, 1, 33, 70)).astype(np.float32)
    y = _C.matmul_bf16(minillm.from_numpy(x), minillm.from_numpy(bb), transpose_b=True).numpy()
    assert y.shape == (3, 4, 20, 33)
    for i in range(3):
        for j in range(4):
            check(y[i, j], x[i, j], bb[i, 0], False, True)


def test_gemm_bf16_one_and_two_threads_bitwise(threads):
    rng = np.random.default_rng(3)
    for M, N, K, ta, tb in [(300, 200, 900, False, True), (123, 517, 1000, True, False), (64, 4200, 80, False, False)]:
        a = minillm.from_numpy(rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32))
        b = minillm.from_numpy(rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32))
        threads(1)
        one = _C.matmul_bf16(a, b, transpose_a=ta, transpose_b=tb).numpy()
        threads(2)
        two = _C.matmul_bf16(a, b, transpose_a=ta, transpose_b=tb).numpy()
        np.testing.assert_array_equal(one, two)


def test_gemm_bf16_errors_name_shapes_and_dtypes():
    a = minillm.zeros(3, 4)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        _C.matmul_bf16(a, minillm.zeros(5, 2))
    with pytest.raises(TypeError, match="int64"):
        _C.matmul_bf16(a, minillm.zeros(4, 2, dtype="int64"))
    with pytest.raises(ValueError, match="0-d"):
        _C.matmul_bf16(a, minillm.zeros(()))


def test_gemm_bf16_zero_k_scales_out():
    out = minillm.full((2, 3), 4.0)
    _C.matmul_bf16(minillm.zeros(2, 0), minillm.zeros(0, 3), out=out, beta=0.5)
    np.testing.assert_array_equal(out.numpy(), np.full((2, 3), 2.0, np.float32))


# ------------------------------------------------------------------ autocast

def test_autocast_linear_forward_and_backward_use_rounded_inputs():
    rng = np.random.default_rng(2)
    xn = rng.standard_normal((2, 5, 48)).astype(np.float32)
    wn = rng.standard_normal((24, 48)).astype(np.float32)
    gn = rng.standard_normal((2, 5, 24)).astype(np.float32)
    x = minillm.from_numpy(xn.copy()).requires_grad_()
    w = minillm.from_numpy(wn.copy()).requires_grad_()
    with minillm.autocast(dtype="bfloat16"):
        assert minillm.is_autocast_enabled()
        y = F.linear(x, w)
    assert not minillm.is_autocast_enabled()
    y.backward(minillm.from_numpy(gn))          # outside the block: the recorded GEMM is kept
    x2, g2 = xn.reshape(10, 48), gn.reshape(10, 24)
    check(y.numpy().reshape(10, 24), x2, wn, False, True)
    check(x.grad.numpy().reshape(10, 48), g2, wn, False, False)
    check(w.grad.numpy(), g2, x2, True, False)
    assert x.grad.dtype == w.grad.dtype == "float32"
    # float32 outside autocast: close to the exact product, unlike the bf16 one
    exact = x2.astype(np.float64) @ wn.T.astype(np.float64)
    assert np.abs(F.linear(x, w).numpy().reshape(10, 24) - exact).max() < 1e-4
    assert np.abs(y.numpy().reshape(10, 24) - exact).max() > 1e-3


def test_autocast_nests_and_rejects_unknown_dtypes():
    with minillm.autocast("bf16"):
        with minillm.autocast(enabled=False):
            assert not minillm.is_autocast_enabled()
        assert minillm.is_autocast_enabled()
    assert not minillm.is_autocast_enabled()
    with pytest.raises(ValueError, match="float16"):
        minillm.autocast(dtype="float16")


def test_autocast_is_per_thread(held_in_another_thread):
    with held_in_another_thread(lambda: minillm.autocast("bf16"), minillm.is_autocast_enabled):
        assert not minillm.is_autocast_enabled()     # the other thread's block does not leak

    @minillm.autocast("bf16")
    def products():
        return minillm.is_autocast_enabled()
    assert products() and not minillm.is_autocast_enabled()


def _train(dtype, steps=200, seed=0):
    data = np.frombuffer(open(__file__.rsplit("/", 1)[0] + "/data/sample.txt", "rb").read(), dtype=np.uint8)
    data = data.astype(np.int64)
    model = build_model("gpt-tiny", generator=minillm.Generator(seed), vocab_size=256, block_size=32)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3)
    rng = np.random.default_rng(seed)
    B, T = 8, 32
    losses = []
    for _ in range(steps):
        starts = rng.integers(0, len(data) - T - 1, size=B)
        x = minillm.from_numpy(np.stack([data[s:s + T] for s in starts]))
        y = minillm.from_numpy(np.stack([data[s + 1:s + T + 1] for s in starts]))
        with minillm.autocast(dtype=dtype):
            _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # master weights stay float32
    assert all(p.dtype == "float32" for p in model.parameters())
    return np.mean(losses[-20:]), losses[0]


def test_bf16_training_tracks_float32_loss(threads):
    # one thread: results do not depend on the count, and a tiny model only waits at barriers
    threads(1)
    f32, first = _train("float32")
    bf16, _ = _train("bfloat16")
    assert f32 < 0.75 * first                    # it did learn
    assert abs(bf16 - f32) <= 0.02 * f32, f"bf16 final loss {bf16:.4f} vs float32 {f32:.4f}"


def test_trainer_dtype_bf16_trains_close_to_float32():
    """`minillm train --dtype bf16`: the Trainer's forward runs under autocast and ends near
    the float32 run; float32 master weights stay float32."""
    from minillm.train import TrainConfig, Trainer
    tokens = np.random.default_rng(0).integers(0, 64, size=3000).astype(np.uint16)
    losses = {}
    for dtype in ("float32", "bf16"):
        import tempfile
        cfg = TrainConfig(out_dir=tempfile.mkdtemp(), model="gpt-tiny", block_size=32, batch_size=8,
                          max_steps=30, lr=3e-3, warmup_steps=5, eval_interval=0,
                          checkpoint_interval=0, progress="none", dropout=0.0, dtype=dtype)
        trainer = Trainer(cfg, train_tokens=tokens, val_tokens=None)
        trainer.train()
        losses[dtype] = np.mean([loss for _, loss in trainer.history[-5:]])
        assert all(p.dtype == "float32" for p in trainer.model.parameters())
    assert losses["float32"] < np.log(64) - 0.05          # it learned something
    assert abs(losses["bf16"] - losses["float32"]) / losses["float32"] < 0.02
    assert losses["bf16"] != losses["float32"]            # the bf16 products really ran
