"""The checkpoint folder (minillm/checkpoint.py): every load verifies the manifest (the CLI's
included), runs are found by step, the optimizer state has one flat layout (optim's)."""
import json
import os

import numpy as np
import pytest

from minillm import checkpoint, data, io
from minillm.cli import main
from minillm.tokenizers import BPETokenizer
from minillm.train import TrainConfig, Trainer
from minillm.utils import sha256_file

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-checkpoint run of a tiny GPT (steps 2 and 4)."""
    root = tmp_path_factory.mktemp("ckpt")
    with open(SAMPLE, encoding="utf-8") as f:
        BPETokenizer().train(f.read(), 300).save(str(root / "tok"))
    data.prepare_tokens([SAMPLE], str(root / "tok"), root / "tokens", val_fraction=0.1)
    cfg = TrainConfig(data=str(root / "tokens"), out_dir=str(root / "run"), model="gpt-tiny", n_layer=1,
                      n_embd=32, block_size=16, batch_size=2, max_steps=4, warmup_steps=1,
                      eval_interval=0, final_eval_batches=1, checkpoint_interval=2, keep_checkpoints=5,
                      progress="none", seed=3)
    Trainer(cfg).train()
    return str(root / "run")


def _copy_run(run, dest):
    import shutil
    shutil.copytree(run, dest)
    return str(dest)


def test_sample_from_a_checkpoint_with_a_flipped_byte_fails_naming_the_file(run, tmp_path, capsys):
    bad = _copy_run(run, tmp_path / "run")
    weights = os.path.join(checkpoint.find_checkpoint(bad), "model.safetensors")
    raw = bytearray(open(weights, "rb").read())
    raw[len(raw) // 2] ^= 0x01                      # one bit of one weight, the size unchanged
    with open(weights, "wb") as f:
        f.write(raw)
    assert main(["sample", "--ckpt", bad, "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err and "sha256" in err, err


def test_sample_from_a_good_checkpoint_runs(run, capsys):
    assert main(["sample", "--ckpt", run, "--max-new-tokens", "3", "--prompt", "the"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_find_checkpoint_latest_and_by_step(run):
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2, 4]
    assert checkpoint.find_checkpoint(run) == checkpoint.checkpoint_folder(run, 4)
    assert checkpoint.find_checkpoint(run, step=2) == checkpoint.checkpoint_folder(run, 2)
    with pytest.raises(ValueError, match=r"no checkpoint of step 3 \(has steps \[2, 4\]\)"):
        checkpoint.find_checkpoint(run, step=3)


def test_load_model_gives_the_saved_weights_and_tokenizer(run):
    folder = checkpoint.find_checkpoint(run, step=2)
    model = checkpoint.load_model(run, step=2)
    saved = io.load(os.path.join(folder, "model.safetensors"))
    for name, t in model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(t), np.asarray(saved[name]))
    assert not model.training and model.tokenizer.vocab_size == 300


def test_optimizer_state_is_optims_flat_layout_and_old_metadata_still_reads(run, tmp_path):
    folder = _copy_run(checkpoint.find_checkpoint(run), tmp_path / "step")
    path = os.path.join(folder, "optimizer.safetensors")
    tensors, meta = io.load(path, mmap=False), io.load_metadata(path)
    flat = json.loads(meta["optimizer"])
    assert set(flat) == {"steps", "param_groups"} and all(k.startswith("state.") for k in tensors)
    new = checkpoint.load_checkpoint(folder)["optimizer"]
    # the layout written before: "param_groups" and "steps" as two metadata strings
    io.save(tensors, path, metadata={"param_groups": json.dumps(flat["param_groups"]),
                                     "steps": json.dumps(flat["steps"])})
    with open(os.path.join(folder, checkpoint.MANIFEST)) as f:
        manifest = json.load(f)
    manifest["files"]["optimizer.safetensors"] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    with open(os.path.join(folder, checkpoint.MANIFEST), "w") as f:
        json.dump(manifest, f)
    old = checkpoint.load_checkpoint(folder)["optimizer"]
    assert old["param_groups"] == new["param_groups"] and sorted(old["state"]) == sorted(new["state"])
    for i, st in new["state"].items():
        assert old["state"][i]["step"] == st["step"] > 0
        for k, v in st.items():
            if k != "step":
                np.testing.assert_array_equal(np.asarray(old["state"][i][k]), np.asarray(v))
