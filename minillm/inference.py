"""Loading a model to run it (sample, chat, eval, serve): from a HuggingFace folder or a
minillm checkpoint, with the weights its decode plan streams in float32, bf16 or int8.

    model, tokenizer, name = load_for_inference(hf_dir="SmolLM2-135M-Instruct", dtype="int8")
    plan = model.decoder(**plan_options(model, "int8"))

A folder `minillm quantize --dtype int8` wrote loads with its int8 weights kept beside the
dequantized float32 ones (model.int8_weights): dtype None (the command line's default) then
means int8, and the plan streams those weights as stored. quantize_folder writes such folders
(`minillm quantize`; the layout is in minillm.quantize's docstring).
"""
import json
import os
import shutil

from minillm.quantize import FOLDER_DTYPES

__all__ = ["DTYPES", "KV_CHOICES", "load_for_inference", "plan_options", "resolve_dtype", "quantize_folder",
           "check_quantize_output", "MARKER"]

DTYPES = ("float32", "bf16", "int8")
KV_CHOICES = ("float32", "bf16")         # --kv-dtype: the KV caches' dtype


def load_for_inference(hf_dir=None, ckpt=None, dtype="float32", need_tokenizer=True):
    """(model in eval mode, its tokenizer, a default model name: the folder's) from a
    HuggingFace folder (hf_dir) or a minillm checkpoint or run folder (ckpt). dtype "bf16"
    keeps the weights of a family that can hold them in bf16 (Llama, Qwen, Mistral) in bf16:
    half the memory of float32 (the decode plan adds its copy in the bf16 kernels' blocks of 4
    rows); GPT-2 and checkpoints load in float32 and the plan makes its bf16 or int8 copies
    (plan_options). ValueError names a folder without a tokenizer when need_tokenizer, or a
    dtype that is not one of DTYPES.
    dtype None: the weights as the folder stores them (resolve_dtype names the plan's dtype)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if (hf_dir is None) == (ckpt is None):
        raise ValueError("load_for_inference: give exactly one of hf_dir and ckpt")
    if hf_dir is not None:
        from minillm.models import GPT, HF_MODEL_TYPES, load_pretrained
        model_type = None
        try:
            with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
                model_type = json.load(f).get("model_type", "gpt2")
        except (OSError, ValueError, AttributeError):
            pass                           # load_pretrained names what is wrong with the folder
        family = HF_MODEL_TYPES.get(model_type)
        in_bf16 = dtype == "bf16" and family is not None and family is not GPT
        model = load_pretrained(hf_dir, dtype="bfloat16") if in_bf16 else load_pretrained(hf_dir)
        source = hf_dir
    else:
        from minillm.checkpoint import load_model
        model, source = load_model(ckpt), ckpt
    tokenizer = getattr(model, "tokenizer", None)
    if need_tokenizer and tokenizer is None:
        raise ValueError(f"{source}: no tokenizer (tokenizer.json, or vocab.json + merges.txt) to turn text into ids")
    return model.eval(), tokenizer, os.path.basename(os.path.normpath(source))


def resolve_dtype(model, dtype=None):
    """dtype itself, or for None the dtype of the model's stored weights: "int8" for a model
    loaded from an int8 folder, "bf16" for one held in bf16, else "float32"."""
    if dtype is not None:
        return dtype
    if getattr(model, "int8_weights", None):
        return "int8"
    return "bf16" if getattr(model.config, "dtype", "float32") == "bfloat16" else "float32"


def plan_options(model, dtype, kv_dtype=None):
    """The keyword arguments of model.decoder() for weights streamed in `dtype` (None:
    resolve_dtype's): none when the plan's default is that dtype (float32 read in place, or a
    model held in bf16 asked for bf16), else weights=dtype (copies in bf16 or int8, or an
    int8 folder's weights as stored); kv_dtype ("float32" or "bf16"; None: the plan's default,
    bf16 with bf16 or int8 weights) the KV caches'."""
    dtype = resolve_dtype(model, dtype)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if kv_dtype is not None and kv_dtype not in KV_CHOICES:
        raise ValueError(f"kv_dtype must be one of {', '.join(KV_CHOICES)}, got {kv_dtype!r}")
    held_bf16 = getattr(model.config, "dtype", "float32") == "bfloat16"
    opts = {} if dtype == "float32" and not held_bf16 or (dtype == "bf16" and held_bf16) else {"weights": dtype}
    if kv_dtype is not None:
        opts["kv_dtype"] = "bfloat16" if kv_dtype == "bf16" else "float32"
    return opts


# ---------------------------------------------------------------------- quantized folders
# written last into every folder `minillm quantize` makes: what it wrote (a later run may replace it)
MARKER = "minillm_quantize.json"
# files of a HuggingFace folder besides the weights and config.json that a quantized copy keeps
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_quantize_output(out, inputs=()):
    """ValueError unless quantize_folder may write (and replace) the folder `out`: missing,
    empty, or made by an earlier `minillm quantize` (its MARKER) holding nothing else; not a
    file, and not holding any of `inputs`."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: is a file, not a folder")
    for p in inputs:
        if p is not None and _inside(p, out):
            raise ValueError(f"--out {out}: is or holds the input {p}, which replacing it would delete; choose "
                             f"another --out")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    entries = sorted(os.listdir(out))
    try:
        with open(os.path.join(out, MARKER), encoding="utf-8") as f:
            written = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"--out {out}: exists and was not made by `minillm quantize` (it holds {entries[0]!r}); "
                         f"only such a folder is replaced: choose another --out or empty it") from None
    strangers = [e for e in entries if e not in set(written) | {MARKER}]
    if strangers:
        raise ValueError(f"--out {out}: was made by `minillm quantize` but also holds {strangers[0]!r}, which "
                         f"replacing it would delete; move that away or choose another --out")


def quantize_folder(out, hf_dir=None, ckpt=None, dtype="int8", group=None):
    """Write the model of a HuggingFace folder (hf_dir) or a minillm checkpoint (ckpt) into the
    folder `out` with "int8" weights (the layout of minillm.quantize's docstring; group: the int8 group,
    default int8_group per matrix) or "bf16" ones (a plain HF folder whose matrices are bf16,
    norms and biases float32), in its family's HF layout (GPT-2 or Llama/Qwen/Mistral), with
    its tokenizer and generation_config.json. `out` is replaced only when check_quantize_output
    allows it; the folder is written beside it and renamed into place. A model loaded from an
    int8 folder writes its stored int8 weights again as they are (no second quantization).
    Returns the list of files written."""
    if dtype not in FOLDER_DTYPES:
        raise ValueError(f"quantize: --dtype must be one of {', '.join(FOLDER_DTYPES)}, got {dtype!r}")
    if (hf_dir is None) == (ckpt is None):
        raise ValueError("quantize: give exactly one of --hf-dir and --ckpt")
    source = hf_dir if hf_dir is not None else ckpt
    if not os.path.isdir(source):
        raise ValueError(f"quantize: {source}: no such folder")
    check_quantize_output(out, [source])
    from minillm.models import GPT, Llama, load_pretrained
    if hf_dir is not None:
        from minillm.utils import read_json
        cfg = os.path.join(hf_dir, "config.json")
        hf = read_json(cfg) if os.path.isfile(cfg) else {}
        in_bf16 = dtype == "bf16" and isinstance(hf, dict) and hf.get("model_type", "gpt2") != "gpt2"
        model = load_pretrained(hf_dir, dtype="bfloat16" if in_bf16 else None)
    else:
        from minillm.checkpoint import load_model
        model = load_model(ckpt)
    if not isinstance(model, (GPT, Llama)):
        raise ValueError(f"quantize: {source}: a {type(model).__name__} model has no HuggingFace layout "
                         f"(GPT and Llama-family models do)")
    from minillm.utils import folder_temp, replace_folder
    tmp, tag = folder_temp(out)        # after removing a killed quantize's leftovers
    try:
        model.save_pretrained(tmp, weights=dtype, group=group)
        for name in TOKENIZER_FILES if hf_dir is not None else ():   # the source's own, verbatim
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copyfile(os.path.join(hf_dir, name), os.path.join(tmp, name))
        generation = getattr(model, "generation_config", None)
        if generation and not os.path.exists(os.path.join(tmp, "generation_config.json")):
            with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
                json.dump(generation, f, indent=2)
        files = sorted(os.listdir(tmp))
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump({"dtype": dtype, "source": os.path.abspath(source), "files": files}, f, indent=2)
        check_quantize_output(out, [source])           # nobody put anything there meanwhile
        replace_folder(tmp, out, tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files + [MARKER]
