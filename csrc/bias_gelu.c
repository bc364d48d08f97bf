/* bias_gelu.c: fused bias add + GELU (tanh form), forward and backward; the exact (erf)
 * GELU, forward and backward, at the end of the first half.
 *
 *   y = gelu(x + b),  x (N, C), b (C)      (the MLP's c_fc output, before c_proj)
 * Forward keeps nothing but x; backward recomputes u = x + b and gives
 *   dx = dy * gelu'(u),  db = sum over rows of dx.
 * db is summed deterministically: rows are cut into fixed blocks of ROWS_PER_BLOCK, each
 * block's column sums go to its own slot of a scratch array, and the slots are added in
 * block order afterwards (in double), whatever the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

#define ROWS_PER_BLOCK 32

/* ------------------------------------------------------------------ generic */
/* y (n) = gelu(x + b) for one row */
static void bias_gelu_row_generic(const float *x, const float *b, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = mll_geluf(x[i] + b[i]);
}

/* dx (n) = dy * gelu'(x + b) for one row; colsum (n) += dx */
static void bias_gelu_backward_row_generic(const float *x, const float *b, const float *dy, float *dx,
                                           float *colsum, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = dy[i] * mll_gelu_gradf(x[i] + b[i]);
        dx[i] = g;
        colsum[i] += g;
    }
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "bias_gelu.c"
#include "dispatch.h"

typedef void (*row_fn)(const float *, const float *, float *, int64_t);
typedef void (*row_backward_fn)(const float *, const float *, const float *, float *, float *, int64_t);

/* ------------------------------------------------------------ public kernels */
/* x, y: (N, C); b: (C) */
void mll_bias_gelu_forward(const float *x, const float *b, float *y, int64_t N, int64_t C) {
    row_fn f = MLL_PICK(bias_gelu_row);
    MLL_PARALLEL_ROWS(N, C, r, f(x + r * C, b, y + r * C, C));
}

/* x, dy, dx: (N, C); b, db: (C), db written (not accumulated); db may be NULL.
 * Returns 0, or -1 if the scratch for the column sums could not be had. */
int mll_bias_gelu_backward(const float *x, const float *b, const float *dy, float *dx, float *db,
                           int64_t N, int64_t C) {
    row_backward_fn f = MLL_PICK(bias_gelu_backward_row);
    int64_t nblocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    size_t nbytes = (size_t)(nblocks * C) * sizeof(float);
    float *partial = (float *)mll_alloc(nbytes);  /* (nblocks, C): column sums of each block */
    if (!partial) return -1;
    MLL_PARALLEL_ROWS(nblocks, ROWS_PER_BLOCK * C, blk, {
        float *ps = partial + blk * C;
        int64_t r0 = blk * ROWS_PER_BLOCK, r1 = mll_min64(r0 + ROWS_PER_BLOCK, N);
        memset(ps, 0, (size_t)C * sizeof(float));
        for (int64_t r = r0; r < r1; r++) f(x + r * C, b, dy + r * C, dx + r * C, ps, C);
    });
    if (db) {
        /* each column summed over the blocks in block order */
        MLL_PARALLEL_ROWS(C, nblocks, c, {
            double s = 0.0;
            for (int64_t k = 0; k < nblocks; k++) s += partial[k * C + c];
            db[c] = (float)s;
        });
    }
    mll_free(partial, nbytes);
    return 0;
}

/* ------------------------------------------------------ exact GELU (erf form) */
/* gelu(x) = x Phi(x), Phi the standard normal CDF, written Phi(x) = erfc(-x / sqrt(2)) / 2:
 * erfc keeps the left tail accurate where 1 + erf(x / sqrt(2)) would cancel. Each element is
 * computed in double and rounded once. Scalar only: the models' hot paths use the tanh form
 * (the kernels above), this one serves F.gelu(approximate="none"). */
#define GELU_INV_SQRT2 0.70710678118654752440
#define GELU_INV_SQRT_2PI 0.39894228040143267794

static float gelu_erf1(float x) {
    double xd = x;
    return (float)(0.5 * xd * erfc(-xd * GELU_INV_SQRT2));
}

/* d/dx x Phi(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
static float gelu_erf_grad1(float x) {
    double xd = x;
    return (float)(0.5 * erfc(-xd * GELU_INV_SQRT2) + xd * GELU_INV_SQRT_2PI * exp(-0.5 * xd * xd));
}

/* x, y: (n) */
void mll_gelu_erf_forward(const float *x, float *y, int64_t n) {
    MLL_PARALLEL_CHUNKS(n, i0, len, {
        for (int64_t i = i0; i < i0 + len; i++) y[i] = gelu_erf1(x[i]);
    });
}

/* x, dy, dx: (n); dx = dy * gelu'(x) */
void mll_gelu_erf_backward(const float *x, const float *dy, float *dx, int64_t n) {
    MLL_PARALLEL_CHUNKS(n, i0, len, {
        for (int64_t i = i0; i < i0 + len; i++) dx[i] = dy[i] * gelu_erf_grad1(x[i]);
    });
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(bias_gelu_row)(const float *x, const float *b, float *y, int64_t n) {
    VLOOP2(x, b, y, v_gelu(v_add(va, vb)));
}

static MLL_TARGET void FN(bias_gelu_backward_row)(const float *x, const float *b, const float *dy,
                                                      float *dx, float *colsum, int64_t n) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V g = v_mul(v_load(dy + i), v_gelu_grad(v_add(v_load(x + i), v_load(b + i))));
        v_store(dx + i, g);
        v_store(colsum + i, v_add(v_load(colsum + i), g));
    }
    if (i < n) {
        int64_t k = n - i;
        V g = v_mul(v_loadn(dy + i, k), v_gelu_grad(v_add(v_loadn(x + i, k), v_loadn(b + i, k))));
        v_storen(dx + i, g, k);
        v_storen(colsum + i, v_add(v_loadn(colsum + i, k), g), k);
    }
}

#endif /* MLL_VEC */
