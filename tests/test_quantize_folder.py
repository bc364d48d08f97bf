"""`minillm quantize`: int8 and bf16 model folders. An int8 folder's decode plan streams the
stored int8 weights, so its logits equal the in-memory int8 plan's bitwise (GPT-2 and Llama /
Qwen2, tied and untied heads, from a HF folder or a checkpoint); its forward runs on the
dequantized weights; bf16 folders load in transformers; bad inputs are one-line errors."""
import json
import os
import shutil

import numpy as np
import pytest

import minillm
from minillm import cli, serialization
from minillm.generate import KVCache
from minillm.inference import load_for_inference, plan_options
from minillm.models import GPT, Llama, LlamaConfig, load_pretrained
from minillm.inference import MARKER, quantize_folder
from minillm.quantize import quantize_int8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "gpt2_tiny")
TOKENS = [3, 17, 5, 90, 41, 8, 8, 60, 1, 77]


def decode_logits(model, plan, tokens=TOKENS):
    """The plan's logits (T, V) for tokens fed one by one from an empty cache."""
    cache = KVCache.for_model(model, 1, capacity=len(tokens))
    return np.array([plan.step(minillm.tensor([t], dtype="int64"), cache).numpy()[0].copy() for t in tokens])


def header(path):
    """{tensor name: (dtype, shape)} of a safetensors file."""
    mf = serialization.MappedFile(path)
    return {n: (mf.info(n)[0], tuple(mf.info(n)[1])) for n in mf.names}


def tiny_llama(tmp_path, name, **fields):
    """A float32 Llama-family folder from minillm's own Llama (drawn weights, no tokenizer)."""
    minillm.manual_seed(3)
    cfg = dict(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, d_ff=176,
               rms_norm_eps=1e-5)
    cfg.update(fields)
    model = Llama(LlamaConfig(**cfg)).eval()
    folder = str(tmp_path / name)
    model.save_pretrained(folder)
    return model, folder


# ---------------------------------------------------------------------- GPT-2
def test_gpt2_int8_folder_decodes_bitwise_as_the_in_memory_int8_plan(tmp_path):
    out = str(tmp_path / "gpt2-int8")
    files = quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    assert set(files) == set(os.listdir(out)) and MARKER in files and "tokenizer.json" in files
    source = load_pretrained(FIXTURE)
    want = decode_logits(source, source.decoder(hugepages=False, weights="int8"))

    model, tok, _ = load_for_inference(hf_dir=out, dtype=None)
    assert plan_options(model, None) == {"weights": "int8"}
    assert tok.encode("hello world") == source.tokenizer.encode("hello world")
    plan = model.decoder(hugepages=False, **plan_options(model, None))
    # the plan streams the folder's int8 matrices themselves, not a second quantization
    stored = {id(m) for m in model.int8_weights.values()}
    assert len(stored) == 9 and {id(w) for w in plan.streamed_weights()} == stored
    got = decode_logits(model, plan)
    np.testing.assert_array_equal(got, want)
    # and int8 does change the logits (the comparison can fail)
    full = decode_logits(source, source.decoder(hugepages=False))
    assert not np.array_equal(got, full) and np.abs(got - full).max() < 0.05 * np.abs(full).max()


