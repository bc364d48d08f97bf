/* rmsnorm.c: root-mean-square layer normalization over the last axis (Zhang & Sennrich,
 * 2019), as the Llama family uses it (no mean subtracted, no bias):
 *
 *   rstd = 1 / sqrt(sum(x^2) / n + eps),   y = x * rstd * w      (per row, n = cols)
 *
 * The sum of squares accumulates in double, so the result does not depend on the vector
 * width beyond float rounding of y; rows are independent (any thread count, same result).
 * Also the per-head q/k norm of Qwen3: rows = heads, cols = head size, one w for all.
 */
#ifndef MLL_VEC
#include "simd.h"

/* one row: y (n), *rstd from x (n); w (n) or NULL */
static void rmsnorm_row_generic(const float *x, const float *w, float *y, float *rstd, int64_t n, float eps) {
    float rs = (float)(1.0 / sqrt(mll_dot_f64(x, x, n) / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) y[i] = w ? x[i] * rs * w[i] : x[i] * rs;
    *rstd = rs;
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

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(rmsnorm_row)(const float *x, const float *w, float *y, float *rstd, int64_t n,
                                           float eps) {
    float rs = (float)(1.0 / sqrt(v_dot_f64(x, x, n) / (double)n + (double)eps));
    V vrs = v_set1(rs);
    if (w) VLOOP2(x, w, y, v_mul(v_mul(va, vrs), vb));
    else VLOOP1(x, y, v_mul(v, vrs));
    *rstd = rs;
}

#endif /* MLL_VEC */
