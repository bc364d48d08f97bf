"""GPT: the GPT-2 architecture (Radford et al., 2019), read top to bottom, with the options of
the modern small-model recipe, then its HuggingFace folder loading and saving (load_pretrained,
save_pretrained).

token embedding [+ learned position embedding] -> n_layer pre-norm blocks of
    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
(causal multi-head self-attention, then an MLP) -> final norm -> LM head [-> soft-cap].
GPT-2 is the default config: LayerNorm, learned positions, a 4x GELU MLP, biases, the head
tied to the token embedding. The options (GPTConfig) swap in what the speedruns of small
models use: RMSNorm, rotary positions, a ReLU^2 or SwiGLU MLP, a per-head RMSNorm of q and k,
an untied head, zero-initialised output projections and a tanh soft-cap of the logits.
Module names follow nanoGPT and HuggingFace's GPT-2 (transformer.wte,
transformer.h.0.attn.c_attn, ...), so GPT-2 weights load by name.

Shapes: B batch, T sequence, C = n_embd, nh = n_head, hs = C / nh, F = d_ff, V = vocab_size.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from minillm import _C
from minillm import functional as F
from minillm import io, nn, quantize, serialization
from minillm.autograd import no_grad
from minillm.models.base import LanguageModel, ModelConfig, check_idx, read_generation_config
from minillm.models.decoder import BlockOptions, Decoder
from minillm.models.rotary import RotaryTable, rope_inv_freq
from minillm.tokenizers import load_tokenizer
from minillm.utils import read_json

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary")
MLPS = ("gelu", "relu2", "swiglu")


@dataclass
class GPTConfig(ModelConfig):
    """Hyperparameters of a GPT. bias: biases in the Linears and LayerNorms (GPT-2 has
    them); tie_weights: lm_head shares the token embedding (GPT-2 does);
    checkpoint_activations: recompute each block in backward instead of keeping its
    activations (less memory, about one more forward of time); fused_lm_head: training
    forwards with targets compute the LM head and the loss as one op
    (F.linear_cross_entropy) that never holds the (B, T, V) logits, and return logits None.

    The recipe options (defaults: GPT-2's):
    norm "layernorm" | "rmsnorm" (Zhang & Sennrich, 2019; a gain, no bias, no mean);
    positions "learned" (a table of block_size rows added to the embedding) | "rotary" (q and
    k rotated by position, Su et al., 2021; rope_theta);
    mlp "gelu" (tanh GELU) | "relu2" (relu(x)^2, So et al., 2021) | "swiglu" (silu(gate) * up,
    Shazeer, 2020; two input matrices), with hidden width d_ff (None: 4 n_embd);
    qk_norm: RMSNorm over each head of q and k before the rotation (Dehghani et al., 2023);
    zero_init_proj: the projections that write into the residual stream (attn.c_proj,
    mlp.c_proj) and an untied LM head start at zero, so each block starts as the identity;
    logit_softcap: logits = cap tanh(logits / cap) (0: none; Gemma 2 uses 30)."""
    model_type: str = "gpt"
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    checkpoint_activations: bool = False
    fused_lm_head: bool = False
    norm: str = "layernorm"
    positions: str = "learned"
    rope_theta: float = 10000.0
    mlp: str = "gelu"
    d_ff: Optional[int] = None
    qk_norm: bool = False
    zero_init_proj: bool = False
    logit_softcap: float = 0.0

    def __post_init__(self):
        self.check("gpt", ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        for field, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"GPTConfig: {field} must be one of {', '.join(allowed)}; got "
                                 f"{getattr(self, field)!r}")
        if self.d_ff is None:
            self.d_ff = 4 * self.n_embd
        if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise ValueError(f"GPTConfig: d_ff must be a positive int, got {self.d_ff!r}")
        if self.positions == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: rotary positions need an even head size, got "
                             f"{self.n_embd // self.n_head}")
        for field in ("rope_theta", "logit_softcap"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (field == "rope_theta" and v == 0):
                raise ValueError(f"GPTConfig: {field} must be a finite number "
                                 f"{'> 0' if field == 'rope_theta' else '>= 0 (0: none)'}, got {v!r}")
        if self.logit_softcap and self.fused_lm_head:
            raise ValueError("GPTConfig: logit_softcap and fused_lm_head do not combine (the fused op "
                             "never forms the logits to cap)")

    @property
    def head_size(self):
        return self.n_embd // self.n_head


def _norm(config, dim):
    """The block's kind of norm over the last axis (dim features)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t.
    x (B, T, C) -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # q, k, v for all heads in one GEMM
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(config.head_size, eps=1e-5)
            self.k_norm = nn.RMSNorm(config.head_size, eps=1e-5)

    def forward(self, x, rope=None, layer_cache=None):
        """rope: (cos, sin) rows (T, hs / 2) of the T positions (rotary positions), or None."""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)                                        # (B, T, 3C)
        if rope is not None or hasattr(self, "q_norm"):
            qkv = self._norm_and_rotate(qkv, rope)
        if layer_cache is None and not (self.dropout and self.training):
            # training: the fused kernel reads q, k, v in place, writes y with heads side by
            # side, never stores the T x T scores, and backward fills one d qkv buffer
            y = F.causal_self_attention(qkv, nh)                   # (B, T, C)
        else:
            # (B, T, 3, nh, hs) -> (3, B, nh, T, hs): strided views, no copies
            heads = F.permute(F.reshape(qkv, (B, T, 3, nh, hs)), (2, 0, 3, 1, 4))
            q, k, v = F.getitem(heads, 0), F.getitem(heads, 1), F.getitem(heads, 2)  # (B, nh, T, hs)
            if layer_cache is not None:
                # generation: attend over every cached position plus the new ones
                k, v = layer_cache.update(k, v)                     # (B, nh, T_total, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout,
                                               training=self.training)  # (B, nh, T, hs)
            y = F.reshape(F.transpose(y, 1, 2), (B, T, C))         # heads side by side
        return self.resid_dropout(self.c_proj(y))

    def _norm_and_rotate(self, qkv, rope):
        """qkv (B, T, 3C) with q and k normed per head (qk_norm) and rotated (rope), v as it was."""
        cos, sin = rope if rope is not None else (None, None)
        norms = hasattr(self, "q_norm")
        return F.qk_norm_rotary(qkv, self.n_head, cos, sin, self.q_norm.weight if norms else None,
                                self.k_norm.weight if norms else None, eps=1e-5)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> F -> C with GELU, ReLU^2 or SwiGLU (c_gate: the gate
    matrix of SwiGLU, c_fc its up projection). x (B, T, C) -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.d_ff, bias=config.bias)
        if self.kind == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.d_ff, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.kind == "gelu":
            h = F.linear_gelu(x, self.c_fc.weight, self.c_fc.bias)    # bias add + GELU in one pass
        elif self.kind == "relu2":
            h = F.relu_squared(self.c_fc(x))
        else:
            h = F.silu_mul(self.c_gate(x), self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """One pre-norm transformer block. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = _norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, layer_cache=None):
        h = self.attn(self.ln_1(x), rope, layer_cache)
        if isinstance(self.ln_2, nn.LayerNorm):
            # x = x + h, then h = ln_2(x), in one pass over the residual stream
            x, h = F.add_layer_norm(x, h, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        else:
            x = F.add(x, h)
            h = self.ln_2(x)
        return F.add(x, self.mlp(h))


class GPT(LanguageModel):
    """The GPT language model. forward(idx (B, T) int64) -> (logits, loss)."""

    def __init__(self, config, generator=None):
        super().__init__()
        if isinstance(config, dict):
            config = GPTConfig.from_dict(config)
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.positions == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(drop=nn.Dropout(config.dropout),
                       h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                       ln_f=_norm(config, config.n_embd))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # one tensor, two roles (Press & Wolf, 2017); state_dict() lists it once, as wte
            self.lm_head.weight = self.transformer.wte.weight
        if config.positions == "rotary":
            self._rope = RotaryTable(rope_inv_freq(config.head_size, config.rope_theta), config.block_size)
        self.init_weights(generator)

    @no_grad()
    def init_weights(self, generator=None):
        """GPT-2's initialisation: every Linear and Embedding weight ~ N(0, 0.02), biases 0,
        norm gains 1; the projections that write into the residual stream
        (attn.c_proj, mlp.c_proj) ~ N(0, 0.02 / sqrt(2 n_layer)) so that the residual's
        variance does not grow with depth, or 0 with zero_init_proj (which zeroes an untied
        head too). Draws from `generator` (default: minillm's)."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        zero = self.config.zero_init_proj
        for name, p in self.named_parameters():
            if name.endswith(".bias") or (zero and (name.endswith("c_proj.weight") or name == "lm_head.weight")):
                nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, resid_std, generator=generator)
            elif ".ln_" in name or "_norm." in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std, generator=generator)

    def rope(self, pos0, T):
        """(cos, sin) table rows of positions pos0 .. pos0 + T - 1, each (T, hs / 2) (rotary positions)."""
        return self._rope.rows(pos0, T)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) int64 token ids (T <= block_size, counting cached positions);
        targets (B, T) int64 or None (-1 = ignore). Returns (logits, loss):
        with targets, logits (B, T, V) float32 and loss the mean cross-entropy (0-d);
        without, logits (B, 1, V) for the last position only (all a sampler needs, and
        V times cheaper), loss None. Training with fused_lm_head and targets
        returns logits None: the LM head and the loss are then one fused op
        (F.linear_cross_entropy) that never builds the (B, T, V) logits, which for GPT-2's
        vocabulary would be the largest tensor of the step. kv_cache (generation, under
        no_grad): positions start at kv_cache.pos; each block appends its k, v to
        kv_cache.layers[i]; the cache advances by T at the end."""
        B, T = check_idx(idx, "GPT")
        cfg = self.config
        pos0 = 0 if kv_cache is None else kv_cache.pos
        if pos0 + T > cfg.block_size:
            raise ValueError(f"GPT: sequence of {T} tokens starting at position {pos0} is longer than "
                             f"block_size {cfg.block_size}")
        tr = self.transformer
        x = tr.wte(idx)                                                # (B, T, C)
        rope = None
        if cfg.positions == "learned":
            x = F.add(x, tr.wpe(_C.arange(pos0, pos0 + T, dtype="int64")))
        else:
            rope = self.rope(pos0, T)
        x = tr.drop(x)
        for i, block in enumerate(tr.h):
            layer_cache = None if kv_cache is None else kv_cache.layers[i]
            if cfg.checkpoint_activations and self.training and layer_cache is None:
                x = _checkpoint(block, x, rope)
            else:
                x = block(x, rope, layer_cache)
        x = tr.ln_f(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if targets is None:
            logits = self.lm_head(F.getitem(x, (slice(None), slice(T - 1, T))))   # (B, 1, V)
            return self._cap(logits), None
        targets = _check_targets(targets, B, T)
        if cfg.fused_lm_head and self.training:
            loss = F.linear_cross_entropy(x, self.lm_head.weight, targets, bias=self.lm_head.bias,
                                          ignore_index=-1)
            return None, loss
        logits = self._cap(self.lm_head(x))                            # (B, T, V)
        return logits, F.cross_entropy(logits, targets, ignore_index=-1)

    def _cap(self, logits):
        cap = self.config.logit_softcap
        return F.softcap(logits, cap) if cap else logits

    def decoder(self, hugepages=True, weights="float32", kv_dtype=None):
        """The fast decode plan of this GPT (minillm.models.decoder.Decoder): its norm, positions,
        MLP and QK-norm, fused c_attn, biases as the config has them, tied or untied head, the
        logit soft-cap; it reads the parameters in place (weights "float32") or stores copies in
        bf16 or int8 (weights "bf16", "int8"); an int8 plan of a model loaded from an int8 folder
        streams the folder's int8 weights (self.int8_weights) as stored (later changes to the
        parameters do not reach them). hugepages, kv_dtype (the KV caches'): see Decoder."""
        cfg, tr = self.config, self.transformer
        stored = (getattr(self, "int8_weights", None) or {}) if weights == "int8" else {}
        q = lambda name, p: stored.get(name, p)  # noqa: E731
        options = BlockOptions(n_embd=cfg.n_embd, n_head=cfg.n_head, d_ff=cfg.d_ff, norm=cfg.norm,
                               norm_eps=tr.ln_f.eps, mlp=cfg.mlp, positions=cfg.positions,
                               rope_theta=cfg.rope_theta, qk_norm=cfg.qk_norm, qk_norm_eps=1e-5)
        layers = []
        for i, b in enumerate(tr.h):
            p = f"transformer.h.{i}."
            w = {"norm1.weight": b.ln_1.weight, "norm1.bias": getattr(b.ln_1, "bias", None),
                 "qkv.weight": q(p + "attn.c_attn.weight", b.attn.c_attn.weight), "qkv.bias": b.attn.c_attn.bias,
                 "o.weight": q(p + "attn.c_proj.weight", b.attn.c_proj.weight), "o.bias": b.attn.c_proj.bias,
                 "norm2.weight": b.ln_2.weight, "norm2.bias": getattr(b.ln_2, "bias", None),
                 "up.weight": q(p + "mlp.c_fc.weight", b.mlp.c_fc.weight), "up.bias": b.mlp.c_fc.bias,
                 "down.weight": q(p + "mlp.c_proj.weight", b.mlp.c_proj.weight), "down.bias": b.mlp.c_proj.bias}
            if cfg.mlp == "swiglu":
                w["gate.weight"], w["gate.bias"] = q(p + "mlp.c_gate.weight", b.mlp.c_gate.weight), b.mlp.c_gate.bias
            if cfg.qk_norm:
                w["q_norm.weight"], w["k_norm.weight"] = b.attn.q_norm.weight, b.attn.k_norm.weight
            layers.append(w)
        head = q("lm_head.weight", self.lm_head.weight)
        return Decoder(options, layers, embed=tr.wte.weight, head=head, norm_weight=tr.ln_f.weight,
                       norm_bias=getattr(tr.ln_f, "bias", None), head_bias=self.lm_head.bias,
                       pos_embed=tr.wpe.weight if cfg.positions == "learned" else None,
                       hugepages=hugepages, weights=weights, logit_softcap=cfg.logit_softcap, kv_dtype=kv_dtype)

    def crop_block_size(self, block_size):
        """Shrink the context to block_size (keeps the first block_size position embeddings),
        e.g. to fine-tune GPT-2 with a shorter context."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"crop_block_size: {block_size} is not in (0, {self.config.block_size}]")
        self.config.block_size = block_size
        if self.config.positions == "learned":
            wpe = self.transformer.wpe
            wpe.weight = nn.Parameter(F.getitem(wpe.weight.detach(), slice(0, block_size)).copy())
            wpe.num_embeddings = block_size

    def kv_cache_shape(self):
        """(n_layer, n_head, head_size): one key and one value row per head and layer."""
        cfg = self.config
        return cfg.n_layer, cfg.n_head, cfg.head_size

    @classmethod
    def from_pretrained(cls, folder):
        """A GPT with the weights of a HuggingFace-layout GPT-2 folder (config.json,
        model.safetensors); see load_pretrained below."""
        return load_pretrained(folder)

    def save_pretrained(self, folder, tokenizer=None, weights="float32", group=None):
        """Write this GPT as a HuggingFace-layout GPT-2 folder; see save_pretrained below."""
        return save_pretrained(self, folder, tokenizer=tokenizer, weights=weights, group=group)

    def estimate_flops_per_token(self, T=None):
        """Training FLOPs per token at context T (default block_size): 6 N for the
        weight GEMMs (forward 2N, backward 4N; N = parameters without the position
        table, the tied LM head counted once) plus 12 n_layer T C for the attention
        score and value products, forward and backward, over the full T x T square
        (PaLM, appendix B; a causal kernel does about half of that work)."""
        cfg = self.config
        T = cfg.block_size if T is None else T
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * cfg.n_layer * T * cfg.n_embd


def _check_targets(targets, B, T):
    if not isinstance(targets, _C.Tensor) or tuple(targets.shape) != (B, T):
        shape = tuple(targets.shape) if hasattr(targets, "shape") else type(targets).__name__
        raise ValueError(f"expected (B, T) = ({B}, {T}) target ids, got {shape}")
    if targets.dtype not in ("int64", "int32"):
        raise TypeError(f"expected int64 target ids, got {targets.dtype}")
    return targets


def _checkpoint(block, x, rope=None):
    """block(x, rope) without keeping the block's intermediate activations: the forward runs
    under no_grad, and the backward re-runs it with grad on to get the gradients.
    x (B, T, C) -> (B, T, C). Dropout would draw different masks on the re-run, so the
    config must have dropout 0 (checked here)."""
    from minillm import autograd
    if block.attn.dropout:
        raise ValueError("checkpoint_activations needs dropout 0 (the recomputed forward would "
                         "draw different dropout masks)")
    with no_grad():
        out = block(x, rope)
    if not (_C.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))):
        return out

    def backward(dy):
        with autograd.enable_grad():
            x_again = x.detach()
            x_again.requires_grad = x.requires_grad
            y = block(x_again, rope)
        # leaves of the inner graph: the block's parameters (their .grad accumulates here)
        # and x_again, whose .grad is this node's gradient for x
        autograd.backward(y, dy)
        return (x_again.grad,)
    autograd.record(out, backward, x if x.requires_grad else None)
    return out


# ====================================================================== HuggingFace's layout
# GPT-2 checkpoints in HuggingFace's layout: load them into our GPT, write ours back out
# (GPT.from_pretrained and GPT.save_pretrained call these).
#
# A folder in that layout holds
#   config.json        GPT2Config: n_layer, n_head, n_embd, n_positions, vocab_size,
#                      layer_norm_epsilon, activation_function, tie_word_embeddings, ...
#   model.safetensors  tensors named as HF's GPT2Model ("h.0.attn.c_attn.weight", ...), with or
#                      without the "transformer." prefix GPT2LMHeadModel adds; lm_head.weight
#                      only if the head is not tied to wte
#   vocab.json + merges.txt, or tokenizer.json (GPT-2's byte-level BPE)
#
# HF's GPT-2 uses Conv1D layers whose weight is stored (in, out), the transpose of a Linear's
# (out, in): c_attn, attn.c_proj, c_fc and mlp.c_proj are transposed on the way in and out.
# activation_function gelu_new (also gelu_pytorch_tanh, gelu_fast) is the tanh GELU our GPT uses.
#
# An int8 folder (minillm.quantize) stores the four Conv1D weights of every block and
# lm_head.weight (also when tied: the decode plan's head; wte stays float32 for the embedding)
# as int8 + ".scales" in the Linear orientation (out, in), since the groups run along the
# input axis; config.json has quantization_config.
#
#     model = load_pretrained("gpt2/")           # a GPT; model.tokenizer is a BPETokenizer or None
#     save_pretrained(model, "out/", tokenizer)  # transformers.GPT2LMHeadModel.from_pretrained("out/")

# Conv1D layers: HF stores their weight (in, out); ours is (out, in)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# activations that are GELU's tanh approximation (what our GPT computes)
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# non-parameter buffers old checkpoints carry (the causal mask): ignored
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# ---------------------------------------------------------------------- config
def config_from_hf(hf, where="config.json"):
    """Our GPTConfig from a GPT2Config dict; ValueError naming the field for what our GPT
    cannot compute. Returns (GPTConfig, layer_norm_epsilon)."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{where}: model_type is {hf.get('model_type')!r}; only 'gpt2' checkpoints load")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELU:
        raise ValueError(f"{where}: activation_function {act!r} is not supported; our GPT uses the "
                         f"tanh GELU ({', '.join(TANH_GELU)})")
    for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                     ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if hf.get(flag, ok) != ok:
            raise ValueError(f"{where}: {flag} = {hf[flag]!r} is not supported (expected {ok})")
    n_inner = hf.get("n_inner")
    n_embd = hf.get("n_embd", 768)
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ValueError(f"{where}: n_inner = {n_inner} is not supported (our MLP is 4 * n_embd = {4 * n_embd})")
    try:
        config = GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
            dropout=0.0, bias=True, tie_weights=bool(hf.get("tie_word_embeddings", True)))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{where}: layer_norm_epsilon must be a positive number, got {eps!r}")
    return config, float(eps)


