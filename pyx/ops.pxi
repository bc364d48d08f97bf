# Raw compute on Tensors: no autograd. minillm.functional wraps these with backward
# functions; Tensor methods call them directly when no gradient is needed.
# Every function checks shapes and dtypes, then makes one C call with the GIL released.
# sum, max and abs below shadow the builtins inside this module: use _builtins.* for those.
import builtins as _builtins

_BINOP_NAMES = {C.MLL_ADD: "add", C.MLL_SUB: "sub", C.MLL_MUL: "mul", C.MLL_DIV: "div"}
_UNARY_CODES = {"neg": C.MLL_NEG, "exp": C.MLL_EXP, "log": C.MLL_LOG, "sqrt": C.MLL_SQRT,
                "tanh": C.MLL_TANH, "relu": C.MLL_RELU, "gelu": C.MLL_GELU, "abs": C.MLL_ABS,
                "sigmoid": C.MLL_SIGMOID}


cdef object route_binary(int op, object a, object b):
    """Operator entry: record for autograd when needed, else compute."""
    if not isinstance(a, (Tensor, int, float)) or not isinstance(b, (Tensor, int, float)):
        if isinstance(a, _np.ndarray) or isinstance(b, _np.ndarray):
            a = a if isinstance(a, Tensor) else tensor(a, dtype="float32")
            b = b if isinstance(b, Tensor) else tensor(b, dtype="float32")
        else:
            return NotImplemented
    if needs_grad2(a, b):
        return getattr(_F, _BINOP_NAMES[op])(a, b)
    return binary_op(op, a, b)


cdef object route_unary(str name, Tensor x):
    if needs_grad(x):
        return getattr(_F, name)(x)
    if name == "contiguous":
        return copy_contig(x)
    return unary_op(_UNARY_CODES[name], x)


cdef inline bint same_shape(Tensor a, Tensor b) noexcept:
    if a.ndim != b.ndim:
        return False
    cdef int k
    for k in range(a.ndim):
        if a.shape_[k] != b.shape_[k]:
            return False
    return True


cdef tuple broadcast_shapes(tuple sa, tuple sb):
    cdef int n = _builtins.max(len(sa), len(sb))
    out = []
    for i in range(n):
        da = sa[len(sa) - n + i] if len(sa) - n + i >= 0 else 1
        db = sb[len(sb) - n + i] if len(sb) - n + i >= 0 else 1
        if da != db and da != 1 and db != 1:
            raise ValueError(f"shapes {sa} and {sb} cannot be broadcast together")
        out.append(da if db == 1 else db)
    return tuple(out)


cdef Tensor binary_op(int op, object a, object b):
    """a op b with NumPy broadcasting; a or b may be a Python number."""
    cdef Tensor ta, tb, out
    cdef float s
    cdef int64_t n, rows, cols
    if not isinstance(a, Tensor):
        tb = as_f32(b, _BINOP_NAMES[op])
        s = a
        tb = as_contig(tb)
        out = new_like_shape(tb, C.MLL_F32)
        n = numel(tb)
        with nogil:
            C.mll_binary_scalar(op, fptr(tb), s, fptr(out), n, 1)
        return out
    ta = as_f32(a, _BINOP_NAMES[op])
    if not isinstance(b, Tensor):
        s = b
        ta = as_contig(ta)
        out = new_like_shape(ta, C.MLL_F32)
        n = numel(ta)
        with nogil:
            C.mll_binary_scalar(op, fptr(ta), s, fptr(out), n, 0)
        return out
    tb = as_f32(b, _BINOP_NAMES[op])
    if same_shape(ta, tb):
        ta = as_contig(ta)
        tb = as_contig(tb)
        out = new_like_shape(ta, C.MLL_F32)
        n = numel(ta)
        with nogil:
            C.mll_binary(op, fptr(ta), fptr(tb), fptr(out), n)
        return out
    sa, sb = ta.shape, tb.shape
    shape = broadcast_shapes(sa, sb)
    out = new_tensor(shape, C.MLL_F32)
    if numel(out) == 0:
        return out
    # b is a row repeated over a's leading axes: (..., C) op (C) or (1, C)
    if shape == sa and is_contig(ta) and is_contig(tb) and numel(tb) > 1 and \
            len(sa) >= 1 and numel(tb) == sa[-1]:
        cols = sa[-1]
        rows = numel(ta) // cols
        with nogil:
            C.mll_binary_row(op, fptr(ta), fptr(tb), fptr(out), rows, cols)
        return out
    # b is a column: (..., R, C) op (..., R, 1)
    if shape == sa and is_contig(ta) and is_contig(tb) and len(sb) == len(sa) and sb[-1] == 1 and \
            sb[:-1] == sa[:-1]:
        cols = sa[-1]
        rows = numel(tb)
        with nogil:
            C.mll_binary_col(op, fptr(ta), fptr(tb), fptr(out), rows, cols)
        return out
    binary_strided(op, ta, tb, out)
    return out


