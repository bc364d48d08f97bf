"""Decoding kernels and their plumbing: attention over a long cache on any thread count and
ISA, the GELU linear layer, the read-roof sum, huge-page advice on weights, and GPT.decoder()
with and without it (logits vs full recomputation)."""
import math

import numpy as np
import pytest

import minillm
from minillm import _C
from minillm import _testing
from minillm.autograd import no_grad
from minillm.generate import KVCache
from minillm.models import build_model


def attention_ref(qkv, kc, vc, pos):
    """float64 reference of kv_attention_step: returns y (B, C) and the caches after the write."""
    S, B, nh, hs = kc.shape
    C = nh * hs
    k, v = kc.astype(np.float64), vc.astype(np.float64)
    k[pos] = qkv[:, C:2 * C].reshape(B, nh, hs)
    v[pos] = qkv[:, 2 * C:].reshape(B, nh, hs)
    q = qkv[:, :C].reshape(B, nh, hs).astype(np.float64)
    s = np.einsum("bhd,tbhd->bht", q, k[:pos + 1]) / math.sqrt(hs)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bht,tbhd->bhd", p, v[:pos + 1]).reshape(B, C)


@pytest.mark.parametrize("isa", minillm.supported_isas())
@pytest.mark.parametrize("shape", [(1, 12, 64, 150), (2, 3, 20, 9), (3, 5, 33, 40)])
def test_kv_attention_step_matches_numpy_on_every_isa(isa, shape):
    B, nh, hs, pos = shape
    rng = np.random.default_rng(pos)
    S = pos + 3
    kc = rng.standard_normal((S, B, nh, hs)).astype(np.float32)
    vc = rng.standard_normal((S, B, nh, hs)).astype(np.float32)
    qkv = rng.standard_normal((B, 3 * nh * hs)).astype(np.float32)
    old = minillm.get_isa()
    minillm.set_isa(isa)
    try:
        y = _C.kv_attention_step(minillm.from_numpy(qkv), minillm.from_numpy(kc.copy()),
                                 minillm.from_numpy(vc.copy()), pos).numpy()
    finally:
        minillm.set_isa(old)
    np.testing.assert_allclose(y, attention_ref(qkv, kc, vc, pos), atol=2e-5, rtol=1e-5)


def test_kv_attention_step_is_bitwise_the_same_on_one_and_two_threads():
    # long enough (B nh S hs 2 >= 2^20 multiply-adds) that two threads split the heads
    B, nh, hs, pos = 2, 6, 64, 700
    rng = np.random.default_rng(5)
    kc = rng.standard_normal((pos + 1, B, nh, hs)).astype(np.float32)
    vc = rng.standard_normal((pos + 1, B, nh, hs)).astype(np.float32)
    qkv = minillm.from_numpy(rng.standard_normal((B, 3 * nh * hs)).astype(np.float32))
    old = minillm.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            minillm.set_num_threads(n)
            outs.append(_C.kv_attention_step(qkv, minillm.from_numpy(kc.copy()), minillm.from_numpy(vc.copy()),
                                             pos).numpy())
    finally:
        minillm.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], attention_ref(qkv.numpy(), kc, vc, pos), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_linear_rows_gelu_over_many_chunks_matches_numpy(threads):
    # N large enough for the pool to cut it into many chunks, each GELU'd on its own
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    w = (rng.standard_normal((3001, 256)) / 16).astype(np.float32)
    b = rng.standard_normal(3001).astype(np.float32)
    old = minillm.get_num_threads()
    minillm.set_num_threads(threads)
    try:
        y = _C.linear_rows(minillm.from_numpy(x), minillm.from_numpy(w), minillm.from_numpy(b), gelu=True).numpy()
    finally:
        minillm.set_num_threads(old)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    gelu = 0.5 * ref * (1 + np.tanh(math.sqrt(2 / math.pi) * (ref + 0.044715 * ref ** 3)))
    np.testing.assert_allclose(y, gelu, atol=1e-5, rtol=1e-5)


def test_linear_rows_gelu_with_the_residual_in_place():
    rng = np.random.default_rng(4)
    x = minillm.from_numpy(rng.standard_normal((2, 64)).astype(np.float32))
    w = minillm.from_numpy(rng.standard_normal((40, 64)).astype(np.float32) / 8)
    r = rng.standard_normal((2, 40)).astype(np.float32)
    y = _C.linear_rows(x, w, None, minillm.from_numpy(r), True).numpy()
    ref = x.numpy().astype(np.float64) @ w.numpy().T.astype(np.float64)
    gelu = 0.5 * ref * (1 + np.tanh(math.sqrt(2 / math.pi) * (ref + 0.044715 * ref ** 3)))
    np.testing.assert_allclose(y, gelu + r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 17, 65536, 65536 * 3 + 5])
def test_stream_sum_matches_numpy_and_thread_count(n):
    x = np.random.default_rng(n).random(n).astype(np.float32)
    old = minillm.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            minillm.set_num_threads(t)
            outs.append(_testing.stream_sum(minillm.from_numpy(x)))
    finally:
        minillm.set_num_threads(old)
    assert outs[0] == outs[1]
    assert outs[0] == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-5)


def test_advise_hugepages_keeps_the_values_and_reports_the_bytes():
    x = minillm.from_numpy(np.arange(3 << 20, dtype=np.float32))       # 12 MiB
    before = x.numpy().copy()
    neighbour = minillm.from_numpy(np.arange(1000, dtype=np.float32))  # may share an end page
    got = _C.advise_hugepages(x)
    assert got == -1 or (5 << 21) <= got <= x.nbytes
    np.testing.assert_array_equal(x.numpy(), before)
    np.testing.assert_array_equal(neighbour.numpy(), np.arange(1000, dtype=np.float32))
    assert _C.advise_hugepages(minillm.zeros(10)) in (40, -1)           # within one huge page
    with pytest.raises(TypeError, match="expected a Tensor"):
        _C.advise_hugepages(np.zeros(4, np.float32))


@pytest.mark.parametrize("hugepages", [False, True])
def test_gpt_decoder_logits_match_full_recompute_with_and_without_hugepages(hugepages):
    # n_embd 512: c_fc's weight is 4 MiB, so the huge-page path really moves pages
    model = build_model("gpt-tiny", generator=minillm.Generator(1), vocab_size=300, block_size=16,
                        n_layer=1, n_head=8, n_embd=512).eval()
    with no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p *= 3.0
    seq = np.array([[1, 2, 3, 4]])
    cache = KVCache.for_model(model, 1)
    dec = model.decoder(hugepages=hugepages)
    assert dec.hugepage_bytes >= 0 and (hugepages or dec.hugepage_bytes == 0)
    with no_grad():
        model(minillm.tensor(seq, dtype="int64"), kv_cache=cache)
        for t in (5, 6, 7):
            got = dec.step(minillm.tensor([t], dtype="int64"), cache).numpy()
            seq = np.concatenate([seq, [[t]]], axis=1)
            logits, _ = model(minillm.tensor(seq, dtype="int64"))
            np.testing.assert_allclose(got, logits.numpy()[:, -1], atol=1e-5, rtol=1e-5)
