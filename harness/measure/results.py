"""The tidy results table: one row per (backend, case) cell with a fixed column list, built here and
nowhere else, so that the CLI, asv and the report agree on what a result is."""

from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING, Any

from harness.cases.sweep import Cell, cell_id  # noqa: F401 - cell_id re-exported: results and resume key on it
from harness.measure import metrics
from records.schema import COLUMNS

if TYPE_CHECKING:
    from adapters.batch import BatchSpec
    from harness.measure.gate import GateResult
    from harness.measure.timer import Timing


def declared_binding(backend: str) -> str:
    """The binding a registered backend row declares (`adapters.base.Adapter.binding`), "" for others."""
    from adapters.base import adapter_classes

    cls = adapter_classes().get(backend)
    return getattr(cls, "binding", "") if cls is not None else ""


def make_row(*, cell: Cell, gate: GateResult, timing: Timing | None = None,
             ceilings: dict[str, Any] | None = None, backend_versions: dict[str, str] | None = None,
             env_id: str = "", run_id: str = "", device: str = "", gpu_index: int | None = None,
             gpu_uuid: str | None = None, timer_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """One result row with every column present (missing values are None). ``timer_args``: the
    command-line options that made the timing differ from the default (kept in the reproducer)."""
    from harness.cases.reproducer import reproducer

    backend, case = cell.backend, cell.case
    spec: BatchSpec = case.spec()
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        cell_id=cell.id, run_id=run_id, backend=backend, binding=declared_binding(backend), case=case.name, variant=case.variant,
        grammar=case.grammar,
        **case.axes(), num_q_heads=spec.num_q_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        dtype=spec.dtype, causal=spec.causal, seed=spec.seed, total_q=spec.total_q, total_kv=spec.total_kv,
        num_pages=spec.num_pages, reproducer=reproducer(backend, case, extra=timer_args),
        verdict=gate.verdict, reason=gate.reason, rel_l2=gate.rel_l2, max_abs=gate.max_abs,
        lse_max_abs=gate.lse_max_abs, lse_note=gate.lse_note,
        flops=metrics.spec_flops(spec), bytes=metrics.spec_bytes(spec),
        backend_versions=json.dumps(backend_versions or {}, sort_keys=True), env_id=env_id, device=device,
        gpu_index=gpu_index, gpu_uuid=gpu_uuid, finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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
