/* gemm.c: single-precision GEMM, C = alpha * op(A) @ op(B) + beta * C, and its strided batch.
 *
 * Structure (Goto & van de Geijn, ACM TOMS 2008; the BLIS five-loop form, Van Zee &
 * van de Geijn, ACM TOMS 2015), on one thread (mll_gemm_run with nt = 1):
 *
 *   for jc in N, step NC:               B block kc x nc          -> packed, in L3
 *     for pc in K, step KC:
 *       pack B[pc:pc+kc, jc:jc+nc] into NR-column micro-panels
 *       for ic in M, step MC:           A block mc x kc          -> packed, in L2
 *         pack A[ic:ic+mc, pc:pc+kc] into MR-row micro-panels
 *         for jr in nc, step NR:        B micro-panel kc x NR    -> reused over ir
 *           for ir in mc, step MR:      micro-kernel: MR x NR tile of C in registers
 *
 * A team of threads (mll_gemm_run) packs each B block together into a shared buffer, a chunk
 * of micro-panels at a time, each thread running its own run of C's tiles (a fixed split of
 * equal work) on each chunk as soon as it is packed, with the rows of A it needs packed into
 * its own buffer.
 *
 * op(X) = X^T is handled entirely by the packing routines (they read the stored matrix
 * with the right strides), so backward products never copy a transpose.
 *
 * Threads split the output, never K: every element of C is accumulated by one micro-kernel
 * call per k block, in k order, block after block. Tile boundaries sit at multiples of MR
 * and NR from the origin whatever the thread count, and a tile's arithmetic does not depend
 * on which thread runs it, so results are bitwise identical for any number of threads.
 *
 * Block sizes per ISA are in isa_params() with the cache each one targets.
 */
#include "minillm.h"
#include "gemm_internal.h"
#include "dispatch.h" /* MLL_PICK only: the per-ISA versions are files of their own */

#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <sched.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define MAX_THREADS 64

/* Each ISA's micro-kernel with its block sizes; isa_params() picks one (dispatch.h).
 * MR, NR: register tiles (gemm_internal.h). The AVX-512 sizes are for a core with 32 KiB of
 * L1d and 1 MiB of L2 and an L3 of tens of MiB shared, chosen by timing kc, mc and nc over
 * ranges on the square and GPT shapes at 1 and 2 threads (bench/bench_gemm.py; the variable
 * MINILLM_GEMM_BLOCKS re-tunes them on another CPU):
 * KC = 1024, at most: the depth of one packed block; K is cut into the fewest even blocks
 *     (k_step), so GPT's K = 768 is one block and 3072 three. Deep blocks mean fewer trips of
 *     C through the caches (C is read and written once per k block; for the LM head's C of
 *     150 MiB that is a trip to DRAM). The B micro-panel (1024 x 32 x 4 B = 128 KiB) streams
 *     from L2 into L1 at 128 B per 28 FMAs, prefetched, beside the A micro-panel
 *     (14 x 1024 x 4 B = 56 KiB).
 * MC = 84 (6 tiles): one thread's A block, 84 x 1024 x 4 B = 336 KiB, stays in L2 while all
 *     B micro-panels of the block pass over it, beside the chunk of B just packed (256 KiB,
 *     chunk_panels).
 * NC = 1536: the B block, 1024 x 1536 x 4 B = 6 MiB (twice: double-buffered), shared by the
 *     threads in L3.
 * AVX2 and generic take the classic sizes for a 256 KiB-1 MiB L2. */
static const mll_gemm_isa params_generic = {.kernel = mll_gemm_kernel_generic, .mr = MLL_GEMM_GENERIC_MR,
                                            .nr = MLL_GEMM_GENERIC_NR, .kc = 256, .mc = 128, .nc = 2048};
#ifdef MLL_X86
static const mll_gemm_isa params_avx2 = {.kernel = mll_gemm_kernel_avx2, .mr = MLL_GEMM_AVX2_MR,
                                         .nr = MLL_GEMM_AVX2_NR, .kc = 256, .mc = 144, .nc = 4096};