cdef void broadcast_strides(Tensor t, Tensor out, int64_t *st):
    """Element strides to read t as if broadcast to out's shape (0 on broadcast axes)."""
    cdef int k, j
    cdef int off = out.ndim - t.ndim
    for k in range(out.ndim):
        j = k - off
        if j < 0 or t.shape_[j] == 1:
            st[k] = 0
        else:
            st[k] = t.strides_[j]


cdef void binary_strided(int op, Tensor ta, Tensor tb, Tensor out):
    cdef int64_t sh[MAX_NDIM]
    cdef int64_t sa[MAX_NDIM]
    cdef int64_t sb[MAX_NDIM]
    cdef int k
    for k in range(out.ndim):
        sh[k] = out.shape_[k]
    broadcast_strides(ta, out, sa)
    broadcast_strides(tb, out, sb)
    with nogil:
        C.mll_binary_strided(op, out.ndim, sh, fptr(ta), sa, fptr(tb), sb, fptr(out))


cdef void inplace_binary(int op, Tensor self, object other) except *:
    """self op= other (other broadcast to self's shape)."""
    if _grad_enabled and (self.requires_grad or
                          (isinstance(other, Tensor) and (<Tensor> other).requires_grad)):
        raise RuntimeError("in-place arithmetic on a tensor that requires grad; use a + b, or "
                           "wrap it in minillm.no_grad()")
    if self.readonly:
        raise ValueError("in-place arithmetic on a read-only tensor")
    as_f32(self, _BINOP_NAMES[op])
    cdef Tensor res = binary_op(op, self, other)
    if res.shape != self.shape:
        raise ValueError(f"in-place {_BINOP_NAMES[op]}: result shape {res.shape} differs from "
                         f"the tensor's shape {self.shape}")
    copy_(self, res)


def add(a, b):
    """a + b with broadcasting (float32)."""
    return binary_op(C.MLL_ADD, a, b)


def sub(a, b):
    """a - b with broadcasting (float32)."""
    return binary_op(C.MLL_SUB, a, b)


def mul(a, b):
    """a * b with broadcasting (float32)."""
    return binary_op(C.MLL_MUL, a, b)


def div(a, b):
    """a / b with broadcasting (float32)."""
    return binary_op(C.MLL_DIV, a, b)


cdef Tensor unary_op(int op, Tensor x):
    x = as_contig(as_f32(x, "unary op"))
    cdef Tensor out = new_like_shape(x, C.MLL_F32)
    cdef int64_t n = numel(x)
    with nogil:
        C.mll_unary(op, fptr(x), fptr(out), n)
    return out


def neg(Tensor x):
    return unary_op(C.MLL_NEG, x)


def exp(Tensor x):
    return unary_op(C.MLL_EXP, x)


def log(Tensor x):
    return unary_op(C.MLL_LOG, x)


def sqrt(Tensor x):
    return unary_op(C.MLL_SQRT, x)


def tanh(Tensor x):
    return unary_op(C.MLL_TANH, x)


def relu(Tensor x):
    return unary_op(C.MLL_RELU, x)


def gelu(Tensor x):
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return unary_op(C.MLL_GELU, x)


def abs(Tensor x):
    return unary_op(C.MLL_ABS, x)


def sigmoid(Tensor x):
    return unary_op(C.MLL_SIGMOID, x)


def unary_backward(str name, Tensor x, Tensor y, Tensor dy):
    """dx = dy * f'(x) for f = `name`; y = f(x) (its forward output) is reused where it helps."""
    cdef int op = _UNARY_CODES[name]
    x = as_contig(as_f32(x, name))
    y = as_contig(as_f32(y, name)) if y is not None else x
    dy = as_contig(as_f32(dy, name))
    if dy.shape != x.shape:
        raise ValueError(f"{name} backward: gradient shape {dy.shape} != input shape {x.shape}")
    cdef Tensor dx = new_like_shape(x, C.MLL_F32)
    cdef int64_t n = numel(x)
    with nogil:
        C.mll_unary_backward(op, fptr(x), fptr(y), fptr(dy), fptr(dx), n)
    return dx


