/* minillm.h: the whole C API of minillm's kernels.
 *
 * Conventions (every kernel):
 *   - float32 row-major, contiguous unless a leading dimension (ld*) is given;
 *     sizes are int64_t element counts; shapes in the comments use (rows, cols).
 *   - no Python, no allocation inside hot loops, no error printing: a kernel that can
 *     fail returns a negative code or the index of the bad element.
 *   - results are bitwise identical run to run and for any thread count: reductions
 *     use a fixed partition of the data into blocks, and the partial results are
 *     combined in a fixed order.
 *   - hot kernels have a portable C path, an AVX2+FMA path and an AVX-512 path, picked
 *     at each call by mll_get_isa(): what the CPU has, MINILLM_ISA or mll_set_isa() (dispatch.h).
 *
 * pyx/minillm.pxd declares exactly this file, except its test-only functions (marked so below),
 * which minillm._testing (pyx/_testing.pyx) declares; tests/test_pyx_layout.py checks both.
 */
#ifndef MINILLM_H
#define MINILLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ runtime.c */
/* ISA paths. */
enum { MLL_ISA_GENERIC = 0, MLL_ISA_AVX2 = 1, MLL_ISA_AVX512 = 2 };

/* Detects the CPU, picks the best path (or the one MINILLM_ISA names) and reads
 * MINILLM_NUM_THREADS. Safe to call more than once. Returns 0, or -1 if MINILLM_ISA
 * names a path this CPU cannot run (the best path is used then). */
int mll_init(void);
int mll_cpu_supports(int isa);        /* 1 if this CPU (and OS) can run that path */
int mll_cpu_has_avx512bf16(void);
int mll_cpu_has_avx512vnni(void);
int mll_cpu_is_amd(void);             /* the vendor is AMD (kernels tuned per vendor) */
/* The int8 dot products (gemv.c) use AVX512-VNNI where the CPU has it and the avx512 path is
 * selected (mll_vnni_active()); mll_set_vnni(0) keeps them on plain AVX-512, with the same
 * results bit for bit (the tests run both). mll_set_vnni(1) returns -1 if the CPU lacks it. */
int mll_set_vnni(int on);
int mll_get_vnni(void);               /* 1: the CPU has it and it is not switched off */
int mll_vnni_active(void);
/* The bf16 decoding products (gemv.c) round x to bf16 as well and sum the products with
 * VDPBF16PS where the CPU has AVX512-BF16 and the avx512 path is selected
 * (mll_bf16_x_active()); mll_set_bf16_x(0) keeps x in float32 (each weight widened and
 * multiplied by float32 x: other results, to rounding). -1 to turn it on where the CPU lacks it. */
int mll_set_bf16_x(int on);
int mll_get_bf16_x(void);
int mll_bf16_x_active(void);
const char *mll_cpu_name(void);       /* brand string, "" when unknown */
int mll_get_isa(void);
int mll_set_isa(int isa);             /* 0 on success, -1 if the CPU cannot run it */
const char *mll_isa_name(int isa);    /* "generic", "avx2", "avx512" */
int mll_get_num_threads(void);
void mll_set_num_threads(int n);      /* n >= 1 */

/* Storage: 64-byte aligned, cached in free lists by size class so that a training
 * step allocates nothing from the OS after the first step. */
void *mll_alloc(size_t nbytes);       /* NULL on failure; nbytes 0 gives a valid pointer */
void mll_free(void *p, size_t nbytes);/* nbytes as passed to mll_alloc */
/* bytes in use by live tensors, bytes cached in free lists, OS allocations so far */
void mll_alloc_stats(int64_t *in_use, int64_t *cached, int64_t *os_allocs);

/* ------------------------------------------------------------- elementwise.c */
enum { MLL_ADD = 0, MLL_SUB = 1, MLL_MUL = 2, MLL_DIV = 3 };
/* out[i] = a[i] op b[i];                           a, b, out: (n) */
void mll_binary(int op, const float *a, const float *b, float *out, int64_t n);
/* out[r, c] = a[r, c] op b[c];                     a, out: (rows, cols), b: (cols) */
void mll_binary_row(int op, const float *a, const float *b, float *out, int64_t rows, int64_t cols);
/* out[r, c] = a[r, c] op b[r];                     a, out: (rows, cols), b: (rows) */
void mll_binary_col(int op, const float *a, const float *b, float *out, int64_t rows, int64_t cols);
/* out[i] = a[i] op s  (reverse=0)   or   s op a[i]  (reverse=1) */
void mll_binary_scalar(int op, const float *a, float s, float *out, int64_t n, int reverse);
/* General broadcast: out has `shape` (ndim <= 8, contiguous); a and b are read with
 * element strides astr/bstr (0 on broadcast axes). */
void mll_binary_strided(int op, int ndim, const int64_t *shape, const float *a, const int64_t *astr,
                        const float *b, const int64_t *bstr, float *out);

enum { MLL_NEG = 0, MLL_EXP = 1, MLL_LOG = 2, MLL_SQRT = 3, MLL_TANH = 4, MLL_RELU = 5,
       MLL_GELU = 6, MLL_ABS = 7, MLL_SIGMOID = 8, MLL_RELU2 = 9 };
/* out[i] = f(x[i]). GELU is the tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)));
 * RELU2 is relu(x)^2 */
