# cython: language_level=3
# cython: boundscheck=False
# (Every binding checks the sizes it reads before it takes an element's address; &x[0] of an empty
# view only forms the pointer, and the kernel then reads 0 elements: a per-access check has
# nothing left to catch.)
"""minillm._testing: raw bindings of the C kernels, one per function of csrc/minillm.h that the
tests check against NumPy (and the benchmarks time), plus the test-only kernels
(matmul_ref.c, gemv.c's stream_sum). Not part of the engine: minillm never imports it.

They work on typed memoryviews (or NumPy arrays where strides matter; a contiguous minillm
Tensor is one too), check sizes, raise ValueError with the shapes on a mismatch, and release
the GIL around the kernel.

This extension links its own copy of csrc/ (the same sources, the same flags), so its copy of
the runtime state (the ISA path, the thread count) is its own: every binding first takes
minillm._C's current settings (follow_core), so minillm.set_isa and set_num_threads reach the
kernels tested here as they reach the engine's.
"""
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t
cimport cython
cimport minillm as C
import numpy as np
from minillm import _C as _core

# The test-only functions of csrc/minillm.h (minillm.pxd declares the rest).
cdef extern from "minillm.h" nogil:
    void mll_matmul_ref(const float *a, const float *b, float *c, int64_t M, int64_t N, int64_t K)
    float mll_stream_sum(const float *x, int64_t n)

C.mll_init()
_ISA_CODES = {"generic": C.MLL_ISA_GENERIC, "avx2": C.MLL_ISA_AVX2, "avx512": C.MLL_ISA_AVX512}


cdef int follow_core() except -1:
    """Take minillm._C's ISA path, VNNI switch and thread count (see the module docstring)."""
    C.mll_set_isa(_ISA_CODES[_core.get_isa()])
    C.mll_set_vnni(_core.get_vnni())
    C.mll_set_num_threads(_core.get_num_threads())
    return 0


OP_ADD, OP_SUB, OP_MUL, OP_DIV = C.MLL_ADD, C.MLL_SUB, C.MLL_MUL, C.MLL_DIV
(UN_NEG, UN_EXP, UN_LOG, UN_SQRT, UN_TANH, UN_RELU, UN_GELU, UN_ABS,
 UN_SIGMOID, UN_RELU2) = (C.MLL_NEG, C.MLL_EXP, C.MLL_LOG, C.MLL_SQRT, C.MLL_TANH, C.MLL_RELU, C.MLL_GELU,
                          C.MLL_ABS, C.MLL_SIGMOID, C.MLL_RELU2)
DT_F32, DT_I32, DT_I64, DT_BF16, DT_U8, DT_U16 = (C.MLL_F32, C.MLL_I32, C.MLL_I64, C.MLL_BF16,
                                                  C.MLL_U8, C.MLL_U16)
_DT_SIZE = {C.MLL_F32: 4, C.MLL_I32: 4, C.MLL_I64: 8, C.MLL_BF16: 2, C.MLL_U8: 1, C.MLL_U16: 2}


cdef inline int _check_op(int op, int count, str what) except -1:
    if op < 0 or op >= count:
        raise ValueError(f"unknown {what} op {op}: expected 0..{count - 1}")
    return 0


cdef inline int _same1(str name, Py_ssize_t n, Py_ssize_t m, str other) except -1:
    if n != m:
        raise ValueError(f"{name}: expected ({n},) like {other}, got ({m},)")
    return 0


cdef inline int _same2(str name, Py_ssize_t r, Py_ssize_t c, Py_ssize_t r2, Py_ssize_t c2) except -1:
    if r != r2 or c != c2:
        raise ValueError(f"{name}: expected shape ({r}, {c}), got ({r2}, {c2})")
    return 0


cdef inline int _nonempty_rows(str name, Py_ssize_t rows, Py_ssize_t cols) except -1:
    if rows > 0 and cols == 0:
        raise ValueError(f"{name}: rows of length 0 have no max, got shape ({rows}, {cols})")
    return 0


