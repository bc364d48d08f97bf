"""minillm.save / minillm.load on Tensors (the format itself is tested in test_serialization.py)."""
import numpy as np
import pytest

import minillm


def test_save_load_round_trip_every_tensor_dtype(tmp_path):
    path = tmp_path / "t.safetensors"
    g = minillm.Generator(1)
    tensors = {
        "w": minillm.randn(3, 4, generator=g),
        "ids": minillm.arange(7),
        "i32": minillm.tensor([1, -2, 3], dtype="int32"),
        "u16": minillm.tensor([1, 65535], dtype="uint16"),
        "half": minillm.randn(5, generator=g).astype("bfloat16"),
        "scalar": minillm.tensor(2.5),
        "view": minillm.randn(4, 6, generator=g)[:, 1:3],
    }
    minillm.save(tensors, path, metadata={"step": "3"})
    for mmap in (True, False):
        back = minillm.load(path, mmap=mmap)
        assert set(back) == set(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
            np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(v), err_msg=k)
    assert minillm.serialization.load_metadata(path) == {"step": "3"}


def test_mmap_loaded_tensor_is_read_only(tmp_path):
    path = tmp_path / "t.safetensors"
    minillm.save({"w": minillm.zeros(4)}, path)
    w = minillm.load(path, mmap=True)["w"]
    with pytest.raises(ValueError, match="read-only"):
        w[0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        w += 1.0
    assert (w + 1.0).numpy().tolist() == [1.0] * 4


def test_truncated_file_raises_format_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    minillm.save({"w": minillm.zeros(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(minillm.FormatError, match="bad.safetensors"):
        minillm.load(path)
