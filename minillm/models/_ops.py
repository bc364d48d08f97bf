"""Differentiable ops the models need beyond minillm.functional (forward and backward side by side).

lm_cross_entropy: the LM loss computing its gradient in the forward pass (csrc/lm_xent.c).
"""
from minillm import _C
from minillm.autograd import record

__all__ = ["lm_cross_entropy"]


def lm_cross_entropy(logits, targets, ignore_index=-1):
    """Mean cross-entropy over the vocabulary, as F.cross_entropy(logits, targets,
    ignore_index) with reduction 'mean': logits (..., V) float32, targets (...) int64/int32
    -> 0-d float32. When a gradient is wanted, d loss / d logits is computed in the same
    pass as the loss (one exp per logit, while the row is in cache) and kept until backward,
    which only scales it by the incoming gradient."""
    V = logits.shape[-1]
    if tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"lm_cross_entropy: logits of shape {tuple(logits.shape)} need targets of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    logits2 = _C.reshape(logits, (-1, V)) if logits.ndim != 2 else logits
    targets1 = _C.reshape(targets, (-1,)) if targets.ndim != 1 else targets
    want_grad = _C.is_grad_enabled() and logits.requires_grad
    loss, dlogits = _C.lm_xent(logits2, targets1, ignore_index, want_grad)
    if want_grad:
        shape = logits.shape
        if dlogits.shape != shape:
            dlogits = _C.reshape(dlogits, shape)

        def backward(dy):
            g = float(dy)
            # out of place when scaled: a retained graph may run backward again
            return (dlogits if g == 1.0 else _C.mul(dlogits, g), None)
        record(loss, backward, logits, None)
    return loss