def test_gpt2_int8_layout_is_the_documented_one(tmp_path):
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    with open(os.path.join(out, "config.json")) as f:
        hf = json.load(f)
    assert hf["quantization_config"] == {"quant_method": "minillm-int8", "group_size": 64, "bits": 8,
                                         "symmetric": True}
    h = header(os.path.join(out, "model.safetensors"))
    C, V = hf["n_embd"], hf["vocab_size"]
    # Conv1D weights in the Linear orientation (out, in), groups of 64 along the input
    assert h["transformer.h.0.attn.c_attn.weight"] == ("I8", (3 * C, C))
    assert h["transformer.h.0.attn.c_attn.weight.scales"] == ("F32", (3 * C, C // 64))
    assert h["transformer.h.1.mlp.c_proj.weight"] == ("I8", (C, 4 * C))
    assert h["lm_head.weight"] == ("I8", (V, C))            # the tied head, for the decode plan
    assert h["transformer.wte.weight"] == ("F32", (V, C))   # the embedding as the model stores it
    assert h["transformer.h.0.attn.c_attn.bias"] == ("F32", (3 * C,))
    # the stored values are quantize_int8 of the source's (out, in) weight
    source = load_pretrained(FIXTURE)
    m = quantize_int8(source.transformer.h[0].attn.c_attn.weight)
    arrays = serialization.load(os.path.join(out, "model.safetensors"))
    np.testing.assert_array_equal(arrays["transformer.h.0.attn.c_attn.weight"], m.values.numpy().view(np.int8))
    np.testing.assert_array_equal(arrays["transformer.h.0.attn.c_attn.weight.scales"], m.scales.numpy())


def test_int8_folder_forward_runs_on_the_dequantized_weights(tmp_path):
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    source, model = load_pretrained(FIXTURE), load_pretrained(out)
    for a, b in ((source.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight),
                 (source.transformer.h[0].attn.c_proj.weight, model.transformer.h[0].attn.c_proj.weight)):
        np.testing.assert_array_equal(b.numpy(), quantize_int8(a).dequantize().numpy())
    np.testing.assert_array_equal(model.transformer.wte.weight.numpy(), source.transformer.wte.weight.numpy())
    idx = minillm.tensor([TOKENS], dtype="int64")
    with minillm.no_grad():
        got, _ = model(idx, idx)
        want, _ = source(idx, idx)
    assert not np.array_equal(got.numpy(), want.numpy())
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=0.05 * np.abs(want.numpy()).max())


def test_gpt_checkpoint_quantizes_to_a_gpt2_folder(tmp_path):
    from minillm import optim
    from minillm.checkpoint import save_checkpoint
    from minillm.models import GPTConfig
    minillm.manual_seed(1)
    cfg = dict(vocab_size=320, block_size=32, n_layer=1, n_head=2, n_embd=32, tie_weights=False)
    gpt = GPT(GPTConfig(**cfg)).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", gpt, optim.AdamW(gpt.parameters(), lr=1e-3), {"step": 0},
                           {"model": dict(cfg, model_type="gpt")},
                           tokenizer_file=os.path.join(FIXTURE, "tokenizer.json"))
    out = str(tmp_path / "q")
    quantize_folder(out, ckpt=str(ckpt), dtype="int8")
    h = header(os.path.join(out, "model.safetensors"))
    assert h["lm_head.weight"] == ("I8", (320, 32)) and h["lm_head.weight.scales"] == ("F32", (320, 1))
    model = load_pretrained(out)
    assert model.tokenizer is not None
    np.testing.assert_array_equal(decode_logits(model, model.decoder(hugepages=False, weights="int8")),
                                  decode_logits(gpt, gpt.decoder(hugepages=False, weights="int8")))


def test_gpt2_bf16_folder_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = str(tmp_path / "bf16")
    quantize_folder(out, hf_dir=FIXTURE, dtype="bf16")
    h = header(os.path.join(out, "model.safetensors"))
    assert h["transformer.h.0.attn.c_attn.weight"][0] == "BF16" and h["transformer.wte.weight"][0] == "BF16"
    assert h["transformer.h.0.ln_1.weight"][0] == "F32"
    ours = load_pretrained(out)
    ref = transformers.GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([TOKENS])).logits.numpy()[0]
    with minillm.no_grad():
        got, _ = ours(minillm.tensor([TOKENS], dtype="int64"), minillm.tensor([TOKENS], dtype="int64"))
    np.testing.assert_allclose(got.numpy()[0], want, atol=1e-4, rtol=1e-4)
    # the bf16 weights are the source's rounded (so the folder differs from the float32 one)
    src = load_pretrained(FIXTURE).transformer.h[0].mlp.c_fc.weight.numpy()
    w = ours.transformer.h[0].mlp.c_fc.weight.numpy()
    assert not np.array_equal(w, src) and np.abs(w - src).max() <= np.abs(src).max() * 2 ** -8


