# Declarations of csrc/minillm.h, section by section, exactly as the header has them.
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t, int8_t

cdef extern from "minillm.h" nogil:
    # runtime.c
    enum:
        MLL_ISA_GENERIC
        MLL_ISA_AVX2
        MLL_ISA_AVX512
    int mll_init()
    int mll_cpu_supports(int isa)
    int mll_cpu_has_avx512bf16()
    int mll_cpu_has_avx512vnni()
    int mll_cpu_is_amd()
    int mll_set_vnni(int on)
    int mll_get_vnni()
    int mll_vnni_active()
    int mll_set_bf16_x(int on)
    int mll_get_bf16_x()
    int mll_bf16_x_active()
    const char *mll_cpu_name()
    int mll_get_isa()
    int mll_set_isa(int isa)
    const char *mll_isa_name(int isa)
    int mll_get_num_threads()
    void mll_set_num_threads(int n)
    void *mll_alloc(size_t nbytes)
    void mll_free(void *p, size_t nbytes)
    void mll_alloc_stats(int64_t *in_use, int64_t *cached, int64_t *os_allocs)

    # elementwise.c
    enum:
        MLL_ADD
        MLL_SUB
        MLL_MUL
        MLL_DIV
    void mll_binary(int op, const float *a, const float *b, float *out, int64_t n)
    void mll_binary_row(int op, const float *a, const float *b, float *out, int64_t rows, int64_t cols)
    void mll_binary_col(int op, const float *a, const float *b, float *out, int64_t rows, int64_t cols)
    void mll_binary_scalar(int op, const float *a, float s, float *out, int64_t n, int reverse)
    void mll_binary_strided(int op, int ndim, const int64_t *shape, const float *a, const int64_t *astr,
                            const float *b, const int64_t *bstr, float *out)
    enum:
        MLL_NEG
        MLL_EXP
        MLL_LOG
        MLL_SQRT
        MLL_TANH
        MLL_RELU
        MLL_GELU
        MLL_ABS
        MLL_SIGMOID
        MLL_RELU2
    void mll_unary(int op, const float *x, float *out, int64_t n)
    void mll_unary_backward(int op, const float *x, const float *y, const float *dy, float *dx, int64_t n)
    void mll_softcap(const float *x, float *out, int64_t n, float cap)
    void mll_softcap_backward(const float *y, const float *dy, float *dx, int64_t n, float cap)

    # blas1.c
    void mll_fill(float *x, float v, int64_t n)
    void mll_copy(const float *x, float *y, int64_t n)
    void mll_scale(float *x, float a, int64_t n)
    void mll_axpy(float a, const float *x, float *y, int64_t n)
    double mll_dot(const float *x, const float *y, int64_t n)
    void mll_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape, const int64_t *str,
                          int elem_size)
    void mll_transpose(const float *a, float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb)
    enum:
        MLL_F32
        MLL_I32
        MLL_I64
        MLL_BF16
        MLL_U8
        MLL_U16
        MLL_I8
    void mll_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n)
    int mll_all_finite(const float *x, int64_t n)

    # reduce.c
    void mll_sum_rows(const float *x, float *out, int64_t rows, int64_t cols)
    void mll_max_rows(const float *x, float *out, int64_t rows, int64_t cols)
    void mll_argmax_rows(const float *x, int64_t *out, int64_t rows, int64_t cols)
    void mll_sum_cols(const float *x, float *out, int64_t rows, int64_t cols)
    double mll_sum_all(const float *x, int64_t n)
    float mll_max_all(const float *x, int64_t n)
    int64_t mll_argmax_all(const float *x, int64_t n)
    double mll_sumsq_all(const float *x, int64_t n)

    # softmax.c
    void mll_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols)
    void mll_softmax_row(const float *x, float *y, int64_t n)
    void mll_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols)
    void mll_log_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols)
    void mll_log_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols)

    # layernorm.c
    void mll_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                               float *mean, float *rstd, int64_t rows, int64_t cols, float eps)
    void mll_layernorm_backward(const float *x, const float *gamma, const float *mean, const float *rstd,
                                const float *dy, float *dx, float *dgamma, float *dbeta,
                                int64_t rows, int64_t cols)

    # embedding.c
    int64_t mll_embedding_forward(const float *weight, const int64_t *idx, float *out, int64_t n,
                                  int64_t dim, int64_t vocab)
    void mll_embedding_backward(const float *dout, const int64_t *idx, float *dweight, int64_t n,
                                int64_t dim)

    # gemm.c
    void mll_sgemm(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                   float *C, int64_t ldc)
    void mll_sgemm_batched(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                           const float *A, int64_t lda, int64_t strideA, const float *B, int64_t ldb,
                           int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC,
                           int64_t batch)

    # gemm_bf16.c
    int mll_gemm_bf16(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha, const void *A,
                      int a_dtype, int64_t lda, const void *B, int b_dtype, int64_t ldb, float beta, float *C,
                      int64_t ldc)
    int mll_gemm_bf16_native()
    void mll_round_bf16(const float *x, uint16_t *out, int64_t n)

    # rng.c
    void mll_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out)
    void mll_rand_uniform(uint64_t seed, uint64_t offset, float *out, int64_t n, float lo, float hi)
    void mll_rand_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std)
    void mll_rand_int(uint64_t seed, uint64_t offset, int64_t *out, int64_t n, int64_t lo, int64_t hi)
    void mll_rand_bits(uint64_t seed, uint64_t offset, uint32_t *out, int64_t n)
    void mll_rand_permutation(uint64_t seed, uint64_t offset, int64_t *out, int64_t n)
    void mll_rand_trunc_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std,
                               float a, float b)

    # loss.c
    int64_t mll_cross_entropy_forward(const float *logits, int64_t ld, const int64_t *targets,
                                      float *losses, float *lse, int64_t N, int64_t V,
                                      int64_t ignore_index, float label_smoothing)
    void mll_cross_entropy_backward(const float *logits, int64_t ld, const int64_t *targets,
                                    const float *lse, const float *dloss, float scale, float *dlogits,
                                    int64_t N, int64_t V, int64_t ignore_index, float label_smoothing)
    int64_t mll_cross_entropy_forward_grad(const float *logits, int64_t ld, const int64_t *targets,
                                           float *losses, float *lse, float *dlogits, int64_t ldd,
                                           float scale, int64_t N, int64_t V, int64_t ignore_index,
                                           float label_smoothing)

    # optim.c
    void mll_sgd_step(float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                      float dampening, float weight_decay, int nesterov, int first_step)
    void mll_adam_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int decoupled, int64_t step)

    # mask.c
    void mll_dropout_mask(uint64_t seed, uint64_t offset, float *mask, int64_t n, float p)
    void mll_causal_fill(float *x, int64_t batch, int64_t T, int64_t S, float value)
    void mll_onehot_rows(const int64_t *idx, const float *val, float *out, int64_t rows, int64_t cols)

    # attention.c, bias_gelu.c (fused); layernorm.c: the fused residual add
    int mll_attention_forward(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                              const float *v, const int64_t *vs, float *out, const int64_t *os,
                              float *lse, int64_t B, int64_t nh, int64_t Tq, int64_t Tk, int64_t hs,
                              float scale)
    int mll_attention_backward(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                               const float *v, const int64_t *vs, const float *out, const int64_t *os,
                               const float *lse, const float *dout, const int64_t *dos, float *dq,
                               const int64_t *dqs, float *dk, const int64_t *dks, float *dv,
                               const int64_t *dvs, int64_t B, int64_t nh, int64_t Tq, int64_t Tk,
                               int64_t hs, float scale)
    void mll_bias_gelu_forward(const float *x, const float *b, float *y, int64_t N, int64_t C)
    int mll_bias_gelu_backward(const float *x, const float *b, const float *dy, float *dx, float *db,
                               int64_t N, int64_t C)
    void mll_gelu_erf_forward(const float *x, float *y, int64_t n)
    void mll_gelu_erf_backward(const float *x, const float *dy, float *dx, int64_t n)
    # sample.c
    int mll_top_k_mask(float *x, int64_t rows, int64_t V, int64_t k)
    int mll_top_p_mask(float *x, int64_t rows, int64_t V, float p)
    void mll_sample_rows(const float *x, const float *u, int64_t *out, int64_t rows, int64_t V)

    # rmsnorm.c
    void mll_rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols,
                             float eps)
    int mll_rmsnorm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx,
                             float *dw, int64_t rows, int64_t cols)

    # rope.c
    void mll_rope_table(const float *inv_freq, float *cos_t, float *sin_t, int64_t n_pos, int64_t half,
                        float scale)
    void mll_rope_forward(float *x, int64_t ldx, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                          int64_t n_head, int64_t d)
    void mll_rope_backward(float *dx, int64_t ldx, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                           int64_t n_head, int64_t d)
    void mll_qk_rope_forward(float *qkv, int64_t ld, int64_t B, int64_t T, int64_t nq, int64_t nk, int64_t d,
                             const float *cos_t, const float *sin_t, const float *qw, const float *kw, float eps,
                             float *rstd)
    int mll_qk_rope_backward(float *dqkv, const float *x, int64_t ld, int64_t B, int64_t T, int64_t nq, int64_t nk,
                             int64_t d, const float *cos_t, const float *sin_t, const float *qw, const float *kw,
                             const float *rstd, float *dqw, float *dkw)

    # silu.c
    void mll_silu_mul_forward(const float *g, const float *u, float *y, int64_t n)
    void mll_silu_mul_backward(const float *g, const float *u, const float *dy, float *dg, float *du, int64_t n)

    # gemv.c
    ctypedef struct mll_matrix:
        const void *data
        const float *scale
        int dtype
        int64_t group
    void mll_q8_tile(const int8_t *q, const float *scale, int64_t N, int64_t K, int64_t group, uint8_t *tiles,
                     float *tscale)
    void mll_q8_untile(const uint8_t *tiles, const float *tscale, int64_t N, int64_t K, int64_t group, int8_t *q,
                       float *scale)
    void mll_bf16_pack(const uint16_t *w, int64_t N, int64_t K, uint16_t *blocks)
    void mll_bf16_unpack(const uint16_t *blocks, int64_t N, int64_t K, uint16_t *w)
    mll_matrix mll_matrix_rows(const mll_matrix *W, int64_t r, int64_t K)
    int mll_linear(const float *x, const mll_matrix *W, const float *bias, const float *add, float *y, int64_t M,
                   int64_t N, int64_t K, int act)
    void mll_linear_rows(const float *x, const float *W, const float *bias, const float *add, float *y,
                         int64_t M, int64_t N, int64_t K, int act)
    int mll_linear_cat(const float *x, int nseg, const mll_matrix *W, const float *const *bias, const int64_t *N,
                       float *y, int64_t M, int64_t K)
    int mll_linear_gated(const float *x, const mll_matrix *Wg, const float *bg, const mll_matrix *Wu,
                         const float *bu, float *y, int64_t M, int64_t N, int64_t K)
    ctypedef void (*mll_chunk_fn)(void *ctx, int64_t chunk) noexcept nogil
    void mll_decode_parallel(int64_t nchunks, int nthreads, double work, mll_chunk_fn fn, void *ctx)
    void mll_decode_pool_stats(double *helpers_ns, double *alone_ns, int64_t *windows, int *alone)
    void mll_decode_pool_tuning(int on)
    int64_t mll_advise_hugepages(void *p, size_t nbytes)

    # kv_attention.c
    int mll_kv_attention_step(const float *qkv, void *kcache, void *vcache, int kv_bf16, float *y, float *w,
                              int64_t B, int64_t nh, int64_t nkv, int64_t hs, int64_t pos, float scale)
    int mll_kv_attention_rows(const float *qkv, void *const *kc, void *const *vc, int64_t ld, const int64_t *pos,
                              int kv_bf16, float *y, float *w, int64_t B, int64_t nh, int64_t nkv, int64_t hs,
                              float scale)

    # decode_step.c
    enum:
        MLL_NORM_LAYER
        MLL_NORM_RMS
    enum:
        MLL_MLP_GELU
        MLL_MLP_SWIGLU
        MLL_MLP_RELU2
    ctypedef struct mll_block_options:
        int64_t n_embd
        int64_t n_head
        int64_t n_kv_head
        int64_t head_dim
        int64_t d_ff
        int norm
        int mlp
        int rotary
        int qk_norm
        float norm_eps
        float qk_norm_eps
        float attn_scale
    ctypedef struct mll_block_weights:
        const float *norm1_w
        const float *norm1_b
        mll_matrix q_w
        mll_matrix k_w
        mll_matrix v_w
        const float *q_b
        const float *k_b
        const float *v_b
        const float *q_norm_w
        const float *k_norm_w
        mll_matrix o_w
        const float *o_b
        const float *norm2_w
        const float *norm2_b
        mll_matrix gate_w
        const float *gate_b
        mll_matrix up_w
        const float *up_b
        mll_matrix down_w
        const float *down_b
    int64_t mll_block_step_scratch(const mll_block_options *o, int64_t B, int64_t S)
    int mll_block_step(float *x, const mll_block_options *o, const mll_block_weights *w, void *kcache,
                       void *vcache, int kv_bf16, const float *rope_cos, const float *rope_sin, float *scratch,
                       int64_t B, int64_t pos)
    int mll_block_step_rows(float *x, const mll_block_options *o, const mll_block_weights *w, void *const *kc,
                            void *const *vc, int64_t ld, const int64_t *pos, int kv_bf16, const float *rope_cos,
                            const float *rope_sin, float *scratch, int64_t B)
    int mll_final_step(const float *x, const mll_block_options *o, const float *norm_w, const float *norm_b,
                       const mll_matrix *head_w, const float *head_b, float *logits, float *scratch,
                       int64_t B, int64_t V)
    void mll_add_layernorm_forward(const float *x, const float *r, const float *gamma, const float *beta,
                                   float *s, float *y, float *mean, float *rstd, int64_t rows,
                                   int64_t cols, float eps)
