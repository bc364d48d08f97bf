"""mll_sgemm / mll_sgemm_batched against NumPy float64, on every ISA path this CPU runs.

Tolerance: a float32 dot product of length K is within (K + 2) u sum_k |a_ik b_kj| of the
exact value (u = 2^-24, Higham, "Accuracy and Stability of Numerical Algorithms", 3.1), and
scaling by alpha/beta adds a few u more; the tests allow (K + 4) u (|alpha| |A| |B| + |beta C|).
A wrong index or a lost block gives errors of order |A| |B|, far above that.
"""
import numpy as np
import pytest

from minillm import _testing

U = 2.0 ** -24


def op(x, trans):
    return x.T if trans else x


def operands(rng, M, N, K, transa, transb):
    a = rng.standard_normal((K, M) if transa else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if transb else (K, N)).astype(np.float32)
    return a, b


def check(c, c0, a, b, transa, transb, alpha, beta):
    """c == alpha op(a) op(b) + beta c0 within the float32 summation bound."""
    A, B = op(a, transa).astype(np.float64), op(b, transb).astype(np.float64)
    K = A.shape[1]
    ref = alpha * (A @ B)
    scale = abs(alpha) * (np.abs(A) @ np.abs(B))
    if beta != 0:
        ref = ref + beta * c0.astype(np.float64)
        scale = scale + abs(beta) * np.abs(c0)
    err = np.abs(c - ref)
    tol = (K + 4) * U * scale + 1e-30
    bad = err > tol
    assert not bad.any(), (
        f"{bad.sum()} of {c.size} wrong, first at {tuple(np.argwhere(bad)[0])}: "
        f"max err {err.max():.3g}, shape {c.shape}, K {K}, trans {transa}{transb}, alpha {alpha}, beta {beta}")


def run(a, b, c, transa, transb, alpha, beta):
    c0 = c.copy()
    _testing.k_sgemm(transa, transb, alpha, a, b, beta, c)
    check(c, c0, a, b, transa, transb, alpha, beta)


@pytest.mark.parametrize("transa,transb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_every_small_size_matches_numpy(isa, transa, transb):
    # every (M, N, K) in 1..20: all edge-tile shapes of every register tile in use
    rng = np.random.default_rng(1)
    big_a, big_b = operands(rng, 20, 20, 20, transa, transb)
    for M in range(1, 21):
        for N in range(1, 21):
            for K in range(1, 21):
                a = big_a[:K, :M] if transa else big_a[:M, :K]
                b = big_b[:N, :K] if transb else big_b[:K, :N]
                c = np.empty((M, N), np.float32)
                _testing.k_sgemm(transa, transb, 1.0, a, b, 0.0, c)
                check(c, None, a, b, transa, transb, 1.0, 0.0)


@pytest.mark.parametrize("transa,transb", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("M,N,K", [(257, 1001, 769), (97, 131, 211), (1, 500, 300), (500, 1, 300),
                                   (300, 500, 1), (1, 1, 1000), (60, 4200, 17), (1, 3001, 1000),
                                   (3001, 1, 1000), (14, 32, 2000), (200, 6500, 1100), (42, 1560, 300)])
def test_large_and_odd_sizes_match_numpy(isa, M, N, K, transa, transb):
    # K = 769 spans several k blocks (AVX2, generic; one block of the AVX-512 path's 1024),
    # N = 4200 more than one column block (all paths); 14 x 32 is one tile
    # (on two threads one has no tile but packs the B panel the other waits for); 200 x 6500 x
    # 1100 crosses both blocks several times with both threads packing and reading B chunks;
    # 42 x 1560 ends in a column block of one micro-panel, where the threads' bands of tile
    # rows change (the A blocks kept from the first column block must not be reused)
    rng = np.random.default_rng(M * 7 + N * 3 + K)
    a, b = operands(rng, M, N, K, transa, transb)
    c = rng.standard_normal((M, N)).astype(np.float32)
    run(a, b, c, transa, transb, 1.0, 0.0)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0), (-1.5, 0.25), (2.0, 0.0), (0.0, 0.5),
                                        (0.0, 0.0)])
@pytest.mark.parametrize("transa,transb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_alpha_beta_scale_product_and_c(isa, alpha, beta, transa, transb):
    rng = np.random.default_rng(5)
    for M, N, K in [(3, 5, 7), (37, 45, 300), (130, 70, 20), (1, 70, 300), (70, 1, 300)]:
        a, b = operands(rng, M, N, K, transa, transb)
        run(a, b, rng.standard_normal((M, N)).astype(np.float32), transa, transb, alpha, beta)


@pytest.mark.parametrize("M,N,K", [(5, 6, 7), (200, 150, 400)])
def test_beta_zero_never_reads_c(isa, M, N, K):
    rng = np.random.default_rng(2)
    for transa in (0, 1):
        for transb in (0, 1):
            a, b = operands(rng, M, N, K, transa, transb)
            c = np.full((M, N), np.nan, np.float32)
            _testing.k_sgemm(transa, transb, 1.0, a, b, 0.0, c)
            assert np.isfinite(c).all()
            check(c, None, a, b, transa, transb, 1.0, 0.0)


def test_k_zero_scales_c_by_beta():
    c = np.ones((3, 4), np.float32)
    _testing.k_sgemm(0, 0, 1.0, np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), 3.0, c)
    np.testing.assert_array_equal(c, 3.0)
    c[:] = np.nan
    _testing.k_sgemm(0, 0, 1.0, np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), 0.0, c)
    np.testing.assert_array_equal(c, 0.0)


