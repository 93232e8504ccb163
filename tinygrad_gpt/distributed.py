"""Data-parallel training over several processes: MPI on CPUs (one or many machines), NCCL on GPUs.

    world = distributed.init()              # a single-process world unless started by mpiexec
    sync = distributed.GradSync(model.parameters(), world)
    distributed.broadcast_parameters(model.parameters(), world)    # every rank starts from rank 0's weights
    for it in range(max_iters):
        micro = world.micro_batches(G)      # the global micro-batch numbers this rank runs (G/R of them)
        for k in micro:
            _, loss = model(*get_batch(seed, it, k))
            (loss * (1.0 / len(micro))).backward()
        sync.allreduce_()                   # grads averaged over ranks: one collective, one buffer
        optimizer.step(); optimizer.zero_grad()

Averaging per-rank sums of micro-batch losses scaled by 1/(G/R) gives each of the G micro-batches the
weight 1/G, as one process accumulating G micro-batches (nanoGPT and torch DDP do the same). With R a
power of two the division is exact, so R ranks match one process to float rounding of the sums.

Worlds: `World` (one process, every collective a no-op, mpi4py never imported), `MPIWorld` (mpi4py on
host arrays through the buffer interface; a device array is staged through a host copy), and
`NCCLWorld` (TINYGRAD_GPT_BACKEND=cupy under mpiexec: each rank takes the GPU of its local rank and
runs NCCL collectives on device buffers, its communicator bootstrapped by an id broadcast over MPI;
where CuPy has no NCCL, e.g. on the CPU stand-in, it falls back to MPIWorld's host staging).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from tinygrad_gpt import backend
from tinygrad_gpt.tensor import Tensor

# Environment variables an MPI launcher sets in every rank: MPICH/Hydra (PMI_*), Intel MPI
# (MPI_LOCALRANKID), Open MPI (OMPI_*) and PMIx-based launchers (PMIX_RANK).
MPI_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
MPI_INSTALL_HINT = 'pip install "tinygrad_gpt[mpi]" (mpi4py and an MPI such as mpich)'
ABORT_GRACE_S = 0.2  # World.abort: time for mpiexec to forward the failing rank's last lines (a test once lost them)


class DistributedError(RuntimeError):
    """MPI was asked for but cannot be used here."""


def launched_by_mpi() -> bool:
    """True when this process was started by mpiexec/mpirun (judged from the launcher's variables)."""
    return any(name in os.environ for name in MPI_LAUNCH_VARS)


# ---------------------------------------------------------------- the single-process world


class World:
    """One process: rank 0 of 1; every collective leaves its input as it is."""

    backend_name = "single"

    def __init__(self):
        self.rank, self.size, self.local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files, prints and draws progress bars (rank 0)."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    def micro_batches(self, grad_accum_steps: int) -> range:
        """The global micro-batch numbers k in [0, G) this rank runs: a contiguous block of G/R.

        Raises:
            ValueError when G is not a positive multiple of the number of ranks.
        """
        G = grad_accum_steps
        if not isinstance(G, int) or G < 1 or G % self.size != 0:
            raise ValueError(
                f"gradient_accumulation_steps={G!r} must be a positive multiple of the number of ranks ({self.size})"
            )
        per_rank = G // self.size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    # ------------------------------------------------------------ collectives (override these)

    def allreduce_mean_(self, buf):
        """Replace contiguous `buf` with its mean over ranks, in place; returns `buf`."""
        return buf

    def broadcast_(self, buf, root: int = 0):
        """Replace contiguous `buf` with rank `root`'s values, in place; returns `buf`."""
        return buf

    def reduce_scatter_mean(self, buf, out=None):
        """Mean over ranks of 1-D `buf` (N,), of which this rank keeps slice `rank` of R equal slices.

        Args:
            buf: (N,) with N divisible by the number of ranks R.
            out: optional (N/R,) array of buf's dtype and device to write into.
        Returns:
            (N/R,) the mean of buf[rank * N/R : (rank + 1) * N/R] over ranks.
        """
        shard = _shard_of(buf, self)
        if out is None:
            return shard.copy()
        out[...] = shard
        return out

    def allgather_(self, buf):
        """1-D `buf` (N,): every rank's slice `rank` of R equal slices, gathered in place; returns `buf`."""
        _shard_of(buf, self)  # checks N % R
        return buf

    def allgather_object(self, obj) -> list:
        """[obj of rank 0, ..., obj of rank R-1] (picklable Python objects; small ones only)."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank has reached this point."""

    def abort(self, code: int = 1) -> None:
        """End every rank now with exit status `code` (no cleanup: use after an unrecoverable error)."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def check_same(self, value, what: str) -> None:
        """Raise ValueError unless every rank passed an equal `value` (e.g. a hash of the run's config)."""
        values = self.allgather_object(value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise ValueError(f"ranks {differ} were started with a different {what} than rank 0 ({values[differ[0]]!r} "
                             f"vs {values[0]!r})")


# ---------------------------------------------------------------- MPI on host arrays


class MPIWorld(World):
    """Ranks of MPI_COMM_WORLD; collectives by mpi4py on host buffers (device arrays staged via the host)."""

    backend_name = "mpi"

    def __init__(self, MPI):  # noqa: N803  (mpi4py's module is called MPI)
        super().__init__()
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks on this machine
        self.local_rank = node.Get_rank()
        node.Free()

    def allreduce_mean_(self, buf):
        with _HostStaged(buf) as host:
            self.comm.Allreduce(self.MPI.IN_PLACE, _contiguous(host), op=self.MPI.SUM)
            host *= 1.0 / self.size
        return buf

    def broadcast_(self, buf, root: int = 0):
        with _HostStaged(buf) as host:
            self.comm.Bcast(_contiguous(host), root=root)
        return buf

    def reduce_scatter_mean(self, buf, out=None):
        shard_size = _shard_of(buf, self).size
        host = _contiguous(backend.to_numpy(buf))
        host_out = host[:shard_size].copy()  # a host array of the right size and dtype
        self.comm.Reduce_scatter_block(host, host_out, op=self.MPI.SUM)
        host_out *= 1.0 / self.size
        result = backend.to_device(host_out, backend.device_of(buf))
        if out is None:
            return result
        out[...] = result
        return out

    def allgather_(self, buf):
        _shard_of(buf, self)
        with _HostStaged(buf) as host:
            self.comm.Allgather(self.MPI.IN_PLACE, _contiguous(host))
        return buf

    def allgather_object(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)  # let the launcher forward this rank's message before it kills every rank
        self.comm.Abort(code)


class _HostStaged:
    """`with _HostStaged(buf) as host:` a host view of `buf` (a copy for a device array, copied back on exit)."""

    def __init__(self, buf):
        self.buf, self.on_device = buf, backend.device_of(buf) != "cpu"

    def __enter__(self):
        self.host = backend.to_numpy(self.buf) if self.on_device else self.buf
        return self.host

    def __exit__(self, *exc):
        if self.on_device and exc[0] is None:
            self.buf[...] = backend.to_device(self.host, "cuda")


def _contiguous(array):
    if not (array.flags.c_contiguous and array.flags.writeable):
        raise ValueError(f"collectives need a contiguous, writable buffer; got shape {array.shape} "
                         f"(make it with xp.ascontiguousarray)")
    return array


def _shard_of(buf, world: World):
    """This rank's slice of 1-D `buf` split into R equal parts."""
    if buf.ndim != 1 or buf.size % world.size != 0:
        raise ValueError(f"reduce_scatter/allgather need a 1-D buffer whose size is divisible by the {world.size} "
                         f"ranks, got shape {tuple(buf.shape)}")
    n = buf.size // world.size
    return buf[world.rank * n : (world.rank + 1) * n]


# ---------------------------------------------------------------- NCCL on GPUs


class NCCLWorld(MPIWorld):
    """MPI ranks, each on the GPU of its local rank, with NCCL collectives on device buffers.

    Untested here (no GPU): it follows CuPy's `cupy.cuda.nccl` API. Host arrays and the
    *_object/barrier calls still go through MPI.
    """

    backend_name = "nccl"

    def __init__(self, MPI, nccl):  # noqa: N803
        super().__init__(MPI)
        self.device_index = backend.use_gpu(self.local_rank)
        self.nccl = nccl
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.comm.bcast(unique_id, root=0)  # the id that bootstraps NCCL, sent over MPI
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self._dtypes = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def _args(self, buf):
        """(pointer, NCCL dtype, stream) for a device buffer, or None for a host one (then MPI)."""
        if backend.device_of(buf) == "cpu":
            return None
        if str(buf.dtype) not in self._dtypes or not buf.flags.c_contiguous:
            raise ValueError(f"NCCL collectives need a contiguous float buffer, got {buf.dtype} {tuple(buf.shape)}")
        return buf.data.ptr, self._dtypes[str(buf.dtype)], backend.current_stream_ptr()

    def allreduce_mean_(self, buf):
        args = self._args(buf)
        if args is None:
            return super().allreduce_mean_(buf)
        ptr, dtype, stream = args
        self.nccl_comm.allReduce(ptr, ptr, buf.size, dtype, self.nccl.NCCL_SUM, stream)
        buf *= 1.0 / self.size
        return buf

    def broadcast_(self, buf, root: int = 0):
        args = self._args(buf)
        if args is None:
            return super().broadcast_(buf, root)
        ptr, dtype, stream = args
        self.nccl_comm.bcast(ptr, buf.size, dtype, root, stream)
        return buf

    def reduce_scatter_mean(self, buf, out=None):
        args = self._args(buf)
        if args is None:
            return super().reduce_scatter_mean(buf, out)
        shard = _shard_of(buf, self)
        out = backend.get_array_module(buf).empty_like(shard) if out is None else out
        ptr, dtype, stream = args
        self.nccl_comm.reduceScatter(ptr, out.data.ptr, shard.size, dtype, self.nccl.NCCL_SUM, stream)
        out *= 1.0 / self.size
        return out

    def allgather_(self, buf):
        args = self._args(buf)
        if args is None:
            return super().allgather_(buf)
        shard = _shard_of(buf, self)
        ptr, dtype, stream = args
        self.nccl_comm.allGather(shard.data.ptr, ptr, shard.size, dtype, stream)  # in place: NCCL allows it
        return buf


# ---------------------------------------------------------------- starting the world

_world: World | None = None


def init(use_mpi: bool | None = None, abort_on_error: bool = True) -> World:
    """The process's world, made once: MPI under mpiexec (NCCL for the cupy backend), else one process.

    Call it before creating any tensor: on GPUs it picks this rank's device.

    Args:
        use_mpi: force MPI on (True) or off (False); None decides from the launcher's variables, so
            a plain `python ...` never pays for importing mpi4py.
        abort_on_error: with several ranks, install `install_abort_hook` (an uncaught exception on
            any rank ends the whole job).
    Raises:
        DistributedError when MPI is asked for (or mpiexec started us) but mpi4py is missing.
    """
    global _world
    if _world is not None:
        return _world
    if use_mpi is None:
        use_mpi = launched_by_mpi()
    if not use_mpi:
        _world = World()
        return _world
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"MPI was requested but mpi4py cannot be imported ({e}); {MPI_INSTALL_HINT}") from None
    nccl = backend.nccl() if backend.BACKEND == "cupy" else None
    _world = NCCLWorld(MPI, nccl) if nccl is not None else MPIWorld(MPI)
    if backend.BACKEND == "cupy" and nccl is None:
        backend.use_gpu(_world.local_rank)  # no NCCL (e.g. the CPU stand-in): MPI on host copies
    if abort_on_error:
        install_abort_hook(_world)
    return _world


def get_world() -> World:
    """The world made by `init()` (making it now if needed)."""
    return _world if _world is not None else init()


# ---------------------------------------------------------------- helpers for the training step


class FlatBuffer:
    """One contiguous (N,) array laid out as the concatenation of a list of same-dtype arrays."""

    def __init__(self, shapes: list, dtype, device: str):
        self.shapes = [tuple(s) for s in shapes]
        self.offsets = [0]
        for shape in self.shapes:
            self.offsets.append(self.offsets[-1] + _numel(shape))
        self.data = backend.xp_for(device).zeros(self.offsets[-1], dtype=dtype)  # (N,)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def view(self, j: int):
        """Array j as a view of its slice, in its own shape."""
        return self.data[self.offsets[j] : self.offsets[j + 1]].reshape(self.shapes[j])

    def pack(self, arrays: list) -> None:
        """Copy `arrays` (None: zeros) into the buffer."""
        for j, array in enumerate(arrays):
            part = self.data[self.offsets[j] : self.offsets[j + 1]]
            if array is None:
                part[...] = 0
            else:
                part[...] = array.reshape(-1)

    def unpack(self, arrays: list) -> None:
        """Copy the buffer back into `arrays` (in place)."""
        for j, array in enumerate(arrays):
            array[...] = self.view(j)


class GradSync:
    """Averages the gradients of `params` over ranks with ONE allreduce over ONE contiguous buffer.

    The buffer is the class's own (N,) array: AdamW keeps one flat gradient buffer per parameter
    group and dtype (two for a GPT), so its buffers cannot serve as the single one.
    """

    def __init__(self, params, world: World):
        self.params, self.world = list(params), world
        if not self.params:
            raise ValueError("GradSync: empty parameter list")
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"GradSync: parameters must share one dtype and device, got {sorted(map(str, kinds))}")
        self.flat = FlatBuffer([p.shape for p in self.params], self.params[0].dtype, self.params[0].device)

    @property
    def nbytes(self) -> int:
        """Bytes allreduced per step."""
        return self.flat.nbytes

    def allreduce_(self) -> None:
        """Set every parameter's .grad to its mean over ranks (missing: zeros; a frozen one keeps None)."""
        if self.world.size == 1:
            return
        self.flat.pack([None if p.grad is None else p.grad.data for p in self.params])
        self.world.allreduce_mean_(self.flat.data)
        for j, p in enumerate(self.params):  # views: the engine accumulates out of place, never into them
            if p.grad is None and not p.requires_grad:  # frozen: no rank has a gradient; a zero one would decay it
                continue
            grad = self.flat.view(j)
            p.grad = Tensor(grad, dtype=grad.dtype, device=p.device)


def broadcast_parameters(params, world: World, root: int = 0) -> None:
    """Overwrite every parameter (in place) with rank `root`'s values: one broadcast per dtype and device."""
    by_kind: dict = {}
    for p in params:
        by_kind.setdefault((p.dtype, p.device), []).append(p)
    if world.size == 1:
        return
    for (dtype, device), group in by_kind.items():
        flat = FlatBuffer([p.shape for p in group], dtype, device)
        flat.pack([p.data for p in group])
        world.broadcast_(flat.data, root)
        flat.unpack([p.data for p in group])


def install_abort_hook(world: World) -> None:
    """Make an uncaught exception on any rank print its traceback and abort the whole job.

    Without it a rank that raises exits while the others wait forever in their next collective.
    A no-op for the single-process world (Python's own handling is right there). `SystemExit` does
    not pass through it: an error every rank detects may exit normally on every rank (e.g. exit 2),
    but one that only some ranks see must end the job with `world.abort(code)`.
    """
    if world.size == 1:
        return

    def hook(exc_type, exc, tb):
        sys.stderr.write(f"[rank {world.rank}] ")
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        world.abort(1)

    sys.excepthook = hook


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
