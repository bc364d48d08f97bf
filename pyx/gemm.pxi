# gemm.pxi: bindings of gemm.c: matmul on Tensors, and prepare_gemm, the argument preparation
# that matmul and matmul_bf16 (gemm_bf16.pxi) share: shapes, broadcast batch axes, NumPy's
# rules for 1-D operands, the transpose flags and leading dimensions that let strided and
# transposed views reach the GEMM without copies, and the edge cases (an empty result, K == 0).


cdef class GemmArgs:
    """The operands of alpha * op(A) @ op(B) + beta * O as the GEMM takes them: row-major A, B
    with transpose flags ta, tb and leading dimensions lda, ldb (elements of their dtype),
    `nbatch` products whose matrices start sa, sb elements apart (0: the same matrix for all)
    and M * N apart in O. done: O already holds the result (an empty product, or K == 0)."""
    cdef Tensor A, B, O
    cdef int64_t M, N, K, nbatch, lda, ldb, sa, sb
    cdef bint ta, tb, done, squeeze_m, squeeze_n
    cdef tuple batch, out_shape

    cdef object result(self):
        """O in the shape NumPy's matmul gives (a 1-D operand's axis is dropped)."""
        if not (self.squeeze_m or self.squeeze_n):
            return self.O
        shape = self.out_shape[:-2]
        if not self.squeeze_m:
            shape += self.out_shape[-2:-1]
        if not self.squeeze_n:
            shape += self.out_shape[-1:]
        return reshape(self.O, shape)


cdef Tensor gemm_operand_tensor(object x, str what, bint allow_bf16):
    cdef Tensor t = as_tensor_arg(x, what)
    if t.dtype_ == C.MLL_F32 or (allow_bf16 and t.dtype_ == C.MLL_BF16):
        return t
    raise TypeError(f"{what}: expected a float32{' or bfloat16' if allow_bf16 else ''} tensor, got {t.dtype}")


cdef GemmArgs prepare_gemm(str what, object a, object b, bint transpose_a, bint transpose_b, object out,
                           float beta, bint allow_bf16):
    """Checks and lays out the operands of `what` (matmul or matmul_bf16): a (..., M, K),
    b (..., K, N) or 1-D, op() transposing the last two axes when transpose_* is set, batch
    axes broadcast; out: None (a new float32 tensor) or a contiguous float32 tensor of the
    result's shape (needed when beta != 0). When the product is empty or K == 0, O is filled
    here (beta * O, or zeros) and done is set."""
    cdef GemmArgs g = GemmArgs.__new__(GemmArgs)
    cdef Tensor A = gemm_operand_tensor(a, what, allow_bf16), B = gemm_operand_tensor(b, what, allow_bf16)
    if A.ndim == 0 or B.ndim == 0:
        raise ValueError(f"{what}: 0-d operands are not allowed (shapes {A.shape}, {B.shape})")
    g.squeeze_m = A.ndim == 1
    g.squeeze_n = B.ndim == 1
    if g.squeeze_m:
        A = unsqueeze(A, 0)
    if g.squeeze_n:
        B = unsqueeze(B, 1)
    if transpose_a:
        A = transpose(A, -1, -2)
    if transpose_b:
        B = transpose(B, -1, -2)
    g.M = A.shape_[A.ndim - 2]
    g.K = A.shape_[A.ndim - 1]
    g.N = B.shape_[B.ndim - 1]
    if B.shape_[B.ndim - 2] != g.K:
        raise ValueError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                         f"(inner sizes {g.K} and {B.shape_[B.ndim - 2]})")
    g.batch = broadcast_shapes(A.shape[:-2], B.shape[:-2])
    g.out_shape = out_shape = shape_tuple(g.batch + (g.M, g.N))
    g.nbatch = checked_numel(g.batch, 1)
    if out is None:
        if beta != 0.0:
            raise ValueError(f"{what}: beta != 0 needs an `out` tensor")
        g.O = new_tensor(out_shape, C.MLL_F32)
    else:
        g.O = as_inplace_f32(out, f"{what} out")
        if g.O.shape != out_shape:
            raise ValueError(f"{what}: out must be contiguous of shape {out_shape}, got {g.O.shape}")
    g.done = g.M == 0 or g.N == 0 or g.nbatch == 0 or g.K == 0
    if g.done:
        # K == 0: an empty sum, so the product is 0 and the result is beta * O
        if numel(g.O) and beta == 0.0:
            C.mll_fill(fptr(g.O), 0.0, numel(g.O))
        elif numel(g.O):
            C.mll_scale(fptr(g.O), beta, numel(g.O))
        return g
    # one GEMM over all rows when b has no batch axes and a's rows are evenly strided
    if B.ndim == 2 and A.ndim > 2:
        A2 = flatten_rows(A)
        if A2 is not None:
            A = <Tensor> A2
            g.batch = ()
            g.nbatch = 1
            g.M = A.shape_[0]
    if not gemm_operand(A, A.ndim - 2, A.ndim - 1, &g.ta, &g.lda):
        A = copy_contig(A)
        g.ta = False
        g.lda = g.K
    if not gemm_operand(B, B.ndim - 2, B.ndim - 1, &g.tb, &g.ldb):
        B = copy_contig(B)
        g.tb = False
        g.ldb = g.N
    g.sa = g.sb = 0
    if g.nbatch > 1:
        A, g.sa = batch_view(A, g.batch, &g.ta, &g.lda)
        B, g.sb = batch_view(B, g.batch, &g.tb, &g.ldb)
    g.A, g.B = A, B
    return g


def matmul(a, b, bint transpose_a=False, bint transpose_b=False, out=None, float alpha=1.0,
           float beta=0.0):
    """alpha * op(a) @ op(b) (+ beta * out): a (..., M, K), b (..., K, N) or (K, N), float32, with
    broadcast batch axes and NumPy's rules for 1-D operands. op() transposes the last two
    axes when transpose_* is set; strided and transposed views go to the GEMM without copies.
    K == 0 gives zeros (beta * out with out)."""
    cdef GemmArgs g = prepare_gemm("matmul", a, b, transpose_a, transpose_b, out, beta, False)
    if g.done:
        return g.result()
    if g.nbatch == 1:
        with nogil:
            C.mll_sgemm(g.ta, g.tb, g.M, g.N, g.K, alpha, fptr(g.A), g.lda, fptr(g.B), g.ldb, beta,
                        fptr(g.O), g.N)
    else:
        with nogil:
            C.mll_sgemm_batched(g.ta, g.tb, g.M, g.N, g.K, alpha, fptr(g.A), g.lda, g.sa, fptr(g.B), g.ldb,
                                g.sb, beta, fptr(g.O), g.N, g.M * g.N, g.nbatch)
    return g.result()


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
