"""GPT-2 checkpoints in HuggingFace's layout: the fixture written by transformers
(tests/fixtures/make_gpt2_fixture.py) loads with the same logits (1e-4) and greedy
continuations; save_pretrained round-trips through minillm and through transformers;
bad checkpoints are refused with the offending tensors named."""
import json
import os
import shutil

import numpy as np
import pytest

import minillm
from minillm.autograd import no_grad
from minillm.generate import generate
from minillm.models import GPT, build_model
from minillm.models.gpt import load_pretrained, save_pretrained

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "gpt2_tiny")
with open(os.path.join(HERE, "fixtures", "gpt2_tiny_expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)
LOGITS = minillm.load(os.path.join(HERE, "fixtures", "gpt2_tiny_logits.safetensors"))


@pytest.fixture(scope="module")
def model():
    return load_pretrained(FIXTURE)


def all_logits(model, ids):
    """(T, V) logits for every position of one sequence."""
    idx = minillm.tensor([ids], dtype="int64")
    with no_grad():
        logits, _ = model(idx, targets=idx)
    return logits.numpy()[0]


def copy_fixture(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, dst)
    return str(dst)


# ------------------------------------------------------------------ the fixture
def test_fixture_config_maps_onto_our_gpt(model):
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 4, 64, 64, 320)
    assert cfg.tie_weights and model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("i", range(len(EXPECTED["prompts"])))
def test_logits_match_transformers(model, i):
    got = all_logits(model, EXPECTED["prompts"][i]["ids"])
    np.testing.assert_allclose(got, LOGITS[f"prompt_{i}"].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("i", range(len(EXPECTED["prompts"])))
def test_greedy_continuation_matches_transformers(model, i, fast):
    p = EXPECTED["prompts"][i]
    out = generate(model, [p["ids"]], EXPECTED["new_tokens"], greedy=True, fast=fast).numpy()
    assert out[0, len(p["ids"]):].tolist() == p["greedy"]


def test_tokenizer_comes_with_the_model(model):
    for p in EXPECTED["prompts"]:
        assert model.tokenizer.encode(p["text"]) == p["ids"]
        assert model.tokenizer.decode(p["ids"]) == p["text"]


def test_gpt_from_pretrained_returns_the_model():
    m = GPT.from_pretrained(FIXTURE)
    assert isinstance(m, GPT) and m.tokenizer is not None


def test_batched_greedy_matches_one_by_one(model):
    a, b = EXPECTED["prompts"][0]["ids"][:8], EXPECTED["prompts"][2]["ids"][:8]
    both = generate(model, [a, b], 10, greedy=True).numpy()
    assert both[0].tolist() == generate(model, [a], 10, greedy=True).numpy()[0].tolist()
    assert both[1].tolist() == generate(model, [b], 10, greedy=True).numpy()[0].tolist()


def test_layer_norm_epsilon_is_read_from_config(tmp_path):
    folder = copy_fixture(tmp_path)
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["layer_norm_epsilon"] = 0.5
    with open(path, "w") as f:
        json.dump(cfg, f)
    m = load_pretrained(folder)
    assert m.transformer.ln_f.eps == 0.5 and m.transformer.h[1].ln_2.eps == 0.5
    ids = EXPECTED["prompts"][0]["ids"]
    assert np.abs(all_logits(m, ids) - LOGITS["prompt_0"].numpy()).max() > 1e-3


# ------------------------------------------------------------------ save
def test_save_pretrained_round_trips_through_minillm(model, tmp_path):
    out = save_pretrained(model, str(tmp_path / "out"))
    assert {"config.json", "merges.txt", "model.safetensors", "tokenizer.json", "vocab.json"} <= set(os.listdir(out))
    again = load_pretrained(out)
    ids = EXPECTED["prompts"][1]["ids"]
    np.testing.assert_array_equal(all_logits(again, ids), all_logits(model, ids))
    assert again.tokenizer.encode("The King") == model.tokenizer.encode("The King")


def test_save_pretrained_writes_hf_names_and_conv1d_orientation(model, tmp_path):
    out = save_pretrained(model, str(tmp_path / "out"))
    saved = minillm.load(os.path.join(out, "model.safetensors"))
    ref = minillm.load(os.path.join(FIXTURE, "model.safetensors"))
    assert sorted(saved) == sorted(k for k in ref if not k.endswith((".attn.bias", ".attn.masked_bias")))
    for k in saved:
        np.testing.assert_array_equal(saved[k].numpy(), ref[k].numpy(), err_msg=k)


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = build_model("gpt-tiny", vocab_size=300, generator=minillm.Generator(5))
    folder = ours.save_pretrained(str(tmp_path / "tiny"))
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = minillm.randint(0, 300, (2, 12), generator=minillm.Generator(1))
    with no_grad():
        want, _ = ours(idx, targets=idx)
    with torch.no_grad():
        got = hf(torch.from_numpy(idx.numpy())).logits.numpy()
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_saved_tokenizer_loads_in_transformers(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = save_pretrained(model, str(tmp_path / "out"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for p in EXPECTED["prompts"]:
        assert hf_tok.encode(p["text"]) == p["ids"]


def test_untied_head_is_saved_and_loaded(tmp_path):
    ours = build_model("gpt-tiny", vocab_size=100, tie_weights=False, generator=minillm.Generator(2))
    folder = save_pretrained(ours, str(tmp_path / "untied"))
    assert "lm_head.weight" in minillm.load(os.path.join(folder, "model.safetensors"))
    again = load_pretrained(folder)
    assert not again.config.tie_weights
    ids = [1, 2, 3, 4]
    np.testing.assert_array_equal(all_logits(again, ids), all_logits(ours, ids))


# ------------------------------------------------------------------ bad checkpoints
def rewrite_tensors(folder, change):
    path = os.path.join(folder, "model.safetensors")
    tensors = {k: v.numpy().copy() for k, v in minillm.load(path).items()}
    change(tensors)
    minillm.save(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    folder = copy_fixture(tmp_path)
    rewrite_tensors(folder, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing tensors: h\.1\.mlp\.c_fc\.bias"):
        load_pretrained(folder)


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path):
    folder = copy_fixture(tmp_path)

    def transpose(t):
        t["transformer.h.0.attn.c_attn.weight"] = t["transformer.h.0.attn.c_attn.weight"].T.copy()
    rewrite_tensors(folder, transpose)
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_attn\.weight has shape \(192, 64\), expected \(64, 192\)"):
        load_pretrained(folder)


def test_unexpected_tensor_is_named(tmp_path):
    folder = copy_fixture(tmp_path)
    rewrite_tensors(folder, lambda t: t.__setitem__("transformer.h.2.ln_1.weight", np.ones(64, np.float32)))
    with pytest.raises(ValueError, match=r"unexpected tensors: h\.2\.ln_1\.weight"):
        load_pretrained(folder)


def test_unsupported_activation_is_refused(tmp_path):
    folder = copy_fixture(tmp_path)
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["activation_function"] = "relu"
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        load_pretrained(folder)


def test_missing_files_are_named(tmp_path):
    folder = copy_fixture(tmp_path)
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(ValueError, match="model.safetensors: missing"):
        load_pretrained(folder)
    with pytest.raises(ValueError, match="not a folder"):
        load_pretrained(str(tmp_path / "nowhere"))


def test_truncated_safetensors_is_reported(tmp_path):
    folder = copy_fixture(tmp_path)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(Exception, match="model.safetensors"):
        load_pretrained(folder)


def test_cli_sample_hf_dir_prints_transformers_greedy_text(capsys):
    from minillm import cli
    p = EXPECTED["prompts"][0]
    assert cli.main(["sample", "--hf-dir", FIXTURE, "--prompt", p["text"], "--greedy", "--no-stop",
                     "--max-new-tokens", str(EXPECTED["new_tokens"])]) == 0
    out, err = capsys.readouterr()
    tok = load_pretrained(FIXTURE).tokenizer
    assert out == tok.decode(p["ids"] + p["greedy"]) + "\n"
    assert "tokens/s" in err
