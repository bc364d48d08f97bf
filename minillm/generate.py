"""Text generation: the decoding loop over any LanguageModel, and its KV cache.

    out = generate(model, idx, 100, temperature=0.8, top_k=50, generator=Generator(1))

`generate` talks to the model only through the LanguageModel interface (minillm/models/base.py).
It runs the prompt through the model once (prefill), then feeds one token per step. Models
whose `kv_cache_shape()` is not None (the GPT) keep every layer's keys and values in a
`KVCache`, so a step costs one token's forward, or one call of the model's fast decode step
(`model.decoder()`) when it has one; other models (bigram, mlp) recompute on their context.
Each step's logits go through the options that are on, in minillm/sampling.py's order (logit
bias, repetition penalty, presence/frequency penalties, no-repeat n-gram, then temperature,
top-k, top-p, min-p in sample_next); every option defaults to off, and an option that is off
costs nothing.

Context longer than block_size: the model sees only the last block_size tokens, as nanoGPT
crops `idx[:, -block_size:]`. With a KV cache, positions are absolute (learned position
embeddings), so once the sequence outgrows block_size the cache is rebuilt from the last
block_size tokens at every step: the logits stay exactly those of the cropped recomputation,
at the cost of a block_size-token forward per step from then on.
"""
import numbers

from minillm import _C
from minillm.autograd import no_grad
from minillm.quantize import KV_DTYPES
from minillm.random import Generator
# the sampling functions were defined here before minillm/sampling.py; their names stay importable
from minillm.sampling import (apply_logit_bias, apply_penalties, apply_presence_frequency_penalty,  # noqa: F401
                              apply_repetition_penalty, apply_temperature, check_sampling_args, draw,
                              no_repeat_ngram_filter, sample_checked, sample_next, StopStrings, token_logprobs,
                              top_k_filter, top_p_filter)

__all__ = ["KVCache", "LayerKVCache", "generate", "sample_text", "MAX_NEW_TOKENS"]

MAX_NEW_TOKENS = 1 << 24    # generate() holds the prompts and new ids in one (B, T + n) int64 buffer


# ------------------------------------------------------------------------ KV cache
class LayerKVCache:
    """Keys and values of one attention layer for a batch of B sequences.

    Stored position-major in two GrowableTensors with rows (B, n_head, head_size), so that a
    step appends T_new rows (amortised O(1), no copy of what is cached); `update` returns
    (B, n_head, T_total, head_size) views of them (last axis contiguous: the GEMM reads them
    in place). dtype "float32", or "bfloat16": half the bytes (a decoding step over a long
    context reads them all), each value rounded to nearest even as it is stored; `update`
    then returns float32 copies."""

    def __init__(self, batch, n_head, head_size, capacity=16, dtype="float32"):
        if dtype not in KV_DTYPES:
            raise ValueError(f"KV cache: dtype must be one of {', '.join(KV_DTYPES)}, got {dtype!r}")
        row = (batch, n_head, head_size)
        self.k = _C.GrowableTensor(row, dtype=dtype, capacity=capacity)
        self.v = _C.GrowableTensor(row, dtype=dtype, capacity=capacity)
        self.dtype = dtype

    def __len__(self):
        return len(self.k)

    def update(self, k, v):
        """Append the new positions and return everything cached.
        k, v (B, n_head, T_new, head_size) float32 -> (k_all, v_all), each
        (B, n_head, T_total, head_size) with T_total = cached + T_new."""
        want = self.k.row_shape
        for name, t in (("k", k), ("v", v)):
            if t.ndim != 4 or (t.shape[0], t.shape[1], t.shape[3]) != want:
                raise ValueError(f"KV cache update: expected {name} of shape (B, n_head, T_new, head_size) "
                                 f"= ({want[0]}, {want[1]}, T_new, {want[2]}), got {tuple(t.shape)}")
        if k.shape != v.shape:
            raise ValueError(f"KV cache update: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
        k, v = _C.permute(k, (2, 0, 1, 3)), _C.permute(v, (2, 0, 1, 3))     # (T_new, B, nh, hs)
        if self.dtype != "float32":
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        self.k.append(k)
        self.v.append(v)
        k, v = _C.permute(self.k.tensor, (1, 2, 0, 3)), _C.permute(self.v.tensor, (1, 2, 0, 3))  # (B, nh, T, hs)
        return (k, v) if self.dtype == "float32" else (k.astype("float32"), v.astype("float32"))

    def truncate(self, n):
        self.k.truncate(n)
        self.v.truncate(n)


class KVCache:
    """Per-layer key/value caches of a model during generation (the model contract's protocol).

    `layers[i].update(k, v)` is called by attention layer i during a forward; the model calls
    `advance(T_new)` after it, which moves `pos` (the position of the next token fed)."""

    def __init__(self, n_layer, batch, n_head, head_size, capacity=16, dtype="float32"):
        self.layers = [LayerKVCache(batch, n_head, head_size, capacity, dtype) for _ in range(n_layer)]
        self.batch = batch
        self.dtype = dtype
        self.pos = 0

    @classmethod
    def for_model(cls, model, batch, capacity=None, dtype="float32"):
        """A cache for `model` (a LanguageModel whose kv_cache_shape() is (n_layer, n_kv_head,
        head_size)) and B = batch; capacity (positions reserved up front) defaults to the
        model's block_size; dtype as LayerKVCache's (a decode plan's kv_dtype)."""
        shape = model.kv_cache_shape()
        if shape is None:
            raise ValueError(f"{type(model).__name__} has no KV cache (kv_cache_shape() is None)")
        n_layer, n_kv_head, head_size = shape
        capacity = model.config.block_size if capacity is None else capacity
        return cls(n_layer, batch, n_kv_head, head_size, capacity, dtype)

    @classmethod
    def for_decoder(cls, model, decoder, batch, capacity=None):
        """for_model in the dtype `decoder` (model.decoder()'s, or None) wants its caches in:
        its kv_dtype, float32 where it has none (LanguageModel.decoder)."""
        return cls.for_model(model, batch, capacity, getattr(decoder, "kv_dtype", "float32"))

    def advance(self, n):
        """Record that n positions were added to every layer (called by the model)."""
        for i, layer in enumerate(self.layers):
            if len(layer) != self.pos + n:
                raise RuntimeError(f"KV cache: layer {i} holds {len(layer)} positions after a forward of "
                                   f"{n} tokens from position {self.pos}; expected {self.pos + n}")
        self.pos += n

    def reset(self):
        """Forget every position (keeps the memory)."""
        for layer in self.layers:
            layer.truncate(0)
        self.pos = 0




# ------------------------------------------------------------------------ decoding loop
def _as_idx(idx):
    """idx as a (B, T) int64 Tensor: a Tensor (int64/int32), or a list of equal-length lists."""
    if not isinstance(idx, _C.Tensor):
        try:
            idx = _C.tensor(idx, dtype="int64")
        except (TypeError, ValueError) as e:
            raise ValueError(f"generate: expected (B, T) token ids (a Tensor or equal-length lists), "
                             f"got {type(idx).__name__}: {e}") from None
    if idx.dtype not in ("int64", "int32"):
        raise TypeError(f"generate: expected int64 token ids, got {idx.dtype}")
    if idx.ndim == 1:
        idx = _C.reshape(idx, (1, idx.shape[0]))
    if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"generate: expected (B, T) token ids with B, T >= 1, got shape {tuple(idx.shape)}")
    return idx.astype("int64") if idx.dtype != "int64" else idx