void mll_unary(int op, const float *x, float *out, int64_t n);
/* dx[i] = dy[i] * f'(x[i]); y = f(x) is passed too (exp, sqrt, tanh, sigmoid use it). */
void mll_unary_backward(int op, const float *x, const float *y, const float *dy, float *dx, int64_t n);
/* out[i] = cap tanh(x[i] / cap) (the logit soft-cap), and its backward from y = the forward's
 * out: dx[i] = dy[i] (1 - (y[i] / cap)^2). cap > 0. */
void mll_softcap(const float *x, float *out, int64_t n, float cap);
void mll_softcap_backward(const float *y, const float *dy, float *dx, int64_t n, float cap);

/* ---------------------------------------------------------------- blas1.c */
void mll_fill(float *x, float v, int64_t n);
void mll_copy(const float *x, float *y, int64_t n);
void mll_scale(float *x, float a, int64_t n);                      /* x *= a */
void mll_axpy(float a, const float *x, float *y, int64_t n);       /* y += a x */
double mll_dot(const float *x, const float *y, int64_t n);         /* fixed-order blocked sum */
/* dst = src gathered through strides: src element strides `str` (any sign), dst contiguous.
 * elem_size is 2, 4 or 8 bytes. ndim <= 8. */
void mll_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape, const int64_t *str,
                      int elem_size);
/* b (cols, rows), ldb = row stride of b  <-  a (rows, cols)^T, lda = row stride of a. Cache-blocked. */
void mll_transpose(const float *a, float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb);
/* Casts between dtypes (MLL_F32, MLL_I32, MLL_I64, MLL_BF16 below); bf16 rounds to nearest even. */
enum { MLL_F32 = 0, MLL_I32 = 1, MLL_I64 = 2, MLL_BF16 = 3, MLL_U8 = 4, MLL_U16 = 5, MLL_I8 = 6 };
void mll_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n);
/* 1 if every element is finite, else 0 */
int mll_all_finite(const float *x, int64_t n);

/* ------------------------------------------------------------- reduce.c */
/* over the last axis: x (rows, cols) -> out (rows) */
void mll_sum_rows(const float *x, float *out, int64_t rows, int64_t cols);
void mll_max_rows(const float *x, float *out, int64_t rows, int64_t cols);
void mll_argmax_rows(const float *x, int64_t *out, int64_t rows, int64_t cols);  /* first max */
/* over the leading axis: x (rows, cols) -> out (cols); used by broadcast backward and bias grads */
void mll_sum_cols(const float *x, float *out, int64_t rows, int64_t cols);
/* over all n elements; sums accumulate in double over fixed blocks */
double mll_sum_all(const float *x, int64_t n);
float mll_max_all(const float *x, int64_t n);
int64_t mll_argmax_all(const float *x, int64_t n);
double mll_sumsq_all(const float *x, int64_t n);                   /* sum of x^2 */

/* ------------------------------------------------------------- softmax.c */
/* x, y: (rows, cols); softmax over the last axis, max-subtracted. */
void mll_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols);
/* y (n) = softmax(x (n)), n >= 1, on the calling thread (a kernel's step; x may be y) */
void mll_softmax_row(const float *x, float *y, int64_t n);
/* dx = y * (dy - sum(dy * y)) */
void mll_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols);
void mll_log_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols);
/* dx = dy - exp(y) * sum(dy) */
void mll_log_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t cols);

/* ----------------------------------------------------------- layernorm.c */
/* x, y: (rows, cols); gamma, beta: (cols) or NULL; mean, rstd: (rows), saved for backward. */
void mll_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                           float *mean, float *rstd, int64_t rows, int64_t cols, float eps);
/* dx (rows, cols) is written; dgamma, dbeta (cols) are written (not accumulated), may be NULL. */
void mll_layernorm_backward(const float *x, const float *gamma, const float *mean, const float *rstd,
                            const float *dy, float *dx, float *dgamma, float *dbeta,
                            int64_t rows, int64_t cols);

/* ----------------------------------------------------------- embedding.c */
/* out (n, dim) = weight[idx[i]] with weight (vocab, dim). Returns -1, or the first i
 * whose idx[i] is outside [0, vocab) (nothing is read out of range). */
int64_t mll_embedding_forward(const float *weight, const int64_t *idx, float *out, int64_t n,
                              int64_t dim, int64_t vocab);
/* dweight[idx[i]] += dout[i] for all i (dweight is accumulated, not cleared). */
void mll_embedding_backward(const float *dout, const int64_t *idx, float *dweight, int64_t n,
                            int64_t dim);

/* ----------------------------------------------------------- matmul_ref.c */
/* c (M, N) = a (M, K) @ b (K, N), all contiguous: the plain triple loop, test-only (minillm._testing). */
void mll_matmul_ref(const float *a, const float *b, float *c, int64_t M, int64_t N, int64_t K);

/* ---------------------------------------------------------------- gemm.c */
/* C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T (trans* != 0).
 * op(A): (M, K), op(B): (K, N), C: (M, N); lda/ldb/ldc are row strides in elements of
 * A, B, C as stored. beta == 0 means C is not read (it may hold NaN). */
void mll_sgemm(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
               const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
               float *C, int64_t ldc);
/* batch independent products; matrix i starts at A + i*strideA etc. (strides may be 0) */
void mll_sgemm_batched(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, int64_t strideA, const float *B, int64_t ldb,
                       int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC,
                       int64_t batch);

