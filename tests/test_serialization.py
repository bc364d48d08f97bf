"""minillm.serialization: the safetensors layout, atomic writes, and the header checker."""
import json
import os
import struct

import numpy as np
import pytest

from minillm import serialization as ser
from minillm.serialization import BF16_BITS, FormatError, load, load_metadata, save

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
    "U8": np.uint8, "BOOL": np.bool_,
}
SHAPES = [(), (0,), (1,), (5,), (3, 7), (2, 0, 3), (2, 3, 4)]


def sample(dtype, shape, rng):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def same_bits(a, b):
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and a.tobytes() == b.tobytes()


def raw_file(header, data=b"", pad=True, length=None):
    """Bytes of a safetensors file with `header` (dict or raw bytes) and `data`."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


# ----------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_every_dtype_and_shape(tmp_path, name, mmap):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": sample(DTYPES[name], shape, rng) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "x.safetensors"
    save(tensors, path)
    back = load(path, mmap=mmap)
    assert list(back) == sorted(tensors)
    for key, a in tensors.items():
        b = back[key]
        assert b.dtype == a.dtype and same_bits(a, b), key
        assert b.flags.writeable == (not mmap)
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert {v["dtype"] for v in header.values()} == {name}


def test_bf16_bits_round_trip_as_bf16(tmp_path):
    bits = np.array([[0x3F80, 0xC000, 0x7F80], [0x0001, 0xFFFF, 0x0000]], np.uint16)
    path = tmp_path / "bf.safetensors"
    save({"w": ser.as_bf16_bits(bits), "u": bits}, path)
    back = load(path)
    assert back["w"].dtype == BF16_BITS and back["w"].dtype.metadata["safetensors_dtype"] == "BF16"
    np.testing.assert_array_equal(back["w"], bits)
    assert back["u"].dtype == np.uint16 and not back["u"].dtype.metadata
    save(back, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    with pytest.raises(TypeError):
        ser.as_bf16_bits(np.zeros(2, np.float32))


def test_mixed_dtypes_are_laid_out_aligned_and_contiguous(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"a8": sample(np.int8, (3,), rng), "b64": sample(np.float64, (5,), rng),
               "c16": sample(np.float16, (7,), rng), "d32": sample(np.float32, (2, 3), rng),
               "e_bool": sample(np.bool_, (5,), rng), "f64": sample(np.int64, (1,), rng)}
    path = tmp_path / "m.safetensors"
    save(tensors, path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 8 == 0 and raw[8:9] == b"{" and raw[8:8 + n].rstrip(b" ").endswith(b"}")
    header = json.loads(raw[8:8 + n])
    spans = sorted(v["data_offsets"] for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(p[1] == q[0] for p, q in zip(spans, spans[1:]))
    for key, v in header.items():
        assert v["data_offsets"][0] % tensors[key].dtype.itemsize == 0, key
    for key, arr in load(path).items():
        assert same_bits(arr, tensors[key])


def test_strided_fortran_big_endian_and_buffer_inputs_are_stored_row_major(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {
        "strided": base[:, ::2],
        "fortran": np.asfortranarray(base),
        "big": base.astype(">f4"),
        "view": memoryview(base),
        "list": [[1, 2], [3, 4]],
        "scalar": np.float32(2.5),
    }
    save(tensors, tmp_path / "s.safetensors")
    back = load(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(back["strided"], base[:, ::2])
    np.testing.assert_array_equal(back["fortran"], base)
    assert back["big"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back["big"], base)
    np.testing.assert_array_equal(back["view"], base)
    assert back["list"].dtype == np.int64 and back["list"].tolist() == [[1, 2], [3, 4]]
    assert back["scalar"].shape == () and back["scalar"] == np.float32(2.5)


def test_metadata_round_trips_and_is_optional(tmp_path):
    path = tmp_path / "meta.safetensors"
    meta = {"format": "np", "step": "1200", "note": "héllo ✓"}
    save({"x": np.ones(3, np.float32)}, path, metadata=meta)
    assert load_metadata(path) == meta
    assert list(load(path)) == ["x"]
    save({"x": np.ones(3, np.float32)}, path)
    assert load_metadata(path) == {}
    save({}, path, metadata={"only": "metadata"})
    assert load(path) == {} and load_metadata(path) == {"only": "metadata"}


def test_mmap_arrays_stay_valid_after_the_file_is_replaced(tmp_path):
    path = tmp_path / "w.safetensors"
    save({"w": np.arange(1000, dtype=np.float32)}, path)
    old = load(path, mmap=True)["w"]
    assert not old.flags.writeable
    with pytest.raises(ValueError):
        old[0] = 1.0
    save({"w": np.zeros(1000, dtype=np.float32)}, path)  # atomic replace: a new inode
    np.testing.assert_array_equal(old, np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(load(path)["w"], np.zeros(1000, np.float32))
    copy = load(path, mmap=False)["w"]
    copy[0] = 5.0  # copies are writable and private
    assert load(path)["w"][0] == 0.0


@pytest.mark.parametrize("tensors,metadata,exc", [
    ([1, 2], None, TypeError),
    ({1: np.zeros(2)}, None, TypeError),
    ({"__metadata__": np.zeros(2)}, None, ValueError),
    ({"c": np.zeros(2, np.complex64)}, None, TypeError),
    ({"o": np.array([object()])}, None, TypeError),
    ({"s": np.array(["text"])}, None, TypeError),
    ({"x": np.zeros(2)}, {"step": 3}, TypeError),
    ({"x": np.zeros(2)}, "not a dict", TypeError),
])
def test_save_rejects_bad_arguments_without_touching_the_file(tmp_path, tensors, metadata, exc):
    path = tmp_path / "keep.safetensors"
    save({"keep": np.arange(4, dtype=np.int32)}, path)
    before = path.read_bytes()
    with pytest.raises(exc):
        save(tensors, path, metadata=metadata)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"]


# ----------------------------------------------------------------- atomic writes

class ExplodingArray:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("conversion failed")


def test_failed_conversion_leaves_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save({"w": np.ones(8, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="conversion failed"):
        save({"a": np.zeros(3), "b": ExplodingArray()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


class UnwritableArray(np.ndarray):
    """An array whose bytes cannot be written out: save() fails after writing the header."""

    def reshape(self, *args, **kwargs):
        raise OSError("simulated write failure")


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_failure_mid_write_leaves_old_file_and_no_temp_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.safetensors"
    save({"w": np.ones(8, np.float32)}, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    if failing == "replace":
        monkeypatch.setattr(ser.os, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(ser.os, "fsync", boom)
    else:  # the data write fails after the header went out (as on a full disk)
        failing = np.arange(1 << 16, dtype=np.float32).view(UnwritableArray)
        monkeypatch.setattr(ser, "_prepare", lambda t, m: [("w", "F32", failing)])
    with pytest.raises(OSError, match="simulated"):
        save({"w": np.zeros(1 << 16, np.float32)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_new_file_gets_default_permissions(tmp_path):
    path = tmp_path / "p.safetensors"
    save({"w": np.ones(2, np.float32)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~umask)


# ----------------------------------------------------------------- interop with the safetensors package

def _sample_dict(rng):
    """Every dtype NumPy has (all but BF16) in a 0-d, an empty and a 2-D tensor."""
    out = {}
    for name in DTYPES:
        for i, shape in enumerate([(), (0, 3), (4, 5)]):
            out[f"{name.lower()}_{i}"] = sample(DTYPES[name], shape, rng)
    return out


def test_files_we_write_load_in_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    safetensors = pytest.importorskip("safetensors")
    tensors = _sample_dict(np.random.default_rng(2))
    path = tmp_path / "ours.safetensors"
    save(tensors, path, metadata={"format": "np", "by": "minillm"})
    theirs = st.load_file(str(path))
    assert sorted(theirs) == sorted(tensors)
    for key, a in tensors.items():
        assert theirs[key].dtype == a.dtype and same_bits(theirs[key], a), key
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "np", "by": "minillm"}


def test_files_safetensors_writes_load_here(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = _sample_dict(np.random.default_rng(3))
    path = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(path), metadata={"k": "v"})
    for mmap in (True, False):
        ours = load(path, mmap=mmap)
        assert sorted(ours) == sorted(tensors)
        for key, a in tensors.items():
            assert ours[key].dtype == a.dtype and same_bits(ours[key], a), key
    assert load_metadata(path) == {"k": "v"}


def test_bf16_interop_with_safetensors_torch(tmp_path):
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file
    x = torch.randn(3, 5).to(torch.bfloat16)
    bits = x.view(torch.int16).numpy().view(np.uint16)
    save_file({"x": x}, str(tmp_path / "t.safetensors"))
    ours = load(tmp_path / "t.safetensors")["x"]
    assert ours.dtype == BF16_BITS
    np.testing.assert_array_equal(ours, bits)
    save({"x": ours}, tmp_path / "o.safetensors")
    back = load_file(str(tmp_path / "o.safetensors"))["x"]
    assert back.dtype == torch.bfloat16 and torch.equal(back, x)


# ----------------------------------------------------------------- malformed files

def _good_header():
    return {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "I16", "shape": [2], "data_offsets": [8, 12]}}


def _with(**changes):
    h = _good_header()
    for key, value in changes.items():
        name, field = key.split("__")
        h[name][field] = value
    return h


BAD_FILES = {
    "empty": (b"", "too short"),
    "seven bytes": (b"\x08\x00\x00\x00\x00\x00\x00", "too short"),
    "length past end": (raw_file(_good_header(), b"\0" * 12, length=4096), "header says 4096"),
    "absurd length": (struct.pack("<Q", 1 << 62) + b"{}      ", "limit"),
    "length 2^64-1": (struct.pack("<Q", (1 << 64) - 1), "limit"),
    "bad utf8": (raw_file(b'{"\xff\xfe": 1}'), "UTF-8"),
    "bad json": (raw_file(b'{"a": {"dtype": "F32",'), "JSON"),
    "trailing garbage": (raw_file(b'{} xyz'), "JSON"),
    "not an object": (raw_file(b"[1, 2, 3]"), "JSON object"),
    "duplicate key": (raw_file(b'{"a": {}, "a": {}}'), "duplicate"),
    "deep nesting": (raw_file(b"[" * 200000 + b"]" * 200000), "JSON"),
    "huge integer": (raw_file(b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}'),
                     "JSON"),
    "metadata not object": (raw_file({"__metadata__": [1]}), "__metadata__"),
    "metadata value not str": (raw_file({"__metadata__": {"a": 1}}), "__metadata__"),
    "entry not object": (raw_file({"a": [1, 2]}), "expected an object"),
    "missing dtype": (raw_file({"a": {"shape": [0], "data_offsets": [0, 0]}}), "dtype"),
    "dtype not str": (raw_file(_with(a__dtype=5), b"\0" * 12), "dtype"),
    "unknown dtype": (raw_file(_with(a__dtype="F33"), b"\0" * 12), "unknown"),
    "fp8 unsupported": (raw_file(_with(a__dtype="F8_E4M3"), b"\0" * 12), "unsupported"),
    "missing shape": (raw_file({"a": {"dtype": "F32", "data_offsets": [0, 0]}}), "shape"),
    "shape not list": (raw_file(_with(a__shape=2), b"\0" * 12), "shape"),
    "float dim": (raw_file(_with(a__shape=[2.0]), b"\0" * 12), "shape"),
    "bool dim": (raw_file(_with(a__shape=[True, 2]), b"\0" * 12), "shape"),
    "negative dim": (raw_file(_with(a__shape=[-2]), b"\0" * 12), "negative"),
    "overflowing shape": (raw_file(_with(a__shape=[0, 1 << 40, 1 << 40]), b"\0" * 12), "overflow"),
    "too many dims": (raw_file(_with(a__shape=[1] * 40), b"\0" * 12), "dimensions"),
    "missing offsets": (raw_file({"a": {"dtype": "F32", "shape": [0]}}), "data_offsets"),
    "one offset": (raw_file(_with(a__data_offsets=[0]), b"\0" * 12), "data_offsets"),
    "string offsets": (raw_file(_with(a__data_offsets=["0", "8"]), b"\0" * 12), "data_offsets"),
    "negative offset": (raw_file(_with(a__data_offsets=[-8, 0]), b"\0" * 12), "negative"),
    "reversed offsets": (raw_file(_with(a__data_offsets=[8, 0]), b"\0" * 12), "reversed"),
    "offset past end": (raw_file(_with(b__data_offsets=[8, 1 << 50]), b"\0" * 12), "past the data"),
    "overlap": (raw_file(_with(b__data_offsets=[4, 8], b__shape=[2]), b"\0" * 12), "overlaps"),
    "gap": (raw_file(_with(b__data_offsets=[10, 14]), b"\0" * 14), "gap"),
    "not starting at 0": (raw_file({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4),
                          "gap"),
    "trailing bytes": (raw_file(_good_header(), b"\0" * 20), "cover 12 bytes of a 20-byte"),
    "truncated data": (raw_file(_good_header(), b"\0" * 10), "past the data"),
    "size mismatch": (raw_file(_with(a__shape=[3]), b"\0" * 12), "x F32 is 12 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_files_raise_format_error_naming_file_and_problem(tmp_path, case):
    content, problem = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for fn in (lambda: load(path, mmap=True), lambda: load(path, mmap=False), lambda: load_metadata(path)):
        with pytest.raises(FormatError) as err:
            fn()
        assert str(path) in str(err.value) and problem in str(err.value), str(err.value)
        assert isinstance(err.value, ValueError)
        assert len(str(err.value)) < 1000


def test_good_hand_written_file_loads(tmp_path):
    # the builder above makes a valid file when nothing is changed
    path = tmp_path / "ok.safetensors"
    data = np.array([1.5, -2.0], "<f4").tobytes() + np.array([7, -9], "<i2").tobytes()
    path.write_bytes(raw_file(_good_header(), data))
    out = load(path)
    assert out["a"].tolist() == [1.5, -2.0] and out["b"].tolist() == [7, -9]


def test_missing_file_is_a_plain_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------- fuzz

def _fuzz_bases(tmp_path):
    rng = np.random.default_rng(4)
    bases = []
    for i, tensors in enumerate([
        {"w": sample(np.float32, (3, 4), rng), "b": sample(np.int64, (4,), rng),
         "m": sample(np.bool_, (5,), rng), "h": sample(np.float16, (2, 2), rng)},
        {"e": np.zeros((0, 3), np.float32), "s": np.float64(3.0), "u": sample(np.uint8, (7,), rng)},
        {"bf": ser.as_bf16_bits(sample(np.uint16, (6,), rng)), "i": sample(np.int32, (1, 1, 2), rng)},
    ]):
        p = tmp_path / f"base{i}.safetensors"
        save(tensors, p, metadata={"n": str(i)} if i != 1 else None)
        bases.append(p.read_bytes())
    return bases


def _mutate(raw, rng):
    """One random corruption of a valid file: truncation, byte flips (mostly in the header),
    a new header length, digit edits in the JSON, or bytes inserted into / cut from it."""
    n = struct.unpack("<Q", raw[:8])[0]
    b = bytearray(raw)
    kind = int(rng.integers(6))
    if kind == 0:
        return bytes(b[:int(rng.integers(len(b)))])
    if kind == 1:
        for _ in range(int(rng.integers(1, 9))):
            end = 8 + n if rng.random() < 0.8 else len(b)
            b[int(rng.integers(end))] = int(rng.integers(256))
        return bytes(b)
    if kind == 2:
        choices = [0, 1, 7, n - 1, n + 1, n + 8, len(b), 1 << 31, 1 << 63, int(rng.integers(1 << 62))]
        b[:8] = struct.pack("<Q", choices[int(rng.integers(len(choices)))] % (1 << 64))
        return bytes(b)
    if kind == 3:
        digits = [i for i in range(8, 8 + n) if chr(b[i]).isdigit()]
        for _ in range(int(rng.integers(1, 4))):
            b[digits[int(rng.integers(len(digits)))]] = ord(str(int(rng.integers(10))))
        return bytes(b)
    if kind == 4:
        i = int(rng.integers(8, 8 + n))
        junk = bytes(rng.choice(list(b'{}[]",:-0123456789 eE.tnfaulsx\\\xc3\xff'), int(rng.integers(1, 6))))
        return bytes(b[:i]) + junk + bytes(b[i:])
    i = int(rng.integers(8, 8 + n))
    return bytes(b[:i]) + bytes(b[i + int(rng.integers(1, 6)):])


def test_fuzzed_files_raise_only_format_error(tmp_path):
    bases = _fuzz_bases(tmp_path)
    rng = np.random.default_rng(20240611)
    path = tmp_path / "fuzz.safetensors"
    outcomes = {"format_error": 0, "loaded": 0}
    for case in range(2400):
        content = _mutate(bases[case % len(bases)], rng)
        path.unlink(missing_ok=True)  # a fresh file: truncating one in place is slow on ext4
        path.write_bytes(content)
        mmap = bool(case & 1)
        try:
            out = load(path, mmap=mmap)
            load_metadata(path)
        except FormatError as e:
            assert str(path) in str(e)
            outcomes["format_error"] += 1
            continue
        except Exception as e:  # anything else is a bug in the checker
            pytest.fail(f"case {case}: {type(e).__name__}: {e} for file {content[:200]!r}")
        # a file that loads must be a consistent one: read every byte of every tensor
        covered = 0
        for arr in out.values():
            assert arr.nbytes == int(np.prod(arr.shape)) * arr.dtype.itemsize
            arr.tobytes()
            covered += arr.nbytes
        n = struct.unpack("<Q", content[:8])[0]
        assert covered == len(content) - 8 - n
        outcomes["loaded"] += 1
    # the mutations must mostly produce invalid files, else this test checks little
    assert outcomes["format_error"] > 1500, outcomes
