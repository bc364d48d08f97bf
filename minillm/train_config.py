"""The training options: one dataclass that is the JSON config, the Python API and the CLI
flags of `minillm train`.

    cfg = TrainConfig(data="data/shakespeare/tokens", model="gpt-mini", max_steps=2000)
    cfg = TrainConfig.from_json("configs/gpt-mini.json").replace(lr=3e-4)
    add_arguments(parser)                  # --data, --lr, ... one flag per field
    overrides = options_from_args(args)    # the fields given on the command line

A field's `help` metadata is its flag's help text; its annotation is the flag's type (an
Optional field also takes "none", a dict field takes JSON).
"""
import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

from minillm.progress import MODES
from minillm.utils import parse_json, read_json

__all__ = ["TrainConfig", "add_arguments", "options_from_args", "check_option"]


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
    optimizer: str = _f("adamw", "adamw, or muon: Muon for the 2-D weight matrices (Newton-Schulz "
                                 "orthogonalised Nesterov momentum, no weight decay) and AdamW with the "
                                 "options above for the embeddings, the LM head, gains and biases")
    muon_lr: float = _f(0.02, "Muon's peak learning rate (it follows the same schedule as lr)")
    muon_momentum: float = _f(0.95, "Muon's momentum (Nesterov)")
    muon_weight_decay: float = _f(0.0, "Muon's decoupled weight decay of the hidden matrices (W *= 1 - "
                                       "muon_lr * muon_weight_decay each step)")
    # bf16 mixed precision (minillm/amp.py): weight products on bf16-rounded inputs with float32
    # sums; master weights, optimizer state, LayerNorm, softmax, attention and the loss stay float32
    dtype: str = _f("float32", "precision of the weight products: float32, bf16 (bfloat16 inputs, "
                               "float32 sums and master weights), or auto (bf16 where this CPU's bf16 "
                               "products of the model's shapes time at least a tenth faster before the "
                               "first step, else float32; the run keeps the choice)")
    seed: int = _f(1337, "seed of the weights, dropout and batches")
    # evaluation, logging, checkpoints
    eval_interval: int = _f(250, "evaluate on the validation split every N steps (0: only at the end)")
    eval_batches: int = _f(20, "validation batches per evaluation (0: the whole split)")
    final_eval_batches: int = _f(200, "validation batches of the evaluation at the end (0: the whole split)")
    log_interval: int = _f(10, "write a metrics line every N steps")
    checkpoint_interval: int = _f(500, "save a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "keep the last K checkpoints")
    time_budget: float = _f(0.0, "train for this many seconds (steps and evaluations; the final "
                                 "evaluation and sample come after): the learning rate follows the "
                                 "fraction of the budget used (warmup_steps, constant, then "
                                 "cooldown_frac) and the run stops when the budget is spent, or at "
                                 "max_steps (0: no budget, the cosine over max_steps)")
    cooldown_frac: float = _f(0.4, "with time_budget: the last fraction of the budget, over which the "
                                   "learning rate falls linearly to min_lr")
    max_time: float = _f(0.0, "stop (with a checkpoint) after this many seconds (0: no limit)")
    num_threads: int = _f(0, "threads (0: $MINILLM_NUM_THREADS or all cores)")
    tune_threads: bool = _f(True, "time the steps at num_threads and at half as many and train at "
                                  "the faster (a machine whose cores other processes also use); "
                                  "the results are the same either way")
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
        """self, or ValueError naming the first bad option (check_option)."""
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name))
        return self

    def model_overrides(self):
        """The model fields this config sets (preset values for the others)."""
        out = {k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")
               if getattr(self, k) is not None}
        out.update(self.model_args)
        return out


# ---------------------------------------------------------------------- checks
_POSITIVE = ("batch_size", "grad_accum", "log_interval", "keep_checkpoints")
_NON_NEGATIVE = ("max_steps", "warmup_steps", "eval_interval", "eval_batches", "final_eval_batches",
                 "checkpoint_interval", "sample_tokens")
