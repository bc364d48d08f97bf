"""Differentiable ops the models need beyond minillm.functional (forward and backward side by side).

lm_cross_entropy: the LM loss computing its gradient in the forward pass (csrc/lm_xent.c).
causal_self_attention: fused causal attention read straight from the qkv projection.
linear_gelu: a Linear followed by GELU, with the bias add and GELU fused.
"""
import math

from minillm import _C
from minillm.autograd import record

__all__ = ["lm_cross_entropy", "causal_self_attention", "linear_gelu"]


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


def causal_self_attention(qkv, n_head, layer_cache=None):
    """Causal multi-head attention straight from the fused q, k, v projection, on the fused
    flash-style kernel (csrc/attention.c): qkv (B, T, 3C) float32 -> y (B, T, C), heads side
    by side. q, k, v are read in place as strided head views; the output is written in the
    (B, T, nh, hs) layout so y is a free view. With layer_cache (generation, no grad) the new
    k, v go through layer_cache.update and the T queries attend over all cached positions.
    Backward returns d qkv (B, T, 3C) in one buffer (no zero-filled slices to add up)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    heads = _C.permute(_C.reshape(qkv, (B, T, 3, n_head, hs)), (2, 0, 3, 1, 4))   # (3, B, nh, T, hs)
    q, k, v = _C.getitem(heads, 0), _C.getitem(heads, 1), _C.getitem(heads, 2)
    if layer_cache is not None:
        k, v = layer_cache.update(k, v)                                  # (B, nh, T_total, hs)
    scale = 1.0 / math.sqrt(hs)
    out, lse = _C.attention_forward(q, k, v, scale)                      # (B, nh, T, hs)
    y = _C.reshape(_C.transpose(out, 1, 2), (B, T, C))
    if _C.is_grad_enabled() and qkv.requires_grad:
        if layer_cache is not None:
            raise RuntimeError("causal_self_attention: a KV cache is for generation, under no_grad")

        def backward(dy):
            dout = _C.transpose(_C.reshape(dy, (B, T, n_head, hs)), 1, 2)  # (B, nh, T, hs) view
            dq, dk, dv = _C.attention_backward(q, k, v, out, lse, dout, scale)
            parts = [_C.reshape(_C.transpose(d, 1, 2), (B, T, C)) for d in (dq, dk, dv)]
            return (_C.cat(parts, 2),)
        record(y, backward, qkv)
    return y


def linear_gelu(x, weight, bias):
    """gelu(x @ weight^T + bias) (tanh GELU) with the bias add and GELU fused in one pass
    (csrc/bias_gelu.c): x (..., in), weight (out, in), bias (out) -> (..., out). Backward:
    one pass gives d(pre-activation) and d bias, then the two GEMMs."""
    h = _C.matmul(x, weight, transpose_b=True)                           # (..., out), pre-bias
    y = _C.bias_gelu(h, bias)
    if _C.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        gx, gw, gb = x.requires_grad, weight.requires_grad, bias.requires_grad

        def backward(dy):
            dh, db = _C.bias_gelu_backward(h, bias, dy, gb)
            dx = _C.matmul(dh, weight) if gx else None
            dw = None
            if gw:
                dh2 = _C.reshape(dh, (-1, dh.shape[-1]))
                x2 = _C.reshape(x, (-1, x.shape[-1]))
                dw = _C.matmul(dh2, x2, transpose_a=True)
            return dx, dw, (db if gb else None)
        record(y, backward, x if gx else None, weight if gw else None, bias if gb else None)
    return y
