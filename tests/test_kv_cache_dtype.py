"""bfloat16 KV caches: the attention kernel over them against NumPy on every ISA, against the
float32 kernel over the same values, the rounding of what a step writes, the plan's choice of
cache dtype, and decoding over them against float32 caches."""
import math

import numpy as np
import pytest

import minillm
from minillm import _C
from minillm.engine import Engine
from minillm.generate import KVCache, generate
from minillm.models import GPT
from minillm.models.gpt import GPTConfig
from conftest import round_bf16_bits, widen_bf16


def bf16_tensor(bits):
    return _C.view_as(minillm.from_numpy(np.ascontiguousarray(bits)), "bfloat16")


def attention_ref(q, k, v):
    """float64 attention of q (B, nh, hs) over k, v (S, B, nh, hs) -> (B, nh hs)."""
    B, nh, hs = q.shape
    s = np.einsum("bhd,tbhd->bht", q.astype(np.float64), k.astype(np.float64)) / math.sqrt(hs)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bht,tbhd->bhd", p, v.astype(np.float64)).reshape(B, nh * hs)


# hs 64: whole vectors; 33 and 20: a partial last vector on AVX2 and AVX-512
SHAPES = [(1, 12, 64, 150), (2, 3, 20, 9), (3, 5, 33, 40), (8, 4, 64, 30)]


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_over_a_bf16_cache_matches_numpy(isa, shape):
    B, nh, hs, pos = shape
    rng = np.random.default_rng(pos)
    kbits = round_bf16_bits(rng.standard_normal((pos + 2, B, nh, hs)))
    vbits = round_bf16_bits(rng.standard_normal((pos + 2, B, nh, hs)))
    qkv = rng.standard_normal((B, 3 * nh * hs)).astype(np.float32)
    kc, vc = bf16_tensor(kbits), bf16_tensor(vbits)
    y = _C.kv_attention_step(minillm.from_numpy(qkv), kc, vc, pos).numpy()
    # the new position is written rounded to nearest even, the rows after it untouched
    C = nh * hs
    np.testing.assert_array_equal(kc.numpy()[pos], round_bf16_bits(qkv[:, C:2 * C]).reshape(B, nh, hs))
    np.testing.assert_array_equal(vc.numpy()[pos], round_bf16_bits(qkv[:, 2 * C:]).reshape(B, nh, hs))
    np.testing.assert_array_equal(kc.numpy()[pos + 1], kbits[pos + 1])
    k, v = widen_bf16(kc.numpy()[:pos + 1]), widen_bf16(vc.numpy()[:pos + 1])
    np.testing.assert_allclose(y, attention_ref(qkv[:, :C].reshape(B, nh, hs), k, v), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_bf16_cache_gives_the_bits_of_a_float32_cache_of_the_same_values(isa, shape):
    # widening is exact and the arithmetic is float32 either way: with values that bf16 holds
    # exactly (the new position's too), both caches give the same bits
    B, nh, hs, pos = shape
    rng = np.random.default_rng(pos + 1)
    kbits = round_bf16_bits(rng.standard_normal((pos + 1, B, nh, hs)))
    vbits = round_bf16_bits(rng.standard_normal((pos + 1, B, nh, hs)))
    qkv = widen_bf16(round_bf16_bits(rng.standard_normal((B, 3 * nh * hs))))
    y16 = _C.kv_attention_step(minillm.from_numpy(qkv), bf16_tensor(kbits), bf16_tensor(vbits), pos).numpy()
    y32 = _C.kv_attention_step(minillm.from_numpy(qkv), minillm.from_numpy(widen_bf16(kbits)),
                               minillm.from_numpy(widen_bf16(vbits)), pos).numpy()
    np.testing.assert_array_equal(y16, y32)


def test_caches_of_other_or_mixed_dtypes_are_refused():
    qkv = minillm.zeros((1, 3 * 2 * 8))
    f32, b16 = minillm.zeros((4, 1, 2, 8)), minillm.zeros((4, 1, 2, 8)).astype("bfloat16")
    with pytest.raises(TypeError, match="float32 or bfloat16, got int64"):
        _C.kv_attention_step(qkv, minillm.zeros((4, 1, 2, 8), dtype="int64"), f32, 0)
    with pytest.raises(TypeError, match="expected a bfloat16 cache like the others, got float32"):
        _C.kv_attention_step(qkv, b16, f32, 0)


def tiny_gpt(positions="learned"):
    minillm.manual_seed(4)
    cfg = GPTConfig(vocab_size=96, block_size=48, n_layer=2, n_head=4, n_embd=64, positions=positions)
    return GPT(cfg).eval()


def test_the_plan_asks_for_bf16_caches_with_bf16_and_int8_weights():
    model = tiny_gpt()
    assert model.decoder(hugepages=False).kv_dtype == "float32"
    assert model.decoder(hugepages=False, weights="bf16").kv_dtype == "bfloat16"
    assert model.decoder(hugepages=False, weights="int8").kv_dtype == "bfloat16"
    assert model.decoder(hugepages=False, weights="int8", kv_dtype="float32").kv_dtype == "float32"
    with pytest.raises(ValueError, match="kv_dtype must be one of float32, bfloat16, got 'int8'"):
        model.decoder(hugepages=False, kv_dtype="int8")
    engine = Engine(model, max_batch=2, weights="int8")
    engine.add([1, 2, 3], max_new_tokens=2, greedy=True)
    engine.step()
    assert all(layer.k.dtype == "bfloat16" for seq in engine._running.values() for layer in seq.cache.layers)


def step_logits(model, plan, prompts, kv_dtype, steps=6, forward=False):
    """Logits (steps, B, V) of the prompts' sequences stepped together over caches of
    kv_dtype, each prompt run into its cache by the plan (or by the model's forward)."""
    caches = [KVCache.for_model(model, 1, capacity=32, dtype=kv_dtype) for _ in prompts]
    for p, c in zip(prompts, caches):
        if forward:
            with minillm.no_grad():
                model(minillm.tensor([p], dtype="int64"), kv_cache=c)
        else:
            plan.extend([(p, c)])
    toks, out = [5, 6, 7][:len(prompts)], []
    for _ in range(steps):
        out.append(plan.step_rows(minillm.tensor(toks, dtype="int64"), caches).numpy().copy())
        toks = [int(t) for t in out[-1].argmax(axis=1)]
    return np.array(out)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("forward", [False, True])
def test_decoding_over_bf16_caches_stays_close_to_float32_caches(positions, forward):
    model = tiny_gpt(positions)
    plan = model.decoder(hugepages=False)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [7], [9, 8, 7, 3]]
    ref = step_logits(model, plan, prompts, "float32")
    got = step_logits(model, plan, prompts, "bfloat16", forward=forward)
    assert not np.array_equal(got, ref)                     # the caches really were bf16
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 2e-2, err


