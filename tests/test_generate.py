"""Generation: KV cache vs full recomputation, sampling filters vs NumPy references and
sample counts, seeded reproducibility, stop tokens, cropping past block_size, the decoding
kernels (linear_rows, kv_attention_step) vs float64 NumPy."""
import math

import numpy as np
import pytest

import minillm
from minillm import _C
from minillm.autograd import no_grad
from minillm.generate import KVCache, generate
from minillm.sampling import (apply_temperature, check_sampling_args, draw, sample_next, top_k_filter,
                              top_p_filter)
from minillm.models import build_model


def tiny_gpt(seed=0, **overrides):
    cfg = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
    cfg.update(overrides)
    model = build_model("gpt-tiny", generator=minillm.Generator(seed), **cfg)
    # larger weights than GPT-2's init, so logits are spread and argmax has no near-ties
    with no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p *= 5.0
    return model


def full_logits(model, seq):
    """Last-position logits (B, V) of a full forward over seq (B, T) (no cache), float64."""
    with no_grad():
        logits, _ = model(minillm.tensor(seq, dtype="int64"))
    return logits.numpy()[:, -1, :].astype(np.float64)


# ------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("fast", [False, True], ids=["model_forward", "gpt_decoder"])
@pytest.mark.parametrize("batch", [1, 3])
def test_kv_cache_logits_match_full_recompute_every_step(fast, batch):
    model = tiny_gpt().eval()
    rng = np.random.default_rng(batch)
    seq = rng.integers(0, 97, size=(batch, 5))
    cache = KVCache.for_model(model, batch, capacity=4)   # small: the cache has to grow
    decoder = model.decoder()
    with no_grad():
        logits, _ = model(minillm.tensor(seq, dtype="int64"), kv_cache=cache)
        got = logits.numpy()[:, -1, :]
        for step in range(20):
            np.testing.assert_allclose(got, full_logits(model, seq), atol=1e-5, rtol=0,
                                       err_msg=f"step {step}")
            nxt = rng.integers(0, 97, size=(batch, 1))
            seq = np.concatenate([seq, nxt], axis=1)
            if fast:
                got = decoder.step(minillm.tensor(nxt[:, 0], dtype="int64"), cache).numpy()
            else:
                logits, _ = model(minillm.tensor(nxt, dtype="int64"), kv_cache=cache)
                got = logits.numpy()[:, -1, :]
    assert cache.pos == seq.shape[1]


def test_kv_cache_update_returns_all_positions_and_checks_shapes():
    cache = KVCache(n_layer=1, batch=2, n_head=3, head_size=4, capacity=1)
    layer = cache.layers[0]
    a = minillm.randn(2, 3, 5, 4)
    b = minillm.randn(2, 3, 1, 4)
    k, v = layer.update(a, a * 2)
    cache.advance(5)
    k, v = layer.update(b, b * 2)
    cache.advance(1)
    want = np.concatenate([a.numpy(), b.numpy()], axis=2)
    assert k.shape == (2, 3, 6, 4) and cache.pos == 6
    np.testing.assert_array_equal(k.numpy(), want)
    np.testing.assert_array_equal(v.numpy(), want * 2)
    with pytest.raises(ValueError, match=r"\(B, n_head, T_new, head_size\)"):
        layer.update(minillm.randn(2, 4, 1, 4), minillm.randn(2, 4, 1, 4))
    with pytest.raises(RuntimeError, match="layer 0 holds 6 positions"):
        cache.advance(1)


