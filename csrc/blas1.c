/* blas1.c: fill, copy, scale, axpy, dot; strided gather; cache-blocked transpose; dtype
 * casts; the finite check. */
#ifndef MLL_VEC
#include "simd.h"

/* ------------------------------------------------------------------ generic */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void scale_generic(float *x, float a, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] *= a;
}

static void axpy_generic(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* one block of the dot product, accumulated in double */
static double dot_generic(const float *x, const float *y, int64_t n) { return mll_dot_f64(x, y, n); }

/* one tile: b[j, i] = a[i, j] for i in [i0, i1), j in [j0, j1) */
static void transpose_tile_generic(const float *a, float *b, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                                   int64_t lda, int64_t ldb) {
    for (int64_t j = j0; j < j1; j++)
        for (int64_t i = i0; i < i1; i++) b[j * ldb + i] = a[i * lda + j];
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "blas1.c"
#include "dispatch.h"

typedef void (*scale_fn)(float *, float, int64_t);
typedef void (*axpy_fn)(float, const float *, float *, int64_t);
typedef double (*dot_fn)(const float *, const float *, int64_t);

/* ------------------------------------------------------------ public kernels */
/* x: (n) */
void mll_fill(float *x, float v, int64_t n) {
    MLL_PARALLEL_CHUNKS(n, i0, len, {
        for (int64_t i = i0; i < i0 + len; i++) x[i] = v;
    });
}

/* x, y: (n), not overlapping */
void mll_copy(const float *x, float *y, int64_t n) {
    MLL_PARALLEL_CHUNKS(n, i0, len, memcpy(y + i0, x + i0, (size_t)len * sizeof(float)));
}

/* x: (n) */
void mll_scale(float *x, float a, int64_t n) {
    scale_fn f = MLL_PICK(scale);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(x + i0, a, len));
}

/* x, y: (n) */
void mll_axpy(float a, const float *x, float *y, int64_t n) {
    axpy_fn f = MLL_PICK(axpy);
    MLL_PARALLEL_CHUNKS(n, i0, len, f(a, x + i0, y + i0, len));
}

/* x, y: (n); blocks summed in double, in block order (MLL_BLOCKED_SUM, simd.h) */
double mll_dot(const float *x, const float *y, int64_t n) {
    dot_fn f = MLL_PICK(dot);
    double total;
    MLL_BLOCKED_SUM(total, n, i0, len, f(x + i0, y + i0, len));
    return total;
}

/* dst (contiguous, prod(shape) elements) <- src read with element strides `str` (any
 * sign, 0 for broadcast). elem_size 2, 4 or 8 bytes; ndim <= 8. */
void mll_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape, const int64_t *str,
                      int elem_size) {
    if (ndim == 0) {
        memcpy(dst, src, (size_t)elem_size);
        return;
    }
    int64_t inner = shape[ndim - 1], outer = 1;
    for (int d = 0; d < ndim - 1; d++) outer *= shape[d];
    if (inner == 0 || outer == 0) return;
    /* The last two axes read a transposed matrix (strides (1, s), s >= their rows): each 2-D
     * slice goes through the cache-blocked transpose instead of a gather with stride s. Its
     * loads and stores move 4-byte words unchanged, so int32 data passes too. */
    int64_t rows2 = ndim >= 2 ? shape[ndim - 2] : 0;
    if (elem_size == 4 && rows2 > 1 && str[ndim - 2] == 1 && str[ndim - 1] >= rows2) {
        int64_t slices = outer / rows2;
        for (int64_t o = 0; o < slices; o++) {
            int64_t rem = o, off = 0;
            for (int d = ndim - 3; d >= 0; d--) {
                off += (rem % shape[d]) * str[d];
                rem /= shape[d];
            }
            /* slice (rows2, inner) = A^T, A (inner, rows2) with row stride s */
            mll_transpose((const float *)src + off, (float *)dst + o * rows2 * inner, inner, rows2,
                          str[ndim - 1], inner);
        }
        return;
    }
    int64_t s = str[ndim - 1];
    MLL_PARALLEL_ROWS(outer, inner, o, {
        int64_t rem = o, off = 0;
        for (int d = ndim - 2; d >= 0; d--) {
            off += (rem % shape[d]) * str[d];
            rem /= shape[d];
        }
        switch (elem_size) {
        case 2: {
            const uint16_t *p = (const uint16_t *)src + off;
            uint16_t *q = (uint16_t *)dst + o * inner;
            for (int64_t j = 0; j < inner; j++) q[j] = p[j * s];
            break;
        }
        case 4: {
            const uint32_t *p = (const uint32_t *)src + off;
            uint32_t *q = (uint32_t *)dst + o * inner;
            if (s == 1) memcpy(q, p, (size_t)inner * 4);
            else for (int64_t j = 0; j < inner; j++) q[j] = p[j * s];
            break;
        }
        case 8: {
            const uint64_t *p = (const uint64_t *)src + off;
            uint64_t *q = (uint64_t *)dst + o * inner;
            for (int64_t j = 0; j < inner; j++) q[j] = p[j * s];
            break;
        }
        }
    });
}