# ---------------------------------------------------------------- elementwise.c
def k_binary(int op, const float[::1] a, const float[::1] b, float[::1] out):
    """out (n) = a (n) op b (n), float32; op one of OP_ADD/SUB/MUL/DIV."""
    follow_core()
    _check_op(op, 4, "binary")
    _same1("b", a.shape[0], b.shape[0], "a")
    _same1("out", a.shape[0], out.shape[0], "a")
    with nogil:
        C.mll_binary(op, &a[0], &b[0], &out[0], a.shape[0])


def k_binary_row(int op, const float[:, ::1] a, const float[::1] b, float[:, ::1] out):
    """out (rows, cols) = a (rows, cols) op b (cols), b broadcast over rows."""
    follow_core()
    _check_op(op, 4, "binary")
    _same1("b", a.shape[1], b.shape[0], "the columns of a")
    _same2("out", a.shape[0], a.shape[1], out.shape[0], out.shape[1])
    with nogil:
        C.mll_binary_row(op, &a[0, 0], &b[0], &out[0, 0], a.shape[0], a.shape[1])


def k_binary_col(int op, const float[:, ::1] a, const float[::1] b, float[:, ::1] out):
    """out (rows, cols) = a (rows, cols) op b (rows), b broadcast over columns."""
    follow_core()
    _check_op(op, 4, "binary")
    _same1("b", a.shape[0], b.shape[0], "the rows of a")
    _same2("out", a.shape[0], a.shape[1], out.shape[0], out.shape[1])
    with nogil:
        C.mll_binary_col(op, &a[0, 0], &b[0], &out[0, 0], a.shape[0], a.shape[1])


def k_binary_scalar(int op, const float[::1] a, float s, float[::1] out, bint reverse=False):
    """out (n) = a (n) op s, or s op a when reverse."""
    follow_core()
    _check_op(op, 4, "binary")
    _same1("out", a.shape[0], out.shape[0], "a")
    with nogil:
        C.mll_binary_scalar(op, &a[0], s, &out[0], a.shape[0], reverse)


cdef int _elem_strides(object arr, int64_t *st, int itemsize) except -1:
    cdef int d
    for d in range(arr.ndim):
        if arr.strides[d] % itemsize:
            raise ValueError(f"strides {arr.strides} are not multiples of the item size {itemsize}")
        st[d] = arr.strides[d] // itemsize
    return 0


def k_binary_strided(int op, a, b, out):
    """out = a op b with NumPy broadcasting: a, b float32 arrays of any strides (0 on
    broadcast axes, e.g. from np.broadcast_to), out a C-contiguous float32 array of the
    broadcast shape (ndim <= 8)."""
    follow_core()
    _check_op(op, 4, "binary")
    for name, arr in (("a", a), ("b", b), ("out", out)):
        if arr.dtype != np.float32:
            raise TypeError(f"{name}: expected float32, got {arr.dtype}")
    if out.ndim > 8 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out: expected a writable C-contiguous array of ndim <= 8, got shape {out.shape}")
    if a.shape != out.shape or b.shape != out.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} must be broadcast to out's shape {out.shape}")
    cdef int64_t shape[8]
    cdef int64_t astr[8]
    cdef int64_t bstr[8]
    cdef int d, nd = out.ndim
    for d in range(nd):
        shape[d] = out.shape[d]
    _elem_strides(a, astr, 4)
    _elem_strides(b, bstr, 4)
    cdef const float *pa = <const float *><size_t>a.__array_interface__["data"][0]
    cdef const float *pb = <const float *><size_t>b.__array_interface__["data"][0]
    cdef float *po = <float *><size_t>out.__array_interface__["data"][0]
    with nogil:
        C.mll_binary_strided(op, nd, shape, pa, astr, pb, bstr, po)


