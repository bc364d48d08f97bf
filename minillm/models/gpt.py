"""GPT: the GPT-2 architecture (Radford et al., 2019), read top to bottom.

token + position embeddings -> n_layer pre-LayerNorm blocks of
    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
(causal multi-head self-attention, then a 4x GELU MLP) -> final LayerNorm -> LM head
(tied to the token embedding). Module names follow nanoGPT and HuggingFace's GPT-2
(transformer.wte, transformer.h.0.attn.c_attn, ...), so GPT-2 weights load by name.

Shapes: B batch, T sequence, C = n_embd, nh = n_head, hs = C / nh, V = vocab_size.
"""
import dataclasses
import math
from dataclasses import dataclass

from minillm import _C
from minillm import functional as F
from minillm import nn
from minillm.autograd import no_grad
from minillm.models._common import LanguageModel, check_idx, known_fields
from minillm.models.decoder import BlockOptions, Decoder


@dataclass
class GPTConfig:
    """Hyperparameters of a GPT. bias: biases in the Linears and LayerNorms (GPT-2 has
    them); tie_weights: lm_head shares the token embedding (GPT-2 does);
    checkpoint_activations: recompute each block in backward instead of keeping its
    activations (less memory, about one more forward of time); training forwards with
    targets then also fuse the LM head with the loss and return logits None."""
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

    def __post_init__(self):
        if self.model_type != "gpt":
            raise ValueError(f"GPTConfig: model_type must be 'gpt', got {self.model_type!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self):
        """A JSON-ready dict (includes model_type)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The config of a dict written by to_dict(); unknown keys raise ValueError."""
        return cls(**known_fields(cls, d))


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

    def forward(self, x, layer_cache=None):
        B, T, C = x.shape
        qkv = self.c_attn(x)                                        # (B, T, 3C)
        if layer_cache is None and not (self.dropout and self.training):
            # training: the fused kernel reads q, k, v in place, writes y with heads side by
            # side, never stores the T x T scores, and backward fills one d qkv buffer
            y = F.causal_self_attention(qkv, self.n_head)          # (B, T, C)
        else:
            nh, hs = self.n_head, C // self.n_head
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


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = F.linear_gelu(x, self.c_fc.weight, self.c_fc.bias)    # bias add + GELU in one pass
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """One transformer block, pre-LayerNorm as in GPT-2. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, layer_cache=None):
        h = self.attn(self.ln_1(x), layer_cache)
        # x = x + h, then h = ln_2(x), in one pass over the residual stream
        x, h = F.add_layer_norm(x, h, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        return F.add(x, self.mlp(h))


class GPT(LanguageModel):
    """The GPT language model. forward(idx (B, T) int64) -> (logits, loss)."""

    supports_kv_cache = True

    def __init__(self, config, generator=None):
        super().__init__()
        if isinstance(config, dict):
            config = GPTConfig.from_dict(config)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # one tensor, two roles (Press & Wolf, 2017); state_dict() lists it once, as wte
            self.lm_head.weight = self.transformer.wte.weight
        self.init_weights(generator)

    @no_grad()
    def init_weights(self, generator=None):
        """GPT-2's initialisation: every Linear and Embedding weight ~ N(0, 0.02), biases 0,
        LayerNorms (1, 0); the projections that write into the residual stream
        (attn.c_proj, mlp.c_proj) ~ N(0, 0.02 / sqrt(2 n_layer)) so that the residual's
        variance does not grow with depth. Draws from `generator` (default: minillm's)."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, resid_std, generator=generator)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std, generator=generator)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) int64 token ids (T <= block_size, counting cached positions);
        targets (B, T) int64 or None (-1 = ignore). Returns (logits, loss):
        with targets, logits (B, T, V) float32 and loss the mean cross-entropy (0-d);
        without, logits (B, 1, V) for the last position only (all a sampler needs, and
        V times cheaper), loss None. Training with checkpoint_activations and targets
        returns logits None: the LM head and the loss are then one fused op
        (F.linear_cross_entropy) that never builds the (B, T, V) logits, which for GPT-2's
        vocabulary would be the largest tensor of the step. kv_cache (generation, under
        no_grad): positions start at kv_cache.pos; each block appends its k, v to
        kv_cache.layers[i]; the cache advances by T at the end."""
        B, T = check_idx(idx, "GPT")
        pos0 = 0 if kv_cache is None else kv_cache.pos
        if pos0 + T > self.config.block_size:
            raise ValueError(f"GPT: sequence of {T} tokens starting at position {pos0} is longer than "
                             f"block_size {self.config.block_size}")
        tr = self.transformer
        pos = _C.arange(pos0, pos0 + T, dtype="int64")                 # (T,)
        x = F.add(tr.wte(idx), tr.wpe(pos))                            # (B, T, C)
        x = tr.drop(x)
        for i, block in enumerate(tr.h):
            layer_cache = None if kv_cache is None else kv_cache.layers[i]
            if self.config.checkpoint_activations and self.training and layer_cache is None:
                x = _checkpoint(block, x)
            else:
                x = block(x, layer_cache)
        x = tr.ln_f(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if targets is None:
            logits = self.lm_head(F.getitem(x, (slice(None), slice(T - 1, T))))   # (B, 1, V)
            return logits, None
        targets = _check_targets(targets, B, T)
        if self.config.checkpoint_activations and self.training:
            loss = F.linear_cross_entropy(x, self.lm_head.weight, targets, bias=self.lm_head.bias,
                                          ignore_index=-1)
            return None, loss
        logits = self.lm_head(x)                                       # (B, T, V)
        return logits, F.cross_entropy(logits, targets, ignore_index=-1)

    def decoder(self, hugepages=True):
        """The fast decode plan of this GPT (minillm.models.decoder.Decoder): LayerNorm,
        learned positions, fused c_attn, GELU MLP, biases as the config has them, tied or
        untied head; it reads the parameters in place. hugepages: see Decoder."""
        cfg, tr = self.config, self.transformer
        options = BlockOptions(n_embd=cfg.n_embd, n_head=cfg.n_head, d_ff=4 * cfg.n_embd, norm="layernorm",
                               norm_eps=tr.ln_f.eps, mlp="gelu", positions="learned")
        layers = [{"norm1.weight": b.ln_1.weight, "norm1.bias": b.ln_1.bias,
                   "qkv.weight": b.attn.c_attn.weight, "qkv.bias": b.attn.c_attn.bias,
                   "o.weight": b.attn.c_proj.weight, "o.bias": b.attn.c_proj.bias,
                   "norm2.weight": b.ln_2.weight, "norm2.bias": b.ln_2.bias,
                   "up.weight": b.mlp.c_fc.weight, "up.bias": b.mlp.c_fc.bias,
                   "down.weight": b.mlp.c_proj.weight, "down.bias": b.mlp.c_proj.bias} for b in tr.h]
        return Decoder(options, layers, embed=tr.wte.weight, head=self.lm_head.weight, norm_weight=tr.ln_f.weight,
                       norm_bias=tr.ln_f.bias, head_bias=self.lm_head.bias, pos_embed=tr.wpe.weight,
                       hugepages=hugepages)

    def crop_block_size(self, block_size):
        """Shrink the context to block_size (keeps the first block_size position embeddings),
        e.g. to fine-tune GPT-2 with a shorter context."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"crop_block_size: {block_size} is not in (0, {self.config.block_size}]")
        self.config.block_size = block_size
        wpe = self.transformer.wpe
        wpe.weight = nn.Parameter(F.getitem(wpe.weight.detach(), slice(0, block_size)).copy())
        wpe.num_embeddings = block_size

    @classmethod
    def from_pretrained(cls, folder):
        """A GPT with the weights of a HuggingFace-layout GPT-2 folder (config.json,
        model.safetensors); see minillm.models.hf_gpt2.load_pretrained."""
        from minillm.models import hf_gpt2
        return hf_gpt2.load_pretrained(folder)

    def save_pretrained(self, folder, tokenizer=None):
        """Write this GPT as a HuggingFace-layout GPT-2 folder; see
        minillm.models.hf_gpt2.save_pretrained."""
        from minillm.models import hf_gpt2
        return hf_gpt2.save_pretrained(self, folder, tokenizer=tokenizer)

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


def _checkpoint(block, x):
    """block(x) without keeping the block's intermediate activations: the forward runs
    under no_grad, and the backward re-runs it with grad on to get the gradients.
    x (B, T, C) -> (B, T, C). Dropout would draw different masks on the re-run, so the
    config must have dropout 0 (checked here)."""
    from minillm import autograd
    if block.attn.dropout:
        raise ValueError("checkpoint_activations needs dropout 0 (the recomputed forward would "
                         "draw different dropout masks)")
    with no_grad():
        out = block(x)
    if not (_C.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))):
        return out

    def backward(dy):
        with autograd.enable_grad():
            x_again = x.detach()
            x_again.requires_grad = x.requires_grad
            y = block(x_again)
        # leaves of the inner graph: the block's parameters (their .grad accumulates here)
        # and x_again, whose .grad is this node's gradient for x
        autograd.backward(y, dy)
        return (x_again.grad,)
    autograd.record(out, backward, x if x.requires_grad else None)
    return out
