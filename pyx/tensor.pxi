# The Tensor type: storage, shape/strides, dtypes, views, NumPy interop, printing.
#
# A Tensor either owns a 64-byte aligned block from the C allocator (mll_alloc) or is a
# view whose `base` keeps the owner (another Tensor or a NumPy array) alive. Shapes and
# strides are in elements; at most MAX_NDIM axes.
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO, PyBUF_WRITABLE
from cpython.object cimport PyObject
from libc.string cimport memcpy, memset
import numpy as _np

cdef enum:
    MAX_NDIM = 8

# dtype code -> (name, itemsize, buffer format)
_DTYPE_NAMES = {C.MLL_F32: "float32", C.MLL_I32: "int32", C.MLL_I64: "int64",
                C.MLL_BF16: "bfloat16", C.MLL_U8: "uint8", C.MLL_U16: "uint16"}
_DTYPE_CODES = {v: k for k, v in _DTYPE_NAMES.items()}
_DTYPE_CODES.update({"float": C.MLL_F32, "long": C.MLL_I64, "int": C.MLL_I32})
_NUMPY_DTYPES = {C.MLL_F32: _np.float32, C.MLL_I32: _np.int32, C.MLL_I64: _np.int64,
                 C.MLL_BF16: _np.uint16, C.MLL_U8: _np.uint8, C.MLL_U16: _np.uint16}
float32, int32, int64, bfloat16, uint8, uint16 = "float32", "int32", "int64", "bfloat16", "uint8", "uint16"


cdef inline int itemsize_of(int dtype) noexcept nogil:
    if dtype == C.MLL_I64:
        return 8
    if dtype == C.MLL_BF16 or dtype == C.MLL_U16:
        return 2
    if dtype == C.MLL_U8:
        return 1
    return 4


cdef int dtype_code(object dtype) except -1:
    """'float32' / numpy dtype / type -> MLL_* code; TypeError for anything else."""
    if dtype is None:
        return C.MLL_F32
    if isinstance(dtype, str):
        code = _DTYPE_CODES.get(dtype)
    else:
        try:
            code = _DTYPE_CODES.get(_np.dtype(dtype).name)
        except TypeError:
            code = None
    if code is None:
        raise TypeError(f"unsupported dtype {dtype!r}: expected one of "
                        f"{sorted(_DTYPE_NAMES.values())}")
    return code


# Grad mode: one flag per thread (C thread-local storage), on by default in every thread,
# read by every op; minillm.autograd's no_grad / enable_grad / set_grad_enabled set it.
cdef extern from *:
    """
    static _Thread_local int mll_grad_disabled = 0;
    """
    int mll_grad_disabled


def is_grad_enabled():
    """True when operations on tensors that require grad are recorded for backward (this
    thread's setting)."""
    return not mll_grad_disabled


def set_grad_enabled(flag):
    """Turn gradient recording on or off for this thread; returns the previous setting."""
    global mll_grad_disabled
    prev = not mll_grad_disabled
    mll_grad_disabled = 0 if flag else 1
    return prev


# The differentiable ops and the tape live in Python (minillm.functional, minillm.autograd),
# above this module: the package hands them over once, at `import minillm`, with
# register_python_ops(); the core never imports a module of the package.
cdef object _F = None           # minillm.functional: Tensor methods route here under grad
cdef object _backward = None    # minillm.autograd.backward


def register_python_ops(functional, backward):
    """Called once by minillm/__init__.py: the module whose functions Tensor methods and
    operators call when a gradient is needed, and the tape's backward()."""
    global _F, _backward
    _F = functional
    _backward = backward


cdef object grad_ops():
    if _F is None:
        raise RuntimeError("minillm._C: the differentiable ops are not registered (import minillm, "
                           "not minillm._C alone)")
    return _F


