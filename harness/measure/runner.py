"""Measuring many cells so that one failing backend costs only its own cell, on one device or many.

Cells run in worker processes (start method ``spawn``, as CUDA requires), one per device slot (a
GPU pinned with ``CUDA_VISIBLE_DEVICES``, or the CPU), each measuring one cell at a time with
`CellMeasurer`, so torch/CUDA start-up and each case's batch and reference are paid once for many
cells. A cell is a `harness.cases.sweep.Cell` (a backend on a case) from the session to the row: the
runner's list, its resume rule, the case groups and the message to a worker all carry `Cell`s. The
parent hands out whole cases (all their backends) from one queue, one thread per slot, sends each cell
and waits for its row with a time limit:

- the backend raises            -> `error` (the worker's gate turns the exception into the verdict);
- the worker dies (abort, segfault, killed) -> `error` with the signal or exit status and the frame
  it died in; a fresh worker takes the next cell;
- the cell runs past its limit  -> `timeout` with the frame it was stuck in; the worker is killed;
- out of memory                 -> `oom` (checked before allocating, and caught when raised later);
- a CUDA error that leaves the context unusable (illegal memory access, device-side assert, or a
  failing synchronize after the cell) -> `error`, and the worker exits so the next cell gets a
  clean context;
- a slot whose worker cannot start twice in a row (a faulty GPU) is reported and left out; its
  cells go to the other slots (the run stops only when no slot is left).

Each finished row is appended to the `ResultStore` at once, so an interrupted sweep loses nothing it
finished and resumes where it stopped (`cells_to_measure` is the one resume rule). An interruption (Ctrl-C,
SIGTERM) is not a result: the slots are marked stopping before their workers are killed, so the cell in
flight leaves no row and the resumed run measures it.

Concurrent slots share nothing that a timing depends on: each worker is its own process with its own
CUDA context on its own GPU, its own L2-flush buffer on that GPU, and the host threads it needs; the
parent's threads only wait on pipes.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.cases.sweep import Case, Cell
from adapters.base import worker_environment
from harness.defaults import DEFAULT_CELL_TIMEOUT_S, gate_workers
from harness.measure.cell import TimerOptions, cell_bytes
from harness.measure.gate import GateResult, failure_verdict
from harness.measure.results import make_row
from records.schema import RETRYABLE_VERDICTS
from records.store import ResultStore

logger = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 180.0
"""Time a fresh worker gets to import torch, create the CUDA context and say it is ready (not counted
against any cell)."""
DUMP_WAIT_S = 2.0
"""After a timeout: how long the stuck worker gets to write where it is stuck before it is killed."""
STOP_GRACE_S = 2.0
"""A worker being stopped (Ctrl-C, a cell past its limit, a poisoned context) gets SIGTERM first and this long
to release what it holds before SIGKILL: named semaphores (libraries' compile pools create them) that a
killed process leaves registered, which the resource tracker reports as leaked when the run exits."""
SPREAD_MAX_BYTES = 1 << 30
"""With ``spread``: a case whose cells need less than this (`harness.measure.cell.cell_bytes`) is handed out
cell by cell, so its backends run in parallel on several workers; each of those workers builds the small
batch and reference again (milliseconds). A larger case stays whole on one worker, which keeps one large
batch at a time."""

_CONTEXT_POISONED = re.compile(
    r"CUDA error|CUDA_ERROR_|illegal memory access|device-side assert|unspecified launch failure|"
    r"misaligned address|illegal instruction|an illegal address", re.IGNORECASE)
"""Exception text after which a CUDA context cannot be trusted (errors are sticky): the worker exits."""


@dataclass(frozen=True)
class Slot:
    """One place cells run: ``device`` as the worker sees it ("cuda" or "cpu"), the environment
    that pins it (``CUDA_VISIBLE_DEVICES``), which physical GPU that is, and that GPU's measured
    ceilings (each row reports its share of its own GPU's)."""

    label: str
    device: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    ceilings: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunConfig:
    """What every worker of one run needs to measure cells as the parent would (picklable)."""

    timer: TimerOptions = field(default_factory=TimerOptions)
    env_id: str = ""
    run_id: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Added to every worker's environment (e.g. what the selected backends declare they need)."""
    cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S
    gate_only: bool = False
    """Gate every cell and time none (the capability probe's cells)."""


@dataclass(frozen=True)
class _WorkerSetup:
    """A worker's own configuration: the run's, its slot's, and where it writes stack dumps."""

    run: RunConfig
    slot: Slot
    fault_log: str = ""


def shared_slots(slots: list[Slot], workers: int) -> list[Slot]:
    """``workers`` slots in place of each GPU slot (labels ``gpu0#1``, ``gpu0#2``, ...), each with its own
    worker on the same GPU: only for gate-only cells (the capability probe), which are never timed, so no
    timing shares a GPU. CPU slots and ``workers`` <= 1 are returned as they are."""
    if workers <= 1:
        return list(slots)
    out: list[Slot] = []
    for slot in slots:
        if slot.device != "cuda":
            out.append(slot)
            continue
        out.extend(replace(slot, label=f"{slot.label}#{index}") for index in range(1, workers + 1))
    return out


def gate_slots(slots: list[Slot], workers_per_gpu: int | None = None) -> list[Slot]:
    """The gate-only workers' slots (the capability probe, the compile warm-up): `shared_slots` with
    ``workers_per_gpu`` on each GPU, or by default `harness.defaults.gate_workers` for this host's cores."""
    if workers_per_gpu is None:
        workers_per_gpu = gate_workers(sum(1 for slot in slots if slot.device == "cuda"), os.cpu_count())
    return shared_slots(slots, workers_per_gpu)


def gate_config(device_type: str, backends: list[str] | None = None, *, env_id: str = "", run_id: str = "",
                cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S) -> RunConfig:
    """The gate-only workers' configuration: cells gated, never timed, in the environment ``backends`` need
    (None: every registered one) with their `adapters.base.Adapter.shared_gpu_env`, since these workers
    share their GPU."""
    return RunConfig(env_id=env_id, run_id=run_id, gate_only=True, cell_timeout_s=cell_timeout_s,
                     worker_env=worker_environment(backends, device_type, shared_gpu=True))


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


def _leave(code: int = 0) -> None:
    """Exit without interpreter teardown: after a poisoned CUDA context teardown would run CUDA
    cleanup on it, and libraries whose objects outlive teardown print leak reports. Named semaphores
    that libraries created here are released first (multiprocessing's own exit hooks of priority 0,
    which join no process), or the resource tracker reports them as leaked."""
    with contextlib.suppress(Exception):
        multiprocessing.util._run_finalizers(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _leave_on_sigterm(signum: int, frame) -> None:
    """SIGTERM from the parent (`_Worker.kill`): leave at once, releasing what multiprocessing registered
    (`_leave`); the parent kills the process anyway after `STOP_GRACE_S`. Further SIGTERMs are ignored
    first: a stopped run sends two (`WorkerPool.interrupt`, then the slot thread's `_Worker.kill`), and the
    second, run as a nested handler, would exit midway through the first one's release (the finalizer
    already unregistered, its semaphore not yet released: reported leaked)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _leave(128 + signum)
    finally:
        os._exit(128 + signum)


def _measure_one(measurer, cell: Cell) -> tuple[dict[str, Any], bool]:
    """One cell's row, and whether this worker must exit afterwards (its CUDA context is poisoned)."""
    import torch

    try:
        row = measurer.measure(cell)
    except Exception as error:  # noqa: BLE001 - e.g. an unknown backend or a raising available()
        row = measurer.row_for(cell, failure_verdict(error, "measure"))
    poisoned = context_poisoned(row)
    if measurer.device.type == "cuda":
        try:
            torch.cuda.synchronize(measurer.device)
        except Exception as error:  # noqa: BLE001 - the cell left an asynchronous error behind
            poisoned = True
            if row["verdict"] != "error":
                row = measurer.row_for(cell, GateResult(
                    "error", f"CUDA context failed after the cell: {type(error).__name__}: {error}"))
        if row["verdict"] == "oom" and not poisoned:
            measurer.release()
    return row, poisoned


def worker_main(conn, setup: _WorkerSetup) -> None:
    """Entry point of a worker: report ready (with its GPU's identity and ceilings), then answer each
    `Cell` with ("row", row, exits) until told to stop (None) or the parent goes away."""
    os.environ.update(setup.run.worker_env)
    os.environ.update(setup.slot.env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    signal.signal(signal.SIGTERM, _leave_on_sigterm)  # the parent stopping this worker: release, then exit
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked from the spawn until now (_sigint_blocked)
    _exit_with_parent(os.getppid())
    fault_log = open(setup.fault_log, "w") if setup.fault_log else None  # noqa: SIM115 - lives as long as we do
    if fault_log is not None:
        faulthandler.enable(file=fault_log, all_threads=False)
        faulthandler.register(signal.SIGUSR1, file=fault_log, all_threads=False)
    try:
        import torch

        from harness.measure.cell import CellMeasurer

        slot = setup.slot
        device = torch.device(slot.device)
        if device.type == "cuda":
            torch.zeros(1, device=device)  # create the context now rather than inside the first cell
        measurer = CellMeasurer(device=device, timer=setup.run.timer, ceilings=slot.ceilings, env_id=setup.run.env_id,
                                run_id=setup.run.run_id, gpu_index=slot.gpu_index, gpu_uuid=slot.gpu_uuid,
                                gate_only=setup.run.gate_only)
        measurer.load_adapters()  # their import time is no cell's
    except BaseException:  # noqa: BLE001 - tell the parent why this worker cannot measure anything
        conn.send(("init_error", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            _leave(0)
        if message is None:
            measurer.close()
            _leave(0)
        row, must_exit = _measure_one(measurer, message)
        conn.send(("row", row, must_exit))
        if must_exit:
            _leave(0)


# ---------------------------------------------------------------------------------------------------
# The parent's side


class WorkerStartError(RuntimeError):
    """A worker did not become ready (it crashed, timed out or failed to import the harness)."""


class RunInterrupted(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): the cell in flight has no result and is not recorded."""


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this (spawning) thread: a spawned child inherits the mask, so Ctrl-C during its
    start-up cannot kill it with a traceback before `worker_main` ignores SIGINT (it unblocks it then).
    The main thread still receives Ctrl-C: the kernel delivers it to a thread that does not block it."""
    if threading.current_thread() is threading.main_thread():
        yield  # the main thread must keep receiving Ctrl-C
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def environ_with(extra: dict[str, str]):
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


_SPAWN_LOCK = threading.Lock()
"""Workers of several slots are spawned from several threads; the environment is process-wide."""


@contextlib.contextmanager
def _main_module_hidden():
    """Hide the parent's ``__main__`` while a worker is spawned: spawn's preparation data would make
    the child run the parent's main script again (asv's runner script, a user's script), whose imports
    the child may not resolve. Workers need only `worker_main`, which lives in this module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


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

    def __init__(self, setup: _WorkerSetup, context, start_timeout_s: float, stopping: threading.Event):
        self.log_path = Path(setup.fault_log)
        self.stopping = stopping
        parent_conn, child_conn = context.Pipe()
        with _SPAWN_LOCK, environ_with({**setup.run.worker_env, **setup.slot.env}), _main_module_hidden(), \
                _sigint_blocked():
            self.process = context.Process(target=worker_main, args=(child_conn, setup), name="paged-bench-worker")
            self.process.start()
        child_conn.close()
        self.conn = parent_conn
        status, message = self.receive(start_timeout_s)
        if status == "message" and message[0] == "ready":
            return
        if status == "stopped" or self.stopping.is_set():
            self.kill()
            raise RunInterrupted("the run stopped while a worker was starting")
        if status == "message":
            reason = f"failed to start:\n{message[1]}"
        elif status == "timeout":
            reason = f"was not ready after {start_timeout_s:.0f} s"
        else:
            reason = f"{describe_exit(self.process.exitcode)} while starting; {self.crash_summary()}"
        self.kill()
        raise WorkerStartError(f"measuring worker on {setup.slot.label} {reason}")

    def receive(self, timeout_s: float) -> tuple[str, Any]:
        """("message", obj), ("timeout", None), ("died", None) or ("stopped", None): the run is stopping."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stopping.is_set():
                return "stopped", None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            try:
                if self.conn.poll(min(remaining, 0.2)):
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
        return summarise_dump(self._log_text())

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
        """Stop the process (SIGTERM, then SIGKILL after `STOP_GRACE_S`) and close the pipe; safe to repeat,
        and from the thread that is stopping a run."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
            if self.process.is_alive():
                self.process.kill()
        self.process.join(10)
        with contextlib.suppress(OSError):
            self.conn.close()

    def stop(self) -> None:
        """Ask the worker to finish, and kill it if it does not."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.process.join(10)
        self.kill()


class WorkerPool:
    """One slot's worker: hands it cells one at a time, replacing it whenever it dies, hangs or is poisoned."""

    def __init__(self, config: RunConfig, slot: Slot, *, start_timeout_s: float = WORKER_START_TIMEOUT_S):
        self.config = config
        self.slot = slot
        self.start_timeout_s = start_timeout_s
        self.context = multiprocessing.get_context("spawn")
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"paged-bench-{slot.label}-"))
        self.worker: _Worker | None = None
        self.stopping = threading.Event()
        """Set by `interrupt` (from the thread stopping the run): nothing measured from then on is a result."""
        self.started = 0
        """Workers started so far (the first plus every replacement)."""

    def _start(self) -> _Worker:
        last_error: WorkerStartError | None = None
        for _ in range(2):  # one retry: a worker may die of something passing; twice means a broken setup
            self.started += 1
            setup = _WorkerSetup(self.config, self.slot, str(self.log_dir / f"worker-{self.started}.log"))
            try:
                return _Worker(setup, self.context, self.start_timeout_s, self.stopping)
            except WorkerStartError as error:
                if self.stopping.is_set():
                    raise RunInterrupted("the run stopped while a worker was starting") from None
                last_error = error
        raise WorkerStartError(f"no measuring worker could be started on {self.slot.label}: {last_error}")

    def measure(self, cell: Cell) -> dict[str, Any]:
        """The row of one cell; never raises for anything the backend does (`WorkerStartError` when
        this slot cannot run a worker at all, `RunInterrupted` when the run stops before the cell ends)."""
        if self.stopping.is_set():
            raise RunInterrupted("the run is stopping")
        if self.worker is not None and not self.worker.process.is_alive():
            self.worker.kill()  # it died between cells: not this cell's fault
            self.worker = None
        if self.worker is None:
            self.worker = self._start()
        worker = self.worker
        try:
            worker.conn.send(cell)
        except (OSError, BrokenPipeError):
            pass  # it died between cells; receive() reports it
        timeout_s = self.config.cell_timeout_s
        status, message = worker.receive(timeout_s)
        if status in ("stopped", "died") and self.stopping.is_set():  # killed by the shutdown, not by the cell
            worker.kill()
            self.worker = None
            raise RunInterrupted(f"the run stopped during {cell.backend} / {cell.case.name}")
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
        return self._row(cell, gate)

    def _row(self, cell: Cell, gate: GateResult) -> dict[str, Any]:
        slot = self.slot
        return make_row(cell=cell, gate=gate, ceilings=slot.ceilings, env_id=self.config.env_id,
                        run_id=self.config.run_id, device=slot.device, gpu_index=slot.gpu_index, gpu_uuid=slot.gpu_uuid,
                        timer_args=self.config.timer.args())

    def interrupt(self) -> None:
        """Stop at once, from another thread (the run is being stopped): mark the pool stopping, then ask the
        live worker's process to leave (SIGTERM: it releases what it holds and exits; the slot's thread or
        `close` kills it if it has not left after `STOP_GRACE_S`). Only the process: the pipe belongs to
        the slot's thread."""
        self.stopping.set()
        worker = self.worker
        if worker is not None:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                worker.process.terminate()

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker (at once unless ``wait``: e.g. on Ctrl-C, mid-cell; `_Worker.kill`) and clean up."""
        if self.worker is not None:
            if wait:
                self.worker.stop()
            else:
                self.worker.kill()
            self.worker = None
        shutil.rmtree(self.log_dir, ignore_errors=True)


@contextlib.contextmanager
def worker_pools(config: RunConfig, slots: list[Slot]) -> Iterator[list[WorkerPool]]:
    """One `WorkerPool` per slot, kept across several `run_cells` calls (``pools=``), so that workers start
    once for work that comes in rounds (the capability probe's two, then the compile warm-up); every worker
    is stopped on leaving (at once, without waiting for it to finish, when an exception such as Ctrl-C leaves)."""
    pools = [WorkerPool(config, slot) for slot in slots]
    failed = True
    try:
        yield pools
        failed = False
    finally:
        with _sigint_ignored():
            for pool in pools:
                pool.close(wait=not failed)


def order_by_case(cells: list[Cell]) -> list[Cell]:
    """Cells grouped by case (cases in order of first appearance, backends in the given order), without
    duplicates, so that a worker builds each batch and reference once."""
    by_case: dict[Case, list[str]] = {}
    for cell in cells:
        backends = by_case.setdefault(cell.case, [])
        if cell.backend not in backends:
            backends.append(cell.backend)
    return [Cell(backend, case) for case, backends in by_case.items() for backend in backends]


def cells_to_measure(cells: list[Cell], recorded: dict[str, dict[str, Any]], *,
                     retry_failed: bool = False) -> tuple[list[Cell], dict[str, dict[str, Any]]]:
    """The resume rule, in one place: a cell recorded with any verdict is done (a backend that hangs
    must not hang every resumed run), except `timeout`/`error` ones with ``retry_failed``.
    Returns the cells still to measure, in case order, and the reused rows (by cell id)."""
    todo, reused = [], {}
    for cell in order_by_case(cells):
        key = cell.id
        previous = recorded.get(key)
        if previous is not None and not (retry_failed and previous.get("verdict") in RETRYABLE_VERDICTS):
            reused[key] = previous
        else:
            todo.append(cell)
    return todo, reused


@dataclass(frozen=True)
class Progress:
    """What a progress callback is told after each measured cell."""

    row: dict[str, Any]
    done: int
    total: int
    slot: str


ProgressCallback = Callable[[Progress], None]


class SlotFailure(RuntimeError):
    """Every slot failed to start a worker: no cell can be measured."""


@contextlib.contextmanager
def _sigterm_exits():
    """While a run is going: SIGTERM (asv's timeout, ``kill``) raises SystemExit(143) in the main thread,
    so the run's clean-up kills its workers at once instead of leaving them to notice the parent is gone.
    Only where the default action was in force (a caller's own handler is kept)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cells(cells: list[Cell], out_dir: Path | str, config: RunConfig = RunConfig(), *,
              slots: list[Slot] | None = None, pools: list[WorkerPool] | None = None, resume: bool = True,
              retry_failed: bool = False, spread: bool = False, first: Callable[[Cell], bool] | None = None,
              on_progress: ProgressCallback | None = None,
              on_slot_failure: Callable[[Slot, str], None] | None = None) -> list[dict[str, Any]]:
    """Measure cells (`Cell`: a backend on a case) in isolated worker processes, one per slot; return their rows.

    Each finished row is appended to ``out_dir/results.jsonl`` at once. With ``resume``, cells already
    recorded there for the same ``config.env_id`` (any environment when it is empty) are not measured
    again and their recorded rows are returned (`cells_to_measure`). Whole cases go to one slot at a
    time, in order; with ``spread`` (gate-only cells, e.g. the capability probe's), a small case's cells
    (`SPREAD_MAX_BYTES`) go out one by one, after the large cases and with the cells ``first`` picks
    (e.g. the backends that compile per layout: the longest cells) ahead of the others, so the last
    cells to finish are short ones. ``pools`` (`worker_pools`, made from ``config``) replaces ``slots``:
    their workers are kept running after the call. Rows come back in the order of ``cells`` (duplicates
    dropped).
    """
    if pools is not None and any(pool.config != config for pool in pools):
        raise ValueError("run_cells: the pools were made for another RunConfig")
    owned = pools is None
    if owned:
        pools = [WorkerPool(config, slot) for slot in slots or [Slot("cpu")]]
    store = ResultStore(out_dir)
    recorded = store.latest_rows(env_id=config.env_id or None) if resume else {}
    todo, rows = cells_to_measure(cells, recorded, retry_failed=retry_failed)
    total = len(todo) + len(rows)
    groups = _case_groups(todo, spread=spread, first=first)
    work: queue.Queue = queue.Queue()
    for group in groups:
        work.put(group)
    lock = threading.Lock()
    state = {"done": len(rows), "alive": len(pools), "unfinished": len(groups)}
    stop = threading.Event()
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def serve(pool: WorkerPool) -> None:
        """Take whole cases until none is left unfinished (a failing slot may hand one back)."""
        while not stop.is_set():
            with lock:
                if state["unfinished"] == 0:
                    return
            try:
                group = work.get(timeout=0.2)
            except queue.Empty:
                continue
            for index, cell in enumerate(group):
                if stop.is_set():
                    return
                try:
                    row = pool.measure(cell)
                except RunInterrupted:  # the cell in flight has no result: a resumed run measures it
                    return
                except WorkerStartError as error:  # this slot is broken: its unfinished cells go back
                    work.put(group[index:])
                    with lock:
                        state["alive"] -= 1
                        last = state["alive"] == 0
                    if on_slot_failure is not None:
                        on_slot_failure(pool.slot, str(error))
                    if last:
                        errors.append(SlotFailure(str(error)))
                        stop.set()
                    return
                if stop.is_set():  # interrupted: a cell whose worker the shutdown killed is not a result
                    return
                store.append(row)
                with lock:
                    rows[cell.id] = row
                    state["done"] += 1
                    if on_progress is not None:
                        on_progress(Progress(row=row, done=state["done"], total=total, slot=pool.slot.label))
            with lock:
                state["unfinished"] -= 1

    interrupted = True
    try:
        with _sigterm_exits():
            for pool in pools:
                threads.append(threading.Thread(target=serve, args=(pool,), name=f"slot-{pool.slot.label}",
                                                daemon=True))
                threads[-1].start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        interrupted = False
    finally:  # Ctrl-C, SIGTERM or a harness failure: every finished row is already on disk
        _shut_down(pools, threads, stop, at_once=interrupted, close=owned or interrupted)
    if errors:
        raise errors[0]
    missing = [cell.id for cell in todo if cell.id not in rows]
    if missing:
        raise SlotFailure(f"{len(missing)} cells were not measured: every slot stopped")
    return [rows[key] for key in dict.fromkeys(cell.id for cell in cells)]


SHUTDOWN_WAIT_S = 30.0
"""On an interrupted run: how long the slots' threads get to notice (their workers are killed first)."""


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C ignored while a run shuts down (a second Ctrl-C must not break the clean-up half-way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _shut_down(pools: list[WorkerPool], threads: list[threading.Thread], stop: threading.Event, *,
               at_once: bool, close: bool = True) -> None:
    """End a run: after an interruption, stop the slots (no more rows), kill their workers and wait for
    their threads, so nothing is written after this returns and no worker is left; else stop the
    workers politely (or, unless ``close``, leave them running for the pools' next run)."""
    with _sigint_ignored():
        if at_once:
            stop.set()
            for pool in pools:
                pool.interrupt()
            deadline = time.monotonic() + SHUTDOWN_WAIT_S
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        if close:
            for pool in pools:
                pool.close(wait=not at_once)


def _case_groups(todo: list[Cell], *, spread: bool = False,
                 first: Callable[[Cell], bool] | None = None) -> list[list[Cell]]:
    """Consecutive cells of one case, kept together so one worker builds its batch and reference once; with
    ``spread``, the large cases' groups first, then the small cases' cells one by one, those ``first``
    picks ahead of the rest (`run_cells`)."""
    groups: list[list[Cell]] = []
    for cell in todo:
        if groups and groups[-1][0].case == cell.case:
            groups[-1].append(cell)
        else:
            groups.append([cell])
    if not spread:
        return groups
    whole: list[list[Cell]] = []
    single: list[list[Cell]] = []
    for group in groups:
        if cell_bytes(group[0].case) >= SPREAD_MAX_BYTES:
            whole.append(group)
        else:
            single.extend([cell] for cell in group)
    if first is not None:
        single.sort(key=lambda group: not first(group[0]))  # stable: case order within each part
    return whole + single