#define MLL_TILE 32

typedef void (*transpose_tile_fn)(const float *, float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t);

/* b (cols, rows) with row stride ldb  <-  a (rows, cols)^T with row stride lda.
 * 32x32 tiles: one tile of a and one of b (4 KiB each) stay in L1 while it is copied. */
void mll_transpose(const float *a, float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb) {
    transpose_tile_fn tile = MLL_PICK(transpose_tile);
    int64_t tiles_i = (rows + MLL_TILE - 1) / MLL_TILE;
    MLL_PARALLEL_ROWS(tiles_i, MLL_TILE * cols, ti, {
        int64_t i0 = ti * MLL_TILE, i1 = mll_min64(i0 + MLL_TILE, rows);
        for (int64_t j0 = 0; j0 < cols; j0 += MLL_TILE)
            tile(a, b, i0, i1, j0, mll_min64(j0 + MLL_TILE, cols), lda, ldb);
    });
}

/* ------------------------------------------------------------------- casts */
/* float -> integer truncates toward zero (as C and NumPy do) and saturates at the
 * type's range; NaN gives 0 (C leaves both undefined). */
static inline int64_t f32_to_int(float f, int64_t lo, int64_t hi) {
    if (f != f) return 0;
    double d = (double)f;
    if (d <= (double)lo) return lo;
    if (d >= (double)hi) return hi;  /* (double)INT64_MAX is 2^63, so this also guards int64 */
    return (int64_t)d;
}

static inline float load_as_f32(const void *src, int dtype, int64_t i) {
    switch (dtype) {
    case MLL_F32: return ((const float *)src)[i];
    case MLL_I32: return (float)((const int32_t *)src)[i];
    case MLL_I64: return (float)((const int64_t *)src)[i];
    case MLL_BF16: return bf16_to_f32(((const uint16_t *)src)[i]);
    case MLL_U8: return (float)((const uint8_t *)src)[i];
    default: return (float)((const uint16_t *)src)[i];
    }
}

static inline int64_t load_as_int(const void *src, int dtype, int64_t i) {
    switch (dtype) {
    case MLL_I32: return ((const int32_t *)src)[i];
    case MLL_I64: return ((const int64_t *)src)[i];
    case MLL_U8: return ((const uint8_t *)src)[i];
    default: return ((const uint16_t *)src)[i];
    }
}

static void cast_range(const void *src, int st, void *dst, int dt, int64_t i0, int64_t i1) {
    int src_float = st == MLL_F32 || st == MLL_BF16;
    for (int64_t i = i0; i < i1; i++) {
        if (dt == MLL_F32) {
            ((float *)dst)[i] = load_as_f32(src, st, i);
        } else if (dt == MLL_BF16) {
            ((uint16_t *)dst)[i] = mll_f32_to_bf16(load_as_f32(src, st, i));
        } else if (src_float) {
            float f = load_as_f32(src, st, i);
            switch (dt) {
            case MLL_I32: ((int32_t *)dst)[i] = (int32_t)f32_to_int(f, INT32_MIN, INT32_MAX); break;
            case MLL_I64: ((int64_t *)dst)[i] = f32_to_int(f, INT64_MIN, INT64_MAX); break;
            case MLL_U8: ((uint8_t *)dst)[i] = (uint8_t)f32_to_int(f, 0, UINT8_MAX); break;
            case MLL_U16: ((uint16_t *)dst)[i] = (uint16_t)f32_to_int(f, 0, UINT16_MAX); break;
            }
        } else {
            /* integer -> integer wraps like a C cast (NumPy's astype does the same) */
            int64_t v = load_as_int(src, st, i);
            switch (dt) {
            case MLL_I32: ((int32_t *)dst)[i] = (int32_t)v; break;
            case MLL_I64: ((int64_t *)dst)[i] = v; break;
            case MLL_U8: ((uint8_t *)dst)[i] = (uint8_t)v; break;
            case MLL_U16: ((uint16_t *)dst)[i] = (uint16_t)v; break;
            }
        }
    }
}

static int dtype_size(int dt) {
    switch (dt) {
    case MLL_F32: case MLL_I32: return 4;
    case MLL_I64: return 8;
    case MLL_U8: return 1;
    default: return 2;
    }
}

static void to_bf16_generic(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = mll_f32_to_bf16(x[i]);
}

static void from_bf16_generic(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(x[i]);
}

typedef void (*to_bf16_fn)(const float *, uint16_t *, int64_t);
typedef void (*from_bf16_fn)(const uint16_t *, float *, int64_t);

