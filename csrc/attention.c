/* attention.c: fused causal scaled-dot-product attention, forward and backward.
 *
 * Per (batch, head):  O = softmax(Q K^T * scale + causal mask) V  with
 *   Q (Tq, hs), K, V (Tk, hs), O (Tq, hs), Tq <= Tk. Query i sits at absolute position
 *   off + i, off = Tk - Tq, and sees the keys j <= off + i (Tq == Tk: ordinary causal
 *   self-attention; Tq < Tk: new tokens attending over a KV cache).
 *
 * Flash-style (Dao, "FlashAttention-2", 2023): a tile of BR queries meets tiles of BC keys in
 * turn; an online softmax keeps a running max m and running sum l per query row and rescales
 * the output accumulator by exp(m_old - m_new), so no more than a BR x BC block of scores
 * exists at a time. Forward saves O and lse = m + log(l) per row. Backward recomputes
 * P = exp(scale S - lse) tile by tile, with D = rowsum(dO * O):
 *   dV += P^T dO,  dP = dO V^T,  dS = scale P * (dP - D),  dQ += dS K,  dK += dS^T Q.
 *
 * Every product is a small GEMM  C (M, N) (+)= A (M, K) B (K, N)  with B row-major: per head
 * we keep K^T and V^T (and, in backward, Q^T and dO^T) transposed in scratch so that
 * each of the five products has that shape and vectorizes over N.
 *
 * Each (batch, head) is one task done whole by one thread (dQ accumulates over key tiles in a
 * fixed order), so the results are bitwise the same for any thread count; no atomics.
 * Q, K, V, O, dO, dQ, dK, dV are read/written through element strides (batch, head, row) with a
 * contiguous last axis, so head-strided views of a (B, T, 3C) projection need no copies.
 */
#ifndef MLL_VEC
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "simd.h"

#define BR 64 /* query rows per tile */
#define BC 64 /* keys per tile */

/* ------------------------------------------------------------------ generic */
/* C (M, N) = A (M, K) B (K, N), or C += A B when acc. A[i, p] = A[i lda + p acs] (acs = lda = 1
 * reads A^T in place: its elements are broadcast one at a time anyway); B, C: row strides ldb, ldc */
static void gemm_tile_generic(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int64_t acs,
                              const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (!acc)
            for (int64_t j = 0; j < N; j++) c[j] = 0.0f;
        for (int64_t p = 0; p < K; p++) {
            float a = A[i * lda + p * acs];
            const float *b = B + p * ldb;
            for (int64_t j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}

/* One key tile of the online softmax for one query row. s (n): raw scores q.k, of which the
 * first nv are visible. s <- exp(scale s - m_new) (0 past nv); m, l updated.
 * Returns alpha = exp(m_old - m_new), the factor the row's output accumulator is rescaled by.
 * scale > 0, so max(scale s) = scale max(s) exactly (rounding is monotone). */
static float online_row_generic(float *s, int64_t n, int64_t nv, float scale, float *m, float *l) {
    if (nv > n) nv = n;
    if (nv <= 0) {
        for (int64_t c = 0; c < n; c++) s[c] = 0.0f;
        return 1.0f;
    }
    float mx = s[0];
    for (int64_t c = 1; c < nv; c++) mx = s[c] > mx ? s[c] : mx;
    mx *= scale;
    float mnew = mx > *m ? mx : *m;
    float alpha = expf(*m - mnew);
    float sum = 0.0f;
    for (int64_t c = 0; c < nv; c++) {
        s[c] = expf(s[c] * scale - mnew);
        sum += s[c];
    }
    for (int64_t c = nv; c < n; c++) s[c] = 0.0f;
    *l = *l * alpha + sum;
    *m = mnew;
    return alpha;
}

/* s (n) <- exp(scale s - lse) for the first nv, 0 after: the recomputed probabilities */
static void prob_row_generic(float *s, int64_t n, int64_t nv, float scale, float lse) {
    if (nv > n) nv = n;
    int64_t c = 0;
    for (; c < nv; c++) s[c] = expf(s[c] * scale - lse);
    for (; c < n; c++) s[c] = 0.0f;
}

/* dp (n) <- scale p (dp - D): the score gradient dS of one row, times the score scale that
 * dQ = dS K scale and dK = dS^T Q scale both need */
static void dscore_row_generic(const float *p, float *dp, int64_t n, float D, float scale) {
    for (int64_t c = 0; c < n; c++) dp[c] = scale * (p[c] * (dp[c] - D));
}

/* sum of a[d] b[d] over n, in double (D = rowsum(dO * O): dS rows then sum to ~0 as softmax's
 * own backward makes them) */
static double rowdot_generic(const float *a, const float *b, int64_t n) { return mll_dot_f64(a, b, n); }

/* b (cols, rows), row stride ldb  <-  a (rows, cols)^T, row stride lda; in blocks of 16 rows so
 * the writes of a block share cache lines */
static void transpose_generic(const float *a, int64_t rows, int64_t cols, int64_t lda, float *b,
                              int64_t ldb) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        int64_t r1 = mll_min64(r0 + 16, rows);
        for (int64_t c = 0; c < cols; c++)
            for (int64_t r = r0; r < r1; r++) b[c * ldb + r] = a[r * lda + c];
    }
}

