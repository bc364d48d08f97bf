"""Next-token sampling: pure functions over logits that know no model.

    nxt = sample_next(logits, temperature=0.8, top_k=50, generator=Generator(1))   # (B, V) -> (B,)

Every function here takes a (B, V) float32 Tensor of logits (one row per sequence; (V,) is
one row), returns a new tensor and leaves its input unchanged. generate() (minillm/generate.py)
applies the options, when on, in this order to each step's logits (the order of transformers'
generate, so the same settings give the same continuation):
  logit_bias   {token id: bias} added to the logits (OpenAI's logit_bias: a bias in
               [-100, 100]; -100 all but bans a token, +100 all but forces it). Ids outside
               [0, V) or biases outside the range raise ValueError. None or {}: off.
  repetition_penalty  every id already in the row (prompt and new tokens) has its logit
               divided by the penalty when positive, multiplied when negative (CTRL, Keskar
               et al. 2019; the rule HF's generation_config.json means). 1: off.
  presence_penalty, frequency_penalty  OpenAI's penalties, over the generated tokens only
               (not the prompt): logit[j] -= presence * (c[j] > 0) + frequency * c[j], c[j]
               the number of times j was generated so far in the row. Each in [-2, 2]
               (OpenAI's range; negative values encourage repeats). 0: off.
  no_repeat_ngram_size  n: every token that would complete an n-gram already in the row
               (prompt and new tokens) gets -inf. 0: off.
  temperature  logits / temperature. 0 means greedy (the limit T -> 0: always the most
               likely token); negative or non-finite values raise ValueError.
  top_k        keep the k most likely tokens (ties go to the smaller id). None: no limit;
               k >= V: no limit; k < 1 (0 included) raises ValueError.
  top_p        nucleus: keep the fewest tokens, most likely first, whose probability adds
               up to at least p. None or 1: no limit; p outside (0, 1] raises ValueError.
  min_p        keep the tokens whose probability is >= min_p times the row's largest
               probability (after temperature, top-k and top-p; Nguyen et al. 2024, "min-p
               sampling"). None or 0: off; outside [0, 1] raises ValueError.
  greedy       argmax, ignoring temperature, top-k, top-p and min-p (first maximum on ties).
Draws come from `generator` (a minillm.Generator; default: minillm's default generator), so a
seeded generator gives the same tokens run after run, on any thread count.

Log-probabilities (token_logprobs, generate(..., logprobs=n)) are those of the model's own
distribution, log_softmax of the raw logits before any option above, as OpenAI's logprobs
report them: they do not change with temperature, penalties or filters, and the chosen
token's value is comparable across sampling settings.

Stop strings (StopStrings) work on text, not ids: fed the decoded text of the new tokens after
each step, the matcher says how much of it is safe to show (never the start of a possible stop
string) and where the text ends when a stop string appears, also when one spans several tokens.
"""
import math

import numpy as np

from minillm import _C
from minillm.random import default_generator

__all__ = ["apply_penalties", "sample_next", "apply_temperature", "apply_repetition_penalty", "top_k_filter",
           "top_p_filter",
           "min_p_filter", "apply_presence_frequency_penalty", "apply_logit_bias", "no_repeat_ngram_filter",
           "token_logprobs", "StopStrings", "draw", "check_sampling_args"]

PENALTY_RANGE = 2.0        # OpenAI's presence/frequency penalties lie in [-2, 2]
LOGIT_BIAS_RANGE = 100.0   # OpenAI's logit_bias values lie in [-100, 100]


def _is_number(x):
    return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))