def k_unary(int op, const float[::1] x, float[::1] out):
    """out (n) = f(x) (n), f one of the UN_* ops."""
    follow_core()
    _check_op(op, 10, "unary")
    _same1("out", x.shape[0], out.shape[0], "x")
    with nogil:
        C.mll_unary(op, &x[0], &out[0], x.shape[0])


def k_unary_backward(int op, const float[::1] x, const float[::1] y, const float[::1] dy, float[::1] dx):
    """dx (n) = dy (n) * f'(x) (n), y = f(x) (n)."""
    follow_core()
    _check_op(op, 10, "unary")
    _same1("y", x.shape[0], y.shape[0], "x")
    _same1("dy", x.shape[0], dy.shape[0], "x")
    _same1("dx", x.shape[0], dx.shape[0], "x")
    with nogil:
        C.mll_unary_backward(op, &x[0], &y[0], &dy[0], &dx[0], x.shape[0])


# ---------------------------------------------------------------------- blas1.c
def k_fill(float[::1] x, float v):
    """x (n) = v"""
    follow_core()
    with nogil:
        C.mll_fill(&x[0], v, x.shape[0])


def k_copy(const float[::1] x, float[::1] y):
    """y (n) = x (n)"""
    follow_core()
    _same1("y", x.shape[0], y.shape[0], "x")
    with nogil:
        C.mll_copy(&x[0], &y[0], x.shape[0])


def k_scale(float[::1] x, float a):
    """x (n) *= a"""
    follow_core()
    with nogil:
        C.mll_scale(&x[0], a, x.shape[0])


def k_axpy(float a, const float[::1] x, float[::1] y):
    """y (n) += a * x (n)"""
    follow_core()
    _same1("y", x.shape[0], y.shape[0], "x")
    with nogil:
        C.mll_axpy(a, &x[0], &y[0], x.shape[0])


def k_dot(const float[::1] x, const float[::1] y):
    """sum of x (n) * y (n), a Python float (accumulated in double)."""
    follow_core()
    _same1("y", x.shape[0], y.shape[0], "x")
    cdef double r
    with nogil:
        r = C.mll_dot(&x[0], &y[0], x.shape[0])
    return r


def k_copy_strided(src, dst):
    """dst (C-contiguous) = src (any strides, negative or 0 too); same shape, same item
    size of 2, 4 or 8 bytes, ndim <= 8."""
    follow_core()
    if src.shape != dst.shape:
        raise ValueError(f"dst: expected shape {src.shape}, got {dst.shape}")
    if src.itemsize != dst.itemsize or src.itemsize not in (2, 4, 8):
        raise TypeError(f"item sizes must match and be 2, 4 or 8 bytes: {src.dtype} -> {dst.dtype}")
    if src.ndim > 8 or not dst.flags.c_contiguous or not dst.flags.writeable:
        raise ValueError(f"dst: expected a writable C-contiguous array of ndim <= 8, got shape {dst.shape}")
    cdef int64_t shape[8]
    cdef int64_t st[8]
    cdef int d, nd = src.ndim, es = src.itemsize
    for d in range(nd):
        shape[d] = src.shape[d]
    _elem_strides(src, st, es)
    cdef const void *ps = <const void *><size_t>src.__array_interface__["data"][0]
    cdef void *pd = <void *><size_t>dst.__array_interface__["data"][0]
    with nogil:
        C.mll_copy_strided(ps, pd, nd, shape, st, es)


