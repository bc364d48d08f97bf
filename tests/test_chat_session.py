"""Chatting with a model (minillm/chat_session.py, `minillm chat`): a Qwen2-shaped model built
by transformers with a ChatML tokenizer made here gives, turn after turn, the greedy replies
transformers' generate gives on apply_chat_template's ids; the terminal chat prints them."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jinja2", reason="chat templates need jinja2")
torch = pytest.importorskip("torch", reason="torch is the reference")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")

from minillm.chat_session import ChatSession, chat  # noqa: E402
from minillm.models import load_pretrained  # noqa: E402
from test_chat_template import CHATML  # noqa: E402
from tokenizer_families import build_family  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen_chat")
    build_family("qwen2", str(path))
    with open(path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
                   "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, f)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path))
    V = len(hf_tok)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=256,
                                   tie_word_embeddings=True)
    m = transformers.Qwen2ForCausalLM(cfg).eval()
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():                       # make the reply end at <|im_end|> after a few tokens
        m.lm_head.weight[eos] *= 0.0
    m.save_pretrained(str(path))
    with open(path / "generation_config.json", "w", encoding="utf-8") as f:
        json.dump({"eos_token_id": eos, "do_sample": False}, f)
    return str(path), m, hf_tok, eos


def hf_reply(m, hf_tok, eos, messages, n):
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    new = out[0, ids.shape[1]:].tolist()
    if eos in new:
        new = new[:new.index(eos)]
    return hf_tok.decode(new, skip_special_tokens=True).strip(), len(new)


def test_two_turns_match_transformers(folder):
    path, m, hf_tok, eos = folder
    model = load_pretrained(path)
    session = ChatSession(model, model.tokenizer, max_new_tokens=12, system="Be brief.")
    assert session.greedy                             # generation_config.json: do_sample false
    pieces = []
    messages = [{"role": "system", "content": "Be brief."}]
    for text in ("Hello!", "And then?"):
        reply = session.send(text, stream=pieces.append)
        messages.append({"role": "user", "content": text})
        want, n = hf_reply(m, hf_tok, eos, messages, 12)
        assert reply.text == want and reply.tokens == n
        assert "".join(pieces).strip() == reply.text
        messages.append({"role": "assistant", "content": reply.text})
        pieces.clear()
    assert session.history() == messages
    session.reset()
    assert session.history() == messages[:1]


def test_chat_function_and_bad_calls(folder):
    path, m, hf_tok, eos = folder
    model = load_pretrained(path)
    msgs = [{"role": "user", "content": "Hello!"}]
    assert chat(model, msgs, max_new_tokens=12) == hf_reply(m, hf_tok, eos, msgs, 12)[0]
    with pytest.raises(ValueError, match="last message must be the user's"):
        chat(model, [{"role": "assistant", "content": "x"}])


def test_terminal_chat(folder, tmp_path):
    path, m, hf_tok, eos = folder
    want, _ = hf_reply(m, hf_tok, eos, [{"role": "user", "content": "Hello!"}], 12)
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "minillm", "chat", "--hf-dir", path, "--max-new-tokens", "12",
                        "--dtype", "int8"], input="Hello!\n/reset\nHello!\n/quit\n", capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    replies = [line.split("assistant> ", 1)[1] for line in p.stdout.splitlines() if "assistant> " in line]
    assert len(replies) == 2 and replies[0] == replies[1]          # /reset: the same first turn again
    assert "[conversation forgotten]" in p.stderr
    p = subprocess.run([sys.executable, "-m", "minillm", "chat", "--hf-dir", path, "--max-new-tokens", "12"],
                       input="Hello!\n", capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and f"assistant> {want}" in p.stdout


def test_chat_without_a_template_uses_the_plain_form(tmp_path):
    fixture = os.path.join(ROOT, "tests", "fixtures", "gpt2_tiny")
    model = load_pretrained(fixture)
    session = ChatSession(model, model.tokenizer, max_new_tokens=5, temperature=0)
    reply = session.send("Hi")
    assert reply.tokens <= 5 and session.history()[-1] == {"role": "assistant", "content": reply.text}
    assert np.isfinite(reply.tokens_per_second)
