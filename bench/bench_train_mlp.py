"""One training step of an MLP 784-256-256-10 (forward, cross-entropy, backward, AdamW),
minillm vs PyTorch eager in the same run, 2 threads each, at batch 64 and 512.

    make bench                                  (pytest-benchmark, grouped by batch size)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \\
        python bench/bench_train_mlp.py         (a table of medians and the ratio)
    ... python bench/bench_train_mlp.py --cpu-time   (process CPU time instead of wall time:
        steadier on a loaded machine; compare at MINILLM_NUM_THREADS=1 only)

The ratio is PyTorch's time over minillm's: above 1 means minillm is faster.
"""
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minillm  # noqa: E402
import minillm.functional as F  # noqa: E402
import minillm.nn as nn  # noqa: E402
import minillm.optim as optim  # noqa: E402

SIZES = (784, 256, 256, 10)
BATCHES = (64, 512)


def _data(batch):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, SIZES[0])).astype(np.float32),
            rng.integers(0, SIZES[-1], batch).astype(np.int64))


def minillm_step_fn(batch):
    """A closure running one training step of the minillm MLP."""
    minillm.random.manual_seed(0)
    model = nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]), nn.ReLU(),
                          nn.Linear(SIZES[2], SIZES[3]))
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    x, y = (minillm.tensor(a) for a in _data(batch))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


def torch_step_fn(batch):
    """A closure running one training step of the same MLP in PyTorch eager."""
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(),
                                torch.nn.Linear(SIZES[1], SIZES[2]), torch.nn.ReLU(),
                                torch.nn.Linear(SIZES[2], SIZES[3]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(a) for a in _data(batch))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


def _make(impl, batch):
    if impl == "torch":
        pytest.importorskip("torch", reason="torch not installed: no PyTorch peer")
        return torch_step_fn(batch)
    return minillm_step_fn(batch)


@pytest.mark.parametrize("impl", ["minillm", "torch"])
@pytest.mark.parametrize("batch", BATCHES)
def test_train_step_mlp(benchmark, impl, batch):
    benchmark.group = f"train-mlp-784-256-256-10-batch{batch}"
    step = _make(impl, batch)
    for _ in range(5):
        step()
    benchmark(step)


def median_seconds(steps, warmup=10, repeats=9, inner=10, clock=time.perf_counter):
    """Median seconds per call of each function in `steps`. Repeats alternate between the
    functions, so load from other processes hits all of them alike."""
    for step in steps:
        for _ in range(warmup):
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for k, step in enumerate(steps):
            t0 = clock()
            for _ in range(inner):
                step()
            times[k].append((clock() - t0) / inner)
    return [float(np.median(t)) for t in times]


def main():
    n = int(os.environ.get("MINILLM_NUM_THREADS", "2"))
    cpu = "--cpu-time" in sys.argv[1:]
    clock = time.process_time if cpu else time.perf_counter
    minillm.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        torch = None
    print(f"MLP {'-'.join(map(str, SIZES))}, one step (forward, cross-entropy, backward, AdamW), "
          f"{n} threads, {minillm.cpu_info()['cpu']} [{minillm.cpu_info()['isa']}], "
          f"{'process CPU' if cpu else 'wall'} time")
    print(f"{'batch':>6} {'minillm ms':>11} {'torch ms':>9} {'torch/minillm':>14}")
    for batch in BATCHES:
        if torch is not None:
            ours, theirs = median_seconds([minillm_step_fn(batch), torch_step_fn(batch)], clock=clock)
        else:
            ours, theirs = median_seconds([minillm_step_fn(batch)], clock=clock)[0], float("nan")
        print(f"{batch:>6} {ours * 1e3:>11.3f} {theirs * 1e3:>9.3f} {theirs / ours:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
