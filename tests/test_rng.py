"""The Philox RNG (csrc/rng.c), minillm.random.Generator and minillm.nn.init.

Statistical tolerances are 5 standard errors of the statistic (or chi-square p < 1e-6), so a
correct generator fails them with odds below one in a million per check; the seeds are fixed,
so the suite is deterministic anyway.
"""
import json
import math

import numpy as np
import pytest

from minillm import _C
from minillm import _testing
from minillm import random as mrandom
from minillm.nn import init
from minillm.random import Generator

# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors):
# counter (4 words), key (2 words) -> output (4 words).
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]

N_BIG = 1_000_000


def bits(seed, offset, n):
    out = np.empty(n, dtype=np.uint32)
    _testing.k_rand_bits(seed, offset, out)
    return out


def chi2_upper(df, z=4.75):
    """Upper bound of chi-square(df) at about p = 1e-6 (Wilson-Hilferty approximation)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    before = _C.get_num_threads()
    yield
    _C.set_num_threads(before)


# ----------------------------------------------------------------- Philox itself

@pytest.mark.parametrize("ctr,key,expected", PHILOX_KAT)
def test_philox_block_matches_random123_known_answers(ctr, key, expected):
    assert _testing.k_philox4x32_10(ctr, key) == expected


def test_stream_word_c_is_lane_c_mod_4_of_block_c_div_4():
    seed = 0x299F31D0A4093822
    key = (seed & 0xFFFFFFFF, seed >> 32)
    assert tuple(bits(0, 0, 4)) == PHILOX_KAT[0][2]
    for block in (0, 1, 7, 12345, (1 << 32) + 5, (1 << 61) + 3):
        expected = _testing.k_philox4x32_10((block & 0xFFFFFFFF, block >> 32, 0, 0), key)
        assert tuple(bits(seed, 4 * block, 4)) == expected


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5, 1021, 4099])
def test_element_depends_only_on_seed_and_offset_plus_index(offset):
    n = 3000  # spans several 1024-element chunks
    ref_bits = bits(7, 0, offset + 2 * n + 8)
    np.testing.assert_array_equal(bits(7, offset, n), ref_bits[offset:offset + n])

    ref_u = np.empty(offset + n, np.float32)
    _testing.k_rand_uniform(7, 0, ref_u, 0.0, 1.0)
    u = np.empty(n, np.float32)
    _testing.k_rand_uniform(7, offset, u, 0.0, 1.0)
    np.testing.assert_array_equal(u, ref_u[offset:])

    ref_i = np.empty(offset + n, np.int64)
    _testing.k_rand_int(7, 0, ref_i, -5, 1000)
    r = np.empty(n, np.int64)
    _testing.k_rand_int(7, 2 * offset, r, -5, 1000)
    np.testing.assert_array_equal(r, ref_i[offset:])

    ref_z = np.empty(offset + n, np.float32)
    _testing.k_rand_normal(7, 0, ref_z, 0.0, 1.0)
    z = np.empty(n, np.float32)
    even = offset & ~1  # Box-Muller pairs start at even words
    _testing.k_rand_normal(7, even, z, 0.0, 1.0)
    np.testing.assert_array_equal(z, ref_z[even:even + n])


def test_uniform_uses_the_top_24_bits_of_each_word():
    w = bits(3, 0, 1000)
    u = np.empty(1000, np.float32)
    _testing.k_rand_uniform(3, 0, u, 0.0, 1.0)
    np.testing.assert_array_equal(u, (w >> 8).astype(np.float64) / 2 ** 24)


def test_normal_is_box_muller_of_word_pairs():
    # float64 reference of the documented transform: u1 = (w0 + 1) / 2^32 as the kernel rounds
    # it to float32 (float32(w0) / 2^32 + 2^-32, emulated in NumPy float32), u2 = (w1 >> 8) / 2^24
    # over a million draws, so every quadrant of the angle and the tails of r are exercised
    n = N_BIG
    w = bits(11, 0, n)
    w0, w1 = w[0::2], w[1::2]
    u1 = (w0.astype(np.float32) * np.float32(2 ** -32) + np.float32(2 ** -32)).astype(np.float64)
    u2 = (w1 >> 8).astype(np.float64) / 2 ** 24
    r = np.sqrt(-2 * np.log(u1))
    expected = np.empty(n)
    expected[0::2], expected[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    z = np.empty(n, np.float32)
    _testing.k_rand_normal(11, 0, z, 0.0, 1.0)
    # float32 arithmetic with its own log and sin/cos polynomials: a few ulp of |z| <= 6.7
    # (measured on this transform: max error 5.3e-7)
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)


def test_randint_is_multiply_shift_of_64_bit_words():
    w = bits(5, 0, 2000).astype(object)
    x = [(int(w[2 * i]) << 32) | int(w[2 * i + 1]) for i in range(1000)]
    lo, hi = -17, 50257
    expected = [lo + ((xi * (hi - lo)) >> 64) for xi in x]
    r = np.empty(1000, np.int64)
    _testing.k_rand_int(5, 0, r, lo, hi)
    assert r.tolist() == expected


def test_uniform_never_returns_hi_even_when_rounding_would():
    # lo + (hi - lo) * u rounds to hi for u = 1 - 2^-24 with [1, 2): find a word whose top
    # 24 bits are all ones (probability 2^-24 each) and draw exactly that element.
    seed, start, hit = 99, 0, None
    while hit is None:
        w = bits(seed, start, 1 << 22)
        idx = np.flatnonzero(w >= 0xFFFFFF00)
        if idx.size:
            hit = start + int(idx[0])
        start += 1 << 22
    u = np.empty(1, np.float32)
    _testing.k_rand_uniform(seed, hit, u, 1.0, 2.0)
    assert np.float32(1.0) <= u[0] < np.float32(2.0)
    assert u[0] == np.nextafter(np.float32(2.0), np.float32(0.0))


# ----------------------------------------------------------------- Generator

def test_same_seed_gives_same_sequence_of_draws():
    def draws(seed):
        g = Generator(seed)
        a, b = np.empty(1001, np.float32), np.empty(77, np.float32)
        c = np.empty(10, np.int64)
        g.normal_(a)
        g.uniform_(b, -2.0, 3.0)
        g.randint_(c, 0, 100)
        return a, b, c, g.permutation(50)

    for x, y in zip(draws(1234), draws(1234)):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_and_successive_draws_differ():
    a, b, c = (np.empty(1000, np.float32) for _ in range(3))
    Generator(1).uniform_(a)
    Generator(2).uniform_(b)
    g = Generator(1)
    g.uniform_(c)
    assert np.array_equal(a, c)
    assert not np.array_equal(a, b)
    g.uniform_(c)
    assert not np.array_equal(a, c)
    # the two halves of the 64-bit seed both matter
    Generator(1 + (1 << 32)).uniform_(b)
    assert not np.array_equal(a, b)


def test_offset_advances_by_words_used_rounded_to_4():
    g = Generator(0)
    g.uniform_(np.empty(5, np.float32))
    assert g.offset == 8
    g.normal_(np.empty(3, np.float32))   # 4 words
    assert g.offset == 12
    g.randint_(np.empty(3, np.int64), 0, 9)  # 6 words -> 8
    assert g.offset == 20
    g.permutation(1)                      # 2 words -> 4
    assert g.offset == 24
    g.uniform_(np.empty(0, np.float32))
    assert g.offset == 24


def test_consecutive_draws_continue_the_stream_at_block_boundaries():
    g = Generator(42)
    a, b = np.empty(5, np.float32), np.empty(6, np.float32)
    g.uniform_(a)
    g.uniform_(b)
    ref = np.empty(14, np.float32)
    _testing.k_rand_uniform(42, 0, ref, 0.0, 1.0)
    np.testing.assert_array_equal(a, ref[:5])
    np.testing.assert_array_equal(b, ref[8:14])


def test_state_round_trips_through_json_and_replays_the_draws():
    g = Generator(2024)
    g.normal_(np.empty(13, np.float32))
    state = json.loads(json.dumps(g.get_state()))
    first = g.normal_(np.empty(100, np.float32))
    h = Generator(0)
    h.set_state(state)
    np.testing.assert_array_equal(h.normal_(np.empty(100, np.float32)), first)
    assert h.get_state() == g.get_state()


@pytest.mark.parametrize("state", [
    None, {}, {"seed": 1}, {"seed": 1, "offset": -4}, {"seed": 1.5, "offset": 0},
    {"seed": 1 << 64, "offset": 0}, {"seed": 1, "offset": 0, "extra": 3}, {"seed": True, "offset": 0},
])
def test_set_state_rejects_malformed_states(state):
    with pytest.raises(ValueError):
        Generator(0).set_state(state)


def test_seeds_map_mod_2_64_and_bad_seeds_raise():
    assert Generator(-1).initial_seed() == (1 << 64) - 1
    assert Generator(np.int64(7)).initial_seed() == 7
    with pytest.raises(ValueError):
        Generator(1 << 64)
    with pytest.raises(TypeError):
        Generator(1.5)
    with pytest.raises(TypeError):
        Generator("3")


def test_module_manual_seed_resets_the_default_generator():
    mrandom.manual_seed(5)
    a = mrandom.default_generator().normal_(np.empty(10, np.float32))
    mrandom.manual_seed(5)
    b = mrandom.default_generator().normal_(np.empty(10, np.float32))
    np.testing.assert_array_equal(a, b)
    assert mrandom.initial_seed() == 5
    assert mrandom.manual_seed(6) is mrandom.default_generator()


def test_fills_any_shape_strided_buffers_and_memoryviews_alike():
    ref = Generator(9).uniform_(np.empty(12, np.float32))
    # C-contiguous 2-D array
    a = Generator(9).uniform_(np.empty((3, 4), np.float32))
    np.testing.assert_array_equal(a.ravel(), ref)
    # a plain memoryview of an array
    b = np.empty((4, 3), np.float32)
    Generator(9).uniform_(memoryview(b))
    np.testing.assert_array_equal(b.ravel(), ref)
    # a strided view: filled in row-major element order, neighbours untouched
    base = np.full((3, 8), -1.0, np.float32)
    Generator(9).uniform_(base[:, ::2])
    np.testing.assert_array_equal(base[:, ::2].ravel(), ref)
    assert np.all(base[:, 1::2] == -1.0)
    # 0-d
    z = np.zeros((), np.float32)
    Generator(9).uniform_(z)
    assert z == ref[0]


def test_fill_methods_reject_wrong_dtypes_and_readonly_buffers():
    g = Generator(0)
    with pytest.raises(TypeError, match="float32"):
        g.normal_(np.empty(4, np.float64))
    with pytest.raises(TypeError, match="int64"):
        g.randint_(np.empty(4, np.int32), 0, 3)
    with pytest.raises(TypeError):
        g.uniform_([1.0, 2.0])
    ro = np.empty(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        g.uniform_(ro)
    with pytest.raises(ValueError):
        g.uniform_(np.empty(4, np.float32), 1.0, 0.0)
    with pytest.raises(ValueError):
        g.uniform_(np.empty(4, np.float32), 0.0, float("inf"))
    with pytest.raises(ValueError):
        g.normal_(np.empty(4, np.float32), 0.0, -1.0)
    with pytest.raises(ValueError):
        g.normal_(np.empty(4, np.float32), float("nan"), 1.0)
    with pytest.raises(ValueError):
        g.randint_(np.empty(4, np.int64), 3, 3)
    with pytest.raises(ValueError):
        g.randint_(np.empty(4, np.int64), 0, 1 << 63)
    with pytest.raises(ValueError):
        g.permutation(-1)
    assert g.offset == 0  # nothing was drawn


# ----------------------------------------------------------------- distributions

def test_normal_moments_of_a_million_draws():
    z = Generator(123).normal_(np.empty(N_BIG, np.float32), 0.0, 1.0).astype(np.float64)
    se = 1 / math.sqrt(N_BIG)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2) * se          # var of s^2 is 2/N
    assert abs(np.mean(z ** 3)) < 5 * math.sqrt(15) * se        # var of m3 is 15/N
    assert abs(np.mean(z ** 4) - 3.0) < 5 * math.sqrt(96) * se  # var of m4 is 96/N
    assert np.all(np.isfinite(z)) and np.abs(z).max() < 6.7


def test_normal_histogram_matches_the_gaussian_cdf():
    z = Generator(321).normal_(np.empty(N_BIG, np.float32)).astype(np.float64)
    edges = np.concatenate([[-np.inf], np.linspace(-4, 4, 41), [np.inf]])
    counts, _ = np.histogram(z, bins=edges)
    cdf = np.array([0.5 * (1 + math.erf(e / math.sqrt(2))) if np.isfinite(e) else float(e > 0)
                    for e in edges])
    expected = N_BIG * np.diff(cdf)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < chi2_upper(len(counts) - 1)


def test_normal_mean_and_std_are_applied():
    z = Generator(8).normal_(np.empty(N_BIG, np.float32), 3.0, 0.02).astype(np.float64)
    assert abs(z.mean() - 3.0) < 5 * 0.02 / math.sqrt(N_BIG)
    assert abs(z.std() / 0.02 - 1.0) < 0.01


def test_uniform_moments_range_and_histogram():
    lo, hi = -2.0, 3.0
    u = Generator(77).uniform_(np.empty(N_BIG, np.float32), lo, hi).astype(np.float64)
    assert u.min() >= lo and u.max() < hi
    width = hi - lo
    se = width / math.sqrt(12 * N_BIG)
    assert abs(u.mean() - (lo + hi) / 2) < 5 * se
    # var of s^2 for U(0, w): (1/80 - 1/144) w^4 / N
    assert abs(u.var() - width ** 2 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / N_BIG) * width ** 2
    counts, _ = np.histogram(u, bins=100, range=(lo, hi))
    expected = N_BIG / 100
    assert float(np.sum((counts - expected) ** 2 / expected)) < chi2_upper(99)


@pytest.mark.parametrize("lo,hi", [(0, 10), (-3, 4), (5, 6), (0, 50257)])
def test_randint_stays_in_range_and_is_uniform(lo, hi):
    r = Generator(2).randint_(np.empty(N_BIG, np.int64), lo, hi)
    assert r.min() >= lo and r.max() < hi
    k = hi - lo
    if k == 1:
        assert np.all(r == lo)
        return
    counts = np.bincount(r - lo, minlength=k)
    if k > 100:  # group into 100 equal-probability buckets of values
        counts = np.bincount((np.arange(k) * 100) // k, weights=counts, minlength=100)
        probs = np.bincount((np.arange(k) * 100) // k, minlength=100) / k
    else:
        probs = np.full(k, 1 / k)
    expected = N_BIG * probs
    assert float(np.sum((counts - expected) ** 2 / expected)) < chi2_upper(len(counts) - 1)


def test_randint_full_int64_range_does_not_overflow():
    lo, hi = -(1 << 63), (1 << 63) - 1
    r = Generator(3).randint_(np.empty(10000, np.int64), lo, hi)
    assert r.min() < -(1 << 60) and r.max() > (1 << 60)  # both halves reached
    assert r.max() < hi


def test_permutation_is_a_permutation_and_uniform_over_all_orders():
    g = Generator(17)
    p = g.permutation(100_003)
    np.testing.assert_array_equal(np.sort(p), np.arange(100_003))
    assert g.permutation(0).shape == (0,) and g.permutation(1).tolist() == [0]
    # all 120 orders of 5 items, 24000 draws
    counts = {}
    for _ in range(24000):
        key = tuple(g.permutation(5))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 120
    chi2 = sum((c - 200) ** 2 / 200 for c in counts.values())
    assert chi2 < chi2_upper(119)


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))  # accurate in the lower tail


def truncated_moments(mean, std, a, b):
    """Mean and variance of N(mean, std^2) truncated to [a, b] (textbook formulas), computed on
    the mirrored interval when it lies in the upper half so that Z does not cancel."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    sign = 1.0
    if alpha + beta > 0:
        alpha, beta, sign = -beta, -alpha, -1.0
    z = _cdf(beta) - _cdf(alpha)
    d = (_phi(alpha) - _phi(beta)) / z
    var = 1 + (alpha * _phi(alpha) - beta * _phi(beta)) / z - d * d
    return mean + sign * std * d, std * std * var