static const mll_gemm_isa params_avx512 = {
    .kernel = mll_gemm_kernel_avx512, .mr = MLL_GEMM_AVX512_MR, .nr = MLL_GEMM_AVX512_NR,
    .kc = 1024, .mc = 84, .nc = 1536,
    .pack_a_rows = mll_gemm_pack_a_rows_avx512, .pack_a_cols = mll_gemm_pack_a_cols_avx512,
    .pack_b_rows = mll_gemm_pack_b_rows_avx512, .pack_b_cols = mll_gemm_pack_b_cols_avx512,
    .gemv_rows = mll_gemm_gemv_rows_avx512, .gemv_cols = mll_gemm_gemv_cols_avx512};
#endif

static const mll_gemm_isa *isa_params(void) {
#ifdef MLL_X86
    /* MINILLM_GEMM_BLOCKS="kc,mc,nc" overrides the AVX-512 block sizes (read once), for tuning
     * on other CPUs; values that break the layout (mc not a multiple of MR, ...) are ignored */
    static mll_gemm_isa tuned;
    static int tuned_state = 0;                /* 0: not read yet, 1: in use, -1: unset or invalid */
    if (tuned_state == 0) {
        const char *e = getenv("MINILLM_GEMM_BLOCKS");
        int kc, mc, nc, state = -1;
        if (e && sscanf(e, "%d,%d,%d", &kc, &mc, &nc) == 3 && kc > 0 && mc > 0 && nc > 0 &&
            mc % params_avx512.mr == 0 && nc % params_avx512.nr == 0) {
            tuned = params_avx512;
            tuned.kc = kc;
            tuned.mc = mc;
            tuned.nc = nc;
            state = 1;
        }
        tuned_state = state;
    }
    if (tuned_state == 1 && mll_get_isa() == MLL_ISA_AVX512) return &tuned;
#endif
    return &MLL_PICK(params);
}

/* ------------------------------------------------------------------------------ packing */

/* ap: ceil(mc / mr) micro-panels of mr x kc (k-major, zero rows past mc)
 *   <- op(A)[0:mc, 0:kc], with op(A)[i, k] = transa ? A[k*lda + i] : A[i*lda + k]. */
static void pack_a(int transa, const float *A, int64_t lda, int64_t mc, int64_t kc, int mr, float *ap) {
    for (int64_t i0 = 0; i0 < mc; i0 += mr) {
        int rows = mc - i0 < mr ? (int)(mc - i0) : mr;
        if (transa) {
            /* row k of the stored A holds op(A)[:, k]: mr contiguous floats per k */
            for (int64_t k = 0; k < kc; k++) {
                const float *src = A + k * lda + i0;
                float *dst = ap + k * mr;
                int i = 0;
                for (; i < rows; i++) dst[i] = src[i];
                for (; i < mr; i++) dst[i] = 0.0f;
            }
        } else {
            for (int i = 0; i < rows; i++) {
                const float *src = A + (i0 + i) * lda;
                for (int64_t k = 0; k < kc; k++) ap[k * mr + i] = src[k];
            }
            for (int i = rows; i < mr; i++)
                for (int64_t k = 0; k < kc; k++) ap[k * mr + i] = 0.0f;
        }
        ap += mr * kc;
    }
}

/* bp: micro-panels p0..p1-1 of kc x nr (k-major, zero columns past nc), panel p at bp + p*nr*kcmax
 * (a fixed stride: threads packing the next k block never touch panels still being read)
 *   <- op(B)[0:kc, 0:nc], with op(B)[k, j] = transb ? B[j*ldb + k] : B[k*ldb + j]. */
static void pack_b(int transb, const float *B, int64_t ldb, int64_t nc, int64_t kc, int64_t kcmax, int nr,
                   int64_t p0, int64_t p1, float *bp) {
    for (int64_t p = p0; p < p1; p++) {
        int64_t j0 = p * nr;
        int cols = nc - j0 < nr ? (int)(nc - j0) : nr;
        float *dst = bp + p * nr * kcmax;
        if (!transb) {
            for (int64_t k = 0; k < kc; k++) {
                const float *src = B + k * ldb + j0;
                float *d = dst + k * nr;
                int j = 0;
                for (; j < cols; j++) d[j] = src[j];
                for (; j < nr; j++) d[j] = 0.0f;
            }
        } else {
            for (int j = 0; j < cols; j++) {
                const float *src = B + (j0 + j) * ldb;
                for (int64_t k = 0; k < kc; k++) dst[k * nr + j] = src[k];
            }
            for (int j = cols; j < nr; j++)
                for (int64_t k = 0; k < kc; k++) dst[k * nr + j] = 0.0f;
        }
    }
}

