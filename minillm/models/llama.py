"""Llama: the Llama architecture (Touvron et al., 2023) and the families that are
configurations of it (Llama 2/3, SmolLM2, TinyLlama, Qwen2/2.5, Qwen3, Mistral), read top to
bottom, then its HuggingFace folder loading and saving (load_pretrained, save_pretrained).

token embedding -> n_layer pre-RMSNorm blocks of
    x = x + attn(input_layernorm(x));  x = x + mlp(post_attention_layernorm(x))
(causal self-attention with rotary positions and grouped-query heads, then a SwiGLU MLP
down(silu(gate(x)) * up(x))) -> final RMSNorm -> LM head (tied to the embedding or not).
The families differ only in options: q/k/v biases (Qwen2), a per-head RMSNorm of q and k
before the rotation (Qwen3), a sliding attention window (Mistral), rope scaling (Llama 3.1).
Module names are HuggingFace's (model.layers.0.self_attn.q_proj, ...), so weights load by name.

Shapes: B batch, T sequence, C = n_embd, nh = n_head, nkv = n_kv_head, hs = head_dim,
F = d_ff, V = vocab_size.
"""
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from minillm import _C
from minillm import functional as F
from minillm import nn, quantize, serialization
from minillm.autograd import no_grad
from minillm.models.base import LanguageModel, ModelConfig, check_idx, read_generation_config
from minillm.models.decoder import BlockOptions, Decoder
from minillm.models.rotary import ROPE_TYPES, RotaryTable, rope_inv_freq
from minillm.utils import read_json

__all__ = ["LlamaConfig", "Llama", "ARCHITECTURES", "config_from_hf", "config_to_hf", "load_pretrained",
           "save_pretrained"]


@dataclass
class LlamaConfig(ModelConfig):
    """Hyperparameters of a Llama-family model. n_kv_head: key/value heads (divides n_head;
    fewer is grouped-query attention); head_dim None: n_embd / n_head; d_ff: the SwiGLU hidden
    width; rope_scaling: HF's dict ("linear" or "llama3") or None; qkv_bias, o_bias: biases of
    the q/k/v and output projections (Qwen2: q/k/v only); qk_norm: per-head RMSNorm of q and k
    (Qwen3); sliding_window: each position sees at most this many (Mistral) - the model then
    refuses longer sequences (below the window it is plain causal attention); dtype: the Linear
    and embedding weights' dtype, "float32" or "bfloat16" (bf16 for inference only);
    architecture: the HF class name the model saves as."""
    model_type: str = "llama"
    architecture: str = "LlamaForCausalLM"
    vocab_size: int = 32000
    block_size: int = 2048
    n_layer: int = 22
    n_head: int = 32
    n_kv_head: int = 4
    n_embd: int = 2048
    head_dim: Optional[int] = None
    d_ff: int = 5632
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    tie_weights: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: Optional[int] = None
    dtype: str = "float32"

    def __post_init__(self):
        self.check("llama", ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "d_ff"))
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"LlamaConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head} "
                                 f"(give head_dim)")
            self.head_dim = self.n_embd // self.n_head
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim must be an even int >= 2 (rotary pairs), got {self.head_dim!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_kv_head {self.n_kv_head} does not divide n_head {self.n_head}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"LlamaConfig: architecture {self.architecture!r} is not supported; supported: "
                             f"{sorted(ARCHITECTURES)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"LlamaConfig: dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"LlamaConfig: sliding_window must be a positive int or None, got {self.sliding_window!r}")
        rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)   # a bad rope raises here

    @property
    def context(self):
        """The longest sequence the model runs: block_size, capped by the sliding window."""
        return min(self.block_size, self.sliding_window or self.block_size)


