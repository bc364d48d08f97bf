"""nn: Module registration and traversal, modes, state dicts (and their files), layers
against NumPy / torch, default initialisations."""
import math

import numpy as np
import pytest

import minillm
import minillm.functional as F
import minillm.nn as nn
from minillm import serialization


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.5)
        self.blocks = nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm(8)])
        self.head = nn.Linear(8, 3, bias=False)
        self.register_buffer("scale", minillm.ones((3,)))
        self.register_buffer("cache", minillm.zeros((2,)), persistent=False)

    def forward(self, x):
        h = self.drop(self.act(self.fc1(x)))
        for ln in self.blocks:
            h = ln(h)
        return self.head(h) * self.scale


def test_parameters_are_registered_in_order_with_dotted_names():
    m = MLP()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                     "blocks.1.bias", "head.weight"]
    assert m.num_parameters() == 4 * 8 + 8 + 4 * 8 + 8 * 3
    assert [type(c).__name__ for c in m.children()] == ["Linear", "GELU", "Dropout", "ModuleList", "Linear"]
    assert len(list(m.modules())) == 8
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert not isinstance(m.scale, nn.Parameter)


def test_shared_parameter_counted_once():
    m = nn.Module()
    m.a = nn.Linear(3, 3)
    m.b = nn.Linear(3, 3)
    m.b.weight = m.a.weight
    assert len(list(m.parameters())) == 3
    assert list(m.state_dict()) == ["a.weight", "a.bias", "b.bias"]


def test_train_eval_switches_dropout_everywhere():
    m = MLP()
    x = minillm.randn(5, 4)
    m.eval()
    assert not m.drop.training and not m.blocks[1].training
    np.testing.assert_array_equal(m(x).numpy(), m(x).numpy())
    m.train()
    assert m.drop.training
    assert not np.array_equal(m(x).numpy(), m(x).numpy())


def test_zero_grad_and_backward_reach_every_parameter():
    m = MLP().eval()
    F.sum(m(minillm.randn(5, 4))).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(float(np.abs(p.grad.numpy()).max()) == 0.0 for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_has_params_and_persistent_buffers():
    sd = MLP().state_dict()
    assert "scale" in sd and "cache" not in sd
    assert sd["fc1.weight"].shape == (8, 4)


def test_state_dict_round_trips_through_safetensors_file(tmp_path):
    a, b = MLP(), MLP()
    path = tmp_path / "model.safetensors"
    save = getattr(minillm, "save", serialization.save)
    load = getattr(minillm, "load", serialization.load)
    save(a.state_dict(), str(path))
    b.load_state_dict(load(str(path)))
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=k)
    x = minillm.randn(2, 4)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_load_state_dict_errors_name_the_keys_and_shapes():
    m = MLP()
    sd = dict(m.state_dict())
    missing = {k: v for k, v in sd.items() if k != "head.weight"}
    with pytest.raises(KeyError, match="missing keys.*head.weight"):
        m.load_state_dict(missing)
    extra = dict(sd, **{"bogus.weight": minillm.zeros((1,))})
    with pytest.raises(KeyError, match="unexpected keys.*bogus.weight"):
        m.load_state_dict(extra)
    result = m.load_state_dict(extra, strict=False)
    assert result.unexpected_keys == ["bogus.weight"] and result.missing_keys == []
    bad = dict(sd, **{"fc1.weight": minillm.zeros((4, 8))})
    with pytest.raises(ValueError, match=r"fc1.weight: checkpoint has shape \(4, 8\), model has \(8, 4\)"):
        m.load_state_dict(bad)


def test_load_state_dict_copies_into_existing_tensors():
    m = nn.Linear(2, 2)
    w = m.weight
    m.load_state_dict({"weight": np.eye(2, dtype=np.float32), "bias": np.zeros(2, dtype=np.float32)})
    assert m.weight is w
    np.testing.assert_array_equal(w.numpy(), np.eye(2))


def test_apply_and_register_parameter():
    m = MLP()
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen[-1] == "MLP" and seen.count("LayerNorm") == 2
    m.extra = nn.Parameter(minillm.zeros((2,)))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())


def test_parameter_shares_storage_and_requires_grad():
    t = minillm.zeros((3,))
    p = nn.Parameter(t)
    assert p.requires_grad and p.grad_fn is None and p.data_ptr() == t.data_ptr()
    with pytest.raises(TypeError):
        nn.Parameter(np.zeros(3))


def test_frozen_parameter_is_registered():
    m = nn.Module()
    m.w = nn.Parameter(minillm.ones((2, 3)), requires_grad=False)
    assert isinstance(m.w, nn.Parameter) and not m.w.requires_grad
    assert [n for n, _ in m.named_parameters()] == ["w"]
    assert list(m.state_dict()) == ["w"]
    assert m.num_parameters() == 6 and m.num_parameters(trainable_only=True) == 0
    # a model frozen with requires_grad_(False) can still tie and reassign its parameters
    lin = nn.Linear(3, 3).requires_grad_(False)
    lin.weight = nn.Parameter(minillm.zeros((3, 3)), requires_grad=False)
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]