/* ----------------------------------------------------------- gemm_bf16.c */
/* C (M, N) = alpha * op(A) @ op(B) + beta * C with bfloat16 products and float32 sums (mixed
 * precision): A and B are each MLL_F32 (rounded to bf16, nearest even, while packed) or MLL_BF16
 * (bits as stored); C is float32. Arguments as mll_sgemm (ld* in elements of the stored type).
 * AVX-512 BF16 (VDPBF16PS) when the CPU has it and the AVX-512 path is active; elsewhere the
 * rounded operands go through mll_sgemm. Bitwise identical for any thread count. Returns 0,
 * -1 if out of memory, -2 if a dtype is neither MLL_F32 nor MLL_BF16. */
int mll_gemm_bf16(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha, const void *A,
                  int a_dtype, int64_t lda, const void *B, int b_dtype, int64_t ldb, float beta, float *C,
                  int64_t ldc);
int mll_gemm_bf16_native(void);       /* 1 if mll_gemm_bf16 runs on VDPBF16PS right now */
/* out (n) bf16 bits <- x (n) float32, nearest even, NaN kept (quiet): the packing's rounding */
void mll_round_bf16(const float *x, uint16_t *out, int64_t n);

/* ----------------------------------------------------------------- rng.c */
/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
 * counter-based. The stream of a seed is a sequence of 32-bit words: word c is lane c % 4
 * of the Philox block with counter (c/4 low 32 bits, c/4 high 32 bits, 0, 0) and key
 * (seed low 32 bits, seed high 32 bits). Element i of a draw reads only the words at
 * offset + (words per element) * i, so results do not depend on the thread count.
 * Words consumed per call: uniform, bits: n; normal: n rounded up to even (Box-Muller
 * pairs); int, permutation, trunc_normal: 2n (one 64-bit word per element). Callers advance their
 * offset by that count rounded up to a multiple of 4, so every draw starts a fresh block.
 * Every ISA path computes the same bits (no fused multiply-add in these kernels). */
/* out (4) = Philox4x32-10(ctr (4), key (2)): the bare block function, for known-answer tests */
void mll_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out);
/* out (n) uniform in [lo, hi) (24-bit mantissa; lo == hi fills lo) */
void mll_rand_uniform(uint64_t seed, uint64_t offset, float *out, int64_t n, float lo, float hi);
/* out (n) normal(mean, std) by Box-Muller on word pairs (2k, 2k+1) -> elements (2k, 2k+1) */
void mll_rand_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std);
/* out (n) integers uniform in [lo, hi), hi > lo: Lemire's multiply-shift on a 64-bit word,
 * floor(x * (hi - lo) / 2^64). No modulo; each value's probability is off from 1/(hi - lo)
 * by at most a relative (hi - lo) / 2^64 (below 2^-32 for any range up to 2^32). */
void mll_rand_int(uint64_t seed, uint64_t offset, int64_t *out, int64_t n, int64_t lo, int64_t hi);
/* out (n) raw 32-bit words */
void mll_rand_bits(uint64_t seed, uint64_t offset, uint32_t *out, int64_t n);
/* out (n) a uniformly random permutation of 0..n-1: Fisher-Yates, swap index drawn with the
 * same multiply-shift as mll_rand_int (sequential, so the same for any thread count). */
void mll_rand_permutation(uint64_t seed, uint64_t offset, int64_t *out, int64_t n);
/* out (n) normal(mean, std) truncated to [a, b] (absolute bounds, a < b), by inverting the
 * normal CDF on a 53-bit uniform from words (2i, 2i+1): 2n words. */
void mll_rand_trunc_normal(uint64_t seed, uint64_t offset, float *out, int64_t n, float mean, float std,
                           float a, float b);

/* ------------------------------------------------------------------ bpe.c */
/* Byte-pair encoding as GPT-2 and the HF `tokenizers` files of Llama 2/3, Qwen2, Mistral and
 * SmolLM2 use it. Text is UTF-8 bytes (invalid sequences count as one "other" character per
 * byte); token ids are uint32. Pre-tokenization is a chain of splitting steps, each applied
 * to the pieces of the one before; the patterns use the Unicode classes of
 * csrc/unicode_tables.h:
 *   GPT2      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   LLAMA3    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *             | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   QWEN2     LLAMA3 with \p{N} (one digit) for \p{N}{1,3}
 *   DIGITS    each number character alone; DIGIT_RUNS: runs of them
 *   METASPACE a piece starts at every U+2581 (SentencePiece's word mark) */
enum { MLL_SPLIT_GPT2 = 1, MLL_SPLIT_LLAMA3, MLL_SPLIT_QWEN2, MLL_SPLIT_DIGITS,
       MLL_SPLIT_DIGIT_RUNS, MLL_SPLIT_METASPACE };
#define MLL_BPE_MAX_STEPS 8

/* End (exclusive) of the GPT-2 pre-token that starts at byte i of s[0, n). */
int64_t mll_bpe_pretoken_end(const uint8_t *s, int64_t i, int64_t n);
/* ends (n,) <- the end offset of every GPT-2 pre-token of s[0, n); returns how many. */
int64_t mll_bpe_pretokenize(const uint8_t *s, int64_t n, int64_t *ends);
/* ends (n,) <- the end of every piece of s[0, n) after steps[0..nsteps); returns how many. */
int64_t mll_bpe_split(const int *steps, int nsteps, const uint8_t *s, int64_t n, int64_t *ends);

