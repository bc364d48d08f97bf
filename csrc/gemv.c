/* gemv.c: act(x @ W^T + bias) + add for a few rows of x: the linear layers of one decoding
 * step, with their GELU, SwiGLU gating (silu(x Wg^T) * (x Wu^T)) or residual add done on the
 * way out, and up to three matrices side by side in one product (q, k, v). W is float32,
 * bf16 or int8 with per-group scales (mll_matrix, minillm.h); x and y are float32.
 *
 * Decoding one token per step multiplies a (B, K) activation by every weight matrix with B
 * small, so the time is the time to read W once. The packed GEMM would copy W into panels
 * first (reading it twice and writing it once) and pad B up to its micro-tile; here each
 * weight row is streamed once, straight from memory, and dotted with the B rows of x that
 * sit in L1. Inference only (no backward).
 *
 * Threads: W's rows go in groups of 4, handed out in chunks to the caller and helper threads
 * (see "helper threads" below; kv_attention.c runs on the same pool); an output element is
 * always computed by the same code in the same order, so the result does not depend on the
 * thread count.
 *
 * Also here: the read roof (a plain sum over the same bytes, mll_stream_sum) and the huge-page
 * advice for the weights (mll_advise_hugepages), worth more than any change to the dot
 * products: one core streams 2 MiB pages markedly faster than 4 KiB ones (see "huge pages";
 * bench/bench_generate.py measures both).
 */
#ifndef MLL_VEC
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "simd.h"

/* Below this many weights (N * K) one thread reads W faster than two can start. */
#define GEMV_PAR_MIN (1 << 16)

/* ------------------------------------------------------------------ the dot products
 * out[r] = x (K) . W[row0 + r] (K) for r < n, one function per encoding of W.
 *
 * bf16: each weight is widened to float32 as it is read and multiplied by float32 x: the
 * products of the float32 matrix the bf16 one stands for. Where the CPU has AVX512-BF16, x is
 * rounded to bf16 too and VDPBF16PS sums the products of the pairs (rows_bf16x, below), half
 * the arithmetic; mll_set_bf16_x(0) keeps x in float32. A load takes two vectors' worth of
 * weights, and a shift and a mask widen the even and the odd ones of each pair in place, so x
 * is read split into its even and odd elements (split_pairs, once per call): widening loads,
 * a shuffle per vector, had bounded the loop on AMD Zen 4 (1.2x our float32 a GPT-2 step
 * there, 2.3x with the pairs), where the load alone should be the cost.
 *
 * int8: widening each weight to float32 costs three instructions per vector of weights,
 * which at a quarter of the bytes no longer hides under the load. So x is quantized too, per
 * row and per group of the weights' group size (symmetric, as the weights: scale = max |x| /
 * 127 over the group, q = round(x / scale)), once per product (quantize_x), and each group is
 * an exact integer dot product (int8 x int8 summed in int32) scaled by the two scales and
 * added to the output, one group after the other:
 *     y[n] = fma(p[n, g], wscale[n, g] xscale[g], y[n])  for g = 0, 1, ...
 *     p[n, g] = sum_{k in g} wq[n, k] xq[k]
 * The weights are read in tiles of 16 rows (see "int8 tiles" below), so that one vector
 * instruction makes 16 rows' products and one conversion and one multiply-add scale a group
 * of 16 outputs. Every path, the portable one included, computes these same integers and
 * roundings: the same bits on every ISA, alone or in a batch. */
typedef struct {
    const float *f;          /* x (K) */
    const float *p;          /* x split by split_pairs (bf16 matrices) */
    const uint16_t *b;       /* or x rounded to bf16 (bf16 matrices, mll_bf16_x_active()) */
} xrow;
typedef void (*dots_fn)(const xrow *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out);
/* the same for two (or four) rows of x at once, each weight loaded once for all: out (row i at
 * out + i * ldo); each row's sums exactly those dots_fn gives it alone */
typedef void (*dots2_fn)(const xrow *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                         int64_t ldo);

static float bf16_value(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void rows_generic(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out) {
    const float *x = xr->f;
    for (int64_t r = 0; r < n; r++) {
        const float *wr = (const float *)W->data + (row0 + r) * K;
        float s = 0.0f;
        for (int64_t k = 0; k < K; k++) s += x[k] * wr[k];
        out[r] = s;
    }
}

static void rows2_generic(const xrow *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                          int64_t ldo) {
    rows_generic(&x[0], W, row0, K, n, out);
    rows_generic(&x[1], W, row0, K, n, out + ldo);
}

/* ------------------------------------------------------------------ bf16 blocks
 * The kernels read a bf16 matrix (N, K) in blocks of 4 rows: per block, per 32 columns
 * c .. c + 31, the 4 rows' 32 values one row after the other (256 bytes),
 *     blocks[b][k / 32][r][k % 32] = W[4 b + r][k]
 * with K rounded up to a multiple of 32 (Kp) and N to a multiple of 4, the padding zero. The
 * kernels take a block's 4 rows at once against up to 4 rows of x: each 32 columns, 4 loads
 * of weights and one of each row of x make 4 products a row of x, where a row at a time took
 * a load of x per product (at a batch the loads, not the arithmetic, bounded the loop on Zen
 * 4: 72 against 98 GMAC/s from cache, 8 rows of x, one thread). In this order the 4 rows are
 * one stream in address order; reading 4 (even 2) row-major rows side by side halved the rate
 * from DRAM on Zen 4, whose prefetchers follow one stream per page best. */
#define BF16_BLOCK 32
#define BF16_ROWS 4

static int64_t bf16_cols(int64_t K) { return (K + BF16_BLOCK - 1) / BF16_BLOCK * BF16_BLOCK; }

/* where W[n][k] sits in the blocks of a matrix of Kp (bf16_cols) columns */
static int64_t bf16_at(int64_t n, int64_t k, int64_t Kp) {
    return n / BF16_ROWS * BF16_ROWS * Kp + k / BF16_BLOCK * BF16_ROWS * BF16_BLOCK + n % BF16_ROWS * BF16_BLOCK +
           k % BF16_BLOCK;
}

void mll_bf16_pack(const uint16_t *w, int64_t N, int64_t K, uint16_t *blocks) {
    const int64_t Kp = bf16_cols(K), Np = (N + BF16_ROWS - 1) / BF16_ROWS * BF16_ROWS;
    for (int64_t n = 0; n < Np; n++)
        for (int64_t k = 0; k < Kp; k++) blocks[bf16_at(n, k, Kp)] = n < N && k < K ? w[n * K + k] : 0;
}

void mll_bf16_unpack(const uint16_t *blocks, int64_t N, int64_t K, uint16_t *w) {
    const int64_t Kp = bf16_cols(K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) w[n * K + k] = blocks[bf16_at(n, k, Kp)];
}

/* x (K) in the order the vector bf16 rows read it (see "the dot products"): per block of
 * BF16_BLOCK, its even elements then its odd ones, xp[b + j] = x[b + 2j] and xp[b + 16 + j] =
 * x[b + 2j + 1] (j < 16), the last block zero-padded past K (xp holds bf16_cols(K) floats).
 * The same for every vector width: a vector of 2 VL weights takes its pairs from half a
 * block, VL x from each half. */
static void split_pairs(const float *x, int64_t K, float *xp) {
    for (int64_t b = 0; b < K; b += BF16_BLOCK)
        for (int64_t j = 0; j < BF16_BLOCK / 2; j++) {
            xp[b + j] = b + 2 * j < K ? x[b + 2 * j] : 0.0f;
            xp[b + BF16_BLOCK / 2 + j] = b + 2 * j + 1 < K ? x[b + 2 * j + 1] : 0.0f;
        }
}

/* the portable bf16 rows: each row's products in column order, from its block */
static void rows_bf16_generic(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                              float *out) {
    const float *x = xr->f;
    const uint16_t *w = (const uint16_t *)W->data;
    const int64_t Kp = bf16_cols(K);
    for (int64_t r = row0; r < row0 + n; r++) {
        float s = 0.0f;
        for (int64_t k = 0; k < K; k++) s += x[k] * bf16_value(w[bf16_at(r, k, Kp)]);
        out[r - row0] = s;
    }
}

/* rows_bf16_generic for two and four rows of x (dots2_fn), row by row */
static void rows2_bf16_generic(const xrow *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                               int64_t ldo) {
    for (int i = 0; i < 2; i++) rows_bf16_generic(&x[i], W, row0, K, n, out + i * ldo);
}

static void rows4_bf16_generic(const xrow *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                               int64_t ldo) {
    for (int i = 0; i < 4; i++) rows_bf16_generic(&x[i], W, row0, K, n, out + i * ldo);
}

/* ------------------------------------------------------------------ int8 tiles
 * The kernels read an int8 matrix (N, K) in blocks of 16 rows: per block, per 4 columns
 * k .. k + 3, the 16 rows' 4 values one after the other (64 bytes), each stored as q + 128
 * (q ^ 0x80, an unsigned byte); per block and group, the 16 rows' scales side by side:
 *     tiles[b][k / 4][r][k % 4] = q[16 b + r][k] + 128      tscale[b][g][r] = scale[16 b + r][g]
 * (rows past N: q = 0, scale 0). A 64-byte vector then holds 4 columns of 16 rows. Against
 * one row of x it takes x's 4 bytes broadcast, and VPDPBUSD (AVX512-VNNI: unsigned bytes
 * times signed bytes, each 4 products added into an int32 lane; Intel SDM vol. 2) adds each
 * row's 4 products into that row's lane: a group ends with its 16 sums in one vector, which
 * one conversion and one multiply-add scale for all 16 rows. The weights are one sequential
 * stream, block after block, and each vector serves every row of x of a batch.
 * VPDPBUSD counts (q + 128) xq: the group's sum less 128 x the sum of xq over the group
 * (xtile.c) is exactly sum q xq (|(q + 128) xq| <= 255 x 127 per product: a group below 66,000
 * values cannot overflow). Without VNNI the products are made of q itself (maddubs of |q| and
 * xq with q's sign: pairs in int16, at most 2 x 127 x 127, then madd into int32): the same
 * integers. K and the group are multiples of 4. An Int8Matrix (pyx/gemv.pxi) holds only this
 * form, and gives its row-major values and scales back on request (mll_q8_untile). */
#define TILE_ROWS 16

void mll_q8_tile(const int8_t *q, const float *scale, int64_t N, int64_t K, int64_t group, uint8_t *tiles,
                 float *tscale) {
    const int64_t ng = K / group, nb = (N + TILE_ROWS - 1) / TILE_ROWS;
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < TILE_ROWS; r++) {
            const int64_t n = b * TILE_ROWS + r;
            uint8_t *t = tiles + b * TILE_ROWS * K + 4 * r;
            for (int64_t k = 0; k < K; k += 4)
                for (int j = 0; j < 4; j++) t[k * TILE_ROWS + j] = n < N ? (uint8_t)(q[n * K + k + j] ^ 0x80) : 0x80;
            for (int64_t g = 0; g < ng; g++) tscale[(b * ng + g) * TILE_ROWS + r] = n < N ? scale[n * ng + g] : 0.0f;
        }
}

