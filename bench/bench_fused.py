"""Fused causal attention (csrc/attention.c) forward + backward against the composed ops
(matmul, causal fill, softmax, matmul) and torch.nn.functional.scaled_dot_product_attention,
fused bias + GELU against gelu(x + b) and fused residual add + layernorm against add then
layer_norm, all at 2 threads, in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_fused.py            # prints the table (best of interleaved runs)
    python bench/bench_fused.py --cpu-time     # 1 thread, CPU time: for a busy machine
    env ... python -m pytest bench/bench_fused.py   # the same cases through pytest-benchmark

Times are the best of several interleaved runs (fused, composed, torch, fused, ...) so every
implementation sees the same machine state. GFLOPS count the causal half of the four
(T, T, hs) products of forward + backward as 2 B nh T^2 hs x 3.5 (forward 2 products,
backward 5, halved by the mask), the work a flash kernel does.
"""
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minillm  # noqa: E402
import minillm.functional as F  # noqa: E402

SHAPES = [(16, 4, 128, 64), (4, 12, 256, 64)]   # (B, nh, T, hs)
BIAS_GELU = [(2048, 1024), (4096, 3072)]         # (N, C): gpt-mini and GPT-2 small MLPs
ADD_LN = [(2048, 256), (4096, 768)]              # (N, C): gpt-mini and GPT-2 small residuals
THREADS = int(os.environ.get("MINILLM_NUM_THREADS", "2"))


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]


def minillm_step(arrays, fused):
    """One forward + backward of causal attention through minillm; returns a callable."""
    q, k, v, dout = (minillm.Tensor.from_numpy(a) for a in arrays)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]

    def step():
        prev = F.set_fused_enabled(fused)
        try:
            for t in leaves:
                t.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dout)
        finally:
            F.set_fused_enabled(prev)
    return step


def torch_step(arrays):
    import torch
    torch.set_num_threads(THREADS)
    q, k, v = (torch.from_numpy(a).requires_grad_(True) for a in arrays[:3])
    dout = torch.from_numpy(arrays[3])

    def step():
        for t in (q, k, v):
            t.grad = None
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dout)
    return step


def bias_gelu_step(N, C, fused):
    rng = np.random.default_rng(0)
    x = minillm.Tensor.from_numpy(rng.standard_normal((N, C)).astype(np.float32)).requires_grad_(True)
    b = minillm.Tensor.from_numpy(rng.standard_normal(C).astype(np.float32)).requires_grad_(True)
    dy = minillm.Tensor.from_numpy(rng.standard_normal((N, C)).astype(np.float32))

    def step():
        prev = F.set_fused_enabled(fused)
        try:
            x.grad = b.grad = None
            F.bias_gelu(x, b).backward(dy)
        finally:
            F.set_fused_enabled(prev)
    return step


def add_layer_norm_step(N, C, fused):
    rng = np.random.default_rng(0)
    x, r, dy = (minillm.Tensor.from_numpy(rng.standard_normal((N, C)).astype(np.float32)) for _ in range(3))
    w, b = (minillm.Tensor.from_numpy(rng.standard_normal(C).astype(np.float32)).requires_grad_(True)
            for _ in range(2))
    leaves = [x.requires_grad_(True), r.requires_grad_(True), w, b]

    def step():
        prev = F.set_fused_enabled(fused)
        try:
            for t in leaves:
                t.grad = None
            s, y = F.add_layer_norm(x, r, w, b)
            F.add(s, y).backward(dy)
        finally:
            F.set_fused_enabled(prev)
    return step


# --cpu-time: one thread everywhere, timed by the calling thread's CPU time
# (time.thread_time), which other processes on a busy machine do not inflate
_clock = time.perf_counter


def best_times(fns, budget=3.0, min_reps=3, max_reps=30):
    """Best time of each function, interleaved, after one warm-up call each."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    start, reps = time.perf_counter(), 0
    while reps < min_reps or (reps < max_reps and time.perf_counter() - start < budget):
        for i, f in enumerate(fns):
            t = _clock()
            f()
            best[i] = min(best[i], _clock() - t)
        reps += 1
    return best


def main():
    global THREADS, _clock
    if "--cpu-time" in sys.argv:
        THREADS, _clock = 1, time.thread_time
    minillm.set_num_threads(THREADS)
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    print(f"CPU: {minillm.cpu_info()['cpu']}, ISA {minillm.cpu_info()['isa']}, {THREADS} threads, "
          f"torch {torch_version or 'not installed'}, load average {os.getloadavg()[0]:.1f}, "
          f"{'CPU time of the calling thread' if _clock is time.thread_time else 'wall time'}")
    print("\ncausal attention, forward + backward (ms, best of interleaved runs)")
    print(f"{'(B, nh, T, hs)':>18} {'fused':>8} {'composed':>9} {'torch':>8} {'fused GFLOPS':>13} "
          f"{'composed/fused':>15} {'torch/fused':>12}")
    for shape in SHAPES:
        arrays = _data(shape)
        fns = [minillm_step(arrays, True), minillm_step(arrays, False)]
        if torch_version:
            fns.append(torch_step(arrays))
        t = best_times(fns)
        B, nh, T, hs = shape
        gflops = 2 * B * nh * T * T * hs * 3.5 / t[0] / 1e9
        tt = f"{t[2] * 1e3:8.2f}" if torch_version else f"{'-':>8}"
        ratio = f"{t[2] / t[0]:12.2f}" if torch_version else f"{'-':>12}"
        print(f"{str(shape):>18} {t[0] * 1e3:8.2f} {t[1] * 1e3:9.2f} {tt} {gflops:13.1f} "
              f"{t[1] / t[0]:15.2f} {ratio}")
    print("\nbias + GELU, forward + backward (ms)")
    print(f"{'(N, C)':>18} {'fused':>8} {'composed':>9} {'composed/fused':>15}")
    for N, C in BIAS_GELU:
        t = best_times([bias_gelu_step(N, C, True), bias_gelu_step(N, C, False)])
        print(f"{str((N, C)):>18} {t[0] * 1e3:8.2f} {t[1] * 1e3:9.2f} {t[1] / t[0]:15.2f}")
    print("\nresidual add + layernorm, forward + backward of s + y (ms)")
    print(f"{'(N, C)':>18} {'fused':>8} {'composed':>9} {'composed/fused':>15}")
    for N, C in ADD_LN:
        t = best_times([add_layer_norm_step(N, C, True), add_layer_norm_step(N, C, False)])
        print(f"{str((N, C)):>18} {t[0] * 1e3:8.2f} {t[1] * 1e3:9.2f} {t[1] / t[0]:15.2f}")


# ------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["fused", "composed", "torch"])
def test_attention_forward_backward(benchmark, impl, shape):
    benchmark.group = f"attention fwd+bwd {shape}"
    arrays = _data(shape)
    if impl == "torch":
        pytest.importorskip("torch")
        step = torch_step(arrays)
    else:
        step = minillm_step(arrays, impl == "fused")
    benchmark(step)


@pytest.mark.parametrize("shape", BIAS_GELU, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["fused", "composed"])
def test_bias_gelu_forward_backward(benchmark, impl, shape):
    benchmark.group = f"bias+gelu fwd+bwd {shape}"
    benchmark(bias_gelu_step(*shape, impl == "fused"))


@pytest.mark.parametrize("shape", ADD_LN, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["fused", "composed"])
def test_add_layer_norm_forward_backward(benchmark, impl, shape):
    benchmark.group = f"add+layernorm fwd+bwd {shape}"
    benchmark(add_layer_norm_step(*shape, impl == "fused"))


if __name__ == "__main__":
    main()
