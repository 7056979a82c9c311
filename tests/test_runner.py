"""Isolation and durability: a backend that raises, aborts, segfaults or hangs costs only its own cell;
finished rows survive kill -9; a resumed sweep neither loses nor repeats a cell; concurrent writers
never corrupt a line; several workers (simulated devices: CPU slots) share one queue without running a
cell twice. CPU only (tiny fp32 cases), except the `gpu` class at the end."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.measure import runner
from harness.measure.cell import TimerOptions
from harness.measure.results import cell_id
from harness.measure.runner import (RunConfig, Slot, SlotFailure, cells_to_measure, context_poisoned, describe_exit,
                                    order_by_case, run_cells, summarise_dump)
from harness.cases.sweep import Case, Cell
from records.store import ResultStore
from tests.processes import alive, children

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {"PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters"}
PIDFILE_ENV = "PAGED_BENCH_TEST_PIDFILE"
"""Where fault-wait (tests/faulty_adapters.py) writes its process id. Not imported from there: importing
that module registers its failing backends in this process, and every later discover() would list them."""
TINY = {"num_q_heads": 4, "num_kv_heads": 2, "head_dim": 32, "dtype": "fp32"}
CASES = [Case(name="runner-decode", grammar="3q1c20", page_size=4, **TINY),
         Case(name="runner-mixed", grammar="1q1c9_1q5c7", page_size=4, **TINY)]
FAULTY = ["fault-raise", "fault-abort", "fault-hang", "fault-segfault"]
TIMER = TimerOptions(target_ms=2.0)
HANG_TIMEOUT_S = 5.0


def _config(run_id: str, cell_timeout_s: float = HANG_TIMEOUT_S, **env) -> RunConfig:
    return RunConfig(timer=TIMER, run_id=run_id, worker_env={**EXTRA, **env}, cell_timeout_s=cell_timeout_s)


def _run(cells, out_dir, run_id="test", cell_timeout_s=HANG_TIMEOUT_S, **options):
    return run_cells(cells, out_dir, _config(run_id, cell_timeout_s), **options)


@pytest.fixture(scope="module")
def faulty_sweep(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("faulty")
    cells = [Cell(backend, case) for case in CASES for backend in [*FAULTY, "good-ref"]]
    return out_dir, cells, _run(cells, out_dir, run_id="with-faults")


@pytest.fixture(scope="module")
def clean_sweep(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("clean")
    return _run([Cell("good-ref", case) for case in CASES], out_dir, run_id="clean")


def _by_backend(rows, backend):
    return [row for row in rows if row["backend"] == backend]


def test_the_sweep_finishes_with_one_row_per_cell(faulty_sweep):
    out_dir, cells, rows = faulty_sweep
    assert [(row["backend"], row["case"]) for row in rows] == [(cell.backend, cell.case.name) for cell in cells]
    stored = ResultStore(out_dir).read_rows()
    assert sorted(row["cell_id"] for row in stored) == sorted(cell.id for cell in cells)
    assert {row["run_id"] for row in stored} == {"with-faults"}


def test_a_raising_backend_is_an_error_with_its_message(faulty_sweep):
    for row in _by_backend(faulty_sweep[2], "fault-raise"):
        assert row["verdict"] == "error"
        assert "prepare: RuntimeError: fault-raise: prepare failed on purpose" in row["reason"]


@pytest.mark.parametrize("backend, signal_name, status", [("fault-abort", "SIGABRT", -6),
                                                          ("fault-segfault", "SIGSEGV", -11)])
def test_a_crashing_backend_is_an_error_with_its_exit_status(faulty_sweep, backend, signal_name, status):
    for row in _by_backend(faulty_sweep[2], backend):
        assert row["verdict"] == "error", row["reason"]
        assert f"killed by {signal_name} (exit status {status})" in row["reason"]
        assert "Fatal Python error" in row["reason"]
        assert row["median_us"] is None


def test_a_hanging_backend_times_out_and_says_where(faulty_sweep):
    for row in _by_backend(faulty_sweep[2], "fault-hang"):
        assert row["verdict"] == "timeout"
        assert f"{HANG_TIMEOUT_S:g} s limit" in row["reason"]
        assert "faulty_adapters.py" in row["reason"] and "_sleep_forever" in row["reason"]


def test_healthy_neighbours_are_unaffected(faulty_sweep, clean_sweep):
    with_faults = _by_backend(faulty_sweep[2], "good-ref")
    assert [row["verdict"] for row in with_faults] == ["ok"] * len(CASES)
    assert [(r["cell_id"], r["verdict"], r["rel_l2"], r["max_abs"]) for r in with_faults] == \
        [(r["cell_id"], r["verdict"], r["rel_l2"], r["max_abs"]) for r in clean_sweep]
    assert all(row["median_us"] > 0 for row in with_faults)


def test_resume_skips_recorded_cells_and_returns_their_rows(faulty_sweep, monkeypatch):
    out_dir, cells, rows = faulty_sweep

    def no_worker(*args, **kwargs):
        raise AssertionError("a resumed run with every cell recorded must not start a worker")

    monkeypatch.setattr(runner, "_Worker", no_worker)
    again = _run(cells, out_dir, run_id="again")
    assert again == rows
    assert len(ResultStore(out_dir).read_rows()) == len(cells)


def test_the_resume_rule():
    a, b = CASES
    recorded = {cell_id("x", a): {"verdict": "ok"}, cell_id("y", a): {"verdict": "timeout"},
                cell_id("x", b): {"verdict": "error"}, cell_id("z", b): {"verdict": "skipped"}}
    cells = [Cell("x", a), Cell("y", a), Cell("x", b), Cell("y", b), Cell("z", b)]
    todo, reused = cells_to_measure(cells, recorded)
    assert todo == [Cell("y", b)]
    assert set(reused) == set(recorded)
    todo, reused = cells_to_measure(cells, recorded, retry_failed=True)
    assert todo == [Cell("y", a), Cell("x", b), Cell("y", b)]
    assert set(reused) == {cell_id("x", a), cell_id("z", b)}


# --- kill -9 in the middle of a sweep, then resume ------------------------------------------------

KILL_CASES = [Case(name=f"runner-kill-{n}", grammar=f"2q{n}c8", page_size=4, **TINY) for n in (1, 2, 3)]
KILL_CELLS = [Cell("good-ref", KILL_CASES[0]), Cell("good-ref", KILL_CASES[1]), Cell("fault-hang", KILL_CASES[1]),
              Cell("good-ref", KILL_CASES[2])]
SWEEP_SCRIPT = """
import sys
from pathlib import Path

