"""The autograd tape: nodes, backward, grad modes, anomaly detection.

Every differentiable op (minillm.functional) computes its output, then calls
``record(out, backward_fn, *inputs)``: ``out.grad_fn`` becomes a ``Node`` holding the
op's backward function and its input tensors. ``backward(t)`` walks those nodes in
reverse topological order (iteratively, so a chain of 10,000 ops is fine), calls each
backward function once with the summed gradient of its output, and accumulates into
``.grad`` of the leaves that require grad (as PyTorch does). The tape knows no op by
name: an op is whatever its backward function does.

Backward functions take the gradient of the op's output (a Tensor shaped like the
output) and return one gradient per recorded input (a Tensor shaped like that input,
or None when the input needs none). They must not modify their argument in place: the
same gradient object may be handed to several inputs (``a + b`` passes ``dy`` to both).
"""
import functools
import sys

import numpy as np

from minillm import _C

__all__ = ["Node", "record", "backward", "no_grad", "enable_grad", "set_grad_enabled",
           "is_grad_enabled", "set_anomaly_detection", "is_anomaly_enabled"]

is_grad_enabled = _C.is_grad_enabled
_set_grad_flag = _C.set_grad_enabled

_anomaly = False


class Node:
    """One recorded op: ``backward_fn(dout) -> tuple of input grads`` and ``inputs``, the
    op's input tensors (None where an input is not a tensor). Freed (both set to None)
    once backward has used it, unless ``retain_graph=True``."""

    __slots__ = ("backward_fn", "inputs")

    def __init__(self, backward_fn, inputs):
        self.backward_fn = backward_fn
        self.inputs = inputs

    @property
    def name(self):
        """The op's name, taken from where its backward function was defined
        (``exp.<locals>.backward`` -> ``exp``); for error messages only."""
        fn = self.backward_fn
        if fn is None:
            return "<freed>"
        qual = getattr(fn, "__qualname__", None) or type(fn).__name__
        return qual.split(".<locals>")[0]

    def __repr__(self):
        return f"<Node {self.name}>"


def record(out, backward_fn, *inputs):
    """Make ``out`` the result of a differentiable op: sets ``out.requires_grad`` and
    ``out.grad_fn = Node(backward_fn, inputs)``. Call it only when grad mode is on and
    at least one input requires grad. Returns ``out``."""
    out.requires_grad = True
    out.grad_fn = Node(backward_fn, inputs)
    return out


def _check_finite(t, what):
    if not _C.all_finite(t):
        raise FloatingPointError(f"anomaly detection: {what} of shape {tuple(t.shape)} contains NaN or inf")


def backward(tensor, gradient=None, retain_graph=False):
    """Accumulate d(tensor)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

    tensor: any shape; ``gradient`` (same shape, float32) is required unless tensor has
    one element, where it defaults to 1. The graph is freed afterwards unless
    ``retain_graph=True``.
    """
    if not tensor.requires_grad:
        raise RuntimeError(f"backward() on a tensor of shape {tuple(tensor.shape)} that does not "
                           f"require grad (no op recorded it; is grad mode off?)")
    if gradient is None:
        if tensor.numel() != 1:
            raise RuntimeError(f"backward() on a non-scalar tensor of shape {tuple(tensor.shape)} needs "
                               f"a gradient argument of that shape")
        gradient = _C.ones(tensor.shape)
    else:
        if not isinstance(gradient, _C.Tensor):
            gradient = _C.Tensor.from_numpy(np.ascontiguousarray(gradient, dtype=np.float32))
        if tuple(gradient.shape) != tuple(tensor.shape):
            raise ValueError(f"backward(): gradient has shape {tuple(gradient.shape)} but the tensor "
                             f"has shape {tuple(tensor.shape)}")
    root = tensor.grad_fn
    if _anomaly:
        _check_finite(tensor, f"backward() started on the output of {root.name if root else 'a leaf'}: it")
    claimed = set()
    if root is None:
        _accumulate_leaf(tensor, gradient.copy(), claimed)
        return
    with set_grad_enabled(False):
        _run(root, gradient, retain_graph, claimed)


