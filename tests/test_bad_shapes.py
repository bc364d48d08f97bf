"""Bad sizes, shapes, axes and indices give a clear Python exception, never a crash.

The calls run in a child process, so a segfault fails the test (naming the last call tried)
instead of killing pytest. Each listed call must raise the exception type given with it; the
random part throws many shapes, axes, indices and slices at the Tensor API and accepts only
a correct result (checked against NumPy where NumPy answers) or one of the documented types.
"""
import json
import subprocess
import sys
import textwrap

import pytest

# (expression, the exception it must raise); `t` is zeros((2, 3)), `F` minillm.functional
BAD_CALLS = [
    ("minillm.zeros(2**62)", "MemoryError"),
    ("minillm.zeros(2**62)[10**7]", "MemoryError"),
    ("minillm.empty(2**40, 2**40)", "MemoryError"),
    ("minillm.ones((2**31, 2**31, 4))", "MemoryError"),
    ("minillm.zeros(2**61, dtype='int64')", "MemoryError"),
    ("minillm.full((2**62, 2), 1.0)", "MemoryError"),
    ("minillm.zeros(2**64)", "ValueError"),
    ("minillm.zeros(-1)", "ValueError"),
    ("minillm.zeros((3, -2))", "ValueError"),
    ("minillm.zeros((1,) * 9)", "ValueError"),
    ("minillm.zeros(2.5)", "TypeError"),
    ("minillm.zeros(0).reshape(2**32, 2**32)", "ValueError"),
    ("minillm.zeros(0).reshape(0, 2**62, 2**62)", "ValueError"),
    ("minillm.zeros(0).reshape(0, 2**64)", "ValueError"),
    ("t.reshape(-1, -1)", "ValueError"),
    ("t.reshape(4, 2)", "ValueError"),
    ("t.reshape(-1, 0)", "ValueError"),
    ("t.reshape(2**63, 0)", "ValueError"),
    ("minillm.zeros(1).expand(2**62, 2**62)", "ValueError"),
    ("minillm.zeros(1).expand(2**64)", "ValueError"),
    ("minillm.zeros(1).expand(-2)", "ValueError"),
    ("t.expand(3, 3)", "ValueError"),
    ("t[2]", "IndexError"),
    ("t[-3]", "IndexError"),
    ("t[10**30]", "IndexError"),
    ("t[0, 3]", "IndexError"),
    ("t[0, 0, 0]", "IndexError"),
    ("minillm.zeros(5)[5]", "IndexError"),
    ("minillm.zeros(5)[-6]", "IndexError"),
    ("minillm.zeros(5)[2**63]", "IndexError"),
    ("minillm.zeros(0)[0]", "IndexError"),
    ("t[::0]", "ValueError"),
    ("t[::-1]", "ValueError"),
    ("t[..., ...]", "IndexError"),
    ("t[None, None, None, None, None, None, None]", "IndexError"),
    ("t[1.5]", "TypeError"),
    ("t.sum(axis=5)", "IndexError"),
    ("t.sum(axis=-3)", "IndexError"),
    ("t.mean(axis=2)", "IndexError"),
    ("t.max(axis=7)", "IndexError"),
    ("t.argmax(axis=2)", "IndexError"),
    ("t.sum(axis=(0, 0))", "ValueError"),
    ("t.sum(axis=10**30)", "IndexError"),
    ("F.softmax(t, axis=5)", "IndexError"),
    ("F.softmax(t, axis=-3)", "IndexError"),
    ("F.log_softmax(t, axis=2)", "IndexError"),
    ("t.softmax(2)", "IndexError"),
    ("F.flatten(t, 0, 7)", "IndexError"),
    ("F.split(t, 1, axis=3)", "IndexError"),
    ("t.transpose(0, 2)", "IndexError"),
    ("t.permute(0, 0)", "ValueError"),
    ("t.unsqueeze(4)", "IndexError"),
    ("t.squeeze(3)", "IndexError"),
    ("t.size(2)", "IndexError"),
    ("minillm.cat([t, t], axis=2)", "IndexError"),
    ("minillm.cat([t, minillm.zeros(3, 3)], axis=1)", "ValueError"),
    ("minillm.matmul(minillm.zeros(1, 1, 1, 1).expand(2**31, 1, 1, 1), minillm.zeros(1, 1, 1, 1).expand(1, 2**31, 1, 1))",
     "MemoryError"),
    ("minillm.matmul(t, t)", "ValueError"),
    ("minillm.zeros(1, 1).expand(2**31, 1) + minillm.zeros(1, 1).expand(1, 2**31)", "MemoryError"),
    ("F.embedding(minillm.tensor([0, 4]), minillm.zeros(4, 2))", "IndexError"),
    ("F.embedding(minillm.tensor([-1]), minillm.zeros(4, 2))", "IndexError"),
    ("F.cross_entropy(minillm.zeros(2, 3), minillm.tensor([0, 3]))", "IndexError"),
    ("minillm.GrowableTensor((2**62,))", "MemoryError"),
    ("minillm.GrowableTensor((2,)).reserve(2**62)", "MemoryError"),
    ("minillm.randn(2**62)", "MemoryError"),
    ("minillm.randint(0, 5, size=(2**62,))", "MemoryError"),
    ("minillm.Generator(0).permutation(2**62)", "MemoryError"),
    ("minillm._C.dropout_mask((2**62,), 0.5, 0, 0)", "MemoryError"),
    ("minillm._C.onehot_rows(minillm.tensor([0]), minillm.tensor([1.0]), 2**62)", "MemoryError"),
    ("minillm._C.rope_table(minillm.ones(4), 2**62)", "MemoryError"),
    ("minillm.set_num_threads(10**6)", "ValueError"),
    ("minillm.set_num_threads(0)", "ValueError"),
    # backward bindings check what the forward saved as well as the gradient
    ("minillm._C.embedding_backward(minillm.ones(2, 3), minillm.tensor([0, 9]), 4)", "IndexError"),
    ("minillm._C.embedding_backward(minillm.ones(()), minillm.tensor([0]), 4)", "ValueError"),
    ("minillm._C.cross_entropy_backward(minillm.ones(4), minillm.tensor([0]), minillm.ones(1), minillm.ones(()), 'mean', 1)",
     "ValueError"),
    ("minillm._C.cross_entropy_backward(minillm.ones(3, 4), minillm.tensor([0]), minillm.ones(3), minillm.ones(()), 'mean', 1)",
     "ValueError"),
    ("minillm._C.cross_entropy_backward(minillm.ones(3, 4), minillm.tensor([0, 1, 2]), minillm.ones(1), minillm.ones(()), 'mean', 1)",
     "ValueError"),
    ("minillm._C.layer_norm_backward(minillm.ones(3, 4), None, minillm.ones(1), minillm.ones(3), minillm.ones(3, 4))",
     "ValueError"),
    ("minillm._C.layer_norm_backward(minillm.ones(3, 4), minillm.ones(2), minillm.ones(3), minillm.ones(3), minillm.ones(3, 4))",
     "ValueError"),
    ("minillm._C.unary_backward('exp', minillm.ones(5), minillm.ones(2), minillm.ones(5))", "ValueError"),
    ("minillm._C.unary_backward('nope', minillm.ones(5), None, minillm.ones(5))", "ValueError"),
]