class Attention(nn.Module):
    """Causal self-attention with rotary positions and nkv key/value heads shared by groups of
    nh / nkv query heads. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config, init=True):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        lin = _linear_maker(init, c.dtype)
        self.q_proj = lin(c.n_embd, c.n_head * c.head_dim, c.qkv_bias)
        self.k_proj = lin(c.n_embd, c.n_kv_head * c.head_dim, c.qkv_bias)
        self.v_proj = lin(c.n_embd, c.n_kv_head * c.head_dim, c.qkv_bias)
        self.o_proj = lin(c.n_head * c.head_dim, c.n_embd, c.o_bias)
        if c.qk_norm:   # Qwen3: RMSNorm over each head of q and k, before the rotation
            self.q_norm = nn.RMSNorm(c.head_dim, eps=c.rms_norm_eps)
            self.k_norm = nn.RMSNorm(c.head_dim, eps=c.rms_norm_eps)

    def forward(self, x, cos, sin, layer_cache=None):
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q = F.reshape(self.q_proj(x), (B, T, nh, hs))
        k = F.reshape(self.k_proj(x), (B, T, nkv, hs))
        v = F.reshape(self.v_proj(x), (B, T, nkv, hs))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = F.rotary(q, cos, sin), F.rotary(k, cos, sin)               # (B, T, nh | nkv, hs)
        q, k, v = F.transpose(q, 1, 2), F.transpose(k, 1, 2), F.transpose(v, 1, 2)   # (B, heads, T, hs)
        if layer_cache is not None:
            k, v = layer_cache.update(k, v)                                # (B, nkv, S, hs)
        if nkv != nh:
            # each kv head serves nh / nkv query heads: (B, nkv, S, hs) -> (B, nh, S, hs)
            k, v = _repeat_kv(k, nh // nkv), _repeat_kv(v, nh // nkv)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # (B, nh, T, hs)
        return self.o_proj(F.reshape(F.transpose(y, 1, 2), (B, T, nh * hs)))


def _repeat_kv(t, groups):
    """(B, nkv, S, hs) -> (B, nkv * groups, S, hs), each head repeated `groups` times in a row
    (HF's repeat_kv order); backward sums the copies."""
    B, nkv, S, hs = t.shape
    return F.reshape(F.expand(F.unsqueeze(t, 2), (B, nkv, groups, S, hs)), (B, nkv * groups, S, hs))


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer, 2020): down(silu(gate(x)) * up(x)). x (B, T, C) -> (B, T, C)."""

    def __init__(self, config, init=True):
        super().__init__()
        lin = _linear_maker(init, config.dtype)
        self.gate_proj = lin(config.n_embd, config.d_ff, False)
        self.up_proj = lin(config.n_embd, config.d_ff, False)
        self.down_proj = lin(config.d_ff, config.n_embd, False)

    def forward(self, x):
        return self.down_proj(F.silu_mul(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    """One pre-RMSNorm transformer block. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config, init=True):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.self_attn = Attention(config, init)
        self.post_attention_layernorm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.mlp = MLP(config, init)

    def forward(self, x, cos, sin, layer_cache=None):
        x = F.add(x, self.self_attn(self.input_layernorm(x), cos, sin, layer_cache))
        return F.add(x, self.mlp(self.post_attention_layernorm(x)))


