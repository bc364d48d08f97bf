# cython: language_level=3
"""minillm._C: the compiled core. Each include is one concern:
runtime (ISA, threads, allocator), the Tensor type, raw kernel bindings for tests,
the GEMM and the RNG."""
from libc.stdint cimport int64_t, uint64_t, uint32_t
cimport minillm as C

include "runtime.pxi"
include "tensor.pxi"
include "ops.pxi"
include "kernels.pxi"
include "rng.pxi"
include "gemm.pxi"
include "nn.pxi"
include "loss_grad.pxi"
include "fused.pxi"
include "generate.pxi"
include "decode_step.pxi"
include "rope.pxi"
include "rmsnorm.pxi"
include "silu.pxi"
include "bf16.pxi"