/* the SIMD versions: the bottom half of this file, once per ISA (dispatch.h) */
#define MLL_DISPATCH_SELF "attention.c"
#include "dispatch.h"

typedef struct {
    void (*gemm)(int64_t, int64_t, int64_t, const float *, int64_t, int64_t, const float *, int64_t,
                 float *, int64_t, int);
    float (*online_row)(float *, int64_t, int64_t, float, float *, float *);
    void (*prob_row)(float *, int64_t, int64_t, float, float);
    void (*dscore_row)(const float *, float *, int64_t, float, float);
    double (*rowdot)(const float *, const float *, int64_t);
    void (*transpose)(const float *, int64_t, int64_t, int64_t, float *, int64_t);
} attn_kernels;

static attn_kernels pick_kernels(void) {
    attn_kernels k = {MLL_PICK(gemm_tile), MLL_PICK(online_row), MLL_PICK(prob_row),
                      MLL_PICK(dscore_row), MLL_PICK(rowdot), MLL_PICK(transpose)};
    return k;
}

/* Leading dimension for a transposed (hs, T) copy: T rounded up to 16 floats plus 16, so
 * consecutive rows never sit a multiple of 4 KiB apart (cache-set aliasing). */
static int64_t padded_ld(int64_t T) { return (T + 15) / 16 * 16 + 16; }

static int64_t forward_scratch_floats(int64_t Tk, int64_t hs) {
    return hs * padded_ld(Tk) + BR * BC + BR * hs + 2 * BR + 16;
}

static int64_t backward_scratch_floats(int64_t Tk, int64_t hs) {
    return 2 * hs * padded_ld(Tk) + 2 * BR * BC + 16;
}

/* Row step through a query tile [i0, i0 + br) against the key tile [j0, j0 + bc): the whole
 * tile when its first row already sees every key, else DIAG_ROWS rows at a time, so that the
 * products along the diagonal stop at the last key each group of rows can see. */
#define DIAG_ROWS 16
static int64_t row_step(int64_t first_pos, int64_t j0, int64_t bc, int64_t br) {
    return first_pos - j0 >= bc - 1 ? br : DIAG_ROWS;
}

/* Keys of the tile [j0, j0 + bc) that the rows up to absolute position last_pos need, rounded up
 * to 16 (whole vectors; the extra scores are computed but never used), 0 if none. */
static int64_t needed_keys(int64_t last_pos, int64_t j0, int64_t bc) {
    int64_t n = last_pos - j0 + 1;
    if (n <= 0) return 0;
    n = (n + 15) / 16 * 16;
    return n < bc ? n : bc;
}

/* One (batch, head). q (Tq, hs) row stride qst; k, v (Tk, hs) row strides kst, vst;
 * o (Tq, hs) row stride ost; lse (Tq). */
