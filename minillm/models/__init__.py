"""Language models: bigram, feed-forward (mlp), GPT and Llama (Llama/Qwen2/Qwen3/Mistral), built from presets or config dicts.

    model = build_model("gpt-mini", vocab_size=tok.vocab_size)
    logits, loss = model(idx, targets)

A config dict carries "model_type" ("bigram" | "mlp" | "gpt" | "llama") and that model's fields;
`model.config.to_dict()` writes one and `model_from_config` reads it back.
`load_pretrained(folder)` reads a HuggingFace-layout folder into the family its config.json
names. Every model is a `LanguageModel` (models/base.py), the interface the decoding loop, the
trainer and the CLI use.
"""
import copy
import os

from minillm.models.base import LanguageModel
from minillm.models.bigram import Bigram, BigramConfig
from minillm.models.gpt import GPT, GPTConfig
from minillm.models.llama import Llama, LlamaConfig
from minillm.models.mlp import MLPConfig, MLPLM
from minillm.utils import read_json

__all__ = ["PRESETS", "MODEL_TYPES", "HF_MODEL_TYPES", "build_model", "model_from_config",
           "config_from_dict", "load_pretrained", "LanguageModel", "Bigram", "BigramConfig", "MLPLM",
           "MLPConfig", "GPT", "GPTConfig", "Llama", "LlamaConfig"]

# model_type -> (config class, model class)
MODEL_TYPES = {
    "bigram": (BigramConfig, Bigram),
    "mlp": (MLPConfig, MLPLM),
    "gpt": (GPTConfig, GPT),
    "llama": (LlamaConfig, Llama),
}

# HF config.json "model_type" -> the family that loads such a folder (its from_pretrained)
HF_MODEL_TYPES = {
    "gpt2": GPT,
    "llama": Llama,
    "mistral": Llama,
    "qwen2": Llama,
    "qwen3": Llama,
}

PRESETS = {
    "bigram": dict(model_type="bigram", vocab_size=512, block_size=64),
    "mlp": dict(model_type="mlp", vocab_size=512, block_size=64, context=8, n_embd=64, n_hidden=512,
                n_layer=1),
    # the smallest GPT that still learns Shakespeare's shape
    "gpt-tiny": dict(model_type="gpt", vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64,
                     dropout=0.0),
    # the README demo: about 5 minutes of training on 2 cores
    "gpt-mini": dict(model_type="gpt", vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=256,
                     dropout=0.0),
    # GPT-2 small (124M): HuggingFace's "gpt2"
    "gpt2-small": dict(model_type="gpt", vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                       n_embd=768, dropout=0.0),
    # the smallest Llama (RMSNorm, rotary, grouped-query heads, SwiGLU) for the trainer
    "llama-tiny": dict(model_type="llama", vocab_size=512, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                       n_embd=64, d_ff=176, rms_norm_eps=1e-5, tie_weights=True),
}


def config_from_dict(config_dict):
    """The config dataclass of a dict with "model_type" (a copy: the dict is not changed)."""
    if not isinstance(config_dict, dict):
        raise TypeError(f"expected a config dict, got {type(config_dict).__name__}")
    d = dict(config_dict)
    model_type = d.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config has model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
    config_cls, _ = MODEL_TYPES[model_type]
    return config_cls.from_dict(d)


def model_from_config(config_dict, generator=None):
    """A freshly initialised model from a config dict (or config dataclass)."""
    if not isinstance(config_dict, dict):
        config_dict = config_dict.to_dict()
    config = config_from_dict(config_dict)
    _, model_cls = MODEL_TYPES[config.model_type]
    return model_cls(config, generator=generator)


def build_model(preset_or_config, generator=None, **overrides):
    """A model from a preset name (see PRESETS), a config dict or a config dataclass,
    with fields replaced by `overrides` (e.g. vocab_size=tokenizer.vocab_size, dropout=0.1).
    Weights are drawn from `generator` (default: minillm's default generator)."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown model preset {preset_or_config!r}; presets: {sorted(PRESETS)}")
        d = copy.deepcopy(PRESETS[preset_or_config])
    elif isinstance(preset_or_config, dict):
        d = dict(preset_or_config)
    elif hasattr(preset_or_config, "to_dict"):
        d = preset_or_config.to_dict()
    else:
        raise TypeError(f"build_model: expected a preset name, a config dict or a config, got "
                        f"{type(preset_or_config).__name__}")
    if "model_type" in overrides and overrides["model_type"] != d.get("model_type"):
        raise ValueError(f"build_model: cannot change model_type from {d.get('model_type')!r} to "
                         f"{overrides['model_type']!r} with an override")
    d.update(overrides)
    return model_from_config(d, generator=generator)


def load_pretrained(folder, dtype=None):
    """The model of a HuggingFace-layout folder (config.json, model.safetensors or its shards,
    tokenizer files), loaded by the family its config.json's model_type names (HF_MODEL_TYPES);
    `model.tokenizer` is its tokenizer or None. dtype: the kept weights' dtype ("float32" or
    "bfloat16"), for the families that take one (Llama); None: float32. An int8 folder
    (`minillm quantize`) also gives `model.int8_weights`, the weights its decode plan streams."""
    cfg_path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{cfg_path}: missing (a HuggingFace model folder holds config.json and "
                         f"model.safetensors)")
    hf = read_json(cfg_path)
    model_type = hf.get("model_type", "gpt2") if isinstance(hf, dict) else None
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"{cfg_path}: model_type {model_type!r} is not supported; supported: "
                         f"{sorted(HF_MODEL_TYPES)}")
    family = HF_MODEL_TYPES[model_type]
    if dtype is None:
        return family.from_pretrained(folder)
    if family is GPT and dtype not in ("float32", "fp32"):
        raise ValueError(f"{cfg_path}: GPT-2 loads as float32 only, not dtype {dtype!r}")
    return family.from_pretrained(folder) if family is GPT else family.from_pretrained(folder, dtype=dtype)