# ---------------------------------------------------------------------- Llama family
@pytest.mark.parametrize("arch", [dict(), dict(architecture="Qwen2ForCausalLM", qkv_bias=True, tie_weights=True)],
                         ids=["llama-untied", "qwen2-tied"])
def test_llama_int8_folder_decodes_bitwise_as_the_in_memory_int8_plan(tmp_path, arch):
    source, folder = tiny_llama(tmp_path, "src", **arch)
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=folder, dtype="int8")
    h = header(os.path.join(out, "model.safetensors"))
    assert h["model.layers.0.mlp.down_proj.weight"] == ("I8", (64, 176))
    assert h["model.layers.0.mlp.down_proj.weight.scales"] == ("F32", (64, 11))      # 176 takes groups of 16
    assert h["model.layers.1.self_attn.k_proj.weight"] == ("I8", (32, 64))
    assert h["lm_head.weight"] == ("I8", (96, 64)) and h["model.embed_tokens.weight"] == ("F32", (96, 64))
    model, _, _ = load_for_inference(hf_dir=out, dtype=None, need_tokenizer=False)
    assert len(model.int8_weights) == 2 * 7 + 1
    got = decode_logits(model, model.decoder(hugepages=False, **plan_options(model, None)))
    want = decode_logits(source, source.decoder(hugepages=False, weights="int8"))
    np.testing.assert_array_equal(got, want)
    full = decode_logits(source, source.decoder(hugepages=False))
    assert not np.array_equal(got, full)
    # a bf16 load of the int8 folder holds the dequantized weights rounded to bf16
    b16 = load_pretrained(out, dtype="bfloat16")
    assert b16.model.layers[0].mlp.up_proj.weight.dtype == "bfloat16"