static void attention_forward_head(const attn_kernels *kf, const float *q, int64_t qst,
                                   const float *k, int64_t kst, const float *v, int64_t vst,
                                   float *o, int64_t ost, float *lse, int64_t Tq, int64_t Tk,
                                   int64_t hs, float scale, float *scratch) {
    int64_t ldk = padded_ld(Tk), off = Tk - Tq;
    float *kt = scratch;          /* (hs, ldk): K^T */
    float *s = kt + hs * ldk;     /* (BR, BC): scores, then probabilities */
    float *acc = s + BR * BC;     /* (BR, hs): unnormalized output */
    float *m = acc + BR * hs;     /* (BR): running max of scale * score */
    float *l = m + BR;            /* (BR): running sum of exp(scale * score - m) */
    kf->transpose(k, Tk, hs, kst, kt, ldk);
    for (int64_t i0 = 0; i0 < Tq; i0 += BR) {
        int64_t br = mll_min64(BR, Tq - i0);
        for (int64_t r = 0; r < br; r++) m[r] = -INFINITY, l[r] = 0.0f;
        memset(acc, 0, (size_t)(br * hs) * sizeof(float));
        int64_t kend = mll_min64(Tk, off + i0 + br); /* keys [0, kend) are seen by some row */
        for (int64_t j0 = 0; j0 < kend; j0 += BC) {
            int64_t bc = mll_min64(BC, kend - j0), step = row_step(off + i0, j0, bc, br);
            for (int64_t r0 = 0; r0 < br; r0 += step) {
                int64_t rn = mll_min64(step, br - r0);
                int64_t nc = needed_keys(off + i0 + r0 + rn - 1, j0, bc);
                if (nc == 0) continue;
                kf->gemm(rn, nc, hs, q + (i0 + r0) * qst, qst, 1, kt + j0, ldk, s + r0 * BC, BC, 0);
                for (int64_t r = r0; r < r0 + rn; r++) {
                    float alpha = kf->online_row(s + r * BC, nc, off + i0 + r - j0 + 1, scale, &m[r], &l[r]);
                    if (alpha != 1.0f) {
                        float *a = acc + r * hs;
                        for (int64_t d = 0; d < hs; d++) a[d] *= alpha;
                    }
                }
                kf->gemm(rn, hs, nc, s + r0 * BC, BC, 1, v + j0 * vst, vst, acc + r0 * hs, hs, 1);
            }
        }
        for (int64_t r = 0; r < br; r++) {
            float inv = 1.0f / l[r];
            const float *a = acc + r * hs;
            float *out = o + (i0 + r) * ost;
            for (int64_t d = 0; d < hs; d++) out[d] = a[d] * inv;
            lse[i0 + r] = m[r] + logf(l[r]);
        }
    }
}

/* One (batch, head); shapes as attention_forward_head, plus dout like o, dq like q, dk, dv
 * like k (all written, not accumulated). dV and dK come from P^T dO and dS^T Q with P and dS
 * read transposed in place (the GEMM broadcasts A one element at a time). */
