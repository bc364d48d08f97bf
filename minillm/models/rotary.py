"""Rotary position embeddings (RoPE; Su et al., 2021, "RoFormer"): the inverse frequency of each
pair of head dimensions, with the `rope_scaling` variants of HuggingFace's config.json, and the
cos/sin table the kernels read.

    inv_freq = rope_inv_freq(64, theta=500000.0, scaling={"rope_type": "llama3", "factor": 32.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192})
    cos, sin = rope_table(inv_freq, 2048)           # (2048, 32) float32 each

Dims i and i + head_dim/2 of a head form a pair, rotated at position p by p * inv_freq[i]
("rotate half", HF's layout). A scaled rope is only another inv_freq: the kernels are the same.
"""
import math

from minillm import _C

__all__ = ["ROPE_TYPES", "rope_inv_freq", "rope_table"]

ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(head_dim, theta=10000.0, scaling=None):
    """The (head_dim / 2,) float32 inverse frequencies theta^(-2i / head_dim), changed by
    `scaling` (HF's rope_scaling dict, or None): "linear" divides them by scaling["factor"]
    (positions stretched by that factor); "llama3" divides the low frequencies (wavelength above
    original_max_position_embeddings / low_freq_factor) by factor, keeps the high ones
    (wavelength below original_max_position_embeddings / high_freq_factor) and blends between
    (Llama 3.1). Other types raise ValueError naming them."""
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope_inv_freq: head_dim must be an even int >= 2, got {head_dim!r}")
    if not theta > 0:
        raise ValueError(f"rope_inv_freq: theta must be > 0, got {theta!r}")
    freqs = [1.0 / theta ** (i / head_dim) for i in range(0, head_dim, 2)]
    kind = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        factor = float(scaling["factor"])
        freqs = [f / factor for f in freqs]
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        freqs = [_llama3_freq(f, factor, low, high, old_len) for f in freqs]
    elif kind != "default":
        raise ValueError(f"rope_inv_freq: rope_scaling type {kind!r} is not supported (supported: "
                         f"{list(ROPE_TYPES)})")
    return _C.tensor(freqs, dtype="float32")


def _llama3_freq(f, factor, low_freq_factor, high_freq_factor, old_len):
    """One inverse frequency under Llama 3.1's rope scaling."""
    wavelen = 2 * math.pi / f
    if wavelen < old_len / high_freq_factor:          # high frequency: kept
        return f
    if wavelen > old_len / low_freq_factor:           # low frequency: scaled
        return f / factor
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    return (1 - smooth) * f / factor + smooth * f


def rope_table(inv_freq, n_pos, scale=1.0):
    """(cos, sin), each (n_pos, len(inv_freq)) float32: scale * cos(p f), scale * sin(p f) for
    positions p < n_pos (angles computed in double)."""
    return _C.rope_table(inv_freq, n_pos, scale)


class RotaryTable:
    """The rotary table of one inv_freq, grown as positions are asked for (by doubling, at
    least min_rows at a time); its rows never change, so earlier slices stay valid."""

    def __init__(self, inv_freq, min_rows=64):
        self.inv_freq, self.min_rows = inv_freq, min_rows
        self.cos = self.sin = None

    def upto(self, n):
        """(cos, sin), each (>= n, half): the whole table with a row for every position < n."""
        have = 0 if self.cos is None else self.cos.shape[0]
        if have < n:
            self.cos, self.sin = rope_table(self.inv_freq, max(n, 2 * have, self.min_rows))
        return self.cos, self.sin

    def rows(self, pos0, T):
        """(cos, sin) rows of positions pos0 .. pos0 + T - 1, each (T, half)."""
        cos, sin = self.upto(pos0 + T)
        return cos[pos0:pos0 + T], sin[pos0:pos0 + T]
