"""HF `tokenizers` files (tokenizer.json) as Llama 2/3, Qwen2/2.5/3, Mistral, SmolLM2 and
TinyLlama ship them, read into one fast tokenizer that gives the same ids as HF `tokenizers`.

The pipeline of a tokenizer.json, in HF's order, and where each step runs here:

    added tokens    split out of the raw text first, never split themselves    Python (re)
    normalizer      NFC/NFD/NFKC/NFKD, Lowercase, Prepend, Replace, Strip,     Python
                    Sequence; added tokens marked "normalized" are then split out
    pre-tokenizer   Split (GPT-2's, Llama 3's or Qwen2's pattern), ByteLevel,  C (csrc/bpe.c),
                    Digits, Metaspace, Sequence                                 a chain of steps
    model           BPE: byte-level (the word's bytes) or SentencePiece-style  C
                    (its characters, byte fallback to <0xXX>, unk), merges by
                    rank, ignore_merges
    post-processor  TemplateProcessing, RobertaProcessing, BertProcessing,     Python
                    ByteLevel, Sequence (BOS/EOS when add_special_tokens)
    decoder         ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace,  Python (ByteLevel
                    Sequence                                                    alone: C)

A feature outside these lists (another model type, pre-tokenizer, normalizer, regex...) raises
ValueError naming it and the file: the tokenizer never silently gives other ids than HF's.
"""
import json
import os
import re
import unicodedata

import numpy as np

from ..utils import default_num_threads, parse_json, read_text
from .base import BYTE_TO_CHAR, CHAR_TO_BYTE, Tokenizer, native_bpe, split_ids, str_to_token, utf8

NO_ID = 0xFFFFFFFF
METASPACE = "\u2581"

# The Split patterns of the families, as their tokenizer.json files spell them.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {GPT2_PATTERN: "gpt2", LLAMA3_PATTERN: "llama3", QWEN2_PATTERN: "qwen2"}

# White_Space (PropList.txt): what HF strips around added tokens with lstrip/rstrip (a regex
# class body) and in the Strip normalizer
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_CHARS = "".join(chr(c) for c in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                                     *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F,
                                     0x3000))



def _type_of(node, what, path):
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise ValueError(f"{path}: {what} must be an object with a \"type\", got {json.dumps(node)}")
    return node["type"]


def _unsupported(path, what, node, supported):
    return ValueError(f"{path}: {what} {json.dumps(node)[:200]} is not supported "
                      f"(minillm reads {supported})")


# ---------------------------------------------------------------------- normalizers
def _string_pattern(node, what, path):
    pattern = node.get("pattern")
    if isinstance(pattern, dict) and isinstance(pattern.get("String"), str):
        return pattern["String"]
    raise _unsupported(path, f"{what} pattern", pattern, "String patterns only")


def _normalizer(node, path):
    """A function list[str] -> list[str] applying the normalizer node to each text (None:
    identity); lists, so that a batch costs one comprehension per step."""
    if node is None:
        return None
    kind = _type_of(node, "normalizer", path)
    if kind == "Sequence":
        steps = [_normalizer(n, path) for n in node.get("normalizers") or []]
        steps = [f for f in steps if f is not None]

        def sequence(texts):
            for f in steps:
                texts = f(texts)
            return texts
        return sequence if steps else None
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        def unicode_form(texts):
            # texts joined by "\n" (which never composes) are normalized iff each one is
            if unicodedata.is_normalized(kind, "\n".join(texts)):
                return texts
            return [unicodedata.normalize(kind, s) for s in texts]
        return unicode_form
    if kind == "Lowercase":
        return lambda texts: [s.lower() for s in texts]
    if kind == "Prepend":
        prefix = node.get("prepend")
        if not isinstance(prefix, str):
            raise ValueError(f"{path}: normalizer Prepend needs a string \"prepend\"")
        return lambda texts: [prefix + s if s else s for s in texts]
    if kind == "Replace":
        old, new = _string_pattern(node, "normalizer Replace", path), node.get("content")
        if not isinstance(new, str):
            raise ValueError(f"{path}: normalizer Replace needs a string \"content\"")
        return lambda texts: [s.replace(old, new) for s in texts]
    if kind == "Strip":
        left, right = node.get("strip_left", True), node.get("strip_right", True)
        if left and right:
            return lambda texts: [s.strip(_WS_CHARS) for s in texts]
        if left:
            return lambda texts: [s.lstrip(_WS_CHARS) for s in texts]
        if right:
            return lambda texts: [s.rstrip(_WS_CHARS) for s in texts]
        return None
    raise _unsupported(path, "normalizer", node,
                       "NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence")