/* Training, step 1: unique GPT-2 pre-tokens ("words") with their counts, over texts. */
typedef struct mll_bpe_counter mll_bpe_counter;
mll_bpe_counter *mll_bpe_counter_new(void);
void mll_bpe_counter_free(mll_bpe_counter *c);
/* Adds the pre-tokens of text[0, n) (split over nthreads at safe boundaries); -1 if out of memory. */
int mll_bpe_counter_add(mll_bpe_counter *c, const uint8_t *text, int64_t n, int nthreads);
int64_t mll_bpe_counter_size(const mll_bpe_counter *c);   /* number of unique words */
int64_t mll_bpe_counter_total(const mll_bpe_counter *c);  /* number of words counted */

/* Training, step 2: merges. Bytes are symbols 0..255; merge k creates symbol first_id + k.
 * Each step merges the pair with the highest count; ties go to the smallest (left, right) ids.
 * step() does up to max_merges merges, writes pairs_out (max_merges, 2) and counts_out
 * (max_merges,), and returns how many it did (fewer once no pair is left, -1 if out of memory). */
typedef struct mll_bpe_trainer mll_bpe_trainer;
mll_bpe_trainer *mll_bpe_trainer_new(const mll_bpe_counter *c, uint32_t first_id);
int64_t mll_bpe_trainer_step(mll_bpe_trainer *t, int64_t max_merges, uint32_t *pairs_out,
                             int64_t *counts_out);
void mll_bpe_trainer_free(mll_bpe_trainer *t);

/* How an encoder turns a word into its first symbols and splits text into words.
 * chars 0: a word starts as its bytes, byte_ids[b] each (byte-level BPE: GPT-2, Llama 3,
 *          Qwen2); chars 1: as its UTF-8 characters, each the model token with those bytes
 *          (SentencePiece-style BPE: Llama 2, Mistral), byte_ids[b] being the <0xXX> tokens
 *          that byte_fallback spells a character without a token with.
 * A symbol without a token: unk_id (>= 0; fuse_unk: one for a run) or dropped (-1).
 * ignore_merges: a word that is a model token whole is that token (Llama 3).
 * steps[0..nsteps): the pre-tokenizer chain (MLL_SPLIT_*); none: the text is one word. */
typedef struct {
    int chars, ignore_merges, byte_fallback, fuse_unk;
    int64_t unk_id;
    int nsteps;
    int steps[MLL_BPE_MAX_STEPS];
} mll_bpe_options;

/* Encoding and decoding. merges (n_merges, 3) = (left id, right id, merged id), rank = row;
 * byte_ids (256,) as above, UINT32_MAX where there is no such token; the bytes of token i <
 * vocab_size are vocab_bytes[vocab_offsets[i] : vocab_offsets[i + 1]] (decode writes them;
 * characters and whole words are looked up among those with in_model[i] != 0, all if NULL).
 * options NULL: GPT-2's (bytes, one GPT2 step). Returns NULL if out of memory, if an id is
 * >= vocab_size or if an option is out of range. */
typedef struct mll_bpe mll_bpe;
mll_bpe *mll_bpe_new(const uint32_t *merges, int64_t n_merges, const uint32_t *byte_ids,
                     const uint8_t *vocab_bytes, const int64_t *vocab_offsets, int64_t vocab_size,
                     const uint8_t *in_model, const mll_bpe_options *options);
void mll_bpe_free(mll_bpe *t);
/* out (n,) <- ids of text[0, n) (never more than n); returns the count, -1 if out of memory.
 * A long text is split over nthreads at boundaries no pre-token crosses (when the chain
 * starts with a GPT2, LLAMA3 or QWEN2 step). */
int64_t mll_bpe_encode(const mll_bpe *t, const uint8_t *text, int64_t n, uint32_t *out,
                       int nthreads);
/* Text i is text[offsets[i], offsets[i + 1]) (offsets rise from offsets[0] = 0).
 * out (offsets[n_texts],) <- all ids, those of text i in out[out_offsets[i], out_offsets[i + 1]);
 * out_offsets is (n_texts + 1,). Returns the total, -1 if out of memory. */
int64_t mll_bpe_encode_batch(const mll_bpe *t, const uint8_t *text, const int64_t *offsets,
                             int64_t n_texts, uint32_t *out, int64_t *out_offsets, int nthreads);
/* Bytes the ids decode to, or -(i + 1) if ids[i] is not in the vocabulary. */
int64_t mll_bpe_decoded_length(const mll_bpe *t, const uint32_t *ids, int64_t n);
/* out (mll_bpe_decoded_length(),) <- the bytes of ids (checked ids only); returns the length. */
int64_t mll_bpe_decode(const mll_bpe *t, const uint32_t *ids, int64_t n, uint8_t *out);

/* ---------------------------------------------------------------- loss.c */
/* Fused cross-entropy: log-softmax + NLL per row, with ignore_index and label smoothing.
 * logits (N, V), row stride ld; targets (N) int64; losses (N) and lse (N) are written.
 * Returns -1, or the first row whose target is neither ignore_index nor in [0, V). */
int64_t mll_cross_entropy_forward(const float *logits, int64_t ld, const int64_t *targets,
                                  float *losses, float *lse, int64_t N, int64_t V,
                                  int64_t ignore_index, float label_smoothing);
/* dlogits (N, V) contiguous = g_i (softmax(x_i) - smoothed one-hot(t_i)), g_i = dloss[i] * scale
 * (dloss may be NULL: g_i = scale); ignored rows get 0. */
void mll_cross_entropy_backward(const float *logits, int64_t ld, const int64_t *targets,
                                const float *lse, const float *dloss, float scale, float *dlogits,
                                int64_t N, int64_t V, int64_t ignore_index, float label_smoothing);