void mll_q8_untile(const uint8_t *tiles, const float *tscale, int64_t N, int64_t K, int64_t group, int8_t *q,
                   float *scale) {
    const int64_t ng = K / group;
    for (int64_t n = 0; n < N; n++) {
        const int64_t b = n / TILE_ROWS, r = n % TILE_ROWS;
        const uint8_t *t = tiles + b * TILE_ROWS * K + 4 * r;
        if (q)
            for (int64_t k = 0; k < K; k += 4)
                for (int j = 0; j < 4; j++) q[n * K + k + j] = (int8_t)(t[k * TILE_ROWS + j] ^ 0x80);
        if (scale)
            for (int64_t g = 0; g < ng; g++) scale[n * ng + g] = tscale[(b * ng + g) * TILE_ROWS + r];
    }
}

/* nx rows of x for the int8 tiles: quantized per group (quantize_x), their bytes interleaved
 * by 4 (q[(k / 4) 4 nx + 4 i + k % 4] = row i's xq[k]: each column quad's bytes of all rows side
 * by side), and per row i and group g the scale s[i ng + g] and VPDPBUSD's correction c[i ng + g]
 * (128 x the sum of the group's xq) */
typedef struct {
    const int8_t *q;
    const float *s;
    const int32_t *c;
    int nx;
} xtile;
/* out[i ldo + r] = row i of x . W row row0 + r for r < n, i < x->nx (row0 a multiple of 16) */
typedef void (*tiles_fn)(const xtile *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                         int64_t ldo);

static void tiles_q8_generic(const xtile *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                             int64_t ldo) {
    const int64_t gs = W->group, ng = K / gs, nx = x->nx;
    for (int64_t b = row0; b < row0 + n; b += TILE_ROWS) {
        const uint8_t *wb = (const uint8_t *)W->data + b * K;
        const float *sb = W->scale + b * ng;
        const int64_t nr = mll_min64(TILE_ROWS, row0 + n - b);
        for (int64_t i = 0; i < nx; i++) {
            float acc[TILE_ROWS] = {0};
            for (int64_t g = 0; g < ng; g++) {
                int32_t p[TILE_ROWS] = {0};
                for (int64_t k = g * gs; k < (g + 1) * gs; k += 4) {
                    const uint8_t *wq = wb + k * TILE_ROWS;
                    const int8_t *xq = x->q + k * nx + 4 * i;
                    for (int r = 0; r < TILE_ROWS; r++)
                        for (int j = 0; j < 4; j++) p[r] += ((int32_t)wq[4 * r + j] - 128) * xq[j];
                }
                for (int r = 0; r < TILE_ROWS; r++)
                    acc[r] = fmaf((float)p[r], sb[g * TILE_ROWS + r] * x->s[i * ng + g], acc[r]);
            }
            memcpy(out + i * ldo + (b - row0), acc, (size_t)nr * sizeof(float));
        }
    }
}

/* xq (M, K), xs (M, K / gs) <- x (M, K) quantized per row and group of gs (see above). A group
 * with a non-finite value gets scale NaN (the products then are NaN, as float32 ones would be).
 * The vector versions (bottom half) give the same bytes and scales. */
typedef void (*quantize_fn)(const float *x, int8_t *xq, float *xs, int64_t M, int64_t K, int64_t gs);
static void quantize_x_generic(const float *x, int8_t *xq, float *xs, int64_t M, int64_t K, int64_t gs) {
    for (int64_t i = 0; i < M * K; i += gs) {
        float amax = 0.0f;
        int finite = 1;
        for (int64_t k = i; k < i + gs; k++) {
            finite &= isfinite(x[k]) != 0;
            amax = fmaxf(amax, fabsf(x[k]));
        }
        if (!finite) {
            xs[i / gs] = NAN;
            memset(xq + i, 0, (size_t)gs);
            continue;
        }
        float scale = amax / 127.0f;
        xs[i / gs] = scale;
        for (int64_t k = i; k < i + gs; k++) {
            float q = scale > 0.0f ? rintf(x[k] / scale) : 0.0f;
            xq[k] = (int8_t)(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);
        }
    }
}

/* the sum of x (n): the read roof below */
static float sum_generic(const float *x, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; i < n; i++) s += x[i];
    return s;
}

/* rows_avx2, rows2_avx2, rows_bf16_avx2, tiles_q8_avx2, sum_avx2, and the same _avx512 (and
 * tiles_q8_vnni): the bottom half */
#define MLL_DISPATCH_SELF "gemv.c"
#include "dispatch.h"

/* floats one vector step of quantize_x takes (a group must be a whole number of them) */
static const int64_t qx_unit_generic = 1;

/* bf16x: linear_run's one reading of mll_bf16_x_active() for the product (which rounded x
 * to bf16 in xrow.b, the rows_bf16x kernels' input) */
#if defined(MLL_X86)
#define BF16X(name, plain) (bf16x ? name##_bf16x : (plain))
#else
#define BF16X(name, plain) ((void)bf16x, (plain))
#endif

/* The two-row form (float32, bf16) loads each weight vector once for both rows. */
static dots2_fn pick_dots2(const mll_matrix *W, int bf16x) {
    return W->dtype == MLL_F32 ? MLL_PICK(rows2) : W->dtype == MLL_BF16 ? BF16X(rows2, MLL_PICK(rows2_bf16)) : NULL;
}

/* The four-row form, bf16 (NULL otherwise: rows then go two at a time): at a batch these
 * products are bound by their arithmetic per row, and each weight vector loaded (and widened)
 * serves four rows. */
static dots2_fn pick_dots4(const mll_matrix *W, int bf16x) {
    return W->dtype == MLL_BF16 ? BF16X(rows4, MLL_PICK(rows4_bf16)) : NULL;
}

static dots_fn pick_dots(const mll_matrix *W, int bf16x) {
    return W->dtype == MLL_BF16 ? BF16X(rows, MLL_PICK(rows_bf16)) : W->dtype == MLL_F32 ? MLL_PICK(rows) : NULL;
}
#undef BF16X

/* The int8 tiles' kernel: VPDPBUSD where mll_vnni_active() (vnni: linear_run's one reading
 * of it for the product, which filled in xtile.c), else the ISA's own */
static tiles_fn pick_tiles(const mll_matrix *W, int vnni) {
    if (W->dtype != MLL_I8) return NULL;
#if defined(MLL_X86)
    if (vnni) return tiles_q8_vnni;
#else
    (void)vnni;
#endif
    return MLL_PICK(tiles_q8);
}

/* bytes of one value of W */
static int64_t value_bytes(const mll_matrix *W) { return W->dtype == MLL_F32 ? 4 : W->dtype == MLL_BF16 ? 2 : 1; }

mll_matrix mll_matrix_rows(const mll_matrix *W, int64_t r, int64_t K) {
    mll_matrix m = *W;
    const int64_t cols = W->dtype == MLL_BF16 ? bf16_cols(K) : K;    /* bf16: r a multiple of 4 */
    m.data = (const char *)W->data + r * cols * value_bytes(W);    /* int8: r a multiple of 16 */
    if (W->dtype == MLL_I8) m.scale = W->scale + r * (K / W->group);
    return m;
}

/* Rows of W per pass: their dot products go to a buffer on the stack, then bias, GELU and
 * the residual are applied over the whole pass. The dot loop then runs over many rows without
 * a call or an epilogue between groups (faster than an epilogue per group of 4), and
 * y may be the residual itself (in place). A multiple of 4. */
#define ROWS_PER_PASS 64

/* One weight matrix of a product: W (N, K) and bias (N) or NULL give y's columns
 * [col, col + N); gated (act MLL_ACT_SILU_GATED): W is the gate, W2 (N, K) and bias2 the up
 * projection. */