@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (0.0, 1.0, 3.0, 4.0), (0.0, 1.0, -4.0, -3.0),
                                          (1.0, 2.0, -100.0, 0.5), (0.0, 0.02, -0.03, 0.05),
                                          (0.0, 1.0, 8.0, 9.0)])
def test_trunc_normal_stays_in_bounds_with_the_truncated_moments(mean, std, a, b):
    n = 200_000
    x = Generator(13).trunc_normal_(np.empty(n, np.float32), mean, std, a, b)
    assert x.min() >= np.float32(a) and x.max() <= np.float32(b)
    m, v = truncated_moments(mean, std, a, b)
    x = x.astype(np.float64)
    assert abs(x.mean() - m) < 5 * math.sqrt(v / n)
    assert abs(x.var() / v - 1) < 5 * math.sqrt(2 / n)


def test_trunc_normal_histogram_matches_the_truncated_cdf():
    a, b, n = -1.0, 2.0, N_BIG
    x = Generator(14).trunc_normal_(np.empty(n, np.float32), 0.0, 1.0, a, b).astype(np.float64)
    edges = np.linspace(a, b, 31)
    counts, _ = np.histogram(x, bins=edges)
    cdf = np.array([_cdf(e) for e in edges])
    expected = n * np.diff(cdf) / (cdf[-1] - cdf[0])
    assert float(np.sum((counts - expected) ** 2 / expected)) < chi2_upper(len(counts) - 1)


