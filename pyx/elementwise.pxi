# elementwise.pxi: bindings of elementwise.c: binary ops with NumPy broadcasting (and add_, the
# in-place sum that accumulates gradients), unary ops and their backward, and powers built
# from them. No autograd here: Tensor operators call route_binary/route_unary, which hand
# over to the registered functional module when a gradient is needed.
# sum, max and abs (reduce.pxi, below) shadow the builtins inside this module: use _builtins.*.
import builtins as _builtins


_BINOP_NAMES = {C.MLL_ADD: "add", C.MLL_SUB: "sub", C.MLL_MUL: "mul", C.MLL_DIV: "div"}


_UNARY_CODES = {"neg": C.MLL_NEG, "exp": C.MLL_EXP, "log": C.MLL_LOG, "sqrt": C.MLL_SQRT,
                "tanh": C.MLL_TANH, "relu": C.MLL_RELU, "gelu": C.MLL_GELU, "abs": C.MLL_ABS,
                "sigmoid": C.MLL_SIGMOID, "relu2": C.MLL_RELU2}


cdef object route_binary(int op, object a, object b):
    """Operator entry: record for autograd when needed, else compute."""
    if not isinstance(a, (Tensor, int, float)) or not isinstance(b, (Tensor, int, float)):
        if isinstance(a, _np.ndarray) or isinstance(b, _np.ndarray):
            a = a if isinstance(a, Tensor) else tensor(a, dtype="float32")
            b = b if isinstance(b, Tensor) else tensor(b, dtype="float32")
        else:
            return NotImplemented
    if needs_grad2(a, b):
        return getattr(grad_ops(), _BINOP_NAMES[op])(a, b)
    return binary_op(op, a, b)


cdef object route_unary(str name, Tensor x):
    if needs_grad(x):
        return getattr(grad_ops(), name)(x)
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
    if not mll_grad_disabled and (self.requires_grad or
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


def relu2(Tensor x):
    """relu(x)^2 (NaN stays NaN)."""
    return unary_op(C.MLL_RELU2, x)


def softcap(Tensor x, float cap, Tensor y=None, Tensor dy=None):
    """cap tanh(x / cap), elementwise; with y (the forward's output) and dy: the backward,
    dy (1 - (y / cap)^2). cap > 0."""
    if not cap > 0:
        raise ValueError(f"softcap: cap must be > 0, got {cap}")
    x = as_contig(as_f32(x, "softcap"))
    cdef Tensor out = new_like_shape(x, C.MLL_F32)
    cdef int64_t n = numel(x)
    if y is None and dy is None:
        with nogil:
            C.mll_softcap(fptr(x), fptr(out), n, cap)
        return out
    if y is None or dy is None:
        raise ValueError("softcap: the backward takes both y and dy")
    y = as_f32_shaped(y, "softcap backward output", x.shape)
    dy = as_f32_shaped(dy, "softcap backward gradient", x.shape)
    with nogil:
        C.mll_softcap_backward(fptr(y), fptr(dy), fptr(out), n, cap)
    return out


def abs(Tensor x):
    return unary_op(C.MLL_ABS, x)


def sigmoid(Tensor x):
    return unary_op(C.MLL_SIGMOID, x)


def unary_backward(str name, Tensor x, Tensor y, Tensor dy):
    """dx = dy * f'(x) for f = `name`; y = f(x) (its forward output) is reused where it helps."""
    if name not in _UNARY_CODES:
        raise ValueError(f"unary_backward: unknown op {name!r}, expected one of {sorted(_UNARY_CODES)}")
    cdef int op = _UNARY_CODES[name]
    x = as_contig(as_f32(x, name))
    y = as_f32_shaped(y, f"{name} backward output", x.shape) if y is not None else x
    dy = as_f32_shaped(dy, f"{name} backward gradient", x.shape)
    cdef Tensor dx = new_like_shape(x, C.MLL_F32)
    cdef int64_t n = numel(x)
    with nogil:
        C.mll_unary_backward(op, fptr(x), fptr(y), fptr(dy), fptr(dx), n)
    return dx


def power(Tensor x, exponent):
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
