"""Batched decoding: total tokens/s of the engine (minillm/engine.py) with 1, 4 and 8
sequences decoded together, each at its own position (prompts of different lengths), one read
of the weights per step for all of them. Random-weight models, greedy, 64 new tokens each.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_batch.py [--models gpt2-small,gpt-mini] [--weights float32,int8] [--repeats 3]

A step costs one read of the weights plus B rows of arithmetic, so total tokens/s grows with B
until the arithmetic catches up with the read: the ratio column is against the first batch
size (1) of the same model and weights, each the best of --repeats runs taken in turn with the
other batch sizes (batch 1, 4, 8, 1, 4, 8, ...), so that a machine whose speed drifts during
the bench moves every column alike. "vs alone": the same B prompts decoded one after another,
each alone (the same tokens, prompts included, served one at a time), against together.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from conftest import cpu_model  # noqa: E402  (bench/conftest.py)
from minillm.engine import Engine  # noqa: E402
from minillm.models import build_model  # noqa: E402

NEW = 64


def prompts(B, vocab, seed):
    """B prompts of 8, 11, .., 8 + 3 (B - 1) random ids."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=8 + 3 * b).tolist() for b in range(B)]


def run_batch(engine, batch):
    """(seconds, tokens) to decode NEW tokens for each prompt of `batch`, all together."""
    for p in batch:
        engine.add(p, max_new_tokens=NEW, greedy=True)
    t = time.perf_counter()
    n = 0
    while engine.has_work():
        n += sum(ev.token is not None for ev in engine.step())
    return time.perf_counter() - t, n


def run_alone(engine, batch):
    """(seconds, tokens) to decode the same prompts one after another, each alone."""
    secs = n = 0
    for p in batch:
        s, k = run_batch(engine, [p])
        secs, n = secs + s, n + k
    return secs, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="gpt2-small,gpt-mini")
    ap.add_argument("--weights", default="float32,int8")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    minillm.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{cpu_model()}, {args.threads} threads; greedy, {NEW} new tokens per sequence, best of {args.repeats}")
    print(f"{'model':<11} {'weights':<8} {'batch':>5} {'tokens/s':>9} {'vs batch 1':>10} {'vs alone':>9}")
    for name in args.models.split(","):
        from minillm.models import PRESETS
        model = build_model(name, generator=minillm.Generator(0),
                            block_size=max(PRESETS[name]["block_size"], 8 + 3 * max(batches) + NEW + 1)).eval()
        for w in args.weights.split(","):
            engine = Engine(model, max_batch=max(batches), weights=w)
            V = model.config.vocab_size
            run_batch(engine, prompts(1, V, 0))                             # warm up
            best = {B: math.inf for B in batches}
            alone = {B: math.inf for B in batches}
            for r in range(args.repeats):           # the batches interleaved: a machine whose speed
                for B in batches:                   # drifts moves them alike
                    secs, n = run_batch(engine, prompts(B, V, r))
                    best[B] = min(best[B], secs / n)
                    if B > 1:
                        secs, n = run_alone(engine, prompts(B, V, r))
                        alone[B] = min(alone[B], secs / n)
            base = 1 / best[batches[0]]
            for B in batches:
                rate = 1 / best[B]
                vs = f"{alone[B] / best[B]:9.2f}" if B > 1 else f"{'':>9}"
                print(f"{name:<11} {w:<8} {B:>5} {rate:9.1f} {rate / base:10.2f} {vs}")


if __name__ == "__main__":
    main()