@pytest.mark.parametrize("a,b", [(-10.0, 10.0), (-40.0, -30.0), (5.0, 5.1)])
def test_trunc_normal_inverts_the_cdf_accurately(a, b):
    # rebuild each element's uniform from its two words and invert with the standard library
    import statistics

    inv = statistics.NormalDist().inv_cdf
    n = 5000
    w = bits(5, 0, 2 * n)
    x64 = (w[0::2].astype(np.uint64) << np.uint64(32)) | w[1::2].astype(np.uint64)
    u = (x64 >> np.uint64(11)).astype(np.float64) / 2 ** 53
    z = np.empty(n, np.float32)
    _testing.k_rand_trunc_normal(5, 0, z, 0.0, 1.0, a, b)
    mirror = a + b > 0
    lo, hi = (-b, -a) if mirror else (a, b)
    pa, pb = _cdf(lo), _cdf(hi)
    ref = np.array([inv(p) if p <= 0.5 else -inv(1 - p) for p in pa + u * (pb - pa)])
    ref = np.clip(-ref if mirror else ref, a, b)
    # measured: at most 1 ulp of float32
    np.testing.assert_allclose(z, ref, rtol=2e-7, atol=1e-7)


def test_trunc_normal_degenerate_cases():
    g = Generator(0)
    # 40 std out: Phi underflows, values sit on the bound nearest the mean
    x = g.trunc_normal_(np.empty(100, np.float32), 0.0, 1.0, 40.0, 41.0)
    assert np.all(x == 40.0)
    assert np.all(g.trunc_normal_(np.empty(3, np.float32), 5.0, 0.0, -1.0, 1.0) == 1.0)
    with pytest.raises(ValueError):
        g.trunc_normal_(np.empty(3, np.float32), 0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        g.trunc_normal_(np.empty(3, np.float32), 0.0, -1.0)
    with pytest.raises(ValueError):
        init.trunc_normal_(np.empty(3, np.float32), a=float("-inf"))


# ----------------------------------------------------------------- threads

@pytest.mark.parametrize("kind", ["uniform", "normal", "int", "bits", "permutation", "trunc_normal"])
def test_same_output_with_1_and_2_threads(kind, threads):
    n = 200_003  # above the parallel threshold, not a multiple of the chunk

    def draw():
        if kind == "uniform":
            out = np.empty(n, np.float32)
            _testing.k_rand_uniform(5, 3, out, -1.0, 1.0)
        elif kind == "normal":
            out = np.empty(n, np.float32)
            _testing.k_rand_normal(5, 2, out, 0.0, 1.0)
        elif kind == "int":
            out = np.empty(n, np.int64)
            _testing.k_rand_int(5, 3, out, 0, 1000)
        elif kind == "bits":
            out = np.empty(n, np.uint32)
            _testing.k_rand_bits(5, 1, out)
        elif kind == "trunc_normal":
            out = np.empty(n, np.float32)
            _testing.k_rand_trunc_normal(5, 2, out, 0.0, 1.0, -1.5, 2.5)
        else:
            out = np.empty(n, np.int64)
            _testing.k_rand_permutation(5, 0, out)
        return out

    _C.set_num_threads(1)
    one = draw()
    _C.set_num_threads(2)
    two = draw()
    assert one.tobytes() == two.tobytes()


@pytest.fixture
def isa():
    """Restores the kernel path a test changes."""
    before = _C.get_isa()
    yield
    _C.set_isa(before)


@pytest.mark.parametrize("kind", ["uniform", "normal", "int", "bits"])
def test_same_output_on_every_isa_path(kind, isa):
    n = 100_003
    outs = {}
    for name in _C.supported_isas():
        _C.set_isa(name)
        if kind in ("uniform", "normal"):
            out = np.empty(n, np.float32)
            fill = _testing.k_rand_uniform if kind == "uniform" else _testing.k_rand_normal
            fill(8, 4, out, -1.0, 2.0)
        elif kind == "int":
            out = np.empty(n, np.int64)
            _testing.k_rand_int(8, 4, out, -50, 50257)
        else:
            out = np.empty(n, np.uint32)
            _testing.k_rand_bits(8, 5, out)
        outs[name] = out.tobytes()
    assert len(set(outs.values())) == 1, sorted(outs)


# ----------------------------------------------------------------- nn.init

def test_calculate_gain_table():
    assert init.calculate_gain("linear") == 1
    assert init.calculate_gain("conv2d") == 1
    assert init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("selu") == pytest.approx(0.75)
    with pytest.raises(ValueError):
        init.calculate_gain("swish")
    with pytest.raises(ValueError):
        init.calculate_gain("leaky_relu", True)


@pytest.mark.parametrize("shape,fans", [((7, 3), (3, 7)), ((16, 8, 3, 3), (72, 144)),
                                        ((4, 2, 5), (10, 20)), ((5, 1), (1, 5))])
def test_fans_follow_pytorch_rule(shape, fans):
    assert init._calculate_fan_in_and_fan_out(shape) == fans
    assert init._calculate_fan_in_and_fan_out(np.empty(shape, np.float32)) == fans


def test_fans_need_two_dimensions():
    with pytest.raises(ValueError, match="2 dimensions"):
        init._calculate_fan_in_and_fan_out((5,))
    with pytest.raises(ValueError, match="fan_in"):
        init.kaiming_uniform_(np.empty((3, 4), np.float32), mode="fan_avg")


def _std_ok(x, std):
    """Sample std of x (float64) within 5 standard errors of `std` (normal: se = std / sqrt(2N))."""
    return abs(x.std() - std) < 5 * std / math.sqrt(2 * x.size)


def test_xavier_uniform_bound_and_std():
    w = np.empty((512, 256), np.float32)
    assert init.xavier_uniform_(w, gain=2.0, generator=Generator(1)) is w
    bound = 2.0 * math.sqrt(6 / (256 + 512))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    assert abs(w.astype(np.float64).std() / (bound / math.sqrt(3)) - 1) < 0.01


def test_xavier_normal_std():
    w = init.xavier_normal_(np.empty((300, 700), np.float32), generator=Generator(2))
    assert _std_ok(w.astype(np.float64), math.sqrt(2 / 1000))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_normal_std_for_relu(mode):
    w = init.kaiming_normal_(np.empty((400, 250), np.float32), mode=mode, nonlinearity="relu",
                             generator=Generator(3))
    fan = 250 if mode == "fan_in" else 400
    assert _std_ok(w.astype(np.float64), math.sqrt(2) / math.sqrt(fan))


def test_kaiming_uniform_default_matches_linear_layer_init():
    # PyTorch's nn.Linear: kaiming_uniform_(w, a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = init.kaiming_uniform_(np.empty((64, 100, 3), np.float32), a=math.sqrt(5), generator=Generator(4))
    bound = 1 / math.sqrt(300)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.astype(np.float64).std() / (bound / math.sqrt(3)) - 1) < 0.01