/* ------------------------------------------------------------------- packing buffers */

/* Buffers belong to the calling (master) thread and are indexed by OpenMP thread number,
 * so concurrent callers from different threads never share them. Grown on demand, never
 * shrunk: after the first call of a given size a GEMM allocates nothing. */
static __thread mll_gemm_buffer tl_abuf[MAX_THREADS], tl_bbuf[MAX_THREADS], tl_xbuf;

/* Packed blocks of 2 MiB and more are asked to live on 2 MiB pages (transparent huge pages
 * in "madvise" mode, as numpy asks for its large arrays): the two 6 MiB B blocks are 3072
 * small pages, as many as a whole 2nd-level TLB holds on a current core, to share with A and
 * C. Only the whole 2 MiB pages inside the block are advised; a kernel without THP ignores
 * the hint. */
static void advise_huge(void *ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = ((uintptr_t)ptr + huge - 1) & ~(huge - 1), hi = ((uintptr_t)ptr + bytes) & ~(huge - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)ptr, (void)bytes;
#endif
}

void *mll_gemm_grow(mll_gemm_buffer *b, size_t bytes) {
    if (b->bytes < bytes) {
        mll_free(b->ptr, b->bytes);
        b->ptr = mll_alloc(bytes);
        b->bytes = b->ptr ? bytes : 0;
        if (b->ptr) advise_huge(b->ptr, bytes);
    }
    return b->ptr;
}

/* ------------------------------------------------------------------ unpacked path */

#define OPA(i, k) (transa ? A[(k) * lda + (i)] : A[(i) * lda + (k)])
#define OPB(k, j) (transb ? B[(j) * ldb + (k)] : B[(k) * ldb + (j)])

/* C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, straight from the operands: for
 * products too small to repay packing (and as the fallback if a buffer cannot be had). */
static void gemm_unpacked(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                          int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += OPA(i, k) * OPB(k, j);
            float *c = C + i * ldc + j;
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
}

/* ------------------------------------------------------------------- packed path */

typedef struct {
    int transa, transb;
    int64_t M, N, K;
    float alpha, beta;
    const float *A, *B;
    int64_t lda, ldb, ldc;
    float *C;
} gemm_args;

/* ---------------------------------------------------- float32 callbacks of the driver */

typedef struct {
    const mll_gemm_isa *p;
    const gemm_args *g;
} f32_ctx;

/* ap <- op(A)[ic:ic+mc, pc:pc+kc], MR-row micro-panels */
static void f32_pack_a(const void *ctx, int64_t ic, int64_t pc, int64_t mc, int64_t kc, uint32_t *ap_) {
    const mll_gemm_isa *p = ((const f32_ctx *)ctx)->p;
    const gemm_args *g = ((const f32_ctx *)ctx)->g;
    const float *Ablk = g->transa ? g->A + pc * g->lda + ic : g->A + ic * g->lda + pc;
    float *ap = (float *)ap_;
    if (!g->transa && p->pack_a_rows)
        p->pack_a_rows(Ablk, g->lda, mc, kc, ap);
    else if (g->transa && p->pack_a_cols)
        p->pack_a_cols(Ablk, g->lda, mc, kc, ap);
    else
        pack_a(g->transa, Ablk, g->lda, mc, kc, p->mr, ap);
}