CHILD = textwrap.dedent(r'''
    import json, sys, random
    import numpy as np
    import minillm
    import minillm.functional as F

    def report(**kw):
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    calls = json.loads(sys.argv[1])
    for expr, expected in calls:
        report(trying=expr)
        t = minillm.zeros((2, 3))
        try:
            eval(expr)
            got = None
        except Exception as e:
            got, msg = type(e).__name__, str(e)
        report(expr=expr, expected=expected, got=got, message=msg if got else "")

    # random shapes, axes, indices and slices; correct results are checked against NumPy
    rng = random.Random(int(sys.argv[2]))
    ALLOWED = (ValueError, IndexError, TypeError, MemoryError)
    big = [0, 1, 2, 3, 5, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, -1, -2, 10**30]
    # sizes for new tensors: small, or so large that no memory is touched before the error
    huge = [2**62, 2**63 - 1, 2**63, 2**64, 10**30]

    def rand_int(values=big):
        return rng.choice(values) * rng.choice([1, -1]) if rng.random() < 0.4 else rng.randint(-5, 5)

    def rand_slice():
        parts = [rng.choice([None, rand_int()]) for _ in range(3)]
        return slice(*parts)

    compared = raised = 0
    for i in range(int(sys.argv[3])):
        shape = tuple(rng.choice([0, 1, 2, 3]) for _ in range(rng.randint(0, 4)))
        a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        t = minillm.tensor(a)
        kind = rng.choice(["index", "reshape", "expand", "axis", "new", "pair"])
        if kind == "index":
            key = tuple(rng.choice([rand_int, rand_slice, lambda: None, lambda: Ellipsis])()
                        for _ in range(rng.randint(1, 4)))
            arg = key
            call, ref = (lambda: t[key]), (lambda: a[key])
        elif kind == "reshape":
            new = arg = tuple(rand_int() for _ in range(rng.randint(0, 4)))
            call, ref = (lambda: t.reshape(new)), (lambda: a.reshape(new))
        elif kind == "expand":
            new = arg = tuple(rand_int() for _ in range(rng.randint(0, 4)))
            call, ref = (lambda: t.expand(new)), None
        elif kind == "axis":
            ax = rand_int()
            op = rng.choice(["sum", "mean", "max", "softmax", "transpose", "unsqueeze", "squeeze"])
            call = {"sum": lambda: t.sum(axis=ax), "mean": lambda: t.mean(axis=ax),
                    "max": lambda: t.max(axis=ax), "softmax": lambda: F.softmax(t, axis=ax),
                    "transpose": lambda: t.transpose(ax, 0), "unsqueeze": lambda: t.unsqueeze(ax),
                    "squeeze": lambda: t.squeeze(ax)}[op]
            ref = {"sum": lambda: a.sum(axis=ax)}.get(op)
            arg = (op, ax)
        elif kind == "new":
            new = arg = tuple(rand_int(huge) for _ in range(rng.randint(0, 3)))
            call, ref = (lambda: minillm.zeros(new)), None
        else:
            # two operands of random small shapes (and dtypes): broadcasting, matmul, cat, permute
            shape2 = tuple(rng.choice([0, 1, 2, 3]) for _ in range(rng.randint(0, 4)))
            b = np.ones(shape2, dtype=rng.choice([np.float32, np.float32, np.int64]))
            u = minillm.tensor(b)
            op = rng.choice(["add", "mul", "matmul", "cat", "permute"])
            ax = rand_int()
            perm = tuple(rand_int() for _ in range(len(shape)))
            arg = (op, shape2, str(b.dtype), ax, perm)
            call = {"add": lambda: t + u, "mul": lambda: t * u, "matmul": lambda: t @ u,
                    "cat": lambda: minillm.cat([t, u], ax), "permute": lambda: t.permute(perm)}[op]
            ref = {"add": lambda: a + b, "mul": lambda: a * b,
                   "matmul": lambda: np.matmul(a, b) if a.ndim and b.ndim else None,
                   "permute": lambda: np.transpose(a, perm)}.get(op) if b.dtype == np.float32 or op == "permute" else None
        what = f"{kind} on shape {shape}: {arg!r}"
        report(trying=what)
        try:
            out = call()
            err = None
        except ALLOWED as e:
            out, err = None, type(e).__name__
            raised += 1
        except Exception as e:
            report(fuzz=what, bad=f"{type(e).__name__}: {e}")
            continue
        if out is not None and ref is not None:
            try:
                want = ref()
            except Exception:
                want = None
            if want is not None and isinstance(out, minillm.Tensor):
                compared += 1
                got = out.numpy()
                if got.shape != np.shape(want) or not np.allclose(got, want):
                    report(fuzz=what, bad=f"result {got.shape} differs from NumPy's {np.shape(want)}")
    report(done=True, compared=compared, raised=raised)
''')


