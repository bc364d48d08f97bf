"""Feed-forward language model (Bengio et al., 2003, "A Neural Probabilistic Language
Model"): the previous `context` tokens -> their embeddings, concatenated -> tanh hidden
layer(s) -> a Linear to the vocabulary -> softmax.

Every position of a (B, T) batch is predicted from its own window of `context` tokens
(positions before the start of the sequence are a learned "blank" token, id V), so the
model trains on the same (B, T) windows as the GPT.
"""
from dataclasses import dataclass

from minillm import _C
from minillm import functional as F
from minillm import nn
from minillm.autograd import no_grad
from minillm.models.base import LanguageModel, ModelConfig, check_idx


@dataclass
class MLPConfig(ModelConfig):
    """context: tokens the model sees per prediction; n_embd: size of each token's
    embedding; n_hidden: width of each of the n_layer tanh layers; block_size: length of
    training windows and of the context a sampler keeps."""
    model_type: str = "mlp"
    vocab_size: int = 512
    block_size: int = 64
    context: int = 8
    n_embd: int = 64
    n_hidden: int = 512
    n_layer: int = 1

    def __post_init__(self):
        self.check("mlp", ("vocab_size", "block_size", "context", "n_embd", "n_hidden", "n_layer"))


class MLPLM(LanguageModel):
    """The feed-forward LM. forward(idx (B, T) int64) -> (logits (B, T, V), loss)."""

    def __init__(self, config, generator=None):
        super().__init__()
        if isinstance(config, dict):
            config = MLPConfig.from_dict(config)
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size + 1, c.n_embd)     # row V: the blank before the start
        layers = []
        width = c.context * c.n_embd
        for _ in range(c.n_layer):
            layers += [nn.Linear(width, c.n_hidden), nn.Tanh()]
            width = c.n_hidden
        self.hidden = nn.Sequential(*layers)
        self.lm_head = nn.Linear(width, c.vocab_size)
        self.init_weights(generator)

    @no_grad()
    def init_weights(self, generator=None):
        """Embeddings ~ N(0, 1); Linear weights ~ N(0, gain / sqrt(fan_in)) (Kaiming, tanh
        gain 5/3) so the tanh units start unsaturated; the output layer ~ N(0, 0.01 /
        sqrt(fan_in)) for near-uniform first predictions; biases 0."""
        nn.init.normal_(self.wte.weight, 0.0, 1.0, generator=generator)
        for m in self.hidden:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, (5.0 / 3.0) / m.in_features ** 0.5, generator=generator)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.lm_head.weight, 0.0, 0.01 / self.lm_head.in_features ** 0.5, generator=generator)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> (logits (B, T, V) float32, loss 0-d or None); targets (B, T)
        int64 or None (-1 = ignore). Logits of every position are returned either way."""
        B, T = check_idx(idx, "MLPLM")
        n, V = self.config.context, self.config.vocab_size
        if idx.dtype != "int64":
            idx = idx.astype("int64")
        # (B, n-1+T): n-1 blanks, then the tokens; window t is columns t .. t+n-1
        padded = _C.cat([_C.full((B, n - 1), V, dtype="int64"), idx], 1) if n > 1 else idx
        emb = self.wte(padded)                                           # (B, n-1+T, D)
        windows = [F.getitem(emb, (slice(None), slice(j, j + T))) for j in range(n)]
        x = F.cat(windows, -1) if n > 1 else windows[0]                  # (B, T, n D)
        logits = self.lm_head(self.hidden(x))                            # (B, T, V)
        if targets is None:
            return logits, None
        if tuple(targets.shape) != (B, T):
            raise ValueError(f"MLPLM: expected (B, T) = ({B}, {T}) target ids, got {tuple(targets.shape)}")
        return logits, F.cross_entropy(logits, targets, ignore_index=-1)
