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
