"""The shape of pyx/ (the compiled core) and what it promises: minillm.pxd declares exactly
csrc/minillm.h, one .pxi per C file, no import of the package's Python modules, test-only
bindings only in minillm._testing, thread-local grad mode, one GEMM argument path for
float32 and bf16, RNG fills straight into Tensors."""
import pathlib
import re
import threading

import numpy as np
import pytest

import minillm
from minillm import _C, _testing

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYX = ROOT / "pyx"
CSRC = ROOT / "csrc"
# .pxi files that hold the Tensor type itself rather than one C file's bindings
TENSOR_PXI = {"tensor", "views", "checks"}
# C files every binding may call into: storage and threads (runtime.c), fill/copy/scale (blas1.c)
SHARED_C = {"runtime", "blas1"}


def _strip_c_comments(text):
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def header_functions():
    """Names of the functions csrc/minillm.h declares."""
    text = _strip_c_comments((CSRC / "minillm.h").read_text())
    return set(re.findall(r"\b(mll_\w+)\s*\(", text)) - set(re.findall(r"\(\*\s*(mll_\w+)\)", text))


def extern_functions(text):
    """Names of the functions declared in a Cython `cdef extern from "minillm.h"` block."""
    names = set()
    for block in re.findall(r'cdef extern from "minillm.h"[^\n]*:\n((?:[ \t]+.*\n|\n)+)', text):
        names |= set(re.findall(r"^\s+[\w\s\*]*?\b(mll_\w+)\s*\(", block, flags=re.M))
    return names


def defining_file():
    """mll_ function -> the stem of the csrc/*.c file that defines it."""
    where = {}
    for c in CSRC.glob("*.c"):
        text = _strip_c_comments(c.read_text())
        for name in re.findall(r"^[A-Za-z_][\w \*]*\b(mll_\w+)\s*\([^;{]*\)\s*\{", text, flags=re.M):
            where.setdefault(name, c.stem)
    return where


def test_pxd_declares_exactly_the_header_minus_the_test_only_functions():
    header = header_functions()
    pxd = extern_functions((PYX / "minillm.pxd").read_text())
    testing = extern_functions((PYX / "_testing.pyx").read_text())
    bpe = header & {n for n in header if n.startswith("mll_bpe_")}
    assert testing, "pyx/_testing.pyx declares the test-only functions"
    assert not (pxd & testing), f"declared twice: {sorted(pxd & testing)}"
    assert sorted(pxd) == sorted(header - testing - bpe | (pxd & bpe)), (
        f"in minillm.h only: {sorted(header - testing - pxd - bpe)}; in minillm.pxd only: {sorted(pxd - header)}")
    assert testing <= header
    # each test-only function is marked so in the header, in the comment just above it
    raw = (CSRC / "minillm.h").read_text()
    for name in testing:
        decl = re.search(r"\b" + name + r"\s*\(", raw).start()
        assert "test-only" in raw[max(0, decl - 300):decl].lower(), f"minillm.h does not mark {name} test-only"


def test_bpe_functions_are_declared_once():
    """minillm.h's bpe.c section is bound by pyx/_bpe.pyx (its own extern block) or the pxd."""
    header = {n for n in header_functions() if n.startswith("mll_bpe_")}
    declared = extern_functions((PYX / "minillm.pxd").read_text()) | extern_functions((PYX / "_bpe.pyx").read_text())
    assert header <= declared


def test_every_pxi_is_named_after_a_c_file_and_binds_only_that_file():
    where = defining_file()
    c_files = {c.stem for c in CSRC.glob("*.c")}
    for pxi in sorted(PYX.glob("*.pxi")):
        stem = pxi.stem
        assert stem in c_files or stem in TENSOR_PXI, f"{pxi.name} is named after no csrc/ file"
        called = set(re.findall(r"\bC\.(mll_\w+)\s*\(", pxi.read_text()))
        for name in sorted(called):
            owner = where.get(name)
            assert owner is not None, f"{pxi.name} calls {name}, which no csrc/*.c defines"
            if stem in TENSOR_PXI:
                assert owner in SHARED_C, f"{pxi.name} (the Tensor type) calls {name} of {owner}.c"
            else:
                assert owner == stem or owner in SHARED_C, f"{pxi.name} calls {name}, which is {owner}.c's"


