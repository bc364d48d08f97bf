"""Weights in fewer bytes for decoding: bfloat16, and int8 with one scale per group.

A decoding step reads every weight once per token, so its speed is the weights' bytes over
the memory bandwidth: bf16 halves them, int8 quarters them. Only the Linear weights (and the
LM head) a step streams are stored this way; the decoding kernels (csrc/gemv.c) widen each
value to float32 as they read it, so activations, norms and the KV cache stay float32.

int8 is symmetric, per group of `group` consecutive values of a row:
    scale = max |w| over the group / 127,   q = round(w / scale) in [-127, 127]
so W[n, k] ~ q[n, k] * scale[n, k // group], with an error of at most scale / 2 per value.
The default group, 64, costs a float32 scale per 64 bytes (1.0625 bytes per weight) and
keeps the step within a few percent of the plain int8 roof; smaller groups follow outliers
more closely for more bytes. Rows whose length 64 does not divide take 32 or 16 (the vector
kernels' unit), else the whole row.

    from minillm.quantize import quantize_int8, decoding_weight
    m = quantize_int8(w)              # w (N, K) float32 -> _C.Int8Matrix
    w2 = decoding_weight(w, "bf16")   # float32 | bf16 Tensor | Int8Matrix for a dtype name
"""
import numpy as np

from minillm import _C

__all__ = ["DTYPES", "int8_group", "quantize_int8", "decoding_weight"]

# the weight dtypes a decoder takes, by the names the command line uses
DTYPES = ("float32", "bf16", "int8")


def int8_group(K):
    """The default int8 group for rows of K values: 64, or 32 / 16 / K where 64 does not divide K."""
    for g in (64, 32, 16):
        if K % g == 0:
            return g
    return K


def quantize_int8(w, group=None):
    """w (N, K) float32 (a Tensor or NumPy array) -> _C.Int8Matrix with one scale per `group`
    values of a row (default int8_group(K)); see the module docstring. A group of zeros gets
    scale 0. Non-finite weights raise ValueError."""
    a = np.asarray(w.detach() if isinstance(w, _C.Tensor) else w)
    if a.ndim != 2 or a.dtype != np.float32:
        raise ValueError(f"quantize_int8: expected a 2-D float32 matrix, got {a.dtype} of shape {a.shape}")
    N, K = a.shape
    group = int8_group(K) if group is None else int(group)
    if group < 1 or K % group:
        raise ValueError(f"quantize_int8: group {group} must be >= 1 and divide the {K} columns")
    if not np.isfinite(a).all():
        raise ValueError(f"quantize_int8: the {N} x {K} matrix has non-finite values")
    g = a.reshape(N, K // group, group)
    scale = np.abs(g).max(axis=2) / np.float32(127)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(g / safe[:, :, None]), -127, 127).astype(np.int8).reshape(N, K)
    values = _C.from_numpy(np.ascontiguousarray(q.view(np.uint8)))
    scales = _C.from_numpy(np.ascontiguousarray(scale, dtype=np.float32))
    return _C.Int8Matrix(values, scales, group)


def decoding_weight(w, dtype):
    """The Linear weight w (N, K) (float32 or bfloat16) stored as `dtype` for the decoding
    kernels: "float32" (w itself when float32), "bf16" (a bfloat16 Tensor, nearest even; w
    itself when bf16), "int8" (an Int8Matrix)."""
    if dtype not in DTYPES and dtype != "bfloat16":
        raise ValueError(f"unknown weight dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    w = w.detach().contiguous()
    if dtype in ("bf16", "bfloat16"):
        return w if w.dtype == "bfloat16" else w.astype("bfloat16")
    if w.dtype != "float32":
        w = w.astype("float32")
    return w if dtype == "float32" else quantize_int8(w)