static void attention_backward_head(const attn_kernels *kf, const float *q, int64_t qst,
                                    const float *k, int64_t kst, const float *v, int64_t vst,
                                    const float *o, int64_t ost, const float *lse,
                                    const float *dout, int64_t dost, float *dq, int64_t dqst,
                                    float *dk, int64_t dkst, float *dv, int64_t dvst, int64_t Tq,
                                    int64_t Tk, int64_t hs, float scale, float *scratch) {
    int64_t ldk = padded_ld(Tk), off = Tk - Tq;
    float *kt = scratch;          /* (hs, ldk): K^T */
    float *vt = kt + hs * ldk;    /* (hs, ldk): V^T */
    float *p = vt + hs * ldk;     /* (BR, BC): P */
    float *dp = p + BR * BC;      /* (BR, BC): dP, then dS */
    kf->transpose(k, Tk, hs, kst, kt, ldk);
    kf->transpose(v, Tk, hs, vst, vt, ldk);
    /* D = rowsum(dO * O), kept in lse's stead below; dQ starts at 0 */
    float *D = dp + BR * BC;      /* (Tq) */
    for (int64_t i = 0; i < Tq; i++) {
        D[i] = (float)kf->rowdot(dout + i * dost, o + i * ost, hs);
        memset(dq + i * dqst, 0, (size_t)hs * sizeof(float));
    }
    for (int64_t j0 = 0; j0 < Tk; j0 += BC) {
        int64_t bc = mll_min64(BC, Tk - j0);
        float *dkj = dk + j0 * dkst, *dvj = dv + j0 * dvst;
        for (int64_t c = 0; c < bc; c++) {
            memset(dkj + c * dkst, 0, (size_t)hs * sizeof(float));
            memset(dvj + c * dvst, 0, (size_t)hs * sizeof(float));
        }
        /* queries i < j0 - off see none of these keys */
        for (int64_t i0 = j0 - off > 0 ? j0 - off : 0; i0 < Tq; i0 += BR) {
            int64_t br = mll_min64(BR, Tq - i0), step = row_step(off + i0, j0, bc, br);
            for (int64_t r0 = 0; r0 < br; r0 += step) {
                int64_t rn = mll_min64(step, br - r0), i = i0 + r0;
                int64_t nc = needed_keys(off + i + rn - 1, j0, bc);
                if (nc == 0) continue;
                float *pp = p + r0 * BC, *dpp = dp + r0 * BC;
                kf->gemm(rn, nc, hs, q + i * qst, qst, 1, kt + j0, ldk, pp, BC, 0);          /* S */
                for (int64_t r = 0; r < rn; r++)
                    kf->prob_row(pp + r * BC, nc, off + i + r - j0 + 1, scale, lse[i + r]);
                kf->gemm(nc, hs, rn, pp, 1, BC, dout + i * dost, dost, dvj, dvst, 1);        /* dV += P^T dO */
                kf->gemm(rn, nc, hs, dout + i * dost, dost, 1, vt + j0, ldk, dpp, BC, 0);    /* dP = dO V^T */
                for (int64_t r = 0; r < rn; r++) kf->dscore_row(pp + r * BC, dpp + r * BC, nc, D[i + r], scale);
                kf->gemm(rn, hs, nc, dpp, BC, 1, k + j0 * kst, kst, dq + i * dqst, dqst, 1); /* dQ += dS K */
                kf->gemm(nc, hs, rn, dpp, 1, BC, q + i * qst, qst, dkj, dkst, 1);            /* dK += dS^T Q */
            }
        }
    }
}

/* Threads for B*nh heads of `flops` work in all: one per head at most, and only one when the
 * whole call is too small to pay for waking the team. */
static int attention_threads(int64_t heads, double flops) {
    if (flops < 2e6) return 1;
    int nt = mll_get_num_threads();
    return heads < nt ? (int)heads : nt;
}

#ifdef _OPENMP
#define THREAD_ID omp_get_thread_num()
#else
#define THREAD_ID 0
#endif

/* ------------------------------------------------------------ public kernels */
/* q (B, nh, Tq, hs), k, v (B, nh, Tk, hs), out (B, nh, Tq, hs): element strides
 * {batch, head, row} in qs, ks, vs, os; last axis contiguous. lse (B, nh, Tq) contiguous.
 * 1 <= Tq <= Tk, scale > 0. Returns 0, or -1 if scratch memory could not be had. */
