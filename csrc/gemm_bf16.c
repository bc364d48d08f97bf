/* gemm_bf16.c: C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C with bfloat16 products and
 * float32 sums, for mixed-precision training (activations and weights stay float32 and are rounded
 * to bf16, nearest even, while they are packed: no bf16 copies of them are ever stored).
 *
 * AVX-512 BF16 path: VDPBF16PS (Intel SDM vol. 2, "VDPBF16PS"; Intel BF16 white paper 338302)
 * multiplies 16 pairs of bf16 from each source and adds both products of a pair to one float32
 * lane:  acc[j] += a[2j] b[2j] + a[2j+1] b[2j+1].  The pair is two consecutive k, so the packing
 * interleaves k in twos (the "bf16x2" words):
 *   A micro-panel: MR rows x kc, as ceil(kc/2) x MR words, word (kp, i) = (op(A)[i, 2kp], op(A)[i, 2kp+1])
 *   B micro-panel: kc x NR cols, as ceil(kc/2) x NR words, word (kp, j) = (op(B)[2kp, j], op(B)[2kp+1, j])
 * (low half = even k; an odd kc pads the last pair with 0). The micro-kernel broadcasts one A word
 * per row and multiplies it with two vectors of 16 B words: 28 VDPBF16PS per k pair, i.e. twice the
 * multiply-adds of the float32 kernel per instruction.
 *
 * Blocking, threading and determinism are gemm.c's driver (mll_gemm_run, gemm_internal.h), fed
 * with this file's packing and micro-kernel: B blocks packed once per (jc, pc) and shared by the
 * team, each thread takes an equal run of the MR x NR tiles and packs only the A rows it touches;
 * every element of C is summed by one micro-kernel in k order, so results are bitwise identical
 * for any thread count.
 *
 * Elsewhere (no AVX-512 BF16, or another ISA forced): the operands are rounded to bf16 into float32
 * copies and multiplied by mll_sgemm, so every path computes products of the same bf16 values.
 */
#include "minillm.h"
#include "gemm_internal.h"

#include <string.h>

/* ------------------------------------- rounding: simd.h's mll_f32_to_bf16, nearest even */

/* element idx of X (float32 or bf16) as bf16 bits */
static inline uint32_t load_bf16(const void *X, int dt, int64_t idx) {
    return dt == MLL_BF16 ? ((const uint16_t *)X)[idx] : mll_f32_to_bf16(((const float *)X)[idx]);
}

static inline const void *offset(const void *X, int dt, int64_t elems) {
    return (const char *)X + elems * (dt == MLL_BF16 ? 2 : 4);
}

/* ------------------------------------------------------------------ fallback */

/* rows x cols of X (row stride ld) -> float32 holding the bf16-rounded values, contiguous */
static void round_copy(const void *X, int dt, int64_t ld, int64_t rows, int64_t cols, float *out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            uint32_t u = load_bf16(X, dt, r * ld + c) << 16;
            memcpy(out + r * cols + c, &u, 4);
        }
}

/* Rounded float32 copies of A and B, then mll_sgemm. Returns -1 if memory ran out. */
static int gemm_bf16_fallback(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                              const void *A, int a_dtype, int64_t lda, const void *B, int b_dtype, int64_t ldb,
                              float beta, float *C, int64_t ldc) {
    int64_t ar = transa ? K : M, ac = transa ? M : K, br = transb ? N : K, bc = transb ? K : N;
    size_t abytes = (size_t)(ar * ac) * 4, bbytes = (size_t)(br * bc) * 4;
    float *a = mll_alloc(abytes), *b = mll_alloc(bbytes);
    if (!a || !b) {
        mll_free(a, abytes);
        mll_free(b, bbytes);
        return -1;
    }
    round_copy(A, a_dtype, lda, ar, ac, a);
    round_copy(B, b_dtype, ldb, br, bc, b);
    mll_sgemm(transa, transb, M, N, K, alpha, a, ac, b, bc, beta, C, ldc);
    mll_free(a, abytes);
    mll_free(b, bbytes);
    return 0;
}

#ifdef MLL_X86

/* MR x NR = 14 x 32: 28 zmm accumulators + 2 of B + 1 broadcast of A (as the float32 kernel).
 * KC = 768 k (384 pairs): the same bytes per packed block as the float32 kernel's 384, so the
 * same cache budget (gemm.c): A block MC x KC x 2 B = 252 KiB in L2, B micro-panel 48 KiB
 * streaming from L2, B block KC x NC x 2 B = 6 MiB (double-buffered) in L3. */