def test_deepcopy_and_pickle_keep_parameters():
    import copy
    import pickle
    m = nn.Linear(3, 2)
    m.frozen = nn.Parameter(minillm.ones((2,)), requires_grad=False)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert all(isinstance(p, nn.Parameter) for p in clone.parameters())
        assert [n for n, _ in clone.named_parameters()] == ["weight", "bias", "frozen"]
        assert not clone.frozen.requires_grad and clone.weight.data_ptr() != m.weight.data_ptr()
        np.testing.assert_array_equal(clone.weight.numpy(), m.weight.numpy())
        assert clone.weight is clone._parameters["weight"]


def test_tensor_that_requires_grad_is_not_a_parameter():
    m = nn.Module()
    t = minillm.ones((4,), requires_grad=True)
    m.t = t
    assert m.t is t and not isinstance(t, nn.Parameter)
    assert list(m.named_parameters()) == [] and list(m.state_dict()) == []
    y = F.sum(F.mul(minillm.ones((4,)), t))   # an op's output that requires grad
    m.y = y
    assert list(m.named_parameters()) == []
    assert type(F.mul(nn.Parameter(minillm.ones((2,))), 2.0)) is minillm.Tensor


def test_buffers_stay_buffers_and_parameters_need_parameters():
    m = nn.Linear(2, 2)
    m.register_buffer("running", minillm.zeros((2,)))
    m.running = minillm.ones((2,), requires_grad=True)
    assert "running" in dict(m.named_buffers()) and "running" not in dict(m.named_parameters())
    with pytest.raises(TypeError, match="nn.Parameter"):
        m.weight = minillm.zeros((2, 2), requires_grad=True)
    with pytest.raises(TypeError, match="nn.Parameter"):
        m.register_parameter("extra", minillm.zeros((2,), requires_grad=True))


def test_sequential_and_module_dict():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = minillm.randn(5, 3)
    h = F.linear(F.relu(F.linear(x, seq[0].weight, seq[0].bias)), seq[2].weight, seq[2].bias)
    np.testing.assert_allclose(seq(x).numpy(), h.numpy(), rtol=1e-6)
    assert len(seq) == 3 and isinstance(seq[1:], nn.Sequential)
    d = nn.ModuleDict({"a": nn.Linear(2, 2)})
    assert "a" in d and [n for n, _ in d.named_parameters()] == ["a.weight", "a.bias"]


def test_linear_default_init_bounds():
    m = nn.Linear(100, 50)
    bound = 1 / math.sqrt(100)
    w, b = m.weight.numpy(), m.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # uniform on [-bound, bound]: std bound / sqrt(3)
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    e = nn.Embedding(1000, 16).weight.numpy()
    assert abs(e.std() - 1.0) < 0.05 and abs(e.mean()) < 0.05
    ln = nn.LayerNorm(8)
    np.testing.assert_array_equal(ln.weight.numpy(), 1.0)
    np.testing.assert_array_equal(ln.bias.numpy(), 0.0)


def test_layers_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
    lin = nn.Linear(6, 5)
    tl = torch.nn.Linear(6, 5)
    ln = nn.LayerNorm(6)
    tn = torch.nn.LayerNorm(6)
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(lin.weight.numpy()))
        tl.bias.copy_(torch.tensor(lin.bias.numpy()))
    ours = lin(ln(minillm.tensor(x)))
    theirs = tl(tn(torch.tensor(x)))
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-5, atol=1e-5)
    emb = nn.Embedding(10, 4)
    idx = np.array([[1, 9], [0, 0]])
    np.testing.assert_array_equal(emb(minillm.tensor(idx)).numpy(), emb.weight.numpy()[idx])


def test_linear_bad_input_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 7\)"):
        nn.Linear(6, 5)(minillm.zeros((2, 7)))


def test_setting_attribute_before_init_raises():
    class Bad(nn.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match="Module.__init__"):
        Bad()


def test_tied_weight_loads_from_any_of_its_names():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.wte.weight

    m = Tied()
    assert list(m.state_dict()) == ["wte.weight"]
    w = np.arange(15, dtype=np.float32).reshape(5, 3)
    m.load_state_dict({"head.weight": w})                     # the other name (HF-style files)
    np.testing.assert_array_equal(m.wte.weight.numpy(), w)
    m.load_state_dict({"wte.weight": w, "head.weight": w})    # both names (PyTorch-style)
    with pytest.raises(KeyError, match="missing keys.*wte.weight"):
        m.load_state_dict({})
