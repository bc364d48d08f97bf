"""What every language model shares: parameter counting, AdamW groups, generation."""
import dataclasses

from minillm import _C
from minillm import nn

__all__ = ["LanguageModel", "check_idx", "known_fields"]


def known_fields(cls, d):
    """d as keyword arguments for the config dataclass cls; ValueError names unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown} (known: {sorted(names)})")
    return dict(d)


def check_idx(idx, model_name):
    """(B, T) of a batch of token ids, or a clear error. idx: (B, T) int64 (or int32) Tensor."""
    if not isinstance(idx, _C.Tensor):
        raise TypeError(f"{model_name}: expected a (B, T) int64 Tensor of token ids, got {type(idx).__name__}")
    if idx.ndim != 2:
        raise ValueError(f"{model_name}: expected (B, T) token ids, got shape {tuple(idx.shape)}")
    if idx.dtype not in ("int64", "int32"):
        raise TypeError(f"{model_name}: expected int64 token ids, got {idx.dtype}")
    B, T = idx.shape
    if B == 0 or T == 0:
        raise ValueError(f"{model_name}: empty batch of token ids, shape {tuple(idx.shape)}")
    return B, T


class LanguageModel(nn.Module):
    """Base of bigram, mlp and gpt: subclasses set ``self.config`` and define
    ``forward(idx, targets=None) -> (logits, loss)``."""

    supports_kv_cache = False

    def num_params(self, non_embedding=False):
        """Number of parameters (a tied weight counted once). non_embedding=True leaves out
        the position embedding table (`transformer.wpe`), as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for name, p in self.named_parameters():
                if name.endswith("wpe.weight"):
                    n -= p.numel()
        return n

    def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), eps=1e-8):
        """AdamW over two parameter groups: every 2-D tensor (the Linear weights and the
        embedding tables, tied lm_head included once) decays by `weight_decay`; biases and
        LayerNorm gains (1-D) do not, as in nanoGPT and GPT-3."""
        from minillm import optim
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)

    def decoder(self, hugepages=True):
        """The model's fast decode plan (a minillm.models.decoder.Decoder: `step(tokens, cache)
        -> logits (B, V)`), or None when the model has none (generate then decodes through
        forward). hugepages: see Decoder."""
        return None

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 stop_tokens=(), generator=None):
        """Continue idx (B, T) int64 by max_new_tokens sampled tokens -> (B, T + n) int64;
        see minillm.generate.generate for the options."""
        from minillm import generate as _generate
        return _generate.generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, greedy=greedy, stop_tokens=stop_tokens,
                                  generator=generator)
