"""Models: bigram, feed-forward LM and GPT learn, mask the future, match PyTorch's
gradients, keep the model contract (configs, presets, KV-cache hooks, state dicts)."""
import math

import numpy as np
import pytest

import minillm
from minillm import _C
from minillm import functional as F
from minillm.autograd import no_grad
from minillm.models import (GPT, PRESETS, Bigram, GPTConfig, MLPLM, build_model, config_from_dict,
                            model_from_config)

TINY_GPT = dict(model_type="gpt", vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)


def ids(array):
    return minillm.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def random_batch(rng, B, T, V):
    return ids(rng.integers(0, V, (B, T)))


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("config, lr, steps", [
    (dict(model_type="bigram", vocab_size=16, block_size=8), 1.0, 150),
    (dict(model_type="mlp", vocab_size=16, block_size=8, context=3, n_embd=8, n_hidden=64), 3e-2, 150),
    (TINY_GPT, 1e-2, 150),
])
def test_each_model_overfits_a_tiny_batch(config, lr, steps):
    minillm.manual_seed(1)
    rng = np.random.default_rng(0)
    V = config["vocab_size"]
    idx = rng.integers(0, V, (2, 8))
    if config["model_type"] == "bigram":
        # a bigram can only learn a function of the current token
        targets = (idx * 5 + 3) % V
    else:
        targets = rng.integers(0, V, (2, 8))
    model = model_from_config(config)
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=lr)
    first = None
    for _ in range(steps):
        _, loss = model(ids(idx), ids(targets))
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.8 * math.log(V), f"the first loss {first} should be near ln V = {math.log(V):.2f}"
    assert float(loss) < 0.05, f"{config['model_type']} did not overfit: loss {float(loss)}"