def pow_(Tensor x, exponent):
    """x ** exponent for a Python-number exponent (2, 0.5, -1 and 1 use exact kernels)."""
    if exponent == 2:
        return binary_op(C.MLL_MUL, x, x)
    if exponent == 1:
        return copy_contig(x)
    if exponent == 0.5:
        return unary_op(C.MLL_SQRT, x)
    if exponent == -1:
        return binary_op(C.MLL_DIV, 1.0, x)
    if float(exponent).is_integer() and _builtins.abs(exponent) <= 64:
        return int_pow(x, int(exponent))
    return unary_op(C.MLL_EXP, binary_op(C.MLL_MUL, unary_op(C.MLL_LOG, x), float(exponent)))


cdef Tensor int_pow(Tensor x, int e):
    """x ** e for an integer e by repeated squaring (exact sign for negative x)."""
    cdef int n = e if e >= 0 else -e
    cdef Tensor result = None
    cdef Tensor base = x
    while n:
        if n & 1:
            result = base if result is None else binary_op(C.MLL_MUL, result, base)
        n >>= 1
        if n:
            base = binary_op(C.MLL_MUL, base, base)
    if result is None:
        result = full(x.shape, 1.0)
    elif result is x:
        result = copy_contig(x)
    return binary_op(C.MLL_DIV, 1.0, result) if e < 0 else result


