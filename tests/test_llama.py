"""The Llama family (minillm/models/llama.py) against transformers: for each architecture
(Llama, Qwen2, Qwen3, Mistral) with grouped-query heads, tied and untied embeddings, q/k/v
biases, QK-norm and llama3 rope scaling, a small random model built with transformers' own
classes and saved with save_pretrained (no downloads) loads with logits within 1e-4, greedy
continuations equal to transformers' generate, bf16 weights within a stated tolerance;
sharded, fp16 and bf16 folders load; save_pretrained round-trips through transformers;
gradients match torch; a tiny Llama trains and resumes through the trainer."""
import json
import os

import numpy as np
import pytest

import minillm
from minillm import models
from minillm.autograd import no_grad
from minillm.generate import KVCache, generate
from minillm.models.llama import Llama, LlamaConfig, config_from_hf, load_pretrained, save_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=131, max_position_embeddings=128, rms_norm_eps=1e-5)
# name -> (HF family, config fields beyond BASE)
CASES = {
    "llama_gqa_untied": ("llama", dict(tie_word_embeddings=False)),
    "llama_tied_llama3_rope": ("llama", dict(tie_word_embeddings=True, rope_scaling=LLAMA3, rope_theta=500000.0,
                                             num_key_value_heads=1)),
    "llama_attention_bias_linear_rope": ("llama", dict(attention_bias=True, num_key_value_heads=4,
                                                       rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "qwen2_qkv_bias": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3_qk_norm": ("qwen3", dict(head_dim=24, tie_word_embeddings=True, rope_theta=1e6)),
    "mistral_window": ("mistral", dict(sliding_window=64)),
}
HF = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


def hf_model(family, fields, seed=0):
    """A transformers model of `family` at BASE size, norm weights and biases randomised too
    (so that a wrongly loaded one shows)."""
    torch.manual_seed(seed)
    cfg_cls, model_cls = (getattr(transformers, n) for n in HF[family])
    m = model_cls(cfg_cls(**dict(BASE, **fields))).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return m


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    family, fields = CASES[request.param]
    m = hf_model(family, fields)
    folder = str(tmp_path_factory.mktemp(request.param))
    m.save_pretrained(folder)
    return request.param, m, folder


def prompt(seed=1, T=12, B=1):
    return np.random.default_rng(seed).integers(0, BASE["vocab_size"], (B, T))


def ours_logits(model, ids):
    idx = minillm.tensor(ids.tolist(), dtype="int64")
    with no_grad():
        logits, _ = model(idx, targets=idx)
    return np.array(logits)


def hf_logits(m, ids):
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.numpy()


# ---------------------------------------------------------------------- forward
def test_config_maps_every_field(case):
    name, m, folder = case
    model = load_pretrained(folder)
    c, h = model.config, m.config
    assert (c.n_embd, c.n_layer, c.n_head, c.n_kv_head, c.d_ff, c.vocab_size) == (
        h.hidden_size, h.num_hidden_layers, h.num_attention_heads, h.num_key_value_heads, h.intermediate_size,
        h.vocab_size)
    assert c.architecture == type(m).__name__
    assert c.tie_weights == bool(h.tie_word_embeddings)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == c.tie_weights
    assert c.qk_norm == name.startswith("qwen3")
    assert c.sliding_window == (64 if name.startswith("mistral") else None)


def test_logits_match_transformers_in_float32(case):
    _, m, folder = case
    model = load_pretrained(folder)
    ids = prompt(B=2, T=20)
    np.testing.assert_allclose(ours_logits(model, ids), hf_logits(m, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_30_greedy_tokens_equal_transformers_generate(case, fast):
    _, m, folder = case
    model = load_pretrained(folder)
    ids = prompt(seed=2, T=7)
    with torch.no_grad():
        ref = m.generate(torch.tensor(ids), max_new_tokens=30, do_sample=False, min_new_tokens=30,
                         eos_token_id=None, pad_token_id=0)
    got = generate(model, ids.tolist(), 30, greedy=True, fast=fast).numpy()
    assert got[0].tolist() == ref[0].tolist()


def test_decoder_is_the_c_decode_step_with_a_kv_head_cache(case):
    _, m, folder = case
    model = load_pretrained(folder)
    assert model.kv_cache_shape() == (model.config.n_layer, model.config.n_kv_head, model.config.head_dim)
    plan = model.decoder(hugepages=False)
    assert plan is not None and len(plan.blocks) == model.config.n_layer
    assert plan.options.qk_norm == model.config.qk_norm and plan.options.n_kv_head == model.config.n_kv_head


# bf16 weights: each Linear/embedding weight rounded to bfloat16 (relative error <= 2^-9) and
# activations rounded to bf16 in the bf16 GEMM; on these models the logits stay within 1% of
# the largest float32 logit (measured: 0.24% to 0.37%)
BF16_TOL = 0.01


def test_bfloat16_weights_stay_within_tolerance(case):
    _, m, folder = case
    model = load_pretrained(folder, dtype="bfloat16")
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == "bfloat16"
    assert model.model.embed_tokens.weight.dtype == "bfloat16"
    ids = prompt(B=2, T=16)
    ref = hf_logits(m, ids)
    got = ours_logits(model, ids)
    assert np.abs(got - ref).max() <= BF16_TOL * np.abs(ref).max()
    # the decode plan streams the bf16 weights in place (float32 activations)
    plan = model.decoder(hugepages=False)
    assert plan.blocks[0].weights["q.weight"] is not None and plan.head.head_weight.dtype == "bfloat16"
    cache = KVCache.for_model(model, 1, capacity=16)
    steps = np.array([plan.step(minillm.tensor([t], dtype="int64"), cache).numpy()[0] for t in ids[0]])
    assert np.abs(steps - ref[0]).max() <= BF16_TOL * np.abs(ref).max()
    out = generate(model, ids[:1].tolist(), 5, greedy=True).numpy()
    assert out.shape == (1, 21)


# ---------------------------------------------------------------------- folders
@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
def test_half_precision_and_sharded_folders_load(tmp_path, stored):
    m = hf_model("qwen2", dict(tie_word_embeddings=False))
    m = m.to(getattr(torch, stored))
    m.save_pretrained(str(tmp_path), max_shard_size="40KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    model = load_pretrained(str(tmp_path))
    ids = prompt(T=10)
    ref = hf_logits(m.to(torch.float32), ids)       # the same rounded weights, in float32
    np.testing.assert_allclose(ours_logits(model, ids), ref, atol=1e-4, rtol=0)


def test_save_pretrained_round_trips_through_transformers(case, tmp_path):
    name, m, folder = case
    model = load_pretrained(folder)
    save_pretrained(model, str(tmp_path / "one"))
    model.save_pretrained(str(tmp_path / "shards"), max_shard_bytes=60_000)
    assert os.path.exists(tmp_path / "shards" / "model.safetensors.index.json")
    ids = prompt(T=9)
    for sub in ("one", "shards"):
        back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / sub)).eval()
        np.testing.assert_allclose(hf_logits(back, ids), hf_logits(m, ids), atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours_logits(load_pretrained(str(tmp_path / sub)), ids), hf_logits(m, ids),
                                   atol=1e-4, rtol=0)


def test_models_load_pretrained_picks_the_family_from_config(case):
    _, _, folder = case
    model = models.load_pretrained(folder, dtype="bf16")
    assert isinstance(model, Llama) and model.config.dtype == "bfloat16"


def edit_config(folder, tmp_path, **changes):
    import shutil
    dst = tmp_path / "edited"
    shutil.copytree(folder, dst)
    with open(dst / "config.json") as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(dst / "config.json", "w") as f:
        json.dump(cfg, f)
    return str(dst)


def test_unsupported_architecture_is_named_with_the_supported_ones(case, tmp_path):
    _, _, folder = case
    bad = edit_config(folder, tmp_path, architectures=["PhiForCausalLM"])
    with pytest.raises(ValueError, match=r"PhiForCausalLM.*LlamaForCausalLM.*MistralForCausalLM.*Qwen2ForCausalLM"):
        load_pretrained(bad)


def test_qwen2_window_applies_only_with_use_sliding_window():
    hf = dict(BASE, architectures=["Qwen2ForCausalLM"], sliding_window=32, use_sliding_window=False)
    assert config_from_hf(hf).sliding_window is None
    assert config_from_hf(dict(hf, use_sliding_window=True)).sliding_window == 32
    assert config_from_hf(dict(hf, architectures=["MistralForCausalLM"], use_sliding_window=None)).context == 32


def test_generation_config_gives_the_defaults(case, tmp_path):
    _, _, folder = case
    bad = edit_config(folder, tmp_path, eos_token_id=7)
    with open(os.path.join(bad, "generation_config.json"), "w") as f:
        json.dump({"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
                   "eos_token_id": [5, 6]}, f)
    d = load_pretrained(bad).generation_defaults()
    assert (d["temperature"], d["top_p"], d["top_k"], d["repetition_penalty"]) == (0.7, 0.8, 20, 1.05)
    assert d["stop_tokens"] == (5, 6)
    os.remove(os.path.join(bad, "generation_config.json"))
    assert load_pretrained(bad).generation_defaults()["stop_tokens"] == (7,)


def test_bfloat16_model_saves_its_bf16_weights_bitwise(case, tmp_path):
    _, _, folder = case
    model = load_pretrained(folder, dtype="bfloat16")
    model.save_pretrained(str(tmp_path))
    again = load_pretrained(str(tmp_path), dtype="bfloat16")
    a, b = model.state_dict(), again.state_dict()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    import torch as _t
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=_t.bfloat16)
    assert back.model.layers[0].self_attn.q_proj.weight.dtype == _t.bfloat16


def test_unsupported_rope_scaling_is_refused():
    hf = dict(BASE, architectures=["LlamaForCausalLM"], rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="yarn"):
        config_from_hf(hf)


def test_missing_tensor_is_named(case, tmp_path):
    _, _, folder = case
    model = load_pretrained(folder)
    sd = {k: np.array(v) for k, v in model.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    minillm.save(sd, str(tmp_path / "model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(str(tmp_path))


def test_missing_shard_and_truncated_file_are_named(tmp_path):
    m = hf_model("llama", {})
    m.save_pretrained(str(tmp_path / "sharded"), max_shard_size="40KB")
    shards = sorted(f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors"))
    os.remove(tmp_path / "sharded" / shards[-1])
    with pytest.raises(ValueError, match=f"shard '{shards[-1]}' is missing"):
        load_pretrained(str(tmp_path / "sharded"))
    m.save_pretrained(str(tmp_path / "one"))
    path = tmp_path / "one" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_pretrained(str(tmp_path / "one"))


def test_sliding_window_longer_sequences_are_refused():
    config = LlamaConfig(architecture="MistralForCausalLM", vocab_size=50, block_size=64, n_layer=1, n_head=2,
                         n_kv_head=1, n_embd=16, d_ff=32, sliding_window=8)
    model = Llama(config)
    with pytest.raises(ValueError, match="sliding window 8"):
        model(minillm.tensor([list(range(9))], dtype="int64"))
    with pytest.raises(ValueError, match="past the model's context of 8"):
        generate(model, [[1, 2, 3]], 10, greedy=True)


# ---------------------------------------------------------------------- training
def test_gradients_match_torch(case):
    _, m, folder = case
    model = load_pretrained(folder)
    ids = prompt(seed=3, B=2, T=16)
    targets = np.roll(ids, -1, axis=1)
    idx = minillm.tensor(ids.tolist(), dtype="int64")
    _, loss = model(idx, minillm.tensor(targets.tolist(), dtype="int64"))
    loss.backward()
    m.zero_grad()
    out = m(torch.tensor(ids))
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]),
                                            torch.tensor(targets).reshape(-1))
    ref.backward()
    assert abs(float(np.array(loss)) - ref.item()) < 1e-5
    ref_grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    for name, p in model.named_parameters():
        g = ref_grads[name] if name in ref_grads else ref_grads["model.embed_tokens.weight"]
        np.testing.assert_allclose(np.array(p.grad), g, atol=2e-5, rtol=1e-3, err_msg=name)


def train_config(tokens_dir, out_dir, **kw):
    from minillm.train import TrainConfig
    opts = dict(model="llama-tiny", n_layer=2, n_head=4, n_embd=32, block_size=32,
                model_args={"n_kv_head": 2, "d_ff": 64}, data=tokens_dir, out_dir=str(out_dir), batch_size=8,
                max_steps=40, warmup_steps=4, lr=1e-2, min_lr=1e-3, eval_interval=20, eval_batches=4,
                final_eval_batches=4, log_interval=1, checkpoint_interval=20, keep_checkpoints=5,
                progress="none", seed=11)
    opts.update(kw)
    return TrainConfig(**opts)


def test_tiny_llama_trains_and_resumes_exactly(tokens_dir, tmp_path):
    from minillm.train import Trainer
    full = Trainer(train_config(tokens_dir, tmp_path / "full"))
    assert isinstance(full.model, Llama) and full.model.config.n_kv_head == 2
    start = full.evaluate(max_batches=4)["loss"]
    end = full.train()["loss"]
    assert end < start - 0.5                       # the validation loss falls on sample.txt
    resumed = Trainer.resume(str(tmp_path / "full" / "checkpoints" / "step_0000020"))
    assert resumed.step == 20
    resumed.train()
    assert resumed.history == [h for h in full.history if h[0] > 20]      # float equality: bitwise
    b = resumed.model.state_dict()
    for k, v in full.model.state_dict().items():
        assert np.array_equal(np.array(v), np.array(b[k])), k
