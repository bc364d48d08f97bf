"""Tokenizers: a whitespace+punctuation word tokenizer, a byte-level BPE (GPT-2's scheme) and
the HF tokenizer.json files of today's models (Llama 2/3, Qwen2/3, Mistral, SmolLM2).

    from minillm.tokenizers import BPETokenizer, load_tokenizer
    tok = BPETokenizer().train(text, vocab_size=2048)
    tok.save("tok/")                      # tokenizer.json, vocab.json, merges.txt
    tok = load_tokenizer("tok/")          # also GPT-2's vocab.json + merges.txt, HF tokenizer.json
    tok = load_tokenizer("Qwen2.5-0.5B/") # HFTokenizer: the ids of HF `tokenizers`
"""
import os

from ..utils import parse_json, read_text
from .base import Tokenizer
from .basic import BasicTokenizer
from .bpe import BPETokenizer
from .hf import HFTokenizer

__all__ = ["Tokenizer", "BasicTokenizer", "BPETokenizer", "HFTokenizer", "load_tokenizer"]


def _is_gpt2_style(doc):
    """True for a tokenizer.json BPETokenizer reads as it is (ours, GPT-2's): a plain byte-level
    BPE with GPT-2's pattern and nothing else in the pipeline."""
    if not isinstance(doc, dict):
        return True         # BPETokenizer's reader names the problem
    pre, model = doc.get("pre_tokenizer"), doc.get("model")
    post = doc.get("post_processor")
    return (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False) and doc.get("normalizer") is None
            and (post is None or (isinstance(post, dict) and post.get("type") == "ByteLevel"))
            and isinstance(model, dict) and not model.get("byte_fallback")
            and not model.get("ignore_merges") and model.get("unk_token") is None)


def _load_tokenizer_json(path):
    doc = parse_json(read_text(path), path)
    if _is_gpt2_style(doc):
        return BPETokenizer.from_tokenizer_json(path)
    return HFTokenizer.from_file(path)


def load_tokenizer(path):
    """Load a tokenizer from a folder or file written by us or by others.

    A folder may hold tokenizer.json (HF `tokenizers`), vocab.json + merges.txt (GPT-2) or
    basic.json (BasicTokenizer); a file is read by its content. A tokenizer.json with GPT-2's
    plain byte-level pipeline (the files minillm writes, GPT-2's) loads as BPETokenizer, whose
    special tokens are text unless `allowed_special` says otherwise; any other (Llama, Qwen,
    Mistral, SmolLM2...) as HFTokenizer, which matches added tokens in text as HF does.
    """
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "basic.json")) and not (
                os.path.exists(os.path.join(path, "tokenizer.json"))
                or os.path.exists(os.path.join(path, "vocab.json"))):
            return BasicTokenizer.load(os.path.join(path, "basic.json"))
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            return _load_tokenizer_json(os.path.join(path, "tokenizer.json"))
        return BPETokenizer.load(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder")
    if BasicTokenizer.is_basic_file(path):
        return BasicTokenizer.load(path)
    return _load_tokenizer_json(path)
