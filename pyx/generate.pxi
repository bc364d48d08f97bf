# generate.pxi: bindings of sample.c (next-token filters and draws), gemv.c (the linear layers
# of one decoding step) and kv_attention.c for minillm.generate. Inference only: plain Tensors,
# no autograd.

from libc.math cimport sqrt as c_sqrt


cdef Tensor _rows_f32(object t, str what, bint inplace):
    """t as a (rows, V) float32 view; in place needs t contiguous (we write through it)."""
    cdef Tensor x = as_f32(t, what)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected logits of shape (rows, vocab), got {t.shape}")
    if inplace and not is_contig(x):
        raise ValueError(f"{what}: logits of shape {t.shape} must be contiguous to be filtered in place")
    return as_contig(x)


def top_k_mask_(logits, int64_t k):
    """In place on float32 logits (rows, V): every entry outside the k largest of its row
    becomes -inf (ties go to the smaller id, so exactly min(k, V) stay). k >= 1. Returns logits."""
    cdef Tensor x = _rows_f32(logits, "top_k_mask_", True)
    if k < 1:
        raise ValueError(f"top_k_mask_: k must be >= 1, got {k}")
    cdef int64_t rows = x.shape_[0], V = x.shape_[1]
    cdef int r
    with nogil:
        r = C.mll_top_k_mask(fptr(x), rows, V, k)
    if r != 0:
        raise MemoryError(f"top_k_mask_: no memory for a row of {V} entries")
    return logits


def top_p_mask_(logits, float p):
    """In place on float32 logits (rows, V): keeps the fewest entries of each row, most likely
    first (ties to the smaller id), whose softmax mass reaches p; the rest become -inf.
    0 < p; p >= 1 leaves the logits as they are. Returns logits."""
    cdef Tensor x = _rows_f32(logits, "top_p_mask_", True)
    if not p > 0.0:
        raise ValueError(f"top_p_mask_: p must be > 0, got {p}")
    cdef int64_t rows = x.shape_[0], V = x.shape_[1]
    cdef int r
    with nogil:
        r = C.mll_top_p_mask(fptr(x), rows, V, p)
    if r != 0:
        raise MemoryError(f"top_p_mask_: no memory for a row of {V} entries")
    return logits


def sample_rows(logits, u):
    """One draw per row of softmax(logits): logits (rows, V) float32, u (rows,) float32
    uniforms in [0, 1) -> (rows,) int64 ids (inverse CDF in token order)."""
    cdef Tensor x = _rows_f32(logits, "sample_rows", False)
    cdef Tensor uu = as_contig(as_f32(u, "sample_rows"))
    cdef int64_t rows = x.shape_[0], V = x.shape_[1]
    if uu.shape != (rows,):
        raise ValueError(f"sample_rows: expected {rows} uniforms for logits {x.shape}, got shape {uu.shape}")
    if V < 1:
        raise ValueError(f"sample_rows: cannot draw from an empty vocabulary (logits {x.shape})")
    cdef Tensor out = new_tensor((rows,), C.MLL_I64)
    with nogil:
        C.mll_sample_rows(fptr(x), fptr(uu), <int64_t *> out.ptr, rows, V)
    return out


def linear_rows(x, weight, bias=None, add=None, bint gelu=False):
    """act(x @ weight^T + bias) + add for few rows (decoding): x (..., K), weight (N, K),
    bias (N) or None, add (..., N) or None, act GELU (tanh form) if gelu else identity;
    float32 -> (..., N). Streams weight once; no autograd."""
    cdef Tensor xx = as_contig(as_f32(x, "linear_rows"))
    cdef Tensor w = as_contig(as_f32(weight, "linear_rows weight"))
    cdef Tensor b = None, a = None
    cdef const float *bp = NULL
    cdef const float *ap = NULL
    if w.ndim != 2 or xx.ndim < 1 or xx.shape_[xx.ndim - 1] != w.shape_[1]:
        raise ValueError(f"linear_rows: input of shape {x.shape} does not match weight of shape "
                         f"{weight.shape} (expected (out, in) with in = the input's last axis)")
    cdef int64_t N = w.shape_[0], K = w.shape_[1]
    out_shape = tuple(x.shape[:-1]) + (N,)
    if bias is not None:
        b = as_contig(as_f32(bias, "linear_rows bias"))
        if b.shape != (N,):
            raise ValueError(f"linear_rows: bias of shape {bias.shape} does not match weight {weight.shape}")
        bp = fptr(b)
    if add is not None:
        a = as_contig(as_f32(add, "linear_rows add"))
        if a.shape != out_shape:
            raise ValueError(f"linear_rows: add of shape {add.shape} != output shape {out_shape}")
        ap = fptr(a)
    cdef Tensor y = new_tensor(out_shape, C.MLL_F32)
    cdef int64_t M = numel(y) // N if N else 0
    with nogil:
        C.mll_linear_rows(fptr(xx), fptr(w), bp, ap, fptr(y), M, N, K, 1 if gelu else 0)
    return y


