"""Runtime switches: one value per thread, set by a call, a context manager or a decorator.

Every switch of minillm that changes what ops compute has this shape (grad mode lives in
the compiled core, with the same rules):

    set_fused_enabled(False)                  # a plain call: switched until set again
    with set_fused_enabled(False): ...        # restored to the previous value on exit
    @set_fused_enabled(False)                 # each call of the function runs switched
    def f(): ...
    is_fused_enabled()                        # the value in force on this thread

The value is per thread: a thread that never set it sees the default, whatever another
thread did, so one thread's ``with`` block never leaks into another's work.
"""
import functools
import threading

__all__ = ["ThreadLocalValue", "SetSwitch", "switched"]


class ThreadLocalValue:
    """A value per thread, `default` for threads that have not set it."""

    __slots__ = ("_local", "default")

    def __init__(self, default):
        self._local = threading.local()
        self.default = default

    def get(self):
        return getattr(self._local, "value", self.default)

    def set(self, value):
        """Set this thread's value; returns the previous one."""
        prev = self.get()
        self._local.value = value
        return prev


class SetSwitch:
    """Base of the ``set_<switch>(value)`` classes: the constructor switches at once (the
    call form); used as a context manager it restores the previous value on exit; used as a
    decorator it applies the value around each call instead. Subclasses set ``state`` (a
    ThreadLocalValue) and may override ``convert`` to check or normalise the value."""

    state = None
    __slots__ = ("prev", "value")

    @staticmethod
    def convert(value):
        return bool(value)

    def __init__(self, value):
        self.value = self.convert(value)
        self.prev = self.state.set(self.value)

    def __bool__(self):
        # the setting this call replaced, so that the older pattern
        # ``prev = set_x(False) ... set_x(prev)`` keeps restoring it
        return bool(self.prev)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.state.set(self.prev)
        return False

    def __call__(self, fn):
        # used as a decorator: undo the immediate switch, switch around each call instead
        self.state.set(self.prev)
        return switched(fn, self.state, self.value)


def switched(fn, state, value):
    """fn wrapped so that each call runs with `state` (a ThreadLocalValue) set to `value`
    and restored afterwards (the decorator form of a switch)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        prev = state.set(value)
        try:
            return fn(*args, **kwargs)
        finally:
            state.set(prev)
    return wrapper
