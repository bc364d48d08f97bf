"""minillm.optim.Muon: Newton-Schulz orthogonalisation and the Muon update against a reference
written here in torch (float32) for the same steps on the same matrices; the AdamW half against
torch.optim.AdamW; state_dict round trips that resume bitwise; bad options refused by name; the
trainer's --optimizer muon."""
import json
import math

import numpy as np
import pytest

import minillm
from minillm import optim

torch = pytest.importorskip("torch")

STEPS = 8
A, B, C = 3.4445, -4.7750, 2.0315


# ---- the reference, written from the Muon description (see minillm/optim.py) in torch float32
def torch_newton_schulz(g, steps=5):
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        a = x @ x.T
        x = A * x + (B * a + C * a @ a) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def torch_muon(weights, grads_of, lr, momentum, nesterov, weight_decay, steps=STEPS):
    ws = [torch.tensor(w) for w in weights]
    bufs = [torch.zeros_like(w) for w in ws]
    for t in range(steps):
        for i, w in enumerate(ws):
            g = torch.tensor(grads_of(t, i))
            bufs[i] = momentum * bufs[i] + g
            u = g + momentum * bufs[i] if nesterov else bufs[i]
            o = torch_newton_schulz(u)
            w.mul_(1 - lr * weight_decay)
            w.add_(o, alpha=-lr * math.sqrt(max(1.0, w.shape[0] / w.shape[1])))
    return [w.numpy() for w in ws]


SHAPES = [(24, 16), (16, 40), (32, 32)]


def random_weights(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 0.2).astype(np.float32) for s in SHAPES]


def random_grads(seed=1):
    rng = np.random.default_rng(seed)
    table = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return lambda t, i: table[t][i]


