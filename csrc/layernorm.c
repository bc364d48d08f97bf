/* layernorm.c: layer normalization over the last axis, forward and backward.
 *
 * Forward (per row, n = cols):   mean = sum(x) / n,  var = sum((x - mean)^2) / n (biased),
 *   rstd = 1 / sqrt(var + eps),  y = (x - mean) * rstd * gamma + beta   (as PyTorch).
 * Fused residual form (a pre-LayerNorm block): s = x + r, then y = layernorm(s), one row at a
 * time so that the row is still in L1 when it is normalized; its backward is the plain
 * backward on s (the add passes its gradient through).
 * Backward, with xhat = (x - mean) * rstd and g = dy * gamma:
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
 *   dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy.
 * dgamma/dbeta: each block of rows (at least MLL_LN_ROWS, at most MLL_LN_BLOCKS blocks; a
 * function of `rows` only) writes its partial sums to a scratch buffer, and the partials are added in block order, so the result does not depend on
 * the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

#define MLL_LN_ROWS 32
#define MLL_LN_BLOCKS 256  /* caps the scratch at 256 x 2 x cols floats */

/* ------------------------------------------------------------------ generic */
/* one row: y (n), *mean, *rstd from x (n); gamma, beta (n) or NULL */
static void layernorm_row_generic(const float *x, const float *gamma, const float *beta, float *y,
                                  float *mean, float *rstd, int64_t n, float eps) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    float mu = (float)(s / (double)n);
    double v = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - mu;
        v += (double)d * d;
    }
    float rs = (float)(1.0 / sqrt(v / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) {
        float h = (x[i] - mu) * rs;
        if (gamma) h *= gamma[i];
        if (beta) h += beta[i];
        y[i] = h;
    }
    *mean = mu;
    *rstd = rs;
}

/* one row: dx (n); adds dy * xhat to dg (n) and dy to db (n) when they are not NULL */
static void layernorm_backward_row_generic(const float *x, const float *gamma, float mu, float rs,
                                           const float *dy, float *dx, float *dg, float *db, int64_t n) {
    double sg = 0.0, sgx = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float xh = (x[i] - mu) * rs;
        float g = gamma ? dy[i] * gamma[i] : dy[i];
        sg += g;
        sgx += (double)g * xh;
        if (dg) dg[i] += dy[i] * xh;
        if (db) db[i] += dy[i];
    }
    float mg = (float)(sg / (double)n), mgx = (float)(sgx / (double)n);
    for (int64_t i = 0; i < n; i++) {
        float xh = (x[i] - mu) * rs;
        float g = gamma ? dy[i] * gamma[i] : dy[i];
        dx[i] = rs * (g - mg - xh * mgx);
    }
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "layernorm.c"
#include "dispatch.h"

typedef void (*ln_fn)(const float *, const float *, const float *, float *, float *, float *, int64_t,
                      float);
typedef void (*ln_backward_fn)(const float *, const float *, float, float, const float *, float *, float *,
                               float *, int64_t);

/* ------------------------------------------------------------ public kernels */
/* x, y: (rows, cols); gamma, beta: (cols) or NULL; mean, rstd: (rows) */
void mll_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                           float *mean, float *rstd, int64_t rows, int64_t cols, float eps) {
    ln_fn f = MLL_PICK(layernorm_row);
    MLL_PARALLEL_ROWS(rows, cols, r,
                      f(x + r * cols, gamma, beta, y + r * cols, mean + r, rstd + r, cols, eps));
}

/* x, r, s, y: (rows, cols); gamma, beta: (cols) or NULL; mean, rstd: (rows).
 * s = x + r (float32, as mll_add), then y = layernorm(s) exactly as mll_layernorm_forward. */
void mll_add_layernorm_forward(const float *x, const float *r, const float *gamma, const float *beta,
                               float *s, float *y, float *mean, float *rstd, int64_t rows,
                               int64_t cols, float eps) {
    ln_fn f = MLL_PICK(layernorm_row);
    MLL_PARALLEL_ROWS(rows, cols, i, {
        const float *xi = x + i * cols, *ri = r + i * cols;
        float *si = s + i * cols;
        for (int64_t c = 0; c < cols; c++) si[c] = xi[c] + ri[c];
        f(si, gamma, beta, y + i * cols, mean + i, rstd + i, cols, eps);
    });
}

/* x, dy, dx: (rows, cols); gamma: (cols) or NULL; mean, rstd: (rows);
 * dgamma, dbeta: (cols) or NULL, written (not accumulated). */
