"""Tensors on disk in the safetensors layout, written and read by our own code.

Layout (the safetensors format):

    [8 bytes]  N, the header length, unsigned 64-bit little-endian
    [N bytes]  a UTF-8 JSON object, padded at the end with spaces so that 8 + N is a multiple
               of 8. Each tensor name maps to {"dtype": "F32", "shape": [2, 3],
               "data_offsets": [begin, end]}; the optional key "__metadata__" maps to an
               object of string -> string.
    [rest]     the data region: every tensor's bytes, row-major, little-endian, at
               [begin, end) relative to the start of the region. The ranges are contiguous:
               sorted by begin they start at 0, each begins where the previous ended and the
               last ends at the end of the file.

We write tensors largest element size first (then by name), so with the 8-aligned data
region every tensor starts at a multiple of its element size and memory-maps aligned.

The functions here work on NumPy arrays; minillm.save / minillm.load wrap them to accept
and return Tensors. bfloat16 has no NumPy dtype: a BF16 tensor loads as uint16 bits with
the dtype `BF16_BITS` (uint16 tagged in its metadata), which saves back as BF16.
"""
import json
import mmap as _mmap
import os
import struct
from collections.abc import Mapping

import numpy as np

from .utils import fsync_dir, parse_json

__all__ = ["FormatError", "save", "load", "load_metadata", "BF16_BITS", "as_bf16_bits", "MappedFile",
           "open_checkpoint", "save_sharded", "copy_converted", "INDEX_NAME", "to_f32", "round_bf16"]

# A header larger than this is refused as corrupt (the safetensors package has the same cap).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# NumPy 1.x arrays have at most 32 dimensions.
MAX_NDIM = 32
_I64_MAX = (1 << 63) - 1

# uint16 carrying bfloat16 bit patterns; the tag makes `save` write it back as BF16.
BF16_BITS = np.dtype(np.uint16, metadata={"safetensors_dtype": "BF16"})

# safetensors dtype name -> little-endian NumPy dtype
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BF16_BITS,
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items() if name != "BF16"}


class FormatError(ValueError):
    """A file that is not a valid safetensors file; the message names the file and the problem."""


def as_bf16_bits(a):
    """View uint16 array `a` (bfloat16 bit patterns) as BF16_BITS, so save() writes BF16."""
    a = np.asarray(a)
    if a.dtype != np.uint16:
        raise TypeError(f"bfloat16 bits must be a uint16 array, got {a.dtype}")
    return a.view(BF16_BITS)


def _dtype_name(key, arr):
    dt = arr.dtype
    if dt.metadata and dt.metadata.get("safetensors_dtype") == "BF16":
        return "BF16"
    if dt.name == "bfloat16" and dt.itemsize == 2:  # ml_dtypes' bfloat16, when a caller has it
        return "BF16"
    name = _NAMES.get((dt.kind, dt.itemsize))
    if name is None:
        raise TypeError(f"tensor {key!r}: dtype {dt} cannot be stored in safetensors "
                        f"(supported: {', '.join(sorted(_DTYPES))})")
    return name