def test_generate_with_an_int8_plan_decodes_the_bits_of_its_engine():
    # generate() and the engine make their caches from the plan (bf16 here) and run the same
    # rows, so a greedy sequence is the same tokens through either
    model = tiny_gpt("rotary")
    plan = model.decoder(hugepages=False, weights="int8")
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    out = generate(model, [prompt], 12, greedy=True, decoder=plan)[0].tolist()[len(prompt):]
    engine = Engine(model, max_batch=1, decoder=plan)
    engine.add(prompt, max_new_tokens=12, greedy=True)
    got = []
    while engine.has_work():
        got += [ev.token for ev in engine.step() if ev.token is not None]
    assert got == out


def test_plan_options_and_the_flags_choose_the_cache_dtype():
    from minillm.cli import build_parser
    from minillm.inference import plan_options
    model = tiny_gpt()
    assert plan_options(model, "int8") == {"weights": "int8"}
    assert plan_options(model, "int8", "float32") == {"weights": "int8", "kv_dtype": "float32"}
    assert plan_options(model, "float32", "bf16") == {"kv_dtype": "bfloat16"}
    assert model.decoder(hugepages=False, **plan_options(model, "float32", "bf16")).kv_dtype == "bfloat16"
    with pytest.raises(ValueError, match="kv_dtype must be one of float32, bf16, got 'int8'"):
        plan_options(model, "int8", "int8")
    parser = build_parser()
    for cmd in (["sample", "--hf-dir", "x"], ["chat", "--hf-dir", "x"], ["eval", "--hf-dir", "x", "--text", "t"],
                ["serve", "--hf-dir", "x"]):
        assert parser.parse_args(cmd).kv_dtype is None
        assert parser.parse_args(cmd + ["--kv-dtype", "bf16"]).kv_dtype == "bf16"
        with pytest.raises(SystemExit):
            parser.parse_args(cmd + ["--kv-dtype", "int8"])


def test_serve_takes_the_cache_dtype():
    pytest.importorskip("starlette", reason="minillm[serve] (starlette) is not installed")
    from minillm.serve import build_app
    from minillm.tokenizers import BasicTokenizer
    model = tiny_gpt()
    tok = BasicTokenizer()
    for kv, want in ((None, "bfloat16"), ("float32", "float32")):
        engine = build_app(model, tok, "m", dtype="int8", kv_dtype=kv).state.serve.runner.engine
        assert engine.decoder.kv_dtype == want


def test_generate_takes_a_decoder_that_has_only_a_step():
    # the LanguageModel interface asks a decoder for step() alone: its caches are then float32
    model = tiny_gpt()
    plan = model.decoder(hugepages=False)

    class StepOnly:
        def step(self, tokens, cache):
            assert cache.dtype == "float32"
            return plan.step(tokens, cache)

    prompt = [3, 1, 4, 1, 5]
    want = generate(model, [prompt], 6, greedy=True, decoder=plan)[0].tolist()
    assert generate(model, [prompt], 6, greedy=True, decoder=StepOnly())[0].tolist() == want
