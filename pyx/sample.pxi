# sample.pxi: bindings of sample.c: next-token filters (top-k, top-p) in place and one draw
# per row. Inference only: plain Tensors, no autograd.


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
