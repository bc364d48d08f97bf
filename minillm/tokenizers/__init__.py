"""Tokenizers: a whitespace+punctuation word tokenizer and a byte-level BPE (GPT-2's scheme).

    from minillm.tokenizers import BPETokenizer, load_tokenizer
    tok = BPETokenizer().train(text, vocab_size=2048)
    tok.save("tok/")                      # tokenizer.json, vocab.json, merges.txt
    tok = load_tokenizer("tok/")          # also GPT-2's vocab.json + merges.txt, HF tokenizer.json
"""
import os

from .base import Tokenizer
from .basic import BasicTokenizer
from .bpe import BPETokenizer

__all__ = ["Tokenizer", "BasicTokenizer", "BPETokenizer", "load_tokenizer"]


def load_tokenizer(path):
    """Load a tokenizer from a folder or file written by us or by others.

    A folder may hold tokenizer.json (HF `tokenizers`, BPE + ByteLevel), vocab.json +
    merges.txt (GPT-2) or basic.json (BasicTokenizer); a file is read by its content.
    """
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "basic.json")) and not (
                os.path.exists(os.path.join(path, "tokenizer.json"))
                or os.path.exists(os.path.join(path, "vocab.json"))):
            return BasicTokenizer.load(os.path.join(path, "basic.json"))
        return BPETokenizer.load(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder")
    if BasicTokenizer.is_basic_file(path):
        return BasicTokenizer.load(path)
    return BPETokenizer.load(path)
