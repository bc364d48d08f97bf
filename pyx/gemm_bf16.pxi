# gemm_bf16.pxi: bindings of gemm_bf16.c: the bf16 GEMM (bf16 products, float32 sums) on
# Tensors. Operands may be float32 (rounded to bf16 while the GEMM packs them) or bfloat16;
# results are float32. The arguments are prepared by gemm.pxi's prepare_gemm, as matmul's.


def matmul_bf16(a, b, bint transpose_a=False, bint transpose_b=False, out=None, float alpha=1.0,
                float beta=0.0):
    """alpha * op(a) @ op(b) (+ beta * out) with bf16 products and float32 sums, as `matmul`:
    a (..., M, K), b (..., K, N) or (K, N), broadcast batch axes, NumPy's rules for 1-D operands,
    op() transposing the last two axes when transpose_* is set. a and b: float32 (rounded to
    bf16, nearest even, as they are packed: no rounded copy is kept) or bfloat16. Result float32
    of shape (..., M, N); strided and transposed views go to the GEMM without copies. K == 0
    gives zeros (beta * out with out)."""
    cdef GemmArgs g = prepare_gemm("matmul_bf16", a, b, transpose_a, transpose_b, out, beta, True)
    if g.done:
        return g.result()
    cdef int adt = g.A.dtype_, bdt = g.B.dtype_
    cdef int64_t asz = itemsize_of(adt), bsz = itemsize_of(bdt), i
    cdef char *pa = g.A.ptr
    cdef char *pb = g.B.ptr
    cdef float *po = fptr(g.O)
    cdef int rc = 0
    with nogil:
        for i in range(g.nbatch):
            rc = C.mll_gemm_bf16(g.ta, g.tb, g.M, g.N, g.K, alpha, pa + i * g.sa * asz, adt, g.lda,
                                 pb + i * g.sb * bsz, bdt, g.ldb, beta, po + i * g.M * g.N, g.N)
            if rc != 0:
                break
    if rc == -1:
        raise MemoryError(f"matmul_bf16: out of memory for {tuple(a.shape)} @ {tuple(b.shape)}")
    return g.result()


def gemm_bf16_native():
    """True if matmul_bf16 runs on AVX-512 BF16 (VDPBF16PS) now; False: rounded operands
    through the float32 GEMM (same products, other summation order)."""
    return bool(C.mll_gemm_bf16_native())