from harness.cases.sweep import Case, Cell
from harness.measure.cell import TimerOptions
from harness.measure.runner import RunConfig, Slot, run_cells

if __name__ == "__main__":
    cells = [{cells}]
    config = RunConfig(timer=TimerOptions(target_ms=2.0), cell_timeout_s=600, run_id="killed", worker_env={extra!r})
    run_cells(cells, Path(sys.argv[1]), config, slots=[Slot(f"cpu{{n}}") for n in range({slots})])
"""


@pytest.mark.parametrize("slots", [1, 2])
def test_a_killed_sweep_resumes_without_losing_or_repeating_a_cell(tmp_path, slots):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT.format(cells=", ".join(repr(cell) for cell in KILL_CELLS), extra=EXTRA,
                                          slots=slots))
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = subprocess.Popen([sys.executable, str(script), str(out_dir)], cwd=ROOT, env=env)
    try:
        # kill once the good cells of the first two cases are stored: the second case's hanging cell then
        # holds its worker for good. (Waiting for "any two rows" was a race with two workers: the worker that
        # finished the first case could finish the third before the other one, slow to start, stored the second.)
        first_two = {cell.id for cell in KILL_CELLS[:2]}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sweep.poll() is None:
            if (out_dir / "results.jsonl").exists() and \
                    first_two <= {row["cell_id"] for row in ResultStore(out_dir).read_rows()}:
                break
            time.sleep(0.1)
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        workers = children(sweep.pid) if Path("/proc").exists() else []
        assert workers or not Path("/proc").exists(), "no worker process found"
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(10)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    store = ResultStore(out_dir)
    before = store.read_rows()
    # the good cells of the first two cases are done (with two workers the third may be too);
    # the hanging one never finishes
    good = {cell.id for cell in KILL_CELLS if cell.backend == "good-ref"}
    assert first_two <= {row["cell_id"] for row in before} <= good
    for worker in workers:  # an orphaned worker notices its parent is gone and exits
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), f"worker {worker} outlived its killed parent"

    rows = _run(KILL_CELLS, out_dir, run_id="resumed",
                slots=[Slot(f"cpu{n}") for n in range(slots)])
    assert [row["cell_id"] for row in rows] == [cell.id for cell in KILL_CELLS]
    stored = store.read_rows()
    assert store.skipped_results == []
    assert sorted(row["cell_id"] for row in stored) == sorted(row["cell_id"] for row in rows)  # none lost, none twice
    finished_before = {row["cell_id"] for row in before}
    assert [row["run_id"] for row in rows] == ["killed" if row["cell_id"] in finished_before else "resumed"
                                              for row in rows]
    assert rows[2]["run_id"] == "resumed"
    assert [row["verdict"] for row in rows] == ["ok", "ok", "timeout", "ok"]


# --- the store ------------------------------------------------------------------------------------

WRITER_SCRIPT = """
import sys
from records.store import ResultStore

