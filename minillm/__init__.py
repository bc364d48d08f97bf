"""minillm: a small language-model engine written from scratch.

C kernels (csrc/) do the arithmetic, Cython (pyx/) gives the Tensor type, and this package
adds autograd, layers, tokenizers, models, training and generation on top.
"""
import os as _os

# OpenMP (libgomp) reads its settings once, when _C loads it. Its default keeps an idle worker
# spinning for ~300,000 rounds after every kernel: harmless on an idle machine, but where other
# jobs share the cores the spinning threads take time from the ones doing work (2 threads ran
# a gpt-tiny step 5-15x slower at load 4-8). 10,000 rounds still cover the gap between two
# kernels of a training step (same speed on an idle machine, measured), then the worker sleeps.
# A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from ._C import (  # noqa: F401
    Tensor, Vector, Matrix, GrowableTensor,
    tensor, as_tensor, from_numpy, empty, zeros, ones, full, arange,
    empty_like, zeros_like, ones_like, full_like, cat, stack, matmul, view_as,
    cpu_info, set_isa, get_isa, supported_isas, set_num_threads, get_num_threads, alloc_stats,
    is_grad_enabled,
    float32, int32, int64, bfloat16, uint8, uint16,
)
from .random import Generator, manual_seed, default_generator, rand, randn, randint  # noqa: F401
from .io import save, load, FormatError  # noqa: F401
from . import _C, _switch, autograd, functional
# The one place the compiled core learns of the Python layers above it: Tensor methods and
# operators call functional's ops when a gradient is needed, Tensor.backward runs the tape.
_C.register_python_ops(functional, autograd.backward)


class _ProcessISA:
    """The kernels' instruction set: one setting for the whole process (csrc/runtime.c)."""

    @staticmethod
    def get():
        return _C.get_isa()

    @staticmethod
    def set(name):
        prev = _C.get_isa()
        _C.set_isa(name)
        return prev


class set_isa(_switch.SetSwitch):
    """Force the kernels' path, 'generic', 'avx2' or 'avx512' (ValueError if the CPU lacks
    it; MINILLM_ISA sets it at start): a call, a context manager that restores the previous
    path, or a decorator, as every switch (minillm/_switch.py). Unlike the others it is one
    setting for the whole process, not per thread: it picks hardware paths (for tests and
    benchmarks), every path computes the same op."""

    __slots__ = ()
    state = _ProcessISA()

    @staticmethod
    def convert(name):
        return name
from . import nn, optim, data  # noqa: E402,F401
from .autograd import (  # noqa: F401
    no_grad, enable_grad, set_grad_enabled, set_anomaly_detection, detect_anomaly, is_anomaly_enabled,
)
from .amp import autocast, is_autocast_enabled  # noqa: F401  (bf16 mixed precision)

__version__ = "0.1.0"
