# blas1.pxi: bindings of blas1.c on Tensors: fill, copy (with broadcasting), casts, axpy,
# scaling and the finiteness check.


def copy_(Tensor dst, src):
    """dst[...] = src, src broadcast to dst's shape (a Tensor, NumPy array or number)."""
    if dst.readonly:
        raise ValueError("cannot write into a read-only tensor")
    cdef Tensor s
    if not isinstance(src, Tensor):
        if isinstance(src, (int, float)):
            fill_(dst, src)
            return dst
        src = tensor(src, dtype=dst.dtype)
    s = <Tensor> src
    if s.dtype_ != dst.dtype_:
        s = cast(s, dst.dtype)
    if s.shape != dst.shape:
        if broadcast_shapes(s.shape, dst.shape) != dst.shape:
            raise ValueError(f"cannot copy a tensor of shape {s.shape} into shape {dst.shape}")
        s = expand(s, dst.shape)
    if numel(dst) == 0:
        return dst
    if s.ptr == dst.ptr and s.shape == dst.shape and s.strides == dst.strides:
        return dst
    if bytes_overlap(s, dst):
        s = copy_contig(s)      # e.g. t[1:] = t[:-1]: read everything before writing
    if is_contig(dst) and is_contig(s):
        memcpy(dst.ptr, s.ptr, numel(dst) * itemsize_of(dst.dtype_))
        return dst
    with nogil:
        strided_copy_bytes(dst.ptr, dst.strides_, s.ptr, s.strides_, dst.shape_, dst.ndim,
                           itemsize_of(dst.dtype_))
    return dst


def fill_(Tensor t, value):
    """Set every element of t to value."""
    if t.readonly:
        raise ValueError("cannot write into a read-only tensor")
    cdef Tensor one
    cdef float v
    if is_contig(t) and t.dtype_ == C.MLL_F32:
        v = value
        with nogil:
            C.mll_fill(fptr(t), v, numel(t))
        return t
    one = tensor([value], dtype=t.dtype)
    return copy_(t, expand(reshape(one, ()), t.shape))


def cast(Tensor x, dtype):
    """A contiguous copy of x converted to dtype."""
    cdef int code = dtype_code(dtype)
    x = as_contig(x)
    cdef Tensor out = new_like_shape(x, code)
    cdef int64_t n = numel(x)
    if code == x.dtype_:
        memcpy(out.ptr, x.ptr, n * itemsize_of(code))
        return out
    with nogil:
        C.mll_cast(x.ptr, x.dtype_, out.ptr, code, n)
    return out


def axpy_(float alpha, Tensor x, Tensor y):
    """y += alpha * x (same shapes, contiguous float32)."""
    if x.shape != y.shape:
        raise ValueError(f"axpy_: shapes {x.shape} and {y.shape} differ")
    check_contig(as_f32(x, "axpy_ x"), "axpy_ x")
    as_inplace_f32(y, "axpy_ y")
    with nogil:
        C.mll_axpy(alpha, fptr(x), fptr(y), numel(x))
    return y


def scale_(Tensor x, float alpha):
    """x *= alpha (contiguous float32)."""
    as_inplace_f32(x, "scale_")
    with nogil:
        C.mll_scale(fptr(x), alpha, numel(x))
    return x


def scale_list_(tensors, float alpha):
    """t *= alpha for each contiguous float32 tensor t, in place."""
    cdef Tensor x
    cdef float *p
    cdef int64_t n
    for t in tensors:
        x = as_inplace_f32(t, "scale_list_")
        p = fptr(x)
        n = numel(x)
        with nogil:
            C.mll_scale(p, alpha, n)


def all_finite(t):
    """True if no element of the float32 tensor t is NaN or inf."""
    cdef Tensor x = as_contig(as_f32(t, "all_finite"))
    cdef int r
    cdef float *p = fptr(x)
    cdef int64_t n = numel(x)
    with nogil:
        r = C.mll_all_finite(p, n)
    return r != 0
