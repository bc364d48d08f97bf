/* embedding.c: embedding lookup (a row gather) and its backward (a scatter-add). */
#include "simd.h"

/* weight (vocab, dim), idx (n) -> out (n, dim), out[i] = weight[idx[i]].
 * Returns -1, or the first i with idx[i] outside [0, vocab); nothing is read or written
 * then. */
int64_t mll_embedding_forward(const float *weight, const int64_t *idx, float *out, int64_t n,
                              int64_t dim, int64_t vocab) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= vocab) return i;
    MLL_PARALLEL_ROWS(n, dim, i,
                      memcpy(out + i * dim, weight + idx[i] * dim, (size_t)dim * sizeof(float)));
    return -1;
}

/* dweight (vocab, dim) += scatter of dout (n, dim) by idx (n): dweight[idx[i]] += dout[i].
 * Several i may hit the same row, so threads split the columns, not the indices: each
 * thread owns a range of 16-column strips and walks all i in order, so every element is
 * one fixed sequence of additions and no two threads write the same element. */
void mll_embedding_backward(const float *dout, const int64_t *idx, float *dweight, int64_t n,
                            int64_t dim) {
    int64_t strips = (dim + 15) / 16;
    MLL_PARALLEL_ROWS(strips, 16 * n, s, {
        int64_t c0 = s * 16, w = mll_min64(16, dim - c0);
        for (int64_t i = 0; i < n; i++) {
            const float *src = dout + i * dim + c0;
            float *dst = dweight + idx[i] * dim + c0;
            for (int64_t j = 0; j < w; j++) dst[j] += src[j];
        }
    });
}
