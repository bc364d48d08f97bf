/* gemm_avx512.c: the AVX-512 micro-kernel, MR x NR = 14 x 32: GEMM's AVX-512 pass
 * (dispatch.h), in a file of its own (MLL_VEC set here: FN(x) is x_avx512, MLL_TARGET is
 * MLL_AVX512).
 * 28 zmm accumulators + 2 zmm of B + 1 broadcast of A = 31 of the 32 zmm registers.
 * Per k: 2 vector loads, 14 broadcasts, 28 FMAs. A core that runs a 512-bit FMA as two
 * 256-bit halves (1 zmm FMA/cycle, 4 cycles latency) needs >= 4 independent chains, one that
 * issues 2 zmm FMAs/cycle needs >= 8; 28 chains cover both, and the 16 loads per 28 FMAs stay
 * under the 2-3 loads/cycle of either. Measured figures: bench/bench_gemm.py and the README.
 * Also here: SIMD packing for the four stored layouts, and row-vector x matrix kernels for
 * products with one row or column. */
#define MLL_VEC 512
#include "simd.h"
#include "gemm_internal.h"

#ifdef MLL_X86
#define MR MLL_GEMM_AVX512_MR
#define NR MLL_GEMM_AVX512_NR

/* The tile body for R <= 14 rows and H <= 2 sixteen-column halves, both compile-time
 * constants once inlined: edge tiles (M = 64 is 4 x 14 + 8 rows) run only the FMAs they
 * need. ap keeps the packed stride MR. Every element gets the same FMA sequence whatever R
 * and H are, so tile shapes never change results. */
