"""HFTokenizer (minillm/tokenizers/hf.py) against HF `tokenizers` itself: each family's
tokenizer.json is built here from our corpus (tests/tokenizer_families.py), then ids, batch
ids and decoded text must equal HF's on held-out text in many scripts."""
import json
import os
import random

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from minillm.tokenizers import BPETokenizer, load_tokenizer  # noqa: E402
from minillm.tokenizers.hf import (GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN,  # noqa: E402
                                   HFTokenizer)
from tokenizer_families import FAMILIES, WORLD_TEXT, build_family  # noqa: E402

HELD_OUT = [
    "", " ", "  ", "\n", "\t", "\r\n", "a", "Hello world", "Hello, World! How are you?",
    "  leading spaces", "trailing spaces   ", "a\r\nb\r\n\r\nc", "tabs\tand\t\tmore\t",
    "line one\nline two\n\n\nline five   \n  indented\n\t\ttabbed",
    "Pourquoi pas? Élève, façade, naïve, Œuvre, ß, İstanbul, ǅ, ﬁ ligature.",
    "北京欢迎你。東京タワー、カタカナとひらがな。한국어 문장입니다.",
    "السلام عليكم ورحمة الله. الرقم ١٢٣٤٥ بالعربية.",
    "हिन्दी में लिखा हुआ वाक्य। संख्या १२३ और ४५६।",
    "Emoji: 🙂🙃 👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇯🇵🇫🇷 ✨✨✨",
    "def f(x, y=3):\n    return {'a': x ** 2, \"b\": [y] * 10}  # comment\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\r\n",
    "    four spaces, then eight:        done. \u00a0nbsp \u3000ideographic \u2003em",
    "numbers: 1 12 123 1234 12345 123456 3.14159 -42 1e10 ²³ ½ Ⅻ ٣",
    "I'm you're he's she'd we'll they've IT'S I'D 'S 'T 'Re x'ſ don't",
    "control\x00chars\x01\x02\x1b[31m\x7f\x85\u200b\u200d\ufeff end",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<s>[INST] What is 2+2? [/INST] 4</s>", "x<s>y</s>z<unk>", "a <mask> b  <mask>c",
    "<tool_call>{\"name\": \"f\"}</tool_call> <extra> x<extra>y",
    "<|im_start|><|im_start|><|im_end", "<|reserved_special_token_1|><|reserved_special_token_10|>",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 Ǆ Ω K Å ῼ",
    "Combining: e\u0301 a\u0308 n\u0303 (NFC changes these) and Hangul \u1100\u1161",
    "x" * 300 + " " + "ab" * 200,
]


def random_texts(seed, n):
    rng = random.Random(seed)
    alphabet = (list(" \t\n\r  ") * 4 + list("aeiouxyzAEIOU0123456789'.,!?-_()[]<>|") +
                list("éüçñ中文日本語한국العربيةहिन्दी🙂🎉\u00a0\u3000\u2581▁") +
                ["<|im_start|>", "<|eot_id|>", "<s>", "[INST]", "'s", "'LL", "\r\n"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    path = build_family(request.param, str(tmp_path_factory.mktemp(request.param)))
    return request.param, tokenizers.Tokenizer.from_file(path), HFTokenizer.from_file(path), path


def world_held_out():
    """Lines of the training text in other scripts, shuffled into new word orders."""
    rng = random.Random(1)
    out = []
    for line in WORLD_TEXT.splitlines():
        words = line.split(" ")
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def test_ids_equal_hf_on_held_out_text(family):
    name, hf, ours, _ = family
    for text in HELD_OUT + world_held_out() + random_texts(0, 300):
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == \
                hf.encode(text, add_special_tokens=add).ids, (name, text, add)


def test_batch_equals_hf_batch(family):
    name, hf, ours, _ = family
    texts = HELD_OUT + random_texts(1, 100)
    for add in (True, False):
        assert ours.encode_batch(texts, add_special_tokens=add, num_threads=2) == \
            [e.ids for e in hf.encode_batch(texts, add_special_tokens=add)]


def test_batch_of_plain_texts_equals_hf_batch(family):
    # no added token anywhere: the batch takes the one-piece-per-text path
    name, hf, ours, _ = family
    texts = [t for t in HELD_OUT + world_held_out() + random_texts(6, 200)
             if "<" not in t and "[" not in t]
    for add in (True, False):
        assert ours.encode_batch(texts, add_special_tokens=add, num_threads=2) == \
            [e.ids for e in hf.encode_batch(texts, add_special_tokens=add)]


def test_long_text_split_over_threads_equals_hf(family):
    name, hf, ours, _ = family
    with open(os.path.join(os.path.dirname(__file__), "data", "sample.txt"), encoding="utf-8") as f:
        text = f.read() + WORLD_TEXT * 20 + "\t\tx\r\n\ty" * 500
    want = hf.encode(text, add_special_tokens=False).ids
    for threads in (1, 2, 4):
        assert ours.encode(text, add_special_tokens=False, num_threads=threads) == want


def test_decode_equals_hf_decode(family):
    name, hf, ours, _ = family
    for text in HELD_OUT + world_held_out() + random_texts(2, 100):
        ids = hf.encode(text).ids
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == \
                hf.decode(ids, skip_special_tokens=skip), (name, text, skip)


def test_decode_of_arbitrary_id_sequences_equals_hf(family):
    # token sequences no encoder makes: split byte tokens, a lone <0xE2>, specials between
    name, hf, ours, _ = family
    rng = random.Random(3)
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(0, 12))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == \
                hf.decode(ids, skip_special_tokens=skip), (name, ids)


def test_round_trip_of_plain_text(family):
    name, hf, ours, _ = family
    for text in ["Hello world", "東京は日本の首都です。", "a\r\n\tb  c", "🙂 x 🎉"]:
        assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text).ids)