def _last_logits(logits):
    """(B, T, V) or (B, 1, V) -> the last position's (B, V), contiguous."""
    if logits.ndim == 3:
        logits = _C.getitem(logits, (slice(None), -1))
    return logits.contiguous()


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
             stop_tokens=(), generator=None, stream=None, fast=True, repetition_penalty=1.0, decoder=None,
             min_p=None, presence_penalty=0.0, frequency_penalty=0.0, no_repeat_ngram_size=0, logit_bias=None,
             stop_strings=None, decode=None, logprobs=None):
    """Continue each row of idx by up to max_new_tokens tokens.

    model: a language model (forward(idx) -> (logits, loss)); idx (B, T) int64 Tensor (or
    equal-length lists). Returns (B, T + n) int64: the prompts followed by the new tokens.
    stop_tokens: an id or ids (several eos ids) that end a row; the stop token is kept, later
    positions of that row repeat it, and the loop ends early (n < max_new_tokens) once every
    row has stopped.
    stop_strings, decode: strings that end a row once they appear in decode(its new ids)
    (decode: list of ids -> str, e.g. tokenizer.decode), also across token boundaries; the
    token completing the stop string is kept and later positions repeat it, as for stop_tokens.
    The text to show is the first StopStrings(stop_strings).find(decode(new ids))[0]
    characters (the stop string excluded); for streaming text use StopStrings directly.
    stream: called after every step with a list of the B new ids (for printing as you go).
    fast: decode one token at a time with the model's decode step (model.decoder()) when it
    has one (False: through model.forward with the KV cache; same logits to float32 rounding).
    decoder: a decode plan to use instead of building one (e.g. model.decoder(weights="int8"),
    built once for many calls).
    repetition_penalty: != 1 penalises every id already in the row (prompt and new tokens).
    min_p, presence_penalty, frequency_penalty, no_repeat_ngram_size, logit_bias: see
    minillm/sampling.py (defaults: off); bad values raise ValueError naming the option.
    logprobs: None (default) returns the ids alone. An int n >= 0 returns (ids, steps) where
    steps[b] lists, for each token generated in row b (up to its stop), the pair
    (logprob of the chosen token, [(id, logprob) of the n most likely tokens]), under the
    model's own distribution (log_softmax of the raw logits, before every option above: the
    values OpenAI's logprobs report).
    Sampling options: minillm/sampling.py; context cropping: the module docstring. The model
    runs in eval mode under no_grad (its training flag is restored afterwards)."""
    check_sampling_args(temperature, top_k, top_p, repetition_penalty, min_p, presence_penalty,
                        frequency_penalty, no_repeat_ngram_size, logit_bias)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"generate: max_new_tokens must be an int in [0, {MAX_NEW_TOKENS}], got "
                         f"{max_new_tokens!r}")
    idx = _as_idx(idx)
    stops = _stop_ids(stop_tokens)
    vocab = getattr(model.config, "vocab_size", None)
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0
                                 or (vocab is not None and logprobs > vocab)):
        raise ValueError(f"generate: logprobs must be None or an int in [0, vocab_size = {vocab}], got {logprobs!r}")
    if logit_bias and vocab is not None and max(logit_bias) >= vocab:
        raise ValueError(f"logit_bias: token id {max(logit_bias)} is outside the vocabulary [0, {vocab})")
    if stop_strings is not None:
        if not callable(decode):
            raise ValueError(f"generate: stop_strings need decode (a function from ids to text), got {decode!r}")
    B, T = idx.shape
    block = model.config.block_size
    out = _C.empty((B, T + max_new_tokens), dtype="int64")
    out[:, :T] = idx
    n = T
    use_cache = model.kv_cache_shape() is not None
    if decoder is None:
        decoder = model.decoder() if use_cache and fast else None
    cache = KVCache.for_decoder(model, decoder, B, capacity=min(block, T + max_new_tokens)) if use_cache else None
    stopped = [None] * B           # the stop token of each finished row
    stopper = StopStrings(stop_strings) if stop_strings is not None else None
    steps = [[] for _ in range(B)] if logprobs is not None else None
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                if use_cache:
                    if cache.pos == 0 or cache.pos + 1 > block:
                        # prefill (or rebuild after outgrowing block_size) from the last block tokens:
                        # one prompt through the decode plan where that is faster (the Engine's rule)
                        cache.reset()
                        window = out[:, max(0, n - block):n]
                        by_rows = getattr(decoder, "prefills_by_rows", None)     # a Decoder's extend
                        if by_rows is not None and B == 1 and by_rows(window.shape[1]):
                            logits = decoder.extend([(window[0].tolist(), cache)])
                        else:
                            logits, _ = model(window.contiguous(), kv_cache=cache)
                    elif decoder is not None:
                        logits = decoder.step(nxt, cache)          # nxt: the (B,) ids just chosen
                    else:
                        logits, _ = model(out[:, n - 1:n].contiguous(), kv_cache=cache)
                else:
                    logits, _ = model(out[:, max(0, n - block):n].contiguous())
                raw = logits = _last_logits(logits)
                logits = apply_penalties(logits, out[:, :n], T, logit_bias, repetition_penalty, presence_penalty,
                                         frequency_penalty, no_repeat_ngram_size)
                nxt = sample_checked(logits, temperature, top_k, top_p, greedy, generator, min_p)
                ids = nxt.tolist()
                if steps is not None:
                    for b, step in enumerate(token_logprobs(raw, ids, logprobs)):
                        if stopped[b] is None:
                            steps[b].append(step)
                if stops or stopper is not None:
                    for b in range(B):
                        if stopped[b] is not None:
                            ids[b] = stopped[b]
                        elif ids[b] in stops:
                            stopped[b] = ids[b]
                    nxt = _C.tensor(ids, dtype="int64")
                out[:, n] = nxt
                n += 1
                if stopper is not None:
                    for b in range(B):       # find() rereads the whole new text: no state to go stale
                        if stopped[b] is None and stopper.find(decode(out[b, T:n].tolist()))[1]:
                            stopped[b] = ids[b]
                if stream is not None:
                    stream(ids)
                if (stops or stopper is not None) and all(s is not None for s in stopped):
                    break
    finally:
        model.train(was_training)
    out = out[:, :n].contiguous()
    return out if steps is None else (out, steps)


def _stop_ids(stop_tokens):
    """stop_tokens (None, an id, or ids) as a frozenset of ints >= 0; ValueError otherwise."""
    if stop_tokens is None:
        return frozenset()
    many = [stop_tokens] if isinstance(stop_tokens, numbers.Integral) else stop_tokens
    try:
        ids = list(many)
    except TypeError:
        raise ValueError(f"generate: stop_tokens must be an id or a list of ids, got {stop_tokens!r}") from None
    for s in ids:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"generate: stop_tokens must be ids (ints >= 0), got {s!r} in {stop_tokens!r}")
    return frozenset(int(s) for s in ids)




def sample_text(model, tokenizer, prompt="\n", max_new_tokens=200, temperature=0.8, top_k=200, seed=0):
    """Text sampled from `model` after `prompt` (str): the prompt and max_new_tokens sampled
    tokens, decoded by `tokenizer`; draws from Generator(seed). An empty prompt starts from
    the tokenizer's <|endoftext|> (or id 0)."""
    ids = tokenizer.encode(prompt) or [getattr(tokenizer, "eot_token", None) or 0]
    out = generate(model, [ids], max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=Generator(seed))
    return tokenizer.decode(out.tolist()[0])
