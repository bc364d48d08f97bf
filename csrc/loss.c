/* loss.c: fused cross-entropy (log-softmax + negative log-likelihood), forward and backward.
 *
 * Per row i of logits x (N, V) with target t_i and label smoothing s:
 *   lse_i  = log(sum_j exp(x_ij))                       (max-subtracted)
 *   loss_i = (1 - s) (lse_i - x_it) + s (lse_i - mean_j x_ij)
 *   dx_ij  = g_i (exp(x_ij - lse_i) - (1 - s) [j == t_i] - s / V)
 * Rows whose target equals ignore_index have loss 0 and gradient 0. The forward saves only
 * lse (N floats); the softmax is recomputed in backward, never stored.
 * Each row is done whole by one thread, so results do not depend on the thread count.
 */
#include <math.h>
#include <stdint.h>

#include "minillm.h"

/* Rows are spread over threads only when there is enough work to pay for waking them. */
#define LOSS_PAR_MIN 32768

/* x (V): returns lse, writes the sum of x into *sum_x (for label smoothing). */
static double row_logsumexp(const float *x, int64_t V, double *sum_x) {
    float mx = x[0];
    for (int64_t j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    float acc = 0.0f, sx = 0.0f;
#pragma omp simd reduction(+ : acc, sx)
    for (int64_t j = 0; j < V; j++) {
        acc += expf(x[j] - mx);
        sx += x[j];
    }
    *sum_x = sx;
    return (double)mx + log((double)acc);
}

/* logits (N, V) with row stride ld; targets (N) int64; losses (N), lse (N) written.
 * Returns -1, or the first row whose target is neither ignore_index nor in [0, V). */
int64_t mll_cross_entropy_forward(const float *logits, int64_t ld, const int64_t *targets,
                                  float *losses, float *lse, int64_t N, int64_t V,
                                  int64_t ignore_index, float label_smoothing) {
    for (int64_t i = 0; i < N; i++) {
        int64_t t = targets[i];
        if (t != ignore_index && (t < 0 || t >= V)) return i;
    }
    const double s = label_smoothing;
    int nt = N > 1 && N * V >= LOSS_PAR_MIN ? mll_get_num_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < N; i++) {
        const float *x = logits + i * ld;
        double sum_x;
        double l = row_logsumexp(x, V, &sum_x);
        lse[i] = (float)l;
        int64_t t = targets[i];
        if (t == ignore_index) {
            losses[i] = 0.0f;
        } else {
            losses[i] = (float)((1.0 - s) * (l - x[t]) + s * (l - sum_x / (double)V));
        }
    }
    return -1;
}

/* dlogits (N, V) contiguous is written. The per-row scale is g_i = dloss[i] * scale, or
 * scale alone when dloss is NULL (reductions 'mean' and 'sum' pass 1/count or 1 times the
 * upstream gradient). logits has row stride ld. */
void mll_cross_entropy_backward(const float *logits, int64_t ld, const int64_t *targets,
                                const float *lse, const float *dloss, float scale, float *dlogits,
                                int64_t N, int64_t V, int64_t ignore_index, float label_smoothing) {
    const float s = label_smoothing;
    const float off = s / (float)V;
    int nt = N > 1 && N * V >= LOSS_PAR_MIN ? mll_get_num_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < N; i++) {
        const float *x = logits + i * ld;
        float *dx = dlogits + i * V;
        int64_t t = targets[i];
        if (t == ignore_index) {
            for (int64_t j = 0; j < V; j++) dx[j] = 0.0f;
            continue;
        }
        const float g = dloss ? dloss[i] * scale : scale;
        const float l = lse[i];
#pragma omp simd
        for (int64_t j = 0; j < V; j++) dx[j] = g * (expf(x[j] - l) - off);
        dx[t] -= g * (1.0f - s);
    }
}