# ------------------------------------------------------------------------- views
def reshape(Tensor x, shape):
    """A view with `shape` when x's strides allow it, else a reshaped copy."""
    shape = tuple(shape)
    cdef int64_t n = numel(x)
    cdef int64_t known = 1
    cdef int unknown = -1
    for i, dim in enumerate(shape):
        if dim == -1:
            if unknown >= 0:
                raise ValueError(f"reshape: only one -1 is allowed, got {shape}")
            unknown = i
        elif dim < 0:
            raise ValueError(f"reshape: invalid shape {shape}")
        else:
            known *= dim
    if unknown >= 0:
        if known == 0 or n % known != 0:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} into {shape}")
        shape = shape[:unknown] + (n // known,) + shape[unknown + 1:]
    elif known != n:
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({n} elements) into {shape}")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"shape {shape} has more than {MAX_NDIM} dimensions")
    if not is_contig(x):
        x = copy_contig(x)
    cdef Py_ssize_t sh[MAX_NDIM]
    cdef Py_ssize_t st[MAX_NDIM]
    cdef int k, nd = len(shape)
    cdef Py_ssize_t s = 1
    for k in range(nd - 1, -1, -1):
        sh[k] = shape[k]
        st[k] = s
        s *= sh[k]
    return make_view(x, nd, sh, st, x.ptr)


def transpose(Tensor x, int d0, int d1):
    """A view with axes d0 and d1 swapped."""
    d0 = norm_axis(d0, x.ndim)
    d1 = norm_axis(d1, x.ndim)
    cdef Tensor t = make_view(x, x.ndim, x.shape_, x.strides_, x.ptr)
    t.shape_[d0], t.shape_[d1] = x.shape_[d1], x.shape_[d0]
    t.strides_[d0], t.strides_[d1] = x.strides_[d1], x.strides_[d0]
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


def unsqueeze(Tensor x, int d):
    """A view with a new axis of size 1 at position d."""
    if d < 0:
        d += x.ndim + 1
    if d < 0 or d > x.ndim:
        raise IndexError(f"unsqueeze: axis {d} out of range for shape {x.shape}")
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
    cdef Py_ssize_t start, stop, step, length, idx
    for k in key:
        if k is None:
            if nd >= MAX_NDIM:
                raise ValueError("too many dimensions")
            sh[nd] = 1
            st[nd] = 0
            nd += 1
        elif isinstance(k, slice):
            start, stop, step = k.indices(x.shape_[axis])
            if step <= 0:
                raise ValueError(f"slice step must be positive, got {step}")
            length = _builtins.max(0, (stop - start + step - 1) // step)
            if length > 0:
                p += start * x.strides_[axis] * itemsize_of(x.dtype_)
            sh[nd] = length
            st[nd] = x.strides_[axis] * step
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
        sh[nd] = x.shape_[axis]
        st[nd] = x.strides_[axis]
        nd += 1
        axis += 1
    return make_view(x, nd, sh, st, p)


# ---------------------------------------------------------------- in-place helpers
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


def axpy_(float alpha, Tensor x, Tensor y):
    """y += alpha * x (same shapes, contiguous float32)."""
    if x.shape != y.shape:
        raise ValueError(f"axpy_: shapes {x.shape} and {y.shape} differ")
    as_f32(x, "axpy_")
    as_f32(y, "axpy_")
    if not (is_contig(x) and is_contig(y)):
        raise ValueError("axpy_ needs contiguous tensors")
    with nogil:
        C.mll_axpy(alpha, fptr(x), fptr(y), numel(x))
    return y


def scale_(Tensor x, float alpha):
    """x *= alpha (contiguous float32)."""
    as_f32(x, "scale_")
    if not is_contig(x):
        raise ValueError("scale_ needs a contiguous tensor")
    with nogil:
        C.mll_scale(fptr(x), alpha, numel(x))
    return x


def add_(Tensor dst, Tensor src):
    """dst += src (src broadcast to dst's shape); used to accumulate gradients."""
    if dst.shape == src.shape and is_contig(dst) and is_contig(src) and dst.dtype_ == C.MLL_F32 \
            and src.dtype_ == C.MLL_F32:
        with nogil:
            C.mll_axpy(1.0, fptr(src), fptr(dst), numel(dst))
        return dst
    cdef int64_t rows, cols
    if is_contig(dst) and is_contig(src) and dst.dtype_ == C.MLL_F32 and src.dtype_ == C.MLL_F32 and \
            0 < src.ndim <= dst.ndim and dst.shape[dst.ndim - src.ndim:] == src.shape and numel(src) > 0:
        # a bias-like src repeated over the leading axes: added in place, one pass
        cols = numel(src)
        rows = numel(dst) // cols
        with nogil:
            C.mll_binary_row(C.MLL_ADD, fptr(dst), fptr(src), fptr(dst), rows, cols)
        return dst
    copy_(dst, binary_op(C.MLL_ADD, dst, src))
    return dst


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


# ----------------------------------------------------------------- reductions
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


# ------------------------------------------------------------- softmax family
cdef Tensor last_axis_rows(Tensor x, str what, int64_t *rows, int64_t *cols):
    as_f32(x, what)
    if x.ndim == 0:
        raise ValueError(f"{what} needs at least one dimension")
    x = as_contig(x)
    cols[0] = x.shape_[x.ndim - 1]
    rows[0] = numel(x) // cols[0] if cols[0] else 0
    return x


def softmax(Tensor x, axis=-1):
    """Softmax over `axis` (last by default), max-subtracted."""
    cdef int64_t rows, cols
    axis = norm_axis(axis, x.ndim)
    if axis != x.ndim - 1:
        return transpose(softmax(transpose(x, axis, -1), -1), axis, -1)
    x = last_axis_rows(x, "softmax", &rows, &cols)
    cdef Tensor y = new_like_shape(x, C.MLL_F32)
    with nogil:
        C.mll_softmax_forward(fptr(x), fptr(y), rows, cols)
    return y


def softmax_backward(Tensor y, Tensor dy):
    """dx = y * (dy - sum(dy * y)) over the last axis."""
    cdef int64_t rows, cols
    y = last_axis_rows(y, "softmax backward", &rows, &cols)
    dy = as_contig(as_f32(dy, "softmax backward"))
    if dy.shape != y.shape:
        raise ValueError(f"softmax backward: gradient shape {dy.shape} != output shape {y.shape}")
    cdef Tensor dx = new_like_shape(y, C.MLL_F32)
    with nogil:
        C.mll_softmax_backward(fptr(y), fptr(dy), fptr(dx), rows, cols)
    return dx


def log_softmax(Tensor x, axis=-1):
    """log(softmax(x)) over `axis` (last by default), computed stably."""
    cdef int64_t rows, cols
    axis = norm_axis(axis, x.ndim)
    if axis != x.ndim - 1:
        return transpose(log_softmax(transpose(x, axis, -1), -1), axis, -1)
    x = last_axis_rows(x, "log_softmax", &rows, &cols)
    cdef Tensor y = new_like_shape(x, C.MLL_F32)
    with nogil:
        C.mll_log_softmax_forward(fptr(x), fptr(y), rows, cols)
    return y


def log_softmax_backward(Tensor y, Tensor dy):
    """dx = dy - exp(y) * sum(dy) over the last axis (y is the log-softmax output)."""
    cdef int64_t rows, cols
    y = last_axis_rows(y, "log_softmax backward", &rows, &cols)
    dy = as_contig(as_f32(dy, "log_softmax backward"))
    if dy.shape != y.shape:
        raise ValueError(f"log_softmax backward: gradient shape {dy.shape} != output shape {y.shape}")
    cdef Tensor dx = new_like_shape(y, C.MLL_F32)
    with nogil:
        C.mll_log_softmax_backward(fptr(y), fptr(dy), fptr(dx), rows, cols)
    return dx


def layer_norm(Tensor x, weight, bias, float eps=1e-5):
    """LayerNorm over the last axis: x (..., C), weight/bias (C) or None.
    Returns (y, mean, rstd) with mean/rstd of shape (rows,) saved for backward."""
    cdef int64_t rows, cols
    x = last_axis_rows(x, "layer_norm", &rows, &cols)
    cdef Tensor w = None, b = None
    cdef const float *wp = NULL
    cdef const float *bp = NULL
    if weight is not None:
        w = as_contig(as_f32(weight, "layer_norm weight"))
        if w.shape != (cols,):
            raise ValueError(f"layer_norm: weight shape {w.shape} != ({cols},) for input {x.shape}")
        wp = fptr(w)
    if bias is not None:
        b = as_contig(as_f32(bias, "layer_norm bias"))
        if b.shape != (cols,):
            raise ValueError(f"layer_norm: bias shape {b.shape} != ({cols},) for input {x.shape}")
        bp = fptr(b)
    cdef Tensor y = new_like_shape(x, C.MLL_F32)
    cdef Tensor mu = new_tensor((rows,), C.MLL_F32)
    cdef Tensor rs = new_tensor((rows,), C.MLL_F32)
    with nogil:
        C.mll_layernorm_forward(fptr(x), wp, bp, fptr(y), fptr(mu), fptr(rs), rows, cols, eps)
    return y, mu, rs


def layer_norm_backward(Tensor x, weight, Tensor mean, Tensor rstd, Tensor dy, bint need_bias_grad=True):
    """Backward of layer_norm: returns (dx, dweight or None, dbias or None)."""
    cdef int64_t rows, cols
    x = last_axis_rows(x, "layer_norm backward", &rows, &cols)
    dy = as_contig(as_f32(dy, "layer_norm backward"))
    if dy.shape != x.shape:
        raise ValueError(f"layer_norm backward: gradient shape {dy.shape} != input shape {x.shape}")
    cdef Tensor w = None
    cdef const float *wp = NULL
    cdef Tensor dx = new_like_shape(x, C.MLL_F32)
    cdef Tensor dw = None, db = None
    cdef float *dwp = NULL
    cdef float *dbp = NULL
    if weight is not None:
        w = as_contig(as_f32(weight, "layer_norm weight"))
        wp = fptr(w)
        dw = new_tensor((cols,), C.MLL_F32)
        dwp = fptr(dw)
        if need_bias_grad:
            db = new_tensor((cols,), C.MLL_F32)
            dbp = fptr(db)
    with nogil:
        C.mll_layernorm_backward(fptr(x), wp, fptr(mean), fptr(rstd), fptr(dy), fptr(dx), dwp, dbp,
                                 rows, cols)
    return dx, dw, db


# ------------------------------------------------------------------- embedding
cdef Tensor as_index(object idx, str what):
    cdef Tensor t
    if not isinstance(idx, Tensor):
        idx = tensor(idx, dtype="int64")
    t = <Tensor> idx
    if t.dtype_ == C.MLL_I64:
        return as_contig(t)
    if t.dtype_ in (C.MLL_I32, C.MLL_U16, C.MLL_U8):
        return cast(t, "int64")
    raise TypeError(f"{what}: expected integer token ids, got dtype {t.dtype}")


def embedding(Tensor weight, idx):
    """weight (V, D), idx (...) integer ids -> (..., D)."""
    as_f32(weight, "embedding weight")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (V, D), got shape {weight.shape}")
    cdef Tensor ids = as_index(idx, "embedding")
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
    cdef Tensor ids = as_index(idx, "embedding backward")
    dout = as_contig(as_f32(dout, "embedding backward"))
    cdef int64_t dim = dout.shape_[dout.ndim - 1], n = numel(ids)
    if numel(dout) != n * dim:
        raise ValueError(f"embedding backward: gradient shape {dout.shape} does not match ids {ids.shape}")
    cdef Tensor dw = zeros((num_embeddings, dim))
    with nogil:
        C.mll_embedding_backward(fptr(dout), <int64_t *> ids.ptr, fptr(dw), n, dim)
    return dw


# ----------------------------------------------------------------- cat, stack
def cat(tensors, int axis=0):
    """Concatenate tensors (same dtype, same shape except along axis)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    cdef Tensor first = tensors[0]
    axis = norm_axis(axis, first.ndim)
    total = 0
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


def stack(tensors, int axis=0):
    """Stack same-shape tensors along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    nd = tensors[0].ndim + 1
    if axis < 0:
        axis += nd
    return cat([unsqueeze(t, axis) for t in tensors], axis)


# ---------------------------------------------------------------------- matmul
cdef bint gemm_operand(Tensor t, int r, int c, bint *trans, int64_t *ld):
    """Can the 2-D slice (axes r, c) of t be passed to the GEMM without a copy? Sets the
    transpose flag and leading dimension of the row-major matrix it is stored as."""
    if t.strides_[c] == 1 or t.shape_[c] == 1:
        ld[0] = t.strides_[r] if t.shape_[r] > 1 else t.shape_[c]
        if ld[0] < t.shape_[c]:
            ld[0] = t.shape_[c]
        return True
    if t.strides_[r] == 1 or t.shape_[r] == 1:
        trans[0] = not trans[0]
        ld[0] = t.strides_[c] if t.shape_[c] > 1 else t.shape_[r]
        if ld[0] < t.shape_[r]:
            ld[0] = t.shape_[r]
        return True
    return False


def matmul(a, b, bint transpose_a=False, bint transpose_b=False, out=None, float alpha=1.0,
           float beta=0.0):
    """alpha * op(a) @ op(b) (+ beta * out): a (..., M, K), b (..., K, N) or (K, N), with
    broadcast batch axes and NumPy's rules for 1-D operands. op() transposes the last two
    axes when transpose_* is set; strided and transposed views go to the GEMM without copies."""
    cdef Tensor A = as_f32(a, "matmul"), B = as_f32(b, "matmul")
    squeeze_m = A.ndim == 1
    squeeze_n = B.ndim == 1
    if A.ndim == 0 or B.ndim == 0:
        raise ValueError(f"matmul: 0-d operands are not allowed (shapes {A.shape}, {B.shape})")
    if squeeze_m:
        A = unsqueeze(A, 0)
    if squeeze_n:
        B = unsqueeze(B, 1)
    if transpose_a:
        A = transpose(A, -1, -2)
    if transpose_b:
        B = transpose(B, -1, -2)
    cdef int64_t M = A.shape_[A.ndim - 2], K = A.shape_[A.ndim - 1]
    cdef int64_t N = B.shape_[B.ndim - 1]
    if B.shape_[B.ndim - 2] != K:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                         f"(inner sizes {K} and {B.shape_[B.ndim - 2]})")
    batch = broadcast_shapes(A.shape[:-2], B.shape[:-2])
    cdef int64_t nbatch = 1
    for s in batch:
        nbatch *= s
    out_shape = batch + (M, N)
    cdef Tensor O
    if out is None:
        if beta != 0.0:
            raise ValueError("matmul: beta != 0 needs an `out` tensor")
        O = new_tensor(out_shape, C.MLL_F32)
    else:
        O = as_f32(out, "matmul out")
        if O.shape != out_shape or not is_contig(O):
            raise ValueError(f"matmul: out must be contiguous of shape {out_shape}, got {O.shape}")
    cdef bint ta = False, tb = False
    cdef int64_t lda = 0, ldb = 0, sa = 0, sb = 0
    if M == 0 or N == 0 or nbatch == 0:
        return O
    if K == 0:
        if beta == 0.0:
            C.mll_fill(fptr(O), 0.0, numel(O))
        else:
            C.mll_scale(fptr(O), beta, numel(O))
        return O
    # one GEMM over all rows when b has no batch axes and a's rows are evenly strided
    if B.ndim == 2 and A.ndim > 2:
        A2 = flatten_rows(A)
        if A2 is not None:
            A = <Tensor> A2
            batch = ()
            nbatch = 1
            M = A.shape_[0]
    if not gemm_operand(A, A.ndim - 2, A.ndim - 1, &ta, &lda):
        A = copy_contig(A)
        ta = False
        lda = K
    if not gemm_operand(B, B.ndim - 2, B.ndim - 1, &tb, &ldb):
        B = copy_contig(B)
        tb = False
        ldb = N
    if nbatch == 1:
        with nogil:
            C.mll_sgemm(ta, tb, M, N, K, alpha, fptr(A), lda, fptr(B), ldb, beta, fptr(O), N)
    else:
        A, sa = batch_view(A, batch, &ta, &lda)
        B, sb = batch_view(B, batch, &tb, &ldb)
        with nogil:
            C.mll_sgemm_batched(ta, tb, M, N, K, alpha, fptr(A), lda, sa, fptr(B), ldb, sb, beta,
                                fptr(O), N, M * N, nbatch)
    if squeeze_m and squeeze_n:
        return reshape(O, batch)
    if squeeze_m:
        return reshape(O, batch + (N,))
    if squeeze_n:
        return reshape(O, batch + (M,))
    return O


cdef object flatten_rows(Tensor A):
    """(..., M, K) -> (rows, K) view when every leading axis steps by whole rows, else None."""
    cdef int k
    cdef int64_t step = A.strides_[A.ndim - 2]
    cdef int64_t rows = A.shape_[A.ndim - 2]
    if A.strides_[A.ndim - 1] != 1 and A.shape_[A.ndim - 1] != 1:
        return None
    for k in range(A.ndim - 3, -1, -1):
        if A.shape_[k] != 1 and A.strides_[k] != step * rows:
            return None
        rows *= A.shape_[k]
    cdef Py_ssize_t sh[2]
    cdef Py_ssize_t st[2]
    sh[0] = rows
    sh[1] = A.shape_[A.ndim - 1]
    st[0] = step if A.shape_[A.ndim - 2] > 1 else A.shape_[A.ndim - 1]
    st[1] = 1
    if st[0] < sh[1]:
        st[0] = sh[1]
    return make_view(A, 2, sh, st, A.ptr)


cdef tuple batch_view(Tensor T, tuple batch, bint *trans, int64_t *ld):
    """T broadcast to the batch axes with one uniform batch stride (copying when the axes
    do not collapse), as (tensor, stride between matrices)."""
    cdef int nb = len(batch)
    cdef Tensor E = expand(T, batch + T.shape[-2:])
    cdef int64_t stride = -1, expected = 0
    cdef bint ok = True
    cdef int k
    # the batch axes collapse into one stride when each steps by the product of the later ones
    cdef int64_t inner = 1
    for k in range(nb - 1, -1, -1):
        if E.shape_[k] == 1:
            continue
        if stride < 0:
            stride = E.strides_[k]
            expected = stride * E.shape_[k]
        elif E.strides_[k] != expected:
            ok = False
            break
        else:
            expected = E.strides_[k] * E.shape_[k]
    if stride < 0:
        stride = 0
    if ok and stride == 0:
        # every batch axis broadcast (or size 1): the same matrix for all
        return T, 0
    if ok and all(E.strides_[k] != 0 or E.shape_[k] == 1 for k in range(nb)):
        return E, stride
    # mixed broadcasting: materialise the batch
    E = copy_contig(E)
    trans[0] = False
    ld[0] = E.shape_[E.ndim - 1]
    return E, E.shape_[E.ndim - 2] * E.shape_[E.ndim - 1]


def view_as(Tensor t, dtype):
    """The same memory read as another dtype of the same item size (e.g. uint16 bits as
    bfloat16)."""
    cdef int code = dtype_code(dtype)
    if itemsize_of(code) != itemsize_of(t.dtype_):
        raise TypeError(f"view_as: {t.dtype} and {_DTYPE_NAMES[code]} differ in item size")
    cdef Tensor v = make_view(t, t.ndim, t.shape_, t.strides_, t.ptr)
    v.dtype_ = code
    return v
