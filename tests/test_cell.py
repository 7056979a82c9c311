"""Measuring one cell: the out-of-memory pre-check counts a case's inputs once (not again for every
backend after the first) and frees the previous case before it looks at free memory; several entry
points are timed and the fastest kept; rows of the CPU backends are the same as before the redesign."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from adapters.base import Prepared
from harness.cases.sweep import Case, Cell
from harness.measure import cell
from harness.measure.cell import CellMeasurer, TimerOptions, backend_bytes, choose_entry_point, input_bytes

ROOT = Path(__file__).resolve().parent.parent
CASE_A = Case(name="cell-a", grammar="4q1c64", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=32, dtype="fp32")
CASE_B = Case(name="cell-b", grammar="2q32c32", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=32, dtype="fp32")


class _FakeDevice:
    """torch.cuda.mem_get_info and empty_cache as a log of calls, with a settable free size."""

    def __init__(self, free: int):
        self.free = free
        self.calls: list[str] = []

    def mem_get_info(self, device=None):
        self.calls.append("mem_get_info")
        return self.free, 1 << 40

    def empty_cache(self):
        self.calls.append("empty_cache")

    def nothing_cached(self, device=None):
        return 0


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = _FakeDevice(free=1 << 40)
    monkeypatch.setattr(torch.cuda, "mem_get_info", fake.mem_get_info)
    monkeypatch.setattr(torch.cuda, "empty_cache", fake.empty_cache)
    monkeypatch.setattr(torch.cuda, "memory_reserved", fake.nothing_cached)
    monkeypatch.setattr(torch.cuda, "memory_allocated", fake.nothing_cached)
    return fake


def test_inputs_count_once_per_case(fake_cuda):
    measurer = CellMeasurer(device=torch.device("cuda"))
    needed_new = input_bytes(CASE_A) + backend_bytes(CASE_A)
    fake_cuda.free = needed_new - 1
    assert "GiB free" in measurer._fits(CASE_A)  # a new case: its inputs and the backend's working set
    fake_cuda.free = needed_new + 1
    assert measurer._fits(CASE_A) == ""
    measurer._case = CASE_A  # its batch and reference are built
    fake_cuda.free = backend_bytes(CASE_A) + 1
    assert measurer._fits(CASE_A) == "", "the current case's own inputs were counted again"


def test_the_previous_case_is_freed_before_free_memory_is_read(fake_cuda):
    measurer = CellMeasurer(device=torch.device("cuda"))
    measurer._case, measurer._batch, measurer._reference = CASE_A, object(), object()
    fake_cuda.calls.clear()
    assert measurer._fits(CASE_B) == ""
    assert fake_cuda.calls == ["mem_get_info"], "a case that fits needs no collection"
    assert measurer._batch is None and measurer._reference is None and measurer._case is None

    measurer._case, measurer._batch, measurer._reference = CASE_A, object(), object()
    fake_cuda.calls.clear()
    fake_cuda.free = 1
    assert "GiB free" in measurer._fits(CASE_B)
    assert fake_cuda.calls == ["mem_get_info", "empty_cache", "mem_get_info"], "short of memory: collect, look again"


def test_the_fastest_entry_point_is_kept(monkeypatch):
    times = {"slow": 20.0, "fast": 5.0}

    def fake_time(prepared, device, timer, *, target_ms=None):
        return type("T", (), {"median_us": times[prepared.run.__name__]})()

    def slow():
        return None

    def fast():
        return None

    monkeypatch.setattr(cell, "time_prepared", fake_time)
    prepared = Prepared(candidates={"slow": slow, "fast": fast})
    choose_entry_point(prepared, torch.device("cpu"), TimerOptions())
    assert prepared.run is fast
    assert prepared.notes["entry_point"] == "fast" and prepared.notes["entry_point_us"] == {"slow": 20.0, "fast": 5.0}


GOLDEN = ROOT / "tests" / "data" / "golden_cpu_tiny.jsonl"
SAME_NUMERICS = {"sdpa-gather", "triton"}
"""Backends whose computation the redesign did not change: their error figures must match the recorded ones
within `ERROR_ATOL`. Flex now runs decode and uniform prefill batches through its batched paged path (another
kernel, other rounding): its verdicts must match, its errors stay within `FLEX_REL_L2`."""
EXACT_FIELDS = ("backend", "case", "grammar", "batch_size", "q_len", "context", "page_size", "num_q_heads",
                "num_kv_heads", "head_dim", "dtype", "causal", "seed", "total_q", "total_kv", "flops", "bytes",
                "verdict")
"""Fields that are not computed in floating point (names, shapes, integer counts, the verdict): equal."""
ERROR_ATOL = 2.0 ** -20
"""How far ``rel_l2`` and ``max_abs`` (fp32 cases, outputs |o| < 4) may move from the recorded values: both
are differences between two fp32 computations of the output (backend and reference), each a few fp32 ulps
from exact, and the matmul's summation order (the BLAS build, the CPU's vector width) moves each by another
few ulps; 2^-20 (9.5e-7, 8 ulps at 1.0) covers that. A real change of the output by 1e-6 or more fails."""
FLEX_REL_L2 = 2e-3


def row_problems(new: dict, old: dict) -> list[str]:
    """How a cell's new row differs from the recorded one: exact fields exactly, error figures of the
    unchanged backends within `ERROR_ATOL`, Flex's ok cells within `FLEX_REL_L2`."""
    where = (old["backend"], old["case"])
    problems = [f"{where} {key}: {new[key]!r} vs {old[key]!r}" for key in EXACT_FIELDS if new[key] != old[key]]
    if old["backend"] in SAME_NUMERICS:
        for key in ("rel_l2", "max_abs"):
            if (new[key] is None) != (old[key] is None) or (
                    old[key] is not None and not math.isclose(new[key], old[key], rel_tol=0.0, abs_tol=ERROR_ATOL)):
                problems.append(f"{where} {key}: {new[key]!r} vs {old[key]!r}")
    elif old["verdict"] == "ok" and not new["rel_l2"] <= FLEX_REL_L2:
        problems.append(f"{where} rel_l2: {new['rel_l2']!r} > {FLEX_REL_L2}")
    return problems


