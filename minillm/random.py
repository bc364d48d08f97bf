"""Seedable random numbers: a Generator over csrc/rng.c's counter-based Philox4x32-10.

A Generator is just (seed, offset): the seed picks the stream, the offset says how many
32-bit words of it were used so far. Every fill draws from words offset, offset + 1, ...
(see csrc/minillm.h for how many words each element takes) and then moves the offset past
them, rounded up to a multiple of 4 so the next draw starts a fresh Philox block. Because
each element depends only on (seed, its word position), draws are the same for any
thread count, and a checkpoint needs only the two integers of `get_state()`.

The fill methods write into any writable, buffer-protocol object of the right element type
(a minillm Tensor, or a NumPy array, viewed without a copy): float32 for uniform_/normal_,
int64 for randint_; the kernels (minillm._C.rand_*) fill it directly. The Tensor factories
minillm.rand, randn and randint are here too.
"""
import operator

import numpy as np

from . import _C

__all__ = ["Generator", "manual_seed", "default_generator", "initial_seed", "rand", "randn", "randint"]

_U64 = 1 << 64
# Seed of the default generator at import: fixed, so programs that never seed are still
# reproducible run to run.
DEFAULT_SEED = 0x5EED_0F_3111_11


def _as_seed(seed):
    """Python int in [-2^63, 2^64) -> its value mod 2^64 (as PyTorch maps negative seeds)."""
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got bool {seed!r}")
    try:
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}") from None
    if not -(1 << 63) <= s < _U64:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {s}")
    return s % _U64


def _round4(words):
    return (words + 3) & ~3


_F32_MAX = float(np.finfo(np.float32).max)


def _check_finite(name, value):
    v = float(value)
    if not abs(v) <= _F32_MAX:  # also catches NaN
        raise ValueError(f"{name} must be a finite float32 value, got {value!r}")
    return v


