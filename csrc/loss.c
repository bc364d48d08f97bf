/* loss.c: fused cross-entropy (log-softmax + negative log-likelihood), forward and backward.
 *
 * Per row i of logits x (N, V) with target t_i and label smoothing s:
 *   lse_i  = log(sum_j exp(x_ij))                       (max-subtracted)
 *   loss_i = (1 - s) (lse_i - x_it) + s (lse_i - mean_j x_ij)
 *   dx_ij  = g_i (exp(x_ij - lse_i) - (1 - s) [j == t_i] - s / V)
 * Rows whose target equals ignore_index have loss 0 and gradient 0.
 *
 * Two ways to get dx:
 *  - forward + backward: the forward saves only lse (N floats) and the backward recomputes
 *    the softmax (one read + one write of the logits, one exp per logit). For per-row
 *    upstream gradients ('none') and for a loss that may never be back-propagated.
 *  - forward_grad: loss, lse and dx in one kernel, for a scalar loss that training
 *    back-propagates right away. Each row is read once into cache: one pass for the max,
 *    one storing exp(x - max) into dx while summing it, one scaling dx in place; one exp
 *    per logit in all, where forward + backward costs two. dx may be the logits buffer
 *    itself (the fused LM head of functional.linear_cross_entropy needs no second buffer).
 * Each row is done whole by one thread, so results do not depend on the thread count.
 * The row loops are inline bodies compiled for the generic, AVX2 and AVX-512 targets
 * (dispatch.h), which the compiler vectorizes for each.
 */
#ifndef MLL_VEC
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

/* Sums over a row run in float vector lanes within blocks of CE_BLOCK elements and in double
 * across blocks: a 50k-word row keeps ~1e-7 relative error instead of ~1e-5. */
#define CE_BLOCK 512

/* x (V): returns sum_j exp(x_j - max), *mx = max_j x_j, *sum_x = sum_j x_j (for label
 * smoothing); when park is not NULL, exp(x_j - max) is also stored in park[j] (park may be x:
 * each element is read before it is written). Inlined with park a constant, so the store is
 * there or not at compile time. */
static inline __attribute__((always_inline)) double row_expsum(const float *x, float *park, int64_t V,
                                                              float *mx_out, float *sum_x) {
    float mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    double acc = 0.0, sx = 0.0;
    for (int64_t j0 = 0; j0 < V; j0 += CE_BLOCK) {
        const int64_t j1 = j0 + CE_BLOCK < V ? j0 + CE_BLOCK : V;
        float a = 0.0f, s = 0.0f;
#pragma omp simd reduction(+ : a, s)
        for (int64_t j = j0; j < j1; j++) {
            const float xj = x[j];
            const float e = ce_exp(xj - mx);
            if (park) park[j] = e;
            a += e;
            s += xj;
        }
        acc += a;
        sx += s;
    }
    *mx_out = mx;
    *sum_x = (float)sx;
    return acc;
}

/* x (V): lse of the row; *sum_x gets sum_j x_j (for label smoothing). */
static inline __attribute__((always_inline)) float row_lse(const float *restrict x, int64_t V,
                                                          float *sum_x) {
    float mx;
    double acc = row_expsum(x, NULL, V, &mx, sum_x);
    return mx + (float)log(acc);
}

/* dx (V) = g (exp(x - lse) - off). dx may be x (each element is read before it is written). */
static inline __attribute__((always_inline)) void row_grad(const float *x, float *dx, int64_t V,
                                                          float lse, float g, float off) {
#pragma omp simd
    for (int64_t j = 0; j < V; j++) dx[j] = g * (ce_exp(x[j] - lse) - off);
}

/* x (V) -> dx (V) = g (softmax(x) - off) (the target's one-hot part is left to the caller);
 * returns lse, *sum_x = sum_j x_j. dx may be x. Three passes over the row (max, exp-and-sum,
 * scale) with one exp per element: exp(x - max) is parked in dx and scaled by g / sum. */
static inline __attribute__((always_inline)) float row_lse_grad(const float *x, float *dx, int64_t V,
                                                               float g, float off, float *sum_x) {
    float mx;
    double acc = row_expsum(x, dx, V, &mx, sum_x);
    const float a = (float)(g / acc), b = g * off;
#pragma omp simd
    for (int64_t j = 0; j < V; j++) dx[j] = dx[j] * a - b;
    return mx + (float)log(acc);
}

typedef float (*row_lse_fn)(const float *, int64_t, float *);
typedef void (*row_grad_fn)(const float *, float *, int64_t, float, float, float);
typedef float (*row_lse_grad_fn)(const float *, float *, int64_t, float, float, float *);

