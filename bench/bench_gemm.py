"""GEMM throughput of minillm against numpy.matmul (OpenBLAS), measured in the same run.

    make bench-gemm            # both at 2 threads, OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset
    python bench/bench_gemm.py --quick   # fewer shapes (no 2048-token LM head)

Prints one row per (shape, layout): GFLOPS of each and the ratio minillm / numpy. Times are
the best call of alternating blocks of calls (minillm, numpy, minillm, ...) within a time
budget, so both see the same machine state. Layout names say which operand is read transposed:
nn C = A @ B, nt C = A @ B^T, tn C = A^T @ B. For a linear layer y = x @ W with W (K, N):
forward is nn (M, N, K), the input gradient dx = dy @ W^T is nt (M, K, N), the weight
gradient dW = x^T @ dy is tn (K, N, M).

The last table times the user's path, Tensor @ Tensor, with operands that view NumPy arrays
(Tensor.from_numpy: 16-byte aligned, 4 KiB pages) next to operands minillm allocated (64-byte
aligned), and numpy.matmul on the same arrays; `--tensors` prints only that table.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minillm  # noqa: E402
from minillm import _C  # noqa: E402
from minillm import _testing  # noqa: E402

SQUARE = [64, 128, 256, 512, 1024, 2048]
GPT_KN = [(768, 768), (768, 2304), (768, 3072), (3072, 768), (768, 50304)]
GPT_TOKENS = [512, 2048]
TENSOR_SHAPES = [(768, 768, 768), (1024, 1024, 1024), (512, 2304, 768)]   # (M, N, K)


def blas_info():
    """Which BLAS numpy runs, with which kernel (threadpoolctl), or a note why unknown."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install threadpoolctl)"
    rows = [f"{d.get('internal_api')} {d.get('version')} kernel={d.get('architecture')} "
            f"threads={d.get('num_threads')}" for d in threadpool_info() if d.get("user_api") == "blas"]
    return "; ".join(rows) or "no BLAS found"


def operands(M, N, K, layout, rng):
    """Stored A, B and C for C (M, N) = op(A) @ op(B) in the given layout."""
    ta, tb = layout[0] == "t", layout[1] == "t"
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    return ta, tb, a, b, np.empty((M, N), np.float32)


CLOCK = time.perf_counter


