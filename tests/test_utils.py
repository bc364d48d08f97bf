"""The helpers every layer may use (minillm/utils.py)."""
import pytest

from minillm.utils import parse_json, read_json, read_text, sha256_file, write_bytes_atomic


def test_read_json_refuses_a_duplicate_key_naming_file_line_and_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n "a": 1,\n "inner": {"b": 2},\n "a": 3\n}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.json line 4: duplicate key 'a'"):
        read_json(path)


def test_same_key_in_different_objects_is_fine():
    assert parse_json('{"a": {"x": 1}, "b": {"x": 2}}', "s") == {"a": {"x": 1}, "b": {"x": 2}}


def test_bad_json_and_bad_utf8_name_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "a": 1\n "b": 2\n}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json line 3: bad JSON"):
        read_json(path)
    path.write_bytes(b'{"a":\n "\xff"}')
    with pytest.raises(ValueError, match=r"bad\.json line 2: not valid UTF-8"):
        read_text(path)


def test_write_bytes_atomic_replaces_and_leaves_no_temporary(tmp_path):
    import hashlib
    path = tmp_path / "f.bin"
    write_bytes_atomic(str(path), b"old")
    write_bytes_atomic(str(path), b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert sha256_file(path) == hashlib.sha256(b"new contents").hexdigest()