#define MR 14
#define NR 32
#define KC 768
#define MC 168
#define NC 4096
#define MAX_THREADS 64

/* ------------------------------------------------------------------ micro-kernel */

/* c (mr, nr) = alpha * ap (R <= 14 rows, 2 kc2 k) @ bp (2 kc2 k, H x 16 cols) + beta * c;
 * ap: kc2 x MR words, bp: kc2 x NR words (packed as above). R and H are compile-time constants
 * once inlined; every element gets the same instruction sequence whatever R and H are. */
MLL_AVX512_BF16 static inline __attribute__((always_inline)) void tile(const int R, const int H, int64_t kc2,
                                                                       const uint32_t *ap, const uint32_t *bp,
                                                                       float *c, int64_t ldc, float alpha,
                                                                       float beta, int mr, int nr) {
    __m512 acc[MR][2];
    mll_gemm_start_tile(R, H, acc, c, ldc);
    for (int64_t kp = 0; kp < kc2; kp++) {
        _mm_prefetch((const char *)(bp + 8 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + 8 * NR + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(ap + 8 * MR), _MM_HINT_T0);
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)bp);
        __m512bh b1 = H == 2 ? (__m512bh)_mm512_load_si512((const void *)(bp + 16)) : b0;
#pragma GCC unroll 14
        for (int i = 0; i < R; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)ap[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
            if (H == 2) acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
        }
        ap += MR;
        bp += NR;
    }
    mll_gemm_store_tile(R, H, acc, c, ldc, alpha, beta, mr, nr);
}

/* c (mr, nr) = alpha * ap (14, 2 kc2) @ bp (2 kc2, 32) + beta * c, clipped to mr <= 14, nr <= 32 */
MLL_AVX512_BF16 static void kernel_bf16(int64_t kc2, const uint32_t *ap, const uint32_t *bp, float *c,
                                        int64_t ldc, float alpha, float beta, int mr, int nr) {
#define CALL(R, H) tile(R, H, kc2, ap, bp, c, ldc, alpha, beta, mr, nr)
    MLL_GEMM_DISPATCH_TILES(CALL)
#undef CALL
}

/* ------------------------------------------------------------------ packing */

/* 16 elements of X (float32 or bf16) at p, lanes past `mask` zero -> their bf16 bits in the low
 * half of 16 32-bit lanes (float32 rounded to nearest even, NaN kept quiet, as mll_f32_to_bf16) */
MLL_AVX512 static inline __m512i load16_bf16(const void *p, int dt, __mmask16 mask) {
    if (dt == MLL_BF16) return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
    __m512i u = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, p));
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(nan, r, q);
}

/* Pairs from two rows, for npanels micro-panels of `width` (MR or NR) columns each:
 * dst[q * pstride + kp * width + j] = (X[2kp, q width + j], X[2kp+1, q width + j]) for columns
 * q width + j < cols (zero past cols), kp < ceil(kc/2); X has row stride ld (rows are k).
 * Used for op(A) = A^T (X = A as stored) and op(B) = B. k is the outer loop so each stored row
 * is read once, front to back, across all the panels (the prefetchers follow it). */
