"""`minillm serve` against real clients: the official openai client on a uvicorn server in a
background thread (text equal to greedy generate() for the same prompt, streamed or not),
bad requests (each a 4xx with OpenAI's error JSON, the server serving on), 8 concurrent
streaming clients, clients that disconnect (their slots freed), the log line, and the chat
page in headless chromium. The model is the tiny GPT-2 fixture (random weights, its own
byte-level BPE tokenizer)."""
import http.client
import json
import logging
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="minillm[serve] (starlette) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="minillm[serve] (uvicorn) is not installed")

from minillm.engine import Engine                      # noqa: E402
from minillm.generate import generate                  # noqa: E402
from minillm.models import load_pretrained             # noqa: E402
from minillm.serve import build_app                    # noqa: E402
from minillm.serve.app import create_app               # noqa: E402
from minillm.serve.chat import FALLBACK_STOP           # noqa: E402
from minillm.serve.schemas import Limits               # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_tiny")
NAME = "gpt2-tiny"


class Server:
    """A uvicorn server over `app` on a free port, in a daemon thread."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def request(self, method, path, body=None, raw=None, headers=None):
        """(status, decoded JSON or text) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        text = r.read().decode()
        conn.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


class SlowEngine(Engine):
    """An Engine whose steps take at least `delay` seconds, so a reply lasts long enough to
    be interrupted; it records every Event it reports."""

    delay = 0.1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log = []

    def step(self):
        time.sleep(self.delay)
        events = super().step()
        self.log.extend(events)
        return events


@pytest.fixture(scope="module")
def model():
    return load_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def server(model):
    s = Server(build_app(model, model.tokenizer, NAME, max_batch=4))
    yield s
    s.close()


@pytest.fixture(scope="module")
def slow(model):
    """A server whose engine steps slowly, with two slots."""
    engine = SlowEngine(model, max_batch=2)
    s = Server(create_app(model, engine, NAME, limits=Limits(max_tokens=64)))
    s.engine = engine
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    return openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0, timeout=60)


def greedy(model, ids, max_tokens, stop_strings=()):
    """The text `minillm sample --greedy` gives: generate() with the model's stop tokens, the
    stop token dropped, cut before the first stop string."""
    stops = tuple(model.generation_defaults()["stop_tokens"])
    n = min(max_tokens, model.config.block_size - len(ids))
    new = generate(model, [ids], n, greedy=True, stop_tokens=stops).tolist()[0][len(ids):]
    if new and new[-1] in stops:
        new = new[:-1]
    text = model.tokenizer.decode(new)
    for s in stop_strings:
        if s in text:
            text = text[:text.index(s)]
    return text


def chat_ids(model, messages):
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return model.tokenizer.encode(text)


PROMPTS = ["Hello there", "The quick brown fox", "a", "Once upon a time, in a land far away,",
           "1 2 3 4", "What is the capital of", "zzz", "Tomorrow"]


# ---------------------------------------------------------------------- the openai client
def test_completions_equal_greedy_generate_streamed_or_not(client, model):
    for prompt in PROMPTS[:3]:
        want = greedy(model, model.tokenizer.encode(prompt), 20)
        r = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
        assert r.choices[0].text == want
        assert r.usage.prompt_tokens == len(model.tokenizer.encode(prompt))
        assert r.choices[0].finish_reason in ("stop", "length")
        pieces = [c.choices[0].text for c in client.completions.create(
            model=NAME, prompt=prompt, max_tokens=20, temperature=0, stream=True)]
        assert "".join(pieces) == want


def test_logprobs_equal_generates_streamed_or_not(client, model):
    """completions logprobs=2 and chat logprobs/top_logprobs=2: the chosen tokens' and the top
    alternatives' log-probabilities are generate(logprobs=2)'s (the model's distribution)."""
    prompt = "The quick brown fox"
    ids = model.tokenizer.encode(prompt)
    stops = tuple(model.generation_defaults()["stop_tokens"])
    out, steps = generate(model, [ids], 12, greedy=True, stop_tokens=stops, logprobs=2)
    new = out.tolist()[0][len(ids):]
    want = [(t, lp, top) for t, (lp, top) in zip(new, steps[0]) if t not in stops]
    text = lambda t: model.tokenizer.decode_bytes([t]).decode("utf-8", errors="replace")  # noqa: E731
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp.tokens == [text(t) for t, _, _ in want]
    np.testing.assert_allclose(lp.token_logprobs, [v for _, v, _ in want], rtol=1e-6, atol=1e-6)
    assert [list(d) for d in lp.top_logprobs] == [[text(j) for j, _ in top] for _, _, top in want]
    streamed = [c.choices[0].logprobs for c in client.completions.create(
        model=NAME, prompt=prompt, max_tokens=12, temperature=0, logprobs=2, stream=True) if c.choices]
    assert sum((s.tokens for s in streamed if s), []) == lp.tokens
    messages = [{"role": "user", "content": "Hello"}]
    cids = chat_ids(model, messages)
    out, steps = generate(model, [cids], 8, greedy=True, stop_tokens=stops, logprobs=2)
    want = [(t, v, top) for t, (v, top) in zip(out.tolist()[0][len(cids):], steps[0]) if t not in stops]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [text(t) for t, _, _ in want]
    np.testing.assert_allclose([c.logprob for c in content], [v for _, v, _ in want], rtol=1e-6, atol=1e-6)
    assert [[a.token for a in c.top_logprobs] for c in content] == [[text(j) for j, _ in top] for _, _, top in want]
    assert all(bytes(c.bytes) == model.tokenizer.decode_bytes([t]) for c, (t, _, _) in zip(content, want))