# ---------------------------------------------------------------- causality
@pytest.mark.parametrize("model_type", ["mlp", "gpt"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(model_type):
    minillm.manual_seed(2)
    config = dict(TINY_GPT) if model_type == "gpt" else dict(model_type="mlp", vocab_size=32, block_size=16,
                                                             context=4, n_embd=8, n_hidden=32)
    model = model_from_config(config).eval()
    rng = np.random.default_rng(3)
    a = rng.integers(0, 32, (2, 12))
    t = 7
    b = a.copy()
    b[:, t] = (a[:, t] + 1) % 32
    targets = ids(np.zeros((2, 12)))
    with no_grad():
        la = model(ids(a), targets)[0].numpy().copy()
        lb = model(ids(b), targets)[0].numpy().copy()
    # bitwise: the earlier rows must not even see rounding from the changed token
    np.testing.assert_array_equal(la[:, :t], lb[:, :t])
    assert np.abs(la[:, t] - lb[:, t]).max() > 1e-4, "the changed position's own logits should change"


def test_gpt_inference_logits_are_the_last_position_of_the_full_logits():
    minillm.manual_seed(4)
    model = model_from_config(TINY_GPT).eval()
    idx = random_batch(np.random.default_rng(5), 3, 10, 32)
    with no_grad():
        full, loss = model(idx, ids(np.zeros((3, 10))))
        last, none = model(idx)
    assert none is None and loss is not None
    assert last.shape == (3, 1, 32)
    np.testing.assert_allclose(last.numpy()[:, 0], full.numpy()[:, -1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- PyTorch reference
def torch_gpt_loss(torch, sd, cfg, idx, targets):
    """nanoGPT's forward written with torch ops over the weights `sd` (name -> torch tensor)."""
    Fn = torch.nn.functional
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = Fn.layer_norm(x, (C,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = Fn.linear(h, sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (z.view(B, T, nh, C // nh).transpose(1, 2) for z in (q, k, v))
        y = Fn.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + Fn.linear(y, sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"])
        h = Fn.layer_norm(x, (C,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = Fn.gelu(Fn.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + Fn.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    x = Fn.layer_norm(x, (C,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    logits = x @ sd["transformer.wte.weight"].T
    return logits, Fn.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def test_gpt_loss_and_gradients_match_pytorch_for_identical_weights():
    torch = pytest.importorskip("torch")
    minillm.manual_seed(6)
    cfg = GPTConfig(vocab_size=48, block_size=16, n_layer=2, n_head=4, n_embd=32)
    model = GPT(cfg)
    # LayerNorm gains/biases and biases start at 1/0: perturb them so their gradients are tested too
    rng = np.random.default_rng(7)
    with no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.numpy()[:] += rng.normal(0, 0.1, p.shape).astype(np.float32)
    idx = rng.integers(0, 48, (3, 12))
    targets = rng.integers(0, 48, (3, 12))
    logits, loss = model(ids(idx), ids(targets))
    loss.backward()

    sd = {k: torch.tensor(v.numpy().astype(np.float64), requires_grad=True)
          for k, v in model.state_dict().items()}
    t_logits, t_loss = torch_gpt_loss(torch, sd, cfg, torch.tensor(idx), torch.tensor(targets))
    t_loss.backward()
    # float32 against a float64 reference
    np.testing.assert_allclose(logits.numpy(), t_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert abs(float(loss) - t_loss.item()) < 1e-5
    params = dict(model.named_parameters())
    for name, t in sd.items():
        g = params[name].grad.numpy()
        ref = t.grad.numpy()
        scale = np.abs(ref).max()
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-4 * scale + 1e-7, err_msg=name)


# ---------------------------------------------------------------- state dicts
def test_loading_a_state_dict_from_another_config_names_the_tensor_and_shapes():
    small = model_from_config(TINY_GPT)
    wide = model_from_config(dict(TINY_GPT, n_embd=64))
    with pytest.raises(ValueError) as err:
        wide.load_state_dict(small.state_dict())
    msg = str(err.value)
    assert "transformer.wte.weight" in msg and "(32, 32)" in msg and "(32, 64)" in msg
    deeper = model_from_config(dict(TINY_GPT, n_layer=3))
    with pytest.raises(KeyError, match="transformer.h.2.ln_1.weight"):
        deeper.load_state_dict(small.state_dict())


def test_state_dict_round_trip_gives_the_same_logits():
    minillm.manual_seed(8)
    a = model_from_config(TINY_GPT).eval()
    minillm.manual_seed(9)
    b = model_from_config(TINY_GPT).eval()
    idx = random_batch(np.random.default_rng(10), 2, 6, 32)
    b.load_state_dict({k: v.numpy().copy() for k, v in a.state_dict().items()})
    with no_grad():
        np.testing.assert_array_equal(a(idx)[0].numpy(), b(idx)[0].numpy())


def test_tied_lm_head_is_the_token_embedding_and_is_listed_once():
    model = model_from_config(TINY_GPT)
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    assert "lm_head.weight" not in model.state_dict()
    untied = model_from_config(dict(TINY_GPT, tie_weights=False))
    assert untied.num_params() == model.num_params() + 32 * 32


# ---------------------------------------------------------------- config, presets, init
def test_num_params_matches_the_gpt2_formula():
    c = GPTConfig(vocab_size=100, block_size=20, n_layer=3, n_head=2, n_embd=16)
    C, L = c.n_embd, c.n_layer
    per_block = (2 * C) + (3 * C * C + 3 * C) + (C * C + C) + (2 * C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    expected = c.vocab_size * C + c.block_size * C + L * per_block + 2 * C
    model = GPT(c)
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - c.block_size * C
    # 6 N per token for the weight GEMMs, 12 L T C for attention (PaLM's count)
    assert model.estimate_flops_per_token(10) == 6 * (expected - c.block_size * C) + 12 * L * 10 * C


def test_gpt2_small_preset_has_124m_parameters():
    # counted from the config: the weights themselves are not needed
    c = config_from_dict(PRESETS["gpt2-small"])
    C, L, V = c.n_embd, c.n_layer, c.vocab_size
    per_block = 12 * C * C + 13 * C
    assert V * C + c.block_size * C + L * per_block + 2 * C == 124_439_808
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (12, 12, 768, 1024)


def test_presets_have_the_documented_shapes_and_build():
    tiny = config_from_dict(PRESETS["gpt-tiny"])
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size) == (2, 2, 64, 64)
    mini = config_from_dict(PRESETS["gpt-mini"])
    assert (mini.n_layer, mini.n_head, mini.n_embd) == (4, 4, 256) and mini.block_size in (128, 256)
    assert isinstance(build_model("bigram", vocab_size=20), Bigram)
    assert isinstance(build_model("mlp", vocab_size=20), MLPLM)
    model = build_model("gpt-tiny", vocab_size=20, dropout=0.1)
    assert model.config.vocab_size == 20 and model.config.dropout == 0.1
    assert model.supports_kv_cache and not Bigram(dict(model_type="bigram")).supports_kv_cache


@pytest.mark.parametrize("preset", ["bigram", "mlp", "gpt-tiny"])
def test_config_dict_round_trip_rebuilds_the_same_model(preset):
    model = build_model(preset, vocab_size=40)
    d = model.config.to_dict()
    assert d["model_type"] == PRESETS[preset]["model_type"]
    again = model_from_config(d)
    assert again.config == model.config
    assert [(n, p.shape) for n, p in again.named_parameters()] == \
        [(n, p.shape) for n, p in model.named_parameters()]


def test_bad_configs_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown model preset 'gpt-huge'"):
        build_model("gpt-huge")
    with pytest.raises(ValueError, match="model_type 'rnn'"):
        model_from_config(dict(model_type="rnn"))
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown config keys \\['n_lyer'\\]"):
        model_from_config(dict(TINY_GPT, n_lyer=3))
    model = model_from_config(TINY_GPT)
    with pytest.raises(ValueError, match=r"expected \(B, T\) token ids, got shape \(2, 3, 4\)"):
        model(ids(np.zeros((2, 3, 4))))
    with pytest.raises(TypeError, match="int64 token ids, got float32"):
        model(minillm.zeros((2, 3)))
    with pytest.raises(ValueError, match="longer than block_size 16"):
        model(ids(np.zeros((1, 17))))
    with pytest.raises(ValueError, match=r"target ids, got \(2, 5\)"):
        model(ids(np.zeros((2, 4))), ids(np.zeros((2, 5))))
    with pytest.raises(IndexError):
        model(ids(np.full((1, 4), 32)))


def test_gpt2_init_scales_the_residual_projections():
    minillm.manual_seed(11)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=8, n_head=4, n_embd=128))
    params = dict(model.named_parameters())
    fc = params["transformer.h.3.mlp.c_fc.weight"].numpy()
    proj = params["transformer.h.3.mlp.c_proj.weight"].numpy()
    attn_proj = params["transformer.h.0.attn.c_proj.weight"].numpy()
    wte = params["transformer.wte.weight"].numpy()
    # std of 65k+ draws: within a few percent
    assert abs(fc.std() - 0.02) < 0.001 and abs(wte.std() - 0.02) < 0.001
    resid = 0.02 / math.sqrt(2 * 8)
    assert abs(proj.std() - resid) < 0.05 * resid and abs(attn_proj.std() - resid) < 0.05 * resid
    assert not params["transformer.h.0.attn.c_attn.bias"].numpy().any()
    assert (params["transformer.h.1.ln_2.weight"].numpy() == 1).all()


def test_configure_optimizers_decays_matrices_only():
    model = model_from_config(TINY_GPT)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    assert decay["betas"] == (0.9, 0.95) and decay["lr"] == 1e-3


# ---------------------------------------------------------------- KV cache hooks, checkpointing, dropout
class _ListLayerCache:
    """The contract's per-layer cache, over plain concatenation (test double)."""

    def __init__(self):
        self.k = self.v = None

    def update(self, k, v):
        self.k = k.contiguous() if self.k is None else _C.cat([self.k, k], 2)
        self.v = v.contiguous() if self.v is None else _C.cat([self.v, v], 2)
        return self.k, self.v


class _ListCache:
    def __init__(self, n_layer):
        self.layers = [_ListLayerCache() for _ in range(n_layer)]
        self.pos = 0

    def advance(self, n):
        self.pos += n


def test_gpt_with_kv_cache_matches_full_recompute():
    minillm.manual_seed(12)
    model = model_from_config(TINY_GPT).eval()
    seq = np.random.default_rng(13).integers(0, 32, (2, 9))
    cache = _ListCache(2)
    with no_grad():
        full = model(ids(seq), ids(np.zeros((2, 9))))[0].numpy()
        first, _ = model(ids(seq[:, :5]), kv_cache=cache)          # a prompt of 5
        assert cache.pos == 5 and cache.layers[0].k.shape == (2, 2, 5, 16)
        np.testing.assert_allclose(first.numpy()[:, 0], full[:, 4], rtol=1e-4, atol=1e-5)
        for t in range(5, 9):                                      # then one token at a time
            step, _ = model(ids(seq[:, t:t + 1]), kv_cache=cache)
            np.testing.assert_allclose(step.numpy()[:, 0], full[:, t], rtol=1e-4, atol=1e-5)
    assert cache.pos == 9


def test_activation_checkpointing_gives_the_same_gradients():
    rng = np.random.default_rng(14)
    idx, targets = random_batch(rng, 2, 8, 32), random_batch(rng, 2, 8, 32)
    grads = []
    for ckpt in (False, True):
        minillm.manual_seed(15)
        model = model_from_config(dict(TINY_GPT, checkpoint_activations=ckpt))
        _, loss = model(idx, targets)
        loss.backward()
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_fused_lm_head_returns_no_logits_and_checkpointing_alone_keeps_them():
    # training + fused_lm_head + targets: F.linear_cross_entropy, logits None, the same loss;
    # eval mode (or no targets) still gives the logits; checkpoint_activations alone keeps them
    rng = np.random.default_rng(18)
    idx, targets = random_batch(rng, 2, 8, 32), random_batch(rng, 2, 8, 32)
    minillm.manual_seed(19)
    plain = model_from_config(TINY_GPT)
    minillm.manual_seed(19)
    fused = model_from_config(dict(TINY_GPT, fused_lm_head=True))
    minillm.manual_seed(19)
    ckpt = model_from_config(dict(TINY_GPT, checkpoint_activations=True))
    logits, loss = plain(idx, targets)
    none, fused_loss = fused(idx, targets)
    assert none is None
    assert abs(float(fused_loss) - float(loss)) <= 1e-6 * abs(float(loss))
    ckpt_logits, ckpt_loss = ckpt(idx, targets)
    np.testing.assert_allclose(ckpt_logits.numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
    assert abs(float(ckpt_loss) - float(loss)) <= 1e-6 * abs(float(loss))
    fused.eval()
    eval_logits, eval_loss = fused(idx, targets)
    np.testing.assert_allclose(eval_logits.numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
    assert abs(float(eval_loss) - float(loss)) <= 1e-6 * abs(float(loss))


def test_dropout_is_active_in_training_and_off_in_eval():
    minillm.manual_seed(16)
    model = model_from_config(dict(TINY_GPT, dropout=0.2))
    idx, targets = random_batch(np.random.default_rng(17), 2, 8, 32), ids(np.zeros((2, 8)))
    with no_grad():
        a = model(idx, targets)[0].numpy().copy()
        b = model(idx, targets)[0].numpy().copy()
        model.eval()
        c = model(idx, targets)[0].numpy().copy()
        d = model(idx, targets)[0].numpy().copy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(c, d)


def test_language_model_interface_defaults_and_gpt_cache_shape():
    from minillm.models import LanguageModel
    from minillm.tokenizers import BPETokenizer
    gpt = model_from_config(TINY_GPT)
    bigram = Bigram(dict(model_type="bigram"))
    assert isinstance(gpt, LanguageModel) and isinstance(bigram, LanguageModel)
    c = gpt.config
    assert gpt.kv_cache_shape() == (c.n_layer, c.n_head, c.n_embd // c.n_head)
    assert bigram.kv_cache_shape() is None and bigram.decoder() is None and bigram.tokenizer is None
    assert bigram.generation_defaults()["stop_tokens"] == ()
    bigram.tokenizer = BPETokenizer().train("ab ab ab", 258)      # 256 bytes, 1 merge, <|endoftext|>
    assert bigram.generation_defaults()["stop_tokens"] == (257,)


def test_training_attention_path_matches_the_generic_path_in_value_and_gradient():
    # the training path (fused, from qkv) and the dropout / KV-cache path (head views and
    # scaled_dot_product_attention) must compute the same attention
    rng = np.random.default_rng(18)
    x = rng.normal(0, 1, (2, 7, 16)).astype(np.float32)
    dy = rng.normal(0, 1, (2, 7, 16)).astype(np.float32)
    minillm.manual_seed(20)
    attn = model_from_config(dict(TINY_GPT, n_embd=16, n_head=4, dropout=0.5)).transformer.h[0].attn
    attn.resid_dropout.p = 0.0
    results = []
    for generic in (False, True):
        # dropout 0.5 only routes the forward to the generic path; the attention itself has p = 0
        attn.dropout = 1e-30 if generic else 0.0
        xt = minillm.from_numpy(x.copy())
        xt.requires_grad = True
        attn.zero_grad()
        y = attn(xt)
        y.backward(minillm.from_numpy(dy))
        results.append((y.numpy().copy(), xt.grad.numpy().copy(), attn.c_attn.weight.grad.numpy().copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
