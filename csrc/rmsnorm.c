/* rmsnorm.c: root-mean-square layer normalization over the last axis (Zhang & Sennrich,
 * 2019), as the Llama family uses it (no mean subtracted, no bias):
 *
 *   rstd = 1 / sqrt(sum(x^2) / n + eps),   y = x * rstd * w      (per row, n = cols)
 *
 * The sum of squares accumulates in double, so the result does not depend on the vector
 * width beyond float rounding of y; rows are independent (any thread count, same result).
 * Also the per-head q/k norm of Qwen3: rows = heads, cols = head size, one w for all.
 *
 * Backward, with g = dy * w (per row):
 *
 *   dx = rstd * (g - x * rstd^2 * sum(g x) / n),    dw = sum over rows of dy * x * rstd
 *
 * dw is summed per block of rows into a partial, and the partials added in block order (as
 * layernorm.c does), so it too is the same for any thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

/* one row: y (n), *rstd from x (n); w (n) or NULL */
static void rmsnorm_row_generic(const float *x, const float *w, float *y, float *rstd, int64_t n, float eps) {
    float rs = (float)(1.0 / sqrt(mll_dot_f64(x, x, n) / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) y[i] = w ? x[i] * rs * w[i] : x[i] * rs;
    *rstd = rs;
}

/* one row of the backward: dx (n) from x, dy (n) and the saved rstd; dw (n) += dy x rstd
 * when dw is not NULL; w (n) or NULL (ones) */
static inline __attribute__((always_inline)) void rmsnorm_backward_body(const float *x, const float *w, float rs,
                                                                        const float *dy, float *dx, float *dw,
                                                                        int64_t n) {
    double sgx = 0.0;
    for (int64_t i = 0; i < n; i++) sgx += (double)(w ? dy[i] * w[i] : dy[i]) * x[i];
    float c = (float)((double)rs * rs * sgx / (double)n);
    for (int64_t i = 0; i < n; i++) {
        float g = w ? dy[i] * w[i] : dy[i];
        dx[i] = rs * (g - x[i] * c);
    }
    if (dw)
        for (int64_t i = 0; i < n; i++) dw[i] += dy[i] * x[i] * rs;
}

static void rmsnorm_backward_row_generic(const float *x, const float *w, float rs, const float *dy, float *dx,
                                         float *dw, int64_t n) {
    rmsnorm_backward_body(x, w, rs, dy, dx, dw, n);
}

#define MLL_DISPATCH_SELF "rmsnorm.c"
#include "dispatch.h"   /* the bottom half, once per ISA */

typedef void (*rmsnorm_fn)(const float *, const float *, float *, float *, int64_t, float);

/* x, y: (rows, cols), y may be x; w: (cols) or NULL; rstd: (rows) or NULL (not kept) */
void mll_rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols,
                         float eps) {
    rmsnorm_fn f = MLL_PICK(rmsnorm_row);
    MLL_PARALLEL_ROWS(rows, cols, r, {
        float rs;
        f(x + r * cols, w, y + r * cols, &rs, cols, eps);
        if (rstd) rstd[r] = rs;
    });
}

typedef void (*rmsnorm_backward_fn)(const float *, const float *, float, const float *, float *, float *,
                                    int64_t);

/* rows per block of the dw partials, and at most this many blocks (caps the scratch) */
#define MLL_RMS_ROWS 32
#define MLL_RMS_BLOCKS 256

/* x, dy, dx (rows, cols); w (cols) or NULL; rstd (rows) from the forward; dw (cols) written
 * (not accumulated) or NULL. 0, or -1 when out of memory for the partials. */
int mll_rmsnorm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx,
                         float *dw, int64_t rows, int64_t cols) {
    rmsnorm_backward_fn f = MLL_PICK(rmsnorm_backward_row);
    if (!dw) {
        MLL_PARALLEL_ROWS(rows, cols, r, f(x + r * cols, w, rstd[r], dy + r * cols, dx + r * cols, NULL, cols));
        return 0;
    }
    int64_t per_block = (rows + MLL_RMS_BLOCKS - 1) / MLL_RMS_BLOCKS;
    if (per_block < MLL_RMS_ROWS) per_block = MLL_RMS_ROWS;
    int64_t nblocks = rows > 0 ? (rows + per_block - 1) / per_block : 0;
    size_t bytes = (size_t)(nblocks > 0 ? nblocks : 1) * (size_t)cols * sizeof(float);
    float *part = (float *)mll_alloc(bytes);
    if (!part) return -1;
    memset(part, 0, bytes);
    int nt = nblocks > 1 ? mll_threads_for(rows * cols) : 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic) if (nt > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t r1 = mll_min64((b + 1) * per_block, rows);
        for (int64_t r = b * per_block; r < r1; r++)
            f(x + r * cols, w, rstd[r], dy + r * cols, dx + r * cols, part + (size_t)b * cols, cols);
    }
    for (int64_t c = 0; c < cols; c++) {
        double s = 0.0;
        for (int64_t b = 0; b < nblocks; b++) s += part[(size_t)b * cols + c];
        dw[c] = (float)s;
    }
    mll_free(part, bytes);
    return 0;
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(rmsnorm_row)(const float *x, const float *w, float *y, float *rstd, int64_t n,
                                           float eps) {
    float rs = (float)(1.0 / sqrt(v_dot_f64(x, x, n) / (double)n + (double)eps));
    V vrs = v_set1(rs);
    if (w) VLOOP2(x, w, y, v_mul(v_mul(va, vrs), vb));
    else VLOOP1(x, y, v_mul(v, vrs));
    *rstd = rs;
}

static MLL_TARGET void FN(rmsnorm_backward_row)(const float *x, const float *w, float rs, const float *dy,
                                                    float *dx, float *dw, int64_t n) {
    rmsnorm_backward_body(x, w, rs, dy, dx, dw, n);
}

#endif /* MLL_VEC */
