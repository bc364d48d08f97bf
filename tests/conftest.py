"""Fixtures and helpers shared by the test files."""
import os

import numpy as np
import pytest

from minillm import _C


@pytest.fixture(params=_C.supported_isas())
def isa(request):
    """Runs the test once per instruction-set path this CPU supports (generic, avx2, avx512)."""
    before = _C.get_isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(before)


@pytest.fixture
def threads():
    """_C.set_num_threads, with the thread count restored after the test."""
    before = _C.get_num_threads()
    yield _C.set_num_threads
    _C.set_num_threads(before)


@pytest.fixture
def held_in_another_thread():
    """``with held_in_another_thread(switch, probe):`` runs ``with switch():`` in a second
    thread and keeps it open while the body runs on this thread; on exit it checks that
    ``probe()`` was true inside the other thread (so the switch did take effect there)."""
    import contextlib
    import threading

    @contextlib.contextmanager
    def hold(switch, probe):
        seen = {}
        started, release = threading.Event(), threading.Event()

        def other():
            with switch():
                started.set()
                release.wait(10)
                seen["inside"] = probe()

        t = threading.Thread(target=other)
        t.start()
        started.wait(10)
        try:
            yield
        finally:
            release.set()
            t.join()
        assert seen["inside"], "the switch was not on inside the other thread"
    return hold


SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sample.txt")


def sample_token_folder(root, vocab_size):
    """A token folder of tests/data/sample.txt (a BPE tokenizer of `vocab_size` ids trained on
    it, the last 10% as the validation split) under `root`; returns its path."""
    from minillm import data
    from minillm.tokenizers import BPETokenizer
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    BPETokenizer().train(text, vocab_size).save(os.path.join(root, "tok"))
    data.prepare_tokens([SAMPLE], os.path.join(root, "tok"), os.path.join(root, "tokens"), val_fraction=0.1)
    return os.path.join(root, "tokens")


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    """sample_token_folder with a 320-id tokenizer, once per test module."""
    return sample_token_folder(str(tmp_path_factory.mktemp("corpus")), 320)


def train_stopping_after(trainer, step):
    """trainer.train() as if Ctrl-C came during optimizer step `step`: the run stops after it
    with a checkpoint, as a run to resume."""
    train_step = trainer.train_step

    def stepped():
        out = train_step()
        if trainer.step == step:
            trainer._stop = True
        return out
    trainer.train_step = stepped
    trainer.train()


def round_bf16_bits(x):
    """float32 array -> its bf16 bits (uint16), rounded to nearest even, computed here from the
    bits (the tests' reference for every bf16 rounding); NaN -> a quiet NaN of the same sign."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    quiet = (u >> 16) | 0x40
    return np.where(nan, quiet, rounded).astype(np.uint16)


def widen_bf16(bits):
    """bf16 bits (uint16) -> the float32 values they are (the upper half of a float32)."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def bf16_values(x):
    """x rounded to bf16 (nearest even) and back to float32, of x's shape."""
    return widen_bf16(round_bf16_bits(x)).reshape(np.shape(x))
