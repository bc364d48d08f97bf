"""Batches: coverage of every example, seeded shuffles, drop_last, resuming mid-epoch."""
import numpy as np
import pytest

import minillm
from minillm.data import Batches


def make(n=10, **kw):
    X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.int64)
    return X, y, Batches(X, y, **kw)


def test_each_epoch_covers_every_example_once_in_batches():
    X, y, b = make(10, batch_size=3, seed=5)
    assert len(b) == 4
    batches = list(b)
    assert [xb.shape for xb, _ in batches] == [(3, 2), (3, 2), (3, 2), (1, 2)]
    ids = np.concatenate([yb.numpy() for _, yb in batches])
    assert sorted(ids.tolist()) == list(range(10))
    assert ids.tolist() != list(range(10))                 # shuffled
    for xb, yb in batches:                                  # rows stay paired
        np.testing.assert_array_equal(xb.numpy(), X[yb.numpy()])
    assert isinstance(batches[0][0], minillm.Tensor) and batches[0][1].dtype == "int64"


def test_shuffle_is_seeded_and_changes_per_epoch():
    def epoch_orders(seed):
        _, _, b = make(12, batch_size=4, seed=seed)
        return [np.concatenate([yb.numpy() for _, yb in b]).tolist() for _ in range(3)]
    a, b = epoch_orders(1), epoch_orders(1)
    assert a == b
    assert a[0] != a[1] != a[2]
    assert epoch_orders(2) != a


def test_no_shuffle_keeps_order_and_drop_last_drops_the_remainder():
    _, _, b = make(10, batch_size=4, shuffle=False, drop_last=True)
    assert len(b) == 2
    assert [yb.numpy().tolist() for _, yb in b] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_state_dict_resumes_at_the_same_batch():
    X, y, b = make(20, batch_size=3, seed=7)
    full = []
    for _ in range(2):
        full.extend(yb.numpy().tolist() for _, yb in b)
    _, _, b1 = make(20, batch_size=3, seed=7)
    seen = []
    it = iter(b1)
    for _ in range(5):
        seen.append(next(it)[1].numpy().tolist())
    state = b1.state_dict()
    assert state == {"epoch": 0, "position": 5, "seed": 7}
    b2 = Batches(X, y, batch_size=3, seed=7)
    b2.load_state_dict(state)
    for _ in range(2):
        seen.extend(yb.numpy().tolist() for _, yb in b2)
        if b2.epoch == 2:
            break
    assert seen == full


def test_single_array_yields_tensors_and_accepts_tensors():
    t = minillm.tensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    b = Batches(t, batch_size=2, shuffle=False)
    out = list(b)
    assert isinstance(out[0], minillm.Tensor) and out[0].shape == (2, 2)


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"share their first axis.*\(3, 2\).*\(4,\)"):
        Batches(np.zeros((3, 2)), np.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(np.zeros(3), batch_size=0)
    with pytest.raises(TypeError, match="list"):
        Batches([1, 2, 3], batch_size=1)
    _, _, b = make(4, batch_size=2, seed=1)
    with pytest.raises(ValueError, match="seed"):
        b.load_state_dict({"epoch": 0, "position": 1, "seed": 2})
