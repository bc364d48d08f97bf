"""Differentiable ops (``import minillm.functional as F``).

Each op is a forward and its backward side by side: the forward calls a raw kernel of
minillm._C, and when grad mode is on and an input requires grad it records a backward
function with ``_record(out, backward, *inputs)``. Backward functions return one gradient
per recorded input (None where that input needs none) and never modify their argument.
All tensors are float32 unless stated; shapes follow NumPy broadcasting.
"""
import builtins
import math

from minillm import _C
from minillm import amp as _amp  # bf16 autocast: F.linear / F.matmul read _amp.gemm()
from minillm import random as _random
from minillm._switch import SetSwitch, ThreadLocalValue
from minillm.autograd import record as _record

Tensor = _C.Tensor
_grad_on = _C.is_grad_enabled

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "linear", "reshape", "view", "flatten", "transpose",
    "permute", "expand", "squeeze", "unsqueeze", "getitem", "contiguous", "clone", "cat", "stack",
    "split", "chunk", "sum", "mean", "max", "exp", "log", "sqrt", "tanh", "relu", "relu_squared", "softcap",
    "gelu", "abs",
    "sigmoid", "softmax", "log_softmax", "layer_norm", "embedding", "dropout", "cross_entropy",
    "linear_cross_entropy", "mse_loss", "scaled_dot_product_attention",
]


def _rg(x):
    """True if x is a tensor that requires grad."""
    return isinstance(x, Tensor) and x.requires_grad


def _unbroadcast(g, shape):
    """g summed down to `shape` (the backward of NumPy broadcasting)."""
    return g if g.shape == shape else _C.sum_to(g, shape)


def _broadcast_to(g, shape):
    """A fresh contiguous tensor of `shape` holding g broadcast (g's shape must broadcast)."""
    out = _C.empty(shape)
    _C.copy_(out, g)
    return out


def _axis_arg(axis, dim):
    # PyTorch spells it dim, NumPy axis: accept either
    return dim if axis is None else axis


# ---------------------------------------------------------------- binary arithmetic
def add(a, b):
    """a + b with broadcasting; a or b may be a Python number. Float32."""
    out = _C.add(a, b)
    if _grad_on():
        ga, gb = _rg(a), _rg(b)
        if ga or gb:
            a_shape = a.shape if ga else None
            b_shape = b.shape if gb else None

            def backward(dy):
                return (_unbroadcast(dy, a_shape) if ga else None,
                        _unbroadcast(dy, b_shape) if gb else None)
            _record(out, backward, a if ga else None, b if gb else None)
    return out


def sub(a, b):
    """a - b with broadcasting; a or b may be a Python number. Float32."""
    out = _C.sub(a, b)
    if _grad_on():
        ga, gb = _rg(a), _rg(b)
        if ga or gb:
            a_shape = a.shape if ga else None
            b_shape = b.shape if gb else None

            def backward(dy):
                return (_unbroadcast(dy, a_shape) if ga else None,
                        _unbroadcast(_C.neg(dy), b_shape) if gb else None)
            _record(out, backward, a if ga else None, b if gb else None)
    return out


def mul(a, b):
    """a * b with broadcasting; a or b may be a Python number. Float32."""
    out = _C.mul(a, b)
    if _grad_on():
        ga, gb = _rg(a), _rg(b)
        if ga or gb:
            def backward(dy):
                return (_unbroadcast(_C.mul(dy, b), a.shape) if ga else None,
                        _unbroadcast(_C.mul(dy, a), b.shape) if gb else None)
            _record(out, backward, a if ga else None, b if gb else None)
    return out


def div(a, b):
    """a / b with broadcasting; a or b may be a Python number. Float32."""
    out = _C.div(a, b)
    if _grad_on():
        ga, gb = _rg(a), _rg(b)
        if ga or gb:
            def backward(dy):
                da = _unbroadcast(_C.div(dy, b), a.shape) if ga else None
                db = None
                if gb:
                    # d(a/b)/db = -a / b^2
                    db = _unbroadcast(_C.neg(_C.div(_C.mul(dy, a), _C.mul(b, b))), b.shape)
                return da, db
            _record(out, backward, a if ga else None, b if gb else None)
    return out


def neg(x):
    """-x. Float32."""
    out = _C.neg(x)
    if _grad_on() and x.requires_grad:
        def backward(dy):
            return (_C.neg(dy),)
        _record(out, backward, x)
    return out


def pow(x, exponent):
    """x ** exponent for a Python-number exponent, elementwise. Float32."""
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a Python number (tensor exponents are not supported)")
    out = _C.power(x, exponent)
    if _grad_on() and x.requires_grad:
        e = float(exponent)

        def backward(dy):
            # d x^e / dx = e x^(e-1)
            return (_C.mul(dy, _C.mul(_C.power(x, e - 1.0), e)),)
        _record(out, backward, x)
    return out


# ------------------------------------------------------------------------- matmul
def _matmul_t(a, b, transpose_a=False, transpose_b=False, alpha=1.0, gemm=_C.matmul):
    """alpha * op(a) @ op(b), op = transpose of the last two axes when its flag is set;
    a (..., M, K) or (..., K, M), b (..., K, N) or (..., N, K), batch axes broadcast.
    Backward uses the GEMM's transpose flags, never transpose copies. gemm: _C.matmul, or
    _C.matmul_bf16 for bf16 products (forward and backward alike; see minillm/amp.py)."""
    out = gemm(a, b, transpose_a=transpose_a, transpose_b=transpose_b, alpha=alpha)
    if _grad_on():
        ga, gb = _rg(a), _rg(b)
        if ga or gb:
            ta, tb = transpose_a, transpose_b

            def backward(dy):
                da = db = None
                if ga:
                    # C = A' B' (primes: op applied):  dA' = dC B'^T,  dA = dA'^T when ta
                    if not ta:
                        da = gemm(dy, b, transpose_b=not tb, alpha=alpha)
                    else:
                        da = gemm(b, dy, transpose_a=tb, transpose_b=True, alpha=alpha)
                    da = _unbroadcast(da, a.shape)
                if gb:
                    if b.ndim == 2 and a.ndim > 2 and not ta:
                        # one GEMM over all batch rows: (B*M, K)^T @ (B*M, N)
                        a2 = _C.reshape(a, (-1, a.shape[-1]))
                        d2 = _C.reshape(dy, (-1, dy.shape[-1]))
                        if not tb:
                            db = gemm(a2, d2, transpose_a=True, alpha=alpha)
                        else:
                            db = gemm(d2, a2, transpose_a=True, alpha=alpha)
                    else:
                        # C = A' B':  dB' = A'^T dC,  dB = dB'^T when tb
                        if not tb:
                            db = gemm(a, dy, transpose_a=not ta, alpha=alpha)
                        else:
                            db = gemm(dy, a, transpose_a=True, transpose_b=ta, alpha=alpha)
                        db = _unbroadcast(db, b.shape)
                return da, db
            _record(out, backward, a if ga else None, b if gb else None)
    return out