def test_trunc_normal_init_matches_pytorch_distribution():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ours = init.trunc_normal_(np.empty(200_000, np.float32), 0.1, 0.5, -0.4, 0.9, generator=Generator(3))
    theirs = torch.nn.init.trunc_normal_(torch.empty(200_000), 0.1, 0.5, -0.4, 0.9).numpy()
    # two-sample comparison of means and spreads, 5 standard errors
    se = math.sqrt(2 * theirs.var() / 200_000)
    assert abs(ours.mean() - theirs.mean()) < 5 * se
    assert abs(ours.std() / theirs.std() - 1) < 5 * math.sqrt(1 / 200_000)
    assert ours.min() >= -0.4 and ours.max() <= 0.9


def test_init_draws_from_the_given_generator_reproducibly():
    a = init.normal_(np.empty(50, np.float32), 0.0, 0.02, generator=Generator(5))
    b = init.normal_(np.empty(50, np.float32), 0.0, 0.02, generator=Generator(5))
    np.testing.assert_array_equal(a, b)
    mrandom.manual_seed(5)
    c = init.normal_(np.empty(50, np.float32), 0.0, 0.02)
    np.testing.assert_array_equal(a, c)
    u = init.uniform_(np.empty(1000, np.float32), -0.1, 0.1, generator=Generator(6))
    assert u.min() >= -0.1 and u.max() < 0.1