cdef class Tensor:
    """An n-dimensional array of float32 (or int32/int64/uint8/uint16/bfloat16) with
    autograd slots. Build one with minillm.tensor(data), minillm.zeros(shape), ... or
    Tensor.from_numpy(array)."""
    cdef char *ptr
    cdef int ndim
    cdef Py_ssize_t shape_[MAX_NDIM]
    cdef Py_ssize_t strides_[MAX_NDIM]
    cdef Py_ssize_t bstrides_[MAX_NDIM]   # byte strides, for the buffer protocol
    cdef int dtype_
    cdef bint readonly
    cdef object base
    cdef void *owned
    cdef size_t owned_nbytes
    cdef public bint requires_grad
    cdef public object grad
    cdef public object grad_fn
    cdef public object _hooks
    cdef object __weakref__

    def __dealloc__(self):
        if self.owned != NULL:
            C.mll_free(self.owned, self.owned_nbytes)
            self.owned = NULL

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        return tuple([self.shape_[i] for i in range(self.ndim)])

    @property
    def strides(self):
        return tuple([self.strides_[i] for i in range(self.ndim)])

    @property
    def dtype(self):
        return _DTYPE_NAMES[self.dtype_]

    @property
    def nbytes(self):
        return numel(self) * itemsize_of(self.dtype_)

    @property
    def is_leaf(self):
        return self.grad_fn is None

    def numel(self):
        """Number of elements."""
        return numel(self)

    def dim(self):
        return self.ndim

    @property
    def ndim(self):
        return self.ndim

    def size(self, dim=None):
        """The shape, or its length along `dim`."""
        if dim is None:
            return self.shape
        return self.shape_[norm_axis(dim, self.ndim)]

    def is_contiguous(self):
        return is_contig(self)

    def data_ptr(self):
        return <size_t> self.ptr

    def element_size(self):
        return itemsize_of(self.dtype_)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape_[0]

    # ------------------------------------------------------------- buffer protocol
    def __getbuffer__(self, Py_buffer *buf, int flags):
        if (flags & PyBUF_WRITABLE) and self.readonly:
            raise BufferError("this tensor is read-only (it views a read-only buffer)")
        cdef int k
        for k in range(self.ndim):
            self.bstrides_[k] = self.strides_[k] * itemsize_of(self.dtype_)
        buf.buf = self.ptr
        buf.obj = self
        buf.len = numel(self) * itemsize_of(self.dtype_)
        buf.readonly = self.readonly
        buf.itemsize = itemsize_of(self.dtype_)
        buf.ndim = self.ndim
        buf.shape = self.shape_
        buf.strides = self.bstrides_
        buf.suboffsets = NULL
        buf.internal = NULL
        if self.dtype_ == C.MLL_F32:
            buf.format = b"f"
        elif self.dtype_ == C.MLL_I32:
            buf.format = b"i"
        elif self.dtype_ == C.MLL_I64:
            buf.format = b"q"
        elif self.dtype_ == C.MLL_U8:
            buf.format = b"B"
        else:
            buf.format = b"H"       # uint16 and the bits of bfloat16

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    # ------------------------------------------------------------------- interop
    @staticmethod
    def from_numpy(arr):
        """Zero-copy Tensor viewing a NumPy array (or any buffer) of float32, int32, int64,
        uint8 or uint16; the array stays alive as long as the tensor. float64 and other
        dtypes are refused (convert first, e.g. arr.astype(np.float32))."""
        return from_buffer(arr)

    def numpy(self):
        """A NumPy array viewing the same memory (bfloat16 shows as its uint16 bits)."""
        return _np.asarray(self)

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        """The single value of a one-element tensor, as a Python float or int."""
        if numel(self) != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return scalar_at(self, 0)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if numel(self) != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        a = _np.asarray(memoryview(self))
        if self.dtype_ == C.MLL_BF16:
            a = a.view(_np.uint16)
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        a = self.numpy()
        if self.dtype_ == C.MLL_BF16:
            a = bf16_bits_to_f32(a)
        body = _np.array2string(a, precision=4, threshold=20, edgeitems=3, separator=", ",
                                prefix="tensor(")
        extra = "" if self.dtype_ == C.MLL_F32 else f", dtype={self.dtype}"
        if self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})" if numel(self) <= 20 else \
            f"tensor({body}, shape={self.shape}{extra})"

    def __reduce__(self):
        a = self.numpy()
        return (_rebuild, (_np.array(a, copy=True), self.dtype, bool(self.requires_grad)))

    # -------------------------------------------------------------------- copies
    def contiguous(self):
        """self if already contiguous, else a contiguous copy."""
        if is_contig(self):
            return self
        return route_unary("contiguous", self) if needs_grad(self) else copy_contig(self)

    def copy(self):
        """A contiguous copy that owns its memory (not recorded by autograd)."""
        return copy_contig(self)

    def clone(self):
        """A copy, recorded by autograd when grad is on."""
        if needs_grad(self):
            return grad_ops().clone(self)
        return copy_contig(self)

    def detach(self):
        """A view of the same data that autograd does not track."""
        cdef Tensor t = make_view(self, self.ndim, self.shape_, self.strides_, self.ptr)
        return t

    @staticmethod
    def _make_subclass(cls, Tensor data, bint requires_grad=False):
        """A leaf view of data's memory whose type is `cls`, a Python subclass of Tensor
        (how nn.Parameter is built; PyTorch has the same name for the same job)."""
        if not (isinstance(cls, type) and issubclass(cls, Tensor)):
            raise TypeError(f"_make_subclass: {cls!r} is not a subclass of Tensor")
        cdef Tensor t = Tensor.__new__(cls)
        cdef int k
        t.ndim = data.ndim
        for k in range(data.ndim):
            t.shape_[k] = data.shape_[k]
            t.strides_[k] = data.strides_[k]
        t.ptr = data.ptr
        t.dtype_ = data.dtype_
        t.readonly = data.readonly
        t.base = data if data.owned != NULL else data.base
        t.requires_grad = requires_grad
        return t

    def requires_grad_(self, flag=True):
        self.requires_grad = bool(flag)
        return self

    def astype(self, dtype):
        """A copy converted to `dtype` (bfloat16 rounds to nearest even)."""
        return cast(self, dtype)

    def to(self, dtype):
        if dtype_code(dtype) == self.dtype_:
            return self
        return cast(self, dtype)

    def float(self):
        return self.to("float32")

    def long(self):
        return self.to("int64")

    # --------------------------------------------------------------------- views
    def reshape(self, *shape):
        """A view with a new shape (a copy when the strides do not allow a view); one
        entry may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if needs_grad(self):
            return grad_ops().reshape(self, shape)
        return reshape(self, shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, d0, d1):
        if needs_grad(self):
            return grad_ops().transpose(self, d0, d1)
        return transpose(self, d0, d1)

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if needs_grad(self):
            return grad_ops().permute(self, dims)
        return permute(self, dims)

    @property
    def T(self):
        if self.ndim != 2:
            raise ValueError(f".T needs a 2-D tensor, got shape {self.shape}")
        return self.transpose(0, 1)

    def unsqueeze(self, d):
        if needs_grad(self):
            return grad_ops().unsqueeze(self, d)
        return unsqueeze(self, d)

    def squeeze(self, d=None):
        if needs_grad(self):
            return grad_ops().squeeze(self, d)
        return squeeze(self, d)

    def expand(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if needs_grad(self):
            return grad_ops().expand(self, shape)
        return expand(self, shape)

    def __getitem__(self, key):
        if self.ndim == 1 and isinstance(key, int):
            return scalar_at(self, norm_index(key, self.shape_[0], 0) * self.strides_[0])
        if needs_grad(self):
            return grad_ops().getitem(self, key)
        return getitem(self, key)

    def __setitem__(self, key, value):
        if not mll_grad_disabled and self.requires_grad:
            raise RuntimeError("in-place assignment into a tensor that requires grad; "
                               "wrap it in minillm.no_grad()")
        cdef Tensor dst = self if key is Ellipsis else getitem(self, key)
        copy_(dst, value)

    # ----------------------------------------------------------------- autograd
    def backward(self, gradient=None, retain_graph=False):
        """Backpropagate from this tensor (a scalar unless `gradient` is given)."""
        if _backward is None:
            grad_ops()
        _backward(self, gradient, retain_graph=retain_graph)

    # --------------------------------------------------------------- arithmetic
    def __add__(self, other):
        return route_binary(C.MLL_ADD, self, other)

    def __radd__(self, other):
        return route_binary(C.MLL_ADD, other, self)

    def __sub__(self, other):
        return route_binary(C.MLL_SUB, self, other)

    def __rsub__(self, other):
        return route_binary(C.MLL_SUB, other, self)

    def __mul__(self, other):
        return route_binary(C.MLL_MUL, self, other)

    def __rmul__(self, other):
        return route_binary(C.MLL_MUL, other, self)

    def __truediv__(self, other):
        return route_binary(C.MLL_DIV, self, other)

    def __rtruediv__(self, other):
        return route_binary(C.MLL_DIV, other, self)

    def __neg__(self):
        if needs_grad(self):
            return grad_ops().neg(self)
        return unary_op(C.MLL_NEG, self)

    def __pos__(self):
        return self

    def __pow__(self, exponent, mod):
        if needs_grad(self):
            return grad_ops().pow(self, exponent)
        return power(self, exponent)

    def __matmul__(self, other):
        if not isinstance(other, Tensor):
            return NotImplemented
        if needs_grad2(self, other):
            return grad_ops().matmul(self, other)
        return matmul(self, other)

    def __iadd__(self, other):
        inplace_binary(C.MLL_ADD, self, other)
        return self

    def __isub__(self, other):
        inplace_binary(C.MLL_SUB, self, other)
        return self

    def __imul__(self, other):
        inplace_binary(C.MLL_MUL, self, other)
        return self

    def __itruediv__(self, other):
        inplace_binary(C.MLL_DIV, self, other)
        return self

    # ------------------------------------------------------- reductions, unary
    def sum(self, axis=None, keepdim=False):
        if needs_grad(self):
            return grad_ops().sum(self, axis, keepdim)
        return sum(self, axis, keepdim)

    def mean(self, axis=None, keepdim=False):
        if needs_grad(self):
            return grad_ops().mean(self, axis, keepdim)
        return mean(self, axis, keepdim)

    def max(self, axis=None, keepdim=False):
        if needs_grad(self):
            return grad_ops().max(self, axis, keepdim)
        return max(self, axis, keepdim)

    def argmax(self, axis=None, keepdim=False):
        return argmax(self, axis, keepdim)

    def exp(self):
        return route_unary("exp", self)

    def log(self):
        return route_unary("log", self)

    def sqrt(self):
        return route_unary("sqrt", self)

    def tanh(self):
        return route_unary("tanh", self)

    def relu(self):
        return route_unary("relu", self)

    def gelu(self):
        """GELU, tanh form (F.gelu(x, approximate="tanh"))."""
        return grad_ops().gelu(self, "tanh") if needs_grad(self) else unary_op(C.MLL_GELU, self)

    def abs(self):
        return route_unary("abs", self)

    def sigmoid(self):
        return route_unary("sigmoid", self)

    def softmax(self, axis=-1):
        if needs_grad(self):
            return grad_ops().softmax(self, axis)
        return softmax(self, axis)

    def log_softmax(self, axis=-1):
        if needs_grad(self):
            return grad_ops().log_softmax(self, axis)
        return log_softmax(self, axis)

    def zero_(self):
        fill_(self, 0.0)
        return self

    def fill_(self, value):
        fill_(self, value)
        return self

    def copy_(self, src):
        copy_(self, src)
        return self


def _rebuild(arr, dtype, requires_grad):
    cdef Tensor t = copy_contig(from_buffer(arr))
    if dtype == "bfloat16":
        t.dtype_ = C.MLL_BF16
    t.requires_grad = requires_grad
    return t


# ------------------------------------------------------------------ internals
cdef inline int64_t numel(Tensor t) noexcept nogil:
    cdef int64_t n = 1
    cdef int k
    for k in range(t.ndim):
        n *= t.shape_[k]
    return n


cdef inline bint is_contig(Tensor t) noexcept nogil:
    cdef Py_ssize_t expect = 1
    cdef int k
    for k in range(t.ndim - 1, -1, -1):
        if t.shape_[k] != 1 and t.strides_[k] != expect:
            return False
        expect *= t.shape_[k]
    return True


cdef bint bytes_overlap(Tensor a, Tensor b) noexcept:
    """True when the address ranges a and b can reach intersect (non-empty tensors)."""
    cdef char *lo_a = a.ptr
    cdef char *hi_a = a.ptr + itemsize_of(a.dtype_)
    cdef char *lo_b = b.ptr
    cdef char *hi_b = b.ptr + itemsize_of(b.dtype_)
    cdef int k
    for k in range(a.ndim):
        if a.strides_[k] < 0:
            lo_a += a.strides_[k] * (a.shape_[k] - 1) * itemsize_of(a.dtype_)
        else:
            hi_a += a.strides_[k] * (a.shape_[k] - 1) * itemsize_of(a.dtype_)
    for k in range(b.ndim):
        if b.strides_[k] < 0:
            lo_b += b.strides_[k] * (b.shape_[k] - 1) * itemsize_of(b.dtype_)
        else:
            hi_b += b.strides_[k] * (b.shape_[k] - 1) * itemsize_of(b.dtype_)
    return lo_a < hi_b and lo_b < hi_a


cdef inline float *fptr(Tensor t) noexcept nogil:
    return <float *> t.ptr


cdef inline bint needs_grad(Tensor t) noexcept:
    return not mll_grad_disabled and t.requires_grad


cdef inline bint needs_grad2(object a, object b):
    if mll_grad_disabled:
        return False
    return (isinstance(a, Tensor) and (<Tensor> a).requires_grad) or \
           (isinstance(b, Tensor) and (<Tensor> b).requires_grad)


cdef Tensor new_tensor(tuple shape, int dtype):
    """A fresh contiguous tensor owning uninitialised memory. ValueError for a negative size,
    MemoryError naming the shape when its bytes do not fit in 64-bit sizes (checks.pxi)."""
    cdef Tensor t = Tensor.__new__(Tensor)
    cdef int k
    cdef int nd = len(shape)
    cdef int64_t n = 1, nbytes = itemsize_of(dtype), s
    if nd > MAX_NDIM:
        raise ValueError(f"shape {shape} has more than {MAX_NDIM} dimensions")
    t.ndim = nd
    for k in range(nd):
        try:
            s = shape[k]
        except OverflowError:
            raise MemoryError(f"a tensor of shape {shape} has a size that does not fit in 64 bits") from None
        if s < 0:
            raise ValueError(f"invalid shape {shape}: negative size {s}")
        if mll_mul_overflows(n, s, &n) or (s > 1 and mll_mul_overflows(nbytes, s, &nbytes)):
            raise MemoryError(f"a tensor of shape {shape} with {itemsize_of(dtype)}-byte items needs more "
                              f"than 2**63 bytes")
        t.shape_[k] = s
    set_contig_strides(t)
    t.dtype_ = dtype
    t.owned_nbytes = <size_t> n * itemsize_of(dtype)
    t.owned = C.mll_alloc(t.owned_nbytes)
    if t.owned == NULL:
        raise MemoryError(f"cannot allocate {t.owned_nbytes} bytes for a tensor of shape {shape}")
    t.ptr = <char *> t.owned
    return t


cdef Tensor new_like_shape(Tensor t, int dtype):
    cdef Tensor out = Tensor.__new__(Tensor)
    cdef int k
    cdef int64_t n = 1
    out.ndim = t.ndim
    for k in range(t.ndim):
        out.shape_[k] = t.shape_[k]
        n *= t.shape_[k]
    if not extent_fits(t.ndim, t.shape_, itemsize_of(dtype)):
        raise MemoryError(f"a tensor of shape {t.shape} as {_DTYPE_NAMES[dtype]} needs more than 2**63 bytes")
    set_contig_strides(out)
    out.dtype_ = dtype
    out.owned_nbytes = <size_t> n * itemsize_of(dtype)
    out.owned = C.mll_alloc(out.owned_nbytes)
    if out.owned == NULL:
        raise MemoryError(f"cannot allocate {out.owned_nbytes} bytes")
    out.ptr = <char *> out.owned
    return out


cdef inline void set_contig_strides(Tensor t) noexcept:
    cdef Py_ssize_t s = 1
    cdef int k
    for k in range(t.ndim - 1, -1, -1):
        t.strides_[k] = s
        s *= t.shape_[k]


cdef Tensor make_view(Tensor src, int nd, Py_ssize_t *shape, Py_ssize_t *strides, char *ptr):
    """A view of src's memory with the given geometry; ValueError when the shape's extent (its
    sizes' product, empty axes counted as 1, in bytes) does not fit in 64 bits, so that no
    element count or offset computed from the view can overflow."""
    if not extent_fits(nd, shape, itemsize_of(src.dtype_)):
        raise ValueError(f"a view of shape {tuple([shape[k] for k in range(nd)])} is too large: its "
                         f"element count or byte offsets overflow 64-bit sizes")
    cdef Tensor t = Tensor.__new__(Tensor)
    cdef int k
    t.ndim = nd
    for k in range(nd):
        t.shape_[k] = shape[k]
        t.strides_[k] = strides[k]
    t.ptr = ptr
    t.dtype_ = src.dtype_
    t.readonly = src.readonly
    t.base = src if src.owned != NULL else src.base
    return t


cdef Tensor from_buffer(object obj):
    cdef Py_buffer view
    cdef Tensor t
    cdef int k, code
    cdef Py_ssize_t item
    PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO)
    try:
        fmt = (view.format or b"B").decode().lstrip("@=<")
        item = view.itemsize
        code = -1
        if fmt == "f" and item == 4:
            code = C.MLL_F32
        elif fmt in ("i", "l") and item == 4:
            code = C.MLL_I32
        elif fmt in ("l", "q") and item == 8:
            code = C.MLL_I64
        elif fmt in ("B", "?") and item == 1:
            code = C.MLL_U8
        elif fmt == "H" and item == 2:
            code = C.MLL_U16
        if code < 0:
            raise TypeError(f"cannot view a buffer of format {fmt!r} (itemsize {item}) as a tensor: "
                            "expected float32, int32, int64, uint8 or uint16")
        if view.ndim > MAX_NDIM:
            raise ValueError(f"buffer has {view.ndim} dimensions; at most {MAX_NDIM} are supported")
        t = Tensor.__new__(Tensor)
        t.ndim = view.ndim
        t.dtype_ = code
        t.ptr = <char *> view.buf
        t.readonly = view.readonly
        t.base = obj
        for k in range(view.ndim):
            t.shape_[k] = view.shape[k]
            if view.strides == NULL:
                pass
            elif view.strides[k] % item != 0:
                raise ValueError("buffer strides are not a multiple of the item size")
            else:
                t.strides_[k] = view.strides[k] // item
        if view.strides == NULL:
            set_contig_strides(t)
        return t
    finally:
        PyBuffer_Release(&view)


cdef object scalar_at(Tensor t, Py_ssize_t offset):
    """Element at an element offset from t.ptr, as a Python number."""
    if t.dtype_ == C.MLL_F32:
        return (<float *> t.ptr)[offset]
    if t.dtype_ == C.MLL_I32:
        return (<int *> t.ptr)[offset]
    if t.dtype_ == C.MLL_I64:
        return (<int64_t *> t.ptr)[offset]
    if t.dtype_ == C.MLL_U8:
        return (<unsigned char *> t.ptr)[offset]
    if t.dtype_ == C.MLL_U16:
        return (<unsigned short *> t.ptr)[offset]
    cdef uint32_t bits = (<uint16_t *> t.ptr)[offset]
    cdef float value
    bits <<= 16
    memcpy(&value, &bits, 4)        # bfloat16 is the top half of a float32
    return value


def bf16_bits_to_f32(a):
    return (_np.asarray(a, dtype=_np.uint16).astype(_np.uint32) << 16).view(_np.float32)


cdef void strided_copy_bytes(char *dst, const Py_ssize_t *dstr, const char *src, const Py_ssize_t *sstr,
                             const Py_ssize_t *shape, int nd, int item) noexcept nogil:
    """dst[i...] = src[i...] for every index; strides in elements. Innermost runs use memcpy
    when both are unit-stride."""
    cdef Py_ssize_t idx[MAX_NDIM]
    cdef Py_ssize_t total = 1, i, inner, j
    cdef int k
    cdef char *d
    cdef const char *s
    if nd == 0:
        memcpy(dst, src, item)
        return
    for k in range(nd):
        total *= shape[k]
        idx[k] = 0
    if total == 0:
        return
    inner = shape[nd - 1]
    while True:
        d = dst
        s = src
        for k in range(nd - 1):
            d += idx[k] * dstr[k] * item
            s += idx[k] * sstr[k] * item
        if dstr[nd - 1] == 1 and sstr[nd - 1] == 1:
            memcpy(d, s, inner * item)
        else:
            for j in range(inner):
                memcpy(d + j * dstr[nd - 1] * item, s + j * sstr[nd - 1] * item, item)
        k = nd - 2
        while k >= 0:
            idx[k] += 1
            if idx[k] < shape[k]:
                break
            idx[k] = 0
            k -= 1
        if k < 0:
            return


cdef Tensor copy_contig(Tensor t):
    """A contiguous copy of t (any strides, any dtype)."""
    cdef Tensor out = new_like_shape(t, t.dtype_)
    cdef int64_t n = numel(t)
    cdef int64_t sh[MAX_NDIM]
    cdef int64_t st[MAX_NDIM]
    cdef int k
    if n == 0:
        return out
    if is_contig(t):
        memcpy(out.ptr, t.ptr, n * itemsize_of(t.dtype_))
        return out
    for k in range(t.ndim):
        sh[k] = t.shape_[k]
        st[k] = t.strides_[k]
    with nogil:
        C.mll_copy_strided(t.ptr, out.ptr, t.ndim, sh, st, itemsize_of(t.dtype_))
    return out


# ----------------------------------------------------------------- factories
def owns_storage(Tensor t):
    """True when t holds its own storage (made by minillm, not a view of another tensor or of a
    NumPy array): only then can t's buffer be changed without touching another object's data."""
    return t.owned != NULL and t.base is None


def empty(*shape, dtype="float32", requires_grad=False):
    """Uninitialised tensor of the given shape."""
    if len(shape) == 1 and not isinstance(shape[0], int):
        shape = shape[0]
    cdef Tensor t = new_tensor(shape_tuple(shape), dtype_code(dtype))
    t.requires_grad = requires_grad
    return t


def zeros(*shape, dtype="float32", requires_grad=False):
    """Tensor of zeros."""
    t = empty(*shape, dtype=dtype, requires_grad=requires_grad)
    memset((<Tensor> t).ptr, 0, numel(<Tensor> t) * itemsize_of((<Tensor> t).dtype_))
    return t


def full(shape, value, dtype="float32", requires_grad=False):
    """Tensor filled with `value`."""
    t = empty(shape, dtype=dtype)
    fill_(t, value)
    (<Tensor> t).requires_grad = requires_grad
    return t


def ones(*shape, dtype="float32", requires_grad=False):
    if len(shape) == 1 and not isinstance(shape[0], int):
        shape = shape[0]
    return full(shape, 1.0, dtype=dtype, requires_grad=requires_grad)


def empty_like(Tensor t, dtype=None):
    return new_like_shape(t, t.dtype_ if dtype is None else dtype_code(dtype))


def zeros_like(Tensor t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype=t.dtype if dtype is None else dtype, requires_grad=requires_grad)


def ones_like(Tensor t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype=t.dtype if dtype is None else dtype, requires_grad=requires_grad)


def full_like(Tensor t, value, dtype=None):
    return full(t.shape, value, dtype=t.dtype if dtype is None else dtype)


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values in [start, stop) (int64 for integer arguments, else float32)."""
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        ints = all(isinstance(v, int) for v in (start, stop, step))
        dtype = "int64" if ints else "float32"
    return from_buffer(_np.arange(start, stop, step, dtype=_NUMPY_DTYPES[dtype_code(dtype)]))


def tensor(data, dtype=None, requires_grad=False):
    """A new tensor holding a copy of `data` (nested lists, numbers, NumPy arrays or a
    Tensor). Python floats give float32 and ints give int64 unless `dtype` says otherwise."""
    cdef Tensor t
    if isinstance(data, Tensor):
        t = copy_contig(<Tensor> data)
        if dtype is not None and dtype_code(dtype) != t.dtype_:
            t = cast(t, dtype)
    else:
        if dtype is not None:
            code = dtype_code(dtype)
            if code == C.MLL_BF16:
                return cast(tensor(data, "float32"), "bfloat16")
            arr = _np.array(data, dtype=_NUMPY_DTYPES[code])
        else:
            arr = _np.array(data)
            if arr.dtype.kind == "f":
                arr = arr.astype(_np.float32)
            elif arr.dtype.kind in "iu":
                arr = arr.astype(_np.int64)
            elif arr.dtype.kind == "b":
                arr = arr.astype(_np.uint8)
            else:
                raise TypeError(f"cannot make a tensor from data of dtype {arr.dtype}")
        if not arr.flags.c_contiguous:      # (np.ascontiguousarray would make a 0-d array 1-d)
            arr = arr.copy(order="C")
        t = copy_contig(from_buffer(arr))
    t.requires_grad = requires_grad
    return t


def from_numpy(arr):
    """Zero-copy Tensor viewing `arr` (see Tensor.from_numpy)."""
    return from_buffer(arr)


def as_tensor(data, dtype=None):
    """`data` itself when it is already a Tensor of that dtype, else minillm.tensor(data)."""
    if isinstance(data, Tensor) and (dtype is None or dtype_code(dtype) == (<Tensor> data).dtype_):
        return data
    return tensor(data, dtype=dtype)


# ---------------------------------------------------------------- Vector, Matrix, growable
cdef class Vector(Tensor):
    """A 1-D float32 tensor: Vector([1, 2, 3]) or Vector(n) for n zeros."""
    def __init__(self, data, dtype="float32"):
        cdef Tensor src = zeros(data, dtype=dtype) if isinstance(data, int) else tensor(data, dtype=dtype)
        if src.ndim != 1:
            raise ValueError(f"Vector needs 1-D data, got shape {src.shape}")
        adopt(self, src)


cdef class Matrix(Tensor):
    """A 2-D float32 tensor: Matrix([[1, 2], [3, 4]]) or Matrix((rows, cols)) for zeros."""
    def __init__(self, data, dtype="float32"):
        cdef Tensor src
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(v, int) for v in data):
            src = zeros(data, dtype=dtype)
        else:
            src = tensor(data, dtype=dtype)
        if src.ndim != 2:
            raise ValueError(f"Matrix needs 2-D data, got shape {src.shape}")
        adopt(self, src)

    @property
    def rows(self):
        return self.shape_[0]

    @property
    def cols(self):
        return self.shape_[1]