/* Forward with the gradient in the same pass (a scalar loss back-propagated right away):
 * as mll_cross_entropy_forward, and dlogits (N, V), row stride ldd, gets
 * scale (softmax(x_i) - smoothed one-hot(t_i)) (0 on ignored rows). dlogits may be logits
 * itself (ldd == ld). Returns -1, or the first row with a bad target (nothing written). */
int64_t mll_cross_entropy_forward_grad(const float *logits, int64_t ld, const int64_t *targets,
                                       float *losses, float *lse, float *dlogits, int64_t ldd,
                                       float scale, int64_t N, int64_t V, int64_t ignore_index,
                                       float label_smoothing);

/* --------------------------------------------------------------- optim.c */
/* Fused SGD step (PyTorch semantics), in place on p (n) and buf (n; NULL if momentum == 0). */
void mll_sgd_step(float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                  float dampening, float weight_decay, int nesterov, int first_step);
/* Fused Adam (decoupled = 0) / AdamW (decoupled = 1) step, in place on p, m, v (n); step >= 1. */
void mll_adam_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, int decoupled, int64_t step);

/* ---------------------------------------------------------------- mask.c */
/* mask (n) = 1/(1-p) where a uniform draw from (seed, offset) is >= p, else 0. */
void mll_dropout_mask(uint64_t seed, uint64_t offset, float *mask, int64_t n, float p);
/* x (batch, T, S): x[b, i, j] = value for j > i + S - T (causal attention), in place. */
void mll_causal_fill(float *x, int64_t batch, int64_t T, int64_t S, float value);
/* out (rows, cols) = 0 except out[r, idx[r]] = val[r] (idx in [0, cols)). */
void mll_onehot_rows(const int64_t *idx, const float *val, float *out, int64_t rows, int64_t cols);

/* ------------------------------- attention.c, bias_gelu.c (fused); layernorm.c's fused add */
/* Causal attention, flash-style (never a full T x T matrix), per (batch, head):
 *   out = softmax(q k^T * scale + mask) v,   q (B, nh, Tq, hs), k, v (B, nh, Tk, hs),
 *   out (B, nh, Tq, hs), lse (B, nh, Tq) contiguous = log-sum-exp of each score row.
 * Query i sits at absolute position Tk - Tq + i and sees the keys j <= Tk - Tq + i
 * (1 <= Tq <= Tk; Tq < Tk is decoding against a KV cache). q, k, v, out are addressed with
 * element strides {batch, head, row} (3 each), last axis contiguous. scale > 0.
 * Returns 0, or -1 if scratch memory could not be had. */
int mll_attention_forward(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                          const float *v, const int64_t *vs, float *out, const int64_t *os,
                          float *lse, int64_t B, int64_t nh, int64_t Tq, int64_t Tk, int64_t hs,
                          float scale);
/* Gradients of the above: dout like out (strides dos); dq like q, dk, dv like k (strides dqs,
 * dks, dvs), all written. Returns 0, or -1 if out of memory. */
int mll_attention_backward(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                           const float *v, const int64_t *vs, const float *out, const int64_t *os,
                           const float *lse, const float *dout, const int64_t *dos, float *dq,
                           const int64_t *dqs, float *dk, const int64_t *dks, float *dv,
                           const int64_t *dvs, int64_t B, int64_t nh, int64_t Tq, int64_t Tk,
                           int64_t hs, float scale);
/* y (N, C) = gelu(x (N, C) + b (C)), GELU in the tanh form */
void mll_bias_gelu_forward(const float *x, const float *b, float *y, int64_t N, int64_t C);
/* dx (N, C) = dy * gelu'(x + b); db (C) = column sums of dx (written; NULL to skip).
 * Returns 0, or -1 if out of memory. */
int mll_bias_gelu_backward(const float *x, const float *b, const float *dy, float *dx, float *db,
                           int64_t N, int64_t C);
/* Exact GELU, y (n) = x Phi(x) (Phi the standard normal CDF; PyTorch's approximate='none'),
 * and its backward dx (n) = dy * (Phi(x) + x phi(x)); x, y, dy, dx contiguous. */
void mll_gelu_erf_forward(const float *x, float *y, int64_t n);
void mll_gelu_erf_backward(const float *x, const float *dy, float *dx, int64_t n);
/* --------------------------------------------------------------- sample.c */
/* Next-token filters, in place on logits x (rows, V); ties go to the smaller id.
 * top-k: every entry outside the k largest of its row becomes -inf (k >= V: no change).
 * top-p: keeps the fewest entries, largest first, whose softmax mass reaches p (p >= 1:
 * no change; at least one entry is kept). Both return 0, or -1 if out of memory. */
int mll_top_k_mask(float *x, int64_t rows, int64_t V, int64_t k);
int mll_top_p_mask(float *x, int64_t rows, int64_t V, float p);
/* out (rows) <- one draw per row from softmax(x[r]) by inverse CDF at u[r] in [0, 1):
 * the first id whose running mass exceeds u[r] * total (token order, sums in double). */
void mll_sample_rows(const float *x, const float *u, int64_t *out, int64_t rows, int64_t V);

/* ------------------------------------------------------------- rmsnorm.c */
/* y (rows, cols) = x * rstd * w per row, rstd = 1 / sqrt(mean(x^2) + eps) (Llama's RMSNorm);
 * w (cols) or NULL; rstd (rows) is written unless NULL. y may be x. */
void mll_rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols,
                         float eps);
