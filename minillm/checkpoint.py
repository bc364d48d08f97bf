"""The checkpoint folder: write, verify, find, load. Used by the trainer, the CLI and scripts.

    save_checkpoint("runs/x/checkpoints/step_0000100", model, optimizer, state, config, tok_json)
    model = load_model("runs/x")                # latest checkpoint, verified; model.tokenizer set
    ckpt = load_checkpoint(find_checkpoint("runs/x", step=100))   # everything, for resuming

A checkpoint is a folder (checkpoints/step_<step>/ under a run folder):
    config.json            {"model": model config, "train": TrainConfig, "minillm_version": ...}
    model.safetensors      the model's state_dict
    optimizer.safetensors  the optimizer's state tensors as "state.<i>.<name>"
                           (minillm.optim.flatten_state_dict); its metadata "optimizer" holds the
                           rest (param groups, per-parameter step counts) as JSON
    trainer_state.json     step, tokens seen, elapsed seconds, RNG states, data position
    tokenizer.json         the tokenizer of the training data (optional)
    manifest.json          bytes and sha256 of every other file, written last
It is written to a hidden temporary folder (.tmp-step_<step>-<writer>, named after the writing
process) and renamed into place, so an interrupted save never leaves a half checkpoint; the
temporaries of a writer killed mid-save are removed by the next save or trainer start in that
run (remove_stale_temporaries). Every load checks each file against the manifest first and names a
missing, truncated or altered one (CheckpointError, a ValueError).
"""
import json
import os
import re
import shutil

from minillm import io as mio
from minillm import optim
from minillm.models import model_from_config
from minillm.tokenizers import load_tokenizer
from minillm.utils import (fsync_dir, parse_json, pause_point, process_tag, read_json, remove_stale,
                           sha256_file, write_json)

__all__ = ["CheckpointError", "CHECKPOINT_FILES", "MANIFEST", "CHECKPOINTS_DIR", "save_checkpoint",
           "verify_checkpoint", "load_checkpoint", "load_model", "load_model_state", "list_checkpoints",
           "find_checkpoint", "checkpoint_folder", "prune_checkpoints", "remove_stale_temporaries"]

CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.safetensors",
                    "trainer_state.json", "tokenizer.json")
REQUIRED_FILES = CHECKPOINT_FILES[:4]
MANIFEST = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"step_(\d+)")
# .tmp-<folder>-<writer>: a checkpoint being written; .old-<folder>-<writer>: the folder it replaces
_TEMPORARY = r"\.(?P<kind>tmp|old)-(?P<name>.+?)-(?P<tag>\d+(?:-\d+)?)"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used: the message names the folder and the file."""


# ---------------------------------------------------------------------- write
def save_checkpoint(folder, model, optimizer, trainer_state, config, tokenizer_file=None):
    """Write a checkpoint folder (layout in the module docstring) atomically: into a hidden
    temporary folder next to `folder`, fsynced, then renamed to `folder` (replacing an older
    folder of that name only once the new one is complete). Returns `folder`.

    model: nn.Module; optimizer: a minillm.optim optimizer; trainer_state: JSON-safe dict;
    config: JSON-safe dict ({"model": ..., "train": ...}); tokenizer_file: a tokenizer.json
    to copy (or None)."""
    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent)
    tag = process_tag()
    tmp = os.path.join(parent, f".tmp-{os.path.basename(folder)}-{tag}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write_json(os.path.join(tmp, "config.json"), config)
        mio.save(dict(model.state_dict()), os.path.join(tmp, "model.safetensors"),
                 metadata={"format": "pt"})
        pause_point("checkpoint")
        tensors, meta = optim.flatten_state_dict(optimizer.state_dict())
        mio.save(tensors, os.path.join(tmp, "optimizer.safetensors"),
                 metadata={"optimizer": json.dumps(meta), "optimizer_class": type(optimizer).__name__})
        write_json(os.path.join(tmp, "trainer_state.json"), trainer_state)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, os.path.join(tmp, "tokenizer.json"))
        files = [f for f in CHECKPOINT_FILES if os.path.exists(os.path.join(tmp, f))]
        manifest = {f: {"bytes": os.path.getsize(os.path.join(tmp, f)),
                        "sha256": sha256_file(os.path.join(tmp, f))} for f in files}
        write_json(os.path.join(tmp, MANIFEST), {"files": manifest})
        fsync_dir(tmp)
        old = None
        if os.path.exists(folder):
            old = os.path.join(parent, f".old-{os.path.basename(folder)}-{tag}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
        os.rename(tmp, folder)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def remove_stale_temporaries(folder):
    """Remove the temporary folders that writers killed mid-save left in `folder` (a run's
    checkpoints/ folder): those whose writing process is gone. A replaced checkpoint still
    parked under .old-<name>-<writer> goes back to <name> when no <name> took its place.
    Returns the removed paths."""
    def restore(m):
        return os.path.join(folder, m.group("name")) if m.group("kind") == "old" else None
    return remove_stale(folder, _TEMPORARY, restore)


# ---------------------------------------------------------------------- verify
def verify_checkpoint(folder):
    """Check every file of a checkpoint folder against its manifest; CheckpointError names
    the folder and the file that is missing, truncated or altered."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    mpath = os.path.join(folder, MANIFEST)
    if not os.path.exists(mpath):
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is missing (an incomplete or "
                              f"damaged checkpoint)")
    try:
        files = read_json(mpath)["files"]
        sizes = {name: int(info["bytes"]) for name, info in files.items()}
        digests = {name: str(info["sha256"]) for name, info in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is unreadable ({e})") from None
    for name in REQUIRED_FILES:
        if name not in files:
            raise CheckpointError(f"checkpoint {folder}: {MANIFEST} does not list {name}")
    for name, size_written in sizes.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        size = os.path.getsize(path)
        if size != size_written:
            what = "truncated" if size < size_written else "longer than written"
            raise CheckpointError(f"checkpoint {folder}: {name} is {what}: {size} bytes, the "
                                  f"manifest says {size_written}")
        if sha256_file(path) != digests[name]:
            raise CheckpointError(f"checkpoint {folder}: {name} does not match its sha256 in the "
                                  f"manifest (altered or corrupt)")


# ---------------------------------------------------------------------- find
def checkpoint_folder(run_dir, step):
    """The folder of the checkpoint of `step` in a run folder: run_dir/checkpoints/step_0000100."""
    return os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR, f"step_{step:07d}")