/* micro-panels p0..p1-1 of op(B)[pc:pc+kc, jc:jc+nc] */
static void f32_pack_b(const void *ctx, int64_t jc, int64_t pc, int64_t nc, int64_t kc, int64_t p0, int64_t p1,
                       uint32_t *bp_) {
    const mll_gemm_isa *p = ((const f32_ctx *)ctx)->p;
    const gemm_args *g = ((const f32_ctx *)ctx)->g;
    const float *Bblk = g->transb ? g->B + jc * g->ldb + pc : g->B + pc * g->ldb + jc;
    float *bp = (float *)bp_;
    if (g->transb && p->pack_b_cols)
        p->pack_b_cols(Bblk, g->ldb, nc, kc, p->kc, p0, p1, bp);
    else if (!g->transb && p->pack_b_rows)
        p->pack_b_rows(Bblk, g->ldb, nc, kc, p->kc, p0, p1, bp);
    else
        pack_b(g->transb, Bblk, g->ldb, nc, kc, p->kc, p->nr, p0, p1, bp);
}

static void f32_kernel(const void *ctx, int64_t kc, const uint32_t *ap, const uint32_t *bp, int64_t i, int64_t j,
                       int first, int mr, int nr) {
    const mll_gemm_isa *p = ((const f32_ctx *)ctx)->p;
    const gemm_args *g = ((const f32_ctx *)ctx)->g;
    p->kernel(kc, (const float *)ap, (const float *)bp, g->C + i * g->ldc + j, g->ldc, g->alpha,
              first ? g->beta : 1.0f, mr, nr);
}

/* The driver for a float32 product with this ISA's kernel and packing (ctx must outlive it). */
static mll_gemm_driver f32_driver(const f32_ctx *ctx) {
    const mll_gemm_isa *p = ctx->p;
    mll_gemm_driver d = {p->mr, p->nr, p->kc, p->mc, p->nc, 1, 2, ctx, f32_pack_a, f32_pack_b, f32_kernel};
    return d;
}

/* Packed 32-bit units in a row of kc k (a float each, or a bf16 pair each). */
static int64_t units(const mll_gemm_driver *d, int64_t kc) { return (kc * d->units_per_k2 + 1) / 2; }

/* Depth of the k blocks for a product of depth K: the fewest blocks of at most KC, made
 * even (K = 512 is one block, not 384 + 128: C makes one trip through memory, not two),
 * rounded up to a multiple of kalign. */
static int64_t k_step(const mll_gemm_driver *d, int64_t K) {
    int64_t nblocks = (K + d->kc - 1) / d->kc, step = (K + nblocks - 1) / nblocks;
    return (step + d->kalign - 1) / d->kalign * d->kalign;
}

size_t mll_gemm_bblock_units(const mll_gemm_driver *d, int64_t N) {
    int64_t cols = N < d->nc ? (N + d->nr - 1) / d->nr * d->nr : d->nc;
    return (size_t)cols * units(d, d->kc);
}

/* A thread's packed A blocks are kept for the next column block of B when they fit in this
 * many units (8 MiB): the LM head's x (512 x 768) is then packed once, not once per block. */
#define KEEP_A_MAX_UNITS ((size_t)2 << 20)

/* Units in one packed A block (MC rows, or M's rows rounded up to MR, x units(kstep)). */
static size_t ablock_units(const mll_gemm_driver *d, int64_t M, int64_t kstep) {
    int64_t rows = M < d->mc ? (M + d->mr - 1) / d->mr * d->mr : d->mc;
    return (size_t)rows * units(d, kstep);
}

/* Blocks of MC rows in the band of tile rows ra..rb-1. */
static int64_t mblocks(const mll_gemm_driver *d, int64_t ra, int64_t rb) {
    int64_t mctiles = d->mc / d->mr;
    return (rb - ra + mctiles - 1) / mctiles;
}

size_t mll_gemm_abuf_units(const mll_gemm_driver *d, int64_t M, int64_t N, int64_t K, int nt) {
    size_t one = ablock_units(d, M, d->kc);
    if (N <= d->nc) return one;                    /* one column block: A is packed once anyway */
    int64_t kstep = k_step(d, K), nkb = (K + kstep - 1) / kstep, mtiles = (M + d->mr - 1) / d->mr;
    int64_t band = (mtiles + nt - 1) / nt + 1;     /* tile rows of a thread's band, at most */
    if (band > mtiles) band = mtiles;
    size_t all = (size_t)nkb * mblocks(d, 0, band) * ablock_units(d, M, kstep);
    return all > one && all <= KEEP_A_MAX_UNITS ? all : one;
}

