# GEMM: raw bindings on typed memoryviews, for tests and benchmarks (the Tensor type calls
# C.mll_sgemm itself). Row strides come from the memoryviews, so column-sliced views work as
# long as each row is contiguous.


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