def list_checkpoints(run_dir):
    """[(step, path)] of the checkpoint folders of a run folder, oldest first."""
    root = os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_DIR.fullmatch(name)
        if m and os.path.isdir(os.path.join(root, name)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def find_checkpoint(path, step=None):
    """A checkpoint folder: `path` itself when it is one, else the latest checkpoint of the
    run folder `path` (or the one of `step`); ValueError when there is none."""
    path = os.fspath(path)
    is_checkpoint = os.path.exists(os.path.join(path, MANIFEST)) or \
        os.path.exists(os.path.join(path, "config.json"))
    if is_checkpoint and step is None:
        return path
    found = list_checkpoints(path)
    if not found:
        raise ValueError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints")
    if step is None:
        return found[-1][1]
    for s, folder in found:
        if s == step:
            return folder
    raise ValueError(f"{path}: no checkpoint of step {step} (has steps {[s for s, _ in found]})")


def prune_checkpoints(run_dir, keep):
    """Delete all but the last `keep` checkpoints of a run folder."""
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- load
def read_tokenizer(path):
    """load_tokenizer(path), with any failure to make sense of the file as a ValueError naming
    it (a damaged file may hold ids or types the tokenizer's reader does not expect)."""
    try:
        return load_tokenizer(path)
    except ValueError:
        raise
    except (TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError) as e:
        raise ValueError(f"{path}: not a usable tokenizer file ({type(e).__name__}: {e})") from None


def _optimizer_state(tensors, metadata, path):
    """The optimizer state_dict of optimizer.safetensors' tensors and metadata. Checkpoints
    written before the "optimizer" metadata key held "param_groups" and "steps" as two JSON
    strings; both read."""
    try:
        if "optimizer" in metadata:
            meta = parse_json(metadata["optimizer"], f"{path} metadata")
        else:
            meta = {"param_groups": parse_json(metadata["param_groups"], f"{path} metadata"),
                    "steps": parse_json(metadata["steps"], f"{path} metadata")}
        return optim.unflatten_state_dict(tensors, meta)
    except KeyError as e:
        raise CheckpointError(f"{path}: metadata lacks the optimizer's {e} (param groups or steps)") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_checkpoint(folder):
    """Read a verified checkpoint folder: dict with 'path', 'config' (dict), 'model' (name ->
    Tensor), 'optimizer' (an optimizer state_dict), 'trainer_state' (dict), 'tokenizer' (path
    of tokenizer.json or None). CheckpointError names a bad file."""
    verify_checkpoint(folder)
    folder = os.fspath(folder)

    def json_file(name):
        try:
            return read_json(os.path.join(folder, name))
        except ValueError as e:
            raise CheckpointError(f"checkpoint {folder}: {e}") from None

    def tensors(name):
        path = os.path.join(folder, name)
        try:
            return mio.load(path, mmap=False), mio.load_metadata(path)
        except mio.FormatError as e:
            raise CheckpointError(f"checkpoint {folder}: {e}") from None

    model_state, _ = tensors("model.safetensors")
    opt_tensors, opt_meta = tensors("optimizer.safetensors")
    tok = os.path.join(folder, "tokenizer.json")
    return {"path": folder, "config": json_file("config.json"), "model": model_state,
            "optimizer": _optimizer_state(opt_tensors, opt_meta, os.path.join(folder, "optimizer.safetensors")),
            "trainer_state": json_file("trainer_state.json"),
            "tokenizer": tok if os.path.exists(tok) else None}


def load_model_state(model, state, source):
    """Copy a checkpoint's weights into `model`; ValueError naming `source` and, for a model
    of another config, the mismatching tensor and both shapes."""
    try:
        model.load_state_dict(state)
    except (ValueError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise ValueError(f"{source}: does not fit this model: {msg}") from None


def load_model(path, step=None):
    """The model of a checkpoint folder (or of a run folder's latest checkpoint, or its
    checkpoint of `step`), verified against the manifest, in eval mode; `model.tokenizer` is
    the checkpoint's tokenizer (None without tokenizer.json)."""
    ckpt = load_checkpoint(find_checkpoint(path, step))
    config_path = os.path.join(ckpt["path"], "config.json")
    model_config = ckpt["config"].get("model") if isinstance(ckpt["config"], dict) else None
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{config_path}: expected {{\"model\": {{...}}}} with the model config")
    try:
        model = model_from_config(model_config)
    except (TypeError, ValueError, KeyError, ArithmeticError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    load_model_state(model, ckpt["model"], os.path.join(ckpt["path"], "model.safetensors"))
    model.tokenizer = read_tokenizer(ckpt["tokenizer"]) if ckpt["tokenizer"] else None
    model.eval()
    return model
