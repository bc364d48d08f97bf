# embedding.pxi: bindings of embedding.c: row gather by token id and its scatter-add backward.


def embedding(Tensor weight, idx):
    """weight (V, D), idx (...) integer ids -> (..., D)."""
    as_f32(weight, "embedding weight")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (V, D), got shape {weight.shape}")
    cdef Tensor ids = as_ids(idx, "embedding")
    weight = as_contig(weight)
    cdef int64_t n = numel(ids), dim = weight.shape_[1], vocab = weight.shape_[0]
    cdef Tensor out = new_tensor(ids.shape + (dim,), C.MLL_F32)
    cdef int64_t bad
    with nogil:
        bad = C.mll_embedding_forward(fptr(weight), <int64_t *> ids.ptr, fptr(out), n, dim, vocab)
    if bad >= 0:
        raise IndexError(f"embedding: id {(<int64_t *> ids.ptr)[bad]} at position {bad} is outside "
                         f"[0, {vocab})")
    return out


def embedding_backward(Tensor dout, idx, int64_t num_embeddings):
    """dweight (V, D) with dweight[idx[i]] += dout[i]."""
    cdef Tensor ids = as_ids(idx, "embedding backward")
    dout = as_contig(as_f32(dout, "embedding backward"))
    if dout.ndim == 0:
        raise ValueError("embedding backward: the gradient must be (..., D), got a 0-d tensor")
    cdef int64_t dim = dout.shape_[dout.ndim - 1], n = numel(ids), i
    if numel(dout) != mul_or_raise(n, dim, "embedding backward"):
        raise ValueError(f"embedding backward: gradient shape {dout.shape} does not match ids {ids.shape}")
    cdef Tensor dw = zeros((num_embeddings, dim))
    cdef const int64_t *ip = <const int64_t *> ids.ptr
    for i in range(n):          # the kernel scatters through the ids unchecked
        if ip[i] < 0 or ip[i] >= num_embeddings:
            raise IndexError(f"embedding backward: id {ip[i]} at position {i} is outside [0, {num_embeddings})")
    with nogil:
        C.mll_embedding_backward(fptr(dout), <int64_t *> ids.ptr, fptr(dw), n, dim)
    return dw
