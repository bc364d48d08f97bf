/* softmax.c: softmax and log-softmax over the last axis, forward and backward.
 *
 * Forward subtracts the row max before exponentiating, so no input overflows exp.
 * Each row is done whole by one thread (rows in parallel), so results never depend on
 * the thread count. Row sums accumulate in double in the generic path.
 */
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

typedef void (*row_fn)(const float *, float *, int64_t);
typedef void (*row_backward_fn)(const float *, const float *, float *, int64_t);

static row_fn pick_softmax(void) {
    switch (mll_get_isa()) {
    default: return softmax_row_generic;
    }
}

static row_fn pick_log_softmax(void) {
    switch (mll_get_isa()) {
    default: return log_softmax_row_generic;
    }
}

static row_backward_fn pick_softmax_backward(void) {
    switch (mll_get_isa()) {
    default: return softmax_backward_row_generic;
    }
}

static row_backward_fn pick_log_softmax_backward(void) {
    switch (mll_get_isa()) {
    default: return log_softmax_backward_row_generic;
    }
}

/* ------------------------------------------------------------ public kernels */
/* x, y: (rows, cols), cols >= 1 */
void mll_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols) {
    row_fn f = pick_softmax();
    MLL_PARALLEL_ROWS(rows, cols, r, f(x + r * cols, y + r * cols, cols));
}

/* y, dy, dx: (rows, cols) */
void mll_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols) {
    row_backward_fn f = pick_softmax_backward();
    MLL_PARALLEL_ROWS(rows, cols, r, f(y + r * cols, dy + r * cols, dx + r * cols, cols));
}

/* x, y: (rows, cols), cols >= 1 */
void mll_log_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols) {
    row_fn f = pick_log_softmax();
    MLL_PARALLEL_ROWS(rows, cols, r, f(x + r * cols, y + r * cols, cols));
}

/* y (log-probabilities), dy, dx: (rows, cols) */
void mll_log_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols) {
    row_backward_fn f = pick_log_softmax_backward();
    MLL_PARALLEL_ROWS(rows, cols, r, f(y + r * cols, dy + r * cols, dx + r * cols, cols));
}
