"""Bad input on the command line: every case runs `python -m minillm ...` in a subprocess and
must end with exactly one line on stderr (`minillm: error: ...` naming the value), a non-zero
exit status (2 for bad usage, 1 for a failure at run time) and no traceback; where a case could
destroy or lose something, the check after it looks.

The table CASES is the list of bad inputs tried; build_world() makes the files they use."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "sample.txt")
TINY = dict(model="gpt-tiny", n_layer=1, n_head=2, n_embd=32, block_size=16)


def build_world(root):
    """The files the cases use, under `root` (a str): tokenizers, token folders good and bad, a
    finished run, damaged checkpoints, texts. Returns {name: path}."""
    from minillm import data
    from minillm.tokenizers import BPETokenizer
    from minillm.train import TrainConfig, Trainer
    w = {"root": root}

    def path(*parts):
        return os.path.join(root, *parts)
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    w["tok"] = path("tok")
    BPETokenizer().train(text, 300).save(w["tok"])
    w["tok_other"] = path("tok_other")
    BPETokenizer().train(text[::-1], 300).save(w["tok_other"])
    w["tokens"] = path("tokens")
    data.prepare_tokens([SAMPLE], w["tok"], w["tokens"], val_fraction=0.1)
    w["tokens_other"] = path("tokens_other")
    data.prepare_tokens([SAMPLE], w["tok_other"], w["tokens_other"], val_fraction=0.1)
    # texts: a folder of inputs the user cares about, an empty file, a binary file
    w["texts"] = path("texts")
    os.makedirs(w["texts"])
    shutil.copy(SAMPLE, os.path.join(w["texts"], "a.txt"))
    w["empty"] = path("empty.txt")
    open(w["empty"], "w").close()
    w["blank"] = path("blank.txt")
    with open(w["blank"], "w") as f:
        f.write(" \n\t\n   \n")
    w["binary"] = path("blob.bin")
    with open(w["binary"], "wb") as f:
        f.write(bytes(range(256)) * 8)
    w["unrelated"] = path("unrelated")
    os.makedirs(w["unrelated"])
    with open(os.path.join(w["unrelated"], "notes.md"), "w") as f:
        f.write("my notes\n")
    w["cwd"] = path("cwd")
    os.makedirs(w["cwd"])
    with open(os.path.join(w["cwd"], "keep.txt"), "w") as f:
        f.write("keep me\n")
    # a validation split shorter than one window of block_size 16
    w["short_val"] = path("short_val.txt")
    with open(w["short_val"], "w") as f:
        f.write("the end\n")
    w["tokens_short_val"] = path("tokens_short_val")
    data.prepare_tokens([SAMPLE], w["tok"], w["tokens_short_val"], val_inputs=[w["short_val"]])
    # a token file with an id the vocabulary does not have, one cut short
    w["tokens_bad_id"] = path("tokens_bad_id")
    shutil.copytree(w["tokens"], w["tokens_bad_id"])
    ids = np.memmap(os.path.join(w["tokens_bad_id"], "train.bin"), dtype=np.uint16, mode="r+")
    ids[1234] = 60000
    ids.flush()
    del ids
    w["tokens_truncated"] = path("tokens_truncated")
    shutil.copytree(w["tokens"], w["tokens_truncated"])
    with open(os.path.join(w["tokens_truncated"], "train.bin"), "r+b") as f:
        f.truncate(1001)
    # configs
    w["cfg_bad_json"] = path("bad.json")
    with open(w["cfg_bad_json"], "w") as f:
        f.write('{"lr": 0.001,,}')
    w["cfg_list"] = path("list.json")
    with open(w["cfg_list"], "w") as f:
        f.write("[1, 2]")
    w["cfg_unknown"] = path("unknown.json")
    with open(w["cfg_unknown"], "w") as f:
        json.dump({"learning_rate": 0.1}, f)
    w["tok_corrupt"] = path("tok_corrupt")
    shutil.copytree(w["tok"], w["tok_corrupt"])
    tj = os.path.join(w["tok_corrupt"], "tokenizer.json")
    with open(tj, "rb") as f:
        raw = f.read()
    with open(tj, "wb") as f:
        f.write(raw[: len(raw) // 2])
    for name in ("vocab.json", "merges.txt"):
        if os.path.exists(os.path.join(w["tok_corrupt"], name)):
            os.remove(os.path.join(w["tok_corrupt"], name))
    # a finished run (steps 2 and 4) and damaged copies of it
    w["run"] = path("run")
    cfg = TrainConfig(data=w["tokens"], out_dir=w["run"], batch_size=2, max_steps=4, warmup_steps=1,
                      eval_interval=0, eval_batches=1, final_eval_batches=1, checkpoint_interval=2,
                      keep_checkpoints=5, progress="none", seed=3, **TINY)
    Trainer(cfg).train()
    step4 = os.path.join("checkpoints", "step_0000004")
    w["run_flipped"] = path("run_flipped")
    shutil.copytree(w["run"], w["run_flipped"])
    weights = os.path.join(w["run_flipped"], step4, "model.safetensors")
    raw = bytearray(open(weights, "rb").read())
    raw[len(raw) // 2] ^= 0x10
    with open(weights, "wb") as f:
        f.write(raw)
    w["run_bad_manifest"] = path("run_bad_manifest")
    shutil.copytree(w["run"], w["run_bad_manifest"])
    with open(os.path.join(w["run_bad_manifest"], step4, "manifest.json"), "w") as f:
        f.write('{"files": {"config.json": ')
    w["run_no_manifest"] = path("run_no_manifest")
    shutil.copytree(w["run"], w["run_no_manifest"])
    os.remove(os.path.join(w["run_no_manifest"], step4, "manifest.json"))
    w["cfg_bad_type"] = path("bad_type.json")
    with open(w["cfg_bad_type"], "w") as f:
        json.dump({"lr": "fast"}, f)
    w["tokens_bad_meta"] = path("tokens_bad_meta")
    shutil.copytree(w["tokens"], w["tokens_bad_meta"])
    with open(os.path.join(w["tokens_bad_meta"], "meta.json"), "w") as f:
        json.dump({"format": "minillm-tokens", "dtype": "uint16"}, f)
    w["a_file"] = path("a_file.txt")
    with open(w["a_file"], "w") as f:
        f.write("not a folder\n")
    return w


# (id, command line with {name} placeholders from build_world, expected exit status)
CASES = [
    # usage
    ("no command", "", 2),
    ("unknown command", "frobnicate", 2),
    ("unknown flag", "train --no-such-flag 1", 2),
    # data prepare
    ("prepare --out the input folder", "data prepare --input {texts} --tokenizer {tok} --out {texts}", 2),
    ("prepare --out an unrelated folder",
     "data prepare --input {texts} --tokenizer {tok} --out {unrelated}", 2),
    ("prepare --out .", "data prepare --input {texts} --tokenizer {tok} --out .", 2),
    ("prepare --out a file", "data prepare --input {texts} --tokenizer {tok} --out {a_file}", 2),
    ("prepare --out a folder holding the input",
     "data prepare --input {texts}/a.txt --tokenizer {tok} --out {root}", 2),
    ("prepare missing input", "data prepare --input {root}/nope.txt --tokenizer {tok} --out {root}/t1", 1),
    ("prepare a binary file", "data prepare --input {binary} --tokenizer {tok} --out {root}/t2", 1),
    ("prepare an empty file", "data prepare --input {empty} --tokenizer {tok} --out {root}/t3", 1),
    ("prepare corrupt tokenizer.json",
     "data prepare --input {texts} --tokenizer {tok_corrupt} --out {root}/t4", 1),
    ("prepare missing --val-input", "data prepare --input {texts} --val-input {root}/nope.txt --tokenizer {tok} "
                                    "--out {root}/t7", 1),
    ("prepare missing tokenizer", "data prepare --input {texts} --tokenizer {root}/nope --out {root}/t5", 1),
    ("prepare --val-fraction nan", "data prepare --input {texts} --tokenizer {tok} --out {root}/t6 "
                                   "--val-fraction nan", 2),
    ("prepare --val-fraction 2", "data prepare --input {texts} --tokenizer {tok} --out {root}/t6 "
                                 "--val-fraction 2", 2),
    ("prepare --chunk-mb 0", "data prepare --input {texts} --tokenizer {tok} --out {root}/t6 --chunk-mb 0", 2),
    ("prepare --chunk-mb nan", "data prepare --input {texts} --tokenizer {tok} --out {root}/t6 "
                               "--chunk-mb nan", 2),
    ("prepare --chunk-mb 1e30", "data prepare --input {texts} --tokenizer {tok} --out {root}/t6 "
                                "--chunk-mb 1e30", 2),
    ("prepare --threads -1", "data prepare --input {texts} --tokenizer {tok} --out {root}/t6 --threads -1", 2),
    # tokenizer
    ("tokenizer train on an empty file", "tokenizer train --input {empty} --vocab-size 300 --out {root}/k1", 1),
    ("tokenizer train on whitespace", "tokenizer train --input {blank} --vocab-size 300 --out {root}/k2", 1),
    ("basic tokenizer train on an empty file",
     "tokenizer train --type basic --input {empty} --vocab-size 30 --out {root}/k3", 1),
    ("tokenizer train missing input", "tokenizer train --input {root}/nope --vocab-size 300 --out {root}/k4", 1),
    ("tokenizer train binary input", "tokenizer train --input {binary} --vocab-size 300 --out {root}/k4", 1),
    ("tokenizer train --vocab-size -5", "tokenizer train --input {texts}/a.txt --vocab-size -5 --out {root}/k5", 2),
    ("tokenizer train --vocab-size 10**18",
     "tokenizer train --input {texts}/a.txt --vocab-size 1000000000000000000 --out {root}/k6", 2),
    ("tokenizer train --threads 0", "tokenizer train --input {texts}/a.txt --vocab-size 300 --out {root}/k7 "
                                    "--threads 0", 2),
    ("tokenizer train --out a file", "tokenizer train --input {texts}/a.txt --vocab-size 300 --out {a_file}", 2),
    ("tokenizer train --out a folder of other files",
     "tokenizer train --input {texts}/a.txt --vocab-size 300 --out {unrelated}", 2),
    ("tokenizer encode corrupt tokenizer.json", "tokenizer encode --tokenizer {tok_corrupt} --text hi", 1),
    ("tokenizer encode missing input", "tokenizer encode --tokenizer {tok} --input {root}/nope.txt", 1),
    ("tokenizer decode non-integer", "tokenizer decode --tokenizer {tok} --ids '1 x'", 1),
    ("tokenizer decode id out of range", "tokenizer decode --tokenizer {tok} --ids 99999", 1),
    ("tokenizer decode negative id", "tokenizer decode --tokenizer {tok} --ids=-1", 1),
    ("tokenizer decode id 10**30", "tokenizer decode --tokenizer {tok} --ids 1000000000000000000000000000000", 1),
    # train: options
    ("train without data", "train --out-dir {root}/r1 --max-steps 1", 1),
    ("train missing data", "train --data {root}/nope --out-dir {root}/r1", 1),
    ("train --config missing", "train --config {root}/nope.json", 1),
    ("train --config bad JSON", "train --config {cfg_bad_json}", 1),
    ("train --config a JSON list", "train --config {cfg_list}", 1),
    ("train --config unknown option", "train --config {cfg_unknown}", 1),
    ("train --config a value of the wrong type", "train --config {cfg_bad_type}", 1),
    ("train --lr nan", "train --data {tokens} --out-dir {root}/r1 --lr nan", 2),
    ("train --lr -1", "train --data {tokens} --out-dir {root}/r1 --lr -1", 2),
    ("train --max-steps -1", "train --data {tokens} --out-dir {root}/r1 --max-steps -1", 2),
    ("train --batch-size 0", "train --data {tokens} --out-dir {root}/r1 --batch-size 0", 2),
    ("train --batch-size 10**12", "train --data {tokens} --out-dir {root}/r1 --batch-size 1000000000000 "
                                  "--model gpt-tiny --max-steps 1", 1),
    ("train --block-size 0", "train --data {tokens} --out-dir {root}/r1 --block-size 0", 2),
    ("train --n-embd 10**9", "train --data {tokens} --out-dir {root}/r1 --model gpt-tiny --n-embd 1000000000", 1),
    ("train --n-head not dividing n_embd", "train --data {tokens} --out-dir {root}/r1 --model gpt-tiny "
                                           "--n-head 3", 1),
    ("train --dropout 2", "train --data {tokens} --out-dir {root}/r1 --dropout 2", 2),
    ("train --model unknown", "train --data {tokens} --out-dir {root}/r1 --model gpt-huge", 1),
    ("train --dtype fp8", "train --data {tokens} --out-dir {root}/r1 --dtype fp8", 2),
    ("train --model-args bad JSON", "train --data {tokens} --out-dir {root}/r1 --model-args '{{x'", 2),
    ("train --model-args unknown field", "train --data {tokens} --out-dir {root}/r1 --model gpt-tiny "
                                         "--model-args '{{\"wings\": 2}}'", 1),
    ("train --num-threads -1", "train --data {tokens} --out-dir {root}/r1 --num-threads -1", 2),
    ("train --seed 2**70", "train --data {tokens} --out-dir {root}/r1 --seed 1180591620717411303424", 2),
    ("train --top-k 0", "train --data {tokens} --out-dir {root}/r1 --top-k 0", 2),
    ("train --temperature nan", "train --data {tokens} --out-dir {root}/r1 --temperature nan", 2),
    ("train --lr-decay-steps 0", "train --data {tokens} --out-dir {root}/r1 --lr-decay-steps 0", 2),
    ("train --out-dir a file", "train --data {tokens} --out-dir {a_file} --model gpt-tiny --max-steps 1", 1),
    # train: data the run cannot use, found before the first step
    ("train block size longer than the val split",
     "train --data {tokens_short_val} --out-dir {root}/r2 --model gpt-tiny --n-layer 1 --n-embd 32 "
     "--block-size 16 --batch-size 2 --max-steps 3 --eval-interval 0 --quiet", 1),
    ("train token id >= vocab", "train --data {tokens_bad_id} --out-dir {root}/r3 --model gpt-tiny "
                                "--max-steps 1 --quiet", 1),
    ("train malformed meta.json", "train --data {tokens_bad_meta} --out-dir {root}/r5 --model gpt-tiny "
                                  "--max-steps 1 --quiet", 1),
    ("train truncated token file", "train --data {tokens_truncated} --out-dir {root}/r4 --model gpt-tiny "
                                   "--max-steps 1 --quiet", 1),
    # train --resume
    ("resume missing folder", "train --resume {root}/nope", 1),
    ("resume with --config", "train --resume {run} --config {cfg_unknown}", 2),
    ("resume changing the model", "train --resume {run} --n-embd 64 --quiet", 1),
    ("resume changing the lr", "train --resume {run} --lr 0.1 --quiet", 1),
    ("resume on another tokenizer's data", "train --resume {run} --data {tokens_other} --quiet", 1),
    ("resume stretching the schedule", "train --resume {run} --max-steps 8 --quiet", 1),
    ("resume --extend-steps 0", "train --resume {run} --extend-steps 0", 2),
    ("resume a flipped checkpoint", "train --resume {run_flipped} --quiet", 1),
    # sample
    ("sample --max-new-tokens 10**18", "sample --ckpt {run} --max-new-tokens 1000000000000000000", 2),
    ("sample --max-new-tokens -1", "sample --ckpt {run} --max-new-tokens -1", 2),
    ("sample --temperature nan", "sample --ckpt {run} --temperature nan", 2),
    ("sample --temperature -1", "sample --ckpt {run} --temperature -1", 2),
    ("sample --top-k 0", "sample --ckpt {run} --top-k 0", 2),
    ("sample --top-p 2", "sample --ckpt {run} --top-p 2", 2),
    ("sample --threads -1", "sample --ckpt {run} --threads -1", 2),
    ("sample --ckpt missing", "sample --ckpt {root}/nope", 1),
    ("sample --ckpt a token folder", "sample --ckpt {tokens}", 1),
    ("sample --seed 2**70", "sample --ckpt {run} --seed 1180591620717411303424", 2),
    ("sample --ckpt a flipped byte", "sample --ckpt {run_flipped} --max-new-tokens 2", 1),
    ("sample --ckpt broken manifest", "sample --ckpt {run_bad_manifest} --max-new-tokens 2", 1),
    ("sample --ckpt no manifest", "sample --ckpt {run_no_manifest} --max-new-tokens 2", 1),
    ("sample --hf-dir missing", "sample --hf-dir {root}/nope", 1),
    ("sample --hf-dir a token folder", "sample --hf-dir {tokens}", 1),
    # plot, bench
    ("plot a missing run", "plot {root}/nope", 1),
    ("bench --model unknown", "bench --model gpt-huge", 1),
    ("bench --batch-size 0", "bench --batch-size 0", 2),
    ("bench --steps 0", "bench --steps 0", 2),
    ("bench --vocab-size -1", "bench --vocab-size -1", 2),
]


def run_cli(argv, cwd, pythonpath=ROOT, timeout=120):
    """(exit status, stdout, stderr) of `python -m minillm argv` (argv: list of str)."""
    env = dict(os.environ, PYTHONPATH=pythonpath, MINILLM_NUM_THREADS="1")
    env.pop("MINILLM_PAUSE_AT", None)
    p = subprocess.run([sys.executable, "-m", "minillm", *argv], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def argv_of(line, world):
    return shlex.split(line.format(**world))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(str(tmp_path_factory.mktemp("world")))


def _tree(folder):
    """{relative path: bytes} of every file under folder (but a run's .lock, which holds the pid
    of its last trainer)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            if f == ".lock":
                continue
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


@pytest.mark.parametrize("name, line, status", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_an_exit_status(world, name, line, status):
    guarded = {k: _tree(world[k]) for k in ("texts", "unrelated", "cwd", "run")}
    code, out, err = run_cli(argv_of(line, world), cwd=world["cwd"])
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("minillm: error: "), err
    assert code == status, (code, err)
    for k, before in guarded.items():      # nothing of the user's was removed or changed
        assert _tree(world[k]) == before, k
