"""bf16 mixed precision against float32, same run: the GEMM and a GPT training step.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_bf16.py [--repeats 7] [--steps 10] [--json out.json]

GEMM: C = op(A) @ op(B) with float32 operands, by mll_sgemm (`_C.matmul`) and by the bf16 GEMM
(`_C.matmul_bf16`: rounds while packing, VDPBF16PS products, float32 sums), square n = 1024 and
2048 and the products of a gpt-mini and a GPT-2 small training step (forward x @ W^T, backward
dY @ W and dY^T @ X). The two are timed alternately so machine load hits both alike; the figure
is the median, GFLOPS = 2 M N K / time, and the ratio bf16 / float32 is the result (target >= 1.6).

Training: one step (forward, loss, backward, AdamW) of gpt-mini (B 16, T 128) and, with
--train gpt-mini,gpt2-small, of GPT-2 small (B 4, T 256), in float32 and under
minillm.autocast(dtype="bfloat16"), alternating steps, median ms/step (target ratio >= 1.3).

--clock cpu times with the process's CPU time instead of the wall clock: on a machine shared
with other jobs the wall clock of a multi-threaded kernel mostly measures the other jobs (threads
wait at barriers for a descheduled sibling), while CPU time of a single thread
(MINILLM_NUM_THREADS=1) still measures the kernel. The default is the wall clock.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minillm  # noqa: E402
from minillm import _C  # noqa: E402
from minillm.models import build_model  # noqa: E402


def gemm_shapes():
    """(label, M, N, K, transa, transb)"""
    shapes = [("square 1024", 1024, 1024, 1024, False, False), ("square 2048", 2048, 2048, 2048, False, False)]
    for name, rows, C, V in [("gpt-mini", 16 * 128, 256, 4096), ("gpt2-small", 4 * 1024, 768, 50257)]:
        for what, n_out, n_in in [("c_attn", 3 * C, C), ("c_fc", 4 * C, C), ("mlp c_proj", C, 4 * C)]:
            shapes.append((f"{name} {what} fwd", rows, n_out, n_in, False, True))     # X @ W^T
            shapes.append((f"{name} {what} dX", rows, n_in, n_out, False, False))     # dY @ W
            shapes.append((f"{name} {what} dW", n_out, n_in, rows, True, False))      # dY^T @ X
        if name == "gpt-mini":
            shapes.append((f"{name} lm_head fwd", rows, V, C, False, True))
    return shapes


CLOCK = time.perf_counter


def time_pair(fa, fb, repeats):
    """Median seconds of fa and fb, called alternately (one warm-up call each)."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for f, acc in ((fa, ta), (fb, tb)):
            t0 = CLOCK()
            f()
            acc.append(CLOCK() - t0)
    return statistics.median(ta), statistics.median(tb)


def bench_gemm(repeats):
    rows = []
    rng = np.random.default_rng(0)
    for label, M, N, K, ta, tb in gemm_shapes():
        a = minillm.from_numpy(rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32))
        b = minillm.from_numpy(rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32))
        out = minillm.empty(M, N)
        t32, t16 = time_pair(lambda: _C.matmul(a, b, transpose_a=ta, transpose_b=tb, out=out),
                             lambda: _C.matmul_bf16(a, b, transpose_a=ta, transpose_b=tb, out=out), repeats)
        flop = 2.0 * M * N * K
        rows.append(dict(shape=label, M=M, N=N, K=K, transa=ta, transb=tb, f32_gflops=flop / t32 / 1e9,
                         bf16_gflops=flop / t16 / 1e9, ratio=t32 / t16))
        r = rows[-1]
        print(f"{label:24s} {M:5d} x {N:5d} x {K:5d} {'T' if ta else 'N'}{'T' if tb else 'N'}  "
              f"f32 {r['f32_gflops']:6.1f}  bf16 {r['bf16_gflops']:6.1f} GFLOPS  x{r['ratio']:.2f}", flush=True)
    return rows


# preset -> (batch, tokens) of the training-step comparison
TRAIN_SHAPES = {"gpt-mini": (16, 128), "gpt2-small": (4, 256)}


def bench_train(steps, preset="gpt-mini", B=16, T=128):
    model = build_model(preset, generator=minillm.Generator(0))
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4)
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    x = minillm.from_numpy(rng.integers(0, V, size=(B, T)).astype(np.int64))
    y = minillm.from_numpy(rng.integers(0, V, size=(B, T)).astype(np.int64))

    def step(dtype):
        with minillm.autocast(dtype=dtype):
            _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t32, t16 = time_pair(lambda: step("float32"), lambda: step("bfloat16"), steps)
    r = dict(model=preset, B=B, T=T, f32_ms=t32 * 1e3, bf16_ms=t16 * 1e3, ratio=t32 / t16)
    print(f"{preset} train step (B {B}, T {T}): f32 {r['f32_ms']:.1f} ms  bf16 {r['bf16_ms']:.1f} ms  "
          f"x{r['ratio']:.2f}", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed GEMM calls per shape and dtype")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per dtype")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall clock, or this process's CPU time (meaningful with one thread)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--train", default="gpt-mini",
                    help=f"comma-separated presets for the training step, of {sorted(TRAIN_SHAPES)} ('' for none)")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM table")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    info = minillm.cpu_info()
    print(f"CPU {info['cpu']}, isa {info['isa']}, avx512_bf16 {info['avx512_bf16']}, "
          f"bf16 GEMM native {_C.gemm_bf16_native()}, threads {minillm.get_num_threads()}, "
          f"clock {args.clock}", flush=True)
    presets = [p for p in args.train.split(",") if p]
    for p in presets:
        if p not in TRAIN_SHAPES:
            ap.error(f"--train: unknown preset {p!r}; choose from {sorted(TRAIN_SHAPES)}")
    gemm = [] if args.no_gemm else bench_gemm(args.repeats)
    train = [bench_train(args.steps, p, *TRAIN_SHAPES[p]) for p in presets]
    if gemm:
        ratios = [r["ratio"] for r in gemm]
        print(f"GEMM bf16/f32: geometric mean x{float(np.exp(np.mean(np.log(ratios)))):.2f}, "
              f"min x{min(ratios):.2f}, max x{max(ratios):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=info, clock=args.clock, gemm=gemm, train=train), f, indent=1)


if __name__ == "__main__":
    main()
