"""Weights in fewer bytes for decoding: bfloat16, and int8 with one scale per group.

A decoding step reads every weight once per token, so its speed is the weights' bytes over
the memory bandwidth: bf16 halves them, int8 quarters them. Only the Linear weights (and the
LM head) a step streams are stored this way; norms stay float32 (a bf16 or int8 plan's KV cache
is bfloat16: KV_DTYPES, minillm/models/decoder.py), and the decoding kernels (csrc/gemv.c)
take the products as each dtype's fastest exact form: bf16
widened to float32 against float32 x (or, on CPUs with AVX512-BF16, x rounded to bf16 too and
the pairs' products summed by VDPBF16PS), int8 against x quantized per group (integer sums).

int8 is symmetric, per group of `group` consecutive values of a row:
    scale = max |w| over the group / 127,   q = round(w / scale) in [-127, 127]
so W[n, k] ~ q[n, k] * scale[n, k // group], with an error of at most scale / 2 per value.
The default group, 64, costs a float32 scale per 64 bytes (1.0625 bytes per weight) and
keeps the step within a few percent of the plain int8 roof; smaller groups follow outliers
more closely for more bytes. Rows whose length 64 does not divide take 32 or 16, else the
whole row. The kernels read 4 columns at a time (in tiles of 16 rows, csrc/gemv.c), so K and
the group must be multiples of 4.

    from minillm.quantize import quantize_int8, decoding_weight
    m = quantize_int8(w)              # w (N, K) float32 -> _C.Int8Matrix
    w2 = decoding_weight(w, "bf16")   # float32 Tensor | _C.Bf16Matrix | Int8Matrix for a dtype name

A model folder can hold the int8 weights themselves (`minillm quantize`,
minillm.inference.quantize_folder): a family's HuggingFace layout where every Linear weight the decode plan streams, and
the LM head, is two tensors, NAME (I8, (N, K), the Linear's (out, in) orientation) and
NAME.scales (F32, (N, K / group)), and config.json carries
    "quantization_config": {"quant_method": "minillm-int8", "group_size": 64, "bits": 8,
                            "symmetric": true}
Loading such a folder (the families' load_pretrained, via read_int8) gives a model whose
forward runs on the dequantized float32 weights and whose `int8_weights` (name -> Int8Matrix)
the decode plan streams as stored, with no second quantization.
"""
import numpy as np

from minillm import _C
from minillm.serialization import as_bf16_bits, round_bf16

__all__ = ["DTYPES", "KV_DTYPES", "int8_group", "quantize_int8", "decoding_weight", "QUANT_METHOD", "quantization_config",
           "check_quantization", "int8_arrays", "read_int8", "split_int8", "bf16_array", "FOLDER_DTYPES"]

# the weight dtypes a decoder takes, by the names the command line uses
DTYPES = ("float32", "bf16", "int8")
KV_DTYPES = ("float32", "bfloat16")          # what a KV cache holds (minillm.generate.KVCache)


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
    if group % 4:
        raise ValueError(f"quantize_int8: int8 weights need the columns ({K}) and the group ({group}) to be "
                         f"multiples of 4")
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
    kernels: "float32" (w itself when float32), "bf16" (a Bf16Matrix: w's values, rounded to
    nearest even when float32, in the kernels' blocks of 4 rows, a copy), "int8" (an
    Int8Matrix)."""
    if dtype not in DTYPES and dtype != "bfloat16":
        raise ValueError(f"unknown weight dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    w = w.detach().contiguous()
    if dtype in ("bf16", "bfloat16"):
        return _C.Bf16Matrix(w)
    if w.dtype != "float32":
        w = w.astype("float32")
    return w if dtype == "float32" else quantize_int8(w)


# ====================================================================== int8 / bf16 model folders
QUANT_METHOD = "minillm-int8"
# the dtypes `minillm quantize` writes
FOLDER_DTYPES = ("int8", "bf16")


def quantization_config(group=64):
    """config.json's quantization_config of an int8 folder (group: the default group size)."""
    return {"quant_method": QUANT_METHOD, "group_size": int(group), "bits": 8, "symmetric": True}


