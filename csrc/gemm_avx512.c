/* gemm_avx512.c: the AVX-512 micro-kernel, MR x NR = 14 x 32.
 * 28 zmm accumulators + 2 zmm of B + 1 broadcast of A = 31 of the 32 zmm registers.
 * Per k: 2 vector loads, 14 broadcasts, 28 FMAs. Zen 4 runs a 512-bit FMA as two 256-bit
 * halves (1 zmm FMA/cycle, 4 cycles latency: >= 4 independent chains needed); Zen 5 and
 * Intel server cores issue 2 zmm FMAs/cycle (>= 8 chains). 28 chains cover both, and the
 * 16 loads per 28 FMAs stay under the 2-3 loads/cycle of either. */
#include "gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define MR MLL_GEMM_AVX512_MR
#define NR MLL_GEMM_AVX512_NR
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* c (mr, nr) = alpha * ap (14, kc) @ bp (kc, 32) + beta * c; ap, bp packed (gemm_internal.h).
 * Partial tiles are clipped with masked loads/stores: the arithmetic per element is the same
 * for full and partial tiles. */
AVX512 void mll_gemm_avx512_kernel(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                                   float alpha, float beta, int mr, int nr) {
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(ap[i]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
        ap += MR;
        bp += NR;
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *crow = c + i * ldc;
        __m512 r0 = _mm512_mul_ps(va, acc[i][0]), r1 = _mm512_mul_ps(va, acc[i][1]);
        if (beta != 0.0f) {
            r0 = _mm512_fmadd_ps(va, acc[i][0], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, crow)));
            r1 = _mm512_fmadd_ps(va, acc[i][1], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, crow + 16)));
        }
        _mm512_mask_storeu_ps(crow, m0, r0);
        _mm512_mask_storeu_ps(crow + 16, m1, r1);
    }
}
#endif
