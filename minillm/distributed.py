"""Data-parallel training over MPI (mpi4py), started by `mpirun -n N minillm train --ddp ...`.

Every rank holds the whole model. At the start all ranks take rank 0's weights (broadcast);
each step every rank computes the gradients of its own shard of the global batch, the
gradients are averaged with allreduce over flat float32 buckets (one copy in, one allreduce per
bucket, one copy out), and every rank applies the same optimizer step, so the weights stay
identical without ever being sent again. Rank 0 alone writes checkpoints, metrics and logs.

An exception on any rank prints its message and aborts the whole MPI job (MPI_Abort), so the
other ranks never wait forever in a collective.

Without MPI (or with one process) `init()` returns a single-process world whose collectives do
nothing, so the same training code runs everywhere.
"""
import sys

from minillm import _C

__all__ = ["World", "init", "world"]

BUCKET_BYTES = 16 << 20        # gradients are reduced in buckets of about this size


class World:
    """The processes of one training job: `rank`, `size`, and the collectives on Tensors."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self._flat = None

    @property
    def is_main(self):
        """True on the rank that writes files and logs (rank 0)."""
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    # -------------------------------------------------------------- collectives
    def broadcast_(self, tensors, root=0):
        """Overwrite every tensor (contiguous float32) with root's values, in place."""
        if self.size == 1:
            return
        from mpi4py import MPI
        for t in tensors:
            if not t.is_contiguous():
                raise ValueError(f"broadcast_: tensor of shape {t.shape} is not contiguous")
            self.comm.Bcast([memoryview(t).cast("B"), MPI.BYTE], root=root)

    def allreduce_mean_(self, tensors):
        """Average each tensor (float32) over all ranks, in place, through flat buckets."""
        if self.size == 1:
            return
        from mpi4py import MPI
        tensors = [t for t in tensors if t is not None]
        bucket, size = [], 0
        limit = BUCKET_BYTES // 4
        for t in tensors:
            bucket.append(t)
            size += t.numel()
            if size >= limit:
                self._reduce_bucket(bucket, size, MPI)
                bucket, size = [], 0
        if bucket:
            self._reduce_bucket(bucket, size, MPI)

    def _reduce_bucket(self, bucket, size, MPI):
        if self._flat is None or self._flat.numel() < size:
            self._flat = _C.empty(max(size, BUCKET_BYTES // 4))
        flat = self._flat[0:size]
        offsets = []
        pos = 0
        for t in bucket:
            n = t.numel()
            flat[pos:pos + n] = t.reshape(-1)
            offsets.append((pos, n))
            pos += n
        self.comm.Allreduce(MPI.IN_PLACE, [memoryview(flat), MPI.FLOAT], op=MPI.SUM)
        _C.scale_(flat, 1.0 / self.size)
        for t, (pos, n) in zip(bucket, offsets):
            t.reshape(-1)[:] = flat[pos:pos + n]

    def allreduce_mean_float(self, value):
        """The mean of a Python float over all ranks."""
        if self.size == 1:
            return float(value)
        from mpi4py import MPI
        return self.comm.allreduce(float(value), op=MPI.SUM) / self.size

    def broadcast_float(self, value, root=0):
        """root's value of a Python float, on every rank."""
        if self.size == 1:
            return float(value)
        return self.comm.bcast(float(value), root=root)

    def any_true(self, flag):
        """True on every rank when `flag` is true on at least one (keeps ranks in step when one
        of them is interrupted or runs out of time)."""
        if self.size == 1:
            return bool(flag)
        from mpi4py import MPI
        return bool(self.comm.allreduce(int(bool(flag)), op=MPI.MAX))

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def shard(self, total):
        """This rank's [lo, hi) of `total` items split evenly (total divisible by size)."""
        if total % self.size:
            raise ValueError(f"a global batch of {total} cannot be split evenly over {self.size} "
                             f"ranks: choose a batch size divisible by {self.size}")
        per = total // self.size
        return self.rank * per, (self.rank + 1) * per


_world = None


def world():
    """The current World (single-process until init() is called under MPI)."""
    global _world
    if _world is None:
        _world = World()
    return _world


def init():
    """Join the MPI job (mpi4py) and return its World. Installs an exception hook that prints
    the error with the rank and aborts every rank. Raises RuntimeError with install advice when
    mpi4py is missing."""
    global _world
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError("--ddp needs mpi4py and an MPI library: install Open MPI "
                           "(apt-get install openmpi-bin libopenmpi-dev) and `pip install mpi4py`, "
                           "then start with `mpirun -n 2 minillm train --ddp ...`") from e
    _world = World(MPI.COMM_WORLD)
    if _world.size > 1:
        _install_abort_hook(_world)
    return _world


def _install_abort_hook(w):
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.write(f"minillm ddp: rank {w.rank} of {w.size} failed ({kind.__name__}: {value}); "
                         f"aborting all ranks\n")
        sys.stderr.flush()
        w.comm.Abort(1)

    sys.excepthook = hook
