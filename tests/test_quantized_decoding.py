"""Decoding with bf16 and int8 weights: the kernels against NumPy on every ISA (bf16: float32
products of the stored values; int8: x quantized per group as gemv.c defines, integer dot
products per group, so both checks are exact up to float32 summation order), the int8
quantizer against its definition, and GPT decode plans with bf16 / int8 weights against the
float32 plan (bf16: exactly the plan of the values the bf16 weights stand for)."""
import contextlib

import numpy as np
import pytest

import minillm
from minillm import _C
from minillm.generate import KVCache
from minillm.models import GPT
from minillm.models.gpt import GPTConfig
from minillm.quantize import decoding_weight, int8_group, quantize_int8
from conftest import bf16_values, round_bf16_bits


def int8_linear_reference(x, m):
    """y = x @ W^T as the int8 kernels define it: x quantized per row and group (float32
    arithmetic: scale = max|x| / 127, q = rint(x / scale)), exact integer sums per group,
    scaled by the weight's and x's scales."""
    group = m.group
    M, K = x.shape
    xg = x.reshape(M, K // group, group)
    xs = np.abs(xg).max(axis=2) / np.float32(127)
    xq = np.where(xs[:, :, None] > 0, np.rint(xg / np.where(xs > 0, xs, 1)[:, :, None]), 0).astype(np.int64)
    wq = m.values.numpy().view(np.int8).astype(np.int64)
    N = wq.shape[0]
    dots = np.einsum("mgk,ngk->mng", xq, wq.reshape(N, K // group, group))        # exact integers
    scale = m.scales.numpy().astype(np.float64)[None, :, :] * xs.astype(np.float64)[:, None, :]
    return (dots * scale).sum(axis=2)


def int8_reference(w, group):
    N, K = w.shape
    g = w.reshape(N, K // group, group).astype(np.float64)
    scale = np.abs(g).max(axis=2) / 127.0
    q = np.where(scale[:, :, None] > 0, np.rint(g / np.where(scale > 0, scale, 1)[:, :, None]), 0)
    return q.reshape(N, K), scale


SHAPES = [(1, 5, 64), (3, 9, 128), (2, 17, 48), (4, 8, 200), (1, 130, 1024)]


# the switches of the dtypes' special instructions: AVX512-VNNI for int8, x in bf16 for bf16
SWITCHES = {"vnni": (_C.get_vnni, _C.set_vnni), "bf16_x": (_C.get_bf16_x, _C.set_bf16_x)}
VNNI = _C.cpu_info()["avx512_vnni"]
BF16 = _C.cpu_info()["avx512_bf16"]


@contextlib.contextmanager
def kernel_path(isa, switch, on):
    """The kernels of `isa` with SWITCHES[switch] at `on` (None: as it is); both restored after."""
    get, put = SWITCHES[switch]
    before = _C.get_isa(), get()
    _C.set_isa(isa)
    try:
        if on is not None:
            put(on)
        yield
    finally:
        _C.set_isa(before[0])
        put(before[1])


def paths(has):
    """Every ISA path with the switch off, and avx512 with it on where the CPU has it."""
    return [(isa, False) for isa in _C.supported_isas()] + ([("avx512", True)] if has else [])


BF16_PATHS, INT8_PATHS = paths(BF16), paths(VNNI)


@pytest.fixture(params=BF16_PATHS, ids=[isa + ("-bf16x" if on else "") for isa, on in BF16_PATHS])
def bf16_path(request):
    """Runs the test once per bf16 kernel this CPU can run: each ISA with x in float32, and
    avx512 with x rounded to bf16 (AVX512-BF16)."""
    with kernel_path(request.param[0], "bf16_x", request.param[1]):
        yield request.param


@pytest.fixture(params=INT8_PATHS, ids=[isa + ("-vnni" if on else "") for isa, on in INT8_PATHS])
def int8_path(request):
    """Runs the test once per int8 kernel this CPU can run: each ISA, and avx512 with VNNI."""
    with kernel_path(request.param[0], "vnni", request.param[1]):
        yield request.param


# N = 7, 5, 3: a last block of 4 rows with 3, 1, 3 of them real; K = 93, 200, 300: a last block of
# 32 columns with 29, 8, 12 of them real (the bf16 blocks' zero padding, against x's)
@pytest.mark.parametrize("M,N,K", SHAPES + [(2, 7, 93), (3, 5, 200), (2, 3, 300)])
def test_bf16_linear_matches_numpy(bf16_path, M, N, K):
    rng = np.random.default_rng(N * K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    wb = minillm.from_numpy(w).astype("bfloat16")
    y = _C.decode_linear(minillm.from_numpy(x), wb, minillm.from_numpy(b)).numpy()
    xs = bf16_values(x) if bf16_path[1] else x            # x in bf16 too: the products of both's values
    want = xs.astype(np.float64) @ bf16_values(w).T.astype(np.float64) + b
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4 * np.sqrt(K))
    if bf16_path[1]:                                        # which x in float32 would not give
        exact = x.astype(np.float64) @ bf16_values(w).T.astype(np.float64) + b
        assert np.abs(exact - want).max() > 1e-3


@pytest.mark.parametrize("M,N,K,group", [s + (None,) for s in SHAPES] + [(3, 9, 128, 16), (3, 9, 128, 32),
                                                                         (2, 17, 48, 16), (1, 6, 64, 8),
                                                                         (2, 5, 256, 128), (8, 21, 768, 64)])
def test_int8_linear_matches_numpy(int8_path, M, N, K, group):
    rng = np.random.default_rng(N + K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) * rng.uniform(0.1, 3, size=(N, 1))).astype(np.float32)
    add = rng.standard_normal((M, N)).astype(np.float32)
    m = quantize_int8(w, group)
    y = _C.decode_linear(minillm.from_numpy(x), m, add=minillm.from_numpy(add)).numpy()
    want = int8_linear_reference(x, m) + add
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.sqrt(K))
    # and x's quantization is a small error against the float32 product of W's values
    full = x.astype(np.float64) @ m.dequantize().numpy().T.astype(np.float64) + add
    assert np.abs(y - full).max() <= 0.05 * np.abs(full - add).max()


@pytest.mark.parametrize("dtype", ["float32", "bf16", "int8"])
@pytest.mark.parametrize("M,K", [(7, 93), (8, 768), (5, 2368)])
def test_rows_of_a_batch_are_the_bits_of_each_row_alone(isa, dtype, M, K):
    """The batched products (eight, four or two rows of x per load of the weights) give each row
    the very sums it gets alone: a sequence decodes the same in a batch as by itself."""
    if dtype == "int8" and K % 64:
        K = 64 * (K // 64 + 1)
    rng = np.random.default_rng(M + K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = decoding_weight(minillm.from_numpy(rng.standard_normal((11, K)).astype(np.float32)), dtype)
    switch, has = {"int8": ("vnni", VNNI), "bf16": ("bf16_x", BF16)}.get(dtype, ("vnni", False))
    for on in [False, True] if has and isa == "avx512" else [None]:
        with kernel_path(isa, switch, on):
            batch = _C.decode_linear(minillm.from_numpy(x), w).numpy()
            for i in range(M):
                alone = _C.decode_linear(minillm.from_numpy(x[i:i + 1]), w).numpy()
                np.testing.assert_array_equal(batch[i:i + 1], alone, err_msg=f"row {i}, switch {on}")


# M = 9: a block of 8 rows of x and one more; N = 77, 130: a last tile of 13 and 2 rows; K = 2368:
# 37 groups; group 8: an odd number of column quads per group; K = 40: a group of the whole row
@pytest.mark.parametrize("M,N,K,group", [(1, 130, 1024, 64), (9, 77, 768, 64), (3, 9, 256, 128), (2, 17, 48, 16),
                                         (7, 9, 2368, 64), (5, 6, 1088, 64), (4, 21, 40, 8), (6, 33, 40, 40)])
def test_int8_products_are_the_same_bits_on_every_path(M, N, K, group):
    """The portable, AVX2, AVX-512 and VNNI kernels make the same integers per group and scale
    them in the same order: the same bits."""
    rng = np.random.default_rng(M * N)
    x = minillm.from_numpy(rng.standard_normal((M, K)).astype(np.float32))
    m = quantize_int8(rng.standard_normal((N, K)).astype(np.float32), group)
    # the extremes of the int8 range, where a wrong sign or offset trick would show
    x[0] = minillm.from_numpy(np.where(np.arange(K) % 3, 1.0, -1.0).astype(np.float32))
    got = {}
    for isa, on in INT8_PATHS:
        with kernel_path(isa, "vnni", on):
            got[isa, on] = _C.decode_linear(x, m).numpy()
    first = next(iter(got))
    for path, y in got.items():
        np.testing.assert_array_equal(y, got[first], err_msg=f"{path} against {first}")


@pytest.mark.parametrize("N,K,group", [(1, 64, 64), (16, 40, 8), (17, 128, 32), (45, 96, 96)])
def test_int8_matrix_keeps_its_values_in_tiles_of_16_rows(N, K, group):
    """The tiles hold the layout gemv.c documents (built here from the definition), rows past N
    padded with q = 0 and scale 0; values and scales come back unchanged."""
    rng = np.random.default_rng(N * K)
    q = rng.integers(-127, 128, size=(N, K)).astype(np.int8)
    s = rng.uniform(0.01, 1, size=(N, K // group)).astype(np.float32)
    m = _C.Int8Matrix(minillm.from_numpy(q.view(np.uint8)), minillm.from_numpy(s), group)
    np.testing.assert_array_equal(m.values.numpy().view(np.int8), q)
    np.testing.assert_array_equal(m.scales.numpy(), s)
    blocks = (N + 15) // 16
    qp = np.zeros((blocks * 16, K), np.int16)
    qp[:N] = q
    sp = np.zeros((blocks * 16, K // group), np.float32)
    sp[:N] = s
    # tiles[b][k / 4][r][k % 4] = q[16 b + r][k] + 128;  tile_scales[b][g][r] = scale[16 b + r][g]
    want = (qp + 128).astype(np.uint8).reshape(blocks, 16, K // 4, 4).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(m.tiles.numpy().reshape(blocks, K // 4, 16, 4), want)
    np.testing.assert_array_equal(m.tile_scales.numpy().reshape(blocks, K // group, 16),
                                  sp.reshape(blocks, 16, K // group).transpose(0, 2, 1))


@pytest.mark.parametrize("N,K", [(1, 32), (4, 45), (7, 64), (9, 93)])
def test_bf16_matrix_keeps_its_values_in_blocks_of_4_rows(N, K):
    """The blocks hold the layout gemv.c documents (built here from the definition), rows past
    N and columns past K zero; the values come back unchanged."""
    rng = np.random.default_rng(N * K)
    w = minillm.from_numpy(rng.standard_normal((N, K)).astype(np.float32)).astype("bfloat16")
    m = _C.Bf16Matrix(w)
    bits = w.numpy()
    np.testing.assert_array_equal(m.values.numpy(), bits)
    nb, Kp = (N + 3) // 4, (K + 31) // 32 * 32
    padded = np.zeros((4 * nb, Kp), np.uint16)
    padded[:N, :K] = bits
    # blocks[b][k / 32][r][k % 32] = W[4 b + r][k]
    want = padded.reshape(nb, 4, Kp // 32, 32).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(m.blocks.numpy().reshape(nb, Kp // 32, 4, 32), want)
    assert m.nbytes == 4 * nb * Kp * 2
    # and a float32 matrix is rounded to nearest even on the way in
    f = rng.standard_normal((N, K)).astype(np.float32)
    np.testing.assert_array_equal(_C.Bf16Matrix(minillm.from_numpy(f)).values.numpy(), round_bf16_bits(f))


@pytest.mark.parametrize("dtype,C", [("int8", 24), ("bf16", 18)])
def test_fused_qkv_whose_parts_are_not_whole_blocks_is_split(dtype, C):
    """q, k, v of C rows each, not a multiple of the int8 tiles' 16 rows (24) or of the bf16
    blocks' 4 (18), in one fused matrix step exactly as the three given apart."""
    rng = np.random.default_rng(5)
    nh = 3
    narrow = (lambda w: quantize_int8(w)) if dtype == "int8" else (lambda w: _C.Bf16Matrix(minillm.from_numpy(w)))
    qkv = rng.standard_normal((3 * C, C)).astype(np.float32)
    common = {"norm1.weight": minillm.ones(C), "norm1.bias": minillm.zeros(C), "norm2.weight": minillm.ones(C),
              "norm2.bias": minillm.zeros(C),
              "o.weight": narrow(rng.standard_normal((C, C)).astype(np.float32)),
              "up.weight": narrow(rng.standard_normal((4 * C, C)).astype(np.float32)),
              "down.weight": narrow(rng.standard_normal((C, 4 * C)).astype(np.float32))}
    fused = dict(common, **{"qkv.weight": narrow(qkv)})
    apart = dict(common, **{"q.weight": narrow(qkv[:C]), "k.weight": narrow(qkv[C:2 * C]),
                            "v.weight": narrow(qkv[2 * C:])})
    x0 = rng.standard_normal((2, C)).astype(np.float32)
    out = []
    for weights in (fused, apart):
        block = _C.DecodeBlock(weights, n_embd=C, n_head=nh, d_ff=4 * C)
        assert ("qkv.weight" in block.weights) == (weights is fused and not (C % {"int8": 16, "bf16": 4}[dtype]))
        x = minillm.from_numpy(x0.copy())
        kc, vc = _C.zeros((4, 2, nh, C // nh)), _C.zeros((4, 2, nh, C // nh))
        for pos in range(3):
            _C.block_step(x, block, kc, vc, pos, _C.empty((block.scratch_floats(2, 4),)))
        out.append(x.numpy())
    np.testing.assert_array_equal(out[0], out[1])
    assert np.abs(out[0] - x0).max() > 0.1


def tiny_qwen():
    """A gated-SiLU family with int8 groups of 64 (n_embd 64, d_ff 128), q/k/v biases."""
    from minillm.models.llama import Llama, LlamaConfig
    minillm.manual_seed(2)
    return Llama(LlamaConfig(architecture="Qwen2ForCausalLM", vocab_size=96, block_size=32, n_layer=2, n_head=4,
                             n_kv_head=2, n_embd=64, d_ff=128, qkv_bias=True, tie_weights=False)).eval()


def step_rows_logits(model, plan, prompts, steps=4):
    """Logits (steps, B, V) of stepping the B prompts' sequences together (the batched path,
    two rows of x per weight read) after a forward over each prompt."""
    caches = []
    for p in prompts:
        c = KVCache.for_model(model, 1, capacity=16)
        with minillm.no_grad():
            model(minillm.tensor([p], dtype="int64"), kv_cache=c)
        caches.append(c)
    toks, out = [11, 12, 13], []
    for _ in range(steps):
        out.append(plan.step_rows(minillm.tensor(toks, dtype="int64"), caches).numpy().copy())
        toks = [int(t) + 1 for t in out[-1].argmax(axis=1)]
    return np.array(out)


@pytest.mark.skipif(not VNNI, reason="this CPU has no AVX512-VNNI")
@pytest.mark.parametrize("family", ["gpt", "qwen2"])
def test_int8_batched_steps_give_the_same_bits_with_and_without_vnni(family):
    model = tiny_gpt() if family == "gpt" else tiny_qwen()
    plan = model.decoder(hugepages=False, weights="int8")
    got = {}
    for on in (False, True):
        with kernel_path("avx512", "vnni", on):
            got[on] = step_rows_logits(model, plan, [[1, 2, 3, 4, 5], [7], [9, 8, 7]])
    np.testing.assert_array_equal(got[True], got[False])


def test_int8_input_quantization_rounds_halves_to_even(int8_path):
    # one-hot weights (q 127, scale 1/127) read x's quantized values back: y[j] = xq[j] * xscale
    K = 64
    x = np.concatenate([[127.0], np.arange(K - 1) / 2 - 15.5]).astype(np.float32)   # halves: scale 1
    x = np.stack([x, -x, 2 * x])
    m = quantize_int8(np.eye(K, dtype=np.float32), 64)
    y = _C.decode_linear(minillm.from_numpy(x), m).numpy()
    want = np.rint(x / np.abs(x).max(axis=1, keepdims=True) * 127) * (np.abs(x).max(axis=1, keepdims=True) / 127)
    np.testing.assert_array_equal(y, want.astype(np.float32))


def test_int8_gelu_epilogue_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    m = quantize_int8(w)
    pre = int8_linear_reference(x, m)
    want = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))
    y = _C.decode_linear(minillm.from_numpy(x), m, gelu=True).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("K", [64, 96, 48, 40])
def test_quantize_int8_follows_its_definition(K):
    rng = np.random.default_rng(K)
    w = rng.standard_normal((7, K)).astype(np.float32)
    w[2, :] = 0.0                                         # a zero row: scale 0, values 0
    group = int8_group(K)
    assert group == {64: 64, 96: 32, 48: 16, 40: 40}[K]
    m = quantize_int8(w)
    q_ref, s_ref = int8_reference(w, group)
    np.testing.assert_array_equal(m.values.numpy().view(np.int8), q_ref)
    np.testing.assert_allclose(m.scales.numpy(), s_ref, rtol=1e-6)
    err = np.abs(m.dequantize().numpy() - w).reshape(7, K // group, group)
    assert (err <= m.scales.numpy()[:, :, None] * 0.5 + 1e-7).all()


def test_int8_matrix_rejects_bad_parts():
    vals = minillm.from_numpy(np.zeros((4, 32), np.uint8))
    with pytest.raises(ValueError, match="group 5 must be >= 1 and divide the 32 columns"):
        _C.Int8Matrix(vals, minillm.zeros((4, 6)), 5)
    with pytest.raises(ValueError, match=r"scales must be a contiguous float32 tensor of shape \(4, 2\)"):
        _C.Int8Matrix(vals, minillm.zeros((4, 3)), 16)
    with pytest.raises(ValueError, match="values must be a contiguous 2-D uint8 tensor"):
        _C.Int8Matrix(minillm.zeros((4, 32)), minillm.zeros((4, 2)), 16)
    with pytest.raises(ValueError, match=r"the columns \(30\) and the group \(30\) must be multiples of 4"):
        _C.Int8Matrix(minillm.from_numpy(np.zeros((4, 30), np.uint8)), minillm.zeros((4, 1)), 30)
    with pytest.raises(ValueError, match=r"the columns \(30\) and the group \(30\) to be multiples of 4"):
        quantize_int8(np.ones((2, 30), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(np.full((2, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown weight dtype 'int4'"):
        decoding_weight(minillm.zeros((2, 16)), "int4")
    with pytest.raises(ValueError, match=r"decode_linear: input of shape \(1, 16\) does not match weight"):
        _C.decode_linear(minillm.zeros((1, 16)), quantize_int8(np.zeros((4, 32), np.float32)))


def tiny_gpt(seed=0):
    """Untied, so that the head can hold narrow values while the embedding lookup stays float32
    (as the plan reads them)."""
    minillm.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=64, bias=True,
                         tie_weights=False)).eval()


def replaced_by(model, weights):
    """A copy of `model` whose streamed weights hold the values `weights` stores them as."""
    twin = tiny_gpt()
    twin.load_state_dict(model.state_dict())
    names = [n for n, p in twin.named_parameters() if p.ndim == 2 and not n.endswith(("wpe.weight", "wte.weight"))]
    sd = twin.state_dict()
    with minillm.no_grad():
        for n in names:
            vals = decoding_weight(sd[n], "int8").dequantize().numpy() if weights == "int8" \
                else bf16_values(sd[n].numpy())
            sd[n][...] = minillm.from_numpy(np.ascontiguousarray(vals, dtype=np.float32))
    return twin


def decode_logits(model, plan, tokens):
    cache = KVCache.for_model(model, 1, capacity=len(tokens))
    out = []
    for t in tokens:
        out.append(plan.step(minillm.tensor([t], dtype="int64"), cache).numpy()[0].copy())
    return np.array(out)


def test_gpt_plan_with_bf16_weights_matches_float32_plan_of_their_values():
    """x in float32: the plan of the float32 values the bf16 weights stand for. x in bf16 too
    (AVX512-BF16): within the rounding of the activations to 8 significant bits."""
    model = tiny_gpt()
    tokens = [3, 17, 5, 90, 41, 8, 8, 60]
    with kernel_path(_C.get_isa(), "bf16_x", False):
        got = decode_logits(model, model.decoder(hugepages=False, weights="bf16"), tokens)
    if BF16:
        with kernel_path("avx512", "bf16_x", True):
            got_x = decode_logits(model, model.decoder(hugepages=False, weights="bf16"), tokens)
    twin = replaced_by(model, "bf16")
    want = decode_logits(twin, twin.decoder(hugepages=False), tokens)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # and the narrow weights do differ from the float32 ones, so this can fail
    full = decode_logits(model, model.decoder(hugepages=False), tokens)
    assert np.abs(full - got).max() > 1e-4
    if BF16:
        scale = np.abs(want).max()
        assert 1e-5 * scale < np.abs(got_x - want).max() < 2e-2 * scale


def test_gpt_plan_with_int8_weights_stays_close_to_float32():
    model = tiny_gpt()
    tokens = [3, 17, 5, 90, 41, 8, 8, 60]
    got = decode_logits(model, model.decoder(hugepages=False, weights="int8"), tokens)
    full = decode_logits(model, model.decoder(hugepages=False), tokens)
    err = np.abs(full - got).max() / np.abs(full).max()
    assert 1e-5 < err < 0.03


def test_int8_nan_input_gives_nan_not_garbage():
    m = quantize_int8(np.ones((4, 64), np.float32))
    x = np.ones((2, 64), np.float32)
    x[1, 5] = np.nan
    y = _C.decode_linear(minillm.from_numpy(x), m).numpy()
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()


def test_generate_takes_a_prebuilt_int8_plan():
    model = tiny_gpt()
    plan = model.decoder(hugepages=False, weights="int8")
    out = minillm.generate.generate(model, [[1, 2, 3]], 10, greedy=True, decoder=plan).tolist()[0]
    full = minillm.generate.generate(model, [[1, 2, 3]], 10, greedy=True).tolist()[0]
    assert len(out) == 13 and out[:3] == [1, 2, 3]
    # a tiny random model's int8 argmax mostly agrees with float32's
    assert sum(a == b for a, b in zip(out[3:], full[3:])) >= 5