MLL_TARGET static inline __attribute__((always_inline)) void tile(const int R, const int H, int64_t kc,
                                                                  const float *ap, const float *bp, float *c,
                                                                  int64_t ldc, float alpha, float beta, int mr,
                                                                  int nr) {
    __m512 acc[MR][2];
    mll_gemm_start_tile(R, H, acc, c, ldc);
    for (int64_t k = 0; k < kc; k++) {
        /* B and A are read once per k step, 128 and 56 bytes. B may come from L3 (~200 cycles
         * away): 24 steps (~670 cycles) ahead is far enough to stream a fresh B micro-panel at
         * full speed, where 8 steps fall short; A comes from L2 or L1, 8 steps suffice */
        _mm_prefetch((const char *)(bp + 24 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + 24 * NR + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(ap + 8 * MR), _MM_HINT_T0);
        __m512 b0 = _mm512_load_ps(bp), b1 = H == 2 ? _mm512_load_ps(bp + 16) : b0;
#pragma GCC unroll 14
        for (int i = 0; i < R; i++) {
            __m512 a = _mm512_set1_ps(ap[i]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            if (H == 2) acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
        ap += MR;
        bp += NR;
    }
    mll_gemm_store_tile(R, H, acc, c, ldc, alpha, beta, mr, nr);
}

/* c (mr, nr) = alpha * ap (14, kc) @ bp (kc, 32) + beta * c; ap, bp packed (gemm_internal.h).
 * Partial tiles run a body sized to them and are clipped with masked loads/stores. */
MLL_TARGET void FN(mll_gemm_kernel)(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                                    float alpha, float beta, int mr, int nr) {
#define CALL(R, H) tile(R, H, kc, ap, bp, c, ldc, alpha, beta, mr, nr)
    MLL_GEMM_DISPATCH_TILES(CALL)
#undef CALL
}

/* dst[k*dst_stride + i] = src[i*lds + k] for i < rows (zeros for rows <= i < width), k < kc:
 * `width` (<= 16) rows of a row-major matrix turned into k-major columns, 16 k at a time. */
MLL_TARGET static void pack_transposed16(const float *src, int64_t lds, int rows, int width, int64_t kc,
                                         float *dst, int64_t dst_stride) {
    __mmask16 store_mask = (__mmask16)((1u << width) - 1);
    for (int64_t k0 = 0; k0 < kc; k0 += 16) {
        int kn = kc - k0 < 16 ? (int)(kc - k0) : 16;
        __mmask16 load_mask = (__mmask16)((1u << kn) - 1);
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(load_mask, src + i * lds + k0) : _mm512_setzero_ps();
        mll_gemm_transpose16(r);
        /* with width < 16, a full store spills into the slot of k + 1, written next (masked
         * stores cost more than plain ones on some cores); the last k of the block takes the mask */
        int kfull = width == 16 || k0 + kn < kc ? kn : kn - 1;
        for (int k = 0; k < kfull; k++) _mm512_storeu_ps(dst + (k0 + k) * dst_stride, r[k]);
        for (int k = kfull; k < kn; k++) _mm512_mask_storeu_ps(dst + (k0 + k) * dst_stride, store_mask, r[k]);
    }
}

/* ap: micro-panels of 14 x kc (k-major, zero rows past mc) <- A[0:mc, 0:kc] stored row-major
 * (the not-transposed A, whose packing is a transpose). */
MLL_TARGET void FN(mll_gemm_pack_a_rows)(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap) {
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int rows = mc - i0 < MR ? (int)(mc - i0) : MR;
        pack_transposed16(A + i0 * lda, lda, rows, MR, kc, ap, MR);
        ap += MR * kc;
    }
}

/* bp panels p0..p1-1 of kc x 32 (k-major, zero columns past nc), panel p at bp + p*32*kcmax
 * <- op(B)[0:kc, 0:nc] with B stored (nc, kc) row-major (the transposed B). */
MLL_TARGET void FN(mll_gemm_pack_b_cols)(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax,
                                         int64_t p0, int64_t p1, float *bp) {
    for (int64_t p = p0; p < p1; p++) {
        int64_t j0 = p * NR;
        int cols = nc - j0 < NR ? (int)(nc - j0) : NR;
        float *dst = bp + p * NR * kcmax;
        for (int half = 0; half < NR / 16; half++) {
            int c = cols - 16 * half;
            c = c < 0 ? 0 : c > 16 ? 16 : c;
            pack_transposed16(B + (j0 + 16 * half) * ldb, ldb, c, 16, kc, dst + 16 * half, NR);
        }
    }
}

/* ap: micro-panels of 14 x kc (k-major, zero rows past mc) <- op(A)[0:mc, 0:kc] with A stored
 * (kc, mc) row-major (the transposed A): 14 contiguous floats per k and panel. Row k of A is
 * read front to back for all panels before moving on, which the prefetchers stream. */
MLL_TARGET void FN(mll_gemm_pack_a_cols)(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap) {
    int64_t npanels = (mc + MR - 1) / MR;
    __mmask16 full = (__mmask16)((1u << MR) - 1);
    __mmask16 last = (__mmask16)((1u << (mc - (npanels - 1) * MR)) - 1);
    for (int64_t k = 0; k < kc; k++) {
        const float *src = A + k * lda;
        float *dst = ap + k * MR;
        for (int64_t p = 0; p < npanels; p++) {
            __m512 v = _mm512_maskz_loadu_ps(p == npanels - 1 ? last : full, src + p * MR);
            /* a 16-float store spills 2 floats into slot k + 1, written next; masked stores cost
             * more than plain ones on some cores, so only the panel's last slot takes one */
            if (k < kc - 1)
                _mm512_storeu_ps(dst + p * MR * kc, v);
            else
                _mm512_mask_storeu_ps(dst + p * MR * kc, full, v);
        }
    }
}

/* bp panels p0..p1-1 of kc x 32 (k-major, zero columns past nc), panel p at bp + p*32*kcmax
 * <- B[0:kc, 0:nc] stored row-major (the not-transposed B), row by row. */
MLL_TARGET void FN(mll_gemm_pack_b_rows)(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax,
                                         int64_t p0, int64_t p1, float *bp) {
    for (int64_t k = 0; k < kc; k++) {
        const float *src = B + k * ldb;
        for (int64_t p = p0; p < p1; p++) {
            int64_t j0 = p * NR;
            float *dst = bp + p * NR * kcmax + k * NR;
            if (j0 + NR <= nc) {
                _mm512_store_ps(dst, _mm512_loadu_ps(src + j0));
                _mm512_store_ps(dst + 16, _mm512_loadu_ps(src + j0 + 16));
            } else {
                int cols = (int)(nc - j0);
                __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
                __mmask16 m1 = cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
                _mm512_store_ps(dst, _mm512_maskz_loadu_ps(m0, src + j0));
                _mm512_store_ps(dst + 16, _mm512_maskz_loadu_ps(m1, src + j0 + 16));
            }
        }
    }
}

/* ---------------------------------------------------------------- row vector x matrix
 * y (1, n) = alpha * x (1, k) @ op(B) (k, n) + beta * y, y with element stride incy, x
 * contiguous. Products with one row (or one column, transposed) are bound by reading B
 * once, so they skip packing, which would read B and write it again. Each y[j] is summed in
 * k order by one thread, whatever the thread split over j. */

/* B stored (k, n) row-major: y[j0:j1] accumulates the rows of B scaled by x[k], in chunks of
 * 1024 columns (4 KiB of sums in L1) and 4 rows at a time, so B streams row by row through
 * the prefetchers (a tall column walk would take a TLB miss per row) */
MLL_TARGET void FN(mll_gemm_gemv_rows)(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x,
                                       const float *B, int64_t ldb, float beta, float *y, int64_t incy) {
    enum { CHUNK = 1024 };
    float sum[CHUNK] __attribute__((aligned(64)));
    for (int64_t jc = j0; jc < j1; jc += CHUNK) {
        int64_t w = j1 - jc < CHUNK ? j1 - jc : CHUNK;
        int64_t nvec = (w + 15) / 16;
        __mmask16 tail = (__mmask16)(w % 16 ? (1u << (w % 16)) - 1 : 0xffff);
        for (int64_t v = 0; v < nvec; v++) _mm512_store_ps(sum + 16 * v, _mm512_setzero_ps());
        int64_t kk = 0;
        for (; kk + 4 <= k; kk += 4) {
            const float *b0 = B + kk * ldb + jc, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
            __m512 x0 = _mm512_set1_ps(x[kk]), x1 = _mm512_set1_ps(x[kk + 1]);
            __m512 x2 = _mm512_set1_ps(x[kk + 2]), x3 = _mm512_set1_ps(x[kk + 3]);
            for (int64_t v = 0; v < nvec; v++) {
                __mmask16 m = v == nvec - 1 ? tail : 0xffff;
                __m512 s = _mm512_load_ps(sum + 16 * v);
                s = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(m, b0 + 16 * v), s);
                s = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m, b1 + 16 * v), s);
                s = _mm512_fmadd_ps(x2, _mm512_maskz_loadu_ps(m, b2 + 16 * v), s);
                s = _mm512_fmadd_ps(x3, _mm512_maskz_loadu_ps(m, b3 + 16 * v), s);
                _mm512_store_ps(sum + 16 * v, s);
            }
        }
        for (; kk < k; kk++) {
            const float *b0 = B + kk * ldb + jc;
            __m512 x0 = _mm512_set1_ps(x[kk]);
            for (int64_t v = 0; v < nvec; v++) {
                __mmask16 m = v == nvec - 1 ? tail : 0xffff;
                __m512 s = _mm512_load_ps(sum + 16 * v);
                _mm512_store_ps(sum + 16 * v, _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(m, b0 + 16 * v), s));
            }
        }
        for (int64_t i = 0; i < w; i++) {
            float *yj = y + (jc + i) * incy;
            *yj = beta == 0.0f ? alpha * sum[i] : __builtin_fmaf(alpha, sum[i], beta * *yj);
        }
    }
}

