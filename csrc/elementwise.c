/* elementwise.c: binary ops with broadcasting, unary ops, and their backward.
 *
 * Each public kernel picks (MLL_PICK, dispatch.h) a version that handles one contiguous
 * piece [0, n); the driver cuts big inputs into fixed chunks run in parallel. Results are
 * per element, so they never depend on the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

/* ------------------------------------------------------------------ generic */
static void binary_generic(int op, const float *a, const float *b, float *out, int64_t n) {
    switch (op) {
    case MLL_ADD: for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i]; break;
    case MLL_SUB: for (int64_t i = 0; i < n; i++) out[i] = a[i] - b[i]; break;
    case MLL_MUL: for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i]; break;
    case MLL_DIV: for (int64_t i = 0; i < n; i++) out[i] = a[i] / b[i]; break;
    }
}

/* out[i] = a[i] op s, or s op a[i] when reverse */
static void binary_scalar_generic(int op, const float *a, float s, float *out, int64_t n, int reverse) {
    switch (op) {
    case MLL_ADD: for (int64_t i = 0; i < n; i++) out[i] = a[i] + s; break;
    case MLL_MUL: for (int64_t i = 0; i < n; i++) out[i] = a[i] * s; break;
    case MLL_SUB:
        if (reverse) for (int64_t i = 0; i < n; i++) out[i] = s - a[i];
        else for (int64_t i = 0; i < n; i++) out[i] = a[i] - s;
        break;
    case MLL_DIV:
        if (reverse) for (int64_t i = 0; i < n; i++) out[i] = s / a[i];
        else for (int64_t i = 0; i < n; i++) out[i] = a[i] / s;
        break;
    }
}

static void unary_generic(int op, const float *x, float *out, int64_t n) {
    switch (op) {
    case MLL_NEG: for (int64_t i = 0; i < n; i++) out[i] = -x[i]; break;
    case MLL_EXP: for (int64_t i = 0; i < n; i++) out[i] = expf(x[i]); break;
    case MLL_LOG: for (int64_t i = 0; i < n; i++) out[i] = logf(x[i]); break;
    case MLL_SQRT: for (int64_t i = 0; i < n; i++) out[i] = sqrtf(x[i]); break;
    case MLL_TANH: for (int64_t i = 0; i < n; i++) out[i] = tanhf(x[i]); break;
    case MLL_RELU: for (int64_t i = 0; i < n; i++) out[i] = x[i] <= 0.0f ? 0.0f : x[i]; break;  /* NaN stays */
    case MLL_GELU: for (int64_t i = 0; i < n; i++) out[i] = mll_geluf(x[i]); break;
    case MLL_ABS: for (int64_t i = 0; i < n; i++) out[i] = fabsf(x[i]); break;
    case MLL_SIGMOID: for (int64_t i = 0; i < n; i++) out[i] = mll_sigmoidf(x[i]); break;
    case MLL_RELU2: for (int64_t i = 0; i < n; i++) out[i] = x[i] <= 0.0f ? 0.0f : x[i] * x[i]; break;
    }
}

static void unary_backward_generic(int op, const float *x, const float *y, const float *dy, float *dx,
                                   int64_t n) {
    switch (op) {
    case MLL_NEG: for (int64_t i = 0; i < n; i++) dx[i] = -dy[i]; break;
    case MLL_EXP: for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * y[i]; break;
    case MLL_LOG: for (int64_t i = 0; i < n; i++) dx[i] = dy[i] / x[i]; break;
    case MLL_SQRT: for (int64_t i = 0; i < n; i++) dx[i] = 0.5f * dy[i] / y[i]; break;
    case MLL_TANH: for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]); break;
    case MLL_RELU: for (int64_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; break;
    case MLL_GELU: for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * mll_gelu_gradf(x[i]); break;
    case MLL_ABS:
        for (int64_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? dy[i] : x[i] < 0.0f ? -dy[i] : 0.0f;
        break;
    case MLL_SIGMOID: for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]); break;
    case MLL_RELU2: for (int64_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? 2.0f * x[i] * dy[i] : 0.0f; break;
    }
}

static void softcap_generic(const float *x, float *out, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++) out[i] = cap * tanhf(x[i] / cap);
}

static void softcap_backward_generic(const float *y, const float *dy, float *dx, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++) {
        float t = y[i] / cap;
        dx[i] = dy[i] * (1.0f - t * t);
    }
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "elementwise.c"
#include "dispatch.h"

/* --------------------------------------------------------------- dispatch */
typedef void (*binary_fn)(int, const float *, const float *, float *, int64_t);
typedef void (*binary_scalar_fn)(int, const float *, float, float *, int64_t, int);
typedef void (*unary_fn)(int, const float *, float *, int64_t);
typedef void (*unary_backward_fn)(int, const float *, const float *, const float *, float *, int64_t);

