/* simd.h: helpers shared by the kernel files (internal; not part of the C API).
 *
 *  - when to go parallel, and a fixed-chunk parallel loop;
 *  - target attributes for the AVX2+FMA and AVX-512 paths;
 *  - the vector vocabulary (V, VL, v_load, v_exp, ...) that a kernel file's SIMD half is
 *    written on, mapped to AVX2 or AVX-512 for each pass of dispatch.h (which explains the
 *    pattern: how a kernel gets one version per instruction set and how one is picked);
 *  - vector exp / expm1 / log / tanh / sigmoid for each ISA, a few ulp from the
 *    correctly rounded result, with inf, NaN, overflow and underflow handled;
 *  - horizontal sums and masked tail loads.
 */
#ifndef MLL_SIMD_H
#define MLL_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "minillm.h"

/* MLL_NO_SIMD builds the portable path only, as a non-x86 compiler does (for checking that) */
#if defined(__x86_64__) && !defined(MLL_NO_SIMD)
#define MLL_X86 1
#include <immintrin.h>
#define MLL_AVX2 __attribute__((target("avx2,fma")))
#define MLL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
/* AVX2 without FMA, for code that must round exactly as the generic build does (rng.c):
 * with FMA the compiler may fuse a multiply and an add into one rounding */
#define MLL_AVX2_NO_FMA __attribute__((target("avx2")))
/* AVX-512 plus the bf16 dot product (gemm_bf16.c, behind mll_cpu_has_avx512bf16()) */
#define MLL_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")))
/* AVX-512 plus the int8 dot product (gemv.c, behind mll_vnni_active()) */
#define MLL_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512vnni")))
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

/* Portable dot product of n floats, accumulated in double over four lanes (the generic
 * path of blas1.c's dot and of reduce.c's sum of squares, x == y). */
static inline double mll_dot_f64(const float *x, const float *y, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * y[i];
        s1 += (double)x[i + 1] * y[i + 1];
        s2 += (double)x[i + 2] * y[i + 2];
        s3 += (double)x[i + 3] * y[i + 3];
    }
    for (; i < n; i++) s0 += (double)x[i] * y[i];
    return (s0 + s1) + (s2 + s3);
}

#ifdef MLL_X86
/* b (8, 8), row stride ldb  <-  a (8, 8)^T, row stride lda, in registers (AVX2; inlined into
 * the AVX2 and AVX-512 paths of blas1's transpose and attention's K^T / V^T): unpack pairs of
 * rows, shuffle pairs of pairs, then swap 128-bit halves. */
