"""Many sequences decoded side by side: the engine under `minillm serve`.

    engine = Engine(model, max_batch=8)
    a = engine.add([15496, 11], max_new_tokens=20, temperature=0.7, seed=1)
    b = engine.add([40, 1101], max_new_tokens=5, greedy=True)
    while engine.has_work():
        for ev in engine.step():          # one new token for every running sequence
            print(ev.seq_id, ev.token, ev.finish_reason)

A sequence waits in a queue until one of max_batch slots is free, joins at the next step
(its prompt is run into its own KV cache, which gives its first token), gains one token per
step after that, and leaves the batch when it finishes: a stop
token ("stop"), max_new_tokens or the end of the model's context ("length"), or cancel()
("cancelled", at the next step). So requests join and leave a running batch between steps
(continuous batching). Each sequence samples with its own options and its own generator.

add() and cancel() may be called from another thread than step() (a server's event loop
while a worker thread steps): the queue and the cancellations are guarded by a lock, and
step() is the only place that touches the sequences' caches.

The decode: one call of the model's decode plan (Decoder.extend) gives every running
sequence its next logits, each row at its own position over its own cache, so a step reads
the weights once for the whole batch. The prompts of the sequences joining ride in the same
call, as rows of their own, where the plan runs them faster than the model's forward (short
prompts; any prompt with int8 weights: Decoder.prefills_by_rows); longer ones go through the
forward's GEMM. A prompt's rows give the logits its tokens would give stepped in one by one.
"""
import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from minillm import _C
from minillm.autograd import no_grad
from minillm.generate import KVCache
from minillm.random import Generator
from minillm.sampling import apply_penalties, check_sampling_args, sample_checked, token_logprobs

__all__ = ["Engine", "Event"]


@dataclass
class Event:
    """What one step did to one sequence: `token` the id it gained (None when it ended without
    one: cancelled, or a context with no room left), `finish_reason` None while it runs on,
    else "stop" (token is the stop token), "length" or "cancelled"; `logprobs`, when the
    sequence asked for them, (the token's log-probability, [(id, log-probability), ...] of the
    n most likely) under the model's distribution (sampling.token_logprobs)."""
    seq_id: int
    token: Optional[int]
    finish_reason: Optional[str] = None
    logprobs: Optional[tuple] = None


@dataclass
class _Sequence:
    seq_id: int
    prompt: list
    max_new_tokens: int
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    greedy: bool
    repetition_penalty: float
    stop_tokens: frozenset
    generator: Generator
    min_p: Optional[float] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict] = None
    logprobs: Optional[int] = None                 # alternatives to report per token, or None
    tokens: list = field(default_factory=list)     # generated so far
    cache: Optional[KVCache] = None
    last: Optional[int] = None                     # the token to feed next


