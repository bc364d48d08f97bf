"""Decoding with narrow weights: tokens/s of GPT-2 small (random weights) with float32, bf16 and
int8 weights in minillm's decode plan, against CTranslate2 (float32 and int8) on the same
weights, same run. Batch 1, a 16-token prompt, 128 new tokens, greedy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_quantized.py [--model gpt2-small] [--threads 2] [--repeats 5]

A step reads every streamed weight once, so tokens/s tracks the bytes per token: printed next
to each row (float32 4, bf16 2, int8 1.0625 bytes per Linear weight here; CTranslate2's int8
keeps one scale per row). CTranslate2 is optional (pip install ctranslate2); its rows are left
out, and said so, where it is absent. Timings interleave the engines and keep the best run.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from conftest import cpu_model  # noqa: E402  (bench/conftest.py)
from minillm.generate import generate  # noqa: E402
from minillm.models import build_model  # noqa: E402
from minillm.models.gpt import save_pretrained  # noqa: E402

PROMPT, NEW_TOKENS = 16, 128


def plan_bytes(plan):
    """Bytes a step streams: every block's Linear weights and the head, as stored."""
    total = 0
    for w in plan.streamed_weights():
        if isinstance(w, minillm._C.Int8Matrix):
            total += w.values.nbytes + w.scales.nbytes
        else:
            total += w.nbytes
    return total


def token(i, V):
    """The placeholder string of id i (the last id is GPT-2's <|endoftext|>, as the tokenizer expects)."""
    return "<|endoftext|>" if i == V - 1 else f"t{i}"


def ct2_folder(model, root):
    """The model as a transformers folder (with a placeholder vocabulary: CTranslate2 takes
    token strings), converted by CTranslate2 for each compute type it is timed with."""
    import ctranslate2
    hf = os.path.join(root, "hf")
    save_pretrained(model, hf)
    V = model.config.vocab_size
    with open(os.path.join(hf, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token(i, V): i for i in range(V)}, f)
    with open(os.path.join(hf, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    out = {}
    for q in ("float32", "int8"):
        dst = os.path.join(root, f"ct2-{q}")
        ctranslate2.converters.TransformersConverter(hf).convert(dst, quantization=q, force=True)
        out[q] = dst
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt2-small")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    minillm.set_num_threads(args.threads)
    model = build_model(args.model, generator=minillm.Generator(0)).eval()
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
    runs, sizes = {}, {}
    for w in ("float32", "bf16", "int8"):
        plan = model.decoder(weights=w)
        sizes[f"minillm {w}"] = plan_bytes(plan)
        runs[f"minillm {w}"] = lambda plan=plan: generate(model, prompt, NEW_TOKENS, greedy=True, decoder=plan)
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
        print("CTranslate2 is not installed: its rows are left out (pip install ctranslate2)")
    tmp = tempfile.TemporaryDirectory()
    if ctranslate2 is not None:
        start = [token(i, model.config.vocab_size) for i in prompt[0]]
        for q, path in ct2_folder(model, tmp.name).items():
            gen = ctranslate2.Generator(path, device="cpu", compute_type=q, intra_threads=args.threads)
            runs[f"ctranslate2 {q}"] = lambda gen=gen: gen.generate_batch(
                [start], max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1,
                include_prompt_in_result=False)
    best = {name: math.inf for name in runs}
    for fn in runs.values():
        fn()                                     # warm up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            time.sleep(0.5)                  # let the previous engine's idle threads stop spinning
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    tmp.cleanup()
    print(f"{cpu_model()}, {args.threads} threads; {args.model}, batch 1, prompt {PROMPT}, {NEW_TOKENS} new tokens, "
          f"greedy, best of {args.repeats}")
    base = NEW_TOKENS / best["minillm float32"]
    print(f"{'engine':<22} {'tokens/s':>9} {'vs minillm f32':>15} {'MB/token':>9}")
    for name in runs:
        rate = NEW_TOKENS / best[name]
        mb = f"{sizes[name] / 1e6:9.1f}" if name in sizes else f"{'':>9}"
        print(f"{name:<22} {rate:9.1f} {rate / base:15.2f} {mb}")
    for q in ("int8",):
        if f"ctranslate2 {q}" in best:
            print(f"minillm {q} / ctranslate2 {q}: {best[f'ctranslate2 {q}'] / best[f'minillm {q}']:.2f}x")


if __name__ == "__main__":
    main()
