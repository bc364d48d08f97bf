"""Mutated files at the readers of token folders, run configs and checkpoints: each mutation
must end in a ValueError naming the problem (CheckpointError is one), a MemoryError (a config
asking for a model too large), or be read fine; never another exception, a crash or a hang. Bounded (fixed seeds, a few hundred mutations); set
MINILLM_FUZZ_ROUNDS (and MINILLM_FUZZ_SEED) for a longer run."""
import copy
import json
import os
import random
import shutil

import numpy as np
import pytest

from minillm import checkpoint, data
from minillm.tokenizers import BPETokenizer
from minillm.train import TrainConfig, Trainer
from minillm.utils import sha256_file

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")
TINY = dict(model="gpt-tiny", n_layer=1, n_head=2, n_embd=32, block_size=16)
ROUNDS = int(os.environ.get("MINILLM_FUZZ_ROUNDS", "40"))
SEED = int(os.environ.get("MINILLM_FUZZ_SEED", "0"))
ODD_VALUES = [None, True, False, 0, -1, 1, 2 ** 70, -2 ** 70, 1e308, -0.5, 0.5, float("nan"), "",
              "x", "uint64", [], [1, 2], {}, {"a": 1}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with open(SAMPLE, encoding="utf-8") as f:
        BPETokenizer().train(f.read(), 300).save(str(root / "tok"))
    data.prepare_tokens([SAMPLE], str(root / "tok"), root / "tokens", val_fraction=0.1)
    cfg = TrainConfig(data=str(root / "tokens"), out_dir=str(root / "run"), batch_size=2, max_steps=2,
                      warmup_steps=1, eval_interval=0, final_eval_batches=1, checkpoint_interval=2,
                      progress="none", seed=3, **TINY)
    Trainer(cfg).train()
    return root


def _paths(obj, prefix=()):
    """Every key path of a JSON value."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            yield from _paths(v, prefix + (i,))


def _mutate_json(obj, rng):
    """A copy of obj with one value replaced, one key dropped, or one key added."""
    obj = copy.deepcopy(obj)
    paths = [p for p in _paths(obj) if p]
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    action = rng.random()
    if action < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.3 and isinstance(parent, dict):
        parent["zz_" + str(rng.randrange(100))] = rng.choice(ODD_VALUES)
    else:
        parent[path[-1]] = rng.choice(ODD_VALUES)
    return obj


def _mutate_bytes(raw, rng):
    raw = bytearray(raw)
    action = rng.random()
    if action < 0.3 and raw:
        return bytes(raw[:rng.randrange(len(raw))])
    if action < 0.6 and raw:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    at = rng.randrange(len(raw) + 1)
    return bytes(raw[:at]) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + bytes(raw[at:])


def _write_json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, allow_nan=True))


def _reseal(folder):
    """Rewrite a checkpoint's manifest so that mutated files pass it (the parsers get them)."""
    mpath = os.path.join(folder, checkpoint.MANIFEST)
    files = json.load(open(mpath))["files"]
    for name in files:
        p = os.path.join(folder, name)
        files[name] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
    _write_json(mpath, {"files": files})


def _only_value_errors(fn):
    try:
        fn()
    except (ValueError, MemoryError):       # MemoryError: a config asking for a huge model
        pass


def test_mutated_token_folders_give_value_errors(world, tmp_path):
    rng = random.Random(SEED + 1)
    meta = json.load(open(world / "tokens" / "meta.json"))
    for i in range(ROUNDS):
        folder = tmp_path / f"t{i}"
        shutil.copytree(world / "tokens", folder)
        if i % 3 == 2:
            path = folder / "train.bin"
            path.write_bytes(_mutate_bytes(path.read_bytes(), rng))
        else:
            _write_json(folder / "meta.json", _mutate_json(meta, rng))

        def read():
            td = data.TokenData(folder)
            for split in td.meta["splits"]:
                td.check_ids(split)
            Trainer(TrainConfig(data=str(folder), out_dir=str(tmp_path / f"r{i}"), batch_size=2,
                                max_steps=0, progress="none", **TINY))
        _only_value_errors(read)
        shutil.rmtree(folder)


def test_mutated_checkpoints_give_value_errors(world, tmp_path):
    rng = random.Random(SEED + 2)
    run = world / "run"
    step = os.path.relpath(checkpoint.find_checkpoint(run), run)
    for i in range(ROUNDS):
        copy_ = tmp_path / f"run{i}"
        shutil.copytree(run, copy_)
        folder = copy_ / step
        name = rng.choice(["config.json", "trainer_state.json", "manifest.json", "manifest.json",
                           "model.safetensors", "optimizer.safetensors", "tokenizer.json"])
        path = folder / name
        if name.endswith(".json") and rng.random() < 0.7:
            _write_json(path, _mutate_json(json.load(open(path)), rng))
        else:
            path.write_bytes(_mutate_bytes(path.read_bytes(), rng))
        if name != "manifest.json" and rng.random() < 0.7:
            _reseal(folder)     # past the manifest: the file's own reader must cope
        _only_value_errors(lambda: checkpoint.load_model(str(copy_)))
        _only_value_errors(lambda: Trainer.resume(str(copy_)))
        shutil.rmtree(copy_)


def test_mutated_config_files_give_value_errors(tmp_path):
    rng = random.Random(SEED + 3)
    base = TrainConfig(data="tokens", **TINY).to_dict()
    for i in range(ROUNDS * 3):
        path = tmp_path / f"c{i}.json"
        if i % 4 == 3:
            path.write_bytes(_mutate_bytes(json.dumps(base).encode(), rng))
        else:
            _write_json(path, _mutate_json(base, rng))
        _only_value_errors(lambda: TrainConfig.from_json(str(path)))


def test_token_ids_past_the_vocabulary_anywhere_are_found(world, tmp_path):
    rng = np.random.default_rng(SEED + 4)
    for i in range(10):
        folder = tmp_path / f"t{i}"
        shutil.copytree(world / "tokens", folder)
        ids = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r+")
        at = int(rng.integers(len(ids)))
        ids[at] = int(rng.integers(300, 65536))
        ids.flush()
        del ids
        with pytest.raises(ValueError, match=f"token {at:,} is id"):
            data.TokenData(folder).check_ids("train", chunk=int(rng.integers(1, 5000)))
