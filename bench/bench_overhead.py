"""Per-op overhead: `a + b` on 16-element float32 tensors, minillm vs NumPy vs PyTorch.

Small models are bound by this overhead. Compare the medians within one group:
    make bench   (or: python -m pytest bench/bench_overhead.py)
"""
import numpy as np
import pytest

import minillm


def _pair(impl):
    a = np.arange(16, dtype=np.float32)
    b = np.ones(16, dtype=np.float32)
    if impl == "minillm":
        return minillm.tensor(a), minillm.tensor(b)
    if impl == "torch":
        torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch peer")
        return torch.from_numpy(a), torch.from_numpy(b)
    return a, b


@pytest.mark.benchmark(group="add-16")
@pytest.mark.parametrize("impl", ["minillm", "numpy", "torch"])
def test_add_16(benchmark, impl):
    a, b = _pair(impl)
    benchmark(lambda: a + b)


@pytest.mark.benchmark(group="mul-add-16")
@pytest.mark.parametrize("impl", ["minillm", "numpy", "torch"])
def test_mul_add_16(benchmark, impl):
    a, b = _pair(impl)
    benchmark(lambda: a * b + a)
