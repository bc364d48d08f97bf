"""Byte-level BPE: pre-tokenization, training, encoding/decoding, files; checked by hand and
against tiktoken and HF `tokenizers` (skipped, saying so, where those are not installed)."""
import json
import os
import random
import shutil
import unicodedata

import numpy as np
import pytest

from minillm.tokenizers import BPETokenizer, load_tokenizer
from minillm.tokenizers.base import BYTE_TO_CHAR, bytes_to_unicode

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "data", "sample.txt")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Strings that stress the pre-tokenizer and the byte handling.
TRICKY = [
    "", " ", "  ", "\n", "a", "Hello, world!", "Hello  world", "don't I'm we'll they're I've he'd",
    "'s 'S 'll'll ''s x's", "  leading spaces and trailing  ", "tabs\tand\nnew\r\nlines\n\n\n",
    "numbers 123 4567 ١٢٣ ½ Ⅻ", "emoji 😀👍🏽 👨‍👩‍👧 🏳️‍🌈", "CJK 日本語のテキスト 中文 한국어",
    "combining e\u0301 a\u0300\u0316 \u0308", "controls \x00\x01\x07\x1b[0m\x7f\x85",
    "spaces \u00a0\u2000\u2003\u200a\u3000\u2028\u2029\u202f\u205f x", "zero width \u200b\u200d\ufeff",
    "RTL עברית العربية", "math ∑∫√ ≠ ≤", "\u1680ogham", "  \u00a0 x", "\t x", "x \t", "!!!???...",
    "a" * 300, " " * 200 + "b", "ab" * 150, "Ωmega ßtraße İstanbul ǅ", "\U0010FFFD\U0001F600",
]