def matmul(a, b):
    """a @ b as NumPy's matmul: 2-D (M, K) @ (K, N) -> (M, N); batched (..., M, K) @
    (..., K, N) with broadcast batch axes; a 1-D operand is a row (a) or column (b)
    vector whose axis is dropped from the result. Float32 (bf16 products under minillm.autocast)."""
    gemm = _amp.gemm()
    if a.ndim == 1 or b.ndim == 1:
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        a2 = unsqueeze(a, 0) if a.ndim == 1 else a
        b2 = unsqueeze(b, 1) if b.ndim == 1 else b
        out = _matmul_t(a2, b2, gemm=gemm)
        if b.ndim == 1:
            out = squeeze(out, -1)
        if a.ndim == 1:
            out = squeeze(out, -2 if b.ndim != 1 else -1)
        return out
    return _matmul_t(a, b, gemm=gemm)


def linear(x, weight, bias=None):
    """x @ weight^T + bias: x (..., in), weight (out, in), bias (out) or None -> (..., out).
    Under minillm.autocast(dtype="bfloat16") the product and both backward products take
    bf16-rounded inputs with float32 sums; bias and gradients stay float32."""
    if x.shape[-1] != weight.shape[-1] or weight.ndim != 2:
        raise ValueError(f"linear: input of shape {tuple(x.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)} (expected (out, {x.shape[-1]}))")
    # bfloat16 weights (a model loaded with dtype="bfloat16") always take the bf16 GEMM
    gemm = _C.matmul_bf16 if weight.dtype == "bfloat16" else _amp.gemm()
    out = gemm(x, weight, transpose_b=True)
    if bias is not None:
        _C.add_(out, bias)
    if _grad_on():
        gx, gw, gbias = _rg(x), _rg(weight), _rg(bias)
        if gx or gw or gbias:
            def backward(dy):
                dx = dw = db = None
                if gx:
                    dx = gemm(dy, weight)
                if gw or gbias:
                    d2 = _C.reshape(dy, (-1, dy.shape[-1])) if dy.ndim != 2 else dy
                    if gw:
                        x2 = _C.reshape(x, (-1, x.shape[-1])) if x.ndim != 2 else x
                        dw = gemm(d2, x2, transpose_a=True)
                    if gbias:
                        db = _C.sum(d2, 0)
                return dx, dw, db
            _record(out, backward, x if gx else None, weight if gw else None, bias if gbias else None)
    return out


# -------------------------------------------------------------------------- views
def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def _record_reshape(out, x):
    """Record `out`, which holds x's elements in another shape, with the backward that
    reshapes the gradient back to x's shape. Returns out."""
    if _grad_on() and x.requires_grad:
        x_shape = x.shape

        def backward(dy):
            return (_C.reshape(dy, x_shape),)
        _record(out, backward, x)
    return out


def reshape(x, *shape):
    """x with a new shape (one -1 allowed): a view when the strides allow, else a copy."""
    shape = _shape_arg(shape)
    out = _C.reshape(x, shape)
    return _record_reshape(out, x)


view = reshape


def flatten(x, start_dim=0, end_dim=-1):
    """x with axes start_dim..end_dim merged into one."""
    nd = x.ndim
    s, e = (_C.normalize_axis(start_dim, nd), _C.normalize_axis(end_dim, nd)) if nd else (0, 0)
    shape = tuple(x.shape[:s]) + (-1,) + tuple(x.shape[e + 1:])
    return reshape(x, shape)


def transpose(x, d0, d1):
    """View of x with axes d0 and d1 swapped."""
    out = _C.transpose(x, d0, d1)
    if _grad_on() and x.requires_grad:
        def backward(dy):
            return (_C.transpose(dy, d0, d1),)
        _record(out, backward, x)
    return out


def permute(x, *dims):
    """View of x with axes reordered: out axis i is x axis dims[i]."""
    dims = _shape_arg(dims)
    out = _C.permute(x, dims)
    if _grad_on() and x.requires_grad:
        nd = len(dims)
        inverse = [0] * nd
        for i, d in enumerate(dims):
            inverse[d % nd] = i
        inverse = tuple(inverse)

        def backward(dy):
            return (_C.permute(dy, inverse),)
        _record(out, backward, x)
    return out


def expand(x, *shape):
    """Broadcast view of x to `shape` (stride 0 on expanded axes; -1 keeps an axis)."""
    shape = _shape_arg(shape)
    out = _C.expand(x, shape)
    if _grad_on() and x.requires_grad:
        x_shape = x.shape

        def backward(dy):
            return (_C.sum_to(dy, x_shape),)
        _record(out, backward, x)
    return out


def squeeze(x, dim=None):
    """View of x without size-1 axes (only axis `dim` when given)."""
    out = _C.squeeze(x, dim)
    return _record_reshape(out, x)


def unsqueeze(x, dim):
    """View of x with a new size-1 axis at `dim`."""
    out = _C.unsqueeze(x, dim)
    return _record_reshape(out, x)


def getitem(x, key):
    """x[key] for ints, slices (step > 0), ``...`` and None: a view."""
    out = _C.getitem(x, key)
    if _grad_on() and x.requires_grad:
        x_shape = x.shape

        def backward(dy):
            dx = _C.zeros(x_shape)
            _C.copy_(_C.getitem(dx, key), dy)
            return (dx,)
        _record(out, backward, x)
    return out