def test_vocabulary_lookups_equal_hf(family):
    name, hf, ours, _ = family
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    vocab = hf.get_vocab(with_added_tokens=True)
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1])[:300] + \
            sorted(vocab.items(), key=lambda kv: kv[1])[-50:]:
        assert ours.token_to_id(token) == i
        assert ours.id_to_token(i) == hf.id_to_token(i)
    assert ours.token_to_id("no such token at all") is None


@pytest.mark.parametrize("name", ["qwen2", "llama2", "mistral"])
def test_added_token_flags_equal_hf(name, tmp_path):
    # single_word, lstrip, rstrip, normalized, special in every combination the files use;
    # the mistral file also switches Metaspace to prepend_scheme "never"
    with open(build_family(name, str(tmp_path)), encoding="utf-8") as f:
        doc = json.load(f)
    n = max(max(doc["model"]["vocab"].values()), max(t["id"] for t in doc["added_tokens"])) + 1
    for k, (content, flags) in enumerate([
            ("word", {"single_word": True}), ("<R>", {"rstrip": True}),
            ("<L>", {"lstrip": True, "special": True}),
            ("<LR>", {"lstrip": True, "rstrip": True, "normalized": True}),
            ("yes", {"single_word": True, "normalized": True})]):
        doc["added_tokens"].append({"id": n + k, "content": content, "single_word": False,
                                    "lstrip": False, "rstrip": False, "normalized": False,
                                    "special": False, **flags})
    if name == "mistral":
        doc["pre_tokenizer"]["prepend_scheme"] = "never"
    path = write(tmp_path, doc, "tokenizer.json")
    hf, ours = tokenizers.Tokenizer.from_file(path), HFTokenizer.from_file(path)
    for text in ["a word here", "awordb", "word", "words word_ word, (word)", "x<R>  y",
                 "x  <L>y", " a \t<LR>\n b", "yes yesno noyes yes.", "<R><L><LR>",
                 "é word ünword wordü 3word"] + HELD_OUT:
        assert ours.encode(text) == hf.encode(text).ids, (name, text)
        ids = hf.encode(text).ids
        assert ours.decode(ids, skip_special_tokens=False) == \
            hf.decode(ids, skip_special_tokens=False)


def test_load_tokenizer_picks_hf_for_family_files(family, tmp_path):
    name, _, ours, path = family
    tok = load_tokenizer(os.path.dirname(path))
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("Hello <s> world") == ours.encode("Hello <s> world")
    saved = tok.save(str(tmp_path / "copy"))
    assert load_tokenizer(saved).encode("x y z") == ours.encode("x y z")


def test_load_tokenizer_keeps_minillm_and_gpt2_files(tmp_path):
    tok = BPETokenizer().train("hello world, hello tokenizer. " * 50, 300, num_threads=1)
    folder = tok.save(str(tmp_path / "own"))
    assert isinstance(load_tokenizer(folder), BPETokenizer)
    os.remove(os.path.join(folder, "tokenizer.json"))     # GPT-2's vocab.json + merges.txt
    assert isinstance(load_tokenizer(folder), BPETokenizer)


