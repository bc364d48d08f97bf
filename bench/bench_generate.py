"""Decoding speed: tokens/s for batch 1, a 16-token prompt and 128 new tokens (greedy), minillm
vs a PyTorch eager GPT with a KV cache (written below), same weights, same run, 2 threads.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_generate.py [--models gpt2-small,gpt-mini] [--repeats 3]
    ... python -m pytest bench/bench_generate.py      (the same runs under pytest-benchmark)

Decoding one token reads every weight once (GPT-2 small: 124M float32 = 498 MB), so its
ceiling is read bandwidth / weight bytes. The script measures read bandwidth in the same run
(torch.sum over 1 GiB, 2 threads, the best of 5) and reports each framework's tokens/s as a
fraction of that ceiling. Small models (gpt-mini) are bound by per-token overhead instead.
Timings interleave the two frameworks and keep the best of `repeats` runs, as the machine is
shared.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from minillm.generate import generate  # noqa: E402
from minillm.models import build_model  # noqa: E402

PROMPT, NEW_TOKENS = 16, 128
MODELS = {"gpt2-small": {}, "gpt-mini": {}}


# ---------------------------------------------------------------------- PyTorch peer
def torch_decoder(model):
    """A PyTorch eager GPT-2 with a preallocated KV cache, holding `model`'s weights (copies)."""
    import torch
    import torch.nn.functional as TF

    cfg = model.config
    sd = {k: torch.from_numpy(v.numpy().copy()) for k, v in model.state_dict().items()}
    C, nh = cfg.n_embd, cfg.n_head
    hs = C // nh

    class Decoder:
        def __init__(self):
            self.wte, self.wpe = sd["transformer.wte.weight"], sd["transformer.wpe.weight"]
            self.head = sd.get("lm_head.weight", self.wte)
            self.blocks = [{k.split(f"transformer.h.{i}.", 1)[1]: v for k, v in sd.items()
                            if k.startswith(f"transformer.h.{i}.")} for i in range(cfg.n_layer)]
            self.ln_f = (sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])

        def reset(self, batch, capacity):
            self.k = [torch.empty(batch, nh, capacity, hs) for _ in self.blocks]
            self.v = [torch.empty(batch, nh, capacity, hs) for _ in self.blocks]
            self.pos = 0

        @torch.no_grad()
        def forward(self, idx):
            """idx (B, T) at positions pos .. pos + T - 1 -> last logits (B, V)."""
            B, T = idx.shape
            p0 = self.pos
            x = self.wte[idx] + self.wpe[p0:p0 + T]
            for i, w in enumerate(self.blocks):
                h = TF.layer_norm(x, (C,), w["ln_1.weight"], w["ln_1.bias"])
                q, k, v = TF.linear(h, w["attn.c_attn.weight"], w["attn.c_attn.bias"]).split(C, dim=2)
                q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))
                self.k[i][:, :, p0:p0 + T] = k
                self.v[i][:, :, p0:p0 + T] = v
                y = TF.scaled_dot_product_attention(q, self.k[i][:, :, :p0 + T], self.v[i][:, :, :p0 + T],
                                                    is_causal=T > 1)
                y = y.transpose(1, 2).reshape(B, T, C)
                x = x + TF.linear(y, w["attn.c_proj.weight"], w["attn.c_proj.bias"])
                h = TF.layer_norm(x, (C,), w["ln_2.weight"], w["ln_2.bias"])
                h = TF.gelu(TF.linear(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"]), approximate="tanh")
                x = x + TF.linear(h, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"])
            self.pos += T
            x = TF.layer_norm(x[:, -1], (C,), *self.ln_f)
            return TF.linear(x, self.head)

        def generate(self, idx, n):
            idx = torch.as_tensor(idx)
            self.reset(idx.shape[0], idx.shape[1] + n)
            logits = self.forward(idx)
            out = [idx]
            for _ in range(n):
                nxt = logits.argmax(-1, keepdim=True)
                out.append(nxt)
                logits = self.forward(nxt)
            return torch.cat(out, 1)

    return Decoder()


# ---------------------------------------------------------------------- measurements
def read_bandwidth():
    """Bytes/s of torch.sum over 1 GiB of float32 (the best of 5): the read ceiling."""
    import torch
    x = torch.ones(256 * 1024 * 1024)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def make_model(name):
    """The preset with random weights; its context is widened to hold prompt + new tokens
    (gpt-mini's 128 would otherwise crop the last 16 steps, which neither side is timing)."""
    from minillm.models import PRESETS
    block = max(PRESETS[name]["block_size"], PROMPT + NEW_TOKENS)
    return build_model(name, generator=minillm.Generator(0), block_size=block).eval()


def weight_bytes(model):
    """Bytes read per decoded token: every parameter once, except the position table (one row)."""
    n = model.num_params(non_embedding=True) + model.config.n_embd
    return 4 * n


def time_minillm(model, prompt):
    t = time.perf_counter()
    out = generate(model, prompt, NEW_TOKENS, greedy=True)
    return time.perf_counter() - t, out.numpy()


def time_torch(dec, prompt):
    t = time.perf_counter()
    out = dec.generate(prompt, NEW_TOKENS)
    return time.perf_counter() - t, out.numpy()


def run(names, repeats):
    import torch
    threads = int(os.environ.get("MINILLM_NUM_THREADS", "2"))
    minillm.set_num_threads(threads)
    torch.set_num_threads(threads)
    bw = read_bandwidth()
    print(f"CPU: {minillm.cpu_info() if hasattr(minillm, 'cpu_info') else ''}")
    print(f"threads {threads}; torch {torch.__version__}; read bandwidth (torch.sum, 1 GiB) {bw / 1e9:.1f} GB/s")
    print(f"batch 1, prompt {PROMPT}, {NEW_TOKENS} new tokens, greedy; best of {repeats}\n")
    rows = []
    for name in names:
        model = make_model(name)
        dec = torch_decoder(model)
        prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
        time_minillm(model, prompt)          # warm up both (allocator, caches)
        time_torch(dec, prompt)
        best_m = best_t = math.inf
        for _ in range(repeats):
            tm, out_m = time_minillm(model, prompt)
            tt, out_t = time_torch(dec, prompt)
            best_m, best_t = min(best_m, tm), min(best_t, tt)
        same = int((out_m[0, PROMPT:] == out_t[0, PROMPT:]).cumprod().sum())
        wb = weight_bytes(model)
        limit = bw / wb
        rows.append((name, NEW_TOKENS / best_m, NEW_TOKENS / best_t, wb, limit, same))
    print(f"{'model':<12} {'minillm tok/s':>13} {'torch tok/s':>11} {'ratio':>6} {'MB/token':>9} "
          f"{'limit tok/s':>11} {'minillm %lim':>12} {'torch %lim':>10} {'same tokens':>11}")
    for name, m, t, wb, limit, same in rows:
        print(f"{name:<12} {m:>13.1f} {t:>11.1f} {m / t:>6.2f} {wb / 1e6:>9.1f} {limit:>11.1f} "
              f"{100 * m / limit:>11.0f}% {100 * t / limit:>9.0f}% {same:>7}/{NEW_TOKENS}")
    return rows


# ---------------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:   # the script runs without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module", params=list(MODELS))
    def setup(request):
        torch = pytest.importorskip("torch")
        torch.set_num_threads(minillm.get_num_threads())
        model = make_model(request.param)
        prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
        return request.param, model, prompt

    @pytest.mark.parametrize("impl", ["minillm", "torch"])
    def test_decode_128_tokens(benchmark, setup, impl):
        name, model, prompt = setup
        benchmark.group = f"decode {name} (1 x {PROMPT} + {NEW_TOKENS})"
        benchmark.extra_info["tokens"] = NEW_TOKENS
        if impl == "minillm":
            benchmark.pedantic(generate, args=(model, prompt, NEW_TOKENS), kwargs={"greedy": True},
                               rounds=3, warmup_rounds=1)
        else:
            dec = torch_decoder(model)
            benchmark.pedantic(dec.generate, args=(prompt, NEW_TOKENS), rounds=3, warmup_rounds=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated presets")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per framework (best kept)")
    args = ap.parse_args(argv)
    run([m for m in args.models.split(",") if m], args.repeats)


if __name__ == "__main__":
    main()