/* First tile of thread t of nt in an (mtiles x npanels) grid of tiles taken row by row, the
 * grid cut into nt runs of equal work: a tile counts its rows (the last tile row may be short),
 * so each thread gets the same number of C rows x micro-panels, to within one tile. */
static int64_t split_tile(int64_t M, int MR, int64_t mtiles, int64_t npanels, int t, int nt) {
    int64_t target = M * npanels * t / nt;                 /* row-panels before thread t's run */
    int64_t r = target / (MR * npanels);
    if (r > mtiles - 1) r = mtiles - 1;
    int64_t rows = M - r * MR < MR ? M - r * MR : MR, rem = target - r * MR * npanels;
    int64_t q = (rem + rows / 2) / rows;
    return r * npanels + (q < npanels ? q : npanels);
}

/* Progress of one thread's share of the B block, on a cache line of its own: (k block << 32)
 * | micro-panels packed so far in that block; only ever grows during a product. */
typedef struct {
    int64_t v;
    char pad[64 - sizeof(int64_t)];
} __attribute__((aligned(64))) team_flag;

static void publish(team_flag *flags, int t, int64_t v) { __atomic_store_n(&flags[t].v, v, __ATOMIC_RELEASE); }

/* Waits until thread u has published at least v: a short spin (the other core is packing a
 * chunk, a few microseconds), then yielding the core in case the partner is not running. */