class Llama(LanguageModel):
    """A Llama-family language model. forward(idx (B, T) int64) -> (logits, loss).
    init=False allocates the weights without drawing them (for loading)."""

    def __init__(self, config, generator=None, init=True):
        super().__init__()
        if isinstance(config, dict):
            config = LlamaConfig.from_dict(config)
        self.config = config
        if init:
            embed = nn.Embedding(config.vocab_size, config.n_embd)
        else:
            embed = nn.Embedding.uninitialized(config.vocab_size, config.n_embd, dtype=config.dtype)
        self.model = nn.ModuleDict(dict(
            embed_tokens=embed,
            layers=nn.ModuleList([Block(config, init) for _ in range(config.n_layer)]),
            norm=nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps),
        ))
        if config.tie_weights:
            self.lm_head = nn.Linear.uninitialized(config.n_embd, config.vocab_size, bias=False, dtype=config.dtype)
            self.lm_head.weight = self.model.embed_tokens.weight     # one tensor, two roles
        else:
            self.lm_head = _linear_maker(init, config.dtype)(config.n_embd, config.vocab_size, False)
        self._rope = RotaryTable(rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling))
        if init:
            if config.dtype != "float32":
                raise ValueError("Llama: a freshly initialised model is float32; bfloat16 weights come from "
                                 "load_pretrained(..., dtype='bfloat16')")
            self.init_weights(generator)

    @no_grad()
    def init_weights(self, generator=None):
        """HF's Llama initialisation: every Linear and embedding weight ~ N(0, 0.02), biases 0,
        RMSNorm weights 1. Draws from `generator` (default: minillm's)."""
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif "norm" in name.rsplit(".", 2)[-2]:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02, generator=generator)

    def rope(self, pos0, T):
        """(cos, sin) table rows of positions pos0 .. pos0 + T - 1, each (T, hs / 2)."""
        return self._rope.rows(pos0, T)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) int64 token ids (T <= config.context, counting cached positions);
        targets (B, T) int64 or None (-1 = ignore). Returns (logits, loss): with targets,
        logits (B, T, V) float32 and the mean cross-entropy; without, logits (B, 1, V) of the
        last position and None. kv_cache (generation, under no_grad): positions start at
        kv_cache.pos; each block appends its keys and values; the cache advances by T."""
        B, T = check_idx(idx, "Llama")
        pos0 = 0 if kv_cache is None else kv_cache.pos
        limit = self.config.context
        if pos0 + T > limit:
            why = (f"the sliding window {self.config.sliding_window} (longer sequences are not supported)"
                   if limit < self.config.block_size else f"block_size {self.config.block_size}")
            raise ValueError(f"Llama: sequence of {T} tokens starting at position {pos0} is longer than {why}")
        cos, sin = self.rope(pos0, T)
        x = _embed(self.model.embed_tokens.weight, idx)                    # (B, T, C)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, None if kv_cache is None else kv_cache.layers[i])
        x = self.model.norm(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if targets is None:
            return self.lm_head(F.getitem(x, (slice(None), slice(T - 1, T)))), None   # (B, 1, V)
        if not isinstance(targets, _C.Tensor) or tuple(targets.shape) != (B, T):
            raise ValueError(f"Llama: expected (B, T) = ({B}, {T}) target ids, got "
                             f"{tuple(getattr(targets, 'shape', ()))}")
        logits = self.lm_head(x)                                           # (B, T, V)
        return logits, F.cross_entropy(logits, targets, ignore_index=-1)

    def kv_cache_shape(self):
        """(n_layer, n_kv_head, head_dim): the cache holds key/value heads only."""
        c = self.config
        return c.n_layer, c.n_kv_head, c.head_dim

    def decoder(self, hugepages=True, weights=None, kv_dtype=None):
        """The fast decode plan (minillm.models.decoder.Decoder): RMSNorm, rotary, SwiGLU,
        grouped-query heads, biases and QK-norm as configured. weights: the dtype the plan
        streams ("float32", "bf16", "int8"; None: the model's own dtype: float32 read in
        place, bfloat16 copied into the bf16 kernels' blocks of 4 rows).
        An int8 plan of a model loaded from an int8 folder streams the folder's int8 weights
        (self.int8_weights) as stored (later changes to the parameters do not reach them).
        hugepages, kv_dtype (the KV caches'): see Decoder."""
        c = self.config
        if weights is None:
            weights = "bf16" if c.dtype == "bfloat16" else "float32"
        stored = (getattr(self, "int8_weights", None) or {}) if weights == "int8" else {}
        q = lambda name, p: stored.get(name, p)  # noqa: E731
        opts = BlockOptions(n_embd=c.n_embd, n_head=c.n_head, n_kv_head=c.n_kv_head, head_dim=c.head_dim,
                            d_ff=c.d_ff, norm="rmsnorm", norm_eps=c.rms_norm_eps, mlp="swiglu", positions="rotary",
                            rope_theta=c.rope_theta, rope_scaling=c.rope_scaling, qk_norm=c.qk_norm,
                            qk_norm_eps=c.rms_norm_eps)
        layers = []
        for i, b in enumerate(self.model.layers):
            a, m = b.self_attn, b.mlp
            p = f"model.layers.{i}."
            w = {"norm1.weight": b.input_layernorm.weight, "norm2.weight": b.post_attention_layernorm.weight,
                 "q.weight": q(p + "self_attn.q_proj.weight", a.q_proj.weight),
                 "k.weight": q(p + "self_attn.k_proj.weight", a.k_proj.weight),
                 "v.weight": q(p + "self_attn.v_proj.weight", a.v_proj.weight),
                 "q.bias": a.q_proj.bias, "k.bias": a.k_proj.bias, "v.bias": a.v_proj.bias,
                 "o.weight": q(p + "self_attn.o_proj.weight", a.o_proj.weight), "o.bias": a.o_proj.bias,
                 "gate.weight": q(p + "mlp.gate_proj.weight", m.gate_proj.weight),
                 "up.weight": q(p + "mlp.up_proj.weight", m.up_proj.weight),
                 "down.weight": q(p + "mlp.down_proj.weight", m.down_proj.weight)}
            if c.qk_norm:
                w["q_norm.weight"], w["k_norm.weight"] = a.q_norm.weight, a.k_norm.weight
            layers.append(w)
        return _WindowedDecoder(opts, layers, embed=self.model.embed_tokens.weight,
                                head=q("lm_head.weight", self.lm_head.weight),
                                norm_weight=self.model.norm.weight, hugepages=hugepages, context=c.context,
                                weights=weights, kv_dtype=kv_dtype)

    @classmethod
    def from_pretrained(cls, folder, dtype="float32"):
        """A Llama-family model from a HuggingFace folder; see load_pretrained below."""
        return load_pretrained(folder, dtype=dtype)

    def save_pretrained(self, folder, tokenizer=None, max_shard_bytes=None, weights=None, group=None):
        """Write this model as a HuggingFace folder; see save_pretrained below."""
        return save_pretrained(self, folder, tokenizer=tokenizer, max_shard_bytes=max_shard_bytes, weights=weights,
                               group=group)

    def estimate_flops_per_token(self, T=None):
        """Training FLOPs per token at context T (default block_size): 6 N for the weight
        GEMMs plus 12 n_layer T nh hs for the attention products (PaLM, appendix B)."""
        c = self.config
        T = c.block_size if T is None else T
        return 6 * self.num_params() + 12 * c.n_layer * T * c.n_head * c.head_dim


class _WindowedDecoder(Decoder):
    """Decoder that refuses positions past the model's context (block_size or sliding window)."""

    def __init__(self, *args, context, **kwargs):
        super().__init__(*args, **kwargs)
        self.context = context

    def step(self, tokens, cache):
        if cache.pos >= self.context:
            raise ValueError(f"Llama decoder: position {cache.pos} is past the model's context of {self.context} "
                             f"positions (block_size or sliding window)")
        return super().step(tokens, cache)

    def step_rows(self, tokens, caches):
        top = max((c.pos for c in caches), default=0)
        if top >= self.context:
            raise ValueError(f"Llama decoder: position {top} is past the model's context of {self.context} "
                             f"positions (block_size or sliding window)")
        return super().step_rows(tokens, caches)


def _linear_maker(init, dtype):
    """nn.Linear (drawn weights) or nn.Linear.uninitialized of `dtype` (for loading)."""
    if init:
        return lambda i, o, bias: nn.Linear(i, o, bias=bias)
    return lambda i, o, bias: nn.Linear.uninitialized(i, o, bias=bias, dtype=dtype)


def _embed(weight, idx):
    """Rows of the embedding table for idx: (B, T) -> (B, T, C) float32. A bfloat16 table is
    gathered as its bits and widened (the gather kernel is float32-only)."""
    if weight.dtype != "bfloat16":
        return F.embedding(idx, weight)
    bits = np.asarray(weight)[np.asarray(idx).astype(np.int64)]           # (B, T, C) uint16
    return _C.view_as(_C.from_numpy(np.ascontiguousarray(bits)), "bfloat16").astype("float32")


# ====================================================================== HuggingFace's layout
# A HuggingFace Llama-family folder holds
#   config.json        architectures, hidden_size, intermediate_size, num_hidden_layers,
#                      num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps,
#                      rope_theta and rope_scaling (transformers 5: both in rope_parameters),
#                      max_position_embeddings, tie_word_embeddings, attention_bias,
#                      sliding_window (+ use_sliding_window, layer_types for Qwen)
#   model.safetensors, or model.safetensors.index.json + shards: tensors named as our
#                      state_dict (model.embed_tokens.weight, model.layers.0.self_attn.q_proj
#                      .weight, ..., model.norm.weight, lm_head.weight unless tied)
#   tokenizer.json, tokenizer_config.json, generation_config.json
#
# An int8 folder (minillm.quantize) stores every q/k/v/o, gate/up/down projection weight and
# lm_head.weight (also when tied: the decode plan's head) as int8 + ".scales"; config.json has
# quantization_config.
#
#     model = load_pretrained("Qwen2.5-0.5B-Instruct/", dtype="bfloat16")
#     save_pretrained(model, "out/")           # transformers.AutoModelForCausalLM.from_pretrained("out/")

# HF architecture -> (model_type, q/k/v bias, o bias, QK-norm): None reads attention_bias
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", None, None, False),
    "MistralForCausalLM": ("mistral", False, False, False),
    "Qwen2ForCausalLM": ("qwen2", True, False, False),
    "Qwen3ForCausalLM": ("qwen3", None, None, True),
}
# HF model_type -> architecture, for folders whose config.json lists no architectures
MODEL_TYPES = {model_type: arch for arch, (model_type, *_) in ARCHITECTURES.items()}


def config_from_hf(hf, where="config.json", dtype="float32"):
    """Our LlamaConfig from a HF config.json dict; ValueError naming the field for what the
    model cannot compute (another architecture, activation, rope type, MLP bias)."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    archs = hf.get("architectures") or [MODEL_TYPES.get(hf.get("model_type"), hf.get("model_type"))]
    arch = archs[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{where}: architecture {arch!r} is not supported; supported: {sorted(ARCHITECTURES)}")
    _, qkv_bias, o_bias, qk_norm = ARCHITECTURES[arch]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (the SwiGLU MLP uses silu)")
    if hf.get("mlp_bias", False):
        raise ValueError(f"{where}: mlp_bias = true is not supported")
    attention_bias = bool(hf.get("attention_bias", False))
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or None
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    if scaling is None and rope.get("rope_type", rope.get("type", "default")) != "default":
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(f"{where}: rope_scaling type {kind!r} is not supported (supported: {list(ROPE_TYPES)})")
        if kind == "default":
            scaling = None
    window = hf.get("sliding_window")
    # Qwen2/3 configs carry a window they do not use (use_sliding_window false); with it on,
    # the layers past max_window_layers (layer_types) slide: refusing longer sequences covers both
    uses_window = hf.get("use_sliding_window") is not False
    if hf.get("layer_types") and "use_sliding_window" not in hf:
        uses_window = "sliding_attention" in hf["layer_types"]
    heads = hf.get("num_attention_heads", 32)
    try:
        return LlamaConfig(
            architecture=arch, vocab_size=hf.get("vocab_size", 32000),
            block_size=hf.get("max_position_embeddings", 2048), n_layer=hf.get("num_hidden_layers", 32),
            n_head=heads, n_kv_head=hf.get("num_key_value_heads") or heads, n_embd=hf.get("hidden_size", 4096),
            head_dim=hf.get("head_dim") or None, d_ff=hf.get("intermediate_size", 11008),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(theta), rope_scaling=scaling,
            tie_weights=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=attention_bias if qkv_bias is None else qkv_bias,
            o_bias=attention_bias if o_bias is None else o_bias, qk_norm=qk_norm,
            sliding_window=int(window) if (window and uses_window) else None, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def config_to_hf(config):
    """A HF config.json dict for our LlamaConfig (the architecture it was loaded as)."""
    c = config
    model_type = ARCHITECTURES[c.architecture][0]
    if c.architecture == "Qwen2ForCausalLM" and (not c.qkv_bias or c.o_bias):
        raise ValueError("save_pretrained: Qwen2 has q/k/v biases and no o_proj bias")
    if c.architecture == "MistralForCausalLM" and (c.qkv_bias or c.o_bias):
        raise ValueError("save_pretrained: Mistral has no attention biases")
    if c.architecture in ("LlamaForCausalLM", "Qwen3ForCausalLM") and c.qkv_bias != c.o_bias:
        raise ValueError(f"save_pretrained: {c.architecture} has one attention_bias for q/k/v and o")
    if c.qk_norm != (c.architecture == "Qwen3ForCausalLM"):
        raise ValueError(f"save_pretrained: QK-norm {c.qk_norm} does not fit {c.architecture}")
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling:
        rope = dict(c.rope_scaling, rope_theta=c.rope_theta)
    hf = {
        "architectures": [c.architecture], "model_type": model_type, "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
        "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling, "rope_parameters": rope,
        "tie_word_embeddings": c.tie_weights, "attention_bias": c.qkv_bias, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": c.dtype, "dtype": c.dtype,
    }
    if model_type in ("mistral", "qwen2", "qwen3"):
        hf["sliding_window"] = c.sliding_window
    if model_type in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = c.sliding_window is not None
        hf["max_window_layers"] = c.n_layer
    return hf


def hf_tensor_shapes(config):
    """dict tensor name (ours = HF's) -> shape, in the order a folder stores them."""
    c = config
    C, Q, KV, hs = c.n_embd, c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, C)}
    for i in range(c.n_layer):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (C,)
        for proj, out in (("q_proj", Q), ("k_proj", KV), ("v_proj", KV)):
            shapes[p + f"self_attn.{proj}.weight"] = (out, C)
            if c.qkv_bias:
                shapes[p + f"self_attn.{proj}.bias"] = (out,)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (hs,)
            shapes[p + "self_attn.k_norm.weight"] = (hs,)
        shapes[p + "self_attn.o_proj.weight"] = (C, Q)
        if c.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        shapes[p + "mlp.gate_proj.weight"] = (c.d_ff, C)
        shapes[p + "mlp.up_proj.weight"] = (c.d_ff, C)
        shapes[p + "mlp.down_proj.weight"] = (C, c.d_ff)
    shapes["model.norm.weight"] = (C,)
    if not c.tie_weights:
        shapes["lm_head.weight"] = (c.vocab_size, C)
    return shapes