def run_child(calls, seed=0, n_random=0):
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls), str(seed), str(n_random)],
                          capture_output=True, text=True, timeout=300)
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines or not lines[-1].get("done"):
        last = next((l["trying"] for l in reversed(lines) if "trying" in l), "(nothing)")
        pytest.fail(f"the child process died (exit {proc.returncode}) while trying {last}:\n{proc.stderr[-2000:]}")
    return lines


def test_listed_bad_calls_raise_the_right_exception():
    lines = run_child(BAD_CALLS)
    results = [l for l in lines if "expected" in l]
    assert len(results) == len(BAD_CALLS)
    wrong = [f"{r['expr']}: expected {r['expected']}, got {r['got']} {r['message']}" for r in results
             if r["got"] != r["expected"]]
    assert not wrong, "\n".join(wrong)
    # the messages name the value that was wrong
    by_expr = {r["expr"]: r["message"] for r in results}
    assert "4611686018427387904" in by_expr["minillm.zeros(2**62)"]
    assert "axis 5" in by_expr["F.softmax(t, axis=5)"]
    assert "index 2" in by_expr["t[2]"]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_shapes_axes_and_indices_never_crash(seed):
    lines = run_child([], seed=seed, n_random=3000)
    bad = [f"{l['fuzz']}: {l['bad']}" for l in lines if "bad" in l]
    assert not bad, "\n".join(bad[:20])
    # both sides were exercised: many results checked against NumPy, many calls refused
    assert lines[-1]["compared"] > 300 and lines[-1]["raised"] > 300, lines[-1]


def test_overlapping_copies_read_the_source_before_writing():
    import numpy as np
    import minillm
    for key_dst, key_src in [((slice(1, None),), (slice(None, -1),)), ((slice(None, -1),), (slice(1, None),)),
                             ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                             ((slice(None, None, 2),), (slice(1, None, 2),))]:
        shape = (12,) if len(key_dst) == 1 else (3, 4)
        a = np.arange(12, dtype=np.float32).reshape(shape)
        t = minillm.tensor(a)
        t[key_dst] = t[key_src]
        a[key_dst] = a[key_src].copy()
        np.testing.assert_array_equal(t.numpy(), a)
    t = minillm.arange(6, dtype="float32").reshape(2, 3)
    t[...] = t.transpose(0, 1).reshape(2, 3)         # a copy of the transpose, no overlap
    t2 = minillm.arange(4, dtype="float32").reshape(2, 2)
    t2[...] = t2.T                                     # overlapping transpose
    assert t2.tolist() == [[0.0, 2.0], [1.0, 3.0]]