static void await(team_flag *flags, int u, int64_t v) {
    for (int spins = 0; __atomic_load_n(&flags[u].v, __ATOMIC_ACQUIRE) < v; spins++) {
        if (spins < 4096) {
#ifdef MLL_X86
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
}

/* Micro-panels per chunk of B packed at a time: about 256 KiB of packed B, which stays in
 * L2 beside the A block while the thread's tiles of the chunk are computed. */
static int64_t chunk_panels(const mll_gemm_driver *d, int64_t kc) {
    int64_t n = ((int64_t)64 << 10) / (d->nr * units(d, kc));
    return n > 1 ? n : 1;
}

/* C's tiles (r, q) of thread t's run [w0, w1) for tile rows b0..b1-1 (the packed A block at
 * abuf, from row ic, mc rows) and micro-panels q0..q1-1 (of the B block at bbuf, from column jc). */
static void run_tiles(const mll_gemm_driver *d, int64_t kc, const uint32_t *abuf, const uint32_t *bbuf,
                      int64_t ic, int64_t mc, int64_t b0, int64_t b1, int64_t jc, int64_t nc, int64_t npanels,
                      int64_t q0, int64_t q1, int64_t w0, int64_t w1, int first) {
    const int MR = d->mr, NR = d->nr;
    const size_t arow = (size_t)units(d, kc), pstride = (size_t)NR * units(d, d->kc);
    for (int64_t q = q0; q < q1; q++) {
        int64_t j = q * NR;
        int nr = nc - j < NR ? (int)(nc - j) : NR;
        for (int64_t r = b0; r < b1; r++) {
            int64_t tile = r * npanels + q;
            if (tile < w0 || tile >= w1) continue;
            int64_t i = (r - b0) * MR;
            int mr = mc - i < MR ? (int)(mc - i) : MR;
            d->kernel(d->ctx, kc, abuf + i * arow, bbuf + q * pstride, ic + i, jc + j, first, mr, nr);
        }
    }
}

/* The blocked product, thread t of a team of nt, with a fixed split (close to the classic
 * threaded BLAS): in each B block, the grid of MR x NR tiles of C, taken row by row, is cut
 * into nt runs of equal work (split_tile), so a thread owns a band of tile rows, sharing at
 * most one row with its neighbours. It packs its band in blocks of at most MC rows into its
 * own A buffer, which stays in its L2 while every B micro-panel passes over it (each B
 * micro-panel fetched from L3 serves the 6 tile rows of an A block).
 *
 * The B block is packed by all threads together (thread t its nt-th of the micro-panels) into
 * shared, double-buffered space, and packing overlaps computing: with its first A block
 * packed, a thread packs its own micro-panels a chunk at a time and runs its tiles on each
 * chunk while it is still in L2, then runs the other threads' chunks as their flags say they
 * are packed: a thread never waits for the whole block, only for the chunk it needs next.
 * No barrier: thread t reads panels of block s only after their packer said so, and writes
 * block s + 1 into the buffer of block s - 1 only after every thread has started block s,
 * hence finished s - 1. With nt == 1 this is the five-loop product with B packed chunk by
 * chunk for the first A block. (It is no slower than packing the whole block behind a
 * barrier, and saves that barrier per k block.) */
static void drive(const mll_gemm_driver *d, int64_t M, int64_t N, int64_t K, int t, int nt, uint32_t *bbufs,
                  uint32_t *abufs, size_t abuf_units, team_flag *flags) {
    const int MR = d->mr, NR = d->nr;
    const size_t bstride = mll_gemm_bblock_units(d, N);
    const int64_t kstep = k_step(d, K), mtiles = (M + MR - 1) / MR;
    const size_t astride = ablock_units(d, M, kstep);
    int64_t kblock = 0, kept_ra = -1, kept_rb = -1;
    for (int64_t jc = 0; jc < N; jc += d->nc) {
        int64_t nc = N - jc < d->nc ? N - jc : d->nc;
        int64_t npanels = (nc + NR - 1) / NR;
        int64_t w0 = split_tile(M, MR, mtiles, npanels, t, nt), w1 = split_tile(M, MR, mtiles, npanels, t + 1, nt);
        /* tile rows ra..rb-1 hold the run, in the fewest even blocks of at most MC rows */
        int64_t ra = w0 / npanels, rb = w1 > w0 ? (w1 - 1) / npanels + 1 : ra;
        int64_t nmblocks = mblocks(d, ra, rb);
        /* all A blocks of the band kept side by side (block (kb, mb) at abufs + (kb * nmblocks
         * + mb) * astride) when they fit: the next column block of B with the same band reuses
         * them unpacked */
        int keep = (size_t)((K + kstep - 1) / kstep * nmblocks) * astride <= abuf_units && N > d->nc;
        int reuse = keep && ra == kept_ra && rb == kept_rb;
        kept_ra = keep ? ra : -1, kept_rb = keep ? rb : -1;
        for (int64_t pc = 0; pc < K; pc += kstep, kblock++) {
            int64_t kc = K - pc < kstep ? K - pc : kstep, chunk = chunk_panels(d, kc), tag = kblock << 32;
            uint32_t *bbuf = bbufs + (size_t)(kblock & 1) * bstride;
            if (nt > 1) {
                for (int u = 0; u < nt; u++)
                    if (u != t && kblock > 0) await(flags, u, (kblock - 1) << 32);
                publish(flags, t, tag);
            }
            /* a thread without tiles in this block still packs its share of B */
            for (int64_t mb = 0; mb < (nmblocks > 0 ? nmblocks : 1); mb++) {
                int64_t b0 = ra, b1 = ra, ic = 0, mc = 0;
                uint32_t *abuf = keep ? abufs + (size_t)(pc / kstep * nmblocks + mb) * astride : abufs;
                if (nmblocks > 0) {
                    b0 = ra + (rb - ra) * mb / nmblocks, b1 = ra + (rb - ra) * (mb + 1) / nmblocks;
                    ic = b0 * MR, mc = (b1 * MR < M ? b1 * MR : M) - ic;
                    if (!reuse) d->pack_a(d->ctx, ic, pc, mc, kc, abuf);
                }
                if (mb > 0) {
                    run_tiles(d, kc, abuf, bbuf, ic, mc, b0, b1, jc, nc, npanels, 0, npanels, w0, w1, pc == 0);
                    continue;
                }
                /* the first A block meets the B block chunk by chunk: own chunks first */
                for (int s = 0; s < nt; s++) {
                    int u = (t + s) % nt;
                    int64_t u0 = npanels * u / nt, u1 = npanels * (u + 1) / nt;
                    for (int64_t q0 = u0; q0 < u1; q0 += chunk) {
                        int64_t q1 = u1 - q0 < chunk ? u1 : q0 + chunk;
                        if (u == t) {
                            d->pack_b(d->ctx, jc, pc, nc, kc, q0, q1, bbuf);
                            if (nt > 1) publish(flags, t, tag | (q1 - u0));
                        } else if (nmblocks > 0) {
                            await(flags, u, tag | (q1 - u0));
                        }
                        if (nmblocks > 0)
                            run_tiles(d, kc, abuf, bbuf, ic, mc, b0, b1, jc, nc, npanels, q0, q1, w0, w1, pc == 0);
                    }
                }
            }
        }
    }
}

void mll_gemm_run(const mll_gemm_driver *d, int64_t M, int64_t N, int64_t K, int nt, uint32_t *bbufs,
                  uint32_t *const *abufs, size_t abuf_units) {
    if (nt <= 1) {
        drive(d, M, N, K, 0, 1, bbufs, abufs[0], abuf_units, NULL);
        return;
    }
    team_flag flags[MAX_THREADS];
    for (int t = 0; t < nt; t++) flags[t].v = 0;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        drive(d, M, N, K, t, team, bbufs, abufs[t], abuf_units, flags);
    }
}

/* Buffer sizes for an (M, N, K) product on a team of nt: a thread's A blocks and two B blocks,
 * no larger than needed. */
static size_t abuf_bytes(const mll_gemm_isa *p, int64_t M, int64_t N, int64_t K, int nt) {
    f32_ctx ctx = {p, NULL};
    mll_gemm_driver d = f32_driver(&ctx);
    return mll_gemm_abuf_units(&d, M, N, K, nt) * sizeof(float);
}
static size_t bbuf_bytes(const mll_gemm_isa *p, int64_t N) {
    f32_ctx ctx = {p, NULL};
    mll_gemm_driver d = f32_driver(&ctx);
    return 2 * mll_gemm_bblock_units(&d, N) * sizeof(float);
}

/* Products below this many multiply-adds run on one thread: forking costs more. */
#define PARALLEL_MIN_FMAS (80 * 80 * 80)
/* Products below this many multiply-adds skip packing. */
#define UNPACKED_MAX_FMAS (8 * 8 * 8)
/* A batch of products each below this many multiply-adds is split between threads by
 * whole products (each then runs on one thread); larger products are threaded one by one. */
#define BATCH_SPLIT_MAX_FMAS (1 << 24)

static int max_threads(void) {
    int nt = mll_get_num_threads();
    return nt > MAX_THREADS ? MAX_THREADS : nt;
}

/* Makes sure threads 0..na-1 of the calling thread have A buffers of abytes and threads
 * 0..nb-1 have B buffers big enough for a product with N columns; 0 if memory ran out. */
static int ensure_buffers(const mll_gemm_isa *p, size_t abytes, int64_t N, int na, int nb) {
    int ok = 1;
    for (int t = 0; t < na; t++) ok = ok && mll_gemm_grow(&tl_abuf[t], abytes) != NULL;
    for (int t = 0; t < nb; t++) ok = ok && mll_gemm_grow(&tl_bbuf[t], bbuf_bytes(p, N)) != NULL;
    return ok;
}

static void gemm_unpacked_args(const gemm_args *g) {
    gemm_unpacked(g->transa, g->transb, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C,
                  g->ldc);
}

/* C (1, N) or C (M, 1) as a row vector times a matrix (gemv_rows / gemv_cols), without
 * packing. Returns 0 if this ISA has no such path or the vector buffer cannot be had. */
static int gemm_thin(const mll_gemm_isa *p, const gemm_args *g, int nt) {
    /* y (1, n) = alpha * x (1, k) @ X + beta * y; X stored (k, n) when rows, else (n, k) */
    const float *xsrc, *X;
    int64_t incx, ldx, n, k = g->K, incy;
    int rows;
    if (g->M == 1) {             /* x = op(A) row 0; X = op(B) */
        xsrc = g->A, incx = g->transa ? g->lda : 1;
        X = g->B, ldx = g->ldb, rows = !g->transb, n = g->N, incy = 1;
    } else {                     /* C^T (1, M) = op(B)^T (1, K) @ op(A)^T (K, M) */
        xsrc = g->B, incx = g->transb ? 1 : g->ldb;
        X = g->A, ldx = g->lda, rows = g->transa, n = g->M, incy = g->ldc;
    }
    void (*gemv)(int64_t, int64_t, int64_t, float, const float *, const float *, int64_t, float, float *,
                 int64_t) = rows ? p->gemv_rows : p->gemv_cols;
    if (!gemv) return 0;
    const float *x = xsrc;
    if (incx != 1) {
        float *buf = mll_gemm_grow(&tl_xbuf, (size_t)k * sizeof(float));
        if (!buf) return 0;
        for (int64_t i = 0; i < k; i++) buf[i] = xsrc[i * incx];
        x = buf;
    }
    /* threads take runs of y in whole steps of the kernel's width (64 columns or 4 rows) */
    int64_t step = rows ? 64 : 4, nsteps = (n + step - 1) / step;
    float alpha = g->alpha, beta = g->beta, *y = g->C;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        int64_t j0 = nsteps * t / team * step, j1 = nsteps * (t + 1) / team * step;
        if (j1 > n) j1 = n;
        if (j0 < j1) gemv(j0, j1, k, alpha, x, X, ldx, beta, y, incy);
    }
    return 1;
}

