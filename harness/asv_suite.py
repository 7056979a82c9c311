"""What the asv benchmark classes (benchmarks/bench_*.py) share: their parameters (from harness.sweep, the one sweep
definition), and one gated, GPU-timed measurement of a whole workload per asv `setup_cache`.

asv starts a fresh process for every parameter combination. Those processes only look values up in
the cache, so this module must import without torch: the backend names come from a small file
that discovery writes once (keyed by the adapter sources), and the measuring imports are lazy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from harness.sweep import SWEEP_AXES, Axes, Case, case_for, cases_from_axes

ROOT = Path(__file__).resolve().parent.parent
SWEEP_ENV = "PAGED_BENCH_SWEEP"
CELLS_ENV = "PAGED_BENCH_ASV_CELLS"
"""Where each asv run keeps its gated rows (verdicts, reasons, timings) for the report."""


def sweep_name() -> str:
    name = os.environ.get(SWEEP_ENV, "default")
    if name not in SWEEP_AXES:
        raise ValueError(f"${SWEEP_ENV}={name!r}: choose one of {', '.join(SWEEP_AXES)}")
    return name


def _adapter_fingerprint() -> str:
    digest = hashlib.sha1(os.environ.get("PAGED_BENCH_EXTRA_ADAPTERS", "").encode())
    for path in sorted((ROOT / "adapters").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def backend_names() -> list[str]:
    """Every registered backend that takes part in sweeps (unavailable ones too: asv shows them
    as skipped with their reason rather than leaving them out)."""
    cache = ROOT / ".asv" / f"backends-{_adapter_fingerprint()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from adapters.base import discover

    names = [name for name, adapter in discover().items() if adapter.in_sweep]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(names))
    return names


def workload_axes(workload: str) -> Axes:
    return SWEEP_AXES[sweep_name()][workload]


def asv_params(workload: str) -> tuple[list[list], list[str]]:
    """asv ``params`` and ``param_names`` of one workload: backend x the sweep's axes."""
    axes = workload_axes(workload)
    if workload == "mixed":
        return [backend_names(), list(axes.mixes), list(axes.page_sizes)], ["backend", "mix", "page_size"]
    return ([backend_names(), list(axes.batch_sizes), list(axes.q_lens), list(axes.contexts), list(axes.page_sizes)],
            ["backend", "batch_size", "q_len", "context", "page_size"])


def workload_case(workload: str, *axis_values) -> Case:
    return case_for(workload, workload_axes(workload), *axis_values)


def measure_workload(workload: str) -> dict[str, dict]:
    """Gate and time every (backend, case) of a workload through the suite's isolated runner;
    return plain rows keyed by ``backend|case`` (asv pickles this: no tensors)."""
    import torch

    from harness import provenance
    from harness.cell import TimerOptions
    from harness.runner import run_cells
    from records.store import ResultStore

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ceilings = None
    if device == "cuda":
        from harness.ceilings import machine_ceilings

        ceilings = machine_ceilings(device)
    cases = cases_from_axes(workload, workload_axes(workload))
    cells = [(backend, case) for case in cases for backend in backend_names()]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    commit = os.environ.get("ASV_COMMIT", provenance.project_commit())[:12]
    out_dir = Path(os.environ.get(CELLS_ENV, ROOT / ".asv" / "cells")) / f"{commit}-{sweep_name()}-{stamp}"
    record = provenance.collect(timer="cuda events" if device == "cuda" else "perf_counter", l2_policy="flush")
    run_id = f"asv-{workload}-{stamp}"
    ResultStore(out_dir).append_run({"run_id": run_id, "env_id": record["env_id"], "provenance": record,
                                     "ceilings": ceilings, "sweep": f"asv:{sweep_name()}:{workload}",
                                     "argv": ["asv"], "started_at": record["date"]})
    rows = run_cells(cells, out_dir, device=device, timer=TimerOptions(), ceilings=ceilings,
                     env_id=record["env_id"], run_id=run_id, resume=False, progress=False)
    keep = ("verdict", "reason", "median_us", "iqr_pct", "tflops", "tbps")
    return {f"{row['backend']}|{row['case']}": {key: row[key] for key in keep} for row in rows}


class WorkloadBenchmark:
    """Base of the asv classes: `setup` skips cells whose verdict is not ok (asv shows n/a, the
    reason is in the cells folder and asv's log); the track methods report GPU-side figures."""

    workload: str = ""

    def setup(self, cache: dict[str, dict], backend: str, *axis_values) -> None:
        case = workload_case(self.workload, *axis_values)
        row = cache.get(f"{backend}|{case.name}")
        if row is None:
            raise NotImplementedError(f"{case.name} is not in the '{sweep_name()}' sweep")
        if row["verdict"] != "ok":
            raise NotImplementedError(f"{backend} on {case.name}: {row['verdict']}: {row['reason']}")
        self.row = row

    def track_time_us(self, cache, *params) -> float:
        return self.row["median_us"]

    track_time_us.unit = "us"

    def track_tflops(self, cache, *params) -> float:
        return self.row["tflops"]

    track_tflops.unit = "TFLOP/s"

    def track_tbps(self, cache, *params) -> float:
        return self.row["tbps"]

    track_tbps.unit = "TB/s"
