/* rng.c: the counter-based random number generator.
 *
 * Philox4x32-10 from J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC'11. A block maps a 128-bit counter and a 64-bit key to
 * 128 random bits through 10 rounds of two 32x32->64 multiplies; the key is bumped by the
 * Weyl constants between rounds. Being a pure function of (counter, key), any element of
 * a stream can be computed on its own: each thread fills a fixed chunk of the output from
 * the counters of that chunk, so the result is the same for any thread count.
 *
 * Word c of the stream of `seed` is lane c % 4 of block (counter = (c/4 lo, c/4 hi, 0, 0),
 * key = (seed lo, seed hi)); see minillm.h for how each draw maps elements to words.
 */
#ifndef MLL_VEC
#include "simd.h"

#include <math.h>
#include <omp.h>
#include <string.h>

/* Round multipliers and Weyl key increments of Philox4x32 (Salmon et al.). */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u  /* 2^32 (golden ratio - 1) */
#define PHILOX_W1 0xBB67AE85u  /* 2^32 (sqrt(3) - 1) */

/* Elements per chunk of work; a chunk's words live in a stack buffer of up to 2 * CHUNK words. */
#define CHUNK 1024
/* Below this many elements the draw runs on the calling thread alone. */
#define PARALLEL_MIN 32768

static inline void philox_round(uint32_t c[4], uint32_t k0, uint32_t k1) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
    uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

static inline void philox_block(const uint32_t ctr[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        philox_round(c, k0, k1);
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

void mll_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out) {
    philox_block(ctr, key[0], key[1], out);
}

/* Blocks per batch: the batch is kept as four arrays of counter words (structure of arrays) so
 * the rounds vectorize across blocks. */
#define BATCH 16

/* out (4 * BATCH) = blocks block0 .. block0 + BATCH - 1, interleaved as in the stream. The loop
 * runs over blocks with the ten rounds unrolled inside, so it vectorizes across blocks. */
static inline __attribute__((always_inline)) void philox_batch(uint64_t block0, uint32_t k0, uint32_t k1,
                                                                 uint32_t *out) {
    uint32_t ks0[10], ks1[10];  /* the key schedule: key + r * (W0, W1) */
    for (int r = 0; r < 10; r++) {
        ks0[r] = k0 + (uint32_t)r * PHILOX_W0;
        ks1[r] = k1 + (uint32_t)r * PHILOX_W1;
    }
    for (int j = 0; j < BATCH; j++) {
        uint64_t b = block0 + (uint64_t)j;
        uint32_t c0 = (uint32_t)b, c1 = (uint32_t)(b >> 32), c2 = 0, c3 = 0;
#pragma GCC unroll 10
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
            uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
            c0 = (uint32_t)(p1 >> 32) ^ c1 ^ ks0[r];
            c2 = (uint32_t)(p0 >> 32) ^ c3 ^ ks1[r];
            c1 = (uint32_t)p1;
            c3 = (uint32_t)p0;
        }
        out[4 * j + 0] = c0;
        out[4 * j + 1] = c1;
        out[4 * j + 2] = c2;
        out[4 * j + 3] = c3;
    }
}

/* buf (count) = words start .. start + count - 1 of the stream of seed (wrapping mod 2^64):
 * whole batches where the range allows, single blocks at the ragged ends. */
static inline __attribute__((always_inline)) void stream_words(uint64_t seed, uint64_t start, int64_t count,
                                                                 uint32_t *buf) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    int64_t i = 0;
    while (i < count) {
        uint64_t c = start + (uint64_t)i;
        uint64_t block = c >> 2;
        if ((c & 3) == 0 && count - i >= 4 * BATCH) {
            philox_batch(block, k0, k1, buf + i);
            i += 4 * BATCH;
            continue;
        }
        uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
        uint32_t w[4];
        philox_block(ctr, k0, k1, w);
        for (unsigned lane = (unsigned)(c & 3); lane < 4 && i < count; lane++) buf[i++] = w[lane];
    }
}