# ---------------------------------------------------------------------- load
def load_pretrained(folder, dtype="float32"):
    """A Llama-family model with the weights of the HF folder `folder`.

    Reads config.json and model.safetensors or the shards of model.safetensors.index.json
    (weights F32, F16 or BF16), memory-mapped; the Linear and embedding weights are kept as
    `dtype` ("float32" or "bfloat16"; "bf16", "fp32" accepted), norms and biases as float32.
    Each tensor is copied in slices whose mapped pages are dropped after, so the peak memory
    is the kept weights plus one slice. The tokenizer, if the folder has one minillm reads,
    is attached as `model.tokenizer` (else None). Missing, unexpected or mis-shaped tensors
    raise ValueError naming them. An int8 folder (minillm.quantize) loads its int8 weights as
    `model.int8_weights` (name -> Int8Matrix, for the decode plan) and their dequantized values
    into the parameters (rounded to bf16 for dtype "bfloat16"); empty for other folders."""
    folder = os.fspath(folder)
    dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(dtype, dtype)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{cfg_path}: missing (a HuggingFace model folder holds config.json and model.safetensors)")
    hf = read_json(cfg_path)
    config = config_from_hf(hf, cfg_path, dtype=dtype)
    files = serialization.open_checkpoint(folder)
    int8 = {}
    if quantize.check_quantization(hf, cfg_path) is not None:
        int8 = quantize.split_int8(lambda n: files[n].array(n), files, folder, _streamed_names(config))
        files = {k: v for k, v in files.items() if not k.endswith(".scales")}
    if config.tie_weights:
        files.pop("lm_head.weight", None)            # a tied head saved anyway: it is the embedding
    files = {k: v for k, v in files.items() if not k.endswith("rotary_emb.inv_freq")}
    shapes = hf_tensor_shapes(config)
    problems = []
    missing = [n for n in shapes if n not in files]
    unexpected = sorted(n for n in files if n not in shapes)
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    problems += [f"{n} has shape {list(files[n].info(n)[1])}, expected {list(s)}"
                 for n, s in shapes.items() if n in files and tuple(files[n].info(n)[1]) != s]
    if problems:
        raise ValueError(f"{folder}: the weights do not fit config.json ({config.architecture}, {config.n_layer} "
                         f"layers, hidden {config.n_embd}, vocab {config.vocab_size}): " + "; ".join(problems))
    model = Llama(config, init=False)
    own = model.state_dict()
    for name in shapes:
        t = own[name]
        if name in int8:              # the dequantized weights, for the forward
            w = int8[name].dequantize().numpy()
            np.asarray(t)[...] = w if t.dtype == "float32" else serialization.round_bf16(w)
        else:
            serialization.copy_converted(files[name], name, np.asarray(t), t.dtype)
    model.int8_weights = int8
    model.tokenizer = _load_tokenizer(folder)
    model.generation_config = _generation_config(folder, hf)
    return model


