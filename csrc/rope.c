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

/* The q and k heads of a fused (B T, ld) projection row (q: the first nq heads of d floats, k:
 * the next nk), in place: each head RMS-normed with its gain (qw for q heads, kw for k heads;
 * rstd (B T, nq + nk) written; no norm when qw is NULL), then rotated by row t of cos_t, sin_t
 * (no rotation when cos_t is NULL). The rest of the row (v) is left as it is. */
void mll_qk_rope_forward(float *qkv, int64_t ld, int64_t B, int64_t T, int64_t nq, int64_t nk, int64_t d,
                         const float *cos_t, const float *sin_t, const float *qw, const float *kw, float eps,
                         float *rstd) {
    const int64_t half = d / 2, nh = nq + nk;
    MLL_PARALLEL_ROWS(B * T, nh * d, r, {
        float *row = qkv + r * ld;
        if (qw) {
            mll_rmsnorm_forward(row, qw, row, rstd + r * nh, nq, d, eps);
            mll_rmsnorm_forward(row + nq * d, kw, row + nq * d, rstd + r * nh + nq, nk, d, eps);
        }
        if (cos_t) rope_row(row, cos_t + (r % T) * half, sin_t + (r % T) * half, nh, d, 1.0f);
    });
}

/* rows per block of the gain-gradient partials, and at most this many blocks */
#define QK_ROWS 32
#define QK_BLOCKS 256

/* The backward of mll_qk_rope_forward, in place on dqkv (B T, ld): the q and k heads of the
 * output's gradient become the input's (rotated back, then through the RMSNorm, whose input
 * the forward's x (B T, ld) holds); the v part is left as it is. dqw, dkw (d) written (the gain
 * gradients; NULL without the norm). Gain gradients are summed per block of rows, the blocks
 * in order: the same for any thread count. 0, or -1 when out of memory for the partials. */
int mll_qk_rope_backward(float *dqkv, const float *x, int64_t ld, int64_t B, int64_t T, int64_t nq, int64_t nk,
                         int64_t d, const float *cos_t, const float *sin_t, const float *qw, const float *kw,
                         const float *rstd, float *dqw, float *dkw) {
    const int64_t half = d / 2, nh = nq + nk, rows = B * T;
    if (!qw) {
        if (cos_t) mll_rope_backward(dqkv, ld, cos_t, sin_t, B, T, nh, d);
        return 0;
    }
    int64_t per_block = (rows + QK_BLOCKS - 1) / QK_BLOCKS;
    if (per_block < QK_ROWS) per_block = QK_ROWS;
    int64_t nblocks = rows > 0 ? (rows + per_block - 1) / per_block : 0;
    size_t bytes = (size_t)(nblocks > 0 ? nblocks : 1) * 2 * (size_t)d * sizeof(float);
    float *part = (float *)mll_alloc(bytes);
    if (!part) return -1;
    memset(part, 0, bytes);
    int nt = nblocks > 1 ? mll_threads_for(rows * nh * d) : 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic) if (nt > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        float *pq = part + (size_t)b * 2 * d, *pk = pq + d;
        for (int64_t r = b * per_block; r < mll_min64((b + 1) * per_block, rows); r++) {
            float *g = dqkv + r * ld;
            if (cos_t) rope_row(g, cos_t + (r % T) * half, sin_t + (r % T) * half, nh, d, -1.0f);
            for (int64_t h = 0; h < nh; h++) {
                const float *xh = x + r * ld + h * d, *w = h < nq ? qw : kw;
                float *gh = g + h * d, *dw = h < nq ? pq : pk;
                float rs = rstd[r * nh + h];
                double sgx = 0.0;                   /* dx = rs (g w - x rs^2 sum(g w x) / d) */
                for (int64_t i = 0; i < d; i++) sgx += (double)(gh[i] * w[i]) * xh[i];
                float c = (float)((double)rs * rs * sgx / (double)d);
                for (int64_t i = 0; i < d; i++) {
                    dw[i] += gh[i] * xh[i] * rs;
                    gh[i] = rs * (gh[i] * w[i] - xh[i] * c);
                }
            }
        }
    }
    for (int64_t i = 0; i < d; i++) {
        double sq = 0.0, sk = 0.0;
        for (int64_t b = 0; b < nblocks; b++) {
            sq += part[(size_t)b * 2 * d + i];
            sk += part[(size_t)b * 2 * d + d + i];
        }
        dqw[i] = (float)sq;
        dkw[i] = (float)sk;
    }
    mll_free(part, bytes);
    return 0;
}
