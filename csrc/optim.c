/* optim.c: fused optimizer updates. Each kernel reads and writes every array once per step
 * (one pass over memory per parameter). Updates are element-wise, so chunks can go to any
 * thread without changing a single bit of the result.
 *
 * The formulas follow PyTorch's documented algorithms (torch.optim.SGD, Adam, AdamW):
 * bias corrections are computed in double by the caller's step count, the per-element
 * arithmetic is float32 in the same order as PyTorch's for-each implementation.
 */
#include <math.h>
#include <stdint.h>

#include "minillm.h"

/* Element-wise work below this size stays on the calling thread. */
#define OPTIM_PAR_MIN 65536

static inline int optim_threads(int64_t n) { return n >= OPTIM_PAR_MIN ? mll_get_num_threads() : 1; }

/* SGD with momentum, dampening, Nesterov and L2 weight decay.  p, g, buf: (n).
 *   d = g + wd p
 *   buf = d                                   (first step with momentum)
 *   buf = momentum buf + (1 - dampening) d    (later steps)
 *   d = nesterov ? d + momentum buf : buf     (when momentum != 0)
 *   p -= lr d
 * buf may be NULL when momentum == 0. */
void mll_sgd_step(float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                  float dampening, float weight_decay, int nesterov, int first_step) {
    const int nt = optim_threads(n);
    const int use_m = momentum != 0.0f && buf != NULL;
    const float keep = 1.0f - dampening;
#pragma omp parallel for simd num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < n; i++) {
        float d = g[i];
        if (weight_decay != 0.0f) d = d + weight_decay * p[i];
        if (use_m) {
            float b = first_step ? d : momentum * buf[i] + keep * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] = p[i] - lr * d;
    }
}

/* Adam (decoupled = 0, L2 decay added to the gradient) and AdamW (decoupled = 1,
 * p *= 1 - lr wd before the update).  p, g, m, v: (n).
 *   m = beta1 m + (1 - beta1) g
 *   v = beta2 v + (1 - beta2) g^2
 *   p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),  bc_k = 1 - beta_k^step
 * step counts from 1. */
void mll_adam_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, int decoupled, int64_t step) {
    const int nt = optim_threads(n);
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float inv_bc2_sqrt = (float)(1.0 / sqrt(bc2));
    const float decay = decoupled ? (float)(1.0 - (double)lr * (double)weight_decay) : 1.0f;
    const float l2 = decoupled ? 0.0f : weight_decay;
    const float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
#pragma omp parallel for simd num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float gi = g[i] + l2 * pi;
        float mi = beta1 * m[i] + one_m_b1 * gi;
        float vi = beta2 * v[i] + one_m_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / (sqrtf(vi) * inv_bc2_sqrt + eps));
    }
}
