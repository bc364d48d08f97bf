# rng.pxi: bindings of rng.c on Tensors: each fills a Tensor (any shape and strides) from
# the Philox stream (seed, offset), with no other state. minillm.random.Generator keeps the
# (seed, offset) of a stream and claims the words each fill uses (csrc/minillm.h says how
# many); the Tensor factories rand, randn, randint live there too.


cdef Tensor rng_target(object out, int dtype, str what):
    """out as a writable Tensor of `dtype`: a minillm Tensor, or a zero-copy view of any
    buffer-protocol object (a NumPy array)."""
    cdef Tensor t
    if isinstance(out, Tensor):
        t = <Tensor> out
    else:
        try:
            t = from_buffer(out)
        except (TypeError, ValueError, BufferError) as e:
            raise TypeError(f"{what} needs a writable {_DTYPE_NAMES[dtype]} buffer (a NumPy array or a "
                            f"Tensor), got {type(out).__name__}: {e}") from None
    if t.dtype_ != dtype:
        raise TypeError(f"{what} needs a {_DTYPE_NAMES[dtype]} buffer, got {t.dtype}")
    if t.readonly:
        raise ValueError(f"{what}: the buffer of shape {t.shape} is read-only")
    return t


def as_rng_target(out, dtype, str what):
    """out as the Tensor a fill writes (zero-copy for a NumPy array), checked before any word of
    the stream is claimed: TypeError for another dtype or a non-buffer, ValueError if read-only."""
    return rng_target(out, dtype_code(dtype), what)


cdef Tensor fill_target(Tensor t):
    """Where a kernel writes for t: t itself when contiguous, else a contiguous scratch tensor
    that finish_fill copies back."""
    return t if is_contig(t) else new_like_shape(t, t.dtype_)


cdef object finish_fill(object out, Tensor t, Tensor dst):
    if dst is not t:
        copy_(t, dst)
    return out


def rand_uniform_(out, uint64_t seed, uint64_t offset, float lo, float hi):
    """out (float32, any shape) <- uniform in [lo, hi) from words offset .. offset + n - 1 of
    the stream of `seed` (n = out's element count, in row-major order). Returns out."""
    cdef Tensor t = rng_target(out, C.MLL_F32, "uniform_")
    cdef Tensor d = fill_target(t)
    cdef int64_t n = numel(t)
    if n:
        with nogil:
            C.mll_rand_uniform(seed, offset, fptr(d), n, lo, hi)
    return finish_fill(out, t, d)


def rand_normal_(out, uint64_t seed, uint64_t offset, float mean, float std):
    """out (float32, any shape) <- normal(mean, std) from words offset .. offset + 2 ceil(n / 2) - 1."""
    cdef Tensor t = rng_target(out, C.MLL_F32, "normal_")
    cdef Tensor d = fill_target(t)
    cdef int64_t n = numel(t)
    if n:
        with nogil:
            C.mll_rand_normal(seed, offset, fptr(d), n, mean, std)
    return finish_fill(out, t, d)


def rand_trunc_normal_(out, uint64_t seed, uint64_t offset, float mean, float std, float a, float b):
    """out (float32, any shape) <- normal(mean, std) truncated to [a, b] (a < b), from words
    offset .. offset + 2n - 1."""
    if not a < b:
        raise ValueError(f"trunc_normal_ needs a < b, got a={a}, b={b}")
    cdef Tensor t = rng_target(out, C.MLL_F32, "trunc_normal_")
    cdef Tensor d = fill_target(t)
    cdef int64_t n = numel(t)
    if n:
        with nogil:
            C.mll_rand_trunc_normal(seed, offset, fptr(d), n, mean, std, a, b)
    return finish_fill(out, t, d)


def rand_int_(out, uint64_t seed, uint64_t offset, int64_t lo, int64_t hi):
    """out (int64, any shape) <- integers uniform in [lo, hi) (lo < hi), from words
    offset .. offset + 2n - 1."""
    if hi <= lo:
        raise ValueError(f"randint_ needs lo < hi, got lo={lo}, hi={hi}")
    cdef Tensor t = rng_target(out, C.MLL_I64, "randint_")
    cdef Tensor d = fill_target(t)
    cdef int64_t n = numel(t)
    if n:
        with nogil:
            C.mll_rand_int(seed, offset, <int64_t *> d.ptr, n, lo, hi)
    return finish_fill(out, t, d)


def rand_permutation(int64_t n, uint64_t seed, uint64_t offset):
    """A new (n,) int64 tensor holding a random permutation of 0 .. n - 1 (Fisher-Yates), from
    words offset .. offset + 2n - 1."""
    if n < 0:
        raise ValueError(f"permutation needs n >= 0, got {n}")
    cdef Tensor t = new_tensor((n,), C.MLL_I64)
    if n:
        with nogil:
            C.mll_rand_permutation(seed, offset, <int64_t *> t.ptr, n)
    return t