def k_transpose(const float[:, :] a, float[:, :] b):
    """b (cols, rows) = a (rows, cols)^T; both may have a row stride larger than their
    width, but elements within a row must be contiguous."""
    follow_core()
    if a.strides[1] != 4 or b.strides[1] != 4:
        raise ValueError(f"rows must be contiguous, got strides ({a.strides[0]}, {a.strides[1]}) and ({b.strides[0]}, {b.strides[1]})")
    _same2("b", a.shape[1], a.shape[0], b.shape[0], b.shape[1])
    if a.shape[0] == 0 or a.shape[1] == 0:
        return
    with nogil:
        C.mll_transpose(&a[0, 0], &b[0, 0], a.shape[0], a.shape[1], a.strides[0] // 4, b.strides[0] // 4)


def k_cast(src, int src_dtype, dst, int dst_dtype):
    """dst (n) = src (n) converted; both C-contiguous arrays whose item sizes match the
    DT_* codes (bf16 is stored as uint16)."""
    follow_core()
    for name, arr, dt in (("src", src, src_dtype), ("dst", dst, dst_dtype)):
        if dt not in _DT_SIZE:
            raise ValueError(f"{name}: unknown dtype code {dt}")
        if arr.itemsize != _DT_SIZE[dt] or not arr.flags.c_contiguous:
            raise TypeError(f"{name}: expected a C-contiguous array of {_DT_SIZE[dt]}-byte items, got {arr.dtype}")
    if src.size != dst.size:
        raise ValueError(f"dst: expected {src.size} elements like src {src.shape}, got {dst.shape}")
    if not dst.flags.writeable:
        raise ValueError("dst is read-only")
    cdef const void *ps = <const void *><size_t>src.__array_interface__["data"][0]
    cdef void *pd = <void *><size_t>dst.__array_interface__["data"][0]
    cdef int64_t n = src.size
    with nogil:
        C.mll_cast(ps, src_dtype, pd, dst_dtype, n)


def k_all_finite(const float[::1] x):
    """True if no element of x (n) is inf or NaN."""
    follow_core()
    cdef int r
    with nogil:
        r = C.mll_all_finite(&x[0], x.shape[0])
    return bool(r)


# --------------------------------------------------------------------- reduce.c
def k_sum_rows(const float[:, ::1] x, float[::1] out):
    """out (rows) = sum of x (rows, cols) over the last axis."""
    follow_core()
    _same1("out", x.shape[0], out.shape[0], "the rows of x")
    with nogil:
        C.mll_sum_rows(&x[0, 0], &out[0], x.shape[0], x.shape[1])


def k_max_rows(const float[:, ::1] x, float[::1] out):
    """out (rows) = max of x (rows, cols) over the last axis (cols >= 1)."""
    follow_core()
    _same1("out", x.shape[0], out.shape[0], "the rows of x")
    _nonempty_rows("x", x.shape[0], x.shape[1])
    with nogil:
        C.mll_max_rows(&x[0, 0], &out[0], x.shape[0], x.shape[1])


def k_argmax_rows(const float[:, ::1] x, int64_t[::1] out):
    """out (rows) int64 = index of the first max of each row of x (rows, cols), cols >= 1."""
    follow_core()
    _same1("out", x.shape[0], out.shape[0], "the rows of x")
    _nonempty_rows("x", x.shape[0], x.shape[1])
    with nogil:
        C.mll_argmax_rows(&x[0, 0], &out[0], x.shape[0], x.shape[1])


def k_sum_cols(const float[:, ::1] x, float[::1] out):
    """out (cols) = sum of x (rows, cols) over the leading axis."""
    follow_core()
    _same1("out", x.shape[1], out.shape[0], "the columns of x")
    with nogil:
        C.mll_sum_cols(&x[0, 0], &out[0], x.shape[0], x.shape[1])


def k_sum_all(const float[::1] x):
    """sum of x (n), a Python float (accumulated in double)."""
    follow_core()
    cdef double r
    with nogil:
        r = C.mll_sum_all(&x[0], x.shape[0])
    return r


def k_sumsq_all(const float[::1] x):
    """sum of x (n) squared, a Python float (accumulated in double)."""
    follow_core()
    cdef double r
    with nogil:
        r = C.mll_sumsq_all(&x[0], x.shape[0])
    return r


def k_max_all(const float[::1] x):
    """max of x (n), n >= 1."""
    follow_core()
    if x.shape[0] == 0:
        raise ValueError("max of an empty array (0,)")
    cdef float r
    with nogil:
        r = C.mll_max_all(&x[0], x.shape[0])
    return r


def k_argmax_all(const float[::1] x):
    """index of the first max of x (n), n >= 1."""
    follow_core()
    if x.shape[0] == 0:
        raise ValueError("argmax of an empty array (0,)")
    cdef int64_t r
    with nogil:
        r = C.mll_argmax_all(&x[0], x.shape[0])
    return r


# -------------------------------------------------------------------- softmax.c
def k_softmax(const float[:, ::1] x, float[:, ::1] y):
    """y (rows, cols) = softmax of x (rows, cols) over the last axis."""
    follow_core()
    _same2("y", x.shape[0], x.shape[1], y.shape[0], y.shape[1])
    _nonempty_rows("x", x.shape[0], x.shape[1])
    with nogil:
        C.mll_softmax_forward(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1])


