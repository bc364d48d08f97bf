"""Fixtures shared by the kernel test files."""
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
