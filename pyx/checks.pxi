# checks.pxi: the argument checks every binding shares, and the checked size arithmetic.
#
# A binding converts each argument once, through one of these, and gets either a Tensor it
# can hand to a kernel or a Python exception naming the argument and its shape or dtype:
#   as_tensor_arg(x, what)           a Tensor of any dtype (TypeError otherwise)
#   as_f32(x, what)                  a float32 Tensor, any strides (TypeError otherwise)
#   as_contig(t)                     t, or a contiguous copy of it
#   as_inplace_f32(x, what)          a contiguous float32 Tensor a kernel may write through
#   as_lastdim_f32(x, what, name)    float32 with a contiguous last axis (copied if not)
#   as_f32_shaped(x, what, shape)    contiguous float32 of exactly `shape`
#   as_rows_f32(x, what, rows, cols) contiguous float32 seen as (rows, cols) over its last axis
#   as_ids(x, what)                  integer ids (a Tensor of any integer dtype, or a sequence)
#                                    as a contiguous int64 Tensor
#   check_contig(t, what), check_writable(t, what), check_same_numel(a, b, what, name_a, name_b)
#   norm_axis, norm_index, shape_tuple
#
# Sizes: every Tensor keeps the product of its sizes (empty axes counted as 1) times its item
# size within int64, so no element count, stride or byte offset computed from a shape can
# overflow; new shapes go through checked_numel and views through make_view's check.
# mul_or_raise / add_or_raise are the checked steps for the sizes a binding computes itself.

cdef extern from *:
    """
    static inline int mll_mul_overflows(int64_t a, int64_t b, int64_t *r) { return __builtin_mul_overflow(a, b, r); }
    static inline int mll_add_overflows(int64_t a, int64_t b, int64_t *r) { return __builtin_add_overflow(a, b, r); }
    """
    bint mll_mul_overflows(int64_t a, int64_t b, int64_t *r) noexcept nogil
    bint mll_add_overflows(int64_t a, int64_t b, int64_t *r) noexcept nogil

cdef int64_t INT64_MAX_ = 0x7FFFFFFFFFFFFFFF


cdef int64_t mul_or_raise(int64_t a, int64_t b, str what) except? -1:
    """a * b, or MemoryError naming `what` when the product does not fit in int64."""
    cdef int64_t r
    if mll_mul_overflows(a, b, &r):
        raise MemoryError(f"{what}: {a} * {b} elements overflows a 64-bit size")
    return r


cdef int64_t add_or_raise(int64_t a, int64_t b, str what) except? -1:
    cdef int64_t r
    if mll_add_overflows(a, b, &r):
        raise MemoryError(f"{what}: {a} + {b} overflows a 64-bit size")
    return r


cdef bint extent_fits(int nd, const Py_ssize_t *shape, int itemsize) noexcept nogil:
    """True when the product of the sizes (0 counted as 1) times itemsize fits in int64: then
    no count, stride or byte offset derived from this shape overflows."""
    cdef int64_t p = itemsize
    cdef int k
    for k in range(nd):
        if shape[k] < 0:
            return False
        if shape[k] > 1 and mll_mul_overflows(p, shape[k], &p):
            return False
    return True


cdef int64_t checked_numel(tuple shape, int itemsize) except -1:
    """The element count of `shape` (a tuple from shape_tuple), or MemoryError naming the shape
    when its bytes (or the strides of any view of it) cannot be addressed with 64-bit sizes."""
    cdef int64_t n = 1, b = itemsize, s
    for v in shape:
        s = v
        if mll_mul_overflows(n, s, &n) or (s > 1 and mll_mul_overflows(b, s, &b)):
            raise MemoryError(f"a tensor of shape {shape} with {itemsize}-byte items needs more than "
                              f"2**63 bytes")
    return n


cdef tuple shape_tuple(object shape):
    """A shape (an int or a sequence of ints) as a tuple of non-negative Python ints that fit
    in int64, with at most MAX_NDIM axes; ValueError naming the shape otherwise."""
    if isinstance(shape, (int, _np.integer)):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"a shape must be an int or a sequence of ints, got {type(shape).__name__}") from None
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, _np.integer)):
            raise TypeError(f"invalid shape {shape}: entries must be integers, got {type(s).__name__}")
        if s < 0 or s > INT64_MAX_:
            raise ValueError(f"invalid shape {shape}: sizes must be non-negative integers below 2**63, got {s}")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"shape {shape} has more than {MAX_NDIM} dimensions")
    return tuple([int(s) for s in shape])


cdef int norm_axis(object axis, int ndim) except -1:
    """axis in [-ndim, ndim) as an index in [0, ndim) (a 0-d tensor takes axis 0 or -1);
    IndexError naming the axis and the dimensions otherwise."""
    cdef int n = ndim if ndim > 0 else 1
    cdef Py_ssize_t a
    try:
        a = axis
    except OverflowError:
        raise IndexError(f"axis {axis} is out of range for a tensor with {ndim} dimensions") from None
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__} {axis!r}") from None
    if a < -n or a >= n:
        raise IndexError(f"axis {axis} is out of range for a tensor with {ndim} dimensions")
    return <int> (a + n if a < 0 else a)