typedef struct {
    mll_matrix W, W2;
    const float *bias, *bias2;
    dots_fn dots, dots2;            /* for W and W2 (float32, bf16) */
    dots2_fn pair, pair2;           /* their two-row forms, or NULL */
    dots2_fn quad, quad2;           /* their four-row forms, or NULL */
    tiles_fn tiles, tiles2;         /* int8: every row of x at once */
    int64_t N, col;
} linear_seg;

enum { ACT_NONE = 0, ACT_GELU = 1, ACT_SILU_GATED = 2, ACT_RELU2 = 3 };

/* Up to MAX_SEGS weight matrices side by side (q, k and v as one product, one trip through
 * the pool): their groups of `unit` rows are numbered one segment after the other and cut into
 * chunks as if they were one matrix (linear_run). */
#define MAX_SEGS 3
/* rows of x a pass takes at once: 8 on the int8 tiles (each weight vector loaded once for
 * all), 4 otherwise */
#define MAX_NX 8

typedef struct {
    const float *x, *add;
    float *y;
    const int8_t *xi;               /* x for the int8 tiles (xtile.q, rows by blocks of MAX_NX), or NULL */
    const float *xs;                /* its scales (M, K / xgroup) */
    const int32_t *xc;              /* its VNNI corrections (M, K / xgroup) */
    const float *xp;                /* x split for bf16 matrices (split_pairs), or NULL */
    const uint16_t *xb;             /* or x rounded to bf16, or NULL; either in rows of bf16_cols(K) */
    int64_t xgroup;                 /* the group xi is quantized by */
    linear_seg seg[MAX_SEGS];
    int64_t seg_g0[MAX_SEGS + 1];   /* first group of each segment; seg_g0[nseg] = all groups */
    int nseg, act;
    int64_t unit;                   /* rows of W per group: 16 (a tile) with int8 matrices, else 4 */
    int64_t ldy, M, K;
    int64_t big, nbig, small;       /* chunks: nbig of `big` groups, then the rest by `small` */
} linear_job;

/* d[i] = the dots of rows m .. m + nx of x (nx <= MAX_NX) with W's rows [j, j + n): on the
 * tiles all at once; else four at a time where W has a four-row form, else two at a time
 * where it has a two-row form, else one by one */
static void dots_of_rows(const linear_job *job, int64_t m, int nx, const mll_matrix *W, dots_fn one, dots2_fn two,
                         dots2_fn four, tiles_fn tiles, int64_t j, int64_t n, float d[][ROWS_PER_PASS]) {
    const int64_t K = job->K;
    if (tiles) {
        const int64_t ng = K / job->xgroup;
        xtile xt = {job->xi + m * K, job->xs + m * ng, job->xc ? job->xc + m * ng : NULL, nx};
        tiles(&xt, W, j, K, n, d[0], ROWS_PER_PASS);
        return;
    }
    xrow xr[MAX_NX];
    const int64_t Kp = bf16_cols(K);
    for (int i = 0; i < nx; i++)
        xr[i] = (xrow){job->x + (m + i) * K, job->xp ? job->xp + (m + i) * Kp : NULL,
                       job->xb ? job->xb + (m + i) * Kp : NULL};
    int i = 0;
    if (four)
        for (; i + 4 <= nx; i += 4) four(&xr[i], W, j, K, n, d[i], ROWS_PER_PASS);
    if (two)
        for (; i + 2 <= nx; i += 2) two(&xr[i], W, j, K, n, d[i], ROWS_PER_PASS);
    for (; i < nx; i++) one(&xr[i], W, j, K, n, d[i]);
}

/* y rows [0, M) (row stride ldy; add the same) x the columns of groups [g0, g1) of one segment
 * (group g = W rows [unit g, unit (g + 1)) clipped to N). GELU and the gated SiLU go through
 * their vector kernels (mll_unary, mll_silu_mul_forward) on pieces of 64 floats: far below
 * their threshold for an OpenMP team. */
static void linear_groups(const linear_job *job, const linear_seg *sg, int64_t g0, int64_t g1) {
    const float *add = job->add;
    float *y = job->y;
    const int64_t ldy = job->ldy, M = job->M;
    const int act = job->act;
    float d[MAX_NX][ROWS_PER_PASS], u[MAX_NX][ROWS_PER_PASS];
    const int64_t N = sg->N;
    int64_t j1 = job->unit * g1 < N ? job->unit * g1 : N;
    for (int64_t j = job->unit * g0; j < j1; j += ROWS_PER_PASS) {
        int64_t n = mll_min64(ROWS_PER_PASS, j1 - j);
        for (int64_t m = 0; m < M; m += MAX_NX) {  /* rows of x together: W read once for all */
            const int nx = M - m >= MAX_NX ? MAX_NX : (int)(M - m);
            dots_of_rows(job, m, nx, &sg->W, sg->dots, sg->pair, sg->quad, sg->tiles, j, n, d);
            if (act == ACT_SILU_GATED)
                dots_of_rows(job, m, nx, &sg->W2, sg->dots2, sg->pair2, sg->quad2, sg->tiles2, j, n, u);
            for (int i = 0; i < nx; i++) {
                float *di = d[i], *ui = u[i];
                if (sg->bias)
                    for (int64_t r = 0; r < n; r++) di[r] += sg->bias[j + r];
                if (act == ACT_GELU) {
                    mll_unary(MLL_GELU, di, di, n);
                } else if (act == ACT_RELU2) {
                    for (int64_t r = 0; r < n; r++) di[r] = di[r] > 0.0f ? di[r] * di[r] : 0.0f;
                } else if (act == ACT_SILU_GATED) {
                    if (sg->bias2)
                        for (int64_t r = 0; r < n; r++) ui[r] += sg->bias2[j + r];
                    mll_silu_mul_forward(di, ui, di, n);
                }
                float *ym = y + (m + i) * ldy + sg->col + j;
                if (add) {
                    const float *am = add + (m + i) * ldy + sg->col + j;
                    for (int64_t r = 0; r < n; r++) ym[r] = di[r] + am[r];
                } else {
                    memcpy(ym, di, (size_t)n * sizeof(float));
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ helper threads
 * A decoding step is dozens of short products back to back. With an OpenMP team each one
 * must wait for every thread to arrive, so one thread the OS has descheduled (a busy machine)
 * stalls the whole step. Here the caller works through the chunks itself and helper threads
 * take chunks only while they are running: the caller waits for chunks a helper has started,
 * never for a helper to show up (but see below: it may run alone). Which thread
 * computes a chunk does not change its arithmetic (fixed groups of 4 rows), so results stay
 * bitwise the same for any thread count.
 *
 * The job is published through one 64-bit word: generation (24 bits) | chunk count (20) |
 * next chunk (20); a helper claims a chunk by compare-and-swap, so a helper still looking at
 * an old generation can never claim a chunk of a new job. */
#define MAX_HELPERS 15
#define HELPER_SPINS 20000       /* about 0.2 ms of polling before a helper sleeps */
#define CHUNK_BITS 20
/* The caller waits for a chunk only while a helper runs it, but on a machine whose cores other
 * processes also want, the helpers cost more than they give: a helper the OS takes off its
 * core holds its chunk for a whole time slice, and a polling helper takes CPU time the caller
 * (the step's critical path) would have had, so two threads can decode slower than one. No
 * rule of thumb tells these apart from a quiet machine, so the pool measures: jobs run in
 * windows of WINDOW_JOBS (a token of GPT-2 small is about 70 jobs), a window either with the
 * helpers or on the caller alone, and each way keeps its time per unit of work (the caller's
 * `work`) averaged over its consecutive windows (a try's window replaces it). A window takes
 * the faster way; the slower is tried again after `interval` windows, which doubles
 * (EXPLORE_MIN up to EXPLORE_MAX) each time the try confirms the choice and starts over when
 * it does not, or when a window of the faster way ran 1.5x slower than its average (the load
 * changed: the slower way is then tried at once). On a quiet machine that leaves about one
 * window in EXPLORE_MAX on the slower way. The way a job runs never changes a result. */
#define WAIT_SPINS 2000
#define WINDOW_JOBS 64
#define EXPLORE_MIN 8
#define EXPLORE_MAX 256
enum { WAY_HELPERS = 0, WAY_ALONE = 1 };

static struct {                        /* under job_owner */
    double ns_per_work[2];             /* each way's average, < 0 until measured */
    int way;                           /* the current window's */
    int64_t jobs, windows;             /* jobs in the current window, windows so far */
    int64_t since, interval;           /* windows since the slower way was tried, and between tries */
    double ns, work;                   /* the current window's totals */
} pool_clock = {{-1.0, -1.0}, WAY_HELPERS, 0, 0, 0, EXPLORE_MIN, 0.0, 0.0};

static _Atomic int pool_tuning = 1;    /* 0: always the helpers (mll_decode_pool_tuning) */

static int faster_way(void) {
    const double *r = pool_clock.ns_per_work;
    return r[WAY_ALONE] >= 0.0 && r[WAY_ALONE] < r[WAY_HELPERS] ? WAY_ALONE : WAY_HELPERS;
}

/* Ends the current window (rate: its ns per unit of work) and picks the next one's way. */
static void end_window(double rate) {
    double *r = pool_clock.ns_per_work;
    int way = pool_clock.way, best = faster_way();
    int jumped = way == best && r[way] >= 0.0 && rate > 1.5 * r[way];
    /* a try's window replaces the way's average: the earlier ones were under another load */
    r[way] = r[way] < 0.0 || way != best ? rate : 0.5 * (r[way] + rate);
    pool_clock.windows++;
    if (way != best) {                 /* a try of the slower way: did it stay slower? */
        int64_t twice = 2 * pool_clock.interval;
        pool_clock.interval = faster_way() == best ? (twice < EXPLORE_MAX ? twice : EXPLORE_MAX) : EXPLORE_MIN;
        pool_clock.since = 0;
    } else {
        pool_clock.since++;
    }
    if (jumped) pool_clock.interval = EXPLORE_MIN;
    best = faster_way();
    int other = 1 - best;
    pool_clock.way = r[other] < 0.0 || jumped || pool_clock.since >= pool_clock.interval ? other : best;
}

/* Adds a job that took ns for `work` units to the current window (caller holds job_owner). */
static void count_job(int64_t ns, double work) {
    pool_clock.ns += (double)ns;
    pool_clock.work += work > 1.0 ? work : 1.0;
    if (++pool_clock.jobs < WINDOW_JOBS) return;
    end_window(pool_clock.ns / pool_clock.work);
    pool_clock.jobs = 0;
    pool_clock.ns = pool_clock.work = 0.0;
}

static mll_chunk_fn job_fn;
static void *job_ctx;
static _Atomic uint64_t job_word;      /* gen | nchunks | next */
static _Atomic int64_t job_done;       /* chunks finished in the current generation */
static _Atomic uint32_t job_gen;       /* generation of the current job (0: none yet) */
static _Atomic int job_helpers;        /* helpers allowed on the current job */
static pthread_mutex_t job_owner = PTHREAD_MUTEX_INITIALIZER;   /* one caller at a time */
static pthread_mutex_t sleep_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sleep_cv = PTHREAD_COND_INITIALIZER;
static int sleepers;                   /* helpers waiting on sleep_cv (under sleep_mu) */
static int helpers_started;            /* under job_owner */

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(MLL_X86)
    _mm_pause();
#endif
}

static void run_chunks(uint32_t gen) {
    for (;;) {
        uint64_t w = atomic_load_explicit(&job_word, memory_order_acquire);
        uint64_t mask = (1u << CHUNK_BITS) - 1;
        int64_t next = (int64_t)(w & mask), count = (int64_t)((w >> CHUNK_BITS) & mask);
        if ((uint32_t)(w >> (2 * CHUNK_BITS)) != gen || next >= count) return;
        if (!atomic_compare_exchange_weak_explicit(&job_word, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        job_fn(job_ctx, next);
        atomic_fetch_add_explicit(&job_done, 1, memory_order_release);
    }
}

static void *helper_main(void *arg) {
    int index = (int)(intptr_t)arg;
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&job_gen, memory_order_acquire)) == seen) {
            if (++spins < HELPER_SPINS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&sleep_mu);
            sleepers++;
            while (atomic_load_explicit(&job_gen, memory_order_acquire) == seen)
                pthread_cond_wait(&sleep_cv, &sleep_mu);
            sleepers--;
            pthread_mutex_unlock(&sleep_mu);
            spins = 0;
        }
        seen = gen;
        if (index < atomic_load_explicit(&job_helpers, memory_order_acquire)) run_chunks(gen);
    }
    return NULL;
}

/* Starts helpers up to n (caller holds job_owner); returns how many are running. */
static int ensure_helpers(int n) {
    if (n > MAX_HELPERS) n = MAX_HELPERS;
    while (helpers_started < n) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&t, &attr, helper_main, (void *)(intptr_t)helpers_started);
        pthread_attr_destroy(&attr);
        if (err) break;
        helpers_started++;
    }
    return helpers_started < n ? helpers_started : n;
}

