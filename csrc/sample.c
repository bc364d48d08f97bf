/* sample.c: next-token sampling over rows of logits: top-k and top-p (nucleus) filtering,
 * and one categorical draw per row from given uniforms.
 *
 * Inference only (no backward). Rows are independent and each is done whole by the calling
 * thread, so results never depend on the thread count. Ties between equal logits are broken
 * by the smaller token id, so every filter keeps a well-defined set.
 */
#include <math.h>
#include <stdlib.h>

#include "minillm.h"

/* A token and its logit; `ranks_above(a, b)`: a comes before b in the order
 * (larger logit first, then smaller id), a strict total order on a row. */
typedef struct {
    float v;
    int64_t id;
} scored;

static inline int ranks_above(scored a, scored b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

static inline void swap_scored(scored *a, scored *b) {
    scored t = *a;
    *a = *b;
    *b = t;
}

/* Partitions s[0, n) (n >= 1) around the median of its first, middle and last entries:
 * returns g with s[0, g) ranked above s[g] and s(g, n) ranked below it. */
static int64_t partition(scored *s, int64_t n) {
    int64_t mid = n / 2, last = n - 1;
    /* median of three moved to the end (deterministic, no RNG) */
    if (ranks_above(s[mid], s[0])) swap_scored(&s[mid], &s[0]);
    if (ranks_above(s[last], s[0])) swap_scored(&s[last], &s[0]);
    if (ranks_above(s[mid], s[last])) swap_scored(&s[mid], &s[last]);
    scored pivot = s[last];
    int64_t g = 0;
    for (int64_t i = 0; i < last; i++)
        if (ranks_above(s[i], pivot)) swap_scored(&s[i], &s[g++]);
    swap_scored(&s[g], &s[last]);
    return g;
}

/* Reorders s[0, n) so that its first k entries are the k ranked highest (in any order). */
static void select_top(scored *s, int64_t n, int64_t k) {
    while (n > 1 && k > 0 && k < n) {
        int64_t g = partition(s, n);
        if (g == k || g + 1 == k) return;
        if (g > k) {
            n = g;
        } else {
            s += g + 1;
            n -= g + 1;
            k -= g + 1;
        }
    }
}

static scored *load_row(const float *x, int64_t V, scored *buf) {
    for (int64_t i = 0; i < V; i++) {
        buf[i].v = x[i];
        buf[i].id = i;
    }
    return buf;
}

/* Writes -inf over x (V) except at the ids of keep[0, n). */
static void keep_only(float *x, int64_t V, const scored *keep, int64_t n) {
    for (int64_t i = 0; i < V; i++) x[i] = -INFINITY;
    for (int64_t i = 0; i < n; i++) x[keep[i].id] = keep[i].v;
}

int mll_top_k_mask(float *x, int64_t rows, int64_t V, int64_t k) {
    if (k >= V || rows <= 0) return 0;
    scored *buf = mll_alloc((size_t)V * sizeof(scored));
    if (!buf) return -1;
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * V;
        scored *s = load_row(row, V, buf);
        select_top(s, V, k);
        keep_only(row, V, s, k);
    }
    mll_free(buf, (size_t)V * sizeof(scored));
    return 0;
}

/* The nucleus of one row: the fewest tokens, taken most likely first, whose softmax mass
 * reaches p. Found by quickselect on the mass instead of a full sort: O(V) expected.
 * mass(i) = exp(x_i - max); the target is p * sum of all masses. Returns the count, with
 * those tokens in s[0, count). */
static int64_t nucleus(scored *s, int64_t V, double p) {
    float m = -INFINITY;
    for (int64_t i = 0; i < V; i++) m = s[i].v > m ? s[i].v : m;
    if (m == -INFINITY) return V;  /* nothing finite: leave the row as it is */
    double total = 0.0;
    for (int64_t i = 0; i < V; i++) total += exp((double)s[i].v - m);
    double need = p * total, kept = 0.0;
    int64_t lo = 0, hi = V;  /* s[0, lo) kept; s[lo, hi) undecided; s[hi, V) dropped */
    while (lo < hi) {
        int64_t g = lo + partition(s + lo, hi - lo);
        double above = 0.0;
        for (int64_t i = lo; i < g; i++) above += exp((double)s[i].v - m);
        if (kept + above >= need) {
            hi = g;  /* the cut falls among the tokens ranked above the pivot */
        } else {
            kept += above + exp((double)s[g].v - m);
            lo = g + 1;
            if (kept >= need) return lo;  /* the pivot is the last token needed */
        }
    }
    return lo;
}

int mll_top_p_mask(float *x, int64_t rows, int64_t V, float p) {
    if (p >= 1.0f || rows <= 0) return 0;
    scored *buf = mll_alloc((size_t)V * sizeof(scored));
    if (!buf) return -1;
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * V;
        scored *s = load_row(row, V, buf);
        int64_t n = nucleus(s, V, p);
        if (n < 1) n = 1;
        keep_only(row, V, s, n);
    }
    mll_free(buf, (size_t)V * sizeof(scored));
    return 0;
}

void mll_sample_rows(const float *x, const float *u, int64_t *out, int64_t rows, int64_t V) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * V;
        float m = -INFINITY;
        int64_t best = 0;
        for (int64_t i = 0; i < V; i++)
            if (row[i] > m) {
                m = row[i];
                best = i;
            }
        if (m == -INFINITY || m != m) {  /* no finite logit: nothing to draw from */
            out[r] = best;
            continue;
        }
        double total = 0.0;
        for (int64_t i = 0; i < V; i++) total += exp((double)row[i] - m);
        /* inverse CDF: the first token whose running mass exceeds u * total */
        double target = (double)u[r] * total, acc = 0.0;
        int64_t pick = -1, last = best;
        for (int64_t i = 0; i < V; i++) {
            double w = exp((double)row[i] - m);
            if (w <= 0.0) continue;
            last = i;
            acc += w;
            if (acc > target) {
                pick = i;
                break;
            }
        }
        out[r] = pick >= 0 ? pick : last;  /* rounding left target unreached: the last live token */
    }
}