def _is_int(x):
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0, min_p=None,
                        presence_penalty=0.0, frequency_penalty=0.0, no_repeat_ngram_size=0, logit_bias=None):
    """ValueError, naming the option and its value, unless temperature >= 0 (finite), top_k None
    or an int >= 1, top_p None or in (0, 1], repetition_penalty > 0 (finite), min_p None or in
    [0, 1], presence_penalty and frequency_penalty in [-2, 2], no_repeat_ngram_size an int >= 0,
    logit_bias None or a dict {int id >= 0: bias in [-100, 100]}. The defaults are all "off";
    see the module docstring for their meaning."""
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None (no limit) or an int >= 1, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None (no limit) or in (0, 1], got {top_p!r}")
    if not _is_number(repetition_penalty) or not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {repetition_penalty!r}")
    if min_p is not None and (not _is_number(min_p) or not 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be None (off) or in [0, 1], got {min_p!r}")
    for name, v in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not _is_number(v) or not -PENALTY_RANGE <= v <= PENALTY_RANGE:
            raise ValueError(f"{name} must be a number in [-2, 2] (0 = off), got {v!r}")
    if not _is_int(no_repeat_ngram_size) or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be an int >= 0 (0 = off), got {no_repeat_ngram_size!r}")
    if logit_bias is not None:
        if not isinstance(logit_bias, dict):
            raise ValueError(f"logit_bias must be None or a dict {{token id: bias}}, "
                             f"got {type(logit_bias).__name__}: {logit_bias!r}")
        for tok, bias in logit_bias.items():
            if not _is_int(tok) or tok < 0:
                raise ValueError(f"logit_bias: token id must be an int >= 0, got {tok!r}")
            if not _is_number(bias) or not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
                raise ValueError(f"logit_bias: bias of token {tok} must be a number in [-100, 100], got {bias!r}")


def _id_rows(ids, B, V, what):
    """ids ((B, T) int64 Tensor, or B sequences of ids) as B int64 arrays within [0, V)."""
    rows = ids.tolist() if isinstance(ids, _C.Tensor) else [list(r) for r in ids]
    if len(rows) != B:
        raise ValueError(f"{what}: {len(rows)} rows of token ids for {B} rows of logits")
    out = []
    for b, r in enumerate(rows):
        a = np.asarray(r, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= V):
            bad = a.min() if a.min() < 0 else a.max()
            raise ValueError(f"{what}: id {bad} in row {b} is outside the vocabulary [0, {V})")
        out.append(a)
    return out


def _rows(logits, what):
    """logits as a (B, V) float32 Tensor ((V,) is one row)."""
    if not isinstance(logits, _C.Tensor):
        raise TypeError(f"{what}: expected a float32 Tensor of logits, got {type(logits).__name__}")
    if logits.dtype != "float32":
        raise TypeError(f"{what}: expected float32 logits, got {logits.dtype}")
    if logits.ndim == 1:
        return _C.reshape(logits, (1, logits.shape[0]))
    if logits.ndim != 2:
        raise ValueError(f"{what}: expected logits of shape (B, V) or (V,), got {tuple(logits.shape)}")
    return logits


def apply_temperature(logits, temperature):
    """logits / temperature, a new tensor: logits (B, V) float32, temperature > 0."""
    if not temperature > 0:
        raise ValueError(f"apply_temperature: temperature must be > 0 (use greedy for 0), got {temperature!r}")
    return _C.div(_rows(logits, "apply_temperature"), float(temperature))


def apply_repetition_penalty(logits, context, penalty):
    """A copy of logits (B, V) float32 where, in each row b, the logit of every id that occurs
    in context[b] (a (B, T) int64 Tensor or lists of ids) is divided by `penalty` if positive
    and multiplied by it otherwise: penalty > 1 makes repeating less likely. Ids outside
    [0, V) raise ValueError."""
    check_sampling_args(repetition_penalty=penalty)
    out = _rows(logits, "apply_repetition_penalty").copy()
    B, V = out.shape
    a = out.numpy()
    for b, ids in enumerate(_id_rows(context, B, V, "apply_repetition_penalty")):
        seen = np.unique(ids)
        x = a[b, seen]
        a[b, seen] = np.where(x > 0, x / np.float32(penalty), x * np.float32(penalty))
    return out


def apply_presence_frequency_penalty(logits, generated, presence=0.0, frequency=0.0):
    """A copy of logits (B, V) float32 with, in each row b,
        logit[j] -= presence * (c[j] > 0) + frequency * c[j]
    where c[j] counts id j in generated[b] (a (B, n) int64 Tensor or B lists of ids: the
    tokens generated so far, not the prompt, as in OpenAI's API). presence, frequency in
    [-2, 2]; ids outside [0, V) raise ValueError."""
    check_sampling_args(presence_penalty=presence, frequency_penalty=frequency)
    out = _rows(logits, "apply_presence_frequency_penalty").copy()
    B, V = out.shape
    a = out.numpy()
    for b, ids in enumerate(_id_rows(generated, B, V, "apply_presence_frequency_penalty")):
        if ids.size:
            c = np.bincount(ids, minlength=V)
            a[b] -= (presence * (c > 0) + frequency * c).astype(np.float32)
    return out


def apply_logit_bias(logits, bias):
    """A copy of logits (B, V) float32 with bias[j] added to column j of every row: bias a dict
    {token id: number in [-100, 100]} (OpenAI's logit_bias). An id outside [0, V) raises
    ValueError naming it."""
    check_sampling_args(logit_bias=bias)
    out = _rows(logits, "apply_logit_bias").copy()
    V = out.shape[1]
    for tok in bias:
        if tok >= V:
            raise ValueError(f"logit_bias: token id {tok} is outside the vocabulary [0, {V})")
    if bias:
        ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        add = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        out.numpy()[:, ids] += add
    return out


def _ngram_bans(row, n):
    """The ids that would complete an n-gram already in `row` (1-D int64): every t such that
    row[i:i+n] == (last n-1 ids of row) + (t,) for some i."""
    L = row.size
    if n == 0 or L + 1 < n:
        return row[:0]
    windows = np.lib.stride_tricks.sliding_window_view(row, n)        # (L-n+1, n)
    if n == 1:
        return windows[:, 0]
    match = (windows[:, :n - 1] == row[L - n + 1:]).all(axis=1)
    return windows[match, n - 1]


def no_repeat_ngram_filter(logits, context, n):
    """A copy of logits (B, V) float32 where, in each row b, every id that would make the
    last n tokens of context[b] (a (B, T) int64 Tensor or B lists of ids, prompt included)
    repeat an n-gram already in context[b] is set to -inf. n = 0: a plain copy; n = 1 bans
    every id already in the row."""
    check_sampling_args(no_repeat_ngram_size=n)
    out = _rows(logits, "no_repeat_ngram_filter").copy()
    B, V = out.shape
    a = out.numpy()
    for b, ids in enumerate(_id_rows(context, B, V, "no_repeat_ngram_filter")):
        a[b, _ngram_bans(ids, n)] = -np.inf
    return out


def apply_penalties(logits, context, prompt_len, logit_bias=None, repetition_penalty=1.0, presence_penalty=0.0,
                    frequency_penalty=0.0, no_repeat_ngram_size=0):
    """The processors that look at the context, in the order generate() applies them before
    sampling (transformers' order): logit bias, repetition penalty (over the whole context),
    presence/frequency penalties (over the tokens after the first prompt_len), no-repeat
    n-gram. logits (B, V) float32; context (B, n) int64 Tensor or lists of ids. Returns logits
    itself when every option is off, else a processed copy."""
    if logit_bias:
        logits = apply_logit_bias(logits, logit_bias)
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, context, repetition_penalty)
    if presence_penalty or frequency_penalty:
        generated = context[:, prompt_len:] if isinstance(context, _C.Tensor) else [r[prompt_len:] for r in context]
        logits = apply_presence_frequency_penalty(logits, generated, presence_penalty, frequency_penalty)
    if no_repeat_ngram_size:
        logits = no_repeat_ngram_filter(logits, context, no_repeat_ngram_size)
    return logits


