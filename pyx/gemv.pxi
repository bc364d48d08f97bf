# gemv.pxi: bindings of gemv.c: the linear layers of a decoding step (few rows, weights
# streamed once) and the huge-page advice for the weights they stream.


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
    cdef Tensor x = check_contig(as_tensor_arg(t, "advise_hugepages"), "advise_hugepages")
    cdef size_t nbytes = <size_t> (numel(x) * itemsize_of(x.dtype_))
    cdef int64_t r
    with nogil:
        r = C.mll_advise_hugepages(x.ptr, nbytes)
    return r
