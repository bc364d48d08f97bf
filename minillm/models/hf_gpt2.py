"""GPT-2 checkpoints in HuggingFace's layout: load them into our GPT, write ours back out.

A folder in that layout holds
  config.json        GPT2Config: n_layer, n_head, n_embd, n_positions, vocab_size,
                     layer_norm_epsilon, activation_function, tie_word_embeddings, ...
  model.safetensors  tensors named as HF's GPT2Model ("h.0.attn.c_attn.weight", ...), with or
                     without the "transformer." prefix GPT2LMHeadModel adds; lm_head.weight
                     only if the head is not tied to wte
  vocab.json + merges.txt, or tokenizer.json (GPT-2's byte-level BPE)

HF's GPT-2 uses Conv1D layers whose weight is stored (in, out), the transpose of a Linear's
(out, in): c_attn, attn.c_proj, c_fc and mlp.c_proj are transposed on the way in and out.
activation_function gelu_new (also gelu_pytorch_tanh, gelu_fast) is the tanh GELU our GPT uses.

    model = load_pretrained("gpt2/")           # a GPT; model.tokenizer is a BPETokenizer or None
    save_pretrained(model, "out/", tokenizer)  # transformers.GPT2LMHeadModel.from_pretrained("out/")

`GPT.from_pretrained(folder)` and `gpt.save_pretrained(folder)` call these.
"""
import json
import os

from minillm import io
from minillm.autograd import no_grad
from minillm.utils import read_json

__all__ = ["load_pretrained", "save_pretrained", "config_from_hf", "config_to_hf", "hf_tensor_names"]

# Conv1D layers: HF stores their weight (in, out); ours is (out, in)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# activations that are GELU's tanh approximation (what our GPT computes)
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# non-parameter buffers old checkpoints carry (the causal mask): ignored
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# ---------------------------------------------------------------------- config
def config_from_hf(hf, where="config.json"):
    """Our GPTConfig from a GPT2Config dict; ValueError naming the field for what our GPT
    cannot compute. Returns (GPTConfig, layer_norm_epsilon)."""
    from minillm.models.gpt import GPTConfig
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{where}: model_type is {hf.get('model_type')!r}; only 'gpt2' checkpoints load")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELU:
        raise ValueError(f"{where}: activation_function {act!r} is not supported; our GPT uses the "
                         f"tanh GELU ({', '.join(TANH_GELU)})")
    for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                     ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if hf.get(flag, ok) != ok:
            raise ValueError(f"{where}: {flag} = {hf[flag]!r} is not supported (expected {ok})")
    n_inner = hf.get("n_inner")
    n_embd = hf.get("n_embd", 768)
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ValueError(f"{where}: n_inner = {n_inner} is not supported (our MLP is 4 * n_embd = {4 * n_embd})")
    try:
        config = GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
            dropout=0.0, bias=True, tie_weights=bool(hf.get("tie_word_embeddings", True)))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{where}: layer_norm_epsilon must be a positive number, got {eps!r}")
    return config, float(eps)


def config_to_hf(config, layer_norm_epsilon=1e-5):
    """A GPT2Config dict (config.json) for our GPTConfig."""
    if not config.bias:
        raise ValueError("save_pretrained: GPT-2 has biases; a GPT built with bias=False has no HF layout")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": layer_norm_epsilon,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": bool(config.tie_weights),
        "bos_token_id": config.vocab_size - 1 if config.vocab_size == 50257 else None,
        "eos_token_id": config.vocab_size - 1 if config.vocab_size == 50257 else None,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


# ---------------------------------------------------------------------- names
def hf_tensor_names(config):
    """dict our state_dict name -> (HF name without prefix, HF shape) for a GPTConfig.
    Conv1D weights have HF shape (in, out)."""
    C, V, L = config.n_embd, config.vocab_size, config.block_size
    names = {"transformer.wte.weight": ("wte.weight", (V, C)),
             "transformer.wpe.weight": ("wpe.weight", (L, C))}
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,),
              "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
              "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
              "ln_2.weight": (C,), "ln_2.bias": (C,),
              "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
              "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer):
        for suffix, shape in shapes.items():
            names[f"transformer.h.{i}.{suffix}"] = (f"h.{i}.{suffix}", shape)
    names["transformer.ln_f.weight"] = ("ln_f.weight", (C,))
    names["transformer.ln_f.bias"] = ("ln_f.bias", (C,))
    if not config.tie_weights:
        names["lm_head.weight"] = ("lm_head.weight", (V, C))
    return names


def _strip(name):
    """HF name without GPT2LMHeadModel's "transformer." prefix (lm_head.weight stays)."""
    return name[len("transformer."):] if name.startswith("transformer.") else name