def contiguous(x):
    """x itself if contiguous, else a contiguous copy (gradient passes through)."""
    if x.is_contiguous():
        return x
    return clone(x)


def clone(x):
    """A contiguous copy of x (gradient passes through)."""
    out = _C.empty(x.shape)
    _C.copy_(out, x)
    if _grad_on() and x.requires_grad:
        def backward(dy):
            return (dy,)
        _record(out, backward, x)
    return out


def cat(tensors, axis=0, *, dim=None):
    """Concatenate tensors along `axis` (all other axes equal)."""
    axis = _axis_arg(dim, axis) if dim is not None else axis
    tensors = list(tensors)
    out = _C.cat(tensors, axis)
    if _grad_on():
        needs = [_rg(t) for t in tensors]
        if any(needs):
            nd = out.ndim
            ax = axis % nd
            sizes = [t.shape[ax] for t in tensors]

            def backward(dy):
                grads = []
                start = 0
                for size, need in zip(sizes, needs):
                    if need:
                        key = (slice(None),) * ax + (slice(start, start + size),)
                        grads.append(_C.getitem(dy, key))
                    else:
                        grads.append(None)
                    start += size
                return tuple(grads)
            _record(out, backward, *[t if n else None for t, n in zip(tensors, needs)])
    return out


def stack(tensors, axis=0, *, dim=None):
    """Stack equal-shaped tensors along a new axis."""
    axis = dim if dim is not None else axis
    return cat([unsqueeze(t, axis) for t in tensors], axis)


def split(x, split_size_or_sections, axis=0, *, dim=None):
    """Split x along `axis` into pieces of `split_size` (last may be smaller), or of the
    sizes in a list. Returns a tuple of views."""
    axis = dim if dim is not None else axis
    ax = _C.normalize_axis(axis, x.ndim)
    n = x.shape[ax]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0:
            raise ValueError(f"split: split_size must be positive, got {step}")
        sizes = [min(step, n - s) for s in range(0, n, step)]
    else:
        sizes = list(split_size_or_sections)
        if builtins.sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} do not add up to axis {axis} of size {n} "
                             f"(shape {tuple(x.shape)})")
    pieces, start = [], 0
    for size in sizes:
        pieces.append(getitem(x, (slice(None),) * ax + (slice(start, start + size),)))
        start += size
    return tuple(pieces)


