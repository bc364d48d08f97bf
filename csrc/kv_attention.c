/* kv_attention.c: attention of one new position over a KV cache (a decoding step).
 *
 * The cache is position-major: kcache, vcache (S, B, nkv, hs), so a step appends one row of
 * (B, nkv, hs) without moving what is cached. With grouped-query attention (Ainslie et al.,
 * 2023) there are fewer key/value heads nkv than query heads nh: query head h reads kv head
 * h / (nh / nkv) (nkv = nh is plain multi-head attention). For each (batch row b, head h),
 * independently:
 *   k[pos], v[pos] <- the k and v parts of qkv[b] (the new position is cached first),
 *   s_t  = scale * q_h . k[t]_g                    for t = 0 .. pos (causal: all cached)
 *   y[b, h] = sum_t softmax(s)_t v[t]_g             (max-subtracted, sums in double)
 * The caches hold float32, or bf16 (kv_bf16: each value rounded to nearest even as it is
 * written, widened exactly as it is read, the arithmetic in float32): a step of a batch over
 * long contexts reads more bytes of cache than of weights, and bf16 halves them.
 * Inference only (no backward). Pairs (b, h) go to threads whole (gemv.c's pool, as the
 * linear layers around this step: no OpenMP team left spinning between them), so the result
 * does not depend on the thread count.
 */
#ifndef MLL_VEC
#include "simd.h"

/* element i of a cache row p: a float32, or a bf16 widened (the upper half of a float32) */
static inline float kv_at(const void *p, int64_t i, int bf16) {
    if (!bf16) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* p advanced by i elements of the cache's dtype */
static inline const void *kv_skip(const void *p, int64_t i, int bf16) {
    return (const char *)p + i * (bf16 ? 2 : 4);
}

/* q . k over hs elements, in 16 interleaved partial sums (vectorizes without target
 * attributes; the partial sums are added in a fixed order). */
static float dot_hs(const float *q, const void *k, int64_t hs, int bf16) {
    float acc[16] = {0};
    int64_t d = 0;
    for (; d + 16 <= hs; d += 16)
        for (int j = 0; j < 16; j++) acc[j] += q[d + j] * kv_at(k, d + j, bf16);
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; d < hs; d++) s += q[d] * kv_at(k, d, bf16);
    return s;
}

/* y (hs) = attention of q (hs) over rows t = 0 .. S-1 of k, v (row t ld elements on); w (S) scratch */
static void attend_one(const float *q, const void *k, const void *v, int64_t ld, int64_t S, int64_t hs,
                       int bf16, float scale, float *w, float *y) {
    for (int64_t t = 0; t < S; t++) w[t] = scale * dot_hs(q, kv_skip(k, t * ld, bf16), hs, bf16);
    mll_softmax_row(w, w, S);
    for (int64_t d = 0; d < hs; d++) y[d] = 0.0f;
    for (int64_t t = 0; t < S; t++) {
        const void *vt = kv_skip(v, t * ld, bf16);
        float p = w[t];
        for (int64_t d = 0; d < hs; d++) y[d] += p * kv_at(vt, d, bf16);
    }
}

/* Row b attends over positions 0 .. pos[b] of its own cache kc[b], vc[b] (position t ld
 * elements on, float32 or bf16); w holds S = max pos + 1 weights per (row, head). */
typedef struct {
    const float *qkv;
    void *const *kc;
    void *const *vc;
    const int64_t *pos;
    float *y, *w;
    int64_t nh, group, hs, ldq, ld, S, heads_per_chunk, chunks_per_row;
    float scale;
    int bf16;
} attend_job;

/* chunk c: heads [h0, h1) of batch row b, one pair after the other */
static void attend_generic(void *ctx, int64_t c) {
    const attend_job *j = ctx;
    int64_t b = c / j->chunks_per_row, h0 = c % j->chunks_per_row * j->heads_per_chunk;
    int64_t h1 = mll_min64(h0 + j->heads_per_chunk, j->nh);
    for (int64_t h = h0; h < h1; h++) {
        int64_t kv = h / j->group * j->hs;
        attend_one(j->qkv + b * j->ldq + h * j->hs, kv_skip(j->kc[b], kv, j->bf16), kv_skip(j->vc[b], kv, j->bf16),
                   j->ld, j->pos[b] + 1, j->hs, j->bf16, j->scale, j->w + (b * j->nh + h) * j->S,
                   j->y + (b * j->nh + h) * j->hs);
    }
}

