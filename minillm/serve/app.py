"""The HTTP side of `minillm serve`: a Starlette app speaking OpenAI's API over one model.

    POST /v1/completions         prompt -> text        (stream: server-sent events)
    POST /v1/chat/completions    messages -> a reply   (stream: server-sent events)
    GET  /v1/models, /v1/models/{id}, /health
    POST /tokenize               {"prompt"} or {"messages"} -> {"tokens", "count", "max_model_len"}
    POST /detokenize             {"tokens"} -> {"prompt"}
    GET  /                       the chat page (static/index.html)

Every request body is read with a size limit, parsed as JSON and checked field by field
(schemas.py); anything refused gets OpenAI's error JSON with a 4xx. A generation request
encodes its prompts (in a worker thread: a long prompt never blocks the loop), submits one
sequence per choice to the EngineRunner, and turns Events into text with a TextStream per
choice (stop strings, whole characters). A client that goes away cancels its sequences,
which frees their slots at the engine's next step. One log line per request (RequestLog):
id, method, path, status, prompt and completion tokens, time to first token, tokens/s.
"""
import asyncio
import contextlib
import inspect
import json
import logging
import os
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from minillm.chat import encode_prompt

from .chat import render_chat
from .errors import APIError, error_body
from .runner import EngineRunner
from .schemas import Limits, parse_chat, parse_completion, parse_detokenize, parse_tokenize
from .text import TextStream

__all__ = ["create_app", "ServeState", "RequestLog"]

log = logging.getLogger("minillm.serve")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
COMPLETION_DEFAULT_MAX_TOKENS = 16       # OpenAI's default for /v1/completions


class ServeState:
    """What the routes share: the model, its tokenizer, the runner, the limits.

    model: a LanguageModel with a tokenizer; engine: a minillm.engine.Engine over it;
    model_name: the id clients name; max_queue: sequences that may wait for a slot;
    max_body_bytes: the largest request body read."""

    def __init__(self, model, tokenizer, engine, model_name, limits=None, max_queue=64,
                 max_body_bytes=1 << 20):
        if tokenizer is None:
            raise ValueError(f"serve: the model {model_name!r} has no tokenizer to turn text into ids")
        self.model = model
        self.tokenizer = tokenizer
        self.runner = EngineRunner(engine, max_queue=max_queue)
        self.model_name = model_name
        self.limits = limits or Limits()
        self.max_body_bytes = max_body_bytes
        self.context = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.defaults = model.generation_defaults()
        self.stop_tokens = frozenset(self.defaults.get("stop_tokens") or ())
        self.created = int(time.time())
        # the keyword names Engine.add takes: options beyond these are refused with a 400
        self.accepted = frozenset(inspect.signature(engine.add).parameters)

    def encode(self, text, specials=False, param="prompt"):
        """Token ids of `text`; APIError 400 for text the tokenizer refuses (a lone surrogate)."""
        tok = self.tokenizer
        try:
            return encode_prompt(tok, text, specials)
        except ValueError as e:
            raise APIError(400, f"the text cannot be tokenized: {e}", param=param) from None

    def empty_prompt(self):
        """The ids of an empty prompt: <|endoftext|> when the tokenizer has it (as GPT-2 is
        prompted), else a newline."""
        eot = getattr(self.tokenizer, "eot_token", None)
        return [eot] if eot is not None else self.encode("\n")


# ---------------------------------------------------------------------- request body and errors
async def read_json(request, max_bytes):
    """The request's JSON body; APIError 413 past max_bytes (declared or sent), 400 if it is
    not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > max_bytes:
            raise APIError(413, f"the request body of {int(declared)} bytes is over this server's limit of "
                                f"{max_bytes} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is over this server's limit of {max_bytes} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}"[:300]) from None


def _error_response(e):
    # after a 413 the rest of the body is not read: close the connection rather than wait for it
    headers = {"Connection": "close"} if e.status == 413 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _api_error(request, exc):
    _note(request, error=exc.message)
    return _error_response(exc)


async def _http_error(request, exc):
    types = {404: "not_found_error", 405: "invalid_request_error"}
    message = {404: f"no route {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return JSONResponse(error_body(message, types.get(exc.status_code, "invalid_request_error")),
                        status_code=exc.status_code)


async def _server_error(request, exc):
    # uvicorn logs the traceback (Starlette re-raises after this answer)
    return JSONResponse(error_body(f"internal server error: {type(exc).__name__}: {exc}", "server_error"),
                        status_code=500)


def _note(request, **info):
    """Add fields to this request's log line."""
    request.scope.setdefault("minillm.log", {}).update(info)