def top_k_filter(logits, k):
    """A copy of logits (B, V) float32 with every entry outside each row's k largest set to
    -inf (ties go to the smaller id, so exactly min(k, V) stay finite). k >= 1."""
    check_sampling_args(top_k=k)
    out = _rows(logits, "top_k_filter").copy()
    return _C.top_k_mask_(out, k)


def top_p_filter(logits, p):
    """A copy of logits (B, V) float32 keeping, per row, the fewest tokens (most likely first,
    ties to the smaller id) whose softmax probability sums to >= p; the rest -inf. p in (0, 1]."""
    check_sampling_args(top_p=p)
    out = _rows(logits, "top_p_filter").copy()
    return _C.top_p_mask_(out, p)


def min_p_filter(logits, min_p):
    """A copy of logits (B, V) float32 keeping, per row, the tokens whose softmax probability is
    >= min_p times the row's largest (the most likely token always stays); the rest -inf.
    min_p in [0, 1] (0 keeps every token)."""
    check_sampling_args(min_p=min_p)
    out = _rows(logits, "min_p_filter").copy()
    a = out.numpy()
    # p[j] / p_max = exp(x[j] - x_max): no normalisation needed
    rel = np.exp(a - a.max(axis=1, keepdims=True))
    a[rel < np.float32(min_p)] = -np.inf
    return out


