"""The tape: topological order, accumulation, grad modes, graph freeing, anomaly detection."""
import gc
import weakref

import numpy as np
import pytest

import minillm
import minillm.functional as F
import minillm.nn
from minillm import autograd


def leaf(values):
    return minillm.tensor(np.asarray(values, dtype=np.float32), requires_grad=True)


def test_scalar_backward_defaults_to_one():
    x = leaf([1.0, 2.0, 3.0])
    y = F.sum(F.mul(x, x))
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_reused_tensor_accumulates_gradient_from_every_use():
    x = leaf([3.0])
    a = F.mul(x, x)           # x used twice in one op
    b = F.add(a, x)           # and once more
    c = F.mul(b, a)           # a used twice in the graph: c = (x^2 + x) x^2
    c.backward(minillm.ones((1,)))
    # dc/dx = 4x^3 + 3x^2 = 108 + 27
    np.testing.assert_allclose(x.grad.numpy(), [135.0], rtol=1e-6)


def test_diamond_graph_runs_each_backward_once():
    calls = []
    x = leaf([2.0])
    y = F.exp(x)

    def counting(dy):
        calls.append(1)
        return (dy,)
    z = autograd.record(y.detach().copy(), counting, y)
    out = F.add(F.mul(z, 3.0), F.mul(z, 4.0))
    out.backward(minillm.ones((1,)))
    assert len(calls) == 1
    np.testing.assert_allclose(x.grad.numpy(), [7 * np.exp(2.0)], rtol=1e-6)


def test_broadcast_backward_sums_over_broadcast_axes():
    a = leaf(np.ones((2, 3)))
    b = leaf([1.0, 2.0, 3.0])
    c = leaf([[1.0], [2.0]])
    F.sum(F.mul(F.add(a, b), c)).backward()
    np.testing.assert_allclose(b.grad.numpy(), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(c.grad.numpy(), [[9.0], [9.0]])
    np.testing.assert_allclose(a.grad.numpy(), [[1, 1, 1], [2, 2, 2]])


def test_leaf_grad_accumulates_across_backward_calls():
    x = leaf([1.0, 2.0])
    F.sum(F.mul(x, 3.0)).backward()
    F.sum(F.mul(x, 3.0)).backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 6.0])


def test_shared_gradient_buffer_is_not_aliased_between_leaves():
    a, b = leaf([1.0, 1.0]), leaf([2.0, 2.0])
    F.sum(F.add(a, b)).backward()   # add hands the same dy to both leaves
    minillm.nn.utils.clip_grad_norm_([a, b], 1.0)   # scales each .grad in place
    np.testing.assert_allclose(a.grad.numpy(), [0.5, 0.5], rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), [0.5, 0.5], rtol=1e-5)


def test_no_grad_records_nothing_and_restores_mode():
    x = leaf([1.0])
    with minillm.autograd.no_grad():
        y = F.mul(x, 2.0)
        z = x * 2.0
        assert not minillm.is_grad_enabled()
    assert minillm.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert not z.requires_grad and z.grad_fn is None


def test_no_grad_as_decorator_and_enable_grad_inside():
    x = leaf([1.0])

    @autograd.no_grad()
    def f():
        with autograd.enable_grad():
            inner = F.mul(x, 2.0)
        return F.mul(x, 2.0), inner

    @autograd.no_grad
    def g():
        return F.mul(x, 2.0)
    outer, inner = f()
    assert outer.grad_fn is None and inner.grad_fn is not None
    assert g().grad_fn is None
    assert minillm.is_grad_enabled()


def test_set_grad_enabled_as_context_manager():
    with autograd.set_grad_enabled(False):
        assert not minillm.is_grad_enabled()
    assert minillm.is_grad_enabled()


def test_detach_stops_gradient_and_shares_storage():
    x = leaf([1.0, 2.0])
    d = F.mul(x, 2.0).detach()
    assert not d.requires_grad and d.grad_fn is None
    y = F.add(F.mul(x, d), x)
    F.sum(y).backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 5.0])   # d counted as a constant


def test_chain_of_10000_ops_does_not_recurse():
    x = leaf([1.0])
    y = x
    for _ in range(10000):
        y = F.add(y, 0.5)
    assert abs(y.item() - 5001.0) < 1e-3
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_graph_is_freed_after_backward():
    x = leaf(np.ones(4))
    y = F.exp(F.mul(x, 2.0))
    saved = weakref.ref(y.grad_fn.inputs[0])  # the intermediate x * 2
    node = y.grad_fn
    F.sum(y).backward()
    assert node.inputs is None and node.backward_fn is None
    gc.collect()
    assert saved() is None
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward(minillm.ones((4,)))


def test_retain_graph_allows_a_second_backward():
    x = leaf([2.0])
    y = F.mul(x, x)
    y.backward(minillm.ones((1,)), retain_graph=True)
    y.backward(minillm.ones((1,)))
    np.testing.assert_allclose(x.grad.numpy(), [8.0])


def test_backward_on_non_scalar_without_gradient_raises_with_shape():
    x = leaf(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"non-scalar tensor of shape \(2, 3\)"):
        F.mul(x, 2.0).backward()
    with pytest.raises(ValueError, match=r"gradient has shape \(3,\)"):
        F.mul(x, 2.0).backward(minillm.ones((3,)))


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        minillm.ones((1,)).backward()


