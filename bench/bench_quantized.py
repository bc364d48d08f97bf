"""Decoding with narrow weights: tokens/s of a random-weight model with float32, bf16 and int8
weights in minillm's decode plan, against CTranslate2 (float32 and int8) and llama.cpp (F32 and
Q8_0) on the same weights, same run. Batch 1, a 16-token prompt, 128 new tokens, greedy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_quantized.py [--model gpt2-small] [--weights float32,bf16,int8] \
            [--threads 2] [--repeats 5] [--gguf-converter PATH/convert_hf_to_gguf.py]

--model is a GPT preset (gpt2-small, ...) or a Qwen2 shape: qwen2.5-0.5b (hidden 896, 24
layers, 14 heads, 2 key/value heads, MLP 4864, vocabulary 151936, tied embeddings, q/k/v
biases) or qwen-tiny (the same kind in seconds, to check the script). A Qwen2 model is built by
transformers' Qwen2ForCausalLM at its random initialisation and saved as a folder, which
minillm loads (models.load_pretrained) and the peers convert, so all run the same weights.
The Qwen2.5-0.5B run takes minutes; `--weights int8` times only the int8 rows.

A step reads every streamed weight once, so tokens/s tracks the bytes per token: printed next
to each row (float32 4, bf16 2, int8 1.0625 bytes per Linear weight here, as llama.cpp's Q8_0;
CTranslate2's int8 keeps one scale per row). The peers are optional; the rows of one that is
absent are left out, and said so. CTranslate2: pip install ctranslate2. llama.cpp: pip install
llama-cpp-python (it builds llama.cpp from source), and its convert_hf_to_gguf.py, which is in
that package's source archive (vendor/llama.cpp; it needs torch, transformers, sentencepiece
and its own gguf-py beside it), named by --gguf-converter or $LLAMA_CPP_CONVERTER. llama.cpp
runs through llama-cpp-python's Llama.eval, one call per token, and the argmax of the logits
here in NumPy. The saved folders get a made-up byte-level BPE tokenizer (save_tokenizer): the
GGUF converter and llama.cpp's loader need byte tokens and merges; the ids are fed directly, so
what it does to text does not matter. Timings interleave the engines and keep the best run.
"""
import argparse
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


def byte_alphabet():
    """The 256 characters byte-level BPE spells bytes with (GPT-2's encoder): a printable Latin-1
    byte stands for itself, the others take the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = iter(range(0x100, 0x200))
    return [chr(b) if b in kept else chr(next(moved)) for b in range(256)]


def byte_bpe_vocab(V):
    """A byte-level BPE vocabulary of V strings and its merges: the 256 byte characters, then
    every two-character string, then three-character ones (a two-character token and a byte),
    and so on, each made by one merge; the last id is GPT-2's <|endoftext|>. It segments text
    badly but has the parts llama.cpp's converter and loader ask for: byte tokens (the loader
    looks up the newline's) and merges. Returns (words, merges), merges as (left, right) pairs."""
    alphabet = byte_alphabet()
    if V <= len(alphabet):
        raise ValueError(f"byte_bpe_vocab: a byte-level vocabulary needs more than 256 ids, got V={V}")
    words, merges, level = list(alphabet), [], alphabet
    while len(words) < V - 1:
        longer = [left + c for left in level for c in alphabet][:V - 1 - len(words)]
        merges += [(w[:-1], w[-1]) for w in longer]
        words += longer
        level = longer
    return words + ["<|endoftext|>"], merges


def save_tokenizer(hf, V):
    """Write byte_bpe_vocab(V) into the folder `hf` as a transformers fast tokenizer
    (tokenizer.json), the form CTranslate2's and llama.cpp's converters load. Returns the words."""
    import tokenizers
    import transformers
    words, merges = byte_bpe_vocab(V)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE({w: i for i, w in enumerate(words)}, merges))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    # GPT-2's bos, eos and unk are all <|endoftext|>; CTranslate2's GPT-2 converter reads all three
    eot = words[-1]
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot,
                                         unk_token=eot).save_pretrained(hf)
    return words


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
    """The GPT model as a transformers folder with save_tokenizer's vocabulary. Returns its words."""
    save_pretrained(model, hf)
    return save_tokenizer(hf, model.config.vocab_size)


