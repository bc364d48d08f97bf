"""The GPT's recipe options (RMSNorm, rotary positions, ReLU^2 / SwiGLU MLPs, QK-norm, an untied
head, zero-initialised projections, logit soft-cap): the forward and its gradients against a
GPT written here in torch from the same weights, the decode plan against the forward, and the
options' checks."""
import math

import numpy as np
import pytest

import minillm
from minillm import functional as F
from minillm.autograd import no_grad
from minillm.generate import KVCache
from minillm.models import GPT, GPTConfig, build_model

torch = pytest.importorskip("torch", reason="torch is the reference of the recipe's forward")

# (norm, positions, mlp, qk_norm, tie_weights, logit_softcap, bias)
CASES = [
    ("rmsnorm", "rotary", "relu2", True, False, 15.0, False),
    ("layernorm", "rotary", "swiglu", False, True, 0.0, True),
    ("rmsnorm", "learned", "gelu", True, True, 30.0, False),
    ("layernorm", "learned", "relu2", False, False, 0.0, True),
    ("rmsnorm", "rotary", "swiglu", True, False, 10.0, False),
]
IDS = ["-".join(str(v) for v in c) for c in CASES]


def make(case, seed=0, **extra):
    norm, positions, mlp, qk_norm, tie, cap, bias = case
    cfg = GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=16, d_ff=40, norm=norm,
                    positions=positions, mlp=mlp, qk_norm=qk_norm, tie_weights=tie, logit_softcap=cap, bias=bias,
                    **extra)
    model = GPT(cfg)
    rng = np.random.default_rng(seed)
    with no_grad():   # weights away from the init's 1s and 0s, so every gain and bias matters
        for _, p in model.named_parameters():
            p[...] = minillm.tensor((rng.standard_normal(p.shape) * 0.3).astype(np.float32))
    return model