def _prepare(tensors, metadata):
    """Check the arguments and turn every value into a C-contiguous little-endian array."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"save expects a dict of name -> array, got {type(tensors).__name__}")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"metadata must be a dict of str -> str, got {metadata!r}")
    entries = []
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"tensor names must be str, got {type(key).__name__} {key!r}")
        if key == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot name a tensor")
        arr = np.asarray(value)
        name = _dtype_name(key, arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
        entries.append((key, name, arr))
    # largest element size first keeps every tensor aligned to its element size
    entries.sort(key=lambda e: (-e[2].dtype.itemsize, e[0]))
    return entries


def _header_bytes(entries, metadata):
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    begin = 0
    for key, name, arr in entries:
        end = begin + arr.nbytes
        header[key] = {"dtype": name, "shape": list(arr.shape), "data_offsets": [begin, end]}
        begin = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def save(tensors, path, metadata=None):
    """Write `tensors` (dict name -> array-like) to `path` in the safetensors layout.

    tensors: str -> anything numpy.asarray accepts (NumPy arrays, minillm Tensors, objects
        with the buffer protocol), of dtype float64/32/16, bfloat16 (see BF16_BITS), int64/32/
        16/8, uint64/32/16/8 or bool, any shape (0-d and empty included).
    metadata: optional dict str -> str, stored as "__metadata__".

    The file is written to a temporary file in the same folder, flushed and fsynced, then
    renamed over `path`: a crash or an error never leaves a half-written file, and an existing
    file stays intact on failure. minillm.save wraps this function for Tensors.
    """
    entries = _prepare(tensors, metadata)
    header = _header_bytes(entries, metadata)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for _, _, arr in entries:
                if arr.size:
                    f.write(arr.reshape(-1).view(np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def _fail(path, problem):
    raise FormatError(f"{path}: {problem}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _read_header(f, path, file_size):
    """Parse and check the header. Returns (metadata, entries, data_start), entries being
    (name, dtype name, shape tuple, begin, end) in file order of the header."""
    if file_size < 8:
        _fail(path, f"file has {file_size} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        _fail(path, f"header says {n} bytes, more than the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        _fail(path, f"header says {n} bytes, file has {file_size - 8} after the length field")
    raw = f.read(n)
    if len(raw) != n:
        _fail(path, f"could read only {len(raw)} of the {n} header bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(path, f"header is not valid UTF-8 ({e.reason} at byte {e.start})")
    try:
        header = parse_json(text, "JSON header")
    except ValueError as e:
        _fail(path, str(e))
    if not isinstance(header, dict):
        _fail(path, f"header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        _fail(path, "__metadata__ must be an object of string -> string")

    data_size = file_size - 8 - n
    entries = []
    for name, info in header.items():
        what = f"tensor {name!r}"
        if not isinstance(info, dict):
            _fail(path, f"{what}: expected an object with dtype, shape, data_offsets, got {info!r}"[:300])
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            _fail(path, f"{what}: missing or non-string dtype {dtype!r}"[:300])
        if dtype not in _DTYPES:
            _fail(path, f"{what}: unknown or unsupported dtype {dtype!r} "
                        f"(supported: {', '.join(sorted(_DTYPES))})"[:300])
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            _fail(path, f"{what}: shape must be a list of integers, got {shape!r}"[:300])
        if len(shape) > MAX_NDIM:
            _fail(path, f"{what}: {len(shape)} dimensions, at most {MAX_NDIM} supported")
        if any(d < 0 for d in shape):
            _fail(path, f"{what}: negative dimension in shape {shape}")
        # the element count must fit in int64 even when a zero dimension hides it
        count, bound = 1, 1
        for d in shape:
            count *= d
            bound *= max(d, 1)
            if bound > _I64_MAX:
                _fail(path, f"{what}: shape {shape} overflows 64-bit sizes"[:300])
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            _fail(path, f"{what}: data_offsets must be [begin, end] integers, got {offsets!r}"[:300])
        begin, end = offsets
        if begin < 0 or end < begin:
            _fail(path, f"{what}: data_offsets [{begin}, {end}] are negative or reversed")
        if end > data_size:
            _fail(path, f"{what}: data_offsets [{begin}, {end}] end past the data region "
                        f"({data_size} bytes)")
        nbytes = count * _DTYPES[dtype].itemsize
        if nbytes != end - begin:
            _fail(path, f"{what}: shape {shape} x {dtype} is {nbytes} bytes, data_offsets "
                        f"[{begin}, {end}] hold {end - begin}")
        entries.append((name, dtype, tuple(shape), begin, end))

    # the ranges must tile the data region exactly: no overlap, no gap, nothing left over
    expected = 0
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != expected:
            kind = "overlaps the previous tensor" if begin < expected else "leaves a gap before it"
            _fail(path, f"tensor {name!r}: data_offsets [{begin}, {end}] {kind} "
                        f"(expected to begin at {expected})")
        expected = end
    if expected != data_size:
        _fail(path, f"tensors cover {expected} bytes of a {data_size}-byte data region")
    return metadata, entries, 8 + n


def _open_checked(path):
    path = os.fspath(path)
    f = open(path, "rb")
    try:
        size = os.fstat(f.fileno()).st_size
        metadata, entries, data_start = _read_header(f, path, size)
    except BaseException:
        f.close()
        raise
    return f, path, size, metadata, entries, data_start


def load(path, mmap=True):
    """Read a safetensors file: dict name -> NumPy array, in the header's order.

    mmap=True: read-only arrays over a memory map of the file (nothing is read until used;
        the mapping lives as long as any array does, even if the file is later replaced).
    mmap=False: writable arrays holding copies.
    BF16 tensors come back as uint16 bits of dtype BF16_BITS. Raises FormatError naming the
    file and the problem for anything that is not a valid file. minillm.load wraps this
    function to return Tensors.
    """
    f, path, size, _, entries, data_start = _open_checked(path)
    out = {}
    with f:
        if mmap and size > data_start:
            mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            for name, dtype, shape, begin, end in entries:
                dt = _DTYPES[dtype]
                if end == begin:
                    out[name] = np.empty(shape, dtype=dt)
                    out[name].flags.writeable = False
                    continue
                arr = np.frombuffer(mm, dtype=dt, count=(end - begin) // dt.itemsize,
                                    offset=data_start + begin)
                out[name] = arr.reshape(shape)
        else:
            for name, dtype, shape, begin, end in entries:
                arr = np.empty(shape, dtype=_DTYPES[dtype])
                if arr.size:
                    f.seek(data_start + begin)
                    got = f.readinto(arr.reshape(-1).view(np.uint8))
                    if got != end - begin:
                        _fail(path, f"tensor {name!r}: read {got} of {end - begin} bytes "
                                    "(file changed while reading?)")
                if mmap:
                    arr.flags.writeable = False
                out[name] = arr
    return out


def load_metadata(path):
    """The "__metadata__" of a safetensors file: dict str -> str ({} when absent).
    Reads and checks only the header."""
    f, _, _, metadata, _, _ = _open_checked(path)
    f.close()
    return metadata


# ====================================================================== large checkpoints
# HuggingFace model folders hold model.safetensors, or shards listed by an index:
#
#   model.safetensors.index.json   {"metadata": {"total_size": bytes},
#                                   "weight_map": {tensor name: shard file name}}
#   model-00001-of-00002.safetensors, ...
#
# A model loads tensor by tensor from memory maps: each tensor is copied (and converted to
# the kept dtype) in slices, and the mapped pages of a slice are given back to the OS right
# after, so the peak memory is the model's own weights plus one slice, whatever the file's
# dtype or size.

INDEX_NAME = "model.safetensors.index.json"
_SLICE_BYTES = 16 << 20          # one slice of a copy: mapped pages dropped after each
_PAGE = _mmap.PAGESIZE


class MappedFile:
    """A safetensors file memory-mapped for reading one tensor at a time:
    ``f.names``, ``f.info(name) -> (dtype name, shape)``, ``f.array(name)`` a read-only NumPy
    view (BF16 as BF16_BITS), ``f.release(name, begin, end)`` drops the mapped pages of bytes
    [begin, end) of that tensor from memory (they are read again if used). Malformed files raise
    FormatError naming the file."""

    def __init__(self, path):
        f, self.path, size, self.metadata, entries, self._data_start = _open_checked(path)
        with f:
            self._mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) if size > 0 else None
        self._entries = {name: (dtype, shape, begin, end) for name, dtype, shape, begin, end in entries}
        self.names = list(self._entries)

    def info(self, name):
        dtype, shape, _, _ = self._entries[name]
        return dtype, shape

    def array(self, name):
        dtype, shape, begin, end = self._entries[name]
        dt = _DTYPES[dtype]
        if end == begin:
            return np.empty(shape, dtype=dt)
        return np.frombuffer(self._mm, dtype=dt, count=(end - begin) // dt.itemsize,
                             offset=self._data_start + begin).reshape(shape)

    def release(self, name, begin=0, end=None):
        """Give back the pages holding bytes [begin, end) of tensor `name` (whole pages only)."""
        if self._mm is None or not hasattr(self._mm, "madvise"):
            return
        _, _, b0, b1 = self._entries[name]
        lo = self._data_start + b0 + begin
        hi = self._data_start + b0 + (b1 - b0 if end is None else end)
        lo = lo // _PAGE * _PAGE
        hi = min(-(-hi // _PAGE) * _PAGE, len(self._mm))
        if hi > lo:
            self._mm.madvise(_mmap.MADV_DONTNEED, lo, hi - lo)


def open_checkpoint(folder):
    """The tensors of a HuggingFace model folder: dict name -> MappedFile holding it, from
    model.safetensors or from model.safetensors.index.json and its shards. ValueError names a
    missing file, a tensor in two shards, or an index that is not a weight_map."""
    folder = os.fspath(folder)
    index_path = os.path.join(folder, INDEX_NAME)
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            index = parse_json(f.read(), index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index_path}: expected an object with a \"weight_map\" of tensor name -> file name")
        files = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(folder, shard)
            if os.path.basename(shard) != shard or not os.path.exists(path):
                raise ValueError(f"{index_path}: shard {shard!r} is missing from {folder}")
            files[shard] = MappedFile(path)
        out = {}
        for shard, mf in files.items():
            for name in mf.names:
                if name in out:
                    raise ValueError(f"{index_path}: tensor {name!r} is in both {out[name].path} and {mf.path}")
                out[name] = mf
        listed_missing = sorted(n for n, shard in weight_map.items() if n not in out)
        if listed_missing:
            raise ValueError(f"{index_path}: tensors listed but in no shard: {listed_missing[:10]}")
        return out
    if os.path.exists(single):
        mf = MappedFile(single)
        return {name: mf for name in mf.names}
    raise ValueError(f"{folder}: no model.safetensors or {INDEX_NAME}")


def to_f32(src):
    """A float32 array of src (F32, F16 or BF16 bits)."""
    if src.dtype.metadata and src.dtype.metadata.get("safetensors_dtype") == "BF16":
        return (src.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return src.astype(np.float32, copy=False)


def round_bf16(x):
    """float32 array -> uint16 bf16 bits, rounded to nearest even (NaN stays a quiet NaN)."""
    bits = x.view(np.uint32)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def copy_converted(mapped, name, dst, dst_dtype):
    """Copy tensor `name` of MappedFile `mapped` into the C-contiguous NumPy array `dst` of the
    same shape, converting to dst_dtype "float32" (dst float32) or "bfloat16" (dst uint16 bits,
    rounded to nearest even); the file may hold F32, F16 or BF16. Copies in slices of rows and
    drops each slice's mapped pages after it (MappedFile.release)."""
    dtype, shape = mapped.info(name)
    if tuple(dst.shape) != tuple(shape):
        raise ValueError(f"{mapped.path}: tensor {name!r} has shape {list(shape)}, expected {list(dst.shape)}")
    if dtype not in ("F32", "F16", "BF16"):
        raise ValueError(f"{mapped.path}: tensor {name!r} is {dtype}; expected F32, F16 or BF16 weights")
    src = mapped.array(name).reshape(-1)
    out = dst.reshape(-1)
    step = max(1, _SLICE_BYTES // src.dtype.itemsize)
    for i in range(0, src.size, step):
        part = src[i:i + step]
        if dst_dtype == "bfloat16":
            out[i:i + step] = part.view(np.uint16) if dtype == "BF16" else round_bf16(to_f32(part))
        else:
            out[i:i + step] = to_f32(part)
        mapped.release(name, i * src.dtype.itemsize, (i + part.size) * src.dtype.itemsize)


def save_sharded(tensors, folder, max_shard_bytes=None, metadata=None):
    """Write `tensors` (dict name -> array) into `folder` as HuggingFace does: one
    model.safetensors when it fits in max_shard_bytes (None: always), else shards
    model-0000i-of-0000n.safetensors (tensors in the given order, each shard at most
    max_shard_bytes unless one tensor alone is bigger) plus model.safetensors.index.json.
    Returns the list of file names written."""
    os.makedirs(folder, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    total = sum(a.nbytes for a in arrays.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save(arrays, os.path.join(folder, "model.safetensors"), metadata=metadata)
        return ["model.safetensors"]
    shards, cur, size = [], {}, 0
    for name, a in arrays.items():
        if cur and size + a.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = a
        size += a.nbytes
    shards.append(cur)
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save(shard, os.path.join(folder, fname), metadata=metadata)
        names.append(fname)
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp = os.path.join(folder, INDEX_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    os.replace(tmp, os.path.join(folder, INDEX_NAME))
    return names + [INDEX_NAME]