class Engine:
    """Continuous batching over one model (see the module docstring).

    model: a LanguageModel with a KV cache (kv_cache_shape() not None); max_batch: sequences
    decoded together; weights: the dtype the decode plan streams ("float32", "bf16", "int8";
    None: the model's own), or decoder: a plan built already."""

    def __init__(self, model, max_batch=8, weights=None, decoder=None):
        if model.kv_cache_shape() is None:
            raise ValueError(f"Engine: {type(model).__name__} has no KV cache; the engine needs one")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"Engine: max_batch must be an int >= 1, got {max_batch!r}")
        self.model = model.eval()
        self.max_batch = max_batch
        self.context = model.config.block_size
        if decoder is None:
            decoder = model.decoder() if weights is None else model.decoder(weights=weights)
        self.decoder = decoder
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting = deque()
        self._cancelled = set()
        self._running = {}

    # ------------------------------------------------------------------ the queue
    def add(self, prompt, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
            repetition_penalty=1.0, stop_tokens=(), seed=None, min_p=None, presence_penalty=0.0,
            frequency_penalty=0.0, logit_bias=None, logprobs=None, top_logprobs=None):
        """Queue a sequence; returns its id. prompt: a non-empty list of ids < vocab_size and
        shorter than the context; the other options as generate()'s (applied in its order).
        logprobs: None/False (off), an int n (each Event carries the token's log-probability and
        the n most likely alternatives), or True with top_logprobs = n (the chat API's form).
        ValueError names a bad one."""
        check_sampling_args(temperature, top_k, top_p, repetition_penalty, min_p, presence_penalty,
                            frequency_penalty, logit_bias=logit_bias)
        V = self.model.config.vocab_size
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise ValueError("Engine.add: the prompt must be a non-empty list of token ids")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V for t in prompt):
            bad = next(t for t in prompt if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V)
            raise ValueError(f"Engine.add: token {bad!r} is not an id in [0, {V})")
        if len(prompt) >= self.context:
            raise ValueError(f"Engine.add: a prompt of {len(prompt)} tokens leaves no room in the context of "
                             f"{self.context}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"Engine.add: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
            raise ValueError(f"Engine.add: seed must be an int in [0, 2**63), got {seed!r}")
        n_lp = None if logprobs is None or logprobs is False else (top_logprobs or 0) if logprobs is True \
            else logprobs
        if n_lp is not None and (isinstance(n_lp, bool) or not isinstance(n_lp, int) or not 0 <= n_lp <= V):
            raise ValueError(f"Engine.add: logprobs must be an int in [0, {V}], got {n_lp!r}")
        seq = _Sequence(next(self._ids), list(prompt), max_new_tokens, float(temperature), top_k, top_p,
                        bool(greedy), float(repetition_penalty), frozenset(int(s) for s in stop_tokens),
                        Generator(seed) if seed is not None else Generator(), min_p, float(presence_penalty),
                        float(frequency_penalty), dict(logit_bias) if logit_bias else None, n_lp)
        with self._lock:
            self._waiting.append(seq)
        return seq.seq_id

    def cancel(self, seq_id):
        """End a waiting or running sequence at the next step (its last Event says "cancelled")."""
        with self._lock:
            self._cancelled.add(seq_id)

    def has_work(self):
        with self._lock:
            return bool(self._waiting or self._running)

    @property
    def running(self):
        return len(self._running)

    @property
    def waiting(self):
        with self._lock:
            return len(self._waiting)

    # ------------------------------------------------------------------ a step
    def step(self):
        """Admit waiting sequences into free slots (their prompts prefilled: each gains its
        first token), then one token for every sequence that was running. Returns the Events."""
        events = []
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            admitted = []
            for seq in list(self._waiting):
                if seq.seq_id in cancelled:
                    self._waiting.remove(seq)
                    events.append(Event(seq.seq_id, None, "cancelled"))
            while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                admitted.append(self._waiting.popleft())
        for sid in [s for s in self._running if s in cancelled]:
            del self._running[sid]
            events.append(Event(sid, None, "cancelled"))
        with no_grad():
            decoding = list(self._running.values())
            for seq in admitted:
                room = min(self.context, len(seq.prompt) + seq.max_new_tokens)
                seq.cache = KVCache.for_decoder(self.model, self.decoder, 1, capacity=room)
            # the running sequences' next rows and the short prompts' rows in one pass over the weights
            by_rows = [seq for seq in admitted if self.decoder.prefills_by_rows(len(seq.prompt))]
            rows = [([seq.last], seq.cache) for seq in decoding] + [(seq.prompt, seq.cache) for seq in by_rows]
            logits = self.decoder.extend(rows) if rows else None
            for i, seq in enumerate(decoding):
                events.append(self._advance(seq, logits[i:i + 1]))
            first = {seq.seq_id: len(decoding) + i for i, seq in enumerate(by_rows)}
            for seq in admitted:
                self._running[seq.seq_id] = seq
                i = first.get(seq.seq_id)
                events.append(self._advance(seq, self._prefill(seq) if i is None else logits[i:i + 1]))
        for ev in events:
            if ev.finish_reason is not None:
                self._running.pop(ev.seq_id, None)
        return events

    def _prefill(self, seq):
        """Logits (1, V) after a long prompt, through the forward (the GEMM) into its cache."""
        logits, _ = self.model(_C.tensor([seq.prompt], dtype="int64"), kv_cache=seq.cache)
        return _C.getitem(logits, (slice(None), -1)).contiguous()

    def _advance(self, seq, logits):
        """Sample seq's next token from logits (1, V) and say whether it finished."""
        raw = logits
        logits = apply_penalties(logits, [seq.prompt + seq.tokens], len(seq.prompt), seq.logit_bias,
                                 seq.repetition_penalty, seq.presence_penalty, seq.frequency_penalty)
        tok = int(sample_checked(logits, seq.temperature, seq.top_k, seq.top_p, seq.greedy, seq.generator,
                                 seq.min_p).item())
        seq.tokens.append(tok)
        seq.last = tok
        lp = token_logprobs(raw, [tok], seq.logprobs)[0] if seq.logprobs is not None else None
        if tok in seq.stop_tokens:
            return Event(seq.seq_id, tok, "stop", lp)
        if len(seq.tokens) >= seq.max_new_tokens or len(seq.prompt) + len(seq.tokens) >= self.context:
            return Event(seq.seq_id, tok, "length", lp)
        return Event(seq.seq_id, tok, None, lp)
