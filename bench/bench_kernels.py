"""Element-wise and row kernels on a (2048, 768) float32 activation, minillm vs NumPy in
the same run (one benchmark group per op, so the ratio is visible).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python -m pytest bench/bench_kernels.py

The NumPy versions are the usual one-liners a NumPy user would write, with preallocated
outputs where NumPy allows it, so both sides do the same memory traffic where they can.
"""
import numpy as np
import pytest

from minillm import _testing

ROWS, COLS = 2048, 768
IMPLS = ["minillm", "numpy"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((ROWS, COLS)).astype(np.float32),
        "y": rng.standard_normal((ROWS, COLS)).astype(np.float32),
        "gamma": rng.standard_normal(COLS).astype(np.float32),
        "beta": rng.standard_normal(COLS).astype(np.float32),
        "out": np.empty((ROWS, COLS), np.float32),
        "mean": np.empty(ROWS, np.float32),
        "rstd": np.empty(ROWS, np.float32),
    }


def np_softmax(x, out):
    np.subtract(x, x.max(1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(1, keepdims=True)


def np_layernorm(x, g, b, out, eps=1e-5):
    mu = x.mean(1, keepdims=True)
    np.subtract(x, mu, out=out)
    var = np.square(out).mean(1, keepdims=True)
    out *= 1.0 / np.sqrt(var + eps)
    out *= g
    out += b


def np_gelu(x, out):
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    t = x * x
    t *= np.float32(0.044715)
    t += np.float32(1.0)
    t *= x
    t *= np.float32(0.7978845608028654)
    np.tanh(t, out=t)
    t += np.float32(1.0)
    np.multiply(x, t, out=out)
    out *= np.float32(0.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_softmax(benchmark, data, impl):
    benchmark.group = f"softmax {ROWS}x{COLS}"
    x, out = data["x"], data["out"]
    if impl == "minillm":
        benchmark(_testing.k_softmax, x, out)
    else:
        benchmark(np_softmax, x, out)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_layernorm(benchmark, data, impl):
    benchmark.group = f"layernorm {ROWS}x{COLS}"
    x, g, b, out = data["x"], data["gamma"], data["beta"], data["out"]
    if impl == "minillm":
        benchmark(_testing.k_layernorm, x, g, b, out, data["mean"], data["rstd"], 1e-5)
    else:
        benchmark(np_layernorm, x, g, b, out)
    np.testing.assert_allclose(((out - b) / g).mean(1), 0.0, atol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_gelu(benchmark, data, impl):
    benchmark.group = f"gelu {ROWS}x{COLS}"
    x, out = data["x"].reshape(-1), data["out"].reshape(-1)
    if impl == "minillm":
        benchmark(_testing.k_unary, _testing.UN_GELU, x, out)
    else:
        benchmark(np_gelu, x, out)
    assert abs(out[0] - 0.5 * x[0] * (1 + np.tanh(0.7978845608 * (x[0] + 0.044715 * x[0] ** 3)))) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_add(benchmark, data, impl):
    benchmark.group = f"add {ROWS}x{COLS}"
    x, y, out = data["x"].reshape(-1), data["y"].reshape(-1), data["out"].reshape(-1)
    if impl == "minillm":
        benchmark(_testing.k_binary, _testing.OP_ADD, x, y, out)
    else:
        benchmark(np.add, x, y, out=out)
    assert out[5] == x[5] + y[5]
