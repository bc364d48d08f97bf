"""The trainer (minillm/train.py): exact resume, Ctrl-C, checkpoint integrity, config handling,
learning-rate schedule, gradient accumulation, evaluation in bits per byte, metrics, plot."""
import hashlib
import json
import math
import os
import shutil
import signal

import numpy as np
import pytest

from minillm import checkpoint, data, metrics
from minillm.cli import build_parser, main
from minillm.models import build_model
from minillm.tokenizers import BPETokenizer
from minillm.checkpoint import CheckpointError
from minillm.train import TrainConfig, Trainer

TINY = dict(model="gpt-tiny", n_layer=1, n_head=2, n_embd=32, block_size=16)


def _config(tokens_dir, out_dir, **kw):
    opts = dict(TINY, data=tokens_dir, out_dir=str(out_dir), batch_size=4, max_steps=6,
                warmup_steps=2, lr=3e-3, min_lr=3e-4, eval_interval=3, eval_batches=2,
                final_eval_batches=2, log_interval=1, checkpoint_interval=3, keep_checkpoints=5,
                progress="none", seed=7)
    opts.update(kw)
    return TrainConfig(**opts)


def _weights(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def _tree_hashes(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _interrupt_at(trainer, step):
    """Send this process a real SIGINT right after optimizer step `step`."""
    run_step = trainer.train_step

    def step_then_signal():
        out = run_step()
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    trainer.train_step = step_then_signal


def test_resume_after_ctrl_c_is_bitwise_exact(tokens_dir, tmp_path):
    # dropout and gradient accumulation on, so RNG and data-position restore both matter
    kw = dict(dropout=0.1, grad_accum=2, checkpoint_interval=0, eval_interval=0)
    full = Trainer(_config(tokens_dir, tmp_path / "full", **kw))
    full.train()
    assert [s for s, _ in full.history] == list(range(1, 7))

    cut = Trainer(_config(tokens_dir, tmp_path / "cut", **kw))
    _interrupt_at(cut, 2)
    cut.train()                        # Ctrl-C: saves a checkpoint at step 2 and returns
    assert cut.interrupted and cut.step == 2
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "cut")] == [2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    resumed = Trainer.resume(str(tmp_path / "cut"))
    assert resumed.step == 2
    resumed.train()
    assert cut.history + resumed.history == full.history      # float equality: bitwise
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        assert sa[i]["step"] == sb[i]["step"] == 6
        assert np.array_equal(np.asarray(sa[i]["exp_avg_sq"]), np.asarray(sb[i]["exp_avg_sq"]))
    # the resumed run's metrics continue the interrupted ones, step by step
    steps = [r["step"] for r in metrics.read_metrics(tmp_path / "cut") if "loss" in r]
    assert steps == list(range(1, 7))


def test_resume_from_a_mid_run_checkpoint_drops_later_metrics(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run"))
    t.train()
    assert max(rec["step"] for rec in metrics.read_metrics(tmp_path / "run")) == 6
    r = Trainer.resume(str(tmp_path / "run" / "checkpoints" / "step_0000003"))
    assert r.step == 3
    assert max(rec["step"] for rec in metrics.read_metrics(tmp_path / "run")) == 3
    r.train()
    assert r.history == t.history[3:]


def test_checkpoint_folder_holds_the_documented_files(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=3))
    t.train()
    folder = checkpoint.find_checkpoint(tmp_path / "run")
    assert sorted(os.listdir(folder)) == sorted(checkpoint.CHECKPOINT_FILES + (checkpoint.MANIFEST,))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    assert cfg["model"]["n_embd"] == 32 and cfg["train"]["max_steps"] == 3
    state = json.load(open(os.path.join(folder, "trainer_state.json")))
    assert state["step"] == 3 and state["data"]["batches"] == 3
    assert set(state["rng"]["default"]) == {"seed", "offset"}
    tok = BPETokenizer.load(os.path.join(folder, "tokenizer.json"))
    assert tok.vocab_size == 320
    model = checkpoint.load_model(tmp_path / "run")
    for k, v in _weights(model).items():
        assert np.array_equal(v, np.asarray(t.model.state_dict()[k]))


@pytest.fixture(scope="module")
def finished_run(tokens_dir, tmp_path_factory):
    """A 6-step run with checkpoints at steps 3 and 6 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Trainer(_config(tokens_dir, out)).train()
    return out


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors",
                                    "trainer_state.json", "config.json"])
def test_damaged_checkpoint_is_refused_naming_the_file(finished_run, tmp_path, damage, victim):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (s1, older), (s2, latest) = checkpoint.list_checkpoints(run)
    assert (s1, s2) == (3, 6)
    before = _tree_hashes(older)
    path = os.path.join(latest, victim)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "delete":
        os.remove(path)
    else:
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 1]))
    expected = {"truncate": "truncated", "delete": "missing", "flip": "sha256"}[damage]
    with pytest.raises(CheckpointError, match=f"{victim}.*{expected}"):
        Trainer.resume(str(run))
    with pytest.raises(CheckpointError, match=victim):
        checkpoint.load_model(latest)
    assert _tree_hashes(older) == before          # the previous checkpoint is untouched
    resumed = Trainer.resume(older)               # and still good, in the copied run folder
    assert resumed.step == 3 and resumed.config.out_dir == str(run)


def test_missing_manifest_is_refused(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=3))
    t.train()
    folder = checkpoint.find_checkpoint(tmp_path / "run")
    os.remove(os.path.join(folder, "manifest.json"))
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        checkpoint.load_checkpoint(folder)


def test_failed_save_leaves_the_previous_checkpoint_alone(tokens_dir, tmp_path, monkeypatch):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=3, checkpoint_interval=3))
    t.train()
    [(_, first)] = checkpoint.list_checkpoints(tmp_path / "run")
    before = _tree_hashes(first)
    real_save = checkpoint.mio.save

    def failing_save(tensors, path, metadata=None):
        if path.endswith("optimizer.safetensors"):
            raise OSError(28, "No space left on device")
        real_save(tensors, path, metadata)
    monkeypatch.setattr(checkpoint.mio, "save", failing_save)
    t.config = t.config.replace(max_steps=6)
    with pytest.raises(OSError, match="No space"):
        t.train()
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [3]
    assert _tree_hashes(first) == before
    leftovers = [n for n in os.listdir(tmp_path / "run" / "checkpoints") if n.startswith(".")]
    assert leftovers == []
    monkeypatch.undo()
    assert Trainer.resume(first).step == 3


def test_loading_into_another_config_names_tensor_and_shapes(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=1))
    t.train()
    ckpt = checkpoint.load_checkpoint(checkpoint.find_checkpoint(tmp_path / "run"))
    wider = build_model("gpt-tiny", vocab_size=320, n_layer=1, n_head=2, n_embd=48, block_size=16)
    with pytest.raises(ValueError) as e:
        checkpoint.load_model_state(wider, ckpt["model"], "model.safetensors")
    msg = str(e.value)
    assert "model.safetensors" in msg and "transformer.wte.weight" in msg
    assert "(320, 32)" in msg and "(320, 48)" in msg
    deeper = build_model("gpt-tiny", vocab_size=320, n_layer=2, n_head=2, n_embd=32, block_size=16)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\."):
        checkpoint.load_model_state(deeper, ckpt["model"], "model.safetensors")


def test_keeps_only_the_last_k_checkpoints(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=8, checkpoint_interval=2,
                        keep_checkpoints=2, eval_interval=0))
    t.train()
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [6, 8]


def test_learning_rate_warms_up_then_follows_the_cosine(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run", lr=1.0, min_lr=0.1, warmup_steps=4,
                        max_steps=104))
    assert [t.lr_at(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert t.lr_at(4) == pytest.approx(1.0)
    assert t.lr_at(54) == pytest.approx(0.55)          # halfway: (1 + 0.1) / 2
    assert t.lr_at(104) == pytest.approx(0.1)
    assert t.lr_at(500) == pytest.approx(0.1)


class _FixedBatches:
    """Stands in for TokenBatches: hands out slices of fixed windows."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size, self.i = x, y, size, 0

    def next(self):
        from minillm import _C
        lo = self.i * self.size
        self.i += 1
        return (_C.from_numpy(np.ascontiguousarray(self.x[lo:lo + self.size])),
                _C.from_numpy(np.ascontiguousarray(self.y[lo:lo + self.size])))


def test_gradient_accumulation_matches_one_large_batch(tokens_dir, tmp_path):
    toks = data.load_tokens(tokens_dir, "train").astype(np.int64)
    starts = np.array([0, 100, 200, 300, 400, 500, 600, 700])
    x = np.stack([toks[s:s + 16] for s in starts])
    y = np.stack([toks[s + 1:s + 17] for s in starts])
    one = Trainer(_config(tokens_dir, tmp_path / "a", batch_size=8, grad_accum=1, grad_clip=0.0))
    four = Trainer(_config(tokens_dir, tmp_path / "b", batch_size=2, grad_accum=4, grad_clip=0.0))
    one.batches, four.batches = _FixedBatches(x, y, 8), _FixedBatches(x, y, 2)
    for t in (one, four):
        t.optimizer.param_groups[0]["weight_decay"] = 0.0
    w0 = _weights(one.model)
    assert all(np.array_equal(w0[k], v) for k, v in _weights(four.model).items())
    loss1, norm1, _ = one.train_step()
    loss4, norm4, _ = four.train_step()
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    assert norm4 == pytest.approx(norm1, rel=1e-4)
    # SGD-like first Adam step moves each weight by about lr * sign(g): compare the moves
    for k, v in _weights(one.model).items():
        np.testing.assert_allclose(_weights(four.model)[k] - w0[k], v - w0[k], atol=2e-5, err_msg=k)
    assert four.tokens_seen == one.tokens_seen == 8 * 16


def _global_norm(params):
    return math.sqrt(sum(float((np.asarray(p.grad, dtype=np.float64) ** 2).sum())
                         for p in params if p.grad is not None))


@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_gradients_are_clipped_before_the_optimizer_step(tokens_dir, tmp_path, clip):
    t = Trainer(_config(tokens_dir, tmp_path / "a", grad_clip=clip))
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    seen = []
    real_step = t.optimizer.step
    t.optimizer.step = lambda: (seen.append(_global_norm(params)), real_step())
    _, norm, _ = t.train_step()
    assert norm > 1e-2                               # the reported norm is the one before clipping
    if clip:
        assert seen[0] == pytest.approx(clip, rel=1e-3)
    else:
        assert seen[0] == pytest.approx(norm, rel=1e-5)


def test_weight_decay_groups_spare_biases_and_layernorm(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "a", weight_decay=0.25))
    groups = t.optimizer.param_groups
    assert groups[0]["weight_decay"] == 0.25 and all(p.ndim == 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups[1]["params"])


