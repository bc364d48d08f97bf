"""The tokenizer interface and the byte-level spelling helpers both tokenizers share.

A tokenizer maps text (str) to token ids (list[int]) and back. Every tokenizer here has
`train`, `encode`, `decode`, `save`, `load` and `vocab_size`, in the manner of minbpe's base
class, so training scripts can switch between them.
"""


class Tokenizer:
    """Base class: text <-> token ids."""

    def train(self, text, vocab_size, **kwargs):
        """Learn a vocabulary of at most `vocab_size` tokens from `text` (str or iterable of str)."""
        raise NotImplementedError

    def encode(self, text):
        """Token ids of `text` (str): list[int]."""
        raise NotImplementedError

    def decode(self, ids):
        """Text (str) of a sequence of token ids."""
        raise NotImplementedError

    def save(self, path):
        """Write the tokenizer to `path` (a folder or file, per subclass); returns the path written."""
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        """Read a tokenizer written by `save`."""
        raise NotImplementedError

    @property
    def vocab_size(self):
        """Number of ids (largest id + 1)."""
        raise NotImplementedError

    def __len__(self):
        return self.vocab_size


def bytes_to_unicode():
    """GPT-2's printable stand-in for each byte: dict byte (0..255) -> one-character str.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    bytes take the characters U+0100, U+0101, ... in byte order (so the space 0x20 is 'Ġ').
    This is how vocab.json, merges.txt and tokenizer.json spell byte-level tokens.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_str(token):
    """Byte-level spelling (str) of a token's bytes."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(s):
    """Bytes of a byte-level spelled token, or None if `s` holds a character outside the map."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError:
        return None


def utf8(text):
    """UTF-8 bytes of `text`; a lone surrogate (not valid text) raises ValueError."""
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text holds a lone surrogate {text[e.start]!r} (U+{ord(text[e.start]):04X}) at index "
            f"{e.start}, which is not valid Unicode text; fix the input, e.g. "
            f"text.encode('utf-8', 'replace').decode()") from None


def where(path, line):
    """'path line N' or just 'path' when the line is unknown."""
    return f"{path} line {line}" if line else f"{path}"


def native_bpe():
    """The compiled BPE module (minillm._bpe); ImportError says how to build it."""
    try:
        from .. import _bpe
    except ImportError as e:
        raise ImportError("minillm._bpe is not built; run `make build` (or `pip install .`)") from e
    return _bpe


def split_ids(ids, offsets, ints):
    """The batch encoders' flat ids cut at `offsets` into one Python list per text. Many
    small lists: the cyclic GC (nothing here forms cycles) is paused meanwhile, which halves
    the time of a 100k-text batch."""
    import gc
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return native_bpe().split_ids(ids, offsets, ints)
    finally:
        if gc_was_enabled:
            gc.enable()
