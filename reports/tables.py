"""Tables derived from a `ResultSet` for the renderers: per-backend summary, winners per case, the
model-feature cells beside their plain twins, the display form of every row, and the CSV export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from records.schema import COLUMNS
from reports.compare import noise_band
from reports.model import (CPU_SMOKE_NOTE, MODEL_FEATURE_WORDS, OK, ResultSet, features_text, plain_twin,
                           variant_features, workload_rank)
from reports.text import compact, is_missing, text_table


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
    warmup_setup_s: float | None = None
    """Compiling and building its cells took in the compile warm-up (cold caches), seconds; None without one."""
    warmup_cells: int = 0


def backend_summaries(results: ResultSet, registered: list[str] | None = None) -> list[BackendSummary]:
    counts = results.verdict_counts()
    skipped = results.skipped_backends()
    versions = results.backend_versions()
    summaries = []
    seconds = results.rows.groupby("backend")["cell_s"].sum(min_count=1)
    warm_seconds = results.warmup.groupby("backend")["setup_s"].sum(min_count=1)
    warm_cells = results.warmup.groupby("backend").size()
    for backend in sorted(set(results.rows["backend"]) - {""}):
        row = counts.loc[backend] if backend in counts.index else pd.Series(dtype=int)
        summaries.append(BackendSummary(backend, backend not in skipped,
                                        {str(k): int(v) for k, v in row.items() if v}, skipped.get(backend, ""),
                                        versions.get(backend, {}),
                                        cell_s=None if pd.isna(seconds.get(backend)) else float(seconds[backend]),
                                        warmup_setup_s=(None if pd.isna(warm_seconds.get(backend, float("nan")))
                                                        else float(warm_seconds[backend])),
                                        warmup_cells=int(warm_cells.get(backend, 0))))
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
    """Per plain case: the fastest ok backend, its figures, the runner-up and the margin (runner-up time /
    winner time); ``tie`` when the margin is inside the two cells' noise band. Cases with model features
    are left to `feature_cells` (their own group, beside their plain twins)."""
    records = []
    ok = results.ok_rows
    for case, rows in ok[~results.featured.loc[ok.index]].groupby("case"):
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


SPEEDUP_COLUMNS = ["workload", "backend", "cells", "geomean", "min", "min_case", "max", "max_case", "slower"]
"""Columns of `speedup_summary`: per workload kind and backend, over the plain cells both it and the
reference ran ok, the geometric mean, minimum and maximum of reference time / backend time (above 1:
the backend is faster), the cases of the extremes, and how many cells it was slower in."""


def speedup_summary(results: ResultSet, reference: str) -> pd.DataFrame:
    """The speed-up maps in numbers (`SPEEDUP_COLUMNS`), one row per workload kind and backend other than
    ``reference``. Featured cells are left out (they are compared with their plain twins instead); the
    geometric mean, because a ratio of times averages as a product (2x and 0.5x cancel out)."""
    ok = results.ok_rows
    plain = ok[~results.featured.loc[ok.index] & (ok["median_us"] > 0)]
    times = plain.pivot_table(index="case", columns="backend", values="median_us", aggfunc="first")
    if reference not in times.columns:
        return pd.DataFrame(columns=SPEEDUP_COLUMNS)
    kind_of = plain.drop_duplicates("case").set_index("case")["workload"]
    records = []
    for backend in sorted(set(times.columns) - {reference}):
        ratio = (times[reference] / times[backend]).dropna()
        for kind, values in ratio.groupby(kind_of.reindex(ratio.index)):
            records.append({"workload": kind, "backend": backend, "cells": len(values),
                            "geomean": float(np.exp(np.log(values).mean())),
                            "min": float(values.min()), "min_case": str(values.idxmin()),
                            "max": float(values.max()), "max_case": str(values.idxmax()),
                            "slower": int((values < 1).sum())})
    frame = pd.DataFrame(records, columns=SPEEDUP_COLUMNS)
    if frame.empty:
        return frame
    frame = frame.assign(_k=workload_rank(frame["workload"])).sort_values(["_k", "backend"], kind="stable")
    return frame.drop(columns="_k").reset_index(drop=True)


def format_speedup_text(results: ResultSet, reference: str) -> str:
    """`speedup_summary` for a terminal: one line per workload kind and backend."""
    if results.measured_on_cpu:
        return f"Speed-up against {reference}: none named. {CPU_SMOKE_NOTE}\n"
    table = speedup_summary(results, reference)
    if table.empty:
        return f"Speed-up against {reference}: no plain cell that {reference} and another backend both ran ok.\n"
    rows = [[r["workload"], r["backend"], r["cells"], f"{r['geomean']:.2f}x", f"{r['min']:.2f}x ({r['min_case']})",
             f"{r['max']:.2f}x ({r['max_case']})", r["slower"]] for r in table.to_dict("records")]
    return (f"Speed-up against {reference} ({reference} time / backend time over the plain cells both ran ok; "
            f"above 1 = faster than {reference})\n"
            + text_table(["workload", "backend", "cells", "geomean", "min", "max", "slower"], rows) + "\n")


@dataclass
class FeatureCell:
    """One case with model features: what it asks for, its plain twin (the same case without them, "" when
    the results hold none), and one line per backend (`feature_table` columns)."""

    case: str
    workload: str
    features: str
    feature_values: dict[str, str]
    twin: str
    rows: list[dict]
    fastest: str = ""


FEATURE_COLUMNS = ["case", "features", "twin", "workload", "backend", "verdict", "reason", "median_us", "iqr_pct",
                   "twin_verdict", "twin_median_us", "ratio", "tflops", "tbps", "roofline_pct", "rel_l2",
                   "lse_max_abs", "reproducer"]
"""Columns of `feature_table`: ``ratio`` = the featured cell's time / its plain twin's, on the same backend
(below 1: the feature saves time, as a window that skips keys should); ``roofline_pct`` the larger of the
cell's shares of the matmul and copy ceilings (the formulas count only the keys inside a window and fp8
bytes at 1 byte)."""


def _share(row: dict) -> float | None:
    shares = [row.get(key) for key in ("pct_matmul_ceiling", "pct_copy_ceiling") if not is_missing(row.get(key))]
    return max(shares) if shares else None


def feature_table(results: ResultSet) -> pd.DataFrame:
    """One row per (featured case, backend), `FEATURE_COLUMNS`, ordered by workload kind and case: the
    cell's verdict, reason and time beside its plain twin's on the same backend. Backends skipped in
    every cell are left out (the summary gives their reason once)."""
    featured = results.feature_rows
    if featured.empty:
        return pd.DataFrame(columns=FEATURE_COLUMNS)
    skipped = set(results.skipped_backends())
    by_cell = {(row["case"], row["backend"]): row for row in results.rows.to_dict("records")}
    records = []
    ordered = featured.assign(_k=workload_rank(featured["workload"])).sort_values(
        ["_k", "page_size", "batch_size", "q_len", "context", "case", "backend"])
    for row in ordered.to_dict("records"):
        if row["backend"] in skipped:
            continue
        twin = plain_twin(row["case"], row["variant"])
        other = by_cell.get((twin, row["backend"])) if twin else None
        ok = row["verdict"] == OK and not is_missing(row.get("median_us"))
        twin_ok = other is not None and other["verdict"] == OK and not is_missing(other.get("median_us"))
        records.append({
            "case": row["case"], "features": features_text(row["variant"]), "twin": twin, "workload": row["workload"],
            "backend": row["backend"], "verdict": row["verdict"], "reason": row["reason"],
            "median_us": row["median_us"] if ok else None, "iqr_pct": row["iqr_pct"] if ok else None,
            "twin_verdict": other["verdict"] if other is not None else "",
            "twin_median_us": other["median_us"] if twin_ok else None,
            "ratio": row["median_us"] / other["median_us"] if ok and twin_ok and other["median_us"] else None,
            "tflops": row["tflops"] if ok else None, "tbps": row["tbps"] if ok else None,
            "roofline_pct": _share(row) if ok else None, "rel_l2": row["rel_l2"], "lse_max_abs": row["lse_max_abs"],
            "reproducer": row.get("reproducer", ""),
        })
    return pd.DataFrame(records, columns=FEATURE_COLUMNS)


def feature_cells(results: ResultSet, *, name_fastest: bool = True) -> list[FeatureCell]:
    """The featured cases in `feature_table` order, each with its backends' lines; ``fastest`` names the
    quickest ok backend (not on CPU timings: ``name_fastest`` False)."""
    table = feature_table(results)
    variants = dict(zip(results.feature_rows["case"], results.feature_rows["variant"]))
    cells = []
    for case, rows in table.groupby("case", sort=False):
        timed = rows.dropna(subset=["median_us"])
        fastest = str(timed.sort_values("median_us").iloc[0]["backend"]) if name_fastest and len(timed) > 1 else ""
        cells.append(FeatureCell(case, str(rows.iloc[0]["workload"]), str(rows.iloc[0]["features"]),
                                 variant_features(variants.get(case, "")), str(rows.iloc[0]["twin"]),
                                 rows.to_dict("records"), fastest))
    return cells


def format_features_text(results: ResultSet) -> str:
    """The model-feature cells for a terminal: per case its features and plain twin, then one line per
    backend (verdict, time, the twin's time, their ratio, the reason of a cell that did not run)."""
    cells = feature_cells(results, name_fastest=not results.measured_on_cpu)
    if not cells:
        return "Model features: no cells with model features in these results.\n"
    on_cpu = results.measured_on_cpu
    lines = [f"Model features ({len(cells)} cell{'s' if len(cells) != 1 else ''}: "
             f"{', '.join(MODEL_FEATURE_WORDS.values())}), each beside its plain twin"]
    if on_cpu:
        lines.append(CPU_SMOKE_NOTE)
    for cell in cells:
        twin = cell.twin if any(r["twin_verdict"] for r in cell.rows) else f"{cell.twin or '-'} (not in these results)"
        lines += ["", f"{cell.case} [{cell.workload}]: {cell.features}; plain twin {twin}"
                  + (f"; fastest {cell.fastest}" if cell.fastest else "")]
        headers = ["backend", "verdict", "µs", "plain µs"] + ([] if on_cpu else ["feature/plain"]) + ["reason"]
        rows = []
        for row in cell.rows:
            line = [row["backend"], row["verdict"], compact(row["median_us"]), compact(row["twin_median_us"])]
            if not on_cpu:
                line.append("" if is_missing(row["ratio"]) else f"{row['ratio']:.2f}x")
            rows.append(line + [row["reason"] if row["verdict"] != OK else ""])
        lines.append(text_table(headers, rows))
    return "\n".join(lines) + "\n"


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