cdef void adopt(Tensor dst, Tensor src):
    """dst takes over src's geometry and keeps src alive as its base."""
    cdef int k
    dst.ndim = src.ndim
    for k in range(src.ndim):
        dst.shape_[k] = src.shape_[k]
        dst.strides_[k] = src.strides_[k]
    dst.dtype_ = src.dtype_
    dst.ptr = src.ptr
    dst.base = src


class GrowableTensor:
    """A tensor that grows along axis 0 with amortised doubling (token buffers, KV caches).

    `row_shape` is the shape of one row; `append(rows)` adds a (n, *row_shape) tensor (or one
    row of row_shape); `.tensor` is a view of the filled part (n, *row_shape), valid until the
    next append that grows the buffer."""

    def __init__(self, row_shape=(), dtype="float32", capacity=16):
        self.row_shape = shape_tuple(row_shape)
        self.dtype = _DTYPE_NAMES[dtype_code(dtype)]
        self._buf = empty((_builtins.max(int(capacity), 1),) + self.row_shape, dtype=self.dtype)
        self.length = 0

    @property
    def capacity(self):
        return self._buf.shape[0]

    def __len__(self):
        return self.length

    def reserve(self, n):
        """Make room for at least n rows in total."""
        if n <= self.capacity:
            return
        cap = self.capacity
        while cap < n:
            cap *= 2
        new = empty((cap,) + self.row_shape, dtype=self.dtype)
        if self.length:
            new[0:self.length] = self._buf[0:self.length]
        self._buf = new

    def append(self, rows):
        """Append one row (shape row_shape) or a block of rows (n, *row_shape)."""
        if not isinstance(rows, Tensor):
            rows = tensor(rows, dtype=self.dtype)
        shape = rows.shape
        if shape == self.row_shape:
            rows = rows.reshape((1,) + shape)
        elif shape[1:] != self.row_shape:
            raise ValueError(f"append: expected rows of shape {self.row_shape} or "
                             f"(n, {', '.join(map(str, self.row_shape))}), got {shape}")
        n = rows.shape[0]
        self.reserve(self.length + n)
        self._buf[self.length:self.length + n] = rows
        self.length += n
        return self

    def clear(self):
        self.length = 0

    def truncate(self, n):
        if not 0 <= n <= self.length:
            raise ValueError(f"truncate: {n} is outside [0, {self.length}]")
        self.length = n

    @property
    def tensor(self):
        return self._buf[0:self.length]

    @property
    def storage(self):
        """The whole buffer, capacity rows, the filled ones first (a kernel that is told the
        length itself takes it without a view; valid until the next append that grows it)."""
        return self._buf

    def __repr__(self):
        return f"GrowableTensor(length={self.length}, capacity={self.capacity}, row_shape={self.row_shape})"