def chunk(x, chunks, axis=0, *, dim=None):
    """Split x into `chunks` nearly equal views along `axis`."""
    axis = dim if dim is not None else axis
    n = x.shape[axis]
    return split(x, builtins.max(1, -(-n // chunks)), axis)


# --------------------------------------------------------------------- reductions
def _reduced_keepdim_shape(shape, axis):
    """shape with 1 on the reduced axes (axis None: all)."""
    nd = len(shape)
    if axis is None:
        return (1,) * nd
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = {a % nd for a in axes}
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def sum(x, axis=None, keepdim=False, *, dim=None):
    """Sum over `axis` (int, tuple or None for all), keeping reduced axes as 1 if keepdim."""
    axis = _axis_arg(axis, dim)
    out = _C.sum(x, axis, keepdim)
    if _grad_on() and x.requires_grad:
        x_shape = x.shape
        kshape = _reduced_keepdim_shape(x_shape, axis)

        def backward(dy):
            return (_broadcast_to(_C.reshape(dy, kshape), x_shape),)
        _record(out, backward, x)
    return out


def mean(x, axis=None, keepdim=False, *, dim=None):
    """Mean over `axis` (int, tuple or None for all)."""
    axis = _axis_arg(axis, dim)
    out = _C.mean(x, axis, keepdim)
    if _grad_on() and x.requires_grad:
        x_shape = x.shape
        kshape = _reduced_keepdim_shape(x_shape, axis)
        count = 1
        for full, kept in zip(x_shape, kshape):
            if kept == 1 and full != 1:
                count *= full

        def backward(dy):
            dx = _broadcast_to(_C.reshape(dy, kshape), x_shape)
            _C.scale_(dx, 1.0 / count)
            return (dx,)
        _record(out, backward, x)
    return out


def max(x, axis=None, keepdim=False, *, dim=None):
    """Maximum values over one axis (or all elements); the gradient goes to the first
    maximum, as argmax picks it."""
    axis = _axis_arg(axis, dim)
    out = _C.max(x, axis, keepdim)
    if _grad_on() and x.requires_grad:
        if axis is not None and not isinstance(axis, int):
            raise ValueError(f"max: differentiable max takes one axis or None, got {axis!r}")
        x_shape = x.shape
        nd = len(x_shape)

        def backward(dy):
            if axis is None:
                idx = _C.reshape(_as_index_tensor(_C.argmax(x)), (1,))
                d = _C.onehot_rows(idx, _C.reshape(dy, (1,)), x.numel())
                return (_C.reshape(d, x_shape),)
            ax = axis % nd
            # rows = every other axis in order, columns = the reduced axis
            moved = tuple(i for i in range(nd) if i != ax) + (ax,)
            idx = _C.reshape(_C.argmax(x, ax), (-1,))
            d = _C.onehot_rows(idx, _C.reshape(dy, (-1,)), x_shape[ax])
            d = _C.reshape(d, tuple(x_shape[i] for i in moved))
            inverse = [0] * nd
            for i, m in enumerate(moved):
                inverse[m] = i
            return (_C.permute(d, tuple(inverse)).contiguous(),)
        _record(out, backward, x)
    return out


def _as_index_tensor(i):
    if isinstance(i, Tensor):
        return i
    return _C.full((1,), int(i), dtype="int64")


# ---------------------------------------------------------------------- unary ops
def _unary(name, raw, x):
    y = raw(x)
    if _grad_on() and x.requires_grad:
        y_saved = y.detach()  # the output's own grad_fn must not be kept by its backward

        def backward(dy):
            return (_C.unary_backward(name, x, y_saved, dy),)
        backward.__qualname__ = name
        _record(y, backward, x)
    return y


def exp(x):
    """e^x, elementwise. Float32."""
    return _unary("exp", _C.exp, x)


def log(x):
    """Natural log, elementwise. Float32."""
    return _unary("log", _C.log, x)


def sqrt(x):
    """Square root, elementwise. Float32."""
    return _unary("sqrt", _C.sqrt, x)


def tanh(x):
    """tanh, elementwise. Float32."""
    return _unary("tanh", _C.tanh, x)


def relu(x):
    """max(x, 0), elementwise (gradient 0 at 0). Float32."""
    return _unary("relu", _C.relu, x)


def relu_squared(x):
    """relu(x)^2, elementwise (So et al., 2021: the Primer MLP), in one pass. Float32."""
    return _unary("relu2", _C.relu2, x)


def softcap(x, cap):
    """cap * tanh(x / cap), elementwise: a smooth clamp of x to (-cap, cap) (Gemma 2's logit
    soft-capping). cap > 0. Float32."""
    if not cap > 0:
        raise ValueError(f"softcap: cap must be > 0, got {cap!r}")
    y = _C.softcap(x, cap)
    if _grad_on() and x.requires_grad:
        y_saved = y.detach()

        def backward(dy):
            return (_C.softcap(x, cap, y_saved, dy),)
        _record(y, backward, x)
    return y


def gelu(x, approximate="none"):
    """GELU, elementwise, float32, as PyTorch's: approximate='none' (the default) is the exact
    x Phi(x), Phi the standard normal CDF (erf form); approximate='tanh' is
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the form GPT-2 was trained with."""
    if approximate == "tanh":
        return _unary("gelu", _C.gelu, x)
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    y = _C.gelu_erf(x)
    if _grad_on() and x.requires_grad:
        def backward(dy):
            return (_C.gelu_erf_backward(x, dy),)
        _record(y, backward, x)
    return y


def abs(x):
    """|x|, elementwise (gradient sign(x), 0 at 0). Float32."""
    return _unary("abs", _C.abs, x)


def sigmoid(x):
    """1 / (1 + e^-x), elementwise. Float32."""
    return _unary("sigmoid", _C.sigmoid, x)


# ------------------------------------------------------------------------ softmax
def _last_axis_op(fwd, bwd, x, axis, name):
    nd = x.ndim
    if nd and _C.normalize_axis(axis, nd) != nd - 1:
        # move the axis last, apply, move it back (views; the kernel works on the last axis)
        return transpose(_last_axis_op(fwd, bwd, transpose(x, axis, -1), -1, name), axis, -1)
    y = fwd(x)
    if _grad_on() and x.requires_grad:
        y_saved = y.detach()

        def backward(dy):
            return (bwd(y_saved, dy),)
        backward.__qualname__ = name
        _record(y, backward, x)
    return y


def softmax(x, axis=-1, *, dim=None):
    """exp(x) / sum(exp(x)) over `axis` (max-subtracted). Float32."""
    axis = dim if dim is not None else axis
    return _last_axis_op(_C.softmax, _C.softmax_backward, x, axis, "softmax")


def log_softmax(x, axis=-1, *, dim=None):
    """x - log(sum(exp(x))) over `axis`. Float32."""
    axis = dim if dim is not None else axis
    return _last_axis_op(_C.log_softmax, _C.log_softmax_backward, x, axis, "log_softmax")


# --------------------------------------------------------------------- layer norm
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape`
    axes (biased variance, as PyTorch). x (..., *normalized_shape); weight, bias
    normalized_shape or None. Float32."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if tuple(x.shape[x.ndim - k:]) != normalized_shape:
        raise ValueError(f"layer_norm: input of shape {tuple(x.shape)} does not end in "
                         f"normalized_shape {normalized_shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != normalized_shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected {normalized_shape}")
    if k != 1:
        # normalize over one flattened trailing axis
        lead = tuple(x.shape[:x.ndim - k])
        y = layer_norm(reshape(x, lead + (-1,)), (math.prod(normalized_shape),),
                       None if weight is None else reshape(weight, (-1,)),
                       None if bias is None else reshape(bias, (-1,)), eps)
        return reshape(y, x.shape)
    y, mu, rstd = _C.layer_norm(x, weight, bias, eps)
    if _grad_on():
        gx, gw, gb = x.requires_grad, _rg(weight), _rg(bias)
        if gx or gw or gb:
            def backward(dy):
                dx, dw, db = _C.layer_norm_backward(x, weight, mu, rstd, dy)
                if gb and db is None:  # bias without weight: dbias = sum of dy over rows
                    db = _C.sum(_C.reshape(dy, (-1, dy.shape[-1])), 0)
                return dx, dw, db
            _record(y, backward, x if gx else None, weight if gw else None, bias if gb else None)
    return y


# ---------------------------------------------------------------------- embedding
def embedding(input, weight):
    """Rows of weight (num_embeddings, D) picked by input ids (any shape, int64/int32)
    -> (*input.shape, D). IndexError names an id outside [0, num_embeddings)."""
    out = _C.embedding(weight, input)
    if _grad_on() and weight.requires_grad:
        num = weight.shape[0]

        def backward(dy):
            return (None, _C.embedding_backward(dy, input, num))
        _record(out, backward, None, weight)
    return out


# ------------------------------------------------------------------------ dropout
def _dropout_draw(n, generator):
    """(seed, offset) of n fresh words of `generator`'s Philox stream (default: minillm's
    default generator, so minillm.manual_seed makes dropout reproducible)."""
    if generator is None:
        generator = _random.default_generator()
    elif not hasattr(generator, "claim"):
        raise TypeError(f"dropout: generator must be a minillm.random.Generator, got {type(generator).__name__}")
    return generator.claim(n)


def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout: zero each element with probability p and scale the rest by
    1/(1-p); the identity when not training or p == 0. The mask is drawn from
    `generator` (a minillm.random.Generator) or the default generator. Float32."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return mul(x, 0.0)
    seed, offset = _dropout_draw(x.numel(), generator)
    mask = _C.dropout_mask(x.shape, p, seed, offset)
    out = _C.mul(x, mask)
    if _grad_on() and x.requires_grad:
        def backward(dy):
            return (_C.mul(dy, mask),)
        _record(out, backward, x)
    return out


# ------------------------------------------------------------------------- losses
_REDUCTIONS = ("mean", "sum", "none")


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Fused log-softmax + negative log-likelihood (one kernel each way; the softmax is
    never stored). logits (N, C) or (..., C) float32 with the class axis last; targets
    (N,) or (...) int64/int32 class ids. Rows whose target is ignore_index count for
    nothing ('mean' divides by the number of other rows). label_smoothing s mixes the
    one-hot target with the uniform distribution: (1-s) onehot + s/C.
    Returns a 0-d tensor ('mean', 'sum') or per-row losses shaped like targets ('none').

    When logits need a gradient and the loss is a scalar ('mean', 'sum'), d loss / d logits
    is computed in the forward kernel while each row is in cache (one exp per logit instead
    of two, csrc/loss.c) and kept, (N, C) floats, until backward scales it by the incoming
    gradient; otherwise the forward keeps only the per-row log-sum-exp and the backward
    recomputes the softmax."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not isinstance(targets, Tensor):
        targets = _C.tensor(targets, dtype="int64")
    if logits.ndim < 1 or tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"cross_entropy: logits of shape {tuple(logits.shape)} need targets of shape "
                         f"{tuple(logits.shape[:-1])} (class axis last), got {tuple(targets.shape)}")
    V = logits.shape[-1]
    logits2 = _C.reshape(logits, (-1, V)) if logits.ndim != 2 else logits
    targets1 = _C.reshape(targets, (-1,)) if targets.ndim != 1 else targets
    logits_shape = logits.shape
    if _grad_on() and logits.requires_grad and reduction != "none":
        loss, count, dlogits = _C.cross_entropy_grad(logits2, targets1, ignore_index, label_smoothing,
                                                     reduction)
        held = [dlogits]

        def backward(dy):
            dl = held[0]
            if dl is None:
                # a second backward through a retained graph: the first one handed the
                # buffer out (it may be a leaf's .grad by now), so compute it afresh
                _, _, dl = _C.cross_entropy_grad(logits2, targets1, ignore_index, label_smoothing,
                                                 reduction)
            held[0] = None
            g = float(dy)
            if g != 1.0:
                _C.scale_(dl, g)          # this op's own buffer, handed out once
            return (_C.reshape(dl, logits_shape) if dl.shape != logits_shape else dl, None)
        _record(loss, backward, logits, None)
        return loss
    loss, lse, count = _C.cross_entropy(logits2, targets1, ignore_index, label_smoothing, reduction)
    if reduction == "none" and targets.ndim != 1:
        loss = _C.reshape(loss, targets.shape)
    if _grad_on() and logits.requires_grad:
        def backward(dy):
            dl = _C.cross_entropy_backward(logits2, targets1, lse, dy, reduction, count,
                                           ignore_index, label_smoothing)
            return (_C.reshape(dl, logits_shape) if dl.shape != logits_shape else dl, None)
        _record(loss, backward, logits, None)
    return loss


# Rows per chunk of linear_cross_entropy by default: a chunk of logits holds about this
# many floats (64 MiB; 333 rows of GPT-2's 50304 words). Each chunk reads the (V, C) weight
# twice and reads and writes dW once, so small chunks cost memory traffic and large ones
# peak memory (the chunk buffer stays in the allocator's cache): re-measure with bench/
# (bench_scale.py runs the fused head) before changing it.
_LCE_CHUNK_FLOATS = 1 << 24


def linear_cross_entropy(x, weight, targets, bias=None, ignore_index=-100, chunk_size=None):
    """cross_entropy(linear(x, weight, bias), targets, ignore_index) (reduction 'mean')
    without ever holding the full (N, V) logits: an LM head fused with its loss.
    x (N, C) or (..., C) float32, weight (V, C) float32 (e.g. the tied token embedding),
    bias (V,) or None, targets (N,) or (...) int64/int32 -> 0-d float32 mean loss over the
    rows whose target is not ignore_index (NaN if there are none).

    Rows go in chunks of chunk_size (default: about 16M logits per chunk): logits chunk =
    x_chunk @ W^T (GEMM), then loss.c's gradient-in-forward kernel turns it in place into
    (softmax - onehot) / count, and when gradients are wanted dx_chunk = dlogits @ W and
    dW += dlogits^T @ x_chunk (db += column sums) are formed in the same sweep and kept for
    backward, which only scales them by the incoming gradient. Memory: one chunk of logits,
    plus dx (N, C), dW (V, C), db (V,) when wanted. Chunks run in order and no GEMM splits
    its inner dimension across threads, so the result is the same for any thread count
    (and does not depend on chunk_size for the loss; dW sums the chunks in order). Under
    minillm.autocast(dtype="bfloat16") the three products take bf16-rounded inputs, as
    F.linear's do."""
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"linear_cross_entropy: x and weight must be minillm Tensors, got "
                        f"{type(x).__name__} and {type(weight).__name__}")
    if not isinstance(targets, Tensor):
        targets = _C.tensor(targets, dtype="int64")
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: x of shape {tuple(x.shape)} does not match weight of "
                         f"shape {tuple(weight.shape)} (expected (V, {x.shape[-1] if x.ndim else '?'}))")
    V, C = weight.shape
    if tuple(x.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"linear_cross_entropy: x of shape {tuple(x.shape)} needs targets of shape "
                         f"{tuple(x.shape[:-1])}, got {tuple(targets.shape)}")
    if targets.dtype not in ("int64", "int32"):
        raise TypeError(f"linear_cross_entropy: targets must be int64 or int32 ids, got {targets.dtype}")
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"linear_cross_entropy: bias must have shape ({V},), got {tuple(bias.shape)}")
    if V == 0:
        raise ValueError("linear_cross_entropy: weight has 0 rows (classes)")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"linear_cross_entropy: chunk_size must be a positive int, got {chunk_size!r}")
    x2 = _C.reshape(x.detach(), (-1, C))
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    w = weight.detach()
    b = None if bias is None else bias.detach()
    t1 = _C.reshape(targets, (-1,))
    N = x2.shape[0]
    chunk = chunk_size or builtins.max(16, _LCE_CHUNK_FLOATS // V)
    count = _C.count_targets(t1, ignore_index, V)     # IndexError names a bad target's row
    gx, gw, gb = (_rg(x), _rg(weight), _rg(bias)) if _grad_on() else (False, False, False)

    gemm = _amp.gemm()

    def sweep(grad_scale, gx, gw, gb):
        """(sum of row losses, dx, dW, db): the gradients of grad_scale * loss, where wanted."""
        dx = _C.empty((N, C)) if gx else None
        dw = (_C.empty((V, C)) if N else _C.zeros((V, C))) if gw else None
        db = _C.zeros((V,)) if gb else None
        want = gx or gw or gb
        buf = _C.empty((builtins.min(chunk, N), V)) if N else None
        total = 0.0
        for r0 in range(0, N, chunk):
            r1 = builtins.min(N, r0 + chunk)
            xc, tc = x2[r0:r1], t1[r0:r1]
            logits = buf if r1 - r0 == buf.shape[0] else buf[0:r1 - r0]
            gemm(xc, w, transpose_b=True, out=logits)                         # (n, V)
            if b is not None:
                _C.add_(logits, b)
            if want:
                loss, _, _ = _C.cross_entropy_grad(logits, tc, ignore_index, 0.0, "sum", grad_scale,
                                                   logits)                   # logits -> dlogits
                if gx:
                    gemm(logits, w, out=dx[r0:r1])                            # (n, C)
                if gw:
                    gemm(logits, xc, transpose_a=True, out=dw, beta=0.0 if r0 == 0 else 1.0)
                if gb:
                    _C.add_(db, _C.sum(logits, 0))
            else:
                loss, _, _ = _C.cross_entropy(logits, tc, ignore_index, 0.0, "sum")
            total += float(loss)
        return total, dx, dw, db

    scale = 1.0 / count if count else 0.0
    total, dx, dw, db = sweep(scale, gx, gw, gb)
    loss = _C.full((), total / count if count else math.nan)
    if gx or gw or gb:
        held = [(dx, dw, db)]
        x_shape = x.shape

        def backward(dy):
            g = float(dy)
            grads = held[0]
            held[0] = None
            if grads is None:
                # a second backward through a retained graph: the first handed the buffers out
                grads = sweep(scale, gx, gw, gb)[1:]
            dx, dw, db = grads
            for d in grads:
                if d is not None and g != 1.0:
                    _C.scale_(d, g)       # this op's own buffers, handed out once
            if dx is not None and dx.shape != x_shape:
                dx = _C.reshape(dx, x_shape)
            return dx, dw, None, db
        _record(loss, backward, x if gx else None, weight if gw else None, None, bias if gb else None)
    return loss


def mse_loss(input, target, reduction="mean"):
    """(input - target)^2, averaged ('mean'), summed ('sum') or per element ('none').
    Shapes broadcast. Float32."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"mse_loss: input shape {tuple(input.shape)} != target shape {tuple(target.shape)}")
    d = sub(input, target)
    sq = mul(d, d)
    if reduction == "mean":
        return mean(sq)
    if reduction == "sum":
        return sum(sq)
    return sq


# ---------------------------------------------------------------------- attention
def _causal_fill(scores, value):
    """scores (..., T, S): positions j > i + S - T set to `value` (the future)."""
    out = scores if scores.is_contiguous() else scores.contiguous()
    _C.causal_fill_(out, value)
    if _grad_on() and scores.requires_grad:
        def backward(dy):
            d = _C.empty(dy.shape)
            _C.copy_(d, dy)
            _C.causal_fill_(d, 0.0)
            return (d,)
        if out is scores:
            # scores came fresh from a matmul: fill in place and re-record on a new handle
            out = scores.detach()
        _record(out, backward, scores)
    return out


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True, scale=None,
                                 training=True):
    """softmax(q k^T * scale + mask) v, composed from the ops above.
    q (..., T, D), k (..., S, D), v (..., S, Dv) -> (..., T, Dv); scale defaults to
    1/sqrt(D). is_causal hides keys after each query (the last T of S positions);
    attn_mask (T, S) or broadcastable: boolean (True = attend) or float (added).
    Causal, unmasked, dropout-free float32 attention with q (B, nh, T, hs) / (N, T, hs) and
    T <= S runs as one fused flash-style kernel (csrc/attention.c; see _fused_attention)."""
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} do not fit (..., T, D), (..., S, D), (..., S, Dv)")
    D = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if _fused_attention_applies(q, k, v, attn_mask, dropout_p, is_causal, scale, training):
        return _fused_attention(q, k, v, scale)
    scores = _matmul_t(q, k, transpose_b=True, alpha=scale)
    if is_causal:
        scores = _causal_fill(scores, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == "float32":
            scores = add(scores, attn_mask)
        else:
            # boolean mask: 0 where allowed, a huge negative where not
            additive = _C.mul(_C.sub(attn_mask.astype("float32"), 1.0), 1e30)
            scores = add(scores, additive)
    p = softmax(scores, -1)
    if dropout_p > 0.0 and training:
        p = dropout(p, dropout_p)
    return matmul(p, v)


# ======================================================================= fused kernels
# Kernels that fuse several of the ops above (csrc/attention.c, csrc/bias_gelu.c), each
# forward beside its backward. scaled_dot_product_attention dispatches to the fused
# attention by itself; set_fused_enabled(False) sends everything back to the composed ops.
__all__ += ["causal_self_attention", "bias_gelu", "linear_gelu", "add_layer_norm", "set_fused_enabled",
            "is_fused_enabled"]

_fused = ThreadLocalValue(True)


class set_fused_enabled(SetSwitch):
    """Fused kernels on (the default) or off (the composed ops compute the same thing) for
    this thread: ``with F.set_fused_enabled(False):`` restores the previous setting on exit;
    a plain call switches until set again; as a decorator it applies around each call.
    ``.prev`` holds the setting it replaced. For tests and benchmarks."""
    state = _fused
    __slots__ = ()


def is_fused_enabled():
    """True if ops dispatch to the fused kernels where they apply (on this thread)."""
    return _fused.get()


def _fused_attention_applies(q, k, v, attn_mask, dropout_p, is_causal, scale, training):
    """True when the fused kernel computes exactly what the composed path would: causal,
    no mask, no dropout, float32 (B, nh, T, hs) or (N, T, hs) with matching batch axes
    (no broadcasting), Tq <= Tk, v as wide as q, scale > 0."""
    if not (_fused.get() and is_causal and attn_mask is None and (dropout_p == 0.0 or not training)):
        return False
    if not (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)):
        return False
    if q.dtype != "float32" or k.dtype != "float32" or v.dtype != "float32":
        return False
    if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
        return False
    return (tuple(k.shape) == tuple(v.shape) and tuple(q.shape[:-2]) == tuple(k.shape[:-2])
            and q.shape[-1] == k.shape[-1] and 0 < q.shape[-2] <= k.shape[-2] and scale > 0)


def _fused_attention(q, k, v, scale):
    """Causal attention through csrc/attention.c: q (B, nh, Tq, hs) or (N, Tq, hs), k, v
    (B, nh, Tk, hs) or (N, Tk, hs), float32, Tq <= Tk (query i at position Tk - Tq + i)
    -> (B, nh, Tq, hs) or (N, Tq, hs). Forward saves the output and the row log-sum-exp;
    backward recomputes the probabilities tile by tile."""
    if q.ndim == 3:
        return squeeze(_fused_attention(unsqueeze(q, 0), unsqueeze(k, 0), unsqueeze(v, 0), scale), 0)
    out, lse = _C.attention_forward(q, k, v, scale)
    if _grad_on():
        gq, gk, gv = _rg(q), _rg(k), _rg(v)
        if gq or gk or gv:
            saved = out.detach()  # no cycle out -> node -> closure -> out

            def backward(dout):
                dq, dk, dv = _C.attention_backward(q, k, v, saved, lse, dout, scale)
                return dq if gq else None, dk if gk else None, dv if gv else None
            _record(out, backward, q if gq else None, k if gk else None, v if gv else None)
    return out


def _qkv_heads(qkv, n_head):
    """Raw (no autograd) strided views q, k, v (B, nh, T, hs) of a (B, T, 3C) tensor whose
    last axis is [q | k | v], each C = nh * hs wide with the heads side by side."""
    B, T, C3 = qkv.shape
    hs = C3 // (3 * n_head)
    heads = _C.permute(_C.reshape(qkv, (B, T, 3, n_head, hs)), (2, 0, 3, 1, 4))  # (3, B, nh, T, hs)
    return _C.getitem(heads, 0), _C.getitem(heads, 1), _C.getitem(heads, 2)


def causal_self_attention(qkv, n_head, scale=None):
    """Multi-head causal self-attention straight from the fused QKV projection:
    qkv (B, T, 3C) float32 (last axis [q | k | v], heads side by side in each) -> y (B, T, C),
    heads side by side (what c_proj takes), scale defaulting to 1/sqrt(C / n_head).
    Equals splitting qkv into (B, nh, T, hs) heads, scaled_dot_product_attention(is_causal=True)
    and merging the heads, but copies nothing: the kernel reads the heads in place, writes y
    in (B, T, nh, hs) order, and backward writes dq, dk, dv into one (B, T, 3C) gradient.
    No dropout, no KV cache (use scaled_dot_product_attention for those)."""
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) != 0 or n_head < 1:
        raise ValueError(f"causal_self_attention: expected qkv of shape (B, T, 3C) with C divisible by "
                         f"n_head={n_head}, got {tuple(qkv.shape)}")
    B, T, C3 = qkv.shape
    C, hs = C3 // 3, C3 // (3 * n_head)
    if scale is None:
        scale = 1.0 / math.sqrt(hs)
    if not _fused.get() or T == 0 or qkv.dtype != "float32":
        q, k, v = (getitem(permute(reshape(qkv, (B, T, 3, n_head, hs)), (2, 0, 3, 1, 4)), i) for i in range(3))
        y = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return reshape(transpose(y, 1, 2), (B, T, C))
    qkv_in = qkv if qkv.strides[-1] == 1 else qkv.contiguous()
    q, k, v = _qkv_heads(qkv_in, n_head)
    out, lse = _C.attention_forward(q, k, v, scale)           # (B, nh, T, hs), stored (B, T, nh, hs)
    y = _C.reshape(_C.transpose(out, 1, 2), (B, T, C))
    if _grad_on() and qkv.requires_grad:
        def backward(dy):
            dout = _C.transpose(_C.reshape(dy, (B, T, n_head, hs)), 1, 2)
            dqkv = _C.empty((B, T, C3))
            dq, dk, dv = _qkv_heads(dqkv, n_head)
            _C.attention_backward(q, k, v, out, lse, dout, scale, dq, dk, dv)
            return (dqkv,)
        _record(y, backward, qkv)
    return y


def bias_gelu(x, bias):
    """gelu(x + bias, approximate="tanh") in one pass: x (..., C), bias (C), float32 -> shaped
    like x. Only x is kept for backward, which recomputes x + bias."""
    if not _fused.get():
        return gelu(add(x, bias), approximate="tanh")
    y = _C.bias_gelu(x, bias)
    if _grad_on():
        gx, gb = _rg(x), _rg(bias)
        if gx or gb:
            def backward(dy):
                dx, db = _C.bias_gelu_backward(x, bias, dy, gb)
                return dx if gx else None, db
            _record(y, backward, x if gx else None, bias if gb else None)
    return y


def linear_gelu(x, weight, bias=None):
    """gelu(x @ weight^T + bias, approximate="tanh"), the first half of a GPT MLP (c_fc + GELU),
    with the bias add and GELU fused: x (..., in), weight (out, in), bias (out) or None ->
    (..., out), float32. One autograd node: backward gives dx, dweight, dbias from the saved
    x @ weight^T."""
    if bias is None or not _fused.get():
        return gelu(linear(x, weight, bias), approximate="tanh")
    if x.shape[-1] != weight.shape[-1] or weight.ndim != 2:
        raise ValueError(f"linear_gelu: input of shape {tuple(x.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)} (expected (out, {x.shape[-1]}))")
    gemm = _amp.gemm()    # bf16 products under minillm.autocast, as F.linear
    u = gemm(x, weight, transpose_b=True)
    y = _C.bias_gelu(u, bias)
    if _grad_on():
        gx, gw, gb = _rg(x), _rg(weight), _rg(bias)
        if gx or gw or gb:
            def backward(dy):
                du, db = _C.bias_gelu_backward(u, bias, dy, gb)
                dx = gemm(du, weight) if gx else None
                dw = None
                if gw:
                    d2 = _C.reshape(du, (-1, du.shape[-1])) if du.ndim != 2 else du
                    x2 = _C.reshape(x, (-1, x.shape[-1])) if x.ndim != 2 else x
                    dw = gemm(d2, x2, transpose_a=True)
                return dx, dw, db
            _record(y, backward, x if gx else None, weight if gw else None, bias if gb else None)
    return y


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """(s, y) with s = x + residual and y = layer_norm(s, (C,), weight, bias, eps), computed in
    one pass: x, residual (..., C) float32 of the same shape, weight, bias (C) or None.
    For a pre-LayerNorm block: ``x, h = F.add_layer_norm(x, attn_out, ln_2.weight, ln_2.bias)``
    then ``x = x + mlp(h)``. Backward: s passes its gradient to x and residual; y's is
    layer_norm's backward on s."""
    if not _fused.get():
        s = add(x, residual)
        return s, layer_norm(s, (s.shape[-1],), weight, bias, eps)
    s, y, mu, rstd = _C.add_layer_norm(x, residual, weight, bias, eps)
    if _grad_on():
        gx, gr, gw, gb = _rg(x), _rg(residual), _rg(weight), _rg(bias)
        if gx or gr:
            def backward_add(ds):
                return ds if gx else None, ds if gr else None
            _record(s, backward_add, x if gx else None, residual if gr else None)
        if gx or gr or gw or gb:
            def backward(dy):
                dx, dw, db = _C.layer_norm_backward(s, weight, mu, rstd, dy)
                if gb and db is None:  # no weight: dbias = sum of dy over rows
                    db = _C.sum(_C.reshape(dy, (-1, dy.shape[-1])), 0)
                return dx if (gx or gr) else None, dw if gw else None, db if gb else None
            _record(y, backward, s if (gx or gr) else None, weight if gw else None, bias if gb else None)
    return s, y
# ===================================================================== end fused kernels


# ================================================================= Llama-family ops
# RMSNorm, rotary position embeddings and the SwiGLU gate (csrc/rmsnorm.c, rope.c, silu.c),
# each forward beside its backward, as the Llama family (models/llama.py) trains with them.
__all__ += ["rms_norm", "rotary", "qk_norm_rotary", "silu", "silu_mul"]


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (Zhang & Sennrich, 2019), as
    PyTorch's F.rms_norm(x, (C,), weight, eps): x (..., C) float32, weight (C) or None ->
    shaped like x. Backward gives dx and dweight from the saved 1/rms of each row."""
    y, rstd = _C.rms_norm(x, weight, eps)
    if _grad_on():
        gx, gw = _rg(x), _rg(weight)
        if gx or gw:
            def backward(dy):
                dx, dw = _C.rms_norm_backward(x, weight, rstd, dy, gw)
                return dx if gx else None, dw
            _record(y, backward, x if gx else None, weight if gw else None)
    return y


def rotary(x, cos, sin):
    """Rotary position embedding (Su et al., 2021) in the "rotate half" layout: x (B, T, H, d)
    float32, cos, sin (T, d/2) the table rows of the T positions (models.rotary.rope_table,
    sliced) -> a new (B, T, H, d) tensor, dims (i, i + d/2) of each head rotated by the angle of
    row t. Backward rotates the gradient back."""
    y = _C.rope(x, cos, sin)
    if _grad_on() and _rg(x):
        def backward(dy):
            return (_C.rope(dy, cos, sin, True),)
        _record(y, backward, x)
    return y


def qk_norm_rotary(qkv, n_head, cos=None, sin=None, q_weight=None, k_weight=None, eps=1e-5):
    """The q and k of a fused projection qkv (B, T, 3 C) (q, k, v side by side, n_head heads
    each, as GPT's c_attn gives them), in one pass: each head of q and k RMS-normed by its gain
    q_weight or k_weight (hs) (both None: no norm), then rotated by the table rows cos, sin
    (T, hs / 2) (both None: no rotation). Returns a new (B, T, 3 C) tensor, v as it was, ready
    for causal_self_attention. Backward: one pass too (rotated back, then the norm's backward)."""
    y, rstd = _C.qk_rope(qkv, n_head, cos, sin, q_weight, k_weight, eps)
    if _grad_on():
        gx, gq, gk = _rg(qkv), _rg(q_weight), _rg(k_weight)
        if gx or gq or gk:
            def backward(dy):
                dx, dq, dk = _C.qk_rope_backward(dy, qkv, n_head, cos, sin, q_weight, k_weight, rstd)
                return dx if gx else None, dq if gq else None, dk if gk else None
            _record(y, backward, qkv if gx else None, q_weight if gq else None, k_weight if gk else None)
    return y


def silu(x):
    """x * sigmoid(x) (SiLU, a.k.a. swish), elementwise. Float32."""
    return mul(x, sigmoid(x))


def silu_mul(gate, up):
    """silu(gate) * up elementwise, the SwiGLU product of a Llama MLP (Shazeer, 2020), in one
    pass: gate, up float32 of one shape -> that shape. Backward recomputes sigmoid(gate)."""
    y = _C.silu_mul(gate, up)
    if _grad_on():
        gg, gu = _rg(gate), _rg(up)
        if gg or gu:
            def backward(dy):
                dg, du = _C.silu_mul_backward(gate, up, dy)
                return dg if gg else None, du if gu else None
            _record(y, backward, gate if gg else None, up if gu else None)
    return y
# ============================================================= end Llama-family ops