def token_logprobs(logits, chosen, n=0):
    """Log-probabilities under softmax(logits) of each row's chosen token and of its n most
    likely tokens: logits (B, V) float32 (the model's raw logits: see the module docstring),
    chosen (B,) int64 Tensor or B ints, n an int in [0, V]. Returns a list of B pairs
    (chosen logprob, [(id, logprob), ...n]), the list most likely first, ties to the smaller
    id; log-probabilities are Python floats from a float32 log_softmax."""
    logits = _rows(logits, "token_logprobs")
    B, V = logits.shape
    if not _is_int(n) or not 0 <= n <= V:
        raise ValueError(f"logprobs: n must be an int in [0, {V}] (the vocabulary size), got {n!r}")
    ids = chosen.tolist() if isinstance(chosen, _C.Tensor) else list(chosen)
    if len(ids) != B:
        raise ValueError(f"token_logprobs: {len(ids)} chosen ids for {B} rows of logits")
    lp = _C.log_softmax(logits, -1).numpy()
    out = []
    for b, tok in enumerate(ids):
        if not _is_int(tok) or not 0 <= tok < V:
            raise ValueError(f"token_logprobs: chosen id {tok!r} in row {b} is outside the vocabulary [0, {V})")
        top = []
        if n:
            row = lp[b]
            cut = np.partition(row, V - n)[V - n]                  # the n-th largest value
            cand = np.flatnonzero(row >= cut)
            cand = cand[np.lexsort((cand, -row[cand]))][:n]        # by value, then smaller id
            top = [(int(j), float(row[j])) for j in cand]
        out.append((float(lp[b, tok]), top))
    return out


