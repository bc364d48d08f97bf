"""The C kernels (csrc/elementwise.c, blas1.c, reduce.c, softmax.c, layernorm.c,
embedding.c, matmul_ref.c) against NumPy references computed in float64.

Every test runs on every ISA path this CPU can run (the autouse `isa` fixture), on sizes
that are not multiples of any vector width, and runs each kernel with 1 and with 2
threads, requiring bitwise identical results (`both_threads`). The sizes include some
above the kernels' parallel threshold (32K elements) so the 2-thread run really splits.
"""
import os

import numpy as np
import pytest

from minillm import _C
from minillm import _testing
from conftest import round_bf16_bits

SIZES = [1, 3, 7, 17, 33, 1000, 4097, 100003]
SHAPES = [(1, 1), (1, 7), (3, 17), (7, 33), (17, 1000), (33, 4097), (4097, 3), (1000, 17), (130, 1000)]
ISAS = _C.supported_isas()
# every test runs once per instruction-set path (the isa fixture, tests/conftest.py)
pytestmark = pytest.mark.usefixtures("isa")

# max relative error allowed on the vector math (exp, log, tanh, sigmoid, gelu) against
# float64: a few float32 ulps (1 ulp = 6e-8 relative); measured worst cases are ~3.6 ulp
MATH_RTOL = 1e-6


def _bits(v):
    return np.asarray(v).tobytes()