def test_the_core_includes_every_pxi_once():
    text = (PYX / "_C.pyx").read_text()
    included = re.findall(r'^include "(\w+)\.pxi"', text, flags=re.M)
    assert sorted(included) == sorted(p.stem for p in PYX.glob("*.pxi"))
    assert len(included) == len(set(included))
    # the C files' .pxi come in the order of minillm.h's sections
    sections = re.findall(r"^/\* -{3,}[^\n]*\*/", (CSRC / "minillm.h").read_text(), flags=re.M)
    order = []
    for line in sections:
        for name in re.findall(r"(\w+)\.c\b", line):
            if name not in order:
                order.append(name)
    bound = [name for name in included if name not in TENSOR_PXI]
    assert bound == [name for name in order if name in bound], (bound, order)


def test_no_pyx_file_imports_a_python_module_of_the_package():
    bad = []
    pattern = re.compile(r"^\s*(?:import\s+minillm\b(?!\._C\b)|from\s+minillm(?:\.\w+)*\s+import\s+(?!_C\b)"
                         r"|from\s+\.+\w*\s+import|__import__\(|importlib)", re.M)
    for f in sorted(list(PYX.glob("*.pxi")) + list(PYX.glob("*.pyx"))):
        for m in pattern.finditer(f.read_text()):
            line = f.read_text()[:m.start()].count("\n") + 1
            bad.append(f"{f.name}:{line}: {m.group(0).strip()}")
    assert not bad, "pyx/ must not import minillm's Python modules: " + "; ".join(bad)


def test_test_only_bindings_are_only_in_the_testing_module():
    core = set(dir(_C))
    assert not [n for n in core if n.startswith("k_")]
    for name in ("stream_sum", "matmul_ref", "alloc_trim", "pow_", "OP_ADD", "UN_GELU"):
        assert name not in core, name
    for name in ("k_sgemm", "k_matmul_ref", "k_rand_uniform", "k_round_bf16", "stream_sum", "OP_ADD"):
        assert hasattr(_testing, name), name
    # and the power function has a truthful name (it returns a new tensor)
    x = minillm.tensor([1.0, 2.0, 3.0])
    y = _C.power(x, 3)
    assert y.tolist() == [1.0, 8.0, 27.0] and x.tolist() == [1.0, 2.0, 3.0]


def test_testing_kernels_follow_the_core_isa_and_threads():
    before_isa, before_threads = _C.get_isa(), _C.get_num_threads()
    try:
        x = np.linspace(-3, 3, 1001, dtype=np.float32).reshape(7, 143)
        outs = []
        for isa in _C.supported_isas():
            _C.set_isa(isa)
            for threads in (1, 2):
                _C.set_num_threads(threads)
                out = np.empty_like(x)
                _testing.k_softmax(x, out)
                outs.append(out)
        ref = np.exp(x - x.max(1, keepdims=True))
        np.testing.assert_allclose(outs[0], ref / ref.sum(1, keepdims=True), rtol=1e-5)
    finally:
        _C.set_isa(before_isa)
        _C.set_num_threads(before_threads)


def test_grad_mode_is_per_thread():
    seen = {}

    def other():
        seen["start"] = minillm.is_grad_enabled()
        with minillm.no_grad():
            seen["inside"] = minillm.is_grad_enabled()
            done.wait()

    done = threading.Event()
    with minillm.no_grad():
        t = threading.Thread(target=other)
        t.start()
        assert not minillm.is_grad_enabled()
    # the other thread is still inside its no_grad: ours is back on
    assert minillm.is_grad_enabled()
    x = minillm.ones(3, requires_grad=True)
    assert (x * 2).requires_grad
    done.set()
    t.join()
    assert seen == {"start": True, "inside": False}


# ------------------------------------------------------------------ one GEMM argument path
def _pair(a, b, **kw):
    """matmul and matmul_bf16 on the same operands (values exact in bf16)."""
    return _C.matmul(a, b, **kw), _C.matmul_bf16(a, b, **kw)