def config_to_hf(config, layer_norm_epsilon=1e-5):
    """A GPT2Config dict (config.json) for our GPTConfig."""
    if not config.bias:
        raise ValueError("save_pretrained: GPT-2 has biases; a GPT built with bias=False has no HF layout")
    gpt2 = dict(norm="layernorm", positions="learned", mlp="gelu", d_ff=4 * config.n_embd, qk_norm=False,
                logit_softcap=0.0)
    other = [f"{k}={getattr(config, k)!r}" for k, v in gpt2.items() if getattr(config, k) != v]
    if other:
        raise ValueError(f"save_pretrained: GPT-2's HF layout has none of {', '.join(other)} (a minillm "
                         f"checkpoint keeps them)")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": layer_norm_epsilon,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": bool(config.tie_weights),
        "bos_token_id": config.vocab_size - 1 if config.vocab_size == 50257 else None,
        "eos_token_id": config.vocab_size - 1 if config.vocab_size == 50257 else None,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


# ---------------------------------------------------------------------- names
def hf_tensor_names(config):
    """dict our state_dict name -> (HF name without prefix, HF shape) for a GPTConfig.
    Conv1D weights have HF shape (in, out)."""
    C, V, L = config.n_embd, config.vocab_size, config.block_size
    names = {"transformer.wte.weight": ("wte.weight", (V, C)),
             "transformer.wpe.weight": ("wpe.weight", (L, C))}
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,),
              "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
              "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
              "ln_2.weight": (C,), "ln_2.bias": (C,),
              "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
              "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer):
        for suffix, shape in shapes.items():
            names[f"transformer.h.{i}.{suffix}"] = (f"h.{i}.{suffix}", shape)
    names["transformer.ln_f.weight"] = ("ln_f.weight", (C,))
    names["transformer.ln_f.bias"] = ("ln_f.bias", (C,))
    if not config.tie_weights:
        names["lm_head.weight"] = ("lm_head.weight", (V, C))
    return names