def test_hf_tokenizer_reads_minillm_files_as_hf_does(tmp_path):
    tok = BPETokenizer().train(WORLD_TEXT * 5, 600, num_threads=1)
    path = os.path.join(tok.save(str(tmp_path)), "tokenizer.json")
    hf, ours = tokenizers.Tokenizer.from_file(path), HFTokenizer.from_file(path)
    for text in HELD_OUT + ["x<|endoftext|>y"]:
        assert ours.encode(text) == hf.encode(text).ids
        assert ours.decode(hf.encode(text).ids) == hf.decode(hf.encode(text).ids)


def test_other_normalizers_equal_hf(tmp_path):
    # NFKC, Lowercase, Strip and Replace in one Sequence, on a byte-level file
    with open(build_family("smollm2", str(tmp_path)), encoding="utf-8") as f:
        doc = json.load(f)
    doc["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Lowercase"},
        {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Replace", "pattern": {"String": "  "}, "content": " "}]}
    path = write(tmp_path, doc, "tokenizer.json")
    hf, ours = tokenizers.Tokenizer.from_file(path), HFTokenizer.from_file(path)
    for text in HELD_OUT + world_held_out():
        assert ours.encode(text) == hf.encode(text).ids, text
    assert ours.encode_batch(HELD_OUT) == [e.ids for e in hf.encode_batch(HELD_OUT)]


@pytest.mark.parametrize("change", ["no_fuse_unk", "no_unk", "ignore_merges"])
def test_model_options_equal_hf(change, tmp_path):
    # unknown characters one <unk> each, or dropped without an unk token; ignore_merges on
    # a SentencePiece-style vocabulary
    with open(build_family("sp_unk", str(tmp_path)), encoding="utf-8") as f:
        doc = json.load(f)
    if change == "no_fuse_unk":
        doc["model"]["fuse_unk"] = False
    elif change == "no_unk":
        doc["model"]["unk_token"] = None
    else:
        doc["model"]["ignore_merges"] = True
    path = write(tmp_path, doc, "tokenizer.json")
    hf, ours = tokenizers.Tokenizer.from_file(path), HFTokenizer.from_file(path)
    for text in HELD_OUT + world_held_out():
        assert ours.encode(text) == hf.encode(text).ids, text


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_ignore_merges_takes_whole_words_as_hf(ignore_merges, tmp_path):
    # "abc" and "Ġabc" are tokens no merge makes: only a whole-word lookup finds them
    from minillm.tokenizers.base import BYTE_TO_CHAR
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    for s in ["ab", "Ġa", "abc", "Ġabc"]:
        vocab[s] = len(vocab)
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
                "invert": False},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                "use_regex": False}]},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                       "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                     "byte_fallback": False, "ignore_merges": ignore_merges,
                     "vocab": vocab, "merges": [["a", "b"], ["Ġ", "a"]]}}
    path = write(tmp_path, doc, "tokenizer.json")
    hf, ours = tokenizers.Tokenizer.from_file(path), HFTokenizer.from_file(path)
    for text in ["abc", " abc abcd ab", "abcabc", "xabc"]:
        assert ours.encode(text) == hf.encode(text).ids, text
    assert (vocab["abc"] in ours.encode("abc")) == ignore_merges


def test_encoder_rejects_unknown_options():
    from minillm import _bpe
    with pytest.raises(ValueError, match="unknown pre-tokenizer step 'gpt5'"):
        _bpe.pretokenize(b"x", ("gpt5",))
    with pytest.raises(ValueError, match="at most 8"):
        _bpe.pretokenize(b"x", ("digits",) * 9)
    with pytest.raises(ValueError, match="unk id 256 is outside the vocabulary of 256"):
        _bpe.Encoder(np.zeros((0, 3)), np.arange(256), bytes(range(256)),
                     np.arange(257), unk_id=256)


def test_bos_eos_come_from_tokenizer_config(tmp_path):
    path = build_family("llama2", str(tmp_path))
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": {"content": "</s>"}}, f)
    tok = HFTokenizer.from_file(path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.eot_token) == (1, 2, 2)


def test_decode_bytes_streams_the_text(family):
    # token by token through an incremental UTF-8 decoder: byte-level, exactly what decode
    # gives; SentencePiece-style, the text itself with the word mark's leading space
    import codecs
    name, hf, ours, _ = family
    for text in HELD_OUT[7:25]:
        if "<" in text or "[" in text:
            continue
        ids = ours.encode(text, add_special_tokens=False)
        stream = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = "".join(stream.decode(ours.decode_bytes([i])) for i in ids) + stream.decode(b"", True)
        if ours._fast_decode:
            assert out == ours.decode(ids, skip_special_tokens=False)
        elif name != "sp_unk":     # (unknown characters cannot come back)
            assert out.lstrip(" ") == text.lstrip(" ") and len(out) - len(text) in (0, 1)