def test_anomaly_detection_as_a_context_manager_restores_the_setting():
    assert not minillm.is_anomaly_enabled()
    with minillm.detect_anomaly():
        assert minillm.is_anomaly_enabled()
        with minillm.set_anomaly_detection(False):
            assert not minillm.is_anomaly_enabled()
        assert minillm.is_anomaly_enabled()
    assert not minillm.is_anomaly_enabled()

    @minillm.detect_anomaly()
    def checked():
        return minillm.is_anomaly_enabled()
    assert checked() and not minillm.is_anomaly_enabled()


def test_anomaly_detection_is_per_thread(held_in_another_thread):
    with held_in_another_thread(minillm.detect_anomaly, minillm.is_anomaly_enabled):
        assert not minillm.is_anomaly_enabled()        # the other thread's block does not leak
        x = leaf([0.0])
        F.sum(F.sqrt(x)).backward()                    # inf gradient, but no anomaly check here


def test_anomaly_detection_names_the_op():
    x = leaf([0.0, 1.0])
    autograd.set_anomaly_detection(True)
    try:
        loss = F.sum(F.log(x))                 # log(0) = -inf reaches backward
        with pytest.raises(FloatingPointError, match="sum"):
            loss.backward()
        y = F.sum(F.sqrt(x))                   # finite loss, infinite gradient at 0
        with pytest.raises(FloatingPointError, match="sqrt"):
            y.backward()
    finally:
        autograd.set_anomaly_detection(False)
    F.sum(F.sqrt(x)).backward()                # off again: no error, inf in the gradient
    assert np.isinf(x.grad.numpy()[0])


def test_tensor_methods_route_to_the_tape():
    x = leaf(np.arange(6.0).reshape(2, 3))
    y = (x.reshape(3, 2).T.exp() * 0.5).sum(axis=1).mean()
    y.backward()
    expect = np.exp(np.arange(6.0).reshape(2, 3)) * 0.5 / 2
    np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-5)


def test_training_loop_memory_is_flat_after_warmup():
    import minillm.optim as optim
    nn = minillm.nn
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64), nn.Dropout(0.1), nn.Linear(64, 10))
    opt = optim.AdamW(m.parameters())
    x, y = minillm.randn(16, 32), minillm.randint(0, 10, (16,))
    stats = []
    for i in range(60):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i in (20, 59):
            del loss
            stats.append(minillm.alloc_stats())
    assert stats[0]["in_use"] == stats[1]["in_use"]
    assert stats[0]["os_allocs"] == stats[1]["os_allocs"]


def test_second_backward_accumulates_into_grad():
    w = minillm.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    (w * 2.0).sum().backward()
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.full((2, 3), 5.0, np.float32))


def test_a_gradient_passed_to_a_hook_is_never_written():
    # a has three consumers, so the tape sums their gradients into a buffer of its own (9s);
    # the hook keeps that buffer; clone's backward passes it on unchanged to p, which has a
    # second consumer: adding that contribution in place would turn the kept 9s into 14s
    for p_first in (True, False):              # either order of arrival at p
        x = leaf(np.ones(4, np.float32))
        p = F.mul(x, 1.0)
        a = F.clone(p)
        seen = []
        autograd.register_hook(a, seen.append)
        terms = [F.sum(F.mul(a, 2.0)), F.sum(F.mul(a, 3.0)), F.sum(F.mul(a, 4.0))]
        terms.insert(0 if p_first else 3, F.sum(F.mul(p, 5.0)))
        F.add(F.add(terms[0], terms[1]), F.add(terms[2], terms[3])).backward()
        assert len(seen) == 1
        np.testing.assert_array_equal(seen[0].numpy(), np.full(4, 9.0, np.float32))
        np.testing.assert_array_equal(x.grad.numpy(), np.full(4, 14.0, np.float32))


def test_a_hook_can_replace_the_gradient_and_be_removed():
    x = leaf([1.0, 2.0])
    handle = autograd.register_hook(x, lambda g: F.mul(g, 10.0))
    F.sum(F.mul(x, 3.0)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [30.0, 30.0])
    handle.remove()
    x.grad = None
    F.sum(F.mul(x, 3.0)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def test_the_callers_gradient_is_never_stored_as_grad():
    # add's backward hands dy through unchanged: x.grad must be a copy, so that an in-place
    # update of x.grad (an optimizer, clip_grad_norm_) leaves the caller's tensor alone
    x = leaf([1.0, 2.0, 3.0])
    g = minillm.tensor([1.0, 1.0, 1.0])
    F.add(x, 1.0).backward(g)
    assert x.grad.data_ptr() != g.data_ptr()
    minillm.nn.utils.clip_grad_norm_([x], 0.1)
    np.testing.assert_array_equal(g.numpy(), [1.0, 1.0, 1.0])


def test_accumulation_leaves_a_grad_the_user_kept_untouched():
    w = minillm.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    (w * 2.0).sum().backward()
    kept = w.grad
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(kept.numpy(), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(w.grad.numpy(), np.full((2, 3), 5.0, np.float32))


def test_accumulation_never_writes_into_a_gradient_shared_with_another_input():
    # a + b hands one dy to both; a is used twice, so its second gradient must not be added
    # into the buffer b (or the pending sum for h) still holds
    a = minillm.tensor(np.ones(4, np.float32), requires_grad=True)
    b = minillm.tensor(np.ones(4, np.float32), requires_grad=True)
    h = a * 1.0
    y = (a + b) * 2.0 + h * 3.0 + a * 5.0
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.full(4, 10.0, np.float32))
    np.testing.assert_array_equal(b.grad.numpy(), np.full(4, 2.0, np.float32))