void mll_decode_parallel(int64_t nchunks, int nthreads, double work, mll_chunk_fn fn, void *ctx) {
    if (nchunks <= 0) return;
    if (nthreads > nchunks) nthreads = (int)nchunks;
    /* another caller owns the helpers (Python threads without the GIL): do it alone, unmeasured */
    if (nthreads <= 1 || nchunks >= (1 << CHUNK_BITS) || pthread_mutex_trylock(&job_owner) != 0) {
        for (int64_t c = 0; c < nchunks; c++) fn(ctx, c);
        return;
    }
    int64_t t0 = now_ns();
    int helpers = pool_clock.way == WAY_ALONE && pool_tuning ? 0 : ensure_helpers(nthreads - 1);
    if (helpers == 0) {
        for (int64_t c = 0; c < nchunks; c++) fn(ctx, c);
    } else {
        job_fn = fn;
        job_ctx = ctx;
        uint32_t gen = (atomic_load_explicit(&job_gen, memory_order_relaxed) + 1) & 0xFFFFFFu;
        if (gen == 0) gen = 1;
        atomic_store_explicit(&job_done, 0, memory_order_relaxed);
        atomic_store_explicit(&job_helpers, helpers, memory_order_relaxed);
        atomic_store_explicit(&job_word, ((uint64_t)gen << (2 * CHUNK_BITS)) | ((uint64_t)nchunks << CHUNK_BITS),
                              memory_order_release);
        atomic_store_explicit(&job_gen, gen, memory_order_release);
        pthread_mutex_lock(&sleep_mu);
        if (sleepers) pthread_cond_broadcast(&sleep_cv);
        pthread_mutex_unlock(&sleep_mu);
        run_chunks(gen);
        /* only chunks a helper has claimed can still be running */
        for (int spins = 0; atomic_load_explicit(&job_done, memory_order_acquire) < nchunks; spins++) {
            if (spins < WAIT_SPINS) cpu_relax();
            else sched_yield();
        }
    }
    if (pool_tuning) count_job(now_ns() - t0, work);
    pthread_mutex_unlock(&job_owner);
}

void mll_decode_pool_tuning(int on) { atomic_store(&pool_tuning, on != 0); }

void mll_decode_pool_stats(double *helpers_ns, double *alone_ns, int64_t *windows, int *alone) {
    pthread_mutex_lock(&job_owner);
    *helpers_ns = pool_clock.ns_per_work[WAY_HELPERS];
    *alone_ns = pool_clock.ns_per_work[WAY_ALONE];
    *windows = pool_clock.windows;
    *alone = pool_clock.way == WAY_ALONE;
    pthread_mutex_unlock(&job_owner);
}

/* ------------------------------------------------------------------ the product */
/* groups [g0, g1) of the concatenated segments */
static void linear_range(const linear_job *j, int64_t g0, int64_t g1) {
    for (int s = 0; s < j->nseg; s++) {
        int64_t a = g0 > j->seg_g0[s] ? g0 : j->seg_g0[s], b = mll_min64(g1, j->seg_g0[s + 1]);
        if (a < b)
            linear_groups(j, &j->seg[s], a - j->seg_g0[s], b - j->seg_g0[s]);
    }
}

static void linear_chunk(void *ctx, int64_t c) {
    const linear_job *j = ctx;
    int64_t g0 = c < j->nbig ? c * j->big : j->nbig * j->big + (c - j->nbig) * j->small;
    linear_range(j, g0, mll_min64(g0 + (c < j->nbig ? j->big : j->small), j->seg_g0[j->nseg]));
}

/* The caller's buffers for x quantized and x split (grown as needed, kept for the next product) */
typedef struct {
    void *p;
    size_t nbytes;
} x_buffer;
static _Thread_local x_buffer xq_buf, xp_buf;

static void *grown(x_buffer *b, size_t need) {
    if (need > b->nbytes) {
        if (b->p) mll_free(b->p, b->nbytes);
        b->p = mll_alloc(need);
        b->nbytes = b->p ? need : 0;
    }
    return b->p;
}

/* x (M, K) for the int8 tiles (xtile): xs (M, ng) scales and, if xc is not NULL, xc (M, ng)
 * VPDPBUSD's corrections; xi, x's bytes by blocks of MAX_NX rows (a block of nb rows at
 * xi + m K, its bytes interleaved by 4), quantized per group gs; xq (M K bytes) is scratch. */
static void tile_x(const float *x, int64_t M, int64_t K, int64_t gs, float *xs, int32_t *xc, int8_t *xi,
                   int8_t *xq) {
    const int64_t ng = K / gs;
    quantize_fn quantize = gs % MLL_PICK(qx_unit) ? quantize_x_generic : MLL_PICK(quantize_x);
    quantize(x, M == 1 ? xi : xq, xs, M, K, gs);           /* one row: interleaved is as it is */
    if (M == 1) xq = xi;
    for (int64_t i = 0; xc && i < M * ng; i++) {
        int32_t sum = 0;
        for (int64_t k = i * gs; k < (i + 1) * gs; k++) sum += xq[k];
        xc[i] = 128 * sum;
    }
    if (M == 1) return;
    for (int64_t m = 0; m < M; m += MAX_NX) {
        const int64_t nb = M - m < MAX_NX ? M - m : MAX_NX;
        int8_t *blk = xi + m * K;
        for (int64_t i = 0; i < nb; i++)
            for (int64_t k = 0; k < K; k += 4) memcpy(blk + k * nb + 4 * i, xq + (m + i) * K + k, 4);
    }
}

/* Runs the job (segments filled in) on the pool; `weights` = values of W read per row of x.
 * With int8 matrices, x is quantized first, by their group (the caller makes every int8
 * matrix of one product share it), with bf16 ones split (split_pairs); -1 if a buffer for
 * that cannot be had. */
