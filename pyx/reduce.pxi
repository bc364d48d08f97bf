# reduce.pxi: bindings of reduce.c: sum, mean, max, argmax over any axes, sum_to (the
# backward of broadcasting) and the sum of squares over a list of tensors.


cdef tuple reduce_axes(Tensor x, object axis):
    if axis is None:
        return tuple(range(x.ndim))
    if isinstance(axis, (tuple, list)):
        axes = tuple(sorted(set(norm_axis(a, x.ndim) for a in axis)))
        if len(axes) != len(axis):
            raise ValueError(f"repeated axis in {axis}")
        return axes
    return (norm_axis(axis, x.ndim),)


cdef tuple kept_shape(Tensor x, tuple axes, bint keepdim):
    if keepdim:
        return tuple(1 if k in axes else x.shape_[k] for k in range(x.ndim))
    return tuple(x.shape_[k] for k in range(x.ndim) if k not in axes)


cdef Tensor rows_layout(Tensor x, tuple axes):
    """x permuted so the reduced axes come last, made contiguous: read as (rows, cols)."""
    keep = tuple(k for k in range(x.ndim) if k not in axes)
    perm = keep + axes
    if perm != tuple(range(x.ndim)):
        x = permute(x, perm)
    return as_contig(x)


def sum(Tensor x, axis=None, keepdim=False):
    """Sum over `axis` (int, tuple or None for all); float32 result."""
    as_f32(x, "sum")
    axes = reduce_axes(x, axis)
    out_shape = kept_shape(x, axes, keepdim)
    cdef Tensor out = new_tensor(out_shape, C.MLL_F32)
    cdef int64_t total = numel(x), cols = 1, rows
    for a in axes:
        cols *= x.shape_[a]
    rows = total // cols if cols else numel(out)
    cdef Tensor src
    if cols == 0:
        C.mll_fill(fptr(out), 0.0, numel(out))
        return out
    if len(axes) == x.ndim:
        src = as_contig(x)
        with nogil:
            fptr(out)[0] = <float> C.mll_sum_all(fptr(src), total)
        return out
    # leading axes reduced of a contiguous tensor: column sums, no copy
    if is_contig(x) and axes == tuple(range(len(axes))):
        with nogil:
            C.mll_sum_cols(fptr(x), fptr(out), cols, rows)
        return out
    src = rows_layout(x, axes)
    with nogil:
        C.mll_sum_rows(fptr(src), fptr(out), rows, cols)
    return out


def mean(Tensor x, axis=None, keepdim=False):
    """Mean over `axis` (int, tuple or None)."""
    cdef Tensor out = sum(x, axis, keepdim)
    cdef int64_t count = 1
    for a in reduce_axes(x, axis):
        count *= x.shape_[a]
    C.mll_scale(fptr(out), (1.0 / count) if count else float("nan"), numel(out))
    return out


def max(Tensor x, axis=None, keepdim=False):
    """Maximum over `axis` (int or None for all)."""
    as_f32(x, "max")
    if numel(x) == 0:
        raise ValueError(f"max of an empty tensor of shape {x.shape}")
    axes = reduce_axes(x, axis)
    cdef Tensor out = new_tensor(kept_shape(x, axes, keepdim), C.MLL_F32)
    cdef Tensor src = rows_layout(x, axes)
    cdef int64_t cols = 1, rows
    for a in axes:
        cols *= x.shape_[a]
    rows = numel(x) // cols
    with nogil:
        C.mll_max_rows(fptr(src), fptr(out), rows, cols)
    return out


def argmax(Tensor x, axis=None, keepdim=False):
    """Index of the first maximum over `axis` (None: over the flattened tensor); int64."""
    as_f32(x, "argmax")
    if numel(x) == 0:
        raise ValueError(f"argmax of an empty tensor of shape {x.shape}")
    cdef Tensor src, out
    cdef int64_t cols, rows
    if axis is None:
        src = as_contig(x)
        out = new_tensor((), C.MLL_I64)
        (<int64_t *> out.ptr)[0] = C.mll_argmax_all(fptr(src), numel(src))
        return out
    axes = reduce_axes(x, axis)
    out = new_tensor(kept_shape(x, axes, keepdim), C.MLL_I64)
    src = rows_layout(x, axes)
    cols = x.shape_[axes[0]]
    rows = numel(x) // cols
    with nogil:
        C.mll_argmax_rows(fptr(src), <int64_t *> out.ptr, rows, cols)
    return out


def sum_to(Tensor x, shape):
    """Sum x down to `shape`, a shape it was broadcast from (the backward of broadcasting)."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"sum_to: cannot reduce shape {x.shape} to {shape}")
    axes = list(range(lead))
    for k, s in enumerate(shape):
        if s == 1 and x.shape_[lead + k] != 1:
            axes.append(lead + k)
        elif s != x.shape_[lead + k]:
            raise ValueError(f"sum_to: shape {shape} is not broadcastable to {x.shape}")
    if not axes:
        return reshape(x, shape)
    return reshape(sum(x, tuple(axes), False), shape)


def sumsq_list(tensors):
    """sum over the float32 tensors of sum(t^2), as a Python float: each tensor's sum is
    taken in fixed blocks and the tensors are added in list order (deterministic)."""
    cdef double total = 0.0, part
    cdef Tensor x
    cdef float *p
    cdef int64_t n
    for t in tensors:
        x = as_contig(as_f32(t, "sumsq_list"))
        p = fptr(x)
        n = numel(x)
        with nogil:
            part = C.mll_sumsq_all(p, n)
        total += part
    return total