/* ------------------------------------------------------------ public kernels */
/* a, b, out: (n) */
void mll_binary(int op, const float *a, const float *b, float *out, int64_t n) {
    binary_fn f = MLL_PICK(binary);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(op, a + i0, b + i0, out + i0, len));
}

/* a, out: (rows, cols), b: (cols) broadcast over rows */
void mll_binary_row(int op, const float *a, const float *b, float *out, int64_t rows, int64_t cols) {
    binary_fn f = MLL_PICK(binary);
    MLL_PARALLEL_ROWS(rows, cols, r, f(op, a + r * cols, b, out + r * cols, cols));
}

/* a, out: (rows, cols), b: (rows) broadcast over cols */
void mll_binary_col(int op, const float *a, const float *b, float *out, int64_t rows, int64_t cols) {
    binary_scalar_fn f = MLL_PICK(binary_scalar);
    MLL_PARALLEL_ROWS(rows, cols, r, f(op, a + r * cols, b[r], out + r * cols, cols, 0));
}

/* a, out: (n); s a scalar on the right (reverse=0) or on the left (reverse=1) */
void mll_binary_scalar(int op, const float *a, float s, float *out, int64_t n, int reverse) {
    binary_scalar_fn f = MLL_PICK(binary_scalar);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(op, a + i0, s, out + i0, len, reverse));
}

static inline float apply_op(int op, float x, float y) {
    switch (op) {
    case MLL_ADD: return x + y;
    case MLL_SUB: return x - y;
    case MLL_MUL: return x * y;
    default: return x / y;
    }
}

/* out: `shape` (ndim <= 8) contiguous; a, b read with element strides astr, bstr (0 on
 * broadcast axes). The innermost axis runs as a tight loop; the outer axes are walked with
 * an index counter, one outer row per step, parallel over outer rows when big. */
void mll_binary_strided(int op, int ndim, const int64_t *shape, const float *a, const int64_t *astr,
                        const float *b, const int64_t *bstr, float *out) {
    if (ndim == 0) {
        out[0] = apply_op(op, a[0], b[0]);
        return;
    }
    int64_t inner = shape[ndim - 1], outer = 1;
    for (int d = 0; d < ndim - 1; d++) outer *= shape[d];
    if (inner == 0 || outer == 0) return;
    int64_t sa = astr[ndim - 1], sb = bstr[ndim - 1];
    binary_fn fast = MLL_PICK(binary);
    binary_scalar_fn fast_scalar = MLL_PICK(binary_scalar);
    MLL_PARALLEL_ROWS(outer, inner, o, {
        int64_t rem = o, oa = 0, ob = 0;
        for (int d = ndim - 2; d >= 0; d--) {
            int64_t i = rem % shape[d];
            rem /= shape[d];
            oa += i * astr[d];
            ob += i * bstr[d];
        }
        const float *pa = a + oa, *pb = b + ob;
        float *po = out + o * inner;
        if (sa == 1 && sb == 1) fast(op, pa, pb, po, inner);
        else if (sa == 1 && sb == 0) fast_scalar(op, pa, pb[0], po, inner, 0);
        else if (sa == 0 && sb == 1) fast_scalar(op, pb, pa[0], po, inner, 1);
        else
            for (int64_t j = 0; j < inner; j++) po[j] = apply_op(op, pa[j * sa], pb[j * sb]);
    });
}

/* x, out: (n) */
void mll_unary(int op, const float *x, float *out, int64_t n) {
    unary_fn f = MLL_PICK(unary);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(op, x + i0, out + i0, len));
}

void mll_softcap(const float *x, float *out, int64_t n, float cap) {
    void (*f)(const float *, float *, int64_t, float) = MLL_PICK(softcap);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(x + i0, out + i0, len, cap));
}

void mll_softcap_backward(const float *y, const float *dy, float *dx, int64_t n, float cap) {
    void (*f)(const float *, const float *, float *, int64_t, float) = MLL_PICK(softcap_backward);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(y + i0, dy + i0, dx + i0, len, cap));
}

/* x, y, dy, dx: (n); y = f(x) from the forward. exp, sqrt, tanh and sigmoid read y;
 * log, relu, gelu and abs read x; neg reads neither. */