def k_softmax_backward(const float[:, ::1] y, const float[:, ::1] dy, float[:, ::1] dx):
    """dx = y * (dy - sum(dy * y, last axis)); all (rows, cols)."""
    follow_core()
    _same2("dy", y.shape[0], y.shape[1], dy.shape[0], dy.shape[1])
    _same2("dx", y.shape[0], y.shape[1], dx.shape[0], dx.shape[1])
    with nogil:
        C.mll_softmax_backward(&y[0, 0], &dy[0, 0], &dx[0, 0], y.shape[0], y.shape[1])


def k_log_softmax(const float[:, ::1] x, float[:, ::1] y):
    """y (rows, cols) = log_softmax of x (rows, cols) over the last axis."""
    follow_core()
    _same2("y", x.shape[0], x.shape[1], y.shape[0], y.shape[1])
    _nonempty_rows("x", x.shape[0], x.shape[1])
    with nogil:
        C.mll_log_softmax_forward(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1])


def k_log_softmax_backward(const float[:, ::1] y, const float[:, ::1] dy, float[:, ::1] dx):
    """dx = dy - exp(y) * sum(dy, last axis); y the log-softmax output; all (rows, cols)."""
    follow_core()
    _same2("dy", y.shape[0], y.shape[1], dy.shape[0], dy.shape[1])
    _same2("dx", y.shape[0], y.shape[1], dx.shape[0], dx.shape[1])
    with nogil:
        C.mll_log_softmax_backward(&y[0, 0], &dy[0, 0], &dx[0, 0], y.shape[0], y.shape[1])


# ------------------------------------------------------------------ layernorm.c
def k_layernorm(const float[:, ::1] x, const float[::1] gamma, const float[::1] beta, float[:, ::1] y,
                float[::1] mean, float[::1] rstd, float eps=1e-5):
    """y (rows, cols) = layernorm of x (rows, cols) with gamma, beta (cols) or None;
    writes mean and rstd (rows)."""
    follow_core()
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1]
    _same2("y", rows, cols, y.shape[0], y.shape[1])
    if gamma is not None:
        _same1("gamma", cols, gamma.shape[0], "the columns of x")
    if beta is not None:
        _same1("beta", cols, beta.shape[0], "the columns of x")
    _same1("mean", rows, mean.shape[0], "the rows of x")
    _same1("rstd", rows, rstd.shape[0], "the rows of x")
    if rows > 0 and cols == 0:
        raise ValueError(f"layernorm of rows of length 0: x has shape ({rows}, {cols})")
    cdef const float *pg = &gamma[0] if gamma is not None else NULL
    cdef const float *pb = &beta[0] if beta is not None else NULL
    with nogil:
        C.mll_layernorm_forward(&x[0, 0], pg, pb, &y[0, 0], &mean[0], &rstd[0], rows, cols, eps)


