"""Optimizers: 20-step trajectories against a NumPy transcription of each update rule
(always) and against torch.optim (where installed); param groups, state dicts, schedules."""
import math

import numpy as np
import pytest

import minillm
import minillm.nn as nn
import minillm.optim as optim
from minillm import serialization

STEPS = 20
TOL = 1e-5


def grad_of(p):
    """A deterministic, parameter-dependent gradient (float32), the same for every library."""
    p = np.asarray(p, dtype=np.float32)
    return (np.sin(3.0 * p) + 0.1 * p).astype(np.float32)


def initial_params():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]


def run_minillm(make_opt, groups=None):
    params = [minillm.tensor(a.copy(), requires_grad=True) for a in initial_params()]
    opt = make_opt(params if groups is None else groups(params))
    for _ in range(STEPS):
        for p in params:
            p.grad = minillm.tensor(grad_of(p.numpy()))
        opt.step()
    return [p.numpy().copy() for p in params]


# ---- NumPy transcriptions of PyTorch's documented algorithms (float64)
def np_sgd(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    params = [a.astype(np.float64) for a in initial_params()]
    bufs = [None] * len(params)
    for _ in range(STEPS):
        for i, p in enumerate(params):
            d = grad_of(p).astype(np.float64) + weight_decay * p
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = p - lr * d
    return params


def np_adam(lr, betas, eps, weight_decay, decoupled, lrs=None, wds=None):
    params = [a.astype(np.float64) for a in initial_params()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2 = betas
    for t in range(1, STEPS + 1):
        for i, p in enumerate(params):
            lr_i = lrs[i] if lrs else lr
            wd_i = wds[i] if wds else weight_decay
            g = grad_of(p).astype(np.float64)
            if decoupled:
                p = p * (1 - lr_i * wd_i)
            else:
                g = g + wd_i * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1 ** t)
            denom = np.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + eps
            params[i] = p - lr_i * mhat / denom
    return params


def assert_trajectory(got, want, tol=TOL):
    for g, w in zip(got, want):
        err = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-6)
        assert err <= tol, f"relative error {err:.2e} after {STEPS} steps"


SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
               dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), dict(lr=0.1, weight_decay=0.1)]
ADAM_CONFIGS = [dict(lr=1e-2), dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)]


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
def test_sgd_matches_numpy_transcription(cfg):
    assert_trajectory(run_minillm(lambda p: optim.SGD(p, **cfg)), np_sgd(**cfg))


@pytest.mark.parametrize("cfg", ADAM_CONFIGS)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_adamw_match_numpy_transcription(cls, cfg):
    full = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0 if cls == "Adam" else 0.01)
    full.update(cfg)
    got = run_minillm(lambda p: getattr(optim, cls)(p, **cfg))
    assert_trajectory(got, np_adam(full["lr"], full["betas"], full["eps"], full["weight_decay"],
                                   decoupled=cls == "AdamW"))


def run_torch(make_opt, groups=None):
    torch = pytest.importorskip("torch")
    params = [torch.tensor(a.copy(), requires_grad=True) for a in initial_params()]
    opt = make_opt(params if groups is None else groups(params))
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.tensor(grad_of(p.detach().numpy()))
        opt.step()
    return [p.detach().numpy().copy() for p in params]


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
def test_sgd_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    assert_trajectory(run_minillm(lambda p: optim.SGD(p, **cfg)),
                      run_torch(lambda p: torch.optim.SGD(p, foreach=False, **cfg)))


@pytest.mark.parametrize("cfg", ADAM_CONFIGS)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_adamw_match_torch(cls, cfg):
    torch = pytest.importorskip("torch")
    assert_trajectory(run_minillm(lambda p: getattr(optim, cls)(p, **cfg)),
                      run_torch(lambda p: getattr(torch.optim, cls)(p, **cfg)))