/* dx (rows, cols) from x, dy (rows, cols), w (cols) or NULL and the forward's rstd (rows);
 * dw (cols) written (not accumulated) unless NULL. 0, or -1 when out of memory. */
int mll_rmsnorm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx,
                         float *dw, int64_t rows, int64_t cols);

/* ---------------------------------------------------------------- rope.c */
/* Rotary position embeddings, "rotate half" layout: in each head of d dims, (x[i], x[i + d/2])
 * is rotated by angle p * inv_freq[i]. cos_t, sin_t (n_pos, half) <- scale * cos, sin of
 * p * inv_freq (half) for p < n_pos (angles in double). */
void mll_rope_table(const float *inv_freq, float *cos_t, float *sin_t, int64_t n_pos, int64_t half,
                    float scale);
/* In place on x (B, T, n_head, d), (b, t) rows ldx floats apart, heads contiguous in a row:
 * every head at time t rotated by row t of cos_t, sin_t (T, d/2). d even. */
void mll_rope_forward(float *x, int64_t ldx, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                      int64_t n_head, int64_t d);
/* The backward of mll_rope_forward, in place on dx (same layout and table): rotated back. */
void mll_rope_backward(float *dx, int64_t ldx, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                       int64_t n_head, int64_t d);
/* The q and k heads of fused projection rows (B T, ld), q the first nq heads of d floats of a
 * row and k the next nk, in place: RMS-normed per head by gains qw, kw (d) (skipped when qw is
 * NULL; rstd (B T, nq + nk) written), then rotated by row t of cos_t, sin_t (skipped when cos_t
 * is NULL); the rest of a row (v) untouched. */
void mll_qk_rope_forward(float *qkv, int64_t ld, int64_t B, int64_t T, int64_t nq, int64_t nk, int64_t d,
                         const float *cos_t, const float *sin_t, const float *qw, const float *kw, float eps,
                         float *rstd);
/* Its backward in place on dqkv (B T, ld) (q and k heads; v untouched), from the forward's
 * input x (B T, ld) and rstd; dqw, dkw (d) written when qw is not NULL. 0, or -1 when out of
 * memory. */
int mll_qk_rope_backward(float *dqkv, const float *x, int64_t ld, int64_t B, int64_t T, int64_t nq, int64_t nk,
                         int64_t d, const float *cos_t, const float *sin_t, const float *qw, const float *kw,
                         const float *rstd, float *dqw, float *dkw);

/* ---------------------------------------------------------------- silu.c */
/* y (n) = silu(g) * u = g sigmoid(g) u: the gated product of a SwiGLU MLP. y may be g or u. */
void mll_silu_mul_forward(const float *g, const float *u, float *y, int64_t n);
/* dg = dy u sigmoid(g) (1 + g (1 - sigmoid(g))), du = dy silu(g): all (n), dg and du written. */
void mll_silu_mul_backward(const float *g, const float *u, const float *dy, float *dg, float *du, int64_t n);

/* ----------------------------------------------------------------- gemv.c */
/* The linear layers of a decoding step: few rows of x (M small), W (N, K) streamed once, rows
 * of W split over threads in fixed groups of 4; x, y, biases float32, all contiguous.
 *
 * A weight matrix W (N, K) in one of three encodings: MLL_F32, row-major; MLL_BF16 (each value
 * the upper 16 bits of a float32) in blocks of 4 rows (mll_bf16_pack); MLL_I8: int8 values q
 * and one float32 scale per `group` consecutive values of a row, W[n, k] = q[n, k] *
 * scale[n, k / group], in tiles of 16 rows (mll_q8_tile; K and group multiples of 4). */
typedef struct {
    const void *data;        /* (N, K) values; MLL_BF16: the blocks; MLL_I8: the tiles */
    const float *scale;      /* MLL_I8: the tiles' scales; otherwise unused */
    int dtype;               /* MLL_F32, MLL_BF16 or MLL_I8 */
    int64_t group;           /* MLL_I8: values per scale */
} mll_matrix;
/* The int8 tiles (gemv.c, "int8 tiles"): q (N, K) and scale (N, K / group), row-major, into
 * tiles (16 K bytes per 16 rows, N rounded up to 16) and tscale (16 K / group floats per 16
 * rows), and back (rows < N; q or scale may be NULL: not unpacked). K and group multiples of 4. */
void mll_q8_tile(const int8_t *q, const float *scale, int64_t N, int64_t K, int64_t group, uint8_t *tiles,
                 float *tscale);
void mll_q8_untile(const uint8_t *tiles, const float *tscale, int64_t N, int64_t K, int64_t group, int8_t *q,
                   float *scale);
/* The bf16 blocks (gemv.c, "bf16 blocks"): w (N, K) row-major bf16 bits into blocks (4 Kp
 * values per 4 rows, Kp = K rounded up to a multiple of 32, N rounded up to 4; the padding
 * zero), and back (rows < N). */
void mll_bf16_pack(const uint16_t *w, int64_t N, int64_t K, uint16_t *blocks);
void mll_bf16_unpack(const uint16_t *blocks, int64_t N, int64_t K, uint16_t *w);
/* Rows [r, ...) of W (K columns): the same encoding, data and scales moved on by r rows (the
 * row blocks of a fused matrix, e.g. q, k, v of one qkv weight; bf16: r a multiple of 4;
 * int8: of 16). */
