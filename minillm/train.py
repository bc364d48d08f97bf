"""Training: a `Trainer` driven by a `TrainConfig`, checkpoints that resume bitwise exactly.

    from minillm.train import TrainConfig, Trainer
    cfg = TrainConfig(data="data/shakespeare/tokens", model="gpt-mini", max_steps=2000)
    Trainer(cfg).train()                     # metrics.jsonl and checkpoints/ under cfg.out_dir
    Trainer.resume("runs/gpt-mini").train()  # continues from the latest checkpoint

One step: `grad_accum` micro-batches of (batch_size, block_size) random windows of the training
tokens (minillm.data.TokenBatches), the mean loss's gradients summed over them, the global
gradient norm clipped to `grad_clip`, an AdamW step (2-D weights decay, biases and LayerNorm
gains do not) at the learning rate of linear warmup + cosine decay (minillm.optim).

Evaluation every `eval_interval` steps runs over fixed windows of the validation tokens and
reports the loss (nats per token), the perplexity exp(loss) and bits per byte = total nats /
(ln 2 * bytes of the text the targets decode to): a measure that does not depend on the
tokenizer, so runs with different vocabularies compare.

A checkpoint is a folder checkpoints/step_<step>/ under out_dir:
    config.json            {"model": model config, "train": TrainConfig}
    model.safetensors      the model's state_dict
    optimizer.safetensors  AdamW moments, "state.<i>.exp_avg" / "state.<i>.exp_avg_sq", with the
                           param groups and per-parameter step counts in the metadata
    trainer_state.json     step, tokens seen, elapsed seconds, RNG states (minillm's default
                           generator and the batch sampler: the data position)
    tokenizer.json         the tokenizer of the training data
    manifest.json          bytes and sha256 of every other file, written last
It is written to a hidden temporary folder and renamed into place, so an interrupted save never
leaves a half checkpoint; loading checks every file against the manifest and names a missing,
truncated or altered one. Restoring all of the above makes a resumed run bitwise identical to
an uninterrupted one (same thread count).
"""
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

import minillm
from minillm import _C, nn
from minillm import data as mdata
from minillm import distributed
from minillm import io as mio
from minillm import optim
from minillm import random as mrandom
from minillm.serialization import fsync_dir as _fsync_dir
from minillm.autograd import no_grad
from minillm.generate import generate

__all__ = ["TrainConfig", "Trainer", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "find_checkpoint", "list_checkpoints", "load_model", "read_metrics", "plot_metrics",
           "evaluate", "sample_text"]

CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.safetensors",
                    "trainer_state.json", "tokenizer.json")
MANIFEST = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


def _calibration_steps(cfg):
    """Steps timed to turn time_budget into max_steps: up to 30, within the warmup when it is
    long enough, so that the learning rates of the timed steps do not depend on max_steps."""
    return max(5, min(cfg.warmup_steps, 30))


