"""Bigram language model: the next token's logits are a row of a V x V table picked by
the current token (no context beyond one token)."""
from dataclasses import dataclass

from minillm import functional as F
from minillm import nn
from minillm.autograd import no_grad
from minillm.models.base import LanguageModel, ModelConfig, check_idx


@dataclass
class BigramConfig(ModelConfig):
    """vocab_size V; block_size is only the length of training windows and of the
    context a sampler keeps (the model itself looks at one token)."""
    model_type: str = "bigram"
    vocab_size: int = 512
    block_size: int = 64

    def __post_init__(self):
        self.check("bigram", ("vocab_size", "block_size"))


class Bigram(LanguageModel):
    """logits[b, t] = table[idx[b, t]]: a (V, V) table of log-counts learned by gradient
    descent (Karpathy's makemore, part 1)."""

    def __init__(self, config, generator=None):
        super().__init__()
        if isinstance(config, dict):
            config = BigramConfig.from_dict(config)
        self.config = config
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)
        self.init_weights(generator)

    @no_grad()
    def init_weights(self, generator=None):
        """table ~ N(0, 0.02): near-uniform predictions at the start (loss ~ ln V)."""
        nn.init.normal_(self.logits_table.weight, 0.0, 0.02, generator=generator)

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> (logits (B, T, V) float32, loss 0-d or None). targets (B, T)
        int64 or None (-1 = ignore). The logits of every position are returned either way
        (they cost one row copy each)."""
        B, T = check_idx(idx, "Bigram")
        logits = self.logits_table(idx)                           # (B, T, V)
        if targets is None:
            return logits, None
        if tuple(targets.shape) != (B, T):
            raise ValueError(f"Bigram: expected (B, T) = ({B}, {T}) target ids, got {tuple(targets.shape)}")
        return logits, F.cross_entropy(logits, targets, ignore_index=-1)
