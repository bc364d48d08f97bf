"""minillm: a small language-model engine written from scratch.

C kernels (csrc/) do the arithmetic, Cython (pyx/) gives the Tensor type, and this package
adds autograd, layers, tokenizers, models, training and generation on top.
"""
from ._C import (  # noqa: F401
    Tensor, Vector, Matrix, GrowableTensor,
    tensor, as_tensor, from_numpy, empty, zeros, ones, full, arange, rand, randn, randint,
    empty_like, zeros_like, ones_like, full_like, cat, stack, matmul, view_as,
    cpu_info, set_isa, get_isa, supported_isas, set_num_threads, get_num_threads, alloc_stats,
    is_grad_enabled,
    float32, int32, int64, bfloat16, uint8, uint16,
)
from .random import Generator, manual_seed, default_generator  # noqa: F401
from .io import save, load, FormatError  # noqa: F401
# importing functional registers the differentiable ops with the Tensor type
from . import autograd, functional, nn, optim, data  # noqa: F401
from .autograd import (  # noqa: F401
    no_grad, enable_grad, set_grad_enabled, set_anomaly_detection, is_anomaly_enabled,
)
from .amp import autocast, is_autocast_enabled  # noqa: F401  (bf16 mixed precision)

__version__ = "0.1.0"
