"""Tables derived from a `ResultSet` for the renderers: per-backend summary, winners per case, the
display form of every row, and the CSV export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from records.schema import COLUMNS
from reports.compare import noise_band
from reports.model import ResultSet, workload_rank


@dataclass
class BackendSummary:
    """One backend's line of the summary: did it run, how its cells ended, its versions, why it was skipped."""

    backend: str
    ran: bool
    counts: dict[str, int]
    skipped_reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    registered_only: bool = False  # registered in this checkout but has no row in the results
    cell_s: float | None = None
    """Wall time its cells took in the workers (gate, compiling, timing), seconds; None in results
    written before the ``cell_s`` column existed."""


def backend_summaries(results: ResultSet, registered: list[str] | None = None) -> list[BackendSummary]:
    counts = results.verdict_counts()
    skipped = results.skipped_backends()
    versions = results.backend_versions()
    summaries = []
    seconds = results.rows.groupby("backend")["cell_s"].sum(min_count=1)
    for backend in sorted(set(results.rows["backend"]) - {""}):
        row = counts.loc[backend] if backend in counts.index else pd.Series(dtype=int)
        summaries.append(BackendSummary(backend, backend not in skipped,
                                        {str(k): int(v) for k, v in row.items() if v}, skipped.get(backend, ""),
                                        versions.get(backend, {}),
                                        cell_s=None if pd.isna(seconds.get(backend)) else float(seconds[backend])))
    availability = results.availability()
    for backend in sorted(set(registered or []) - set(results.rows["backend"])):
        record = availability.get(backend, {})
        if str(record.get("available", "")).lower() in ("no", "false") and record.get("reason"):
            why = f"not available where these results were measured: {record['reason']}"
        else:
            why = "registered in this checkout but absent from these results (not part of the run that produced them)"
        summaries.append(BackendSummary(backend, False, {}, why, registered_only=True))
    return summaries


def winners(results: ResultSet) -> pd.DataFrame:
    """Per case: the fastest ok backend, its figures, the runner-up and the margin (runner-up time /
    winner time); ``tie`` when the margin is inside the two cells' noise band."""
    records = []
    for case, rows in results.ok_rows.groupby("case"):
        rows = rows.sort_values("median_us")
        best = rows.iloc[0]
        record = {"workload": best["workload"], "case": case, "page_size": best["page_size"],
                  "batch_size": best["batch_size"], "q_len": best["q_len"], "context": best["context"],
                  "winner": best["backend"], "median_us": best["median_us"], "iqr_pct": best["iqr_pct"],
                  "tflops": best["tflops"], "tbps": best["tbps"], "contenders": len(rows),
                  "runner_up": None, "margin": None, "tie": False}
        if len(rows) > 1:
            second = rows.iloc[1]
            margin = second["median_us"] / best["median_us"]
            record.update(runner_up=second["backend"], margin=margin,
                          tie=bool(margin <= 1 + noise_band(best["iqr_pct"], second["iqr_pct"])))
        records.append(record)
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    frame = frame.assign(_k=workload_rank(frame["workload"])).sort_values(["_k", "page_size", "batch_size", "q_len", "context"])
    return frame.drop(columns="_k").reset_index(drop=True)


def win_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Workload kind -> backend -> cases won."""
    if table.empty:
        return {}
    return {kind: {str(b): int(n) for b, n in rows["winner"].value_counts().items()}
            for kind, rows in table.groupby("workload", sort=False)}


def config_text(row: dict) -> str:
    """Entry point and chosen configuration of a row, as one short line."""
    parts = [str(row.get("entry_point") or "")]
    config = row.get("config")
    if config:
        try:
            parsed = json.loads(config)
            parts.append(", ".join(f"{k}={v}" for k, v in parsed.items()) if isinstance(parsed, dict) else str(parsed))
        except (json.JSONDecodeError, TypeError):
            parts.append(str(config))
    return " · ".join(p for p in parts if p)


def write_csv(results: ResultSet, path: str | Path) -> Path:
    """Every row with the fixed COLUMNS (then any extra ones), ordered like the report's table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = results.sorted_rows()
    rows[COLUMNS + [c for c in rows.columns if c not in COLUMNS]].to_csv(path, index=False)
    return path
