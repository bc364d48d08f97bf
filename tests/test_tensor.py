"""The Tensor type: views, dtypes, NumPy interop, operators and raw ops against NumPy."""
import pickle

import numpy as np
import pytest

import minillm
from minillm import _C

rng = np.random.default_rng(0)


def arr(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ interop
def test_from_numpy_shares_memory_both_ways():
    a = arr(3, 4)
    t = minillm.Tensor.from_numpy(a)
    assert t.shape == (3, 4) and t.dtype == "float32"
    a[1, 2] = 42.0
    assert t.numpy()[1, 2] == 42.0
    back = np.asarray(t)
    back[0, 0] = -7.0
    assert a[0, 0] == -7.0
    assert np.shares_memory(back, a)


def test_from_numpy_keeps_array_alive():
    t = minillm.Tensor.from_numpy(np.arange(5, dtype=np.float32))
    import gc
    gc.collect()
    np.testing.assert_array_equal(t.numpy(), np.arange(5, dtype=np.float32))


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64", "uint8", "uint16"])
def test_dtypes_round_trip_through_numpy(dtype):
    a = (np.arange(12) % 7).astype(dtype).reshape(3, 4)
    t = minillm.tensor(a)
    expect = {"float32": "float32", "int32": "int64", "int64": "int64", "uint8": "int64",
              "uint16": "int64"}[dtype]
    assert t.dtype == expect
    t2 = minillm.Tensor.from_numpy(a)
    assert t2.dtype == dtype
    np.testing.assert_array_equal(t2.numpy(), a)


def test_from_numpy_refuses_float64_with_clear_error():
    with pytest.raises(TypeError, match="format 'd'"):
        minillm.Tensor.from_numpy(np.zeros(3))


def test_tensor_from_nested_lists_and_scalars():
    t = minillm.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert t.shape == (2, 2) and t.dtype == "float32"
    assert minillm.tensor([1, 2, 3]).dtype == "int64"
    assert minillm.tensor(2.5).item() == 2.5
    assert minillm.tensor([1, 2], dtype="float32").dtype == "float32"
    with pytest.raises(TypeError, match="unsupported dtype"):
        minillm.tensor([1], dtype="complex64")


def test_repr_shows_values_shape_and_dtype():
    r = repr(minillm.tensor([1.5, 2.0]))
    assert "1.5" in r and r.startswith("tensor(")
    r = repr(minillm.zeros(100, 100))
    assert "shape=(100, 100)" in r
    assert "dtype=int64" in repr(minillm.arange(3))


def test_pickle_round_trip():
    t = minillm.tensor(arr(2, 3))
    u = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(u.numpy(), t.numpy())


# ------------------------------------------------------------------ factories
def test_factories():
    assert minillm.zeros(2, 3).numpy().sum() == 0
    assert minillm.zeros((2, 3)).shape == (2, 3)
    np.testing.assert_array_equal(minillm.ones(4).numpy(), np.ones(4, np.float32))
    np.testing.assert_array_equal(minillm.full((2, 2), 3.5).numpy(), np.full((2, 2), 3.5, np.float32))
    np.testing.assert_array_equal(minillm.arange(5).numpy(), np.arange(5))
    np.testing.assert_allclose(minillm.arange(0, 1, 0.25).numpy(), [0, 0.25, 0.5, 0.75])
    assert minillm.empty(3, dtype="int32").dtype == "int32"
    with pytest.raises(ValueError, match="non-negative"):
        minillm.zeros(-1, 2)


def test_storage_is_64_byte_aligned():
    for n in (1, 3, 17, 1000):
        assert minillm.empty(n).data_ptr() % 64 == 0


def test_vector_and_matrix_check_rank():
    v = minillm.Vector([1.0, 2.0, 3.0])
    assert v.shape == (3,) and isinstance(v, minillm.Tensor)
    assert minillm.Vector(4).numpy().tolist() == [0, 0, 0, 0]
    m = minillm.Matrix([[1.0, 2.0], [3.0, 4.0]])
    assert (m.rows, m.cols) == (2, 2)
    assert minillm.Matrix((2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="1-D"):
        minillm.Vector([[1.0]])
    with pytest.raises(ValueError, match="2-D"):
        minillm.Matrix([1.0, 2.0])


# ------------------------------------------------------------------ views
def test_reshape_is_a_view_and_infers_minus_one():
    a = arr(2, 6)
    t = minillm.tensor(a)
    r = t.reshape(3, -1)
    assert r.shape == (3, 4)
    r[0, 0] = 99.0
    assert t[0, 0].item() == 99.0
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        t.reshape(5, 5)


def test_transpose_permute_and_contiguous():
    a = arr(2, 3, 4)
    t = minillm.tensor(a)
    np.testing.assert_array_equal(t.transpose(0, 2).numpy(), a.transpose(2, 1, 0))
    p = t.permute(1, 2, 0)
    np.testing.assert_array_equal(p.numpy(), a.transpose(1, 2, 0))
    assert not p.is_contiguous()
    c = p.contiguous()
    assert c.is_contiguous()
    np.testing.assert_array_equal(c.numpy(), a.transpose(1, 2, 0))
    m = minillm.tensor(arr(3, 5))
    np.testing.assert_array_equal(m.T.numpy(), m.numpy().T)
    # reshape of a non-contiguous view copies
    np.testing.assert_array_equal(p.reshape(-1).numpy(), a.transpose(1, 2, 0).reshape(-1))


def test_indexing_matches_numpy():
    a = arr(4, 5, 6)
    t = minillm.tensor(a)
    for key in [1, -1, slice(1, 3), (slice(None), 2), (Ellipsis, 3), (1, slice(0, 5, 2), None),
                (slice(None, None, 2), slice(1, None), slice(2, 4)), (None, 0)]:
        np.testing.assert_array_equal(t[key].numpy(), a[key], err_msg=str(key))
    v = minillm.tensor(a[0, 0])
    assert v[2] == pytest.approx(float(a[0, 0, 2]))
    with pytest.raises(IndexError, match="out of range"):
        t[4]
    with pytest.raises(IndexError, match="too many"):
        t[0, 0, 0, 0]


def test_setitem_copies_with_broadcast():
    t = minillm.zeros(3, 4)
    t[1] = minillm.tensor([1.0, 2.0, 3.0, 4.0])
    t[:, 0] = 7.0
    t[2, 1:3] = np.array([5.0, 6.0], np.float32)
    expect = np.zeros((3, 4), np.float32)
    expect[1] = [1, 2, 3, 4]
    expect[:, 0] = 7
    expect[2, 1:3] = [5, 6]
    np.testing.assert_array_equal(t.numpy(), expect)
    with pytest.raises(ValueError, match="shape"):
        t[0] = minillm.zeros(3)


def test_squeeze_unsqueeze_expand():
    t = minillm.tensor(arr(3, 1, 2))
    assert t.squeeze().shape == (3, 2)
    assert t.squeeze(1).shape == (3, 2)
    assert t.unsqueeze(0).shape == (1, 3, 1, 2)
    assert t.unsqueeze(-1).shape == (3, 1, 2, 1)
    e = t.expand(3, 4, 2)
    np.testing.assert_array_equal(e.numpy(), np.broadcast_to(t.numpy(), (3, 4, 2)))
    with pytest.raises(ValueError, match="cannot expand"):
        t.expand(2, 1, 2)


# ------------------------------------------------------------------ arithmetic
SHAPES = [((7,), (7,)), ((3, 5), (5,)), ((3, 5), (3, 1)), ((2, 3, 4), (3, 1)), ((4, 1), (1, 6)),
          ((2, 1, 4), (3, 1)), ((1,), (5, 5)), ((17, 33), (1, 33))]


@pytest.mark.parametrize("sa,sb", SHAPES)
@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_binary_ops_broadcast_like_numpy(sa, sb, op):
    a, b = arr(*sa), arr(*sb)
    if op == "/":
        b = np.abs(b) + 0.5
    ta, tb = minillm.tensor(a), minillm.tensor(b)
    f = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
         "/": lambda x, y: x / y}[op]
    np.testing.assert_allclose(f(ta, tb).numpy(), f(a.astype(np.float64), b), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f(tb, ta).numpy(), f(b.astype(np.float64), a), rtol=1e-6, atol=1e-6)


def test_binary_ops_on_strided_views():
    a = arr(6, 8)
    t = minillm.tensor(a)
    np.testing.assert_allclose((t.T + t.T).numpy(), a.T + a.T)
    np.testing.assert_allclose((t[:, ::2] * 2.0).numpy(), a[:, ::2] * 2)


def test_scalar_ops_both_sides():
    a = arr(5)
    t = minillm.tensor(a)
    np.testing.assert_allclose((2.0 - t).numpy(), 2 - a, rtol=1e-6)
    np.testing.assert_allclose((1.0 / (t * t + 1)).numpy(), 1 / (a * a + 1), rtol=1e-6)
    np.testing.assert_allclose((-t).numpy(), -a)
    np.testing.assert_allclose((t ** 2).numpy(), a ** 2, rtol=1e-6)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5,\)"):
        minillm.zeros(3, 4) + minillm.zeros(5)


