"""A time budget that holds: the learning rate of a time-budgeted run follows the fraction of the
budget used (warmup steps, constant, linear cooldown over the last cooldown_frac), the run stops
when the budget is spent whatever the speed does, and a resume continues from the checkpoint's
elapsed time. The clock is a fake one advanced by the test, so nothing here is timed."""
import json
import os

import numpy as np
import pytest

from minillm import checkpoint, metrics, optim
from minillm.train import Trainer, TrainConfig, resumed_config
from conftest import sample_token_folder

LR, MIN_LR = 4e-3, 4e-4


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    return sample_token_folder(str(tmp_path_factory.mktemp("corpus")), 300)


def _config(tokens_dir, out_dir, **kw):
    opts = dict(model="gpt-tiny", n_layer=1, n_head=2, n_embd=16, block_size=8, data=tokens_dir,
                out_dir=str(out_dir), batch_size=2, max_steps=10 ** 6, time_budget=10.0,
                cooldown_frac=0.4, warmup_steps=4, lr=LR, min_lr=MIN_LR, eval_interval=0,
                eval_batches=1, final_eval_batches=1, log_interval=1, checkpoint_interval=0,
                progress="none", seed=3)
    opts.update(kw)
    return TrainConfig(**opts)


class FakeClock:
    """time_fn for the trainer: seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def run_with_step_costs(trainer, clock, cost_of_step, stop_at=None):
    """Each optimizer step `s` (1-based) advances the clock by cost_of_step(s) seconds; records
    the learning rate of every step. stop_at: what Ctrl-C does, after that step."""
    lrs = []
    step = trainer.train_step

    def timed_step():
        out = step()
        clock.now += cost_of_step(trainer.step)
        lrs.append(out[2])
        if trainer.step == stop_at:
            trainer._stop = True
        return out
    trainer.train_step = timed_step
    trainer.train()
    return lrs


def slows_down_half_way(step):
    # 40 steps of 0.125 s fill half the budget; then a busier machine takes 0.5 s a step
    return 0.125 if step <= 40 else 0.5


def expected_lr(step, fraction):
    """The schedule written out: warmup over 4 steps, constant, cooldown over the last 40%."""
    lr = LR if fraction <= 0.6 else MIN_LR + (LR - MIN_LR) * (1.0 - fraction) / 0.4
    return min(lr, LR * (step + 1) / 5) if step < 4 else lr


@pytest.mark.parametrize("step, fraction, want", [
    (0, 0.0, LR / 5), (2, 0.01, 3 * LR / 5), (4, 0.0, LR), (10, 0.3, LR), (10, 0.6, LR),
    (10, 0.7, MIN_LR + (LR - MIN_LR) * 0.75), (10, 0.8, MIN_LR + (LR - MIN_LR) * 0.5),
    (10, 0.95, MIN_LR + (LR - MIN_LR) * 0.125), (10, 1.0, MIN_LR), (10, 1.5, MIN_LR),
    (1, 0.9, MIN_LR + (LR - MIN_LR) * 0.25),       # a warmup reaching into the cooldown: the lower
])
def test_schedule_values_at_given_fractions(step, fraction, want):
    got = optim.warmup_constant_cooldown(step, fraction, LR, 4, 0.4, MIN_LR)
    assert got == pytest.approx(want, rel=1e-12)


def test_the_trainer_takes_the_budget_schedule(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run"), time_fn=FakeClock())
    for step, fraction in [(0, 0.0), (10, 0.5), (10, 0.75), (30, 0.99)]:
        assert t.lr_at(step, fraction) == pytest.approx(expected_lr(step, fraction), rel=1e-12)
    t.elapsed = 8.0                 # the default fraction is the budget used so far
    assert t.budget_fraction() == 0.8 and t.lr_at(10) == pytest.approx(expected_lr(10, 0.8))
    # without a budget the cosine over max_steps is unchanged
    t2 = Trainer(_config(tokens_dir, tmp_path / "run2", time_budget=0.0, max_steps=100))
    assert t2.lr_at(52) == pytest.approx(optim.cosine_with_warmup(52, LR, 4, 100, MIN_LR))


def test_a_run_whose_steps_slow_down_half_way_still_ends_at_the_budget(tokens_dir, tmp_path):
    clock = FakeClock()
    t = Trainer(_config(tokens_dir, tmp_path / "run"), time_fn=clock)
    lrs = run_with_step_costs(t, clock, slows_down_half_way)
    # 40 fast steps use 5 s, then 10 slow ones the other 5 s; a max_steps fixed from the first
    # steps' speed (80) would have run to 25 s
    assert t.step == 50 and t.elapsed == 10.0 and not t.interrupted
    fractions = np.cumsum([0.0] + [slows_down_half_way(s) for s in range(1, 50)]) / 10.0
    want = [expected_lr(s, f) for s, f in enumerate(fractions)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    assert lrs[-1] == pytest.approx(MIN_LR + (LR - MIN_LR) * 0.05 / 0.4)     # at 95% of the budget
    # the end is saved and evaluated like a max_steps run's
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [50]
    recs = metrics.read_metrics(tmp_path / "run")
    assert [r["step"] for r in recs if "val_loss" in r] == [50]
    assert [r["elapsed"] for r in recs if "loss" in r][-1] == 10.0


def slow_evaluations(trainer, clock, seconds):
    """Make every evaluation of `trainer` take `seconds` of `clock`."""
    evaluate = trainer.evaluate

    def slow_evaluate(max_batches=-1):
        clock.now += seconds
        return evaluate(max_batches)
    trainer.evaluate = slow_evaluate


def test_a_steady_run_fills_the_budget_and_evaluations_count_in_it(tokens_dir, tmp_path):
    clock = FakeClock()
    t = Trainer(_config(tokens_dir, tmp_path / "run", eval_interval=10), time_fn=clock)
    slow_evaluations(t, clock, 0.5)
    run_with_step_costs(t, clock, lambda s: 0.25)
    # 4 steps a second; the evaluations after steps 10, 20 and 30 take 1.5 of the 10 s (the final
    # one comes after the budget)
    assert t.step == 34 and t.elapsed == 10.0
    evals = [r for r in metrics.read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 34]


def test_an_evaluation_that_spends_the_budget_ends_the_run(tokens_dir, tmp_path):
    clock = FakeClock()
    t = Trainer(_config(tokens_dir, tmp_path / "run", eval_interval=10), time_fn=clock)
    slow_evaluations(t, clock, 4.0)
    run_with_step_costs(t, clock, lambda s: 0.25)
    # 2.5 s of steps + 4 s of evaluation, 2.5 + 4 more: spent; the final evaluation and
    # checkpoint follow at once
    assert t.step == 20 and t.elapsed == 13.0
    evals = [r for r in metrics.read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 20]
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [20]


def test_max_steps_still_caps_a_budgeted_run(tokens_dir, tmp_path):
    clock = FakeClock()
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=12), time_fn=clock)
    lrs = run_with_step_costs(t, clock, lambda s: 0.25)
    assert t.step == 12 and t.elapsed == 3.0 and lrs[-1] == LR


def test_a_resumed_budgeted_run_continues_from_the_checkpoints_elapsed_time(tokens_dir, tmp_path):
    clock = FakeClock()
    full = Trainer(_config(tokens_dir, tmp_path / "full", dropout=0.1), time_fn=clock)
    full_lrs = run_with_step_costs(full, clock, slows_down_half_way)

    clock = FakeClock()
    cut = Trainer(_config(tokens_dir, tmp_path / "cut", dropout=0.1), time_fn=clock)
    cut_lrs = run_with_step_costs(cut, clock, slows_down_half_way, stop_at=44)
    assert cut.interrupted and cut.step == 44
    folder = checkpoint.find_checkpoint(tmp_path / "cut")
    with open(os.path.join(folder, "trainer_state.json")) as f:
        assert json.load(f)["elapsed"] == 7.0          # 40 x 0.125 + 4 x 0.5

    clock = FakeClock()
    clock.now = 5000.0              # another process, another clock origin: only elapsed counts
    resumed = Trainer.resume(str(tmp_path / "cut"), time_fn=clock)
    assert resumed.elapsed == 7.0 and resumed.budget_fraction() == 0.7
    resumed_lrs = run_with_step_costs(resumed, clock, slows_down_half_way)
    assert resumed.step == 50 and resumed.elapsed == 10.0
    # with the same step times, the same learning rates, losses and weights, bit for bit
    assert cut_lrs + resumed_lrs == full_lrs
    assert cut.history + resumed.history == full.history
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert np.array_equal(np.asarray(a), np.asarray(b)), name

    # a run whose budget is spent trains no further on resume
    again = Trainer.resume(str(tmp_path / "cut"), time_fn=FakeClock())
    assert again.budget_spent()
    again.train()
    assert again.step == 50


def test_resume_rules_for_a_budgeted_run(tokens_dir, tmp_path):
    saved = _config(tokens_dir, tmp_path / "run").to_dict()
    # max_steps does not shape the schedule of a budgeted run: free
    new, _ = resumed_config(saved, {"max_steps": 500})
    assert new.max_steps == 500
    for option, value in (("time_budget", 20.0), ("cooldown_frac", 0.2)):
        with pytest.raises(ValueError, match=f"{option} "):
            resumed_config(saved, {option: value})
        assert getattr(resumed_config(saved, {option: value}, allow_changes=True)[0], option) == value
    with pytest.raises(ValueError, match="time_budget of 10 s"):
        resumed_config(saved, {}, extend_steps=100)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_a_bad_cooldown_fraction_is_refused(value):
    with pytest.raises(ValueError, match="cooldown_frac must be a number in"):
        TrainConfig(cooldown_frac=value).checked()
