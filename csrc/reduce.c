/* reduce.c: sum / max / argmax over the last axis, sum over the leading axis, and sums
 * over all elements. Sums accumulate in double. Every result is computed by one fixed
 * sequence of additions that depends on the shape only, never on the thread count. */
#ifndef MLL_VEC
#include "simd.h"

/* ------------------------------------------------------------------ generic */
/* sum of one contiguous run, in double, four interleaved accumulators */
static double sum_generic(const float *x, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += x[i];
        s1 += x[i + 1];
        s2 += x[i + 2];
        s3 += x[i + 3];
    }
    for (; i < n; i++) s0 += x[i];
    return (s0 + s1) + (s2 + s3);
}

static double sumsq_generic(const float *x, int64_t n) { return mll_dot_f64(x, x, n); }

/* max of a run (n >= 1); NaN wins, as in NumPy */
static float max_generic(const float *x, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++) {
        if (x[i] != x[i]) return x[i];
        if (x[i] > m) m = x[i];
    }
    return m;
}

/* index of the first max of a run (n >= 1); the first NaN wins, as in NumPy */
static int64_t argmax_generic(const float *x, int64_t n) {
    int64_t best = 0;
    float m = x[0];
    if (m != m) return 0;
    for (int64_t i = 1; i < n; i++) {
        if (x[i] != x[i]) return i;
        if (x[i] > m) {
            m = x[i];
            best = i;
        }
    }
    return best;
}

/* out[c0 .. c0+w) = column sums of x rows [0, rows), w <= 64, accumulated in double */
static void sum_cols_generic(const float *x, float *out, int64_t rows, int64_t cols, int64_t w) {
    double acc[64];
    for (int64_t j = 0; j < w; j++) acc[j] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const float *p = x + r * cols;
        for (int64_t j = 0; j < w; j++) acc[j] += p[j];
    }
    for (int64_t j = 0; j < w; j++) out[j] = (float)acc[j];
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "reduce.c"
#include "dispatch.h"

typedef double (*sum_fn)(const float *, int64_t);
typedef float (*max_fn)(const float *, int64_t);
typedef void (*sum_cols_fn)(const float *, float *, int64_t, int64_t, int64_t);
typedef int64_t (*argmax_fn)(const float *, int64_t);

/* ------------------------------------------------------------ public kernels */
/* x (rows, cols) -> out (rows) */
void mll_sum_rows(const float *x, float *out, int64_t rows, int64_t cols) {
    sum_fn f = MLL_PICK(sum);
    MLL_PARALLEL_ROWS(rows, cols, r, out[r] = (float)f(x + r * cols, cols));
}

/* x (rows, cols) -> out (rows); cols >= 1 */
void mll_max_rows(const float *x, float *out, int64_t rows, int64_t cols) {
    max_fn f = MLL_PICK(max);
    MLL_PARALLEL_ROWS(rows, cols, r, out[r] = f(x + r * cols, cols));
}

/* x (rows, cols) -> out (rows): index of the first max of each row; cols >= 1 */
void mll_argmax_rows(const float *x, int64_t *out, int64_t rows, int64_t cols) {
    argmax_fn f = MLL_PICK(argmax);
    MLL_PARALLEL_ROWS(rows, cols, r, out[r] = f(x + r * cols, cols));
}

/* x (rows, cols) -> out (cols). Each thread owns a range of 64-column strips and sums
 * them down all rows in order, so every column is one fixed sequence of additions. */
void mll_sum_cols(const float *x, float *out, int64_t rows, int64_t cols) {
    sum_cols_fn f = MLL_PICK(sum_cols);
    int64_t strips = (cols + 63) / 64;
    MLL_PARALLEL_ROWS(strips, 64 * rows, s, {
        int64_t c0 = s * 64;
        f(x + c0, out + c0, rows, cols, mll_min64(64, cols - c0));
    });
}

/* x: (n) in blocks summed in double, in block order (MLL_BLOCKED_SUM, simd.h) */
static double blocked_sum(sum_fn f, const float *x, int64_t n) {
    double total;
    MLL_BLOCKED_SUM(total, n, i0, len, f(x + i0, len));
    return total;
}

/* x: (n) */
double mll_sum_all(const float *x, int64_t n) { return blocked_sum(MLL_PICK(sum), x, n); }

/* x: (n) */
double mll_sumsq_all(const float *x, int64_t n) { return blocked_sum(MLL_PICK(sumsq), x, n); }

/* x: (n), n >= 1; NaN if any element is NaN. Per-chunk maxima are combined in chunk
 * order (max is exact, so this only matters for which NaN is returned). */
float mll_max_all(const float *x, int64_t n) {
    max_fn f = MLL_PICK(max);
    int nt = mll_threads_for(n);
    if (nt <= 1) return f(x, n);
    int64_t nch = (n + MLL_CHUNK - 1) / MLL_CHUNK;
    float m = x[0], part[MLL_RED_GROUP];
    for (int64_t g0 = 0; g0 < nch; g0 += MLL_RED_GROUP) {
        int64_t gn = mll_min64(MLL_RED_GROUP, nch - g0);
#pragma omp parallel for num_threads(nt) schedule(dynamic)
        for (int64_t k = 0; k < gn; k++) {
            int64_t i0 = (g0 + k) * MLL_CHUNK;
            part[k] = f(x + i0, mll_min64(MLL_CHUNK, n - i0));
        }
        for (int64_t k = 0; k < gn; k++) {
            if (part[k] != part[k]) return part[k];
            if (part[k] > m) m = part[k];
        }
    }
    return m;
}