# ---------------------------------------------------------------------- pre-tokenizer
class _PreTokenizer:
    """The pre-tokenizer node as: byte_level (words are bytes), the C chain of split steps,
    and the string changes done before them (ByteLevel's prefix space, Metaspace's mark)."""

    def __init__(self, node, path):
        self.byte_level = False
        self.steps = []
        self.prefix_space = False              # ByteLevel add_prefix_space
        self.metaspace = None                  # (replacement, prepend_scheme) of Metaspace
        flat = []

        def walk(n):
            if n is None:
                return
            if _type_of(n, "pre_tokenizer", path) == "Sequence":
                for m in n.get("pretokenizers") or []:
                    walk(m)
            else:
                flat.append(n)
        walk(node)
        for k, n in enumerate(flat):
            kind = n["type"]
            if kind == "ByteLevel":
                self.byte_level = True
                if n.get("add_prefix_space", False):
                    if k > 0:
                        raise _unsupported(path, "pre_tokenizer ByteLevel with add_prefix_space "
                                           "after another pre-tokenizer", n, "it first only")
                    self.prefix_space = True
                if n.get("use_regex", True):
                    self.steps.append("gpt2")
            elif kind == "Split":
                pattern = n.get("pattern")
                regex = pattern.get("Regex") if isinstance(pattern, dict) else None
                if regex not in SPLIT_PATTERNS:
                    raise _unsupported(path, "pre_tokenizer Split pattern", pattern,
                                       "the Regex patterns of GPT-2, Llama 3 and Qwen2")
                if n.get("behavior", "Isolated") != "Isolated" or n.get("invert", False):
                    raise _unsupported(path, "pre_tokenizer Split behaviour", n,
                                       "behavior Isolated with invert false")
                self.steps.append(SPLIT_PATTERNS[regex])
            elif kind == "Digits":
                self.steps.append("digits" if n.get("individual_digits", False) else "digit_runs")
            elif kind == "Metaspace":
                if k > 0:
                    raise _unsupported(path, "pre_tokenizer Metaspace after another "
                                       "pre-tokenizer", n, "it first only")
                replacement = n.get("replacement", METASPACE)
                scheme = n.get("prepend_scheme")
                if scheme is None:      # files before tokenizers 0.14: add_prefix_space
                    scheme = "always" if n.get("add_prefix_space", True) else "never"
                if scheme not in ("first", "always", "never") or not isinstance(replacement, str) \
                        or len(replacement) != 1:
                    raise _unsupported(path, "pre_tokenizer Metaspace", n,
                                       "one-character replacement, prepend_scheme first/always/never")
                self.metaspace = (replacement, scheme)
                if n.get("split", True):
                    if replacement != METASPACE:
                        raise _unsupported(path, "pre_tokenizer Metaspace split with replacement",
                                           replacement, "U+2581")
                    self.steps.append("metaspace")
            else:
                raise _unsupported(path, "pre_tokenizer", n,
                                   "ByteLevel, Split, Digits, Metaspace, Sequence")

    def transform(self, s, at_start):
        """The string changes before splitting, for a piece of text (at_start: it begins the
        input, which Metaspace's prepend_scheme "first" asks)."""
        if self.prefix_space and not s.startswith(" "):
            s = " " + s
        if self.metaspace is not None:
            rep, scheme = self.metaspace
            s = s.replace(" ", rep)
            if (scheme == "always" or (scheme == "first" and at_start)) and not s.startswith(rep):
                s = rep + s
        return s

    def transform_all(self, texts):
        """transform(s, True) of each non-empty text (empty ones stay empty), as a list."""
        if self.prefix_space:
            texts = [s if not s or s.startswith(" ") else " " + s for s in texts]
        if self.metaspace is not None:
            rep, scheme = self.metaspace
            texts = [s.replace(" ", rep) for s in texts]
            if scheme != "never":
                texts = [s if not s or s.startswith(rep) else rep + s for s in texts]
        return texts