def random_texts(seed, count):
    """Random strings over letters, digits, punctuation, spaces, and assigned non-ASCII code
    points (surrogates excluded) of this Python's Unicode version."""
    rng = random.Random(seed)
    pool = "abc XYZ 019 .,!?-'sdtmlrve\t\n\r\u00a0\u2003\u3000\u0301éß日😀١"
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 24)):
            if rng.random() < 0.2:
                cp = rng.randint(0x80, 0x10FFFF)
                c = chr(cp)
                if unicodedata.category(c) in ("Cs", "Cn"):
                    continue
                chars.append(c)
            else:
                chars.append(rng.choice(pool))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def sample():
    with open(SAMPLE, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def tok(sample):
    return BPETokenizer().train(sample, 700, num_threads=1)


def tiktoken_encoding(tok):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {tok.vocab[i]: i for i in tok.vocab}
    return tiktoken.Encoding("minillm-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=dict(tok.special_tokens))


# ---------------------------------------------------------------------- pre-tokenization
def test_pretokenize_matches_gpt2_regex():
    regex = pytest.importorskip("regex")
    from minillm import _bpe
    pat = regex.compile(GPT2_PATTERN)
    for text in TRICKY + random_texts(0, 2000):
        got = [p.decode("utf-8") for p in _bpe.pretokenize(text.encode("utf-8"))]
        assert got == pat.findall(text), repr(text)


# Code points that Unicode 15 and 16 added (letters and a digit): tiktoken 0.14 and tokenizers
# 0.23 follow Unicode 16, and so do csrc/unicode_tables.h.
NEW_IN_UNICODE_15_16 = [0x11F04, 0x31350, 0x2EBF0, 0x10D50, 0x105C0, 0x16D70]


def code_point_probe(step, per_text=500):
    """Texts holding every `step`-th non-surrogate code point in contexts that reveal its class."""
    # planes 0-3 and 14 hold every assigned character; 4-13 are empty, 15-16 private use
    cps = [cp for cp in list(range(0x80, 0x40000, step)) + list(range(0xE0000, 0xF0100, step))
           if not 0xD800 <= cp <= 0xDFFF]
    cps += NEW_IN_UNICODE_15_16
    return ["".join(f"x{c}x !{c}! 1{c}1 {c} {c}{c}'s\u3000{c}\n"
                    for c in map(chr, cps[i:i + per_text]))
            for i in range(0, len(cps), per_text)]


def test_pretokenize_matches_hf_on_all_of_unicode():
    tokenizers = pytest.importorskip("tokenizers")
    from minillm import _bpe
    from minillm.tokenizers.base import token_to_str
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for text in code_point_probe(23):
        ours = [token_to_str(p) for p in _bpe.pretokenize(text.encode("utf-8"))]
        assert ours == [p for p, _ in pre.pre_tokenize_str(text)]


def test_ids_match_tiktoken_on_all_of_unicode():
    tiktoken = pytest.importorskip("tiktoken")
    # every byte pair is a merge, so a pre-token boundary in one place but not the other
    # changes the ids
    merges = [(a, b, 256 + 256 * a + b) for a in range(256) for b in range(256)]
    ours = BPETokenizer(merges, special_tokens={})
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({bytes([a, b]): m for a, b, m in merges})
    enc = tiktoken.Encoding("pairs", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    for text in code_point_probe(23):
        assert ours.encode(text) == enc.encode_ordinary(text)


def test_pretokenize_invalid_utf8_bytes_are_single_characters():
    from minillm import _bpe
    data = b"ab\xff\xfe cd\xe6\x97 \xf0\x9f"
    pieces = _bpe.pretokenize(data)
    assert b"".join(pieces) == data
    assert pieces[0] == b"ab" and pieces[1] == b"\xff\xfe"


def test_encoder_roundtrips_arbitrary_bytes(tok):
    # invalid UTF-8 (truncated sequences, stray continuation bytes) never reaches Python text,
    # but the C scanner must still cover every byte exactly once
    rng = random.Random(5)
    alphabet = [0x20, 0x0A, 0x27, 0x73, 0x61, 0xC3, 0xA9, 0xE6, 0x97, 0xF0, 0x9F, 0x80, 0xFF]
    for _ in range(500):
        data = bytes(rng.choice(alphabet) if rng.random() < 0.8 else rng.randrange(256)
                     for _ in range(rng.randint(0, 80)))
        assert tok.decode_bytes(tok._encoder.encode(data, 1)) == data


# ---------------------------------------------------------------------- training
def test_training_tiny_corpus_gives_hand_computed_merges():
    # pre-tokens: "aab", " aab", " ab". Counts: (a,b)=3 (a,a)=2 (' ',a)=2 -> (a,b)=256;
    # then (a,256)=2 -> 257; then (' ',256)=1 and (' ',257)=1 tie: smaller ids first -> 258,
    # then 259; then no pair is left, so training stops below the requested size.
    tok = BPETokenizer().train("aab aab ab", 256 + 10, special_tokens=())
    assert tok.merges == [(97, 98, 256), (97, 256, 257), (32, 256, 258), (32, 257, 259)]
    assert tok.vocab[257] == b"aab" and tok.vocab[259] == b" aab"
    assert tok.vocab_size == 260
    assert tok.encode("aab ab") == [257, 258]


def test_training_counts_each_text_of_an_iterable_separately():
    # As one string " aab" would be a pre-token; as two texts "aab" and " ab" are not joined.
    tok = BPETokenizer().train(["aab", "aab", " ab"], 256 + 1, special_tokens=())
    assert tok.merges == [(97, 98, 256)]


def test_training_special_tokens_follow_the_merges(sample):
    tok = BPETokenizer().train(sample, 300, special_tokens=["<|endoftext|>", "<pad>"])
    assert len(tok.merges) == 300 - 256 - 2
    assert tok.special_tokens == {"<|endoftext|>": 298, "<pad>": 299}
    assert tok.eot_token == 298 and tok.vocab_size == 300


def test_training_is_the_same_for_one_and_two_threads(sample):
    big = sample * 16     # above the size where counting is split over threads
    one = BPETokenizer().train(big, 600, num_threads=1)
    two = BPETokenizer().train(big, 600, num_threads=2)
    assert one.merges == two.merges


def test_training_vocab_size_too_small_raises():
    with pytest.raises(ValueError, match="vocab_size 200"):
        BPETokenizer().train("abc", 200)


def test_training_reports_progress(sample):
    seen = []
    BPETokenizer().train(sample, 1000, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1000 - 257, 1000 - 257) and len(seen) >= 2


# ---------------------------------------------------------------------- encode / decode
def test_roundtrip_on_arbitrary_unicode(tok):
    for text in TRICKY + random_texts(1, 500):
        ids = tok.encode(text)
        assert tok.decode(ids) == text, repr(text)


def test_lone_surrogate_raises_clear_error(tok):
    with pytest.raises(ValueError, match="surrogate.*U\\+D800.*index 2"):
        tok.encode("ab\ud800cd")
    with pytest.raises(ValueError, match="texts\\[1\\]"):
        tok.encode_batch(["ok", "x\udfff"])


def test_encode_rejects_non_str(tok):
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"abc")


def test_decode_replaces_invalid_utf8_like_gpt2(tok):
    euro = "€".encode("utf-8")                       # e2 82 ac: split it
    ids = [euro[0], euro[1]] + tok.encode(" ok")
    assert tok.decode(ids) == "\ufffd ok" or tok.decode(ids) == "\ufffd\ufffd ok"
    assert tok.decode(ids) == (bytes([euro[0], euro[1]]) + b" ok").decode("utf-8", "replace")
    assert tok.decode_bytes([0xFF, 0x41]) == b"\xffA"


def test_decode_bad_id_raises(tok):
    with pytest.raises(ValueError, match="token id 5000"):
        tok.decode([1, 5000])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="token id 5000"):
        tok.decode(np.array([3, 5000]))
    with pytest.raises(TypeError, match="integers, got 1.5"):
        tok.decode([1, 1.5])
    assert tok.decode([np.int64(72), 105]) == "Hi"


def test_empty_text(tok):
    assert tok.encode("") == []
    assert tok.decode([]) == ""
    assert tok.encode_batch([]) == []
    assert tok.encode_batch(["", "a"]) == [[], [97]]


def test_special_tokens_only_when_allowed(tok):
    text = "a<|endoftext|>b"
    plain = tok.encode(text)
    assert tok.eot_token not in plain
    assert tok.decode(plain) == text
    allowed = tok.encode(text, allowed_special="all")
    assert allowed == tok.encode("a") + [tok.eot_token] + tok.encode("b")
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == allowed
    assert tok.decode(allowed) == text
    with pytest.raises(ValueError, match="<nope>"):
        tok.encode(text, allowed_special={"<nope>"})


def test_encode_batch_matches_encode(tok, sample):
    lines = sample.splitlines(keepends=True)[:2000] + TRICKY
    assert tok.encode_batch(lines, num_threads=2) == [tok.encode(s) for s in lines]
    ids, offsets = tok.encode_batch_ndarray(lines, num_threads=2)
    assert ids.dtype == np.uint32 and offsets.shape == (len(lines) + 1,)
    assert ids[offsets[5]:offsets[6]].tolist() == tok.encode(lines[5])


def test_encode_long_text_same_for_one_and_two_threads(tok, sample):
    big = sample * 4 + "".join(TRICKY)     # long enough to be split over threads
    one = tok.encode_ndarray(big, num_threads=1)
    two = tok.encode_ndarray(big, num_threads=2)
    assert one.dtype == np.uint32
    np.testing.assert_array_equal(one, two)
    assert tok.decode(two) == big


# ---------------------------------------------------------------------- reference libraries
def test_ids_match_tiktoken_on_sample_and_tricky_unicode(tok, sample):
    enc = tiktoken_encoding(tok)
    assert tok.encode(sample) == enc.encode_ordinary(sample)
    for text in TRICKY + random_texts(2, 1000):
        assert tok.encode(text) == enc.encode_ordinary(text), repr(text)


def test_long_words_match_tiktoken(tok):
    enc = tiktoken_encoding(tok)
    rng = random.Random(3)
    for n in (63, 64, 65, 100, 1000, 5000):
        word = "".join(rng.choice("theandofs") for _ in range(n))   # one long pre-token
        assert tok.encode(word) == enc.encode_ordinary(word)
        assert tok.encode(" " + word) == enc.encode_ordinary(" " + word)


def test_saved_tokenizer_json_gives_same_ids_in_hf(tok, sample, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok.save(str(tmp_path))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.get_vocab_size() == tok.vocab_size
    assert hf.encode(sample).ids == tok.encode(sample)
    for text in TRICKY + random_texts(4, 300):
        assert hf.encode(text).ids == tok.encode(text), repr(text)
    ids = tok.encode("Hello, world! 😀")
    assert hf.decode(ids) == tok.decode(ids)


def test_hf_trained_files_load_and_give_hf_ids(sample, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator([sample], trainer)
    gpt2_dir = tmp_path / "gpt2"
    gpt2_dir.mkdir()
    hf.model.save(str(gpt2_dir))                          # vocab.json + merges.txt
    hf.save(str(tmp_path / "tokenizer.json"))
    for ours in (load_tokenizer(str(gpt2_dir)), load_tokenizer(str(tmp_path / "tokenizer.json"))):
        assert ours.special_tokens == {"<|endoftext|>": hf.token_to_id("<|endoftext|>")}
        assert ours.encode(sample) == hf.encode(sample).ids
        for text in TRICKY:
            assert ours.encode(text) == hf.encode(text).ids, repr(text)
        assert ours.decode(hf.encode(sample).ids) == sample


# ---------------------------------------------------------------------- files
def test_save_load_roundtrip_both_formats(tok, sample, tmp_path):
    tok.save(str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "a")) == ["merges.txt", "tokenizer.json", "vocab.json"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / "tokenizer.json")          # forces vocab.json + merges.txt
    for path in (tmp_path / "a", tmp_path / "b", tmp_path / "a" / "tokenizer.json"):
        back = load_tokenizer(str(path))
        assert back.merges == tok.merges
        assert back.special_tokens == tok.special_tokens
        assert back.encode(sample[:5000]) == tok.encode(sample[:5000])
    merges = (tmp_path / "a" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + len(tok.merges)


def test_bytes_to_unicode_is_gpt2_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120" and table[0] == "\u0100"
    assert table[ord("\n")] == "\u010a" and table[0xAD] == "\u0143"


def write_gpt2_files(folder, vocab_text=None, merges_text=None):
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    vocab["Ġt"] = 256
    vocab["he"] = 257
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(vocab_text if vocab_text is not None else json.dumps(vocab, indent=1))
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(merges_text if merges_text is not None else "#version: 0.2\nĠ t\nh e\n")
    return folder


def test_small_gpt2_files_load(tmp_path):
    tok = load_tokenizer(write_gpt2_files(str(tmp_path)))
    assert tok.encode(" the") == [256, 257]


def test_malformed_vocab_json_names_file_and_line(tmp_path):
    folder = write_gpt2_files(str(tmp_path), vocab_text='{\n "a": 1,\n "b": 2\n "c": 3\n}')
    with pytest.raises(ValueError, match=r"vocab\.json line 4: bad JSON"):
        load_tokenizer(folder)


def test_vocab_json_duplicate_id_names_file_and_line(tmp_path):
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    text = json.dumps(vocab, indent=1)[:-2] + ',\n "Ġt": 7\n}'
    folder = write_gpt2_files(str(tmp_path), vocab_text=text)
    with pytest.raises(ValueError, match=r"vocab\.json line 258: duplicate id 7"):
        load_tokenizer(folder)


def test_merge_of_unknown_parts_names_file_and_line(tmp_path):
    folder = write_gpt2_files(str(tmp_path), merges_text="#version: 0.2\nĠ t\nq zz\n")
    with pytest.raises(ValueError, match=r"merges\.txt line 3: .*'zz' is not in the vocabulary"):
        load_tokenizer(folder)
    folder = write_gpt2_files(str(tmp_path), merges_text="#version: 0.2\nĠ t\nh e\nt h\n")
    with pytest.raises(ValueError, match=r"merges\.txt line 4: .*makes 'th'"):
        load_tokenizer(folder)
    folder = write_gpt2_files(str(tmp_path), merges_text="#version: 0.2\nĠt\n")
    with pytest.raises(ValueError, match=r"merges\.txt line 2: expected 'left right'"):
        load_tokenizer(folder)


def test_malformed_tokenizer_json_names_file_and_line(tok, tmp_path):
    tok.save(str(tmp_path))
    path = tmp_path / "tokenizer.json"
    good = path.read_text(encoding="utf-8")
    path.write_text(good.replace('"model": {', '"model": {,', 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json line \d+: bad JSON"):
        load_tokenizer(str(path))
    doc = json.loads(good)
    first = doc["model"]["merges"][0]
    doc["model"]["merges"][3] = "Ġ zzzz"
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = path.read_text(encoding="utf-8").splitlines()
    expected = next(i for i, s in enumerate(lines, 1) if "Ġ zzzz" in s)
    with pytest.raises(ValueError, match=rf"tokenizer\.json line {expected}: .*'zzzz'"):
        load_tokenizer(str(path))
    doc["model"]["merges"][3] = first
    doc["model"]["vocab"]["Ġzz"] = 5
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json line \d+: duplicate id 5"):
        load_tokenizer(str(path))


def test_load_missing_files_raises(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="no such file"):
        load_tokenizer(str(tmp_path / "nope"))


# ---------------------------------------------------------------------- command line
def test_cli_train_encode_decode(tmp_path, capsys):
    from minillm.cli import main
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", SAMPLE, "--vocab-size", "400", "--out",
                 str(out), "--quiet", "--threads", "1"]) == 0
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 400
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "To be, or not"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == tok.encode("To be, or not")
    assert main(["tokenizer", "decode", "--tokenizer", str(out),
                 "--ids", " ".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "To be, or not"
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "--ids", "1 x"]) == 1
    assert "integer ids" in capsys.readouterr().err
