/* decode_step.c: one decoding step of a GPT-2 block (pre-LayerNorm), for B rows at once.
 *
 *   x += c_proj(attention over the KV cache(c_attn(ln_1(x))))
 *   x += mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))
 *
 * composed of the kernels of layernorm.c, gemv.c and kv_attention.c in one C call, so a step
 * of an n-layer model costs n calls from Python instead of 7n. Inference only.
 */
#include "simd.h"

int mll_gpt_block_step(float *x, const mll_gpt_block *w, float *kcache, float *vcache, int64_t B, int64_t nh,
                       int64_t hs, int64_t pos) {
    const int64_t C = nh * hs;
    /* scratch: h (B, C), qkv (B, 3C), y (B, C), m (B, 4C), mean, rstd (B) */
    size_t bytes = (size_t)(B * 9 * C + 2 * B) * sizeof(float);
    float *h = mll_alloc(bytes);
    if (!h) return -1;
    float *qkv = h + B * C, *y = qkv + B * 3 * C, *m = y + B * C, *mean = m + B * 4 * C, *rstd = mean + B;
    int r = 0;
    mll_layernorm_forward(x, w->ln1_w, w->ln1_b, h, mean, rstd, B, C, w->eps1);
    mll_linear_rows(h, w->attn_w, w->attn_b, NULL, qkv, B, 3 * C, C, 0);
    r = mll_kv_attention_step(qkv, kcache, vcache, y, B, nh, hs, pos, w->scale);
    if (r == 0) {
        mll_linear_rows(y, w->proj_w, w->proj_b, x, x, B, C, C, 0);            /* x + attn */
        mll_layernorm_forward(x, w->ln2_w, w->ln2_b, h, mean, rstd, B, C, w->eps2);
        mll_linear_rows(h, w->fc_w, w->fc_b, NULL, m, B, 4 * C, C, 1);         /* gelu(c_fc) */
        mll_linear_rows(m, w->fc2_w, w->fc2_b, x, x, B, C, 4 * C, 0);          /* x + mlp */
    }
    mll_free(h, bytes);
    return r;
}