static void gemm_one(const gemm_args *g, int nt) {
    const mll_gemm_isa *p = isa_params();
    if ((g->M == 1 || g->N == 1) && gemm_thin(p, g, nt)) return;
    if (g->M * g->N * g->K <= UNPACKED_MAX_FMAS) {
        gemm_unpacked_args(g);
        return;
    }
    /* each thread packs its rows of A into its own buffer; the team shares two B blocks */
    size_t abytes = abuf_bytes(p, g->M, g->N, g->K, nt);
    if (!ensure_buffers(p, abytes, g->N, nt, 1)) {
        gemm_unpacked_args(g);
        return;
    }
    f32_ctx ctx = {p, g};
    mll_gemm_driver d = f32_driver(&ctx);
    uint32_t *abufs[MAX_THREADS];
    for (int t = 0; t < nt; t++) abufs[t] = tl_abuf[t].ptr;
    mll_gemm_run(&d, g->M, g->N, g->K, nt, tl_bbuf[0].ptr, abufs, abytes / sizeof(float));
}

/* C = alpha A' B' + beta C when there is nothing to multiply (K == 0 or alpha == 0). */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f)
            memset(c, 0, (size_t)N * sizeof(float));
        else
            for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
}

void mll_sgemm(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
               int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    gemm_args g = {transa != 0, transb != 0, M, N, K, alpha, beta, A, B, lda, ldb, ldc, C};
    gemm_one(&g, (double)M * N * K < PARALLEL_MIN_FMAS ? 1 : max_threads());
}