def qwen2_folder(shape, hf, seed=0):
    """A transformers Qwen2ForCausalLM of `shape` at its random initialisation, saved float32
    in `hf` with save_tokenizer's vocabulary. Returns its words."""
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(**shape, bos_token_id=None, eos_token_id=shape["vocab_size"] - 1)
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(hf)
    return save_tokenizer(hf, shape["vocab_size"])


def ct2_folders(hf, root, types):
    """The transformers folder `hf` converted by CTranslate2 for each compute type in `types`."""
    import ctranslate2
    out = {}
    for q in types:
        dst = os.path.join(root, f"ct2-{q}")
        ctranslate2.converters.TransformersConverter(hf).convert(dst, quantization=q, force=True)
        out[q] = dst
    return out


# llama.cpp's converter names a tokenizer's pre-tokenizer (its text-splitting rule) by hashing the
# ids the tokenizer gives a fixed text, and stops at a hash it does not know, which is every
# tokenizer but the published ones. This benchmark feeds ids and never text, so the driver runs
# the converter with that lookup answering the model family's rule (argv: script, rule, flags...).
CONVERT = """
import os, sys
script, rule = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(script))
sys.argv = [script] + sys.argv[3:]
import convert_hf_to_gguf
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: rule
convert_hf_to_gguf.main()
"""

# the output types asked of the converter for minillm's weights
GGUF_TYPES = {"float32": "F32", "int8": "Q8_0"}


def gguf_files(hf, root, types, converter, rule):
    """The transformers folder `hf` converted to GGUF by llama.cpp's convert_hf_to_gguf.py
    (`converter`) for each type in `types` (F32, Q8_0), in a subprocess through CONVERT;
    rule: the pre-tokenizer to record ("gpt-2", "qwen2"). Returns {type: path}."""
    out = {}
    for q in types:
        dst = os.path.join(root, f"model-{q}.gguf")
        done = subprocess.run([sys.executable, "-c", CONVERT, converter, rule, hf, "--outfile", dst,
                               "--outtype", q.lower()], capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-10:])
            raise RuntimeError(f"{converter} --outtype {q.lower()} exited {done.returncode}:\n{tail}")
        out[q] = dst
    return out


def gguf_bytes(path):
    """Bytes a llama.cpp step streams from the GGUF file at `path`: every block's matrices and
    the head (output.weight, or the token embedding when tied), as stored; None without the
    gguf package (pip install gguf)."""
    try:
        import gguf
    except ImportError:
        return None
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    head = tensors.get("output.weight", tensors["token_embd.weight"])
    return head.n_bytes + sum(int(t.n_bytes) for name, t in tensors.items()
                              if name.startswith("blk.") and len(t.shape) == 2)


def llama_cpp_generate(llm, prompt):
    """NEW_TOKENS greedy new ids after `prompt` (a list of ids) with llama-cpp-python's Llama:
    eval the prompt, then eval the argmax of the last position's logits (read in place through
    llama.cpp's llama_get_logits_ith), without any stop."""
    import llama_cpp
    V = llm.n_vocab()
    llm.reset()                          # the next eval drops the cache past position 0
    llm.eval(prompt)
    out = []
    while True:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(V,))
        out.append(int(np.argmax(logits)))
        if len(out) == NEW_TOKENS:
            return out
        llm.eval(out[-1:])


