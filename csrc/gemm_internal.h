/* gemm_internal.h: what the GEMM driver (gemm.c) and its per-ISA micro-kernels share.
 *
 * Packed layouts (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication",
 * ACM TOMS 2008; Van Zee & van de Geijn, "BLIS", ACM TOMS 2015):
 *   A micro-panel: MR rows x kc, stored k-major:  ap[k*MR + i] = op(A)[i, k]
 *   B micro-panel: kc x NR cols, stored k-major:  bp[k*NR + j] = op(B)[k, j]
 * Rows/columns past the matrix edge are packed as zeros, so a kernel always runs a full
 * MR x NR tile and only its stores are clipped to (mr, nr).
 */
#ifndef MLL_GEMM_INTERNAL_H
#define MLL_GEMM_INTERNAL_H

#include <stdint.h>

/* c (mr, nr), row stride ldc  =  alpha * ap (mr, kc) @ bp (kc, nr)  +  beta * c.
 * beta == 0: c is written without being read. mr <= MR, nr <= NR, kc >= 1. */
typedef void (*mll_gemm_kernel_fn)(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                                   float alpha, float beta, int mr, int nr);

/* One ISA's micro-kernel and the block sizes that go with it. */
typedef struct {
    mll_gemm_kernel_fn kernel;
    int mr, nr;          /* register tile */
    int kc;              /* depth of a packed block */
    int mc;              /* rows of A packed per thread at a time (multiple of mr) */
    int nc;              /* columns of B packed at a time (multiple of nr) */
    /* optional SIMD packing (NULL: the portable loops in gemm.c). a_rows: A stored (mc, kc),
     * a_cols: A stored (kc, mc); b_rows: B stored (kc, nc), b_cols: B stored (nc, kc). */
    void (*pack_a_rows)(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap);
    void (*pack_a_cols)(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap);
    void (*pack_b_rows)(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax, int64_t p0,
                        int64_t p1, float *bp);
    void (*pack_b_cols)(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax, int64_t p0,
                        int64_t p1, float *bp);
    /* optional products with one row: y[j0:j1] (element stride incy) = alpha * x (1, k) @ op(B)
     * + beta * y, with B stored (k, n) (rows) or (n, k) (cols); NULL: the packed path */
    void (*gemv_rows)(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x, const float *B,
                      int64_t ldb, float beta, float *y, int64_t incy);
    void (*gemv_cols)(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x, const float *B,
                      int64_t ldb, float beta, float *y, int64_t incy);
} mll_gemm_isa;

void mll_gemm_generic_kernel(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                             float alpha, float beta, int mr, int nr);
#if defined(__x86_64__)
void mll_gemm_avx2_kernel(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                          float alpha, float beta, int mr, int nr);
void mll_gemm_avx512_kernel(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                            float alpha, float beta, int mr, int nr);
void mll_gemm_avx512_pack_a_rows(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap);
void mll_gemm_avx512_pack_a_cols(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap);
void mll_gemm_avx512_pack_b_rows(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax,
                                 int64_t p0, int64_t p1, float *bp);
void mll_gemm_avx512_gemv_rows(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x, const float *B,
                               int64_t ldb, float beta, float *y, int64_t incy);
void mll_gemm_avx512_gemv_cols(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x, const float *B,
                               int64_t ldb, float beta, float *y, int64_t incy);
void mll_gemm_avx512_pack_b_cols(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax,
                                 int64_t p0, int64_t p1, float *bp);
#endif

#define MLL_GEMM_GENERIC_MR 4
#define MLL_GEMM_GENERIC_NR 16
#define MLL_GEMM_AVX2_MR 6
#define MLL_GEMM_AVX2_NR 16
#define MLL_GEMM_AVX512_MR 14
#define MLL_GEMM_AVX512_NR 32

#endif