def test_llama_bf16_folder_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, folder = tiny_llama(tmp_path, "src", architecture="Qwen2ForCausalLM", qkv_bias=True, tie_weights=True)
    out = str(tmp_path / "bf16")
    quantize_folder(out, hf_dir=folder, dtype="bf16")
    h = header(os.path.join(out, "model.safetensors"))
    assert h["model.layers.0.self_attn.q_proj.weight"][0] == "BF16"
    assert h["model.layers.0.self_attn.q_proj.bias"][0] == "F32"
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    ours = load_pretrained(out)          # widened to float32
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([TOKENS])).logits.numpy()[0]
    idx = minillm.tensor([TOKENS], dtype="int64")
    with minillm.no_grad():
        got, _ = ours(idx, idx)
    np.testing.assert_allclose(got.numpy()[0], want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- refusals
def test_other_quantization_methods_are_refused_by_name(tmp_path):
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    path = os.path.join(out, "config.json")
    with open(path) as f:
        hf = json.load(f)
    hf["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    with open(path, "w") as f:
        json.dump(hf, f)
    with pytest.raises(ValueError, match="quant_method 'gptq' is not supported"):
        load_pretrained(out)


def test_decoder_refuses_stored_int8_weights_for_a_float_plan(tmp_path):
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    model = load_pretrained(out)
    plan = model.decoder(hugepages=False, weights="bf16")        # the float parameters, not the stored int8
    assert plan.weights == "bf16"
    from minillm.models.decoder import Decoder
    with pytest.raises(ValueError, match="only an int8 plan"):
        layers = [{"norm1.weight": b.ln_1.weight,
                   "qkv.weight": model.int8_weights[f"transformer.h.{i}.attn.c_attn.weight"]}
                  for i, b in enumerate(model.transformer.h)]
        Decoder(plan.options, layers, embed=model.transformer.wte.weight, head=model.lm_head.weight,
                pos_embed=model.transformer.wpe.weight, hugepages=False, weights="float32")


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_quantize_writes_and_replaces_only_its_own_folder(tmp_path, capsys):
    out = str(tmp_path / "q")
    code, stdout, _ = run(["quantize", "--hf-dir", FIXTURE, "--out", out, "--dtype", "int8"], capsys)
    assert code == 0 and "int8" in stdout and os.path.exists(os.path.join(out, MARKER))
    # an earlier quantize output is replaced (here by bf16)
    code, _, _ = run(["quantize", "--hf-dir", FIXTURE, "--out", out, "--dtype", "bf16"], capsys)
    assert code == 0 and "quantization_config" not in open(os.path.join(out, "config.json")).read()
    # ... but not once it holds a file quantize did not write
    open(os.path.join(out, "notes.txt"), "w").close()
    code, _, err = run(["quantize", "--hf-dir", FIXTURE, "--out", out, "--dtype", "int8"], capsys)
    assert code == 2 and "notes.txt" in err and err.count("\n") == 1


@pytest.mark.parametrize("case", ["foreign-out", "missing-input", "unknown-dtype", "out-is-input", "out-is-file"])
def test_cli_quantize_bad_inputs_are_one_line_errors(tmp_path, capsys, case):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    out, src, dtype = str(tmp_path / "q"), FIXTURE, "int8"
    if case == "foreign-out":
        out = str(foreign)
    elif case == "missing-input":
        src = str(tmp_path / "nope")
    elif case == "unknown-dtype":
        dtype = "int4"
    elif case == "out-is-input":
        src = str(tmp_path / "copy")
        shutil.copytree(FIXTURE, src)
        out = src
    else:
        (tmp_path / "file").write_text("x")
        out = str(tmp_path / "file")
    try:
        code, _, err = run(["quantize", "--hf-dir", src, "--out", out, "--dtype", dtype], capsys)
    except SystemExit as e:                    # argparse refuses a --dtype choice
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("minillm") and "error" in last
    assert {"foreign-out": "not made by `minillm quantize`", "missing-input": "no such folder",
            "unknown-dtype": "int4", "out-is-input": "holds the input",
            "out-is-file": "is a file"}[case] in last
    assert (foreign / "keep.txt").read_text() == "mine"


def test_readme_documents_the_int8_layout():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for needle in ("minillm quantize", "minillm-int8", ".scales", "group_size"):
        assert needle in text, needle


def test_cli_commands_decode_an_int8_folder_with_its_stored_weights(tmp_path, capsys):
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    code, stdout, _ = run(["eval", "--hf-dir", out, "--text", str(text), "--max-batches", "1"], capsys)
    assert code == 0 and "(int8)" in stdout
    code, stdout, _ = run(["eval", "--hf-dir", out, "--text", str(text), "--max-batches", "1", "--dtype", "float32"],
                          capsys)
    assert code == 0 and "(float32)" in stdout
    code, stdout, _ = run(["sample", "--hf-dir", out, "--prompt", "the", "--greedy", "--max-new-tokens", "5"], capsys)
    assert code == 0 and stdout.startswith("the")


def test_quantizing_an_int8_folder_again_writes_the_same_bytes(tmp_path):
    first, second = str(tmp_path / "q1"), str(tmp_path / "q2")
    quantize_folder(first, hf_dir=FIXTURE, dtype="int8")
    quantize_folder(second, hf_dir=first, dtype="int8")        # the stored int8 weights, not a second rounding
    with open(os.path.join(first, "model.safetensors"), "rb") as f1, \
            open(os.path.join(second, "model.safetensors"), "rb") as f2:
        assert f1.read() == f2.read()
    # a different group quantizes again, from the dequantized weights
    third = str(tmp_path / "q3")
    quantize_folder(third, hf_dir=first, dtype="int8", group=16)
    assert header(os.path.join(third, "model.safetensors"))["lm_head.weight.scales"][1][1] == 64 // 16
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]     # no temporaries left


def test_int8_weights_without_their_scales_are_named(tmp_path):
    out = str(tmp_path / "q")
    quantize_folder(out, hf_dir=FIXTURE, dtype="int8")
    path = os.path.join(out, "model.safetensors")
    arrays = {k: np.array(v) for k, v in serialization.load(path).items()}
    del arrays["transformer.h.1.mlp.c_fc.weight.scales"]
    serialization.save(arrays, path)
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight is I8 but has no .*scales"):
        load_pretrained(out)
