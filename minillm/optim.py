"""Optimizers (SGD, Adam, AdamW, Muon) and learning-rate schedules.

Each step updates every parameter with one fused C kernel (csrc/optim.c) that reads and
writes the parameter, its gradient and its state once. Semantics are PyTorch's
(torch.optim.SGD / Adam / AdamW, for-each implementation): parameter groups with their own
options, per-parameter step counts, bias-corrected moments, AdamW's decoupled decay
p *= 1 - lr * weight_decay. Muon (for 2-D weight matrices) orthogonalises its momentum with
a few GEMMs per matrix (newton_schulz) and keeps AdamW for the other parameters.
"""
import math

import numpy as np

from minillm import _C

Tensor = _C.Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Muon", "muon_param_groups", "newton_schulz",
           "flatten_state_dict", "unflatten_state_dict", "constant_lr", "linear_lr", "cosine_with_warmup",
           "warmup_constant_cooldown",
           "LRScheduler", "LambdaLR", "CosineWarmupLR"]


class Optimizer:
    """Base class: holds ``param_groups`` (list of dicts with 'params' and options) and
    ``state`` (per-parameter dicts of step count and state tensors)."""

    # names of the per-parameter state tensors, in state_dict order
    _state_tensors = ()

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}          # id(param) -> dict
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors or of dicts, got a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        """Add a dict {'params': [...], option: value, ...}; options not given take the
        optimizer's defaults. A parameter may appear only once across all groups."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        ps = group.get("params")
        if ps is None:
            raise ValueError("a param group needs a 'params' entry")
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameter {i} of group {len(self.param_groups)} "
                                f"is a {type(p).__name__}, not a Tensor")
            if p.grad_fn is not None:
                raise ValueError(f"{type(self).__name__}: parameter {i} (shape {tuple(p.shape)}) is not a "
                                 f"leaf tensor; optimize the leaves it was computed from")
            if p.dtype != "float32" or not p.is_contiguous():
                raise ValueError(f"{type(self).__name__}: parameter {i} (shape {tuple(p.shape)}) must be "
                                 f"a contiguous float32 tensor, got {p.dtype}")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: parameter {i} of group {len(self.param_groups)} "
                                 f"(shape {tuple(p.shape)}) appears more than once")
            seen.add(id(p))
        group["params"] = ps
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        if not group["lr"] >= 0.0:
            raise ValueError(f"invalid learning rate {group['lr']}")
        if not group.get("weight_decay", 0.0) >= 0.0:
            raise ValueError(f"invalid weight_decay {group['weight_decay']}")

    def zero_grad(self, set_to_none=True):
        """Clear .grad of every parameter (to None, or zero it in place)."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        _C.fill_(p.grad, 0.0)

    def step(self):
        raise NotImplementedError

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self):
        """{'state': {index: {'step': int, name: Tensor, ...}}, 'param_groups': [{options...,
        'params': [indices]}]}, parameters numbered in group order (PyTorch's layout).
        The tensors are the live state (save or copy them before stepping again)."""
        state, groups, index = {}, [], 0
        for g in self.param_groups:
            entry = {k: v for k, v in g.items() if k != "params"}
            ids = []
            for p in g["params"]:
                st = self.state.get(id(p))
                if st:
                    state[index] = dict(st)
                ids.append(index)
                index += 1
            entry["params"] = ids
            groups.append(entry)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore options and per-parameter state saved by state_dict() from an optimizer
        over parameters of the same shapes, in the same group order. State tensors are
        copied (NumPy arrays are accepted in place of tensors)."""
        groups = state_dict.get("param_groups")
        state = state_dict.get("state", {})
        if groups is None or len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: the state has "
                             f"{'no' if groups is None else len(groups)} param groups, this optimizer "
                             f"has {len(self.param_groups)}")
        params = []
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"load_state_dict: param group {i} has {len(saved['params'])} "
                                 f"parameters in the state, {len(own['params'])} here")
            params.extend(zip(saved["params"], own["params"]))
        new_state = {}
        for saved_index, p in params:
            st = state.get(saved_index, state.get(str(saved_index)))
            if not st:
                continue
            entry = {}
            for k, v in st.items():
                if k == "step":
                    entry[k] = int(v)
                    continue
                t = v if isinstance(v, Tensor) else Tensor.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"load_state_dict: state {k!r} of parameter {saved_index} has shape "
                                     f"{tuple(t.shape)}, the parameter has {tuple(p.shape)}")
                entry[k] = t.copy()
            new_state[id(p)] = entry
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = v
        self.state = new_state


def flatten_state_dict(state_dict):
    """Split an optimizer state_dict() into what a safetensors file can hold:
    (tensors, meta). tensors maps 'state.<index>.<name>' to each state tensor; meta is the
    rest as plain JSON-able Python values ({'steps': {index: step}, 'param_groups': [...]}).
    ``minillm.save(tensors, path, metadata={'optimizer': json.dumps(meta)})`` stores both;
    unflatten_state_dict(tensors, meta) rebuilds the state_dict."""
    tensors, steps = {}, {}
    for index, st in state_dict["state"].items():
        for name, value in st.items():
            if name == "step":
                steps[str(index)] = int(value)
            else:
                tensors[f"state.{index}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, {"steps": steps, "param_groups": groups}


def unflatten_state_dict(tensors, meta):
    """Inverse of flatten_state_dict: tensors (name -> Tensor or NumPy array) and meta."""
    state = {}
    for key, value in tensors.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "state":
            raise ValueError(f"optimizer state: unexpected tensor name {key!r} (expected state.<index>.<name>)")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    for index, step in meta.get("steps", {}).items():
        state.setdefault(int(index), {})["step"] = int(step)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2
    weight decay (PyTorch's torch.optim.SGD):
        d = g + weight_decay p;  b = momentum b + (1 - dampening) d  (b = d on the first step)
        d = d + momentum b (nesterov) or b;  p -= lr d
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")
        if momentum < 0:
            raise ValueError(f"SGD: invalid momentum {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def step(self):
        """One update of every parameter that has a gradient."""
        sgd = _C.sgd_step_
        for g in self.param_groups:
            lr, mom, damp = g["lr"], g["momentum"], g["dampening"]
            wd, nesterov = g["weight_decay"], g["nesterov"]
            for p in g["params"]:
                grad = p.grad
                if grad is None:
                    continue
                buf, first = None, True
                if mom != 0.0:
                    st = self.state.get(id(p))
                    if st is None:
                        st = self.state[id(p)] = {"momentum_buffer": _C.empty(p.shape)}
                    else:
                        first = False
                    buf = st["momentum_buffer"]
                sgd(p, grad, buf, lr, mom, damp, wd, nesterov, first)


def adam_group_step(state, group, decoupled):
    """One Adam(W) update of every parameter of `group` that has a gradient (the fused kernel;
    moments kept in `state` by id(param)); decoupled: AdamW's weight decay, else L2 in the
    gradient. Shared by Adam, AdamW and Muon's AdamW half."""
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    b1, b2 = group["betas"]
    for p in group["params"]:
        if p.grad is None:
            continue
        st = state.get(id(p))
        if st is None:
            st = state[id(p)] = {"step": 0, "exp_avg": _C.zeros(p.shape), "exp_avg_sq": _C.zeros(p.shape)}
        st["step"] += 1
        _C.adam_step_(p, p.grad, st["exp_avg"], st["exp_avg_sq"], lr, b1, b2, eps, wd, decoupled, st["step"])


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's semantics: bias-corrected moments and
    L2 weight decay added to the gradient (g += weight_decay p):
        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    _decoupled = False
    _state_tensors = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        if amsgrad:
            raise ValueError(f"{type(self).__name__}: amsgrad is not supported")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"{type(self).__name__}: invalid eps {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self):
        """One update of every parameter that has a gradient."""
        for g in self.param_groups:
            adam_group_step(self.state, g, self._decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019; PyTorch's AdamW):
    p *= 1 - lr weight_decay, then the Adam update with the raw gradient. Default
    weight_decay 0.01. Use param groups to exempt biases and LayerNorm weights."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# ------------------------------------------------------------------- Muon
# Source: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024,
# kellerjordan.github.io/posts/muon/): SGD momentum with Nesterov, the update of each 2-D
# weight replaced by the nearest semi-orthogonal matrix, approximated by five steps of a quintic
# Newton-Schulz iteration X <- a X + (b A + c A A) X, A = X X^T, (a, b, c) = (3.4445, -4.7750,
# 2.0315), started from X = G / (||G||_F + 1e-7) on the wide orientation (rows <= columns), and
# scaled by sqrt(max(1, rows / columns)) for a weight of shape (rows, columns) = (out, in).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7

# parameters named like these are embedding tables or LM heads: AdamW, not Muon
_ADAMW_NAMES = ("wte", "wpe", "embed", "lm_head", "head")


def newton_schulz(g, steps=5):
    """The approximate orthogonalisation U V^T of g = U S V^T (float32, 2-D (rows, cols)), by
    `steps` quintic Newton-Schulz iterations through the GEMM; returns a new contiguous
    (rows, cols) tensor. Singular values come out in about [0.7, 1.2], not exactly 1."""
    if g.ndim != 2:
        raise ValueError(f"newton_schulz: expected a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    tall = g.shape[0] > g.shape[1]
    x = _C.transpose(g, 0, 1).contiguous() if tall else g.copy()
    _C.scale_(x, 1.0 / (math.sqrt(_C.sumsq_list([x])) + NS_EPS))
    m = x.shape[0]
    A, B, y = _C.empty((m, m)), _C.empty((m, m)), _C.empty(tuple(x.shape))
    for _ in range(steps):
        _C.matmul(x, x, transpose_b=True, out=A)            # A = X X^T      (m, m)
        _C.matmul(A, A, out=B, alpha=c)                     # B = c A A
        _C.axpy_(b, A, B)                                   #   + b A
        _C.copy_(y, x)
        _C.matmul(B, x, out=y, beta=a)                      # Y = B X + a X  (m, n)
        x, y = y, x
    return _C.transpose(x, 0, 1).contiguous() if tall else x


def muon_param_groups(named_parameters):
    """Split (name, parameter) pairs (model.named_parameters()) into Muon's two kinds:
    ([2-D weights], [the rest]); the rest are 1-D parameters (biases, norm gains) and 2-D
    tables whose name says embedding or head (wte, wpe, embed_tokens, lm_head), which AdamW
    trains better (the Muon description keeps them out too)."""
    muon, other = [], []
    for name, p in named_parameters:
        if not isinstance(name, str):
            raise TypeError(f"muon_param_groups: expected (name, tensor) pairs, got a "
                            f"{type(name).__name__} as a name")
        parts = name.split(".")
        embedding_or_head = any(part.startswith(_ADAMW_NAMES) for part in parts)
        (muon if p.ndim == 2 and not embedding_or_head else other).append(p)
    return muon, other


class Muon(Optimizer):
    """Muon for the 2-D weight matrices, AdamW for every other parameter, as one optimizer
    (one state_dict, one step()).

    params: model.named_parameters() (split by muon_param_groups), or a list of param-group
    dicts each with "use_muon": True or False (other keys override that kind's options).
    Muon groups: lr, momentum, nesterov, ns_steps, weight_decay. Per Muon parameter W (out, in):
        b = momentum b + g;  u = g + momentum b (nesterov) or b
        W *= 1 - lr weight_decay;  W -= lr sqrt(max(1, out / in)) newton_schulz(u, ns_steps)
    AdamW groups: adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay (their 'lr', 'betas',
    'eps', 'weight_decay' in the group), the update of optim.AdamW.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
                 adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_eps=1e-8, adamw_weight_decay=0.0):
        self._muon_defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                   weight_decay=weight_decay, use_muon=True)
        self._adamw_defaults = dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps,
                                    weight_decay=adamw_weight_decay, use_muon=False)
        if isinstance(params, Tensor):
            raise TypeError("Muon: params must be (name, tensor) pairs or param-group dicts, "
                            "got a single Tensor")
        items = list(params)
        if items and not isinstance(items[0], dict):
            if not all(isinstance(i, tuple) and len(i) == 2 for i in items):
                raise TypeError("Muon: params must be model.named_parameters() ((name, tensor) "
                                "pairs) or param-group dicts with \"use_muon\"")
            muon, other = muon_param_groups(items)
            items = [{"params": muon, "use_muon": True}] + \
                ([{"params": other, "use_muon": False}] if other else [])
        super().__init__(items, {})

    def add_param_group(self, group):
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        if not isinstance(group.get("use_muon"), bool):
            raise ValueError(f"Muon: every param group needs \"use_muon\": true or false, got "
                             f"{group.get('use_muon')!r}")
        kind = self._muon_defaults if group["use_muon"] else self._adamw_defaults
        group = {**kind, **group}
        if group["use_muon"]:
            for p in ([group["params"]] if isinstance(group["params"], Tensor) else group["params"]):
                if isinstance(p, Tensor) and p.ndim != 2:
                    raise ValueError(f"Muon: a Muon parameter must be a 2-D matrix, got shape "
                                     f"{tuple(p.shape)}; put it in a group with \"use_muon\": false")
        super().add_param_group(group)

    def _check_group(self, group):
        def bad(name, want):
            prefix = "" if group["use_muon"] else "adamw_"
            value = group[name]
            return ValueError(f"Muon: {prefix}{name} must be {want}, got {value!r}")

        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (number(group["lr"]) and group["lr"] >= 0):
            raise bad("lr", "a finite number >= 0")
        if not (number(group["weight_decay"]) and group["weight_decay"] >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        if group["use_muon"]:
            if not (number(group["momentum"]) and 0 <= group["momentum"] < 1):
                raise bad("momentum", "a number in [0, 1)")
            if not isinstance(group["nesterov"], bool):
                raise bad("nesterov", "true or false")
            if group["nesterov"] and group["momentum"] == 0:
                raise bad("momentum", "> 0 with nesterov")
            ns = group["ns_steps"]
            if isinstance(ns, bool) or not isinstance(ns, int) or not 1 <= ns <= 100:
                raise bad("ns_steps", "an integer in [1, 100]")
        else:
            betas = group["betas"]
            if not (len(betas) == 2 and all(number(x) and 0 <= x < 1 for x in betas)):
                raise bad("betas", "two numbers in [0, 1)")
            if not (number(group["eps"]) and group["eps"] >= 0):
                raise bad("eps", "a finite number >= 0")

    def step(self):
        """One update of every parameter that has a gradient."""
        state = self.state
        for g in self.param_groups:
            lr, wd = g["lr"], g["weight_decay"]
            if not g["use_muon"]:
                adam_group_step(state, g, True)
                continue
            mom = g["momentum"]
            for p in g["params"]:
                grad = p.grad
                if grad is None:
                    continue
                grad = grad.contiguous()
                st = state.get(id(p))
                if st is None:
                    st = state[id(p)] = {"step": 0, "momentum_buffer": _C.zeros(p.shape)}
                st["step"] += 1
                buf = st["momentum_buffer"]
                _C.scale_(buf, mom)
                _C.axpy_(1.0, grad, buf)                    # b = momentum b + g
                if g["nesterov"]:
                    u = grad.copy()
                    _C.axpy_(mom, buf, u)                   # u = g + momentum b
                else:
                    u = buf
                o = newton_schulz(u, g["ns_steps"])
                if wd:
                    _C.scale_(p, 1.0 - lr * wd)
                rows, cols = p.shape
                _C.axpy_(-lr * math.sqrt(max(1.0, rows / cols)), o, p)


# ------------------------------------------------------------------- LR schedules
def constant_lr(step, lr, warmup_steps=0):
    """lr, after an optional linear warmup lr (step+1)/(warmup_steps+1) for step < warmup_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    return lr


def linear_lr(step, max_lr, total_steps, min_lr=0.0, warmup_steps=0):
    """Linear warmup to max_lr over warmup_steps, then linear decay to min_lr at
    total_steps, min_lr after."""
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    frac = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max_lr + (min_lr - max_lr) * frac


def cosine_with_warmup(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup max_lr (step+1)/(warmup_steps+1) for step < warmup_steps, then a
    half cosine from max_lr down to min_lr at total_steps, min_lr after (nanoGPT's
    schedule)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (max_lr - min_lr)


def warmup_constant_cooldown(step, fraction, max_lr, warmup_steps, cooldown_frac, min_lr=0.0):
    """The schedule of a time-budgeted run, where `fraction` (in [0, 1]) is the part of the
    budget used before this step: linear warmup max_lr (step+1)/(warmup_steps+1) for step <
    warmup_steps, then max_lr until fraction 1 - cooldown_frac, then a straight line down to
    min_lr at fraction 1 (min_lr after). During a warmup that reaches into the cooldown the lower
    of the two applies."""
    if fraction >= 1.0:
        return min_lr
    start = 1.0 - cooldown_frac
    lr = max_lr
    if fraction > start:
        lr = min_lr + (max_lr - min_lr) * (1.0 - fraction) / cooldown_frac
    if step < warmup_steps:
        lr = min(lr, max_lr * (step + 1) / (warmup_steps + 1))
    return lr


class LRScheduler:
    """Sets each param group's 'lr' from the step count. Construction applies step 0;
    call step() after each optimizer.step()."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = -1
        self.step()

    def lr_at(self, step, base_lr):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.last_epoch, base)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        """The learning rate of each group after the last step()."""
        return list(self._last_lr)

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = list(state["base_lrs"])
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.last_epoch, base)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(step)."""

    def __init__(self, optimizer, lr_lambda):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def lr_at(self, step, base_lr):
        return base_lr * self.lr_lambda(step)


class CosineWarmupLR(LRScheduler):
    """cosine_with_warmup(step, base_lr, warmup_steps, total_steps, min_lr) per group,
    where min_lr = min_lr_ratio * base_lr (so groups keep their proportions)."""

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr_ratio=0.1):
        if total_steps < warmup_steps:
            raise ValueError(f"CosineWarmupLR: total_steps {total_steps} < warmup_steps {warmup_steps}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer)

    def lr_at(self, step, base_lr):
        return cosine_with_warmup(step, base_lr, self.warmup_steps, self.total_steps,
                                  base_lr * self.min_lr_ratio)