static float row_lse_generic(const float *x, int64_t n, float *sum_x) { return row_lse(x, n, sum_x); }
static void row_grad_generic(const float *x, float *dx, int64_t n, float lse, float g, float off) {
    row_grad(x, dx, n, lse, g, off);
}
static float row_lse_grad_generic(const float *x, float *dx, int64_t n, float g, float off, float *sum_x) {
    return row_lse_grad(x, dx, n, g, off, sum_x);
}

/* the same three, once per ISA: the bottom half of this file (dispatch.h) */
#define MLL_DISPATCH_SELF "loss.c"
#include "dispatch.h"

/* The row loss from lse, the target logit and the row sum (label smoothing s). */
static inline float row_loss(float l, float x_t, float sum_x, int64_t V, float label_smoothing) {
    const double s = label_smoothing;
    return (float)((1.0 - s) * ((double)l - x_t) + s * ((double)l - (double)sum_x / V));
}

/* The first row whose target is neither ignore_index nor in [0, V), or -1. */
static int64_t first_bad_target(const int64_t *targets, int64_t N, int64_t V, int64_t ignore_index) {
    for (int64_t i = 0; i < N; i++) {
        int64_t t = targets[i];
        if (t != ignore_index && (t < 0 || t >= V)) return i;
    }
    return -1;
}

/* logits (N, V) with row stride ld; targets (N) int64; losses (N), lse (N) written.
 * Returns -1, or the first row whose target is neither ignore_index nor in [0, V). */
int64_t mll_cross_entropy_forward(const float *logits, int64_t ld, const int64_t *targets,
                                  float *losses, float *lse, int64_t N, int64_t V,
                                  int64_t ignore_index, float label_smoothing) {
    int64_t bad = first_bad_target(targets, N, V, ignore_index);
    if (bad >= 0) return bad;
    row_lse_fn f = MLL_PICK(row_lse);
    MLL_PARALLEL_ROWS(N, V, i, {
        const float *x = logits + i * ld;
        float sum_x;
        float l = f(x, V, &sum_x);
        lse[i] = l;
        int64_t t = targets[i];
        losses[i] = t == ignore_index ? 0.0f : row_loss(l, x[t], sum_x, V, label_smoothing);
    });
    return -1;
}

/* As mll_cross_entropy_forward, and dlogits (N, V) with row stride ldd gets
 * scale (softmax(x_i) - smoothed one-hot(t_i)) in the same pass (0 on ignored rows).
 * dlogits may be logits itself (ldd == ld): the gradient then overwrites the logits. */
int64_t mll_cross_entropy_forward_grad(const float *logits, int64_t ld, const int64_t *targets,
                                       float *losses, float *lse, float *dlogits, int64_t ldd,
                                       float scale, int64_t N, int64_t V, int64_t ignore_index,
                                       float label_smoothing) {
    int64_t bad = first_bad_target(targets, N, V, ignore_index);
    if (bad >= 0) return bad;
    row_lse_grad_fn f = MLL_PICK(row_lse_grad);
    const float s = label_smoothing;
    const float off = s / (float)V;
    MLL_PARALLEL_ROWS(N, V, i, {
        const float *x = logits + i * ld;
        float *dx = dlogits + i * ldd;
        int64_t t = targets[i];
        if (t == ignore_index) {
            float sum_x;
            lse[i] = f(x, dx, V, 0.0f, 0.0f, &sum_x);
            losses[i] = 0.0f;
        } else {
            const float x_t = x[t];          /* read before dx (maybe x itself) is written */
            float sum_x;
            float l = f(x, dx, V, scale, off, &sum_x);
            lse[i] = l;
            losses[i] = row_loss(l, x_t, sum_x, V, label_smoothing);
            dx[t] -= scale * (1.0f - s);
        }
    });
    return -1;
}

/* dlogits (N, V) contiguous is written (it may be logits itself when ld == V). The per-row
 * scale is g_i = dloss[i] * scale, or scale alone when dloss is NULL (reductions 'mean' and 'sum' pass 1/count or 1 times the
 * upstream gradient). logits has row stride ld. */
void mll_cross_entropy_backward(const float *logits, int64_t ld, const int64_t *targets,
                                const float *lse, const float *dloss, float scale, float *dlogits,
                                int64_t N, int64_t V, int64_t ignore_index, float label_smoothing) {
    row_grad_fn f = MLL_PICK(row_grad);
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

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET float FN(row_lse)(const float *x, int64_t n, float *sum_x) { return row_lse(x, n, sum_x); }
static MLL_TARGET void FN(row_grad)(const float *x, float *dx, int64_t n, float lse, float g, float off) {
    row_grad(x, dx, n, lse, g, off);
}
static MLL_TARGET float FN(row_lse_grad)(const float *x, float *dx, int64_t n, float g, float off,
                                         float *sum_x) {
    return row_lse_grad(x, dx, n, g, off, sum_x);
}

#endif /* MLL_VEC */
