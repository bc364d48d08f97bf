# mask.pxi: bindings of mask.c: dropout masks, the causal fill, one-hot rows.


def dropout_mask(shape, float p, uint64_t seed, uint64_t offset):
    """A float32 tensor of `shape`: 1/(1-p) with probability 1-p, else 0, drawn from the
    Philox stream (seed, offset). 0 <= p < 1."""
    if not (0.0 <= p < 1.0):
        raise ValueError(f"dropout_mask: p must be in [0, 1), got {p}")
    cdef Tensor m = new_tensor(tuple(shape), C.MLL_F32)
    cdef float *mp = fptr(m)
    cdef int64_t n = numel(m)
    with nogil:
        C.mll_dropout_mask(seed, offset, mp, n, p)
    return m


def causal_fill_(x, float value):
    """In place on contiguous float32 x (..., T, S): x[..., i, j] = value for j > i + S - T."""
    cdef Tensor t = as_inplace_f32(x, "causal_fill_")
    if t.ndim < 2:
        raise ValueError(f"causal_fill_: expected (..., T, S), got shape {x.shape}")
    cdef int64_t T = t.shape_[t.ndim - 2], S = t.shape_[t.ndim - 1]
    cdef int64_t n = numel(t)
    cdef int64_t batch = n // (T * S) if T * S > 0 else 0
    cdef float *p = fptr(t)
    with nogil:
        C.mll_causal_fill(p, batch, T, S, value)
    return x


def onehot_rows(idx, val, int64_t cols):
    """(R, cols) float32 zeros with out[r, idx[r]] = val[r]; idx (R) int64 in [0, cols),
    val (R) float32."""
    cdef Tensor i = as_ids(idx, "onehot_rows")
    cdef Tensor v = as_contig(as_f32(val, "onehot_rows"))
    cdef int64_t R = numel(i), r
    if numel(v) != R:
        raise ValueError(f"onehot_rows: {R} ids but {numel(v)} values")
    cdef const int64_t *ip = <const int64_t *>i.ptr
    for r in range(R):
        if ip[r] < 0 or ip[r] >= cols:
            raise IndexError(f"onehot_rows: id {ip[r]} at row {r} is outside [0, {cols})")
    cdef Tensor out = new_tensor((R, cols), C.MLL_F32)
    cdef float *op = fptr(out)
    cdef const float *vp = fptr(v)
    with nogil:
        C.mll_onehot_rows(ip, vp, op, R, cols)
    return out
