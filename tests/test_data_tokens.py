"""Token files and batches (minillm/data.py, token-file section): prepare_tokens, TokenData,
TokenBatches, eval_windows, token_byte_lengths, `minillm data prepare`."""
import os

import numpy as np
import pytest

from minillm import data
from minillm.cli import main
from minillm.tokenizers import BPETokenizer

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")


@pytest.fixture(scope="module")
def text():
    with open(SAMPLE, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def tok(text, tmp_path_factory):
    t = BPETokenizer().train(text, 400)
    path = tmp_path_factory.mktemp("tok")
    t.save(str(path))
    t.path = str(path)
    return t


def _ids(tok, s):
    return np.asarray(tok.encode(s), dtype=np.int64)


def test_token_dtype_is_uint16_while_the_vocab_fits():
    assert data.token_dtype(400) == np.uint16
    assert data.token_dtype(65536) == np.uint16
    assert data.token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        data.token_dtype(0)


@pytest.mark.parametrize("chunk_bytes", [64, 100, 997, 1 << 20])
def test_chunked_prepare_gives_the_ids_of_the_whole_text(text, tok, tmp_path, chunk_bytes):
    out = tmp_path / "toks"
    meta = data.prepare_tokens([SAMPLE], tok, out, val_fraction=0.0, chunk_bytes=chunk_bytes)
    td = data.TokenData(out)
    assert td.dtype == np.uint16 and meta["dtype"] == "uint16"
    expected = np.concatenate([_ids(tok, text), [tok.eot_token]])
    np.testing.assert_array_equal(np.asarray(td.split("train"), dtype=np.int64), expected)
    assert len(td.split("val")) == 0
    assert meta["splits"]["train"]["bytes"] == os.path.getsize(SAMPLE)


def test_text_without_spaces_is_cut_at_character_boundaries(tok, tmp_path):
    # no space or newline at all: chunks must still end on UTF-8 boundaries, so the ids decode
    # back to exactly the input
    s = "é€x" * 3000
    path = tmp_path / "dense.txt"
    path.write_text(s, encoding="utf-8")
    data.prepare_tokens([path], tok, tmp_path / "t", val_fraction=0.0, chunk_bytes=64, add_eot=False)
    ids = data.load_tokens(tmp_path / "t", "train")
    assert tok.decode_bytes(np.asarray(ids, dtype=np.int64)) == s.encode("utf-8")


def test_val_fraction_splits_the_end_of_the_text(text, tok, tmp_path):
    meta = data.prepare_tokens([SAMPLE], tok, tmp_path / "t", val_fraction=0.1, chunk_bytes=500)
    td = data.TokenData(tmp_path / "t")
    train, val = (np.asarray(td.split(s), dtype=np.int64) for s in ("train", "val"))
    # the eot closes the file in the split its last byte went to (val)
    np.testing.assert_array_equal(np.concatenate([train, val]),
                                  np.concatenate([_ids(tok, text), [tok.eot_token]]))
    nbytes = len(text.encode("utf-8"))
    assert abs(meta["splits"]["val"]["bytes"] - 0.1 * nbytes) < 200
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == nbytes


def test_prepare_takes_folders_and_several_files_in_sorted_order(text, tok, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    parts = {"b.txt": text[:3000], "a.txt": text[3000:5000], "sub/c.txt": text[5000:9000],
             ".hidden.txt": "never read", "notes.md": "skipped by the pattern"}
    for name, s in parts.items():
        (corpus / name).write_text(s, encoding="utf-8")
    extra = tmp_path / "extra.txt"
    extra.write_text(text[9000:10000], encoding="utf-8")
    val = tmp_path / "val.txt"
    val.write_text(text[10000:12000], encoding="utf-8")
    data.prepare_tokens([corpus, extra], tok.path, tmp_path / "t", val_inputs=[val],
                        pattern="*.txt", chunk_bytes=256)
    td = data.TokenData(tmp_path / "t")
    eot = [tok.eot_token]
    expected = np.concatenate([np.concatenate([_ids(tok, parts[n]), eot])
                               for n in ("a.txt", "b.txt", "sub/c.txt")]
                              + [_ids(tok, text[9000:10000]), eot])
    np.testing.assert_array_equal(np.asarray(td.split("train"), dtype=np.int64), expected)
    np.testing.assert_array_equal(np.asarray(td.split("val"), dtype=np.int64),
                                  np.concatenate([_ids(tok, text[10000:12000]), eot]))
    assert td.meta["splits"]["train"]["files"] == 4
    assert td.tokenizer().encode("hello there") == tok.encode("hello there")


def test_prepare_names_a_missing_input(tok, tmp_path):
    with pytest.raises(ValueError, match="nope.txt"):
        data.prepare_tokens([tmp_path / "nope.txt"], tok, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_truncated_token_file_is_refused_with_its_name(tok, tmp_path):
    data.prepare_tokens([SAMPLE], tok, tmp_path / "t", val_fraction=0.1)
    path = tmp_path / "t" / "train.bin"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    with pytest.raises(ValueError, match="train.bin.*truncated"):
        data.load_tokens(tmp_path / "t", "train")
    with pytest.raises(ValueError, match="meta.json"):
        data.TokenData(tmp_path)


def test_batches_are_shifted_windows_and_reproducible():
    tokens = (np.arange(1000) * 7 % 503).astype(np.uint16)
    b = data.TokenBatches(tokens, batch_size=5, block_size=12, seed=3)
    x, y = b.next()
    assert x.shape == (5, 12) and y.shape == (5, 12) and x.dtype == "int64"
    xs, ys = np.asarray(x), np.asarray(y)
    # every row is a window of the tokens, and y is x moved one token on
    for row_x, row_y in zip(xs, ys):
        s = int(np.flatnonzero(tokens[:-12].astype(np.int64) == row_x[0])[0])
        np.testing.assert_array_equal(row_x, tokens[s:s + 12])
        np.testing.assert_array_equal(row_y, tokens[s + 1:s + 13])
    again = data.TokenBatches(tokens, batch_size=5, block_size=12, seed=3)
    np.testing.assert_array_equal(np.asarray(again.next()[0]), xs)
    other = data.TokenBatches(tokens, batch_size=5, block_size=12, seed=4)
    assert not np.array_equal(np.asarray(other.next()[0]), xs)


def test_batch_starts_cover_the_whole_range():
    tokens = np.arange(40, dtype=np.uint16)
    b = data.TokenBatches(tokens, batch_size=64, block_size=8, seed=0)
    starts = np.concatenate([b.next_starts() for _ in range(20)])
    assert starts.min() == 0 and starts.max() == 40 - 8 - 1


def test_batches_resume_from_their_state():
    tokens = np.arange(5000, dtype=np.uint32)
    a = data.TokenBatches(tokens, batch_size=4, block_size=16, seed=11)
    for _ in range(7):
        a.next()
    state = a.state_dict()
    expected = [np.asarray(a.next()[0]) for _ in range(3)]
    b = data.TokenBatches(tokens, batch_size=4, block_size=16, seed=11)
    b.load_state_dict(state)
    assert b.batches == 7
    for e in expected:
        np.testing.assert_array_equal(np.asarray(b.next()[0]), e)
    with pytest.raises(ValueError, match="seed"):
        data.TokenBatches(tokens, batch_size=4, block_size=16, seed=12).load_state_dict(state)


def test_batches_refuse_too_few_tokens():
    with pytest.raises(ValueError, match="block_size 16"):
        data.TokenBatches(np.arange(10, dtype=np.uint16), batch_size=2, block_size=16)
    with pytest.raises(TypeError):
        data.TokenBatches([1, 2, 3], batch_size=2, block_size=1)


def test_eval_windows_are_disjoint_and_fixed():
    tokens = np.arange(1001, dtype=np.uint16)
    wins = list(data.eval_windows(tokens, batch_size=8, block_size=10))
    xs = np.concatenate([np.asarray(x) for x, _ in wins])
    ys = np.concatenate([np.asarray(y) for _, y in wins])
    assert xs.shape == (100, 10)
    np.testing.assert_array_equal(xs.reshape(-1), np.arange(1000))
    np.testing.assert_array_equal(ys, xs + 1)
    few = np.concatenate([np.asarray(x) for x, _ in data.eval_windows(tokens, 4, 10, max_batches=2)])
    assert few.shape == (8, 10) and len(np.unique(few[:, 0])) == 8
    assert few[0, 0] == 0 and few[-1, 0] > 800          # spread over the whole array


def test_token_byte_lengths_count_the_decoded_bytes(text, tok):
    lengths = data.token_byte_lengths(tok)
    ids = tok.encode(text[:5000])
    assert lengths[ids].sum() == len(text[:5000].encode("utf-8"))
    assert lengths[tok.eot_token] == 0


def test_cli_data_prepare(text, tok, tmp_path, capsys):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "one.txt").write_text(text[:4000], encoding="utf-8")
    (folder / "two.txt").write_text(text[4000:8000], encoding="utf-8")
    rc = main(["data", "prepare", "--input", str(folder), "--tokenizer", tok.path,
               "--out", str(tmp_path / "t"), "--val-fraction", "0.25", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train:" in out and "val:" in out
    td = data.TokenData(tmp_path / "t")
    both = np.concatenate([td.split("train"), td.split("val")]).astype(np.int64)
    expected = np.concatenate([_ids(tok, text[:4000]), [tok.eot_token],
                               _ids(tok, text[4000:8000]), [tok.eot_token]])
    np.testing.assert_array_equal(both, expected)
    assert main(["data", "prepare", "--input", str(tmp_path / "missing"), "--tokenizer", tok.path,
                 "--out", str(tmp_path / "u"), "--quiet"]) == 1
    assert "missing" in capsys.readouterr().err


def test_large_vocabularies_are_stored_as_uint32(text, tmp_path):
    # a byte-level tokenizer whose <|endoftext|> id (70000) does not fit in 16 bits
    big = BPETokenizer(special_tokens={"<|endoftext|>": 70000})
    assert big.vocab_size == 70001
    meta = data.prepare_tokens([SAMPLE], big, tmp_path / "t", val_fraction=0.0, chunk_bytes=4096)
    ids = data.load_tokens(tmp_path / "t", "train")
    assert meta["dtype"] == "uint32" and ids.dtype == np.uint32
    assert ids[-1] == 70000
    assert big.decode_bytes(np.asarray(ids[:-1], dtype=np.int64)) == text.encode("utf-8")