def k_layernorm_backward(const float[:, ::1] x, const float[::1] gamma, const float[::1] mean,
                         const float[::1] rstd, const float[:, ::1] dy, float[:, ::1] dx,
                         float[::1] dgamma, float[::1] dbeta):
    """dx (rows, cols) and, unless None, dgamma, dbeta (cols) of layernorm; gamma (cols)
    or None; mean, rstd (rows) from the forward."""
    follow_core()
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1]
    _same2("dy", rows, cols, dy.shape[0], dy.shape[1])
    _same2("dx", rows, cols, dx.shape[0], dx.shape[1])
    for name, v in (("gamma", gamma), ("dgamma", dgamma), ("dbeta", dbeta)):
        if v is not None:
            _same1(name, cols, v.shape[0], "the columns of x")
    _same1("mean", rows, mean.shape[0], "the rows of x")
    _same1("rstd", rows, rstd.shape[0], "the rows of x")
    cdef const float *pg = &gamma[0] if gamma is not None else NULL
    cdef float *pdg = &dgamma[0] if dgamma is not None else NULL
    cdef float *pdb = &dbeta[0] if dbeta is not None else NULL
    with nogil:
        C.mll_layernorm_backward(&x[0, 0], pg, &mean[0], &rstd[0], &dy[0, 0], &dx[0, 0], pdg, pdb,
                                 rows, cols)


# ------------------------------------------------------------------ embedding.c
def k_embedding(const float[:, ::1] weight, const int64_t[::1] idx, float[:, ::1] out):
    """out (n, dim) = weight (vocab, dim) rows picked by idx (n) int64. Returns -1, or the
    first position whose index is out of range (out is then untouched)."""
    follow_core()
    _same2("out", idx.shape[0], weight.shape[1], out.shape[0], out.shape[1])
    cdef int64_t r
    with nogil:
        r = C.mll_embedding_forward(&weight[0, 0], &idx[0], &out[0, 0], idx.shape[0], weight.shape[1],
                                    weight.shape[0])
    return r


def k_embedding_backward(const float[:, ::1] dout, const int64_t[::1] idx, float[:, ::1] dweight):
    """dweight (vocab, dim) += dout (n, dim) scattered by idx (n) int64 (accumulates)."""
    follow_core()
    _same2("dout", idx.shape[0], dweight.shape[1], dout.shape[0], dout.shape[1])
    cdef Py_ssize_t i, vocab = dweight.shape[0]
    for i in range(idx.shape[0]):
        if idx[i] < 0 or idx[i] >= vocab:
            raise ValueError(f"idx[{i}] = {idx[i]} is outside [0, {vocab}) for dweight ({dweight.shape[0]}, {dweight.shape[1]})")
    with nogil:
        C.mll_embedding_backward(&dout[0, 0], &idx[0], &dweight[0, 0], idx.shape[0], dweight.shape[1])


# ----------------------------------------------------------------- matmul_ref.c
def k_matmul_ref(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c):
    """c (M, N) = a (M, K) @ b (K, N), the plain reference loop."""
    follow_core()
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: a ({a.shape[0]}, {a.shape[1]}) and b ({b.shape[0]}, {b.shape[1]}) do not chain")
    _same2("c", a.shape[0], b.shape[1], c.shape[0], c.shape[1])
    with nogil:
        mll_matmul_ref(&a[0, 0], &b[0, 0], &c[0, 0], a.shape[0], b.shape[1], a.shape[1])


# ----------------------------------------------------------------------- gemm.c
cdef int _gemm_dims(bint transa, bint transb, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t b0, Py_ssize_t b1,
                    Py_ssize_t c0, Py_ssize_t c1, int64_t *dims) except -1:
    """dims = (M, N, K) of C = op(A) @ op(B), or ValueError naming the shapes."""
    cdef Py_ssize_t M = a1 if transa else a0, K = a0 if transa else a1
    cdef Py_ssize_t K2 = b1 if transb else b0, N = b0 if transb else b1
    if K != K2 or c0 != M or c1 != N:
        raise ValueError(
            f"sgemm: op(A) {(M, K)} (A {(a0, a1)}, transa={bool(transa)}) @ op(B) {(K2, N)} "
            f"(B {(b0, b1)}, transb={bool(transb)}) does not give C {(c0, c1)}")
    dims[0], dims[1], dims[2] = M, N, K
    return 0


