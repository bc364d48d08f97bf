# views.pxi: the layout ops on Tensors: reshape, transpose, permute, (un)squeeze, expand, basic
# indexing, cat/stack and view_as. Views share memory; copies go through tensor.pxi's
# copy_contig (blas1.c's mll_copy_strided). No arithmetic and no autograd here.


def reshape(Tensor x, shape):
    """A view with `shape` when x's strides allow it, else a reshaped copy; one entry may be -1."""
    shape = tuple(shape)
    cdef int k, nd = len(shape), unknown = -1
    cdef int64_t n = numel(x), known = 1, d
    cdef Py_ssize_t sh[MAX_NDIM]
    cdef Py_ssize_t st[MAX_NDIM]
    if nd > MAX_NDIM:
        raise ValueError(f"shape {shape} has more than {MAX_NDIM} dimensions")
    for k in range(nd):
        try:
            d = shape[k]
        except OverflowError:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} into {shape}: a size does not "
                             f"fit in 64 bits") from None
        if d == -1:
            if unknown >= 0:
                raise ValueError(f"reshape: only one -1 is allowed, got {shape}")
            unknown = k
        elif d < 0:
            raise ValueError(f"reshape: invalid shape {shape}")
        elif mll_mul_overflows(known, d, &known):
            # the product is not n (which fits), unless a later size is 0: too large a view anyway
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({n} elements) into {shape}")
        sh[k] = d
    if unknown >= 0:
        if known == 0 or n % known != 0:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} into {shape}")
        sh[unknown] = n // known
    elif known != n:
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({n} elements) into {shape}")
    if not extent_fits(nd, sh, itemsize_of(x.dtype_)):
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} into {shape}: the view's sizes "
                         f"overflow 64-bit sizes")
    if not is_contig(x):
        x = copy_contig(x)
    cdef Py_ssize_t s = 1
    for k in range(nd - 1, -1, -1):
        st[k] = s
        s *= sh[k]
    return make_view(x, nd, sh, st, x.ptr)


def transpose(Tensor x, d0, d1):
    """A view with axes d0 and d1 swapped."""
    cdef int a0 = norm_axis(d0, x.ndim), a1 = norm_axis(d1, x.ndim)
    cdef Tensor t = make_view(x, x.ndim, x.shape_, x.strides_, x.ptr)
    t.shape_[a0], t.shape_[a1] = x.shape_[a1], x.shape_[a0]
    t.strides_[a0], t.strides_[a1] = x.strides_[a1], x.strides_[a0]
    return t


def permute(Tensor x, dims):
    """A view with the axes reordered: axis k of the result is axis dims[k] of x."""
    dims = tuple(norm_axis(d, x.ndim) for d in dims)
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the {x.ndim} axes of shape {x.shape}")
    cdef Tensor t = make_view(x, x.ndim, x.shape_, x.strides_, x.ptr)
    cdef int k
    for k in range(x.ndim):
        t.shape_[k] = x.shape_[<int> dims[k]]
        t.strides_[k] = x.strides_[<int> dims[k]]
    return t


def unsqueeze(Tensor x, axis):
    """A view with a new axis of size 1 at position `axis` (in [-ndim - 1, ndim])."""
    cdef int d = norm_axis(axis, x.ndim + 1)
    if x.ndim >= MAX_NDIM:
        raise ValueError(f"unsqueeze: shape {x.shape} already has {MAX_NDIM} dimensions")
    cdef Py_ssize_t sh[MAX_NDIM]
    cdef Py_ssize_t st[MAX_NDIM]
    cdef int k, j = 0
    for k in range(x.ndim + 1):
        if k == d:
            sh[k] = 1
            st[k] = x.strides_[d] * x.shape_[d] if d < x.ndim else 1
        else:
            sh[k] = x.shape_[j]
            st[k] = x.strides_[j]
            j += 1
    return make_view(x, x.ndim + 1, sh, st, x.ptr)


def squeeze(Tensor x, d=None):
    """A view without axes of size 1 (only axis d when given)."""
    cdef Py_ssize_t sh[MAX_NDIM]
    cdef Py_ssize_t st[MAX_NDIM]
    cdef int k, nd = 0
    if d is not None:
        d = norm_axis(d, x.ndim)
    for k in range(x.ndim):
        if x.shape_[k] == 1 and (d is None or k == d):
            continue
        sh[nd] = x.shape_[k]
        st[nd] = x.strides_[k]
        nd += 1
    return make_view(x, nd, sh, st, x.ptr)


