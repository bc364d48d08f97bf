/* gemm_generic.c: the portable micro-kernel, MR x NR = 4 x 16, plain C that gcc vectorizes
 * along the 16 columns with whatever vector unit the target has. GEMM's generic version
 * (dispatch.h): gemm.c picks it, gemm_avx2.c's or gemm_avx512.c's with MLL_PICK. */
#include "gemm_internal.h"

/* c (mr, nr) = alpha * ap (4, kc) @ bp (kc, 16) + beta * c; ap, bp packed (gemm_internal.h). */
void mll_gemm_kernel_generic(int64_t kc, const float *ap, const float *bp, float *c, int64_t ldc,
                             float alpha, float beta, int mr, int nr) {
    enum { MR = MLL_GEMM_GENERIC_MR, NR = MLL_GEMM_GENERIC_NR };
    float acc[MR][NR] = {{0}};
    for (int64_t k = 0; k < kc; k++) {
        const float *a = ap + k * MR, *b = bp + k * NR;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
    }
    /* one combine loop for full and partial tiles alike, so every element of C is rounded
     * the same way wherever the tile boundaries fall */
    for (int i = 0; i < mr; i++) {
        float *crow = c + i * ldc;
        if (beta == 0.0f)
            for (int j = 0; j < nr; j++) crow[j] = alpha * acc[i][j];
        else
            for (int j = 0; j < nr; j++) crow[j] = alpha * acc[i][j] + beta * crow[j];
    }
}
