"""The decode plan: one-token decoding steps of a transformer language model, straight on its
weights with the decoding kernels (csrc/decode_step.c), for any family that is a configuration
of one pre-norm block.

    plan = Decoder(options, layers, embed=wte, head=wte, norm_weight=ln_f_w, norm_bias=ln_f_b,
                   pos_embed=wpe)
    logits = plan.step(tokens, cache)          # tokens (B,) int64 at cache.pos -> (B, V) float32
    logits = plan.step_rows(tokens, caches)    # B one-row caches, each at its own position

A model's forward is general (any T, autograd, composed ops); a decoding step has T = 1 and no
grad, so its time is reading the weights plus per-op overhead. Here each block is one C call
(norm, q/k/v, QK-norm, rotary, attention over the KV cache, output projection + residual, norm,
MLP + residual) whose linear layers stream each weight matrix once (gemv.c). A family fills a
plan from its own modules (GPT.decoder in gpt.py); only the family knows its weight names.

The cache is the model's KV cache (minillm.generate.KVCache): `cache.layers[i].k` and `.v` are
GrowableTensors with rows (B, n_kv_head, head_dim), `cache.pos` the position of the next token,
`cache.advance(1)` after a step. The prompt is prefilled by the model's forward into the same
cache, or by the plan itself (extend); a plan can also start from an empty cache, one token at
a time. The plan reads float32 or bfloat16 caches; `kv_dtype` says which one it asks for
(KVCache.for_model(..., dtype=plan.kv_dtype)).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from minillm import _C
from minillm.models.rotary import RotaryTable, rope_inv_freq
from minillm.quantize import DTYPES, KV_DTYPES, decoding_weight

__all__ = ["BlockOptions", "Decoder"]


@dataclass(frozen=True)
class BlockOptions:
    """The options of a model's blocks (all blocks alike), as the decoder step takes them.

    n_embd (C), n_head (query heads), d_ff (the MLP's hidden width); n_kv_head: key/value
    heads, dividing n_head (None: n_head; fewer is grouped-query attention); head_dim (None:
    n_embd / n_head). norm "layernorm" | "rmsnorm" with norm_eps (the final norm's too);
    mlp "gelu" (tanh form) | "relu2" (relu(up)^2) | "swiglu" (silu(gate) * up); positions "learned" (an embedding
    table added before the blocks) | "rotary" (q and k rotated, rope_theta, rope_scaling as
    HF's config.json has it: None, "linear" or "llama3"); qk_norm: per-head RMSNorm of q and k
    (qk_norm_eps); attn_scale (None: 1 / sqrt(head_dim))."""
    n_embd: int
    n_head: int
    d_ff: int
    n_kv_head: Optional[int] = None
    head_dim: Optional[int] = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    qk_norm: bool = False
    qk_norm_eps: float = 1e-6
    attn_scale: Optional[float] = None

    def __post_init__(self):
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"BlockOptions: positions must be 'learned' or 'rotary', got {self.positions!r}")
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head if self.n_head > 0 else 0)

    def block_kwargs(self):
        """The keyword options of _C.DecodeBlock."""
        return dict(n_embd=self.n_embd, n_head=self.n_head, n_kv_head=self.n_kv_head, head_dim=self.head_dim,
                    d_ff=self.d_ff, norm=self.norm, mlp=self.mlp, rotary=self.positions == "rotary",
                    qk_norm=self.qk_norm, norm_eps=self.norm_eps, qk_norm_eps=self.qk_norm_eps,
                    attn_scale=self.attn_scale)


class Decoder:
    """One-token decoding steps over a model's weights (see the module docstring).

    options: BlockOptions; layers: one dict per block of weight tensors by _C.DecodeBlock's
    names ("norm1.weight", "qkv.weight" or "q.weight"/"k.weight"/"v.weight", "o.weight",
    "norm2.weight", "gate.weight", "up.weight", "down.weight", their ".bias", "q_norm.weight",
    "k_norm.weight"; shapes in DecodeBlock's docstring); embed (V, C) the token embedding;
    head (V, C) the LM head (embed itself when tied), head_bias (V) or None; norm_weight,
    norm_bias the final norm's (bias LayerNorm only); pos_embed (P, C) the learned position
    table (positions "learned" only); logit_softcap: the logits are cap tanh(logits / cap)
    (0: as the head gives them). Parameters are read in place (detached, no copies of
    contiguous ones): later changes to the model's weights show in the plan.

    hugepages: ask Linux to back the streamed weights (each block's Linear weights and the
    head) with 2 MiB pages, in place (see _C.advise_hugepages): reading weights is the whole
    cost of a step, and a core streams 2 MiB pages faster than 4 KiB ones (fewer TLB misses;
    prefetchers stop at page edges). The first plan on a model pays for the collapse, once.
    `hugepage_bytes` says how many bytes got them.

    weights: the dtype the streamed weights (Linear weights and head) are read in: "float32"
    (the parameters in place), "bf16" or "int8" (copies made here in the kernels' layouts,
    blocks of 4 rows or tiles of 16, minillm.quantize; also of parameters held in bfloat16;
    the embedding lookup keeps the model's table). An int8 plan also takes _C.Int8Matrix weights
    in `layers` and `head` (a quantized folder's, minillm.quantize), streamed as given.

    kv_dtype: the dtype of the KV caches the plan's users make (KVCache.for_model(...,
    dtype=plan.kv_dtype)); the plan reads either. None: "bfloat16" with bf16 or int8 weights
    (a step over long contexts reads more bytes of cache than of weights, and bf16 halves them;
    tests/test_quantized_eval.py's bounds on the change of bits per byte hold with them),
    "float32" with float32 weights (the bits of the model's forward)."""

    # rows of one pass of extend, and the floats its attention scratch (rows x heads x
    # positions) may take: long contexts get fewer rows a pass
    MAX_ROWS = 256
    ATTENTION_FLOATS = 1 << 24
    # prompts up to this many tokens go through extend (prefills_by_rows): float32 and bf16,
    # bf16 with x in bf16
    ROWS_PREFILL = 16
    ROWS_PREFILL_BF16X = 512

    # the block weights a step streams (stored in `weights`' dtype)
    LINEAR = ("qkv.weight", "q.weight", "k.weight", "v.weight", "o.weight", "gate.weight", "up.weight",
              "down.weight")

    def __init__(self, options, layers, embed, head, norm_weight=None, norm_bias=None, head_bias=None,
                 pos_embed=None, hugepages=True, weights="float32", logit_softcap=0.0, kv_dtype=None):
        if not isinstance(options, BlockOptions):
            raise TypeError(f"Decoder: expected BlockOptions, got {type(options).__name__}")
        if (options.positions == "learned") != (pos_embed is not None):
            raise ValueError(f"Decoder: positions {options.positions!r} "
                             f"{'needs' if pos_embed is None else 'takes no'} pos_embed table")
        if weights not in DTYPES:
            raise ValueError(f"Decoder: weights must be one of {', '.join(DTYPES)}, got {weights!r}")
        if kv_dtype is None:
            kv_dtype = "float32" if weights == "float32" else "bfloat16"
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"Decoder: kv_dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
        self.options = options
        self.weights = weights
        self.kv_dtype = kv_dtype
        self.logit_softcap = float(logit_softcap)

        def stored(name, t):
            if isinstance(t, _C.Int8Matrix):          # int8 weights as a folder stores them
                if weights != "int8" or name not in self.LINEAR + ("head",):
                    raise ValueError(f"Decoder: {name} is an Int8Matrix, which only an int8 plan streams "
                                     f"(weights {weights!r})")
                return t
            t = _w(t)
            return decoding_weight(t, weights) if t is not None and name in self.LINEAR else t

        kwargs = options.block_kwargs()
        self.blocks = [_C.DecodeBlock({name: stored(name, t) for name, t in layer.items()}, **kwargs)
                       for layer in layers]
        self.embed = _w(embed)
        self.pos_embed = _w(pos_embed)
        head = stored("head", head) if isinstance(head, _C.Int8Matrix) else decoding_weight(_w(head), weights)
        self.head = _C.DecodeHead(_w(norm_weight), _w(norm_bias), head, _w(head_bias),
                                  norm=options.norm, norm_eps=options.norm_eps)
        if self.embed.ndim != 2 or self.embed.shape[1] != options.n_embd:
            raise ValueError(f"Decoder: embed must be (vocab, {options.n_embd}), got {tuple(self.embed.shape)}")
        if self.pos_embed is not None and (self.pos_embed.ndim != 2 or self.pos_embed.shape[1] != options.n_embd):
            raise ValueError(f"Decoder: pos_embed must be (positions, {options.n_embd}), got "
                             f"{tuple(self.pos_embed.shape)}")
        self._rope = None
        if options.positions == "rotary":
            self._rope = RotaryTable(rope_inv_freq(options.head_dim, options.rope_theta, options.rope_scaling), 256)
        self._scratch = None
        self._scratch_size = (0, 0)          # (B, positions) the scratch is sized for
        self.hugepage_bytes = 0
        if hugepages:
            for w in self.streamed_weights():
                parts = {_C.Int8Matrix: ("tiles", "tile_scales"), _C.Bf16Matrix: ("blocks",)}.get(type(w))
                for t in ((w,) if parts is None else [getattr(w, p) for p in parts]):
                    self.hugepage_bytes += max(0, _C.advise_hugepages(t))

    def streamed_weights(self):
        """The weights a step streams, in step order: every block's Linear weights, then the head."""
        return [w for b in self.blocks for w in b.linear_weights()] + [self.head.head_weight]

    def _scratch_for(self, B, S):
        """Scratch for B rows and S positions (grown by doubling the positions)."""
        b0, s0 = self._scratch_size
        if b0 != B or s0 < S:
            S = max(S, 64, 2 * s0 if b0 == B else 0)
            need = max([b.scratch_floats(B, S) for b in self.blocks[:1]] + [self.head.scratch_floats(B)])
            self._scratch = _C.empty((need,))
            self._scratch_size = (B, S)
        return self._scratch

    def _cap(self, logits):
        return _C.softcap(logits, self.logit_softcap) if self.logit_softcap else logits

    def step(self, tokens, cache):
        """tokens (B,) int64 at position cache.pos -> logits (B, V) float32; every layer's cache
        gains a row and the cache advances by one."""
        pos = cache.pos
        if self.pos_embed is not None and pos >= self.pos_embed.shape[0]:
            raise ValueError(f"Decoder: position {pos} is past the {self.pos_embed.shape[0]} learned positions")
        x = _embed_rows(self.embed, tokens)                            # (B, C)
        if self.pos_embed is not None:
            pe = self.pos_embed[pos:pos + 1]                            # (1, C)
            _C.add_(x, pe if x.shape[0] == 1 else _C.expand(pe, x.shape))
        cos, sin = self._rope.upto(pos + 1) if self._rope is not None else (None, None)
        scratch = self._scratch_for(x.shape[0], pos + 1)
        block_step = _C.block_step
        for layer, block in zip(cache.layers, self.blocks):
            k, v = layer.k, layer.v
            if k.capacity <= pos:
                k.reserve(pos + 1)
                v.reserve(pos + 1)
            k.length = v.length = pos + 1
            block_step(x, block, k.tensor, v.tensor, pos, scratch, cos, sin)   # x (B, C), in place
        logits = self._cap(_C.final_step(x, self.head, scratch))
        cache.advance(1)
        return logits

    def step_rows(self, tokens, caches):
        """One step for B sequences, each at its own position in its own one-row cache
        (continuous batching): tokens (B,) int64, caches B KVCaches of batch 1 (the prefilled
        caches of separate sequences); row b's token goes in at caches[b].pos. The Linear
        weights are read once for all rows. Returns logits (B, V); every cache advances by one."""
        B = tokens.shape[0]
        if len(caches) != B:
            raise ValueError(f"Decoder.step_rows: {B} tokens for {len(caches)} caches")
        return self.extend([([t], c) for t, c in zip(tokens.tolist(), caches)])

    def extend(self, seqs, every=False):
        """seqs: (ids, cache) pairs, each cache a KVCache of batch 1 of its own: every cache
        gains len(ids) positions (a prompt, or the one token of a decoding step), all the rows
        of all the sequences in one pass over the weights (as one batch of rows, each at its
        own position; a prompt's rows attend to the rows before them, written first). Returns
        the logits (len(seqs), V) after each sequence's last id (every: after every id, (rows,
        V) in order); each cache advances by its ids.
        Every row gets the bits it gets alone, so a prompt gives the same logits however it is
        batched, and the same as stepping its ids in one by one to float32 rounding."""
        if any(c.batch != 1 for _, c in seqs):
            raise ValueError("Decoder.extend: every cache must hold one sequence (batch 1)")
        if len({id(c) for _, c in seqs}) != len(seqs):
            raise ValueError("Decoder.extend: each sequence needs a cache of its own")
        tokens, positions, rows, last = [], [], [], []
        for ids, c in seqs:
            ids = list(ids)
            if not ids:
                raise ValueError("Decoder.extend: a sequence without ids")
            tokens += ids
            positions += range(c.pos, c.pos + len(ids))
            rows += [c] * len(ids)
            last += range(len(tokens) - len(ids), len(tokens)) if every else [len(tokens) - 1]
        if self.pos_embed is not None and max(positions) >= self.pos_embed.shape[0]:
            raise ValueError(f"Decoder: position {max(positions)} is past the {self.pos_embed.shape[0]} learned "
                             f"positions")
        for ids, c in seqs:
            for layer in c.layers:
                end = c.pos + len(ids)
                if layer.k.capacity < end:
                    layer.k.reserve(end)
                    layer.v.reserve(end)
                layer.k.length = layer.v.length = end
        logits = []
        step = max(8, min(self.MAX_ROWS, self.ATTENTION_FLOATS // (self.options.n_head * (max(positions) + 1))))
        for r0 in range(0, len(tokens), step):                   # rows in order: earlier ones' K, V first
            r1 = min(r0 + step, len(tokens))
            want = [r - r0 for r in last if r0 <= r < r1]
            logits.append(self._rows(tokens[r0:r1], positions[r0:r1], rows[r0:r1], want))
        for ids, c in seqs:
            c.advance(len(ids))
        return logits[0] if len(logits) == 1 else _C.cat(logits, 0)

    def _rows(self, tokens, positions, caches, want):
        """The blocks over rows `tokens` at `positions` of `caches` (one per row; lengths set),
        then the logits of rows `want`."""
        top = max(positions)
        x = _embed_rows(self.embed, _C.tensor(tokens, dtype="int64"))          # (R, C)
        if self.pos_embed is not None:
            _C.add_(x, _C.embedding(self.pos_embed, _C.tensor(positions, dtype="int64")))
        cos, sin = self._rope.upto(top + 1) if self._rope is not None else (None, None)
        scratch = self._scratch_for(len(tokens), top + 1)
        for i, block in enumerate(self.blocks):        # whole buffers: the positions say what is filled
            ks = [c.layers[i].k.storage for c in caches]
            vs = [c.layers[i].v.storage for c in caches]
            _C.block_step_rows(x, block, ks, vs, positions, scratch, cos, sin)
        if not want:
            return _C.empty((0, self.head.vocab_size))
        if len(want) < len(tokens):
            x = _C.embedding(x, _C.tensor(want, dtype="int64"))             # the rows that need logits
        return self._cap(_C.final_step(x, self.head, scratch))

    def prefills_by_rows(self, n):
        """Whether a prompt of n tokens is better run through extend (the decoding kernels, one
        read of the weights for all its rows) than through the model's forward (the GEMM, which
        packs every weight matrix first), as bench/bench_prefill.py measures them on a Zen 4:
        int8 always (its kernels outrun the float32 GEMM at any length), bf16 with x in bf16
        (AVX512-BF16, _C.get_bf16_x()) up to ROWS_PREFILL_BF16X tokens, float32 and the other
        bf16 up to ROWS_PREFILL."""
        if self.weights == "int8":
            return True
        if self.weights == "bf16" and _C.get_bf16_x() and _C.get_isa() == "avx512":
            return n <= self.ROWS_PREFILL_BF16X
        return n <= self.ROWS_PREFILL


def _embed_rows(table, tokens):
    """Rows `tokens` (B,) of the embedding table as float32 (B, C); a bfloat16 table (a model
    kept in bf16) is widened row by row here."""
    if table.dtype == "float32":
        return _C.embedding(table, tokens)
    ids = tokens.numpy()
    V = table.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"Decoder: token ids must be in [0, {V}), got {ids.min()}..{ids.max()}")
    rows = table.numpy()[ids].astype(np.uint32) << 16
    return _C.from_numpy(np.ascontiguousarray(rows.view(np.float32)))


def _w(t):
    """A parameter's data as a plain contiguous Tensor (None stays None)."""
    return None if t is None else t.detach().contiguous()