/* ln(x) for x in [2^-32, 1], vectorizable: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
 * ln(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + s^7/7 + s^9/9 + ...), s = (m - 1) / (m + 1),
 * |s| <= 0.172, so the terms left out are below 4e-10. */
static inline __attribute__((always_inline)) float ln_unit(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    /* m > sqrt(2) (fraction bits above those of sqrt(2), 0x3504F3) is halved through its
     * exponent: integer operations, so the select cannot trap and the loop vectorizes */
    uint32_t frac = bits & 0x007FFFFFu;
    uint32_t big = frac > 0x003504F3u;
    int32_t e = (int32_t)(bits >> 23) - 127 + (int32_t)big;
    uint32_t mbits = (frac | 0x3F800000u) - (big << 23);
    float m;
    memcpy(&m, &mbits, 4);
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = s * (2.0f + s2 * (2.0f / 3 + s2 * (2.0f / 5 + s2 * (2.0f / 7 + s2 * (2.0f / 9)))));
    return (float)e * 0.693147180559945f + p;
}

/* (cos, sin) of 2 pi f for f in [0, 1), vectorizable: 4 f = q + x with q an integer and
 * x in [-1/2, 1/2], so the angle is q quarter turns plus y = x pi / 2 in [-pi/4, pi/4], where
 * Taylor series to y^9 (sin) and y^10 (cos) are accurate to 2e-9. */
static inline __attribute__((always_inline)) void cos_sin_turns(float f, float *c, float *s) {
    float t = 4.0f * f;
    int q = (int)(t + 0.5f);
    float y = (t - (float)q) * 1.57079632679489662f, y2 = y * y;
    float sy = y * (1.0f + y2 * (-1.0f / 6 + y2 * (1.0f / 120 + y2 * (-1.0f / 5040 + y2 * (1.0f / 362880)))));
    float cy = 1.0f + y2 * (-0.5f + y2 * (1.0f / 24 + y2 * (-1.0f / 720 + y2 * (1.0f / 40320 +
                                                                              y2 * (-1.0f / 3628800)))));
    /* rotate by q quarter turns, (cos, sin) -> (-sin, cos) per turn: odd q swaps the two,
     * q mod 4 in {1, 2} negates the cosine, q mod 4 in {2, 3} the sine (sign bits set by xor) */
    uint32_t sybits, cybits, swap = 0u - (uint32_t)(q & 1);
    memcpy(&sybits, &sy, 4);
    memcpy(&cybits, &cy, 4);
    uint32_t cbits = (sybits & swap) | (cybits & ~swap);
    uint32_t sbits = (cybits & swap) | (sybits & ~swap);
    cbits ^= (uint32_t)(((q + 1) >> 1) & 1) << 31;
    sbits ^= (uint32_t)((q >> 1) & 1) << 31;
    memcpy(c, &cbits, 4);
    memcpy(s, &sbits, 4);
}

static inline int64_t nchunks_of(int64_t n) { return (n + CHUNK - 1) / CHUNK; }

/* ---- chunk kernels: each fills one chunk of m <= CHUNK elements whose words start at `word`.
 * They are compiled twice (dispatch.h), for baseline x86-64 (or any CPU) and for AVX2, which
 * AVX-512 machines use too. Neither build may fuse a multiply and an add (the AVX2 one is
 * MLL_AVX2_NO_FMA), so both give bitwise the same numbers. */

/* out (m) = lo + (hi - lo) u, u = (w >> 8) / 2^24 in [0, 1); below_hi = the float before hi */
static inline __attribute__((always_inline)) void uniform_chunk(uint64_t seed, uint64_t word, float *out,
                                                                  int64_t m, float lo, float hi,
                                                                  float below_hi) {
    uint32_t w[CHUNK];
    const float span = hi - lo;
    stream_words(seed, word, m, w);
    for (int64_t i = 0; i < m; i++) {
        float v = lo + span * ((float)(w[i] >> 8) * 0x1p-24f);
        /* rounding of lo + span u can land on hi; keep the interval half-open */
        out[i] = v >= hi ? below_hi : v;
    }
}