static int linear_run(linear_job *job, int64_t weights) {
    const int64_t M = job->M, K = job->K;
    job->seg_g0[0] = 0;
    job->xi = NULL;
    job->xc = NULL;
    job->xp = NULL;
    job->xb = NULL;
    job->unit = 4;
    int bf16 = 0;
    for (int s = 0; s < job->nseg; s++)
        bf16 |= job->seg[s].W.dtype == MLL_BF16 || (job->seg[s].W2.data && job->seg[s].W2.dtype == MLL_BF16);
    const int bf16x = bf16 && mll_bf16_x_active();
    if (bf16 && M > 0) {
        const int64_t Kp = bf16_cols(K);
#if defined(MLL_X86)
        if (bf16x) {
            uint16_t *xb = grown(&xp_buf, (size_t)(M * Kp) * sizeof(uint16_t));
            if (!xb) return -1;
            round_x_bf16(job->x, M, K, Kp, xb);
            job->xb = xb;
        }
#endif
        if (!bf16x) {
            float *xp = grown(&xp_buf, (size_t)(M * Kp) * sizeof(float));
            if (!xp) return -1;
            for (int64_t m = 0; m < M; m++) split_pairs(job->x + m * K, K, xp + m * Kp);
            job->xp = xp;
        }
    }
    const int vnni = mll_vnni_active();
    for (int s = 0; s < job->nseg; s++) {
        linear_seg *sg = &job->seg[s];
        sg->dots = pick_dots(&sg->W, bf16x);
        sg->dots2 = sg->W2.data ? pick_dots(&sg->W2, bf16x) : NULL;
        sg->pair = pick_dots2(&sg->W, bf16x);
        sg->pair2 = sg->W2.data ? pick_dots2(&sg->W2, bf16x) : NULL;
        sg->quad = pick_dots4(&sg->W, bf16x);
        sg->quad2 = sg->W2.data ? pick_dots4(&sg->W2, bf16x) : NULL;
        sg->tiles = pick_tiles(&sg->W, vnni);
        sg->tiles2 = sg->W2.data ? pick_tiles(&sg->W2, vnni) : NULL;
        if (sg->W.dtype == MLL_I8) job->xgroup = sg->W.group;
        else if (sg->W2.data && sg->W2.dtype == MLL_I8) job->xgroup = sg->W2.group;
        else continue;
        job->unit = TILE_ROWS;
        if (job->xi || M <= 0) continue;
        const int64_t ng = K / job->xgroup;
        float *xs = grown(&xq_buf, (size_t)(M * ng) * (sizeof(float) + sizeof(int32_t)) + (size_t)(2 * M * K));
        if (!xs) return -1;
        int32_t *xc = vnni ? (int32_t *)(xs + M * ng) : NULL;       /* only VPDPBUSD reads them */
        int8_t *xi = (int8_t *)(xs + 2 * M * ng);
        tile_x(job->x, M, K, job->xgroup, xs, xc, xi, xi + M * K);
        job->xi = xi;
        job->xs = xs;
        job->xc = xc;
    }
    for (int s = 0; s < job->nseg; s++)
        job->seg_g0[s + 1] = job->seg_g0[s] + (job->seg[s].N + job->unit - 1) / job->unit;
    int64_t groups = job->seg_g0[job->nseg];
    if (M <= 0 || groups == 0) return 0;
    int nt = weights >= GEMV_PAR_MIN ? mll_get_num_threads() : 1;
    if (nt <= 1) {
        linear_range(job, 0, groups);
        return 0;
    }
    /* About 4 chunks per thread, at most 128 weight rows each, and the last quarter of the
     * rows in chunks 4x smaller: threads then finish a product within ~1/8 of a big chunk of
     * each other. */
    int64_t big = groups / (4 * nt), most = 128 / job->unit;
    big = big < 1 ? 1 : big > most ? most : big;
    int64_t small = big / 4 < 1 ? 1 : big / 4;
    job->big = big;
    job->small = small;
    job->nbig = (groups - groups / 4) / big;
    int64_t nchunks = job->nbig + (groups - job->nbig * big + small - 1) / small;
    mll_decode_parallel(nchunks, nt, (double)weights, linear_chunk, job);
    return 0;
}

int mll_linear(const float *x, const mll_matrix *W, const float *bias, const float *add, float *y, int64_t M,
               int64_t N, int64_t K, int act) {
    if (M <= 0 || N <= 0) return 0;
    linear_job job = {.x = x, .add = add, .y = y, .nseg = 1, .act = act == 1 ? ACT_GELU : act == 2 ? ACT_RELU2 : ACT_NONE,
                      .ldy = N, .M = M, .K = K};
    job.seg[0] = (linear_seg){.W = *W, .bias = bias, .N = N, .col = 0};
    return linear_run(&job, N * K);
}

void mll_linear_rows(const float *x, const float *W, const float *bias, const float *add, float *y,
                     int64_t M, int64_t N, int64_t K, int act) {
    mll_matrix w = {W, NULL, MLL_F32, 0};
    mll_linear(x, &w, bias, add, y, M, N, K, act);      /* float32 needs no buffer: cannot fail */
}

/* b directly follows a's N rows in memory, in the same encoding (data and scales) */
static int follows(const mll_matrix *a, int64_t N, const mll_matrix *b, int64_t K) {
    if (a->dtype != b->dtype || (a->dtype == MLL_I8 && a->group != b->group)) return 0;
    mll_matrix end = mll_matrix_rows(a, N, K);
    return end.data == b->data && (a->dtype != MLL_I8 || end.scale == b->scale);
}

int mll_linear_cat(const float *x, int nseg, const mll_matrix *W, const float *const *bias, const int64_t *N,
                   float *y, int64_t M, int64_t K) {
    linear_job job = {.x = x, .y = y, .act = ACT_NONE, .M = M, .K = K};
    int64_t total = 0;
    for (int s = 0; s < nseg && s < MAX_SEGS; s++) {
        const float *b = bias ? bias[s] : NULL;
        linear_seg *prev = job.nseg ? &job.seg[job.nseg - 1] : NULL;
        /* W rows (and biases) that follow the previous segment's in memory (a fused qkv):
         * one segment, so the groups are exactly those of the one matrix */
        if (prev && follows(&prev->W, prev->N, &W[s], K) && prev->N % (W[s].dtype == MLL_I8 ? TILE_ROWS : 4) == 0 &&
            ((!b && !prev->bias) || (b && prev->bias && b == prev->bias + prev->N))) {
            prev->N += N[s];
        } else {
            job.seg[job.nseg++] = (linear_seg){.W = W[s], .bias = b, .N = N[s], .col = total};
        }
        total += N[s];
    }
    job.ldy = total;
    return linear_run(&job, total * K);
}

int mll_linear_gated(const float *x, const mll_matrix *Wg, const float *bg, const mll_matrix *Wu, const float *bu,
                     float *y, int64_t M, int64_t N, int64_t K) {
    if (M <= 0 || N <= 0) return 0;
    linear_job job = {.x = x, .y = y, .nseg = 1, .act = ACT_SILU_GATED, .ldy = N, .M = M, .K = K};
    job.seg[0] = (linear_seg){.W = *Wg, .W2 = *Wu, .bias = bg, .bias2 = bu, .N = N, .col = 0};
    return linear_run(&job, 2 * N * K);
}

/* ------------------------------------------------------------------ the roof
 * A plain sum over the same bytes, on the same threads and pool: the fastest any kernel can
 * read them, to hold the GEMV against (bench/bench_generate.py). Fixed chunks, partial sums
 * added in chunk order: the same result for any thread count. */
#define SUM_CHUNK ((int64_t)1 << 16)     /* floats: 256 KiB, about one chunk of linear_rows */

typedef struct {
    float (*sum)(const float *, int64_t);
    const float *x;
    int64_t n;
    float *parts;
} sum_job;

static void sum_chunk(void *ctx, int64_t c) {
    const sum_job *j = ctx;
    int64_t i0 = c * SUM_CHUNK;
    j->parts[c] = j->sum(j->x + i0, mll_min64(SUM_CHUNK, j->n - i0));
}

float mll_stream_sum(const float *x, int64_t n) {
    if (n <= 0) return 0.0f;
    int64_t nchunks = (n + SUM_CHUNK - 1) / SUM_CHUNK;
    float *parts = mll_alloc((size_t)nchunks * sizeof(float));
    if (!parts) return NAN;
    sum_job job = {MLL_PICK(sum), x, n, parts};
    mll_decode_parallel(nchunks, n >= GEMV_PAR_MIN ? mll_get_num_threads() : 1, (double)n, sum_chunk, &job);
    float s = 0.0f;
    for (int64_t c = 0; c < nchunks; c++) s += parts[c];
    mll_free(parts, (size_t)nchunks * sizeof(float));
    return s;
}

/* ------------------------------------------------------------------ huge pages
 * Decoding streams every weight once per token. With 4 KiB pages that is a TLB miss (a page
 * walk, two-dimensional under a hypervisor) every 4 KiB, and the hardware prefetchers stop at
 * each page edge, so one core reads 2 MiB pages faster (bench_generate.py's stream sum runs
 * over the advised weights, next to torch.sum over 4 KiB pages). MADV_HUGEPAGE marks the range,
 * MADV_COLLAPSE (Linux 6.1) turns its pages, already written, into 2 MiB pages now instead
 * of whenever khugepaged gets to them.
 *
 * The 2 MiB pages at both ends of a buffer usually hold neighbouring memory too (other
 * tensors, allocator headers); they are collapsed as well, which changes no byte of anyone's
 * memory (it is what khugepaged does in the background all the time) and brings the coverage
 * of a model's weights close to all of it. Each huge page is collapsed on its own, so one that cannot be
 * (part of it unmapped, another mapping) only leaves that page as it was. */