def _run(root, gradient, retain_graph, claimed):
    # Pass 1: count, for every node under root, how many edges lead into it, so that a
    # node runs only after all of its output's consumers have added their gradient.
    pending = {}
    stack = [root]
    seen = {root}
    while stack:
        node = stack.pop()
        inputs = node.inputs
        if inputs is None:
            raise RuntimeError("backward() through a graph that was already freed: pass "
                               "retain_graph=True to the first backward() to go through it twice")
        for t in inputs:
            if t is None:
                continue
            fn = t.grad_fn
            if fn is not None:
                pending[fn] = pending.get(fn, 0) + 1
                if fn not in seen:
                    seen.add(fn)
                    stack.append(fn)

    # Pass 2 (Kahn): run nodes whose consumers are all done, summing gradients.
    grads = {root: gradient}
    ready = [root]
    anomaly = _anomaly
    while ready:
        node = ready.pop()
        g = grads.pop(node, None)
        inputs = node.inputs
        if g is not None:
            in_grads = node.backward_fn(g)
            if len(in_grads) != len(inputs):
                raise RuntimeError(f"backward of {node.name} returned {len(in_grads)} gradients for "
                                   f"{len(inputs)} inputs")
        else:
            in_grads = (None,) * len(inputs)
        for t, gi in zip(inputs, in_grads):
            if t is None:
                continue
            fn = t.grad_fn
            if gi is not None:
                if gi.shape != t.shape:
                    raise RuntimeError(f"backward of {node.name} returned a gradient of shape "
                                       f"{tuple(gi.shape)} for an input of shape {tuple(t.shape)}")
                if anomaly:
                    _check_finite(gi, f"the gradient computed by the backward of {node.name}")
            if fn is None:
                if gi is not None and t.requires_grad:
                    _accumulate_leaf(t, gi, claimed)
                continue
            if gi is not None:
                prev = grads.pop(fn, None)
                grads[fn] = gi if prev is None else _summed(prev, gi)
            left = pending[fn] - 1
            pending[fn] = left
            if left == 0:
                ready.append(fn)
        if not retain_graph:
            node.backward_fn = None
            node.inputs = None


def _accumulate_leaf(t, g, claimed):
    """t.grad += g, or t.grad = g the first time. A gradient object may be shared
    (``a + b`` hands the same dy to both), and optimizers and clip_grad_norm_ update
    .grad in place, so a buffer already given to another leaf in this pass is copied."""
    if not g.is_contiguous():
        g = g.contiguous()
    elif g.data_ptr() in claimed:
        g = g.copy()
    if g.dtype != "float32":
        g = g.astype("float32")
    if t.grad is None:
        t.grad = g
        claimed.add(g.data_ptr())
    else:
        prev, t.grad = t.grad, None
        t.grad = _summed(prev, g)


def _summed(prev, g):
    """prev + g, written into prev when no other object can see prev's buffer: prev owns its
    storage and the only references left are the caller's (a .grad slot or the pending
    gradients dict, emptied before the call) and this frame's. Saves a temporary the size of
    the gradient (154 MB for GPT-2's tied embedding) and a pass over memory. Otherwise out of
    place: prev may be a gradient another input, leaf or user also holds."""
    # references to prev: the caller's local, this argument and getrefcount's own
    if (sys.getrefcount(prev) <= 3 and _C.owns_storage(prev) and prev.dtype == "float32"
            and g.dtype == "float32" and prev.shape == g.shape):
        return _C.add_(prev, g)
    return _C.add(prev, g)


def _run_in_grad_mode(fn, mode):
    """fn wrapped so that each call runs with grad mode `mode` (the decorator form of
    set_grad_enabled, no_grad and enable_grad)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        prev = is_grad_enabled()
        _set_grad_flag(mode)
        try:
            return fn(*args, **kwargs)
        finally:
            _set_grad_flag(prev)
    return wrapper


class set_grad_enabled:
    """Turn gradient recording on or off: as a function call (takes effect at once), a
    context manager (restores the previous mode on exit) or a decorator."""

    __slots__ = ("prev", "mode")

    def __init__(self, mode):
        self.prev = is_grad_enabled()
        self.mode = bool(mode)
        _set_grad_flag(self.mode)

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        _set_grad_flag(self.prev)
        return False

    def __call__(self, fn):
        # used as a decorator: undo the immediate switch, apply the mode per call
        _set_grad_flag(self.prev)
        return _run_in_grad_mode(fn, self.mode)


class _GradMode:
    """Base of no_grad / enable_grad: a context manager and a decorator."""

    mode = True
    __slots__ = ("prev",)

    def __new__(cls, fn=None):
        self = object.__new__(cls)
        self.prev = None
        # bare ``@no_grad`` (no parentheses) decorates at once
        return self if fn is None else self(fn)

    def __enter__(self):
        self.prev = is_grad_enabled()
        _set_grad_flag(self.mode)

    def __exit__(self, *exc):
        _set_grad_flag(self.prev)
        return False

    def __call__(self, fn):
        return _run_in_grad_mode(fn, self.mode)


class no_grad(_GradMode):
    """``with minillm.no_grad():`` or ``@minillm.no_grad()``: ops record nothing."""
    mode = False
    __slots__ = ()


class enable_grad(_GradMode):
    """``with minillm.enable_grad():`` or ``@minillm.enable_grad()``: ops record again."""
    mode = True
    __slots__ = ()


def set_anomaly_detection(flag):
    """When on, backward() raises FloatingPointError naming the op as soon as the loss
    or any gradient contains NaN or inf (costs one pass over each gradient)."""
    global _anomaly
    _anomaly = bool(flag)


def is_anomaly_enabled():
    return _anomaly
