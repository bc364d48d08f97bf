"""Mixed precision: bfloat16 products with float32 sums (``minillm.autocast``).

Inside ``with minillm.autocast(dtype="bfloat16"):`` the weight products, F.linear (every
nn.Linear, the LM head included) and F.matmul, multiply bf16-rounded inputs and sum in float32,
in the forward and in both backward products (the backward of a product recorded under
autocast uses the same GEMM, wherever backward() is called). Everything else stays float32:
parameters (the master weights) and their gradients, optimizer state, LayerNorm, softmax,
attention and the loss. Inputs are rounded while the GEMM packs them (csrc/gemm_bf16.c), so no
bf16 copy of an activation or weight is ever stored.

The switch is per thread, like PyTorch's ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)``:

    model, opt = ..., ...
    for step in range(steps):
        with minillm.autocast(dtype="bfloat16"):
            logits, loss = model(x, y)
        loss.backward()
        opt.step()
"""
import time

from minillm import _C
from minillm._switch import ThreadLocalValue, switched

__all__ = ["autocast", "is_autocast_enabled", "autocast_dtype", "gemm", "resolve_dtype", "faster_dtype"]

_dtype = ThreadLocalValue("float32")     # the product dtype in force on each thread

_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}


def resolve_dtype(dtype):
    """'bf16'/'bfloat16' -> 'bfloat16', 'fp32'/'float32'/None -> 'float32'; ValueError otherwise."""
    if dtype is None:
        return "float32"
    name = _ALIASES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"unsupported autocast dtype {dtype!r}: expected 'bfloat16' (or 'bf16') or 'float32'")
    return name


def autocast_dtype():
    """The product dtype in force on this thread: 'bfloat16' or 'float32'."""
    return _dtype.get()


def is_autocast_enabled():
    """True inside an enabled ``autocast(dtype="bfloat16")`` block on this thread."""
    return autocast_dtype() == "bfloat16"


def gemm():
    """The raw product F.linear / F.matmul use now: _C.matmul_bf16 under bf16 autocast, else
    _C.matmul (both take (a, b, transpose_a, transpose_b, out, alpha, beta))."""
    return _C.matmul_bf16 if autocast_dtype() == "bfloat16" else _C.matmul


class autocast:
    """Context manager (and decorator) switching weight products to bf16 inputs with float32
    sums: ``with autocast(dtype="bfloat16"):`` (``enabled=False`` or ``dtype="float32"`` turns
    it off inside an outer block). Nests; restores the previous mode on exit."""

    def __init__(self, dtype="bfloat16", enabled=True):
        self.dtype = resolve_dtype(dtype) if enabled else "float32"
        self._saved = []

    def __enter__(self):
        self._saved.append(_dtype.set(self.dtype))
        return self

    def __exit__(self, *exc):
        _dtype.set(self._saved.pop())
        return False

    def __call__(self, fn):
        return switched(fn, _dtype, self.dtype)


def faster_dtype(shapes, repeats=3, margin=0.9, time_fn=time.perf_counter):
    """Which products run faster here: 'bfloat16' or 'float32', with the seconds each took.

    shapes: (M, K, N) of the weight products of a training step (x (M, K) times W (N, K)^T),
    each timed with its two backward products (dx = dy W, dW = dy^T x) at both dtypes, the
    dtypes interleaved, best of `repeats`. bf16 is chosen only where the CPU has AVX512-BF16 dot
    products and its time is below `margin` x float32's: where bf16 inputs have to be widened
    to float32 (no such instructions) the rounding costs more than it saves, and on CPUs that
    have them it may still lose at small widths (packing and rounding per product)."""
    if not shapes or not _C.cpu_info().get("avx512_bf16"):
        return "float32", None, None
    import numpy as np
    rng = np.random.default_rng(0)
    ops = []
    for M, K, N in shapes:
        x, w, dy = (_C.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((M, K), (N, K), (M, N)))
        ops.append((x, w, dy))
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    for r in range(repeats + 1):                       # round 0 warms caches and buffers
        for name, mm in (("float32", _C.matmul), ("bfloat16", _C.matmul_bf16)):
            t = time_fn()
            for x, w, dy in ops:
                mm(x, w, transpose_b=True)
                mm(dy, w)
                mm(dy, x, transpose_a=True)
            if r:
                best[name] = min(best[name], time_fn() - t)
    f32, bf16 = best["float32"], best["bfloat16"]
    return ("bfloat16" if bf16 < margin * f32 else "float32"), f32, bf16
