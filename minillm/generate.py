"""Text generation: a KV cache, next-token sampling and the decoding loop.

    out = generate(model, idx, 100, temperature=0.8, top_k=50, generator=Generator(1))

`generate` runs the prompt through the model once (prefill), then feeds one token per step.
Models with `supports_kv_cache` (the GPT) keep every layer's keys and values in a `KVCache`,
so a step costs one token's forward; other models (bigram, mlp) recompute on their context.

Sampling options, applied in this order to the last position's logits (B, V):
  temperature  logits / temperature. 0 means greedy (the limit T -> 0: always the most
               likely token); negative or non-finite values raise ValueError.
  top_k        keep the k most likely tokens (ties go to the smaller id). None: no limit;
               k >= V: no limit; k < 1 (0 included) raises ValueError.
  top_p        nucleus: keep the fewest tokens, most likely first, whose probability adds
               up to at least p. None or 1: no limit; p outside (0, 1] raises ValueError.
  greedy       argmax, ignoring the three above (the first maximum on ties).
Draws come from `generator` (a minillm.Generator; default: minillm's default generator), so a
seeded generator gives the same tokens run after run, on any thread count.

Context longer than block_size: the model sees only the last block_size tokens, as nanoGPT
crops `idx[:, -block_size:]`. With a KV cache, positions are absolute (learned position
embeddings), so once the sequence outgrows block_size the cache is rebuilt from the last
block_size tokens at every step: the logits stay exactly those of the cropped recomputation,
at the cost of a block_size-token forward per step from then on.
"""
import math

from minillm import _C
from minillm.autograd import no_grad
from minillm.random import default_generator

__all__ = ["KVCache", "LayerKVCache", "generate", "sample_next", "apply_temperature",
           "top_k_filter", "top_p_filter", "draw", "check_sampling_args"]


# ------------------------------------------------------------------------ KV cache
class LayerKVCache:
    """Keys and values of one attention layer for a batch of B sequences.

    Stored position-major in two GrowableTensors with rows (B, n_head, head_size), so that a
    step appends T_new rows (amortised O(1), no copy of what is cached); `update` returns
    (B, n_head, T_total, head_size) views of them (last axis contiguous: the GEMM reads them
    in place)."""

    def __init__(self, batch, n_head, head_size, capacity=16):
        row = (batch, n_head, head_size)
        self.k = _C.GrowableTensor(row, capacity=capacity)
        self.v = _C.GrowableTensor(row, capacity=capacity)

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
        self.k.append(_C.permute(k, (2, 0, 1, 3)))         # (T_new, B, nh, hs)
        self.v.append(_C.permute(v, (2, 0, 1, 3)))
        return (_C.permute(self.k.tensor, (1, 2, 0, 3)),   # (B, nh, T_total, hs)
                _C.permute(self.v.tensor, (1, 2, 0, 3)))

    def truncate(self, n):
        self.k.truncate(n)
        self.v.truncate(n)


class KVCache:
    """Per-layer key/value caches of a model during generation (the model contract's protocol).

    `layers[i].update(k, v)` is called by attention layer i during a forward; the model calls
    `advance(T_new)` after it, which moves `pos` (the position of the next token fed)."""

    def __init__(self, n_layer, batch, n_head, head_size, capacity=16):
        self.layers = [LayerKVCache(batch, n_head, head_size, capacity) for _ in range(n_layer)]
        self.batch = batch
        self.pos = 0

    @classmethod
    def for_model(cls, model, batch, capacity=None):
        """A cache sized for `model` (a GPT: config n_layer, n_head, n_embd) and B = batch;
        capacity (positions reserved up front) defaults to the model's block_size."""
        cfg = model.config
        capacity = cfg.block_size if capacity is None else capacity
        return cls(cfg.n_layer, batch, cfg.n_head, cfg.n_embd // cfg.n_head, capacity)

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


# ------------------------------------------------------------------------ sampling
def check_sampling_args(temperature=1.0, top_k=None, top_p=None):
    """ValueError unless temperature >= 0 (finite), top_k None or an int >= 1, top_p None or
    in (0, 1]. See the module docstring for their meaning."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None (no limit) or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None (no limit) or in (0, 1], got {top_p!r}")


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
             stop_tokens=(), generator=None, stream=None, fast=True):
    """Continue each row of idx by up to max_new_tokens tokens.

    model: a language model (forward(idx) -> (logits, loss)); idx (B, T) int64 Tensor (or
    equal-length lists). Returns (B, T + n) int64: the prompts followed by the new tokens.
    stop_tokens: ids that end a row; the stop token is kept, later positions of that row repeat
    it, and the loop ends early (n < max_new_tokens) once every row has stopped.
    stream: called after every step with a list of the B new ids (for printing as you go).
    fast: decode one token at a time with the model's decode plan (model.decoder(), e.g. the
    GPT's), when it has one (False: through model.forward with the KV cache; same logits to
    float32 rounding).
    Sampling options and context cropping: see the module docstring. The model runs in eval
    mode under no_grad (its training flag is restored afterwards)."""
    check_sampling_args(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    idx = _as_idx(idx)
    stops = frozenset(int(s) for s in stop_tokens)
    B, T = idx.shape
    block = model.config.block_size
    out = _C.empty((B, T + max_new_tokens), dtype="int64")
    out[:, :T] = idx
    n = T
    use_cache = bool(getattr(model, "supports_kv_cache", False))
    cache = KVCache.for_model(model, B, capacity=min(block, T + max_new_tokens)) if use_cache else None
    decoder = model.decoder() if use_cache and fast else None
    stopped = [None] * B           # the stop token of each finished row
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                if use_cache:
                    if cache.pos == 0 or cache.pos + 1 > block:
                        # prefill (or rebuild after outgrowing block_size) from the last block tokens
                        cache.reset()
                        logits, _ = model(out[:, max(0, n - block):n].contiguous(), kv_cache=cache)
                    elif decoder is not None:
                        logits = decoder.step(nxt, cache)          # nxt: the (B,) ids just chosen
                    else:
                        logits, _ = model(out[:, n - 1:n].contiguous(), kv_cache=cache)
                else:
                    logits, _ = model(out[:, max(0, n - block):n].contiguous())
                nxt = sample_next(_last_logits(logits), temperature, top_k, top_p, greedy, generator)
                ids = nxt.tolist()
                if stops:
                    for b in range(B):
                        if stopped[b] is not None:
                            ids[b] = stopped[b]
                        elif ids[b] in stops:
                            stopped[b] = ids[b]
                    nxt = _C.tensor(ids, dtype="int64")
                out[:, n] = nxt
                n += 1
                if stream is not None:
                    stream(ids)
                if stops and all(s is not None for s in stopped):
                    break
    finally:
        model.train(was_training)
    return out[:, :n].contiguous()