/* B stored (n, k) row-major: y[j] = dot(x, row j of B) for j in [j0, j1), four rows at a time;
 * each dot sums 16 lanes over k, then the lanes in a fixed tree (_mm512_reduce_add_ps) */
MLL_TARGET void FN(mll_gemm_gemv_cols)(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x,
                                       const float *B, int64_t ldb, float beta, float *y, int64_t incy) {
    for (int64_t j = j0; j < j1; j += 4) {
        int rows = j1 - j < 4 ? (int)(j1 - j) : 4;
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const float *b[4];
        for (int r = 0; r < 4; r++) b[r] = B + (j + (r < rows ? r : 0)) * ldb;
        for (int64_t kk = 0; kk < k; kk += 16) {
            __mmask16 m = k - kk >= 16 ? 0xffff : (__mmask16)((1u << (k - kk)) - 1);
            __m512 xv = _mm512_maskz_loadu_ps(m, x + kk);
            for (int r = 0; r < 4; r++) acc[r] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, b[r] + kk), acc[r]);
        }
        for (int r = 0; r < rows; r++) {
            float s = _mm512_reduce_add_ps(acc[r]);
            float *yj = y + (j + r) * incy;
            *yj = beta == 0.0f ? alpha * s : __builtin_fmaf(alpha, s, beta * *yj);
        }
    }
}
#endif
