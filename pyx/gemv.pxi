# gemv.pxi: bindings of gemv.c: the linear layers of a decoding step (few rows, weights
# streamed once) over float32, bf16 (Bf16Matrix) or int8 (Int8Matrix) weight matrices, and the
# huge-page advice for the weights they stream.


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


def decode_pool_stats():
    """What the decoding kernels' thread pool has measured (gemv.c): {'helpers_ns', 'alone_ns'}
    (nanoseconds per unit of work with the helper threads and on the calling thread alone, None
    until measured), 'windows' (windows of jobs measured) and 'alone' (whether the current
    window runs on the calling thread alone: the faster way, or the other one being tried)."""
    cdef double h, a
    cdef int64_t w
    cdef int alone
    C.mll_decode_pool_stats(&h, &a, &w, &alone)
    return {"helpers_ns": h if h >= 0 else None, "alone_ns": a if a >= 0 else None, "windows": w,
            "alone": bool(alone)}


def set_decode_pool_tuning(bint on):
    """True (the default): each decoding job runs the way the pool measured faster, with the
    helper threads or on the calling thread alone (decode_pool_stats); False: always with the
    helpers, as a fixed-thread engine would (for comparisons). Results are the same either way."""
    C.mll_decode_pool_tuning(1 if on else 0)


cdef const float *_weight_ptr(str owner, dict weights, str name, tuple shape) except? NULL:
    """fptr of weights[name], a contiguous float32 tensor of `shape`; NULL if absent or None."""
    t = weights.get(name)
    if t is None:
        return NULL
    cdef Tensor x = as_f32(t, f"{owner} {name}")
    if not is_contig(x) or x.shape != shape:
        raise ValueError(f"{owner}: {name} must be a contiguous tensor of shape {shape}, got shape "
                         f"{t.shape}{'' if is_contig(x) else ' (not contiguous)'}")
    return fptr(x)


