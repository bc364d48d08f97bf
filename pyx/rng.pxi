# RNG: raw bindings of csrc/rng.c on 1-D contiguous memoryviews, GIL released.
# minillm/random.py (Generator) builds on these and keeps track of the offsets.


def k_philox4x32_10(ctr, key):
    """The bare Philox4x32-10 block: ctr (4 uint32), key (2 uint32) -> tuple of 4 uint32."""
    cdef uint32_t c[4]
    cdef uint32_t k[2]
    cdef uint32_t o[4]
    if len(ctr) != 4 or len(key) != 2:
        raise ValueError(f"expected 4 counter words and 2 key words, got {len(ctr)} and {len(key)}")
    for i in range(4):
        c[i] = ctr[i]
    for i in range(2):
        k[i] = key[i]
    C.mll_philox4x32_10(c, k, o)
    return (o[0], o[1], o[2], o[3])


def k_rand_uniform(uint64_t seed, uint64_t offset, float[::1] out, float lo, float hi):
    """out (n) float32 <- uniform in [lo, hi) from words offset .. offset + n - 1."""
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_uniform(seed, offset, &out[0], n, lo, hi)


def k_rand_normal(uint64_t seed, uint64_t offset, float[::1] out, float mean, float std):
    """out (n) float32 <- normal(mean, std) from words offset .. offset + 2 ceil(n / 2) - 1."""
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_normal(seed, offset, &out[0], n, mean, std)


def k_rand_int(uint64_t seed, uint64_t offset, int64_t[::1] out, int64_t lo, int64_t hi):
    """out (n) int64 <- uniform integers in [lo, hi) from words offset .. offset + 2n - 1."""
    cdef int64_t n = out.shape[0]
    if hi <= lo:
        raise ValueError(f"randint needs lo < hi, got lo={lo}, hi={hi}")
    if n == 0:
        return
    with nogil:
        C.mll_rand_int(seed, offset, &out[0], n, lo, hi)


def k_rand_bits(uint64_t seed, uint64_t offset, uint32_t[::1] out):
    """out (n) uint32 <- the raw words offset .. offset + n - 1 of the stream."""
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_bits(seed, offset, &out[0], n)


def k_rand_permutation(uint64_t seed, uint64_t offset, int64_t[::1] out):
    """out (n) int64 <- a random permutation of 0 .. n-1 from words offset .. offset + 2n - 1."""
    cdef int64_t n = out.shape[0]
    if n == 0:
        return
    with nogil:
        C.mll_rand_permutation(seed, offset, &out[0], n)


def k_rand_trunc_normal(uint64_t seed, uint64_t offset, float[::1] out, float mean, float std, float a,
                        float b):
    """out (n) float32 <- normal(mean, std) truncated to [a, b], from words offset .. offset + 2n - 1."""
    cdef int64_t n = out.shape[0]
    if not a < b:
        raise ValueError(f"trunc_normal needs a < b, got a={a}, b={b}")
    if n == 0:
        return
    with nogil:
        C.mll_rand_trunc_normal(seed, offset, &out[0], n, mean, std, a, b)