#define HUGE_PAGE ((uintptr_t)2 << 20)
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25   /* include/uapi/asm-generic/mman-common.h */
#endif

int64_t mll_advise_hugepages(void *p, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    uintptr_t a = (uintptr_t)p, e = a + nbytes;
    uintptr_t lo = a & ~(HUGE_PAGE - 1), hi = (e + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    if (nbytes == 0) return 0;
    int64_t covered = 0, refused = 0;
    for (uintptr_t h = lo; h < hi; h += HUGE_PAGE) {
        if (madvise((void *)h, HUGE_PAGE, MADV_HUGEPAGE) != 0 || madvise((void *)h, HUGE_PAGE, MADV_COLLAPSE) != 0) {
            refused++;
            continue;
        }
        uintptr_t s0 = h > a ? h : a, s1 = h + HUGE_PAGE < e ? h + HUGE_PAGE : e;
        covered += (int64_t)(s1 - s0);
    }
    return covered == 0 && refused ? -1 : covered;
#else
    (void)p;
    (void)nbytes;
    return -1;
#endif
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */
/* The narrow weights are read ahead by software prefetch, PREFETCH_BYTES beyond the line in
 * use: at 2 or 1 bytes a weight the loops take in too few lines per instruction window for
 * the hardware prefetchers alone to keep enough reads from DRAM in flight. */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 4096
#endif
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
/* x . w over K as the VL-lane vector of 8 accumulators' sum. Row after row, each read front
 * to back: the weights are then one sequential stream in address order, which the hardware
 * prefetchers follow best (4 rows interleaved read slower from DRAM); 8 accumulators come
 * closer to a plain sum over the same bytes than 4 (bench_generate.py --kernels holds each
 * layer kind against that sum). */
static inline MLL_TARGET V FN(dot_vec)(const float *x, const float *w, int64_t K) {
    V a0 = v_zero(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    int64_t k = 0;
    for (; k + 8 * VL <= K; k += 8 * VL) {
        a0 = v_fmadd(v_load(w + k), v_load(x + k), a0);
        a1 = v_fmadd(v_load(w + k + VL), v_load(x + k + VL), a1);
        a2 = v_fmadd(v_load(w + k + 2 * VL), v_load(x + k + 2 * VL), a2);
        a3 = v_fmadd(v_load(w + k + 3 * VL), v_load(x + k + 3 * VL), a3);
        a4 = v_fmadd(v_load(w + k + 4 * VL), v_load(x + k + 4 * VL), a4);
        a5 = v_fmadd(v_load(w + k + 5 * VL), v_load(x + k + 5 * VL), a5);
        a6 = v_fmadd(v_load(w + k + 6 * VL), v_load(x + k + 6 * VL), a6);
        a7 = v_fmadd(v_load(w + k + 7 * VL), v_load(x + k + 7 * VL), a7);
    }
    for (; k + VL <= K; k += VL) a0 = v_fmadd(v_load(w + k), v_load(x + k), a0);
    if (k < K) a0 = v_fmadd(v_loadn(w + k, K - k), v_loadn(x + k, K - k), a0);
    return v_add(v_add(v_add(a0, a1), v_add(a2, a3)), v_add(v_add(a4, a5), v_add(a6, a7)));
}

#if MLL_VEC == 512
/* The four 16-lane sums a, b, c, d reduced together into out[0..4): one shuffle-and-add tree
 * for four rows instead of one per row. */
static inline MLL_TARGET void FN(hsum4)(V a, V b, V c, V d, float *out) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
#else
static inline MLL_TARGET void FN(hsum4)(V a, V b, V c, V d, float *out) {
    out[0] = v_hsum(a);
    out[1] = v_hsum(b);
    out[2] = v_hsum(c);
    out[3] = v_hsum(d);
}
#endif

static MLL_TARGET void FN(rows)(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                float *out) {
    const float *x = xr->f;
    const float *w = (const float *)W->data + row0 * K;
    int64_t r = 0;
    for (; r + 4 <= n; r += 4) {
        const float *wr = w + r * K;
        /* one statement each: the rows are then read in address order (arguments of one call
         * may be evaluated in any order, and reading a group of rows backwards is slower) */
        V s0 = FN(dot_vec)(x, wr, K);
        V s1 = FN(dot_vec)(x, wr + K, K);
        V s2 = FN(dot_vec)(x, wr + 2 * K, K);
        V s3 = FN(dot_vec)(x, wr + 3 * K, K);
        FN(hsum4)(s0, s1, s2, s3, out + r);
    }
    for (; r < n; r++) out[r] = v_hsum(FN(dot_vec)(x, w + r * K, K));
}

/* dot_vec for two rows of x at once (each w vector loaded once): *s0, *s1 get exactly what
 * dot_vec(x0, w, K) and dot_vec(x1, w, K) return (the same accumulators, order and tail) */
static inline MLL_TARGET void FN(dot_vec2)(const float *x0, const float *x1, const float *w, int64_t K, V *s0,
                                           V *s1) {
    V a[8], b[8];
    for (int i = 0; i < 8; i++) a[i] = b[i] = v_zero();
    int64_t k = 0;
    for (; k + 8 * VL <= K; k += 8 * VL)
        for (int i = 0; i < 8; i++) {
            V wv = v_load(w + k + i * VL);
            a[i] = v_fmadd(wv, v_load(x0 + k + i * VL), a[i]);
            b[i] = v_fmadd(wv, v_load(x1 + k + i * VL), b[i]);
        }
    for (; k + VL <= K; k += VL) {
        V wv = v_load(w + k);
        a[0] = v_fmadd(wv, v_load(x0 + k), a[0]);
        b[0] = v_fmadd(wv, v_load(x1 + k), b[0]);
    }
    if (k < K) {
        V wv = v_loadn(w + k, K - k);
        a[0] = v_fmadd(wv, v_loadn(x0 + k, K - k), a[0]);
        b[0] = v_fmadd(wv, v_loadn(x1 + k, K - k), b[0]);
    }
    *s0 = v_add(v_add(v_add(a[0], a[1]), v_add(a[2], a[3])), v_add(v_add(a[4], a[5]), v_add(a[6], a[7])));
    *s1 = v_add(v_add(v_add(b[0], b[1]), v_add(b[2], b[3])), v_add(v_add(b[4], b[5]), v_add(b[6], b[7])));
}

static MLL_TARGET void FN(rows2)(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
                                 int64_t ldo) {
    const float *x0 = xr[0].f, *x1 = xr[1].f;
    const float *w = (const float *)W->data + row0 * K;
    int64_t r = 0;
    for (; r + 4 <= n; r += 4) {
        V s0[4], s1[4];
        for (int q = 0; q < 4; q++) FN(dot_vec2)(x0, x1, w + (r + q) * K, K, &s0[q], &s1[q]);
        FN(hsum4)(s0[0], s0[1], s0[2], s0[3], out + r);
        FN(hsum4)(s1[0], s1[1], s1[2], s1[3], out + ldo + r);
    }
    for (; r < n; r++) {
        V s0, s1;
        FN(dot_vec2)(x0, x1, w + r * K, K, &s0, &s1);
        out[r] = v_hsum(s0);
        out[ldo + r] = v_hsum(s1);
    }
}

#if MLL_VEC == 512
/* 2 VL stored bf16 values at p as VL 32-bit lanes, lane j holding values 2j (low half) and
 * 2j + 1 (high half): *even gets the first of each pair widened (a shift), *odd the second
 * (a mask) */
static inline MLL_TARGET void FN(load_bf16_pairs)(const uint16_t *p, V *even, V *odd) {
    __m512i u = _mm512_loadu_si512((const void *)p);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}
#else
static inline MLL_TARGET void FN(load_bf16_pairs)(const uint16_t *p, V *even, V *odd) {
    __m256i u = _mm256_loadu_si256((const __m256i *)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)));
}
#endif

/* One block of 4 bf16 rows (wb: its first value; see "bf16 blocks") against NX rows of x
 * split by split_pairs (xp[i]): s[q][i] = row q of the block . row i of x. Each 2 VL weights
 * loaded are widened once for all rows of x (a shift and a mask), each half block of x loaded
 * once for the 4 rows; one accumulator per (q, i), taking the blocks of columns in order,
 * each half's even products then its odd ones, whatever NX: a row's sums are the same bits
 * alone or in a batch. */
static inline __attribute__((always_inline)) MLL_TARGET void FN(block_bf16)(
        const float *const *xp, const int NX, const uint16_t *wb, int64_t Kp, int prefetch, V s[4][4]) {
    enum { H = BF16_BLOCK / 2, HALVES = BF16_BLOCK / (2 * VL) };
    for (int q = 0; q < BF16_ROWS; q++)
        for (int i = 0; i < NX; i++) s[q][i] = v_zero();
    for (int64_t c = 0; c < Kp; c += BF16_BLOCK) {
        const uint16_t *w = wb + c * BF16_ROWS;
        if (prefetch)
            for (int b = 0; b < BF16_ROWS * BF16_BLOCK * 2; b += 64) PREFETCH((const char *)w + PREFETCH_BYTES + b);
        for (int h = 0; h < HALVES; h++) {
            V xe[4], xo[4], e, o;
            for (int i = 0; i < NX; i++) {
                xe[i] = v_load(xp[i] + c + VL * h);
                xo[i] = v_load(xp[i] + c + H + VL * h);
            }
#pragma GCC unroll 4
            for (int q = 0; q < BF16_ROWS; q++) {
                FN(load_bf16_pairs)(w + q * BF16_BLOCK + 2 * VL * h, &e, &o);
#pragma GCC unroll 4
                for (int i = 0; i < NX; i++) s[q][i] = v_fmadd(o, xo[i], v_fmadd(e, xe[i], s[q][i]));
            }
        }
    }
}

/* a block's sums s[q][i] (row q of the block . row i of x) to out[i ldo + q], the first
 * min(nr, 4) rows of the block (the last block of a matrix may hold fewer real rows) */
static inline __attribute__((always_inline)) MLL_TARGET void FN(store_block)(V s[4][4], const int NX, int64_t nr,
                                                                            float *out, int64_t ldo) {
    for (int i = 0; i < NX; i++) {
        if (nr >= BF16_ROWS) {
            FN(hsum4)(s[0][i], s[1][i], s[2][i], s[3][i], out + i * ldo);
            continue;
        }
        float t[BF16_ROWS];
        FN(hsum4)(s[0][i], s[1][i], s[2][i], s[3][i], t);
        for (int64_t q = 0; q < nr; q++) out[i * ldo + q] = t[q];
    }
}

/* rows_bf16 for NX rows of x (row i's results at out + i ldo); row0 a multiple of 4 */
static inline __attribute__((always_inline)) MLL_TARGET void FN(rowsn_bf16)(
        const xrow *xr, const int NX, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
        int64_t ldo) {
    const float *xp[4];
    for (int i = 0; i < NX; i++) xp[i] = xr[i].p;
    const int64_t Kp = bf16_cols(K);
    const uint16_t *w = (const uint16_t *)W->data + row0 * Kp;
    /* software prefetch ahead of the bf16 loop: on Intel Xeons it kept more reads in flight; on
     * AMD Zen 4 it cost 10-20% of this loop's rate (and 17% of a GPT-2 step), its prefetchers
     * keeping up without it */
    const int pf = !mll_cpu_is_amd();
    for (int64_t r = 0; r < n; r += BF16_ROWS) {
        V s[4][4];                                         /* [row of the block][row of x] */
        FN(block_bf16)(xp, NX, w + r * Kp, Kp, pf, s);
        FN(store_block)(s, NX, n - r, out + r, ldo);
    }
}

/* the dots_fn of bf16 matrices, and their two- and four-row forms (dots2_fn; four rows only
 * at AVX-512's 32 registers, two pairs at AVX2's 16) */
static MLL_TARGET void FN(rows_bf16)(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                     float *out) {
    FN(rowsn_bf16)(xr, 1, W, row0, K, n, out, 0);
}

static MLL_TARGET void FN(rows2_bf16)(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                      float *out, int64_t ldo) {
    FN(rowsn_bf16)(xr, 2, W, row0, K, n, out, ldo);
}

static MLL_TARGET void FN(rows4_bf16)(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                      float *out, int64_t ldo) {
#if MLL_VEC == 512
    FN(rowsn_bf16)(xr, 4, W, row0, K, n, out, ldo);
#else
    FN(rowsn_bf16)(xr, 2, W, row0, K, n, out, ldo);
    FN(rowsn_bf16)(xr + 2, 2, W, row0, K, n, out + 2 * ldo, ldo);
#endif
}

#if MLL_VEC == 512
/* bf16 rows with x in bf16 too (AVX512-BF16, mll_bf16_x_active(); xrow.b: x rounded to bf16,
 * zero-padded to bf16_cols(K)): VDPBF16PS (Intel SDM vol. 2) adds to each float lane the
 * products of its pair of weights with its pair of x (exact: 8-bit significands), the odd one
 * first. One instruction per 32 weights and row of x, nothing to widen: half the arithmetic of
 * rows_bf16's two multiply-adds, which bounds a batch. Per 32 columns of a block, 4 loads of
 * weights and one of each row of x make 4 NX products; one accumulator per (row of the block,
 * row of x), the columns in order whatever NX (the same bits alone or in a batch), 4 chains
 * even for one row of x. */
static inline __attribute__((always_inline)) MLL_AVX512_BF16 void block_bf16x(
        const uint16_t *const *xb, const int NX, const uint16_t *wb, int64_t Kp, __m512 s[4][4]) {
    for (int q = 0; q < BF16_ROWS; q++)
        for (int i = 0; i < NX; i++) s[q][i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < Kp; c += BF16_BLOCK) {
        const uint16_t *w = wb + c * BF16_ROWS;
        __m512bh wv[BF16_ROWS];
        for (int q = 0; q < BF16_ROWS; q++) wv[q] = (__m512bh)_mm512_loadu_si512((const void *)(w + q * BF16_BLOCK));
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(xb[i] + c));
            for (int q = 0; q < BF16_ROWS; q++) s[q][i] = _mm512_dpbf16_ps(s[q][i], wv[q], xv);
        }
    }
}