void mll_sgemm_batched(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, int64_t strideA, const float *B, int64_t ldb, int64_t strideB, float beta,
                       float *C, int64_t ldc, int64_t strideC, int64_t batch) {
    if (batch <= 0 || M <= 0 || N <= 0) return;
    double fmas = (double)M * N * K;
    int nt = max_threads();
    const mll_gemm_isa *p = isa_params();
    size_t abytes = abuf_bytes(p, M, N, K, 1);       /* each product runs on one thread */
    if (K <= 0 || alpha == 0.0f || nt == 1 || batch < nt || fmas >= BATCH_SPLIT_MAX_FMAS ||
        fmas <= UNPACKED_MAX_FMAS || !ensure_buffers(p, abytes, N, nt, nt)) {
        for (int64_t b = 0; b < batch; b++)
            mll_sgemm(transa, transb, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb, beta,
                      C + b * strideC, ldc);
        return;
    }
    /* whole products per thread: each is computed exactly as on one thread (same tiles, same
     * k order), so the result does not depend on which thread ran it */
    mll_gemm_buffer *abufs = tl_abuf, *bbufs = tl_bbuf;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        int t = omp_get_thread_num();
        gemm_args g = {transa != 0, transb != 0, M, N, K, alpha, beta, A + b * strideA,
                       B + b * strideB, lda, ldb, ldc, C + b * strideC};
        f32_ctx ctx = {p, &g};
        mll_gemm_driver d = f32_driver(&ctx);
        uint32_t *abuf = abufs[t].ptr;
        mll_gemm_run(&d, M, N, K, 1, bbufs[t].ptr, &abuf, abytes / sizeof(float));
    }
}