void mll_unary_backward(int op, const float *x, const float *y, const float *dy, float *dx, int64_t n) {
    unary_backward_fn f = MLL_PICK(unary_backward);
    /* x or y may be NULL when the op does not read it (e.g. y for relu); no offsets on NULL */
    MLL_PARALLEL_CHUNKS(n, i0, len,
                        f(op, x ? x + i0 : NULL, y ? y + i0 : NULL, dy + i0, dx + i0, len));
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(binary)(int op, const float *a, const float *b, float *out, int64_t n) {
    switch (op) {
    case MLL_ADD: VLOOP2(a, b, out, v_add(va, vb)); break;
    case MLL_SUB: VLOOP2(a, b, out, v_sub(va, vb)); break;
    case MLL_MUL: VLOOP2(a, b, out, v_mul(va, vb)); break;
    case MLL_DIV: VLOOP2(a, b, out, v_div(va, vb)); break;
    }
}

static MLL_TARGET void FN(binary_scalar)(int op, const float *a, float s, float *out, int64_t n,
                                             int reverse) {
    V vs = v_set1(s);
    switch (op) {
    case MLL_ADD: VLOOP1(a, out, v_add(v, vs)); break;
    case MLL_MUL: VLOOP1(a, out, v_mul(v, vs)); break;
    case MLL_SUB:
        if (reverse) VLOOP1(a, out, v_sub(vs, v));
        else VLOOP1(a, out, v_sub(v, vs));
        break;
    case MLL_DIV:
        if (reverse) VLOOP1(a, out, v_div(vs, v));
        else VLOOP1(a, out, v_div(v, vs));
        break;
    }
}

static MLL_TARGET void FN(unary)(int op, const float *x, float *out, int64_t n) {
    switch (op) {
    case MLL_NEG: VLOOP1(x, out, v_sub(v_zero(), v)); break;
    case MLL_EXP: VLOOP1(x, out, v_exp(v)); break;
    case MLL_LOG: VLOOP1(x, out, v_log(v)); break;
    case MLL_SQRT: VLOOP1(x, out, v_sqrt(v)); break;
    case MLL_TANH: VLOOP1(x, out, v_tanh(v)); break;
    /* not max(v, 0), which turns NaN into 0: lanes <= 0 become 0 and NaN stays NaN */
    case MLL_RELU: VLOOP1(x, out, v_select(v_le(v, v_zero()), v, v_zero())); break;
    case MLL_GELU: VLOOP1(x, out, v_gelu(v)); break;
    case MLL_ABS: VLOOP1(x, out, v_abs(v)); break;
    case MLL_SIGMOID: VLOOP1(x, out, v_sigmoid(v)); break;
    case MLL_RELU2: VLOOP1(x, out, v_select(v_le(v, v_zero()), v_mul(v, v), v_zero())); break;
    }
}

static MLL_TARGET void FN(softcap)(const float *x, float *out, int64_t n, float cap) {
    V vc = v_set1(cap), vi = v_set1(1.0f / cap);
    VLOOP1(x, out, v_mul(vc, v_tanh(v_mul(v, vi))));
}

static MLL_TARGET void FN(softcap_backward)(const float *y, const float *dy, float *dx, int64_t n, float cap) {
    V vi = v_set1(1.0f / cap);
    VLOOP2(dy, y, dx, v_mul(va, v_fnmadd(v_mul(vb, vi), v_mul(vb, vi), v_set1(1.0f))));
}

static MLL_TARGET void FN(unary_backward)(int op, const float *x, const float *y, const float *dy,
                                              float *dx, int64_t n) {
    switch (op) {
    case MLL_NEG: VLOOP1(dy, dx, v_sub(v_zero(), v)); break;
    case MLL_EXP: VLOOP2(dy, y, dx, v_mul(va, vb)); break;
    case MLL_LOG: VLOOP2(dy, x, dx, v_div(va, vb)); break;
    case MLL_SQRT: VLOOP2(dy, y, dx, v_div(v_mul(v_set1(0.5f), va), vb)); break;
    case MLL_TANH: VLOOP2(dy, y, dx, v_mul(va, v_fnmadd(vb, vb, v_set1(1.0f)))); break;
    case MLL_RELU: VLOOP2(dy, x, dx, v_select(v_gt(vb, v_zero()), v_zero(), va)); break;
    case MLL_GELU: VLOOP2(dy, x, dx, v_mul(va, v_gelu_grad(vb))); break;
    case MLL_ABS:
        VLOOP2(dy, x, dx, v_select(v_lt(vb, v_zero()), v_select(v_gt(vb, v_zero()), v_zero(), va),
                                   v_sub(v_zero(), va)));
        break;
    case MLL_SIGMOID:
        VLOOP2(dy, y, dx, v_mul(v_mul(va, vb), v_sub(v_set1(1.0f), vb)));
        break;
    case MLL_RELU2: VLOOP2(dy, x, dx, v_select(v_gt(vb, v_zero()), v_zero(), v_mul(v_add(vb, vb), va))); break;
    }
}

#endif /* MLL_VEC */