def normalize_axis(axis, int ndim):
    """axis (int, negative counts from the end) as an index in [0, ndim); IndexError naming
    the axis when it is out of range (for minillm.functional's ops that move an axis)."""
    return norm_axis(axis, ndim)


cdef Py_ssize_t norm_index(object i, Py_ssize_t size, int axis) except -1:
    """i in [-size, size) as an index in [0, size); IndexError naming it otherwise."""
    cdef Py_ssize_t j
    try:
        j = i
    except OverflowError:
        raise IndexError(f"index {i} is out of range for axis {axis} of size {size}") from None
    if j < -size or j >= size:
        raise IndexError(f"index {i} is out of range for axis {axis} of size {size}")
    return j + size if j < 0 else j


cdef Tensor as_contig(Tensor t):
    return t if is_contig(t) else copy_contig(t)


cdef Tensor as_tensor_arg(object x, str what):
    """x as a Tensor of any dtype (TypeError naming `what` for anything else)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: expected a Tensor, got {type(x).__name__}")
    return <Tensor> x


cdef Tensor as_f32(object x, str what):
    """x as a float32 Tensor (TypeError naming `what` for anything else)."""
    cdef Tensor t = as_tensor_arg(x, what)
    if t.dtype_ != C.MLL_F32:
        raise TypeError(f"{what}: expected a float32 tensor, got {t.dtype}")
    return t


cdef Tensor as_kv_cache(object x, str what, int dtype):
    """x as a KV cache tensor: float32 or bfloat16, and of `dtype` unless that is -1 (the
    first cache of a call sets it for the rest): TypeError naming `what` otherwise."""
    cdef Tensor t = as_tensor_arg(x, what)
    if t.dtype_ != C.MLL_F32 and t.dtype_ != C.MLL_BF16:
        raise TypeError(f"{what}: a KV cache holds float32 or bfloat16, got {t.dtype}")
    if dtype != -1 and t.dtype_ != dtype:
        raise TypeError(f"{what}: expected a {_DTYPE_NAMES[dtype]} cache like the others, got {t.dtype}")
    return t


cdef Tensor as_inplace_f32(object x, str what):
    """A float32 tensor a kernel updates in place: it must be contiguous and writable."""
    cdef Tensor t = as_f32(x, what)
    return check_writable(check_contig(t, what), what)


cdef Tensor check_contig(Tensor t, str what):
    """t itself, or ValueError naming `what` and the shape when t is not contiguous."""
    if not is_contig(t):
        raise ValueError(f"{what}: the tensor of shape {t.shape} must be contiguous")
    return t


cdef Tensor check_writable(Tensor t, str what):
    """t itself, or ValueError naming `what` when t views read-only memory."""
    if t.readonly:
        raise ValueError(f"{what}: tensor of shape {t.shape} is read-only")
    return t


cdef Tensor as_lastdim_f32(object x, str what, str name):
    """A float32 Tensor whose last axis is contiguous (copied if it is not)."""
    cdef Tensor t = as_f32(x, f"{what} {name}")
    if t.ndim > 0 and t.strides_[t.ndim - 1] != 1 and t.shape_[t.ndim - 1] > 1:
        t = copy_contig(t)
    return t


cdef Tensor as_f32_shaped(object x, str what, tuple shape):
    """x as a contiguous float32 Tensor of exactly `shape` (a saved statistic, a weight):
    ValueError naming both shapes otherwise."""
    cdef Tensor t = as_contig(as_f32(x, what))
    if t.shape != shape:
        raise ValueError(f"{what}: expected shape {shape}, got {t.shape}")
    return t


cdef Tensor as_rows_f32(object x, str what, int64_t *rows, int64_t *cols):
    """x as a contiguous float32 tensor of >= 1 dimensions seen as (rows, cols), cols its last
    axis (rows * cols = its size)."""
    cdef Tensor t = as_f32(x, what)
    if t.ndim == 0:
        raise ValueError(f"{what} needs at least one dimension, got a 0-d tensor")
    t = as_contig(t)
    cols[0] = t.shape_[t.ndim - 1]
    rows[0] = numel(t) // cols[0] if cols[0] else 0
    return t


cdef Tensor as_ids(object x, str what):
    """Integer ids as a contiguous int64 Tensor: a Tensor of int64, int32, uint16 or uint8
    (widened), or a (nested) sequence of ints. TypeError naming `what` for other dtypes."""
    if not isinstance(x, Tensor):
        try:
            x = tensor(x, dtype="int64")
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"{what}: expected integer ids (a Tensor or a sequence of ints): {e}") from None
    cdef Tensor t = <Tensor> x
    if t.dtype_ == C.MLL_I64:
        return as_contig(t)
    if t.dtype_ == C.MLL_I32 or t.dtype_ == C.MLL_U16 or t.dtype_ == C.MLL_U8:
        return cast(t, "int64")
    raise TypeError(f"{what}: expected integer ids (int64, int32, uint16 or uint8), got dtype {t.dtype}")


cdef int check_same_numel(Tensor a, Tensor b, str what, str name_a, str name_b) except -1:
    if numel(a) != numel(b):
        raise ValueError(f"{what}: {name_a} {a.shape} and {name_b} {b.shape} differ in size")
    return 0
