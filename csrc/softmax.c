/* softmax.c: softmax and log-softmax over the last axis, forward and backward.
 *
 * Forward subtracts the row max before exponentiating, so no input overflows exp.
 * Each row is done whole by one thread (rows in parallel), so results never depend on
 * the thread count. Row sums accumulate in double in the generic path.
 */
#ifndef MLL_VEC
#include "simd.h"

/* ------------------------------------------------------------------ generic */
/* y (cols) = softmax(x (cols)) */
static void softmax_row_generic(const float *x, float *y, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        y[i] = expf(x[i] - m);
        s += y[i];
    }
    float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < n; i++) y[i] *= inv;
}

/* y = x - max - log(sum(exp(x - max))) */
static void log_softmax_row_generic(const float *x, float *y, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += expf(x[i] - m);
    float logs = (float)log(s);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) - logs;
}

/* dx = y * (dy - sum(dy * y)) */
static void softmax_backward_row_generic(const float *y, const float *dy, float *dx, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)dy[i] * y[i];
    float sf = (float)s;
    for (int64_t i = 0; i < n; i++) dx[i] = y[i] * (dy[i] - sf);
}

/* dx = dy - exp(y) * sum(dy) */
static void log_softmax_backward_row_generic(const float *y, const float *dy, float *dx, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += dy[i];
    float sf = (float)s;
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] - expf(y[i]) * sf;
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "softmax.c"
#include "dispatch.h"

typedef void (*row_fn)(const float *, float *, int64_t);
typedef void (*row_backward_fn)(const float *, const float *, float *, int64_t);

/* ------------------------------------------------------------ public kernels */
/* x, y: (rows, cols), cols >= 1 */
void mll_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols) {
    row_fn f = MLL_PICK(softmax_row);
    MLL_PARALLEL_ROWS(rows, cols, r, f(x + r * cols, y + r * cols, cols));
}

void mll_softmax_row(const float *x, float *y, int64_t n) { MLL_PICK(softmax_row)(x, y, n); }

/* y, dy, dx: (rows, cols) */
void mll_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols) {
    row_backward_fn f = MLL_PICK(softmax_backward_row);
    MLL_PARALLEL_ROWS(rows, cols, r, f(y + r * cols, dy + r * cols, dx + r * cols, cols));
}

/* x, y: (rows, cols), cols >= 1 */
void mll_log_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols) {
    row_fn f = MLL_PICK(log_softmax_row);
    MLL_PARALLEL_ROWS(rows, cols, r, f(x + r * cols, y + r * cols, cols));
}

/* y (log-probabilities), dy, dx: (rows, cols) */
void mll_log_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols) {
    row_backward_fn f = MLL_PICK(log_softmax_backward_row);
    MLL_PARALLEL_ROWS(rows, cols, r, f(y + r * cols, dy + r * cols, dx + r * cols, cols));
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

/* max of a row (n >= 1); a NaN in the row makes the softmax NaN either way */
static MLL_TARGET float FN(row_max)(const float *x, int64_t n) {
    V ninf = v_set1(-INFINITY), m0 = ninf, m1 = ninf;
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        m0 = v_max(m0, v_load(x + i));
        m1 = v_max(m1, v_load(x + i + VL));
    }
    for (; i < n; i += VL) m0 = v_max(m0, i + VL <= n ? v_load(x + i) : v_loadn_fill(x + i, n - i, ninf));
    return v_hmax(v_max(m0, m1));
}

/* sum of exp(x - m) over a row, in double; writes the exponentials to y unless y is NULL */
static MLL_TARGET double FN(row_sum_exp)(const float *x, float *y, float m, int64_t n) {
    V vm = v_set1(m);
    VD s = vd_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V e = v_exp(v_sub(v_load(x + i), vm));
        if (y) v_store(y + i, e);
        s = vd_add(s, e);
    }
    if (i < n) {
        V e = v_keepn(v_exp(v_sub(v_loadn(x + i, n - i), vm)), n - i);
        if (y) v_storen(y + i, e, n - i);
        s = vd_add(s, e);
    }
    return vd_hsum(s);
}

static MLL_TARGET void FN(softmax_row)(const float *x, float *y, int64_t n) {
    float m = FN(row_max)(x, n);
    V inv = v_set1((float)(1.0 / FN(row_sum_exp)(x, y, m, n)));
    VLOOP1(y, y, v_mul(v, inv));
}

static MLL_TARGET void FN(log_softmax_row)(const float *x, float *y, int64_t n) {
    float m = FN(row_max)(x, n);
    V vm = v_set1(m), logs = v_set1((float)log(FN(row_sum_exp)(x, NULL, m, n)));
    VLOOP1(x, y, v_sub(v_sub(v, vm), logs));
}

/* dx = y * (dy - sum(dy * y)) */
static MLL_TARGET void FN(softmax_backward_row)(const float *y, const float *dy, float *dx, int64_t n) {
    VD acc = vd_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc = vd_fmadd(acc, v_load(dy + i), v_load(y + i));
    if (i < n) acc = vd_fmadd(acc, v_loadn(dy + i, n - i), v_loadn(y + i, n - i));
    V s = v_set1((float)vd_hsum(acc));
    VLOOP2(y, dy, dx, v_mul(va, v_sub(vb, s)));
}

/* dx = dy - exp(y) * sum(dy) */
static MLL_TARGET void FN(log_softmax_backward_row)(const float *y, const float *dy, float *dx, int64_t n) {
    VD acc = vd_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc = vd_add(acc, v_load(dy + i));
    if (i < n) acc = vd_add(acc, v_loadn(dy + i, n - i));
    V s = v_set1((float)vd_hsum(acc));
    VLOOP2(y, dy, dx, v_fnmadd(v_exp(va), s, vb));
}

#endif /* MLL_VEC */
