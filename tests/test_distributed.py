"""Data parallelism: R ranks under mpiexec train exactly as one process accumulating the same G micro-batches.

The MPI tests run tests/dist_worker.py (a tiny GPT, a few AdamW or ZeroAdamW steps) with `mpiexec -n 2`
and without mpiexec, and compare the losses, final weights and optimizer states rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import Tensor, backend, distributed, manual_seed
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, clip_grad_norm_
from tinygrad_gpt.zero import ZeroAdamW

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WORKER = TESTS / "dist_worker.py"
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
TOLERANCE = {"float32": 1e-4, "float64": 1e-6}  # relative, on the losses


def _has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(
    not (_has_mpi4py() and MPIEXEC),
    reason="needs mpi4py and mpiexec (pip install mpi4py mpich, or the [mpi] extra)",
)


def _env() -> dict:
    """The environment for workers: this checkout first, one thread each, no launcher variables of ours."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.MPI_LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return env


def run_worker(tmp_path, name: str, ranks: int, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the worker with `ranks` MPI processes (0: plain python, no mpiexec); returns the finished process."""
    command = [sys.executable, str(WORKER), "--out", str(tmp_path / f"{name}.npz"), *map(str, args)]
    if ranks:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=tmp_path)


def trained(tmp_path, name: str, ranks: int, *args) -> dict:
    """Run the worker, check it succeeded, and read what rank 0 wrote: {'meta': ..., array name: array}."""
    result = run_worker(tmp_path, name, ranks, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / f"{name}.npz") as f:
        return {"meta": json.loads(str(f["meta"])), **{k: f[k] for k in f.files if k != "meta"}}


def assert_same_run(a: dict, b: dict, dtype: str) -> None:
    """Equal losses (relative tolerance of the dtype) and weights and optimizer states of the same layout.

    Weights get an absolute tolerance in float32: Adam divides by sqrt(v), so where a gradient is near
    zero a rounding difference in it moves the weight by up to ~lr per step.
    """
    np.testing.assert_allclose(a["meta"]["losses"], b["meta"]["losses"], rtol=TOLERANCE[dtype], atol=0)
    assert sorted(a) == sorted(b), "different parameters or optimizer entries"
    rtol, atol = (1e-3, 1e-5) if dtype == "float32" else (1e-8, 1e-12)
    for key in a:
        if key != "meta":
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


# ---------------------------------------------------------------- 2 ranks vs 1 process


@needs_mpi
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("zero", [False, True], ids=["allreduce", "zero1"])
def test_two_ranks_train_as_one_process_with_the_same_accumulation(tmp_path, dtype, zero):
    """G=2: one micro-batch on each of 2 ranks == both micro-batches in one process (losses, weights, moments)."""
    flags = ["--G", 2, "--steps", 3, "--dtype", dtype]
    one = trained(tmp_path, "one", 0, *flags)
    two = trained(tmp_path, "two", 2, *flags, *(["--zero"] if zero else []))
    assert_same_run(one, two, dtype)
    assert len(one["meta"]["losses"]) == 3


@needs_mpi
def test_zero1_divides_optimizer_state_by_the_number_of_ranks(tmp_path):
    """ZeroAdamW's moments per rank: 2 x ceil(N / R) values, half of one process's."""
    one = trained(tmp_path, "one", 0, "--steps", 1, "--zero")
    two = trained(tmp_path, "two", 2, "--steps", 1, "--zero")
    n_params = sum(v.size for k, v in one.items() if k.startswith("param."))
    itemsize = 4
    assert one["meta"]["state_nbytes"] == 2 * n_params * itemsize
    assert two["meta"]["state_nbytes"] == 2 * -(-n_params // 2) * itemsize


@needs_mpi
@pytest.mark.parametrize("first, second",
                         [((2, "--zero"), (0, None)), ((0, None), (2, "--zero")), ((2, None), (0, None))],
                         ids=["zero-2-ranks-then-1-process", "1-process-then-zero-2-ranks", "2-ranks-then-1-process"])
def test_resume_on_another_number_of_ranks_continues_exactly(tmp_path, first, second):
    """2 steps on R ranks, saved, then 2 more on R' ranks == 4 uninterrupted steps in one process."""
    flags = ["--dtype", "float64", "--G", 2]
    straight = trained(tmp_path, "straight", 0, *flags, "--steps", 4)
    trained(tmp_path, "first", first[0], *flags, "--steps", 2, *filter(None, [first[1]]))
    resumed = trained(tmp_path, "second", second[0], *flags, "--steps", 2, "--load", tmp_path / "first.npz",
                      *filter(None, [second[1]]))
    np.testing.assert_allclose(resumed["meta"]["losses"], straight["meta"]["losses"][2:], rtol=1e-6)
    for key in straight:
        if key != "meta":
            np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-8, atol=1e-10, err_msg=key)


