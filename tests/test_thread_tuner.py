"""The thread count of training steps chosen by timing them (train._ThreadTuner): the faster of
all threads and half of them is used, the other is tried again when the load changes, and the
trained weights are bitwise those of a run at a fixed count. Clocks are fake: nothing is timed."""
import numpy as np
import pytest

import minillm
from minillm import checkpoint
from minillm.train import Trainer, TrainConfig, _ThreadTuner
from conftest import train_stopping_after


@pytest.fixture(autouse=True)
def keep_threads():
    n = minillm.get_num_threads()
    yield
    minillm.set_num_threads(n)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def drive(tuner, clock, steps, cost):
    """`steps` steps, each taking cost(threads) seconds of the fake clock; the counts used."""
    used = []
    for _ in range(steps):
        tuner.start_step()
        n = minillm.get_num_threads()
        used.append(n)
        clock.now += cost(n)
        tuner.end_step()
    return used


def test_picks_the_faster_count_and_follows_a_change_of_load():
    clock = Clock()
    tuner = _ThreadTuner(4, clock)
    quiet = {4: 1.0, 2: 1.8}.get
    used = drive(tuner, clock, 300, quiet)
    assert set(used) == {4, 2}                   # both tried
    assert used[-150:].count(4) > 0.85 * 150     # the faster one most of the time
    busy = {4: 3.0, 2: 2.0}.get                  # another process takes cores: half is faster
    used = drive(tuner, clock, 300, busy)
    switched = used.index(2)
    assert switched <= 2 * _ThreadTuner.WINDOW   # seen within two windows of the change
    assert used[-150:].count(2) > 0.85 * 150
    used = drive(tuner, clock, 600, quiet)       # and back
    assert used[-300:].count(4) > 0.85 * 300


def test_one_thread_is_left_alone():
    clock = Clock()
    minillm.set_num_threads(1)
    tuner = _ThreadTuner(1, clock)
    assert set(drive(tuner, clock, 50, lambda n: 1.0)) == {1}


def train(tokens_dir, out_dir, tune, cost):
    """40 steps of a small GPT where a step takes cost(threads) seconds of a fake clock; returns
    the final weights and the thread count of every step."""
    minillm.set_num_threads(2)
    cfg = TrainConfig(model="gpt-tiny", n_layer=2, n_head=2, n_embd=64, block_size=32, data=tokens_dir,
                      out_dir=str(out_dir), batch_size=8, max_steps=40, eval_interval=0, eval_batches=1,
                      final_eval_batches=1, log_interval=10, checkpoint_interval=0, progress="none",
                      seed=5, optimizer="muon", tune_threads=tune)
    clock = Clock()
    trainer = Trainer(cfg, time_fn=clock)
    used, step = [], trainer.train_step

    def timed_step():
        used.append(minillm.get_num_threads())
        out = step()
        clock.now += cost(used[-1])
        return out
    trainer.train_step = timed_step
    trainer.train()
    state = checkpoint.load_checkpoint(checkpoint.find_checkpoint(str(out_dir)))["model"]
    return {k: np.asarray(v).copy() for k, v in state.items()}, used


def test_training_switches_threads_without_changing_a_bit(tokens_dir, tmp_path):
    busy = {2: 3.0, 1: 2.0}.get
    tuned, used = train(tokens_dir, tmp_path / "tuned", True, busy)
    fixed, used_fixed = train(tokens_dir, tmp_path / "fixed", False, busy)
    assert set(used_fixed) == {2}
    assert used.count(1) > len(used) // 2        # it moved to the faster count...
    assert minillm.get_num_threads() == 2        # ...and gave the caller's count back
    assert tuned.keys() == fixed.keys()
    for k in fixed:                              # ...and trained the very same weights
        assert np.array_equal(tuned[k], fixed[k]), k


def test_a_resume_on_another_thread_count_is_exact(tokens_dir, tmp_path):
    """The kernels give the same bits for any thread count, so a run stopped at 2 threads and
    resumed at 1 ends with the weights of the uninterrupted run."""
    def config(out, steps):
        return TrainConfig(model="gpt-tiny", n_layer=2, n_head=2, n_embd=64, block_size=32, data=tokens_dir,
                           out_dir=str(out), batch_size=8, max_steps=steps, eval_interval=0, eval_batches=1,
                           final_eval_batches=1, log_interval=10, checkpoint_interval=10, progress="none",
                           seed=7, num_threads=2, tune_threads=False)
    Trainer(config(tmp_path / "whole", 20)).train()
    first = Trainer(config(tmp_path / "parts", 20))
    train_stopping_after(first, 10)
    assert first.step == 10
    second = Trainer.resume(str(tmp_path / "parts"), num_threads=1)
    assert minillm.get_num_threads() == 1
    second.train()
    whole = checkpoint.load_checkpoint(checkpoint.find_checkpoint(str(tmp_path / "whole")))["model"]
    parts = checkpoint.load_checkpoint(checkpoint.find_checkpoint(str(tmp_path / "parts")))["model"]
    for k in whole:
        assert np.array_equal(np.asarray(whole[k]), np.asarray(parts[k])), k