_POSITIVE_OR_NONE = ("n_layer", "n_head", "n_embd", "block_size", "lr_decay_steps", "top_k")
_FINITE_NON_NEGATIVE = ("lr", "min_lr", "weight_decay", "grad_clip", "max_time", "eps", "time_budget",
                        "temperature", "muon_lr", "muon_weight_decay")
_STRINGS = ("data", "out_dir", "model", "sample_prompt")
DTYPES = ("float32", "bf16", "bfloat16", "auto")
OPTIMIZERS = ("adamw", "muon")
MAX_THREADS = 4096


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_option(name, value):
    """ValueError naming the option and the value unless `value` is allowed for the
    TrainConfig field `name`."""
    if name in _POSITIVE:
        ok, want = _is_int(value) and value > 0, "a positive integer"
    elif name in _NON_NEGATIVE:
        ok, want = _is_int(value) and value >= 0, "a non-negative integer"
    elif name in _POSITIVE_OR_NONE:
        ok, want = value is None or (_is_int(value) and value > 0), "a positive integer (or none)"
    elif name in _FINITE_NON_NEGATIVE:
        ok, want = _is_number(value) and value >= 0, "a finite number >= 0"
    elif name == "cooldown_frac":
        ok, want = _is_number(value) and 0 < value <= 1, "a number in (0, 1]"
    elif name in ("beta1", "beta2", "muon_momentum"):
        ok, want = _is_number(value) and 0 <= value < 1, "a number in [0, 1)"
    elif name == "dropout":
        ok, want = value is None or (_is_number(value) and 0 <= value < 1), "a number in [0, 1) (or none)"
    elif name == "num_threads":
        ok, want = _is_int(value) and 0 <= value <= MAX_THREADS, f"an integer in [0, {MAX_THREADS}]"
    elif name == "seed":
        ok, want = _is_int(value) and abs(value) < 2 ** 63, "an integer of absolute value < 2**63"
    elif name == "dtype":
        ok, want = value in DTYPES, f"one of {', '.join(DTYPES)}"
    elif name == "optimizer":
        ok, want = value in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"
    elif name == "progress":
        ok, want = value in MODES, f"one of {', '.join(MODES)}"
    elif name == "model_args":
        ok, want = isinstance(value, dict), "a dict (a JSON object)"
    elif name in ("ddp", "tune_threads"):
        ok, want = isinstance(value, bool), "true or false"
    elif name in _STRINGS:
        ok, want = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


# ---------------------------------------------------------------------- command-line flags
def _option_type(f):
    """argparse type of a TrainConfig field: its annotation, 'none' for an optional one,
    JSON for a dict."""
    tp = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing))  # noqa: S307
    optional = typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp

    def convert(text):
        if optional and text.lower() == "none":
            return None
        if base is dict:
            try:
                value = parse_json(text, "JSON")
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"expected a JSON object: {e}") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
            return value
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None
        try:
            check_option(f.name, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    convert.__name__ = base.__name__
    return convert


def add_arguments(parser):
    """One flag per TrainConfig field (--max-steps for max_steps; --ddp / --no-ddp for a bool),
    plus --quiet (= --progress none). Flags not given stay out of the parsed args."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help = f"{f.metadata.get('help', '')} (default: {default!r})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help)
        elif f.name in ("progress", "optimizer"):
            parser.add_argument(flag, dest=f.name, choices=MODES if f.name == "progress" else OPTIMIZERS,
                                default=argparse.SUPPRESS, help=help)
        else:
            parser.add_argument(flag, dest=f.name, type=_option_type(f), default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help)
    parser.add_argument("--quiet", action="store_true", help="no progress report (same as --progress none)")


def options_from_args(args):
    """dict of the TrainConfig fields set by the flags of add_arguments."""
    out = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if getattr(args, "quiet", False):
        out["progress"] = "none"
    return out
