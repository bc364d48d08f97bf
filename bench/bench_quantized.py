"""Decoding with narrow weights: tokens/s of a random-weight model with float32, bf16 and int8
weights in minillm's decode plan, against CTranslate2 (float32 and int8) on the same weights,
same run. Batch 1, a 16-token prompt, 128 new tokens, greedy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_quantized.py [--model gpt2-small] [--weights float32,bf16,int8] \
            [--threads 2] [--repeats 5]

--model is a GPT preset (gpt2-small, ...) or a Qwen2 shape: qwen2.5-0.5b (hidden 896, 24
layers, 14 heads, 2 key/value heads, MLP 4864, vocabulary 151936, tied embeddings, q/k/v
biases) or qwen-tiny (the same kind in seconds, to check the script). A Qwen2 model is built by
transformers' Qwen2ForCausalLM at its random initialisation and saved as a folder, which
minillm loads (models.load_pretrained) and CTranslate2 converts, so both run the same weights.
The Qwen2.5-0.5B run takes minutes; `--weights int8` times only the int8 pair.

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
from minillm.models import build_model, load_pretrained  # noqa: E402
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


# Qwen2 shapes for --model (transformers' Qwen2Config names)
QWEN2 = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                         rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen-tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=256, vocab_size=1024, max_position_embeddings=512, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def gpt2_folder(model, hf):
    """The GPT model as a transformers folder, with a placeholder vocabulary (CTranslate2 takes
    token strings)."""
    save_pretrained(model, hf)
    V = model.config.vocab_size
    with open(os.path.join(hf, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token(i, V): i for i in range(V)}, f)
    with open(os.path.join(hf, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")


def qwen2_folder(shape, hf, seed=0):
    """A transformers Qwen2ForCausalLM of `shape` at its random initialisation, saved float32
    in `hf` with a word-level placeholder tokenizer (CTranslate2's converter loads one)."""
    import tokenizers
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(**shape, bos_token_id=None, eos_token_id=shape["vocab_size"] - 1)
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(hf)
    V = shape["vocab_size"]
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({token(i, V): i for i in range(V)}, unk_token="t0"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0",
                                         eos_token=token(V - 1, V)).save_pretrained(hf)


def ct2_folders(hf, root, types):
    """The transformers folder `hf` converted by CTranslate2 for each compute type in `types`."""
    import ctranslate2
    out = {}
    for q in types:
        dst = os.path.join(root, f"ct2-{q}")
        ctranslate2.converters.TransformersConverter(hf).convert(dst, quantization=q, force=True)
        out[q] = dst
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt2-small", help="a GPT preset, or qwen2.5-0.5b / qwen-tiny")
    ap.add_argument("--weights", default="float32,bf16,int8", help="minillm's weights; CTranslate2 runs the "
                    "float32 and int8 among them")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    weights = args.weights.split(",")
    if any(w not in ("float32", "bf16", "int8") for w in weights):
        ap.error(f"--weights: expected some of float32,bf16,int8, got {args.weights!r}")
    minillm.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    hf = os.path.join(tmp.name, "hf")
    if args.model in QWEN2:
        qwen2_folder(QWEN2[args.model], hf)
        model = load_pretrained(hf).eval()
    else:
        model = build_model(args.model, generator=minillm.Generator(0)).eval()
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
    runs, sizes = {}, {}
    for w in weights:
        plan = model.decoder(weights=w)
        sizes[f"minillm {w}"] = plan_bytes(plan)
        runs[f"minillm {w}"] = lambda plan=plan: generate(model, prompt, NEW_TOKENS, greedy=True, decoder=plan)
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
        print("CTranslate2 is not installed: its rows are left out (pip install ctranslate2)")
    if ctranslate2 is not None:
        if args.model not in QWEN2:
            gpt2_folder(model, hf)
        start = [token(i, model.config.vocab_size) for i in prompt[0]]
        for q, path in ct2_folders(hf, tmp.name, [w for w in ("float32", "int8") if w in weights]).items():
            gen = ctranslate2.Generator(path, device="cpu", compute_type=q, intra_threads=args.threads)
            runs[f"ctranslate2 {q}"] = lambda gen=gen: gen.generate_batch(
                [start], max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1,
                include_prompt_in_result=False)
    best = {name: math.inf for name in runs}
    ids = {}                                     # the new tokens of each engine's warm-up run
    for name, fn in runs.items():
        out = fn()
        ids[name] = out.numpy()[0, PROMPT:].tolist() if name.startswith("minillm") else out[0].sequences_ids[0]
    for _ in range(args.repeats):
        for name, fn in runs.items():
            time.sleep(0.5)                  # let the previous engine's idle threads stop spinning
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    tmp.cleanup()
    print(f"{cpu_model()}, {args.threads} threads; {args.model}, batch 1, prompt {PROMPT}, {NEW_TOKENS} new tokens, "
          f"greedy, best of {args.repeats}")
    first = f"minillm {weights[0]}"
    base = NEW_TOKENS / best[first]
    width = max(15, len(first) + 3)
    print(f"{'engine':<22} {'tokens/s':>9} {'vs ' + first:>{width}} {'MB/token':>9}  greedy tokens as minillm's")
    for name in runs:
        rate = NEW_TOKENS / best[name]
        mb = f"{sizes[name] / 1e6:9.1f}" if name in sizes else f"{'':>9}"
        ours = ids.get("minillm " + name.split()[-1]) if name.startswith("ctranslate2") else None
        same = f"  {sum(a == b for a, b in zip(ours, ids[name]))}/{NEW_TOKENS}" if ours else ""
        print(f"{name:<22} {rate:9.1f} {rate / base:{width}.2f} {mb}{same}")
    for q in ("int8",):
        if f"ctranslate2 {q}" in best:
            print(f"minillm {q} / ctranslate2 {q}: {best[f'ctranslate2 {q}'] / best[f'minillm {q}']:.2f}x")


if __name__ == "__main__":
    main()