/* Box-Muller: z0 = r cos(t), z1 = r sin(t), r = sqrt(-2 ln u1), t = 2 pi u2, with
 * u1 = (w0 + 1) / 2^32 in (0, 1] rounded to float (so the log is finite: |z| <= 6.67) and
 * u2 = (w1 >> 8) / 2^24 in [0, 1). Single precision throughout: the output is float32. */
static inline __attribute__((always_inline)) void normal_pair(uint32_t w0, uint32_t w1, float *z0, float *z1) {
    float u1 = (float)w0 * 0x1p-32f + 0x1p-32f;
    float r = sqrtf(-2.0f * ln_unit(u1));
    float c, s;
    cos_sin_turns((float)(w1 >> 8) * 0x1p-24f, &c, &s);
    *z0 = r * c;
    *z1 = r * s;
}

static inline __attribute__((always_inline)) void normal_chunk(uint64_t seed, uint64_t word, float *out,
                                                                 int64_t m, float mean, float std) {
    uint32_t w[CHUNK];  /* CHUNK is even, so a chunk holds whole pairs */
    stream_words(seed, word, (m + 1) & ~(int64_t)1, w);
    int64_t pairs = m / 2;
    for (int64_t k = 0; k < pairs; k++) {
        float z0, z1;
        normal_pair(w[2 * k], w[2 * k + 1], &z0, &z1);
        out[2 * k] = mean + std * z0;
        out[2 * k + 1] = mean + std * z1;
    }
    if (m & 1) {
        float z0, z1;
        normal_pair(w[m - 1], w[m], &z0, &z1);
        out[m - 1] = mean + std * z0;
    }
}

/* High 64 bits of the 128-bit product x * r (Lemire's multiply-shift). */
static inline uint64_t mulhi64(uint64_t x, uint64_t r) {
#if defined(__SIZEOF_INT128__)
    return (uint64_t)(((unsigned __int128)x * r) >> 64);
#else
    uint64_t xl = (uint32_t)x, xh = x >> 32, rl = (uint32_t)r, rh = r >> 32;
    uint64_t ll = xl * rl, lh = xl * rh, hl = xh * rl, hh = xh * rh;
    uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
    return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
#endif
}

static inline uint64_t word64(const uint32_t *w) { return ((uint64_t)w[0] << 32) | w[1]; }

/* out (m) = lo + floor(x * range / 2^64), x = words (2i, 2i+1) as one 64-bit value */
static inline __attribute__((always_inline)) void int_chunk(uint64_t seed, uint64_t word, int64_t *out,
                                                              int64_t m, int64_t lo, uint64_t range) {
    uint32_t w[2 * CHUNK];
    stream_words(seed, word, 2 * m, w);
    for (int64_t i = 0; i < m; i++) out[i] = (int64_t)((uint64_t)lo + mulhi64(word64(&w[2 * i]), range));
}

static inline __attribute__((always_inline)) void bits_chunk(uint64_t seed, uint64_t word, uint32_t *out,
                                                               int64_t m) {
    stream_words(seed, word, m, out);
}

#define UNIFORM_ARGS (uint64_t seed, uint64_t word, float *out, int64_t m, float lo, float hi, float bh)
#define NORMAL_ARGS (uint64_t seed, uint64_t word, float *out, int64_t m, float mean, float std)
#define INT_ARGS (uint64_t seed, uint64_t word, int64_t *out, int64_t m, int64_t lo, uint64_t range)
#define BITS_ARGS (uint64_t seed, uint64_t word, uint32_t *out, int64_t m)

