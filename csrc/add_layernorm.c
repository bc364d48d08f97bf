/* add_layernorm.c: fused residual add + layer normalization, forward.
 *
 *   s = x + r,   y = (s - mean(s)) * rstd * gamma + beta,  rstd = 1 / sqrt(var(s) + eps)
 * per row of (rows, cols), biased variance (as mll_layernorm_forward). s, the new residual
 * stream, and y come out of one pass over x and r: the row is summed while it is added, and
 * the variance and y passes read s back from L1. The backward is mll_layernorm_backward on s
 * (the add's backward passes the gradient through), so it needs no kernel of its own.
 * Each row is done whole by one thread, so results never depend on the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

/* ------------------------------------------------------------------ generic */
static void add_layernorm_row_generic(const float *x, const float *r, const float *gamma,
                                      const float *beta, float *s, float *y, float *mean, float *rstd,
                                      int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s[i] = x[i] + r[i];
        sum += s[i];
    }
    float mu = (float)(sum / (double)n);
    double var = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float d = s[i] - mu;
        var += (double)d * d;
    }
    float rs = (float)(1.0 / sqrt(var / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) {
        float h = (s[i] - mu) * rs;
        if (gamma) h *= gamma[i];
        if (beta) h += beta[i];
        y[i] = h;
    }
    *mean = mu;
    *rstd = rs;
}

/* SIMD paths: the second half of this file, compiled once per ISA (see simd.h) */
#ifdef MLL_X86
#define MLL_VEC 256
#include "simd.h"
#include "add_layernorm.c"
#undef MLL_VEC
#define MLL_VEC 512
#include "simd.h"
#include "add_layernorm.c"
#undef MLL_VEC
#endif

typedef void (*row_fn)(const float *, const float *, const float *, const float *, float *, float *,
                       float *, float *, int64_t, float);

static row_fn pick_row(void) {
    switch (mll_get_isa()) {
    MLL_PICK(add_layernorm_row_vec)
    default: return add_layernorm_row_generic;
    }
}

/* ------------------------------------------------------------ public kernels */
/* x, r, s, y: (rows, cols); gamma, beta: (cols) or NULL; mean, rstd: (rows) */
void mll_add_layernorm_forward(const float *x, const float *r, const float *gamma, const float *beta,
                               float *s, float *y, float *mean, float *rstd, int64_t rows,
                               int64_t cols, float eps) {
    row_fn f = pick_row();
    MLL_PARALLEL_ROWS(rows, cols, i,
                      f(x + i * cols, r + i * cols, gamma, beta, s + i * cols, y + i * cols, mean + i,
                        rstd + i, cols, eps));
}

#else /* MLL_VEC: the SIMD pass */

static MLL_TARGET void FN(add_layernorm_row_vec)(const float *x, const float *r, const float *gamma,
                                                 const float *beta, float *s, float *y, float *mean,
                                                 float *rstd, int64_t n, float eps) {
    VD acc = vd_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V v = v_add(v_load(x + i), v_load(r + i));
        v_store(s + i, v);
        acc = vd_add(acc, v);
    }
    if (i < n) {
        V v = v_add(v_loadn(x + i, n - i), v_loadn(r + i, n - i));
        v_storen(s + i, v, n - i);
        acc = vd_add(acc, v);
    }
    float mu = (float)(vd_hsum(acc) / (double)n);
    V vmu = v_set1(mu);
    VD var = vd_zero();
    for (i = 0; i + VL <= n; i += VL) {
        V d = v_sub(v_load(s + i), vmu);
        var = vd_fmadd(var, d, d);
    }
    if (i < n) {
        V d = v_keepn(v_sub(v_loadn(s + i, n - i), vmu), n - i);
        var = vd_fmadd(var, d, d);
    }
    float rs = (float)(1.0 / sqrt(vd_hsum(var) / (double)n + (double)eps));
    V vrs = v_set1(rs), one = v_set1(1.0f), zero = v_zero();
    for (i = 0; i < n; i += VL) {
        int64_t k = n - i < VL ? n - i : VL;
        V h = v_mul(v_sub(k == VL ? v_load(s + i) : v_loadn(s + i, k), vmu), vrs);
        V g = gamma ? (k == VL ? v_load(gamma + i) : v_loadn(gamma + i, k)) : one;
        V b = beta ? (k == VL ? v_load(beta + i) : v_loadn(beta + i, k)) : zero;
        h = v_fmadd(h, g, b);
        if (k == VL) v_store(y + i, h); else v_storen(y + i, h, k);
    }
    *mean = mu;
    *rstd = rs;
}

#endif /* MLL_VEC */