void mll_layernorm_backward(const float *x, const float *gamma, const float *mean, const float *rstd,
                            const float *dy, float *dx, float *dgamma, float *dbeta,
                            int64_t rows, int64_t cols) {
    ln_backward_fn f = MLL_PICK(layernorm_backward_row);
    if (!dgamma && !dbeta) {
        MLL_PARALLEL_ROWS(rows, cols, r,
                          f(x + r * cols, gamma, mean[r], rstd[r], dy + r * cols, dx + r * cols, NULL,
                            NULL, cols));
        return;
    }
    /* part: (nblocks, 2, cols), block b's dgamma partial then its dbeta partial */
    int64_t per_block = (rows + MLL_LN_BLOCKS - 1) / MLL_LN_BLOCKS;
    if (per_block < MLL_LN_ROWS) per_block = MLL_LN_ROWS;
    int64_t nblocks = (rows + per_block - 1) / per_block;
    size_t bytes = (size_t)nblocks * 2 * (size_t)cols * sizeof(float);
    float *part = (float *)mll_alloc(bytes);
    if (!part) {
        /* no memory for the scratch: one serial pass (right, but a different rounding) */
        if (dgamma) memset(dgamma, 0, (size_t)cols * sizeof(float));
        if (dbeta) memset(dbeta, 0, (size_t)cols * sizeof(float));
        for (int64_t r = 0; r < rows; r++)
            f(x + r * cols, gamma, mean[r], rstd[r], dy + r * cols, dx + r * cols, dgamma, dbeta, cols);
        return;
    }
    memset(part, 0, bytes);
    int nt = nblocks > 1 ? mll_threads_for(rows * cols) : 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic) if (nt > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        float *pg = part + (size_t)b * 2 * cols, *pb = pg + cols;
        int64_t r1 = mll_min64((b + 1) * per_block, rows);
        for (int64_t r = b * per_block; r < r1; r++)
            f(x + r * cols, gamma, mean[r], rstd[r], dy + r * cols, dx + r * cols, pg, pb, cols);
    }
    /* block partials added in block order, columns in parallel */
    int ntc = mll_threads_for(nblocks * cols);
#pragma omp parallel for num_threads(ntc) schedule(dynamic) if (ntc > 1)
    for (int64_t c = 0; c < cols; c++) {
        double sg = 0.0, sb = 0.0;
        for (int64_t b = 0; b < nblocks; b++) {
            sg += part[(size_t)b * 2 * cols + c];
            sb += part[((size_t)b * 2 + 1) * cols + c];
        }
        if (dgamma) dgamma[c] = (float)sg;
        if (dbeta) dbeta[c] = (float)sb;
    }
    mll_free(part, bytes);
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

/* loads VL lanes of p at i, or the n - i left (zeros after) */
#define LOADT(p, i) ((i) + VL <= n ? v_load((p) + (i)) : v_loadn((p) + (i), n - (i)))

static MLL_TARGET void FN(layernorm_row)(const float *x, const float *gamma, const float *beta,
                                             float *y, float *mean, float *rstd, int64_t n, float eps) {
    VD s = vd_zero();
    for (int64_t i = 0; i < n; i += VL) s = vd_add(s, LOADT(x, i));
    float mu = (float)(vd_hsum(s) / (double)n);
    V vmu = v_set1(mu);
    VD q = vd_zero();
    for (int64_t i = 0; i < n; i += VL) {
        V d = v_sub(LOADT(x, i), vmu);
        if (i + VL > n) d = v_keepn(d, n - i);
        q = vd_fmadd(q, d, d);
    }
    float rs = (float)(1.0 / sqrt(vd_hsum(q) / (double)n + (double)eps));
    V vrs = v_set1(rs);
    for (int64_t i = 0; i < n; i += VL) {
        V h = v_mul(v_sub(LOADT(x, i), vmu), vrs);
        if (gamma && beta) h = v_fmadd(h, LOADT(gamma, i), LOADT(beta, i));
        else if (gamma) h = v_mul(h, LOADT(gamma, i));
        else if (beta) h = v_add(h, LOADT(beta, i));
        if (i + VL <= n) v_store(y + i, h);
        else v_storen(y + i, h, n - i);
    }
    *mean = mu;
    *rstd = rs;
}

static MLL_TARGET void FN(layernorm_backward_row)(const float *x, const float *gamma, float mu, float rs,
                                                      const float *dy, float *dx, float *dg, float *db,
                                                      int64_t n) {
    V vmu = v_set1(mu), vrs = v_set1(rs);
    VD sg = vd_zero(), sgx = vd_zero();
    for (int64_t i = 0; i < n; i += VL) {
        int full = i + VL <= n;
        V d = LOADT(dy, i);  /* zeros past n, so the tail adds nothing below */
        V xh = v_mul(v_sub(LOADT(x, i), vmu), vrs);
        V g = gamma ? v_mul(d, LOADT(gamma, i)) : d;
        sg = vd_add(sg, g);
        sgx = vd_fmadd(sgx, g, xh);
        if (dg) {
            V t = v_fmadd(d, xh, LOADT(dg, i));
            if (full) v_store(dg + i, t);
            else v_storen(dg + i, t, n - i);
        }
        if (db) {
            V t = v_add(d, LOADT(db, i));
            if (full) v_store(db + i, t);
            else v_storen(db + i, t, n - i);
        }
    }
    V mg = v_set1((float)(vd_hsum(sg) / (double)n)), mgx = v_set1((float)(vd_hsum(sgx) / (double)n));
    for (int64_t i = 0; i < n; i += VL) {
        V d = LOADT(dy, i);
        V xh = v_mul(v_sub(LOADT(x, i), vmu), vrs);
        V g = gamma ? v_mul(d, LOADT(gamma, i)) : d;
        V r = v_mul(vrs, v_fnmadd(xh, mgx, v_sub(g, mg)));
        if (i + VL <= n) v_store(dx + i, r);
        else v_storen(dx + i, r, n - i);
    }
}

#undef LOADT
#endif /* MLL_VEC */
