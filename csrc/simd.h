/* simd.h: helpers shared by the kernel files (internal; not part of the C API).
 *
 *  - when to go parallel, and a fixed-chunk parallel loop;
 *  - target attributes for the AVX2+FMA and AVX-512 paths;
 *  - vector exp / expm1 / log / tanh / sigmoid for each ISA, a few ulp from the
 *    correctly rounded result, with inf, NaN, overflow and underflow handled;
 *  - horizontal sums and masked tail loads.
 *
 * Every kernel picks its path per call with mll_get_isa(), so set_isa() / MINILLM_ISA
 * take effect at once.
 */
#ifndef MLL_SIMD_H
#define MLL_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "minillm.h"

#if defined(__x86_64__)
#define MLL_X86 1
#include <immintrin.h>
#define MLL_AVX2 __attribute__((target("avx2,fma")))
#define MLL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#endif

/* Below this many elements a kernel runs on the calling thread: waking the OpenMP team
 * costs a few microseconds, more than the whole op. */
#define MLL_PAR_MIN 32768
/* Element-wise work is cut into chunks of this size (a multiple of every vector width,
 * so the chunk boundaries never change which elements go through a tail). */
#define MLL_CHUNK 16384

static inline int mll_threads_for(int64_t work) {
    if (work < MLL_PAR_MIN) return 1;
    return mll_get_num_threads();
}

static inline int64_t mll_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Runs the statement for consecutive pieces [i0, i0 + len) of [0, n), in parallel when n is big.
 * Pieces are fixed-size chunks, so the result never depends on the thread count. */
#define MLL_PARALLEL_CHUNKS(n, i0, len, ...)                                                    \
    do {                                                                                        \
        int64_t n_ = (n);                                                                       \
        int nt_ = mll_threads_for(n_);                                                          \
        if (nt_ <= 1) {                                                                         \
            int64_t i0 = 0, len = n_;                                                           \
            __VA_ARGS__;                                                                         \
        } else {                                                                                \
            int64_t nch_ = (n_ + MLL_CHUNK - 1) / MLL_CHUNK;                                    \
            _Pragma("omp parallel for num_threads(nt_) schedule(static)")                       \
            for (int64_t c_ = 0; c_ < nch_; c_++) {                                             \
                int64_t i0 = c_ * MLL_CHUNK, len = mll_min64(MLL_CHUNK, n_ - i0);               \
                __VA_ARGS__;                                                                     \
            }                                                                                   \
        }                                                                                       \
    } while (0)

/* Runs the statement for each row r in [0, rows), in parallel when rows * cols is big. Each row is
 * done whole by one thread, so per-row results never depend on the thread count. */
#define MLL_PARALLEL_ROWS(rows, cols, r, ...)                                                   \
    do {                                                                                        \
        int64_t rows_ = (rows);                                                                 \
        int nt_ = rows_ > 1 ? mll_threads_for(rows_ * (int64_t)(cols)) : 1;                     \
        if (nt_ <= 1) {                                                                         \
            for (int64_t r = 0; r < rows_; r++) { __VA_ARGS__; }                                       \
        } else {                                                                                \
            _Pragma("omp parallel for num_threads(nt_) schedule(static)")                       \
            for (int64_t r = 0; r < rows_; r++) { __VA_ARGS__; }                                       \
        }                                                                                       \
    } while (0)

/* ------------------------------------------------------------ scalar math (generic) */
/* GELU, tanh form, written as x * sigmoid(2u) = x / (1 + exp(-2u)) with
 * u = sqrt(2/pi) (x + 0.044715 x^3): the same function as 0.5 x (1 + tanh(u)) but without
 * the cancellation of 1 + tanh(u) for negative x. */
#define MLL_GELU_C 0.7978845608028654f  /* sqrt(2/pi) */
#define MLL_GELU_K 0.044715f

static inline float mll_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float mll_geluf(float x) {
    float u = MLL_GELU_C * (x + MLL_GELU_K * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

/* d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
static inline float mll_gelu_gradf(float x) {
    float u = MLL_GELU_C * (x + MLL_GELU_K * x * x * x);
    float s = 1.0f / (1.0f + expf(-2.0f * u));
    float du = MLL_GELU_C * (1.0f + 3.0f * MLL_GELU_K * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

#endif /* MLL_SIMD_H */