static inline __attribute__((always_inline)) MLL_AVX512_BF16 void rowsn_bf16x(
        const xrow *xr, const int NX, const mll_matrix *W, int64_t row0, int64_t K, int64_t n, float *out,
        int64_t ldo) {
    const uint16_t *xb[4];
    for (int i = 0; i < NX; i++) xb[i] = xr[i].b;
    const int64_t Kp = bf16_cols(K);
    const uint16_t *w = (const uint16_t *)W->data + row0 * Kp;
    for (int64_t r = 0; r < n; r += BF16_ROWS) {
        __m512 s[4][4];                                    /* [row of the block][row of x] */
        block_bf16x(xb, NX, w + r * Kp, Kp, s);
        store_block_avx512(s, NX, n - r, out + r, ldo);
    }
}

/* the dots_fn of bf16 matrices with x in bf16, and their two- and four-row forms */
static MLL_AVX512_BF16 void rows_bf16x(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                       float *out) {
    rowsn_bf16x(xr, 1, W, row0, K, n, out, 0);
}

static MLL_AVX512_BF16 void rows2_bf16x(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                        float *out, int64_t ldo) {
    rowsn_bf16x(xr, 2, W, row0, K, n, out, ldo);
}

static MLL_AVX512_BF16 void rows4_bf16x(const xrow *xr, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                        float *out, int64_t ldo) {
    rowsn_bf16x(xr, 4, W, row0, K, n, out, ldo);
}

/* x (M, K) rounded to bf16, nearest even (VCVTNEPS2BF16), rows of Kp (a multiple of 32) zero-padded */
static MLL_AVX512_BF16 void round_x_bf16(const float *x, int64_t M, int64_t K, int64_t Kp, uint16_t *xb) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        uint16_t *br = xb + m * Kp;
        for (int64_t k = 0; k < Kp; k += 16) {
            const __mmask16 keep = k + 16 <= K ? 0xffff : k < K ? (__mmask16)((1u << (K - k)) - 1) : 0;
            __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(keep, xr + k));
            _mm256_storeu_si256((__m256i *)(br + k), (__m256i)b);
        }
    }
}
#endif

/* int8 tiles (see "int8 tiles" in the top half): one block of 16 weight rows against NX rows
 * of x (xq: row 0's bytes, xstep bytes per column quad; xs: row 0's scales, row i's i ng on),
 * the 16 sums of row i of x to out + i ldo (nr of them). Per group, each row's int32 lanes
 * (16 / VL vectors) are scaled once into its float ones. Without VNNI the products are made
 * from q: maddubs of |q| and x given q's sign, madd into int32. */
#define TQ (16 / VL)                    /* vectors per 16 rows */
#if MLL_VEC == 512
#define TILE_NX 4                       /* rows of x per pass (registers: 2 TILE_NX vectors) */
#define q8_sign __mmask64
#define q8_sign_of(w) _mm512_movepi8_mask(w)
static inline MLL_TARGET __m512i FN(q8_dot4)(__m512i acc, __m512i aw, q8_sign neg, const int8_t *x4) {
    int32_t xv;
    memcpy(&xv, x4, 4);
    __m512i xb = _mm512_set1_epi32(xv);
    xb = _mm512_mask_sub_epi8(xb, neg, _mm512_setzero_si512(), xb);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(aw, xb), _mm512_set1_epi16(1)));
}
#define q8_load(p) _mm512_xor_si512(_mm512_loadu_si512((const void *)(p)), _mm512_set1_epi8((char)0x80))
#define q8_abs(w) _mm512_abs_epi8(w)
#define q8_zero() _mm512_setzero_si512()
#else
#define TILE_NX 2
#define q8_sign __m256i
#define q8_sign_of(w) (w)
static inline MLL_TARGET __m256i FN(q8_dot4)(__m256i acc, __m256i aw, q8_sign w, const int8_t *x4) {
    int32_t xv;
    memcpy(&xv, x4, 4);
    __m256i xb = _mm256_sign_epi8(_mm256_set1_epi32(xv), w);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xb), _mm256_set1_epi16(1)));
}
#define q8_load(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p)), _mm256_set1_epi8((char)0x80))
#define q8_abs(w) _mm256_abs_epi8(w)
#define q8_zero() _mm256_setzero_si256()
#endif

