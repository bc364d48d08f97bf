"""Token folders made with HF tokenizer.json tokenizers (minillm data prepare): each file's ids
are HF `tokenizers`' ids of the whole file without the special tokens the post-processor adds
(no BOS around every chunk), files separated by the end-of-text id, whatever the chunk size."""
import os

import numpy as np
import pytest

from minillm import data
from minillm.tokenizers import load_tokenizer
from tokenizer_families import build_family

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")


@pytest.mark.parametrize("family", ["llama3", "llama2", "mistral"])
def test_prepared_ids_are_hf_ids_of_each_whole_file(tmp_path, family):
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is the reference")
    path = build_family(family, str(tmp_path / "tok"))
    ref = tokenizers.Tokenizer.from_file(path)
    tok = load_tokenizer(os.path.dirname(path))
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(text[:20000], encoding="utf-8")
    b.write_text(text[20000:40000], encoding="utf-8")
    out = tmp_path / "tokens"
    data.prepare_tokens([str(a)], tok, str(out), val_inputs=[str(b)], chunk_bytes=4096)
    eot = tok.eot_token
    for split, part in (("train", text[:20000]), ("val", text[20000:40000])):
        got = data.load_tokens(str(out), split).tolist()
        want = ref.encode(part, add_special_tokens=False).ids
        assert got[:len(want)] == want and len(got) == len(want) + (eot is not None)
        if eot is not None:
            assert got[-1] == eot
