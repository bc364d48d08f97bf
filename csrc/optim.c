/* optim.c: fused optimizer updates. Each kernel reads and writes every array once per step
 * (one pass over memory per parameter). Updates are element-wise, so the fixed chunks of
 * MLL_PARALLEL_CHUNKS can go to any thread without changing a single bit of the result.
 *
 * The formulas follow PyTorch's documented algorithms (torch.optim.SGD, Adam, AdamW):
 * bias corrections are computed in double from the step count, the per-element arithmetic
 * is float32. Each loop body is one inline function compiled for the generic, AVX2 and
 * AVX-512 targets (dispatch.h; the compiler vectorizes it for each), picked per call.
 */
#ifndef MLL_VEC
#include "simd.h"

/* ---------------------------------------------------------------------- SGD */
typedef struct {
    float lr, momentum, keep, weight_decay;   /* keep = 1 - dampening */
    int nesterov, first_step;
} sgd_args;

/* p, g, buf: (n); buf NULL when momentum == 0 */
static inline __attribute__((always_inline)) void sgd_body(float *restrict p, const float *restrict g,
                                                           float *restrict buf, int64_t n, sgd_args a) {
    if (buf == NULL) {
        for (int64_t i = 0; i < n; i++) p[i] = p[i] - a.lr * (g[i] + a.weight_decay * p[i]);
    } else if (a.first_step) {
        for (int64_t i = 0; i < n; i++) {
            float d = g[i] + a.weight_decay * p[i];
            buf[i] = d;
            p[i] = p[i] - a.lr * (a.nesterov ? d + a.momentum * d : d);
        }
    } else if (a.nesterov) {
        for (int64_t i = 0; i < n; i++) {
            float d = g[i] + a.weight_decay * p[i];
            float b = a.momentum * buf[i] + a.keep * d;
            buf[i] = b;
            p[i] = p[i] - a.lr * (d + a.momentum * b);
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            float d = g[i] + a.weight_decay * p[i];
            float b = a.momentum * buf[i] + a.keep * d;
            buf[i] = b;
            p[i] = p[i] - a.lr * b;
        }
    }
}

static void sgd_generic(float *p, const float *g, float *buf, int64_t n, sgd_args a) {
    sgd_body(p, g, buf, n, a);
}

/* --------------------------------------------------------------------- Adam */
typedef struct {
    float decay, l2, beta1, beta2, one_m_b1, one_m_b2, step_size, inv_bc2_sqrt, eps;
} adam_args;

/* p, g, m, v: (n) */
static inline __attribute__((always_inline)) void adam_body(float *restrict p, const float *restrict g,
                                                            float *restrict m, float *restrict v,
                                                            int64_t n, adam_args a) {
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * a.decay;
        float gi = g[i] + a.l2 * pi;
        float mi = a.beta1 * m[i] + a.one_m_b1 * gi;
        float vi = a.beta2 * v[i] + a.one_m_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - a.step_size * (mi / (sqrtf(vi) * a.inv_bc2_sqrt + a.eps));
    }
}

static void adam_generic(float *p, const float *g, float *m, float *v, int64_t n, adam_args a) {
    adam_body(p, g, m, v, n, a);
}

/* sgd and adam once per ISA: the bottom half of this file (dispatch.h) */
#define MLL_DISPATCH_SELF "optim.c"
#include "dispatch.h"

/* ------------------------------------------------------------------ public kernels */
/* SGD with momentum, dampening, Nesterov and L2 weight decay.  p, g, buf: (n).
 *   d = g + wd p
 *   buf = d                                   (first step with momentum)
 *   buf = momentum buf + (1 - dampening) d    (later steps)
 *   d = nesterov ? d + momentum buf : buf     (when momentum != 0)
 *   p -= lr d
 * buf may be NULL when momentum == 0 (it is ignored then). */
void mll_sgd_step(float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                  float dampening, float weight_decay, int nesterov, int first_step) {
    sgd_args a = {lr, momentum, 1.0f - dampening, weight_decay, nesterov, first_step};
    if (momentum == 0.0f) buf = NULL;
    void (*f)(float *, const float *, float *, int64_t, sgd_args) = MLL_PICK(sgd);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(p + i0, g + i0, buf ? buf + i0 : NULL, len, a));
}

/* Adam (decoupled = 0, L2 decay added to the gradient) and AdamW (decoupled = 1,
 * p *= 1 - lr wd before the update).  p, g, m, v: (n).
 *   m = beta1 m + (1 - beta1) g
 *   v = beta2 v + (1 - beta2) g^2
 *   p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),  bc_k = 1 - beta_k^step
 * step counts from 1. */
void mll_adam_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, int decoupled, int64_t step) {
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    adam_args a;
    a.decay = decoupled ? (float)(1.0 - (double)lr * (double)weight_decay) : 1.0f;
    a.l2 = decoupled ? 0.0f : weight_decay;
    a.beta1 = beta1;
    a.beta2 = beta2;
    a.one_m_b1 = 1.0f - beta1;
    a.one_m_b2 = 1.0f - beta2;
    a.step_size = (float)((double)lr / bc1);
    a.inv_bc2_sqrt = (float)(1.0 / sqrt(bc2));
    a.eps = eps;
    void (*f)(float *, const float *, float *, float *, int64_t, adam_args) = MLL_PICK(adam);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(p + i0, g + i0, m + i0, v + i0, len, a));
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(sgd)(float *p, const float *g, float *buf, int64_t n, sgd_args a) {
    sgd_body(p, g, buf, n, a);
}

static MLL_TARGET void FN(adam)(float *p, const float *g, float *m, float *v, int64_t n, adam_args a) {
    adam_body(p, g, m, v, n, a);
}

#endif /* MLL_VEC */