# ---------------------------------------------------------------- faults


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job_nonzero_within_60_s(tmp_path, how):
    """Rank 1 raises (or is killed) in its first step while rank 0 waits in the allreduce: both end, non-zero."""
    started = time.monotonic()
    result = run_worker(tmp_path, "fail", 2, "--fail_on_rank", 1, "--fail", how, "--steps", 2, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    if how == "raise":
        assert "rank 1 fails on purpose" in result.stderr
    assert not (tmp_path / "fail.npz").exists()


@needs_mpi
def test_ranks_started_with_different_settings_stop_with_a_message(tmp_path):
    command = [sys.executable, str(WORKER), "--out", str(tmp_path / "x.npz")]
    result = subprocess.run([MPIEXEC, "-n", "1", *command, "--seed", "1", ":", "-n", "1", *command, "--seed", "2"],
                            capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert result.returncode != 0
    assert "ranks [1] were started with a different command line than rank 0" in result.stderr


@needs_mpi
def test_gradient_accumulation_not_divisible_by_ranks_is_an_error(tmp_path):
    result = run_worker(tmp_path, "g3", 2, "--G", 3, timeout=60)
    assert result.returncode != 0
    assert "gradient_accumulation_steps=3 must be a positive multiple of the number of ranks (2)" in result.stderr


# ---------------------------------------------------------------- one process (no MPI needed)


def test_without_mpiexec_the_world_is_one_process_and_mpi4py_is_not_imported():
    code = ("import sys; from tinygrad_gpt import distributed; w = distributed.init(); "
            "print(w.rank, w.size, w.local_rank, w.is_main, 'mpi4py' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "0", "True", "False"]


class _FakeRanks(distributed.World):
    """A world that only claims to have `size` ranks (for the bookkeeping that needs no communication)."""

    def __init__(self, rank: int, size: int):
        super().__init__()
        self.rank, self.size = rank, size


def test_micro_batches_split_g_into_contiguous_blocks_per_rank():
    assert [list(_FakeRanks(r, 2).micro_batches(4)) for r in range(2)] == [[0, 1], [2, 3]]
    assert list(distributed.World().micro_batches(3)) == [0, 1, 2]
    for G in (3, 0, 2.0):
        with pytest.raises(ValueError, match="multiple of the number of ranks"):
            _FakeRanks(0, 2).micro_batches(G)


def test_single_process_collectives_leave_buffers_as_they_are():
    world = distributed.World()
    buf = backend.asarray([1.0, 2.0, 3.0, 4.0], dtype="float32")
    for op in (world.allreduce_mean_, world.broadcast_, world.allgather_):
        assert op(buf) is buf
    np.testing.assert_array_equal(backend.to_numpy(world.reduce_scatter_mean(buf)), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="divisible by the 2 ranks"):
        _FakeRanks(0, 2).reduce_scatter_mean(backend.asarray([1.0, 2.0, 3.0], dtype="float32"))


def _tiny_gpt(seed: int = 0) -> GPT:
    manual_seed(seed)
    return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8))


def _train(model, optimizer, steps: int, zero: bool) -> list:
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        tokens = rng.integers(0, 17, size=(2, 9))
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        if zero:
            optimizer.step(max_grad_norm=0.5)
        else:
            clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
        optimizer.zero_grad()
        losses.append(float(backend.to_numpy(loss.data)))
    return losses


def test_zero_adamw_on_one_rank_is_adamw_and_writes_its_state_layout(float64):
    """Same losses and weights as AdamW (with clipping), and a state_dict AdamW loads and vice versa."""
    plain, sharded = _tiny_gpt(), _tiny_gpt()
    adamw = AdamW(plain.param_groups(0.1), lr=1e-2)
    zero = ZeroAdamW(sharded.param_groups(0.1), distributed.World(), lr=1e-2)
    np.testing.assert_allclose(_train(sharded, zero, 3, True), _train(plain, adamw, 3, False), rtol=1e-12)
    for p, q in zip(plain.parameters(), sharded.parameters()):
        np.testing.assert_allclose(backend.to_numpy(q.data), backend.to_numpy(p.data), rtol=1e-12, atol=1e-14)
    ours, theirs = zero.state_dict(), adamw.state_dict()
    assert ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys()
    for i, entry in theirs["state"].items():
        assert ours["state"][i]["step"] == entry["step"] == 3
        ours_v, theirs_v = (backend.to_numpy(e["exp_avg_sq"]) for e in (ours["state"][i], entry))
        np.testing.assert_allclose(ours_v, theirs_v, rtol=1e-12, atol=1e-20)
    zero.load_state_dict(theirs)  # AdamW's dict loads; a broken one is refused naming the entry
    broken = {**theirs, "state": {**theirs["state"], 0: {**theirs["state"][0], "exp_avg": np.zeros(3)}}}
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(3,\)"):
        zero.load_state_dict(broken)


def test_zero_adamw_skips_a_frozen_parameter_as_adamw_does(float64):
    plain, sharded = _tiny_gpt(), _tiny_gpt()
    for model in (plain, sharded):
        model.wte.weight.requires_grad_(False)  # frozen: no gradient, no update, no weight decay
    frozen = backend.to_numpy(sharded.wte.weight.data).copy()
    adamw = AdamW(plain.param_groups(0.1), lr=1e-2)
    zero = ZeroAdamW(sharded.param_groups(0.1), distributed.World(), lr=1e-2)
    np.testing.assert_allclose(_train(sharded, zero, 3, True), _train(plain, adamw, 3, False), rtol=1e-12)
    for p, q in zip(plain.parameters(), sharded.parameters()):
        np.testing.assert_allclose(backend.to_numpy(q.data), backend.to_numpy(p.data), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(backend.to_numpy(sharded.wte.weight.data), frozen)


def test_zero_adamw_needs_every_gradient():
    model = _tiny_gpt()
    optimizer = ZeroAdamW(model.parameters(), distributed.World())
    with pytest.raises(ValueError, match="have no gradient"):
        optimizer.step()


def test_grad_sync_and_broadcast_are_no_ops_in_one_process():
    model = _tiny_gpt()
    before = [backend.to_numpy(p.data).copy() for p in model.parameters()]
    distributed.broadcast_parameters(model.parameters(), distributed.World())
    sync = distributed.GradSync(model.parameters(), distributed.World())
    assert sync.nbytes == sum(p.size for p in model.parameters()) * 4
    p = model.parameters()[0]
    p.grad = Tensor(backend.asarray(np.ones(p.shape), dtype=p.dtype, device=p.device))
    sync.allreduce_()
    np.testing.assert_array_equal(backend.to_numpy(p.grad.data), 1.0)
    for q, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(backend.to_numpy(q.data), b)


@needs_mpi
def test_bench_ddp_reports_one_row_per_rank_count_with_the_allreduce_size(tmp_path):
    """The CI-sized run of benchmarks/bench_ddp.py: R=1 and R=2 rows, 2 ranks allreduce the tiny GPT's grads."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import harness

    script = REPO / "benchmarks" / "bench_ddp.py"
    command = [sys.executable, str(script), "--config", "tiny", "--steps", "1", "--warmup", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    columns, rows = harness.parse_markdown_table(result.stdout)
    assert [r[0] for r in rows] == ["1 x 2", "2 x 1"]
    n_params = harness.num_params(harness.CONFIGS["tiny"])
    assert float(rows[1][columns.index("allreduce MB/step")]) == pytest.approx(4 * n_params / 1e6, abs=0.01)
    assert float(rows[0][columns.index("step (ms)")]) > 0


class _TwoIdenticalRanks(distributed.World):
    """Rank 0 of 2 ranks that computed the same gradients: the mean over ranks is the input itself."""

    def __init__(self):
        super().__init__()
        self.size = 2


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_frozen_parameter_stays_frozen_under_data_parallelism(dtype):
    # integration of "frozen parameters stay in parameters()" with GradSync: a zero gradient made up for a
    # frozen weight let AdamW's weight decay shrink it on 2 ranks but not on 1
    from tinygrad_gpt.amp import make_precision

    model = _tiny_gpt()
    frozen = model.wte.weight
    frozen.requires_grad_(False)
    before = backend.to_numpy(frozen.data).copy()
    precision = make_precision(dtype, model)
    optimizer = AdamW(precision.param_groups(model.param_groups(0.5)), lr=0.1)
    sync = distributed.GradSync(precision.params, _TwoIdenticalRanks())
    idx = np.zeros((1, 4), dtype=np.int64)
    for _ in range(2):
        precision.zero_grad(optimizer)
        precision.scale_loss(model(idx, idx)[1]).backward()
        precision.step(optimizer, 1.0, reduce_grads=sync.allreduce_)
    np.testing.assert_array_equal(backend.to_numpy(frozen.data).astype(before.dtype), before.astype(frozen.dtype))
