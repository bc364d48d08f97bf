"""The decoder block step (csrc/decode_step.c) for every option combination a model family
uses, against a float64 NumPy reference of the block written here: GPT-2 (LayerNorm, learned
positions, GELU, biases, multi-head), Llama (RMSNorm, rotary, SwiGLU, no bias, grouped-query),
Qwen2 (+ q/k/v bias), Qwen3 (+ per-head QK-norm, head_dim * n_head != n_embd), Llama 3's
scaled rope; the rope table and inverse frequencies (against transformers); the decode plan
(models/decoder.py) over a whole model; argument checks."""
import math

import numpy as np
import pytest

import minillm
from minillm import _C
from minillm.generate import KVCache
from minillm.models.decoder import BlockOptions, Decoder
from minillm.models.rotary import rope_inv_freq

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}

# name -> (BlockOptions fields, fused qkv, biases on: which of "qkv", "o", "mlp", "norm")
CASES = {
    "gpt2": (dict(n_embd=64, n_head=4, d_ff=256, norm="layernorm", mlp="gelu", positions="learned"),
             True, ("qkv", "o", "mlp", "norm")),
    "llama_gqa": (dict(n_embd=64, n_head=4, n_kv_head=2, d_ff=96, norm="rmsnorm", mlp="swiglu",
                       positions="rotary", rope_theta=10000.0, norm_eps=1e-6), False, ()),
    "qwen2_qkv_bias": (dict(n_embd=64, n_head=4, n_kv_head=2, d_ff=96, norm="rmsnorm", mlp="swiglu",
                            positions="rotary", rope_theta=1e6, norm_eps=1e-6), True, ("qkv",)),
    "qwen3_qk_norm": (dict(n_embd=48, n_head=4, n_kv_head=1, head_dim=20, d_ff=80, norm="rmsnorm", mlp="swiglu",
                           positions="rotary", rope_theta=1e6, qk_norm=True, norm_eps=1e-6), False, ()),
    "llama3_rope_scaling": (dict(n_embd=64, n_head=2, n_kv_head=1, d_ff=128, norm="rmsnorm", mlp="swiglu",
                                 positions="rotary", rope_theta=500000.0, rope_scaling=LLAMA3), False, ()),
    "gpt_untied_bias_mlp_only": (dict(n_embd=32, n_head=2, d_ff=128, norm="layernorm", mlp="gelu",
                                      positions="learned"), False, ("mlp",)),
}


def make_weights(opts, fused, biases, rng, scale=1.0):
    """float32 NumPy weights of one block by DecodeBlock's names."""
    C, Q, KV, F, hs = opts.n_embd, opts.n_head * opts.head_dim, opts.n_kv_head * opts.head_dim, opts.d_ff, opts.head_dim

    def mat(n, k):
        return (rng.standard_normal((n, k)) * scale / math.sqrt(k)).astype(np.float32)

    def vec(n, mean=0.0):
        return (mean + 0.3 * rng.standard_normal(n)).astype(np.float32)

    w = {"norm1.weight": vec(C, 1.0), "norm2.weight": vec(C, 1.0), "o.weight": mat(C, Q), "up.weight": mat(F, C),
         "down.weight": mat(C, F)}
    q, k, v = mat(Q, C), mat(KV, C), mat(KV, C)
    if fused:
        w["qkv.weight"] = np.concatenate([q, k, v])
    else:
        w["q.weight"], w["k.weight"], w["v.weight"] = q, k, v
    if "qkv" in biases:
        bq, bk, bv = vec(Q), vec(KV), vec(KV)
        if fused:
            w["qkv.bias"] = np.concatenate([bq, bk, bv])
        else:
            w["q.bias"], w["k.bias"], w["v.bias"] = bq, bk, bv
    if "o" in biases:
        w["o.bias"] = vec(C)
    if opts.mlp == "swiglu":
        w["gate.weight"] = mat(F, C)
    if "mlp" in biases:
        w["up.bias"], w["down.bias"] = vec(F), vec(C)
        if opts.mlp == "swiglu":
            w["gate.bias"] = vec(F)
    if "norm" in biases:
        w["norm1.bias"], w["norm2.bias"] = vec(C), vec(C)
    if opts.qk_norm:
        w["q_norm.weight"], w["k_norm.weight"] = vec(hs, 1.0), vec(hs, 1.0)
    return w


# ------------------------------------------------------------------ the float64 reference
def norm_ref(x, w, b, kind, eps):
    if kind == "layernorm":
        x = x - x.mean(-1, keepdims=True)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    y = y * w if w is not None else y
    return y + b if b is not None else y


