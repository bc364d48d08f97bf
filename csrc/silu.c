/* silu.c: the gated SiLU product of a SwiGLU MLP (Shazeer, 2020, "GLU Variants Improve
 * Transformer"), as the Llama family computes it:
 *
 *   y = silu(g) * u,   silu(g) = g * sigmoid(g) = g / (1 + exp(-g))
 *
 * with g = x W_gate^T and u = x W_up^T (gemv.c applies it to each pass of rows it computes).
 * Backward, with s = sigmoid(g):
 *
 *   du = dy silu(g),   dg = dy u s (1 + g (1 - s))
 *
 * Elementwise, so the result never depends on the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

static void silu_mul_generic(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] * mll_sigmoidf(g[i]) * u[i];
}

static inline __attribute__((always_inline)) void silu_mul_backward_body(const float *g, const float *u,
                                                                         const float *dy, float *dg, float *du,
                                                                         int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i])), d = dy[i];
        float dgi = d * u[i] * s * (1.0f + g[i] * (1.0f - s));
        du[i] = d * g[i] * s;
        dg[i] = dgi;
    }
}

static void silu_mul_backward_generic(const float *g, const float *u, const float *dy, float *dg, float *du,
                                      int64_t n) {
    silu_mul_backward_body(g, u, dy, dg, du, n);
}

#define MLL_DISPATCH_SELF "silu.c"
#include "dispatch.h"   /* the bottom half, once per ISA */

typedef void (*silu_mul_fn)(const float *, const float *, float *, int64_t);

/* g, u, y: (n); y may be g or u (in place) */
void mll_silu_mul_forward(const float *g, const float *u, float *y, int64_t n) {
    silu_mul_fn f = MLL_PICK(silu_mul);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(g + i0, u + i0, y + i0, len));
}

typedef void (*silu_mul_backward_fn)(const float *, const float *, const float *, float *, float *, int64_t);

/* g, u, dy, dg, du: (n); dg, du written (not accumulated), distinct from g, u and dy */
void mll_silu_mul_backward(const float *g, const float *u, const float *dy, float *dg, float *du, int64_t n) {
    silu_mul_backward_fn f = MLL_PICK(silu_mul_backward);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(g + i0, u + i0, dy + i0, dg + i0, du + i0, len));
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(silu_mul)(const float *g, const float *u, float *y, int64_t n) {
    VLOOP2(g, u, y, v_mul(v_mul(va, v_sigmoid(va)), vb));
}

static MLL_TARGET void FN(silu_mul_backward)(const float *g, const float *u, const float *dy, float *dg,
                                                 float *du, int64_t n) {
    silu_mul_backward_body(g, u, dy, dg, du, n);
}

#endif /* MLL_VEC */