def test_completion_equals_minillm_sample_greedy(client):
    import subprocess
    import sys
    prompt = "Once upon a time"
    out = subprocess.run([sys.executable, "-m", "minillm", "sample", "--hf-dir", FIXTURE, "--prompt", prompt,
                          "--greedy", "--max-new-tokens", "20"], capture_output=True, timeout=120,
                         env=dict(os.environ, PYTHONIOENCODING="utf-8"), check=True).stdout.decode()
    assert out.startswith(prompt) and out.endswith("\n")
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == out[len(prompt):-1]


def test_chat_equals_greedy_generate_streamed_or_not(client, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, who are you?"}]
    want = greedy(model, chat_ids(model, messages), 30, FALLBACK_STOP)
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1


def test_stop_strings_n_seed_and_echo(client, model):
    ids = model.tokenizer.encode("The quick brown fox")
    full = greedy(model, ids, 30)
    stop = full[5:8]
    assert stop and full.index(stop) >= 1
    for stream in (False, True):
        r = client.completions.create(model=NAME, prompt="The quick brown fox", max_tokens=30, temperature=0,
                                      stop=[stop], stream=stream)
        text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert text == full[:full.index(stop)]
    r = client.completions.create(model=NAME, prompt="abc", max_tokens=8, temperature=1.0, seed=5, n=3)
    again = client.completions.create(model=NAME, prompt="abc", max_tokens=8, temperature=1.0, seed=5, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    r = client.completions.create(model=NAME, prompt="abc", max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text == "abc" + greedy(model, model.tokenizer.encode("abc"), 4)


def test_models_health_tokenize_detokenize(server, client, model):
    assert [m.id for m in client.models.list().data] == [NAME]
    status, card = server.request("GET", f"/v1/models/{NAME}")
    assert status == 200 and card["max_tokens"] == card["max_model_len"] == model.config.block_size
    status, body = server.request("GET", "/health")
    assert status == 200 and body["status"] == "ok"
    status, body = server.request("POST", "/tokenize", {"prompt": "Hello there"})
    assert status == 200 and body["tokens"] == model.tokenizer.encode("Hello there")
    assert body["max_model_len"] == model.config.block_size
    status, back = server.request("POST", "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and back["prompt"] == "Hello there"
    status, body = server.request("POST", "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200 and body["tokens"] == chat_ids(model, [{"role": "user", "content": "Hi"}])
    status, page = server.request("GET", "/")
    assert status == 200 and "<textarea" in page and "chat.js" in page
    for asset in ("/static/chat.js", "/static/chat.css"):
        assert server.request("GET", asset)[0] == 200


# ---------------------------------------------------------------------- bad requests
BAD = [
    ("invalid JSON", "/v1/completions", b'{"prompt": "hi",', 400, None),
    ("empty body", "/v1/completions", b"", 400, None),
    ("JSON nested too deep", "/v1/completions", b"[" * 100000 + b"]" * 100000, 400, None),
    ("a lone surrogate in the prompt", "/v1/completions", b'{"prompt": "a\\ud800b"}', 400, "prompt"),
    ("a lone surrogate in a message", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "a\\ud800"}]}', 400, "messages"),
    ("temperature NaN", "/v1/completions", b'{"prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ("not an object", "/v1/completions", [1, 2], 400, None),
    ("unknown model", "/v1/completions", {"model": "gpt-5", "prompt": "hi"}, 404, "model"),
    ("prompt missing", "/v1/completions", {"model": NAME}, 400, "prompt"),
    ("prompt of a wrong type", "/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("max_tokens a string", "/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ("max_tokens negative", "/v1/completions", {"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ("max_tokens huge", "/v1/completions", {"prompt": "hi", "max_tokens": 10 ** 12}, 400, "max_tokens"),
    ("max_tokens a float", "/v1/completions", {"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens"),
    ("temperature a string", "/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("temperature negative", "/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("top_p zero", "/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("repetition_penalty zero", "/v1/completions", {"prompt": "hi", "repetition_penalty": 0}, 400,
     "repetition_penalty"),
    ("stream not a bool", "/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("too many stops", "/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("n too large", "/v1/completions", {"prompt": "hi", "n": 1000}, 400, "n"),
    ("seed negative", "/v1/completions", {"prompt": "hi", "seed": -1}, 400, "seed"),
    ("token id out of range", "/v1/completions", {"prompt": [1, 2, 100000]}, 400, "prompt"),
    ("prompt longer than the context", "/v1/completions", {"prompt": list(range(1, 200))}, 400, "prompt"),
    ("logprobs too many", "/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ("messages missing", "/v1/chat/completions", {"model": NAME}, 400, "messages"),
    ("messages empty", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role"),
    ("content a number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400,
     "messages[0].content"),
    ("chat prompt longer than the context", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "word " * 200}]}, 400, "prompt"),
    ("detokenize a bad id", "/detokenize", {"tokens": [1, -5]}, 400, "tokens"),
    ("tokenize without a prompt", "/tokenize", {"text": "hi"}, 400, "prompt"),
]


@pytest.mark.parametrize("what,path,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_error_json(server, what, path, body, status, param):
    raw = body if isinstance(body, bytes) else None
    got, reply = server.request("POST", path, None if raw is not None else body, raw=raw)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["param"] == param


def test_presence_penalty_passes_to_the_engine_or_is_refused_by_name(server, model):
    status, reply = server.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 3,
                                                               "presence_penalty": 0.5})
    if "presence_penalty" in Engine.add.__code__.co_varnames:
        assert status == 200, reply
    else:
        assert status == 400 and "presence_penalty" in reply["error"]["message"]


@pytest.mark.parametrize("options", [{"top_p": 1e-300}, {"temperature": 1e-300}, {"top_k": 10 ** 9},
                                     {"repetition_penalty": 0.01, "temperature": 2}, {"stop": "\ud800"}])
def test_extreme_but_valid_options_are_served(server, options):
    status, reply = server.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 3, **options})
    assert status == 200 and reply["usage"]["completion_tokens"] >= 1, reply


def test_unknown_routes_and_methods_get_error_json(server):
    status, reply = server.request("GET", "/v1/nothing")
    assert status == 404 and reply["error"]["message"]
    status, reply = server.request("GET", "/v1/completions")
    assert status == 405 and reply["error"]["message"]


def _post_raw(port, head, chunks):
    """Send `head` then `chunks` while reading the answer; the server may answer (and close)
    before the body is all sent. Returns the response bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head)

    def send_body():
        try:
            for c in chunks:
                s.sendall(c)
        except OSError:
            pass                          # the server closed after answering

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            d = s.recv(65536)
            if not d:
                break
            data += d
    finally:
        s.close()
        sender.join(10)
    return data


def test_a_100_mb_body_is_refused_and_the_server_serves_on(server, client, model):
    mb = b"x" * (1 << 20)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 << 20}\r\n\r\n").encode()
    data = _post_raw(server.port, head, (mb for _ in range(100)))
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    # the same without a Content-Length: read until the limit, then refused
    head = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = _post_raw(server.port, head, (b"%x\r\n" % len(mb) + mb + b"\r\n" for _ in range(100)))
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    r = client.completions.create(model=NAME, prompt="Hello there", max_tokens=5, temperature=0)
    assert r.choices[0].text == greedy(model, model.tokenizer.encode("Hello there"), 5)


def test_the_queue_limit_answers_429(model):
    import asyncio
    from minillm.serve.errors import APIError
    from minillm.serve.runner import EngineRunner
    runner = EngineRunner(Engine(model, max_batch=1), max_queue=2)     # worker not started: all wait
    loop = asyncio.new_event_loop()
    try:
        runner.submit([[1], [2]], [3, 3], [None, None], {}, loop, asyncio.Queue())
        with pytest.raises(APIError) as e:
            runner.submit([[3]], [3], [None], {}, loop, asyncio.Queue())
        assert e.value.status == 429 and "queue limit 2" in e.value.message
    finally:
        loop.close()


# ---------------------------------------------------------------------- many clients
def test_eight_concurrent_streaming_clients_get_their_single_client_answers(client, model):
    want = {p: greedy(model, model.tokenizer.encode(p), 24) for p in PROMPTS}
    got, errors = {}, []
    start = threading.Barrier(len(PROMPTS))

    def one(prompt):
        try:
            start.wait()
            stream = client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0,
                                               stream=True)
            got[prompt] = "".join(c.choices[0].text for c in stream)
        except Exception as e:           # reported below, with the prompt
            errors.append((prompt, e))

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert got == want


def _open_stream(port, body):
    """A raw streaming request; returns the socket after the first SSE chunk has arrived."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while got.count(b"data: ") < 2:
        got += s.recv(4096)
    return s


def _wait_for(pred, what, timeout=10):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, what
        time.sleep(0.01)


def test_a_client_that_disconnects_frees_its_slot_and_the_others_go_on(slow, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=slow.base + "/v1", api_key="none", max_retries=0, timeout=60)
    first_id = len(slow.engine.log)
    leaver = _open_stream(slow.port, {"prompt": "Once upon a time", "max_tokens": 50, "temperature": 0,
                                      "stream": True})
    want = greedy(model, model.tokenizer.encode("Hello there"), 12)
    result = {}
    stayer = threading.Thread(target=lambda: result.setdefault("text", "".join(
        c.choices[0].text for c in client.completions.create(model=NAME, prompt="Hello there", max_tokens=12,
                                                             temperature=0, stream=True))))
    stayer.start()
    leaver.close()
    # the leaver's sequence ends "cancelled", not "length" after its 50 tokens (5 s of steps)
    _wait_for(lambda: any(e.finish_reason == "cancelled" for e in slow.engine.log[first_id:]),
              "the disconnected client's sequence was not cancelled")
    stayer.join(30)
    assert result["text"] == want
    _wait_for(lambda: slow.request("GET", "/health")[1]["running"] == 0, "a slot stayed taken")
    # a request that is not streamed, dropped while it waits, is cancelled too
    n = len(slow.engine.log)
    data = json.dumps({"prompt": "Tomorrow", "max_tokens": 50, "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", slow.port), timeout=30)
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    _wait_for(lambda: slow.request("GET", "/health")[1]["running"] == 1, "the request did not start")
    s.close()
    _wait_for(lambda: any(e.finish_reason == "cancelled" for e in slow.engine.log[n:]),
              "the dropped request's sequence was not cancelled")


def test_one_log_line_per_request(server, model, caplog):
    with caplog.at_level(logging.INFO, logger="minillm.serve"):
        server.request("POST", "/v1/completions", {"prompt": "Hello there", "max_tokens": 5, "temperature": 0})
        server.request("POST", "/v1/completions", {"prompt": "Hello there", "max_tokens": -1})
        _wait_for(lambda: len([r for r in caplog.records if r.name == "minillm.serve"]) >= 2, "no log lines")
    lines = [r.getMessage() for r in caplog.records if r.name == "minillm.serve"]
    assert len(lines) == 2
    ok, bad = lines
    n = len(model.tokenizer.encode("Hello there"))
    assert ok.startswith("cmpl-") and " 200 " in ok and f"prompt={n} " in ok and "completion=" in ok
    assert "ttft=" in ok and ("tok/s" in ok or "completion=1 " in ok)
    assert " 400 " in bad and "max_tokens" in bad


# ---------------------------------------------------------------------- the chat page
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_the_chat_page_streams_a_reply_and_stops(slow):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By
    browser, driver_path = _chromium(), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("no chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.set_script_timeout(20)
        driver.get(slow.base + "/")
        _wait_for(lambda: NAME in driver.find_element(By.ID, "model").text, "the page did not load the model")
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("50")
        driver.find_element(By.ID, "prompt").send_keys("Hello there")
        driver.find_element(By.ID, "send").click()
        reply = lambda: driver.find_elements(By.CSS_SELECTOR, ".message.assistant")  # noqa: E731
        _wait_for(lambda: reply() and reply()[-1].find_element(By.CLASS_NAME, "content").text,
                  "no streamed text appeared")
        assert "streaming" in reply()[-1].get_attribute("class")   # still coming: 50 steps of 0.1 s
        n = len(slow.engine.log)
        driver.find_element(By.ID, "stop").click()
        _wait_for(lambda: "(stopped)" in reply()[-1].text, "the reply did not stop")
        _wait_for(lambda: any(e.finish_reason == "cancelled" for e in slow.engine.log[n:]),
                  "stop did not cancel the sequence")
        assert "tokens" in reply()[-1].find_element(By.CLASS_NAME, "stats").text
        # a second turn sends the history and finishes on its own
        tokens.clear()
        tokens.send_keys("3")
        driver.find_element(By.ID, "prompt").send_keys("More")
        driver.find_element(By.ID, "send").click()
        _wait_for(lambda: len(reply()) == 2 and reply()[-1].find_elements(By.CLASS_NAME, "stats"),
                  "the second reply did not finish")
        assert len(driver.find_elements(By.CSS_SELECTOR, ".message.user")) == 2
    finally:
        driver.quit()