cdef int64_t _row_stride(const float[:, :] x, str name) except -1:
    if x.shape[1] > 1 and x.strides[1] != sizeof(float):
        raise ValueError(f"sgemm: rows of {name} must be contiguous, got strides {(x.strides[0], x.strides[1])}")
    if x.strides[0] % sizeof(float) != 0 or x.strides[0] < 0:
        raise ValueError(f"sgemm: bad row stride {x.strides[0]} bytes for {name}")
    return x.strides[0] // sizeof(float)


def k_sgemm(bint transa, bint transb, float alpha, const float[:, :] a, const float[:, :] b, float beta,
            float[:, :] c):
    """C = alpha * op(A) @ op(B) + beta * C in place (float32), op(X) = X.T when trans*.

    A: (M, K), or (K, M) with transa; B: (K, N), or (N, K) with transb; C: (M, N).
    Rows must be contiguous; the row strides may be anything (slices of wider arrays)."""
    follow_core()
    cdef int64_t dims[3]
    _gemm_dims(transa, transb, a.shape[0], a.shape[1], b.shape[0], b.shape[1], c.shape[0], c.shape[1], dims)
    cdef int64_t M = dims[0], N = dims[1], K = dims[2]
    cdef int64_t lda = _row_stride(a, "A"), ldb = _row_stride(b, "B"), ldc = _row_stride(c, "C")
    if M == 0 or N == 0:
        return
    cdef const float *pa = &a[0, 0] if a.shape[0] * a.shape[1] else NULL
    cdef const float *pb = &b[0, 0] if b.shape[0] * b.shape[1] else NULL
    with nogil:
        C.mll_sgemm(transa, transb, M, N, K, alpha, pa, lda, pb, ldb, beta, &c[0, 0], ldc)


def k_sgemm_batched(bint transa, bint transb, float alpha, const float[:, :, :] a, const float[:, :, :] b,
                    float beta, float[:, :, :] c):
    """C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i] for every i (float32), in place.

    A: (batch, M, K) or (batch, K, M) with transa; B: (batch, K, N) or (batch, N, K) with
    transb; C: (batch, M, N). A or B may have batch 1 (stride 0: broadcast over the batch)."""
    follow_core()
    cdef int64_t dims[3]
    batch = c.shape[0]
    if a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch):
        raise ValueError(f"sgemm_batched: batch sizes A {a.shape[0]}, B {b.shape[0]}, C {batch} differ")
    _gemm_dims(transa, transb, a.shape[1], a.shape[2], b.shape[1], b.shape[2], c.shape[1], c.shape[2], dims)
    cdef int64_t M = dims[0], N = dims[1], K = dims[2]
    cdef int64_t lda = _row_stride(a[0], "A"), ldb = _row_stride(b[0], "B"), ldc = _row_stride(c[0], "C")
    cdef int64_t sa = a.strides[0] // sizeof(float) if a.shape[0] > 1 else 0
    cdef int64_t sb = b.strides[0] // sizeof(float) if b.shape[0] > 1 else 0
    cdef int64_t sc = c.strides[0] // sizeof(float)
    if batch == 0 or M == 0 or N == 0:
        return
    cdef const float *pa = &a[0, 0, 0] if a.shape[1] * a.shape[2] else NULL
    cdef const float *pb = &b[0, 0, 0] if b.shape[1] * b.shape[2] else NULL
    with nogil:
        C.mll_sgemm_batched(transa, transb, M, N, K, alpha, pa, lda, sa, pb, ldb, sb, beta, &c[0, 0, 0],
                            ldc, sc, batch)


