# decode_step.pxi: bindings of decode_step.c: one decoding step of a transformer block with
# the block's options (norm, positions, MLP, heads and key/value heads, biases, QK-norm) and
# the final norm + LM head. Inference only: plain Tensors, no autograd. The decode plan
# (minillm/models/decoder.py) builds these once per decoder and calls them per token.

from libc.math cimport sqrt as c_sqrt

_NORMS = {"layernorm": C.MLL_NORM_LAYER, "rmsnorm": C.MLL_NORM_RMS}
_MLPS = {"gelu": C.MLL_MLP_GELU, "swiglu": C.MLL_MLP_SWIGLU, "relu2": C.MLL_MLP_RELU2}
# the weight names DecodeBlock knows (their shapes: its docstring)
_BLOCK_WEIGHTS = ("norm1.weight", "norm1.bias", "qkv.weight", "qkv.bias", "q.weight", "k.weight", "v.weight",
                  "q.bias", "k.bias", "v.bias", "q_norm.weight", "k_norm.weight", "o.weight", "o.bias",
                  "norm2.weight", "norm2.bias", "gate.weight", "gate.bias", "up.weight", "up.bias",
                  "down.weight", "down.bias")


cdef int _choice(str owner, str what, object value, dict choices) except -1:
    if value not in choices:
        raise ValueError(f"{owner}: {what} must be one of {sorted(choices)}, got {value!r}")
    return choices[value]