def advise_hugepages(t):
    """Asks Linux for 2 MiB pages under the memory of t (a Tensor the decoding step streams
    every token, e.g. a weight), in place; the 2 MiB pages at its two ends, shared with
    neighbouring memory, too (no value anywhere changes). Returns the bytes of t now on huge
    pages, or -1 when the system refuses (not Linux, THP disabled, kernel before 6.1)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"advise_hugepages: expected a Tensor, got {type(t).__name__}")
    cdef Tensor x = <Tensor> t
    if not is_contig(x):
        raise ValueError(f"advise_hugepages: the tensor of shape {t.shape} must be contiguous")
    cdef size_t nbytes = <size_t> (numel(x) * itemsize_of(x.dtype_))
    cdef int64_t r
    with nogil:
        r = C.mll_advise_hugepages(x.ptr, nbytes)
    return r


def stream_sum(t):
    """The float32 sum of every element of t (contiguous float32), read once front to back on
    the decoding thread pool: the read-bandwidth roof for the linear layers of a decoding step
    (bench/bench_generate.py times both over the same weights). Returns a Python float."""
    cdef Tensor x = as_f32(t, "stream_sum")
    if not is_contig(x):
        raise ValueError(f"stream_sum: the tensor of shape {t.shape} must be contiguous")
    cdef int64_t n = numel(x)
    cdef float s
    with nogil:
        s = C.mll_stream_sum(fptr(x), n)
    return s


def kv_attention_step(qkv, kcache, vcache, int64_t pos, scale=None):
    """One decoding step of attention over a position-major KV cache, nh query heads over nkv
    key/value heads (nkv divides nh; query head h reads kv head h / (nh / nkv)).
    qkv (B, (nh + 2 nkv) hs) float32 = [q | k | v] of the new position; kcache, vcache
    (S, B, nkv, hs) contiguous float32 with S > pos (nh follows from qkv's width). Writes row
    pos of both caches from qkv, then returns y (B, nh hs): per (b, head),
    softmax(scale * q k^T) v over rows 0 .. pos (scale defaults to 1/sqrt(hs))."""
    cdef Tensor x = as_contig(as_f32(qkv, "kv_attention_step qkv"))
    cdef Tensor kc = as_f32(kcache, "kv_attention_step kcache")
    cdef Tensor vc = as_f32(vcache, "kv_attention_step vcache")
    if kc.ndim != 4 or kc.shape != vc.shape or not is_contig(kc) or not is_contig(vc):
        raise ValueError(f"kv_attention_step: caches must be contiguous (S, B, nkv, hs) of one shape, got "
                         f"{kcache.shape} and {vcache.shape}")
    cdef int64_t S = kc.shape_[0], B = kc.shape_[1], nkv = kc.shape_[2], hs = kc.shape_[3]
    cdef int64_t width = x.shape_[1] if x.ndim == 2 else -1
    cdef int64_t nh = width // hs - 2 * nkv if hs > 0 else 0
    if x.ndim != 2 or x.shape_[0] != B or hs < 1 or width % hs or nh < 1 or nh % nkv:
        raise ValueError(f"kv_attention_step: qkv of shape {qkv.shape} does not fit caches {kcache.shape} "
                         f"(expected ({B}, (nh + {2 * nkv}) * {hs}) with nh a multiple of {nkv})")
    if not 0 <= pos < S:
        raise ValueError(f"kv_attention_step: position {pos} is outside a cache of {S} rows")
    cdef float sc = <float>(1.0 / c_sqrt(<double>hs)) if scale is None else <float>float(scale)
    cdef Tensor y = new_tensor((B, nh * hs), C.MLL_F32)
    cdef Tensor w = new_tensor((B * nh * (pos + 1),), C.MLL_F32)
    cdef int r
    with nogil:
        r = C.mll_kv_attention_step(fptr(x), fptr(kc), fptr(vc), fptr(y), fptr(w), B, nh, nkv, hs, pos, sc)
    if r:
        raise MemoryError(f"kv_attention_step: no memory for {B} rows")
    return y