class Generator:
    """A Philox4x32-10 stream: `Generator(seed)`; state is (seed, offset), two ints.

    Same seed and same sequence of calls give bitwise the same numbers on any thread count.
    """

    __slots__ = ("_seed", "_offset")

    def __init__(self, seed=DEFAULT_SEED):
        self._seed = _as_seed(seed)
        self._offset = 0

    def __repr__(self):
        return f"Generator(seed={self._seed}, offset={self._offset})"

    def manual_seed(self, seed):
        """Restart the stream of `seed` (int in [-2**63, 2**64)) from offset 0; returns self."""
        self._seed = _as_seed(seed)
        self._offset = 0
        return self

    def initial_seed(self):
        """The seed (an int in [0, 2**64)) this generator was last seeded with."""
        return self._seed

    @property
    def seed(self):
        return self._seed

    @property
    def offset(self):
        """32-bit words of the stream used so far (a multiple of 4)."""
        return self._offset

    def get_state(self):
        """{'seed': int, 'offset': int}: plain ints, for checkpoints (JSON-safe)."""
        return {"seed": self._seed, "offset": self._offset}

    def set_state(self, state):
        """Restore a state from get_state(); ValueError naming the field if it is malformed."""
        if not isinstance(state, dict) or set(state) != {"seed", "offset"}:
            raise ValueError(f"generator state must be a dict with keys 'seed' and 'offset', got {state!r}")
        seed, offset = state["seed"], state["offset"]
        for name, v in (("seed", seed), ("offset", offset)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < _U64:
                raise ValueError(f"generator state {name} must be an int in [0, 2**64), got {v!r}")
        self._seed, self._offset = int(seed), int(offset)

    def claim(self, words):
        """Reserve `words` words of the stream: returns (seed, offset) of the first and moves
        the offset past them (rounded up to 4). For callers that run the C kernels
        themselves (the Tensor factories)."""
        words = operator.index(words)
        if words < 0:
            raise ValueError(f"cannot claim a negative number of words ({words})")
        start = self._offset
        self._offset = (start + _round4(words)) % _U64
        return self._seed, start

    def uniform_(self, buf, lo=0.0, hi=1.0):
        """Fill `buf` (float32, any shape) with uniform numbers in [lo, hi); returns buf.
        Uses n words, n = number of elements."""
        lo, hi = _check_finite("lo", lo), _check_finite("hi", hi)
        if lo > hi:
            raise ValueError(f"uniform_ needs lo <= hi, got lo={lo}, hi={hi}")
        if not float(np.float32(hi)) - float(np.float32(lo)) <= _F32_MAX:
            raise ValueError(f"uniform_: hi - lo overflows float32 (lo={lo}, hi={hi})")
        t = _C.as_rng_target(buf, "float32", "uniform_")
        n = t.numel()
        if n:
            seed, off = self.claim(n)
            _C.rand_uniform_(t, seed, off, lo, hi)
        return buf

    def normal_(self, buf, mean=0.0, std=1.0):
        """Fill `buf` (float32, any shape) with normal(mean, std) numbers (Box-Muller);
        returns buf. Uses n words rounded up to even."""
        mean, std = _check_finite("mean", mean), _check_finite("std", std)
        if std < 0:
            raise ValueError(f"normal_ needs std >= 0, got {std}")
        t = _C.as_rng_target(buf, "float32", "normal_")
        n = t.numel()
        if n:
            seed, off = self.claim(n + (n & 1))
            _C.rand_normal_(t, seed, off, mean, std)
        return buf

    def trunc_normal_(self, buf, mean=0.0, std=1.0, a=-2.0, b=2.0):
        """Fill `buf` (float32, any shape) with normal(mean, std) truncated to [a, b] (absolute
        bounds, as in PyTorch) by inverting the normal CDF; returns buf. Uses 2n words."""
        mean, std = _check_finite("mean", mean), _check_finite("std", std)
        a, b = _check_finite("a", a), _check_finite("b", b)
        if std < 0:
            raise ValueError(f"trunc_normal_ needs std >= 0, got {std}")
        if not a < b:
            raise ValueError(f"trunc_normal_ needs a < b, got a={a}, b={b}")
        t = _C.as_rng_target(buf, "float32", "trunc_normal_")
        n = t.numel()
        if n:
            seed, off = self.claim(2 * n)
            _C.rand_trunc_normal_(t, seed, off, mean, std, a, b)
        return buf

    def randint_(self, buf, lo, hi):
        """Fill `buf` (int64, any shape) with integers uniform in [lo, hi); returns buf.
        Uses 2n words (one 64-bit draw per element, Lemire's multiply-shift)."""
        lo, hi = operator.index(lo), operator.index(hi)
        if not lo < hi:
            raise ValueError(f"randint_ needs lo < hi, got lo={lo}, hi={hi}")
        if lo < -(1 << 63) or hi > (1 << 63) - 1:
            raise ValueError(f"randint_ bounds must fit in int64, got lo={lo}, hi={hi}")
        t = _C.as_rng_target(buf, "int64", "randint_")
        n = t.numel()
        if n:
            seed, off = self.claim(2 * n)
            _C.rand_int_(t, seed, off, lo, hi)
        return buf

    def permutation(self, n):
        """A random permutation of 0 .. n-1: int64 array of shape (n,) (Fisher-Yates in C).
        Uses 2n words."""
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"permutation needs n >= 0, got {n}")
        seed, off = self.claim(2 * n) if n else (self._seed, self._offset)
        return _C.rand_permutation(n, seed, off).numpy()


_default = Generator(DEFAULT_SEED)


def default_generator():
    """The module-level Generator that draws without an explicit generator use."""
    return _default


def manual_seed(seed):
    """Reseed the default generator (offset back to 0); returns it."""
    return _default.manual_seed(seed)


def initial_seed():
    """The seed the default generator was last seeded with."""
    return _default.initial_seed()


def _drawn(shape, fill, generator, requires_grad):
    """A new float32 tensor of `shape` (ints or one sequence) filled by fill(generator, t)."""
    t = _C.empty(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    fill(_default if generator is None else generator, t)
    t.requires_grad = requires_grad
    return t


def rand(*shape, generator=None, requires_grad=False):
    """A float32 tensor of `shape`, uniform in [0, 1), from `generator` (default: the default
    generator)."""
    return _drawn(shape, Generator.uniform_, generator, requires_grad)


def randn(*shape, generator=None, requires_grad=False):
    """A float32 tensor of `shape`, standard normal, from `generator` (default: the default
    generator)."""
    return _drawn(shape, Generator.normal_, generator, requires_grad)


def randint(low, high=None, size=(), generator=None, dtype="int64"):
    """A tensor of `size` (int64 unless `dtype` says otherwise) of integers uniform in [low, high)
    (or [0, low) when high is None)."""
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint needs low < high, got [{low}, {high})")
    t = _C.empty(size, dtype="int64")
    (_default if generator is None else generator).randint_(t, low, high)
    return t if dtype == "int64" else t.astype(dtype)
