"""A word-level tokenizer: whitespace and punctuation splitting with a corpus vocabulary.

Tokens are runs of word characters (letters, digits, underscore) and single punctuation
characters; whitespace only separates them. The vocabulary holds the special tokens
(`<unk>` first, id 0) and then the most frequent words of the training corpus (ties broken by
first appearance), up to `vocab_size`, keeping only words seen at least `min_frequency` times.
Unknown words encode to `<unk>`. Decoding joins words with single spaces and attaches
punctuation to the word before it, so it is lossy: spacing and unknown words do not come back.
"""
import json
import os
import re
from collections import Counter

from ..utils import read_json
from .base import Tokenizer

UNK = "<unk>"
WORD_RE = re.compile(r"\w+|[^\w\s]")
_NO_SPACE_BEFORE = set(".,;:!?)]}'\"%")
_NO_SPACE_AFTER = set("([{")


def split_words(text):
    """Words and punctuation marks of `text`, in order: list[str]."""
    return WORD_RE.findall(text)


class BasicTokenizer(Tokenizer):
    """Word tokenizer; `itos` (list[str]) maps ids to tokens, `stoi` the reverse."""

    def __init__(self, itos=None, lowercase=False):
        self.lowercase = lowercase
        self.itos = list(itos) if itos is not None else [UNK]
        self._index()

    def _index(self):
        self.stoi = {}
        for i, s in enumerate(self.itos):
            if s in self.stoi:
                raise ValueError(f"token {s!r} appears twice in the vocabulary (ids "
                                 f"{self.stoi[s]} and {i})")
            self.stoi[s] = i
        if UNK not in self.stoi:
            raise ValueError(f"the vocabulary must contain {UNK!r}")
        self.unk_id = self.stoi[UNK]

    @property
    def vocab_size(self):
        return len(self.itos)

    def train(self, text, vocab_size, min_frequency=1, special_tokens=(), lowercase=None):
        """Vocabulary from `text` (str or iterable of str): <unk>, `special_tokens`, then
        words by descending count with count >= min_frequency, `vocab_size` ids at most.
        Returns self."""
        if lowercase is not None:
            self.lowercase = lowercase
        specials = [UNK] + [s for s in special_tokens if s != UNK]
        if vocab_size < len(specials):
            raise ValueError(f"vocab_size {vocab_size} < {len(specials)} special tokens")
        counts = Counter()
        for piece in ([text] if isinstance(text, str) else text):
            counts.update(split_words(piece.lower() if self.lowercase else piece))
        if not counts:
            raise ValueError("no text to train a tokenizer on: the text is empty or only whitespace")
        # Counter.most_common keeps first-seen order among equal counts (stable sort)
        words = [w for w, c in counts.most_common() if c >= min_frequency and w not in specials]
        self.itos = specials + words[:vocab_size - len(specials)]
        self._index()
        return self

    def encode(self, text):
        """Ids of the words of `text`: list[int]; unknown words give the <unk> id."""
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        if self.lowercase:
            text = text.lower()
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in split_words(text)]

    def decode(self, ids):
        """Words of `ids` joined by spaces, punctuation attached (see the module docstring)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self.itos)})")
            w = self.itos[i]
            if out and not (w in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER):
                out.append(" ")
            out.append(w)
        return "".join(out)

    def save(self, path):
        """Write basic.json into folder `path` (or to `path` if it ends in .json); returns the file."""
        if not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "basic.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"type": "basic", "lowercase": self.lowercase, "vocab": self.itos}, f,
                      ensure_ascii=False, indent=0)
        return path

    @staticmethod
    def is_basic_file(path):
        """True if `path` is a JSON file written by BasicTokenizer.save."""
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError:
            return False
        return b'"type": "basic"' in head or b'"type":"basic"' in head

    @classmethod
    def load(cls, path):
        """Read basic.json (or the folder holding it)."""
        if os.path.isdir(path):
            path = os.path.join(path, "basic.json")
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("type") != "basic" or \
                not isinstance(doc.get("vocab"), list) or \
                not all(isinstance(s, str) for s in doc["vocab"]):
            raise ValueError(f"{path}: expected {{\"type\": \"basic\", \"vocab\": [str, ...]}}")
        try:
            return cls(doc["vocab"], bool(doc.get("lowercase", False)))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
