"""Layers: Linear, Embedding, LayerNorm, activations, Dropout and the containers.

Default initialisations are PyTorch's (named in each docstring), drawn from minillm's
seeded default generator (minillm.manual_seed) or the `generator` argument.
"""
import math
from collections import OrderedDict

from minillm import _C
from minillm import functional as F
from minillm.nn import init
from minillm.nn.module import Module, Parameter

__all__ = ["Identity", "Linear", "Embedding", "LayerNorm", "RMSNorm", "ReLU", "GELU", "Tanh", "Sigmoid", "Dropout",
           "Sequential", "ModuleList", "ModuleDict"]


class Identity(Module):
    """Returns its input."""

    def forward(self, x):
        return x


class Linear(Module):
    """y = x @ weight^T + bias.  x (..., in_features) -> (..., out_features).

    weight (out_features, in_features): kaiming_uniform_(a=sqrt(5)), i.e.
    U(-1/sqrt(in_features), 1/sqrt(in_features)); bias (out_features): the same bound.
    (PyTorch's nn.Linear defaults.)"""

    def __init__(self, in_features, out_features, bias=True, generator=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: features must be positive, got ({in_features}, {out_features})")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(_C.empty((out_features, in_features)))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if bias:
            self.bias = Parameter(_C.empty((out_features,)))
            bound = 1.0 / math.sqrt(in_features)
            init.uniform_(self.bias, -bound, bound, generator=generator)
        else:
            self.bias = None

    @classmethod
    def uninitialized(cls, in_features, out_features, bias=True, dtype="float32"):
        """A Linear whose weight (of `dtype`: float32 or bfloat16) and bias (float32) are
        allocated but not drawn (contents undefined): for weights about to be loaded, so the
        memory is touched once, by the copy. Like torch.nn.utils.skip_init. A bfloat16 weight
        is a buffer, not a Parameter (inference only: parameters are float32)."""
        self = cls.__new__(cls)
        Module.__init__(self)
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: features must be positive, got ({in_features}, {out_features})")
        self.in_features = in_features
        self.out_features = out_features
        _weight(self, _C.empty((out_features, in_features), dtype=dtype))
        self.bias = Parameter(_C.empty((out_features,))) if bias else None
        return self

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): input of shape "
                             f"{tuple(x.shape)} does not end in {self.in_features}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _weight(module, t):
    """module.weight = t: a Parameter when float32, else a (non-trainable) buffer."""
    if t.dtype == "float32":
        module.weight = Parameter(t)
    else:
        module.register_buffer("weight", t)


class Embedding(Module):
    """Lookup table: ids (any shape, int64/int32) -> (*ids.shape, embedding_dim).

    weight (num_embeddings, embedding_dim): normal_(0, 1) (PyTorch's nn.Embedding default)."""

    def __init__(self, num_embeddings, embedding_dim, generator=None):
        super().__init__()
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"Embedding: sizes must be positive, got ({num_embeddings}, {embedding_dim})")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(_C.empty((num_embeddings, embedding_dim)))
        init.normal_(self.weight, 0.0, 1.0, generator=generator)

    @classmethod
    def uninitialized(cls, num_embeddings, embedding_dim, dtype="float32"):
        """An Embedding whose weight (float32 or bfloat16) is allocated but not drawn; see
        Linear.uninitialized."""
        self = cls.__new__(cls)
        Module.__init__(self)
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"Embedding: sizes must be positive, got ({num_embeddings}, {embedding_dim})")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        _weight(self, _C.empty((num_embeddings, embedding_dim), dtype=dtype))
        return self

    def forward(self, idx):
        return F.embedding(idx, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise over the trailing `normalized_shape` axes, then scale and shift.

    weight = ones, bias = zeros (PyTorch's defaults); eps 1e-5."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weight = Parameter(_C.ones(self.normalized_shape))
            self.bias = Parameter(_C.zeros(self.normalized_shape)) if bias else None
        else:
            self.weight = None
            self.bias = None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """Root-mean-square norm over the last axis (Zhang & Sennrich, 2019), as the Llama family
    and PyTorch's nn.RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight. weight = ones (C)."""

    def __init__(self, normalized_shape, eps=1e-6, elementwise_affine=True):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError(f"RMSNorm: only a last-axis shape (C,) is supported, got {tuple(normalized_shape)}")
            normalized_shape = normalized_shape[0]
        if normalized_shape <= 0:
            raise ValueError(f"RMSNorm: size must be positive, got {normalized_shape}")
        self.normalized_shape = (int(normalized_shape),)
        self.eps = eps
        self.weight = Parameter(_C.ones(self.normalized_shape)) if elementwise_affine else None

    def forward(self, x):
        if x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"RMSNorm({self.normalized_shape[0]}): input of shape {tuple(x.shape)} does not end "
                             f"in {self.normalized_shape[0]}")
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    """GELU as PyTorch's nn.GELU: approximate='none' (the default) is the exact x Phi(x),
    approximate='tanh' the tanh form GPT-2 uses (see F.gelu)."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Dropout(Module):
    """Zero elements with probability p in training mode (scaling the rest by 1/(1-p));
    the identity in eval mode."""

    def __init__(self, p=0.5, generator=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.generator)

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order: Sequential(a, b, c)(x) = c(b(a(x))). Also accepts an
    OrderedDict of name -> module."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of modules whose parameters are registered (names '0', '1', ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(mods[i])
        return mods[i]

    def __setitem__(self, i, module):
        name = list(self._modules)[i]
        self.add_module(name, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of name -> module whose parameters are registered under those names."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            for name, m in dict(modules).items():
                self[name] = m

    def __getitem__(self, name):
        return self._modules[name]

    def __setitem__(self, name, module):
        self.add_module(name, module)

    def __contains__(self, name):
        return name in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()
