"""A cell's memory is estimated (one estimator: harness.measure.cell.cell_bytes) before its inputs are built: a cell
that cannot fit is `oom` with nothing allocated, a selection of which no cell fits this machine is one line
with exit status 2 before anything starts, a huge batch string is refused at once, and a memory error on
the CPU is `oom`. The available memory is mocked: the tests hold on any machine."""

from __future__ import annotations

import time

import pytest
import torch

from harness.cases.sweep import Case, Cell
from harness.errors import UsageError
from harness.frontends import cli
from harness.measure import cell
from harness.measure.cell import CellMeasurer, cell_bytes, refuse_what_cannot_fit
from harness.measure.gate import failure_verdict

TINY = {"num_q_heads": 4, "num_kv_heads": 2, "head_dim": 32, "dtype": "fp32"}
GIB = 2**30


def test_a_huge_batch_is_refused_within_a_second():
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"100000000 sequences; at most 1048576"):
        Case(name="huge", grammar="100000000q1c1000000", page_size=16, **TINY).spec()
    with pytest.raises(ValueError, match=r"tokens; at most"):
        Case(name="long", grammar="1000q1c10000000", page_size=16, **TINY).spec()
    assert time.monotonic() - started < 1.0


def test_the_estimate_counts_the_pool():
    small = Case(name="small", grammar="2q1c9", page_size=4, **TINY)
    pooled = Case(name="pooled", grammar="2q1c9", page_size=4, pool_gib=2.0, **TINY)
    assert cell_bytes(pooled) - cell_bytes(small) >= int(1.9 * GIB)


def test_a_selection_that_cannot_fit_is_refused_before_anything_starts(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cell, "host_available_bytes", lambda: 1 * GIB)
    out = tmp_path / "out"
    status = cli.main(["run", "--device", "cpu", "--case", "2q1c9", "--heads", "4/2/32", "--dtype", "fp32",
                       "--pool-gib", "4", "--out", str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, lines
    assert "no cell fits this machine" in lines[0] and "1.0 GiB of host memory available" in lines[0]
    assert "4.0 GiB" in lines[0]  # the pool it asked for
    assert not out.exists()


def test_a_selection_with_some_cells_that_fit_is_kept(monkeypatch):
    monkeypatch.setattr(cell, "host_available_bytes", lambda: 1 * GIB)
    fits = Case(name="fits", grammar="2q1c9", page_size=4, **TINY)
    too_big = Case(name="too-big", grammar="2q1c9", page_size=4, pool_gib=4.0, **TINY)
    refuse_what_cannot_fit([fits, too_big], "cpu")
    with pytest.raises(UsageError, match="too-big"):
        refuse_what_cannot_fit([too_big], "cpu")


def test_a_cell_that_cannot_fit_is_oom_with_nothing_allocated(monkeypatch):
    monkeypatch.setattr(cell, "host_available_bytes", lambda: 1 * GIB)
    built = []
    monkeypatch.setattr(cell, "make_batch", lambda *args, **kwargs: built.append(args))
    measurer = CellMeasurer(device=torch.device("cpu"))
    case = Case(name="too-big", grammar="2q1c9", page_size=4, pool_gib=4.0, **TINY)
    row = measurer.measure(Cell("sdpa-gather", case))
    assert row["verdict"] == "oom" and not built
    assert "GiB" in row["reason"] and "1.0 GiB of host memory available" in row["reason"]


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 3435973836800 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_memory_errors_are_oom(error):
    assert failure_verdict(error, "measure").verdict == "oom"


def test_a_real_cpu_allocation_failure_is_oom():
    """What `--case 4096q1c100000 --dtype fp32` met: the CPU allocator refusing a huge tensor."""
    try:
        torch.empty(1 << 50, dtype=torch.float32)  # 4 PiB
    except Exception as error:  # noqa: BLE001 - whatever the allocator raises must map to oom
        assert failure_verdict(error, "measure").verdict == "oom", repr(error)
    else:
        pytest.skip("this machine allocated 4 PiB lazily")


def _shared_gpu_measurer(monkeypatch, free_bytes: list[int], total: int) -> CellMeasurer:
    """A gate-only measurer on a (mocked) CUDA device whose free memory takes the values ``free_bytes`` in
    turn, one per look (the last one stays): the siblings sharing the GPU free theirs over time."""
    looks = iter(free_bytes)
    last = [free_bytes[-1]]

    def limit(device):
        last[0] = next(looks, last[0])
        return last[0], "free on the GPU"

    monkeypatch.setattr(cell, "memory_limit", limit)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (last[0], total))
    monkeypatch.setattr(cell, "SHARED_GPU_POLL_S", 0.001)
    return CellMeasurer(device=torch.device("cuda"), gate_only=True)


def test_a_gate_only_cell_waits_for_the_workers_sharing_its_gpu(monkeypatch):
    """Gate-only workers share a GPU: a cell that fits the GPU but not what the others leave free now waits
    until they free it (no `oom` that a free GPU would not give)."""
    case = Case(name="shared", grammar="2q1c9", page_size=4, **TINY)
    needed = cell_bytes(case)
    measurer = _shared_gpu_measurer(monkeypatch, [needed // 2, needed // 2, needed // 2, 2 * needed], total=4 * needed)
    assert measurer._wait_for_shared_gpu(case, needed) == ""


def test_a_gate_only_cell_larger_than_the_gpu_or_still_blocked_is_oom(monkeypatch):
    case = Case(name="shared", grammar="2q1c9", page_size=4, **TINY)
    needed = cell_bytes(case)
    measurer = _shared_gpu_measurer(monkeypatch, [needed // 2], total=needed // 2)  # never fits this GPU: no wait
    started = time.monotonic()
    assert "needs about" in measurer._wait_for_shared_gpu(case, needed)
    assert time.monotonic() - started < 1.0
    measurer = _shared_gpu_measurer(monkeypatch, [needed // 2], total=4 * needed)
    monkeypatch.setattr(cell, "SHARED_GPU_WAIT_S", 0.05)  # the siblings never free enough: oom after the wait
    assert "needs about" in measurer._wait_for_shared_gpu(case, needed)


def test_only_gate_only_workers_on_a_shared_gpu_get_the_memory_returning_settings():
    from adapters.base import worker_environment

    assert worker_environment(None, "cuda", shared_gpu=True)["XLA_PYTHON_CLIENT_ALLOCATOR"] == "platform"
    assert "XLA_PYTHON_CLIENT_ALLOCATOR" not in worker_environment(None, "cuda")  # a timed worker: JAX's pool
    assert "XLA_PYTHON_CLIENT_ALLOCATOR" not in worker_environment(None, "cpu", shared_gpu=True)
