"""One measuring run, the same for the command line and for asv: which backends run here (and why
the others do not), on which devices, the run's record in ``runs.jsonl`` (provenance built from the
adapters' own declarations, the machine's ceilings per GPU, the sweep, the command line), and the
cells measured through the isolated runner. Callers only choose the cells and how to show progress.

Before the timed sweep, `RunSession.warm_up` may run the compile warm-up: the sweep's cells of the
backends that compile per layout into a disk cache (`adapters.base.Adapter.disk_compile_cache`), gate
only, on several workers per GPU at once (`gate_slots`), so the sweep's one timing worker per GPU loads
their kernels instead of compiling them one cell after another. The warm-up's rows go to
``<out>/warmup/`` (`WARMUP_DIR`): they are no results of the sweep (which gates every cell again), but
the only rows whose ``setup_s`` is a compile on a cold cache.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness.cases.shard import RECORD_KEY, Shard, shard_cases, shard_record
from harness.cases.sweep import Case, Cell
from harness.defaults import DEFAULT_CELL_TIMEOUT_S
from harness.measure.cell import TimerOptions
from harness.measure.runner import (Progress, ProgressCallback, RunConfig, Slot, WorkerPool, environ_with,
                                    gate_config, gate_slots, run_cells)
from records.schema import WARMUP_DIR
from records.store import ResultStore


def new_run_id() -> str:
    """Unique across hosts and runs (time, then random): folders from many machines merge without collisions."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def parse_gpus(text: str | None, device_count: int) -> list[int] | None:
    """``--gpus``: ``all``, a count (the first N GPUs) or a comma-separated list of indices -> GPU
    indices; None (no option) keeps one worker on the current GPU. Raises ValueError naming the value."""
    if text is None:
        return None
    text = text.strip().lower()
    if device_count < 1:
        raise ValueError(f"--gpus {text}: no CUDA GPU is visible here")
    if text == "all":
        return list(range(device_count))
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= device_count:
            raise ValueError(f"--gpus {text}: choose 1..{device_count} (the GPUs visible here), 'all', "
                             "or indices like 0,2")
        return list(range(count))
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--gpus {text!r}: expected 'all', a count, or GPU indices like 0,2,3") from None
    bad = [index for index in indices if not 0 <= index < device_count]
    if bad or len(set(indices)) != len(indices):
        raise ValueError(f"--gpus {text}: indices must be distinct, in 0..{device_count - 1}")
    return indices


