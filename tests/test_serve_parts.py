"""The parts of `minillm serve` below HTTP: streamed text with stop strings across token
boundaries (TextStream), request options to Engine.add keywords, and the engine runner
(events to asyncio queues; a failing step fails its sequences and the runner goes on).
These need neither Starlette nor uvicorn."""
import asyncio
import os

import pytest

import minillm
from minillm.engine import Engine
from minillm.generate import generate
from minillm.models import GPT
from minillm.models.gpt import GPTConfig
from minillm.serve.errors import APIError
from minillm.serve.runner import EngineRunner
from minillm.serve.schemas import Limits, parse_chat, parse_completion
from minillm.serve.text import TextStream
from minillm.tokenizers import BasicTokenizer, load_tokenizer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_tiny")


@pytest.fixture(scope="module")
def bpe():
    return load_tokenizer(FIXTURE)


def streamed(ts, ids):
    out = "".join(ts.push(t) for t in ids)
    return out + ts.finish()


def test_text_stream_equals_decode_and_holds_split_characters(bpe):
    text = "naïve café — 日本語 ok"
    ids = bpe.encode(text)
    ts = TextStream(bpe)
    pieces = [ts.push(t) for t in ids]
    assert "".join(pieces) + ts.finish() == text
    assert all("\ufffd" not in p for p in pieces)      # a character is sent only once it is whole
    assert any("\ufffd" in bpe.decode([t]) for t in ids)   # some tokens do hold part of a character


def test_stop_string_across_token_boundaries_is_cut_and_never_sent(bpe):
    text = "alpha beta gamma delta"
    ids = bpe.encode(text)
    for stop in ("ta gam", "a d", "delta", "lph"):
        ts = TextStream(bpe, stop=[stop, "zzz"])
        sent, n = "", 0
        for t in ids:
            sent += ts.push(t)
            n += 1
            assert len(sent) <= text.index(stop)             # not even the start of the stop string
            if ts.stopped:
                break
        assert ts.stopped and sent == text[:text.index(stop)], stop
        assert ts.finish() == "" and ts.push(ids[0]) == ""
    ts = TextStream(bpe, stop=["alphabet"])               # a prefix held back is sent at the end
    assert streamed(ts, bpe.encode("alpha")) == "alpha" and not ts.stopped


def test_text_stream_without_decode_bytes():
    tok = BasicTokenizer().train("the cat sat on the mat . the dog sat", 20)
    ids = tok.encode("the cat sat on the mat")
    assert streamed(TextStream(tok), ids) == tok.decode(ids)
    assert streamed(TextStream(tok, stop=["on"]), ids) == tok.decode(ids).split("on")[0]


def test_request_options_become_engine_keywords():
    defaults = {"temperature": 0.8, "top_k": 40, "top_p": None, "repetition_penalty": 1.1, "greedy": False,
                "stop_tokens": (7,)}
    accepted = {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "greedy", "repetition_penalty",
                "stop_tokens", "seed"}
    req = parse_completion({"prompt": "x", "temperature": 0, "top_p": 0.9}, Limits())
    opts, unsupported = req.engine_options(defaults, accepted)
    assert opts == {"temperature": 1.0, "greedy": True, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1,
                    "stop_tokens": (7,)} and unsupported == []
    opts, _ = parse_completion({"prompt": "x"}, Limits()).engine_options(defaults, accepted)
    assert opts["temperature"] == 0.8 and not opts["greedy"]
    opts, _ = parse_completion({"prompt": "x", "temperature": 1e-300, "top_p": 1e-300}, Limits()).engine_options(
        defaults, accepted)                 # nothing that float32 rounds to 0 reaches the kernels
    assert opts["greedy"] and opts["top_p"] == 1e-6
    req = parse_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                      "presence_penalty": 0.5, "frequency_penalty": 0, "logprobs": True, "top_logprobs": 3},
                     Limits())
    assert req.messages == [{"role": "user", "content": "hi"}]
    _, unsupported = req.engine_options(defaults, accepted)
    assert unsupported == ["presence_penalty", "logprobs", "top_logprobs"]
    opts, unsupported = req.engine_options(defaults, accepted | {"presence_penalty", "logprobs", "top_logprobs"})
    assert unsupported == [] and opts["presence_penalty"] == 0.5 and opts["top_logprobs"] == 3
    with pytest.raises(APIError, match="'logit_bias' must be"):
        parse_completion({"prompt": "x", "logit_bias": {"a": 1}}, Limits())


@pytest.fixture(scope="module")
def model():
    minillm.manual_seed(0)
    return GPT(GPTConfig(vocab_size=61, block_size=32, n_layer=1, n_head=2, n_embd=32)).eval()


class FlakyEngine(Engine):
    """Its first step raises, as an out-of-memory would."""

    def step(self):
        if not getattr(self, "failed", False):
            self.failed = True
            raise MemoryError("no memory for the test")
        return super().step()


