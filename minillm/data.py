"""Data for training.

Batches: mini-batches over in-memory arrays, shuffled per epoch from a seed, resumable.
"""
import numpy as np

from minillm import _C
from minillm.random import Generator

Tensor = _C.Tensor

__all__ = ["Batches"]


# ------------------------------------------------------------ in-memory mini-batches
class Batches:
    """Iterate mini-batches over arrays that share their first axis.

    ``Batches(x, y, batch_size=64, shuffle=True, drop_last=False, seed=0)``: x and y are
    NumPy arrays or minillm Tensors of shapes (N, ...) with the same N. Each iteration
    (``for xb, yb in batches``) runs one epoch from the current position and yields tuples
    of Tensors (a single Tensor when one array was given) of shapes (B, ...), B =
    batch_size except possibly the last batch (dropped when drop_last). With shuffle, the
    order of epoch e is the permutation drawn by ``Generator(seed)`` after e earlier
    epochs' permutations: the same for a given seed, whatever the thread count.

    ``state_dict()`` returns {'epoch', 'position', 'seed'} (plain ints): loading it into a
    new Batches over the same arrays resumes at the next batch the old one would have
    yielded.
    """

    def __init__(self, *arrays, batch_size, shuffle=True, drop_last=False, seed=0):
        if not arrays:
            raise ValueError("Batches needs at least one array")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be a positive int, got {batch_size!r}")
        self._arrays = []
        for i, a in enumerate(arrays):
            if isinstance(a, Tensor):
                a = np.asarray(a)
            elif not isinstance(a, np.ndarray):
                raise TypeError(f"Batches: array {i} is a {type(a).__name__}, expected a NumPy array "
                                f"or a minillm Tensor")
            if a.ndim == 0:
                raise ValueError(f"Batches: array {i} is 0-d; arrays need a leading batch axis")
            if a.dtype == np.float64:
                a = a.astype(np.float32)
            self._arrays.append(a)
        n = len(self._arrays[0])
        for i, a in enumerate(self._arrays):
            if len(a) != n:
                shapes = [tuple(x.shape) for x in self._arrays]
                raise ValueError(f"Batches: arrays must share their first axis, got shapes {shapes}")
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.position = 0          # batches already yielded in the current epoch
        self._order_epoch = None
        self._order = None

    def __len__(self):
        """Batches per epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def _epoch_order(self, epoch):
        if not self.shuffle:
            return None
        if self._order_epoch != epoch:
            # one generator per epoch, offset by the words earlier epochs used, so epoch e's
            # order is computable without replaying the batches before it
            g = Generator(self.seed)
            g.claim(epoch * 2 * self.n)
            self._order = g.permutation(self.n)
            self._order_epoch = epoch
        return self._order

    def _batch(self, order, b):
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, self.n)
        if order is None:
            parts = [a[lo:hi] for a in self._arrays]
        else:
            idx = order[lo:hi]
            parts = [np.take(a, idx, axis=0) for a in self._arrays]
        out = tuple(Tensor.from_numpy(np.ascontiguousarray(p)) for p in parts)
        return out[0] if len(out) == 1 else out

    def __iter__(self):
        nb = len(self)
        order = self._epoch_order(self.epoch)
        while self.position < nb:
            b = self.position
            self.position += 1
            yield self._batch(order, b)
        self.epoch += 1
        self.position = 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state):
        """Resume where state_dict() was taken; ValueError if it came from another seed or
        points past the end of an epoch."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"Batches.load_state_dict: state has seed {state['seed']}, this has {self.seed}")
        pos = int(state["position"])
        if not 0 <= pos <= len(self):
            raise ValueError(f"Batches.load_state_dict: position {pos} outside [0, {len(self)}]")
        self.epoch = int(state["epoch"])
        self.position = pos
