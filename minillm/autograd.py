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

Gradient buffers and who owns them. When several consumers send a gradient to one node,
the tape sums them. It writes a sum in place only into a buffer it allocated itself in this
pass (an earlier sum) and has handed to no one yet; a buffer stops being the tape's the
moment it is passed to a backward function or a hook, or stored as a leaf's ``.grad``.
Everything else (what backward functions return, the caller's ``gradient``, ``.grad`` from
an earlier backward()) is summed out of place, so a buffer that other code may hold is
never written. ``.grad`` accumulates out of place too: ``g = x.grad`` keeps its value
through later backward() calls.
"""
import numpy as np

from minillm import _C
from minillm._switch import SetSwitch, ThreadLocalValue, switched

__all__ = ["Node", "record", "backward", "register_hook", "no_grad", "enable_grad", "set_grad_enabled",
           "is_grad_enabled", "set_anomaly_detection", "detect_anomaly", "is_anomaly_enabled"]

is_grad_enabled = _C.is_grad_enabled
_set_grad_flag = _C.set_grad_enabled

_anomaly = ThreadLocalValue(False)


class Node:
    """One recorded op: ``backward_fn(dout) -> tuple of input grads`` and ``inputs``, the
    op's input tensors (None where an input is not a tensor). Freed (both set to None)
    once backward has used it, unless ``retain_graph=True``."""

    __slots__ = ("backward_fn", "inputs", "hooks")

    def __init__(self, backward_fn, inputs):
        self.backward_fn = backward_fn
        self.inputs = inputs
        self.hooks = None

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


class _HookHandle:
    """Returned by register_hook; ``remove()`` unregisters the hook."""

    __slots__ = ("hooks", "fn")

    def __init__(self, hooks, fn):
        self.hooks, self.fn = hooks, fn

    def remove(self):
        if self.fn in self.hooks:
            self.hooks.remove(self.fn)


def register_hook(tensor, fn):
    """Call ``fn(grad)`` with the gradient of `tensor` (shaped like it) each time backward()
    computes it: for a leaf, before it is added to ``.grad``; for an op's output, before the
    op's backward runs. fn may return a Tensor of the same shape to use instead, or None.
    The tape never writes into a gradient it has passed to a hook. Returns a handle whose
    ``remove()`` unregisters fn."""
    if not tensor.requires_grad:
        raise RuntimeError(f"register_hook on a tensor of shape {tuple(tensor.shape)} that does not "
                           f"require grad")
    node = tensor.grad_fn
    if node is None:
        if tensor._hooks is None:
            tensor._hooks = []
        hooks = tensor._hooks
    else:
        if node.hooks is None:
            node.hooks = []
        hooks = node.hooks
    hooks.append(fn)
    return _HookHandle(hooks, fn)


def _run_hooks(hooks, g):
    for fn in list(hooks):
        out = fn(g)
        if out is not None:
            if tuple(out.shape) != tuple(g.shape):
                raise RuntimeError(f"a gradient hook returned shape {tuple(out.shape)} for a gradient "
                                   f"of shape {tuple(g.shape)}")
            g = out
    return g


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
    if _anomaly.get():
        _check_finite(tensor, f"backward() started on the output of {root.name if root else 'a leaf'}: it")
    # data pointers a leaf's .grad must not share: the caller's gradient, then each buffer
    # stored as a .grad in this pass (one object may reach several leaves: ``a + b``)
    claimed = {gradient.data_ptr()}
    if root is None:
        _accumulate_leaf(tensor, gradient, claimed)
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
    owned = {}       # id -> buffer: sums this pass allocated and has handed to no one yet
    ready = [root]
    anomaly = _anomaly.get()
    while ready:
        node = ready.pop()
        g = grads.pop(node, None)
        inputs = node.inputs
        if g is not None:
            owned.pop(id(g), None)          # handed to the hooks and the op from here on
            if node.hooks:
                g = _run_hooks(node.hooks, g)
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
                prev = grads.get(fn)
                grads[fn] = gi if prev is None else _summed(prev, gi, owned)
            left = pending[fn] - 1
            pending[fn] = left
            if left == 0:
                ready.append(fn)
        if not retain_graph:
            node.backward_fn = None
            node.inputs = None


def _accumulate_leaf(t, g, claimed):
    """t.grad = g the first time, else t.grad = t.grad + g in a new buffer (the old .grad
    may be held by user code). A buffer stored as .grad must be t's alone (optimizers and
    clip_grad_norm_ update .grad in place): a view, the caller's gradient or a buffer
    already given to another leaf in this pass is copied first."""
    if t._hooks:
        g = _run_hooks(t._hooks, g)
    if g.dtype != "float32":
        g = g.astype("float32")
    if t.grad is not None:
        t.grad = _C.add(t.grad, g)
        return
    if not (g.is_contiguous() and _C.owns_storage(g)) or g.data_ptr() in claimed:
        g = g.copy()
    t.grad = g
    claimed.add(g.data_ptr())


def _summed(prev, g, owned):
    """prev + g: written into prev when prev is a sum this pass allocated and has handed to no
    one (its id is in `owned`), else into a new buffer that becomes the tape's. Fan-in k then
    costs one buffer, not k - 1."""
    if id(prev) in owned and prev.shape == g.shape and g.dtype == "float32":
        return _C.add_(prev, g)
    out = _C.add(prev, g)
    owned[id(out)] = out
    return out


class _GradFlag:
    """Grad mode seen as a switch's state (get / set returning the previous value); the
    flag itself lives in the compiled core (one per thread), which reads it on every op."""

    __slots__ = ()

    @staticmethod
    def get():
        return _C.is_grad_enabled()

    @staticmethod
    def set(value):
        return _C.set_grad_enabled(value)


_grad_flag = _GradFlag()


class set_grad_enabled(SetSwitch):
    """Turn gradient recording on or off: as a function call (takes effect at once), a
    context manager (restores the previous mode on exit) or a decorator."""
    state = _grad_flag
    __slots__ = ()


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
        return switched(fn, _grad_flag, self.mode)


class no_grad(_GradMode):
    """``with minillm.no_grad():`` or ``@minillm.no_grad()``: ops record nothing."""
    mode = False
    __slots__ = ()


class enable_grad(_GradMode):
    """``with minillm.enable_grad():`` or ``@minillm.enable_grad()``: ops record again."""
    mode = True
    __slots__ = ()


class set_anomaly_detection(SetSwitch):
    """Anomaly detection on or off for this thread: when on, backward() raises
    FloatingPointError naming the op as soon as the loss or any gradient contains NaN or inf
    (one pass over each gradient). A call switches at once; ``with`` restores the previous
    setting on exit; as a decorator it applies around each call."""
    state = _anomaly
    __slots__ = ()


def detect_anomaly():
    """``with minillm.detect_anomaly():`` (or ``@minillm.detect_anomaly()``): anomaly detection
    on inside the block, on this thread."""
    return set_anomaly_detection(True)


def is_anomaly_enabled():
    """True when anomaly detection is on for this thread."""
    return _anomaly.get()