def torch_gpt(model, idx):
    """Logits of `model` (ours) computed in torch from its weights: the reference, written from
    the definitions (pre-norm blocks, rotate-half rotary, causal softmax attention)."""
    cfg = model.config
    w = {n: torch.tensor(np.array(p.detach().numpy()), requires_grad=True) for n, p in model.named_parameters()}
    C, nh, hs = cfg.n_embd, cfg.n_head, cfg.n_embd // cfg.n_head
    B, T = idx.shape
    ids = torch.tensor(idx)

    def norm(x, prefix, eps=1e-5):
        if cfg.norm == "rmsnorm":
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w[prefix + ".weight"]
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), w[prefix + ".weight"], w.get(prefix + ".bias"), eps)

    def lin(x, prefix):
        return torch.nn.functional.linear(x, w[prefix + ".weight"], w.get(prefix + ".bias"))

    def rotate(t):                                        # (B, T, nh, hs)
        inv = cfg.rope_theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]          # (T, hs/2)
        cos, sin = torch.cos(ang).float()[None, :, None], torch.sin(ang).float()[None, :, None]
        a, b = t[..., :hs // 2], t[..., hs // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    x = w["transformer.wte.weight"][ids]
    if cfg.positions == "learned":
        x = x + w["transformer.wpe.weight"][:T]
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = norm(x, p + "ln_1")
        q, k, v = lin(h, p + "attn.c_attn").view(B, T, 3, nh, hs).unbind(2)
        if cfg.qk_norm:
            q = q * torch.rsqrt((q * q).mean(-1, keepdim=True) + 1e-5) * w[p + "attn.q_norm.weight"]
            k = k * torch.rsqrt((k * k).mean(-1, keepdim=True) + 1e-5) * w[p + "attn.k_norm.weight"]
        if cfg.positions == "rotary":
            q, k = rotate(q), rotate(k)
        y = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             is_causal=True)
        x = x + lin(y.transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        h = norm(x, p + "ln_2")
        if cfg.mlp == "gelu":
            m = torch.nn.functional.gelu(lin(h, p + "mlp.c_fc"), approximate="tanh")
        elif cfg.mlp == "relu2":
            m = torch.relu(lin(h, p + "mlp.c_fc")) ** 2
        else:
            m = torch.nn.functional.silu(lin(h, p + "mlp.c_gate")) * lin(h, p + "mlp.c_fc")
        x = x + lin(m, p + "mlp.c_proj")
    x = norm(x, "transformer.ln_f")
    head = w["transformer.wte.weight"] if cfg.tie_weights else w["lm_head.weight"]
    logits = x @ head.T
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits, w


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_match_torch(case):
    model = make(case)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 97, (2, 19))
    targets = rng.integers(0, 97, (2, 19))
    logits, loss = model(minillm.tensor(idx, dtype="int64"), minillm.tensor(targets, dtype="int64"))
    loss.backward()
    ref, w = torch_gpt(model, idx)
    ref_loss = torch.nn.functional.cross_entropy(ref.reshape(-1, 97), torch.tensor(targets).reshape(-1))
    ref_loss.backward()
    np.testing.assert_allclose(logits.numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    assert abs(loss.item() - ref_loss.item()) < 1e-4
    for name, p in model.named_parameters():
        g = w[name].grad
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=2e-3, atol=2e-5 * float(g.abs().max()) + 1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_activation_checkpointing_gives_the_same_gradients(case):
    rng = np.random.default_rng(2)
    idx = minillm.tensor(rng.integers(0, 97, (2, 12)), dtype="int64")
    grads = []
    for ckpt in (False, True):
        model = make(case, checkpoint_activations=ckpt)
        model(idx, idx)[1].backward()
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("weights", ["float32", "bf16", "int8"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_decode_plan_matches_the_forward(case, weights):
    """The one C decoder step, configured from the options, gives the forward's logits position
    by position (int8 and bf16 weights: within their rounding)."""
    model = make(case)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 97, (2, 15))
    with no_grad():
        full, _ = model(minillm.tensor(idx, dtype="int64"), minillm.tensor(idx, dtype="int64"))
    plan = model.decoder(hugepages=False, weights=weights)
    cache = KVCache.for_model(model, 2)
    tol = {"float32": 1e-4, "bf16": 0.03, "int8": 0.06}[weights]
    for t in range(idx.shape[1]):
        step = plan.step(minillm.tensor(idx[:, t], dtype="int64"), cache).numpy()
        want = full.numpy()[:, t]
        assert np.max(np.abs(step - want)) <= tol * max(1.0, np.max(np.abs(want))), (t, np.max(np.abs(step - want)))


def test_kv_cache_forward_matches_full_forward_with_rotary():
    model = make(CASES[0])
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 97, (1, 10))
    with no_grad():
        full, _ = model(minillm.tensor(idx, dtype="int64"), minillm.tensor(idx, dtype="int64"))
        cache = KVCache.for_model(model, 1)
        model(minillm.tensor(idx[:, :6], dtype="int64"), kv_cache=cache)
        last, _ = model(minillm.tensor(idx[:, 6:], dtype="int64"), kv_cache=cache)
    np.testing.assert_allclose(last.numpy()[:, 0], full.numpy()[:, -1], rtol=1e-4, atol=1e-4)


def test_zero_init_proj_and_untied_head_start_at_zero():
    m = build_model("gpt-tiny", zero_init_proj=True, tie_weights=False)
    for name, p in m.named_parameters():
        if name.endswith("c_proj.weight") or name == "lm_head.weight":
            assert not np.any(p.numpy()), name
    assert np.any(m.transformer.h[0].mlp.c_fc.weight.numpy())
    # a tied head is the embedding: never zeroed
    tied = build_model("gpt-tiny", zero_init_proj=True)
    assert np.any(tied.lm_head.weight.numpy())


def test_softcap_bounds_the_logits():
    x = minillm.tensor(np.linspace(-100, 100, 11, dtype=np.float32), requires_grad=True)
    y = F.softcap(x, 5.0)
    assert np.all(np.abs(y.numpy()) <= 5.0)
    np.testing.assert_allclose(y.numpy(), 5.0 * np.tanh(x.numpy() / 5.0), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 1 - np.tanh(x.numpy() / 5.0) ** 2, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cap must be > 0"):
        F.softcap(x, 0.0)


def test_relu_squared_matches_its_definition():
    a = np.array([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=np.float32)
    x = minillm.tensor(a, requires_grad=True)
    y = F.relu_squared(x)
    np.testing.assert_allclose(y.numpy(), np.maximum(a, 0) ** 2)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.maximum(a, 0))


@pytest.mark.parametrize("bad, match", [
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(positions="alibi"), "positions must be one of"),
    (dict(mlp="geglu"), "mlp must be one of"),
    (dict(d_ff=0), "d_ff must be a positive int"),
    (dict(logit_softcap=-1.0), "logit_softcap must be"),
    (dict(logit_softcap=float("nan")), "logit_softcap must be"),
    (dict(rope_theta=0.0), "rope_theta must be"),
    (dict(logit_softcap=30.0, fused_lm_head=True), "do not combine"),
    (dict(positions="rotary", n_embd=6, n_head=2), "even head size"),
])
def test_bad_options_are_named(bad, match):
    opts = dict(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8)
    opts.update(bad)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**opts)


def test_gpt2_layout_refuses_the_recipe_options(tmp_path):
    model = build_model("gpt-tiny", positions="rotary")
    with pytest.raises(ValueError, match="positions='rotary'"):
        model.save_pretrained(str(tmp_path / "out"))


def test_recipe_model_round_trips_through_its_config():
    model = make(CASES[0])
    again = GPT(GPTConfig.from_dict(model.config.to_dict()))
    assert again.config == model.config
    assert sorted(n for n, _ in again.named_parameters()) == sorted(n for n, _ in model.named_parameters())
    assert "transformer.wpe.weight" not in dict(model.named_parameters())
    assert math.isclose(model.estimate_flops_per_token(), again.estimate_flops_per_token())