def rope_ref(x, pos0, inv_freq):
    """x (B, T, H, D) at positions pos0 .. pos0 + T - 1, rotate-half layout."""
    T, half = x.shape[1], x.shape[3] // 2
    ang = np.arange(pos0, pos0 + T)[:, None] * inv_freq.astype(np.float64)[None, :]     # (T, half)
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def block_ref(x, w, opts, inv_freq=None):
    """The block over a whole sequence x (B, T, C) (causal), float64 -> (B, T, C)."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    B, T, C = x.shape
    nh, nkv, hs = opts.n_head, opts.n_kv_head, opts.head_dim
    Q, KV = nh * hs, nkv * hs
    h = norm_ref(x, g["norm1.weight"], g.get("norm1.bias"), opts.norm, opts.norm_eps)
    if "qkv.weight" in g:
        wq, wk, wv = np.split(g["qkv.weight"], [Q, Q + KV])
        bq, bk, bv = np.split(g["qkv.bias"], [Q, Q + KV]) if "qkv.bias" in g else (0, 0, 0)
    else:
        wq, wk, wv = g["q.weight"], g["k.weight"], g["v.weight"]
        bq, bk, bv = (g.get(n, 0) for n in ("q.bias", "k.bias", "v.bias"))
    q = (h @ wq.T + bq).reshape(B, T, nh, hs)
    k = (h @ wk.T + bk).reshape(B, T, nkv, hs)
    v = (h @ wv.T + bv).reshape(B, T, nkv, hs)
    if opts.qk_norm:
        q = norm_ref(q, g["q_norm.weight"], None, "rmsnorm", opts.qk_norm_eps)
        k = norm_ref(k, g["k_norm.weight"], None, "rmsnorm", opts.qk_norm_eps)
    if opts.positions == "rotary":
        q, k = rope_ref(q, 0, inv_freq), rope_ref(k, 0, inv_freq)
    k, v = np.repeat(k, nh // nkv, axis=2), np.repeat(v, nh // nkv, axis=2)
    scale = opts.attn_scale if opts.attn_scale is not None else 1 / math.sqrt(hs)
    s = np.einsum("bthd,bshd->bhts", q, k) * scale
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = np.einsum("bhts,bshd->bthd", p, v).reshape(B, T, Q)
    x = x + y @ g["o.weight"].T + g.get("o.bias", 0)
    h = norm_ref(x, g["norm2.weight"], g.get("norm2.bias"), opts.norm, opts.norm_eps)
    up = h @ g["up.weight"].T + g.get("up.bias", 0)
    if opts.mlp == "swiglu":
        gate = h @ g["gate.weight"].T + g.get("gate.bias", 0)
        m = gate / (1 + np.exp(-gate)) * up
    else:
        m = 0.5 * up * (1 + np.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up ** 3)))
    return x + m @ g["down.weight"].T + g.get("down.bias", 0)


def run_steps(block, x_seq, opts, cos=None, sin=None):
    """The C block step at positions 0 .. T-1 on x_seq (B, T, C) float32 -> (B, T, C)."""
    B, T, C = x_seq.shape
    kc = minillm.zeros((T, B, opts.n_kv_head, opts.head_dim))
    vc = minillm.zeros((T, B, opts.n_kv_head, opts.head_dim))
    scratch = minillm.empty((block.scratch_floats(B, T),))
    out = []
    for t in range(T):
        x = minillm.from_numpy(x_seq[:, t].copy())       # the step writes into x
        _C.block_step(x, block, kc, vc, t, scratch, cos, sin)
        out.append(x.numpy().copy())
    return np.stack(out, axis=1)


def setup_case(name, rng, T):
    fields, fused, biases = CASES[name]
    opts = BlockOptions(**fields)
    w = make_weights(opts, fused, biases, rng)
    block = _C.DecodeBlock({k: minillm.from_numpy(v) for k, v in w.items()}, **opts.block_kwargs())
    inv_freq = cos = sin = None
    if opts.positions == "rotary":
        inv_freq = rope_inv_freq(opts.head_dim, opts.rope_theta, opts.rope_scaling)
        cos, sin = _C.rope_table(inv_freq, T + 3)
        inv_freq = inv_freq.numpy()
    return opts, w, block, inv_freq, cos, sin


# ------------------------------------------------------------------ the step against the reference
@pytest.mark.parametrize("isa", minillm.supported_isas())
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_block_step_matches_float64_reference_over_positions(name, batch, isa):
    rng = np.random.default_rng(len(name) * 10 + batch)
    T = 9
    opts, w, block, inv_freq, cos, sin = setup_case(name, rng, T)
    x_seq = rng.standard_normal((batch, T, opts.n_embd)).astype(np.float32)
    old = minillm.get_isa()
    minillm.set_isa(isa)
    try:
        got = run_steps(block, x_seq, opts, cos, sin)
    finally:
        minillm.set_isa(old)
    want = block_ref(x_seq.astype(np.float64), w, opts, inv_freq)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def pooled_block(seed):
    """(block, x_seq, opts, cos, sin): a block wide enough that every linear layer and the
    attention go to the decoding thread pool, and 6 positions of 2 rows to step it through."""
    fields = dict(n_embd=256, n_head=8, n_kv_head=2, d_ff=1024, norm="rmsnorm", mlp="swiglu",
                  positions="rotary")
    rng = np.random.default_rng(seed)
    opts = BlockOptions(**fields)
    w = make_weights(opts, False, ("qkv",), rng)
    block = _C.DecodeBlock({k: minillm.from_numpy(v) for k, v in w.items()}, **opts.block_kwargs())
    cos, sin = _C.rope_table(rope_inv_freq(opts.head_dim, opts.rope_theta), 8)
    x_seq = rng.standard_normal((2, 6, 256)).astype(np.float32)
    return block, x_seq, opts, cos, sin


def test_block_step_is_bitwise_the_same_on_one_and_two_threads():
    block, x_seq, opts, cos, sin = pooled_block(7)
    old = minillm.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            minillm.set_num_threads(n)
            outs.append(run_steps(block, x_seq, opts, cos, sin))
    finally:
        minillm.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_the_pool_times_both_ways_and_either_gives_the_same_bits():
    """The decoding pool runs a window of jobs on the caller alone early on (to measure it
    against the helpers) and keeps both measurements; holding it at the helpers, or at one
    thread, changes no bit of a step."""
    block, x_seq, opts, cos, sin = pooled_block(8)
    old = minillm.get_num_threads()
    outs = []
    try:
        minillm.set_num_threads(2)
        before = _C.decode_pool_stats()["windows"]
        for _ in range(40):                        # 6 steps of 4 products each, 40 times: many windows
            outs.append(run_steps(block, x_seq, opts, cos, sin))
        stats = _C.decode_pool_stats()
        assert stats["windows"] >= before + 10
        assert stats["helpers_ns"] > 0 and stats["alone_ns"] > 0
        _C.set_decode_pool_tuning(False)
        outs.append(run_steps(block, x_seq, opts, cos, sin))
        _C.set_decode_pool_tuning(True)
        minillm.set_num_threads(1)
        outs.append(run_steps(block, x_seq, opts, cos, sin))
    finally:
        _C.set_decode_pool_tuning(True)
        minillm.set_num_threads(old)
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_fused_and_separate_qkv_give_the_same_step():
    rng = np.random.default_rng(3)
    opts = BlockOptions(**CASES["qwen2_qkv_bias"][0])
    w = make_weights(opts, True, ("qkv",), rng)
    Q, KV = opts.n_head * opts.head_dim, opts.n_kv_head * opts.head_dim
    sep = {k: v for k, v in w.items() if not k.startswith("qkv")}
    for name, part_w, part_b in zip("qkv", np.split(w["qkv.weight"], [Q, Q + KV]), np.split(w["qkv.bias"], [Q, Q + KV])):
        sep[f"{name}.weight"], sep[f"{name}.bias"] = part_w.copy(), part_b.copy()
    cos, sin = _C.rope_table(rope_inv_freq(opts.head_dim, opts.rope_theta), 6)
    x_seq = rng.standard_normal((2, 5, opts.n_embd)).astype(np.float32)
    outs = [run_steps(_C.DecodeBlock({k: minillm.from_numpy(v) for k, v in ws.items()}, **opts.block_kwargs()),
                      x_seq, opts, cos, sin) for ws in (w, sep)]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("shape", [(1, 8, 2, 16, 12), (2, 6, 3, 20, 5), (3, 4, 4, 64, 40)])
def test_kv_attention_step_with_grouped_query_heads_matches_numpy(shape):
    B, nh, nkv, hs, pos = shape
    rng = np.random.default_rng(pos)
    kc = rng.standard_normal((pos + 2, B, nkv, hs)).astype(np.float32)
    vc = rng.standard_normal((pos + 2, B, nkv, hs)).astype(np.float32)
    qkv = rng.standard_normal((B, (nh + 2 * nkv) * hs)).astype(np.float32)
    y = _C.kv_attention_step(minillm.from_numpy(qkv), minillm.from_numpy(kc.copy()), minillm.from_numpy(vc.copy()),
                             pos).numpy()
    Q, KV = nh * hs, nkv * hs
    k, v = kc[:pos + 1].astype(np.float64), vc[:pos + 1].astype(np.float64)
    k[pos], v[pos] = qkv[:, Q:Q + KV].reshape(B, nkv, hs), qkv[:, Q + KV:].reshape(B, nkv, hs)
    k, v = np.repeat(k, nh // nkv, axis=2), np.repeat(v, nh // nkv, axis=2)
    s = np.einsum("bhd,tbhd->bht", qkv[:, :Q].reshape(B, nh, hs).astype(np.float64), k) / math.sqrt(hs)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(y, np.einsum("bht,tbhd->bhd", p, v).reshape(B, Q), atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------ rope table and frequencies
def test_rope_table_matches_numpy():
    f = rope_inv_freq(16, 10000.0)
    cos, sin = _C.rope_table(f, 300, 0.5)
    ang = np.arange(300)[:, None] * f.numpy().astype(np.float64)[None, :]
    np.testing.assert_allclose(cos.numpy(), 0.5 * np.cos(ang), atol=1e-7)
    np.testing.assert_allclose(sin.numpy(), 0.5 * np.sin(ang), atol=1e-7)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, LLAMA3,
                                     dict(LLAMA3, original_max_position_embeddings=8192, factor=32.0)])
def test_rope_inv_freq_matches_transformers(scaling):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, rope_theta=500000.0,
                                   rope_scaling=scaling, max_position_embeddings=16384)
    if scaling is None:
        want = 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64)
    else:
        want = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg)[0].numpy()
    np.testing.assert_allclose(rope_inv_freq(64, 500000.0, scaling).numpy(), want, rtol=3e-7)


def test_rope_inv_freq_refuses_unknown_scaling():
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        rope_inv_freq(64, 10000.0, {"rope_type": "yarn", "factor": 2.0})


# ------------------------------------------------------------------ the decode plan over a model
def model_ref(tokens, layers, opts, embed, head, norm_w, inv_freq):
    """Logits (B, T, V) of a whole model in float64 (rotary positions, RMSNorm)."""
    x = embed.astype(np.float64)[tokens]
    for w in layers:
        x = block_ref(x, w, opts, inv_freq)
    return norm_ref(x, norm_w.astype(np.float64), None, opts.norm, opts.norm_eps) @ head.astype(np.float64).T


@pytest.mark.parametrize("name", ["llama_gqa", "qwen3_qk_norm"])
def test_decoder_plan_logits_match_full_model_reference(name):
    rng = np.random.default_rng(11)
    fields, fused, biases = CASES[name]
    opts = BlockOptions(**fields)
    V, B, T = 50, 2, 7
    layers = [make_weights(opts, fused, biases, rng) for _ in range(2)]
    embed = rng.standard_normal((V, opts.n_embd)).astype(np.float32)
    head = (rng.standard_normal((V, opts.n_embd)) / math.sqrt(opts.n_embd)).astype(np.float32)   # untied
    norm_w = (1 + 0.2 * rng.standard_normal(opts.n_embd)).astype(np.float32)
    t = minillm.from_numpy
    plan = Decoder(opts, [{k: t(v) for k, v in w.items()} for w in layers], embed=t(embed), head=t(head),
                   norm_weight=t(norm_w), hugepages=False)
    cache = KVCache(2, B, opts.n_kv_head, opts.head_dim, capacity=2)     # small: it has to grow
    tokens = rng.integers(0, V, size=(B, T))
    want = model_ref(tokens, layers, opts, embed, head, norm_w,
                     rope_inv_freq(opts.head_dim, opts.rope_theta, opts.rope_scaling).numpy())
    for pos in range(T):
        got = plan.step(minillm.tensor(tokens[:, pos], dtype="int64"), cache).numpy()
        np.testing.assert_allclose(got, want[:, pos], atol=1e-4, rtol=1e-5, err_msg=f"position {pos}")
    assert cache.pos == T


# ------------------------------------------------------------------ argument checks
def small_block(**changes):
    rng = np.random.default_rng(0)
    opts = BlockOptions(**CASES["llama_gqa"][0])
    w = {k: minillm.from_numpy(v) for k, v in make_weights(opts, False, (), rng).items()}
    w.update(changes)
    return opts, w


def test_decode_block_rejects_bad_weights_and_options():
    opts, w = small_block(**{"k.weight": minillm.zeros((64, 64))})
    with pytest.raises(ValueError, match=r"k.weight must be a contiguous float32, bfloat16 or int8 matrix of shape "
                                         r"\(32, 64\), got float32 tensor of shape \(64, 64\)"):
        _C.DecodeBlock(w, **opts.block_kwargs())
    opts, w = small_block(**{"o_proj.weight": minillm.zeros((64, 64))})
    with pytest.raises(ValueError, match="unknown weight names"):
        _C.DecodeBlock(w, **opts.block_kwargs())
    opts, w = small_block()
    with pytest.raises(ValueError, match="n_kv_head 3 does not divide n_head 4"):
        _C.DecodeBlock(w, **dict(opts.block_kwargs(), n_kv_head=3))
    del w["gate.weight"]
    with pytest.raises(ValueError, match=r"missing \['gate.weight'\]"):
        _C.DecodeBlock(w, **opts.block_kwargs())
    opts, w = small_block(**{"norm1.bias": minillm.zeros((64,))})
    with pytest.raises(ValueError, match="RMSNorm has no bias"):
        _C.DecodeBlock(w, **opts.block_kwargs())
    opts, w = small_block(**{"qkv.weight": minillm.zeros((128, 64))})
    with pytest.raises(ValueError, match="either fused"):
        _C.DecodeBlock(w, **opts.block_kwargs())
    opts, w = small_block()
    with pytest.raises(ValueError, match="norm must be one of"):
        _C.DecodeBlock(w, **dict(opts.block_kwargs(), norm="batchnorm"))


def test_block_step_rejects_bad_shapes():
    opts, w = small_block()
    block = _C.DecodeBlock(w, **opts.block_kwargs())
    cos, sin = _C.rope_table(rope_inv_freq(opts.head_dim), 4)
    x = minillm.zeros((2, 64))
    kc, vc = minillm.zeros((4, 2, 2, 16)), minillm.zeros((4, 2, 2, 16))
    scratch = minillm.empty((block.scratch_floats(2, 4),))
    _C.block_step(x, block, kc, vc, 3, scratch, cos, sin)           # the good call
    with pytest.raises(ValueError, match=r"x must be contiguous \(B, 64\), got \(2, 32\)"):
        _C.block_step(minillm.zeros((2, 32)), block, kc, vc, 0, scratch, cos, sin)
    with pytest.raises(ValueError, match=r"caches must be contiguous \(S, 2, 2, 16\), got \(4, 2, 4, 16\)"):
        _C.block_step(x, block, minillm.zeros((4, 2, 4, 16)), minillm.zeros((4, 2, 4, 16)), 0, scratch, cos, sin)
    with pytest.raises(ValueError, match="position 4 is outside a cache of 4 rows"):
        _C.block_step(x, block, kc, vc, 4, scratch, cos, sin)
    with pytest.raises(ValueError, match="needs rope_cos and rope_sin"):
        _C.block_step(x, block, kc, vc, 0, scratch)
    with pytest.raises(ValueError, match=r"rope_cos, rope_sin must be contiguous \(P, 8\) with P > 3"):
        _C.block_step(x, block, kc, vc, 3, scratch, cos[:3], sin[:3])
    with pytest.raises(ValueError, match="scratch must be a contiguous float32 tensor of at least"):
        _C.block_step(x, block, kc, vc, 3, minillm.empty((10,)), cos, sin)
    with pytest.raises(TypeError, match="expected a float32 tensor"):
        _C.block_step(minillm.zeros((2, 64), dtype="int64"), block, kc, vc, 0, scratch, cos, sin)


def test_decode_head_and_final_step_check_shapes():
    with pytest.raises(ValueError, match=r"norm.weight must be a contiguous tensor of shape \(8,\), got shape \(9,\)"):
        _C.DecodeHead(minillm.ones((9,)), None, minillm.zeros((5, 8)))
    head = _C.DecodeHead(minillm.ones((8,)), minillm.zeros((8,)), minillm.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"x must be contiguous \(B, 8\), got \(1, 7\)"):
        _C.final_step(minillm.zeros((1, 7)), head, minillm.empty((1000,)))
    assert _C.final_step(minillm.ones((3, 8)), head, minillm.empty((1000,))).shape == (3, 5)