class StopStrings:
    """Stop strings matched on the decoded text, across token boundaries, with a hold-back
    buffer for streaming.

        stop = StopStrings(["\n\n", "User:"])
        for step ...:                                              # new_ids: every id generated so far
            print(stop.push(tokenizer.decode(new_ids)), end="")   # only text known to be safe
            if stop.stopped: break
        print(stop.flush())                                        # the held-back tail, if no stop
        stop.text                                                  # everything kept

    push(text) takes the whole text decoded so far (str, or bytes to match on bytes) and
    returns the part not returned before that cannot be the start of a stop string: a tail
    that is a proper prefix of some stop string (e.g. "Us" with "User:") is held back until
    later text settles it, and so is a trailing U+FFFD (a tokenizer's decode of a multi-byte
    character cut between tokens). Once a stop string appears anywhere in the text, `stopped`
    is True, `keep` is the number of characters (bytes) before the earliest one, and push
    returns the rest of the text up to there. Texts must grow by appending: a push whose text
    does not start with what was already returned raises ValueError."""

    def __init__(self, stop_strings):
        if isinstance(stop_strings, (str, bytes)):
            stop_strings = [stop_strings]
        stops = list(stop_strings)
        for s in stops:
            if not isinstance(s, (str, bytes)) or len(s) == 0:
                raise ValueError(f"stop strings must be non-empty str (or bytes), got {s!r}")
        self.stops = stops
        self.stopped = False
        self.keep = None          # characters of the text kept, once stopped
        self._emitted = None      # the text returned so far (str or bytes)
        self._last = None         # the last text pushed

    def find(self, text):
        """(keep, stopped) for `text`, a pure function of it: stopped when some stop string
        occurs in it, keep then being the index of the earliest occurrence; otherwise keep is
        len(text) minus the held-back tail (see the class docstring)."""
        stops = self._typed(text)
        first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if first >= 0:
            return first, True
        hold = 0
        for s in stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):    # longest proper prefix first
                if text.endswith(s[:k]):
                    hold = k
                    break
        keep = len(text) - hold
        replacement = "\ufffd" if isinstance(text, str) else b"\xef\xbf\xbd"
        while keep > 0 and text[:keep].endswith(replacement):
            keep -= len(replacement)
        return keep, False

    def push(self, text):
        """The new safe part of `text` (the whole decoded text so far); see the class docstring."""
        if self.stopped:
            return text[:0]
        done = self._emitted if self._emitted is not None else text[:0]
        if not text.startswith(done):
            raise ValueError(f"StopStrings.push: the text no longer starts with what was already returned "
                             f"({len(done)} characters); push the whole text decoded so far")
        keep, self.stopped = self.find(text)
        keep = max(keep, len(done))
        self._last = text
        if self.stopped:
            self.keep = keep
        self._emitted = text[:keep]
        return text[len(done):keep]

    def flush(self, text=None):
        """At the end of generation without a stop: what push(text) returns (when given the
        final decoded text) followed by the held-back tail, which can no longer start a stop
        string. After a stop: what is left up to the stop string."""
        out = self.push(text) if text is not None else None
        last = self._last
        if out is None:
            out = last[:0] if last is not None else ""
        if self.stopped or last is None:
            return out
        tail = last[len(self._emitted):]
        self._emitted = last
        return out + tail

    @property
    def text(self):
        """Everything returned so far (after a stop: the text without the stop string)."""
        return self._emitted if self._emitted is not None else ""

    def _typed(self, text):
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"StopStrings: expected the decoded text as str or bytes, got {type(text).__name__}")
        want = type(text)
        return [s if isinstance(s, want) else (s.encode() if want is bytes else s.decode("utf-8", "replace"))
                for s in self.stops]


def draw(logits, generator=None):
    """One token per row from softmax(logits): logits (B, V) float32 -> (B,) int64. Uses B
    uniforms from `generator` (default: minillm's default generator)."""
    logits = _rows(logits, "draw")
    u = _C.empty((logits.shape[0],))
    (generator or default_generator()).uniform_(u)
    return _C.sample_rows(logits, u)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, greedy=False, generator=None, min_p=None):
    """The next token of each row: logits (B, V) (or (V,)) float32 -> (B,) int64.
    Greedy (or temperature 0) takes the argmax; otherwise temperature, top-k, top-p and min-p
    are applied in that order (transformers' order) and one token is drawn per row (see the
    module docstring)."""
    check_sampling_args(temperature, top_k, top_p, min_p=min_p)
    return sample_checked(logits, temperature, top_k, top_p, greedy, generator, min_p)


def sample_checked(logits, temperature, top_k, top_p, greedy, generator, min_p):
    """sample_next for options check_sampling_args has already passed (the decoding loops
    check them once, not at every step)."""
    logits = _rows(logits, "sample_next")
    if greedy or temperature == 0:
        return _C.argmax(logits, -1)
    if temperature != 1.0:
        logits = _C.div(logits, float(temperature))
    else:
        logits = logits.copy()
    if top_k is not None and top_k < logits.shape[1]:
        _C.top_k_mask_(logits, top_k)
    if top_p is not None and top_p < 1.0:
        _C.top_p_mask_(logits, top_p)
    if min_p:
        a = logits.numpy()
        a[np.exp(a - a.max(axis=1, keepdims=True)) < np.float32(min_p)] = -np.inf
    return draw(logits, generator)