MLL_AVX512 static void pack_pairs_rows(const void *X, int dt, int64_t ld, int64_t cols, int width,
                                       int64_t npanels, int64_t pstride, int64_t kc, uint32_t *dst) {
    for (int64_t kp = 0; 2 * kp < kc; kp++) {
        const void *r0 = offset(X, dt, 2 * kp * ld);
        const void *r1 = offset(X, dt, (2 * kp + 1) * ld);
        int has1 = 2 * kp + 1 < kc;
        for (int64_t q = 0; q < npanels; q++) {
            uint32_t *d = dst + q * pstride + kp * width;
            for (int j = 0; j < width; j += 16) {
                int64_t c0 = q * width + j;
                int n = cols - c0 < 16 ? (cols - c0 > 0 ? (int)(cols - c0) : 0) : 16;
                __mmask16 m = (__mmask16)((1u << n) - 1);
                __mmask16 mw = width - j >= 16 ? 0xffff : (__mmask16)((1u << (width - j)) - 1);
                __m512i lo = load16_bf16(offset(r0, dt, c0), dt, m);
                __m512i hi = has1 ? load16_bf16(offset(r1, dt, c0), dt, m) : _mm512_setzero_si512();
                _mm512_mask_storeu_epi32(d + j, mw, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
    }
}

/* Pairs along rows: dst[kp * width + i] = (X[i, 2kp], X[i, 2kp+1]) for i < rows (zero for
 * rows <= i < width), kp < ceil(kc/2). Used for op(A) = A and op(B) = B^T (X rows are the MR
 * rows / NR columns). Up to 16 rows at a time: 32 k of each row become 16 pair words in one
 * register, and a 16 x 16 transpose turns them into one (masked) store per k pair. */
MLL_AVX512 static void pack_pairs_cols(const void *X, int dt, int64_t ld, int rows, int width, int64_t kc,
                                       uint32_t *dst) {
    for (int i0 = 0; i0 < width; i0 += 16) {
        int h = width - i0 < 16 ? width - i0 : 16;            /* panel lanes of this group */
        __mmask16 mh = (__mmask16)((1u << h) - 1);
        for (int64_t k = 0; k < kc; k += 32) {
            int n = kc - k < 32 ? (int)(kc - k) : 32;
            __mmask16 m0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
            __mmask16 m1 = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
            __m512 r[16];   /* pair words, moved as floats through the shared transpose */
            for (int i = 0; i < 16; i++) {
                if (i0 + i >= rows || i >= h) {
                    r[i] = _mm512_setzero_ps();
                    continue;
                }
                const void *row = offset(X, dt, (int64_t)(i0 + i) * ld + k);
                /* 32 k as bf16 in 32-bit lanes -> 32 uint16 in k order = 16 pair words */
                __m256i w0 = _mm512_cvtepi32_epi16(load16_bf16(row, dt, m0));
                __m256i w1 = _mm512_cvtepi32_epi16(load16_bf16(offset(row, dt, 16), dt, m1));
                r[i] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1));
            }
            mll_gemm_transpose16(r);
            int np = (n + 1) / 2;
            uint32_t *d = dst + (k / 2) * width + i0;
            for (int q = 0; q < np; q++) _mm512_mask_storeu_ps((float *)(d + q * width), mh, r[q]);
        }
    }
}

/* ap: ceil(mc / MR) micro-panels of MR x kc  <-  op(A)[0:mc, 0:kc] */
MLL_AVX512 static void pack_a(int transa, const void *A, int dt, int64_t lda, int64_t mc, int64_t kc,
                              uint32_t *ap) {
    int64_t kc2 = (kc + 1) / 2;
    if (transa) {
        pack_pairs_rows(A, dt, lda, mc, MR, (mc + MR - 1) / MR, MR * kc2, kc, ap);
        return;
    }
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int rows = mc - i0 < MR ? (int)(mc - i0) : MR;
        pack_pairs_cols(offset(A, dt, i0 * lda), dt, lda, rows, MR, kc, ap);
        ap += MR * kc2;
    }
}

/* micro-panels p0..p1-1 of kc x NR, panel p at bp + p * NR * KC/2  <-  op(B)[0:kc, 0:nc] */
MLL_AVX512 static void pack_b(int transb, const void *B, int dt, int64_t ldb, int64_t nc, int64_t kc,
                              int64_t p0, int64_t p1, uint32_t *bp) {
    if (!transb) {
        if (p1 > p0)
            pack_pairs_rows(offset(B, dt, p0 * NR), dt, ldb, nc - p0 * NR, NR, p1 - p0, NR * (KC / 2), kc,
                            bp + p0 * NR * (KC / 2));
        return;
    }
    for (int64_t p = p0; p < p1; p++) {
        int64_t j0 = p * NR;
        int cols = nc - j0 < NR ? (int)(nc - j0) : NR;
        pack_pairs_cols(offset(B, dt, j0 * ldb), dt, ldb, cols, NR, kc, bp + p * NR * (KC / 2));
    }
}

/* ------------------------------------------------------------------ driver */

typedef struct {
    int transa, transb;
    int64_t M, N, K;
    float alpha, beta;
    const void *A, *B;
    int adt, bdt;
    int64_t lda, ldb, ldc;
    float *C;
} bf16_args;

static __thread mll_gemm_buffer tl_abuf[MAX_THREADS], tl_bbuf;

/* ------------------------------------------------- callbacks of gemm.c's driver */

