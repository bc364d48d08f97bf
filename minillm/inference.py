"""Loading a model to run it (sample, chat, eval, serve): from a HuggingFace folder or a
minillm checkpoint, with the weights its decode plan streams in float32, bf16 or int8.

    model, tokenizer, name = load_for_inference(hf_dir="SmolLM2-135M-Instruct", dtype="int8")
    plan = model.decoder(**plan_options(model, "int8"))

A folder `minillm quantize --dtype int8` wrote loads with its int8 weights kept beside the
dequantized float32 ones (model.int8_weights): dtype None (the command line's default) then
means int8, and the plan streams those weights as stored.
"""
import json
import os

__all__ = ["DTYPES", "load_for_inference", "plan_options", "resolve_dtype"]

DTYPES = ("float32", "bf16", "int8")


def load_for_inference(hf_dir=None, ckpt=None, dtype="float32", need_tokenizer=True):
    """(model in eval mode, its tokenizer, a default model name: the folder's) from a
    HuggingFace folder (hf_dir) or a minillm checkpoint or run folder (ckpt). dtype "bf16"
    keeps the weights of a family that can hold them in bf16 (Llama, Qwen, Mistral) in bf16:
    half the memory, and the decode plan reads them in place; GPT-2 and checkpoints load in
    float32 and the plan makes its bf16 or int8 copies (plan_options). ValueError names a
    folder without a tokenizer when need_tokenizer, or a dtype that is not one of DTYPES.
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


def plan_options(model, dtype):
    """The keyword arguments of model.decoder() for weights streamed in `dtype` (None:
    resolve_dtype's): none when the plan can read the model's own weights in place (float32,
    or a model held in bf16 asked for bf16), else weights=dtype (copies in bf16 or int8, or an
    int8 folder's weights as stored)."""
    dtype = resolve_dtype(model, dtype)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    held_bf16 = getattr(model.config, "dtype", "float32") == "bfloat16"
    if dtype == "float32" and not held_bf16 or (dtype == "bf16" and held_bf16):
        return {}
    return {"weights": dtype}