# ---------------------------------------------------------------------- one generation
class _Choice:
    def __init__(self, index, seq_id, prompt_len, stream):
        self.index, self.seq_id, self.prompt_len, self.stream = index, seq_id, prompt_len, stream
        self.tokens = 0
        self.finish = None
        self.lp = []                     # (token id, (logprob, [(id, logprob), ...])) per token
        self.lp_sent = 0                 # of them in chunks already sent


class _Generation:
    """The sequences of one request and their text as Events arrive."""

    def __init__(self, state, request, kind):
        self.state, self.request, self.kind = state, request, kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.choices = []
        self._by_seq = {}                 # seq_id -> _Choice
        self.queue = asyncio.Queue()
        # time to first token counts from the request's arrival (RequestLog's clock)
        self.t0 = request.scope.get("minillm.log", {}).get("t0", time.perf_counter())
        self.t_first = None
        self.prompt_tokens = 0
        self.want_logprobs = False

    async def start(self, req, prompts, extra_stop=()):
        """Submit one sequence per (prompt ids) x n. APIError for a prompt that does not fit
        or an option the engine cannot honour."""
        st = self.state
        for ids in prompts:
            if len(ids) >= st.context:
                raise APIError(400, f"this model's context is {st.context} tokens; the prompt has {len(ids)} "
                                    f"tokens, which leaves no room for a reply", param="prompt",
                               code="context_length_exceeded")
        options, unsupported = req.engine_options(st.defaults, st.accepted)
        self.want_logprobs = options.get("logprobs") not in (None, False)
        if unsupported:
            raise APIError(400, f"{', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} not "
                                f"supported yet by this server", param=unsupported[0], code="unsupported")
        default = COMPLETION_DEFAULT_MAX_TOKENS if self.kind == "completion" else st.limits.max_tokens
        wanted = req.max_tokens or default
        seq_prompts, max_new, seeds = [], [], []
        for ids in prompts:
            for _ in range(req.n):
                seq_prompts.append(ids)
                # a reply ends at the context's end at the latest ("length")
                max_new.append(max(1, min(wanted, st.context - len(ids))))
                seeds.append(None if req.seed is None else (req.seed + len(seeds)) % (2 ** 63))
        self.prompt_tokens = sum(len(ids) for ids in prompts)
        _note(self.request, id=self.id, prompt_tokens=self.prompt_tokens)
        stop = list(req.stop) + [s for s in extra_stop if s not in req.stop]
        try:
            sids = st.runner.submit(seq_prompts, max_new, seeds, options, asyncio.get_running_loop(),
                                    self.queue)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        self.choices = [_Choice(i, sid, len(p), TextStream(st.tokenizer, stop))
                        for i, (sid, p) in enumerate(zip(sids, seq_prompts))]
        self._by_seq = {c.seq_id: c for c in self.choices}

    async def events(self):
        """Yields (choice, text, finish_reason or None) until every choice has finished; on
        the way out (done, disconnected, cancelled) the unfinished sequences are cancelled."""
        try:
            while any(c.finish is None for c in self.choices):
                ev = await self.queue.get()
                c = self._by_seq.get(ev.seq_id)
                if c is None or c.finish is not None:
                    continue                      # the tail of a sequence ended by a stop string
                text = ""
                if ev.token is not None:
                    c.tokens += 1
                    if self.t_first is None:
                        self.t_first = time.perf_counter()
                    if not (ev.finish_reason == "stop" and ev.token in self.state.stop_tokens):
                        text = c.stream.push(ev.token)
                        if ev.logprobs is not None:
                            c.lp.append((ev.token, ev.logprobs))
                if c.stream.stopped:
                    c.finish = "stop"
                    if ev.finish_reason is None:
                        self.state.runner.cancel([c.seq_id])
                elif ev.finish_reason is not None:
                    text += c.stream.finish()
                    if ev.finish_reason == "error":
                        raise APIError(500, "the engine failed while decoding this request; see the server log",
                                       type="server_error")
                    c.finish = "stop" if ev.finish_reason == "stop" else "length"
                if text or c.finish:
                    yield c, text, c.finish
        finally:
            left = [c.seq_id for c in self.choices if c.finish is None]
            if left:
                self.state.runner.cancel(left)
            self._log_stats()

    def _log_stats(self):
        end = time.perf_counter()
        completion = sum(c.tokens for c in self.choices)
        info = {"completion_tokens": completion}
        if self.t_first is not None:
            info["ttft"] = self.t_first - self.t0
            if completion > len(self.choices) and end > self.t_first:
                info["tokens_per_s"] = (completion - len(self.choices)) / (end - self.t_first)
        finishes = sorted({c.finish or "cancelled" for c in self.choices})
        info["finish"] = ",".join(finishes)
        _note(self.request, **info)

    def usage(self):
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    # ------------------------------------------------------------------ responses
    def _logprobs(self, c, offset):
        """The "logprobs" of choice c for the tokens not yet reported (None when not asked):
        chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]};
        completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset},
        text offsets counted from `offset` (the characters before these tokens)."""
        if not self.want_logprobs:
            return None
        entries, c.lp_sent = c.lp[c.lp_sent:], len(c.lp)
        tok = self.state.tokenizer

        def token_bytes(i):
            return tok.decode_bytes([i]) if hasattr(tok, "decode_bytes") else tok.decode([i]).encode("utf-8")

        def text(i):
            return token_bytes(i).decode("utf-8", errors="replace")

        if self.kind == "chat":
            return {"content": [{"token": text(t), "logprob": lp, "bytes": list(token_bytes(t)),
                                 "top_logprobs": [{"token": text(j), "logprob": v, "bytes": list(token_bytes(j))}
                                                  for j, v in top]}
                                for t, (lp, top) in entries], "refusal": None}
        offsets, at = [], offset
        for t, _ in entries:
            offsets.append(at)
            at += len(text(t))
        return {"tokens": [text(t) for t, _ in entries], "token_logprobs": [lp for _, (lp, _) in entries],
                "top_logprobs": [{text(j): v for j, v in top} for _, (_, top) in entries], "text_offset": offsets}

    def head(self):
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.state.model_name}

    async def collect(self, echoes):
        texts = {c.index: echoes[c.index] for c in self.choices}
        async for c, text, _ in self.events():
            texts[c.index] += text
        body = self.head()
        if self.kind == "chat":
            body["choices"] = [{"index": c.index, "message": {"role": "assistant", "content": texts[c.index]},
                                "logprobs": self._logprobs(c, len(echoes[c.index])), "finish_reason": c.finish}
                               for c in self.choices]
        else:
            body["choices"] = [{"index": c.index, "text": texts[c.index],
                                "logprobs": self._logprobs(c, len(echoes[c.index])), "finish_reason": c.finish}
                               for c in self.choices]
        body["usage"] = self.usage()
        return body

    async def sse(self, include_usage, echoes):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        head = self.head()
        head["object"] = "chat.completion.chunk" if self.kind == "chat" else "text_completion"

        def chunk(choices, **extra):
            body = dict(head, choices=choices, **extra)
            if include_usage:
                body.setdefault("usage", None)
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def piece(c, text, finish):
            lp = self._logprobs(c, len(echoes[c.index]) + len(c.stream.text) - len(text))
            if self.kind == "chat":
                return {"index": c.index, "delta": {"content": text} if text else {}, "logprobs": lp,
                        "finish_reason": finish}
            return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": finish}

        try:
            if self.kind == "chat":
                yield chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for c in self.choices])
            else:
                for c in self.choices:
                    if echoes[c.index]:
                        yield chunk([piece(c, echoes[c.index], None)])
            async for c, text, finish in self.events():
                yield chunk([piece(c, text, finish)])
            if include_usage:
                yield chunk([], usage=self.usage())
        except APIError as e:
            _note(self.request, status=e.status, error=e.message)
            yield f"data: {json.dumps(e.body())}\n\n"
        yield "data: [DONE]\n\n"


