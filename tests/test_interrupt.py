"""Ctrl-C is not a result: `paged-bench run` interrupted (SIGINT to its whole process group, as a terminal
sends it) mid-cell or while a worker is being replaced exits with status 130 and no traceback, stores no
row for the cell in flight, leaves no worker behind, and the same command measures that cell again.
CPU only, through the real command line in a subprocess."""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.measure import runner
from records.store import ResultStore
from tests.processes import alive, descendants

ROOT = Path(__file__).resolve().parent.parent
PIDFILE_ENV = "PAGED_BENCH_TEST_PIDFILE"  # tests/faulty_adapters.py's name (not imported: it registers backends)
TINY = ["--case", "2q1c9", "--heads", "4/2/32", "--dtype", "fp32", "--page-size", "4"]
"""One tiny case: each cell takes well under a second on the CPU."""


def _interruptible() -> None:
    """In the child before it runs: SIGINT back to its default action. A shell that starts a job in the
    background without job control (nohup ... &, some CI runners) leaves SIGINT ignored in it and in
    everything it starts, and Python then installs no KeyboardInterrupt handler: the run would never see
    the Ctrl-C these tests send, as a run started from a terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _command(out: Path, backends: str) -> list[str]:
    return [sys.executable, "-m", "harness.frontends.cli", "run", "--device", "cpu", "--out", str(out),
            "--backends", backends, "--no-report", "--quiet", "--target-ms", "1", "--cell-timeout", "600", *TINY]


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in (PIDFILE_ENV, "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(ROOT), "PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters",
            "PYTHONUNBUFFERED": "1", **extra}


def _rows(out: Path) -> list[dict]:
    return ResultStore(out).read_rows() if (out / "results.jsonl").exists() else []


def _wait_for(condition, run: subprocess.Popen, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert run.poll() is None, f"the run ended before {what}: {run.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def _interrupt(run: subprocess.Popen) -> tuple[int, str, set[int]]:
    """Ctrl-C as a terminal sends it (to the whole process group); the exit status, stderr and the
    processes the run had at that moment."""
    below = descendants(run.pid)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    return run.returncode, stderr, below


def _assert_clean_exit(status: int, stderr: str, below: set[int]) -> None:
    """rc 130, the CLI's one 'interrupted' line and no traceback; no worker left behind."""
    assert status == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in below):
        time.sleep(0.1)
    assert not [pid for pid in below if alive(pid)], "processes outlived the interrupted run"


def _resume(out: Path, backends: str) -> list[dict]:
    done = subprocess.run(_command(out, backends), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return _rows(out)


def _interrupt_inside_a_cell(out: Path, backends: str, pidfile: Path) -> tuple[int, str, set[int]]:
    """Start the run, Ctrl-C it once a waiting backend's worker has written its pid (it is inside the cell)."""
    run = subprocess.Popen(_command(out, backends), cwd=ROOT, env=_env(**{PIDFILE_ENV: str(pidfile)}),
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                           preexec_fn=_interruptible)
    try:
        _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), run, "the worker is inside the cell")
        return _interrupt(run)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_ctrl_c_in_the_middle_of_a_cell_stores_nothing_for_it_and_the_resumed_run_measures_it(tmp_path):
    out = tmp_path / "out"
    backends = "good-ref,fault-wait-once"
    _assert_clean_exit(*_interrupt_inside_a_cell(out, backends, tmp_path / "worker.pid"))
    assert [row["backend"] for row in _rows(out)] == ["good-ref"]  # the cell in flight left no row

    rows = _resume(out, backends)
    assert [(row["backend"], row["verdict"]) for row in rows] == [("good-ref", "ok"), ("fault-wait-once", "ok")]


def test_ctrl_c_lets_the_worker_release_what_it_holds(tmp_path):
    """A worker stopped by Ctrl-C first gets SIGTERM and a moment to release its named semaphores (as a
    compiling library holds them): nothing is reported as leaked when the run exits."""
    out = tmp_path / "out"
    status, stderr, below = _interrupt_inside_a_cell(out, "fault-wait-semaphore", tmp_path / "worker.pid")
    _assert_clean_exit(status, stderr, below)
    assert "leaked" not in stderr, stderr[-2000:]
    assert _rows(out) == []


@pytest.mark.parametrize("delay_s", [0.0, 0.5])
def test_ctrl_c_while_a_worker_is_being_replaced(tmp_path, delay_s):
    """fault-abort kills its worker; Ctrl-C comes as the next cell's fresh worker starts."""
    out = tmp_path / "out"
    backends = "fault-abort,good-ref"
    run = subprocess.Popen(_command(out, backends), cwd=ROOT, env=_env(), stderr=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                           preexec_fn=_interruptible)
    try:
        _wait_for(lambda: any(row["backend"] == "fault-abort" for row in _rows(out)), run,
                  "the aborting cell is stored")
        time.sleep(delay_s)
        if run.poll() is not None:
            pytest.skip("the replacement worker finished the last cell before Ctrl-C came (a very fast machine)")
        status, stderr, below = _interrupt(run)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    _assert_clean_exit(status, stderr, below)
    rows = _rows(out)
    assert [(row["backend"], row["verdict"]) for row in rows] == [("fault-abort", "error")]
    assert "SIGABRT" in rows[0]["reason"]

    rows = _resume(out, backends)
    assert [(row["backend"], row["verdict"]) for row in rows] == [("fault-abort", "error"), ("good-ref", "ok")]


RELEASE_S = 1.0
"""How long the slow release below takes: long enough that the second SIGTERM surely comes while it runs."""


def _release_slowly(marker: str) -> None:
    time.sleep(RELEASE_S)  # a release that takes its time, as on a loaded machine
    Path(marker).write_text("released")


def _hold_and_wait(ready: str, marker: str) -> None:
    """A stand-in worker (spawned): the worker's SIGTERM handler, one exit finalizer of priority 0 (what a
    named semaphore registers) that releases slowly, then waits to be stopped."""
    signal.signal(signal.SIGTERM, runner._leave_on_sigterm)
    multiprocessing.util.Finalize(None, _release_slowly, (marker,), exitpriority=0)
    Path(ready).write_text("ready")
    while True:
        time.sleep(60)


def test_a_second_sigterm_does_not_cut_the_workers_release_short(tmp_path):
    """A stopped run signals its worker twice (the interrupt, then the slot thread's kill): the second
    SIGTERM, while the first one's handler releases what the worker holds, must not start the handler again
    (it would find nothing left to release and exit, and the half-released semaphore is reported leaked)."""
    ready, marker = tmp_path / "ready", tmp_path / "released"
    worker = multiprocessing.get_context("spawn").Process(target=_hold_and_wait, args=(str(ready), str(marker)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.05)
        assert ready.exists(), "the stand-in worker did not start"
        worker.terminate()
        time.sleep(RELEASE_S / 4)  # inside the release
        worker.terminate()
        worker.join(RELEASE_S + runner.STOP_GRACE_S + 10)
        assert worker.exitcode == 128 + signal.SIGTERM
        assert marker.exists(), "the second SIGTERM ended the worker before its release finished"
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()