mll_matrix mll_matrix_rows(const mll_matrix *W, int64_t r, int64_t K);
/* y (M, N) = act(x (M, K) @ W^T + bias (N, or NULL)) + add (M, N, or NULL); act: 0 none,
 * 1 GELU (tanh form), 2 relu^2. y may be add (in place). With an int8 W, x is quantized per row and
 * group (gemv.c says how), with a bf16 W split into even and odd elements. 0, or -1 if the
 * buffer for that cannot be allocated (int8 and bf16 only); likewise mll_linear_cat and
 * mll_linear_gated, whose int8 matrices share one group. */
int mll_linear(const float *x, const mll_matrix *W, const float *bias, const float *add, float *y, int64_t M,
               int64_t N, int64_t K, int act);
/* mll_linear with a float32 W */
void mll_linear_rows(const float *x, const float *W, const float *bias, const float *add, float *y,
                     int64_t M, int64_t N, int64_t K, int act);
/* y (M, N[0] + ... + N[nseg - 1]) = [x W[s]^T + bias[s]] side by side: nseg <= 3 matrices
 * W[s] (N[s], K) as one product (q, k, v projections; matrices adjacent in memory, as a fused
 * qkv, are read as one). bias NULL, or bias[s] NULL, for none. */
int mll_linear_cat(const float *x, int nseg, const mll_matrix *W, const float *const *bias, const int64_t *N,
                   float *y, int64_t M, int64_t K);
/* y (M, N) = silu(x Wg^T + bg) * (x Wu^T + bu): a SwiGLU MLP's gate and up projections, Wg, Wu
 * (N, K), bg, bu (N) or NULL, in one pass over both. */
int mll_linear_gated(const float *x, const mll_matrix *Wg, const float *bg, const mll_matrix *Wu, const float *bu,
                     float *y, int64_t M, int64_t N, int64_t K);
/* Runs fn(ctx, c) for every c in [0, nchunks) on the caller and up to nthreads - 1 helper
 * threads (the decoding kernels' own pool: no OpenMP team, whose idle threads would spin
 * against these), or on the caller alone where that measured faster (a machine whose cores
 * other processes want; gemv.c). work: the job's size in any unit proportional to its time
 * (values read). Chunks are claimed dynamically; fn must not depend on which thread runs it. */
typedef void (*mll_chunk_fn)(void *ctx, int64_t chunk);
void mll_decode_parallel(int64_t nchunks, int nthreads, double work, mll_chunk_fn fn, void *ctx);
/* The pool's measurements: ns per unit of work with the helpers and alone (< 0 until
 * measured), windows measured so far, and whether the current window runs alone. */
void mll_decode_pool_stats(double *helpers_ns, double *alone_ns, int64_t *windows, int *alone);
/* on = 0: every job runs with the helpers, whatever the measurements say (to compare); 1: the
 * faster way (the default). */
void mll_decode_pool_tuning(int on);
/* Asks Linux for 2 MiB pages under [p, p + nbytes) (anonymous memory, e.g. weights that every
 * decoding step streams): MADV_HUGEPAGE, then MADV_COLLAPSE, per 2 MiB page, the two partial
 * ones at the ends included (their other bytes keep their values). Returns the bytes of the
 * buffer now on huge pages, or -1 if every page was refused (not Linux, THP off, old kernel). */
int64_t mll_advise_hugepages(void *p, size_t nbytes);
/* Test-only (minillm._testing): sum of x (n) in float over the same pool, chunk partial sums
 * added in order (NaN if out of memory): the read roof a GEMV over the same bytes is measured against. */
float mll_stream_sum(const float *x, int64_t n);

/* --------------------------------------------------------- kv_attention.c */
/* One decoding step of causal attention over a KV cache, nh query heads and nkv key/value heads
 * (nkv divides nh; query head h reads kv head h / (nh / nkv)). qkv (B, (nh + 2 nkv) hs) =
 * [q | k | v] of the new position; kcache, vcache (pos + 1, B, nkv, hs), float32, or bf16 when
 * kv_bf16 (written rounded to nearest even, read widened): row pos is written from qkv, then
 * y (B, nh hs) <- per (b, head) softmax(scale * q k^T) v over rows 0 .. pos.
 * w (B nh (pos + 1)) is scratch. 0, -1 if nkv does not divide nh, -2 out of memory. */
int mll_kv_attention_step(const float *qkv, void *kcache, void *vcache, int kv_bf16, float *y, float *w,
                          int64_t B, int64_t nh, int64_t nkv, int64_t hs, int64_t pos, float scale);
/* The same with each row at its own position over its own cache: row b's cache holds
 * position t at kc[b] + t ld elements (and vc[b]), (nkv, hs) each; row pos[b] is written, then
 * row b attends over 0 .. pos[b]. w (B nh S) scratch, S = max pos + 1. 0 or -1 as above. */
int mll_kv_attention_rows(const float *qkv, void *const *kc, void *const *vc, int64_t ld, const int64_t *pos,
                          int kv_bf16, float *y, float *w, int64_t B, int64_t nh, int64_t nkv, int64_t hs,
                          float scale);

/* ---------------------------------------------------------- decode_step.c */
/* One decoding step of a pre-norm transformer block (GPT-2, Llama, Qwen2/3, Mistral, ...) for
 * B rows, one new position each, all at `pos`:
 *   h = norm1(x); q, k, v = h Wq^T + bq, h Wk^T + bk, h Wv^T + bv; [q, k = per-head RMSNorm];
 *   [q, k = rotated by row pos of the rope table]; x += attention(q, k, v over the cache) Wo^T + bo;
 *   h = norm2(x); x += mlp(h) Wdown^T + bdown, mlp = gelu(h Wup^T + bup), relu(h Wup^T + bup)^2 or
 *   silu(h Wgate^T + bgate) * (h Wup^T + bup).
 * Learned positions are the caller's (added to x before the first block). */
