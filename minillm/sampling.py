"""Next-token sampling: pure functions over logits that know no model.

    nxt = sample_next(logits, temperature=0.8, top_k=50, generator=Generator(1))   # (B, V) -> (B,)

Options, applied in this order to a (B, V) float32 row of logits per sequence:
  repetition_penalty  (the decoding loop applies it, as it knows the context: see
               apply_repetition_penalty) every id already in the row's context has its logit
               divided by the penalty when positive, multiplied when negative (CTRL, Keskar
               et al. 2019; the rule HF's generation_config.json means). 1: off.
  temperature  logits / temperature. 0 means greedy (the limit T -> 0: always the most
               likely token); negative or non-finite values raise ValueError.
  top_k        keep the k most likely tokens (ties go to the smaller id). None: no limit;
               k >= V: no limit; k < 1 (0 included) raises ValueError.
  top_p        nucleus: keep the fewest tokens, most likely first, whose probability adds
               up to at least p. None or 1: no limit; p outside (0, 1] raises ValueError.
  greedy       argmax, ignoring the three above (the first maximum on ties).
Draws come from `generator` (a minillm.Generator; default: minillm's default generator), so a
seeded generator gives the same tokens run after run, on any thread count.
"""
import math

import numpy as np

from minillm import _C
from minillm.random import default_generator

__all__ = ["sample_next", "apply_temperature", "apply_repetition_penalty", "top_k_filter", "top_p_filter",
           "draw", "check_sampling_args"]


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0):
    """ValueError unless temperature >= 0 (finite), top_k None or an int >= 1, top_p None or
    in (0, 1], repetition_penalty > 0 (finite). See the module docstring for their meaning."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None (no limit) or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None (no limit) or in (0, 1], got {top_p!r}")
    if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, (int, float)) \
            or not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {repetition_penalty!r}")


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
    rows = context.tolist() if isinstance(context, _C.Tensor) else [list(r) for r in context]
    B, V = out.shape
    if len(rows) != B:
        raise ValueError(f"apply_repetition_penalty: {len(rows)} context rows for {B} rows of logits")
    a = out.numpy()
    for b, ids in enumerate(rows):
        seen = np.unique(np.asarray(ids, dtype=np.int64))
        if seen.size and (seen[0] < 0 or seen[-1] >= V):
            bad = seen[0] if seen[0] < 0 else seen[-1]
            raise ValueError(f"apply_repetition_penalty: id {bad} in row {b} is outside the vocabulary [0, {V})")
        x = a[b, seen]
        a[b, seen] = np.where(x > 0, x / np.float32(penalty), x * np.float32(penalty))
    return out


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


def draw(logits, generator=None):
    """One token per row from softmax(logits): logits (B, V) float32 -> (B,) int64. Uses B
    uniforms from `generator` (default: minillm's default generator)."""
    logits = _rows(logits, "draw")
    u = _C.empty((logits.shape[0],))
    (generator or default_generator()).uniform_(u)
    return _C.sample_rows(logits, u)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, greedy=False, generator=None):
    """The next token of each row: logits (B, V) (or (V,)) float32 -> (B,) int64.
    Greedy (or temperature 0) takes the argmax; otherwise temperature, top-k and top-p are
    applied in that order and one token is drawn per row (see the module docstring)."""
    check_sampling_args(temperature, top_k, top_p)
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
    return draw(logits, generator)
