"""Nothing a user does loses their work: data prepare replaces only its own folders, a run checks
its data before step 1 and saves before reporting a later error, one trainer per run folder (an
OS lock that kill -9 does not leave behind), temporaries of killed writers are removed, resume
refuses options and data that do not fit the checkpoint, --extend-steps continues at the final
learning rate. Processes are real: killed with SIGKILL at a pause point (MINILLM_PAUSE_AT)."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from minillm import checkpoint, data, optim
from minillm.tokenizers import BasicTokenizer, BPETokenizer
from minillm.train import TrainConfig, Trainer, resumed_config
from minillm.utils import FolderLock, process_tag, tag_alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "sample.txt")
TINY = dict(model="gpt-tiny", n_layer=1, n_head=2, n_embd=32, block_size=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    BPETokenizer().train(text, 300).save(str(root / "tok"))
    data.prepare_tokens([SAMPLE], str(root / "tok"), root / "tokens", val_fraction=0.1)
    return {"root": str(root), "tok": str(root / "tok"), "tokens": str(root / "tokens")}


def _config(tokens, out_dir, **kw):
    opts = dict(TINY, data=tokens, out_dir=str(out_dir), batch_size=2, max_steps=4, warmup_steps=1,
                eval_interval=0, eval_batches=1, final_eval_batches=1, log_interval=1,
                checkpoint_interval=2, keep_checkpoints=5, progress="none", seed=5)
    opts.update(kw)
    return TrainConfig(**opts)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, MINILLM_NUM_THREADS="1")
    env.pop("MINILLM_PAUSE_AT", None)
    env.update(extra)
    return env


def _start_paused(argv, point, cwd):
    """A `python -m minillm argv` process stopped at pause point `point` (waits for it)."""
    p = subprocess.Popen([sys.executable, "-m", "minillm", *argv], cwd=cwd, env=_env(MINILLM_PAUSE_AT=point),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if f"paused at {point}" not in line:
        p.kill()
        raise AssertionError(f"the process did not reach {point}: {line}{p.stderr.read()}")
    return p


def _cli(argv, cwd, **env):
    p = subprocess.run([sys.executable, "-m", "minillm", *argv], cwd=cwd, env=_env(**env),
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def _train_argv(tokens, out_dir, *more):
    return ["train", "--data", tokens, "--out-dir", str(out_dir), "--model", "gpt-tiny", "--n-layer", "1",
            "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "2",
            "--warmup-steps", "1", "--eval-interval", "0", "--final-eval-batches", "1", "--quiet", *more]


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


# ---------------------------------------------------------------------- data prepare
def test_prepare_replaces_its_own_folder_and_nothing_else(corpus, tmp_path):
    out = tmp_path / "tokens"
    data.prepare_tokens([SAMPLE], corpus["tok"], out)
    first = (out / "train.bin").read_bytes()
    data.prepare_tokens([SAMPLE], corpus["tok"], out, val_fraction=0.5)    # its own: replaced
    assert (out / "train.bin").read_bytes() != first
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="my_notes.txt"):
        data.prepare_tokens([SAMPLE], corpus["tok"], out)
    assert (out / "my_notes.txt").read_text() == "mine"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError, match="not made by `minillm data prepare`"):
        data.prepare_tokens([SAMPLE], corpus["tok"], other)
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8\xff"
    empty = tmp_path / "empty"
    empty.mkdir()
    data.prepare_tokens([SAMPLE], corpus["tok"], empty)                     # an empty folder is fine
    assert data.is_token_folder(empty)


def test_binary_files_inside_folders_are_skipped_and_listed(corpus, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    shutil.copy(SAMPLE, texts / "a.txt")
    (texts / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (texts / "c.txt").write_bytes("caf\u00e9 ".encode("latin-1") * 10)      # not UTF-8
    meta = data.prepare_tokens([str(texts)], corpus["tok"], tmp_path / "out")
    skipped = {os.path.basename(s["path"]): s["reason"] for s in meta["skipped"]}
    assert set(skipped) == {"b.png", "c.txt"}
    assert "NUL" in skipped["b.png"] and "UTF-8" in skipped["c.txt"]
    assert meta["inputs"] == [str(texts / "a.txt")]
    code, _, err = _cli(["data", "prepare", "--input", str(texts), "--tokenizer", corpus["tok"],
                         "--out", str(tmp_path / "out"), "--quiet"], cwd=str(tmp_path))
    assert code == 0 and "skipped" in err and "b.png" in err


def test_a_token_folder_inside_an_input_folder_is_not_read_as_input(corpus, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    shutil.copy(SAMPLE, texts / "a.txt")
    m1 = data.prepare_tokens([str(texts)], corpus["tok"], texts / "tokens")
    m2 = data.prepare_tokens([str(texts)], corpus["tok"], texts / "tokens")   # again, same folder
    assert m1["inputs"] == m2["inputs"] == [str(texts / "a.txt")]
    assert m1["splits"] == m2["splits"]


def test_kill_9_during_prepare_leaves_a_temporary_the_next_prepare_removes(corpus, tmp_path):
    argv = ["data", "prepare", "--input", SAMPLE, "--tokenizer", corpus["tok"], "--out",
            str(tmp_path / "tokens"), "--chunk-mb", "0.01", "--quiet"]
    p = _start_paused(argv, "data-prepare", str(tmp_path))
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    left = _hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(".tokens.") and left[0].endswith(".tmp"), left
    # a live writer's temporary is left alone; the dead one's goes
    live = tmp_path / f".tokens.{process_tag()}.tmp"
    live.mkdir()
    code, _, err = _cli(argv, cwd=str(tmp_path))
    assert code == 0, err
    assert _hidden(tmp_path) == [live.name]
    assert data.is_token_folder(tmp_path / "tokens")


def test_ctrl_c_during_prepare_exits_130_and_leaves_nothing(corpus, tmp_path):
    argv = ["data", "prepare", "--input", SAMPLE, "--tokenizer", corpus["tok"], "--out",
            str(tmp_path / "tokens"), "--chunk-mb", "0.01", "--quiet"]
    p = _start_paused(argv, "data-prepare", str(tmp_path))
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait() == 130
    assert err.strip().splitlines() == ["minillm: error: interrupted (Ctrl-C)"], err
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_tokenizer_training_exits_130(tmp_path):
    p = _start_paused(["tokenizer", "train", "--input", SAMPLE, "--vocab-size", "300", "--out",
                       str(tmp_path / "tok")], "tokenizer-train", str(tmp_path))
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait() == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_training_a_tokenizer_on_no_text_fails_clearly():
    for text in ("", "  \n\t "):
        with pytest.raises(ValueError, match="no text"):
            BPETokenizer().train(text, 300)
        with pytest.raises(ValueError, match="no text"):
            BasicTokenizer().train(text, 30)
    with pytest.raises(ValueError, match="no text"):
        BPETokenizer().train(iter(["", " "]), 300)


# ---------------------------------------------------------------------- checks before step 1
def test_val_split_shorter_than_a_window_is_refused_before_training(corpus, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("the end\n")
    tokens = tmp_path / "tokens"
    data.prepare_tokens([SAMPLE], corpus["tok"], tokens, val_inputs=[str(val)])
    with pytest.raises(ValueError, match=r"val.bin: \d+ tokens cannot fill one window of block_size 16"):
        Trainer(_config(str(tokens), tmp_path / "run"))
    assert checkpoint.list_checkpoints(tmp_path / "run") == []


def test_an_empty_val_split_means_no_validation(corpus, tmp_path):
    tokens = tmp_path / "tokens"
    data.prepare_tokens([SAMPLE], corpus["tok"], tokens, val_fraction=0.0)
    t = Trainer(_config(str(tokens), tmp_path / "run", max_steps=2))
    assert t.val_tokens is None and t.train() is None
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [2]


def test_ids_outside_the_vocabulary_are_named_by_file_and_position(corpus, tmp_path):
    tokens = tmp_path / "tokens"
    shutil.copytree(corpus["tokens"], tokens)
    ids = np.memmap(tokens / "val.bin", dtype=np.uint16, mode="r+")
    ids[77] = 300
    ids.flush()
    del ids
    with pytest.raises(ValueError, match=r"val.bin: token 77 is id 300, outside the vocabulary of 300"):
        Trainer(_config(str(tokens), tmp_path / "run"))


def test_a_swapped_tokenizer_in_a_token_folder_is_refused(corpus, tmp_path):
    tokens = tmp_path / "tokens"
    shutil.copytree(corpus["tokens"], tokens)
    shutil.rmtree(tokens / "tokenizer")
    with open(SAMPLE, encoding="utf-8") as f:
        BPETokenizer().train(f.read()[::-1], 300).save(str(tokens / "tokenizer"))
    with pytest.raises(ValueError, match="is not the tokenizer these tokens were made with"):
        Trainer(_config(str(tokens), tmp_path / "run"))


def test_an_error_after_training_started_saves_the_steps_first(corpus, tmp_path):
    t = Trainer(_config(corpus["tokens"], tmp_path / "run", max_steps=5, checkpoint_interval=0))

    def broken_eval(max_batches=-1):
        raise OSError("disk full while evaluating")
    t.evaluate = broken_eval
    with pytest.raises(OSError, match=r"disk full while evaluating; saved a checkpoint of step 5 first"):
        t.train()
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [5]
    resumed = Trainer.resume(str(tmp_path / "run"))
    assert resumed.step == 5


def test_a_nan_loss_stops_before_the_weights_and_saves_the_last_good_step(corpus, tmp_path):
    t = Trainer(_config(corpus["tokens"], tmp_path / "run", max_steps=6, checkpoint_interval=0))
    forward = t.model.forward

    def nan_at_step_4(idx, targets=None, **kw):
        logits, loss = forward(idx, targets, **kw)
        if t.step == 3 and loss is not None:
            loss = loss * float("nan")
        return logits, loss
    t.model.forward = nan_at_step_4
    with pytest.raises(FloatingPointError, match=r"step 4: the loss is nan; the weights were not updated"):
        t.train()
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [3]
    assert all(np.isfinite(np.asarray(p)).all() for p in t.model.parameters())
    # the saved state is the one after step 3: resuming draws the batch step 4 would have drawn
    clean = Trainer(_config(corpus["tokens"], tmp_path / "clean", max_steps=6, checkpoint_interval=0))
    clean.train()
    resumed = Trainer.resume(str(tmp_path / "run"))
    resumed.train()
    for k, v in clean.model.state_dict().items():
        assert np.array_equal(np.asarray(v), np.asarray(resumed.model.state_dict()[k])), k


# ---------------------------------------------------------------------- resume
def test_resume_names_each_changed_option_with_both_values(corpus, tmp_path):
    Trainer(_config(corpus["tokens"], tmp_path / "run")).train()
    run = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"n_layer 1 \(now 2\), n_embd 32 \(now 64\)"):
        Trainer.resume(run, n_embd=64, n_layer=2)
    with pytest.raises(ValueError, match=r"batch_size 2 \(now 4\), lr 0.001 \(now 0.01\).*--allow-changes"):
        Trainer.resume(run, lr=0.01, batch_size=4)
    with pytest.raises(ValueError, match=r"max_steps 4 -> 6 moves the end of the learning-rate cosine"
                                         r".*--extend-steps 2"):
        Trainer.resume(run, max_steps=6)
    t = Trainer.resume(run, eval_interval=1, keep_checkpoints=3, log_interval=2)    # free to change
    assert t.config.eval_interval == 1 and t.changes
    t = Trainer.resume(run, lr=0.002, allow_changes=True)
    assert t.config.lr == 0.002 and t.changes == [("lr", 0.001, 0.002)]
    t.config = t.config.replace(max_steps=5, lr_decay_steps=4)
    t.train()
    saved = json.load(open(os.path.join(checkpoint.find_checkpoint(run), "config.json")))
    assert saved["train"]["lr"] == 0.002        # the config on disk is the one the weights had


def test_resume_on_data_of_another_tokenizer_is_refused(corpus, tmp_path):
    Trainer(_config(corpus["tokens"], tmp_path / "run")).train()
    with open(SAMPLE, encoding="utf-8") as f:
        BPETokenizer().train(f.read()[::-1], 300).save(str(tmp_path / "tok2"))
    data.prepare_tokens([SAMPLE], str(tmp_path / "tok2"), tmp_path / "tokens2")
    with pytest.raises(ValueError, match="was tokenized with another tokenizer than the run"):
        Trainer.resume(str(tmp_path / "run"), data=str(tmp_path / "tokens2"))
    moved = tmp_path / "moved"                  # the same tokens elsewhere: fine
    shutil.copytree(corpus["tokens"], moved)
    assert Trainer.resume(str(tmp_path / "run"), data=str(moved)).step == 4


def test_extend_steps_continues_a_finished_run_at_the_final_learning_rate(corpus, tmp_path):
    cfg = _config(corpus["tokens"], tmp_path / "run", max_steps=6, lr=3e-3, min_lr=3e-4)
    Trainer(cfg).train()
    t = Trainer.resume(str(tmp_path / "run"), extend_steps=3)
    assert t.config.max_steps == 9 and t.config.lr_decay_steps == 6
    lrs = []
    step = t.train_step
    t.train_step = lambda: (lambda r: (lrs.append(r[2]), r)[1])(step())
    t.train()
    assert lrs == [3e-4] * 3
    # the extended run is a fixed schedule now: resuming it later is exact again
    assert resumed_config(json.load(open(os.path.join(checkpoint.find_checkpoint(tmp_path / "run"),
                                                      "config.json")))["train"], {})[1] == []
    # what it is not: the from-scratch 9-step run, whose cosine decays more slowly
    longer = [optim.cosine_with_warmup(s, 3e-3, 1, 9, 3e-4) for s in range(6, 9)]
    assert all(a > 3e-4 for a in longer[:-1])
    with pytest.raises(ValueError, match="not both"):
        Trainer.resume(str(tmp_path / "run"), extend_steps=1, max_steps=20)


def test_resume_to_the_same_max_steps_is_bitwise_exact_with_a_fixed_decay(corpus, tmp_path):
    # with lr_decay_steps set, max_steps may grow on resume: equal to a from-scratch run
    full = Trainer(_config(corpus["tokens"], tmp_path / "full", max_steps=6, lr_decay_steps=6))
    full.train()
    Trainer(_config(corpus["tokens"], tmp_path / "part", max_steps=3, lr_decay_steps=6)).train()
    resumed = Trainer.resume(str(tmp_path / "part"), max_steps=6)
    resumed.train()
    for k, v in full.model.state_dict().items():
        assert np.array_equal(np.asarray(v), np.asarray(resumed.model.state_dict()[k])), k


# ---------------------------------------------------------------------- two writers, leaks
def test_a_second_trainer_on_a_busy_run_folder_is_refused_naming_the_pid(corpus, tmp_path):
    run = tmp_path / "run"
    first = _start_paused(_train_argv(corpus["tokens"], run, "--max-steps", "4", "--checkpoint-interval", "2"),
                          "checkpoint", str(tmp_path))
    try:
        for argv in (_train_argv(corpus["tokens"], run, "--max-steps", "4"), ["train", "--resume", str(run)]):
            code, _, err = _cli(argv, cwd=str(tmp_path))
            assert code == 1, err
            assert err.strip().splitlines() == [err.strip()]
            assert f"in use by process {first.pid}" in err, err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
    # the killed trainer left a temporary checkpoint but no lock: a resume may start, and it
    # removes the temporary (no checkpoint was completed, so this is a fresh run's folder)
    ck = run / "checkpoints"
    assert [n for n in os.listdir(ck) if n.startswith(".tmp-step_0000002-")], os.listdir(ck)
    code, _, err = _cli(_train_argv(corpus["tokens"], run, "--max-steps", "4", "--checkpoint-interval", "2"),
                        cwd=str(tmp_path))
    assert code == 0, err
    assert sorted(os.listdir(ck)) == ["step_0000002", "step_0000004"]


def test_kill_9_during_a_resumed_save_leaves_nothing_after_the_next_resume(corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(corpus["tokens"], run, max_steps=2, lr_decay_steps=8)).train()
    p = _start_paused(["train", "--resume", str(run), "--max-steps", "4", "--quiet"], "checkpoint", str(tmp_path))
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    ck = run / "checkpoints"
    assert len(_hidden(ck)) == 1
    code, _, err = _cli(["train", "--resume", str(run), "--max-steps", "4", "--quiet"], cwd=str(tmp_path))
    assert code == 0, err
    assert _hidden(ck) == [] and sorted(os.listdir(ck)) == ["step_0000002", "step_0000004"]


def test_stale_temporaries_are_told_apart_from_live_ones(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {f".tmp-step_0000002-{dead.pid}": False,        # old-style name, writer gone
             f".tmp-step_0000004-{process_tag()}": True,    # this process: alive
             f".tmp-step_0000006-{os.getpid()}-1": False,   # our pid, another start time: reused pid
             f".old-step_0000008-{dead.pid}-5": False}      # a parked old checkpoint: goes back
    for n in names:
        (ck / n).mkdir()
    assert tag_alive(process_tag()) and not tag_alive(f"{dead.pid}")
    checkpoint.remove_stale_temporaries(str(ck))
    assert sorted(os.listdir(ck)) == sorted([n for n, keep in names.items() if keep] + ["step_0000008"])


def test_the_lock_is_per_process_and_dropped_on_release(tmp_path):
    path = str(tmp_path / ".lock")
    a = FolderLock(path, "run folder x").acquire()
    b = FolderLock(path, "run folder x").acquire()      # the same process: counted, not refused
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from minillm.utils import FolderLock, FolderBusyError\n"
            "try:\n    FolderLock(%r, 'run folder x').acquire()\nexcept FolderBusyError as e:\n"
            "    print(e)\n" % (ROOT, path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert f"in use by process {os.getpid()}" in out
    a.release()
    b.release()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out == ""


def test_ctrl_c_during_training_saves_and_exits_130(corpus, tmp_path):
    run = tmp_path / "run"
    argv = _train_argv(corpus["tokens"], run, "--max-steps", "100000", "--checkpoint-interval", "0",
                       "--progress", "log", "--log-interval", "1")
    argv.remove("--quiet")
    p = subprocess.Popen([sys.executable, "-m", "minillm", *argv], cwd=str(tmp_path), env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.lstrip().startswith("step"):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted at step" in out
    steps = [s for s, _ in checkpoint.list_checkpoints(run)]
    assert len(steps) == 1 and steps[0] >= 1