def test_param_groups_use_their_own_options():
    def groups(ps):
        return [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "lr": 3e-2, "weight_decay": 0.0}]
    got = run_minillm(lambda g: optim.AdamW(g, lr=1e-2), groups)
    assert_trajectory(got, np_adam(None, (0.9, 0.999), 1e-8, None, True, lrs=[1e-2, 3e-2], wds=[0.1, 0.0]))
    torch = pytest.importorskip("torch")
    assert_trajectory(got, run_torch(lambda g: torch.optim.AdamW(g, lr=1e-2), groups))


def test_parameter_given_twice_raises():
    p = minillm.zeros((3,), requires_grad=True)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.AdamW([{"params": [p]}, {"params": [p]}])


def test_bad_optimizer_arguments_raise():
    p = minillm.zeros((3,), requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="not a leaf"):
        optim.SGD([minillm.functional.mul(p, 2.0)], lr=0.1)


def test_parameters_without_grad_are_skipped():
    p = minillm.ones((3,), requires_grad=True)
    opt = optim.AdamW([p], lr=0.1)
    opt.step()
    np.testing.assert_array_equal(p.numpy(), 1.0)
    assert opt.state == {}


def test_state_dict_round_trip_continues_the_same_trajectory():
    params = [minillm.tensor(a.copy(), requires_grad=True) for a in initial_params()]
    opt = optim.AdamW(params, lr=1e-2)
    for step in range(STEPS):
        if step == 10:
            saved = {"state": {i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()}
                               for i, s in opt.state_dict()["state"].items()},
                     "param_groups": opt.state_dict()["param_groups"]}
            saved_params = [p.numpy().copy() for p in params]
        for p in params:
            p.grad = minillm.tensor(grad_of(p.numpy()))
        opt.step()
    final = [p.numpy().copy() for p in params]
    # restart from step 10 in a fresh optimizer
    params2 = [minillm.tensor(a, requires_grad=True) for a in saved_params]
    opt2 = optim.AdamW(params2, lr=0.5)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == 1e-2
    for _ in range(10, STEPS):
        for p in params2:
            p.grad = minillm.tensor(grad_of(p.numpy()))
        opt2.step()
    for a, b in zip(final, params2):
        np.testing.assert_array_equal(a, b.numpy())


