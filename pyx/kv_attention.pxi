# kv_attention.pxi: bindings of kv_attention.c: one decoding step of attention over a KV cache.

from libc.math cimport sqrt as c_sqrt


def kv_attention_step(qkv, kcache, vcache, int64_t pos, scale=None):
    """One decoding step of attention over a position-major KV cache, nh query heads over nkv
    key/value heads (nkv divides nh; query head h reads kv head h / (nh / nkv)).
    qkv (B, (nh + 2 nkv) hs) float32 = [q | k | v] of the new position; kcache, vcache
    (S, B, nkv, hs) contiguous, float32 or bfloat16 (both alike; bfloat16 is written rounded to
    nearest even and read widened), with S > pos (nh follows from qkv's width). Writes row
    pos of both caches from qkv, then returns y (B, nh hs): per (b, head),
    softmax(scale * q k^T) v over rows 0 .. pos (scale defaults to 1/sqrt(hs))."""
    cdef Tensor x = as_contig(as_f32(qkv, "kv_attention_step qkv"))
    cdef Tensor kc = as_kv_cache(kcache, "kv_attention_step kcache", -1)
    cdef Tensor vc = as_kv_cache(vcache, "kv_attention_step vcache", kc.dtype_)
    if kc.ndim != 4 or kc.shape != vc.shape or not is_contig(kc) or not is_contig(vc):
        raise ValueError(f"kv_attention_step: caches must be contiguous (S, B, nkv, hs) of one shape, got "
                         f"{kcache.shape} and {vcache.shape}")
    cdef int64_t S = kc.shape_[0], B = kc.shape_[1], nkv = kc.shape_[2], hs = kc.shape_[3]
    cdef int64_t width = x.shape_[1] if x.ndim == 2 else -1
    cdef int64_t nh = width // hs - 2 * nkv if hs > 0 else 0
    if x.ndim != 2 or x.shape_[0] != B or hs < 1 or width % hs or nh < 1 or nh % nkv:
        raise ValueError(f"kv_attention_step: qkv of shape {qkv.shape} does not fit caches {kcache.shape} "
                         f"(expected ({B}, (nh + {2 * nkv}) * {hs}) with nh a multiple of {nkv})")
    if not 0 <= pos < S:
        raise ValueError(f"kv_attention_step: position {pos} is outside a cache of {S} rows")
    cdef float sc = <float>(1.0 / c_sqrt(<double>hs)) if scale is None else <float>float(scale)
    cdef Tensor y = new_tensor((B, nh * hs), C.MLL_F32)
    cdef Tensor w = new_tensor((mul_or_raise(mul_or_raise(B, nh, "kv_attention_step scratch"), pos + 1,
                                             "kv_attention_step scratch"),), C.MLL_F32)
    cdef int r
    with nogil:
        r = C.mll_kv_attention_step(fptr(x), kc.ptr, vc.ptr, kc.dtype_ == C.MLL_BF16, fptr(y), fptr(w), B, nh, nkv,
                                    hs, pos, sc)
    if r:
        raise MemoryError(f"kv_attention_step: no memory for {B} rows")
    return y