def both_threads(compute):
    """Runs compute() (returning an array or a tuple of them) with 1 and 2 threads,
    asserts the two results are bitwise identical, and returns the first."""
    old = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        r1 = compute()
        _C.set_num_threads(2)
        r2 = compute()
    finally:
        _C.set_num_threads(old)
    t1 = r1 if isinstance(r1, tuple) else (r1,)
    t2 = r2 if isinstance(r2, tuple) else (r2,)
    for a, b in zip(t1, t2):
        assert _bits(a) == _bits(b), "1 and 2 threads gave different bits"
    return r1


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_rel(got, ref, rtol, atol=0.0, what=""):
    """|got - ref| <= rtol |ref| + atol elementwise, with NaN where ref is NaN and equal
    infinities."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN pattern differs"
    inf = np.isinf(ref)
    assert np.array_equal(got[inf], ref[inf]), f"{what}: infinities differ"
    ok = ~nan & ~inf
    err = np.abs(got[ok] - ref[ok])
    bound = np.broadcast_to(rtol, ref.shape)[ok] * np.abs(ref[ok]) + atol
    if err.size:
        worst = np.argmax(err - bound)
        assert np.all(err <= bound), (
            f"{what}: error {err[worst]:.3g} at ref {ref[ok][worst]:.9g} (got {got[ok][worst]:.9g}), "
            f"bound {bound[worst]:.3g}")


@pytest.mark.skipif(len(ISAS) < 2, reason="this CPU runs only the generic path")
def test_set_isa_switches_the_code_path_the_tests_run(isa):
    # the generic path computes exp with libm, the SIMD paths with their own polynomial: if
    # set_isa did not reach the kernels, every ISA parametrization would test the same code
    x = rand(100003, 0, 20.0)
    outs = {}
    for name in ISAS:
        _C.set_isa(name)
        outs[name] = _unary(_testing.UN_EXP, x)
    for name in ISAS[1:]:
        assert not np.array_equal(outs[name], outs["generic"]), f"{name} ran the generic code"


# ------------------------------------------------------------------------ binary
NP_BINARY = {_testing.OP_ADD: np.add, _testing.OP_SUB: np.subtract, _testing.OP_MUL: np.multiply, _testing.OP_DIV: np.divide}


@pytest.mark.parametrize("op", list(NP_BINARY))
def test_binary_is_correctly_rounded(op):
    # float32 +-*/ are correctly rounded, and so is float64 rounded to float32 for them
    for n in SIZES:
        a, b = rand(n, 1), rand(n, 2)
        out = np.empty(n, np.float32)
        got = both_threads(lambda: (_testing.k_binary(op, a, b, out), out.copy())[1])
        np.testing.assert_array_equal(got, NP_BINARY[op](a.astype(np.float64), b).astype(np.float32))


@pytest.mark.parametrize("op", list(NP_BINARY))
def test_binary_row_and_col_broadcast(op):
    for rows, cols in SHAPES:
        a, brow, bcol = rand((rows, cols), 1), rand(cols, 2), rand(rows, 3)
        out = np.empty((rows, cols), np.float32)
        got = both_threads(lambda: (_testing.k_binary_row(op, a, brow, out), out.copy())[1])
        np.testing.assert_array_equal(got, NP_BINARY[op](a.astype(np.float64), brow).astype(np.float32))
        got = both_threads(lambda: (_testing.k_binary_col(op, a, bcol, out), out.copy())[1])
        np.testing.assert_array_equal(got, NP_BINARY[op](a.astype(np.float64), bcol[:, None]).astype(np.float32))


@pytest.mark.parametrize("op", list(NP_BINARY))
@pytest.mark.parametrize("reverse", [False, True])
def test_binary_scalar_on_either_side(op, reverse):
    s = np.float32(-1.75)
    for n in SIZES:
        a = rand(n, 4)
        out = np.empty(n, np.float32)
        got = both_threads(lambda: (_testing.k_binary_scalar(op, a, s, out, reverse), out.copy())[1])
        a64 = a.astype(np.float64)
        ref = NP_BINARY[op](s, a64) if reverse else NP_BINARY[op](a64, s)
        np.testing.assert_array_equal(got, ref.astype(np.float32))


@pytest.mark.parametrize("op", list(NP_BINARY))
def test_binary_strided_matches_numpy_broadcasting(op):
    cases = [((4, 5, 6), (4, 5, 6)), ((4, 1, 6), (1, 5, 1)), ((1,), (3, 7)), ((7, 1), (7, 33)),
             ((2, 3, 1, 5), (3, 4, 1)), ((300, 1), (1, 257)), ((), ())]
    for sa, sb in cases:
        a, b = rand(sa, 5), rand(sb, 6)
        shape = np.broadcast_shapes(sa, sb)
        ab, bb = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
        out = np.empty(shape, np.float32)
        got = both_threads(lambda: (_testing.k_binary_strided(op, ab, bb, out), out.copy())[1])
        np.testing.assert_array_equal(got, NP_BINARY[op](ab.astype(np.float64), bb).astype(np.float32))
    # transposed and reversed operands
    a = rand((40, 30), 7)
    at, br = a.T, a[::-1, ::-1].T
    out = np.empty((30, 40), np.float32)
    _testing.k_binary_strided(op, at, br, out)
    np.testing.assert_array_equal(out, NP_BINARY[op](at.astype(np.float64), br).astype(np.float32))


def test_binary_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        _testing.k_binary(_testing.OP_ADD, np.zeros(3, np.float32), np.zeros(4, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="unknown binary op"):
        _testing.k_binary(9, np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        _testing.k_binary_row(_testing.OP_ADD, np.zeros((2, 3), np.float32), np.zeros(3, np.float32),
                        np.zeros((3, 2), np.float32))


# ------------------------------------------------------------------------- unary
def _sigmoid64(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _gelu64(x):
    # 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)); the second form keeps float64 accurate for
    # very negative x, where 1 + tanh(u) cancels to 0
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-2.0 * u))


def _gelu_grad64(x):
    c = np.sqrt(2.0 / np.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)


NP_UNARY = {
    _testing.UN_NEG: np.negative, _testing.UN_EXP: np.exp, _testing.UN_LOG: np.log, _testing.UN_SQRT: np.sqrt,
    _testing.UN_TANH: np.tanh, _testing.UN_RELU: lambda x: np.maximum(x, 0.0), _testing.UN_GELU: _gelu64,
    _testing.UN_ABS: np.abs, _testing.UN_SIGMOID: _sigmoid64, _testing.UN_RELU2: lambda x: np.maximum(x, 0.0) ** 2,
}
POSITIVE_ONLY = {_testing.UN_LOG, _testing.UN_SQRT}


def _unary_input(op, n, seed):
    x = rand(n, seed, 3.0)
    return np.abs(x) + np.float32(1e-3) if op in POSITIVE_ONLY else x


def _unary(op, x):
    out = np.empty_like(x)
    _testing.k_unary(op, x, out)
    return out


@pytest.mark.parametrize("op", list(NP_UNARY))
def test_unary_matches_numpy_float64(op):
    for n in SIZES:
        x = _unary_input(op, n, n)
        got = both_threads(lambda: _unary(op, x))
        assert_rel(got, NP_UNARY[op](x.astype(np.float64)), MATH_RTOL, 1e-37, what=f"op {op} n {n}")


WIDE_RANGES = {
    _testing.UN_EXP: np.linspace(-103.9, 88.72, 200001),
    _testing.UN_LOG: np.concatenate([np.geomspace(1e-45, 3.4e38, 200001), np.linspace(0.5, 2.0, 20001)]),
    _testing.UN_TANH: np.concatenate([np.linspace(-12, 12, 200001), np.geomspace(1e-30, 1.0, 10001)]),
    _testing.UN_SIGMOID: np.linspace(-87, 40, 200001),
    _testing.UN_GELU: np.linspace(-9, 12, 200001),
    _testing.UN_SQRT: np.geomspace(1e-45, 3.4e38, 100001),
}


@pytest.mark.parametrize("op", list(WIDE_RANGES))
def test_vector_math_is_accurate_over_a_wide_range(op):
    x = WIDE_RANGES[op].astype(np.float32)
    ref = NP_UNARY[op](x.astype(np.float64))
    # results in the float32 subnormal range carry an absolute error of half their spacing
    assert_rel(_unary(op, x), ref, MATH_RTOL, 2 ** -150, what=f"op {op}")


def test_vector_math_handles_inf_nan_and_extremes():
    inf, nan = np.inf, np.nan
    cases = {
        _testing.UN_EXP: [-inf, inf, nan, 0.0, -0.0, 88.7, 88.73, 89.0, 1e30, -87.5, -100.0, -103.9, -104.0,
                    -110.0, -1e30],
        _testing.UN_LOG: [0.0, -0.0, -1.0, -inf, inf, nan, 1.0, 1e-45, 1e-40, 1.1754944e-38, 3.4e38],
        _testing.UN_TANH: [-inf, inf, nan, 0.0, -0.0, 1e-30, -1e-30, 1e-7, 9.0, 10.0, -20.0, 1e30],
        _testing.UN_SIGMOID: [-inf, inf, nan, 0.0, 50.0, -50.0, -87.0, -120.0, 1e30],
        _testing.UN_GELU: [inf, nan, 0.0, -0.0, 1e-30, 20.0, -20.0, 1e30],
        _testing.UN_SQRT: [0.0, inf, nan, -1.0, 1e-45],
        _testing.UN_RELU: [-inf, inf, nan, 0.0, -1.0, 2.0],
        _testing.UN_ABS: [-inf, inf, nan, -0.0, -3.0],
        _testing.UN_RELU2: [-inf, inf, nan, 0.0, -1.0, 2.0, 1e20],
    }
    for op, vals in cases.items():
        # put the specials both in a vector body and in a tail
        x = np.array(vals * 3, np.float32)
        with np.errstate(all="ignore"):
            # rounded to float32 so that overflow past FLT_MAX is inf in the reference too
            ref = NP_UNARY[op](x.astype(np.float64)).astype(np.float32)
        assert_rel(_unary(op, x), ref, MATH_RTOL, 2 ** -149, what=f"op {op} on {vals}")


@pytest.mark.parametrize("op", list(NP_UNARY))
def test_unary_backward_matches_formula_and_finite_differences(op):
    for n in SIZES:
        x = _unary_input(op, n, n + 1)
        if op in (_testing.UN_RELU, _testing.UN_ABS, _testing.UN_RELU2):
            x[np.abs(x) < 1e-2] = 0.5  # keep away from the kink for finite differences
        y = _unary(op, x)
        dy = rand(n, n + 2)
        dx = np.empty_like(x)
        got = both_threads(lambda: (_testing.k_unary_backward(op, x, y, dy, dx), dx.copy())[1])
        x64 = x.astype(np.float64)
        f = NP_UNARY[op]
        h = 1e-6 * np.maximum(1.0, np.abs(x64))
        fd = (f(x64 + h) - f(x64 - h)) / (2 * h)
        assert_rel(got, dy * fd, 1e-4, 1e-6, what=f"op {op} n {n} vs finite differences")
        if op == _testing.UN_GELU:
            assert_rel(got, dy * _gelu_grad64(x64), 1e-5, 1e-7, what="gelu vs its exact derivative")


def test_relu_and_abs_backward_are_zero_at_zero():
    x = np.array([0.0, -0.0, 1.0, -1.0], np.float32)
    dy = np.ones(4, np.float32)
    dx = np.empty(4, np.float32)
    _testing.k_unary_backward(_testing.UN_RELU, x, np.maximum(x, 0), dy, dx)
    np.testing.assert_array_equal(dx, [0, 0, 1, 0])
    _testing.k_unary_backward(_testing.UN_ABS, x, np.abs(x), dy, dx)
    np.testing.assert_array_equal(dx, [0, 0, 1, -1])


@pytest.mark.parametrize("cap", [1.0, 15.0, 30.0])
def test_softcap_matches_numpy_float64(cap):
    for n in SIZES:
        x = rand(n, n, 40.0)
        y = both_threads(lambda: _C.softcap(_C.from_numpy(x), cap).numpy())
        ref = cap * np.tanh(x.astype(np.float64) / cap)
        assert_rel(y, ref, 4 * MATH_RTOL, 1e-30, what=f"softcap n {n}")
        dy = rand(n, n + 1)
        dx = both_threads(lambda: _C.softcap(_C.from_numpy(x), cap, _C.from_numpy(y), _C.from_numpy(dy)).numpy())
        # 1 - t^2 cancels near saturation: an absolute bound of a few ulps of 1, times |dy|
        assert_rel(dx, dy * (1 - (y.astype(np.float64) / cap) ** 2), 1e-5, 1e-6, what=f"softcap backward n {n}")
    with pytest.raises(ValueError, match="cap must be > 0"):
        _C.softcap(_C.zeros((3,)), 0.0)


# ------------------------------------------------------------------------- blas1
def test_fill_copy_scale_axpy():
    for n in SIZES:
        x, y = rand(n, 1), rand(n, 2)
        buf = np.empty(n, np.float32)
        _testing.k_fill(buf, 2.5)
        assert np.all(buf == 2.5)
        _testing.k_copy(x, buf)
        np.testing.assert_array_equal(buf, x)

        def scaled():
            z = x.copy()
            _testing.k_scale(z, -0.3)
            return z
        np.testing.assert_array_equal(both_threads(scaled), (x.astype(np.float64) * np.float32(-0.3)).astype(np.float32))

        def axpy():
            z = y.copy()
            _testing.k_axpy(0.7, x, z)
            return z
        # an FMA path rounds once, the plain path twice: both within 1 ulp of the exact value
        assert_rel(both_threads(axpy), y.astype(np.float64) + np.float32(0.7) * x.astype(np.float64),
                   1.2e-7, 1e-7 * np.abs(np.float32(0.7) * x).max())


def test_dot_is_blocked_double_accumulation():
    for n in SIZES + [3 * 4096 + 5, 1_200_001]:
        x, y = rand(n, 1), rand(n, 2)
        got = both_threads(lambda: np.float64(_testing.k_dot(x, y)))
        ref = np.dot(x.astype(np.float64), y.astype(np.float64))
        assert abs(got - ref) <= 1e-12 * np.abs(x.astype(np.float64) * y).sum() + 1e-300


def test_copy_strided_handles_negative_zero_strides_and_item_sizes():
    base = np.arange(2 * 3 * 40 * 7).reshape(2, 3, 40, 7)
    for dtype in (np.int16, np.float32, np.int64):
        a = base.astype(dtype)
        views = [a, a[::-1], a[:, ::-2, 3:30:3, ::-1], a.transpose(3, 1, 0, 2), a[0, 0, 0, 0],
                 np.broadcast_to(a[:1, :, :1], (5, 3, 9, 7)), a[..., 2], a[:, :, :0]]
        for v in views:
            out = np.empty(v.shape, dtype)
            both_threads(lambda: (_testing.k_copy_strided(v, out), out.copy())[1])
            np.testing.assert_array_equal(out, v)
    big = np.arange(300 * 400, dtype=np.float32).reshape(300, 400)[::-1, ::3]
    out = np.empty(big.shape, np.float32)
    got = both_threads(lambda: (_testing.k_copy_strided(big, out), out.copy())[1])
    np.testing.assert_array_equal(got, big)


def test_copy_strided_of_transposed_views_keeps_every_bit():
    # these take the transpose route (strides (1, s) on the last two axes)
    bits = np.random.default_rng(3).integers(-2**31, 2**31 - 1, (6, 70, 45), dtype=np.int64).astype(np.int32)
    for dtype in (np.int32, np.float32):
        a = bits.view(dtype)
        for v in (a[0].T, a.transpose(0, 2, 1), a.transpose(2, 0, 1).transpose(1, 2, 0)[:, ::-1],
                  a[:, :, 3:40].transpose(0, 2, 1), np.ascontiguousarray(a[0]).reshape(70, 45)[:, :1].T):
            out = np.empty(v.shape, dtype)
            both_threads(lambda: (_testing.k_copy_strided(v, out), out.copy())[1])
            np.testing.assert_array_equal(out.view(np.int32), np.ascontiguousarray(v).view(np.int32))
    big = rand((400, 300), 9).T
    out = np.empty(big.shape, np.float32)
    got = both_threads(lambda: (_testing.k_copy_strided(big, out), out.copy())[1])
    np.testing.assert_array_equal(got, big)


def test_copy_strided_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        _testing.k_copy_strided(np.zeros((3, 4), np.float32), np.zeros((4, 3), np.float32))


def test_transpose_with_leading_dimensions():
    for rows, cols in SHAPES + [(31, 33), (64, 64), (65, 129)]:
        a_full = rand((rows, cols + 5), rows)
        a = a_full[:, :cols]
        b_full = np.zeros((cols, rows + 3), np.float32)
        b = b_full[:, :rows]
        got = both_threads(lambda: (_testing.k_transpose(a, b), b_full.copy())[1])
        np.testing.assert_array_equal(got[:, :rows], a.T)
        assert np.all(got[:, rows:] == 0), "transpose wrote past its width"


def test_cast_float_to_bf16_rounds_to_nearest_even_and_keeps_nan():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.standard_normal(40001).astype(np.float32) * 100,
                        rng.integers(0, 2**32, 999, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        np.array([0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, 1e-40,
                                  # exact ties: bit 15 set, low bits 0, even and odd upper halves
                                  np.uint32(0x3F808000).view(np.float32), np.uint32(0x3F818000).view(np.float32)],
                                 np.float32)])
    f = f.astype(np.float32)
    h = np.empty(f.size, np.uint16)
    both_threads(lambda: (_testing.k_cast(f, _testing.DT_F32, h, _testing.DT_BF16), h.copy())[1])
    np.testing.assert_array_equal(h, round_bf16_bits(f))
    assert h[-2] == 0x3F80 and h[-1] == 0x3F82  # ties go to even
    back = np.empty(f.size, np.float32)
    both_threads(lambda: (_testing.k_cast(h, _testing.DT_BF16, back, _testing.DT_F32), back.copy())[1])
    np.testing.assert_array_equal(back.view(np.uint32), h.astype(np.uint32) << 16)
    assert np.isnan(back[np.isnan(f)]).all()


@pytest.mark.parametrize("dst_dtype,code", [(np.int32, _testing.DT_I32), (np.int64, _testing.DT_I64),
                                            (np.uint8, _testing.DT_U8), (np.uint16, _testing.DT_U16)])
def test_cast_between_float_and_integers(dst_dtype, code):
    info = np.iinfo(dst_dtype)
    f = (np.random.default_rng(1).uniform(0 if info.min == 0 else -200, 250, 40001)).astype(np.float32)
    out = np.empty(f.size, dst_dtype)
    got = both_threads(lambda: (_testing.k_cast(f, _testing.DT_F32, out, code), out.copy())[1])
    np.testing.assert_array_equal(got, np.trunc(f).astype(dst_dtype))  # truncation toward zero
    back = np.empty(f.size, np.float32)
    _testing.k_cast(got, code, back, _testing.DT_F32)
    np.testing.assert_array_equal(back, got.astype(np.float32))
    # out of range saturates, NaN gives 0
    special = np.array([np.nan, 1e30, -1e30, np.inf, -np.inf], np.float32)
    out = np.empty(5, dst_dtype)
    _testing.k_cast(special, _testing.DT_F32, out, code)
    np.testing.assert_array_equal(out, [0, info.max, info.min, info.max, info.min])


def test_cast_between_integers_wraps_like_numpy():
    src = np.array([0, 1, -1, 255, 256, 70000, -70000, 2**40], np.int64)
    for dt, code in [(np.int32, _testing.DT_I32), (np.uint8, _testing.DT_U8), (np.uint16, _testing.DT_U16)]:
        out = np.empty(src.size, dt)
        _testing.k_cast(src, _testing.DT_I64, out, code)
        np.testing.assert_array_equal(out, src.astype(dt))


def test_all_finite_finds_one_bad_element_anywhere():
    for n in SIZES:
        x = rand(n, 3)
        assert _testing.k_all_finite(x)
        for bad in (np.inf, -np.inf, np.nan):
            y = x.copy()
            y[n // 2] = bad
            assert not _testing.k_all_finite(y)
            y = x.copy()
            y[-1] = bad
            assert not _testing.k_all_finite(y)


# ------------------------------------------------------------------------ reduce
def test_sum_rows_and_sum_cols():
    for rows, cols in SHAPES:
        x = rand((rows, cols), rows * cols)
        x64 = x.astype(np.float64)
        out = np.empty(rows, np.float32)
        got = both_threads(lambda: (_testing.k_sum_rows(x, out), out.copy())[1])
        assert_rel(got, x64.sum(1), 0, 1e-7 * np.abs(x64).sum(1).max() + 1e-30)
        out = np.empty(cols, np.float32)
        got = both_threads(lambda: (_testing.k_sum_cols(x, out), out.copy())[1])
        assert_rel(got, x64.sum(0), 0, 1e-7 * np.abs(x64).sum(0).max() + 1e-30)


def test_max_and_argmax_rows_take_the_first_max():
    for rows, cols in SHAPES:
        x = np.round(rand((rows, cols), 7, 2.0))  # many ties
        out = np.empty(rows, np.float32)
        idx = np.empty(rows, np.int64)
        got = both_threads(lambda: (_testing.k_max_rows(x, out), out.copy())[1])
        np.testing.assert_array_equal(got, x.max(1))
        got = both_threads(lambda: (_testing.k_argmax_rows(x, idx), idx.copy())[1])
        np.testing.assert_array_equal(got, x.argmax(1))
    x = np.array([[1, np.nan, 3], [np.nan, 5, np.nan], [-np.inf, -np.inf, -np.inf]], np.float32)
    _testing.k_max_rows(x, out := np.empty(3, np.float32))
    np.testing.assert_array_equal(out, np.max(x, 1))
    _testing.k_argmax_rows(x, idx := np.empty(3, np.int64))
    np.testing.assert_array_equal(idx, np.argmax(x, 1))


def test_sum_all_and_sumsq_all():
    for n in SIZES + [3 * 4096 + 5, 1_200_001]:
        x = rand(n, n, 10.0)
        x64 = x.astype(np.float64)
        s = both_threads(lambda: np.float64(_testing.k_sum_all(x)))
        assert abs(s - x64.sum()) <= 1e-12 * np.abs(x64).sum()
        s = both_threads(lambda: np.float64(_testing.k_sumsq_all(x)))
        assert abs(s - (x64 * x64).sum()) <= 1e-12 * (x64 * x64).sum()


def test_max_all_and_argmax_all():
    for n in SIZES + [1_200_001]:
        x = np.round(rand(n, n + 1, 3.0))
        assert both_threads(lambda: np.float32(_testing.k_max_all(x))) == x.max()
        assert both_threads(lambda: np.int64(_testing.k_argmax_all(x))) == x.argmax()
        if n > 2:
            y = x.copy()
            y[n // 3] = np.nan
            y[n // 2] = np.nan
            assert np.isnan(_testing.k_max_all(y))
            assert _testing.k_argmax_all(y) == np.argmax(y)
    with pytest.raises(ValueError, match="empty"):
        _testing.k_max_all(np.zeros(0, np.float32))


# ----------------------------------------------------------------------- softmax
def _softmax64(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _log_softmax64(x):
    m = x.max(1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))


def test_softmax_and_log_softmax_forward():
    for rows, cols in SHAPES:
        x = rand((rows, cols), rows + cols, 4.0)
        x64 = x.astype(np.float64)
        y = np.empty_like(x)
        got = both_threads(lambda: (_testing.k_softmax(x, y), y.copy())[1])
        assert_rel(got, _softmax64(x64), 2e-6, 1e-9, what=f"softmax {rows}x{cols}")
        got = both_threads(lambda: (_testing.k_log_softmax(x, y), y.copy())[1])
        assert_rel(got, _log_softmax64(x64), 2e-6, 2e-6, what=f"log_softmax {rows}x{cols}")


def test_softmax_is_stable_for_huge_logits():
    x = np.array([[1e4, 1e4 - 1, -1e4], [-1e30, 0, 1e30], [88, 89, 90]], np.float32)
    y = np.empty_like(x)
    _testing.k_softmax(x, y)
    assert np.isfinite(y).all()
    assert_rel(y, _softmax64(x.astype(np.float64)), 2e-6, 1e-9)
    _testing.k_log_softmax(x, y)
    assert np.isfinite(y).all()
    assert_rel(y, _log_softmax64(x.astype(np.float64)), 2e-6, 2e-6)


def _fd_grad(f, x, eps=1e-6):
    """central finite differences of the scalar f at x (float64)"""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        hi = f(x)
        x[i] = old - eps
        lo = f(x)
        x[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g


def test_softmax_backward_matches_formula_and_finite_differences():
    for rows, cols in SHAPES:
        x, dy = rand((rows, cols), 1, 2.0), rand((rows, cols), 2)
        y = np.empty_like(x)
        _testing.k_softmax(x, y)
        dx = np.empty_like(x)
        got = both_threads(lambda: (_testing.k_softmax_backward(y, dy, dx), dx.copy())[1])
        y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
        ref = y64 * (dy64 - (dy64 * y64).sum(1, keepdims=True))
        assert_rel(got, ref, 1e-5, 1e-6 * np.abs(dy64).max(), what=f"softmax backward {rows}x{cols}")
        _testing.k_log_softmax(x, y)
        got = both_threads(lambda: (_testing.k_log_softmax_backward(y, dy, dx), dx.copy())[1])
        ref = dy64 - np.exp(y.astype(np.float64)) * dy64.sum(1, keepdims=True)
        assert_rel(got, ref, 1e-5, 1e-6 * np.abs(dy64).sum(1).max(), what=f"log_softmax backward {rows}x{cols}")
    # finite differences on a small case
    x, dy = rand((3, 7), 5, 2.0), rand((3, 7), 6)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    y, dx = np.empty_like(x), np.empty_like(x)
    _testing.k_softmax(x, y)
    _testing.k_softmax_backward(y, dy, dx)
    assert_rel(dx, _fd_grad(lambda v: (dy64 * _softmax64(v)).sum(), x64.copy()), 1e-4, 1e-6)
    _testing.k_log_softmax(x, y)
    _testing.k_log_softmax_backward(y, dy, dx)
    assert_rel(dx, _fd_grad(lambda v: (dy64 * _log_softmax64(v)).sum(), x64.copy()), 1e-4, 1e-6)


def test_softmax_rejects_empty_rows_and_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        _testing.k_softmax(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        _testing.k_softmax(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))


# --------------------------------------------------------------------- layernorm
def _layernorm64(x, g, b, eps):
    mu = x.mean(1, keepdims=True)
    var = ((x - mu) ** 2).mean(1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if g is not None:
        y = y * g
    if b is not None:
        y = y + b
    return y, mu[:, 0], 1 / np.sqrt(var[:, 0] + eps)


def _run_layernorm(x, g, b, eps=1e-5):
    rows, cols = x.shape
    y, mean, rstd = np.empty_like(x), np.empty(rows, np.float32), np.empty(rows, np.float32)
    _testing.k_layernorm(x, g, b, y, mean, rstd, eps)
    return y, mean, rstd


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_forward_saves_mean_and_rstd(affine):
    for rows, cols in SHAPES:
        x = rand((rows, cols), 3, 2.0) + np.float32(5.0)  # an offset mean tests the two-pass variance
        g = rand(cols, 4) if affine else None
        b = rand(cols, 5) if affine else None
        y, mean, rstd = both_threads(lambda: _run_layernorm(x, g, b))
        y64, mu64, rstd64 = _layernorm64(x.astype(np.float64), g, b, 1e-5)
        assert_rel(mean, mu64, 1e-6, 1e-6, what="mean")
        assert_rel(rstd, rstd64, 1e-5, 0, what="rstd")
        assert_rel(y, y64, 1e-5, 1e-5 * (1 + (np.abs(g).max() if affine else 0)), what=f"y {rows}x{cols}")


def _run_layernorm_backward(x, g, mean, rstd, dy, with_params=True):
    rows, cols = x.shape
    dx = np.empty_like(x)
    dg = np.full(cols, np.nan, np.float32) if with_params else None  # written, not accumulated
    db = np.full(cols, np.nan, np.float32) if with_params else None
    _testing.k_layernorm_backward(x, g, mean, rstd, dy, dx, dg, db)
    return (dx, dg, db) if with_params else dx


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_backward_matches_formula(affine):
    # (10000, 5): more rows than 256 blocks of 32, so the blocks grow
    for rows, cols in SHAPES + [(10000, 5)]:
        x, dy = rand((rows, cols), 6, 2.0), rand((rows, cols), 7)
        g = rand(cols, 8) if affine else None
        _, mean, rstd = _run_layernorm(x, g, None)
        dx, dg, db = both_threads(lambda: _run_layernorm_backward(x, g, mean, rstd, dy))
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        xh = (x64 - mean[:, None]) * rstd[:, None]
        gdy = dy64 * (g if affine else 1.0)
        ref_dx = rstd[:, None] * (gdy - gdy.mean(1, keepdims=True) - xh * (gdy * xh).mean(1, keepdims=True))
        scale = np.abs(gdy).max() * np.abs(rstd).max()
        assert_rel(dx, ref_dx, 1e-4, 1e-5 * scale, what=f"dx {rows}x{cols}")
        assert_rel(dg, (dy64 * xh).sum(0), 0, 1e-5 * np.abs(dy64 * xh).sum(0).max(), what="dgamma")
        assert_rel(db, dy64.sum(0), 0, 1e-6 * np.abs(dy64).sum(0).max(), what="dbeta")
        dx_only = both_threads(lambda: _run_layernorm_backward(x, g, mean, rstd, dy, with_params=False))
        np.testing.assert_array_equal(dx_only, dx)


def test_layernorm_backward_matches_finite_differences():
    rows, cols, eps = 3, 17, 1e-5
    x, dy, g, b = rand((rows, cols), 1, 2.0), rand((rows, cols), 2), rand(cols, 3), rand(cols, 4)
    _, mean, rstd = _run_layernorm(x, g, b, eps)
    dx, dg, db = _run_layernorm_backward(x, g, mean, rstd, dy)
    x64, dy64, g64, b64 = (v.astype(np.float64) for v in (x, dy, g, b))
    loss_x = lambda v: (dy64 * _layernorm64(v, g64, b64, eps)[0]).sum()
    loss_g = lambda v: (dy64 * _layernorm64(x64, v, b64, eps)[0]).sum()
    loss_b = lambda v: (dy64 * _layernorm64(x64, g64, v, eps)[0]).sum()
    assert_rel(dx, _fd_grad(loss_x, x64.copy()), 1e-4, 1e-5)
    assert_rel(dg, _fd_grad(loss_g, g64.copy()), 1e-4, 1e-5)
    assert_rel(db, _fd_grad(loss_b, b64.copy()), 1e-4, 1e-5)


# --------------------------------------------------------------------- embedding
def test_embedding_gathers_rows_and_reports_bad_indices():
    for n, dim, vocab in [(1, 1, 1), (7, 33, 5), (1000, 17, 50), (4097, 64, 300)]:
        w = rand((vocab, dim), n)
        idx = np.random.default_rng(n).integers(0, vocab, n).astype(np.int64)
        out = np.empty((n, dim), np.float32)
        rc = both_threads(lambda: np.int64(_testing.k_embedding(w, idx, out)))
        assert rc == -1
        np.testing.assert_array_equal(out, w[idx])
        bad = idx.copy()
        bad[n // 2] = vocab
        out[:] = 7
        assert _testing.k_embedding(w, bad, out) == n // 2
        assert np.all(out == 7), "nothing is written when an index is out of range"
        bad[n // 2] = -1
        assert _testing.k_embedding(w, bad, out) == n // 2


def test_embedding_backward_scatter_adds_repeated_rows():
    for n, dim, vocab in [(1, 1, 1), (7, 33, 2), (1000, 17, 50), (4097, 100, 30)]:
        idx = np.random.default_rng(n).integers(0, vocab, n).astype(np.int64)
        dout = rand((n, dim), n + 1)
        init = rand((vocab, dim), n + 2)

        def run():
            dw = init.copy()
            _testing.k_embedding_backward(dout, idx, dw)
            return dw
        got = both_threads(run)
        ref = init.astype(np.float64)
        np.add.at(ref, idx, dout.astype(np.float64))
        assert_rel(got, ref, 0, 1e-6 * (np.abs(dout).sum() / vocab + np.abs(init).max()))
    with pytest.raises(ValueError, match="outside"):
        _testing.k_embedding_backward(np.zeros((1, 3), np.float32), np.array([4], np.int64), np.zeros((4, 3), np.float32))


# -------------------------------------------------------------------- matmul_ref
def test_matmul_ref_matches_float64():
    for M, N, K in [(1, 1, 1), (3, 7, 17), (33, 1, 1000), (17, 100, 33), (200, 300, 100)]:
        a, b = rand((M, K), 1), rand((K, N), 2)
        c = np.empty((M, N), np.float32)
        got = both_threads(lambda: (_testing.k_matmul_ref(a, b, c), c.copy())[1])
        ref = a.astype(np.float64) @ b.astype(np.float64)
        assert_rel(got, ref, 0, 1e-6 * (np.abs(a).astype(np.float64) @ np.abs(b)).max())
    with pytest.raises(ValueError, match="do not chain"):
        _testing.k_matmul_ref(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32), np.zeros((2, 2), np.float32))


# ------------------------------------------------------------- memory discipline
def _guarded(shape, seed=None):
    """a float32 array of `shape` that starts 4 bytes past a 64-byte boundary, inside a
    buffer whose other elements hold a sentinel; returns (view, buffer, mask of the view)"""
    n = int(np.prod(shape))
    buf = np.full(n + 40, 12345.0, np.float32)
    view = buf[17:17 + n].reshape(shape)
    if seed is not None:
        view[...] = rand(shape, seed)
    inside = np.zeros(buf.size, bool)
    inside[17:17 + n] = True
    return view, buf, inside


def test_kernels_read_unaligned_inputs_and_write_only_their_outputs():
    for n in [1, 5, 15, 17, 31, 33, 1000]:
        x, _, _ = _guarded((n,), 1)
        y, _, _ = _guarded((n,), 2)
        for call in (lambda o: _testing.k_binary(_testing.OP_DIV, x, y, o), lambda o: _testing.k_unary(_testing.UN_GELU, x, o),
                     lambda o: _testing.k_unary(_testing.UN_LOG, x, o), lambda o: _testing.k_unary_backward(_testing.UN_TANH, x, y, y, o),
                     lambda o: _testing.k_binary_scalar(_testing.OP_SUB, x, 2.0, o, True)):
            out, buf, inside = _guarded((n,))
            call(out)
            assert np.all(buf[~inside] == 12345.0), f"wrote outside its output, n={n}"
        for rows, cols in [(3, n), (2, n + 1)]:
            x2, _, _ = _guarded((rows, cols), 3)
            dy2, _, _ = _guarded((rows, cols), 4)
            g, _, _ = _guarded((cols,), 5)
            for call in (lambda o: _testing.k_softmax(x2, o), lambda o: _testing.k_log_softmax(x2, o),
                         lambda o: _testing.k_softmax_backward(x2, dy2, o),
                         lambda o: _testing.k_layernorm(x2, g, g, o, np.empty(rows, np.float32),
                                                  np.empty(rows, np.float32), 1e-5),
                         lambda o: _testing.k_layernorm_backward(x2, g, np.zeros(rows, np.float32),
                                                           np.ones(rows, np.float32), dy2, o, None, None)):
                out, buf, inside = _guarded((rows, cols))
                call(out)
                assert np.all(buf[~inside] == 12345.0), f"wrote outside its output, {rows}x{cols}"
            dg, bufg, insg = _guarded((cols,))
            db, bufb, insb = _guarded((cols,))
            _testing.k_layernorm_backward(x2, g, np.zeros(rows, np.float32), np.ones(rows, np.float32), dy2,
                                    np.empty((rows, cols), np.float32), dg, db)
            assert np.all(bufg[~insg] == 12345.0) and np.all(bufb[~insb] == 12345.0)
            sc, bufc, insc = _guarded((cols,))
            _testing.k_sum_cols(x2, sc)
            assert np.all(bufc[~insc] == 12345.0)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo to read the vendor from")
def test_cpu_vendor_matches_proc_cpuinfo():
    """The bf16 decoding loop is tuned per vendor (csrc/gemv.c): cpu_info()["amd"] is the
    vendor_id the kernel reports."""
    with open("/proc/cpuinfo") as f:
        vendors = {line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")}
    if not vendors:
        pytest.skip("/proc/cpuinfo names no vendor_id (not an x86 CPU)")
    assert _C.cpu_info()["amd"] == (vendors == {"AuthenticAMD"})
