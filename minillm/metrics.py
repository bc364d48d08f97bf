"""What a run measures and where it goes: the validation loss (nats per token, perplexity,
bits per byte), the metrics.jsonl log of a run folder, and its loss plot.

    res = evaluate(model, val_tokens, batch_size=16, block_size=128, byte_lengths=lengths)
    res = evaluate(model, val_tokens, 16, 128, lengths, decoder=model.decoder(weights="int8"))
    append_metrics("runs/x", {"step": 10, "loss": 2.3})
    read_metrics("runs/x");  plot_metrics("runs/x")          # -> runs/x/loss.png

Bits per byte = total nats / (ln 2 * bytes of the text the targets decode to): a measure that
does not depend on the tokenizer, so runs with different vocabularies compare.
"""
import json
import math
import os

import numpy as np

from minillm import _C
from minillm import data as mdata
from minillm import functional as F
from minillm.autograd import no_grad
from minillm.utils import parse_json

__all__ = ["METRICS_FILE", "evaluate", "append_metrics", "read_metrics", "truncate_metrics", "plot_metrics"]

METRICS_FILE = "metrics.jsonl"


@no_grad()
def evaluate(model, tokens, batch_size, block_size, byte_lengths, max_batches=None, decoder=None):
    """Loss over deterministic windows of `tokens` (minillm.data.eval_windows):
    {'loss': mean nats per token, 'ppl': exp(loss), 'bpb': bits per byte, 'tokens': n}.
    byte_lengths: (V,) int64 bytes per id (minillm.data.token_byte_lengths) or None (no bpb).
    decoder: a decode plan of the model (model.decoder(weights="bf16" | "int8")) to compute the
    logits with instead of the forward: each window fed one position at a time, all windows
    of a batch side by side, so the loss is that of the plan's arithmetic (its bf16 or int8
    weights) on the very same tokens. The model is put in eval mode and back."""
    was_training = model.training
    model.eval()
    nats, count, nbytes = 0.0, 0, 0
    try:
        for x, y in mdata.eval_windows(tokens, batch_size, block_size, max_batches):
            loss = model(x, y)[1] if decoder is None else _plan_loss(model, decoder, x, y)
            n = y.numel()
            nats += float(loss.item()) * n
            count += n
            if byte_lengths is not None:
                nbytes += int(byte_lengths[np.asarray(y)].sum())
    finally:
        model.train(was_training)
    mean = nats / count
    out = {"loss": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": count}
    if byte_lengths is not None and nbytes:
        out["bpb"] = nats / (math.log(2.0) * nbytes)
    return out


def _plan_loss(model, decoder, x, y):
    """Mean cross-entropy of y (B, T) given x (B, T) with the logits of the decode plan: each
    row's T positions in one pass over the weights (Decoder.extend, the bits of stepping them)."""
    from minillm.generate import KVCache
    B, T = x.shape
    total = 0.0
    for b in range(B):
        cache = KVCache.for_decoder(model, decoder, 1, capacity=T)
        logits = decoder.extend([(x[b].tolist(), cache)], every=True)                 # (T, V)
        total += float(F.cross_entropy(logits, y[b].contiguous()).item())
    return _C.tensor(total / B)


def append_metrics(run_dir, record):
    """Append one record (a JSON-safe dict) as a line of run_dir/metrics.jsonl."""
    with open(os.path.join(os.fspath(run_dir), METRICS_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir):
    """The records of run_dir/metrics.jsonl: list of dicts (a torn last line is skipped)."""
    path = os.path.join(os.fspath(run_dir), METRICS_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file (is {run_dir} a training run folder?)")
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(parse_json(line, path))
            except ValueError:
                continue
    return out


def truncate_metrics(path, step):
    """Drop records after `step` (a resumed run rewrites the steps after its checkpoint)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if parse_json(line, path).get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except ValueError:
                continue
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def plot_metrics(run_dir, out=None):
    """Write a PNG of the training loss and validation loss against the step (matplotlib);
    returns its path (default run_dir/loss.png). RuntimeError with the install command when
    matplotlib is absent."""
    records = read_metrics(run_dir)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("`minillm plot` needs matplotlib, which is not installed: "
                           "pip install matplotlib") from None
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        raise ValueError(f"{run_dir}: metrics.jsonl holds no loss yet")
    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(os.path.basename(os.path.abspath(run_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    out = out or os.path.join(os.fspath(run_dir), "loss.png")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