int mll_attention_forward(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                          const float *v, const int64_t *vs, float *out, const int64_t *os,
                          float *lse, int64_t B, int64_t nh, int64_t Tq, int64_t Tk, int64_t hs,
                          float scale) {
    attn_kernels kf = pick_kernels();
    int64_t heads = B * nh;
    int nt = attention_threads(heads, 4.0 * (double)heads * (double)Tq * (double)Tk * (double)hs);
    int64_t per = forward_scratch_floats(Tk, hs);
    size_t nbytes = (size_t)(per * nt) * sizeof(float);
    float *scratch = (float *)mll_alloc(nbytes);
    if (!scratch) return -1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t bh = 0; bh < heads; bh++) {
        int64_t b = bh / nh, h = bh % nh;
        attention_forward_head(&kf, q + b * qs[0] + h * qs[1], qs[2], k + b * ks[0] + h * ks[1], ks[2],
                               v + b * vs[0] + h * vs[1], vs[2], out + b * os[0] + h * os[1], os[2],
                               lse + bh * Tq, Tq, Tk, hs, scale, scratch + (int64_t)THREAD_ID * per);
    }
    mll_free(scratch, nbytes);
    return 0;
}

/* Shapes and strides as mll_attention_forward; dout like out (strides dos); dq like q (dqs),
 * dk, dv like k (dks, dvs), all written. Returns 0, or -1 if out of memory. */
int mll_attention_backward(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                           const float *v, const int64_t *vs, const float *out, const int64_t *os,
                           const float *lse, const float *dout, const int64_t *dos, float *dq,
                           const int64_t *dqs, float *dk, const int64_t *dks, float *dv,
                           const int64_t *dvs, int64_t B, int64_t nh, int64_t Tq, int64_t Tk,
                           int64_t hs, float scale) {
    attn_kernels kf = pick_kernels();
    int64_t heads = B * nh;
    int nt = attention_threads(heads, 10.0 * (double)heads * (double)Tq * (double)Tk * (double)hs);
    int64_t per = backward_scratch_floats(Tk, hs) + Tq;
    size_t nbytes = (size_t)(per * nt) * sizeof(float);
    float *scratch = (float *)mll_alloc(nbytes);
    if (!scratch) return -1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t bh = 0; bh < heads; bh++) {
        int64_t b = bh / nh, h = bh % nh;
        attention_backward_head(&kf, q + b * qs[0] + h * qs[1], qs[2], k + b * ks[0] + h * ks[1], ks[2],
                                v + b * vs[0] + h * vs[1], vs[2], out + b * os[0] + h * os[1], os[2],
                                lse + bh * Tq, dout + b * dos[0] + h * dos[1], dos[2],
                                dq + b * dqs[0] + h * dqs[1], dqs[2], dk + b * dks[0] + h * dks[1],
                                dks[2], dv + b * dvs[0] + h * dvs[1], dvs[2], Tq, Tk, hs, scale,
                                scratch + (int64_t)THREAD_ID * per);
    }
    mll_free(scratch, nbytes);
    return 0;
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */

/* Register block of the tile GEMM: 4 rows x NVB vectors of C (AVX-512: 16 accumulators of 32
 * registers; AVX2: 8 of 16). */
#if MLL_VEC == 512
#define NVB 4
#else
#define NVB 2
#endif

