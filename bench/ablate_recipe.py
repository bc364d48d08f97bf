"""The small-model recipe at equal wall time: each change alone on top of the demo's config, and
the combinations, every run the same time budget on the demo's corpus, then the validation bits
per byte over the whole validation split and the steps done.

    python bench/ablate_recipe.py                       # every variant, one after the other
    python bench/ablate_recipe.py --only baseline muon  # some of them
    python bench/ablate_recipe.py --parallel 2 --threads 1   # two at a time, a core each

Needs the demo's token folder (`make demo` makes it; --data for another); the vocabulary
variants need tokens-2048 and tokens-8192 beside it (`minillm tokenizer train` + `data prepare`
as the Makefile's demo does for 4096). Each run is
`minillm train --config configs/shakespeare-gpt-mini.json` with the variant's options on top,
in runs/ablate/<variant>/ (--out). Prints a Markdown table (and writes it to
runs/ablate/results.md): run-to-run noise on a shared machine is a few hundredths of a bit per
byte, so read small differences as ties.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "shakespeare-gpt-mini.json")

# The baseline every change is measured against: the demo as it was before the recipe (GPT-2's
# architecture at gpt-mini's size and width 128, AdamW, 4096-id tokenizer, batches of 16 x 128,
# cooldown to lr 3e-4), set in full so that the table keeps its meaning when the demo's config moves.
BASE = {
    "model": {"norm": "layernorm", "positions": "learned", "mlp": "gelu", "d_ff": 512, "qk_norm": False,
              "tie_weights": True, "zero_init_proj": False, "logit_softcap": 0.0, "bias": True, "n_embd": 128,
              "n_head": 4, "n_layer": 4, "block_size": 128},
    "train": {"optimizer": "adamw", "dtype": "float32", "batch_size": 16, "lr": 0.003, "min_lr": 0.0003,
              "muon_weight_decay": 0.0},
    "vocab": 4096,
}

# the recipe, each change as the options it sets on top of BASE
RECIPE = {
    "rotary": {"model": {"positions": "rotary"}},
    "rmsnorm": {"model": {"norm": "rmsnorm"}},
    "relu2": {"model": {"mlp": "relu2"}},
    "swiglu": {"model": {"mlp": "swiglu", "d_ff": 344}},     # 3 matrices of 8/3 C: the GELU MLP's parameters
    "qk_norm": {"model": {"qk_norm": True}},
    "untied": {"model": {"tie_weights": False}},
    "zero_init": {"model": {"zero_init_proj": True}},
    "softcap": {"model": {"logit_softcap": 30.0}},
    "no_bias": {"model": {"bias": False}},
    "bf16": {"train": {"dtype": "bf16"}},
    "muon": {"train": {"optimizer": "muon"}},
}
MODEL_KEYS = set(BASE["model"])


def combine(*names, **extra):
    """BASE with the recipe changes `names` and the options `extra` (vocab: the tokenizer size)."""
    out = {"model": dict(BASE["model"]), "train": dict(BASE["train"]), "vocab": BASE["vocab"]}
    for n in names:
        for part in ("model", "train"):
            out[part].update(RECIPE[n].get(part, {}))
    for k, v in extra.items():
        if k == "vocab":
            out["vocab"] = v
        else:
            out["model" if k in MODEL_KEYS else "train"][k] = v
    return out


MODERN = ("rotary", "rmsnorm", "relu2", "qk_norm", "untied", "zero_init", "softcap", "no_bias", "muon")
VARIANTS = {"baseline": combine()}
VARIANTS.update({n: combine(n) for n in RECIPE})
VARIANTS["all"] = combine(*MODERN)
# then the size of the model, the tokenizer, the batch and the schedule, with the whole recipe
VARIANTS["all-w192"] = combine(*MODERN, n_embd=192, n_head=6)
VARIANTS["all-v1024"] = combine(*MODERN, vocab=1024)
VARIANTS["all-v2048"] = combine(*MODERN, vocab=2048)
VARIANTS["all-muon-lr04"] = combine(*MODERN, muon_lr=0.04)
VARIANTS["all-v2048-minlr0"] = combine(*MODERN, vocab=2048, min_lr=0.0)
VARIANTS["all-v2048-b32"] = combine(*MODERN, vocab=2048, batch_size=32)
VARIANTS["all-v2048-b64"] = combine(*MODERN, vocab=2048, batch_size=64)
VARIANTS["all-v2048-t256"] = combine(*MODERN, vocab=2048, block_size=256, batch_size=16)
VARIANTS["all-v2048-t512"] = combine(*MODERN, vocab=2048, block_size=512, batch_size=8)
VARIANTS["all-v2048-b32-wd"] = combine(*MODERN, vocab=2048, batch_size=32, muon_weight_decay=0.1)
VARIANTS["all-v2048-b32-lr6e-3"] = combine(*MODERN, vocab=2048, batch_size=32, lr=0.006)
VARIANTS["all-v2048-b32-lr1e-2-wd-minlr0"] = combine(*MODERN, vocab=2048, batch_size=32, lr=0.01, muon_weight_decay=0.1,
                                                    min_lr=0.0)
VARIANTS["lean"] = combine(*(n for n in MODERN if n not in ("qk_norm", "untied", "softcap")), vocab=2048,
                           batch_size=32, lr=0.01, muon_weight_decay=0.1, min_lr=0.0)
# the demo's own config (configs/shakespeare-gpt-mini.json), nothing on top
VARIANTS["demo"] = {"vocab": None}


def run(name, variant, args):
    out = os.path.join(args.out, name)
    data = args.data
    if variant.get("vocab"):
        data = os.path.join(os.path.dirname(args.data.rstrip("/")), f"tokens-{variant['vocab']}")
    cmd = [sys.executable, "-m", "minillm", "train", "--config", CONFIG, "--out-dir", out,
           "--num-threads", str(args.threads), "--sample-tokens", "0", "--progress", "none",
           "--checkpoint-interval", "0"]
    if variant.get("vocab"):        # the demo's own variant keeps its config's data
        cmd += ["--data", data]
    if args.steps:      # equal steps: the cosine over that many steps, no time budget
        cmd += ["--time-budget", "0", "--max-steps", str(args.steps)]
    else:
        cmd += ["--time-budget", str(args.budget)]
    model = dict(variant.get("model", {}))
    for k in ("n_layer", "n_embd", "n_head", "block_size"):
        if k in model:
            cmd += [f"--{k.replace('_', '-')}", str(model.pop(k))]
    if model:
        cmd += ["--model-args", json.dumps(model)]
    for k, v in variant.get("train", {}).items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    if os.path.isdir(out):
        subprocess.run(["rm", "-rf", out], check=True)
    log = open(out + ".log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def result(name, args):
    path = os.path.join(args.out, name, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    evals = [r for r in rows if "val_bpb" in r]
    if not evals:
        return None
    last = evals[-1]
    return {"variant": name, "val_bpb": last["val_bpb"], "steps": last["step"], "seconds": last["elapsed"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run (default: all)")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "shakespeare", "tokens-4096"),
                    help="a token folder beside tokens-<vocab> of the other tokenizers (the demo's own "
                         "config reads its own data)")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of training per run")
    ap.add_argument("--steps", type=int, default=0,
                    help="equal steps instead of equal time: this many steps per run (a load-independent "
                         "view of what each change does per step)")
    ap.add_argument("--threads", type=int, default=2, help="threads per run")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "ablate"))
    ap.add_argument("--report", action="store_true", help="only print the table of finished runs")
    args = ap.parse_args()
    names = args.only or list(VARIANTS)
    os.makedirs(args.out, exist_ok=True)
    if not args.report:
        todo, running = list(names), []
        while todo or running:
            while todo and len(running) < args.parallel:
                n = todo.pop(0)
                print(f"{time.strftime('%H:%M:%S')} {n}: {json.dumps(VARIANTS[n])}", flush=True)
                running.append((n, run(n, VARIANTS[n], args)))
            time.sleep(1)
            for n, p in list(running):
                if p.poll() is not None:
                    running.remove((n, p))
                    print(f"{time.strftime('%H:%M:%S')} {n}: exit {p.returncode} {result(n, args)}", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    each = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s of training"
    lines = [f"CPU: {cpu}; {args.threads} thread(s) per run, {args.parallel} run(s) at a time, {each} each", "",
             "| variant | val bits/byte | steps | seconds | vs baseline |", "|---|---|---|---|---|"]
    base = result("baseline", args)
    for n in names:
        r = result(n, args)
        if r is None:
            lines.append(f"| {n} | (no result) | | | |")
            continue
        delta = f"{r['val_bpb'] - base['val_bpb']:+.3f}" if base else ""
        lines.append(f"| {n} | {r['val_bpb']:.3f} | {r['steps']} | {r['seconds']:.0f} | {delta} |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