static inline __attribute__((always_inline)) MLL_TARGET void FN(tile16_q8)(
        const int8_t *xq, int64_t xstep, const float *xs, int64_t ng, const int NX, const uint8_t *w,
        const float *ws, int64_t gs, float *out, int64_t ldo, int64_t nr) {
    V acc[TILE_NX][TQ];
    for (int i = 0; i < NX; i++)
        for (int v = 0; v < TQ; v++) acc[i][v] = v_zero();
    for (int64_t g = 0; g < ng; g++) {
        VI s[TILE_NX][TQ];
        for (int i = 0; i < NX; i++)
            for (int v = 0; v < TQ; v++) s[i][v] = q8_zero();
        for (int64_t k = g * gs; k < (g + 1) * gs; k += 4) {
            const uint8_t *wq = w + k * 16;
            const int8_t *xk = xq + k / 4 * xstep;
#pragma GCC unroll 2
            for (int v = 0; v < TQ; v++) {
                VI wv = q8_load(wq + v * 64 / TQ);
                q8_sign neg = q8_sign_of(wv);
                VI aw = q8_abs(wv);
#pragma GCC unroll 4
                for (int i = 0; i < NX; i++) s[i][v] = FN(q8_dot4)(s[i][v], aw, neg, xk + 4 * i);
            }
        }
        for (int v = 0; v < TQ; v++) {
            V wsv = v_load(ws + g * 16 + v * VL);
            for (int i = 0; i < NX; i++)
                acc[i][v] = v_fmadd(vi_tof(s[i][v]), v_mul(wsv, v_set1(xs[i * ng + g])), acc[i][v]);
        }
    }
    for (int i = 0; i < NX; i++)
        for (int v = 0; v < TQ; v++) {
            const int64_t left = nr - v * VL;
            if (left >= VL) v_store(out + i * ldo + v * VL, acc[i][v]);
            else if (left > 0) v_storen(out + i * ldo + v * VL, acc[i][v], left);
        }
}

static MLL_TARGET void FN(tiles_q8)(const xtile *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                    float *out, int64_t ldo) {
    const int64_t gs = W->group, ng = K / gs, xstep = 4 * (int64_t)x->nx;
    for (int64_t b = row0; b < row0 + n; b += 16) {
        const uint8_t *w = (const uint8_t *)W->data + b * K;
        const float *ws = W->scale + b * ng;
        const int64_t nr = mll_min64(16, row0 + n - b);
        for (int i = 0; i < x->nx; i += TILE_NX) {
            const int8_t *xq = x->q + 4 * i;
            const float *xs = x->s + i * ng;
            float *o = out + i * ldo + (b - row0);
            switch (x->nx - i) {
            case 1: FN(tile16_q8)(xq, xstep, xs, ng, 1, w, ws, gs, o, ldo, nr); break;
#if TILE_NX == 4
            case 2: FN(tile16_q8)(xq, xstep, xs, ng, 2, w, ws, gs, o, ldo, nr); break;
            case 3: FN(tile16_q8)(xq, xstep, xs, ng, 3, w, ws, gs, o, ldo, nr); break;
#endif
            default: FN(tile16_q8)(xq, xstep, xs, ng, TILE_NX, w, ws, gs, o, ldo, nr); break;
            }
        }
    }
}
#undef TQ
#undef TILE_NX
#undef q8_sign_of
#undef q8_sign
#undef q8_load
#undef q8_abs
#undef q8_zero

#if MLL_VEC == 512
/* The int8 tiles on AVX512-VNNI: VPDPBUSD adds each row's 4 products (q + 128) xq into its
 * lane, and the group's sums less x's correction (xtile.c) are the integers above. All NX <= 8
 * rows of x at once, each weight vector loaded once for all. */
static inline __attribute__((always_inline)) MLL_AVX512_VNNI void tile16_q8_vnni(
        const int8_t *xq, int64_t xstep, const float *xs, const int32_t *xc, int64_t ng, const int NX,
        const uint8_t *w, const float *ws, int64_t gs, float *out, int64_t ldo, int64_t nr) {
    __m512 acc[8];
    for (int i = 0; i < NX; i++) acc[i] = _mm512_setzero_ps();
    const int64_t nq = gs / 4;
    for (int64_t g = 0; g < ng; g++) {
        /* each chain starts at minus x's correction; one chain a row where 4 or more rows keep
         * VPDPBUSD busy, two below */
        __m512i s0[8], s1[8];
        for (int i = 0; i < NX; i++) {
            s0[i] = _mm512_set1_epi32(-xc[i * ng + g]);
            s1[i] = _mm512_setzero_si512();
        }
        const uint8_t *wg = w + g * gs * 16;
        const int8_t *xg = xq + g * nq * xstep;
        int64_t q = 0;
        for (; q + 2 <= nq; q += 2) {
            const __m512i w0 = _mm512_loadu_si512((const void *)(wg + q * 64));
            const __m512i w1 = _mm512_loadu_si512((const void *)(wg + q * 64 + 64));
            const int8_t *x0 = xg + q * xstep, *x1 = x0 + xstep;
#pragma GCC unroll 8
            for (int i = 0; i < NX; i++) {
                int32_t a, b;
                memcpy(&a, x0 + 4 * i, 4);
                memcpy(&b, x1 + 4 * i, 4);
                s0[i] = _mm512_dpbusd_epi32(s0[i], w0, _mm512_set1_epi32(a));
                if (NX >= 4) s0[i] = _mm512_dpbusd_epi32(s0[i], w1, _mm512_set1_epi32(b));
                else s1[i] = _mm512_dpbusd_epi32(s1[i], w1, _mm512_set1_epi32(b));
            }
        }
        if (q < nq) {
            const __m512i w0 = _mm512_loadu_si512((const void *)(wg + q * 64));
            for (int i = 0; i < NX; i++) {
                int32_t a;
                memcpy(&a, xg + q * xstep + 4 * i, 4);
                s0[i] = _mm512_dpbusd_epi32(s0[i], w0, _mm512_set1_epi32(a));
            }
        }
        const __m512 wsv = _mm512_loadu_ps(ws + g * 16);
#pragma GCC unroll 8
        for (int i = 0; i < NX; i++) {
            __m512i p = NX >= 4 ? s0[i] : _mm512_add_epi32(s0[i], s1[i]);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(wsv, _mm512_set1_ps(xs[i * ng + g])),
                                     acc[i]);
        }
    }
    const __mmask16 keep = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1);
    for (int i = 0; i < NX; i++) _mm512_mask_storeu_ps(out + i * ldo, keep, acc[i]);
}

#define TILE_VNNI_CASE(k) \
    case k: tile16_q8_vnni(x->q, xstep, x->s, x->c, ng, k, w, ws, gs, o, ldo, nr); break;
static MLL_AVX512_VNNI void tiles_q8_vnni(const xtile *x, const mll_matrix *W, int64_t row0, int64_t K, int64_t n,
                                          float *out, int64_t ldo) {
    const int64_t gs = W->group, ng = K / gs, xstep = 4 * (int64_t)x->nx;
    for (int64_t b = row0; b < row0 + n; b += 16) {
        const uint8_t *w = (const uint8_t *)W->data + b * K;
        const float *ws = W->scale + b * ng;
        const int64_t nr = mll_min64(16, row0 + n - b);
        float *o = out + (b - row0);
        switch (x->nx) {
        TILE_VNNI_CASE(1) TILE_VNNI_CASE(2) TILE_VNNI_CASE(3) TILE_VNNI_CASE(4)
        TILE_VNNI_CASE(5) TILE_VNNI_CASE(6) TILE_VNNI_CASE(7) default: TILE_VNNI_CASE(8)
        }
    }
}
#undef TILE_VNNI_CASE
#endif

/* quantize_x_generic on VL floats at a time (gs a multiple of VL): the same max, division and
 * round-to-nearest-even, so the same bytes and scales */
static MLL_TARGET void FN(quantize_x)(const float *x, int8_t *xq, float *xs, int64_t M, int64_t K, int64_t gs) {
    for (int64_t i = 0; i < M * K; i += gs) {
        V amax = v_zero(), nan = v_zero();         /* nan: NaN in a lane that saw inf or NaN */
        for (int64_t k = i; k < i + gs; k += VL) {
            V v = v_load(x + k);
            amax = v_max(amax, v_abs(v));
            nan = v_add(nan, v_mul(v, v_zero()));
        }
        float scale = v_hmax(amax) / 127.0f;
        if (m_any(v_isnan(nan)) || scale == 0.0f) {
            xs[i / gs] = m_any(v_isnan(nan)) ? NAN : scale;
            memset(xq + i, 0, (size_t)gs);
            continue;
        }
        xs[i / gs] = scale;
        for (int64_t k = i; k < i + gs; k += VL) {
            V q = v_round(v_div(v_load(x + k), v_set1(scale)));
            VI n = vi_cvt(v_max(v_min(q, v_set1(127.0f)), v_set1(-127.0f)));
#if MLL_VEC == 512
            _mm_storeu_si128((__m128i *)(xq + k), _mm512_cvtsepi32_epi8(n));
#else
            __m128i n16 = _mm_packs_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256(n, 1));
            _mm_storel_epi64((__m128i *)(xq + k), _mm_packs_epi16(n16, n16));
#endif
        }
    }
}
static const int64_t FN(qx_unit) = VL;

static MLL_TARGET float FN(sum)(const float *x, int64_t n) {
    V a0 = v_zero(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 4 * VL <= n; i += 4 * VL) {
        a0 = v_add(a0, v_load(x + i));
        a1 = v_add(a1, v_load(x + i + VL));
        a2 = v_add(a2, v_load(x + i + 2 * VL));
        a3 = v_add(a3, v_load(x + i + 3 * VL));
    }
    float s = v_hsum(v_add(v_add(a0, a1), v_add(a2, a3)));
    for (; i < n; i++) s += x[i];
    return s;
}
#endif /* MLL_VEC */