/* ap <- op(A)[ic:ic+mc, pc:pc+kc] as MR-row micro-panels of bf16 pairs */
MLL_AVX512 static void bf16_pack_a(const void *ctx, int64_t ic, int64_t pc, int64_t mc, int64_t kc,
                                   uint32_t *ap) {
    const bf16_args *g = ctx;
    pack_a(g->transa, offset(g->A, g->adt, g->transa ? pc * g->lda + ic : ic * g->lda + pc), g->adt, g->lda, mc,
           kc, ap);
}

/* micro-panels p0..p1-1 of op(B)[pc:pc+kc, jc:jc+nc] */
MLL_AVX512 static void bf16_pack_b(const void *ctx, int64_t jc, int64_t pc, int64_t nc, int64_t kc, int64_t p0,
                                   int64_t p1, uint32_t *bp) {
    const bf16_args *g = ctx;
    pack_b(g->transb, offset(g->B, g->bdt, g->transb ? jc * g->ldb + pc : pc * g->ldb + jc), g->bdt, g->ldb, nc,
           kc, p0, p1, bp);
}

MLL_AVX512_BF16 static void bf16_kernel(const void *ctx, int64_t kc, const uint32_t *ap, const uint32_t *bp,
                                        int64_t i, int64_t j, int first, int mr, int nr) {
    const bf16_args *g = ctx;
    kernel_bf16((kc + 1) / 2, ap, bp, g->C + i * g->ldc + j, g->ldc, g->alpha, first ? g->beta : 1.0f, mr, nr);
}

/* products below this many multiply-adds run on one thread (as gemm.c) */
#define PARALLEL_MIN_FMAS (80 * 80 * 80)

/* 0, or -1 if a packing buffer could not be had. The blocking, the split between threads and
 * the k order are gemm.c's (mll_gemm_run), with k blocks even so that pairs never straddle
 * two blocks (K = 1024 runs as 2 x 512). */
static int gemm_bf16_avx512(const bf16_args *g, int nt) {
    mll_gemm_driver d = {MR, NR, KC, MC, NC, 2, 1, g, bf16_pack_a, bf16_pack_b, bf16_kernel};
    size_t abuf_units = mll_gemm_abuf_units(&d, g->M, g->N, g->K, nt);
    for (int t = 0; t < nt; t++)
        if (!mll_gemm_grow(&tl_abuf[t], abuf_units * 4)) return -1;
    if (!mll_gemm_grow(&tl_bbuf, 2 * mll_gemm_bblock_units(&d, g->N) * 4)) return -1;
    uint32_t *abufs[MAX_THREADS];
    for (int t = 0; t < nt; t++) abufs[t] = tl_abuf[t].ptr;
    mll_gemm_run(&d, g->M, g->N, g->K, nt, tl_bbuf.ptr, abufs, abuf_units);
    return 0;
}
#endif /* MLL_X86 */

int mll_gemm_bf16_native(void) {
#ifdef MLL_X86
    return mll_cpu_has_avx512bf16() && mll_get_isa() == MLL_ISA_AVX512;
#else
    return 0;
#endif
}

int mll_gemm_bf16(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha, const void *A,
                  int a_dtype, int64_t lda, const void *B, int b_dtype, int64_t ldb, float beta, float *C,
                  int64_t ldc) {
    if ((a_dtype != MLL_F32 && a_dtype != MLL_BF16) || (b_dtype != MLL_F32 && b_dtype != MLL_BF16)) return -2;
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0 || alpha == 0.0f) {
        /* nothing to multiply: C = beta C (beta == 0 writes zeros without reading C) */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return 0;
    }
#ifdef MLL_X86
    if (mll_gemm_bf16_native()) {
        bf16_args g = {transa != 0, transb != 0, M, N, K, alpha, beta, A, B, a_dtype, b_dtype, lda, ldb, ldc, C};
        int nt = (double)M * N * K < PARALLEL_MIN_FMAS ? 1 : mll_get_num_threads();
        if (nt > MAX_THREADS) nt = MAX_THREADS;
        if (gemm_bf16_avx512(&g, nt) == 0) return 0;
    }
#endif
    return gemm_bf16_fallback(transa, transb, M, N, K, alpha, A, a_dtype, lda, B, b_dtype, ldb, beta, C, ldc);
}

/* x (n) float32 -> out (n) bf16 bits, nearest even (the rounding the packing applies) */
void mll_round_bf16(const float *x, uint16_t *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = mll_f32_to_bf16(x[i]);
}
