/* silu.c: the gated SiLU product of a SwiGLU MLP (Shazeer, 2020, "GLU Variants Improve
 * Transformer"), as the Llama family computes it:
 *
 *   y = silu(g) * u,   silu(g) = g * sigmoid(g) = g / (1 + exp(-g))
 *
 * with g = x W_gate^T and u = x W_up^T (gemv.c applies it to each pass of rows it computes).
 * Elementwise, so the result never depends on the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

static void silu_mul_generic(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] * mll_sigmoidf(g[i]) * u[i];
}

/* SIMD paths: the second half of this file, compiled once per ISA (see simd.h) */
#ifdef MLL_X86
#define MLL_VEC 256
#include "simd.h"
#include "silu.c"
#undef MLL_VEC
#define MLL_VEC 512
#include "simd.h"
#include "silu.c"
#undef MLL_VEC
#endif

typedef void (*silu_mul_fn)(const float *, const float *, float *, int64_t);

static silu_mul_fn pick_silu_mul(void) {
    switch (mll_get_isa()) {
    MLL_PICK(silu_mul_vec)
    default: return silu_mul_generic;
    }
}

/* g, u, y: (n); y may be g or u (in place) */
void mll_silu_mul_forward(const float *g, const float *u, float *y, int64_t n) {
    silu_mul_fn f = pick_silu_mul();
    MLL_PARALLEL_CHUNKS(n, i0, len, f(g + i0, u + i0, y + i0, len));
}

#else /* MLL_VEC: the SIMD pass */

static MLL_TARGET void FN(silu_mul_vec)(const float *g, const float *u, float *y, int64_t n) {
    VLOOP2(g, u, y, v_mul(v_mul(va, v_sigmoid(va)), vb));
}

#endif /* MLL_VEC */
