"""Measuring many cells so that one failing backend costs only its own cell.

Cells run in a worker process (start method ``spawn``, as CUDA requires) that measures one cell at a
time with `CellMeasurer`, so torch/CUDA start-up and each case's batch and reference are paid once for
many cells. The parent sends a cell and waits for its row with a time limit:

- the backend raises            -> `error` (the worker's gate turns the exception into the verdict);
- the worker dies (abort, segfault, killed) -> `error` with the signal or exit status and the frame
  it died in; a fresh worker takes the next cell;
- the cell runs past its limit  -> `timeout` with the frame it was stuck in; the worker is killed;
- out of memory                 -> `oom` (checked before allocating, and caught when raised later);
- a CUDA error that leaves the context unusable (illegal memory access, device-side assert, or a
  failing synchronize after the cell) -> `error`, and the worker exits so the next cell gets a
  clean context.

Each finished row is appended to the `ResultStore` at once, so an interrupted sweep loses nothing it
finished and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.cell import TimerOptions
from harness.gate import GateResult, failure_verdict
from harness.results import cell_id, make_row
from records.store import RETRYABLE_VERDICTS, ResultStore
from harness.sweep import Case

logger = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 180.0
"""Time a fresh worker gets to import torch, create the CUDA context and say it is ready (not
counted against any cell)."""
DUMP_WAIT_S = 2.0
"""After a timeout: how long the stuck worker gets to write where it is stuck before it is killed."""

_CONTEXT_POISONED = re.compile(
    r"CUDA error|CUDA_ERROR_|illegal memory access|device-side assert|unspecified launch failure|"
    r"misaligned address|illegal instruction|an illegal address", re.IGNORECASE)
"""Exception text after which a CUDA context cannot be trusted (errors are sticky): the worker exits."""


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to measure cells as the parent would (picklable)."""

    device: str
    timer: TimerOptions
    ceilings: dict[str, Any] | None
    env_id: str
    run_id: str
    env: dict[str, str] = field(default_factory=dict)
    fault_log: str = ""


def context_poisoned(row: dict[str, Any]) -> bool:
    """Whether a cell's failure leaves its CUDA context unusable for the next cell."""
    return row.get("verdict") in ("error", "oom") and bool(_CONTEXT_POISONED.search(row.get("reason") or ""))


# ---------------------------------------------------------------------------------------------------
# The worker process


def _exit_with_parent(parent_pid: int) -> None:
    """A watchdog thread: if the parent dies (kill -9), the worker must not linger on the GPU."""

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # stack dumps go to the main thread
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _error_row(backend: str, case: Case, gate: GateResult, config: WorkerConfig) -> dict[str, Any]:
    import torch

    return make_row(backend=backend, case=case, gate=gate, ceilings=config.ceilings, env_id=config.env_id,
                    run_id=config.run_id, device=str(torch.device(config.device)))


def _measure_one(measurer, backend: str, case: Case, config: WorkerConfig) -> tuple[dict[str, Any], bool]:
    """One cell's row, and whether this worker must exit afterwards (its CUDA context is poisoned)."""
    import torch

    try:
        row = measurer.measure(backend, case)
    except Exception as error:  # noqa: BLE001 - e.g. an unknown backend or a raising available()
        row = _error_row(backend, case, failure_verdict(error, "measure"), config)
    poisoned = context_poisoned(row)
    if measurer.device.type == "cuda":
        try:
            torch.cuda.synchronize(measurer.device)
        except Exception as error:  # noqa: BLE001 - the cell left an asynchronous error behind
            poisoned = True
            if row["verdict"] != "error":
                row = _error_row(backend, case, GateResult(
                    "error", f"CUDA context failed after the cell: {type(error).__name__}: {error}"), config)
        if row["verdict"] == "oom" and not poisoned:
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    return row, poisoned


