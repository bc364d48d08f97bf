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
 * thread owns column strips (multiples of 16) and walks all i in order. Every element thus
 * gets the same additions in the same order for any strip width or thread count, and no
 * two threads write the same element. */
void mll_embedding_backward(const float *dout, const int64_t *idx, float *dweight, int64_t n,
                            int64_t dim) {
    int nt = mll_threads_for(n * dim);
    /* strips as wide as possible (each pass over the indices touches n random rows of
     * dweight), but a few per thread so the dynamic schedule can balance them */
    int64_t width = nt <= 1 ? dim : (dim + 4 * nt - 1) / (4 * nt);
    width = (width + 15) & ~(int64_t)15;
    if (width < 16) width = 16;
    int64_t strips = (dim + width - 1) / width;
    MLL_PARALLEL_ROWS(strips, width * n, s, {
        int64_t c0 = s * width, w = mll_min64(width, dim - c0);
        for (int64_t i = 0; i < n; i++) {
            const float *src = dout + i * dim + c0;
            float *dst = dweight + idx[i] * dim + c0;
            for (int64_t j = 0; j < w; j++) dst[j] += src[j];
        }
    });
}
