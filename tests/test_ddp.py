"""Data-parallel training over MPI: 2 ranks x B/2 equal 1 rank x B, and a failing rank stops all."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import minillm

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "ddp_worker.py")
ROOT = os.path.dirname(HERE)

mpirun = shutil.which("mpirun")
pytestmark = [
    pytest.mark.skipif(mpirun is None, reason="mpirun not found: install openmpi-bin (.ci/run does)"),
]


def _env(threads):
    env = dict(os.environ)
    env.update(MINILLM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_MCA_rmaps_base_oversubscribe="1",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _final_weights(out_dir):
    ckpts = sorted(os.listdir(os.path.join(out_dir, "checkpoints")))
    return minillm.load(os.path.join(out_dir, "checkpoints", ckpts[-1], "model.safetensors"), mmap=False)


def _mpirun(n, args, timeout):
    pytest.importorskip("mpi4py", reason="mpi4py not installed: `pip install mpi4py` (.ci/run does)")
    cmd = [mpirun, "-n", str(n), "--allow-run-as-root", "--oversubscribe", sys.executable, WORKER] + args
    return subprocess.run(cmd, env=_env(1), capture_output=True, text=True, timeout=timeout)


def test_two_ranks_with_half_batches_match_one_rank_with_the_whole_batch(tmp_path):
    single = str(tmp_path / "single")
    subprocess.run([sys.executable, WORKER, single], env=_env(1), check=True, timeout=300)
    double = str(tmp_path / "double")
    res = _mpirun(2, [double, "--ddp"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final_weights(single), _final_weights(double)
    assert set(a) == set(b)
    moved = 0.0
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-5, atol=1e-5, err_msg=k)
    # the runs really trained: the weights differ from the initial ones (same seed as the trainer)
    from minillm.models import build_model
    from minillm.train import TrainConfig
    minillm.manual_seed(TrainConfig().seed)
    fresh = build_model("gpt-tiny", vocab_size=96, block_size=32, dropout=0.0)
    for k, v in fresh.state_dict().items():
        if k in a:
            moved = max(moved, float(np.abs(np.asarray(a[k]) - np.asarray(v)).max()))
    assert moved > 1e-3
    # only rank 0 wrote: one checkpoint folder, one metrics file
    assert len(os.listdir(os.path.join(double, "checkpoints"))) == 1


def test_an_error_on_one_rank_stops_all_ranks_with_its_message(tmp_path):
    t0 = time.perf_counter()
    res = _mpirun(2, [str(tmp_path / "fail"), "--ddp", "--fail-rank", "1"], timeout=120)
    assert res.returncode != 0
    assert "deliberate failure on rank 1" in res.stderr
    assert "aborting all ranks" in res.stderr
    assert time.perf_counter() - t0 < 100


def test_batch_that_does_not_split_over_the_ranks_is_refused():
    from minillm.distributed import World

    class FakeComm:
        def Get_rank(self):
            return 1

        def Get_size(self):
            return 3

    w = World(FakeComm())
    assert w.shard(9) == (3, 6)
    with pytest.raises(ValueError, match="cannot be split evenly over 3 ranks"):
        w.shard(8)
