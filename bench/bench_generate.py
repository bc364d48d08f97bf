"""Decoding speed: tokens/s for batch 1, a 16-token prompt and 128 new tokens (greedy), minillm
vs a PyTorch eager GPT with a KV cache (written below), same weights, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_generate.py [--models gpt2-small,gpt-mini] [--threads 2,1] [--repeats 3]
    ... python -m pytest bench/bench_generate.py      (the same runs under pytest-benchmark)

Decoding one token reads every weight once (GPT-2 small: 124M float32 = 498 MB), so its
ceiling is read bandwidth / weight bytes. Two read roofs are measured in the same run:
  torch.sum    over 1 GiB of fresh float32 (4 KiB pages, as any tensor gets), the best of 5;
  stream sum   minillm's plain sum (_testing.stream_sum) over the very weights a step reads, after
               the decode plan (GPT.decoder) asked for 2 MiB pages under them (what the GEMV could reach).
Each framework's tokens/s is reported as a fraction of both. --kernels adds, per linear layer
kind, the GEMV's read bandwidth against the stream sum over the same matrices.
Timings interleave the two frameworks and keep the best of `repeats` runs, as the machine is
shared; every thread count in --threads gets its own table (ms/token too).
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from minillm import _C  # noqa: E402
from minillm import _testing  # noqa: E402
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


def streamed_weights(model):
    """{kind: [weights]} that a decoding step streams: c_attn, attn c_proj, c_fc, mlp c_proj
    of every block, and the head (the decode plan's, after its huge-page advice)."""
    dec = model.decoder()
    kinds = {"qkv": [], "attn proj": [], "fc": [], "mlp proj": []}
    for b in dec.blocks:
        for kind, w in zip(kinds, b.linear_weights()):
            kinds[kind].append(w)
    kinds["head"] = [dec.head.head_weight]
    return kinds


def best_of(fn, repeats):
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def stream_roof(weights, repeats=5):
    """Bytes/s of _testing.stream_sum over every streamed weight in step order (the best of repeats)."""
    flat = [w for ws in weights.values() for w in ws]
    return sum(w.nbytes for w in flat) / best_of(lambda: [_testing.stream_sum(w.numpy().reshape(-1)) for w in flat], repeats)


def kernel_table(weights, repeats=5):
    """Per kind: (GB/s of linear_rows on one row, GB/s of stream_sum), over the same matrices,
    interleaved."""
    rows = []
    for kind, ws in weights.items():
        x = minillm.randn(1, ws[0].shape[1])
        gemv = stream = math.inf
        for _ in range(repeats):
            gemv = min(gemv, best_of(lambda: [_C.linear_rows(x, w) for w in ws], 1))
            stream = min(stream, best_of(lambda: [_testing.stream_sum(w.numpy().reshape(-1)) for w in ws], 1))
        nbytes = sum(w.nbytes for w in ws)
        rows.append((kind, nbytes, nbytes / gemv, nbytes / stream))
    return rows


def run(names, repeats, threads=(2,), kernels=False):
    import torch
    print(f"CPU: {minillm.cpu_info() if hasattr(minillm, 'cpu_info') else ''}")
    print(f"torch {torch.__version__}; batch 1, prompt {PROMPT}, {NEW_TOKENS} new tokens, greedy; best of {repeats}")
    models = {name: make_model(name) for name in names}
    rows = []
    for nt in threads:
        minillm.set_num_threads(nt)
        torch.set_num_threads(nt)
        bw = read_bandwidth()
        print(f"\nthreads {nt}: read roof torch.sum (1 GiB, 4 KiB pages) {bw / 1e9:.1f} GB/s")
        for name, model in models.items():
            dec = torch_decoder(model)
            weights = streamed_weights(model)
            prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PROMPT))
            time_minillm(model, prompt)          # warm up both (allocator, caches, huge pages)
            time_torch(dec, prompt)
            best_m = best_t = math.inf
            for _ in range(repeats):
                tm, out_m = time_minillm(model, prompt)
                tt, out_t = time_torch(dec, prompt)
                best_m, best_t = min(best_m, tm), min(best_t, tt)
            roof = stream_roof(weights)
            same = int((out_m[0, PROMPT:] == out_t[0, PROMPT:]).cumprod().sum())
            wb = weight_bytes(model)
            rows.append((nt, name, NEW_TOKENS / best_m, NEW_TOKENS / best_t, wb, bw / wb, roof / wb, same))
            if kernels:
                print(f"  {name}: GEMV (linear_rows, 1 row) vs stream sum over the same weights")
                for kind, nbytes, g, r in kernel_table(weights):
                    print(f"    {kind:<10} {nbytes / 1e6:7.1f} MB  gemv {g / 1e9:5.1f} GB/s  stream {r / 1e9:5.1f} GB/s"
                          f"  {100 * g / r:4.0f}%")
            del dec
    print(f"\n{'thr':>3} {'model':<11} {'minillm tok/s':>13} {'torch tok/s':>11} {'ratio':>6} {'ms/tok':>7} "
          f"{'torch ms':>8} {'MB/token':>8} {'limit(sum)':>10} {'limit(roof)':>11} {'%sum':>5} {'%roof':>5} "
          f"{'torch %sum':>10} {'same tokens':>11}")
    for nt, name, m, t, wb, lim_sum, lim_roof, same in rows:
        print(f"{nt:>3} {name:<11} {m:>13.1f} {t:>11.1f} {m / t:>6.2f} {1e3 / m:>7.2f} {1e3 / t:>8.2f} "
              f"{wb / 1e6:>8.1f} {lim_sum:>10.1f} {lim_roof:>11.1f} {100 * m / lim_sum:>4.0f}% "
              f"{100 * m / lim_roof:>4.0f}% {100 * t / lim_sum:>9.0f}% {same:>7}/{NEW_TOKENS}")
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
    ap.add_argument("--threads", default=os.environ.get("MINILLM_NUM_THREADS", "2") + ",1",
                    help="comma-separated thread counts, one table each (default: MINILLM_NUM_THREADS, then 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per framework (best kept)")
    ap.add_argument("--kernels", action="store_true", help="also GEMV vs stream-sum bandwidth per layer kind")
    args = ap.parse_args(argv)
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",") if t))
    run([m for m in args.models.split(",") if m], args.repeats, threads, args.kernels)


if __name__ == "__main__":
    main()