static void uniform_chunk_generic UNIFORM_ARGS { uniform_chunk(seed, word, out, m, lo, hi, bh); }
static void normal_chunk_generic NORMAL_ARGS { normal_chunk(seed, word, out, m, mean, std); }
static void int_chunk_generic INT_ARGS { int_chunk(seed, word, out, m, lo, range); }
static void bits_chunk_generic BITS_ARGS { bits_chunk(seed, word, out, m); }


/* the same four for AVX2: the bottom half of this file (dispatch.h), with no AVX-512 pass */
#define MLL_DISPATCH_SELF "rng.c"
#define MLL_DISPATCH_MAX_VEC 256
#include "dispatch.h"

/* Chunk ch covers elements [ch * CHUNK, min(n, (ch + 1) * CHUNK)): a fixed partition, and each
 * element's words depend only on its index, so any thread may take any chunk. */
#define CHUNK_LEN(ch, n) ((n) - (ch) * CHUNK < CHUNK ? (n) - (ch) * CHUNK : CHUNK)

void mll_rand_uniform(uint64_t seed, uint64_t offset, float *out, int64_t n, float lo, float hi) {
    void (*kernel) UNIFORM_ARGS = MLL_PICK(uniform_chunk);
    const float below_hi = nextafterf(hi, lo);  /* == hi when lo == hi */
    const int64_t nch = nchunks_of(n);
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++)
        kernel(seed, offset + (uint64_t)(ch * CHUNK), out + ch * CHUNK, CHUNK_LEN(ch, n), lo, hi, below_hi);
}

void mll_rand_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std) {
    void (*kernel) NORMAL_ARGS = MLL_PICK(normal_chunk);
    const int64_t nch = nchunks_of(n);
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++)
        kernel(seed, offset + (uint64_t)(ch * CHUNK), out + ch * CHUNK, CHUNK_LEN(ch, n), mean, std);
}

void mll_rand_int(uint64_t seed, uint64_t offset, int64_t *out, int64_t n, int64_t lo, int64_t hi) {
    void (*kernel) INT_ARGS = MLL_PICK(int_chunk);
    const uint64_t range = (uint64_t)hi - (uint64_t)lo;  /* exact in unsigned arithmetic */
    const int64_t nch = nchunks_of(n);
    if (hi <= lo) {
        for (int64_t i = 0; i < n; i++) out[i] = lo;
        return;
    }
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++)
        kernel(seed, offset + 2 * (uint64_t)(ch * CHUNK), out + ch * CHUNK, CHUNK_LEN(ch, n), lo, range);
}

void mll_rand_bits(uint64_t seed, uint64_t offset, uint32_t *out, int64_t n) {
    void (*kernel) BITS_ARGS = MLL_PICK(bits_chunk);
    const int64_t nch = nchunks_of(n);
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++)
        kernel(seed, offset + (uint64_t)(ch * CHUNK), out + ch * CHUNK, CHUNK_LEN(ch, n));
}

/* Fisher-Yates (Durstenfeld's form): for step s = 0 .. n-2, i = n-1-s swaps with
 * j = floor(x_s * (i + 1) / 2^64), x_s = words (2s, 2s+1). */
void mll_rand_permutation(uint64_t seed, uint64_t offset, int64_t *out, int64_t n) {
    uint32_t w[2 * CHUNK];
    for (int64_t i = 0; i < n; i++) out[i] = i;
    for (int64_t s0 = 0; s0 < n - 1; s0 += CHUNK) {
        int64_t m = n - 1 - s0 < CHUNK ? n - 1 - s0 : CHUNK;
        stream_words(seed, offset + 2 * (uint64_t)s0, 2 * m, w);
        for (int64_t s = 0; s < m; s++) {
            int64_t i = n - 1 - (s0 + s);
            int64_t j = (int64_t)mulhi64(word64(&w[2 * s]), (uint64_t)(i + 1));
            int64_t t = out[i];
            out[i] = out[j];
            out[j] = t;
        }
    }
}