def new_ids(name, out):
    """The new token ids in an engine's output (see the runs in main)."""
    if name.startswith("minillm"):
        return out.numpy()[0, PROMPT:].tolist()
    if name.startswith("ctranslate2"):
        return out[0].sequences_ids[0]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt2-small", help="a GPT preset, or qwen2.5-0.5b / qwen-tiny")
    ap.add_argument("--weights", default="float32,bf16,int8", help="minillm's weights; CTranslate2 and "
                    "llama.cpp run the float32 and int8 among them")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gguf-converter", default=os.environ.get("LLAMA_CPP_CONVERTER"),
                    help="llama.cpp's convert_hf_to_gguf.py (default $LLAMA_CPP_CONVERTER); without it "
                    "the llama.cpp rows are left out")
    args = ap.parse_args(argv)
    weights = args.weights.split(",")
    if any(w not in ("float32", "bf16", "int8") for w in weights):
        ap.error(f"--weights: expected some of float32,bf16,int8, got {args.weights!r}")
    minillm.set_num_threads(args.threads)
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
        print("CTranslate2 is not installed: its rows are left out (pip install ctranslate2)")
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
        print("llama.cpp is not installed: its rows are left out (pip install llama-cpp-python)")
    if llama_cpp is not None and not (args.gguf_converter and os.path.isfile(args.gguf_converter)):
        llama_cpp = None
        print(f"llama.cpp's convert_hf_to_gguf.py is not at --gguf-converter={args.gguf_converter!r}: "
              "its rows are left out")
    tmp = tempfile.TemporaryDirectory()
    hf = os.path.join(tmp.name, "hf")
    if args.model in QWEN2:
        words = qwen2_folder(QWEN2[args.model], hf)
        model = load_pretrained(hf).eval()
    else:
        model = build_model(args.model, generator=minillm.Generator(0)).eval()
        if ctranslate2 is not None or llama_cpp is not None:
            words = gpt2_folder(model, hf)
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
    runs, sizes = {}, {}
    for w in weights:
        plan = model.decoder(weights=w)
        sizes[f"minillm {w}"] = plan_bytes(plan)
        runs[f"minillm {w}"] = lambda plan=plan: generate(model, prompt, NEW_TOKENS, greedy=True, decoder=plan)
    peer_of = {}                                 # peer row -> the minillm row with the same weights
    if ctranslate2 is not None:
        start = [words[i] for i in prompt[0]]
        for q, path in ct2_folders(hf, tmp.name, [w for w in ("float32", "int8") if w in weights]).items():
            gen = ctranslate2.Generator(path, device="cpu", compute_type=q, intra_threads=args.threads)
            runs[f"ctranslate2 {q}"] = lambda gen=gen: gen.generate_batch(
                [start], max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1,
                include_prompt_in_result=False)
            peer_of[f"ctranslate2 {q}"] = f"minillm {q}"
    if llama_cpp is not None:
        rule = "qwen2" if args.model in QWEN2 else "gpt-2"
        types = [GGUF_TYPES[w] for w in ("float32", "int8") if w in weights]
        for q, path in gguf_files(hf, tmp.name, types, args.gguf_converter, rule).items():
            llm = llama_cpp.Llama(model_path=path, n_threads=args.threads, n_threads_batch=args.threads,
                                  n_ctx=PROMPT + NEW_TOKENS, n_batch=PROMPT, verbose=False)
            runs[f"llama.cpp {q}"] = lambda llm=llm: llama_cpp_generate(llm, prompt[0].tolist())
            sizes[f"llama.cpp {q}"] = gguf_bytes(path)
            peer_of[f"llama.cpp {q}"] = next(f"minillm {w}" for w, t in GGUF_TYPES.items() if t == q)
    best = {name: math.inf for name in runs}
    ids = {name: new_ids(name, fn()) for name, fn in runs.items()}   # from each engine's warm-up run
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
        mb = f"{sizes[name] / 1e6:9.1f}" if sizes.get(name) else f"{'':>9}"
        ours = ids.get(peer_of.get(name))
        same = f"  {sum(a == b for a, b in zip(ours, ids[name]))}/{NEW_TOKENS}" if ours else ""
        print(f"{name:<22} {rate:9.1f} {rate / base:{width}.2f} {mb}{same}")
    for peer, ours in peer_of.items():
        if ours == "minillm int8":
            print(f"{ours} / {peer}: {best[peer] / best[ours]:.2f}x")


if __name__ == "__main__":
    main()