enum { MLL_NORM_LAYER = 0, MLL_NORM_RMS = 1 };     /* LayerNorm (weight, bias) or RMSNorm (weight) */
enum { MLL_MLP_GELU = 0, MLL_MLP_SWIGLU = 1, MLL_MLP_RELU2 = 2 };  /* up + GELU (tanh form), gate/up + SiLU,
                                                                    * or up + relu^2 */
typedef struct {
    int64_t n_embd;          /* C: the residual width */
    int64_t n_head;          /* nh: query heads */
    int64_t n_kv_head;       /* nkv: key/value heads, divides nh (nh: multi-head attention) */
    int64_t head_dim;        /* hs (nh hs need not be C) */
    int64_t d_ff;            /* F: the MLP's hidden width */
    int norm;                /* MLL_NORM_* of norm1, norm2 and the final norm */
    int mlp;                 /* MLL_MLP_* */
    int rotary;              /* 1: rotate q and k by the rope table (hs even) */
    int qk_norm;             /* 1: RMSNorm over each head of q and k (weights q_norm_w, k_norm_w) */
    float norm_eps, qk_norm_eps;
    float attn_scale;        /* usually 1 / sqrt(hs) */
} mll_block_options;
/* The weights of one block: Linear weights (out, in) as mll_matrix (float32, bf16 or int8,
 * see gemv.c), the rest float32, contiguous; every bias may be NULL (and is ignored for
 * RMSNorm). q_w, k_w, v_w may be the three row blocks of one fused (Q + 2 KV, C) matrix
 * (Q = nh hs, KV = nkv hs); biases likewise. */
typedef struct {
    const float *norm1_w, *norm1_b;     /* (C) */
    mll_matrix q_w, k_w, v_w;           /* (Q, C), (KV, C), (KV, C) */
    const float *q_b, *k_b, *v_b;       /* (Q), (KV), (KV) */
    const float *q_norm_w, *k_norm_w;   /* (hs), with qk_norm */
    mll_matrix o_w;                     /* (C, Q) */
    const float *o_b;                   /* (C) */
    const float *norm2_w, *norm2_b;     /* (C) */
    mll_matrix gate_w;                  /* (F, C): SwiGLU only (data NULL otherwise) */
    const float *gate_b;                /* (F) */
    mll_matrix up_w;                    /* (F, C) */
    const float *up_b;                  /* (F) */
    mll_matrix down_w;                  /* (C, F) */
    const float *down_b;                /* (C) */
} mll_block_weights;
/* Floats of scratch a step needs for B rows and S = pos + 1 cached positions (a step with
 * fewer positions fits too; mll_final_step needs less). */
int64_t mll_block_step_scratch(const mll_block_options *o, int64_t B, int64_t S);
/* x (B, C) <- the block applied to x: kcache, vcache (pos + 1, B, nkv, hs) get row pos (see
 * mll_kv_attention_step, kv_bf16 as there); rope_cos, rope_sin (> pos, hs / 2) the rotary table (NULL without
 * rotary); scratch (mll_block_step_scratch(o, B, pos + 1)). 0, or -1 if the options are
 * inconsistent (nkv does not divide nh, odd hs with rotary, a missing gate or QK-norm weight),
 * -2 out of memory (int8 weights' quantized x). */
int mll_block_step(float *x, const mll_block_options *o, const mll_block_weights *w, void *kcache,
                   void *vcache, int kv_bf16, const float *rope_cos, const float *rope_sin, float *scratch,
                   int64_t B, int64_t pos);
/* The same with each row at its own position over its own caches (continuous batching):
 * kc[b], vc[b] row b's caches, position t at + t ld (ld >= nkv hs), pos[b] its position
 * (rope rows pos[b]); scratch (mll_block_step_scratch(o, B, max pos + 1)). */
int mll_block_step_rows(float *x, const mll_block_options *o, const mll_block_weights *w, void *const *kc,
                        void *const *vc, int64_t ld, const int64_t *pos, int kv_bf16, const float *rope_cos,
                        const float *rope_sin, float *scratch, int64_t B);
/* logits (B, V) = norm(x) head_w^T + head_b: the final norm (o's norm, norm_eps, n_embd; the
 * other options are not read) and the LM head, head_w (V, C) (the token embedding when tied),
 * head_b (V) or NULL; x (B, C) is kept; scratch (mll_block_step_scratch(o, B, 1)). 0, or -2
 * out of memory (an int8 head's quantized x). */
int mll_final_step(const float *x, const mll_block_options *o, const float *norm_w, const float *norm_b,
                    const mll_matrix *head_w, const float *head_b, float *logits, float *scratch, int64_t B,
                    int64_t V);
/* s = x + r, y = layernorm(s) as mll_layernorm_forward (the residual add fused in):
 * x, r, s, y (rows, cols); gamma, beta (cols) or NULL; mean, rstd (rows). Backward: the
 * gradient of s passes to x and r, mll_layernorm_backward on s gives the rest. */
void mll_add_layernorm_forward(const float *x, const float *r, const float *gamma, const float *beta,
                               float *s, float *y, float *mean, float *rstd, int64_t rows,
                               int64_t cols, float eps);

#ifdef __cplusplus
}
#endif
#endif /* MINILLM_H */
