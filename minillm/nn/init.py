"""Parameter initialisers with PyTorch's names and semantics (torch.nn.init).

Each function takes a tensor-like `t`: an object with `.shape` (a tuple) that exports its
data through the buffer protocol (a minillm Tensor or a NumPy array), fills it in place and
returns it. Random fills need float32 data and draw from `generator` (a
minillm.random.Generator; the default generator when None).

Fans follow PyTorch: for a weight of shape (out, in, *kernel), fan_in = in * prod(kernel)
and fan_out = out * prod(kernel); a Linear weight (out_features, in_features) thus has
fan_in = in_features.
"""
import math

import numpy as np

from .. import random as _random

__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]

_LINEAR_LIKE = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """Recommended std multiplier for weights feeding `nonlinearity` (PyTorch's table):
    linear/conv*/sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + slope^2))
    with slope = param (default 0.01), selu 3/4."""
    if nonlinearity in _LINEAR_LIKE:
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _shape_of(t):
    shape = t if isinstance(t, (tuple, list)) else getattr(t, "shape", None)
    if shape is None:
        raise TypeError(f"expected a shape or an object with .shape, got {type(t).__name__}")
    return tuple(int(d) for d in shape)


def _calculate_fan_in_and_fan_out(t):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel): (in * k, out * k) with
    k = prod(kernel). `t` is a shape tuple or an object with .shape; needs ndim >= 2."""
    shape = _shape_of(t)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _calculate_correct_fan(t, mode):
    mode = mode.lower() if isinstance(mode, str) else mode
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} not supported, expected 'fan_in' or 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


def _gen(generator):
    return _random.default_generator() if generator is None else generator


def _numel(t):
    return math.prod(_shape_of(t))


def uniform_(t, a=0.0, b=1.0, generator=None):
    """Fill float32 `t` (any shape) with U(a, b); returns t."""
    return _gen(generator).uniform_(t, a, b)


def normal_(t, mean=0.0, std=1.0, generator=None):
    """Fill float32 `t` (any shape) with N(mean, std^2); returns t."""
    return _gen(generator).normal_(t, mean, std)


def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Fill float32 `t` (any shape) with N(mean, std^2) truncated to [a, b]; a and b are absolute
    bounds, as in PyTorch (so a=-2, b=2 with std=0.02 is 100 std out). Returns t."""
    return _gen(generator).trunc_normal_(t, mean, std, a, b)


def constant_(t, val):
    """Fill `t` (any shape, any dtype) with `val`; returns t."""
    np.asarray(t)[...] = val
    return t


def zeros_(t):
    """Fill `t` with 0; returns t."""
    return constant_(t, 0)


def ones_(t):
    """Fill `t` with 1; returns t."""
    return constant_(t, 1)


def xavier_uniform_(t, gain=1.0, generator=None):
    """Glorot & Bengio (2010): U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).
    `t`: float32 of shape (out, in, *kernel); returns t."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    if _numel(t) == 0:
        return t
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return _gen(generator).uniform_(t, -bound, bound)


def xavier_normal_(t, gain=1.0, generator=None):
    """Glorot & Bengio (2010): N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)).
    `t`: float32 of shape (out, in, *kernel); returns t."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    if _numel(t) == 0:
        return t
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _gen(generator).normal_(t, 0.0, std)


def kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. (2015): U(-b, b), b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a),
    fan = fan_in or fan_out (`mode`). `t`: float32 of shape (out, in, *kernel); returns t."""
    fan = _calculate_correct_fan(t, mode)
    if _numel(t) == 0:
        return t
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return _gen(generator).uniform_(t, -bound, bound)


def kaiming_normal_(t, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. (2015): N(0, std^2), std = gain / sqrt(fan), gain = calculate_gain(nonlinearity, a),
    fan = fan_in or fan_out (`mode`). `t`: float32 of shape (out, in, *kernel); returns t."""
    fan = _calculate_correct_fan(t, mode)
    if _numel(t) == 0:
        return t
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _gen(generator).normal_(t, 0.0, std)
