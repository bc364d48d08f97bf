/* lm_xent.c: the language-model loss, cross-entropy over the vocabulary with its gradient
 * computed in the same pass (forward and backward side by side, in one kernel).
 *
 * Per row i of logits x (N, V) with target t_i (mean over the rows that are not ignored,
 * g = grad_scale, normally 1 / that count):
 *   m_i = max_j x_ij,  s_i = sum_j exp(x_ij - m_i),  loss_i = m_i + log(s_i) - x_it
 *   dx_ij = g (exp(x_ij - m_i) / s_i - [j == t_i])
 * Training always back-propagates the loss right after the forward, so computing dx while
 * each row is in L1 costs one more multiply per element instead of a second pass over the
 * logits with a second exp (the engine's cross-entropy recomputes the softmax in backward).
 * exp(x - m) is stored into dx by the sum pass, then scaled: one exp per element.
 *
 * Each row is done whole by one thread, in a fixed order: bitwise the same for any thread
 * count. The AVX-512 exp is a degree-6 polynomial after range reduction by ln 2 (under
 * 2 ulp on the clamped range [-104, 88.7]; below, exp underflows to 0 as it should).
 */
#include <math.h>
#include <stdint.h>

#include "minillm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define XENT_AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#endif

/* Rows go to other threads only when the work pays for waking them. */
#define XENT_PAR_MIN 32768

/* ---------------------------------------------------------------- portable path */
/* x (V) -> returns m + log(sum exp(x - m)); e (V) <- exp(x - m) when e is not NULL. */
static float row_lse_generic(const float *x, int64_t V, float *e, float *sum_out) {
    float m = x[0];
    for (int64_t j = 1; j < V; j++) m = x[j] > m ? x[j] : m;
    double s = 0.0;  /* a scalar float sum of 50k terms would lose ~1e-5 */
    for (int64_t j = 0; j < V; j++) {
        float v = expf(x[j] - m);
        if (e) e[j] = v;
        s += v;
    }
    *sum_out = (float)s;
    return m + (float)log(s);
}

static void scale_row_generic(float *e, int64_t V, float a) {
    for (int64_t j = 0; j < V; j++) e[j] *= a;
}

#if defined(__x86_64__)
/* ---------------------------------------------------------------- AVX-512 path */
XENT_AVX512 static inline __m512 exp512(__m512 x) {
    /* exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] */
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* ln 2 split in two (Cody-Waite) so n ln2_hi is exact */
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    /* Taylor coefficients 1/k!, k = 6 .. 0 (Horner) */
    __m512 p = _mm512_set1_ps(1.3888889e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3333333e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1666667e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666667e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

XENT_AVX512 static float row_lse_avx512(const float *x, int64_t V, float *e, float *sum_out) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 mv = ninf;
    int64_t j = 0;
    for (; j + 16 <= V; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + j));
    __mmask16 tail = (__mmask16)((1u << (V - j)) - 1u);
    if (V - j) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(ninf, tail, x + j));
    const float m = _mm512_reduce_max_ps(mv);
    const __m512 mm = _mm512_set1_ps(m);
    /* float lanes over blocks of 1024 elements, blocks added in double: a 50k-word row
     * keeps ~1e-7 relative error instead of ~1e-5 */
    __m512 acc = _mm512_setzero_ps();
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (j = 0; j + 16 <= V; j += 16) {
        __m512 v = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mm));
        if (e) _mm512_storeu_ps(e + j, v);
        acc = _mm512_add_ps(acc, v);
        if ((j & 1023) == 1008) {
            lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(acc)));
            hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1))));
            acc = _mm512_setzero_ps();
        }
    }
    if (V - j) {
        __m512 v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + j), mm));
        if (e) _mm512_mask_storeu_ps(e + j, tail, v);
        acc = _mm512_mask_add_ps(acc, tail, acc, v);
    }
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(acc)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1))));
    const double sd = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
    const float s = (float)sd;
    *sum_out = s;
    return m + (float)log(sd);
}

XENT_AVX512 static void scale_row_avx512(float *e, int64_t V, float a) {
    const __m512 av = _mm512_set1_ps(a);
    int64_t j = 0;
    for (; j + 16 <= V; j += 16) _mm512_storeu_ps(e + j, _mm512_mul_ps(_mm512_loadu_ps(e + j), av));
    if (V - j) {
        __mmask16 tail = (__mmask16)((1u << (V - j)) - 1u);
        _mm512_mask_storeu_ps(e + j, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, e + j), av));
    }
}
#endif

/* logits (N, V) with row stride ld; targets (N) int64; losses (N) written;
 * dlogits (N, V) contiguous written when not NULL (ignored rows get zeros).
 * Returns -1, or the first row whose target is neither ignore_index nor in [0, V). */
int64_t mll_lm_xent(const float *logits, int64_t ld, const int64_t *targets, int64_t N, int64_t V,
                    int64_t ignore_index, float grad_scale, float *losses, float *dlogits) {
    for (int64_t i = 0; i < N; i++) {
        int64_t t = targets[i];
        if (t != ignore_index && (t < 0 || t >= V)) return i;
    }
    int avx512 = 0;
#if defined(__x86_64__)
    avx512 = mll_get_isa() == MLL_ISA_AVX512;
#endif
    int nt = N > 1 && N * V >= XENT_PAR_MIN ? mll_get_num_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < N; i++) {
        const float *x = logits + i * ld;
        float *dx = dlogits ? dlogits + i * V : NULL;
        const int64_t t = targets[i];
        if (t == ignore_index) {
            losses[i] = 0.0f;
            if (dx)
                for (int64_t j = 0; j < V; j++) dx[j] = 0.0f;
            continue;
        }
        float s, lse;
#if defined(__x86_64__)
        if (avx512) {
            lse = row_lse_avx512(x, V, dx, &s);
            if (dx) scale_row_avx512(dx, V, grad_scale / s);
        } else
#endif
        {
            lse = row_lse_generic(x, V, dx, &s);
            if (dx) scale_row_generic(dx, V, grad_scale / s);
        }
        (void)avx512;
        losses[i] = lse - x[t];
        if (dx) dx[t] -= grad_scale;
    }
    return -1;
}