static inline MLL_AVX2 void mll_transpose8x8(const float *a, int64_t lda, float *b, int64_t ldb) {
    __m256 r0 = _mm256_loadu_ps(a), r1 = _mm256_loadu_ps(a + lda);
    __m256 r2 = _mm256_loadu_ps(a + 2 * lda), r3 = _mm256_loadu_ps(a + 3 * lda);
    __m256 r4 = _mm256_loadu_ps(a + 4 * lda), r5 = _mm256_loadu_ps(a + 5 * lda);
    __m256 r6 = _mm256_loadu_ps(a + 6 * lda), r7 = _mm256_loadu_ps(a + 7 * lda);
    /* t0 = r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5], and so on */
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    /* u0 = column 0 of rows 0-3 | column 4 of rows 0-3, and so on */
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    _mm256_storeu_ps(b, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(b + ldb, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(b + 2 * ldb, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(b + 3 * ldb, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(b + 4 * ldb, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(b + 5 * ldb, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(b + 6 * ldb, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(b + 7 * ldb, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/* Runs the statement for consecutive pieces [i0, i0 + len) of [0, n), in parallel when n is big.
 * Pieces are fixed-size chunks, so the result never depends on the thread count. */
#define MLL_PARALLEL_CHUNKS(n, i0, len, ...)                                                       \
    do {                                                                                           \
        int64_t n_ = (n);                                                                          \
        int nt_ = mll_threads_for(n_);                                                             \
        if (nt_ <= 1) {                                                                            \
            int64_t i0 = 0, len = n_;                                                              \
            __VA_ARGS__;                                                                           \
        } else {                                                                                   \
            int64_t nch_ = (n_ + MLL_CHUNK - 1) / MLL_CHUNK;                                       \
            _Pragma("omp parallel for num_threads(nt_) schedule(dynamic)")                         \
            for (int64_t c_ = 0; c_ < nch_; c_++) {                                                \
                int64_t i0 = c_ * MLL_CHUNK, len = mll_min64(MLL_CHUNK, n_ - i0);                  \
                __VA_ARGS__;                                                                       \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* Runs the statement for each row r in [0, rows), in parallel when rows * cols is big. Each row is
 * done whole by one thread, so per-row results never depend on the thread count.
 *
 * Both macros hand out work dynamically (chunks of ~MLL_CHUNK elements): on a busy machine a
 * thread that starts late finds the work already taken instead of holding up the others
 * with its fixed share. Which thread does a chunk never changes what it computes. */
#define MLL_PARALLEL_ROWS(rows, cols, r, ...)                                                      \
    do {                                                                                           \
        int64_t rows_ = (rows);                                                                    \
        int nt_ = rows_ > 1 ? mll_threads_for(rows_ * (int64_t)(cols)) : 1;                        \
        if (nt_ <= 1) {                                                                            \
            for (int64_t r = 0; r < rows_; r++) { __VA_ARGS__; }                                   \
        } else {                                                                                   \
            int64_t grain_ = MLL_CHUNK / (int64_t)(cols); /* cols >= 1 here */                      \
            if (grain_ < 1) grain_ = 1;                                                            \
            _Pragma("omp parallel for num_threads(nt_) schedule(dynamic, grain_)")                 \
            for (int64_t r = 0; r < rows_; r++) { __VA_ARGS__; }                                   \
        }                                                                                          \
    } while (0)

/* Blocked reduction: sets total (a double) to the sum over [0, n) of the double expression,
 * evaluated once for each block [i0, i0 + len) of MLL_RED_BLOCK elements, adding the block
 * sums in block order. Blocks are done in groups of MLL_RED_GROUP in parallel (their sums kept
 * in a stack array), so neither the thread count nor the ISA changes which numbers get added
 * in which order across blocks. */
#define MLL_RED_BLOCK 4096
#define MLL_RED_GROUP 256
#define MLL_BLOCKED_SUM(total, n, i0, len, ...)                                                    \
    do {                                                                                           \
        int64_t n_ = (n), nblocks_ = (n_ + MLL_RED_BLOCK - 1) / MLL_RED_BLOCK;                     \
        double part_[MLL_RED_GROUP];                                                               \
        int nt_ = mll_threads_for(n_);                                                             \
        (total) = 0.0;                                                                             \
        for (int64_t g0_ = 0; g0_ < nblocks_; g0_ += MLL_RED_GROUP) {                              \
            int64_t gn_ = mll_min64(MLL_RED_GROUP, nblocks_ - g0_);                                \
            _Pragma("omp parallel for num_threads(nt_) schedule(dynamic) if (nt_ > 1)")            \
            for (int64_t k_ = 0; k_ < gn_; k_++) {                                                 \
                int64_t i0 = (g0_ + k_) * MLL_RED_BLOCK, len = mll_min64(MLL_RED_BLOCK, n_ - i0);  \
                part_[k_] = (__VA_ARGS__);                                                         \
            }                                                                                      \
            for (int64_t k_ = 0; k_ < gn_; k_++) (total) += part_[k_];                             \
        }                                                                                          \
    } while (0)

/* bfloat16 = the high 16 bits of a float32, rounded to nearest even; NaN stays a (quiet) NaN */
static inline uint16_t mll_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ------------------------------------------------------------ scalar math (generic) */
/* GELU, tanh form, written as x * sigmoid(2u) = x / (1 + exp(-2u)) with
 * u = sqrt(2/pi) (x + 0.044715 x^3): the same function as 0.5 x (1 + tanh(u)) but without
 * the cancellation of 1 + tanh(u) for negative x. */
#define MLL_GELU_C 0.7978845608028654f  /* sqrt(2/pi) */
#define MLL_GELU_K 0.044715f

static inline float mll_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* exp(-2u) in double: in float the rounding of u alone costs |2u| ulps of the result */
static inline double mll_gelu_expd(float x) {
    double xd = x;
    return exp(-2.0 * 0.7978845608028654 * xd * (1.0 + 0.044715 * xd * xd));
}

static inline float mll_geluf(float x) { return (float)((double)x / (1.0 + mll_gelu_expd(x))); }

/* d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
static inline float mll_gelu_gradf(float x) {
    double xd = x, s = 1.0 / (1.0 + mll_gelu_expd(x));
    double du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * xd * xd);
    return (float)(s + 2.0 * xd * s * (1.0 - s) * du);
}

#endif /* MLL_SIMD_H */

/* =======================================================================================
 * The vector vocabulary, for the SIMD half of a kernel file (dispatch.h). Each time this
 * header is included with MLL_VEC set, it maps the names below to that ISA, dropping the
 * previous pass's mapping first (included again in the same pass, it does nothing);
 * included with MLL_VEC unset after a pass, it only drops them, so the rest of the file sees
 * none of them. This part sits outside the include guard on purpose.
 *
 *   MLL_VEC 256: AVX2+FMA, V = __m256, VL = 8;  MLL_VEC 512: AVX-512, V = __m512, VL = 16
 *   FN(name)       name_avx2 or name_avx512: the name of this pass's version of a kernel
 *   MLL_TARGET     this pass's target attribute (MLL_AVX2 or MLL_AVX512)
 *   V, VL          float vector and its lane count;  VM a lane mask;  VI int32 vector
 *   v_loadn/v_storen(p, n)   partial load (zeros past n) / store of the first n < VL lanes
 *   VD             a VL-lane accumulator in double (two double vectors)
 *   v_exp, v_log, v_tanh, v_sigmoid, v_gelu, v_gelu_grad   vector math (see below)
 *   VLOOP1, VLOOP2 a whole-array loop over one or two inputs, the tail masked
 * ======================================================================================= */
#if defined(MLL_VEC_MAPPED) && !(defined(MLL_VEC) && MLL_VEC == MLL_VEC_MAPPED)
#undef MLL_VEC_MAPPED
#undef MLL_CAT2
#undef MLL_CAT
#undef FN
#undef MLL_TARGET
#undef MLL_SUFFIX
#undef V
#undef VI
#undef VM
#undef VL
#undef VD
#undef v_load
#undef v_store
#undef v_set1
#undef v_zero
#undef v_add
#undef v_sub
#undef v_mul
#undef v_div
#undef v_fmadd
#undef v_fnmadd
#undef v_max
#undef v_min
#undef v_sqrt
#undef v_round
#undef v_lt
#undef v_le
#undef v_gt
#undef v_eq
#undef v_isnan
#undef m_or
#undef m_any
#undef m_first
#undef v_select
#undef v_as_i
#undef i_as_v
#undef vi_cvt
#undef vi_tof
#undef vi_set1
#undef vi_add
#undef vi_sub
#undef vi_and
#undef vi_or
#undef vi_slli
#undef vi_srai
#undef vi_srli
#undef v_loadn
#undef v_loadn_fill
#undef v_storen
#undef v_keepn
#undef v_hsum
#undef v_hmax
#undef vd_zero
#undef vd_add
#undef vd_fmadd
#undef vd_merge
#undef vd_hsum
#undef v_exp
#undef v_log
#undef v_tanh
#undef v_sigmoid
#undef v_gelu
#undef v_gelu_grad
#undef v_abs
#undef v_dot_f64
#undef VLOOP1
#undef VLOOP2
#endif

#if defined(MLL_X86) && defined(MLL_VEC) && !defined(MLL_VEC_MAPPED)
#if MLL_VEC == 512
#define MLL_VEC_MAPPED 512
#else
#define MLL_VEC_MAPPED 256
#endif

#define MLL_CAT2(a, b) a##b
#define MLL_CAT(a, b) MLL_CAT2(a, b)
#define FN(name) MLL_CAT(name, MLL_SUFFIX)

#if MLL_VEC == 512
#define MLL_TARGET MLL_AVX512
#define MLL_SUFFIX _avx512
#define V __m512
#define VI __m512i
#define VM __mmask16
#define VL 16
#define v_load(p) _mm512_loadu_ps(p)
#define v_store(p, v) _mm512_storeu_ps(p, v)
#define v_set1(f) _mm512_set1_ps(f)
#define v_zero() _mm512_setzero_ps()
#define v_add(a, b) _mm512_add_ps(a, b)
#define v_sub(a, b) _mm512_sub_ps(a, b)
#define v_mul(a, b) _mm512_mul_ps(a, b)
#define v_div(a, b) _mm512_div_ps(a, b)
#define v_fmadd(a, b, c) _mm512_fmadd_ps(a, b, c)   /* a b + c */
#define v_fnmadd(a, b, c) _mm512_fnmadd_ps(a, b, c) /* c - a b */
#define v_max(a, b) _mm512_max_ps(a, b)
#define v_min(a, b) _mm512_min_ps(a, b)
#define v_sqrt(a) _mm512_sqrt_ps(a)
#define v_round(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define v_lt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)
#define v_le(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ)
#define v_gt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)
#define v_eq(a, b) _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)
#define v_isnan(a) _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q)
#define m_or(a, b) ((__mmask16)((a) | (b)))
#define m_any(m) ((m) != 0)
#define m_first(m) __builtin_ctz((unsigned)(m)) /* lowest set lane; m != 0 */
#define v_select(m, a, b) _mm512_mask_blend_ps(m, a, b) /* lanes of b where m, else a */
#define v_as_i(v) _mm512_castps_si512(v)
#define i_as_v(v) _mm512_castsi512_ps(v)
#define vi_cvt(v) _mm512_cvtps_epi32(v)
#define vi_tof(v) _mm512_cvtepi32_ps(v)
#define vi_set1(k) _mm512_set1_epi32(k)
#define vi_add(a, b) _mm512_add_epi32(a, b)
#define vi_sub(a, b) _mm512_sub_epi32(a, b)
#define vi_and(a, b) _mm512_and_si512(a, b)
#define vi_or(a, b) _mm512_or_si512(a, b)
#define vi_slli(a, k) _mm512_slli_epi32(a, k)
#define vi_srai(a, k) _mm512_srai_epi32(a, k)
#define vi_srli(a, k) _mm512_srli_epi32(a, k)

static inline MLL_TARGET __mmask16 FN(mll_tail_mask)(int64_t n) { return (__mmask16)((1u << n) - 1u); }
/* the first n (< VL) lanes of p, zeros after */
static inline MLL_TARGET V FN(vec_loadn)(const float *p, int64_t n) {
    return _mm512_maskz_loadu_ps(FN(mll_tail_mask)(n), p);
}
/* the first n lanes of p, `fill` after */
static inline MLL_TARGET V FN(vec_loadn_fill)(const float *p, int64_t n, V fill) {
    return _mm512_mask_loadu_ps(fill, FN(mll_tail_mask)(n), p);
}
static inline MLL_TARGET void FN(vec_storen)(float *p, V v, int64_t n) {
    _mm512_mask_storeu_ps(p, FN(mll_tail_mask)(n), v);
}
/* v with lanes n.. zeroed */
static inline MLL_TARGET V FN(vec_keepn)(V v, int64_t n) { return _mm512_maskz_mov_ps(FN(mll_tail_mask)(n), v); }
/* VL stored bf16 values at p widened to float32 (the upper half of a float32's bits); the
 * first n (< VL) of them, zeros after */
static inline MLL_TARGET V FN(vec_load_bf16)(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline MLL_TARGET V FN(vec_loadn_bf16)(const uint16_t *p, int64_t n) {
    __m256i u = _mm256_maskz_loadu_epi16(FN(mll_tail_mask)(n), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(u), 16));
}
static inline MLL_TARGET float FN(vec_hsum)(V v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
static inline MLL_TARGET float FN(vec_hmax)(V v) {
    __m256 s = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
typedef struct { __m512d lo, hi; } FN(vecd_t);
#define VD FN(vecd_t)
static inline MLL_TARGET VD FN(vecd_zero)(void) { VD r = {_mm512_setzero_pd(), _mm512_setzero_pd()}; return r; }
/* acc += v, widened to double */
static inline MLL_TARGET VD FN(vecd_add)(VD acc, V v) {
    acc.lo = _mm512_add_pd(acc.lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    acc.hi = _mm512_add_pd(acc.hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
    return acc;
}
/* acc += a b, the product formed exactly in double */
static inline MLL_TARGET VD FN(vecd_fmadd)(VD acc, V a, V b) {
    __m512d al = _mm512_cvtps_pd(_mm512_castps512_ps256(a)), ah = _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1));
    __m512d bl = _mm512_cvtps_pd(_mm512_castps512_ps256(b)), bh = _mm512_cvtps_pd(_mm512_extractf32x8_ps(b, 1));
    acc.lo = _mm512_fmadd_pd(al, bl, acc.lo);
    acc.hi = _mm512_fmadd_pd(ah, bh, acc.hi);
    return acc;
}
static inline MLL_TARGET VD FN(vecd_merge)(VD a, VD b) {
    a.lo = _mm512_add_pd(a.lo, b.lo);
    a.hi = _mm512_add_pd(a.hi, b.hi);
    return a;
}
static inline MLL_TARGET double FN(vecd_hsum)(VD a) {
    __m512d s = _mm512_add_pd(a.lo, a.hi);
    __m256d t = _mm256_add_pd(_mm512_castpd512_pd256(s), _mm512_extractf64x4_pd(s, 1));
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
/* 2^n for integer-valued n in [-152, 128], rounded once: scalef does it in one step */
static inline MLL_TARGET V FN(vec_scale2)(V p, V n) { return _mm512_scalef_ps(p, n); }

#else /* MLL_VEC == 256 */
#define MLL_TARGET MLL_AVX2
#define MLL_SUFFIX _avx2
#define V __m256
#define VI __m256i
#define VM __m256
#define VL 8
#define v_load(p) _mm256_loadu_ps(p)
#define v_store(p, v) _mm256_storeu_ps(p, v)
#define v_set1(f) _mm256_set1_ps(f)
#define v_zero() _mm256_setzero_ps()
#define v_add(a, b) _mm256_add_ps(a, b)
#define v_sub(a, b) _mm256_sub_ps(a, b)
#define v_mul(a, b) _mm256_mul_ps(a, b)
#define v_div(a, b) _mm256_div_ps(a, b)
#define v_fmadd(a, b, c) _mm256_fmadd_ps(a, b, c)
#define v_fnmadd(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define v_max(a, b) _mm256_max_ps(a, b)
#define v_min(a, b) _mm256_min_ps(a, b)
#define v_sqrt(a) _mm256_sqrt_ps(a)
#define v_round(a) _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define v_lt(a, b) _mm256_cmp_ps(a, b, _CMP_LT_OQ)
#define v_le(a, b) _mm256_cmp_ps(a, b, _CMP_LE_OQ)
#define v_gt(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define v_eq(a, b) _mm256_cmp_ps(a, b, _CMP_EQ_OQ)
#define v_isnan(a) _mm256_cmp_ps(a, a, _CMP_UNORD_Q)
#define m_or(a, b) _mm256_or_ps(a, b)
#define m_any(m) (_mm256_movemask_ps(m) != 0)
#define m_first(m) __builtin_ctz((unsigned)_mm256_movemask_ps(m))
#define v_select(m, a, b) _mm256_blendv_ps(a, b, m)
#define v_as_i(v) _mm256_castps_si256(v)
#define i_as_v(v) _mm256_castsi256_ps(v)
#define vi_cvt(v) _mm256_cvtps_epi32(v)
#define vi_tof(v) _mm256_cvtepi32_ps(v)
#define vi_set1(k) _mm256_set1_epi32(k)
#define vi_add(a, b) _mm256_add_epi32(a, b)
#define vi_sub(a, b) _mm256_sub_epi32(a, b)
#define vi_and(a, b) _mm256_and_si256(a, b)
#define vi_or(a, b) _mm256_or_si256(a, b)
#define vi_slli(a, k) _mm256_slli_epi32(a, k)
#define vi_srai(a, k) _mm256_srai_epi32(a, k)
#define vi_srli(a, k) _mm256_srli_epi32(a, k)

static inline MLL_TARGET __m256i FN(mll_tail_mask)(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline MLL_TARGET V FN(vec_loadn)(const float *p, int64_t n) {
    return _mm256_maskload_ps(p, FN(mll_tail_mask)(n));
}
static inline MLL_TARGET V FN(vec_loadn_fill)(const float *p, int64_t n, V fill) {
    __m256i m = FN(mll_tail_mask)(n);
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
static inline MLL_TARGET void FN(vec_storen)(float *p, V v, int64_t n) {
    _mm256_maskstore_ps(p, FN(mll_tail_mask)(n), v);
}
static inline MLL_TARGET V FN(vec_keepn)(V v, int64_t n) {
    return _mm256_and_ps(v, _mm256_castsi256_ps(FN(mll_tail_mask)(n)));
}
static inline MLL_TARGET V FN(vec_load_bf16)(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline MLL_TARGET V FN(vec_loadn_bf16)(const uint16_t *p, int64_t n) {
    uint16_t t[VL] = {0};
    memcpy(t, p, (size_t)n * sizeof(uint16_t));
    return FN(vec_load_bf16)(t);
}
static inline MLL_TARGET float FN(vec_hsum)(V v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
static inline MLL_TARGET float FN(vec_hmax)(V v) {
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
typedef struct { __m256d lo, hi; } FN(vecd_t);
#define VD FN(vecd_t)
static inline MLL_TARGET VD FN(vecd_zero)(void) { VD r = {_mm256_setzero_pd(), _mm256_setzero_pd()}; return r; }
static inline MLL_TARGET VD FN(vecd_add)(VD acc, V v) {
    acc.lo = _mm256_add_pd(acc.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    acc.hi = _mm256_add_pd(acc.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return acc;
}
static inline MLL_TARGET VD FN(vecd_fmadd)(VD acc, V a, V b) {
    __m256d al = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), ah = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
    __m256d bl = _mm256_cvtps_pd(_mm256_castps256_ps128(b)), bh = _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1));
    acc.lo = _mm256_fmadd_pd(al, bl, acc.lo);
    acc.hi = _mm256_fmadd_pd(ah, bh, acc.hi);
    return acc;
}
static inline MLL_TARGET VD FN(vecd_merge)(VD a, VD b) {
    a.lo = _mm256_add_pd(a.lo, b.lo);
    a.hi = _mm256_add_pd(a.hi, b.hi);
    return a;
}
static inline MLL_TARGET double FN(vecd_hsum)(VD a) {
    __m256d s = _mm256_add_pd(a.lo, a.hi);
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
/* p 2^n for integer-valued n in [-152, 128]: two exact-range factors 2^(n/2) and
 * 2^(n - n/2), so the result (also a subnormal one) is rounded once, by the last multiply */
static inline MLL_TARGET V FN(vec_scale2)(V p, V n) {
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    V s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    V s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}
#endif

#define v_loadn FN(vec_loadn)
#define v_load_bf16 FN(vec_load_bf16)
#define v_loadn_bf16 FN(vec_loadn_bf16)
#define v_loadn_fill FN(vec_loadn_fill)
#define v_storen FN(vec_storen)
#define v_keepn FN(vec_keepn)
#define v_hsum FN(vec_hsum)
#define v_hmax FN(vec_hmax)
#define vd_zero FN(vecd_zero)
#define vd_add FN(vecd_add)
#define vd_fmadd FN(vecd_fmadd)
#define vd_merge FN(vecd_merge)
#define vd_hsum FN(vecd_hsum)
#define v_exp FN(vec_exp)
#define v_log FN(vec_log)
#define v_tanh FN(vec_tanh)
#define v_sigmoid FN(vec_sigmoid)
#define v_gelu FN(vec_gelu)
#define v_gelu_grad FN(vec_gelu_grad)
#define v_abs FN(vec_abs)

/* dot product of n floats, products exact in double, two interleaved accumulators (blas1.c's
 * dot blocks, attention.c's rowsum(dO * O)) */
static inline MLL_TARGET double FN(vec_dot_f64)(const float *x, const float *y, int64_t n) {
    VD s0 = vd_zero(), s1 = vd_zero();
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        s0 = vd_fmadd(s0, v_load(x + i), v_load(y + i));
        s1 = vd_fmadd(s1, v_load(x + i + VL), v_load(y + i + VL));
    }
    if (i + VL <= n) {
        s0 = vd_fmadd(s0, v_load(x + i), v_load(y + i));
        i += VL;
    }
    if (i < n) s1 = vd_fmadd(s1, v_loadn(x + i, n - i), v_loadn(y + i, n - i));
    return vd_hsum(vd_merge(s0, s1));
}
#define v_dot_f64 FN(vec_dot_f64)

/* For i over [0, n) in vector steps: out[i..] = EXPR over the vector(s) loaded from the inputs; the last partial vector is
 * loaded and stored with masks, so element i's result never depends on where it sits */
#define VLOOP1(x, out, EXPR)                                                                       \
    do {                                                                                           \
        int64_t i = 0;                                                                             \
        for (; i + VL <= n; i += VL) {                                                             \
            V v = v_load(x + i);                                                                   \
            v_store(out + i, EXPR);                                                                \
        }                                                                                          \
        if (i < n) {                                                                               \
            V v = v_loadn(x + i, n - i);                                                           \
            v_storen(out + i, EXPR, n - i);                                                        \
        }                                                                                          \
    } while (0)

#define VLOOP2(x, y, out, EXPR)                                                                    \
    do {                                                                                           \
        int64_t i = 0;                                                                             \
        for (; i + VL <= n; i += VL) {                                                             \
            V va = v_load(x + i), vb = v_load(y + i);                                              \
            v_store(out + i, EXPR);                                                                \
        }                                                                                          \
        if (i < n) {                                                                               \
            V va = v_loadn(x + i, n - i), vb = v_loadn(y + i, n - i);                              \
            v_storen(out + i, EXPR, n - i);                                                        \
        }                                                                                          \
    } while (0)

/* ---- vector math, written once for both ISAs ---- */
static inline MLL_TARGET V FN(vec_abs)(V x) { return i_as_v(vi_and(v_as_i(x), vi_set1(0x7fffffff))); }

/* exp(x) = 2^n exp(r), n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2] with ln2 split
 * in two (Cody & Waite) so r is exact to ~1e-11; exp(r) by its Taylor polynomial to r^7
 * (truncation < 6e-9 relative). x is clamped to [-105, 89]: beyond, the float result is
 * 0 or inf, which the final scaling produces by itself. NaN passes through. */
static inline MLL_TARGET V FN(vec_exp)(V x) {
    V xc = v_min(v_max(x, v_set1(-105.0f)), v_set1(89.0f));
    V n = v_round(v_mul(xc, v_set1(1.44269504088896341f)));
    V r = v_fnmadd(n, v_set1(0.693359375f), xc);        /* ln2 high part: 9 bits, n * it exact */
    r = v_fnmadd(n, v_set1(-2.12194440e-4f), r);          /* ln2 - 0.693359375 */
    V p = v_set1(1.0f / 5040);
    p = v_fmadd(p, r, v_set1(1.0f / 720));
    p = v_fmadd(p, r, v_set1(1.0f / 120));
    p = v_fmadd(p, r, v_set1(1.0f / 24));
    p = v_fmadd(p, r, v_set1(1.0f / 6));
    p = v_fmadd(p, r, v_set1(0.5f));
    p = v_fmadd(p, r, v_set1(1.0f));
    p = v_fmadd(p, r, v_set1(1.0f));
    V y = FN(vec_scale2)(p, n);
    return v_select(v_isnan(x), y, v_add(x, x));
}

/* log(x) = e ln2 + log(m), x = m 2^e with m in [sqrt(1/2), sqrt(2)). With f = m - 1 (exact)
 * and s = f / (2 + f):  log(1 + f) = 2 atanh(s) = 2s + s R,  R = 2(s^2/3 + s^4/5 + ...),
 * evaluated as f - s (f - R) (since 2s = f - s f), so the big term f is exact and only a
 * correction of size ~f^2/2 carries rounding. |s| <= 0.1716, the series to s^12 leaves
 * < 1e-12. Subnormals are scaled by 2^23 first; 0 -> -inf, x < 0 -> NaN, inf -> inf. */
static inline MLL_TARGET V FN(vec_log)(V x) {
    VM tiny = v_lt(x, v_set1(1.17549435e-38f));
    V xs = v_select(tiny, x, v_mul(x, v_set1(8388608.0f)));
    V eadj = v_select(tiny, v_zero(), v_set1(-23.0f));
    VI bits = v_as_i(xs);
    VI e = vi_sub(vi_srli(bits, 23), vi_set1(127));
    V m = i_as_v(vi_or(vi_and(bits, vi_set1(0x007fffff)), vi_set1(0x3f800000)));
    VM big = v_gt(m, v_set1(1.41421356f));
    m = v_select(big, m, v_mul(m, v_set1(0.5f)));
    V ef = v_add(v_add(vi_tof(e), eadj), v_select(big, v_zero(), v_set1(1.0f)));
    V f = v_sub(m, v_set1(1.0f));
    V s = v_div(f, v_add(f, v_set1(2.0f)));
    V z = v_mul(s, s);
    V R = v_set1(2.0f / 13);
    R = v_fmadd(R, z, v_set1(2.0f / 11));
    R = v_fmadd(R, z, v_set1(2.0f / 9));
    R = v_fmadd(R, z, v_set1(2.0f / 7));
    R = v_fmadd(R, z, v_set1(2.0f / 5));
    R = v_fmadd(R, z, v_set1(2.0f / 3));
    R = v_mul(R, z);
    V l1p = v_fnmadd(s, v_sub(f, R), f);
    V y = v_add(v_fmadd(ef, v_set1(-2.12194440e-4f), l1p), v_mul(ef, v_set1(0.693359375f)));
    y = v_select(v_eq(x, v_zero()), y, v_set1(-INFINITY));
    y = v_select(v_lt(x, v_zero()), y, v_set1(NAN));
    y = v_select(v_eq(x, v_set1(INFINITY)), y, x);
    return v_select(v_isnan(x), y, v_add(x, x));
}

/* tanh(x) = sign(x) em / (em + 2), em = expm1(2|x|) computed as 2^n q + (2^n - 1) with
 * q = expm1(r) by its Taylor polynomial to r^9, r = 2|x| - n ln2: no cancellation for small
 * |x|, where em = q. |x| >= 9 gives 1 in float; it is clamped there (so inf -> 1). */
static inline MLL_TARGET V FN(vec_tanh)(V x) {
    V a = v_min(v_abs(x), v_set1(9.0f));
    V y = v_add(a, a);
    V n = v_round(v_mul(y, v_set1(1.44269504088896341f)));
    V r = v_fnmadd(n, v_set1(0.693359375f), y);
    r = v_fnmadd(n, v_set1(-2.12194440e-4f), r);
    V p = v_set1(1.0f / 362880);
    p = v_fmadd(p, r, v_set1(1.0f / 40320));
    p = v_fmadd(p, r, v_set1(1.0f / 5040));
    p = v_fmadd(p, r, v_set1(1.0f / 720));
    p = v_fmadd(p, r, v_set1(1.0f / 120));
    p = v_fmadd(p, r, v_set1(1.0f / 24));
    p = v_fmadd(p, r, v_set1(1.0f / 6));
    p = v_fmadd(p, r, v_set1(0.5f));
    V q = v_fmadd(v_mul(r, r), p, r);
    V s = i_as_v(vi_slli(vi_add(vi_cvt(n), vi_set1(127)), 23));  /* 2^n, n in [0, 26] */
    V em = v_fmadd(s, q, v_sub(s, v_set1(1.0f)));
    V t = v_div(em, v_add(em, v_set1(2.0f)));
    t = i_as_v(vi_or(v_as_i(t), vi_and(v_as_i(x), vi_set1((int)0x80000000u))));
    return v_select(v_isnan(x), t, v_add(x, x));
}

/* 1 / (1 + exp(-x)): exp(-x) = inf for x << 0 gives 0, as it should */
static inline MLL_TARGET V FN(vec_sigmoid)(V x) {
    V e = v_exp(v_sub(v_zero(), x));
    return v_div(v_set1(1.0f), v_add(v_set1(1.0f), e));
}

/* exp(-2u), u = sqrt(2/pi) x (1 + 0.044715 x^2), to a few ulp. Rounding -2u to float
 * alone would cost |2u| ulps in the result (|2u| reaches 20 where GELU is still not 0), so
 * z = -2u is carried as z + zl (error-free products by FMA, both constants split in a
 * float pair), and exp(z + zl) = exp(z) (1 + zl). */
static inline MLL_TARGET V FN(vec_gelu_exp)(V x) {
    const V k = v_set1(MLL_GELU_K), k_lo = v_set1(1.5461445e-09f);           /* 0.044715 - k */
    const V c = v_set1(-1.59576917f), c_lo = v_set1(4.5340680e-08f);        /* -2 sqrt(2/pi) */
    const V one = v_set1(1.0f);
    V a = v_mul(x, x), a_lo = v_fmadd(x, x, v_mul(a, v_set1(-1.0f)));        /* x^2 = a + a_lo */
    V b = v_fmadd(k, a, one);                                                /* 1 + k x^2 */
    V b_lo = v_add(v_fmadd(k, a, v_sub(one, b)), v_fmadd(k, a_lo, v_mul(k_lo, a)));
    V t = v_mul(c, x), t_lo = v_fmadd(c_lo, x, v_fmadd(c, x, v_sub(v_zero(), t)));
    V z = v_mul(t, b);
    V z_lo = v_fmadd(t, b_lo, v_fmadd(t_lo, b, v_fmadd(t, b, v_sub(v_zero(), z))));
    V e = v_exp(z);
    /* e (1 + z_lo), unless e is inf (inf * z_lo may be -inf, then NaN) or x^2 overflowed
     * (z_lo is NaN; e is then 0 or inf, exact anyway) */
    return v_select(m_or(v_eq(e, v_set1(INFINITY)), v_isnan(z_lo)), v_fmadd(e, z_lo, e), e);
}

/* GELU, tanh form, as x / (1 + exp(-2u)) (see mll_geluf) */
static inline MLL_TARGET V FN(vec_gelu)(V x) {
    return v_div(x, v_add(v_set1(1.0f), FN(vec_gelu_exp)(x)));
}

/* d gelu / dx = s + 2 x s (1 - s) u',  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
static inline MLL_TARGET V FN(vec_gelu_grad)(V x) {
    V s = v_div(v_set1(1.0f), v_add(v_set1(1.0f), FN(vec_gelu_exp)(x)));
    V du = v_mul(v_set1(MLL_GELU_C), v_fmadd(v_set1(3.0f * MLL_GELU_K), v_mul(x, x), v_set1(1.0f)));
    V t = v_mul(v_mul(v_add(x, x), s), v_mul(v_sub(v_set1(1.0f), s), du));
    return v_add(s, t);
}

#endif /* MLL_X86 && MLL_VEC */