/* attend_avx2, attend_avx512: the same, vectorized (the bottom half, below) */
#define MLL_DISPATCH_SELF "kv_attention.c"
#include "dispatch.h"

/* Below this many multiply-adds (q.k and p v over all pairs) one thread does the step: a few
 * tens of microseconds of work, less than a busy machine can delay a helper that has taken a
 * share. Rows shared out whole (each one forward sweep over its own cache) pay from a quarter
 * of that; heads of one row split between threads (strided reads of one cache) only above it. */
#define ATTEND_PAR_MIN (1 << 20)
#define ATTEND_ROWS_PAR_MIN (1 << 18)

int mll_kv_attention_rows(const float *qkv, void *const *kc, void *const *vc, int64_t ld, const int64_t *pos,
                          int kv_bf16, float *y, float *w, int64_t B, int64_t nh, int64_t nkv, int64_t hs,
                          float scale) {
    if (nh < 1 || nkv < 1 || nh % nkv) return -1;
    const int64_t Ckv = nkv * hs, ldq = (nh + 2 * nkv) * hs;
    int64_t S = 0, work = 0;
    /* the new position goes into each row's cache first: it attends to itself */
    for (int64_t b = 0; b < B; b++) {
        const float *kn = qkv + b * ldq + nh * hs, *vn = kn + Ckv;
        if (kv_bf16) {
            mll_cast(kn, MLL_F32, (uint16_t *)kc[b] + pos[b] * ld, MLL_BF16, Ckv);
            mll_cast(vn, MLL_F32, (uint16_t *)vc[b] + pos[b] * ld, MLL_BF16, Ckv);
        } else {
            memcpy((float *)kc[b] + pos[b] * ld, kn, (size_t)Ckv * sizeof(float));
            memcpy((float *)vc[b] + pos[b] * ld, vn, (size_t)Ckv * sizeof(float));
        }
        S = pos[b] + 1 > S ? pos[b] + 1 : S;
        work += nh * (pos[b] + 1) * hs * 2;
    }
    /* a chunk is every head of a row when there are rows enough to share out, else about 2
     * chunks per thread */
    int nt = mll_get_num_threads();
    const int by_rows = B >= 2 * nt;
    if (work < (by_rows ? ATTEND_ROWS_PAR_MIN : ATTEND_PAR_MIN)) nt = 1;
    int64_t per_chunk = nt <= 1 || by_rows ? nh : (nh + 2 * nt - 1) / (2 * nt);
    attend_job job = {qkv, kc, vc, pos, y, w, nh, nh / nkv, hs, ldq, ld, S, per_chunk,
                      (nh + per_chunk - 1) / per_chunk, scale, kv_bf16 != 0};
    mll_decode_parallel(B * job.chunks_per_row, nt, (double)work, MLL_PICK(attend), &job);
    return 0;
}

int mll_kv_attention_step(const float *qkv, void *kcache, void *vcache, int kv_bf16, float *y, float *w,
                          int64_t B, int64_t nh, int64_t nkv, int64_t hs, int64_t pos, float scale) {
    if (nh < 1 || nkv < 1 || nh % nkv) return -1;
    if (B <= 0) return 0;
    const int64_t Ckv = nkv * hs;
    void **kc = mll_alloc((size_t)B * (2 * sizeof(void *) + sizeof(int64_t)));
    if (!kc) return -2;
    void **vc = kc + B;
    int64_t *p = (int64_t *)(vc + B);
    for (int64_t b = 0; b < B; b++) {
        /* position-major (S, B, nkv, hs): row b's positions B Ckv apart */
        kc[b] = (void *)kv_skip(kcache, b * Ckv, kv_bf16);
        vc[b] = (void *)kv_skip(vcache, b * Ckv, kv_bf16);
        p[b] = pos;
    }
    int r = mll_kv_attention_rows(qkv, kc, vc, B * Ckv, p, kv_bf16, y, w, B, nh, nkv, hs, scale);
    mll_free(kc, (size_t)B * (2 * sizeof(void *) + sizeof(int64_t)));
    return r;
}