def availability(device_type: str, worker_env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per registered adapter: whether it runs here (judged in the environment its worker
    will have), why not, its versions and what it declares (baseline, colour, Q layout)."""
    import torch

    from adapters.base import discover, versions_of

    rows = []
    with environ_with(worker_env or {}):
        for name, adapter in discover().items():
            try:
                ok, why = adapter.available(torch.device(device_type))
            except Exception as error:  # noqa: BLE001 - a broken probe is a reason, not a crash
                ok, why = False, f"available() raised {type(error).__name__}: {error}"
            rows.append({"backend": name, "available": "yes" if ok else "no", "reason": why,
                         "versions": versions_of(adapter) if ok else {}, **adapter.describe()})
    return rows


@dataclass
class RunSession:
    """A run into ``out_dir`` on ``device_type`` ("cuda" or "cpu"), on the GPUs ``gpus`` (None: one
    worker on the current GPU), with the backends ``backends`` (None: every backend that takes part in
    sweeps), measuring only the cells of ``shard`` (None: all; `harness.cases.shard`). `start` writes the
    run's record; `run` measures cells (resumable)."""

    out_dir: Path
    device_type: str
    backends: list[str] | None = None
    timer: TimerOptions = field(default_factory=TimerOptions)
    gpus: list[int] | None = None
    sweep_label: str = ""
    argv: list[str] = field(default_factory=list)
    cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S
    run_id: str = field(default_factory=new_run_id)
    env_id: str = ""
    shard: Shard | None = None
    slots: list[Slot] = field(default_factory=list)
    slot_failures: list[tuple[str, str]] = field(default_factory=list)
    _availability: list[dict[str, Any]] | None = None

    # --- what runs here ---------------------------------------------------------------------
    @property
    def worker_env(self) -> dict[str, str]:
        from adapters.base import worker_environment

        return worker_environment(self.backends, self.device_type)

    def availability(self) -> list[dict[str, Any]]:
        if self._availability is None:
            self._availability = availability(self.device_type, self.worker_env)
        return self._availability

    def selected_backends(self) -> list[str]:
        """The backends of this run: those asked for, or every registered one that takes part in sweeps."""
        known = {row["backend"]: row for row in self.availability()}
        if self.backends is not None:
            return list(self.backends)
        return [name for name, row in known.items() if row["in_sweep"]]

    def unknown_backends(self) -> list[str]:
        known = {row["backend"] for row in self.availability()}
        return [name for name in (self.backends or []) if name not in known]

    def cases_here(self, cases: list[Case]) -> list[Case]:
        """The cases this run measures: the run's shard of the selection (every case without a shard)."""
        return shard_cases(cases, self.shard)

    # --- devices ------------------------------------------------------------------------------
    def _prepare_slots(self, on_slot_failure: Callable[[str, str], None] | None) -> list[Slot]:
        """One slot per GPU (ceilings measured on each, once per GPU and then cached), or one for the
        CPU. A GPU on which the ceilings cannot even be measured is reported and left out."""
        if self.device_type != "cuda":
            return [Slot("cpu")]
        from harness.measure.ceilings import gpu_uuid, machine_ceilings

        if self.gpus is None:
            return [Slot("gpu", device="cuda", ceilings=machine_ceilings("cuda"), gpu_uuid=gpu_uuid("cuda"))]
        slots = []
        for index in self.gpus:
            try:
                slot = Slot(f"gpu{index}", device="cuda", env={"CUDA_VISIBLE_DEVICES": str(index)}, gpu_index=index,
                            gpu_uuid=gpu_uuid(f"cuda:{index}"), ceilings=machine_ceilings(f"cuda:{index}"))
            except Exception as error:  # noqa: BLE001 - a faulty GPU is reported; the others go on
                self._slot_failed(f"gpu{index}", f"{type(error).__name__}: {error}", on_slot_failure)
                continue
            slots.append(slot)
        if not slots:
            raise RuntimeError("no GPU of --gpus could be used: " + "; ".join(f"{s}: {w}" for s, w in self.slot_failures))
        return slots

    def _slot_failed(self, label: str, why: str, callback: Callable[[str, str], None] | None) -> None:
        self.slot_failures.append((label, why))
        if callback is not None:
            callback(label, why)

    # --- the run ----------------------------------------------------------------------------
    def start(self, *, extra: dict[str, Any] | None = None,
              on_slot_failure: Callable[[str, str], None] | None = None,
              cases: list[Case] | None = None) -> dict[str, Any]:
        """Measure or read the ceilings, collect provenance, and append the run's record to runs.jsonl
        (with the shard's record when the run is a shard of ``cases``, the whole selection)."""
        from adapters.base import declared_packages
        from harness.measure import provenance

        self.slots = self._prepare_slots(on_slot_failure)
        method = ("cuda graph replay" if self.timer.cuda_graph else "cuda events") if self.device_type == "cuda" \
            else "perf_counter"
        versions = {row["backend"]: row["versions"] for row in self.availability() if row["versions"]}
        record = provenance.collect(timer=method, l2_policy="flush" if self.timer.flush_l2 else "none",
                                    packages=declared_packages(), backend_versions=versions)
        self.env_id = record["env_id"]
        gpus = [{"index": s.gpu_index, "uuid": s.gpu_uuid, "ceilings": s.ceilings} for s in self.slots if s.ceilings]
        meta = {"run_id": self.run_id, "env_id": self.env_id, "provenance": record,
                "ceilings": self.slots[0].ceilings, "gpus": gpus, "sweep": self.sweep_label, "argv": self.argv,
                "started_at": record["date"], "availability": self.availability(), **(extra or {})}
        if self.shard is not None:
            if cases is None:
                raise RuntimeError("a sharded RunSession.start() needs the whole selection (cases=...)")
            meta[RECORD_KEY] = shard_record(self.shard, cases, self.selected_backends())
        ResultStore(self.out_dir).append_run(meta)
        return meta

    def gate_config(self, backends: list[str] | None = None) -> RunConfig:
        """The gate-only workers' configuration for this run (`harness.measure.runner.gate_config`) with the
        environment that ``backends`` need (None: every registered backend)."""
        return gate_config(self.device_type, backends, env_id=self.env_id, run_id=self.run_id,
                           cell_timeout_s=self.cell_timeout_s)

    def gate_slots(self, workers_per_gpu: int | None = None) -> list[Slot]:
        """The gate-only workers' slots on this run's devices (`harness.measure.runner.gate_slots`)."""
        return gate_slots(self.slots, workers_per_gpu)

    def warm_up_cells(self, cases: list[Case], *, resume: bool = True) -> list[Cell]:
        """The compile warm-up's cells: this run's shard of ``cases`` on each selected backend that runs here
        and compiles into a disk cache, less (with ``resume``) the cells the sweep has already measured and those
        an earlier, interrupted warm-up of this environment has already compiled."""
        from adapters.base import adapter_classes

        classes = adapter_classes()
        here = {row["backend"] for row in self.availability() if row["available"] == "yes"}
        names = [name for name in self.selected_backends()
                 if name in here and getattr(classes.get(name), "disk_compile_cache", False)]
        done: set[str] = set()
        if resume:
            for folder in (self.out_dir, self.out_dir / WARMUP_DIR):
                done.update(ResultStore(folder).latest_rows(env_id=self.env_id or None))
        cells = [Cell(name, case) for case in self.cases_here(cases) for name in names]
        return [cell for cell in cells if cell.id not in done]

    def warm_up(self, cells: list[Cell], *, pools: list[WorkerPool], resume: bool = True,
                run_meta: dict[str, Any] | None = None, on_progress: ProgressCallback | None = None,
                on_slot_failure: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
        """Run the compile warm-up's ``cells`` (`warm_up_cells`), gate only, on ``pools`` (gate-only workers, e.g.
        those the capability probe used: `harness.measure.runner.worker_pools` of `gate_config` and
        `gate_slots`) into ``<out>/warmup/``; return their rows. Small cases go out cell by cell
        (`harness.measure.runner.run_cells`'s ``spread``), large ones whole."""
        if not cells:
            return []
        folder = self.out_dir / WARMUP_DIR
        if run_meta is not None:
            ResultStore(folder).append_run(run_meta)
        return run_cells(cells, folder, pools[0].config, pools=pools, resume=resume, spread=True,
                         on_progress=on_progress,
                         on_slot_failure=lambda slot, why: self._slot_failed(slot.label, why, on_slot_failure))

    def run(self, cases: list[Case], *, resume: bool = True, retry_failed: bool = False,
            on_progress: ProgressCallback | None = None,
            on_slot_failure: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
        """Gate and time every (backend, case) cell of the run's shard of ``cases`` (the whole selection),
        cases in order, each case's backends together."""
        if not self.slots:
            raise RuntimeError("RunSession.start() must come before run()")
        names = self.selected_backends()
        cells = [Cell(name, case) for case in self.cases_here(cases) for name in names]
        carried = [] if retry_failed else self.warm_up_timeouts(cells, resume=resume)
        if carried:  # recorded as they are, counted first; the other cells' progress counts on from them
            store = ResultStore(self.out_dir)
            skip = {row["cell_id"] for row in carried}
            for done, row in enumerate(carried, 1):
                store.append(row)
                if on_progress is not None:
                    on_progress(Progress(row=row, done=done, total=len(cells), slot="compile warm-up"))
            cells = [cell for cell in cells if cell.id not in skip]
            if on_progress is not None:
                report, offset = on_progress, len(carried)

                def on_progress(progress: Progress) -> None:
                    report(replace(progress, done=progress.done + offset, total=progress.total + offset))
        config = RunConfig(timer=self.timer, env_id=self.env_id, run_id=self.run_id, worker_env=self.worker_env,
                           cell_timeout_s=self.cell_timeout_s)
        return carried + run_cells(cells, self.out_dir, config, slots=self.slots, resume=resume,
                                   retry_failed=retry_failed, on_progress=on_progress,
                                   on_slot_failure=lambda slot, why: self._slot_failed(slot.label, why,
                                                                                       on_slot_failure))

    def warm_up_timeouts(self, cells: list[Cell], *, resume: bool = True) -> list[dict[str, Any]]:
        """The sweep's rows for ``cells`` whose gate ran past the cell limit in this environment's compile
        warm-up and that the sweep has not recorded (with ``resume``): such a backend would hang the sweep
        for the same limit again, so the sweep records the warm-up's timeout, saying where it comes from,
        instead of running the cell (``--retry-failed`` runs it)."""
        warm = ResultStore(self.out_dir / WARMUP_DIR).latest_rows(env_id=self.env_id or None)
        swept = ResultStore(self.out_dir).latest_rows(env_id=self.env_id or None) if resume else {}
        rows = []
        for cell in cells:
            prior = warm.get(cell.id)
            if prior is None or prior.get("verdict") != "timeout" or cell.id in swept:
                continue
            rows.append(dict(prior, run_id=self.run_id,
                             reason=f"in the compile warm-up: {prior.get('reason', 'timed out')}; not run again in "
                                    "the sweep (--retry-failed runs it)"))
        return rows
