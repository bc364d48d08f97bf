"""The LanguageModel interface: all the decoding loop (minillm.generate), the trainer and the
CLI know of a model. Each family in models/ subclasses it; nothing here knows a family.

    logits, loss = model(idx, targets)         # training and evaluation
    shape = model.kv_cache_shape()             # (n_layer, n_kv_head, head_size) or None
    logits, _ = model(idx, kv_cache=cache)     # when kv_cache_shape() is not None
    step = model.decoder()                     # a fast one-token decode step, or None
    model.tokenizer, model.generation_defaults()

Also the small helpers the families' configs and forwards share (known_fields, check_idx,
read_generation_config).
"""
import dataclasses
import math
import os

from minillm import _C
from minillm import nn, optim

__all__ = ["LanguageModel", "ModelConfig", "check_idx", "known_fields", "read_generation_config"]


def known_fields(cls, d):
    """d as keyword arguments for the config dataclass cls; ValueError names unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown} (known: {sorted(names)})")
    return dict(d)


class ModelConfig:
    """Base of the families' config dataclasses (which set `model_type` and their fields):
    a JSON-ready dict and back, and the checks every family makes."""

    def to_dict(self):
        """A JSON-ready dict (includes model_type)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The config of a dict written by to_dict(); unknown keys raise ValueError."""
        return cls(**known_fields(cls, d))

    def check(self, model_type, positive_ints):
        """ValueError unless model_type is `model_type` and the fields named in
        `positive_ints` are ints > 0."""
        name = type(self).__name__
        if self.model_type != model_type:
            raise ValueError(f"{name}: model_type must be {model_type!r}, got {self.model_type!r}")
        for field in positive_ints:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive int, got {value!r}")


def check_idx(idx, model_name):
    """(B, T) of a batch of token ids, or a clear error. idx: (B, T) int64 (or int32) Tensor."""
    if not isinstance(idx, _C.Tensor):
        raise TypeError(f"{model_name}: expected a (B, T) int64 Tensor of token ids, got {type(idx).__name__}")
    if idx.ndim != 2:
        raise ValueError(f"{model_name}: expected (B, T) token ids, got shape {tuple(idx.shape)}")
    if idx.dtype not in ("int64", "int32"):
        raise TypeError(f"{model_name}: expected int64 token ids, got {idx.dtype}")
    B, T = idx.shape
    if B == 0 or T == 0:
        raise ValueError(f"{model_name}: empty batch of token ids, shape {tuple(idx.shape)}")
    return B, T


class LanguageModel(nn.Module):
    """Base of every model family. A subclass sets ``self.config`` (a dataclass with at least
    vocab_size, block_size and to_dict()) and defines ``forward``; it overrides
    ``kv_cache_shape`` when its forward takes ``kv_cache=`` and ``decoder`` when it has a fast
    one-token decode step.

    tokenizer: the tokenizer the model was trained or shipped with (set by loaders such as
    from_pretrained or minillm.checkpoint.load_model), or None."""

    tokenizer = None
    generation_config = None     # a folder's generation_config.json (read_generation_config), or None

    def forward(self, idx, targets=None):
        """idx (B, T) int64 token ids; targets (B, T) int64 or None (-1 = ignore) ->
        (logits (B, T, V) or (B, 1, V) float32, loss 0-d or None)."""
        raise NotImplementedError

    def kv_cache_shape(self):
        """(n_layer, n_kv_head, head_size) of the KV cache the forward's `kv_cache=` argument
        takes (minillm.generate.KVCache), or None when the model recomputes its context."""
        return None

    @property
    def supports_kv_cache(self):
        """True when the forward takes a KV cache (kv_cache_shape() is not None)."""
        return self.kv_cache_shape() is not None

    def decoder(self):
        """A fast decode step over this model's weights: an object with
        ``step(tokens (B,) int64, cache) -> logits (B, V)`` that appends one position to the
        KV cache (and, optionally, ``kv_dtype``: the dtype of the caches it wants, "float32"
        when absent), or None (the decoding loop then calls forward with the cache)."""
        return None

    def generation_defaults(self):
        """Sampling options a command line or server uses where the user gives none:
        temperature, top_k, top_p, repetition_penalty, greedy, and stop_tokens (the
        tokenizer's <|endoftext|>, if any, and the eos ids of generation_config). A loaded
        folder's generation_config.json overrides them where it gives a value (do_sample:
        false means greedy; a file without do_sample keeps sampling, where HF's generate
        would go greedy, so that `minillm sample` on a base model does not loop)."""
        eot = getattr(self.tokenizer, "eot_token", None)
        d = {"temperature": 0.8, "top_k": None, "top_p": None, "repetition_penalty": 1.0, "greedy": False,
             "stop_tokens": () if eot is None else (eot,)}
        g = self.generation_config
        if g:
            d["greedy"] = g.get("do_sample") is False
            for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
                if g.get(name) is not None:
                    d[name] = g[name]
            eos = g.get("eos_token_id")
            eos = [] if eos is None else [eos] if isinstance(eos, int) else eos
            d["stop_tokens"] = tuple(dict.fromkeys(list(d["stop_tokens"]) + list(eos)))
        return d

    def num_params(self, non_embedding=False):
        """Number of parameters (a tied weight counted once). non_embedding=True leaves out
        the position embedding table (`transformer.wpe`), as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for name, p in self.named_parameters():
                if name.endswith("wpe.weight"):
                    n -= p.numel()
        return n

    def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), eps=1e-8):
        """AdamW over two parameter groups: every 2-D tensor (the Linear weights and the
        embedding tables, tied lm_head included once) decays by `weight_decay`; biases and
        LayerNorm gains (1-D) do not, as in nanoGPT and GPT-3."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def read_generation_config(folder):
    """The sampling fields of `folder`/generation_config.json (HF's file) as a dict, or None
    when the folder has none: do_sample (bool), temperature (>= 0), top_k (int >= 1; HF's 0
    means no limit and becomes None), top_p (in (0, 1]), repetition_penalty (> 0),
    eos_token_id (an id or a list of ids). Other fields are ignored; a field of the wrong type
    or range raises ValueError naming the file and the field."""
    from minillm.utils import read_json
    path = os.path.join(os.fspath(folder), "generation_config.json")
    if not os.path.exists(path):
        return None
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")

    def bad(name, want):
        return ValueError(f"{path}: {name} must be {want}, got {raw[name]!r}")

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def token_id(x):
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    out = {}
    if raw.get("do_sample") is not None:
        if not isinstance(raw["do_sample"], bool):
            raise bad("do_sample", "true or false")
        out["do_sample"] = raw["do_sample"]
    if raw.get("temperature") is not None:
        if not number(raw["temperature"]) or raw["temperature"] < 0:
            raise bad("temperature", "a number >= 0")
        out["temperature"] = float(raw["temperature"])
    if raw.get("top_k") is not None:
        if not token_id(raw["top_k"]):
            raise bad("top_k", "an int >= 0")
        out["top_k"] = raw["top_k"] or None
    if raw.get("top_p") is not None:
        if not number(raw["top_p"]) or not 0 < raw["top_p"] <= 1:
            raise bad("top_p", "a number in (0, 1]")
        out["top_p"] = float(raw["top_p"])
    if raw.get("repetition_penalty") is not None:
        if not number(raw["repetition_penalty"]) or raw["repetition_penalty"] <= 0:
            raise bad("repetition_penalty", "a number > 0")
        out["repetition_penalty"] = float(raw["repetition_penalty"])
    eos = raw.get("eos_token_id")
    if eos is not None:
        if not (token_id(eos) or (isinstance(eos, list) and all(token_id(e) for e in eos))):
            raise bad("eos_token_id", "a token id or a list of them")
        out["eos_token_id"] = eos
    return out