/* as gemm_tile_generic */
static MLL_TARGET void FN(gemm_tile)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                                     int64_t acs, const float *B, int64_t ldb, float *C, int64_t ldc,
                                     int acc) {
    int64_t j = 0;
    for (; j + NVB * VL <= N; j += NVB * VL) {
        int64_t i = 0;
        for (; i + 4 <= M; i += 4) {
            V c[4][NVB];
            for (int r = 0; r < 4; r++)
                for (int u = 0; u < NVB; u++) c[r][u] = v_zero();
            const float *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            for (int64_t p = 0; p < K; p++) {
                const float *b = B + p * ldb + j;
                V bv[NVB];
                for (int u = 0; u < NVB; u++) bv[u] = v_load(b + u * VL);
                V x0 = v_set1(a0[p * acs]), x1 = v_set1(a1[p * acs]), x2 = v_set1(a2[p * acs]), x3 = v_set1(a3[p * acs]);
                for (int u = 0; u < NVB; u++) {
                    c[0][u] = v_fmadd(x0, bv[u], c[0][u]);
                    c[1][u] = v_fmadd(x1, bv[u], c[1][u]);
                    c[2][u] = v_fmadd(x2, bv[u], c[2][u]);
                    c[3][u] = v_fmadd(x3, bv[u], c[3][u]);
                }
            }
            for (int r = 0; r < 4; r++) {
                float *cr = C + (i + r) * ldc + j;
                for (int u = 0; u < NVB; u++)
                    v_store(cr + u * VL, acc ? v_add(v_load(cr + u * VL), c[r][u]) : c[r][u]);
            }
        }
        for (; i < M; i++) {
            V c[NVB];
            for (int u = 0; u < NVB; u++) c[u] = v_zero();
            const float *a = A + i * lda;
            for (int64_t p = 0; p < K; p++) {
                const float *b = B + p * ldb + j;
                V x = v_set1(a[p * acs]);
                for (int u = 0; u < NVB; u++) c[u] = v_fmadd(x, v_load(b + u * VL), c[u]);
            }
            float *cr = C + i * ldc + j;
            for (int u = 0; u < NVB; u++)
                v_store(cr + u * VL, acc ? v_add(v_load(cr + u * VL), c[u]) : c[u]);
        }
    }
#if MLL_VEC == 512
    /* two vectors of columns (all of a head of 32): 8 rows x 2 vectors, 16 accumulators, so the
     * FMA pipes have independent chains to overlap (4 x 1 would leave them half idle) */
    for (; j + 2 * VL <= N; j += 2 * VL) {
        int64_t i = 0;
        for (; i + 8 <= M; i += 8) {
            V c[8][2];
            for (int r = 0; r < 8; r++) c[r][0] = c[r][1] = v_zero();
            const float *a = A + i * lda;
            for (int64_t p = 0; p < K; p++) {
                const float *b = B + p * ldb + j;
                V b0 = v_load(b), b1 = v_load(b + VL);
                for (int r = 0; r < 8; r++) {
                    V x = v_set1(a[r * lda + p * acs]);
                    c[r][0] = v_fmadd(x, b0, c[r][0]);
                    c[r][1] = v_fmadd(x, b1, c[r][1]);
                }
            }
            for (int r = 0; r < 8; r++) {
                float *cr = C + (i + r) * ldc + j;
                v_store(cr, acc ? v_add(v_load(cr), c[r][0]) : c[r][0]);
                v_store(cr + VL, acc ? v_add(v_load(cr + VL), c[r][1]) : c[r][1]);
            }
        }
        for (; i < M; i++) {
            V c0 = v_zero(), c1 = v_zero();
            const float *a = A + i * lda;
            for (int64_t p = 0; p < K; p++) {
                const float *b = B + p * ldb + j;
                V x = v_set1(a[p * acs]);
                c0 = v_fmadd(x, v_load(b), c0);
                c1 = v_fmadd(x, v_load(b + VL), c1);
            }
            float *cr = C + i * ldc + j;
            v_store(cr, acc ? v_add(v_load(cr), c0) : c0);
            v_store(cr + VL, acc ? v_add(v_load(cr + VL), c1) : c1);
        }
    }
#endif
    /* the remaining columns one vector at a time, the last one masked */
    for (; j < N; j += VL) {
        int64_t n = mll_min64(VL, N - j);
        int64_t i = 0;
        for (; i + 4 <= M; i += 4) {
            V c0 = v_zero(), c1 = v_zero(), c2 = v_zero(), c3 = v_zero();
            const float *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            for (int64_t p = 0; p < K; p++) {
                const float *b = B + p * ldb + j;
                V bv = n == VL ? v_load(b) : v_loadn(b, n);
                c0 = v_fmadd(v_set1(a0[p * acs]), bv, c0);
                c1 = v_fmadd(v_set1(a1[p * acs]), bv, c1);
                c2 = v_fmadd(v_set1(a2[p * acs]), bv, c2);
                c3 = v_fmadd(v_set1(a3[p * acs]), bv, c3);
            }
            V cs[4] = {c0, c1, c2, c3};
            for (int r = 0; r < 4; r++) {
                float *cr = C + (i + r) * ldc + j;
                V x = acc ? v_add(v_loadn(cr, n), cs[r]) : cs[r];
                if (n == VL) v_store(cr, x); else v_storen(cr, x, n);
            }
        }
        for (; i < M; i++) {
            V c0 = v_zero();
            const float *a = A + i * lda;
            for (int64_t p = 0; p < K; p++) {
                const float *b = B + p * ldb + j;
                c0 = v_fmadd(v_set1(a[p * acs]), n == VL ? v_load(b) : v_loadn(b, n), c0);
            }
            float *cr = C + i * ldc + j;
            V x = acc ? v_add(v_loadn(cr, n), c0) : c0;
            if (n == VL) v_store(cr, x); else v_storen(cr, x, n);
        }
    }
}
#undef NVB

