/* gemm_avx2.c: the AVX2+FMA micro-kernel, MR x NR = 6 x 16: GEMM's AVX2 pass (dispatch.h),
 * in a file of its own (MLL_VEC set here: FN(x) is x_avx2, MLL_TARGET is MLL_AVX2).
 * 12 ymm accumulators + 2 ymm of B + 1 broadcast of A = 15 of the 16 ymm registers;
 * per k: 2 loads, 6 broadcasts, 12 FMAs (enough independent FMAs to cover 2 pipes x 4-5
 * cycles latency). */
#define MLL_VEC 256
#include "simd.h"
#include "gemm_internal.h"

#ifdef MLL_X86
#define MR MLL_GEMM_AVX2_MR
#define NR MLL_GEMM_AVX2_NR

/* c (mr, nr) = alpha * ap (6, kc) @ bp (kc, 16) + beta * c; ap, bp packed (gemm_internal.h). */
MLL_TARGET void FN(mll_gemm_kernel)(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                                    float alpha, float beta, int mr, int nr) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 a = _mm256_broadcast_ss(ap + i);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
        ap += MR;
        bp += NR;
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (mr == MR && nr == NR) {
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            float *crow = c + i * ldc;
            if (beta == 0.0f) {
                _mm256_storeu_ps(crow, _mm256_mul_ps(va, acc[i][0]));
                _mm256_storeu_ps(crow + 8, _mm256_mul_ps(va, acc[i][1]));
            } else {
                _mm256_storeu_ps(crow, _mm256_fmadd_ps(va, acc[i][0], _mm256_mul_ps(vb, _mm256_loadu_ps(crow))));
                _mm256_storeu_ps(crow + 8,
                                 _mm256_fmadd_ps(va, acc[i][1], _mm256_mul_ps(vb, _mm256_loadu_ps(crow + 8))));
            }
        }
        return;
    }
    /* partial tile: the same fma(alpha, acc, beta * c) per element, through a buffer */
    float tile[MR][NR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(tile[i], acc[i][0]);
        _mm256_storeu_ps(tile[i] + 8, acc[i][1]);
    }
    for (int i = 0; i < mr; i++) {
        float *crow = c + i * ldc;
        if (beta == 0.0f)
            for (int j = 0; j < nr; j++) crow[j] = alpha * tile[i][j];
        else
            for (int j = 0; j < nr; j++) crow[j] = __builtin_fmaf(alpha, tile[i][j], beta * crow[j]);
    }
}
#endif
