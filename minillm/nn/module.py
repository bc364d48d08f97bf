"""Module and Parameter: the containers layers and models are built from.

A Module holds parameters (nn.Parameter objects, trainable or frozen), buffers (state that
is not learned: register_buffer) and child modules, each registered by assigning an
attribute (or by register_parameter / register_buffer / add_module), as in PyTorch. Names nest with
dots (``blocks.0.attn.weight``) in named_parameters() and state_dict().
"""
from collections import OrderedDict, namedtuple

import numpy as np

from minillm import _C

Tensor = _C.Tensor

__all__ = ["Parameter", "Module", "IncompatibleKeys"]


class Parameter(Tensor):
    """``Parameter(t)`` -> a tensor that is a module parameter: a leaf view of t's storage
    (t copied first if it is not contiguous), ``requires_grad=True`` unless told otherwise.

    Assigning a Parameter to a Module attribute registers it, whatever its requires_grad
    (``Parameter(t, requires_grad=False)`` is a frozen parameter: in parameters() and
    state_dict(), skipped by optimizers' gradient updates as it gets no .grad). A plain
    Tensor attribute is never a parameter, even one that requires grad; state that is not
    learned belongs in ``register_buffer``. Ops on a Parameter return plain Tensors.
    """

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = _C.empty((0,))
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter needs a minillm Tensor, got {type(data).__name__}")
        if data.dtype != "float32":
            raise TypeError(f"Parameter needs a float32 tensor, got {data.dtype}")
        if not data.is_contiguous():
            data = data.copy()  # optimizers update parameters in place with flat kernels
        return Tensor._make_subclass(cls, data, bool(requires_grad))

    def __init__(self, data=None, requires_grad=True):
        pass  # all done in __new__ (the Tensor base takes no arguments)

    def __repr__(self):
        return "Parameter containing:\n" + Tensor.__repr__(self)

    def __reduce__(self):
        # pickle and copy.deepcopy give a Parameter back (Tensor's own reduce gives a Tensor)
        return _rebuild_parameter, (self.detach().copy(), bool(self.requires_grad))


def _rebuild_parameter(data, requires_grad):
    return Parameter(data, requires_grad)


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of all layers and models: subclass it, assign parameters and child
    modules in ``__init__``, define ``forward``; call the module to run forward."""

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        d["training"] = True

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning "
                                 f"attribute {name!r}")
        params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif isinstance(value, Parameter) or (value is None and name in params):
            modules.pop(name, None)
            buffers.pop(name, None)
            params[name] = value
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"buffer {name!r} must be a Tensor or None, got {type(value).__name__}")
            buffers[name] = value
        elif name in params:
            raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} of "
                            f"{type(self).__name__} (expected an nn.Parameter or None)")
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to child module {name!r}")
            modules[name] = None
        # kept in __dict__ too, so that reading self.weight is a plain attribute lookup
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self._non_persistent.discard(name)
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is part of the module's state but not a parameter (e.g. a causal
        mask); in state_dict() unless persistent=False."""
        if "." in name or not name:
            raise KeyError(f"buffer name must be non-empty and contain no '.', got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"buffer {name!r} must be a Tensor or None, got {type(tensor).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    def register_parameter(self, name, param):
        """Register `param` (a Parameter or None) under `name`."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"parameter {name!r} must be an nn.Parameter or None, got "
                            f"{type(param).__name__} (wrap a tensor as nn.Parameter(t))")
        if "." in name or not name:
            raise KeyError(f"parameter name must be non-empty and contain no '.', got {name!r}")
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        self._parameters[name] = param
        object.__setattr__(self, name, param)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name!r} is not a Module: {type(module).__name__}")
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # ------------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --------------------------------------------------------------- traversal
    def named_modules(self, prefix="", memo=None):
        """(name, module) for this module and every descendant, depth first, each once."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(prefix + ("." if prefix else "") + name, memo)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, parameter), each parameter once even if shared (weight tying)."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_name, mod in mods:
            for name, p in mod._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (mod_name + "." if mod_name else "") + name, p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_name, mod in mods:
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (mod_name + "." if mod_name else "") + name, b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only=False):
        """Total number of parameter elements (shared parameters counted once)."""
        return int(sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only))

    def apply(self, fn):
        """Call fn(module) on every descendant, children first, then on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------- modes
    def train(self, mode=True):
        """Set training mode (dropout active) on self and all descendants; returns self."""
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's .grad (to None, or fill with zeros in place)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                _C.fill_(p.grad, 0.0)

    # -------------------------------------------------------------- state dict
    def _state_entries(self, prefix=""):
        """(name, tensor) for every parameter and persistent buffer under every name it
        has (a tied weight appears once per module holding it)."""
        for mod_name, mod in self.named_modules(prefix):
            pre = mod_name + "." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    yield pre + name, p
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    yield pre + name, b

    def state_dict(self, prefix=""):
        """OrderedDict of dotted name -> tensor (parameters and persistent buffers), the
        live tensors, not copies. A tensor shared by several modules (tied weights) appears
        once, under its first name, as safetensors files want; load_state_dict accepts
        it under any of its names."""
        out = OrderedDict()
        seen = set()
        for name, t in self._state_entries(prefix):
            if id(t) not in seen:
                seen.add(id(t))
                out[name] = t
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (Tensors or NumPy arrays) into this module's parameters and buffers
        in place. A tied tensor is filled from whichever of its names is present.
        strict=True: missing or unexpected keys raise KeyError listing them all; a shape
        mismatch always raises ValueError naming the key and both shapes.
        Returns IncompatibleKeys(missing_keys, unexpected_keys)."""
        names = OrderedDict()     # id(tensor) -> (tensor, [names])
        for name, t in self._state_entries():
            names.setdefault(id(t), (t, []))[1].append(name)
        known = {n for _, ns in names.values() for n in ns}
        unexpected = [k for k in state_dict if k not in known]
        missing, mismatched, plan = [], [], []
        for dst, ns in names.values():
            present = [n for n in ns if n in state_dict]
            if not present:
                missing.append(ns[0])
                continue
            for k in present:
                src = state_dict[k]
                src_shape = tuple(src.shape) if hasattr(src, "shape") else np.shape(src)
                if src_shape != tuple(dst.shape):
                    mismatched.append(f"{k}: checkpoint has shape {src_shape}, model has {tuple(dst.shape)}")
            plan.append((dst, state_dict[present[0]]))
        if mismatched:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(mismatched))
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + ", ".join(parts))
        prev = _C.set_grad_enabled(False)
        try:
            for dst, src in plan:
                if not isinstance(src, Tensor):
                    src = np.asarray(src)
                    if src.dtype != np.dtype(dst.dtype):
                        src = src.astype(dst.dtype)
                    src = Tensor.from_numpy(np.ascontiguousarray(src))
                elif src.dtype != dst.dtype:
                    src = src.astype(dst.dtype)
                _C.copy_(dst, src)
        finally:
            _C.set_grad_enabled(prev)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ printing
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"