# ---------------------------------------------------------------------- load
def load_pretrained(folder):
    """A GPT with the weights of the HF-layout GPT-2 checkpoint in `folder`.

    Reads config.json and model.safetensors (float32, or bfloat16/float16 widened to float32);
    the tokenizer (vocab.json + merges.txt or tokenizer.json), if the folder has one, is
    attached as `model.tokenizer` (a minillm BPETokenizer), else `model.tokenizer` is None.
    Missing, unexpected or mis-shaped tensors raise ValueError naming all of them."""
    from minillm.models.gpt import GPT
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder (expected config.json and model.safetensors)")
    cfg_path = os.path.join(folder, "config.json")
    st_path = os.path.join(folder, "model.safetensors")
    for path in (cfg_path, st_path):
        if not os.path.exists(path):
            raise ValueError(f"{path}: missing (a GPT-2 checkpoint folder holds config.json and model.safetensors)")
    hf = read_json(cfg_path)
    config, eps = config_from_hf(hf, cfg_path)
    raw = {_strip(k): v for k, v in io.load(st_path, mmap=True).items()
           if not k.endswith(IGNORED_SUFFIXES)}
    if not config.tie_weights and "lm_head.weight" not in raw and "wte.weight" in raw:
        raise ValueError(f"{st_path}: tie_word_embeddings is false but there is no lm_head.weight")
    if config.tie_weights:
        raw.pop("lm_head.weight", None)   # a tied head saved anyway: it is wte

    names = hf_tensor_names(config)
    missing = [hf for hf, _ in names.values() if hf not in raw]
    expected = {hf for hf, _ in names.values()}
    unexpected = sorted(k for k in raw if k not in expected)
    bad = [f"{hf} has shape {tuple(raw[hf].shape)}, expected {shape}"
           + (" (HF Conv1D layout: (in, out))" if hf.endswith(CONV1D) else "")
           for hf, shape in names.values() if hf in raw and tuple(raw[hf].shape) != shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    problems += bad
    if problems:
        raise ValueError(f"{st_path} does not fit config.json ({config.n_layer} layers, n_embd {config.n_embd}, "
                         f"vocab {config.vocab_size}, n_positions {config.block_size}): " + "; ".join(problems))

    model = GPT(config)
    own = model.state_dict()
    with no_grad():
        for ours, (hf_name, _) in names.items():
            src = raw[hf_name]
            if src.dtype != "float32":
                src = src.astype("float32")
            if hf_name.endswith(CONV1D):
                src = src.T
            own[ours][...] = src
    for ln in _layer_norms(model):
        ln.eps = eps
    model.tokenizer = _load_tokenizer(folder)
    return model


def _layer_norms(model):
    from minillm import nn
    return [m for _, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


def _load_tokenizer(folder):
    from minillm.tokenizers import load_tokenizer
    has = lambda name: os.path.exists(os.path.join(folder, name))  # noqa: E731
    if has("tokenizer.json") or (has("vocab.json") and has("merges.txt")):
        return load_tokenizer(folder)
    return None


# ---------------------------------------------------------------------- save
def save_pretrained(model, folder, tokenizer=None):
    """Write `model` (our GPT) into `folder` in HF's GPT-2 layout: config.json,
    model.safetensors (HF names with the "transformer." prefix, Conv1D weights as (in, out),
    no lm_head.weight when tied), and the tokenizer's files (tokenizer.json, vocab.json,
    merges.txt) if `tokenizer` (or `model.tokenizer`) is a BPETokenizer. Returns the folder."""
    from minillm.models.gpt import GPT
    if not isinstance(model, GPT):
        raise TypeError(f"save_pretrained: expected a minillm GPT, got {type(model).__name__}")
    config = model.config
    eps = {ln.eps for ln in _layer_norms(model)}
    if len(eps) != 1:
        raise ValueError(f"save_pretrained: the LayerNorms use different eps {sorted(eps)}; GPT-2 has one")
    hf_config = config_to_hf(config, eps.pop())
    own = model.state_dict()
    if not config.tie_weights and "lm_head.weight" not in own:
        own["lm_head.weight"] = model.lm_head.weight
    tensors = {}
    for ours, (hf_name, _) in hf_tensor_names(config).items():
        t = own[ours].detach()
        if hf_name.endswith(CONV1D):
            t = t.T
        prefix = "" if hf_name == "lm_head.weight" else "transformer."
        tensors[prefix + hf_name] = t.contiguous()
    os.makedirs(folder, exist_ok=True)
    io.save(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(folder)
        if getattr(tokenizer, "eot_token", None) is not None:
            eot = tokenizer.id_to_token(tokenizer.eot_token).decode("utf-8")
            with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": config.block_size,
                           "bos_token": eot, "eos_token": eot, "unk_token": eot,
                           "add_prefix_space": False}, f, indent=2)
    return folder
