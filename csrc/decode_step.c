/* decode_step.c: one decoding step of a pre-norm transformer block, for B rows at once, with
 * the options of the model families minillm runs (mll_block_options in minillm.h):
 *
 *   h = norm_1(x)                                  LayerNorm (GPT-2) or RMSNorm (Llama)
 *   q, k, v = h Wq^T + bq, h Wk^T + bk, h Wv^T + bv   nh query heads, nkv key/value heads
 *   q, k = rmsnorm per head (q_norm, k_norm)       QK-norm (Qwen3), optional
 *   q, k = rotated by position pos (rope.c)        rotary positions, optional
 *   x += attention over the KV cache (q, k, v) Wo^T + bo      (kv_attention.c)
 *   h = norm_2(x)
 *   x += (gelu(h Wup^T + bup)) Wdown^T + bdown                GELU MLP (GPT-2)
 *     or (relu(h Wup^T + bup)^2) Wdown^T + bdown               ReLU^2 MLP
 *     or (silu(h Wgate^T + bgate) * (h Wup^T + bup)) Wdown^T + bdown   SwiGLU (Llama)
 *
 * composed of the kernels of layernorm.c, rmsnorm.c, rope.c, gemv.c and kv_attention.c in
 * one C call, so a step of an n-layer model costs n calls from Python. Learned positions are
 * added to x before the first block, by the caller; mll_final_step is the final norm and the
 * LM head. Every buffer comes from the caller's scratch: nothing is allocated per step.
 * Inference only.
 */
#include "simd.h"

/* floats rounded up to a whole number of 64-byte lines, so each scratch buffer starts on one */
static int64_t lines(int64_t n) { return (n + 15) / 16 * 16; }

/* the step's own buffers: h, qkv, y, m, mean, rstd, the attention weights */
static int64_t rows_scratch(const mll_block_options *o, int64_t B, int64_t S) {
    const int64_t Q = o->n_head * o->head_dim, KV = o->n_kv_head * o->head_dim;
    return lines(B * o->n_embd) + lines(B * (Q + 2 * KV)) + lines(B * Q) + lines(B * o->d_ff) + 2 * lines(B) +
           lines(B * o->n_head * S);
}

/* ... and room for mll_block_step's row pointers and positions (3 B 8-byte words) */
int64_t mll_block_step_scratch(const mll_block_options *o, int64_t B, int64_t S) {
    return rows_scratch(o, B, S) + lines(6 * B);
}

/* h (B, C) <- norm(x) with the block's kind of norm; mean, rstd (B) scratch */
static void norm_rows(const mll_block_options *o, const float *x, const float *w, const float *b, float *h,
                      float *mean, float *rstd, int64_t B) {
    if (o->norm == MLL_NORM_RMS) mll_rmsnorm_forward(x, w, h, rstd, B, o->n_embd, o->norm_eps);
    else mll_layernorm_forward(x, w, b, h, mean, rstd, B, o->n_embd, o->norm_eps);
}

