"""dtype "auto": the trainer times the model's weight products in float32 and bf16 before the
first step (amp.faster_dtype), trains with the faster, and a resume keeps the choice."""
import numpy as np
import pytest

from minillm import _C, amp, checkpoint
from minillm.train import Trainer, TrainConfig
from conftest import train_stopping_after


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def timed_products(monkeypatch, cost_f32, cost_bf16, has_bf16=True):
    """The products advance a fake clock by their dtype's cost; returns the clock and a list of
    the products called (their names)."""
    clock, calls = Clock(), []
    real = {"matmul": _C.matmul, "matmul_bf16": _C.matmul_bf16}

    def product(name, cost):
        def run(*args, **kw):
            calls.append(name)
            clock.now += cost
            return real[name](*args, **kw)
        return run
    monkeypatch.setattr(amp._C, "matmul", product("matmul", cost_f32))
    monkeypatch.setattr(amp._C, "matmul_bf16", product("matmul_bf16", cost_bf16))
    info = dict(_C.cpu_info(), avx512_bf16=has_bf16)
    monkeypatch.setattr(amp._C, "cpu_info", lambda: info)
    return clock, calls


SHAPES = [(16, 8, 12), (16, 12, 8)]


def test_picks_bf16_only_when_it_is_a_tenth_faster(monkeypatch):
    clock, calls = timed_products(monkeypatch, 1.0, 0.5)
    dtype, f32, bf16 = amp.faster_dtype(SHAPES, repeats=2, time_fn=clock)
    assert dtype == "bfloat16"
    # each dtype: 2 shapes x 3 products (forward, dx, dW) per round
    assert (f32, bf16) == (6.0, 3.0)
    assert calls.count("matmul") == calls.count("matmul_bf16") == 3 * 6
    clock, _ = timed_products(monkeypatch, 1.0, 0.95)
    assert amp.faster_dtype(SHAPES, time_fn=clock)[0] == "float32"      # 5% is not enough
    clock, _ = timed_products(monkeypatch, 1.0, 1.5)
    assert amp.faster_dtype(SHAPES, time_fn=clock)[0] == "float32"


def test_a_cpu_without_bf16_dot_products_keeps_float32_untimed(monkeypatch):
    clock, calls = timed_products(monkeypatch, 1.0, 0.1, has_bf16=False)
    assert amp.faster_dtype(SHAPES, time_fn=clock) == ("float32", None, None)
    assert calls == []


def config(tokens_dir, out, steps, dtype):
    return TrainConfig(model="gpt-tiny", n_layer=2, n_head=2, n_embd=64, block_size=32, data=tokens_dir,
                       out_dir=str(out), batch_size=8, max_steps=steps, eval_interval=0, eval_batches=1,
                       final_eval_batches=1, log_interval=10, checkpoint_interval=10, progress="none",
                       seed=3, dtype=dtype, tune_threads=False)


def weights(out):
    state = checkpoint.load_checkpoint(checkpoint.find_checkpoint(str(out)))["model"]
    return {k: np.asarray(v).copy() for k, v in state.items()}


@pytest.mark.parametrize("cost_bf16,want", [(0.5, "bf16"), (2.0, "float32")])
def test_the_trainer_trains_with_the_faster_and_a_resume_keeps_it(monkeypatch, tokens_dir, tmp_path,
                                                                  cost_bf16, want):
    clock, calls = timed_products(monkeypatch, 1.0, cost_bf16)
    monkeypatch.setattr(amp, "faster_dtype", lambda shapes, f=amp.faster_dtype: f(shapes, time_fn=clock))
    auto = Trainer(config(tokens_dir, tmp_path / "auto", 20, "auto"))
    assert auto.config.dtype == want
    assert f"{want} products (auto: " in auto._describe()
    train_stopping_after(auto, 10)
    monkeypatch.undo()
    saved = checkpoint.load_checkpoint(checkpoint.find_checkpoint(str(tmp_path / "auto")))["config"]
    assert saved["train"]["dtype"] == want                  # the choice, not "auto", is kept
    resumed = Trainer.resume(str(tmp_path / "auto"))
    assert resumed.config.dtype == want
    resumed.train()
    # the same as a run that asked for that dtype from the start, bit for bit
    Trainer(config(tokens_dir, tmp_path / "fixed", 20, want)).train()
    got, ref = weights(tmp_path / "auto"), weights(tmp_path / "fixed")
    assert got.keys() == ref.keys()
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    if want == "bf16":      # and bf16 does train other weights than float32, so this can fail
        Trainer(config(tokens_dir, tmp_path / "f32", 20, "float32")).train()
        other = weights(tmp_path / "f32")
        assert any(not np.array_equal(other[k], ref[k]) for k in ref)
