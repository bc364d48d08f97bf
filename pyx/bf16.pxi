# bfloat16 mixed precision: the bf16 GEMM (bf16 products, float32 sums) on Tensors, and raw
from libc.stdint cimport uint16_t
# bindings for tests. Operands may be float32 (rounded to bf16 while the GEMM packs them) or
# bfloat16 tensors; results are float32.


cdef Tensor as_gemm_bf16_operand(object x, str what):
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: expected a Tensor, got {type(x).__name__}")
    cdef Tensor t = <Tensor> x
    if t.dtype_ != C.MLL_F32 and t.dtype_ != C.MLL_BF16:
        raise TypeError(f"{what}: expected a float32 or bfloat16 tensor, got {t.dtype}")
    return t


def matmul_bf16(a, b, bint transpose_a=False, bint transpose_b=False, out=None, float alpha=1.0,
                float beta=0.0):
    """alpha * op(a) @ op(b) (+ beta * out) with bf16 products and float32 sums, as `matmul`:
    a (..., M, K), b (..., K, N) or (K, N), broadcast batch axes, NumPy's rules for 1-D operands,
    op() transposing the last two axes when transpose_* is set. a and b: float32 (rounded to
    bf16, nearest even, as they are packed: no rounded copy is kept) or bfloat16. Result float32
    of shape (..., M, N); strided and transposed views go to the GEMM without copies."""
    cdef Tensor A = as_gemm_bf16_operand(a, "matmul_bf16"), B = as_gemm_bf16_operand(b, "matmul_bf16")
    if A.ndim == 0 or B.ndim == 0:
        raise ValueError(f"matmul_bf16: 0-d operands are not allowed (shapes {A.shape}, {B.shape})")
    squeeze_m = A.ndim == 1
    squeeze_n = B.ndim == 1
    if squeeze_m:
        A = unsqueeze(A, 0)
    if squeeze_n:
        B = unsqueeze(B, 1)
    if transpose_a:
        A = transpose(A, -1, -2)
    if transpose_b:
        B = transpose(B, -1, -2)
    cdef int64_t M = A.shape_[A.ndim - 2], K = A.shape_[A.ndim - 1]
    cdef int64_t N = B.shape_[B.ndim - 1]
    if B.shape_[B.ndim - 2] != K:
        raise ValueError(f"matmul_bf16: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                         f"(inner sizes {K} and {B.shape_[B.ndim - 2]})")
    batch = broadcast_shapes(A.shape[:-2], B.shape[:-2])
    cdef int64_t nbatch = 1
    for s in batch:
        nbatch *= s
    out_shape = batch + (M, N)
    cdef Tensor O
    if out is None:
        if beta != 0.0:
            raise ValueError("matmul_bf16: beta != 0 needs an `out` tensor")
        O = new_tensor(out_shape, C.MLL_F32)
    else:
        O = as_f32(out, "matmul_bf16 out")
        if O.shape != out_shape or not is_contig(O):
            raise ValueError(f"matmul_bf16: out must be contiguous of shape {out_shape}, got {O.shape}")
    if M == 0 or N == 0 or nbatch == 0:
        return O
    cdef bint ta = False, tb = False
    cdef int64_t lda = 0, ldb = 0, sa = 0, sb = 0, i
    cdef int rc = 0
    if B.ndim == 2 and A.ndim > 2:
        # one GEMM over all rows of a when its leading axes step by whole rows
        A2 = flatten_rows(A)
        if A2 is not None:
            A = <Tensor> A2
            batch = ()
            nbatch = 1
            M = A.shape_[0]
    if not gemm_operand(A, A.ndim - 2, A.ndim - 1, &ta, &lda):
        A = copy_contig(A)
        ta = False
        lda = K
    if not gemm_operand(B, B.ndim - 2, B.ndim - 1, &tb, &ldb):
        B = copy_contig(B)
        tb = False
        ldb = N
    if nbatch > 1:
        A, sa = batch_view(A, batch, &ta, &lda)
        B, sb = batch_view(B, batch, &tb, &ldb)
    cdef int adt = A.dtype_, bdt = B.dtype_
    cdef int64_t asz = 2 if adt == C.MLL_BF16 else 4, bsz = 2 if bdt == C.MLL_BF16 else 4
    cdef char *pa = A.ptr
    cdef char *pb = B.ptr
    cdef float *po = fptr(O)
    with nogil:
        for i in range(nbatch):
            rc = C.mll_gemm_bf16(ta, tb, M, N, K, alpha, pa + i * sa * asz, adt, lda, pb + i * sb * bsz, bdt,
                                 ldb, beta, po + i * M * N, N)
            if rc != 0:
                break
    if rc == -1:
        raise MemoryError(f"matmul_bf16: out of memory for {tuple(a.shape)} @ {tuple(b.shape)}")
    if squeeze_m and squeeze_n:
        return reshape(O, batch)
    if squeeze_m:
        return reshape(O, batch + (N,))
    if squeeze_n:
        return reshape(O, batch + (M,))
    return O


def gemm_bf16_native():
    """True if matmul_bf16 runs on AVX-512 BF16 (VDPBF16PS) now; False: rounded operands
    through the float32 GEMM (same products, other summation order)."""
    return bool(C.mll_gemm_bf16_native())


def k_round_bf16(const float[::1] x):
    """float32 (n) -> uint16 (n) bf16 bits, nearest even (NaN kept, quiet): the GEMM's rounding."""
    out = _np.empty(x.shape[0], dtype=_np.uint16)
    cdef uint16_t[::1] o = out
    if x.shape[0]:
        C.mll_round_bf16(&x[0], &o[0], x.shape[0])
    return out
