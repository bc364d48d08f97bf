"""The request bodies of the OpenAI API, read and checked field by field.

parse_completion(body, limits) and parse_chat(body, limits) turn a decoded JSON body into a
Request; a field of the wrong type or out of range raises APIError(400) naming the field and
the value, so nothing a client sends reaches the engine unchecked. Fields the server does not
know are ignored (as OpenAI-compatible servers do); fields it knows but cannot honour (suffix,
best_of > n) are refused by name.

Sampling options are kept as the request gave them (None where absent); Request.engine_options
turns them into Engine.add keyword arguments over the model's defaults, and names the options
the request asks for that the engine does not take (the server refuses those with a 400).
"""
import math
from dataclasses import dataclass, field
from typing import Optional

from .errors import APIError

__all__ = ["Limits", "Request", "parse_completion", "parse_chat", "parse_tokenize", "parse_detokenize",
           "ROLES", "EXTENDED_OPTIONS"]

ROLES = ("system", "developer", "user", "assistant", "tool")

MIN_TEMPERATURE = 1e-5

# Options that reach Engine.add only when the engine takes a keyword of that name (the
# samplers of minillm/sampling.py as they land); the value that means "off" for each.
EXTENDED_OPTIONS = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "min_p": 0.0, "logit_bias": None,
                    "logprobs": None, "top_logprobs": None}


@dataclass
class Limits:
    """What one request may ask for: max_tokens (new tokens per choice), max_choices (prompts
    times n), max_stop (stop strings), max_prompt_chars (characters of text before tokenizing)."""
    max_tokens: int = 4096
    max_choices: int = 16
    max_stop: int = 4
    max_prompt_chars: int = 1 << 20


@dataclass
class Request:
    """One checked completion or chat request.

    prompts: for completions a list of str or list-of-int prompts; messages: for chat the
    conversation as [{"role", "content"}] with content a str. Sampling fields are None where
    the request did not give them."""
    kind: str                           # "completion" or "chat"
    model: Optional[str] = None
    prompts: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None
    n: int = 1
    stop: list = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    extended: dict = field(default_factory=dict)    # EXTENDED_OPTIONS the request turns on

    def engine_options(self, defaults, accepted):
        """Engine.add keywords (all but prompt, max_new_tokens and seed) from this request over
        `defaults` (model.generation_defaults()); `accepted`: the keyword names Engine.add
        takes. Returns (options, unsupported names)."""
        temperature = defaults["temperature"] if self.temperature is None else self.temperature
        # a temperature this small is greedy (its limit), and one that float32 rounds to 0 must not reach the kernels
        greedy = bool(defaults.get("greedy")) if self.temperature is None else self.temperature < MIN_TEMPERATURE
        # a top_p below the top token's probability (>= 1/V) keeps that token alone, as 1e-6 does; the
        # floor keeps a tiny p from rounding to 0 in float32
        top_p = defaults.get("top_p") if self.top_p is None else max(self.top_p, 1e-6)
        opts = {"temperature": 1.0 if greedy else float(temperature), "greedy": greedy,
                "top_k": defaults.get("top_k") if self.top_k is None else self.top_k,
                "top_p": top_p,
                "repetition_penalty": float(defaults.get("repetition_penalty") or 1.0)
                if self.repetition_penalty is None else self.repetition_penalty,
                "stop_tokens": tuple(defaults.get("stop_tokens") or ())}
        unsupported = [name for name in self.extended if name not in accepted]
        opts.update({k: v for k, v in self.extended.items() if k in accepted})
        return opts, unsupported


# ---------------------------------------------------------------------- field readers
def _bad(name, want, value):
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return APIError(400, f"'{name}' must be {want}, got {shown}", param=name)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(body, name, lo, hi, want=None):
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise _bad(name, want or f"an integer in [{lo}, {hi}]", v)
    return v


def _number(body, name, lo, hi, lo_open=False, want=None):
    v = body.get(name)
    if v is None:
        return None
    if not _is_number(v) or not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise _bad(name, want or f"a number in {'(' if lo_open else '['}{lo}, {hi}]", v)
    return float(v)


def _bool(body, name):
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(name, "true or false", v)
    return v


def _check_object(body):
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")