/* x: (n), n >= 1: index of the first max (the first NaN if there is one) */
int64_t mll_argmax_all(const float *x, int64_t n) {
    int64_t nch = (n + MLL_CHUNK - 1) / MLL_CHUNK;
    int nt = mll_threads_for(n);
    argmax_fn f = MLL_PICK(argmax);
    if (nt <= 1) return f(x, n);
    /* per-chunk winners in a stack array of fixed groups, combined in chunk order */
    int64_t best = 0;
    float bestv = x[0];
    int64_t idx[MLL_RED_GROUP];
    for (int64_t g0 = 0; g0 < nch; g0 += MLL_RED_GROUP) {
        int64_t gn = mll_min64(MLL_RED_GROUP, nch - g0);
#pragma omp parallel for num_threads(nt) schedule(dynamic)
        for (int64_t k = 0; k < gn; k++) {
            int64_t i0 = (g0 + k) * MLL_CHUNK;
            idx[k] = i0 + f(x + i0, mll_min64(MLL_CHUNK, n - i0));
        }
        for (int64_t k = 0; k < gn; k++) {
            float v = x[idx[k]];
            if (v != v) return idx[k];
            if (v > bestv) {
                bestv = v;
                best = idx[k];
            }
        }
    }
    return best;
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

/* sum of a run in double: two interleaved accumulators of VL lanes each */
static MLL_TARGET double FN(sum)(const float *x, int64_t n) {
    VD s0 = vd_zero(), s1 = vd_zero();
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        s0 = vd_add(s0, v_load(x + i));
        s1 = vd_add(s1, v_load(x + i + VL));
    }
    if (i + VL <= n) {
        s0 = vd_add(s0, v_load(x + i));
        i += VL;
    }
    if (i < n) s1 = vd_add(s1, v_loadn(x + i, n - i));
    return vd_hsum(vd_merge(s0, s1));
}

/* sum of squares in double (x^2 is exact in double) */
static MLL_TARGET double FN(sumsq)(const float *x, int64_t n) {
    VD s0 = vd_zero(), s1 = vd_zero();
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        V a = v_load(x + i), b = v_load(x + i + VL);
        s0 = vd_fmadd(s0, a, a);
        s1 = vd_fmadd(s1, b, b);
    }
    if (i + VL <= n) {
        V a = v_load(x + i);
        s0 = vd_fmadd(s0, a, a);
        i += VL;
    }
    if (i < n) {
        V a = v_loadn(x + i, n - i);
        s1 = vd_fmadd(s1, a, a);
    }
    return vd_hsum(vd_merge(s0, s1));
}

/* max of a run (n >= 1); any NaN makes it NaN, as in NumPy */
static MLL_TARGET float FN(max)(const float *x, int64_t n) {
    V ninf = v_set1(-INFINITY), m0 = ninf, m1 = ninf;
    VM nan = v_isnan(v_zero());
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        V a = v_load(x + i), b = v_load(x + i + VL);
        m0 = v_max(m0, a);
        m1 = v_max(m1, b);
        nan = m_or(nan, m_or(v_isnan(a), v_isnan(b)));
    }
    for (; i < n; i += VL) {
        V a = i + VL <= n ? v_load(x + i) : v_loadn_fill(x + i, n - i, ninf);
        m0 = v_max(m0, a);
        nan = m_or(nan, v_isnan(a));
    }
    if (m_any(nan)) return NAN;
    return v_hmax(v_max(m0, m1));
}

/* index of the first max of a run (n >= 1): the max first (any NaN: the generic scan finds
 * the first NaN), then the first lane equal to it */
static MLL_TARGET int64_t FN(argmax)(const float *x, int64_t n) {
    float m = FN(max)(x, n);
    if (m != m) return argmax_generic(x, n);
    V vm = v_set1(m);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        VM e = v_eq(v_load(x + i), vm);
        if (m_any(e)) return i + m_first(e);
    }
    for (; i < n; i++)
        if (x[i] == m) return i;
    return 0; /* not reached: m is one of the elements */
}

/* out[0 .. w) = column sums of x (rows, cols) restricted to w <= 64 columns from x, in
 * double: all w columns of a row at once (one contiguous run), rows in order */
static MLL_TARGET void FN(sum_cols)(const float *x, float *out, int64_t rows, int64_t cols, int64_t w) {
    VD acc[64 / VL];
    int64_t full = w / VL, rem = w % VL;
    for (int64_t k = 0; k <= full && k < 64 / VL; k++) acc[k] = vd_zero();
    for (int64_t r = 0; r < rows; r++) {
        const float *p = x + r * cols;
        for (int64_t k = 0; k < full; k++) acc[k] = vd_add(acc[k], v_load(p + k * VL));
        if (rem) acc[full] = vd_add(acc[full], v_loadn(p + full * VL, rem));
    }
    for (int64_t k = 0; k * VL < w; k++) {
        double lanes[VL];
        memcpy(lanes, &acc[k].lo, sizeof(acc[k].lo));
        memcpy(lanes + VL / 2, &acc[k].hi, sizeof(acc[k].hi));
        for (int64_t t = 0; t < VL && k * VL + t < w; t++) out[k * VL + t] = (float)lanes[t];
    }
}

#endif /* MLL_VEC */
