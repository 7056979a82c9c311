"""Workers do not depend on whatever started the parent (asv's runner script, a user's script), and they
do not outlive it: SIGTERM (asv's timeout) or the parent's death takes them down. CPU only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import alive, children

ROOT = Path(__file__).resolve().parent.parent
TINY_CASE = 'Case(name="asv-tiny", grammar="2q1c9", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=32, dtype="fp32")'

SCRIPT = '''
import json, os, sys
if __name__ == "__main__":
    sys.path.insert(0, {private!r})
import only_in_the_parent  # resolvable only through the entry the parent's own run added (like asv_runner)
if __name__ == "__main__":
    sys.path.remove({private!r})
    sys.path.insert(0, {root!r})
    from harness.cases.sweep import Case, Cell
    from harness.measure.cell import TimerOptions
    from harness.measure.runner import RunConfig, run_cells

    config = RunConfig(timer=TimerOptions(target_ms=1.0), run_id="script", cell_timeout_s=float(sys.argv[3]),
                       worker_env={{"PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters"}})
    rows = run_cells([Cell(sys.argv[2], {case})], sys.argv[1], config)
    print(json.dumps([row["verdict"] for row in rows]))
'''


def _script(tmp_path: Path) -> Path:
    """A parent started as a script file from a folder whose imports a child cannot resolve."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "only_in_the_parent.py").write_text("VALUE = 1\n")
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    script = folder / "parent_script.py"
    script.write_text(SCRIPT.format(private=str(private), root=str(ROOT), case=TINY_CASE))
    return script


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(ROOT)}  # the project is on the path, as with asv's existing environment


def test_workers_start_whatever_script_started_the_parent(tmp_path):
    script = _script(tmp_path)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "sdpa-gather", "300"],
                          cwd=script.parent, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["ok"]
    assert "only_in_the_parent" not in done.stderr


def _wait_for_worker(parent: subprocess.Popen, pidfile: Path, timeout_s: float = 240.0) -> int:
    """The worker's pid once it is inside a cell (fault-wait writes its pid there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert parent.poll() is None, "the parent ended before its worker reached the cell"
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.2)
    raise AssertionError("the worker never reached its cell")


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_to_the_parent_stops_its_worker_at_once(tmp_path):
    """asv stops a benchmark past its timeout with SIGTERM: the run kills its workers and exits 143."""
    script = _script(tmp_path)
    pidfile = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), "fault-wait", "600"],
                              cwd=script.parent, env={**_env(), "PAGED_BENCH_TEST_PIDFILE": str(pidfile)},
                              stderr=subprocess.PIPE, text=True)
    try:
        worker = _wait_for_worker(parent, pidfile)
        parent.send_signal(signal.SIGTERM)
        status, stderr = parent.wait(60), parent.stderr.read()
        assert status == 143, stderr[-3000:]
        assert _wait_gone(worker, 30), "the worker outlived its parent"
        assert "Traceback" not in stderr
    finally:
        parent.kill()


def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    script = _script(tmp_path)
    pidfile = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), "fault-wait", "600"],
                              cwd=script.parent, env={**_env(), "PAGED_BENCH_TEST_PIDFILE": str(pidfile)},
                              stderr=subprocess.DEVNULL)
    try:
        worker = _wait_for_worker(parent, pidfile)
        assert worker in children(parent.pid)
        parent.kill()
        parent.wait(30)
        assert _wait_gone(worker, 30), "the worker outlived its parent"
    finally:
        parent.kill()
