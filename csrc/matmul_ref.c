/* matmul_ref.c: the plain reference matmul, kept as a test oracle for the fast GEMM. */
#include "simd.h"

/* c (M, N) = a (M, K) @ b (K, N), all contiguous. i-k-j loop order, so the inner loop
 * streams a row of b and a row of c; each row of c is one thread's, in parallel over rows. */
void mll_matmul_ref(const float *a, const float *b, float *c, int64_t M, int64_t N, int64_t K) {
    MLL_PARALLEL_ROWS(M, N * K, i, {
        float *ci = c + i * N;
        for (int64_t j = 0; j < N; j++) ci[j] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float aik = a[i * K + k];
            const float *bk = b + k * N;
            for (int64_t j = 0; j < N; j++) ci[j] += aik * bk[j];
        }
    });
}