async def _respond(state, request, gen, req, echoes):
    if req.stream:
        return StreamingResponse(gen.sse(req.include_usage, echoes), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # not streamed: collect while watching the connection, so a client that leaves frees its slots
    collect = asyncio.ensure_future(gen.collect(echoes))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not collect.done():
        collect.cancel()
        try:
            await collect
        except (asyncio.CancelledError, APIError):
            pass
        _note(request, status="disconnected")
        return JSONResponse(error_body("the client disconnected"), status_code=499)
    return JSONResponse(collect.result())


async def _disconnected(request):
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _check_model(state, req):
    if req.model is not None and req.model != state.model_name:
        raise APIError(404, f"the model {req.model!r} does not exist; this server serves {state.model_name!r}",
                       type="invalid_request_error", param="model", code="model_not_found")


# ---------------------------------------------------------------------- routes
async def completions(request):
    state = request.app.state.serve
    req = parse_completion(await read_json(request, state.max_body_bytes), state.limits)
    _check_model(state, req)

    def encode_all():
        out = []
        for p in req.prompts:
            if isinstance(p, str):
                out.append(state.encode(p) if p else state.empty_prompt())
            else:
                if not all(0 <= t < state.vocab_size for t in p):
                    bad = next(t for t in p if not 0 <= t < state.vocab_size)
                    raise APIError(400, f"token {bad} is not an id in [0, {state.vocab_size})", param="prompt")
                out.append(list(p))
        return out

    prompts = await run_in_threadpool(encode_all)
    echoes = []
    for p in req.prompts:
        e = (p if isinstance(p, str) else state.tokenizer.decode(p)) if req.echo else ""
        echoes.extend([e] * req.n)
    gen = _Generation(state, request, "completion")
    await gen.start(req, prompts)
    return await _respond(state, request, gen, req, echoes)


async def chat_completions(request):
    state = request.app.state.serve
    req = parse_chat(await read_json(request, state.max_body_bytes), state.limits)
    _check_model(state, req)
    ids, extra_stop = await run_in_threadpool(_chat_ids, state, req.messages)
    gen = _Generation(state, request, "chat")
    await gen.start(req, [ids], extra_stop)
    return await _respond(state, request, gen, req, [""] * req.n)


def _chat_ids(state, messages):
    try:
        prompt, specials, extra_stop = render_chat(state.tokenizer, messages)
    except Exception as e:        # a template that refuses these messages (roles, order)
        raise APIError(400, f"the chat template refused these messages: {e}", param="messages") from None
    ids = prompt if isinstance(prompt, list) else state.encode(prompt, specials, param="messages")
    return (ids or state.empty_prompt()), extra_stop


async def tokenize(request):
    state = request.app.state.serve
    what, value = parse_tokenize(await read_json(request, state.max_body_bytes), state.limits)
    if what == "messages":
        ids, _ = await run_in_threadpool(_chat_ids, state, value)
    else:
        ids = await run_in_threadpool(state.encode, value)
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": state.context})


async def detokenize(request):
    state = request.app.state.serve
    ids = parse_detokenize(await read_json(request, state.max_body_bytes), state.vocab_size)
    return JSONResponse({"prompt": state.tokenizer.decode(ids)})


def _model_card(state):
    # max_model_len as vLLM reports it; max_tokens: the most new tokens a request may ask for here
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "minillm",
            "max_model_len": state.context, "max_tokens": state.limits.max_tokens}