# ====================================================================== configuration
def _f(default, help, **kw):
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a run needs, loadable from JSON (`TrainConfig.from_json(path)`) and
    overridable field by field (`cfg.replace(lr=3e-4)`, or `--lr 3e-4` on the command line)."""
    # data and output
    data: str = _f("", "prepared token folder (from `minillm data prepare`)")
    out_dir: str = _f("runs/run", "folder for metrics.jsonl and checkpoints/")
    # model: a preset, then overrides of its fields (None keeps the preset's value)
    model: str = _f("gpt-mini", "model preset (bigram, mlp, gpt-tiny, gpt-mini, gpt2-small)")
    n_layer: Optional[int] = _f(None, "transformer blocks")
    n_head: Optional[int] = _f(None, "attention heads")
    n_embd: Optional[int] = _f(None, "model width")
    block_size: Optional[int] = _f(None, "context length in tokens (training windows)")
    dropout: Optional[float] = _f(None, "dropout probability")
    model_args: dict = _f(dict, "other model fields, e.g. {\"context\": 8} (JSON)")
    # optimisation
    batch_size: int = _f(16, "windows per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_steps: int = _f(1000, "optimizer steps in total")
    lr: float = _f(1e-3, "peak learning rate")
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _f(100, "steps of linear warmup")
    lr_decay_steps: Optional[int] = _f(None, "step where the cosine reaches min_lr (default max_steps)")
    weight_decay: float = _f(0.1, "AdamW weight decay of 2-D weights")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW eps")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: no clipping)")
    # bf16 mixed precision (minillm/amp.py): weight products on bf16-rounded inputs with float32
    # sums; master weights, optimizer state, LayerNorm, softmax, attention and the loss stay float32
    dtype: str = _f("float32", "precision of the weight products: float32, or bf16 (bfloat16 inputs, "
                               "float32 sums and master weights)")
    seed: int = _f(1337, "seed of the weights, dropout and batches")
    # evaluation, logging, checkpoints
    eval_interval: int = _f(250, "evaluate on the validation split every N steps (0: only at the end)")
    eval_batches: int = _f(20, "validation batches per evaluation (0: the whole split)")
    final_eval_batches: int = _f(200, "validation batches of the evaluation at the end (0: the whole split)")
    log_interval: int = _f(10, "write a metrics line every N steps")
    checkpoint_interval: int = _f(500, "save a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "keep the last K checkpoints")
    time_budget: float = _f(0.0, "train for about this many seconds: max_steps is set from the "
                                 "speed of the first steps (0: use max_steps)")
    max_time: float = _f(0.0, "stop (with a checkpoint) after this many seconds (0: no limit)")
    num_threads: int = _f(0, "threads (0: $MINILLM_NUM_THREADS or all cores)")
    ddp: bool = _f(False, "data-parallel over the ranks of `mpirun -n N`: each rank takes "
                          "batch_size / N windows of every batch (batch_size is the global batch)")
    progress: str = _f("auto", "progress display: auto (a tqdm bar on a terminal), bar, log, none")
    sample_tokens: int = _f(0, "tokens of text to sample at the end (0: none)")
    sample_prompt: str = _f("\n", "prompt of the final sample")
    temperature: float = _f(0.8, "sampling temperature of the final sample")
    top_k: Optional[int] = _f(200, "sample only from the top k tokens (final sample)")

    # ------------------------------------------------------------------ conversions
    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, source="config"):
        """A TrainConfig from a dict; unknown keys raise ValueError naming them and `source`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown training options {unknown}; known: {sorted(names)}")
        return cls(**d).checked()

    @classmethod
    def from_json(cls, path):
        """Read a JSON file holding a dict of options (or {"train": {...}} as in a checkpoint's
        config.json)."""
        from minillm.utils import read_json
        d = read_json(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of training options")
        if "train" in d and isinstance(d["train"], dict):
            d = d["train"]
        return cls.from_dict(d, source=path)

    def replace(self, **overrides):
        """A copy with some fields replaced (checked)."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    def checked(self):
        """self, or ValueError naming the first bad option."""
        positive = ("batch_size", "grad_accum", "log_interval", "keep_checkpoints")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_steps", "warmup_steps", "eval_interval", "eval_batches", "final_eval_batches",
                     "checkpoint_interval", "num_threads", "sample_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "max_time", "eps", "time_budget"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.progress not in ("auto", "bar", "log", "none"):
            raise ValueError(f"progress must be auto, bar, log or none, got {self.progress!r}")
        if not isinstance(self.model_args, dict):
            raise ValueError(f"model_args must be a dict, got {self.model_args!r}")
        return self

    def model_overrides(self):
        """The model fields this config sets (preset values for the others)."""
        out = {k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")
               if getattr(self, k) is not None}
        out.update(self.model_args)
        return out


# ====================================================================== checkpoints
class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used: the message names the folder and the file."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _optimizer_tensors(optimizer):
    """(tensors, metadata) of an optimizer's state_dict, flat for safetensors."""
    sd = optimizer.state_dict()
    tensors, steps = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if k == "step":
                steps[str(i)] = int(v)
            else:
                tensors[f"state.{i}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    meta = {"param_groups": json.dumps(groups), "steps": json.dumps(steps),
            "optimizer": type(optimizer).__name__}
    return tensors, meta


def _optimizer_state(tensors, meta, path):
    """Inverse of _optimizer_tensors: an optimizer state_dict."""
    try:
        groups = json.loads(meta["param_groups"])
        steps = json.loads(meta["steps"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata lacks the optimizer's param groups or steps ({e})") from None
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    state = {}
    for name, t in tensors.items():
        m = re.fullmatch(r"state\.(\d+)\.(\w+)", name)
        if not m:
            raise CheckpointError(f"{path}: unexpected tensor {name!r}")
        state.setdefault(int(m.group(1)), {})[m.group(2)] = t
    for i, s in steps.items():
        state.setdefault(int(i), {})["step"] = int(s)
    return {"state": state, "param_groups": groups}


def save_checkpoint(folder, model, optimizer, trainer_state, config, tokenizer_file=None):
    """Write a checkpoint folder (layout in the module docstring) atomically: into a hidden
    temporary folder next to `folder`, fsynced, then renamed to `folder` (replacing an older
    folder of that name only once the new one is complete). Returns `folder`.

    model: nn.Module; optimizer: an minillm.optim optimizer; trainer_state: JSON-safe dict;
    config: JSON-safe dict ({"model": ..., "train": ...}); tokenizer_file: a tokenizer.json
    to copy (or None)."""
    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(folder)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_json(os.path.join(tmp, "config.json"), config)
        mio.save(dict(model.state_dict()), os.path.join(tmp, "model.safetensors"),
                 metadata={"format": "pt"})
        tensors, meta = _optimizer_tensors(optimizer)
        mio.save(tensors, os.path.join(tmp, "optimizer.safetensors"), metadata=meta)
        _write_json(os.path.join(tmp, "trainer_state.json"), trainer_state)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, os.path.join(tmp, "tokenizer.json"))
        files = [f for f in CHECKPOINT_FILES if os.path.exists(os.path.join(tmp, f))]
        manifest = {f: {"bytes": os.path.getsize(os.path.join(tmp, f)),
                        "sha256": _sha256(os.path.join(tmp, f))} for f in files}
        _write_json(os.path.join(tmp, MANIFEST), {"files": manifest})
        _fsync_dir(tmp)
        old = None
        if os.path.exists(folder):
            old = os.path.join(parent, f".old-{os.path.basename(folder)}-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
        os.rename(tmp, folder)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def verify_checkpoint(folder):
    """Check every file of a checkpoint folder against its manifest; CheckpointError names
    the folder and the file that is missing, truncated or altered."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    mpath = os.path.join(folder, MANIFEST)
    if not os.path.exists(mpath):
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is missing (an incomplete or "
                              f"damaged checkpoint)")
    try:
        with open(mpath) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is unreadable ({e})") from None
    for name in CHECKPOINT_FILES[:4]:
        if name not in files:
            raise CheckpointError(f"checkpoint {folder}: {MANIFEST} does not list {name}")
    for name, info in files.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        size = os.path.getsize(path)
        if size != info["bytes"]:
            what = "truncated" if size < info["bytes"] else "longer than written"
            raise CheckpointError(f"checkpoint {folder}: {name} is {what}: {size} bytes, the "
                                  f"manifest says {info['bytes']}")
        if _sha256(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} does not match its sha256 in the "
                                  f"manifest (altered or corrupt)")


def load_checkpoint(folder):
    """Read a verified checkpoint folder: dict with 'path', 'config' (dict), 'model' (name ->
    Tensor), 'optimizer' (an optimizer state_dict), 'trainer_state' (dict), 'tokenizer' (path
    of tokenizer.json or None). CheckpointError names a bad file."""
    verify_checkpoint(folder)
    folder = os.fspath(folder)

    def read_json(name):
        try:
            with open(os.path.join(folder, name)) as f:
                return json.load(f)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {folder}: {name} is not valid JSON ({e})") from None

    def read_tensors(name):
        path = os.path.join(folder, name)
        try:
            return mio.load(path, mmap=False), mio.load_metadata(path)
        except mio.FormatError as e:
            raise CheckpointError(f"checkpoint {folder}: {e}") from None

    model_state, _ = read_tensors("model.safetensors")
    opt_tensors, opt_meta = read_tensors("optimizer.safetensors")
    tok = os.path.join(folder, "tokenizer.json")
    return {"path": folder, "config": read_json("config.json"), "model": model_state,
            "optimizer": _optimizer_state(opt_tensors, opt_meta,
                                          os.path.join(folder, "optimizer.safetensors")),
            "trainer_state": read_json("trainer_state.json"),
            "tokenizer": tok if os.path.exists(tok) else None}


def load_model_state(model, state, source):
    """Copy a checkpoint's weights into `model`; ValueError naming `source` and, for a model
    of another config, the mismatching tensor and both shapes."""
    try:
        model.load_state_dict(state)
    except (ValueError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise ValueError(f"{source}: does not fit this model: {msg}") from None


def load_model(path):
    """The model of a checkpoint folder (or of a run folder's latest checkpoint), in eval mode."""
    from minillm.models import model_from_config
    ckpt = load_checkpoint(find_checkpoint(path))
    model = model_from_config(ckpt["config"]["model"])
    load_model_state(model, ckpt["model"], os.path.join(ckpt["path"], "model.safetensors"))
    model.eval()
    return model


_STEP_DIR = re.compile(r"step_(\d+)")


def list_checkpoints(run_dir):
    """[(step, path)] of the checkpoint folders of a run folder, oldest first."""
    root = os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_DIR.fullmatch(name)
        if m and os.path.isdir(os.path.join(root, name)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def find_checkpoint(path):
    """`path` itself when it is a checkpoint folder, else the latest checkpoint of the run
    folder `path`; ValueError when there is none."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, MANIFEST)) or os.path.exists(os.path.join(path, "config.json")):
        return path
    found = list_checkpoints(path)
    if not found:
        raise ValueError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints")
    return found[-1][1]


# ====================================================================== metrics
def read_metrics(run_dir):
    """The records of run_dir/metrics.jsonl: list of dicts (a torn last line is skipped)."""
    path = os.path.join(os.fspath(run_dir), METRICS_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file (is {run_dir} a training run folder?)")
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _truncate_metrics(path, step):
    """Drop records after `step` (a resumed run rewrites the steps after its checkpoint)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= step:
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
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("`minillm plot` needs matplotlib, which is not installed: "
                           "pip install matplotlib") from None
    records = read_metrics(run_dir)
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


# ====================================================================== evaluation, sampling
@no_grad()
def evaluate(model, tokens, batch_size, block_size, byte_lengths, max_batches=None):
    """Loss over deterministic windows of `tokens` (minillm.data.eval_windows):
    {'loss': mean nats per token, 'ppl': exp(loss), 'bpb': bits per byte, 'tokens': n}.
    byte_lengths: (V,) int64 bytes per id (minillm.data.token_byte_lengths) or None (no bpb).
    The model is put in eval mode and back in the mode it was in."""
    was_training = model.training
    model.eval()
    nats, count, nbytes = 0.0, 0, 0
    try:
        for x, y in mdata.eval_windows(tokens, batch_size, block_size, max_batches):
            _, loss = model(x, y)
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


def sample_text(model, tokenizer, prompt="\n", max_new_tokens=200, temperature=0.8, top_k=200,
                seed=0):
    """Text sampled from `model` after `prompt` (str) with minillm.generate (the sampling code of
    `minillm sample`): prompt + max_new_tokens tokens, decoded."""
    ids = tokenizer.encode(prompt) or [getattr(tokenizer, "eot_token", None) or 0]
    idx = _C.from_numpy(np.array([ids], dtype=np.int64))
    gen = mrandom.Generator(seed)
    was_training = model.training
    model.eval()
    try:
        out = np.asarray(generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                  generator=gen))
    finally:
        model.train(was_training)
    return tokenizer.decode([int(i) for i in out[0]])


# ====================================================================== the trainer
class _Progress:
    """A tqdm bar (when wanted and possible) or log lines on stdout."""

    def __init__(self, mode, total, initial):
        self.bar = None
        if mode == "bar" or (mode == "auto" and sys.stdout.isatty()):
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            except ImportError:
                pass
        self.quiet = mode == "none"

    def step(self, text):
        if self.bar is not None:
            self.bar.update(1)
            if text:
                self.bar.set_postfix_str(text, refresh=False)

    def log(self, text):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains a model on a prepared token folder, as set by a TrainConfig.

    Trainer(config) builds the model from the preset (vocab_size from the data), AdamW and the
    batch sampler; Trainer.resume(path, **overrides) rebuilds all of them from a checkpoint.
    train() runs to max_steps and returns the last evaluation. Attributes: model, optimizer,
    step, history (list of (step, loss) for every step run by this object).
    For tests and scripts the model, tokens and tokenizer may be passed in directly.
    """

    def __init__(self, config, model=None, train_tokens=None, val_tokens=None, tokenizer=None,
                 tokenizer_file=None):
        self.config = cfg = config.checked() if isinstance(config, TrainConfig) else \
            TrainConfig.from_dict(config)
        if cfg.num_threads:
            minillm.set_num_threads(cfg.num_threads)
        if train_tokens is None:
            if not cfg.data:
                raise ValueError("no training data: set `data` to a folder made by "
                                 "`minillm data prepare`")
            td = mdata.TokenData(cfg.data)
            train_tokens, val_tokens = td.split("train"), td.split("val")
            tokenizer = tokenizer or td.tokenizer()
            tok_json = os.path.join(td.tokenizer_path(), "tokenizer.json")
            tokenizer_file = tokenizer_file or (tok_json if os.path.exists(tok_json) else None)
            vocab_size = td.vocab_size
        else:
            vocab_size = tokenizer.vocab_size if tokenizer is not None else int(train_tokens.max()) + 1
        self.tokenizer, self.tokenizer_file = tokenizer, tokenizer_file
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.byte_lengths = mdata.token_byte_lengths(tokenizer) if tokenizer is not None else None

        # ---- data parallel: rank 0's weights everywhere; only rank 0 writes files
        self.world = distributed.init() if cfg.ddp else distributed.world()
        if self.world.size > 1:
            self.world.shard(cfg.batch_size)        # refuses a batch that does not split evenly
        mrandom.manual_seed(cfg.seed)
        if model is None:
            from minillm.models import build_model
            model = build_model(cfg.model, vocab_size=vocab_size, **cfg.model_overrides())
        self.model = model
        self.world.broadcast_(list(model.parameters()))
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"the model's vocab_size {model.config.vocab_size} is smaller than the "
                             f"data's {vocab_size}")
        self.block_size = min(cfg.block_size or model.config.block_size, model.config.block_size)
        self.optimizer = self._make_optimizer()
        # the batch stream has its own seed, so changing the model leaves the data order alone
        self.batches = mdata.TokenBatches(train_tokens, cfg.batch_size, self.block_size,
                                          seed=cfg.seed + 1)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.history = []
        self.last_eval = None
        self._stop = False
        if self.world.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)

    def _check_fresh_out_dir(self):
        """A new run must not mix its metrics and checkpoints with another run's."""
        if not self.world.is_main:
            return
        old = list_checkpoints(self.config.out_dir)
        if old:
            raise ValueError(f"{self.config.out_dir} already holds checkpoints of a run (up to step "
                             f"{old[-1][0]}); continue it with --resume {self.config.out_dir}, or "
                             f"choose another out_dir (or delete that folder)")
        metrics = os.path.join(self.config.out_dir, METRICS_FILE)
        if os.path.exists(metrics):
            os.remove(metrics)

    def _make_optimizer(self):
        cfg = self.config
        if hasattr(self.model, "configure_optimizers"):
            return self.model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                                   cfg.eps)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if rest:
            groups.append({"params": rest, "weight_decay": 0.0})
        return optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, path, **overrides):
        """A Trainer in the exact state of a checkpoint (a checkpoint folder, or a run folder:
        its latest checkpoint). `overrides` replace training options (e.g. max_steps=...);
        changing anything but the run length, intervals or output breaks bitwise equality with
        an uninterrupted run."""
        from minillm.models import model_from_config
        folder = find_checkpoint(path)
        ckpt = load_checkpoint(folder)
        train_cfg = dict(ckpt["config"].get("train", {}))
        parent = os.path.dirname(os.path.abspath(folder))
        if os.path.basename(parent) == CHECKPOINTS_DIR:
            # the run folder the checkpoint sits in, wherever the run was moved to
            train_cfg["out_dir"] = os.path.dirname(parent)
        train_cfg.update(overrides)
        cfg = TrainConfig.from_dict(train_cfg, source=os.path.join(folder, "config.json"))
        model = model_from_config(ckpt["config"]["model"])
        load_model_state(model, ckpt["model"], os.path.join(folder, "model.safetensors"))
        trainer = cls(cfg, model=model)
        trainer.load_state(ckpt)
        return trainer

    def load_state(self, ckpt):
        """Restore optimizer, step, RNG and data position from a load_checkpoint() dict (the
        weights are loaded by the caller)."""
        folder = ckpt["path"]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {folder}: optimizer.safetensors: {e}") from None
        st = ckpt["trainer_state"]
        try:
            self.step = int(st["step"])
            self.tokens_seen = int(st["tokens_seen"])
            self.elapsed = float(st["elapsed"])
            mrandom.default_generator().set_state(st["rng"]["default"])
            self.batches.load_state_dict(st["data"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {folder}: trainer_state.json: bad or missing "
                                  f"field ({e})") from None
        _truncate_metrics(os.path.join(self.config.out_dir, METRICS_FILE), self.step)

    # ------------------------------------------------------------------ saving
    def trainer_state(self):
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                "rng": {"default": mrandom.default_generator().get_state()},
                "data": self.batches.state_dict(),
                "last_eval": self.last_eval}

    def save(self):
        """Write checkpoints/step_<step>/ (atomically) and drop all but the last
        keep_checkpoints; returns the folder (None on ranks other than 0, which write nothing)."""
        if not self.world.is_main:
            return None
        cfg = self.config
        folder = os.path.join(cfg.out_dir, CHECKPOINTS_DIR, f"step_{self.step:07d}")
        config = {"model": self.model.config.to_dict(), "train": cfg.to_dict(),
                  "minillm_version": minillm.__version__}
        save_checkpoint(folder, self.model, self.optimizer, self.trainer_state(), config,
                        self.tokenizer_file)
        for _, old in list_checkpoints(cfg.out_dir)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    # ------------------------------------------------------------------ the loop
    def lr_at(self, step):
        cfg = self.config
        decay = cfg.lr_decay_steps or cfg.max_steps
        return optim.cosine_with_warmup(step, cfg.lr, cfg.warmup_steps, max(decay, cfg.warmup_steps),
                                        cfg.min_lr)

    def train_step(self):
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm, lr)."""
        cfg = self.config
        lr = self.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = 0.0
        world = self.world
        for _ in range(cfg.grad_accum):
            x, y = self.batches.next()
            if world.size > 1:          # every rank draws the global batch and keeps its shard
                lo, hi = world.shard(cfg.batch_size)
                x, y = x[lo:hi], y[lo:hi]
            with minillm.autocast(dtype=cfg.dtype):     # bf16 products when cfg.dtype is bf16
                _, loss = self.model(x, y)
            total += float(loss.item())
            (loss if cfg.grad_accum == 1 else loss * (1.0 / cfg.grad_accum)).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if world.size > 1:
            world.allreduce_mean_([p.grad for p in params])
            total = world.allreduce_mean_float(total)
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        self.tokens_seen += cfg.grad_accum * cfg.batch_size * self.block_size
        return total / cfg.grad_accum, norm, lr

    def evaluate(self, max_batches=-1):
        """Validation loss, perplexity and bits per byte (see the module docstring)."""
        cfg = self.config
        if max_batches == -1:
            max_batches = cfg.eval_batches or None
        return evaluate(self.model, self.val_tokens, cfg.batch_size, self.block_size,
                        self.byte_lengths, max_batches)

    def _log(self, record):
        if not self.world.is_main:
            return
        with open(os.path.join(self.config.out_dir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")

    def _on_sigint(self, signum, frame):
        if self._stop:          # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop = True

    def train(self):
        """Run from the current step to max_steps (or until max_time, or Ctrl-C: each saves a
        checkpoint first). Returns the last validation result dict (or None without val data)."""
        if self.step == 0:
            self._check_fresh_out_dir()
        self.model.train()
        progress = _Progress(self.config.progress if self.world.is_main else "none",
                             self.config.max_steps, self.step)
        use_signal = _in_main_thread()
        prev_handler = signal.signal(signal.SIGINT, self._on_sigint) if use_signal else None
        self._stop, self.interrupted = False, False
        clock = _Clock(self.elapsed, self.tokens_seen)
        try:
            if self.step == 0:
                progress.log(self._describe())
            while self.step < self.config.max_steps:
                loss, norm, lr = self.train_step()
                self.history.append((self.step, loss))
                self.elapsed = clock.elapsed()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"step {self.step}: the loss is {loss}; lower lr "
                                             f"(now {self.config.lr}) or check the data")
                progress.step(f"loss {loss:.4f}")
                self._log_step(loss, norm, lr, clock, progress)
                if (self.config.time_budget and clock.t_cal
                        and self.step == _calibration_steps(self.config) + 1):
                    self._fit_time_budget(time.perf_counter() - clock.t_cal, progress)
                if self.step == 1:
                    clock.t_cal = time.perf_counter()     # step 1 warms caches: time the next ones
                cfg = self.config
                last = self.step == cfg.max_steps
                out_of_time = bool(cfg.max_time) and self.elapsed >= cfg.max_time
                if self.val_tokens is not None and (
                        last or out_of_time or (cfg.eval_interval and self.step % cfg.eval_interval == 0)):
                    self._run_eval(progress, final=last)
                if self.world.any_true(self._stop or out_of_time):
                    self.interrupted = True
                    why = "interrupted" if self._stop else f"max_time {cfg.max_time:g} s reached"
                    progress.log(f"{why} at step {self.step}: saved {self.save()}; continue with "
                                 f"`minillm train --resume {cfg.out_dir}`")
                    break
                if last or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    self.save()
        finally:
            progress.close()
            if use_signal:
                signal.signal(signal.SIGINT, prev_handler)
        return self.last_eval

    def _describe(self):
        cfg = self.config
        steps = (f"about {cfg.time_budget:g} s" if cfg.time_budget else f"{cfg.max_steps} steps")
        return (f"training {type(self.model).__name__} with {self.model.num_params():,} parameters "
                f"on {len(self.train_tokens):,} tokens: {steps} of {cfg.grad_accum} x "
                f"{cfg.batch_size} x {self.block_size} tokens, {minillm.get_num_threads()} threads")

    def _log_step(self, loss, norm, lr, clock, progress):
        """A metrics.jsonl line (and a printed one without a bar) every log_interval steps."""
        cfg = self.config
        if self.step % cfg.log_interval and self.step != cfg.max_steps:
            return
        tps = clock.tokens_per_s(self.tokens_seen)
        self._log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                   "tokens_per_s": tps, "elapsed": self.elapsed})
        if progress.bar is None:
            progress.log(f"step {self.step:6d} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
                         f"{norm:.3f} | {tps:,.0f} tok/s | {self.elapsed:.0f} s")

    def _fit_time_budget(self, seconds, progress):
        """Set max_steps (and the cosine's length) so that training, evaluations included,
        takes about time_budget seconds at the speed of the calibration steps. The resolved
        max_steps goes into the checkpoints, so a resumed run follows the same schedule."""
        cfg = self.config
        per_step = self.world.broadcast_float(seconds) / _calibration_steps(cfg)  # same steps on all ranks
        # an evaluation batch (batch_size windows, no backward) costs about a third of a
        # training micro-batch
        per_eval_batch = per_step / (3 * cfg.grad_accum)
        windows = (len(self.val_tokens) - 1) // self.block_size if self.val_tokens is not None else 0
        all_batches = -(-windows // cfg.batch_size)
        eval_each = min(cfg.eval_batches or all_batches, all_batches) * per_eval_batch
        final_eval = min(cfg.final_eval_batches or all_batches, all_batches) * per_eval_batch
        left = cfg.time_budget - self.elapsed - final_eval
        per_step_all = per_step + (eval_each / cfg.eval_interval if cfg.eval_interval else 0.0)
        steps = max(self.step + 1, self.step + int(left / per_step_all))
        self.config = cfg.replace(max_steps=steps, lr_decay_steps=None, time_budget=0.0)
        progress.log(f"{per_step * 1000:.0f} ms per step: {steps} steps fit in the time budget "
                     f"of {cfg.time_budget:g} s")
        if progress.bar is not None:
            progress.bar.total = steps
            progress.bar.refresh()

    def _run_eval(self, progress, final=False):
        t0 = time.perf_counter()
        res = self.evaluate(max_batches=(self.config.final_eval_batches or None) if final else -1)
        self.last_eval = res
        rec = {"step": self.step, "val_loss": res["loss"], "val_ppl": res["ppl"],
               "val_tokens": res["tokens"], "elapsed": self.elapsed,
               "eval_seconds": time.perf_counter() - t0}
        if "bpb" in res:
            rec["val_bpb"] = res["bpb"]
        self._log(rec)
        bpb = f" | val bits/byte {res['bpb']:.4f}" if "bpb" in res else ""
        progress.log(f"step {self.step:6d} | val loss {res['loss']:.4f} | val ppl {res['ppl']:.2f}{bpb}")
        return res


class _Clock:
    """Elapsed seconds (continuing a resumed run's) and tokens/s between log lines."""

    def __init__(self, elapsed, tokens):
        self.start, self.elapsed0 = time.perf_counter(), elapsed
        self.t_log, self.tokens_log = self.start, tokens
        self.t_cal = None

    def elapsed(self):
        return self.elapsed0 + time.perf_counter() - self.start

    def tokens_per_s(self, tokens):
        now = time.perf_counter()
        tps = (tokens - self.tokens_log) / max(now - self.t_log, 1e-9)
        self.t_log, self.tokens_log = now, tokens
        return tps


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