@pytest.mark.parametrize("M,N,K", [(45, 77, 130), (1, 77, 130), (45, 1, 130)])
@pytest.mark.parametrize("transa,transb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_strided_views_use_row_strides(isa, transa, transb, M, N, K):
    # column slices of wider arrays: lda, ldb, ldc larger than the logical widths, and the
    # columns outside each view must be left alone
    rng = np.random.default_rng(3)
    wa = rng.standard_normal((K if transa else M, 300)).astype(np.float32)
    wb = rng.standard_normal((N if transb else K, 310)).astype(np.float32)
    wc = rng.standard_normal((M, 290)).astype(np.float32)
    a = wa[:, 11:11 + (M if transa else K)]
    b = wb[:, 5:5 + (K if transb else N)]
    c = wc[:, 100:100 + N]
    before = wc.copy()
    c0 = c.copy()
    _testing.k_sgemm(transa, transb, 1.25, a, b, 0.5, c)
    check(c, c0, a, b, transa, transb, 1.25, 0.5)
    np.testing.assert_array_equal(wc[:, :100], before[:, :100])
    np.testing.assert_array_equal(wc[:, 100 + N:], before[:, 100 + N:])


@pytest.mark.parametrize("transa,transb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_batched_matches_per_matrix_products(isa, transa, transb):
    rng = np.random.default_rng(4)
    batch, M, N, K = 6, 33, 40, 70
    a = rng.standard_normal((batch,) + ((K, M) if transa else (M, K))).astype(np.float32)
    b = rng.standard_normal((batch,) + ((N, K) if transb else (K, N))).astype(np.float32)
    c = rng.standard_normal((batch, M, N)).astype(np.float32)
    c0 = c.copy()
    _testing.k_sgemm_batched(transa, transb, 0.5, a, b, 2.0, c)
    for i in range(batch):
        check(c[i], c0[i], a[i], b[i], transa, transb, 0.5, 2.0)


def test_batched_broadcasts_an_operand_of_batch_one(isa):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 20, 30)).astype(np.float32)
    w = rng.standard_normal((1, 30, 25)).astype(np.float32)
    c = np.empty((5, 20, 25), np.float32)
    _testing.k_sgemm_batched(0, 0, 1.0, a, w, 0.0, c)
    for i in range(5):
        check(c[i], None, a[i], w[0], 0, 0, 1.0, 0.0)


def test_batched_many_small_and_few_large(isa):
    # attention-like (many heads, small matrices) and few large matrices
    rng = np.random.default_rng(7)
    for batch, M, N, K in [(24, 64, 64, 32), (2, 300, 200, 260)]:
        a = rng.standard_normal((batch, M, K)).astype(np.float32)
        b = rng.standard_normal((batch, N, K)).astype(np.float32)
        c = np.empty((batch, M, N), np.float32)
        _testing.k_sgemm_batched(0, 1, 1.0, a, b, 0.0, c)
        for i in range(batch):
            check(c[i], None, a[i], b[i], 0, 1, 1.0, 0.0)


# shapes that cross the k blocks, the column blocks (N > NC) and split either way between threads
@pytest.mark.parametrize("M,N,K", [(33, 4200, 100), (300, 40, 270), (130, 130, 1530), (70, 70, 70),
                                   (2, 3000, 200), (1, 5000, 300), (5000, 1, 300), (14, 32, 2000),
                                   (200, 6500, 1100), (42, 1560, 300)])
def test_one_and_two_threads_give_bitwise_identical_results(isa, threads, M, N, K):
    rng = np.random.default_rng(8)
    for transa in (0, 1):
        for transb in (0, 1):
            a, b = operands(rng, M, N, K, transa, transb)
            c0 = rng.standard_normal((M, N)).astype(np.float32)
            results = []
            for n in (1, 2):
                threads(n)
                c = c0.copy()
                _testing.k_sgemm(transa, transb, 0.75, a, b, 0.5, c)
                results.append(c)
            np.testing.assert_array_equal(results[0], results[1])


def test_batched_one_and_two_threads_bitwise_identical(isa, threads):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((12, 64, 48)).astype(np.float32)
    b = rng.standard_normal((12, 64, 48)).astype(np.float32)
    results = []
    for n in (1, 2):
        threads(n)
        c = np.empty((12, 64, 64), np.float32)
        _testing.k_sgemm_batched(0, 1, 1.0, a, b, 0.0, c)
        results.append(c)
    np.testing.assert_array_equal(results[0], results[1])


def test_mismatched_shapes_raise_value_error_naming_them():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        _testing.k_sgemm(0, 0, 1.0, a, np.ones((5, 6), np.float32), 0.0, np.ones((3, 6), np.float32))
    with pytest.raises(ValueError, match="C"):
        _testing.k_sgemm(0, 0, 1.0, a, np.ones((4, 6), np.float32), 0.0, np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="batch"):
        _testing.k_sgemm_batched(0, 0, 1.0, np.ones((2, 3, 4), np.float32), np.ones((3, 4, 5), np.float32), 0.0,
                           np.ones((3, 3, 5), np.float32))


def test_rows_must_be_contiguous():
    a = np.ones((4, 8), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        _testing.k_sgemm(0, 0, 1.0, a, np.ones((4, 4), np.float32), 0.0, np.ones((4, 4), np.float32))