def test_constant_fills():
    w = np.full((3, 4), 7.0, np.float32)
    assert init.zeros_(w) is w and np.all(w == 0)
    assert np.all(init.ones_(w) == 1)
    assert np.all(init.constant_(w, 0.25) == 0.25)
    ids = np.empty(5, np.int64)
    assert np.all(init.zeros_(ids) == 0)


def test_zero_element_tensors_are_left_alone():
    g = Generator(0)
    w = np.empty((0, 5), np.float32)
    assert init.kaiming_uniform_(w, generator=g) is w
    assert init.xavier_normal_(np.empty((5, 0), np.float32), generator=g).shape == (5, 0)
    assert g.offset == 0


def test_fans_and_gains_match_pytorch():
    torch = pytest.importorskip("torch")
    for shape in [(7, 3), (16, 8, 3, 3), (4, 2, 5), (5, 1), (2, 3, 4, 5, 6)]:
        assert init._calculate_fan_in_and_fan_out(shape) == \
            torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    for name, param in [("linear", None), ("conv1d", None), ("sigmoid", None), ("tanh", None),
                        ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.3), ("leaky_relu", 0),
                        ("selu", None)]:
        assert init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))


def test_init_bounds_match_pytorch_for_the_same_shape():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cases = [
        (init.xavier_uniform_, torch.nn.init.xavier_uniform_, {}),
        (init.kaiming_uniform_, torch.nn.init.kaiming_uniform_, {"a": math.sqrt(5)}),
        (init.kaiming_uniform_, torch.nn.init.kaiming_uniform_, {"mode": "fan_out", "nonlinearity": "relu"}),
    ]
    for ours, theirs, kw in cases:
        shape = (96, 40, 3)
        a = ours(np.empty(shape, np.float32), generator=Generator(1), **kw)
        b = theirs(torch.empty(shape), **kw).numpy()
        # both are uniform on the same interval: the extremes agree to within sampling error
        assert abs(np.abs(a).max() - np.abs(b).max()) < 0.01 * np.abs(b).max()
