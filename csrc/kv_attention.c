/* kv_attention.c: attention of one new position over a KV cache (a decoding step).
 *
 * The cache is position-major: kcache, vcache (S, B, nh, hs), so a step appends one row of
 * (B, nh, hs) without moving what is cached. For each (batch row b, head h), independently:
 *   k[pos], v[pos] <- the k and v parts of qkv[b] (the new position is cached first),
 *   s_t  = scale * q . k[t]                        for t = 0 .. pos (causal: all cached)
 *   y[b, h] = sum_t softmax(s)_t v[t]               (max-subtracted, sums in double)
 * Inference only (no backward). Pairs (b, h) go to threads whole, so the result does not
 * depend on the thread count.
 */
#include "simd.h"

/* q . k over hs floats, in 16 interleaved partial sums (vectorizes without target
 * attributes; the partial sums are added in a fixed order). */
static float dot_hs(const float *q, const float *k, int64_t hs) {
    float acc[16] = {0};
    int64_t d = 0;
    for (; d + 16 <= hs; d += 16)
        for (int j = 0; j < 16; j++) acc[j] += q[d + j] * k[d + j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; d < hs; d++) s += q[d] * k[d];
    return s;
}

/* y (hs) = attention of q (hs) over rows t = 0 .. S-1 of k, v (row t at k + t * ld); w (S) scratch */
static void attend_one(const float *q, const float *k, const float *v, int64_t ld, int64_t S, int64_t hs,
                       float scale, float *w, float *y) {
    float m = -INFINITY;
    for (int64_t t = 0; t < S; t++) {
        w[t] = scale * dot_hs(q, k + t * ld, hs);
        m = w[t] > m ? w[t] : m;
    }
    double total = 0.0;
    for (int64_t t = 0; t < S; t++) {
        w[t] = expf(w[t] - m);
        total += w[t];
    }
    float inv = (float)(1.0 / total);
    for (int64_t d = 0; d < hs; d++) y[d] = 0.0f;
    for (int64_t t = 0; t < S; t++) {
        const float *vt = v + t * ld;
        float p = w[t] * inv;
        for (int64_t d = 0; d < hs; d++) y[d] += p * vt[d];
    }
}

int mll_kv_attention_step(const float *qkv, float *kcache, float *vcache, float *y, int64_t B, int64_t nh,
                          int64_t hs, int64_t pos, float scale) {
    const int64_t C = nh * hs, ld = B * C, S = pos + 1, pairs = B * nh;
    /* the new position goes into the cache first: it attends to itself */
    for (int64_t b = 0; b < B; b++) {
        memcpy(kcache + pos * ld + b * C, qkv + b * 3 * C + C, (size_t)C * sizeof(float));
        memcpy(vcache + pos * ld + b * C, qkv + b * 3 * C + 2 * C, (size_t)C * sizeof(float));
    }
    size_t wbytes = (size_t)(pairs * S) * sizeof(float);
    float *w = mll_alloc(wbytes);
    if (!w) return -1;
    MLL_PARALLEL_ROWS(pairs, 2 * S * hs, p, {
        int64_t b = p / nh, h = p % nh;
        attend_one(qkv + b * 3 * C + h * hs, kcache + b * C + h * hs, vcache + b * C + h * hs, ld, S, hs, scale,
                   w + p * S, y + b * C + h * hs);
    });
    mll_free(w, wbytes);
    return 0;
}
