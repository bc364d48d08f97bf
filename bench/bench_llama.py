"""Llama-family decoding speed and loading memory: random models shaped like SmolLM2-135M and
Qwen2.5-0.5B, written as HuggingFace folders (bf16 weights, as those models ship), then

  decode   tokens/s of greedy decoding (batch 1, a 16-token prompt, --new tokens), minillm's
           C decode step vs transformers' generate on the same folder, both float32, both on
           --threads threads, interleaved in the same run, best of --repeats;
  load     peak RSS of loading the folder with dtype float32 and bfloat16, each in a fresh
           subprocess (so nothing else counts), against the bytes of the kept weights; the
           goal is at most 1.2x.

    env OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 python bench/bench_llama.py \
        [--models smollm2-135m,qwen2.5-0.5b] [--threads 2] [--new 64] [--repeats 3]

`--models tiny` runs the whole script on a toy shape in seconds (to check that it works).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from conftest import cpu_model  # noqa: E402  (bench/conftest.py)
from minillm import serialization  # noqa: E402
from minillm.generate import generate  # noqa: E402
from minillm.models.llama import LlamaConfig, config_to_hf, hf_tensor_shapes  # noqa: E402

# the shapes of the public configs (random weights: speed and memory depend on shapes only)
SHAPES = {
    "smollm2-135m": dict(architecture="LlamaForCausalLM", vocab_size=49152, block_size=8192, n_layer=30,
                         n_head=9, n_kv_head=3, n_embd=576, d_ff=1536, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_weights=True),
    "qwen2.5-0.5b": dict(architecture="Qwen2ForCausalLM", vocab_size=151936, block_size=32768, n_layer=24,
                         n_head=14, n_kv_head=2, n_embd=896, d_ff=4864, rms_norm_eps=1e-6, rope_theta=1e6,
                         tie_weights=True, qkv_bias=True),
    "tiny": dict(architecture="Qwen2ForCausalLM", vocab_size=512, block_size=256, n_layer=2, n_head=4,
                 n_kv_head=2, n_embd=64, d_ff=128, qkv_bias=True, tie_weights=True),
}
PROMPT = 16


def write_random_folder(shape, folder, seed=0):
    """A HF folder of a random model of `shape` with bf16 weights (norms near 1)."""
    config = LlamaConfig(**shape)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, dims in hf_tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(dims, dtype=np.float32)
        else:
            a = 0.02 * rng.standard_normal(dims, dtype=np.float32)
        tensors[name] = serialization.as_bf16_bits(serialization.round_bf16(a))
    serialization.save_sharded(tensors, folder, metadata={"format": "pt"})
    hf = config_to_hf(config)
    hf["torch_dtype"] = hf["dtype"] = "bfloat16"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    return folder


# ---------------------------------------------------------------------- load memory
LOAD_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
from minillm.models import load_pretrained

def hwm_kib():   # this process's peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

base = hwm_kib()
model = load_pretrained({folder!r}, dtype={dtype!r})
peak = hwm_kib()
sd = model.state_dict()
weights = sum(t.numel() * (2 if t.dtype == "bfloat16" else 4) for t in sd.values())
print(json.dumps({{"base_kib": base, "peak_kib": peak, "weight_bytes": weights}}))
"""


def load_peak(folder, dtype):
    """Peak RSS of loading `folder` as `dtype` in a fresh interpreter (and its baseline)."""
    code = LOAD_CHILD.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), folder=folder,
                             dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- decode speed
def decode_rates(folder, new, repeats, threads):
    """(minillm tokens/s, transformers tokens/s) of greedy decoding, best of `repeats`."""
    import torch
    import transformers
    torch.set_num_threads(threads)
    minillm.set_num_threads(threads)
    ours = minillm.models.load_pretrained(folder, dtype="float32")
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = np.random.default_rng(1).integers(0, ours.config.vocab_size, (1, PROMPT))
    best_ours = best_ref = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(ours, prompt.tolist(), new, greedy=True)
        best_ours = min(best_ours, time.perf_counter() - t0)
        with torch.no_grad():
            t0 = time.perf_counter()
            ref.generate(torch.tensor(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
            best_ref = min(best_ref, time.perf_counter() - t0)
    return new / best_ours, new / best_ref


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=64, help="new tokens per decode run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-decode", action="store_true")
    args = p.parse_args(argv)
    print(f"CPU: {cpu_model()}; threads {args.threads}")
    for name in args.models.split(","):
        if name not in SHAPES:
            raise SystemExit(f"unknown model shape {name!r}; known: {sorted(SHAPES)}")
        with tempfile.TemporaryDirectory() as folder:
            write_random_folder(SHAPES[name], folder)
            for dtype in ("float32", "bfloat16"):
                r = load_peak(folder, dtype)
                peak, base, w = r["peak_kib"] * 1024, r["base_kib"] * 1024, r["weight_bytes"]
                print(f"{name:14s} load {dtype:8s}: weights {w / 2**20:8.1f} MiB, peak RSS {peak / 2**20:8.1f} MiB "
                      f"= {peak / w:.2f}x (interpreter before loading {base / 2**20:.1f} MiB)")
            if not args.skip_decode:
                ours, ref = decode_rates(folder, args.new, args.repeats, args.threads)
                print(f"{name:14s} decode: minillm {ours:8.1f} tok/s, transformers {ref:8.1f} tok/s, "
                      f"ratio {ours / ref:.2f}x")


if __name__ == "__main__":
    main()