cdef class DecodeBlock:
    """The options and weights of one transformer block for block_step (the tensors are kept
    referenced, so they stay alive). weights: a dict of contiguous float32 tensors by name,
    except the Linear weights (out, in), which may also be Bf16Matrix (a bfloat16 Tensor is
    packed into one, a copy) or Int8Matrix (C = n_embd, Q = n_head * head_dim, KV = n_kv_head
    * head_dim, F = d_ff; a bias that is absent or None is zero):

      norm1.weight, norm1.bias (C)      the norm before attention (bias: LayerNorm only)
      qkv.weight (Q + 2 KV, C), qkv.bias     q, k, v fused (GPT-2's c_attn), or else
      q.weight (Q, C), k.weight, v.weight (KV, C), q.bias, k.bias, v.bias
      q_norm.weight, k_norm.weight (head_dim)  per-head RMSNorm of q and k (qk_norm)
      o.weight (C, Q), o.bias (C)       the attention's output projection
      norm2.weight, norm2.bias (C)      the norm before the MLP
      gate.weight (F, C), gate.bias     SwiGLU's gate (mlp "swiglu" only)
      up.weight (F, C), up.bias (F)     GELU's or ReLU^2's input, or SwiGLU's up projection
      down.weight (C, F), down.bias (C) the MLP's output projection

    Options: norm "layernorm" | "rmsnorm" (norm_eps); mlp "gelu" (tanh form) | "relu2" | "swiglu";
    rotary: q and k rotated by a rope table (block_step's rope_cos, rope_sin; head_dim even);
    qk_norm (qk_norm_eps); n_kv_head divides n_head (default n_head); head_dim defaults to
    n_embd / n_head; attn_scale to 1 / sqrt(head_dim). Bad names, shapes or options raise
    ValueError."""
    cdef C.mll_block_options o
    cdef C.mll_block_weights w
    cdef readonly dict weights
    cdef readonly str norm, mlp

    def __init__(self, dict weights, *, int64_t n_embd, int64_t n_head, n_kv_head=None, head_dim=None,
                 int64_t d_ff, str norm="layernorm", str mlp="gelu", bint rotary=False, bint qk_norm=False,
                 float norm_eps=1e-5, float qk_norm_eps=1e-6, attn_scale=None):
        owner = "DecodeBlock"
        unknown = sorted(set(weights) - set(_BLOCK_WEIGHTS))
        if unknown:
            raise ValueError(f"{owner}: unknown weight names {unknown} (known: {list(_BLOCK_WEIGHTS)})")
        cdef int64_t nkv = n_head if n_kv_head is None else n_kv_head
        cdef int64_t hs = (n_embd // n_head if n_head > 0 else 0) if head_dim is None else head_dim
        if n_embd < 1 or n_head < 1 or nkv < 1 or hs < 1 or d_ff < 1:
            raise ValueError(f"{owner}: n_embd {n_embd}, n_head {n_head}, n_kv_head {nkv}, head_dim {hs} and "
                             f"d_ff {d_ff} must all be >= 1")
        if n_head % nkv:
            raise ValueError(f"{owner}: n_kv_head {nkv} does not divide n_head {n_head}")
        if rotary and hs % 2:
            raise ValueError(f"{owner}: rotary positions need an even head_dim, got {hs}")
        self.o.n_embd, self.o.n_head, self.o.n_kv_head, self.o.head_dim, self.o.d_ff = n_embd, n_head, nkv, hs, d_ff
        self.o.norm = _choice(owner, "norm", norm, _NORMS)
        self.o.mlp = _choice(owner, "mlp", mlp, _MLPS)
        self.o.rotary, self.o.qk_norm = rotary, qk_norm
        self.o.norm_eps, self.o.qk_norm_eps = norm_eps, qk_norm_eps
        self.o.attn_scale = <float>(1.0 / c_sqrt(<double>hs)) if attn_scale is None else <float>float(attn_scale)
        self.norm, self.mlp = norm, mlp
        weights = {n: bf16_packed(t) for n, t in weights.items()}
        self.weights = dict(weights)

        def has(name):
            return weights.get(name) is not None

        cdef int64_t Cn = n_embd, Q = mul_or_raise(n_head, hs, owner), KV = mul_or_raise(nkv, hs, owner), F = d_ff
        add_or_raise(Q, mul_or_raise(2, KV, owner), owner)
        if has("qkv.weight"):
            separate = [n for n in ("q.weight", "k.weight", "v.weight", "q.bias", "k.bias", "v.bias") if has(n)]
            if separate:
                raise ValueError(f"{owner}: give q, k, v either fused (qkv.weight) or separately, not both "
                                 f"(also got {separate})")
            fused = weights["qkv.weight"]
            rows = 16 if isinstance(fused, Int8Matrix) else 4 if isinstance(fused, Bf16Matrix) else 1
            if Q % rows or KV % rows:
                # int8 tiles hold 16 rows, bf16 blocks 4: q, k and v then need blocks of their own
                if fused.shape != (Q + 2 * KV, Cn):
                    raise ValueError(f"{owner}: qkv.weight must have shape {(Q + 2 * KV, Cn)}, got an "
                                     f"{type(fused).__name__} of shape {fused.shape}")
                parts = {"q.weight": fused.rows(0, Q), "k.weight": fused.rows(Q, Q + KV),
                         "v.weight": fused.rows(Q + KV, Q + 2 * KV)}
                self.w.q_w = _matrix_of(owner, parts, "q.weight", (Q, Cn))
                self.w.k_w = _matrix_of(owner, parts, "k.weight", (KV, Cn))
                self.w.v_w = _matrix_of(owner, parts, "v.weight", (KV, Cn))
                del self.weights["qkv.weight"]             # the parts hold the blocks the step reads
                self.weights.update(parts)
            else:
                self.w.q_w = _matrix_of(owner, weights, "qkv.weight", (Q + 2 * KV, Cn))
                self.w.k_w, self.w.v_w = matrix_rows(self.w.q_w, Q, Cn), matrix_rows(self.w.q_w, Q + KV, Cn)
            self.w.q_b = _weight_ptr(owner, weights, "qkv.bias", (Q + 2 * KV,))
            if self.w.q_b != NULL:
                self.w.k_b, self.w.v_b = self.w.q_b + Q, self.w.q_b + Q + KV
        else:
            if has("qkv.bias"):
                raise ValueError(f"{owner}: qkv.bias without qkv.weight (use q.bias, k.bias, v.bias)")
            missing = [n for n in ("q.weight", "k.weight", "v.weight") if not has(n)]
            if missing:
                raise ValueError(f"{owner}: missing {missing} (or a fused qkv.weight)")
            self.w.q_w = _matrix_of(owner, weights, "q.weight", (Q, Cn))
            self.w.k_w = _matrix_of(owner, weights, "k.weight", (KV, Cn))
            self.w.v_w = _matrix_of(owner, weights, "v.weight", (KV, Cn))
            self.w.q_b = _weight_ptr(owner, weights, "q.bias", (Q,))
            self.w.k_b = _weight_ptr(owner, weights, "k.bias", (KV,))
            self.w.v_b = _weight_ptr(owner, weights, "v.bias", (KV,))
        required = ["o.weight", "up.weight", "down.weight"]
        if mlp == "swiglu":
            required.append("gate.weight")
        elif has("gate.weight") or has("gate.bias"):
            raise ValueError(f"{owner}: gate weights are for mlp 'swiglu', not {mlp!r}")
        if qk_norm:
            required += ["q_norm.weight", "k_norm.weight"]
        elif has("q_norm.weight") or has("k_norm.weight"):
            raise ValueError(f"{owner}: q_norm/k_norm weights given but qk_norm is off")
        if norm == "rmsnorm" and (has("norm1.bias") or has("norm2.bias")):
            raise ValueError(f"{owner}: RMSNorm has no bias (got norm1.bias or norm2.bias)")
        missing = [n for n in required if not has(n)]
        if missing:
            raise ValueError(f"{owner}: missing {missing}")
        self.w.norm1_w = _weight_ptr(owner, weights, "norm1.weight", (Cn,))
        self.w.norm1_b = _weight_ptr(owner, weights, "norm1.bias", (Cn,))
        self.w.q_norm_w = _weight_ptr(owner, weights, "q_norm.weight", (hs,))
        self.w.k_norm_w = _weight_ptr(owner, weights, "k_norm.weight", (hs,))
        self.w.o_w = _matrix_of(owner, weights, "o.weight", (Cn, Q))
        self.w.o_b = _weight_ptr(owner, weights, "o.bias", (Cn,))
        self.w.norm2_w = _weight_ptr(owner, weights, "norm2.weight", (Cn,))
        self.w.norm2_b = _weight_ptr(owner, weights, "norm2.bias", (Cn,))
        self.w.gate_w = _matrix_of(owner, weights, "gate.weight", (F, Cn))
        self.w.gate_b = _weight_ptr(owner, weights, "gate.bias", (F,))
        self.w.up_w = _matrix_of(owner, weights, "up.weight", (F, Cn))
        self.w.up_b = _weight_ptr(owner, weights, "up.bias", (F,))
        self.w.down_w = _matrix_of(owner, weights, "down.weight", (Cn, F))
        self.w.down_b = _weight_ptr(owner, weights, "down.bias", (Cn,))
        for names in (("q", "k", "v"), ("gate", "up")):
            groups = {weights[n + ".weight"].group for n in names
                      if isinstance(weights.get(n + ".weight"), Int8Matrix)}
            if len(groups) > 1:
                raise ValueError(f"{owner}: the int8 {'/'.join(names)} weights are read in one product and must "
                                 f"share one group size, got {sorted(groups)}")

    @property
    def n_embd(self):
        return self.o.n_embd

    @property
    def n_head(self):
        return self.o.n_head

    @property
    def n_kv_head(self):
        return self.o.n_kv_head

    @property
    def head_dim(self):
        return self.o.head_dim

    @property
    def d_ff(self):
        return self.o.d_ff

    @property
    def rotary(self):
        return bool(self.o.rotary)

    def linear_weights(self):
        """The Linear weights a step streams, in step order (q/k/v or the fused qkv, o, gate,
        up, down; absent ones left out)."""
        names = ("qkv.weight", "q.weight", "k.weight", "v.weight", "o.weight", "gate.weight", "up.weight",
                 "down.weight")
        return [self.weights[n] for n in names if self.weights.get(n) is not None]

    def scratch_floats(self, int64_t B, int64_t S):
        """Floats of scratch block_step needs for B rows with S cached positions (pos < S)."""
        return scratch_floats(&self.o, B, S)


cdef class DecodeHead:
    """The final norm and the LM head for final_step: norm_weight, norm_bias (C) (bias
    LayerNorm only; either may be None), head_weight (V, C) (the token embedding when tied;
    float32, a Bf16Matrix (a bfloat16 Tensor is packed into one, a copy) or an Int8Matrix),
    head_bias (V) or None; norm "layernorm" | "rmsnorm"
    with norm_eps."""
    cdef C.mll_block_options o
    cdef const float *norm_w
    cdef const float *norm_b
    cdef C.mll_matrix head_w
    cdef const float *head_b
    cdef readonly int64_t vocab_size
    cdef readonly object head_weight
    cdef tuple keep

    def __init__(self, norm_weight, norm_bias, head_weight, head_bias=None, *, str norm="layernorm",
                 float norm_eps=1e-5):
        owner = "DecodeHead"
        head_weight = bf16_packed(head_weight)
        shape = tuple(head_weight.shape) if isinstance(head_weight, (Tensor, Int8Matrix, Bf16Matrix)) else None
        if shape is None or len(shape) != 2:
            raise ValueError(f"{owner}: head_weight must be (vocab, n_embd), got {_describe(head_weight)}")
        cdef int64_t V = shape[0], Cn = shape[1]
        if norm == "rmsnorm" and norm_bias is not None:
            raise ValueError(f"{owner}: RMSNorm has no bias")
        self.o.n_embd = Cn
        self.o.norm = _choice(owner, "norm", norm, _NORMS)
        self.o.norm_eps = norm_eps
        w = {"norm.weight": norm_weight, "norm.bias": norm_bias, "head.weight": head_weight, "head.bias": head_bias}
        self.norm_w = _weight_ptr(owner, w, "norm.weight", (Cn,))
        self.norm_b = _weight_ptr(owner, w, "norm.bias", (Cn,))
        self.head_w = _matrix_of(owner, w, "head.weight", (V, Cn))
        self.head_b = _weight_ptr(owner, w, "head.bias", (V,))
        self.vocab_size = V
        self.head_weight = head_weight
        self.keep = (norm_weight, norm_bias, head_weight, head_bias)

    def scratch_floats(self, int64_t B):
        """Floats of scratch final_step needs for B rows (a block step's scratch of the same
        n_embd is always enough)."""
        return scratch_floats(&self.o, B, 1)


cdef int64_t scratch_floats(const C.mll_block_options *o, int64_t B, int64_t S) except -1:
    """mll_block_step_scratch(o, B, S), once its sum is known to fit: the same terms in Python
    ints (a bound: the C function also rounds each part up to a cache line)."""
    if B < 0 or S < 0:
        raise ValueError(f"scratch for {B} rows and {S} positions: both must be >= 0")
    Q, KV = int(o.n_head) * o.head_dim, int(o.n_kv_head) * o.head_dim
    bound = int(B) * (int(o.n_embd) + 2 * Q + 2 * KV + o.d_ff + 2 + int(o.n_head) * S) + 64 * 8
    if bound >= 2 ** 62:
        raise MemoryError(f"a decoding step for {B} rows and {S} positions needs more scratch than 64-bit "
                          f"sizes can address")
    return C.mll_block_step_scratch(o, B, S)


cdef Tensor _scratch_for(str owner, object scratch, int64_t need):
    cdef Tensor s = as_f32(scratch, f"{owner} scratch")
    if not is_contig(s) or numel(s) < need:
        raise ValueError(f"{owner}: scratch must be a contiguous float32 tensor of at least {need} floats, got "
                         f"shape {scratch.shape}")
    return s


cdef tuple _rope_tables(str owner, DecodeBlock block, rope_cos, rope_sin, int64_t maxpos):
    """(cos, sin) Tensors for a rotary block, checked: contiguous (P, head_dim / 2), P > maxpos;
    (None, None) for a block without rotary positions (which must be given none)."""
    cdef int64_t hs = block.o.head_dim
    cdef Tensor ct, st
    if not block.o.rotary:
        if rope_cos is not None or rope_sin is not None:
            raise ValueError(f"{owner}: rope tables given to a block without rotary positions")
        return None, None
    if rope_cos is None or rope_sin is None:
        raise ValueError(f"{owner}: a rotary block needs rope_cos and rope_sin")
    ct = as_f32(rope_cos, f"{owner} rope_cos")
    st = as_f32(rope_sin, f"{owner} rope_sin")
    if ct.ndim != 2 or ct.shape != st.shape or ct.shape_[1] != hs // 2 or ct.shape_[0] <= maxpos \
            or not is_contig(ct) or not is_contig(st):
        raise ValueError(f"{owner}: rope_cos, rope_sin must be contiguous (P, {hs // 2}) with P > {maxpos}, got "
                         f"{rope_cos.shape} and {rope_sin.shape}")
    return ct, st


cdef int _check_step(str owner, int r, int64_t B) except -1:
    """The return code of a block step as the exception it stands for."""
    if r == -2:
        raise MemoryError(f"{owner}: no memory for the quantized or split activations ({B} rows)")
    if r != 0:
        raise ValueError(f"{owner}: inconsistent block options")   # DecodeBlock checked them: not reached
    return 0


def block_step(x, DecodeBlock block, kcache, vcache, int64_t pos, scratch, rope_cos=None, rope_sin=None):
    """In place on x (B, C) float32 contiguous: the block for one new position per row at `pos`,
    over the position-major caches kcache, vcache (S, B, n_kv_head, head_dim), S > pos, float32
    or bfloat16 (both alike), whose row pos is written. rope_cos, rope_sin (P, head_dim / 2), P > pos: the rotary table
    (rotary blocks only; see rope_table). scratch: float32, at least
    block.scratch_floats(B, pos + 1) floats. Returns x."""
    owner = "block_step"
    cdef Tensor xx = as_f32(x, "block_step x")
    cdef Tensor kc = as_kv_cache(kcache, "block_step kcache", -1)
    cdef Tensor vc = as_kv_cache(vcache, "block_step vcache", kc.dtype_)
    cdef int64_t Cn = block.o.n_embd, nkv = block.o.n_kv_head, hs = block.o.head_dim
    if xx.ndim != 2 or xx.shape_[1] != Cn or not is_contig(xx):
        raise ValueError(f"{owner}: x must be contiguous (B, {Cn}), got {x.shape}")
    cdef int64_t B = xx.shape_[0]
    if kc.ndim != 4 or kc.shape != (kc.shape_[0], B, nkv, hs) or kc.shape != vc.shape \
            or not is_contig(kc) or not is_contig(vc):
        raise ValueError(f"{owner}: caches must be contiguous (S, {B}, {nkv}, {hs}), got "
                         f"{kcache.shape} and {vcache.shape}")
    if not 0 <= pos < kc.shape_[0]:
        raise ValueError(f"{owner}: position {pos} is outside a cache of {kc.shape_[0]} rows")
    ct, st = _rope_tables(owner, block, rope_cos, rope_sin, pos)
    cdef const float *cp = NULL if ct is None else fptr(<Tensor>ct)
    cdef const float *sp = NULL if st is None else fptr(<Tensor>st)
    cdef Tensor sc = _scratch_for(owner, scratch, scratch_floats(&block.o, B, pos + 1))
    cdef int r
    with nogil:
        r = C.mll_block_step(fptr(xx), &block.o, &block.w, kc.ptr, vc.ptr, kc.dtype_ == C.MLL_BF16, cp, sp,
                             fptr(sc), B, pos)
    _check_step(owner, r, B)
    return x


def block_step_rows(x, DecodeBlock block, kcaches, vcaches, positions, scratch, rope_cos=None, rope_sin=None):
    """block_step with every row at its own position over its own caches (continuous
    batching): x (B, C) float32 contiguous, in place; kcaches, vcaches: B contiguous tensors,
    all float32 or all bfloat16, (S_b, ..., n_kv_head, head_dim) of n_kv_head * head_dim per position
    (a one-row KV cache's (S_b, 1, nkv, hs) tensor); positions: B ints, 0 <= pos_b < S_b (row
    pos_b of each cache is written); rope tables as block_step's, with more than max(positions)
    rows; scratch: at least block.scratch_floats(B, max(positions) + 1) floats. Returns x."""
    owner = "block_step_rows"
    cdef Tensor xx = as_f32(x, "block_step_rows x")
    cdef int64_t Cn = block.o.n_embd, KV = block.o.n_kv_head * block.o.head_dim, hs = block.o.head_dim
    if xx.ndim != 2 or xx.shape_[1] != Cn or not is_contig(xx):
        raise ValueError(f"{owner}: x must be contiguous (B, {Cn}), got {x.shape}")
    cdef int64_t B = xx.shape_[0]
    if B == 0:
        return x
    kcaches, vcaches, positions = list(kcaches), list(vcaches), list(positions)
    if len(kcaches) != B or len(vcaches) != B or len(positions) != B:
        raise ValueError(f"{owner}: {B} rows need {B} key caches, value caches and positions, got "
                         f"{len(kcaches)}, {len(vcaches)} and {len(positions)}")
    cdef Tensor keep = new_tensor((3 * B,), C.MLL_I64)       # row pointers and positions
    cdef void **kc = <void **>keep.ptr
    cdef void **vc = kc + B
    cdef int64_t *pos = <int64_t *>(vc + B)
    cdef Tensor k, v
    cdef int64_t b, p, maxpos = -1
    cdef int dtype = -1
    for b in range(B):
        k = as_kv_cache(kcaches[b], f"{owner} kcaches[{b}]", dtype)
        dtype = k.dtype_
        v = as_kv_cache(vcaches[b], f"{owner} vcaches[{b}]", dtype)
        p = positions[b]
        if not is_contig(k) or not is_contig(v) or k.shape != v.shape or k.ndim < 2 \
                or numel(k) != k.shape_[0] * KV:
            raise ValueError(f"{owner}: caches of row {b} must be contiguous, alike, with {KV} values per "
                             f"position, got {kcaches[b].shape} and {vcaches[b].shape}")
        if not 0 <= p < k.shape_[0]:
            raise ValueError(f"{owner}: position {p} of row {b} is outside its cache of {k.shape_[0]} rows")
        kc[b], vc[b], pos[b] = k.ptr, v.ptr, p
        maxpos = p if p > maxpos else maxpos
    ct, st = _rope_tables(owner, block, rope_cos, rope_sin, maxpos)
    cdef const float *cp = NULL if ct is None else fptr(<Tensor>ct)
    cdef const float *sp = NULL if st is None else fptr(<Tensor>st)
    cdef Tensor sc = _scratch_for(owner, scratch, scratch_floats(&block.o, B, maxpos + 1))
    cdef int r
    with nogil:
        r = C.mll_block_step_rows(fptr(xx), &block.o, &block.w, kc, vc, KV, pos, dtype == C.MLL_BF16, cp, sp,
                                  fptr(sc), B)
    _check_step(owner, r, B)
    return x


def final_step(x, DecodeHead head, scratch):
    """logits (B, V) float32 = head(norm(x)) for x (B, C) float32 contiguous (kept); scratch:
    float32, at least head.scratch_floats(B) floats."""
    owner = "final_step"
    cdef Tensor xx = as_f32(x, "final_step x")
    cdef int64_t Cn = head.o.n_embd, V = head.vocab_size
    if xx.ndim != 2 or xx.shape_[1] != Cn or not is_contig(xx):
        raise ValueError(f"{owner}: x must be contiguous (B, {Cn}), got {x.shape}")
    cdef int64_t B = xx.shape_[0]
    cdef Tensor sc = _scratch_for(owner, scratch, head.scratch_floats(B))
    cdef Tensor logits = new_tensor((B, V), C.MLL_F32)
    cdef int r
    with nogil:
        r = C.mll_final_step(fptr(xx), &head.o, head.norm_w, head.norm_b, &head.head_w, head.head_b, fptr(logits),
                         fptr(sc), B, V)
    if r:
        raise MemoryError(f"{owner}: no memory for the quantized or split activations ({B} rows)")
    return logits