/* src (n) of src_dtype -> dst (n) of dst_dtype */
void mll_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n) {
    if (src_dtype == dst_dtype) {
        memcpy(dst, src, (size_t)n * (size_t)dtype_size(src_dtype));
        return;
    }
    if (src_dtype == MLL_F32 && dst_dtype == MLL_BF16) {
        to_bf16_fn f = MLL_PICK(to_bf16);
        MLL_PARALLEL_CHUNKS(n, i0, len, f((const float *)src + i0, (uint16_t *)dst + i0, len));
    } else if (src_dtype == MLL_BF16 && dst_dtype == MLL_F32) {
        from_bf16_fn f = MLL_PICK(from_bf16);
        MLL_PARALLEL_CHUNKS(n, i0, len, f((const uint16_t *)src + i0, (float *)dst + i0, len));
    } else {
        MLL_PARALLEL_CHUNKS(n, i0, len, cast_range(src, src_dtype, dst, dst_dtype, i0, i0 + len));
    }
}

/* 1 if any element is inf or NaN (exponent bits all ones); a branch-free loop the compiler
 * vectorizes */
static uint32_t any_nonfinite(const float *x, int64_t n) {
    const uint32_t *u = (const uint32_t *)x;
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad |= (uint32_t)((u[i] & 0x7f800000u) == 0x7f800000u);
    return bad;
}

/* x: (n); 1 if no element is inf or NaN */
int mll_all_finite(const float *x, int64_t n) {
    int nt = mll_threads_for(n);
    if (nt <= 1) return any_nonfinite(x, n) == 0;
    int64_t nch = (n + MLL_CHUNK - 1) / MLL_CHUNK;
    uint32_t bad = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic) reduction(| : bad)
    for (int64_t c = 0; c < nch; c++)
        bad |= any_nonfinite(x + c * MLL_CHUNK, mll_min64(MLL_CHUNK, n - c * MLL_CHUNK));
    return bad == 0;
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

static MLL_TARGET void FN(scale)(float *x, float a, int64_t n) {
    V va = v_set1(a);
    VLOOP1(x, x, v_mul(v, va));
}

/* y += a x, one rounding per element (FMA) */
static MLL_TARGET void FN(axpy)(float a, const float *x, float *y, int64_t n) {
    V vs = v_set1(a);
    VLOOP2(x, y, y, v_fmadd(vs, va, vb));
}

/* one block of the dot product (simd.h) */
static MLL_TARGET double FN(dot)(const float *x, const float *y, int64_t n) { return v_dot_f64(x, y, n); }

/* one tile of the transpose: 8x8 blocks in registers (simd.h's AVX2 mll_transpose8x8, on both
 * ISAs), the partial edges element by element */
static MLL_TARGET void FN(transpose_tile)(const float *a, float *b, int64_t i0, int64_t i1, int64_t j0,
                                          int64_t j1, int64_t lda, int64_t ldb) {
    int64_t i8 = i0 + ((i1 - i0) & ~(int64_t)7), j8 = j0 + ((j1 - j0) & ~(int64_t)7);
    for (int64_t i = i0; i < i8; i += 8)
        for (int64_t j = j0; j < j8; j += 8) mll_transpose8x8(a + i * lda + j, lda, b + j * ldb + i, ldb);
    transpose_tile_generic(a, b, i0, i1, j8, j1, lda, ldb);  /* right edge */
    transpose_tile_generic(a, b, i8, i1, j0, j8, lda, ldb);  /* bottom edge */
}

/* y (n) bf16 = x (n) f32 rounded to nearest even: the mll_f32_to_bf16 bit recipe on VL lanes */
static MLL_TARGET void FN(to_bf16)(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V v = v_load(x + i);
        VI u = v_as_i(v);
        VI lsb = vi_and(vi_srli(u, 16), vi_set1(1));
        VI r = vi_srli(vi_add(u, vi_add(vi_set1(0x7fff), lsb)), 16);
        VI q = vi_or(vi_srli(u, 16), vi_set1(0x40));  /* NaN: keep it, quiet */
        r = v_as_i(v_select(v_isnan(v), i_as_v(r), i_as_v(q)));
#if VL == 16
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(r));
#else
        /* packus works per 128-bit half: [r0-3 r0-3 | r4-7 r4-7]; gather qwords 0 and 2 */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i *)(y + i), _mm256_castsi256_si128(p));
#endif
    }
    for (; i < n; i++) y[i] = mll_f32_to_bf16(x[i]);
}

/* y (n) f32 = x (n) bf16: the 16 bits become the high half */
static MLL_TARGET void FN(from_bf16)(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
#if VL == 16
        VI w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i)));
#else
        VI w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
#endif
        v_store(y + i, i_as_v(vi_slli(w, 16)));
    }
    for (; i < n; i++) y[i] = bf16_to_f32(x[i]);
}

#endif /* MLL_VEC */
