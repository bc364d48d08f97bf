"""Speed on a machine where another process takes a core: decoding and training with minillm's
thread choice by the clock, against minillm held at all its threads and at one, and CTranslate2
at the same threads, in the same run, quiet and busy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_busy.py [--threads 2] [--repeats 3] [--train-steps 120]

"busy" rows run while a process spins on the CPU (`while True: pass`, one of them: on a 2-core
machine, half the cores). Decoding: GPT-2 small with random weights, int8 and float32, batch 1,
prompt 16, 64 new tokens, greedy, best of --repeats. "by the clock" is the default decoding
pool (each job runs with the helper threads or on the caller alone, whichever it measured
faster: csrc/gemv.c); "held" always uses the helpers (minillm._C.set_decode_pool_tuning(False)).
Training: steps of the demo's model and options (configs/shakespeare-gpt-mini.json) on random
tokens, tokens/s over --train-steps steps after 12 warm-up steps, with tune_threads on (the
trainer times its steps at all threads and at half and trains at the faster) and off. The
results are bitwise the same in every row; only the speed differs.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from conftest import cpu_model  # noqa: E402  (bench/conftest.py)
from minillm.generate import generate  # noqa: E402
from minillm.models import build_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT, NEW_TOKENS = 16, 64


class Busy:
    """A process spinning on the CPU for the `with` block."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        time.sleep(1.0)


def decode_runs(threads):
    """name -> a function that decodes NEW_TOKENS and returns the seconds it took."""
    model = build_model("gpt2-small", generator=minillm.Generator(0)).eval()
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
    runs = {}
    for w in ("int8", "float32"):
        plan = model.decoder(weights=w)
        for label, n, tuning in (("by the clock", threads, True), ("held", threads, False), ("held", 1, True)):
            def run(plan=plan, n=n, tuning=tuning):
                minillm.set_num_threads(n)
                minillm._C.set_decode_pool_tuning(tuning)
                try:
                    t = time.perf_counter()
                    generate(model, prompt, NEW_TOKENS, greedy=True, decoder=plan)
                    return time.perf_counter() - t
                finally:
                    minillm._C.set_decode_pool_tuning(True)
                    minillm.set_num_threads(threads)
            runs[f"minillm {w}, {n} thread{'s' * (n > 1)}, {label}"] = run
    try:
        import ctranslate2
    except ImportError:
        print("CTranslate2 is not installed: its rows are left out (pip install ctranslate2)")
        return runs
    from bench_quantized import ct2_folders, gpt2_folder
    tmp = tempfile.mkdtemp()
    hf = os.path.join(tmp, "hf")
    words = gpt2_folder(model, hf)
    start = [words[i] for i in prompt[0]]
    for q, path in ct2_folders(hf, tmp, ["int8", "float32"]).items():
        for n in sorted({threads, 1}, reverse=True):
            gen = ctranslate2.Generator(path, device="cpu", compute_type=q, intra_threads=n)

            def run(gen=gen):
                t = time.perf_counter()
                gen.generate_batch([start], max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1,
                                   include_prompt_in_result=False)
                return time.perf_counter() - t
            runs[f"ctranslate2 {q}, {n} thread{'s' * (n > 1)}"] = run
    return runs


def train_rate(threads, tune, steps):
    """tokens/s of `steps` training steps of the demo's configuration on random tokens."""
    from minillm.train import Trainer, TrainConfig
    with open(os.path.join(ROOT, "configs", "shakespeare-gpt-mini.json")) as f:
        opts = json.load(f)
    vocab = 2048
    opts.update(data="", out_dir=tempfile.mkdtemp(), time_budget=0, max_steps=steps + 12, eval_interval=0,
                checkpoint_interval=0, sample_tokens=0, progress="none", num_threads=threads,
                tune_threads=tune, log_interval=10 ** 6)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, 400_000).astype(np.uint16)
    tokens[0] = vocab - 1                     # the model's vocabulary is the largest id + 1
    trainer = Trainer(TrainConfig.from_dict(opts), train_tokens=tokens, val_tokens=tokens[:4096])
    times, step = [], trainer.train_step

    def timed():
        t = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t)
        return out
    trainer.train_step = timed
    trainer.evaluate = lambda max_batches=-1: {"loss": 0.0, "ppl": 1.0, "tokens": 0}
    trainer.train()
    minillm.set_num_threads(threads)
    return opts["batch_size"] * opts["block_size"] * steps / sum(times[12:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=120)
    args = ap.parse_args(argv)
    minillm.set_num_threads(args.threads)
    runs = decode_runs(args.threads)
    for fn in runs.values():
        fn()                                             # warm up
    rates = {}
    for load in ("quiet", "busy"):
        best = {name: math.inf for name in runs}
        with Busy() if load == "busy" else _Nothing():
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    time.sleep(0.3)
                    best[name] = min(best[name], fn())
            for tune in (True, False):
                rates[("train", tune, load)] = train_rate(args.threads, tune, args.train_steps)
        for name in runs:
            rates[(name, load)] = NEW_TOKENS / best[name]
    print(f"{cpu_model()}, {args.threads} threads; busy = one other process spinning on a core")
    print(f"decoding GPT-2 small, batch 1, {NEW_TOKENS} new tokens, best of {args.repeats}: tokens/s")
    print(f"{'engine':<46} {'quiet':>8} {'busy':>8} {'busy/quiet':>10}")
    for name in runs:
        q, b = rates[(name, "quiet")], rates[(name, "busy")]
        print(f"{name:<46} {q:8.1f} {b:8.1f} {b / q:10.2f}")
    print(f"training the demo's model, {args.train_steps} steps: tokens/s")
    for tune, label in ((True, "tune_threads on (by the clock)"), (False, f"tune_threads off ({args.threads} threads)")):
        q, b = rates[("train", tune, "quiet")], rates[("train", tune, "busy")]
        print(f"{'minillm, ' + label:<46} {q:8.0f} {b:8.0f} {b / q:10.2f}")


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