# ---------------------------------------------------------------------- post-processor
def _post_processor(node, path):
    """(before, after): the ids the post-processor node puts around a text's ids when special
    tokens are added ([] and [] when none)."""
    if node is None:
        return [], []
    kind = _type_of(node, "post_processor", path)
    if kind == "Sequence":
        before, after = [], []
        for n in node.get("processors") or []:
            b, a = _post_processor(n, path)
            before, after = b + before, after + a
        return before, after
    if kind == "ByteLevel":
        return [], []                   # it only moves offsets
    if kind == "TemplateProcessing":
        specials = node.get("special_tokens") or {}
        before, after, seen = [], [], False
        for item in node.get("single") or []:
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(f"{path}: post_processor item {json.dumps(item)} is not "
                                 f"{{\"SpecialToken\": ...}} or {{\"Sequence\": ...}}")
            (what, body), = item.items()
            if what == "Sequence":
                if seen or body.get("id") != "A":
                    raise _unsupported(path, "post_processor single template", node["single"],
                                       "one sequence A")
                seen = True
            elif what == "SpecialToken":
                tok = specials.get(body.get("id"))
                if not isinstance(tok, dict) or not isinstance(tok.get("ids"), list):
                    raise ValueError(f"{path}: post_processor uses special token "
                                     f"{body.get('id')!r}, which its special_tokens lacks")
                (after if seen else before).extend(int(i) for i in tok["ids"])
            else:
                raise ValueError(f"{path}: post_processor item {what!r} is not SpecialToken "
                                 f"or Sequence")
        return before, after
    if kind in ("RobertaProcessing", "BertProcessing"):
        try:
            cls_id, sep_id = int(node["cls"][1]), int(node["sep"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError(f"{path}: post_processor {kind} needs \"cls\" and \"sep\" as "
                             f"[token, id]") from None
        return [cls_id], [sep_id]
    raise _unsupported(path, "post_processor", node,
                       "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence")


def _surround(ids, offsets, before, after):
    """Flat ids (n,) of texts at offsets (t + 1,) with `before` and `after` ids put around
    each text: (ids, offsets) of the result."""
    t, b, a = len(offsets) - 1, len(before), len(after)
    counts = np.diff(offsets)
    out_offsets = offsets + np.arange(t + 1, dtype=np.int64) * (b + a)
    out = np.empty(len(ids) + t * (b + a), dtype=np.uint32)
    starts = out_offsets[:-1]
    for j, i in enumerate(before):
        out[starts + j] = i
    for j, i in enumerate(after):
        out[out_offsets[1:] - a + j] = i
    out[np.arange(len(ids)) + np.repeat(starts - offsets[:-1] + b, counts)] = ids
    return out, out_offsets


# ---------------------------------------------------------------------- decoders
_BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")


def _byte_level_decode(tokens):
    out = bytearray()
    for t in tokens:
        try:
            out += bytes(CHAR_TO_BYTE[c] for c in t)
        except KeyError:
            out += t.encode("utf-8")       # a token outside the byte alphabet: its own text
    return [out.decode("utf-8", errors="replace")]


def _byte_fallback_decode(tokens):
    out, pending = [], bytearray()

    def flush():
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(pending))
            pending.clear()
    for t in tokens:
        m = _BYTE_TOKEN.fullmatch(t) if len(t) == 6 else None
        if m:
            pending.append(int(m.group(1), 16))
        else:
            flush()
            out.append(t)
    flush()
    return out


def _decoder(node, path):
    """A function list[str] -> list[str] (the token strings after the decoder)."""
    if node is None:
        return lambda tokens: [" ".join(tokens)]
    kind = _type_of(node, "decoder", path)
    if kind == "Sequence":
        steps = [_decoder(n, path) for n in node.get("decoders") or []]

        def sequence(tokens):
            for f in steps:
                tokens = f(tokens)
            return tokens
        return sequence
    if kind == "ByteLevel":
        return _byte_level_decode
    if kind == "ByteFallback":
        return _byte_fallback_decode
    if kind == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if kind == "Replace":
        old, new = _string_pattern(node, "decoder Replace", path), node.get("content", "")
        return lambda tokens: [t.replace(old, new) for t in tokens]
    if kind == "Strip":
        content, start, stop = node.get("content", " "), int(node.get("start", 0)), int(node.get("stop", 0))

        def strip(tokens):
            out = []
            for t in tokens:
                a, b = 0, len(t)
                while a < min(start, b) and t[a] == content:
                    a += 1
                while b > a and len(t) - b < stop and t[b - 1] == content:
                    b -= 1
                out.append(t[a:b])
            return out
        return strip
    if kind == "Metaspace":
        rep = node.get("replacement", METASPACE)
        scheme = node.get("prepend_scheme")
        if scheme is None:
            scheme = "always" if node.get("add_prefix_space", True) else "never"

        def metaspace(tokens):
            # as HF: in the first token every mark goes (not only a leading one), unless
            # prepend_scheme is never; elsewhere each mark is a space
            return [t.replace(rep, "" if i == 0 and scheme != "never" else " ")
                    for i, t in enumerate(tokens)]
        return metaspace
    raise _unsupported(path, "decoder", node,
                       "ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence")


def _is_plain_byte_level(node):
    if isinstance(node, dict) and node.get("type") == "Sequence":
        ds = node.get("decoders") or []
        return len(ds) == 1 and _is_plain_byte_level(ds[0])
    return isinstance(node, dict) and node.get("type") == "ByteLevel"


# ---------------------------------------------------------------------- added tokens
def _trie_regex(words):
    """A regex matching any of `words`, the longest one where several start at a place."""
    trie = {}
    for w in words:
        node = trie
        for c in w:
            node = node.setdefault(c, {})
        node[""] = True

    def emit(node):
        # a word that ends here but continues in the trie: try the longer ones first
        alts = [re.escape(c) + emit(child) for c, child in sorted(node.items()) if c != ""]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return "(?:" + body + ")?" if "" in node else body
    return emit(trie)


def _added_regex(tokens):
    """One compiled regex over added tokens [(content, lstrip, rstrip, single_word)], group 1
    being the token itself, or None when there are none."""
    if not tokens:
        return None
    groups = {}
    for content, lstrip, rstrip, single_word in tokens:
        groups.setdefault((lstrip, rstrip, single_word), []).append(content)
    alts = []
    for (lstrip, rstrip, single_word), words in sorted(groups.items()):
        core = _trie_regex(words)
        if single_word:
            core = r"(?<![\w])" + core + r"(?![\w])"
        alts.append((f"[{_WS}]*" if lstrip else "") + "(?:" + core + ")"
                    + (f"[{_WS}]*" if rstrip else ""))
    return re.compile("|".join(alts))


# str.translate table: a byte-level character -> the Latin-1 character of its byte; a Latin-1
# character outside the alphabet -> U+FFFF, which Latin-1 cannot encode
_TO_LATIN1 = {ord(c): chr(b) for c, b in CHAR_TO_BYTE.items()}
_TO_LATIN1.update({cp: "\uffff" for cp in range(256) if chr(cp) not in CHAR_TO_BYTE})


def _byte_level_bytes(s):
    """Bytes a byte-level token string spells (base.str_to_token, at C speed), or None."""
    try:
        return s.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _utf8_all(strings, texts):
    """UTF-8 of each string; a lone surrogate raises ValueError naming the text it is in."""
    try:
        return [s.encode("utf-8") for s in strings]
    except UnicodeEncodeError:
        for i, t in enumerate(texts):
            try:
                utf8(t)
            except ValueError as e:
                raise ValueError(f"texts[{i}]: {e}" if len(texts) > 1 else str(e)) from None
        raise


def _join_pieces(all_pieces, ids, offsets):
    """(ids, offsets) of texts from their pieces: str pieces take their ids in turn from the
    encoded (ids, offsets), int pieces are added-token ids."""
    chunks, out_offsets, j = [], [0], 0
    for pieces in all_pieces:
        n = 0
        for p in pieces:
            if isinstance(p, str):
                chunk = ids[offsets[j]:offsets[j + 1]]
                j += 1
            else:
                chunk = np.array([p], dtype=np.uint32)
            chunks.append(chunk)
            n += len(chunk)
        out_offsets.append(out_offsets[-1] + n)
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
    return flat, np.array(out_offsets, dtype=np.int64)


# ---------------------------------------------------------------------- the tokenizer
class HFTokenizer(Tokenizer):
    """A tokenizer read from an HF tokenizer.json (`HFTokenizer.from_file(path)`).

    encode(text, add_special_tokens=True) -> list[int], as HF's `Tokenizer.encode(text).ids`:
    added tokens in the text (special or not) are always matched and never split;
    add_special_tokens adds what the post-processor adds (Llama's BOS, ...).
    encode_batch(texts, add_special_tokens=True) -> list[list[int]], over threads.
    decode(ids, skip_special_tokens=True) -> str, as HF's `Tokenizer.decode`;
    decode_bytes(ids) for streaming. token_to_id / id_to_token, vocab_size.
    bos_token_id, eos_token_id (eot_token) and chat_template come from tokenizer_config.json
    and chat_template.jinja beside the file; apply_chat_template(messages, ...) renders it.
    Unlike HF, an id outside the vocabulary is an error rather than skipped.
    """

    def __init__(self, doc, path="tokenizer.json", config=None, chat_template=None):
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
        self.path = path
        self.doc = doc
        self.config = config or {}
        self._chat_template_file = chat_template     # source of chat_template.jinja, if any
        self._chat = None
        for key in ("truncation", "padding"):
            if doc.get(key) is not None:
                raise ValueError(f"{path}: \"{key}\" {json.dumps(doc[key])[:120]} is not supported "
                                 f"(it changes the ids HF returns); set it to null")
        model = doc.get("model")
        if not isinstance(model, dict):
            raise ValueError(f"{path}: \"model\" must be an object, got {json.dumps(model)[:80]}")
        kind = model.get("type", "BPE" if "merges" in model else None)
        if kind != "BPE":
            raise ValueError(f"{path}: model type {kind!r} is not supported (minillm reads BPE "
                             f"models)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise _unsupported(path, f"model.{key}", model[key], "BPE without it")
        if model.get("dropout") not in (None, 0, 0.0):
            raise _unsupported(path, "model.dropout", model["dropout"], "BPE without dropout")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict):
            raise ValueError(f"{path}: model.vocab must be an object {{token: id}}")
        by_id = {}
        for s, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise ValueError(f"{path}: model.vocab: token {s!r} has id {i!r}; ids must be "
                                 f"non-negative integers")
            if i in by_id:
                raise ValueError(f"{path}: model.vocab: duplicate id {i}: tokens {by_id[i]!r} "
                                 f"and {s!r}")
            by_id[i] = s
        self.vocab = vocab

        self._normalize_all = _normalizer(doc.get("normalizer"), path)
        self._normalize = None if self._normalize_all is None else (
            lambda s: self._normalize_all([s])[0])
        self._pre = _PreTokenizer(doc.get("pre_tokenizer"), path)

        # added tokens
        self.added_tokens = {}          # content -> id
        self.special_ids = set()
        # Each token is matched by a spelling: its content in the raw text, or, when it is
        # "normalized" and there is a normalizer, its normalized content in normalized text (as
        # HF does: after Llama 2's Prepend("▁") normalizer "<x>" is found as "▁<x>").
        self._raw_ids, self._normalized_ids = {}, {}
        raw_tokens, normalized_tokens = [], []
        for k, t in enumerate(doc.get("added_tokens") or []):
            if not isinstance(t, dict) or not isinstance(t.get("content"), str) or not t["content"] \
                    or not isinstance(t.get("id"), int) or t["id"] < 0:
                raise ValueError(f"{path}: added_tokens[{k}] is {json.dumps(t)[:120]}; expected "
                                 f"{{\"id\": int, \"content\": non-empty str, ...}}")
            content, i = t["content"], t["id"]
            self.added_tokens[content] = i
            if t.get("special", False):
                self.special_ids.add(i)
            flags = (bool(t.get("lstrip")), bool(t.get("rstrip")), bool(t.get("single_word")))
            if t.get("normalized", not t.get("special", False)) and self._normalize is not None:
                spelling = self._normalize(content)
                if spelling:
                    normalized_tokens.append((spelling, *flags))
                    self._normalized_ids[spelling] = i
            else:
                raw_tokens.append((content, *flags))
                self._raw_ids[content] = i
        self._raw_re = _added_regex(raw_tokens)
        self._normalized_re = _added_regex(normalized_tokens)

        size = max([*by_id, *self.added_tokens.values(), -1]) + 1
        self._size = size
        self._id_to_str = [None] * size
        for i, s in by_id.items():
            self._id_to_str[i] = s
        for s, i in self.added_tokens.items():
            if self._id_to_str[i] is None:
                self._id_to_str[i] = s
        # an added token matched by its normalized spelling is that spelling as a token string
        # (HF's id_to_token) and decodes from it (Llama 2: "<x>" is "▁<x>", decoded " <x>")
        self._decode_str = list(self._id_to_str)
        for spelling, i in self._normalized_ids.items():
            self._decode_str[i] = spelling
        model_str = self._id_to_str
        self._id_to_str = self._decode_str

        # the C encoder: vocabulary bytes (decoding; lookups of the model tokens), merges
        byte_level = self._pre.byte_level
        pieces = []
        in_model = np.zeros(size, dtype=np.uint8)
        for i in range(size):
            s = model_str[i] if i in by_id else self._decode_str[i]
            if s is None:
                pieces.append(b"")
                continue
            b = _byte_level_bytes(s) if byte_level else None
            if i in by_id:
                in_model[i] = b is not None or not byte_level
            pieces.append(b if b is not None else s.encode("utf-8"))
        if byte_level:
            byte_ids = [vocab.get(BYTE_TO_CHAR[b], NO_ID) for b in range(256)]
        else:
            byte_ids = [vocab.get(f"<0x{b:02X}>", NO_ID) for b in range(256)]
        merges = self._merge_ids(model.get("merges") or [], vocab, path)
        unk = model.get("unk_token")
        unk_id = -1
        if unk is not None:
            if unk not in vocab:
                raise ValueError(f"{path}: model.unk_token {unk!r} is not in model.vocab")
            unk_id = vocab[unk]
        offsets = np.zeros(size + 1, dtype=np.int64)
        np.cumsum([len(p) for p in pieces], out=offsets[1:])
        self.byte_fallback = bool(model.get("byte_fallback", False))
        self._native = native_bpe().Encoder(
            np.array(merges, dtype=np.uint32).reshape(-1, 3), np.array(byte_ids, dtype=np.uint32),
            b"".join(pieces), offsets, steps=self._pre.steps, chars=not byte_level,
            ignore_merges=bool(model.get("ignore_merges", False)),
            byte_fallback=self.byte_fallback, fuse_unk=bool(model.get("fuse_unk", False)),
            unk_id=unk_id, in_model=in_model)
        self._decode_tokens = _decoder(doc.get("decoder"), path)
        self._fast_decode = byte_level and _is_plain_byte_level(doc.get("decoder"))
        self._special_mask = np.zeros(size, dtype=bool)
        self._special_mask[list(self.special_ids)] = True
        self._before, self._after = _post_processor(doc.get("post_processor"), path)
        self._ints = list(range(size))
        self._stream_pieces = None      # decode_bytes' table, made on first use

    @staticmethod
    def _merge_ids(merges, vocab, path):
        """[(left id, right id, merged id)] of the merges; the checks below name a bad one."""
        try:          # well-formed files (all of them, nearly): one pass
            pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
            out = [(vocab[a], vocab[b], vocab[a + b]) for a, b in pairs if a and b]
            if len(out) == len(pairs):
                return out
        except (KeyError, ValueError, TypeError):
            pass
        out = []
        for k, m in enumerate(merges):
            parts = m.split(" ") if isinstance(m, str) else m
            if not isinstance(parts, list) or len(parts) != 2 or not all(
                    isinstance(p, str) and p for p in parts):
                raise ValueError(f"{path}: model.merges[{k}] is {json.dumps(m)}, expected "
                                 f"\"left right\" or [left, right]")
            left, right = parts
            for part in (left, right, left + right):
                if part not in vocab:
                    raise ValueError(f"{path}: model.merges[{k}] {left!r} {right!r}: {part!r} "
                                     f"is not in model.vocab")
            out.append((vocab[left], vocab[right], vocab[left + right]))
        return out

    # ------------------------------------------------------------------ files
    @classmethod
    def from_file(cls, path):
        """Read tokenizer.json at `path` (and tokenizer_config.json beside it, if any)."""
        doc = parse_json(read_text(path), path)
        config = None
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
        if os.path.exists(cfg_path):
            config = parse_json(read_text(cfg_path), cfg_path)
            if not isinstance(config, dict):
                raise ValueError(f"{cfg_path}: expected a JSON object")
        jinja_path = os.path.join(os.path.dirname(os.path.abspath(path)), "chat_template.jinja")
        template = read_text(jinja_path) if os.path.exists(jinja_path) else None
        return cls(doc, path, config, template)

    @classmethod
    def load(cls, path):
        """A folder holding tokenizer.json, or the file itself."""
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such file")
        return cls.from_file(path)

    def save(self, path):
        """Write tokenizer.json (and tokenizer_config.json when read with one) into folder
        `path`; returns the folder."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(self.doc, f, ensure_ascii=False, indent=1)
        if self.config:
            with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump(self.config, f, ensure_ascii=False, indent=1)
        if self._chat_template_file is not None:
            with open(os.path.join(path, "chat_template.jinja"), "w", encoding="utf-8") as f:
                f.write(self._chat_template_file)
        return path

    # ------------------------------------------------------------------ chat
    @property
    def chat_template(self):
        """The model's minillm.chat.ChatTemplate (chat_template.jinja, else
        tokenizer_config.json's "chat_template"), or None when it has none."""
        if self._chat is None:
            from ..chat import ChatTemplate
            folder = os.path.dirname(os.path.abspath(self.path))
            self._chat = ChatTemplate.from_config(
                self.config, self._chat_template_file,
                os.path.join(folder, "tokenizer_config.json"),
                os.path.join(folder, "chat_template.jinja"))
        return self._chat

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True,
                            **kwargs):
        """The conversation rendered by the model's chat template (see minillm.chat), as its
        ids (tokenize=True; no BOS added beyond what the template writes, as transformers
        does) or as text."""
        template = self.chat_template
        if template is None:
            raise ValueError(f"{self.path}: this tokenizer has no chat template (neither "
                             f"chat_template.jinja nor \"chat_template\" in tokenizer_config.json)")
        text = template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self):
        """Number of ids (largest id + 1), added tokens included."""
        return self._size

    def token_to_id(self, token):
        """Id of the token string `token` (added tokens first, then the model's), or None."""
        i = self.added_tokens.get(token)
        return i if i is not None else self.vocab.get(token)

    def id_to_token(self, i):
        """Token string of id i, or None."""
        return self._id_to_str[i] if 0 <= i < self._size else None

    def _config_token(self, key):
        tok = self.config.get(key)
        if isinstance(tok, dict):
            tok = tok.get("content")
        return self.token_to_id(tok) if isinstance(tok, str) else None

    @property
    def bos_token_id(self):
        """Id of tokenizer_config.json's bos_token, or None."""
        return self._config_token("bos_token")

    @property
    def eos_token_id(self):
        """Id of tokenizer_config.json's eos_token, or None."""
        return self._config_token("eos_token")

    eot_token = eos_token_id

    # ------------------------------------------------------------------ encoding
    def _pieces(self, text):
        """text -> list of added-token ids (int) and normalized, pre-transformed str pieces."""
        out = []
        pos, parts = 0, []
        if self._raw_re is not None:
            for m in self._raw_re.finditer(text):
                parts.append(text[pos:m.start()])
                parts.append(self._added_id(m.group(), self._raw_ids))
                pos = m.end()
        parts.append(text[pos:])
        for k, part in enumerate(parts):
            if isinstance(part, int):
                out.append(part)
                continue
            if not part:
                continue
            at_start = k == 0
            if self._normalize is not None:
                part = self._normalize(part)
                if self._normalized_re is not None:
                    sub, p = [], 0
                    for m in self._normalized_re.finditer(part):
                        sub.append(part[p:m.start()])
                        sub.append(self._added_id(m.group(), self._normalized_ids))
                        p = m.end()
                    sub.append(part[p:])
                    for j, s in enumerate(sub):
                        if isinstance(s, int):
                            out.append(s)
                        elif s:
                            out.append(self._pre.transform(s, at_start and j == 0))
                    continue
            if part:
                out.append(self._pre.transform(part, at_start))
        return out

    @staticmethod
    def _added_id(matched, ids):
        i = ids.get(matched)
        if i is None:       # lstrip/rstrip took white space with it
            i = ids[matched.strip(_WS_CHARS)]
        return i

    def _encode_array(self, text, num_threads):
        """Ids (n,) uint32 of one text, special tokens not added."""
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        pieces = self._pieces(text)
        data = _utf8_all([p for p in pieces if isinstance(p, str)], [text])
        if len(pieces) == 1 and data:     # one piece: the C encoder splits it over threads
            return self._native.encode(data[0], num_threads or default_num_threads())
        ids, offsets = self._native.encode_batch(data, 1)
        return _join_pieces([pieces], ids, offsets)[0]

    def _encode_batch_arrays(self, texts, num_threads):
        """(ids (total,) uint32, offsets (len(texts) + 1,) int64) of texts, special tokens not
        added. Texts without added tokens (found in them joined by newlines, which finds a
        superset) take one piece each; the others are cut into pieces one by one."""
        nthreads = num_threads or default_num_threads()
        if self._raw_re is None or not self._raw_re.search("\n".join(texts)):
            normalized = texts if self._normalize_all is None else self._normalize_all(texts)
            if self._normalized_re is None or not self._normalized_re.search("\n".join(normalized)):
                data = _utf8_all(self._pre.transform_all(normalized), texts)
                return self._native.encode_batch(data, nthreads)
        all_pieces = [self._pieces(t) for t in texts]
        data = _utf8_all([p for pieces in all_pieces for p in pieces if isinstance(p, str)], texts)
        ids, offsets = self._native.encode_batch(data, nthreads)
        return _join_pieces(all_pieces, ids, offsets)

    def encode(self, text, add_special_tokens=True, num_threads=None):
        """Ids of `text` (str): list[int], equal to HF's `Tokenizer.encode(text).ids`.
        add_special_tokens: add what the file's post-processor adds (e.g. BOS)."""
        ids = native_bpe().ids_to_list(self._encode_array(text, num_threads), self._ints)
        if add_special_tokens and (self._before or self._after):
            ids = self._before + ids + self._after
        return ids

    def encode_batch(self, texts, add_special_tokens=True, num_threads=None):
        """Ids of each text of a list of str: list[list[int]], as HF's `encode_batch`; the
        texts are spread over threads."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(t).__name__}")
        ids, offsets = self._encode_batch_arrays(texts, num_threads)
        if add_special_tokens and (self._before or self._after):
            ids, offsets = _surround(ids, offsets, self._before, self._after)
        return split_ids(ids, offsets, self._ints)

    # ------------------------------------------------------------------ decoding
    def _check_ids(self, ids):
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"expected integer token ids, got dtype {arr.dtype}")
        arr = arr.reshape(-1).astype(np.int64)
        bad = (arr < 0) | (arr >= self._size)
        if bad.any():
            raise ValueError(f"token id {int(arr[bad][0])} is outside the vocabulary "
                             f"(size {self._size})")
        return arr

    def decode(self, ids, skip_special_tokens=True):
        """Text of `ids`, as HF's `Tokenizer.decode` (special added tokens left out unless
        skip_special_tokens is False)."""
        arr = self._check_ids(ids)
        if skip_special_tokens and self.special_ids:
            arr = arr[~self._special_mask[arr]]
        if self._fast_decode:
            return self._native.decode(arr.astype(np.uint32)).decode("utf-8", errors="replace")
        tokens = [self._decode_str[i] for i in arr.tolist()]
        if any(t is None for t in tokens):
            i = arr.tolist()[tokens.index(None)]
            raise ValueError(f"token id {i} is not in the vocabulary (size {self._size})")
        return "".join(self._decode_tokens(tokens))

    def decode_bytes(self, ids):
        """Bytes of `ids` one token after another, for printing a stream token by token
        (special tokens as their text). Byte-level tokens are their bytes; SentencePiece-style
        ones have ▁ as a space and <0xXX> as that byte, and keep the leading space that decode
        drops."""
        arr = self._check_ids(ids)
        if self._fast_decode:
            return self._native.decode(arr.astype(np.uint32))
        if self._stream_pieces is None:
            pieces = []
            for s in self._decode_str:
                m = _BYTE_TOKEN.fullmatch(s) if s is not None and len(s) == 6 else None
                pieces.append(bytes([int(m.group(1), 16)]) if m else
                              (s or "").replace(METASPACE, " ").encode("utf-8"))
            self._stream_pieces = pieces
        return b"".join([self._stream_pieces[i] for i in arr.tolist()])