# ------------------------------------------------------------------ gemm_bf16.c
def k_round_bf16(const float[::1] x):
    """float32 (n) -> uint16 (n) bf16 bits, nearest even (NaN kept, quiet): the GEMM's rounding."""
    follow_core()
    out = np.empty(x.shape[0], dtype=np.uint16)
    cdef uint16_t[::1] o = out
    if x.shape[0]:
        C.mll_round_bf16(&x[0], &o[0], x.shape[0])
    return out


# ------------------------------------------------------------------------ rng.c
def k_philox4x32_10(ctr, key):
    """The bare Philox4x32-10 block: ctr (4 uint32), key (2 uint32) -> tuple of 4 uint32."""
    follow_core()
    cdef uint32_t c[4]
    cdef uint32_t k[2]
    cdef uint32_t o[4]
    if len(ctr) != 4 or len(key) != 2:
        raise ValueError(f"expected 4 counter words and 2 key words, got {len(ctr)} and {len(key)}")
    for i in range(4):
        c[i] = ctr[i]
    for i in range(2):
        k[i] = key[i]
    C.mll_philox4x32_10(c, k, o)
    return (o[0], o[1], o[2], o[3])


def k_rand_uniform(uint64_t seed, uint64_t offset, float[::1] out, float lo, float hi):
    """out (n) float32 <- uniform in [lo, hi) from words offset .. offset + n - 1."""
    follow_core()
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_uniform(seed, offset, &out[0], n, lo, hi)


def k_rand_normal(uint64_t seed, uint64_t offset, float[::1] out, float mean, float std):
    """out (n) float32 <- normal(mean, std) from words offset .. offset + 2 ceil(n / 2) - 1."""
    follow_core()
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_normal(seed, offset, &out[0], n, mean, std)


def k_rand_int(uint64_t seed, uint64_t offset, int64_t[::1] out, int64_t lo, int64_t hi):
    """out (n) int64 <- uniform integers in [lo, hi) from words offset .. offset + 2n - 1."""
    follow_core()
    cdef int64_t n = out.shape[0]
    if hi <= lo:
        raise ValueError(f"randint needs lo < hi, got lo={lo}, hi={hi}")
    if n == 0:
        return
    with nogil:
        C.mll_rand_int(seed, offset, &out[0], n, lo, hi)


def k_rand_bits(uint64_t seed, uint64_t offset, uint32_t[::1] out):
    """out (n) uint32 <- the raw words offset .. offset + n - 1 of the stream."""
    follow_core()
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_bits(seed, offset, &out[0], n)


def k_rand_permutation(uint64_t seed, uint64_t offset, int64_t[::1] out):
    """out (n) int64 <- a random permutation of 0 .. n-1 from words offset .. offset + 2n - 1."""
    follow_core()
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_permutation(seed, offset, &out[0], n)


def k_rand_trunc_normal(uint64_t seed, uint64_t offset, float[::1] out, float mean, float std, float a,
                        float b):
    """out (n) float32 <- normal(mean, std) truncated to [a, b], from words offset .. offset + 2n - 1."""
    follow_core()
    cdef int64_t n = out.shape[0]
    if not a < b:
        raise ValueError(f"trunc_normal needs a < b, got a={a}, b={b}")
    if n == 0:
        return
    with nogil:
        C.mll_rand_trunc_normal(seed, offset, &out[0], n, mean, std, a, b)


# ----------------------------------------------------------------------- gemv.c
def stream_sum(const float[::1] x):
    """The float32 sum of every element of x (contiguous float32: a NumPy array or a contiguous
    minillm Tensor), read once front to back on the decoding thread pool: the read-bandwidth
    roof for the linear layers of a decoding step (bench/bench_generate.py times both over the
    same weights). Returns a Python float."""
    follow_core()
    cdef int64_t n = x.shape[0]
    cdef float s = 0.0
    if n:
        with nogil:
            s = mll_stream_sum(&x[0], n)
    return s