def _common(body, kind, limits):
    """The fields completions and chat share."""
    _check_object(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "a string", model)
    max_tokens = _int(body, "max_tokens", 1, limits.max_tokens,
                      f"an integer in [1, {limits.max_tokens}] (this server's limit)")
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens", 1, limits.max_tokens,
                          f"an integer in [1, {limits.max_tokens}] (this server's limit)")
    top_k = _int(body, "top_k", -1, 1 << 31, "an integer >= 1 (-1 or 0: no limit)")
    req = Request(kind=kind, model=model, max_tokens=max_tokens,
                  temperature=_number(body, "temperature", 0, 2),
                  top_p=_number(body, "top_p", 0, 1, lo_open=True),
                  top_k=None if top_k is not None and top_k < 1 else top_k,
                  repetition_penalty=_number(body, "repetition_penalty", 0.01, 10),
                  seed=_int(body, "seed", 0, 2 ** 63 - 1),
                  n=_int(body, "n", 1, limits.max_choices) or 1,
                  stream=_bool(body, "stream"))
    req.stop = _stop(body, limits)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options", "an object such as {\"include_usage\": true}", opts)
        req.include_usage = _bool(opts, "include_usage")
    for name in ("presence_penalty", "frequency_penalty"):
        v = _number(body, name, -2, 2)
        if v:
            req.extended[name] = v
    v = _number(body, "min_p", 0, 1)
    if v:
        req.extended["min_p"] = v
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or not all(
                isinstance(k, str) and k.lstrip("-").isdigit() and _is_number(b) and -100 <= b <= 100
                for k, b in bias.items()):
            raise _bad("logit_bias", "an object mapping token ids to numbers in [-100, 100]", bias)
        if bias:
            req.extended["logit_bias"] = {int(k): float(b) for k, b in bias.items()}
    return req


def _stop(body, limits):
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or len(stops) > limits.max_stop or \
            not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", f"a non-empty string or a list of at most {limits.max_stop} of them", v)
    return list(stops)


# ---------------------------------------------------------------------- the requests
def parse_completion(body, limits):
    """POST /v1/completions: prompt is a string, a list of token ids, or a list of either."""
    req = _common(body, "completion", limits)
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required: a string, a list of token ids, or a list of either",
                       param="prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and p and all(_is_int(t) for t in p)) for p in prompt):
        prompts = prompt
    else:
        raise _bad("prompt", "a string, a non-empty list of token ids, or a non-empty list of either", prompt)
    if len(prompts) * req.n > limits.max_choices:
        raise APIError(400, f"{len(prompts)} prompts times n={req.n} asks for {len(prompts) * req.n} "
                            f"completions; this server allows {limits.max_choices} per request", param="n")
    if sum(len(p) for p in prompts if isinstance(p, str)) > limits.max_prompt_chars:
        raise APIError(400, f"the prompt is longer than this server's limit of {limits.max_prompt_chars} "
                            f"characters", param="prompt", code="context_length_exceeded")
    req.prompts = prompts
    req.echo = _bool(body, "echo")
    logprobs = _int(body, "logprobs", 0, 20)
    if logprobs is not None:
        req.extended["logprobs"] = logprobs
    if body.get("suffix") not in (None, ""):
        raise APIError(400, "'suffix' is not supported by this server", param="suffix")
    best_of = _int(body, "best_of", 1, limits.max_choices)
    if best_of is not None and best_of != req.n:
        raise APIError(400, "'best_of' other than n is not supported by this server", param="best_of")
    return req


def _content(i, message):
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content", "a string or a list of {\"type\": \"text\", \"text\": ...} "
                           "parts (this server reads text only)", content)
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content", "a string or a list of text parts", content)


def parse_chat(body, limits):
    """POST /v1/chat/completions: messages is a non-empty list of {"role", "content"}."""
    req = _common(body, "chat", limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "a non-empty list of {\"role\": ..., \"content\": ...} objects", messages)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", "an object with 'role' and 'content'", m)
        if m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role", f"one of {', '.join(ROLES)}", m.get("role"))
        out.append({"role": m["role"], "content": _content(i, m)})
    if sum(len(m["content"]) for m in out) > limits.max_prompt_chars:
        raise APIError(400, f"the messages are longer than this server's limit of {limits.max_prompt_chars} "
                            f"characters", param="messages", code="context_length_exceeded")
    req.messages = out
    if _bool(body, "logprobs"):
        req.extended["logprobs"] = True
        top = _int(body, "top_logprobs", 0, 20)
        if top:
            req.extended["top_logprobs"] = top
    return req


def parse_tokenize(body, limits):
    """POST /tokenize: {"prompt": str} or {"messages": [...]} (the chat template applied);
    add_special_tokens is accepted and ignored. Returns ("prompt", str) or ("messages", list)."""
    _check_object(body)
    if body.get("messages") is not None:
        return "messages", parse_chat({"messages": body["messages"]}, limits).messages
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _bad("prompt", "a string (or give 'messages')", prompt)
    if len(prompt) > limits.max_prompt_chars:
        raise APIError(400, f"the prompt is longer than this server's limit of {limits.max_prompt_chars} "
                            f"characters", param="prompt")
    return "prompt", prompt


def parse_detokenize(body, vocab_size):
    """POST /detokenize: {"tokens": [ids]} with every id in [0, vocab_size)."""
    _check_object(body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(_is_int(t) and 0 <= t < vocab_size for t in tokens):
        raise _bad("tokens", f"a list of token ids in [0, {vocab_size})", tokens)
    return tokens