#else /* MLL_VEC: the bottom half, once per ISA (dispatch.h) */
/* VL elements of a cache row from element i, widened when bf16; the first n (< VL) of them */
static inline MLL_TARGET V FN(kv_load)(const void *p, int64_t i, const int bf16) {
    return bf16 ? v_load_bf16((const uint16_t *)p + i) : v_load((const float *)p + i);
}
static inline MLL_TARGET V FN(kv_loadn)(const void *p, int64_t i, int64_t n, const int bf16) {
    return bf16 ? v_loadn_bf16((const uint16_t *)p + i, n) : v_loadn((const float *)p + i, n);
}

/* q_h . k over hs elements at k + at, in VL lanes (the lanes' sums are the caller's) */
static inline __attribute__((always_inline)) MLL_TARGET V FN(dot_lanes)(const float *qh, const void *k, int64_t at,
                                                                         int64_t body, int64_t tail, const int bf16) {
    V acc = v_zero();
    for (int64_t d = 0; d < body; d += VL) acc = v_fmadd(v_load(qh + d), FN(kv_load)(k, at + d, bf16), acc);
    if (tail) acc = v_fmadd(v_loadn(qh + body, tail), FN(kv_loadn)(k, at + body, tail, bf16), acc);
    return acc;
}

/* attend_generic with VL-lane vectors (masked on the last partial one), and position
 * outermost: the heads of a chunk sit side by side in each cached row, so the caches are read
 * as one forward sweep (which the prefetchers follow) instead of one strided pass per head;
 * per (head, lane) the sums run over t in the same order, so the grouping never changes a bit.
 * Compiled once per cache dtype (bf16 a constant). (The portable loops compile to SSE only.) */
static inline __attribute__((always_inline)) MLL_TARGET void FN(attend_rows)(const attend_job *j, int64_t c,
                                                                             const int bf16) {
    int64_t b = c / j->chunks_per_row, h0 = c % j->chunks_per_row * j->heads_per_chunk;
    const int64_t hs = j->hs, S = j->pos[b] + 1, ldw = j->S, tail = hs % VL, body = hs - tail;
    int64_t h1 = mll_min64(h0 + j->heads_per_chunk, j->nh);
    const int64_t g = j->group, ld = j->ld;
    const float *q = j->qkv + b * j->ldq;
    const void *k = j->kc[b], *v = j->vc[b];
    float *w = j->w + b * j->nh * ldw, *y = j->y + b * j->nh * hs;
    const float scale = j->scale;
    for (int64_t t = 0; t < S; t++) {
        const int64_t kt = t * ld;
        for (int64_t h = h0; h < h1; h++)
            w[h * ldw + t] = scale * v_hsum(FN(dot_lanes)(q + h * hs, k, kt + h / g * hs, body, tail, bf16));
    }
    for (int64_t h = h0; h < h1; h++) {
        mll_softmax_row(w + h * ldw, w + h * ldw, S);
        memset(y + h * hs, 0, (size_t)hs * sizeof(float));
    }
    for (int64_t t = 0; t < S; t++) {
        for (int64_t h = h0; h < h1; h++) {
            V p = v_set1(w[h * ldw + t]);
            const int64_t at = t * ld + h / g * hs;
            float *yh = y + h * hs;
            for (int64_t d = 0; d < body; d += VL)
                v_store(yh + d, v_fmadd(p, FN(kv_load)(v, at + d, bf16), v_load(yh + d)));
            if (tail)
                v_storen(yh + body, v_fmadd(p, FN(kv_loadn)(v, at + body, tail, bf16), v_loadn(yh + body, tail)),
                         tail);
        }
    }
}

static MLL_TARGET void FN(attend)(void *ctx, int64_t c) {
    const attend_job *j = ctx;
    if (j->bf16) FN(attend_rows)(j, c, 1);
    else FN(attend_rows)(j, c, 0);
}
#endif /* MLL_VEC */
