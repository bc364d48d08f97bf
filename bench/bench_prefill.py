"""The prompt pass: a 512-token prompt through GPT-2 small's forward (the GEMM path, no grad,
what generate() and the engine run before decoding), as a fraction of minillm's own GEMM
throughput measured in the same run, in float32 and under bf16 autocast (the bf16 GEMM).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_prefill.py [--tokens 512] [--repeats 5]

FLOPs of the pass: 2 x (weights of the block matrices) per token, the LM head once (a forward
without targets computes the last position's logits only), plus the attention products (2 x 2 x
n_layer x T^2 x C / 2, causal). The GEMM reference is the median of 2048^3 products of the same
dtype.

Then the other way in: a prompt as rows of the decode plan (Decoder.extend: the decoding
kernels, each weight read once for all the prompt's rows, no packing) against the forward, per
weight dtype and prompt length: where the engine and generate() switch from one to the other
(Decoder.prefills_by_rows).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from conftest import cpu_model  # noqa: E402  (bench/conftest.py)
from minillm import _C  # noqa: E402
from minillm.autograd import no_grad  # noqa: E402
from minillm.generate import KVCache  # noqa: E402
from minillm.models import build_model  # noqa: E402
from bench_generate import best_of  # noqa: E402


def gemm_gflops(bf16, repeats):
    a, b = minillm.randn(2048, 2048), minillm.randn(2048, 2048)
    fn = (lambda: _C.matmul_bf16(a, b)) if bf16 else (lambda: _C.matmul(a, b))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", default="8,16,32,64,256,512", help="prompt lengths for the rows-against-forward table")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    args = ap.parse_args(argv)
    minillm.set_num_threads(args.threads)
    model = build_model("gpt2-small", generator=minillm.Generator(0)).eval()
    cfg = model.config
    T = args.tokens
    idx = minillm.tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, T)), dtype="int64")
    blocks = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "wpe" not in n
                 and "wte" not in n and "lm_head" not in n)
    flops = 2 * blocks * T + 2 * cfg.vocab_size * cfg.n_embd + 2 * cfg.n_layer * T * T * cfg.n_embd

    def forward():
        with no_grad():
            model(idx)

    print(f"{cpu_model()}, {args.threads} threads; gpt2-small, one prompt of {T} tokens, best of {args.repeats}")
    for name, bf16 in (("float32", False), ("bf16 autocast", True)):
        ref = gemm_gflops(bf16, args.repeats)
        if bf16:
            with minillm.autocast(dtype="bfloat16"):
                forward()
                secs = best_of(forward, args.repeats)
        else:
            forward()
            secs = best_of(forward, args.repeats)
        got = flops / secs / 1e9
        print(f"{name:<14} {secs * 1e3:8.1f} ms  {T / secs:8.0f} tokens/s  {got:6.1f} GFLOPS  "
              f"= {100 * got / ref:3.0f}% of our 2048^3 GEMM ({ref:.1f} GFLOPS)")
    print()
    print("a prompt through the forward (float32 weights) and as rows of the decode plan, ms")
    lengths = [int(n) for n in args.rows.split(",")]
    print(f"{'weights':<8} " + " ".join(f"{n:>15}" for n in lengths))
    rng = np.random.default_rng(1)
    for weights in ("float32", "bf16", "int8"):
        plan = model.decoder(weights=weights)
        cells = []
        for n in lengths:
            ids = rng.integers(0, cfg.vocab_size, n).tolist()

            def by_forward():
                with no_grad():
                    model(minillm.tensor([ids], dtype="int64"), kv_cache=KVCache.for_model(model, 1, capacity=n))

            def by_rows():
                plan.extend([(ids, KVCache.for_model(model, 1, capacity=n))])
            by_rows()
            f, r = best_of(by_forward, args.repeats), best_of(by_rows, args.repeats)
            cells.append(f"{f * 1e3:6.1f} / {r * 1e3:6.1f}")
        print(f"{weights:<8} " + " ".join(f"{c:>15}" for c in cells) + "   (forward / rows)")


if __name__ == "__main__":
    main()
