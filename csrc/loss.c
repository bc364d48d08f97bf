/* loss.c: fused cross-entropy (log-softmax + negative log-likelihood), forward and backward.
 *
 * Per row i of logits x (N, V) with target t_i and label smoothing s:
 *   lse_i  = log(sum_j exp(x_ij))                       (max-subtracted)
 *   loss_i = (1 - s) (lse_i - x_it) + s (lse_i - mean_j x_ij)
 *   dx_ij  = g_i (exp(x_ij - lse_i) - (1 - s) [j == t_i] - s / V)
 * Rows whose target equals ignore_index have loss 0 and gradient 0. The forward saves only
 * lse (N floats); the softmax is recomputed in backward, never stored, so a 50k vocabulary
 * costs two reads of the logits forward and one read + one write backward.
 * Each row is done whole by one thread, so results do not depend on the thread count.
 * The row loops are inline bodies compiled for the generic, AVX2 and AVX-512 targets.
 */
#include "simd.h"

/* exp(x) for x <= 0 (arguments here are x - max or x - lse), branch-free so that the
 * compiler vectorizes it: x = k ln2 + r, |r| <= ln2/2 (ln2 split in two, Cody-Waite),
 * exp(r) by its Taylor polynomial to r^6 (relative error < 2e-7), times 2^k built in the
 * exponent bits. x is clamped at -87 (exp(-87) ~ 1.6e-38, the smallest normal float scale),
 * which changes nothing visible next to the row maximum's exp(0) = 1. The clamp compares
 * the bits as unsigned integers (for x <= 0 a larger magnitude is a larger pattern; +0 is
 * 0): a float compare would keep the loop from vectorizing under the default trapping-math. */
static inline __attribute__((always_inline)) float ce_exp(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t floor_bits = 0xC2AE0000u;            /* -87.0f */
    u = u > floor_bits ? floor_bits : u;
    memcpy(&x, &u, 4);
    int32_t k = (int32_t)(x * 1.44269504088896341f - 0.5f);    /* round to nearest, x <= 0 */
    float kf = (float)k;
    float r = x - kf * 0.693145751953125f - kf * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* x (V): lse of the row; *sum_x gets sum_j x_j (for label smoothing). */
static inline __attribute__((always_inline)) float row_lse(const float *restrict x, int64_t V,
                                                          float *sum_x) {
    float mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    float acc = 0.0f, sx = 0.0f;
#pragma omp simd reduction(+ : acc, sx)
    for (int64_t j = 0; j < V; j++) {
        acc += ce_exp(x[j] - mx);
        sx += x[j];
    }
    *sum_x = sx;
    return mx + logf(acc);
}

/* dx (V) = g (exp(x - lse) - off) */
static inline __attribute__((always_inline)) void row_grad(const float *restrict x, float *restrict dx,
                                                          int64_t V, float lse, float g, float off) {
#pragma omp simd
    for (int64_t j = 0; j < V; j++) dx[j] = g * (ce_exp(x[j] - lse) - off);
}

typedef float (*row_lse_fn)(const float *, int64_t, float *);
typedef void (*row_grad_fn)(const float *, float *, int64_t, float, float, float);

static float row_lse_generic(const float *x, int64_t V, float *sx) { return row_lse(x, V, sx); }
static void row_grad_generic(const float *x, float *dx, int64_t V, float l, float g, float off) {
    row_grad(x, dx, V, l, g, off);
}
#if defined(MLL_X86)
MLL_AVX2 static float row_lse_avx2(const float *x, int64_t V, float *sx) { return row_lse(x, V, sx); }
MLL_AVX2 static void row_grad_avx2(const float *x, float *dx, int64_t V, float l, float g, float off) {
    row_grad(x, dx, V, l, g, off);
}
MLL_AVX512 static float row_lse_avx512(const float *x, int64_t V, float *sx) { return row_lse(x, V, sx); }
MLL_AVX512 static void row_grad_avx512(const float *x, float *dx, int64_t V, float l, float g, float off) {
    row_grad(x, dx, V, l, g, off);
}
#endif

/* logits (N, V) with row stride ld; targets (N) int64; losses (N), lse (N) written.
 * Returns -1, or the first row whose target is neither ignore_index nor in [0, V). */
int64_t mll_cross_entropy_forward(const float *logits, int64_t ld, const int64_t *targets,
                                  float *losses, float *lse, int64_t N, int64_t V,
                                  int64_t ignore_index, float label_smoothing) {
    for (int64_t i = 0; i < N; i++) {
        int64_t t = targets[i];
        if (t != ignore_index && (t < 0 || t >= V)) return i;
    }
    row_lse_fn f = row_lse_generic;
#if defined(MLL_X86)
    if (mll_get_isa() == MLL_ISA_AVX512) f = row_lse_avx512;
    else if (mll_get_isa() == MLL_ISA_AVX2) f = row_lse_avx2;
#endif
    const double s = label_smoothing;
    MLL_PARALLEL_ROWS(N, V, i, {
        const float *x = logits + i * ld;
        float sum_x;
        float l = f(x, V, &sum_x);
        lse[i] = l;
        int64_t t = targets[i];
        losses[i] = t == ignore_index
                        ? 0.0f
                        : (float)((1.0 - s) * ((double)l - x[t]) + s * ((double)l - (double)sum_x / V));
    });
    return -1;
}

/* dlogits (N, V) contiguous is written. The per-row scale is g_i = dloss[i] * scale, or
 * scale alone when dloss is NULL (reductions 'mean' and 'sum' pass 1/count or 1 times the
 * upstream gradient). logits has row stride ld. */
void mll_cross_entropy_backward(const float *logits, int64_t ld, const int64_t *targets,
                                const float *lse, const float *dloss, float scale, float *dlogits,
                                int64_t N, int64_t V, int64_t ignore_index, float label_smoothing) {
    row_grad_fn f = row_grad_generic;
#if defined(MLL_X86)
    if (mll_get_isa() == MLL_ISA_AVX512) f = row_grad_avx512;
    else if (mll_get_isa() == MLL_ISA_AVX2) f = row_grad_avx2;
#endif
    const float s = label_smoothing;
    const float off = s / (float)V;
    MLL_PARALLEL_ROWS(N, V, i, {
        float *dx = dlogits + i * V;
        int64_t t = targets[i];
        if (t == ignore_index) {
            for (int64_t j = 0; j < V; j++) dx[j] = 0.0f;
        } else {
            const float g = dloss ? dloss[i] * scale : scale;
            f(logits + i * ld, dx, V, lse[i], g, off);
            dx[t] -= g * (1.0f - s);
        }
    });
}