# ---------------------------------------------------------------------- pre-tokenizers
def code_point_probe(step, per_text=400):
    cps = [cp for cp in list(range(0x80, 0x40000, step)) + list(range(0xE0000, 0xF0100, step))
           if not 0xD800 <= cp <= 0xDFFF]
    return ["".join(f"x{c}x !{c}! 1{c}1 {c} \t{c}{c}'S\r\n{c}\u3000{c}{c}7\n"
                    for c in map(chr, cps[i:i + per_text]))
            for i in range(0, len(cps), per_text)]


@pytest.mark.parametrize("pattern,step", [(GPT2_PATTERN, "gpt2"), (LLAMA3_PATTERN, "llama3"),
                                          (QWEN2_PATTERN, "qwen2")])
def test_split_patterns_equal_hf_on_all_of_unicode(pattern, step):
    from minillm import _bpe
    pre = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated")
    for text in code_point_probe(29) + HELD_OUT + random_texts(4, 200):
        ours = [p.decode("utf-8") for p in _bpe.pretokenize(text.encode("utf-8"), (step,))]
        assert ours == [p for p, _ in pre.pre_tokenize_str(text)], (step, text[:80])


@pytest.mark.parametrize("individual", [True, False])
def test_digits_then_byte_level_equals_hf(individual):
    from minillm import _bpe
    from minillm.tokenizers.base import token_to_str
    pre = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=individual),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)])
    steps = ("digits" if individual else "digit_runs", "gpt2")
    for text in code_point_probe(97) + HELD_OUT:
        ours = [token_to_str(p) for p in _bpe.pretokenize(text.encode("utf-8"), steps)]
        assert ours == [p for p, _ in pre.pre_tokenize_str(text)]


def test_metaspace_split_equals_hf():
    from minillm import _bpe
    pre = tokenizers.pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
    for text in HELD_OUT + random_texts(5, 100):
        marked = text.replace(" ", "▁")
        ours = [p.decode("utf-8") for p in _bpe.pretokenize(marked.encode("utf-8"), ("metaspace",))]
        assert ours == [p for p, _ in pre.pre_tokenize_str(text)]


# ---------------------------------------------------------------------- errors
def family_doc(tmp_path, name="qwen2"):
    with open(build_family(name, str(tmp_path / "base")), encoding="utf-8") as f:
        return json.load(f)


def write(tmp_path, doc, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("change,message", [
    (lambda d: d["model"].update(type="Unigram"), "model type 'Unigram' is not supported"),
    (lambda d: d.update(normalizer={"type": "BertNormalizer"}), "normalizer"),
    (lambda d: d.update(normalizer={"type": "Replace", "pattern": {"Regex": "a+"},
                                    "content": "b"}), "normalizer Replace pattern"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer"),
    (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+"),
     "Split pattern"),
    (lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed"),
     "Split behaviour"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder"),
    (lambda d: d.update(post_processor={"type": "Mystery"}), "post_processor"),
    (lambda d: d.update(truncation={"max_length": 8}), "\"truncation\""),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
    (lambda d: d["model"].update(dropout=0.1), "dropout"),
    (lambda d: d["model"]["merges"].append("Ġ zzzz"), "'zzzz' is not in model.vocab"),
    (lambda d: d["model"]["merges"].append(["a"]), "model.merges"),
    (lambda d: d["model"]["vocab"].update(x=-1), "ids must be non-negative"),
    (lambda d: d["model"].update(unk_token="<nope>"), "unk_token '<nope>'"),
    (lambda d: d["added_tokens"].append({"id": "x", "content": "y"}), "added_tokens"),
    (lambda d: d.update(model=[1, 2]), "\"model\" must be an object"),
])
def test_malformed_tokenizer_json_names_the_problem(tmp_path, change, message):
    doc = family_doc(tmp_path)
    change(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ValueError, match="bad.json") as e:
        HFTokenizer.from_file(path)
    assert message in str(e.value)


def test_broken_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{\n "model": {\n  "type": "BPE",,\n}')
    with pytest.raises(ValueError, match=r"bad.json line 3"):
        HFTokenizer.from_file(path)


def test_bad_ids_and_text_are_clear_errors(family):
    name, _, ours, _ = family
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([0, ours.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([-1])
    with pytest.raises(ValueError, match="lone surrogate"):
        ours.encode("ok \ud800 no")
    with pytest.raises(TypeError, match="expected text as str"):
        ours.encode(b"bytes")