def test_bits_per_byte_divides_nats_by_decoded_bytes(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "a"))
    val = t.val_tokens
    res = t.evaluate(max_batches=3)
    assert t.model.training                     # evaluate() restores the mode
    nats, nbytes = 0.0, 0
    tok = t.tokenizer
    for x, y in data.eval_windows(val, 4, 16, max_batches=3):
        t.model.eval()
        _, loss = t.model(x, y)
        nats += float(loss.item()) * y.numel()
        nbytes += sum(len(tok.decode_bytes(row.tolist())) for row in np.asarray(y))
    assert res["tokens"] == 3 * 4 * 16
    assert res["loss"] == pytest.approx(nats / res["tokens"], rel=1e-6)
    assert res["bpb"] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(res["loss"]))


def test_training_lowers_the_validation_loss_and_logs_metrics(tokens_dir, tmp_path):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=30, eval_interval=0,
                        checkpoint_interval=0, log_interval=5, batch_size=8))
    start = t.evaluate(max_batches=2)["loss"]
    end = t.train()["loss"]
    assert end < start - 0.5
    recs = metrics.read_metrics(tmp_path / "run")
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20, 25, 30]
    for r in steps:
        assert set(r) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "threads", "elapsed"}
    evals = [r for r in recs if "val_loss" in r]
    assert len(evals) == 1 and evals[0]["val_bpb"] > 0 and evals[0]["step"] == 30


