/* gemv.c: act(x @ W^T + bias) + add for a few rows of x: the linear layers of one decoding
 * step, with their GELU or residual add done on the way out.
 *
 * Decoding one token per step multiplies a (B, K) activation by every weight matrix with B
 * small, so the time is the time to read W once. The packed GEMM would copy W into panels
 * first (reading it twice and writing it once) and pad B up to its micro-tile; here each
 * weight row is streamed once, straight from memory, and dotted with the B rows of x that
 * sit in L1. Inference only (no backward).
 *
 * Threads: W's rows go in groups of 4, and each thread takes a fixed, contiguous range of
 * groups; an output element is always computed by the same code in the same order, so the
 * result does not depend on the thread count.
 */
#include "simd.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

/* Below this many weights (N * K) one thread reads W faster than two can start. */
#define GEMV_PAR_MIN (1 << 16)

/* ------------------------------------------------------------------ generic */
/* out[r] = dot(x (K), w[r] (K)) for the n <= 4 rows w[r] = w + r * K */
static void dots_generic(const float *x, const float *w, int64_t K, int n, float *out) {
    for (int r = 0; r < n; r++) {
        const float *wr = w + r * K;
        float s = 0.0f;
        for (int64_t k = 0; k < K; k++) s += x[k] * wr[k];
        out[r] = s;
    }
}

#if defined(MLL_X86)
/* ------------------------------------------------------------------ AVX2 */
MLL_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

MLL_AVX2 static void dots_avx2(const float *x, const float *w, int64_t K, int n, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t k = 0;
    if (n == 4) {
        for (; k + 8 <= K; k += 8) {
            __m256 xv = _mm256_loadu_ps(x + k);
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), xv, acc[0]);
            acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(w + K + k), xv, acc[1]);
            acc[2] = _mm256_fmadd_ps(_mm256_loadu_ps(w + 2 * K + k), xv, acc[2]);
            acc[3] = _mm256_fmadd_ps(_mm256_loadu_ps(w + 3 * K + k), xv, acc[3]);
        }
    } else {
        for (; k + 8 <= K; k += 8) {
            __m256 xv = _mm256_loadu_ps(x + k);
            for (int r = 0; r < n; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * K + k), xv, acc[r]);
        }
    }
    for (int r = 0; r < n; r++) {
        float s = hsum256(acc[r]);
        for (int64_t j = k; j < K; j++) s += x[j] * w[r * K + j];
        out[r] = s;
    }
}

/* ------------------------------------------------------------------ AVX-512 */
MLL_AVX512 static void dots_avx512(const float *x, const float *w, int64_t K, int n, float *out) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    if (n == 4) {
        for (; k + 16 <= K; k += 16) {
            __m512 xv = _mm512_loadu_ps(x + k);
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), xv, acc[0]);
            acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(w + K + k), xv, acc[1]);
            acc[2] = _mm512_fmadd_ps(_mm512_loadu_ps(w + 2 * K + k), xv, acc[2]);
            acc[3] = _mm512_fmadd_ps(_mm512_loadu_ps(w + 3 * K + k), xv, acc[3]);
        }
    } else {
        for (; k + 16 <= K; k += 16) {
            __m512 xv = _mm512_loadu_ps(x + k);
            for (int r = 0; r < n; r++) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * K + k), xv, acc[r]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
        for (int r = 0; r < n; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + r * K + k), xv, acc[r]);
    }
    for (int r = 0; r < n; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}
#endif

typedef void (*dots_fn)(const float *, const float *, int64_t, int, float *);

static dots_fn pick_dots(void) {
#if defined(MLL_X86)
    switch (mll_get_isa()) {
    case MLL_ISA_AVX512: return dots_avx512;
    case MLL_ISA_AVX2: return dots_avx2;
    default: break;
    }
#endif
    return dots_generic;
}

/* y rows [0, M) x columns of groups [g0, g1) (group g = W rows [4g, 4g + 4) clipped to N) */
static void linear_groups(dots_fn dots, const float *x, const float *W, const float *bias, const float *add,
                          float *y, int64_t M, int64_t N, int64_t K, int act, int64_t g0, int64_t g1) {
    float d[4];
    for (int64_t g = g0; g < g1; g++) {
        int64_t j = 4 * g;
        int n = N - j < 4 ? (int)(N - j) : 4;
        for (int64_t m = 0; m < M; m++) {
            dots(x + m * K, W + j * K, K, n, d);
            float *ym = y + m * N + j;
            for (int r = 0; r < n; r++) {
                float v = bias ? d[r] + bias[j + r] : d[r];
                if (act == 1) v = mll_geluf(v);
                ym[r] = add ? v + add[m * N + j + r] : v;
            }
        }
    }
}

void mll_linear_rows(const float *x, const float *W, const float *bias, const float *add, float *y,
                     int64_t M, int64_t N, int64_t K, int act) {
    if (M <= 0 || N <= 0) return;
    dots_fn dots = pick_dots();
    int64_t groups = (N + 3) / 4;
    int nt = N * K >= GEMV_PAR_MIN ? mll_get_num_threads() : 1;
    if (nt > groups) nt = (int)groups;
    if (nt <= 1) {
        linear_groups(dots, x, W, bias, add, y, M, N, K, act, 0, groups);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
#if defined(_OPENMP)
        int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
        int t = 0, team = 1;
#endif
        linear_groups(dots, x, W, bias, add, y, M, N, K, act, groups * t / team, groups * (t + 1) / team);
    }
}
