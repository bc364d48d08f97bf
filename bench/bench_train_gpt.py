"""One GPT training step (forward, loss, backward, AdamW) in minillm vs PyTorch eager, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_train_gpt.py            # gpt-tiny and gpt-mini
    MINILLM_BENCH_GPT2=1 python bench/bench_train_gpt.py   # GPT-2 small too (about 2 minutes more)
    python bench/bench_train_gpt.py --cpu-time      # 1 thread, CPU time: for a busy machine

Both frameworks run the same architecture (GPT-2: pre-LayerNorm, tanh GELU, tied LM head,
biases) with the same weights, float32, at the same thread count (default 2). Steps are
interleaved (minillm, torch, minillm, ...) so both see the same machine; ms/step is the
median, "best ms" the fastest step (the better guide on a busy machine). GFLOPS counts 6 N per token for the weight GEMMs (N = parameters without the
position table; the tied LM head counted once) plus 12 L T C per token for attention
(scores and values, forward and backward, over the full T x T as PaLM's appendix B
counts), divided by the median step time; "of GEMM" is that as a fraction of minillm's own
2048 x 2048 x 2048 sgemm throughput, one sgemm timed in every round next to the steps
(median to median, and "(best)" best step to best sgemm). Peak RSS is
each framework's own, measured in a fresh child process that runs 3 steps (the figure
includes the interpreter and the imported libraries; "+model" is the growth after import).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minillm  # noqa: E402
from minillm import _C  # noqa: E402
from minillm.models import GPT, GPTConfig  # noqa: E402

# name -> (config fields, batch B, tokens T)
SHAPES = {
    "gpt-tiny": (dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64), 32, 64),
    "gpt-mini": (dict(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=256), 16, 128),
    "gpt2-small": (dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), 4, 64),
}
LR, WEIGHT_DECAY, BETAS = 6e-4, 0.1, (0.9, 0.95)


# ------------------------------------------------------------------ the PyTorch peer
def torch_gpt_class():
    """nanoGPT's architecture in PyTorch eager (GPT-2: pre-LN, tanh GELU, tied head)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as Fn

    class Block(nn.Module):
        def __init__(self, C, nh):
            super().__init__()
            self.nh = nh
            self.ln_1 = nn.LayerNorm(C)
            self.c_attn = nn.Linear(C, 3 * C)
            self.attn_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(B, T, self.nh, C // self.nh).transpose(1, 2) for z in (q, k, v))
            y = Fn.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(Fn.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.h = nn.ModuleList([Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(cfg.n_embd)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return Fn.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

        def load_minillm(self, sd):
            """Copy the weights of a minillm GPT's state dict (name -> Tensor)."""
            names = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
                     "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias"}
            ours = {"ln_1": "ln_1", "c_attn": "attn.c_attn", "attn_proj": "attn.c_proj", "ln_2": "ln_2",
                    "c_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj"}
            for name, _ in self.named_parameters():
                if name.startswith("h."):
                    _, i, mod, kind = name.split(".")
                    names[name] = f"transformer.h.{i}.{ours[mod]}.{kind}"
            with torch.no_grad():
                for name, p in self.named_parameters():
                    p.copy_(torch.from_numpy(sd[names[name]].numpy()))

    return TorchGPT


def torch_adamw(torch, model):
    """AdamW with nanoGPT's groups (2-D decayed), PyTorch's default (for-each) implementation."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=1e-8)


# ------------------------------------------------------------------ steps
def minillm_step_fn(cfg, B, T, seed=0):
    minillm.manual_seed(seed)
    model = GPT(cfg)
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS)
    rng = np.random.default_rng(seed)
    idx = minillm.from_numpy(rng.integers(0, cfg.vocab_size, (B, T)))
    targets = minillm.from_numpy(rng.integers(0, cfg.vocab_size, (B, T)))
    losses = []

    def step():
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return model, step, losses


def torch_step_fn(cfg, B, T, minillm_model=None, seed=0):
    import torch
    torch.manual_seed(seed)
    model = torch_gpt_class()(cfg)
    if minillm_model is not None:
        model.load_minillm(minillm_model.state_dict())
    opt = torch_adamw(torch, model)
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.integers(0, cfg.vocab_size, (B, T)))
    targets = torch.from_numpy(rng.integers(0, cfg.vocab_size, (B, T)))
    losses = []

    def step():
        loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return step, losses


def gemm_step_fn(n=2048):
    """One minillm sgemm of n x n x n (2 n^3 flops), to time alongside the training steps."""
    a, b = minillm.randn(n, n), minillm.randn(n, n)
    out = _C.empty((n, n))

    def step():
        _C.matmul(a, b, out=out)
    return step, 2.0 * n ** 3


def peak_rss_in_child(impl, name, threads):
    """(peak RSS MB, growth after imports MB) of `impl` running 3 steps of `name`, in a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, name, "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["peak_mb"], d["peak_mb"] - d["base_mb"]


def _vm_hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child(impl, name, threads):
    fields, B, T = SHAPES[name]
    cfg = GPTConfig(**fields)
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        base = _vm_hwm_mb()
        step, _ = torch_step_fn(cfg, B, T)
    else:
        minillm.set_num_threads(threads)
        base = _vm_hwm_mb()
        _, step, _ = minillm_step_fn(cfg, B, T)
    for _ in range(3):
        step()
    print(json.dumps({"peak_mb": _vm_hwm_mb(), "base_mb": base}))


def bench_shape(name, steps, threads, with_torch, rss, clock=time.perf_counter):
    fields, B, T = SHAPES[name]
    cfg = GPTConfig(**fields)
    model, ours, our_losses = minillm_step_fn(cfg, B, T)
    fns = [ours]
    if with_torch:
        theirs, their_losses = torch_step_fn(cfg, B, T, minillm_model=model)
        fns.append(theirs)
    gemm, gemm_flops = gemm_step_fn()
    fns.append(gemm)            # our GEMM's n = 2048 throughput, timed in the same rounds
    for f in fns:               # warm-up: allocator, packing buffers, optimizer state
        f()
    times = [[] for _ in fns]
    for _ in range(steps):
        for f, ts in zip(fns, times):
            t = clock()
            f()
            ts.append(clock() - t)
    flops = B * T * model.estimate_flops_per_token(T)    # 6 N + 12 L T C per token
    gemm_times = times.pop()
    gemm_med = gemm_flops / statistics.median(gemm_times) / 1e9
    gemm_best = gemm_flops / min(gemm_times) / 1e9
    rows = []
    for impl, ts in zip(["minillm", "torch"], times):
        ms = statistics.median(ts) * 1e3
        row = dict(model=name, impl=impl, tokens=f"{B}x{T}", ms=ms, best=min(ts) * 1e3,
                   tok_s=B * T / ms * 1e3, gflops=flops / ms / 1e6)
        row["of_gemm"] = row["gflops"] / gemm_med
        row["of_gemm_best"] = flops / row["best"] / 1e6 / gemm_best
        row["gemm"] = gemm_med
        if rss:
            row["rss"], row["rss_model"] = peak_rss_in_child(impl, name, threads)
        rows.append(row)
    if with_torch:
        rows[0]["vs_torch"] = rows[1]["ms"] / rows[0]["ms"]
        rows[0]["vs_torch_best"] = rows[1]["best"] / rows[0]["best"]
        # same weights, same data: the first losses agree (a check that both run the same model)
        rows[0]["loss_diff"] = abs(our_losses[0] - their_losses[0])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="timed steps per framework (default: by size)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MINILLM_NUM_THREADS", "2")))
    ap.add_argument("--only", default="", help="comma-separated shapes (gpt-tiny,gpt-mini,gpt2-small)")
    ap.add_argument("--no-torch", action="store_true", help="minillm only")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time steps by process CPU time at 1 thread (steadier on a busy machine)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.threads)

    clock = time.perf_counter
    if args.cpu_time:
        # CPU time leaves out the time other processes hold the core; with more than one
        # thread it would add up every thread's time, spin-waits included, so use one
        args.threads, clock = 1, time.process_time
    minillm.set_num_threads(args.threads)
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch not installed: minillm only (pip install torch==2.13.0 for the peer)")
            with_torch = False
    names = [n for n in args.only.split(",") if n] or ["gpt-tiny", "gpt-mini"]
    if not args.only and os.environ.get("MINILLM_BENCH_GPT2") == "1":
        names.append("gpt2-small")
    for n in names:
        if n not in SHAPES:
            raise SystemExit(f"unknown shape {n!r}; choose from {sorted(SHAPES)}")

    cpu = minillm.cpu_info()
    print(f"CPU {cpu.get('cpu')} ({cpu.get('isa')}), {args.threads} threads, float32, "
          f"{'process CPU' if args.cpu_time else 'wall'} time" +
          (f"; torch {__import__('torch').__version__}" if with_torch else ""))
    header = (f"{'model':<11} {'impl':<8} {'tokens':>7} {'ms/step':>9} {'best ms':>8} {'tokens/s':>9} "
              f"{'GFLOPS':>7} {'of GEMM':>8} {'(best)':>7} {'vs torch':>9} {'(best)':>7} {'peak RSS MB':>12} {'+model':>7}")
    print(header)
    print("-" * len(header))
    default_steps = {"gpt-tiny": 30, "gpt-mini": 8, "gpt2-small": 4}
    for name in names:
        rows = bench_shape(name, args.steps or default_steps[name], args.threads, with_torch,
                           not args.no_rss, clock)
        print(f"  (minillm sgemm 2048^3 in the same rounds: {rows[0]['gemm']:.1f} GFLOPS median)")
        for r in rows:
            vs = f"{r['vs_torch']:.2f}x" if "vs_torch" in r else ""
            vs_best = f"{r['vs_torch_best']:.2f}x" if "vs_torch_best" in r else ""
            rss = f"{r['rss']:12.0f} {r['rss_model']:7.0f}" if "rss" in r else f"{'':>12} {'':>7}"
            print(f"{r['model']:<11} {r['impl']:<8} {r['tokens']:>7} {r['ms']:9.1f} {r['best']:8.1f} "
                  f"{r['tok_s']:9.0f} {r['gflops']:7.1f} {r['of_gemm']:8.0%} {r['of_gemm_best']:7.0%} "
                  f"{vs:>9} {vs_best:>7} {rss}")
        if "loss_diff" in rows[0] and rows[0]["loss_diff"] > 1e-3:
            print(f"  warning: first losses differ by {rows[0]['loss_diff']:.2e} (same weights and data)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------ pytest-benchmark entry
# (`python -m pytest bench/bench_train_gpt.py`): the gpt-tiny step of each framework, one group
def _pytest_step(impl):
    import pytest
    fields, B, T = SHAPES["gpt-tiny"]
    cfg = GPTConfig(**fields)
    if impl == "torch":
        pytest.importorskip("torch", reason="torch not installed: no PyTorch peer")
        step, _ = torch_step_fn(cfg, B, T)
    else:
        _, step, _ = minillm_step_fn(cfg, B, T)
    step()
    return step


def test_train_step_gpt_tiny_minillm(benchmark):
    benchmark.group = "train-step-gpt-tiny-32x64"
    benchmark(_pytest_step("minillm"))


def test_train_step_gpt_tiny_torch(benchmark):
    benchmark.group = "train-step-gpt-tiny-32x64"
    benchmark(_pytest_step("torch"))
