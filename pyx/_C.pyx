# cython: language_level=3
"""minillm._C: the compiled core: the Tensor type and the bindings of csrc/'s kernels.

One .pxi per C file of csrc/, in csrc/minillm.h's order, each binding that file's functions
on Tensors; checks.pxi holds the argument checks and the checked size arithmetic they all
use. No autograd here, and no import of a Python module of the package: minillm/__init__.py
registers the differentiable ops (register_python_ops). Test-only bindings live in
minillm._testing."""
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t, int8_t
cimport minillm as C

include "runtime.pxi"
include "tensor.pxi"
include "checks.pxi"
include "views.pxi"
include "elementwise.pxi"
include "blas1.pxi"
include "reduce.pxi"
include "softmax.pxi"
include "layernorm.pxi"
include "embedding.pxi"
include "gemm.pxi"
include "gemm_bf16.pxi"
include "rng.pxi"
include "loss.pxi"
include "optim.pxi"
include "mask.pxi"
include "attention.pxi"
include "bias_gelu.pxi"
include "sample.pxi"
include "rmsnorm.pxi"
include "rope.pxi"
include "silu.pxi"
include "gemv.pxi"
include "kv_attention.pxi"
include "decode_step.pxi"
