"""Random fills and safetensors I/O, minillm vs its peers in the same run (one group per task,
so the ratio is visible).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \\
        python -m pytest bench/bench_rng.py

Fills write 2^22 float32 into a preallocated buffer: minillm's Generator, NumPy's default
generator (PCG64, with out=) and torch's in-place normal_/uniform_ when torch is installed.
I/O saves and loads 64 float32 tensors of 256x1024 (64 MiB) against the safetensors package;
minillm's save includes its fsync, so it pays for durability the peer does not.
"""
import importlib.util

import numpy as np
import pytest

from minillm import serialization
from minillm.random import Generator

N = 1 << 22
FILL_IMPLS = ["minillm", "numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])
IO_IMPLS = ["minillm"] + (["safetensors"] if importlib.util.find_spec("safetensors") else [])


@pytest.fixture(scope="module")
def buf():
    return np.empty(N, np.float32)


def _filler(impl, kind, buf):
    if impl == "minillm":
        g = Generator(0)
        return (lambda: g.normal_(buf)) if kind == "normal" else (lambda: g.uniform_(buf))
    if impl == "numpy":
        rng = np.random.default_rng(0)
        if kind == "normal":
            return lambda: rng.standard_normal(N, dtype=np.float32, out=buf)
        return lambda: rng.random(N, dtype=np.float32, out=buf)
    import torch
    t = torch.from_numpy(buf)
    return t.normal_ if kind == "normal" else t.uniform_


@pytest.mark.parametrize("impl", FILL_IMPLS)
def test_normal_fill(benchmark, buf, impl):
    benchmark.group = f"normal fill {N}"
    benchmark(_filler(impl, "normal", buf))
    assert abs(float(buf.mean())) < 0.01 and abs(float(buf.std()) - 1) < 0.01


@pytest.mark.parametrize("impl", FILL_IMPLS)
def test_uniform_fill(benchmark, buf, impl):
    benchmark.group = f"uniform fill {N}"
    benchmark(_filler(impl, "uniform", buf))
    assert 0.0 <= float(buf.min()) and float(buf.max()) < 1.0


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(0)
    return {f"layer{i}.weight": rng.standard_normal((256, 1024), dtype=np.float32) for i in range(64)}


@pytest.mark.parametrize("impl", IO_IMPLS)
def test_save_64mib(benchmark, tmp_path, tensors, impl):
    benchmark.group = "save 64 MiB"
    path = str(tmp_path / "m.safetensors")
    if impl == "minillm":
        benchmark(serialization.save, tensors, path)
    else:
        from safetensors.numpy import save_file
        benchmark(save_file, tensors, path)
    assert serialization.load(path)["layer7.weight"][3, 5] == tensors["layer7.weight"][3, 5]


@pytest.mark.parametrize("impl", IO_IMPLS + ["minillm-mmap"])
def test_load_64mib(benchmark, tmp_path, tensors, impl):
    """Copies into memory; minillm-mmap maps the file and reads every tensor once (sum)."""
    benchmark.group = "load 64 MiB"
    path = str(tmp_path / "m.safetensors")
    serialization.save(tensors, path)
    if impl == "minillm":
        out = benchmark(serialization.load, path, mmap=False)
    elif impl == "minillm-mmap":
        def load_and_touch():
            d = serialization.load(path)
            for v in d.values():
                v.sum()
            return d
        out = benchmark(load_and_touch)
    else:
        from safetensors.numpy import load_file
        out = benchmark(load_file, path)
    assert np.array_equal(out["layer9.weight"], tensors["layer9.weight"])