int mll_block_step_rows(float *x, const mll_block_options *o, const mll_block_weights *w, void *const *kc,
                        void *const *vc, int64_t ld, const int64_t *pos, int kv_bf16, const float *rope_cos,
                        const float *rope_sin, float *scratch, int64_t B) {
    const int64_t C = o->n_embd, nh = o->n_head, nkv = o->n_kv_head, hs = o->head_dim, F = o->d_ff;
    const int64_t Q = nh * hs, KV = nkv * hs, ldq = Q + 2 * KV;
    if (nh < 1 || nkv < 1 || nh % nkv || (o->rotary && (hs % 2 || !rope_cos || !rope_sin)) ||
        (o->mlp == MLL_MLP_SWIGLU && !w->gate_w.data) || (o->qk_norm && (!w->q_norm_w || !w->k_norm_w)))
        return -1;
    float *h = scratch, *qkv = h + lines(B * C), *y = qkv + lines(B * ldq), *m = y + lines(B * Q);
    float *mean = m + lines(B * F), *rstd = mean + lines(B), *att = rstd + lines(B);

    norm_rows(o, x, w->norm1_w, w->norm1_b, h, mean, rstd, B);
    const mll_matrix W[3] = {w->q_w, w->k_w, w->v_w};
    const float *bias[3] = {w->q_b, w->k_b, w->v_b};
    const int64_t N[3] = {Q, KV, KV};
    if (mll_linear_cat(h, 3, W, bias, N, qkv, B, C)) return -2;                /* qkv (B, Q + 2 KV) */
    if (o->qk_norm)
        for (int64_t b = 0; b < B; b++) {
            float *qb = qkv + b * ldq;
            mll_rmsnorm_forward(qb, w->q_norm_w, qb, NULL, nh, hs, o->qk_norm_eps);
            mll_rmsnorm_forward(qb + Q, w->k_norm_w, qb + Q, NULL, nkv, hs, o->qk_norm_eps);
        }
    if (o->rotary)
        for (int64_t b = 0; b < B; b++) {
            const float *c = rope_cos + pos[b] * (hs / 2), *s = rope_sin + pos[b] * (hs / 2);
            mll_rope_forward(qkv + b * ldq, ldq, c, s, 1, 1, nh, hs);
            mll_rope_forward(qkv + b * ldq + Q, ldq, c, s, 1, 1, nkv, hs);
        }
    mll_kv_attention_rows(qkv, kc, vc, ld, pos, kv_bf16, y, att, B, nh, nkv, hs, o->attn_scale);
    if (mll_linear(y, &w->o_w, w->o_b, x, x, B, C, Q, 0)) return -2;          /* x + attn */

    norm_rows(o, x, w->norm2_w, w->norm2_b, h, mean, rstd, B);
    int r = o->mlp == MLL_MLP_SWIGLU ? mll_linear_gated(h, &w->gate_w, w->gate_b, &w->up_w, w->up_b, m, B, F, C)
                                     : mll_linear(h, &w->up_w, w->up_b, NULL, m, B, F, C,
                                                  o->mlp == MLL_MLP_RELU2 ? 2 : 1);   /* act(up) */
    if (r || mll_linear(m, &w->down_w, w->down_b, x, x, B, C, F, 0)) return -2;            /* x + mlp */
    return 0;
}

int mll_block_step(float *x, const mll_block_options *o, const mll_block_weights *w, void *kcache,
                   void *vcache, int kv_bf16, const float *rope_cos, const float *rope_sin, float *scratch,
                   int64_t B, int64_t pos) {
    /* every row at pos, in one position-major cache (S, B, nkv, hs): row b's positions lie
     * B KV apart from kcache + b KV; the row pointers sit at the end of the scratch */
    const int64_t KV = o->n_kv_head * o->head_dim, size = kv_bf16 ? 2 : 4;
    void **kc = (void **)(scratch + rows_scratch(o, B, pos + 1));
    void **vc = kc + B;
    int64_t *p = (int64_t *)(vc + B);
    for (int64_t b = 0; b < B; b++) {
        kc[b] = (char *)kcache + b * KV * size;
        vc[b] = (char *)vcache + b * KV * size;
        p[b] = pos;
    }
    return mll_block_step_rows(x, o, w, kc, vc, B * KV, p, kv_bf16, rope_cos, rope_sin, scratch, B);
}

int mll_final_step(const float *x, const mll_block_options *o, const float *norm_w, const float *norm_b,
                    const mll_matrix *head_w, const float *head_b, float *logits, float *scratch, int64_t B,
                    int64_t V) {
    float *h = scratch, *mean = h + lines(B * o->n_embd), *rstd = mean + lines(B);
    norm_rows(o, x, norm_w, norm_b, h, mean, rstd, B);
    return mll_linear(h, head_w, head_b, NULL, logits, B, V, o->n_embd, 0) ? -2 : 0;
}