def worker_main(conn, config: WorkerConfig) -> None:
    """Entry point of a worker: report ready, then answer each (backend, case) with ("row", row, exits)
    until told to stop (None) or the parent goes away."""
    os.environ.update(config.env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    _exit_with_parent(os.getppid())
    fault_log = open(config.fault_log, "w") if config.fault_log else None  # noqa: SIM115 - lives as long as we do
    if fault_log is not None:
        faulthandler.enable(file=fault_log, all_threads=False)
        faulthandler.register(signal.SIGUSR1, file=fault_log, all_threads=False)
    try:
        import torch

        from harness.cell import CellMeasurer

        device = torch.device(config.device)
        if device.type == "cuda":
            if device.index is not None:
                torch.cuda.set_device(device)
            torch.zeros(1, device=device)  # create the context now rather than inside the first cell
        measurer = CellMeasurer(device=device, timer=config.timer, ceilings=config.ceilings,
                                env_id=config.env_id, run_id=config.run_id)
        try:  # import the adapter modules now, so their import time is no cell's
            from adapters.base import discover

            discover()
        except Exception:  # noqa: BLE001 - a broken adapter module shows up as the error of its cells
            pass
    except BaseException:  # noqa: BLE001 - tell the parent why this worker cannot measure anything
        conn.send(("init_error", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        backend, case = message
        row, must_exit = _measure_one(measurer, backend, case, config)
        conn.send(("row", row, must_exit))
        if must_exit:  # skip interpreter teardown: it would run CUDA cleanup on a broken context
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


# ---------------------------------------------------------------------------------------------------
# The parent's side


class WorkerStartError(RuntimeError):
    """A worker did not become ready (it crashed, timed out or failed to import the harness)."""


@contextlib.contextmanager
def _environ(extra: dict[str, str]):
    """``os.environ`` with ``extra`` set while a worker is spawned (it inherits the environment)."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (not sent by the runner: out of host memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name} (exit status {code}){hint}"
    return f"exited with status {code}"


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def _short_path(path: str) -> str:
    """A frame's file relative to the working directory, site-packages or the standard library."""
    roots = {os.getcwd(), *(sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib"))}
    for root in sorted(roots, key=len, reverse=True):
        if path.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(path, root)
    return path


def summarise_dump(text: str) -> str:
    """A faulthandler dump in one line: 'Fatal Python error: Segmentation fault; at
    ctypes/__init__.py:519 in string_at, called from tests/faulty_adapters.py:64 in _read_address_zero'
    (the innermost frame, and the innermost one outside the standard library when that differs)."""
    parts = []
    fatal = next((line.strip() for line in text.splitlines() if line.startswith("Fatal Python error")), "")
    if fatal:
        parts.append(fatal)
    frames = list(_FRAME.finditer(text))  # innermost first
    if frames:
        stdlib = sysconfig.get_paths()["stdlib"].rstrip(os.sep) + os.sep
        where = f"at {_short_path(frames[0]['file'])}:{frames[0]['line']} in {frames[0]['func']}"
        caller = next((f for f in frames if not f["file"].startswith(stdlib)), None)
        if caller is not None and caller is not frames[0]:
            where += f", called from {_short_path(caller['file'])}:{caller['line']} in {caller['func']}"
        parts.append(where)
    return "; ".join(parts)


class _Worker:
    """One live worker process and the pipe to it."""

    def __init__(self, config: WorkerConfig, context, start_timeout_s: float):
        self.config = config
        self.log_path = Path(config.fault_log)
        parent_conn, child_conn = context.Pipe()
        with _environ(config.env):
            self.process = context.Process(target=worker_main, args=(child_conn, config),
                                           name="paged-bench-worker")
            self.process.start()
        child_conn.close()
        self.conn = parent_conn
        status, message = self.receive(start_timeout_s)
        if status == "message" and message[0] == "ready":
            return
        if status == "message":
            reason = f"failed to start:\n{message[1]}"
        elif status == "timeout":
            reason = f"was not ready after {start_timeout_s:.0f} s"
        else:
            reason = f"{describe_exit(self.process.exitcode)} while starting; {self.crash_summary()}"
        self.kill()
        raise WorkerStartError(f"measuring worker {reason}")

    def receive(self, timeout_s: float) -> tuple[str, Any]:
        """("message", obj), ("timeout", None) or ("died", None)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            try:
                if self.conn.poll(min(remaining, 1.0)):
                    return "message", self.conn.recv()
            except (EOFError, OSError):
                self.process.join(5)
                return "died", None
            if not self.process.is_alive():
                try:
                    if self.conn.poll(0):
                        return "message", self.conn.recv()
                except (EOFError, OSError):
                    pass
                return "died", None

    def crash_summary(self) -> str:
        try:
            return summarise_dump(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def dump_and_kill(self) -> str:
        """Ask a stuck worker where it is (faulthandler on SIGUSR1), then kill it; return the frame."""
        if self.process.is_alive() and self.process.pid:
            with contextlib.suppress(OSError):
                os.kill(self.process.pid, signal.SIGUSR1)
            deadline = time.monotonic() + DUMP_WAIT_S
            while time.monotonic() < deadline and "File" not in self._log_text():
                time.sleep(0.05)
            time.sleep(0.05)
        summary = self.crash_summary()
        self.kill()
        return summary

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()

    def stop(self) -> None:
        """Ask the worker to finish, and kill it if it does not."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.process.join(10)
        self.kill()


class WorkerPool:
    """Hands cells to one worker at a time, replacing it whenever it dies, hangs or is poisoned."""

    def __init__(self, config: WorkerConfig, *, start_timeout_s: float = WORKER_START_TIMEOUT_S):
        self.config = config
        self.start_timeout_s = start_timeout_s
        self.context = multiprocessing.get_context("spawn")
        self.log_dir = Path(tempfile.mkdtemp(prefix="paged-bench-workers-"))
        self.worker: _Worker | None = None
        self.started = 0
        """Workers started so far (the first plus every replacement)."""

    def _start(self) -> _Worker:
        last_error: WorkerStartError | None = None
        for _ in range(2):  # one retry: a worker may die of something passing; twice means a broken setup
            self.started += 1
            log = self.log_dir / f"worker-{self.started}.log"
            config = dataclasses.replace(self.config, fault_log=str(log))
            try:
                return _Worker(config, self.context, self.start_timeout_s)
            except WorkerStartError as error:
                last_error = error
        raise RuntimeError(f"no measuring worker could be started: {last_error}")

    def measure(self, backend: str, case: Case, timeout_s: float) -> dict[str, Any]:
        """The row of one cell; never raises for anything the backend does."""
        if self.worker is not None and not self.worker.process.is_alive():
            self.worker.kill()  # it died between cells: not this cell's fault
            self.worker = None
        if self.worker is None:
            self.worker = self._start()
        worker = self.worker
        try:
            worker.conn.send((backend, case))
        except (OSError, BrokenPipeError):
            pass  # it died between cells; receive() reports it
        status, message = worker.receive(timeout_s)
        if status == "message" and message[0] == "row":
            _, row, exits = message
            if exits:
                worker.stop()
                self.worker = None
            return row
        if status == "timeout":
            where = worker.dump_and_kill()
            gate = GateResult("timeout", f"ran past the {timeout_s:g} s limit; worker stopped"
                              + (f"; stuck {where}" if where else ""))
        else:
            worker.kill()
            where = worker.crash_summary()
            gate = GateResult("error", f"worker process died during the cell: {describe_exit(worker.process.exitcode)}"
                              + (f"; {where}" if where else ""))
        self.worker = None
        return self._row(backend, case, gate)

    def _row(self, backend: str, case: Case, gate: GateResult) -> dict[str, Any]:
        import torch

        return make_row(backend=backend, case=case, gate=gate, ceilings=self.config.ceilings,
                        env_id=self.config.env_id, run_id=self.config.run_id,
                        device=str(torch.device(self.config.device)))

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker (kill it at once unless ``wait``: e.g. on Ctrl-C, mid-cell) and clean up."""
        if self.worker is not None:
            if wait:
                self.worker.stop()
            else:
                self.worker.kill()
            self.worker = None
        shutil.rmtree(self.log_dir, ignore_errors=True)


def order_by_case(cells: list[tuple[str, Case]]) -> list[tuple[str, Case]]:
    """Cells grouped by case (cases in order of first appearance, backends in the given order), without
    duplicates, so that a worker builds each batch and reference once."""
    by_case: dict[Case, list[str]] = {}
    for backend, case in cells:
        backends = by_case.setdefault(case, [])
        if backend not in backends:
            backends.append(backend)
    return [(backend, case) for case, backends in by_case.items() for backend in backends]


def _log_verdict(row: dict[str, Any], progress: bool) -> None:
    """One line per cell that did not pass; `skipped` backends were already named before the sweep."""
    if row["verdict"] == "skipped":
        return
    reason = " ".join(str(row.get("reason") or "").split())
    line = f"{row['verdict']:<11} {row['backend']} / {row['case']}: {reason[:300]}"
    if progress:
        tqdm.write(line)
    else:
        logger.info(line)


def run_cells(cells: list[tuple[str, Case]], out_dir: Path, *, device: str = "cuda",
              timer: TimerOptions = TimerOptions(), ceilings: dict | None = None, env_id: str = "",
              run_id: str = "", resume: bool = True, cell_timeout_s: float = 300.0, progress: bool = True,
              worker_env: dict[str, str] | None = None, retry_failed: bool = False) -> list[dict]:
    """Measure (backend, case) cells in isolated worker processes; return their rows.

    Each finished row is appended to ``out_dir/results.jsonl`` at once. With ``resume``, cells already
    recorded there (for the same ``env_id`` when one is given) are not measured again and their
    recorded rows are returned; ``retry_failed`` measures recorded `timeout`/`error` cells again.
    ``worker_env`` is added to the workers' environment (e.g. ``TRITON_INTERPRET=1`` on a CPU).
    Rows come back in the order of ``cells`` (duplicates dropped).
    """
    store = ResultStore(out_dir)
    ordered = order_by_case(cells)
    recorded = store.latest_rows(env_id=env_id or None) if resume else {}
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for backend, case in ordered:
        key = cell_id(backend, case)
        previous = recorded.get(key)
        if previous is not None and not (retry_failed and previous.get("verdict") in RETRYABLE_VERDICTS):
            rows[key] = previous
        else:
            todo.append((key, backend, case))
    config = WorkerConfig(device=device, timer=timer, ceilings=ceilings, env_id=env_id, run_id=run_id,
                          env=dict(worker_env or {}))
    pool = WorkerPool(config)
    bar = tqdm(total=len(ordered), initial=len(ordered) - len(todo), unit="cell", desc="cells",
               disable=not progress, dynamic_ncols=True)
    last = "-"
    try:
        for key, backend, case in todo:
            bar.set_postfix_str(f"{backend} / {case.name} | last: {last}")
            row = pool.measure(backend, case, cell_timeout_s)
            store.append(row)
            rows[key] = row
            last = row["verdict"]
            if last != "ok":
                _log_verdict(row, progress)
            bar.update(1)
        bar.set_postfix_str(f"last: {last}")
    except BaseException:  # Ctrl-C or a harness failure: every finished row is already on disk
        pool.close(wait=False)
        raise
    finally:
        pool.close()
        bar.close()
    return [rows[key] for key in dict.fromkeys(cell_id(backend, case) for backend, case in cells)]