def _streamed_names(config):
    """The weights a decode plan streams (stored as int8 in an int8 folder)."""
    names = {f"model.layers.{i}.{proj}.weight" for i in range(config.n_layer)
             for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    return names | {"lm_head.weight"}


def _generation_config(folder, hf):
    """generation_config.json's sampling fields (read_generation_config), with config.json's
    eos_token_id when the file has none (or there is no file)."""
    g = read_generation_config(folder) or {}
    eos = hf.get("eos_token_id")
    if g.get("eos_token_id") is None and eos is not None:
        if not (isinstance(eos, int) or (isinstance(eos, list) and all(isinstance(e, int) for e in eos))):
            raise ValueError(f"{os.path.join(folder, 'config.json')}: eos_token_id must be a token id or a list of "
                             f"them, got {eos!r}")
        g = dict(g, eos_token_id=eos)
    return g


def _load_tokenizer(folder):
    """The folder's tokenizer if minillm reads it, else None."""
    try:
        from minillm.tokenizers import load_tokenizer
        has = lambda name: os.path.exists(os.path.join(folder, name))  # noqa: E731
        if has("tokenizer.json") or (has("vocab.json") and has("merges.txt")):
            return load_tokenizer(folder)
    except (ValueError, KeyError, NotImplementedError):
        return None
    return None


# ---------------------------------------------------------------------- save
def save_pretrained(model, folder, tokenizer=None, max_shard_bytes=None, weights=None, group=None):
    """Write `model` (our Llama) into `folder` as HF does: config.json, model.safetensors (or
    shards of at most max_shard_bytes and model.safetensors.index.json), weights in the model's
    dtype, no lm_head.weight when tied; the tokenizer's files if `tokenizer` (or
    model.tokenizer) can save itself. Returns the folder. weights "bf16": the matrices
    (embedding, projections, head) in bf16, nearest even; "int8": the int8 layout of the
    comment above (group: the int8 group, default per matrix quantize.int8_group)."""
    if not isinstance(model, Llama):
        raise TypeError(f"save_pretrained: expected a minillm Llama, got {type(model).__name__}")
    if weights not in (None, "float32") + quantize.FOLDER_DTYPES:
        raise ValueError(f"save_pretrained: weights must be float32, bf16 or int8, got {weights!r}")
    config = model.config
    own = model.state_dict()
    if not config.tie_weights:
        own.setdefault("lm_head.weight", model.lm_head.weight)
    streamed = _streamed_names(config)
    stored = getattr(model, "int8_weights", None) or {}       # an int8 folder's, written as they are
    tensors = {}
    for name in hf_tensor_shapes(config):
        t = own[name].detach().contiguous()
        if weights == "int8" and name in streamed:
            tensors.update(quantize.int8_arrays(name, t, group, stored.get(name)))
            continue
        a = np.asarray(t)
        if t.dtype == "bfloat16" or (weights == "bf16" and a.ndim == 2):
            a = quantize.bf16_array(a)
        tensors[name] = a
    hf = config_to_hf(config)
    if weights == "int8":
        if config.tie_weights:
            tensors.update(quantize.int8_arrays("lm_head.weight", model.lm_head.weight, group,
                                                stored.get("lm_head.weight")))
        hf["quantization_config"] = quantize.quantization_config(group or 64)
    elif weights == "bf16":
        hf["torch_dtype"] = hf["dtype"] = "bfloat16"
    os.makedirs(folder, exist_ok=True)
    serialization.save_sharded(tensors, folder, max_shard_bytes, metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save"):
        tokenizer.save(folder)
    return folder

