"""minillm.save / minillm.load: dicts of Tensors in the safetensors layout.

The file format itself (header checks, atomic writes, FormatError) lives in
minillm.serialization, which works on NumPy arrays; this module converts to and from Tensors.
"""
import numpy as np

from . import _C
from .serialization import FormatError, as_bf16_bits, load_metadata  # noqa: F401
from . import serialization

# dtypes a Tensor cannot hold are widened on load: floats to float32, integers to int64
_WIDEN = {"f": np.float32, "i": np.int64, "u": np.int64, "b": np.uint8}


def _to_array(value):
    if isinstance(value, _C.Tensor):
        if value.dtype == "bfloat16":
            return as_bf16_bits(np.asarray(value))
        return np.asarray(value)
    return value


def save(tensors, path, metadata=None):
    """Write a dict of name -> Tensor (or NumPy array) to `path` in the safetensors layout,
    atomically (temporary file, fsync, rename). `metadata` is an optional dict of str -> str."""
    serialization.save({k: _to_array(v) for k, v in tensors.items()}, path, metadata=metadata)


def _is_bf16(arr):
    meta = arr.dtype.metadata
    return bool(meta) and meta.get("safetensors_dtype") == "BF16"


def _to_tensor(arr):
    if _is_bf16(arr):
        return _C.view_as(_C.from_numpy(arr.view(np.uint16)), "bfloat16")
    if arr.dtype.name not in ("float32", "int32", "int64", "uint8", "uint16"):
        arr = arr.astype(_WIDEN[arr.dtype.kind])
    return _C.from_numpy(arr)


def load(path, mmap=True):
    """Read a safetensors file into a dict of name -> Tensor. With mmap=True the tensors are
    read-only views of the mapped file (zero copy); float16/float64 are widened to float32 and
    small integer types to int64 (copies). Raises minillm.FormatError naming the file and the
    problem for a malformed file."""
    return {k: _to_tensor(v) for k, v in serialization.load(path, mmap=mmap).items()}