def run_minillm(weights, grads_of, steps=STEPS, **opts):
    params = [minillm.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = optim.Muon([{"params": params, "use_muon": True}], **opts)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = minillm.tensor(grads_of(t, i))
        opt.step()
    return [p.numpy().copy() for p in params], opt, params


@pytest.mark.parametrize("shape", SHAPES + [(1, 7), (9, 1)])
def test_newton_schulz_matches_the_torch_reference(shape):
    g = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    got = np.asarray(optim.newton_schulz(minillm.tensor(g)))
    want = torch_newton_schulz(torch.tensor(g)).numpy()
    assert got.shape == shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_newton_schulz_brings_singular_values_near_one():
    g = np.random.default_rng(4).standard_normal((32, 48)).astype(np.float32)
    s = np.linalg.svd(np.asarray(optim.newton_schulz(minillm.tensor(g))), compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.3          # the quintic's band, not exactly 1
    s0 = np.linalg.svd(g, compute_uv=False)
    assert s0.max() / s0.min() > 5                  # the input was far from orthogonal


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_steps_match_the_torch_reference(nesterov, weight_decay):
    w0, grads = random_weights(), random_grads()
    got, _, _ = run_minillm(w0, grads, lr=0.02, momentum=0.9, nesterov=nesterov,
                            weight_decay=weight_decay)
    want = torch_muon(w0, grads, 0.02, 0.9, nesterov, weight_decay)
    for g, w, a in zip(got, want, w0):
        assert not np.allclose(g, a, atol=1e-3)     # the weights moved
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_named_parameters_send_embeddings_head_and_gains_to_adamw():
    from minillm.models import build_model
    model = build_model("gpt-tiny", vocab_size=50, n_layer=1, n_embd=32, n_head=2, block_size=8)
    opt = optim.Muon(model.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]]
    other = [names[id(p)] for g in opt.param_groups if not g["use_muon"] for p in g["params"]]
    assert sorted(muon) == sorted(["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                                   "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"])
    assert "transformer.wte.weight" in other and "transformer.wpe.weight" in other
    assert "transformer.h.0.ln_1.weight" in other and "transformer.h.0.attn.c_attn.bias" in other
    llama = build_model("llama-tiny", vocab_size=50)
    split = optim.muon_param_groups(llama.named_parameters())
    assert all(p.ndim == 2 for p in split[0])
    names = {id(p): n for n, p in llama.named_parameters()}
    assert not any("embed" in names[id(p)] or "lm_head" in names[id(p)] for p in split[0])


def test_adamw_half_matches_torch_adamw():
    rng = np.random.default_rng(5)
    w = [rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in w] for _ in range(STEPS)]
    params = [minillm.tensor(a.copy(), requires_grad=True) for a in w]
    opt = optim.Muon([{"params": params, "use_muon": False}], adamw_lr=0.01, adamw_betas=(0.9, 0.95),
                     adamw_eps=1e-8, adamw_weight_decay=0.1)
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in w]
    topt = torch.optim.AdamW(tparams, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for t in range(STEPS):
        for p, tp, g in zip(params, tparams, grads[t]):
            p.grad = minillm.tensor(g)
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_resumes_bitwise():
    w0, grads = random_weights(), random_grads()
    extra = [np.random.default_rng(9).standard_normal(5).astype(np.float32)]

    def make(weights):
        ps = [minillm.tensor(a.copy(), requires_grad=True) for a in weights]
        opt = optim.Muon([{"params": ps[:3], "use_muon": True}, {"params": ps[3:], "use_muon": False}],
                         lr=0.03, momentum=0.9, adamw_lr=0.01)
        return ps, opt

    def run(ps, opt, t0, t1):
        for t in range(t0, t1):
            for i, p in enumerate(ps):
                p.grad = minillm.tensor(grads(t, i) if i < 3 else np.full(5, 0.1 * (t + 1), np.float32))
            opt.step()

    ps, opt = make(w0 + extra)
    run(ps, opt, 0, STEPS)
    whole = [p.numpy().copy() for p in ps]

    ps, opt = make(w0 + extra)
    run(ps, opt, 0, 3)
    # through the checkpoint's form: flattened to tensors + JSON and back
    tensors, meta = optim.flatten_state_dict(opt.state_dict())
    tensors = {k: np.asarray(v).copy() for k, v in tensors.items()}
    meta = json.loads(json.dumps(meta))
    saved = [p.numpy().copy() for p in ps]
    ps2, opt2 = make(saved)
    opt2.load_state_dict(optim.unflatten_state_dict(tensors, meta))
    assert opt2.param_groups[1]["betas"] == opt.param_groups[1]["betas"]
    run(ps2, opt2, 3, STEPS)
    for a, b in zip(whole, ps2):
        assert np.array_equal(a, b.numpy())


@pytest.mark.parametrize("opts, name", [
    (dict(lr=-1.0), "lr"), (dict(lr=math.nan), "lr"), (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"), (dict(ns_steps=0), "ns_steps"), (dict(ns_steps=2.5), "ns_steps"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(nesterov="yes"), "nesterov"),
    (dict(adamw_lr=-1e-3), "adamw_lr"), (dict(adamw_betas=(0.9, 1.0)), "adamw_betas"),
    (dict(adamw_eps=-1.0), "adamw_eps"), (dict(adamw_weight_decay=math.inf), "adamw_weight_decay")])
def test_bad_options_are_refused_by_name(opts, name):
    ps = [minillm.tensor(np.ones((3, 4), np.float32), requires_grad=True),
          minillm.tensor(np.ones(4, np.float32), requires_grad=True)]
    with pytest.raises(ValueError, match=name):
        optim.Muon([{"params": ps[:1], "use_muon": True}, {"params": ps[1:], "use_muon": False}], **opts)


def test_a_non_matrix_in_a_muon_group_is_refused():
    p = minillm.tensor(np.ones(4, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=r"2-D matrix, got shape \(4,\)"):
        optim.Muon([{"params": [p], "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon"):
        optim.Muon([{"params": [p]}])
    with pytest.raises(TypeError, match="named_parameters"):
        optim.Muon([p])


# ---- through the trainer


def _config(tokens_dir, out_dir, **kw):
    from minillm.train import TrainConfig
    opts = dict(model="gpt-tiny", n_layer=1, n_head=2, n_embd=32, block_size=16, data=tokens_dir,
                out_dir=str(out_dir), batch_size=8, max_steps=30, warmup_steps=3, lr=3e-3, min_lr=3e-4,
                optimizer="muon", muon_lr=0.02, eval_interval=0, eval_batches=2, final_eval_batches=2,
                log_interval=5, checkpoint_interval=0, progress="none", seed=7)
    opts.update(kw)
    return TrainConfig(**opts)


def test_trainer_with_muon_lowers_the_loss(tokens_dir, tmp_path):
    from minillm.train import Trainer
    t = Trainer(_config(tokens_dir, tmp_path / "run"))
    assert isinstance(t.optimizer, optim.Muon)
    start = t.evaluate(max_batches=2)["loss"]
    end = t.train()["loss"]
    assert end < start - 0.5
    # both kinds follow one schedule, each from its own peak
    adamw_lr = t.lr_at(t.step - 1)
    assert adamw_lr < 3e-3 / 2
    for g in t.optimizer.param_groups:
        assert g["lr"] == pytest.approx(adamw_lr * (0.02 / 3e-3 if g["use_muon"] else 1.0))


def test_a_muon_run_resumes_bitwise(tokens_dir, tmp_path):
    from minillm import checkpoint
    from minillm.train import Trainer
    kw = dict(max_steps=6, checkpoint_interval=3, keep_checkpoints=5)
    full = Trainer(_config(tokens_dir, tmp_path / "full", **kw))
    full.train()
    cut = Trainer(_config(tokens_dir, tmp_path / "cut", **kw))
    cut.train()
    resumed = Trainer.resume(checkpoint.checkpoint_folder(str(tmp_path / "cut"), 3))
    assert resumed.step == 3
    resumed.train()
    assert full.history == cut.history[:3] + resumed.history
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert np.array_equal(np.asarray(a), np.asarray(b)), name


def test_resume_refuses_another_optimizer_and_needs_allow_changes_for_muon_options(tokens_dir, tmp_path):
    from minillm.train import Trainer
    Trainer(_config(tokens_dir, tmp_path / "run", max_steps=2)).train()
    with pytest.raises(ValueError, match="optimizer 'muon'"):
        Trainer.resume(str(tmp_path / "run"), optimizer="adamw")
    with pytest.raises(ValueError, match="muon_momentum 0.95"):
        Trainer.resume(str(tmp_path / "run"), muon_momentum=0.9, max_steps=4)
    t = Trainer.resume(str(tmp_path / "run"), muon_momentum=0.9, max_steps=4, allow_changes=True)
    assert {g["momentum"] for g in t.optimizer.param_groups if g["use_muon"]} == {0.9}


def test_the_cli_takes_optimizer_flags():
    from minillm.train_config import add_arguments, options_from_args
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--optimizer", "muon", "--muon-lr", "0.05", "--muon-momentum", "0.9"])
    assert options_from_args(args) == {"optimizer": "muon", "muon_lr": 0.05, "muon_momentum": 0.9}
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "sgd"])
    from minillm.train import TrainConfig
    with pytest.raises(ValueError, match="optimizer must be one of adamw, muon, got 'lion'"):
        TrainConfig(optimizer="lion").checked()
    with pytest.raises(ValueError, match="muon_momentum"):
        TrainConfig(muon_momentum=1.0).checked()


def test_muon_weight_decay_reaches_the_matrices_only_and_is_checked_on_resume(tokens_dir, tmp_path):
    from minillm.train import Trainer
    t = Trainer(_config(tokens_dir, tmp_path / "run", max_steps=2, muon_weight_decay=0.1))
    assert {g["weight_decay"] for g in t.optimizer.param_groups if g["use_muon"]} == {0.1}
    before = {n: np.asarray(p).copy() for n, p in t.model.named_parameters()}
    t.train()
    with pytest.raises(ValueError, match="muon_weight_decay 0.1"):
        Trainer.resume(str(tmp_path / "run"), muon_weight_decay=0.0, max_steps=4)
    from minillm.train import TrainConfig
    with pytest.raises(ValueError, match="muon_weight_decay"):
        TrainConfig(muon_weight_decay=-1.0).checked()
    assert any(not np.array_equal(before[n], np.asarray(p)) for n, p in t.model.named_parameters())