def best_times(fns, budget, rounds=3):
    """Best wall time of each function over `rounds` alternating blocks of repeated calls.

    Each library's worker threads spin for a while after a call returns (libgomp, and the
    OpenBLAS thread server); timing them call by call in turn would let one library's
    spinning threads steal a core from the other. Blocks of calls separated by a pause
    (longer than either spin) give each library the machine to itself."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, f in enumerate(fns):
            time.sleep(0.1)
            f()                                            # wake the threads, warm the caches
            start, reps = time.perf_counter(), 0
            while reps < 3 or (reps < 200 and time.perf_counter() - start < budget / rounds / len(fns)):
                t = CLOCK()
                f()
                best[i] = min(best[i], CLOCK() - t)
                reps += 1
    return best


def bench(M, N, K, layout, rng, budget, rounds):
    ta, tb, a, b, c = operands(M, N, K, layout, rng)
    c_np = np.empty_like(c)
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    ours = lambda: _testing.k_sgemm(ta, tb, 1.0, a, b, 0.0, c)  # noqa: E731
    theirs = lambda: np.matmul(opa, opb, out=c_np)  # noqa: E731
    t_ours, t_np = best_times([ours, theirs], budget, rounds)
    err = float(np.abs(c - c_np).max() / max(1.0, np.abs(c_np).max()))
    flops = 2.0 * M * N * K
    return flops / t_ours / 1e9, flops / t_np / 1e9, err


def bench_tensors(M, N, K, rng, budget, rounds):
    """GFLOPS of Tensor @ Tensor on operands viewing NumPy arrays, on minillm-allocated copies
    of them, and of numpy.matmul on the arrays; and the largest difference of the two products."""
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    viewed = minillm.Tensor.from_numpy(a), minillm.Tensor.from_numpy(b)
    owned = minillm.tensor(a), minillm.tensor(b)
    times = best_times([lambda: viewed[0] @ viewed[1], lambda: owned[0] @ owned[1], lambda: a @ b], budget, rounds)
    diff = float(np.abs((viewed[0] @ viewed[1]).numpy() - (owned[0] @ owned[1]).numpy()).max())
    return [2.0 * M * N * K / t / 1e9 for t in times], diff


def print_tensor_table(rng, budget, rounds):
    print(f"\nTensor @ Tensor{'':19s} {'M x N x K':>20s} {'viewed':>9s} {'owned':>9s} {'numpy':>9s} {'viewed/owned':>13s}")
    print(f"{'':34s} {'':>20s} {'GFLOPS':>9s} {'GFLOPS':>9s} {'GFLOPS':>9s}")
    for M, N, K in TENSOR_SHAPES:
        (viewed, owned, theirs), diff = bench_tensors(M, N, K, rng, budget, rounds)
        flag = "" if diff == 0 else f"  DIFFERENT {diff:.2g}"
        print(f"{'from_numpy vs minillm-allocated':34s} {f'{M}x{N}x{K}':>20s} {viewed:9.1f} {owned:9.1f} {theirs:9.1f} "
              f"{viewed / owned:13.2f}{flag}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 2048-token LM head and n = 2048")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timing per shape (default 1.5)")
    ap.add_argument("--only", default="", help="run only rows whose name contains this")
    ap.add_argument("--tensors", action="store_true", help="only the Tensor @ Tensor table (from_numpy "
                    "operands vs minillm-allocated ones)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating blocks per library (default 3; more catch more quiet moments "
                         "on a shared machine)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread each, timed by this thread's CPU time (time.thread_time): on a "
                         "machine shared with other work, the time the OS gives to others is not counted")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        _C.set_num_threads(1)
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(1, user_api="blas")
        except ImportError:
            sys.exit("--cpu-time needs threadpoolctl to hold numpy's BLAS to one thread")

    info = _C.cpu_info()
    print(f"CPU: {info['cpu']}  ISA: {info['isa']}  minillm threads: {info['num_threads']}")
    print(f"numpy {np.__version__}: {blas_info()}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        print(f"  {var}={os.environ.get(var, '(unset)')}")
    rows = [(f"square {n}", n, n, n, "nn") for n in SQUARE if not (args.quick and n > 1024)]
    for M in GPT_TOKENS:
        for K, N in GPT_KN:
            if args.quick and M == 2048 and N == 50304:
                continue
            name = f"gpt M={M} K={K} N={N}"
            rows += [(name + " fwd", M, N, K, "nn"), (name + " dx", M, K, N, "nt"), (name + " dW", K, N, M, "tn")]
    rows = [r for r in rows if args.only in r[0]]

    rng = np.random.default_rng(0)
    if args.tensors:
        print_tensor_table(rng, args.budget, args.rounds)
        return
    print(f"\n{'shape':34s} {'M x N x K':>20s} {'layout':>6s} {'minillm':>9s} {'numpy':>9s} {'ratio':>6s}")
    print(f"{'':34s} {'':>20s} {'':>6s} {'GFLOPS':>9s} {'GFLOPS':>9s} {'':>6s}")
    ratios = []
    for name, M, N, K, layout in rows:
        ours, theirs, err = bench(M, N, K, layout, rng, args.budget, args.rounds)
        ratios.append(ours / theirs)
        flag = "" if err < 1e-4 else f"  MISMATCH {err:.2g}"
        print(f"{name:34s} {f'{M}x{N}x{K}':>20s} {layout:>6s} {ours:9.1f} {theirs:9.1f} {ours / theirs:6.2f}{flag}",
              flush=True)
    print(f"\ngeometric mean ratio: {float(np.exp(np.mean(np.log(ratios)))):.3f}")
    print_tensor_table(rng, args.budget, args.rounds)


if __name__ == "__main__":
    main()