def _strip(name):
    """HF name without GPT2LMHeadModel's "transformer." prefix (lm_head.weight stays)."""
    return name[len("transformer."):] if name.startswith("transformer.") else name


# ---------------------------------------------------------------------- load
def load_pretrained(folder):
    """A GPT with the weights of the HF-layout GPT-2 checkpoint in `folder`.

    Reads config.json and model.safetensors (float32, or bfloat16/float16 widened to float32);
    the tokenizer (vocab.json + merges.txt or tokenizer.json), if the folder has one, is
    attached as `model.tokenizer` (a minillm BPETokenizer), else `model.tokenizer` is None.
    Missing, unexpected or mis-shaped tensors raise ValueError naming all of them. An int8
    folder (minillm.quantize) loads its int8 weights as `model.int8_weights` (our name ->
    Int8Matrix, for the decode plan) and their dequantized values into the parameters;
    `model.int8_weights` is empty for other folders."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder (expected config.json and model.safetensors)")
    cfg_path = os.path.join(folder, "config.json")
    st_path = os.path.join(folder, "model.safetensors")
    for path in (cfg_path, st_path):
        if not os.path.exists(path):
            raise ValueError(f"{path}: missing (a GPT-2 checkpoint folder holds config.json and model.safetensors)")
    hf = read_json(cfg_path)
    config, eps = config_from_hf(hf, cfg_path)
    int8 = {}
    if quantize.check_quantization(hf, cfg_path) is None:
        raw = {_strip(k): v for k, v in io.load(st_path, mmap=True).items()
               if not k.endswith(IGNORED_SUFFIXES)}
    else:
        raw, int8 = _load_int8(st_path)
    if not config.tie_weights and "lm_head.weight" not in raw and "wte.weight" in raw:
        raise ValueError(f"{st_path}: tie_word_embeddings is false but there is no lm_head.weight")
    if config.tie_weights:
        raw.pop("lm_head.weight", None)   # a tied head saved anyway: it is wte

    names = hf_tensor_names(config)
    missing = [hf for hf, _ in names.values() if hf not in raw]
    expected = {hf for hf, _ in names.values()}
    unexpected = sorted(k for k in raw if k not in expected)
    bad = [f"{hf} has shape {tuple(raw[hf].shape)}, expected {shape}"
           + (" (HF Conv1D layout: (in, out))" if hf.endswith(CONV1D) else "")
           for hf, shape in names.values() if hf in raw and tuple(raw[hf].shape) != shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    problems += bad
    if problems:
        raise ValueError(f"{st_path} does not fit config.json ({config.n_layer} layers, n_embd {config.n_embd}, "
                         f"vocab {config.vocab_size}, n_positions {config.block_size}): " + "; ".join(problems))

    model = GPT(config)
    model.int8_weights = {ours: int8[hf_name] for ours, (hf_name, _) in names.items() if hf_name in int8}
    if "lm_head.weight" in int8:
        model.int8_weights["lm_head.weight"] = int8["lm_head.weight"]
    own = model.state_dict()
    with no_grad():
        for ours, (hf_name, _) in names.items():
            src = raw[hf_name]
            if src.dtype != "float32":
                src = src.astype("float32")
            if hf_name.endswith(CONV1D):
                src = src.T
            own[ours][...] = src
    for ln in _layer_norms(model):
        ln.eps = eps
    model.tokenizer = _load_tokenizer(folder)
    model.generation_config = read_generation_config(folder)
    return model


def _load_int8(st_path):
    """(tensors by HF name without prefix, with the dequantized float32 weights in place of the
    int8 ones, Conv1D weights back in HF's (in, out); {HF name: Int8Matrix}) of an int8 folder's
    model.safetensors."""
    arrays = {_strip(k): v for k, v in serialization.load(st_path, mmap=True).items()
              if not k.endswith(IGNORED_SUFFIXES)}
    allowed = {n for n in arrays if n.endswith(CONV1D)} | {"lm_head.weight"}
    int8 = quantize.split_int8(arrays.get, arrays, st_path, allowed)
    raw = {}
    for name, a in arrays.items():
        if name.endswith(".scales"):
            continue
        if name in int8:
            w = int8[name].dequantize().numpy()
            a = w.T if name.endswith(CONV1D) else w
        raw[name] = _C.from_numpy(np.ascontiguousarray(serialization.to_f32(a)))
    return raw, int8


def _layer_norms(model):
    return [m for _, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


def _load_tokenizer(folder):
    has = lambda name: os.path.exists(os.path.join(folder, name))  # noqa: E731
    if has("tokenizer.json") or (has("vocab.json") and has("merges.txt")):
        return load_tokenizer(folder)
    return None


# ---------------------------------------------------------------------- save
def save_pretrained(model, folder, tokenizer=None, weights="float32", group=None):
    """Write `model` (our GPT) into `folder` in HF's GPT-2 layout: config.json,
    model.safetensors (HF names with the "transformer." prefix, Conv1D weights as (in, out),
    no lm_head.weight when tied), and the tokenizer's files (tokenizer.json, vocab.json,
    merges.txt) if `tokenizer` (or `model.tokenizer`) is a BPETokenizer. Returns the folder.
    weights "bf16": the matrices (embeddings, Conv1D weights, head) in bf16, nearest even;
    "int8": the int8 layout of the comment above (group: the int8 group, default per matrix
    quantize.int8_group)."""
    if not isinstance(model, GPT):
        raise TypeError(f"save_pretrained: expected a minillm GPT, got {type(model).__name__}")
    if weights not in ("float32",) + quantize.FOLDER_DTYPES:
        raise ValueError(f"save_pretrained: weights must be float32, bf16 or int8, got {weights!r}")
    config = model.config
    eps = {ln.eps for ln in _layer_norms(model)}
    if len(eps) != 1:
        raise ValueError(f"save_pretrained: the LayerNorms use different eps {sorted(eps)}; GPT-2 has one")
    hf_config = config_to_hf(config, eps.pop())
    own = model.state_dict()
    if not config.tie_weights and "lm_head.weight" not in own:
        own["lm_head.weight"] = model.lm_head.weight
    tensors = {}
    stored = getattr(model, "int8_weights", None) or {}       # an int8 folder's, written as they are
    for ours, (hf_name, _) in hf_tensor_names(config).items():
        t = own[ours].detach()
        prefix = "" if hf_name == "lm_head.weight" else "transformer."
        if weights == "int8" and (hf_name.endswith(CONV1D) or hf_name == "lm_head.weight"):
            tensors.update(quantize.int8_arrays(prefix + hf_name, t, group, stored.get(ours)))    # (out, in)
            continue
        if hf_name.endswith(CONV1D):
            t = t.T
        a = np.asarray(t.contiguous())
        tensors[prefix + hf_name] = quantize.bf16_array(a) if weights == "bf16" and a.ndim == 2 else a
    if weights == "int8":
        if config.tie_weights:        # the decode plan's head; wte stays float32 for the lookup
            tensors.update(quantize.int8_arrays("lm_head.weight", model.lm_head.weight, group,
                                                stored.get("lm_head.weight")))
        hf_config["quantization_config"] = quantize.quantization_config(group or 64)
    if weights == "bf16":
        hf_config["torch_dtype"] = hf_config["dtype"] = "bfloat16"
    os.makedirs(folder, exist_ok=True)
    serialization.save(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(folder)
        if getattr(tokenizer, "eot_token", None) is not None:
            eot = tokenizer.id_to_token(tokenizer.eot_token).decode("utf-8")
            with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": config.block_size,
                           "bos_token": eot, "eos_token": eot, "unk_token": eot,
                           "add_prefix_space": False}, f, indent=2)
    return folder