store = ResultStore(sys.argv[1])
name = sys.argv[2]
for index in range(int(sys.argv[3])):
    store.append({{"cell_id": f"{{name}}-{{index}}", "verdict": "ok", "run_id": name, "padding": "x" * {padding}}})
"""


def test_concurrent_writers_never_corrupt_a_line(tmp_path):
    count, writers = 150, ("a", "b", "c")
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(padding=9000))  # rows larger than a pipe buffer or a page
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, str(script), str(tmp_path), name, str(count)], env=env)
                 for name in writers]
    assert [process.wait(120) for process in processes] == [0] * len(writers)
    lines = (tmp_path / "results.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    rows = [json.loads(line) for line in lines[:-1]]  # every line is one complete row
    assert sorted(row["cell_id"] for row in rows) == sorted(f"{n}-{i}" for n in writers for i in range(count))


def test_a_partial_last_line_is_skipped_and_repaired(tmp_path):
    store = ResultStore(tmp_path)
    store.append({"cell_id": "one", "verdict": "ok"})
    store.append({"cell_id": "two", "verdict": "wrong"})
    with open(store.results_path, "ab") as file:
        file.write(b'{"cell_id": "cut", "verd')  # a writer of an older format died here
    assert [row["cell_id"] for row in store.read_rows()] == ["one", "two"]
    assert store.skipped_results == [3]
    store.append({"cell_id": "three", "verdict": "ok"})
    assert [row["cell_id"] for row in store.read_rows()] == ["one", "two", "three"]
    assert store.skipped_results == [3]
    assert store.results_path.read_bytes().endswith(b'"verd\n{"cell_id": "three", "verdict": "ok"}\n')


def test_latest_rows_per_environment(tmp_path):
    store = ResultStore(tmp_path)
    for cell, verdict, env in [("ok", "ok", "e1"), ("fixed", "error", "e1"), ("fixed", "ok", "e1"), ("other", "ok", "e2")]:
        store.append({"cell_id": cell, "verdict": verdict, "env_id": env})
    assert {cell: row["verdict"] for cell, row in store.latest_rows().items()} == {"ok": "ok", "fixed": "ok", "other": "ok"}
    assert set(store.latest_rows(env_id="e2")) == {"other"}
    store.append_run({"run_id": "r1", "env_id": "e1", "argv": ["paged-bench", "run"]})
    assert store.read_runs() == [{"run_id": "r1", "env_id": "e1", "argv": ["paged-bench", "run"]}]


def test_reading_creates_nothing(tmp_path):
    store = ResultStore(tmp_path / "absent")
    assert store.read_rows() == [] and store.latest_rows() == {}
    assert not (tmp_path / "absent").exists()


# --- several workers (simulated devices) ----------------------------------------------------------

SLOT_CASES = [Case(name=f"runner-slots-{n}", grammar=f"2q{n}c6", page_size=4, **TINY) for n in range(1, 7)]


def test_two_workers_share_the_queue_and_measure_each_cell_once(tmp_path):
    cells = [Cell(backend, case) for case in SLOT_CASES for backend in ("good-ref", "sdpa-gather")]
    seen = []
    rows = _run(cells, tmp_path, slots=[Slot("cpu0"), Slot("cpu1")], on_progress=seen.append, cell_timeout_s=120)
    assert [(row["backend"], row["case"]) for row in rows] == [(cell.backend, cell.case.name) for cell in cells]
    assert all(row["verdict"] == "ok" for row in rows), [row["reason"] for row in rows]
    stored = ResultStore(tmp_path).read_rows()
    assert sorted(row["cell_id"] for row in stored) == sorted(cell.id for cell in cells)  # none twice
    by_slot = {}
    for progress in seen:
        by_slot.setdefault(progress.slot, set()).add(progress.row["case"])
    assert set(by_slot) == {"cpu0", "cpu1"}, "both workers should have taken cases"
    assert not by_slot["cpu0"] & by_slot["cpu1"], "a case's backends stay on one worker"
    assert [p.done for p in seen] == list(range(1, len(cells) + 1))


def test_a_worker_killed_mid_cell_costs_only_that_cell(tmp_path, monkeypatch):
    pidfile = tmp_path / "worker.pid"
    cells = [Cell("good-ref", SLOT_CASES[0]), Cell("fault-wait", SLOT_CASES[1]),
             *[Cell("good-ref", c) for c in SLOT_CASES[1:]]]
    result = {}
    thread = threading.Thread(target=lambda: result.update(rows=run_cells(
        cells, tmp_path, _config("killed-worker", cell_timeout_s=120, **{PIDFILE_ENV: str(pidfile)}),
        slots=[Slot("cpu0"), Slot("cpu1")])))
    thread.start()
    deadline = time.monotonic() + 120
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and thread.is_alive(), "the waiting cell never started"
        time.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    thread.join(180)
    rows = {(row["backend"], row["case"]): row for row in result["rows"]}
    killed = rows[("fault-wait", SLOT_CASES[1].name)]
    assert killed["verdict"] == "error" and "killed by SIGKILL" in killed["reason"]
    assert [row["verdict"] for key, row in rows.items() if key[0] == "good-ref"] == ["ok"] * len(SLOT_CASES)


def test_a_slot_whose_worker_cannot_start_hands_its_cells_to_the_others(tmp_path):
    broken = Slot("broken", env={"PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters,no_such_module_here"})
    failures = []
    cells = [Cell("good-ref", case) for case in SLOT_CASES[:3]]
    rows = _run(cells, tmp_path, slots=[broken, Slot("cpu")], cell_timeout_s=120,
                on_slot_failure=lambda slot, why: failures.append(slot))
    assert [row["verdict"] for row in rows] == ["ok"] * 3
    assert [slot.label for slot in failures] == ["broken"]
    with pytest.raises(SlotFailure, match="no_such_module_here"):
        _run(cells, tmp_path / "none", slots=[broken])


# --- small pieces ---------------------------------------------------------------------------------

def test_cells_are_grouped_by_case_without_duplicates():
    a, b = CASES
    cells = [Cell("x", a), Cell("y", b), Cell("y", a), Cell("x", a), Cell("x", b)]
    assert order_by_case(cells) == [Cell("x", a), Cell("y", a), Cell("y", b), Cell("x", b)]


@pytest.mark.parametrize("reason, poisoned", [
    ("run: AcceleratorError: CUDA error: an illegal memory access was encountered", True),
    ("run: RuntimeError: CUDA error: device-side assert triggered", True),
    ("run: RuntimeError: Triton Error [CUDA]: misaligned address", True),
    ("prepare: RuntimeError: fault-raise: prepare failed on purpose", False),
])
def test_sticky_cuda_errors_retire_the_worker(reason, poisoned):
    assert context_poisoned({"verdict": "error", "reason": reason}) is poisoned
    assert not context_poisoned({"verdict": "unsupported", "reason": reason})


def test_exit_and_dump_descriptions(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert describe_exit(-11) == "killed by SIGSEGV (exit status -11)"
    assert describe_exit(3) == "exited with status 3"
    assert "out of host memory" in describe_exit(-9)
    stdlib = sysconfig.get_paths()["stdlib"]
    dump = ("Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n"
            f'  File "{stdlib}/ctypes/__init__.py", line 519 in string_at\n'
            f'  File "{ROOT}/tests/faulty_adapters.py", line 64 in _read_address_zero\n'
            f'  File "{ROOT}/harness/measure/gate.py", line 143 in run_gate\n')
    assert summarise_dump(dump) == ("Fatal Python error: Segmentation fault; at ctypes/__init__.py:519 in string_at, "
                                    "called from tests/faulty_adapters.py:64 in _read_address_zero")


# --- GPU: an illegal memory access poisons the CUDA context, and only its own cell ------------------

GPU_HEADS = {"num_q_heads": 8, "num_kv_heads": 2, "head_dim": 128, "dtype": "bf16"}
GPU_CASES = [Case(name="runner-gpu-decode", grammar="4q1c300", page_size=16, **GPU_HEADS),
             Case(name="runner-gpu-mixed", grammar="2q1c200_1q48c100", page_size=16, **GPU_HEADS)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGpuIsolation:
    def test_an_illegal_memory_access_costs_only_its_own_cells(self, tmp_path):
        if importlib.util.find_spec("triton") is None:
            pytest.skip("fault-oob needs triton")
        from adapters.base import discover

        real = [name for name, adapter in discover().items()
                if adapter.in_sweep and not name.startswith("fault-") and name != "good-ref"]
        healthy = [*real, "good-ref"]
        slots = [Slot("gpu", device="cuda")]

        def config(run_id):
            return RunConfig(timer=TimerOptions(target_ms=10.0), run_id=run_id, worker_env=EXTRA, cell_timeout_s=300.0)

        # fault-oob first in each case: every later cell of the case runs right after a poisoned context
        with_oob = run_cells([Cell(b, c) for c in GPU_CASES for b in ["fault-oob", *healthy]], tmp_path / "oob",
                             config("oob"), slots=slots)
        clean = run_cells([Cell(b, c) for c in GPU_CASES for b in healthy], tmp_path / "clean", config("clean"), slots=slots)
        faults = _by_backend(with_oob, "fault-oob")
        assert [row["verdict"] for row in faults] == ["error"] * len(GPU_CASES), [r["reason"] for r in faults]
        assert all(context_poisoned(row) for row in faults), [row["reason"] for row in faults]
        others = {row["cell_id"]: row for row in with_oob if row["backend"] != "fault-oob"}
        assert set(others) == {row["cell_id"] for row in clean}
        for row in clean:
            after = others[row["cell_id"]]
            assert after["verdict"] == row["verdict"], (row["backend"], row["case"], after["reason"], row["reason"])
            if after["config"] == row["config"]:  # an autotuner may pick another config: other rounding
                assert after["rel_l2"] == row["rel_l2"], (row["backend"], row["case"])
        assert all(row["verdict"] == "ok" for row in _by_backend(with_oob, "good-ref"))


def test_gate_only_runs_may_share_a_gpu_between_workers():
    """`shared_slots` puts N workers on each GPU slot (same GPU, same pinning, labels gpu0#1..#N) and leaves
    CPU slots and N = 1 alone: only the capability probe, whose cells are never timed, uses it."""
    gpu = Slot("gpu0", device="cuda", env={"CUDA_VISIBLE_DEVICES": "0"}, gpu_index=0, gpu_uuid="GPU-x",
               ceilings={"copy_tbps": 3.0})
    shared = runner.shared_slots([gpu, Slot("cpu")], 3)
    assert [slot.label for slot in shared] == ["gpu0#1", "gpu0#2", "gpu0#3", "cpu"]
    assert all(slot.env == gpu.env and slot.gpu_uuid == "GPU-x" and slot.ceilings == gpu.ceilings
               for slot in shared[:3])
    assert runner.shared_slots([gpu], 1) == [gpu]


def test_spread_hands_out_small_cases_cell_by_cell_after_the_large_ones():
    """With ``spread`` (gate-only runs), a large case stays whole on one worker (one large batch at a time)
    and goes first; a small case's cells go out one by one, those ``first`` picks (the compiling
    backends: the longest cells) ahead of the others, case order kept within each part."""
    from harness.measure.capability import LARGE_POOL_GIB, probe_case
    from harness.measure.cell import cell_bytes

    small1, small2 = probe_case({}), probe_case({"page_size": 8})
    large = probe_case({"pool_gib": LARGE_POOL_GIB})
    assert cell_bytes(small1) < runner.SPREAD_MAX_BYTES <= cell_bytes(large)
    cells = [Cell("x", small1), Cell("y", small1), Cell("x", large), Cell("y", large), Cell("x", small2),
             Cell("y", small2)]
    assert runner._case_groups(cells) == [cells[:2], cells[2:4], cells[4:]]  # the sweep: whole cases, in order
    assert runner._case_groups(cells, spread=True, first=lambda cell: cell.backend == "y") == [
        [Cell("x", large), Cell("y", large)], [Cell("y", small1)], [Cell("y", small2)], [Cell("x", small1)],
        [Cell("x", small2)]]


def test_pools_keep_their_workers_across_runs_and_stop_them_at_the_end(tmp_path):
    """`worker_pools`: the probe's rounds and the compile warm-up reuse the same workers (one start each);
    leaving the block stops them; pools made for another configuration are refused."""
    config = _config("pools", cell_timeout_s=120)
    with runner.worker_pools(config, [Slot("cpu")]) as pools:
        first = run_cells([Cell("good-ref", SLOT_CASES[0])], tmp_path / "one", config, pools=pools)
        process = pools[0].worker.process
        second = run_cells([Cell("good-ref", SLOT_CASES[1])], tmp_path / "two", config, pools=pools)
        assert pools[0].worker.process is process and process.is_alive() and pools[0].started == 1
        with pytest.raises(ValueError, match="another RunConfig"):
            run_cells([Cell("good-ref", SLOT_CASES[2])], tmp_path / "three", _config("other"), pools=pools)
    assert [row["verdict"] for row in first + second] == ["ok", "ok"]
    assert pools[0].worker is None and not process.is_alive()
    assert not (tmp_path / "three").exists() or not ResultStore(tmp_path / "three").read_rows()


def test_a_spread_run_measures_every_cell_once_with_the_verdicts_of_a_whole_case_run(tmp_path):
    cells = [Cell(backend, case) for case in SLOT_CASES[:3] for backend in ("good-ref", "fault-raise")]
    spread = _run(cells, tmp_path / "spread", slots=[Slot("cpu0"), Slot("cpu1")], spread=True, cell_timeout_s=120,
                  first=lambda cell: cell.backend == "fault-raise")
    whole = _run(cells, tmp_path / "whole", slots=[Slot("cpu0")], cell_timeout_s=120)
    assert [(row["backend"], row["case"]) for row in spread] == [(cell.backend, cell.case.name) for cell in cells]
    assert [row["verdict"] for row in spread] == [row["verdict"] for row in whole] == ["ok", "error"] * 3
    assert sorted(row["cell_id"] for row in ResultStore(tmp_path / "spread").read_rows()) == sorted(c.id for c in cells)


def test_gate_workers_default_to_eight_per_gpu_and_two_cores_each():
    from harness.defaults import gate_workers

    assert gate_workers(1, 16) == 8      # the GPU machine: one GPU, 16 cores
    assert gate_workers(1, 128) == 8
    assert gate_workers(8, 128) == 8
    assert gate_workers(4, 16) == 2      # 16 cores shared by four GPUs' workers
    assert gate_workers(1, 2) == 1 and gate_workers(1, None) == 1
