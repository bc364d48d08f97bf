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

#include <stddef.h>
#include <stdint.h>

#include "simd.h"

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

/* The blocked, threaded product of gemm.c (mll_gemm_run), for any packed element: float32
 * (gemm.c) or pairs of bf16 in 32-bit words (gemm_bf16.c). Sizes are in k; a packed row of kc
 * k takes units(kc) 32-bit units (kc for floats, ceil(kc / 2) for bf16 pairs), so
 *   A micro-panel r of a packed A block: at abuf + r * mr * units(kc)
 *   B micro-panel q of a packed B block: at bbuf + q * nr * units(kc_max)
 * The callbacks get ctx (the operands) and block origins in C / k coordinates. */
typedef struct {
    int mr, nr;                    /* register tile */
    int64_t kc, mc, nc;            /* block sizes, as mll_gemm_isa */
    int kalign;                    /* k blocks are multiples of kalign (but the last) */
    int units_per_k2;              /* units per 2 k of a packed row: 2 (floats) or 1 (bf16 pairs) */
    const void *ctx;
    /* ap <- op(A)[ic:ic+mc, pc:pc+kc] as MR-row micro-panels */
    void (*pack_a)(const void *ctx, int64_t ic, int64_t pc, int64_t mc, int64_t kc, uint32_t *ap);
    /* micro-panels p0..p1-1 of op(B)[pc:pc+kc, jc:jc+nc], panel p at bp + p * nr * units(kc_max) */
    void (*pack_b)(const void *ctx, int64_t jc, int64_t pc, int64_t nc, int64_t kc, int64_t p0, int64_t p1,
                   uint32_t *bp);
    /* C[i:i+mr, j:j+nr] = alpha * ap @ bp + beta * C, with alpha and beta from ctx in the first k
     * block (first != 0) and beta = 1 in the later ones */
    void (*kernel)(const void *ctx, int64_t kc, const uint32_t *ap, const uint32_t *bp, int64_t i, int64_t j,
                   int first, int mr, int nr);
} mll_gemm_driver;

/* C (M, N) from op(A) (M, K) and op(B) (K, N) on a team of nt threads (nt == 1: the caller
 * alone, no parallel region); bbufs: two B blocks shared by the team (mll_gemm_bblock_units
 * each), abufs[t]: thread t's A buffer of abuf_units units (at least one A block; with
 * mll_gemm_abuf_units(d, M, N, K, nt), all of its A blocks, packed once for all of B). */
void mll_gemm_run(const mll_gemm_driver *d, int64_t M, int64_t N, int64_t K, int nt, uint32_t *bbufs,
                  uint32_t *const *abufs, size_t abuf_units);
size_t mll_gemm_bblock_units(const mll_gemm_driver *d, int64_t N);

/* A packing buffer of the calling thread (float32 and bf16 keep their own): grown on demand,
 * never shrunk; blocks of 2 MiB and more are advised onto 2 MiB pages. NULL if memory ran out. */
typedef struct {
    void *ptr;
    size_t bytes;
} mll_gemm_buffer;
void *mll_gemm_grow(mll_gemm_buffer *b, size_t bytes);
size_t mll_gemm_abuf_units(const mll_gemm_driver *d, int64_t M, int64_t N, int64_t K, int nt);

/* The micro-kernels, one per ISA (gemm_generic.c, gemm_avx2.c, gemm_avx512.c: GEMM's passes of
 * dispatch.h, each in a file of its own), and AVX-512's packing and one-row products */
void mll_gemm_kernel_generic(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                             float alpha, float beta, int mr, int nr);
#ifdef MLL_X86
void mll_gemm_kernel_avx2(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                          float alpha, float beta, int mr, int nr);
void mll_gemm_kernel_avx512(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                            float alpha, float beta, int mr, int nr);
void mll_gemm_pack_a_rows_avx512(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap);
void mll_gemm_pack_a_cols_avx512(const float *A, int64_t lda, int64_t mc, int64_t kc, float *ap);
void mll_gemm_pack_b_rows_avx512(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax,
                                 int64_t p0, int64_t p1, float *bp);
void mll_gemm_pack_b_cols_avx512(const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax,
                                 int64_t p0, int64_t p1, float *bp);
void mll_gemm_gemv_rows_avx512(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x, const float *B,
                               int64_t ldb, float beta, float *y, int64_t incy);
void mll_gemm_gemv_cols_avx512(int64_t j0, int64_t j1, int64_t k, float alpha, const float *x, const float *B,
                               int64_t ldb, float beta, float *y, int64_t incy);
#endif

#define MLL_GEMM_GENERIC_MR 4
#define MLL_GEMM_GENERIC_NR 16
#define MLL_GEMM_AVX2_MR 6
#define MLL_GEMM_AVX2_NR 16
#define MLL_GEMM_AVX512_MR 14
#define MLL_GEMM_AVX512_NR 32