cdef class Int8Matrix:
    """A weight matrix W (N, K) of the decoding kernels as int8 values and one float32 scale per
    `group` consecutive values of a row: W[n, k] = values[n, k] * scales[n, k // group].
    Built from values, a contiguous uint8 Tensor (N, K) holding the int8 bytes (two's
    complement), and scales, a contiguous float32 Tensor (N, K // group); K and group are
    multiples of 4 and group divides K. It keeps them only in the kernels' tiles of 16 rows
    (`tiles`, `tile_scales`; gemv.c, "int8 tiles"): `values` and `scales` are unpacked from
    them on request. minillm.quantize.quantize_int8 builds one from a float32 W."""
    cdef readonly Tensor tiles, tile_scales
    cdef readonly int64_t group
    cdef readonly tuple shape

    def __init__(self, values, scales, int64_t group):
        if not isinstance(values, Tensor) or (<Tensor>values).dtype_ != C.MLL_U8 or values.ndim != 2 \
                or not is_contig(<Tensor>values):
            raise ValueError(f"Int8Matrix: values must be a contiguous 2-D uint8 tensor holding int8 bytes, got "
                             f"{_describe(values)}")
        cdef int64_t N = values.shape[0], K = values.shape[1]
        if group < 1 or K % group:
            raise ValueError(f"Int8Matrix: group {group} must be >= 1 and divide the {K} columns")
        if K % 4 or group % 4:
            raise ValueError(f"Int8Matrix: the columns ({K}) and the group ({group}) must be multiples of 4 "
                             f"(the kernels read 4 columns at a time)")
        if not isinstance(scales, Tensor) or (<Tensor>scales).dtype_ != C.MLL_F32 \
                or scales.shape != (N, K // group) or not is_contig(<Tensor>scales):
            raise ValueError(f"Int8Matrix: scales must be a contiguous float32 tensor of shape {(N, K // group)}, "
                             f"got {_describe(scales)}")
        cdef int64_t blocks = (N + 15) // 16
        self.tiles = new_tensor((blocks, 16 * K), C.MLL_U8)
        self.tile_scales = new_tensor((blocks, 16 * (K // group)), C.MLL_F32)
        self.group, self.shape = group, (N, K)
        cdef Tensor v = <Tensor>values, s = <Tensor>scales
        with nogil:
            C.mll_q8_tile(<const int8_t *>v.ptr, fptr(s), N, K, group, <uint8_t *>self.tiles.ptr,
                          fptr(self.tile_scales))

    @property
    def values(self):
        """The int8 bytes (N, K) as a uint8 Tensor (unpacked from the tiles)."""
        cdef int64_t N = self.shape[0], K = self.shape[1]
        cdef Tensor q = new_tensor((N, K), C.MLL_U8)
        with nogil:
            C.mll_q8_untile(<const uint8_t *>self.tiles.ptr, fptr(self.tile_scales), N, K, self.group,
                            <int8_t *>q.ptr, NULL)
        return q

    @property
    def scales(self):
        """The scales (N, K // group) as a float32 Tensor (unpacked from the tiles)."""
        cdef int64_t N = self.shape[0], K = self.shape[1]
        cdef Tensor s = new_tensor((N, K // self.group), C.MLL_F32)
        with nogil:
            C.mll_q8_untile(<const uint8_t *>self.tiles.ptr, fptr(self.tile_scales), N, K, self.group, NULL,
                            fptr(s))
        return s

    @property
    def dtype(self):
        return "int8"

    def rows(self, int64_t start, int64_t stop):
        """Rows [start, stop) as an Int8Matrix of their own."""
        q = self.values.numpy()[start:stop]
        s = self.scales.numpy()[start:stop]
        return Int8Matrix(from_buffer(_np.ascontiguousarray(q)), from_buffer(_np.ascontiguousarray(s)), self.group)

    def dequantize(self):
        """W as a float32 Tensor (N, K)."""
        q = self.values.numpy().view(_np.int8).astype(_np.float32)
        N, K = q.shape
        w = q.reshape(N, K // self.group, self.group) * self.scales.numpy()[:, :, None]
        return from_buffer(_np.ascontiguousarray(w.reshape(N, K), dtype=_np.float32))

    def __repr__(self):
        return f"Int8Matrix(shape={self.shape}, group={self.group})"


cdef class Bf16Matrix:
    """A weight matrix W (N, K) of the decoding kernels in bfloat16, kept only in the kernels'
    blocks of 4 rows (`blocks`; gemv.c, "bf16 blocks": K padded to a multiple of 32, N to 4,
    with zeros); `values` unpacks them. Built from a bfloat16 Tensor (N, K), or a float32 one,
    rounded to nearest even (minillm.quantize.decoding_weight(w, "bf16") builds one)."""
    cdef readonly Tensor blocks
    cdef readonly tuple shape

    def __init__(self, w):
        if not isinstance(w, Tensor) or w.ndim != 2 or (<Tensor>w).dtype_ not in (C.MLL_BF16, C.MLL_F32):
            raise ValueError(f"Bf16Matrix: expected a 2-D bfloat16 or float32 tensor, got {_describe(w)}")
        cdef Tensor v = as_contig(w if (<Tensor>w).dtype_ == C.MLL_BF16 else w.astype("bfloat16"))
        cdef int64_t N = v.shape_[0], K = v.shape_[1]
        self.blocks = new_tensor(((N + 3) // 4, 4 * ((K + 31) // 32 * 32)), C.MLL_BF16)
        self.shape = (N, K)
        with nogil:
            C.mll_bf16_pack(<const uint16_t *>v.ptr, N, K, <uint16_t *>self.blocks.ptr)

    @property
    def values(self):
        """W (N, K) as a bfloat16 Tensor (unpacked from the blocks)."""
        cdef int64_t N = self.shape[0], K = self.shape[1]
        cdef Tensor w = new_tensor((N, K), C.MLL_BF16)
        with nogil:
            C.mll_bf16_unpack(<const uint16_t *>self.blocks.ptr, N, K, <uint16_t *>w.ptr)
        return w

    @property
    def dtype(self):
        return "bfloat16"

    @property
    def nbytes(self):
        """Bytes of the blocks (the values with their padding): what a step streams."""
        return self.blocks.nbytes

    def rows(self, int64_t start, int64_t stop):
        """Rows [start, stop) as a Bf16Matrix of their own."""
        return Bf16Matrix(self.values[start:stop])

    def __repr__(self):
        return f"Bf16Matrix(shape={self.shape})"


cdef object bf16_packed(object t):
    """t as the kernels read it: a bfloat16 Tensor packed into a Bf16Matrix (a copy), any
    other weight as it is."""
    return Bf16Matrix(t) if isinstance(t, Tensor) and (<Tensor>t).dtype_ == C.MLL_BF16 else t


def _describe(t):
    if isinstance(t, Tensor):
        return f"{t.dtype} tensor of shape {t.shape}{'' if is_contig(<Tensor>t) else ' (not contiguous)'}"
    return type(t).__name__


cdef C.mll_matrix _matrix_of(str owner, dict weights, str name, tuple shape) except *:
    """weights[name] as an mll_matrix: a contiguous float32 Tensor, a Bf16Matrix or an
    Int8Matrix, of `shape`; data NULL if absent or None."""
    cdef C.mll_matrix m
    m.data, m.scale, m.dtype, m.group = NULL, NULL, C.MLL_F32, 0
    t = weights.get(name)
    if t is None:
        return m
    cdef Tensor x
    if isinstance(t, Int8Matrix):
        if t.shape != shape:
            raise ValueError(f"{owner}: {name} must have shape {shape}, got an Int8Matrix of shape {t.shape}")
        m.data, m.scale = <const void *>(<Int8Matrix>t).tiles.ptr, fptr((<Int8Matrix>t).tile_scales)
        m.dtype, m.group = C.MLL_I8, (<Int8Matrix>t).group
        return m
    if isinstance(t, Bf16Matrix):
        if t.shape != shape:
            raise ValueError(f"{owner}: {name} must have shape {shape}, got a Bf16Matrix of shape {t.shape}")
        m.data, m.dtype = <const void *>(<Bf16Matrix>t).blocks.ptr, C.MLL_BF16
        return m
    x = as_f32(t, f"{owner} {name}")
    if not is_contig(x) or x.shape != shape:
        raise ValueError(f"{owner}: {name} must be a contiguous float32, bfloat16 or int8 matrix of shape {shape}, "
                         f"got {_describe(t)}")
    m.data = <const void *>x.ptr
    return m


cdef C.mll_matrix matrix_rows(C.mll_matrix m, int64_t r, int64_t K) noexcept:
    """rows [r, ...) of m (K columns), in m's encoding (mll_matrix_rows)"""
    return C.mll_matrix_rows(&m, r, K)


def decode_linear(x, weight, bias=None, add=None, bint gelu=False):
    """y (..., N) = x (..., K) @ W^T + bias, (GELU, tanh form), + add: the decoding steps'
    linear layer with W a float32 Tensor (N, K), a Bf16Matrix (a bfloat16 Tensor is packed into
    one, a copy) or an Int8Matrix; x, bias, add float32. The result is computed in float32 from
    the stored weights."""
    owner = "decode_linear"
    cdef Tensor xx = as_contig(as_f32(x, "decode_linear x"))
    weight = bf16_packed(weight)
    shape = tuple(weight.shape) if isinstance(weight, (Tensor, Int8Matrix, Bf16Matrix)) else None
    if shape is None or len(shape) != 2:
        raise ValueError(f"{owner}: weight must be a 2-D float32/bfloat16 Tensor or an Int8Matrix, got "
                         f"{_describe(weight)}")
    cdef int64_t N = shape[0], K = shape[1]
    if xx.ndim < 1 or xx.shape_[xx.ndim - 1] != K:
        raise ValueError(f"{owner}: input of shape {x.shape} does not match weight of shape {shape}")
    cdef C.mll_matrix m = _matrix_of(owner, {"weight": weight}, "weight", (N, K))
    out_shape = tuple(x.shape[:-1]) + (N,)
    extra = {"bias": bias, "add": add}
    cdef const float *bp = _weight_ptr(owner, extra, "bias", (N,))
    cdef const float *ap = _weight_ptr(owner, extra, "add", out_shape)
    cdef Tensor y = new_tensor(out_shape, C.MLL_F32)
    cdef int64_t M = numel(y) // N if N else 0
    cdef int r
    with nogil:
        r = C.mll_linear(fptr(xx), &m, bp, ap, fptr(y), M, N, K, 1 if gelu else 0)
    if r:
        raise MemoryError(f"{owner}: no memory for the quantized or split input of shape {x.shape}")
    return y