/* as online_row_generic */
static MLL_TARGET float FN(online_row)(float *s, int64_t n, int64_t nv, float scale, float *m, float *l) {
    if (nv > n) nv = n;
    if (nv <= 0) {
        memset(s, 0, (size_t)n * sizeof(float));
        return 1.0f;
    }
    V ninf = v_set1(-INFINITY), mv = ninf;
    int64_t c = 0;
    for (; c + VL <= nv; c += VL) mv = v_max(mv, v_load(s + c));
    if (c < nv) mv = v_max(mv, v_loadn_fill(s + c, nv - c, ninf));
    float mx = v_hmax(mv) * scale;
    float mnew = mx > *m ? mx : *m;
    float alpha = expf(*m - mnew);
    V vs = v_set1(scale), vneg = v_set1(-mnew), sum = v_zero();
    for (c = 0; c + VL <= nv; c += VL) {
        V e = v_exp(v_fmadd(v_load(s + c), vs, vneg));
        v_store(s + c, e);
        sum = v_add(sum, e);
    }
    if (c < nv) {
        V e = v_keepn(v_exp(v_fmadd(v_loadn(s + c, nv - c), vs, vneg)), nv - c);
        v_storen(s + c, e, nv - c);
        sum = v_add(sum, e);
    }
    for (c = nv; c < n; c++) s[c] = 0.0f;
    *l = *l * alpha + v_hsum(sum);
    *m = mnew;
    return alpha;
}

/* as prob_row_generic */
static MLL_TARGET void FN(prob_row)(float *s, int64_t n, int64_t nv, float scale, float lse) {
    if (nv > n) nv = n;
    if (nv < 0) nv = 0;
    V vs = v_set1(scale), vneg = v_set1(-lse);
    int64_t c = 0;
    for (; c + VL <= nv; c += VL) v_store(s + c, v_exp(v_fmadd(v_load(s + c), vs, vneg)));
    if (c < nv) v_storen(s + c, v_exp(v_fmadd(v_loadn(s + c, nv - c), vs, vneg)), nv - c);
    for (c = nv; c < n; c++) s[c] = 0.0f;
}

/* as dscore_row_generic */
static MLL_TARGET void FN(dscore_row)(const float *p, float *dp, int64_t n, float D, float scale) {
    V vd = v_set1(D), vs = v_set1(scale);
    VLOOP2(p, dp, dp, v_mul(vs, v_mul(va, v_sub(vb, vd))));
}

/* as rowdot_generic (simd.h's dot, blas1's too) */
static MLL_TARGET double FN(rowdot)(const float *a, const float *b, int64_t n) { return v_dot_f64(a, b, n); }

/* as transpose_generic, in 8 x 8 blocks (simd.h); the edges element by element */
static MLL_TARGET void FN(transpose)(const float *a, int64_t rows, int64_t cols, int64_t lda, float *b,
                                     int64_t ldb) {
    int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    for (int64_t r = 0; r < r8; r += 8)
        for (int64_t c = 0; c < c8; c += 8) mll_transpose8x8(a + r * lda + c, lda, b + c * ldb + r, ldb);
    for (int64_t c = c8; c < cols; c++)
        for (int64_t r = 0; r < r8; r++) b[c * ldb + r] = a[r * lda + c];
    for (int64_t r = r8; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) b[c * ldb + r] = a[r * lda + c];
}

#endif /* MLL_VEC */
