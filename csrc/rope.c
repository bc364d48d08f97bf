/* rope.c: rotary position embeddings (Su et al., 2021, "RoFormer"), in the "rotate half"
 * layout of HuggingFace's Llama family: in a head of d dims, dims i and i + d/2 form a pair
 * rotated by the angle p * inv_freq[i] of position p:
 *
 *   out[i]         = x[i] cos - x[i + d/2] sin
 *   out[i + d/2]   = x[i + d/2] cos + x[i] sin          i < d/2
 *
 * The angles come as a table, cos and sin (n_pos, d/2), built once by mll_rope_table from
 * inv_freq (d/2): scaled variants (linear, Llama 3's) are another inv_freq, not another
 * kernel. Backward rotates the gradient back by the same angle (the transpose of a rotation):
 *
 *   dx[i]       = dy[i] cos + dy[i + d/2] sin
 *   dx[i + d/2] = dy[i + d/2] cos - dy[i] sin
 *
 * Pairs are independent: the same result for any thread count.
 */
#include "simd.h"

/* cos_t, sin_t (n_pos, half) <- scale cos(p f), scale sin(p f), f = inv_freq[i], p < n_pos;
 * the angle and its cosine in double (a float angle is off by ~p ulps at position p). */
void mll_rope_table(const float *inv_freq, float *cos_t, float *sin_t, int64_t n_pos, int64_t half,
                    float scale) {
    for (int64_t p = 0; p < n_pos; p++)
        for (int64_t i = 0; i < half; i++) {
            double a = (double)p * (double)inv_freq[i];
            cos_t[p * half + i] = (float)(cos(a) * scale);
            sin_t[p * half + i] = (float)(sin(a) * scale);
        }
}

/* one (b, t) row of n_head heads of d dims rotated by c, s (d/2); dir +1 forward, -1 backward */
static void rope_row(float *row, const float *c, const float *s, int64_t n_head, int64_t d, float dir) {
    const int64_t half = d / 2;
    for (int64_t h = 0; h < n_head; h++) {
        float *lo = row + h * d, *hi = lo + half;
        for (int64_t i = 0; i < half; i++) {
            float x0 = lo[i], x1 = hi[i], si = dir * s[i];
            lo[i] = x0 * c[i] - x1 * si;
            hi[i] = x1 * c[i] + x0 * si;
        }
    }
}

/* In place on x (B, T, n_head, d) whose (b, t) rows sit ldx floats apart (heads contiguous
 * within a row): every head at time t rotated by row t of cos, sin (T, d/2). d even. */
void mll_rope_forward(float *x, int64_t ldx, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                      int64_t n_head, int64_t d) {
    const int64_t half = d / 2;
    MLL_PARALLEL_ROWS(B * T, n_head * d, r,
                      rope_row(x + r * ldx, cos_t + (r % T) * half, sin_t + (r % T) * half, n_head, d, 1.0f));
}

/* The backward of mll_rope_forward, in place on dx (same layout): rotated back by -angle. */
void mll_rope_backward(float *dx, int64_t ldx, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                       int64_t n_head, int64_t d) {
    const int64_t half = d / 2;
    MLL_PARALLEL_ROWS(B * T, n_head * d, r,
                      rope_row(dx + r * ldx, cos_t + (r % T) * half, sin_t + (r % T) * half, n_head, d, -1.0f));
}