def test_runner_delivers_events_and_survives_a_failing_step(model):
    runner = EngineRunner(FlakyEngine(model, max_batch=2)).start()

    async def one(prompt, n):
        q = asyncio.Queue()
        runner.submit([prompt], [n], [None], {"greedy": True}, asyncio.get_running_loop(), q)
        toks = []
        while True:
            ev = await asyncio.wait_for(q.get(), 30)
            if ev.token is not None:
                toks.append(ev.token)
            if ev.finish_reason:
                return toks, ev.finish_reason

    try:
        assert asyncio.run(one([1, 2, 3], 5)) == ([], "error")
        toks, why = asyncio.run(one([1, 2, 3], 5))
        assert why == "length" and toks == generate(model, [[1, 2, 3]], 5, greedy=True).tolist()[0][3:]
    finally:
        runner.close()


def test_load_for_serving_reads_checkpoints_and_hf_folders(tmp_path):
    import argparse
    from minillm import optim
    from minillm.checkpoint import save_checkpoint
    from minillm.serve import add_arguments, load_for_serving
    minillm.manual_seed(1)
    cfg = dict(model_type="gpt", vocab_size=320, block_size=32, n_layer=1, n_head=2, n_embd=32)
    gpt = GPT(GPTConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
    ckpt = save_checkpoint(tmp_path / "ckpt", gpt, optim.AdamW(gpt.parameters(), lr=1e-3), {"step": 0},
                           {"model": cfg}, tokenizer_file=os.path.join(FIXTURE, "tokenizer.json"))
    model, tok, name = load_for_serving(ckpt=ckpt)
    assert name == "ckpt" and tok.encode("hi there") == load_tokenizer(FIXTURE).encode("hi there")
    assert model.config.block_size == 32
    model, tok, name = load_for_serving(hf_dir=FIXTURE)
    assert name == "gpt2_tiny" and tok is not None
    save_checkpoint(tmp_path / "bare", gpt, optim.AdamW(gpt.parameters(), lr=1e-3), {"step": 0}, {"model": cfg})
    with pytest.raises(ValueError, match="bare: no tokenizer"):
        load_for_serving(ckpt=str(tmp_path / "bare"))
    p = add_arguments(argparse.ArgumentParser())
    args = p.parse_args(["--ckpt", "x", "--dtype", "int8", "--max-batch", "4", "--port", "9000"])
    assert (args.ckpt, args.dtype, args.max_batch, args.port, args.host) == ("x", "int8", 4, 9000, "127.0.0.1")
    with pytest.raises(SystemExit):
        p.parse_args(["--ckpt", "x", "--hf-dir", "y"])


def test_build_app_decodes_in_the_asked_dtype_and_refuses_bad_sizes():
    pytest.importorskip("starlette", reason="minillm[serve] (starlette) is not installed")
    from minillm.models import load_pretrained
    from minillm.serve import build_app
    model = load_pretrained(FIXTURE)
    app = build_app(model, model.tokenizer, "m", dtype="int8", max_batch=3, max_tokens=10 ** 6)
    state = app.state.serve
    assert state.runner.engine.max_batch == 3 and state.limits.max_tokens == model.config.block_size
    ids = [5, 6, 7]
    want = generate(model, [ids], 6, greedy=True, decoder=model.decoder(weights="int8")).tolist()[0][3:]
    engine = state.runner.engine
    sid = engine.add(ids, 6, greedy=True)
    got = []
    while engine.has_work():
        got += [e.token for e in engine.step() if e.seq_id == sid and e.token is not None]
    assert got == want
    with pytest.raises(ValueError, match="--max-batch must be >= 1, got 0"):
        build_app(model, model.tokenizer, "m", max_batch=0)


def test_chat_uses_the_tokenizers_template_else_the_plain_format(bpe):
    from minillm.serve.chat import render_chat
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_chat(bpe, messages) == ("system: Be brief.\nuser: Hi\nassistant:", False, ("\nuser:",))

    class Templated:
        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
            assert add_generation_prompt and not tokenize
            return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
                "<|im_start|>assistant\n"

    prompt, specials, stop = render_chat(Templated(), messages)
    assert prompt.endswith("<|im_start|>assistant\n") and specials and stop == ()


def test_a_llama_folder_serves_with_bf16_weights_in_place(tmp_path):
    pytest.importorskip("starlette", reason="minillm[serve] (starlette) is not installed")
    from minillm.models import build_model
    from minillm.serve import build_app, load_for_serving
    minillm.manual_seed(2)
    build_model("llama-tiny", vocab_size=320).save_pretrained(str(tmp_path), tokenizer=load_tokenizer(FIXTURE))
    model, tok, _ = load_for_serving(hf_dir=str(tmp_path), dtype="bf16")
    assert model.config.dtype == "bfloat16"
    engine = build_app(model, tok, "llama", dtype="bf16").state.serve.runner.engine
    sid = engine.add([5, 6, 7], 6, greedy=True)
    got = []
    while engine.has_work():
        got += [e.token for e in engine.step() if e.seq_id == sid and e.token is not None]
    assert got == generate(model, [[5, 6, 7]], 6, greedy=True).tolist()[0][3:]
    assert load_for_serving(hf_dir=FIXTURE, dtype="bf16")[0].config.n_embd == 64     # GPT-2: float32
