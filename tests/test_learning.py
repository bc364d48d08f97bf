"""End-to-end learning with the whole stack (ops, tape, layers, optimizers, batches):
small problems with known answers, fixed seeds, a few seconds each."""
import math

import numpy as np

import minillm
import minillm.functional as F
import minillm.nn as nn
import minillm.optim as optim
from minillm.data import Batches


def accuracy(model, X, y):
    with minillm.autograd.no_grad():
        pred = model(minillm.tensor(X)).argmax(axis=1).numpy()
    return float((pred == y).mean())


def test_mlp_learns_xor_exactly():
    minillm.random.manual_seed(0)
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = optim.Adam(model.parameters(), lr=0.05)
    xt, yt = minillm.tensor(X), minillm.tensor(y)
    for _ in range(300):
        loss = F.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(model, X, y) == 1.0
    assert loss.item() < 0.05


def spiral(n_per_class=100, classes=3, seed=0):
    """The classic 2-D spiral (CS231n): `classes` interleaved arms with noise."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for c in range(classes):
        r = np.linspace(0.0, 1.0, n_per_class)
        t = np.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + rng.standard_normal(n_per_class) * 0.2
        X.append(np.stack([r * np.sin(t), r * np.cos(t)], 1))
        y.append(np.full(n_per_class, c))
    return np.concatenate(X).astype(np.float32), np.concatenate(y).astype(np.int64)


def test_mlp_learns_spiral_to_95_percent():
    minillm.random.manual_seed(1)
    X, y = spiral()
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                      lr=1e-2)
    sched = optim.CosineWarmupLR(opt, warmup_steps=20, total_steps=600, min_lr_ratio=0.1)
    batches = Batches(X, y, batch_size=60, shuffle=True, seed=0)
    step = 0
    while step < 600:
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
    assert accuracy(model, X, y) >= 0.95


def test_linear_regression_with_sgd_recovers_weights():
    rng = np.random.default_rng(0)
    w_true = np.array([[2.0, -3.0, 0.5]], dtype=np.float32)
    b_true = np.array([0.7], dtype=np.float32)
    X = rng.standard_normal((256, 3)).astype(np.float32)
    Y = X @ w_true.T + b_true
    model = nn.Linear(3, 1)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xt, yt = minillm.tensor(X), minillm.tensor(Y)
    for _ in range(200):
        loss = F.mse_loss(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(model.weight.numpy(), w_true, atol=1e-3)
    np.testing.assert_allclose(model.bias.numpy(), b_true, atol=1e-3)
    assert math.isfinite(loss.item()) and loss.item() < 1e-6
