"""Word tokenizer: splitting, vocabulary rules, encode/decode, save/load."""
import os

import pytest

from minillm.tokenizers import BasicTokenizer, load_tokenizer
from minillm.tokenizers.basic import split_words

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")


def test_split_words_separates_punctuation_and_drops_whitespace():
    assert split_words("Who's there?\n  Nay, answer me--stand!") == [
        "Who", "'", "s", "there", "?", "Nay", ",", "answer", "me", "-", "-", "stand", "!"]
    assert split_words("  \t\n") == []
    assert split_words("naïve 日本 x_1") == ["naïve", "日本", "x_1"]


def test_vocabulary_orders_by_count_then_first_appearance():
    tok = BasicTokenizer().train("b a b c a b d", vocab_size=10)
    # counts: b 3, a 2, c 1, d 1 (c seen before d)
    assert tok.itos == ["<unk>", "b", "a", "c", "d"]


def test_vocabulary_respects_max_size_and_min_frequency():
    text = "b a b c a b d"
    assert BasicTokenizer().train(text, vocab_size=3).itos == ["<unk>", "b", "a"]
    assert BasicTokenizer().train(text, 10, min_frequency=2).itos == ["<unk>", "b", "a"]
    tok = BasicTokenizer().train(text, 10, special_tokens=["<eos>"])
    assert tok.itos[:2] == ["<unk>", "<eos>"]
    with pytest.raises(ValueError, match="vocab_size 1"):
        BasicTokenizer().train(text, 1, special_tokens=["<eos>"])


def test_unknown_words_encode_to_unk():
    tok = BasicTokenizer().train("the cat sat", 10)
    assert tok.encode("the dog sat") == [tok.stoi["the"], tok.unk_id, tok.stoi["sat"]]
    assert tok.unk_id == 0


def test_decode_attaches_punctuation():
    tok = BasicTokenizer().train("Hello , world ! ( yes ) ok .", 50)
    ids = tok.encode("Hello, world! (yes) ok.")
    assert tok.decode(ids) == "Hello, world! (yes) ok."
    with pytest.raises(ValueError, match="token id 99"):
        tok.decode([99])


def test_roundtrip_of_words_on_sample():
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    tok = BasicTokenizer().train(text, 100_000)
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert split_words(tok.decode(ids)) == split_words(text)


def test_lowercase_option():
    tok = BasicTokenizer(lowercase=True).train("The the THE", 10)
    assert tok.itos == ["<unk>", "the"]
    assert tok.encode("tHe") == [1]


def test_save_load_roundtrip(tmp_path):
    tok = BasicTokenizer().train("to be or not to be", 10)
    path = tok.save(str(tmp_path))
    assert os.path.basename(path) == "basic.json"
    for where in (str(tmp_path), path):
        back = load_tokenizer(where)
        assert isinstance(back, BasicTokenizer)
        assert back.itos == tok.itos
        assert back.encode("not to be") == tok.encode("not to be")


def test_malformed_file_raises_with_file_and_line(tmp_path):
    path = tmp_path / "basic.json"
    path.write_text('{"type": "basic",\n "vocab": ["<unk>", "a",]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"basic\.json line 2: bad JSON"):
        BasicTokenizer.load(str(path))
    path.write_text('{"type": "basic", "vocab": ["<unk>", "a", "a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"basic\.json: token 'a' appears twice"):
        BasicTokenizer.load(str(path))
    path.write_text('{"type": "basic", "vocab": ["a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="<unk>"):
        BasicTokenizer.load(str(path))


def test_cli_trains_a_basic_tokenizer(tmp_path, capsys):
    from minillm.cli import main
    out = tmp_path / "basic"
    assert main(["tokenizer", "train", "--type", "basic", "--input", SAMPLE, "--vocab-size",
                 "500", "--out", str(out)]) == 0
    tok = load_tokenizer(str(out))
    assert isinstance(tok, BasicTokenizer) and tok.vocab_size == 500
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "Hamlet, my lord"]) == 0
    assert [int(x) for x in capsys.readouterr().out.split()] == tok.encode("Hamlet, my lord")
