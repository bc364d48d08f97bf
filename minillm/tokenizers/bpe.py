"""Byte-level BPE as in GPT-2, with training, encoding and decoding in C (csrc/bpe.c).

Text is split into pre-tokens by GPT-2's pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
each pre-token's UTF-8 bytes start as single-byte tokens, and merges join adjacent tokens,
lowest rank first. For the same merges the ids equal those of tiktoken and HF `tokenizers`.

Training (ours): tokens 0..255 are the bytes, merge k creates id 256 + k, special tokens
follow the merges. Each merge takes the pair with the highest count over the corpus; ties go
to the pair with the smallest (left id, right id).

Files: `save(dir)` writes tokenizer.json (HF `tokenizers` format: BPE model, ByteLevel
pre-tokenizer and decoder) and GPT-2's vocab.json + merges.txt; `BPETokenizer.load` reads
either, including files written by others (e.g. GPT-2's own vocab.json + merges.txt).
"""
import json
import os
import re

import numpy as np

from ..progress import Progress
from ..utils import default_num_threads, json_key_pattern, line_of, parse_json, read_text
from .base import BYTE_TO_CHAR, Tokenizer, native_bpe, split_ids, str_to_token, token_to_str, utf8, where

ENDOFTEXT = "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"



class BPETokenizer(Tokenizer):
    """Byte-level BPE tokenizer.

    merges: list of (left id, right id, merged id), in rank order.
    vocab: dict id -> bytes for every non-special token (the 256 bytes and all merge results).
    special_tokens: dict str -> id, matched in text only where `encode` allows them.
    byte_ids: (256,) the id of each single byte (0..255 for tokenizers we train; GPT-2's
    vocab.json orders them differently).
    """

    def __init__(self, merges=(), vocab=None, special_tokens=None, byte_ids=None):
        self.merges = [tuple(int(x) for x in m) for m in merges]
        if vocab is None:
            vocab = {b: bytes([b]) for b in range(256)}
            for a, b, m in self.merges:
                vocab[m] = vocab[a] + vocab[b]
        self.vocab = dict(vocab)
        self.special_tokens = dict(special_tokens or {})
        self.byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        self._build()

    # ------------------------------------------------------------------ setup
    def _build(self):
        ids = list(self.vocab) + list(self.special_tokens.values())
        size = max(ids) + 1 if ids else 256
        pieces = [b""] * size
        for i, tok in self.vocab.items():
            pieces[i] = tok
        for s, i in self.special_tokens.items():
            if i in self.vocab:
                raise ValueError(f"special token {s!r} has id {i}, which token "
                                 f"{self.vocab[i]!r} already uses")
            pieces[i] = s.encode("utf-8")
        offsets = np.zeros(size + 1, dtype=np.int64)
        np.cumsum([len(p) for p in pieces], out=offsets[1:])
        merges = np.array(self.merges, dtype=np.uint32).reshape(-1, 3)
        self._size = size
        self._encoder = native_bpe().Encoder(merges, np.array(self.byte_ids, dtype=np.uint32),
                                          b"".join(pieces), offsets)
        self._special_re_cache = {}
        self._ints = list(range(size))      # shared int objects for the lists encode returns

    @property
    def vocab_size(self):
        """Number of ids (largest id + 1), special tokens included."""
        return self._size

    @property
    def eot_token(self):
        """Id of <|endoftext|>, or None if this tokenizer has no such token."""
        return self.special_tokens.get(ENDOFTEXT)

    # ------------------------------------------------------------------ training
    def train(self, text, vocab_size, special_tokens=(ENDOFTEXT,), progress=None,
              num_threads=None):
        """Learn merges from `text` (a str, or an iterable of str whose items are pre-tokenized
        separately) until the vocabulary has `vocab_size` ids: 256 bytes, vocab_size - 256 -
        len(special_tokens) merges (fewer if the corpus runs out of pairs), then the special
        tokens. `progress`: a minillm.progress mode (auto, bar, log, none; True is auto, None or
        False none) or a callable(done, total).
        Replaces this tokenizer's vocabulary; returns self.
        """
        special_tokens = list(special_tokens or ())
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special tokens repeat: {special_tokens}")
        n_merges = int(vocab_size) - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the 256 byte tokens plus "
                             f"{len(special_tokens)} special tokens")
        nthreads = num_threads or default_num_threads()
        bpe = native_bpe()
        counter = bpe.WordCounter()
        has_text = False
        for piece in ([text] if isinstance(text, str) else text):
            has_text = has_text or re.search(r"\S", piece) is not None
            counter.add(utf8(piece), nthreads)
        if not has_text:
            raise ValueError("no text to train a tokenizer on: the text is empty or only whitespace")
        trainer = bpe.Trainer(counter, 256)
        report = None if callable(progress) else Progress(n_merges, "bpe", unit="merges", mode=progress)
        pairs = []
        try:
            while len(pairs) < n_merges:
                got, _ = trainer.step(min(256, n_merges - len(pairs)))
                pairs.extend(got.tolist())
                if report is None:
                    progress(len(pairs), n_merges)
                else:
                    report.set(len(pairs))
                if len(got) == 0:
                    break
        finally:
            if report is not None:
                report.close()
        self.merges = [(a, b, 256 + k) for k, (a, b) in enumerate(pairs)]
        self.vocab = {b: bytes([b]) for b in range(256)}
        for a, b, m in self.merges:
            self.vocab[m] = self.vocab[a] + self.vocab[b]
        first = 256 + len(self.merges)
        self.special_tokens = {s: first + i for i, s in enumerate(special_tokens)}
        self.byte_ids = list(range(256))
        self._build()
        return self

    # ------------------------------------------------------------------ encoding
    def _allowed(self, allowed_special):
        if allowed_special in ("none", None, False) or not self.special_tokens:
            return ()
        if allowed_special in ("all", True):
            return tuple(self.special_tokens)
        allowed = tuple(allowed_special) if not isinstance(allowed_special, str) else (allowed_special,)
        unknown = [s for s in allowed if s not in self.special_tokens]
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {unknown}; "
                             f"it has {sorted(self.special_tokens)}")
        return allowed

    def _special_re(self, allowed):
        key = tuple(sorted(allowed))
        if key not in self._special_re_cache:
            alts = sorted(key, key=len, reverse=True)   # longest first where one prefixes another
            self._special_re_cache[key] = re.compile("(" + "|".join(map(re.escape, alts)) + ")")
        return self._special_re_cache[key]

    def encode_ndarray(self, text, allowed_special="none", num_threads=None):
        """Ids of `text` (str) as a (n,) uint32 array: the fast path for large corpora.

        allowed_special: "none" (default: special tokens are ordinary text), "all", or a set of
        special token strings to recognise. A lone surrogate in `text` raises ValueError.
        """
        nthreads = num_threads or default_num_threads()
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._encoder.encode(utf8(text), nthreads)
        parts = []
        for k, piece in enumerate(self._special_re(allowed).split(text)):
            if k % 2:
                parts.append(np.array([self.special_tokens[piece]], dtype=np.uint32))
            elif piece:
                parts.append(self._encoder.encode(utf8(piece), nthreads))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)

    def encode(self, text, allowed_special="none", num_threads=None):
        """Ids of `text` (str): list[int]. See encode_ndarray for `allowed_special`."""
        return native_bpe().ids_to_list(self.encode_ndarray(text, allowed_special, num_threads),
                                     self._ints)

    def encode_batch(self, texts, allowed_special="none", num_threads=None):
        """Ids of each text of a list of str: list[list[int]], texts spread over threads."""
        texts = list(texts)
        allowed = self._allowed(allowed_special)
        if allowed:
            return [self.encode(t, allowed_special, 1) for t in texts]
        ids, offsets = self.encode_batch_ndarray(texts, num_threads=num_threads)
        return split_ids(ids, offsets, self._ints)

    def encode_batch_ndarray(self, texts, num_threads=None):
        """Ids of a list of str (special tokens as plain text) in one array: (ids (total,)
        uint32, offsets (len(texts) + 1,) int64), text i has ids[offsets[i]:offsets[i + 1]]."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(t).__name__}")
        try:
            joined = "".join(texts).encode("utf-8")
        except UnicodeEncodeError:
            for i, t in enumerate(texts):
                try:
                    utf8(t)
                except ValueError as e:
                    raise ValueError(f"texts[{i}]: {e}") from None
            raise
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        if lengths.sum() != len(joined):     # some text is not ASCII: count its UTF-8 bytes
            lengths = np.fromiter((len(t) if t.isascii() else len(t.encode("utf-8"))
                                   for t in texts), dtype=np.int64, count=len(texts))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return self._encoder.encode_joined(joined, offsets, num_threads or default_num_threads())

    def decode_bytes(self, ids):
        """Concatenated bytes of the tokens `ids` (sequence or array of ints)."""
        return self._encoder.decode(ids)

    def decode(self, ids, errors="replace"):
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD, as GPT-2 does."""
        return self._encoder.decode(ids).decode("utf-8", errors=errors)

    def id_to_token(self, i):
        """Bytes of token i (special tokens as their UTF-8 text)."""
        for s, j in self.special_tokens.items():
            if j == i:
                return s.encode("utf-8")
        return self.vocab[i]

    # ------------------------------------------------------------------ files
    def _token_strings(self):
        """dict id -> byte-level str for every token, special tokens as themselves."""
        out = {i: token_to_str(tok) for i, tok in self.vocab.items()}
        for s, i in self.special_tokens.items():
            out[i] = s
        return out

    def save(self, path):
        """Write tokenizer.json, vocab.json and merges.txt into folder `path` (created if
        needed); returns the folder."""
        os.makedirs(path, exist_ok=True)
        strings = self._token_strings()
        vocab = {strings[i]: i for i in sorted(strings)}
        merges = [f"{strings[a]} {strings[b]}" for a, b, _ in self.merges]
        with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
            f.write(MERGES_HEADER + "\n")
            f.write("".join(m + "\n" for m in merges))
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True}
        doc = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": byte_level,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges},
        }
        with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
        return path

    @classmethod
    def load(cls, path):
        """Read a folder holding tokenizer.json or vocab.json + merges.txt, or a tokenizer.json
        file. Malformed files raise ValueError naming the file and line."""
        if os.path.isdir(path):
            tj = os.path.join(path, "tokenizer.json")
            vj, mt = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
            if os.path.exists(tj):
                return cls.from_tokenizer_json(tj)
            if os.path.exists(vj) and os.path.exists(mt):
                return cls.from_vocab_merges(vj, mt)
            raise ValueError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
        if os.path.exists(path):
            return cls.from_tokenizer_json(path)
        raise ValueError(f"{path}: no such file or folder")

    @classmethod
    def from_vocab_merges(cls, vocab_path, merges_path):
        """GPT-2's files: vocab.json {token str: id} and merges.txt ("left right" per line)."""
        raw = read_text(vocab_path)
        vocab_json = parse_json(raw, vocab_path)
        if not isinstance(vocab_json, dict):
            raise ValueError(f"{vocab_path} line 1: expected a JSON object {{token: id}}, "
                             f"got {type(vocab_json).__name__}")
        token_ids = _check_vocab(vocab_json, vocab_path, raw)
        lines = read_text(merges_path).split("\n")
        pairs = []
        for lineno, line in enumerate(lines, 1):
            line = line.rstrip("\r")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ValueError(f"{merges_path} line {lineno}: expected 'left right', got {line!r}")
            pairs.append((parts[0], parts[1], lineno))
        return cls._from_strings(token_ids, pairs, {}, vocab_path, merges_path, None)

    @classmethod
    def from_tokenizer_json(cls, path):
        """HF `tokenizers` file with a BPE model and a ByteLevel pre-tokenizer."""
        raw = read_text(path)
        doc = parse_json(raw, path)
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "vocab" not in model:
            raise ValueError(f"{path}: expected a tokenizers file with a BPE model "
                             f"(\"model\": {{\"type\": \"BPE\", \"vocab\": ..., \"merges\": ...}})")
        pre = doc.get("pre_tokenizer")
        if not (isinstance(pre, dict) and pre.get("type") == "ByteLevel"
                and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)):
            raise ValueError(f"{path}: pre_tokenizer {json.dumps(pre)} is not supported; only "
                             f"ByteLevel with use_regex and without add_prefix_space (GPT-2's)")
        if doc.get("normalizer") is not None:
            raise ValueError(f"{path}: normalizer {json.dumps(doc['normalizer'])} is not supported")
        if not isinstance(model["vocab"], dict):
            raise ValueError(f"{path}: model.vocab must be an object {{token: id}}")
        token_ids = _check_vocab(model["vocab"], path, raw)
        merges_at = raw.find('"merges"')
        pairs = []
        for k, m in enumerate(model.get("merges") or []):
            if isinstance(m, str):
                parts = m.split(" ")
                pattern = json_key_pattern(m)
            elif isinstance(m, list) and all(isinstance(x, str) for x in m):
                parts = m
                pattern = (json_key_pattern(m[0]) + r"\s*,\s*" + json_key_pattern(m[1])
                           if len(m) == 2 else r"\[")
            else:
                parts, pattern = None, r"\["
            if parts is None or len(parts) != 2 or not parts[0] or not parts[1]:
                line = line_of(raw, pattern, max(merges_at, 0))
                raise ValueError(f"{where(path, line)}: merge {k} is {json.dumps(m)}, "
                                 f"expected \"left right\" or [left, right]")
            pairs.append((parts[0], parts[1], ("re", pattern, merges_at)))
        specials = {}
        for t in doc.get("added_tokens") or []:
            if not isinstance(t, dict) or not isinstance(t.get("content"), str) \
                    or not isinstance(t.get("id"), int):
                raise ValueError(f"{path}: bad added_tokens entry {json.dumps(t)}")
            specials[t["content"]] = t["id"]
        return cls._from_strings(token_ids, pairs, specials, path, path, raw)

    @classmethod
    def _from_strings(cls, token_ids, pairs, specials, vocab_path, merges_path, raw):
        """Builds the tokenizer from {token str: id}, [(left str, right str, where)] and
        {special str: id}; `where` is a line number or a regex locating the merge in raw."""
        def locate(loc):
            if isinstance(loc, int):
                return loc
            _, pattern, start = loc
            return line_of(raw, pattern, max(start, 0))

        byte_ids = []
        for b in range(256):
            s = BYTE_TO_CHAR[b]
            if s not in token_ids:
                raise ValueError(f"{vocab_path}: byte 0x{b:02X} (token {s!r}) is missing; a "
                                 f"byte-level BPE vocabulary holds all 256 bytes")
            byte_ids.append(token_ids[s])
        vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}
        merges, seen = [], set()
        for left, right, loc in pairs:
            for part in (left, right):
                if part not in token_ids:
                    raise ValueError(f"{where(merges_path, locate(loc))}: merge {left!r} {right!r}: "
                                     f"{part!r} is not in the vocabulary ({vocab_path})")
            merged = left + right
            if merged not in token_ids:
                raise ValueError(f"{where(merges_path, locate(loc))}: merge {left!r} {right!r} "
                                 f"makes {merged!r}, which is not in the vocabulary ({vocab_path})")
            a, b, m = token_ids[left], token_ids[right], token_ids[merged]
            if (a, b) in seen:
                raise ValueError(f"{where(merges_path, locate(loc))}: merge {left!r} {right!r} "
                                 f"appears twice")
            seen.add((a, b))
            merges.append((a, b, m))
            vocab[m] = str_to_token(merged)
        special_ids = dict(specials)
        for s, i in token_ids.items():
            if i in vocab or s in special_ids:
                continue
            special_ids[s] = i   # no merge makes it (GPT-2's <|endoftext|>): a special token
        for s, i in special_ids.items():
            if i in vocab:
                raise ValueError(f"{vocab_path}: special token {s!r} has id {i}, which the "
                                 f"token {token_to_str(vocab[i])!r} already uses")
        return cls(merges, vocab, special_ids, byte_ids)


def _check_vocab(vocab, path, raw):
    """{token: id} with non-negative int ids used once each, else ValueError with the line."""
    by_id = {}
    for s, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            line = line_of(raw, json_key_pattern(s) + r"\s*:")
            raise ValueError(f"{where(path, line)}: token {s!r} has id {i!r}; ids must be "
                             f"non-negative integers")
        if i in by_id:
            line = line_of(raw, json_key_pattern(s) + r"\s*:\s*" + str(i) + r"\b")
            raise ValueError(f"{where(path, line)}: duplicate id {i}: tokens {by_id[i]!r} and "
                             f"{s!r}")
        by_id[i] = s
    return vocab