def test_load_state_dict_with_wrong_shapes_raises():
    a = minillm.zeros((3,), requires_grad=True)
    opt = optim.Adam([a])
    a.grad = minillm.ones((3,))
    opt.step()
    sd = opt.state_dict()
    b = minillm.zeros((4,), requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(4,\)"):
        optim.Adam([b]).load_state_dict(sd)
    with pytest.raises(ValueError, match="param groups"):
        optim.Adam([{"params": [b]}, {"params": [minillm.zeros((1,), requires_grad=True)]}]).load_state_dict(sd)


def test_zero_grad_sets_none_or_zero():
    p = minillm.ones((2,), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    p.grad = minillm.ones((2,))
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.numpy(), 0.0)
    opt.zero_grad()
    assert p.grad is None


# ------------------------------------------------------------------ clip_grad_norm_
def test_clip_grad_norm_returns_global_norm_and_scales():
    a = minillm.ones((3,), requires_grad=True)
    b = minillm.ones((4,), requires_grad=True)
    a.grad = minillm.tensor(np.array([3.0, 0.0, 0.0], dtype=np.float32))
    b.grad = minillm.tensor(np.array([0.0, 4.0, 0.0, 0.0], dtype=np.float32))
    norm = nn.utils.clip_grad_norm_([a, b], 1.0)
    assert isinstance(norm, float) and abs(norm - 5.0) < 1e-6
    total = math.sqrt(float((a.grad.numpy() ** 2).sum() + (b.grad.numpy() ** 2).sum()))
    assert abs(total - 1.0) < 1e-5
    # below the limit nothing changes
    before = a.grad.numpy().copy()
    assert abs(nn.utils.clip_grad_norm_([a, b], 10.0) - total) < 1e-6
    np.testing.assert_array_equal(a.grad.numpy(), before)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    g = [np.random.default_rng(i).standard_normal(s).astype(np.float32) for i, s in enumerate([(30, 7), (9,)])]
    ps = [minillm.zeros(x.shape, requires_grad=True) for x in g]
    ts = [torch.zeros(x.shape, requires_grad=True) for x in g]
    for p, t, x in zip(ps, ts, g):
        p.grad = minillm.tensor(x)
        t.grad = torch.tensor(x)
    n1 = nn.utils.clip_grad_norm_(ps, 0.5)
    n2 = torch.nn.utils.clip_grad_norm_(ts, 0.5).item()
    assert abs(n1 - n2) <= 1e-5 * n2
    for p, t in zip(ps, ts):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- schedules
def test_schedule_functions():
    assert optim.constant_lr(5, 0.1) == 0.1
    assert optim.constant_lr(0, 0.1, warmup_steps=4) == pytest.approx(0.02)
    assert optim.linear_lr(0, 1.0, 10) == 1.0
    assert optim.linear_lr(5, 1.0, 10, min_lr=0.5) == pytest.approx(0.75)
    assert optim.linear_lr(20, 1.0, 10, min_lr=0.5) == 0.5
    lr = [optim.cosine_with_warmup(s, 1.0, 10, 110, 0.1) for s in range(120)]
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55)       # half way: (max + min) / 2
    assert lr[110] == lr[119] == 0.1
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_schedulers_set_group_lrs_and_resume():
    p = minillm.zeros((1,), requires_grad=True)
    opt = optim.AdamW([{"params": [p]}, {"params": [minillm.zeros((1,), requires_grad=True)], "lr": 0.2}], lr=0.1)
    sched = optim.CosineWarmupLR(opt, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    assert sched.get_last_lr() == pytest.approx([0.1 / 3, 0.2 / 3])
    for _ in range(5):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(optim.cosine_with_warmup(5, 0.1, 2, 10, 0.01))
    state = sched.state_dict()
    opt2 = optim.AdamW([{"params": [p]}, {"params": [minillm.zeros((1,), requires_grad=True)], "lr": 0.2}], lr=0.1)
    sched2 = optim.CosineWarmupLR(opt2, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    sched2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(sched.get_last_lr())
    lam = optim.LambdaLR(opt2, lambda s: 0.5 ** s)
    lam.step()
    lam.step()
    assert lam.get_last_lr() == pytest.approx([0.025, 0.05])


def test_optimizer_state_round_trips_through_a_safetensors_file(tmp_path):
    import json
    params = [minillm.tensor(a.copy(), requires_grad=True) for a in initial_params()]
    opt = optim.AdamW([{"params": [params[0]]}, {"params": [params[1]], "weight_decay": 0.0}], lr=1e-2)
    for _ in range(3):
        for p in params:
            p.grad = minillm.tensor(grad_of(p.numpy()))
        opt.step()
    tensors, meta = optim.flatten_state_dict(opt.state_dict())
    path = str(tmp_path / "optimizer.safetensors")
    minillm.save(tensors, path, metadata={"optimizer": json.dumps(meta)})
    loaded = minillm.load(path)
    meta2 = json.loads(serialization.load_metadata(path)["optimizer"])
    copies = [minillm.tensor(p.numpy().copy(), requires_grad=True) for p in params]
    opt2 = optim.AdamW([{"params": [copies[0]]}, {"params": [copies[1]]}], lr=0.5)
    opt2.load_state_dict(optim.unflatten_state_dict(loaded, meta2))
    assert opt2.param_groups[1]["weight_decay"] == 0.0 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    for o, ps in ((opt, params), (opt2, copies)):
        for p in ps:
            p.grad = minillm.tensor(grad_of(p.numpy()))
        o.step()
    for a, b in zip(params, copies):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