def _ints(shape, seed):
    return minillm.tensor(np.random.default_rng(seed).integers(-4, 5, size=shape).astype(np.float32))


@pytest.mark.parametrize("sa, sb, kw", [
    ((3, 0), (0, 4), {}),                         # K == 0: zeros
    ((2, 3, 0), (0, 5), {}),
    ((0, 3), (3, 4), {}),                         # M == 0
    ((3, 4), (4, 0), {}),                         # N == 0
    ((5,), (5,), {}),                             # 1-D . 1-D
    ((5,), (5, 3), {}),
    ((2, 4, 5), (5,), {}),
    ((2, 1, 3, 4), (5, 4, 2), {}),                # broadcast batch axes
    ((4, 3), (5, 4), {"transpose_a": True, "transpose_b": True}),
    ((6, 2, 3), (3, 4), {}),
    ((0, 2, 3), (3, 4), {}),                      # empty batch
])
def test_matmul_and_matmul_bf16_agree_on_every_edge(sa, sb, kw):
    a, b = _ints(sa, 1), _ints(sb, 2)
    f, h = _pair(a, b, **kw)
    assert f.shape == h.shape
    np.testing.assert_array_equal(f.numpy(), h.numpy())
    an, bn = a.numpy(), b.numpy()
    if kw.get("transpose_a"):
        an = np.swapaxes(an, -1, -2)
    if kw.get("transpose_b"):
        bn = np.swapaxes(bn, -1, -2)
    np.testing.assert_array_equal(f.numpy(), np.matmul(an, bn))


def test_k_zero_with_out_and_beta_scales_out_in_both():
    a, b = minillm.zeros(3, 0), minillm.zeros(0, 2)
    for fn in (_C.matmul, _C.matmul_bf16):
        out = minillm.full((3, 2), 4.0)
        r = fn(a, b, out=out, beta=0.5)
        assert r.tolist() == [[2.0, 2.0]] * 3
        out = minillm.full((3, 2), float("nan"))
        assert fn(a, b, out=out).tolist() == [[0.0, 0.0]] * 3      # beta 0 never reads out


@pytest.mark.parametrize("call", [
    lambda fn: fn(minillm.zeros(2, 3), minillm.zeros(4, 2)),               # inner sizes differ
    lambda fn: fn(minillm.zeros(()), minillm.zeros(2)),                    # 0-d
    lambda fn: fn(minillm.zeros(2, 3), minillm.zeros(3, 2), beta=1.0),     # beta without out
    lambda fn: fn(minillm.zeros(2, 3), minillm.zeros(3, 2), out=minillm.zeros(3, 3)),
    lambda fn: fn(minillm.zeros(2, 3, dtype="int64"), minillm.zeros(3, 2)),
    lambda fn: fn(minillm.zeros(2, 3, 3), minillm.zeros(4, 3, 3)),         # batch axes do not broadcast
])
def test_matmul_and_matmul_bf16_refuse_the_same_bad_arguments(call):
    errors = []
    for fn in (_C.matmul, _C.matmul_bf16):
        with pytest.raises((TypeError, ValueError)) as e:
            call(fn)
        errors.append(type(e.value))
    assert errors[0] is errors[1]


# ------------------------------------------------------------------------------- RNG
def test_rng_fills_tensors_directly_and_strided_targets_like_contiguous_ones():
    from minillm.random import Generator
    ref = np.empty((4, 6), np.float32)
    Generator(5).normal_(ref)
    t = minillm.empty(4, 6)
    Generator(5).normal_(t)
    np.testing.assert_array_equal(t.numpy(), ref)
    # a strided Tensor target gets the values in row-major order of its own elements
    base = minillm.full((4, 12), -1.0)
    view = base[:, ::2]
    Generator(5).normal_(view)
    np.testing.assert_array_equal(base.numpy()[:, ::2], ref)
    assert np.all(base.numpy()[:, 1::2] == -1.0)
    ids = minillm.empty(10, dtype="int64")
    Generator(3).randint_(ids, 0, 7)
    ref_ids = np.empty(10, np.int64)
    Generator(3).randint_(ref_ids, 0, 7)
    assert ids.tolist() == ref_ids.tolist()