#ifdef MLL_X86
/* Shared by the float32 and bf16 AVX-512 micro-kernels (gemm_avx512.c, gemm_bf16.c): the
 * accumulators of rows i < R (H = 1 or 2 vectors of 16 columns) zeroed, and the C tile they
 * end in prefetched (it is read at the end; rows of 32 floats are two cache lines). */
MLL_AVX512 static inline __attribute__((always_inline)) void
mll_gemm_start_tile(const int R, const int H, __m512 acc[][2], const float *c, int64_t ldc) {
#pragma GCC unroll 14
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 14
    for (int i = 0; i < R; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        if (H == 2) _mm_prefetch((const char *)(c + i * ldc + 31), _MM_HINT_T0);
    }
}

/* Shared by the float32 and bf16 AVX-512 micro-kernels (gemm_avx512.c, gemm_bf16.c): rows
 * i < mr of a tile, c = alpha acc + beta c over nr <= 32 columns (H = 1 or 2 vectors of 16).
 * R and H are compile-time constants once inlined. Full-width tiles use plain loads and stores
 * (masked stores cost more than plain ones on some AVX-512 cores, e.g. AMD Zen 4). */
MLL_AVX512 static inline __attribute__((always_inline)) void
mll_gemm_store_tile(const int R, const int H, __m512 acc[][2], float *c, int64_t ldc, float alpha, float beta,
                    int mr, int nr) {
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    if (H == 2 && nr == MLL_GEMM_AVX512_NR) {
#pragma GCC unroll 14
        for (int i = 0; i < R; i++) {
            if (i >= mr) break;
            float *crow = c + i * ldc;
            __m512 r0 = _mm512_mul_ps(va, acc[i][0]), r1 = _mm512_mul_ps(va, acc[i][1]);
            if (beta != 0.0f) {
                r0 = _mm512_fmadd_ps(va, acc[i][0], _mm512_mul_ps(vb, _mm512_loadu_ps(crow)));
                r1 = _mm512_fmadd_ps(va, acc[i][1], _mm512_mul_ps(vb, _mm512_loadu_ps(crow + 16)));
            }
            _mm512_storeu_ps(crow, r0);
            _mm512_storeu_ps(crow + 16, r1);
        }
        return;
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
#pragma GCC unroll 14
    for (int i = 0; i < R; i++) {
        if (i >= mr) break;
        float *crow = c + i * ldc;
        if (beta != 0.0f) {
            __m512 r0 = _mm512_fmadd_ps(va, acc[i][0], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, crow)));
            _mm512_mask_storeu_ps(crow, m0, r0);
            if (H == 2) {
                __m512 r1 = _mm512_fmadd_ps(va, acc[i][1], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, crow + 16)));
                _mm512_mask_storeu_ps(crow + 16, m1, r1);
            }
        } else {
            _mm512_mask_storeu_ps(crow, m0, _mm512_mul_ps(va, acc[i][0]));
            if (H == 2) _mm512_mask_storeu_ps(crow + 16, m1, _mm512_mul_ps(va, acc[i][1]));
        }
    }
}

/* switch (mr) over 14..1 with CALL(R, H): H = 2 vectors of columns when nr > 16, else 1, so
 * that each tile shape gets a body sized to it (R and H constants) */
#define MLL_GEMM_TILE_CASE_(R, CALL)                                                               \
    case R:                                                                                        \
        if (nr > 16)                                                                               \
            CALL(R, 2);                                                                            \
        else                                                                                       \
            CALL(R, 1);                                                                            \
        break;
#define MLL_GEMM_DISPATCH_TILES(CALL)                                                              \
    switch (mr) {                                                                                  \
        MLL_GEMM_TILE_CASE_(14, CALL) MLL_GEMM_TILE_CASE_(13, CALL) MLL_GEMM_TILE_CASE_(12, CALL)  \
        MLL_GEMM_TILE_CASE_(11, CALL) MLL_GEMM_TILE_CASE_(10, CALL) MLL_GEMM_TILE_CASE_(9, CALL)   \
        MLL_GEMM_TILE_CASE_(8, CALL) MLL_GEMM_TILE_CASE_(7, CALL) MLL_GEMM_TILE_CASE_(6, CALL)     \
        MLL_GEMM_TILE_CASE_(5, CALL) MLL_GEMM_TILE_CASE_(4, CALL) MLL_GEMM_TILE_CASE_(3, CALL)     \
        MLL_GEMM_TILE_CASE_(2, CALL) MLL_GEMM_TILE_CASE_(1, CALL)                                 \
    default: break;                                                                                \
    }

/* shared by the float32 and bf16 packings (gemm_avx512.c, gemm_bf16.c) */
/* r[0..15] (16 x 16, row i in r[i])  ->  its transpose in place: 4 rounds of 16 shuffles
 * (within-lane unpacks of singles and pairs, then 128-bit lane shuffles twice). */
MLL_AVX512 static inline void mll_gemm_transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + c], lane l = column 4l + c of rows 4g..4g+3 */
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; c++) {
        __m512 v = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), w = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 w2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v, v2, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v, v2, 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(w, w2, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(w, w2, 0xdd);
    }
}
#endif

#endif
