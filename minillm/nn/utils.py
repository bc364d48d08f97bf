"""Gradient utilities."""
import math

from minillm import _C

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(parameters, max_norm, error_if_nonfinite=False):
    """Scale the gradients of `parameters` in place so that their global L2 norm
    (over all of them, as one vector) is at most max_norm; returns that norm (before
    clipping) as a Python float. Deterministic: each gradient's sum of squares is taken
    in fixed blocks and they are added in the given order. Scale = max_norm / (norm + 1e-6),
    applied only when it is below 1 (PyTorch's rule)."""
    if isinstance(parameters, _C.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be positive, got {max_norm}")
    if not grads:
        return 0.0
    total = math.sqrt(_C.sumsq_list(grads))
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise FloatingPointError(f"clip_grad_norm_: the total gradient norm is {total}")
        return total
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        _C.scale_list_(grads, scale)
    return total
