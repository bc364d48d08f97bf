"""pytest-benchmark view of the GEMM (run by `make bench`): minillm and numpy.matmul side by
side on a few square and GPT shapes; compare rows with the same shape. The full table with
ratios is bench/bench_gemm.py (`make bench-gemm`)."""
import numpy as np
import pytest

from minillm import _testing

# (M, N, K, layout): square sizes and the GPT-2 small MLP / attention projections at 512 tokens
SHAPES = [(128, 128, 128, "nn"), (512, 512, 512, "nn"), (1024, 1024, 1024, "nn"),
          (512, 3072, 768, "nn"), (512, 768, 3072, "nt"), (768, 3072, 512, "tn")]


def _operands(M, N, K, layout):
    rng = np.random.default_rng(0)
    ta, tb = layout[0] == "t", layout[1] == "t"
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    return ta, tb, a, b, np.empty((M, N), np.float32)


def _ids(shape):
    return "{}x{}x{}-{}".format(*shape)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_gemm_minillm(benchmark, shape):
    ta, tb, a, b, c = _operands(*shape)
    benchmark.extra_info["gflop"] = 2e-9 * shape[0] * shape[1] * shape[2]
    benchmark(_testing.k_sgemm, ta, tb, 1.0, a, b, 0.0, c)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_gemm_numpy(benchmark, shape):
    ta, tb, a, b, c = _operands(*shape)
    benchmark.extra_info["gflop"] = 2e-9 * shape[0] * shape[1] * shape[2]
    benchmark(np.matmul, a.T if ta else a, b.T if tb else b, out=c)