def test_rows_are_the_same_as_before_the_redesign(tmp_path):
    """The cpu-tiny sweep through today's session gives the rows recorded before the redesign
    (tests/data/golden_cpu_tiny.jsonl, written by the old harness): same cells and verdicts, errors within
    the tolerances above."""
    from harness.cases.sweep import SWEEPS
    from harness.measure.session import RunSession

    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    backends = sorted({row["backend"] for row in golden})
    session = RunSession(out_dir=tmp_path, device_type="cpu", backends=backends, timer=TimerOptions(target_ms=2.0))
    session.start()
    rows = {row["cell_id"]: row for row in session.run(SWEEPS["cpu-tiny"])}
    assert set(rows) == {row["cell_id"] for row in golden}
    problems = [problem for old in golden for problem in row_problems(rows[old["cell_id"]], old)]
    assert not problems, problems


def test_the_redesign_check_catches_a_changed_row():
    """A planted change fails the comparison: a verdict, a count, or an error figure moved by 2e-6 (about
    twice the tolerance); a move of one fp32 ulp at 1.0 passes."""
    old = next(json.loads(line) for line in GOLDEN.read_text().splitlines()
               if json.loads(line)["backend"] == "sdpa-gather")
    assert row_problems(dict(old), old) == []
    assert row_problems(dict(old, max_abs=old["max_abs"] + 2.0 ** -23), old) == []
    assert row_problems(dict(old, max_abs=old["max_abs"] + 2e-6), old)
    assert row_problems(dict(old, rel_l2=old["rel_l2"] * 10), old)
    assert row_problems(dict(old, verdict="wrong"), old)
    assert row_problems(dict(old, total_kv=old["total_kv"] + 1), old)


def test_each_row_says_how_long_its_cell_took():
    """``cell_s`` is the wall time of the whole cell (inputs, gate, timing): positive, and at least the
    time spent timing it."""
    from harness.cases.sweep import SWEEPS
    from harness.measure.cell import CellMeasurer

    measurer = CellMeasurer(torch.device("cpu"), timer=TimerOptions(target_ms=30.0))
    row = measurer.measure(Cell("sdpa-gather", SWEEPS["cpu-tiny"][0]))
    assert row["verdict"] == "ok"
    # the timed launches alone took at least this long: half of them (rounded up) were no faster than the
    # median and the rest no faster than the minimum (reps x median could exceed their sum on a skewed sample)
    reps = row["reps"]
    timed_s = ((reps + 1) // 2 * row["median_us"] + reps // 2 * row["min_us"]) * 1e-6
    assert row["cell_s"] >= timed_s > 0


def test_a_case_builds_its_inputs_once_and_collects_garbage_only_when_memory_is_short(monkeypatch):
    """The first cell of a case says how long its batch and reference took (``inputs_s``); the case's
    next cell reuses them (empty ``inputs_s``). Moving to another case drops the old inputs without a full
    garbage collection (which costs a noticeable time in a worker with every library loaded); a case that
    does not fit at first look gets one collection and a second look, and is `oom` only if it still does
    not fit."""
    from harness.cases.sweep import SWEEPS

    collections = []
    monkeypatch.setattr(cell.gc, "collect", lambda *a: collections.append(1) or 0)
    first, second = SWEEPS["cpu-tiny"][:2]
    measurer = CellMeasurer(torch.device("cpu"), timer=TimerOptions(target_ms=1.0))
    row = measurer.measure(Cell("sdpa-gather", first))
    assert row["inputs_s"] is not None and row["inputs_s"] >= 0
    assert measurer.measure(Cell("sdpa-gather", first))["inputs_s"] is None
    assert measurer.measure(Cell("sdpa-gather", second))["inputs_s"] is not None
    assert not collections

    looks = iter([(1, "of host memory available"), (1 << 40, "of host memory available")])
    monkeypatch.setattr(cell, "memory_limit", lambda device: next(looks))
    assert measurer.measure(Cell("sdpa-gather", first))["verdict"] == "ok" and len(collections) == 1
    monkeypatch.setattr(cell, "memory_limit", lambda device: (1, "of host memory available"))
    row = measurer.measure(Cell("sdpa-gather", second))
    assert row["verdict"] == "oom" and len(collections) == 2