def expand(Tensor x, shape):
    """A broadcast view of x with `shape` (stride 0 on expanded axes; -1 keeps a size)."""
    shape = tuple(shape)
    for want in shape:
        if isinstance(want, bool) or not isinstance(want, (int, _np.integer)) or not -1 <= want <= INT64_MAX_:
            raise ValueError(f"expand: invalid shape {shape}: sizes must be integers in [0, 2**63) or -1")
    cdef int nd = len(shape)
    cdef int off = nd - x.ndim
    if off < 0 or nd > MAX_NDIM:
        raise ValueError(f"expand: cannot expand shape {x.shape} to {shape}")
    cdef Py_ssize_t sh[MAX_NDIM]
    cdef Py_ssize_t st[MAX_NDIM]
    cdef int k
    for k in range(nd):
        want = shape[k]
        if k < off:
            if want < 0:
                raise ValueError(f"expand: -1 not allowed for new leading axis in {shape}")
            sh[k] = want
            st[k] = 0
        else:
            have = x.shape_[k - off]
            if want == -1 or want == have:
                sh[k] = have
                st[k] = x.strides_[k - off]
            elif have == 1:
                sh[k] = want
                st[k] = 0
            else:
                raise ValueError(f"expand: cannot expand shape {x.shape} to {shape}")
    return make_view(x, nd, sh, st, x.ptr)


def getitem(Tensor x, key):
    """Basic indexing (ints, slices with step > 0, None, ...): always a view."""
    if not isinstance(key, tuple):
        key = (key,)
    n_ell = _builtins.sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis")
    n_real = _builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if n_real > x.ndim:
        raise IndexError(f"too many indices ({n_real}) for a tensor of shape {x.shape}")
    if n_ell:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - n_real) + key[i + 1:]
    cdef Py_ssize_t sh[MAX_NDIM]
    cdef Py_ssize_t st[MAX_NDIM]
    cdef int nd = 0, axis = 0
    cdef char *p = x.ptr
    cdef Py_ssize_t start, step, length, idx
    for k in key:
        if k is None:
            if nd >= MAX_NDIM:
                raise IndexError(f"index {key!r} gives a tensor of more than {MAX_NDIM} dimensions")
            sh[nd] = 1
            st[nd] = 0
            nd += 1
        elif isinstance(k, slice):
            if nd >= MAX_NDIM:
                raise IndexError(f"index {key!r} gives a tensor of more than {MAX_NDIM} dimensions")
            # Python ints until they are known to be in range (a step may be any size)
            start_o, stop_o, step_o = k.indices(x.shape_[axis])
            if step_o <= 0:
                raise ValueError(f"slice step must be positive, got {step_o}")
            length = _builtins.max(0, (stop_o - start_o + step_o - 1) // step_o)
            if length > 0:
                start = start_o           # < the axis size
                p += start * x.strides_[axis] * itemsize_of(x.dtype_)
            sh[nd] = length
            if length > 1:
                step = step_o             # < the axis size, as two elements fit
                st[nd] = x.strides_[axis] * step
            else:
                st[nd] = x.strides_[axis]     # one element or none: the stride is never used
            nd += 1
            axis += 1
        elif isinstance(k, (int, _np.integer)):
            idx = norm_index(int(k), x.shape_[axis], axis)
            p += idx * x.strides_[axis] * itemsize_of(x.dtype_)
            axis += 1
        else:
            raise TypeError(f"unsupported index {k!r}: use ints, slices, None or ...; "
                            "for a gather use minillm.functional.embedding or index_select")
    while axis < x.ndim:
        if nd >= MAX_NDIM:
            raise IndexError(f"index {key!r} gives a tensor of more than {MAX_NDIM} dimensions")
        sh[nd] = x.shape_[axis]
        st[nd] = x.strides_[axis]
        nd += 1
        axis += 1
    return make_view(x, nd, sh, st, p)


def cat(tensors, axis=0):
    """Concatenate tensors (same dtype, same shape except along axis)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    cdef Tensor first = tensors[0]
    axis = norm_axis(axis, first.ndim)
    total = 0     # Python ints: new_tensor checks the result's size
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"cat: expected Tensors, got {type(t).__name__}")
        if t.ndim != first.ndim or any(t.shape[k] != first.shape[k]
                                       for k in range(first.ndim) if k != axis):
            raise ValueError(f"cat: shapes {first.shape} and {t.shape} differ outside axis {axis}")
        if (<Tensor> t).dtype_ != first.dtype_:
            raise TypeError(f"cat: dtypes {first.dtype} and {t.dtype} differ")
        total += t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    cdef Tensor out = new_tensor(tuple(shape), first.dtype_)
    pos = 0
    idx = [slice(None)] * first.ndim
    for t in tensors:
        n = t.shape[axis]
        idx[axis] = slice(pos, pos + n)
        copy_(getitem(out, tuple(idx)), t)
        pos += n
    return out


def stack(tensors, axis=0):
    """Stack same-shape tensors along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    axis = norm_axis(axis, tensors[0].ndim + 1)
    return cat([unsqueeze(t, axis) for t in tensors], axis)


def view_as(Tensor t, dtype):
    """The same memory read as another dtype of the same item size (e.g. uint16 bits as
    bfloat16)."""
    cdef int code = dtype_code(dtype)
    if itemsize_of(code) != itemsize_of(t.dtype_):
        raise TypeError(f"view_as: {t.dtype} and {_DTYPE_NAMES[code]} differ in item size")
    cdef Tensor v = make_view(t, t.ndim, t.shape_, t.strides_, t.ptr)
    v.dtype_ = code
    return v
