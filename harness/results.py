"""The tidy results table: one row per (backend, case) cell with a fixed column list, built here and
nowhere else, so that the CLI, asv and the report agree on what a result is."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

from adapters.batch import BatchSpec
from harness import metrics
from harness.gate import GateResult
from harness.sweep import Case
from harness.timer import Timing

COLUMNS: list[str] = [
    # identity
    "cell_id", "run_id", "backend", "case", "workload", "grammar", "batch_size", "q_len", "context", "page_size",
    "num_q_heads", "num_kv_heads", "head_dim", "dtype", "causal", "seed", "total_q", "total_kv",
    # gate
    "verdict", "reason", "rel_l2", "max_abs",
    # timing (microseconds) and how it was taken
    "median_us", "q1_us", "q3_us", "min_us", "max_us", "iqr_pct", "reps", "method", "l2_policy", "host_us",
    # derived figures
    "flops", "bytes", "tflops", "tbps", "pct_matmul_ceiling", "pct_copy_ceiling",
    # what the backend reported, and where
    "setup_s", "entry_point", "config", "backend_versions", "env_id", "device", "finished_at",
]

GLOSSARY: dict[str, str] = {
    "median_us": "median device time of one launch, microseconds (CUDA events, L2 flushed between launches)",
    "q1_us": "first quartile of the launch times", "q3_us": "third quartile of the launch times",
    "iqr_pct": "inter-quartile range as a percentage of the median: the cell's run-to-run noise",
    "host_us": ("host time to enqueue one timed repetition (L2 flush, two events, the backend's launch), "
                "microseconds; where it nears the GPU time the timer spins the GPU ahead so it stays out of median_us"),
    "tflops": "matrix FLOPs (4*Hq*D*pairs, bottom-right causal pairs) per second, in 10^12",
    "tbps": "bytes at least moved (Q and O once, each sequence's K and V once) per second, in 10^12",
    "pct_matmul_ceiling": "TFLOP/s as a share of this machine's measured bf16 matmul rate",
    "pct_copy_ceiling": "TB/s as a share of this machine's measured device-copy bandwidth",
    "setup_s": "time spent outside the timing: compilation, autotuning, graph building",
    "q_len": "mean new (query) tokens per sequence", "context": "mean cached tokens before them per sequence",
    "rel_l2": "||out - ref|| / ||ref|| against the fp32 reference",
}


def cell_id(backend: str, case: Case) -> str:
    """Stable key of a cell: the backend and every field of the case (resume and comparisons use it)."""
    payload = json.dumps({"backend": backend, **case.as_dict()}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def make_row(*, backend: str, case: Case, gate: GateResult, timing: Timing | None = None,
             ceilings: dict[str, Any] | None = None, backend_versions: dict[str, str] | None = None,
             env_id: str = "", run_id: str = "", device: str = "") -> dict[str, Any]:
    """One result row with every column present (missing values are None)."""
    spec: BatchSpec = case.spec()
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        cell_id=cell_id(backend, case), run_id=run_id, backend=backend, case=case.name, grammar=case.grammar,
        **case.axes(), num_q_heads=spec.num_q_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        dtype=spec.dtype, causal=spec.causal, seed=spec.seed, total_q=spec.total_q, total_kv=spec.total_kv,
        verdict=gate.verdict, reason=gate.reason, rel_l2=gate.rel_l2, max_abs=gate.max_abs,
        flops=metrics.spec_flops(spec), bytes=metrics.spec_bytes(spec),
        backend_versions=json.dumps(backend_versions or {}, sort_keys=True), env_id=env_id, device=device,
        finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    notes = gate.notes
    row["setup_s"] = notes.get("setup_s")
    row["entry_point"] = notes.get("entry_point")
    row["config"] = json.dumps(notes["config"], sort_keys=True) if "config" in notes else None
    if timing is not None:
        row.update(timing.as_row())
        row.update(metrics.throughput(spec, timing.median_us * 1e-6))
        if ceilings:
            row["pct_matmul_ceiling"] = 100 * row["tflops"] / float(ceilings["matmul_bf16_tflops"])
            row["pct_copy_ceiling"] = 100 * row["tbps"] / float(ceilings["copy_tbps"])
    return row
