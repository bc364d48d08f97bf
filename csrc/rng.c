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
#include "minillm.h"

#include <math.h>
#include <omp.h>

/* Multipliers and Weyl key increments of Philox4x32 (Salmon et al., table 2 and sec. 4.2). */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u  /* golden ratio */
#define PHILOX_W1 0xBB67AE85u  /* sqrt(3) - 1 */

/* Elements per chunk of work; a chunk's words live in a stack buffer of 2 * CHUNK words. */
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

/* buf (count) = words start .. start + count - 1 of the stream of seed (wrapping mod 2^64). */
static void stream_words(uint64_t seed, uint64_t start, int64_t count, uint32_t *buf) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    int64_t i = 0;
    while (i < count) {
        uint64_t c = start + (uint64_t)i;
        uint64_t block = c >> 2;
        uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
        uint32_t w[4];
        philox_block(ctr, k0, k1, w);
        for (unsigned lane = (unsigned)(c & 3); lane < 4 && i < count; lane++) buf[i++] = w[lane];
    }
}

static inline int64_t nchunks_of(int64_t n) { return (n + CHUNK - 1) / CHUNK; }

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

/* out (n) = lo + (hi - lo) * u, u = (w >> 8) / 2^24 in [0, 1). */
void mll_rand_uniform(uint64_t seed, uint64_t offset, float *out, int64_t n, float lo, float hi) {
    const float span = hi - lo;
    const int64_t nch = nchunks_of(n);
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        uint32_t w[CHUNK];
        int64_t i0 = ch * CHUNK, m = n - i0 < CHUNK ? n - i0 : CHUNK;
        stream_words(seed, offset + (uint64_t)i0, m, w);
        for (int64_t i = 0; i < m; i++) {
            float v = lo + span * ((float)(w[i] >> 8) * 0x1p-24f);
            /* rounding of lo + span * u can land on hi; keep the interval half-open */
            if (v >= hi && hi > lo) v = nextafterf(hi, lo);
            out[i0 + i] = v;
        }
    }
}

/* Box-Muller: z0 = r cos(t), z1 = r sin(t), r = sqrt(-2 ln u1), t = 2 pi u2, with
 * u1 = (w0 + 1) / 2^32 in (0, 1] rounded to float (so the log is finite: |z| <= 6.67) and
 * u2 = (w1 >> 8) / 2^24 in [0, 1). Single precision throughout: float32 output needs no more,
 * and logf/sincosf cost a third of their double versions. */
void mll_rand_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std) {
    const int64_t nch = nchunks_of(n);
    const float two_pi = 6.28318530717958647692f;
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        uint32_t w[CHUNK];  /* CHUNK is even, so chunks hold whole pairs */
        int64_t i0 = ch * CHUNK, m = n - i0 < CHUNK ? n - i0 : CHUNK;
        int64_t mw = (m + 1) & ~(int64_t)1;
        stream_words(seed, offset + (uint64_t)i0, mw, w);
        for (int64_t i = 0; i < m; i += 2) {
            float u1 = (float)w[i] * 0x1p-32f + 0x1p-32f;
            float u2 = (float)(w[i + 1] >> 8) * 0x1p-24f;
            float r = sqrtf(-2.0f * logf(u1)), t = two_pi * u2;
            out[i0 + i] = mean + std * (r * cosf(t));
            if (i + 1 < m) out[i0 + i + 1] = mean + std * (r * sinf(t));
        }
    }
}

/* Element i = lo + floor(x_i * (hi - lo) / 2^64), x_i = words (2i, 2i+1) as one 64-bit value. */
void mll_rand_int(uint64_t seed, uint64_t offset, int64_t *out, int64_t n, int64_t lo, int64_t hi) {
    const uint64_t range = (uint64_t)hi - (uint64_t)lo;  /* exact in unsigned arithmetic */
    const int64_t nch = nchunks_of(n);
    if (hi <= lo) {
        for (int64_t i = 0; i < n; i++) out[i] = lo;
        return;
    }
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        uint32_t w[2 * CHUNK];
        int64_t i0 = ch * CHUNK, m = n - i0 < CHUNK ? n - i0 : CHUNK;
        stream_words(seed, offset + 2 * (uint64_t)i0, 2 * m, w);
        for (int64_t i = 0; i < m; i++)
            out[i0 + i] = (int64_t)((uint64_t)lo + mulhi64(word64(&w[2 * i]), range));
    }
}

void mll_rand_bits(uint64_t seed, uint64_t offset, uint32_t *out, int64_t n) {
    const int64_t nch = nchunks_of(n);
#pragma omp parallel for schedule(static) num_threads(mll_get_num_threads()) if (n >= PARALLEL_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t i0 = ch * CHUNK, m = n - i0 < CHUNK ? n - i0 : CHUNK;
        stream_words(seed, offset + (uint64_t)i0, m, out + i0);
    }
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
