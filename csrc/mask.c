/* mask.c: the masks of dropout and causal attention. */
#include "simd.h"

/* mask (n) = 1 / (1 - p) where a uniform draw u >= p, else 0 (inverted dropout: the
 * expectation of x * mask is x). Draws come from the Philox stream (seed, offset), one
 * word per element, so the mask is the same for any thread count. 0 <= p < 1. */
void mll_dropout_mask(uint64_t seed, uint64_t offset, float *mask, int64_t n, float p) {
    mll_rand_uniform(seed, offset, mask, n, 0.0f, 1.0f);
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) mask[i] = mask[i] >= p ? keep_scale : 0.0f;
}

/* x (batch, T, S) contiguous: x[b, i, j] = value wherever j > i + (S - T), i.e. query i
 * (the last T of S positions) may not see keys after itself. In place. */
void mll_causal_fill(float *x, int64_t batch, int64_t T, int64_t S, float value) {
    const int64_t shift = S - T;
    MLL_PARALLEL_ROWS(batch, T * S, b, {
        float *xb = x + b * T * S;
        for (int64_t i = 0; i < T; i++) {
            int64_t first = i + shift + 1;
            if (first < 0) first = 0;
            for (int64_t j = first; j < S; j++) xb[i * S + j] = value;
        }
    });
}

/* out (rows, cols) = 0 except out[r, idx[r]] = val[r]: scatters one value per row (the
 * backward of max over an axis). idx in [0, cols) (the caller's argmax). */
void mll_onehot_rows(const int64_t *idx, const float *val, float *out, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        float *o = out + r * cols;
        for (int64_t j = 0; j < cols; j++) o[j] = 0.0f;
        o[idx[r]] = val[r];
    }
}
