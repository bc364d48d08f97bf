"""minillm: a small language-model engine written from scratch.

C kernels (csrc/) do the arithmetic, Cython (pyx/) gives the Tensor type, and this package
adds autograd, layers, tokenizers, models, training and generation on top.
"""
from ._C import (  # noqa: F401
    Tensor, Vector, Matrix, GrowableTensor,
    tensor, as_tensor, from_numpy, empty, zeros, ones, full, arange, rand, randn, randint,
    empty_like, zeros_like, ones_like, full_like, cat, stack, matmul,
    cpu_info, set_isa, get_isa, supported_isas, set_num_threads, get_num_threads, alloc_stats,
    is_grad_enabled, set_grad_enabled,
    float32, int32, int64, bfloat16, uint8, uint16,
)

__version__ = "0.1.0"
from ._C import view_as  # noqa: F401,E402
from .random import Generator, manual_seed, default_generator  # noqa: F401,E402
from .io import save, load, FormatError  # noqa: F401,E402
from .amp import autocast, is_autocast_enabled  # noqa: F401,E402  (bf16 mixed precision)