def test_config_from_json_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.01, "batch_size": 3, "model_args": {"context": 4}}))
    cfg = TrainConfig.from_json(path)
    assert cfg.lr == 0.01 and cfg.batch_size == 3 and cfg.model_args == {"context": 4}
    assert cfg.replace(lr=0.5).lr == 0.5
    path.write_text(json.dumps({"learning_rate": 0.01}))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_json(path)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).checked()
    args = build_parser().parse_args(["train", "--lr", "0.02", "--top-k", "none", "--model-args",
                                      '{"n_hidden": 8}', "--n-layer", "3"])
    assert (args.lr, args.top_k, args.model_args, args.n_layer) == (0.02, None, {"n_hidden": 8}, 3)
    assert not hasattr(args, "batch_size")           # unset flags leave the config alone
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--lr", "fast"])


def test_cli_train_then_resume(tokens_dir, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    opts = dict(TINY, data=tokens_dir, out_dir=str(tmp_path / "run"), batch_size=4, max_steps=4,
                eval_interval=0, final_eval_batches=1, eval_batches=1, progress="none",
                checkpoint_interval=2)
    cfg.write_text(json.dumps(opts))
    assert main(["train", "--config", str(cfg), "--max-steps", "2", "--lr-decay-steps", "4",
                 "--sample-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out and "sample" in out
    assert main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "4"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [2, 4]
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 1


def test_plot_writes_a_png_or_says_what_is_missing(tokens_dir, tmp_path, capsys):
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=3, checkpoint_interval=0))
    t.train()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["plot", str(tmp_path / "run")]) == 1
        assert "pip install matplotlib" in capsys.readouterr().err
        return
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "l.png")]) == 0
    with open(tmp_path / "l.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_new_run_refuses_a_folder_with_checkpoints(finished_run, tokens_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with pytest.raises(ValueError, match="--resume"):
        Trainer(_config(tokens_dir, run)).train()
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [3, 6]