def check_quantization(hf, where):
    """None for a config.json dict without quantization_config, else that dict, checked to be
    minillm's int8 (ValueError naming `where` and the field for anything else)."""
    q = hf.get("quantization_config") if isinstance(hf, dict) else None
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else q
    if method != QUANT_METHOD:
        raise ValueError(f"{where}: quantization_config quant_method {method!r} is not supported (minillm "
                         f"reads {QUANT_METHOD!r} folders, written by `minillm quantize`)")
    if q.get("bits", 8) != 8 or q.get("symmetric", True) is not True:
        raise ValueError(f"{where}: quantization_config must have bits 8 and symmetric true, got bits "
                         f"{q.get('bits')!r}, symmetric {q.get('symmetric')!r}")
    return q


def int8_arrays(name, w, group=None, stored=None):
    """{name: int8 (N, K), name + ".scales": float32 (N, K / group)} of the weight w (N, K)
    (float32 or bf16 Tensor) quantized with quantize_int8, or of `stored` (an Int8Matrix of w,
    e.g. an int8 folder's) when given and of that group; NumPy copies, ready to save."""
    if stored is not None and group in (None, stored.group):
        m = stored
    else:
        try:
            m = decoding_weight(w, "int8") if group is None else quantize_int8(_float32(w), group)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return {name: np.array(m.values.numpy()).view(np.int8), name + ".scales": np.array(m.scales.numpy())}


def _float32(w):
    w = w.detach().contiguous()
    return w if w.dtype == "float32" else w.astype("float32")


def bf16_array(a):
    """A float32 (or already bf16 bits) NumPy array as bf16 bits to save (nearest even)."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return as_bf16_bits(a)
    return as_bf16_bits(round_bf16(np.ascontiguousarray(a, dtype=np.float32)))


def read_int8(values, scales, name, where):
    """The Int8Matrix of a stored int8 weight: values an I8 array (N, K), scales an F32 array
    (N, K / group); the group is K over the scales' columns. ValueError names the tensor and
    file when the two do not fit or a scale is negative or not finite."""
    if values.dtype != np.int8 or values.ndim != 2:
        raise ValueError(f"{where}: {name} must be an I8 matrix (N, K), got {values.dtype} of shape "
                         f"{list(values.shape)}")
    N, K = values.shape
    if scales.dtype != np.float32 or scales.ndim != 2 or scales.shape[0] != N or not scales.shape[1] \
            or K % scales.shape[1]:
        raise ValueError(f"{where}: {name}.scales must be F32 ({N}, K / group) with a group dividing {K}, got "
                         f"{scales.dtype} of shape {list(scales.shape)}")
    s = np.array(scales, dtype=np.float32)
    if not (np.isfinite(s).all() and (s >= 0).all()):
        raise ValueError(f"{where}: {name}.scales has negative or non-finite values")
    v = _C.from_numpy(np.array(values).view(np.uint8))
    return _C.Int8Matrix(v, _C.from_numpy(s), K // s.shape[1])


def split_int8(get, names, where, allowed):
    """The int8 weights of a folder's tensors: names lists every tensor in the folder, get(name)
    gives its array. Returns {name: Int8Matrix} for each NAME stored with NAME.scales; each must
    be one of `allowed` (the weights the family's decode plan streams), else ValueError."""
    out = {}
    for n in names:
        if n.endswith(".scales"):
            base = n[:-len(".scales")]
            if base not in names:
                raise ValueError(f"{where}: {n} has no {base} beside it")
            if base not in allowed:
                raise ValueError(f"{where}: {base} is stored as int8 but is not a weight the decode plan streams")
            out[base] = read_int8(get(base), get(n), base, where)
    lone = sorted(n for n in names if n not in out and not n.endswith(".scales") and get(n).dtype == np.int8)
    if lone:
        raise ValueError(f"{where}: {lone[0]} is I8 but has no {lone[0]}.scales beside it")
    return out