# ------------------------------------------------------------------ generate
def test_greedy_is_deterministic_and_equals_argmax_of_recompute():
    model = tiny_gpt()
    prompt = [[5, 6, 7], [8, 9, 10]]
    out1 = generate(model, prompt, 12, greedy=True).numpy()
    out2 = generate(model, prompt, 12, greedy=True).numpy()
    np.testing.assert_array_equal(out1, out2)
    seq = np.array(prompt)
    for _ in range(12):
        seq = np.concatenate([seq, full_logits(model, seq).argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out1, seq)


@pytest.mark.parametrize("fast", [False, True])
def test_context_longer_than_block_size_is_cropped_like_nanogpt(fast):
    model = tiny_gpt(block_size=8)
    prompt = np.array([[1, 2, 3, 4, 5, 6]])
    out = generate(model, prompt, 10, greedy=True, fast=fast).numpy()
    seq = prompt
    for _ in range(10):
        seq = np.concatenate([seq, full_logits(model, seq[:, -8:]).argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    assert out.shape == (1, 16)


def test_prompt_longer_than_block_size_is_cropped():
    model = tiny_gpt(block_size=8)
    prompt = np.arange(1, 13)[None, :]           # 12 tokens, block 8
    out = generate(model, prompt, 3, greedy=True).numpy()
    np.testing.assert_array_equal(out[:, :12], prompt)
    assert out[0, 12] == full_logits(model, prompt[:, -8:]).argmax()


def test_models_without_kv_cache_generate_by_recompute():
    model = build_model("bigram", vocab_size=50, generator=minillm.Generator(3))
    out = generate(model, [[1, 2]], 6, greedy=True).numpy()
    seq = np.array([[1, 2]])
    for _ in range(6):
        with no_grad():
            lg, _ = model(minillm.tensor(seq, dtype="int64"))
        seq = np.concatenate([seq, lg.numpy()[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny_gpt()
    kw = dict(temperature=1.5, top_k=40, top_p=0.95)
    a = generate(model, [[1, 2, 3]] * 2, 30, generator=minillm.Generator(7), **kw).numpy()
    b = generate(model, [[1, 2, 3]] * 2, 30, generator=minillm.Generator(7), **kw).numpy()
    c = generate(model, [[1, 2, 3]] * 2, 30, generator=minillm.Generator(8), **kw).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_sampling_is_the_same_on_one_and_two_threads():
    model = tiny_gpt()
    old = minillm.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            minillm.set_num_threads(n)
            outs.append(generate(model, [[3, 4]], 20, generator=minillm.Generator(1)).numpy())
    finally:
        minillm.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_stop_tokens_end_rows_and_pad_with_the_stop_token():
    model = tiny_gpt()
    free = generate(model, [[5, 6, 7], [8, 9, 10]], 12, greedy=True).numpy()
    stop = int(free[0, 3 + 2])              # row 0's third new token
    out = generate(model, [[5, 6, 7], [8, 9, 10]], 12, greedy=True, stop_tokens=[stop]).numpy()
    # row 0 stops at its first occurrence of `stop`; later positions repeat it
    first = 3 + list(free[0, 3:]).index(stop)
    np.testing.assert_array_equal(out[0, :first + 1], free[0, :first + 1])
    assert (out[0, first:] == stop).all()
    if stop not in free[1, 3:]:
        assert out.shape[1] == free.shape[1]   # row 1 never stops: runs to the end
        np.testing.assert_array_equal(out[1], free[1])


def test_generation_ends_early_when_every_row_stopped():
    model = tiny_gpt()
    free = generate(model, [[5, 6, 7]], 12, greedy=True).numpy()
    stop = int(free[0, 4])
    out = generate(model, [[5, 6, 7]], 12, greedy=True, stop_tokens=(stop,)).numpy()
    assert out.shape[1] == 3 + list(free[0, 3:]).index(stop) + 1
    assert out[0, -1] == stop


def test_stream_gets_each_step_ids():
    model = tiny_gpt()
    seen = []
    out = generate(model, [[1, 2], [3, 4]], 5, greedy=True, stream=seen.append).numpy()
    assert len(seen) == 5
    np.testing.assert_array_equal(np.array(seen).T, out[:, 2:])


def test_generate_restores_training_mode():
    model = tiny_gpt()
    model.train()
    generate(model, [[1]], 2)
    assert model.training


def test_generate_rejects_bad_prompts():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="B, T >= 1"):
        generate(model, minillm.zeros(0, 3).astype("int64"), 2)
    with pytest.raises(TypeError, match="int64 token ids"):
        generate(model, minillm.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1]], -1)


# ------------------------------------------------------------------ sampling
def test_temperature_zero_means_greedy_and_bad_values_raise():
    logits = minillm.tensor([[0.1, 3.0, 2.9, -1.0]])
    assert sample_next(logits, temperature=0).tolist() == [1]
    for t in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            sample_next(logits, temperature=t)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0)
    np.testing.assert_allclose(apply_temperature(logits, 2.0).numpy(), logits.numpy() / 2.0)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_top_k_below_one_raises(k):
    with pytest.raises(ValueError, match="top_k"):
        sample_next(minillm.tensor([[0.0, 1.0]]), top_k=k)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan")])
def test_top_p_outside_unit_interval_raises(p):
    with pytest.raises(ValueError, match="top_p"):
        sample_next(minillm.tensor([[0.0, 1.0]]), top_p=p)
    with pytest.raises(ValueError, match="top_p"):
        check_sampling_args(top_p=p)


def test_top_k_filter_keeps_the_k_largest_ties_to_smaller_id():
    logits = minillm.tensor([[1.0, 5.0, 3.0, 5.0, 3.0, -2.0],
                             [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    kept = np.isfinite(top_k_filter(logits, 3).numpy())
    np.testing.assert_array_equal(kept, [[0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    out = top_k_filter(logits, 3).numpy()
    np.testing.assert_array_equal(out[kept], logits.numpy()[kept])   # kept values unchanged
    assert np.isfinite(top_k_filter(logits, 10).numpy()).all()      # k >= V: no change


def test_top_k_filter_matches_numpy_on_random_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 300)).astype(np.float32)
    for k in (1, 7, 299):
        kept = np.isfinite(top_k_filter(minillm.from_numpy(x), k).numpy())
        want = np.zeros_like(kept)
        np.put_along_axis(want, np.argsort(-x, axis=1, kind="stable")[:, :k], True, axis=1)
        np.testing.assert_array_equal(kept, want)


def nucleus_reference(probs, p):
    """The smallest set (most likely first, ties to the smaller id) with mass >= p."""
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    total, keep = 0.0, []
    for i in order:
        keep.append(i)
        total += probs[i]
        if total >= p:
            break
    return set(keep)


def test_top_p_filter_keeps_smallest_set_on_a_hand_built_distribution():
    probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15])
    logits = minillm.tensor(np.log(probs)[None, :].astype(np.float32))
    cases = {0.3: {1}, 0.55: {1, 3}, 0.69: {1, 3}, 0.71: {1, 3, 4}, 0.86: {1, 3, 4, 2}, 0.96: {0, 1, 2, 3, 4},
             1.0: {0, 1, 2, 3, 4}}
    for p, want in cases.items():
        kept = set(np.flatnonzero(np.isfinite(top_p_filter(logits, p).numpy()[0])))
        assert kept == want, (p, kept)
        assert kept == nucleus_reference(probs, p)


def test_top_p_filter_matches_reference_on_random_rows():
    rng = np.random.default_rng(1)
    for _ in range(40):
        V = int(rng.integers(2, 400))
        x = (rng.standard_normal(V) * rng.uniform(0.1, 4)).astype(np.float32)
        p = float(rng.uniform(0.01, 1.0))
        probs = np.exp(x.astype(np.float64) - x.max())
        probs /= probs.sum()
        kept = set(np.flatnonzero(np.isfinite(top_p_filter(minillm.tensor(x[None, :]), p).numpy()[0])))
        want = nucleus_reference(probs, p)
        # a cut within float rounding of p may legitimately differ by the boundary token
        s = sorted(probs, reverse=True)
        if abs(np.cumsum(s)[len(want) - 1] - p) > 1e-6:
            assert kept == want


def counts_of(logits, n, seed, **kw):
    logits = minillm.tensor(np.repeat(logits[None, :], n, axis=0).astype(np.float32))
    ids = sample_next(logits, generator=minillm.Generator(seed), **kw).numpy()
    return np.bincount(ids, minlength=logits.shape[1])


def assert_counts_match(counts, probs):
    n = counts.sum()
    for c, p in zip(counts, probs):
        if p == 0:
            assert c == 0
        else:   # within 5 standard deviations of the binomial
            assert abs(c - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (counts, probs * n)


def test_draw_counts_follow_softmax():
    x = np.array([0.0, 1.0, -1.0, 2.0, 0.5])
    probs = np.exp(x) / np.exp(x).sum()
    assert_counts_match(counts_of(x, 40000, 0), probs)


def test_temperature_top_k_top_p_sample_counts():
    x = np.log(np.array([0.05, 0.5, 0.1, 0.2, 0.15]))
    # top-p 0.8: nucleus {1, 3, 4}, renormalised
    probs = np.array([0, 0.5, 0, 0.2, 0.15]) / 0.85
    assert_counts_match(counts_of(x, 40000, 1, top_p=0.8), probs)
    # top-k 2: {1, 3}
    assert_counts_match(counts_of(x, 40000, 2, top_k=2), np.array([0, 0.5, 0, 0.2, 0]) / 0.7)
    # temperature 2: softmax(x / 2)
    t = np.exp(x / 2) / np.exp(x / 2).sum()
    assert_counts_match(counts_of(x, 40000, 3, temperature=2.0), t)


def test_top_k_never_emits_a_token_outside_the_k_most_likely():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    ids = sample_next(minillm.from_numpy(x), top_k=5, generator=minillm.Generator(4)).numpy()
    top5 = np.argsort(-x, axis=1)[:, :5]
    assert (top5 == ids[:, None]).any(axis=1).all()


def test_draw_takes_uniforms_from_the_generator():
    logits = minillm.randn(4, 10)
    g = minillm.Generator(11)
    a = draw(logits, g).tolist()
    b = draw(logits, minillm.Generator(11)).tolist()
    assert a == b and g.offset > 0


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("isa", minillm.supported_isas())
@pytest.mark.parametrize("shape", [(1, 2304, 768), (3, 7, 13), (2, 50, 33), (4, 1, 17)])
def test_linear_rows_matches_numpy(isa, shape):
    M, N, K = shape
    rng = np.random.default_rng(M * N + K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((M, N)).astype(np.float32)
    old = minillm.get_isa()
    minillm.set_isa(isa)
    try:
        y = _C.linear_rows(minillm.from_numpy(x), minillm.from_numpy(w), minillm.from_numpy(b)).numpy()
        yg = _C.linear_rows(minillm.from_numpy(x), minillm.from_numpy(w), minillm.from_numpy(b),
                            minillm.from_numpy(r), True).numpy()
    finally:
        minillm.set_isa(old)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    tol = 1e-5 * math.sqrt(K) * 4
    np.testing.assert_allclose(y, ref, atol=tol, rtol=1e-5)
    gelu = 0.5 * ref * (1 + np.tanh(math.sqrt(2 / math.pi) * (ref + 0.044715 * ref ** 3)))
    np.testing.assert_allclose(yg, gelu + r, atol=tol, rtol=1e-5)


def test_linear_rows_is_bitwise_the_same_on_one_and_two_threads():
    rng = np.random.default_rng(0)
    x = minillm.from_numpy(rng.standard_normal((2, 512)).astype(np.float32))
    w = minillm.from_numpy(rng.standard_normal((1001, 512)).astype(np.float32))
    old = minillm.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            minillm.set_num_threads(n)
            outs.append(_C.linear_rows(x, w).numpy())
    finally:
        minillm.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_linear_rows_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match weight"):
        _C.linear_rows(minillm.randn(1, 5), minillm.randn(3, 4))
    with pytest.raises(ValueError, match="add of shape"):
        _C.linear_rows(minillm.randn(1, 4), minillm.randn(3, 4), None, minillm.randn(2, 3))


def test_kv_attention_step_matches_numpy():
    rng = np.random.default_rng(2)
    B, nh, hs, pos, S = 2, 3, 20, 6, 9
    kc = rng.standard_normal((S, B, nh, hs)).astype(np.float32)
    vc = rng.standard_normal((S, B, nh, hs)).astype(np.float32)
    qkv = rng.standard_normal((B, 3 * nh * hs)).astype(np.float32)
    kt, vt = minillm.from_numpy(kc.copy()), minillm.from_numpy(vc.copy())
    y = _C.kv_attention_step(minillm.from_numpy(qkv), kt, vt, pos).numpy()
    C = nh * hs
    q = qkv[:, :C].reshape(B, nh, hs).astype(np.float64)
    k = kc.astype(np.float64).copy()
    v = vc.astype(np.float64).copy()
    k[pos] = qkv[:, C:2 * C].reshape(B, nh, hs)
    v[pos] = qkv[:, 2 * C:].reshape(B, nh, hs)
    s = np.einsum("bhd,tbhd->bht", q, k[:pos + 1]) / math.sqrt(hs)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bht,tbhd->bhd", p, v[:pos + 1]).reshape(B, C)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(kt.numpy()[pos], k[pos].astype(np.float32))
    np.testing.assert_array_equal(kt.numpy()[pos + 1:], kc[pos + 1:])   # rows past pos untouched


# ------------------------------------------------------------------ CLI
def make_checkpoint(folder):
    """A trainer checkpoint folder (minillm.checkpoint.save_checkpoint) of a tiny GPT."""
    import os
    import tempfile
    from minillm.checkpoint import save_checkpoint
    from minillm.tokenizers import BPETokenizer
    tok = BPETokenizer().train("the king and the queen and the castle " * 20, vocab_size=280)
    model = tiny_gpt(vocab_size=tok.vocab_size)
    with tempfile.TemporaryDirectory() as tok_dir:
        tok.save(tok_dir)
        save_checkpoint(folder, model, model.configure_optimizers(0.0, 1e-3), {"step": 0},
                        {"model": model.config.to_dict(), "train": {}},
                        tokenizer_file=os.path.join(tok_dir, "tokenizer.json"))
    return model, tok


def test_cli_sample_streams_the_greedy_continuation(tmp_path, capsys):
    from minillm import cli
    model, tok = make_checkpoint(str(tmp_path / "ckpt"))
    assert cli.main(["sample", "--ckpt", str(tmp_path / "ckpt"), "--prompt", "the king", "--greedy",
                     "--max-new-tokens", "12", "--no-stop"]) == 0
    out, err = capsys.readouterr()
    ids = generate(model, [tok.encode("the king")], 12, greedy=True).numpy()[0].tolist()
    assert out == tok.decode(ids) + "\n"
    assert "12 new tokens" in err and "tokens/s" in err


def test_cli_sample_reads_a_run_folder_and_interactive_prompts(tmp_path, capsys, monkeypatch):
    import io
    from minillm import cli
    model, tok = make_checkpoint(str(tmp_path / "run" / "checkpoints" / "step_10"))
    monkeypatch.setattr("sys.stdin", io.StringIO("the queen\nthe castle\n\n"))
    assert cli.main(["sample", "--ckpt", str(tmp_path / "run"), "--interactive", "--greedy",
                     "--max-new-tokens", "5", "--no-stop"]) == 0
    out, err = capsys.readouterr()
    for prompt in ("the queen", "the castle"):
        ids = generate(model, [tok.encode(prompt)], 5, greedy=True).numpy()[0].tolist()
        assert tok.decode(ids) in out
    assert err.count("tokens/s") == 2


def test_cli_sample_errors_name_the_folder(tmp_path, capsys):
    from minillm import cli
    assert cli.main(["sample", "--ckpt", str(tmp_path), "--prompt", "x"]) == 1
    assert str(tmp_path) in capsys.readouterr().err


def test_decoder_logits_are_bitwise_the_same_on_one_and_two_threads():
    model = tiny_gpt(n_embd=64, vocab_size=1500).eval()
    old = minillm.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            minillm.set_num_threads(n)
            cache = KVCache.for_model(model, 2)
            with no_grad():
                model(minillm.tensor([[1, 2, 3], [4, 5, 6]], dtype="int64"), kv_cache=cache)
            dec = model.decoder()
            steps = [dec.step(minillm.tensor([7 + i, 9 + i], dtype="int64"), cache).numpy() for i in range(4)]
            outs.append(np.stack(steps))
    finally:
        minillm.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])