async def models(request):
    return JSONResponse({"object": "list", "data": [_model_card(request.app.state.serve)]})


async def model_card(request):
    state = request.app.state.serve
    if request.path_params["name"] != state.model_name:
        raise APIError(404, f"the model {request.path_params['name']!r} does not exist; this server serves "
                            f"{state.model_name!r}", param="model", code="model_not_found")
    return JSONResponse(_model_card(state))


async def health(request):
    state = request.app.state.serve
    return JSONResponse({"status": "ok", "model": state.model_name, "running": state.runner.running,
                         "waiting": state.runner.waiting, "max_batch": state.runner.engine.max_batch})


async def index(request):
    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")


# ---------------------------------------------------------------------- the log line
class RequestLog:
    """ASGI middleware: one log line per HTTP request once its response has ended, with what
    the handler noted (id, tokens, time to first token, tokens/s, finish reason, error)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        info = scope.setdefault("minillm.log", {})
        info["t0"] = t0

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                info.setdefault("status", message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            info.setdefault("status", "disconnected")
            raise
        finally:
            log.info(format_log_line(scope["method"], scope["path"], info, time.perf_counter() - t0))


def format_log_line(method, path, info, seconds):
    parts = [info.get("id", "-"), method, path, str(info.get("status", "-"))]
    if "prompt_tokens" in info:
        parts.append(f"prompt={info['prompt_tokens']}")
    if "completion_tokens" in info:
        parts.append(f"completion={info['completion_tokens']}")
    if "ttft" in info:
        parts.append(f"ttft={info['ttft'] * 1000:.0f}ms")
    if "tokens_per_s" in info:
        parts.append(f"{info['tokens_per_s']:.1f} tok/s")
    if "finish" in info:
        parts.append(f"finish={info['finish']}")
    parts.append(f"{seconds * 1000:.0f}ms")
    if "error" in info:
        parts.append(f"error={info['error'][:200]!r}")
    return " ".join(parts)


# ---------------------------------------------------------------------- the app
def create_app(model, engine, model_name, tokenizer=None, limits=None, max_queue=64, max_body_bytes=1 << 20):
    """The Starlette app serving `model` through `engine` (its worker thread starts with the
    app and stops with it). tokenizer: model.tokenizer unless given; limits: schemas.Limits."""
    state = ServeState(model, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None),
                       engine, model_name, limits=limits, max_queue=max_queue, max_body_bytes=max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.runner.start()
        try:
            yield
        finally:
            state.runner.close()

    routes = [Route("/", index), Route("/health", health),
              Route("/v1/models", models), Route("/v1/models/{name:path}", model_card),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/tokenize", tokenize, methods=["POST"]), Route("/detokenize", detokenize, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.serve = state
    app.add_middleware(RequestLog)
    return app