/* ---- truncated normal, by inverting the CDF (no rejection, so counters stay fixed) */

/* Phi(x) = P(Z <= x) = erfc(-x / sqrt(2)) / 2, accurate to relative precision in the lower tail. */
static double norm_cdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }
static double norm_pdf(double x) { return 0.39894228040143267794 * exp(-0.5 * x * x); }

/* Phi^-1(p) for p in (0, 1/2]: the rational start of Abramowitz & Stegun 26.2.23 (error below
 * 4.5e-4), then one Halley step on f(z) = Phi(z) - p (f' = phi, f'' = -z phi), which cubes the
 * error: within 1 float32 ulp down to p = 1e-300 (tested against an independent inverse). */
static double norm_quantile_lower(double p) {
    double t = sqrt(-2.0 * log(p));
    double z = -(t - (2.515517 + t * (0.802853 + t * 0.010328)) /
                         (1.0 + t * (1.432788 + t * (0.189269 + t * 0.001308))));
    double r = (norm_cdf(z) - p) / norm_pdf(z);  /* f / f' */
    return z - r / (1.0 + 0.5 * z * r);
}

/* Element i: U = (x >> 11) / 2^53 from the 64-bit word (2i, 2i+1), p = Phi(alpha) + U (Phi(beta) -
 * Phi(alpha)), z = Phi^-1(p), out = mean + std z clamped to [a, b] (float rounding could step
 * outside), with alpha, beta the bounds in standard units. An interval in the upper half is
 * mirrored into the lower one, where Phi is computed without cancellation. */
void mll_rand_trunc_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std,
                           float a, float b) {
    const double alpha0 = ((double)a - mean) / std, beta0 = ((double)b - mean) / std;
    const int mirror = alpha0 + beta0 > 0;
    const double alpha = mirror ? -beta0 : alpha0, beta = mirror ? -alpha0 : beta0;
    const double sign = mirror ? -1.0 : 1.0;
    const double pa = norm_cdf(alpha), pb = norm_cdf(beta);
    const int64_t nch = nchunks_of(n);
    if (!(std > 0)) {
        float v = mean < a ? a : mean > b ? b : mean;
        for (int64_t i = 0; i < n; i++) out[i] = v;
        return;
    }
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN / 8)
    for (int64_t ch = 0; ch < nch; ch++) {
        uint32_t w[2 * CHUNK];
        int64_t i0 = ch * CHUNK, m = CHUNK_LEN(ch, n);
        stream_words(seed, offset + 2 * (uint64_t)i0, 2 * m, w);
        for (int64_t i = 0; i < m; i++) {
            double u = (double)(word64(&w[2 * i]) >> 11) * 0x1p-53;
            double p = pa + u * (pb - pa);
            double z;
            if (!(p > 1e-300))  /* Phi underflows: the lowest draws, or an interval > 37 std out */
                z = pb > 1e-300 ? alpha : beta;
            else
                z = p <= 0.5 ? norm_quantile_lower(p) : -norm_quantile_lower(1.0 - p);
            float v = (float)(mean + std * (sign * z));
            out[i0 + i] = v < a ? a : v > b ? b : v;
        }
    }
}

#else /* MLL_VEC: the bottom half, AVX2 only (see the chunk kernels above) */

static MLL_AVX2_NO_FMA void FN(uniform_chunk) UNIFORM_ARGS { uniform_chunk(seed, word, out, m, lo, hi, bh); }
static MLL_AVX2_NO_FMA void FN(normal_chunk) NORMAL_ARGS { normal_chunk(seed, word, out, m, mean, std); }
static MLL_AVX2_NO_FMA void FN(int_chunk) INT_ARGS { int_chunk(seed, word, out, m, lo, range); }
static MLL_AVX2_NO_FMA void FN(bits_chunk) BITS_ARGS { bits_chunk(seed, word, out, m); }

#endif /* MLL_VEC */