def test_integer_arithmetic_is_a_type_error():
    with pytest.raises(TypeError, match="float32"):
        minillm.arange(3) + minillm.arange(3)


def test_inplace_ops():
    a = arr(3, 4)
    t = minillm.tensor(a)
    t += 1.0
    t *= minillm.tensor(a[0])
    np.testing.assert_allclose(t.numpy(), (a + 1) * a[0], rtol=1e-6)
    with pytest.raises(ValueError):
        t += minillm.zeros(2, 3, 4)


def test_unary_ops_against_numpy():
    a = arr(1000)
    t = minillm.tensor(a)
    pos = minillm.tensor(np.abs(a) + 0.1)
    np.testing.assert_allclose(t.exp().numpy(), np.exp(a.astype(np.float64)), rtol=2e-6)
    np.testing.assert_allclose(pos.log().numpy(), np.log(np.abs(a) + 0.1), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(t.tanh().numpy(), np.tanh(a.astype(np.float64)), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(t.relu().numpy(), np.maximum(a, 0))
    x = a.astype(np.float64)
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(t.gelu().numpy(), gelu, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ reductions
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (1, 2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_and_mean_over_axes(axis, keepdim):
    a = arr(5, 7, 9)
    t = minillm.tensor(a)
    np.testing.assert_allclose(t.sum(axis, keepdim).numpy(),
                               a.astype(np.float64).sum(axis=axis, keepdims=keepdim), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.mean(axis, keepdim).numpy(),
                               a.astype(np.float64).mean(axis=axis, keepdims=keepdim), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_max_and_argmax(axis):
    a = arr(6, 11)
    t = minillm.tensor(a)
    np.testing.assert_array_equal(t.max(axis).numpy(), a.max(axis=axis))
    np.testing.assert_array_equal(t.argmax(axis).numpy(), a.argmax(axis=axis))


def test_sum_to_reduces_broadcast_axes():
    a = arr(2, 3, 4)
    t = minillm.tensor(a)
    np.testing.assert_allclose(_C.sum_to(t, (4,)).numpy(), a.sum(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(_C.sum_to(t, (3, 1)).numpy(), a.sum(axis=(0, 2))[:, None], rtol=1e-5)
    np.testing.assert_allclose(_C.sum_to(t, (2, 1, 4)).numpy(), a.sum(axis=1, keepdims=True), rtol=1e-5)


def test_softmax_and_log_softmax_any_axis():
    a = arr(4, 5, 6) * 10
    t = minillm.tensor(a)
    for axis in (-1, 1, 0):
        x = a.astype(np.float64)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        sm = e / e.sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(t.softmax(axis).numpy(), sm, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(t.log_softmax(axis).numpy(), np.log(sm), rtol=1e-5, atol=1e-5)


def test_layer_norm_matches_numpy():
    a = arr(6, 10)
    w, b = arr(10), arr(10)
    y, mu, rs = _C.layer_norm(minillm.tensor(a), minillm.tensor(w), minillm.tensor(b), 1e-5)
    x = a.astype(np.float64)
    m = x.mean(-1, keepdims=True)
    v = x.var(-1, keepdims=True)
    np.testing.assert_allclose(y.numpy(), (x - m) / np.sqrt(v + 1e-5) * w + b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mu.numpy(), m[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weight shape"):
        _C.layer_norm(minillm.tensor(a), minillm.zeros(3), None, 1e-5)


# ------------------------------------------------------------------ matmul
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                   ((2, 1, 3, 4), (5, 4, 6)), ((4,), (4, 5)), ((3, 4), (4,)),
                                   ((4,), (4,)), ((1, 1), (1, 1)), ((2, 3, 4), (1, 4, 2))])
def test_matmul_matches_numpy(sa, sb):
    a, b = arr(*sa), arr(*sb)
    got = (minillm.tensor(a) @ minillm.tensor(b)).numpy()
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_matmul_transpose_flags_and_views_need_no_copy():
    a, b = arr(7, 5), arr(6, 5)
    ta, tb = minillm.tensor(a), minillm.tensor(b)
    expect = a.astype(np.float64) @ b.T
    np.testing.assert_allclose(_C.matmul(ta, tb, transpose_b=True).numpy(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose((ta @ tb.T).numpy(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_C.matmul(ta, ta, transpose_a=True).numpy(), a.T.astype(np.float64) @ a,
                               rtol=1e-5, atol=1e-5)
    # strided column slice and a batched transposed view
    big = arr(7, 12)
    np.testing.assert_allclose((minillm.tensor(big)[:, 2:7] @ tb.T).numpy(),
                               big[:, 2:7].astype(np.float64) @ b.T, rtol=1e-5, atol=1e-5)
    q, k = arr(2, 3, 4, 8), arr(2, 3, 5, 8)
    s = minillm.tensor(q) @ minillm.tensor(k).transpose(-1, -2)
    np.testing.assert_allclose(s.numpy(), q.astype(np.float64) @ k.transpose(0, 1, 3, 2), rtol=1e-5,
                               atol=1e-5)


def test_matmul_out_alpha_beta():
    a, b, c = arr(3, 4), arr(4, 2), arr(3, 2)
    out = minillm.tensor(c)
    _C.matmul(minillm.tensor(a), minillm.tensor(b), out=out, alpha=2.0, beta=0.5)
    np.testing.assert_allclose(out.numpy(), 2 * a.astype(np.float64) @ b + 0.5 * c, rtol=1e-5, atol=1e-5)


def test_matmul_shape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        minillm.zeros(3, 4) @ minillm.zeros(5, 2)


# ------------------------------------------------------------------ misc ops
def test_embedding_gather_and_scatter_add():
    w = arr(10, 4)
    idx = np.array([[1, 3, 3], [9, 0, 1]])
    out = _C.embedding(minillm.tensor(w), minillm.tensor(idx))
    np.testing.assert_array_equal(out.numpy(), w[idx])
    d = arr(2, 3, 4)
    dw = _C.embedding_backward(minillm.tensor(d), minillm.tensor(idx), 10)
    expect = np.zeros((10, 4))
    np.add.at(expect, idx.reshape(-1), d.reshape(-1, 4))
    np.testing.assert_allclose(dw.numpy(), expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(IndexError, match="id 10"):
        _C.embedding(minillm.tensor(w), minillm.tensor([10]))


def test_cat_and_stack():
    a, b = arr(2, 3), arr(2, 5)
    np.testing.assert_array_equal(minillm.cat([minillm.tensor(a), minillm.tensor(b)], 1).numpy(),
                                  np.concatenate([a, b], 1))
    np.testing.assert_array_equal(minillm.stack([minillm.tensor(a), minillm.tensor(a)], 1).numpy(),
                                  np.stack([a, a], 1))
    with pytest.raises(ValueError, match="differ"):
        minillm.cat([minillm.tensor(a), minillm.tensor(b)], 0)


def test_bfloat16_cast_rounds_to_nearest_even():
    # 1 + 2^-8 lies halfway between two bf16 values (1 and 1 + 2^-7): ties go to the even one (1)
    vals = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 3.0e38], np.float32)
    t = minillm.tensor(vals).astype("bfloat16")
    assert t.dtype == "bfloat16"
    back = t.astype("float32").numpy()
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1 + 2 ** -6, -2.5])


def test_growable_tensor_appends_with_amortised_doubling():
    g = minillm.GrowableTensor(row_shape=(3,), capacity=2)
    rows = []
    for i in range(9):
        r = np.full((3,), i, np.float32)
        g.append(minillm.tensor(r))
        rows.append(r)
    g.append(minillm.tensor(np.ones((4, 3), np.float32)))
    assert len(g) == 13 and g.capacity == 16
    np.testing.assert_array_equal(g.tensor.numpy(), np.concatenate([np.stack(rows), np.ones((4, 3))]))
    with pytest.raises(ValueError, match="rows of shape"):
        g.append(minillm.zeros(2, 2))


def test_integer_powers_of_negative_bases_are_exact():
    a = np.array([-2.0, -0.5, 3.0], np.float32)
    t = minillm.tensor(a)
    for e in (3, -3, 0, 5):
        np.testing.assert_allclose((t ** e).numpy(), a.astype(np.float64) ** e, rtol=1e-6)
    np.testing.assert_allclose((minillm.tensor(np.abs(a)) ** 1.5).numpy(), np.abs(a) ** 1.5, rtol=1e-5)


def test_operators_record_autograd_from_a_fresh_import():
    import subprocess
    import sys
    code = ("import minillm; x = minillm.tensor([-2.0], requires_grad=True); "
            "(x * 2).sum().backward(); print(x.grad.item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2.0"


@pytest.mark.parametrize("src_shape", [(7,), (5, 7), (1, 7), (3, 5, 7), (5, 1)])
def test_add_in_place_broadcasts_src_like_numpy(src_shape):
    # the bias-like case (trailing shape equal) takes a one-pass path; (1, 7) and (5, 1) do not
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 5, 7), dtype=np.float32)
    b = rng.standard_normal(src_shape, dtype=np.float32)
    dst = minillm.tensor(a)
    out = _C.add_(dst, minillm.tensor(b))
    assert out is dst
    np.testing.assert_array_equal(dst.numpy(), a + b)
