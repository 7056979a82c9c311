"""The HTML renderer: one self-contained static page (inline CSS, inline SVG figures, a few lines of
vanilla JavaScript for sorting and filtering tables) from a `ResultSet`, optionally compared with a
baseline `ResultSet`. Opens from disk, offline; nothing is fetched."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from records.schema import VERDICTS
from records.schema import GLOSSARY
from reports import plots
from reports.capability import SYMBOLS, capability_matrix
from reports.compare import NOISE_RULE, STATUS_ORDER, Comparison, compare
from reports.model import CPU_SMOKE_NOTE, ResultSet
from reports.model import MODEL_FEATURE_WORDS
from reports.tables import (backend_summaries, config_text, feature_cells, speedup_summary, win_counts, winners,
                            write_csv)
from reports.templating import environment
from reports.text import duration, is_missing

__all__ = ["render_report", "render_html", "write_csv"]

TEMPLATE = "report.html.j2"

REPORT_GLOSSARY = {
    "speed-up": "the baseline backend's median time divided by the backend's, on the same cell: above 1 the "
                "backend is faster (the baseline is the backend whose adapter declares itself so: cuDNN)",
    "share of roofline": "the larger of % of the matmul ceiling and % of the copy ceiling: the ceiling that binds the case",
    "winner / margin": "the fastest ok backend of a case; margin = runner-up time / winner time; "
                       "'tie' when the margin is inside the two cells' noise band",
    "noise band": NOISE_RULE + " (iqr = each side's iqr_pct)",
    "new/old": "time ratio of a cell between the compared result sets (above 1: the new set is slower)",
    "lost / gained": "a cell or capability that was ok and is not any more (lost), or the reverse (gained)",
    "partial": "derived capability matrix only: some of the backend's cells with this feature value passed, some not",
    "model features": "sliding window, logit soft-cap, attention sinks, fp8 KV cache (docs/model-features.md): cells "
                      "that ask for them are shown in their own section, each beside its plain twin (the same case "
                      "without them)",
    "feature / plain": "a featured cell's median time divided by its plain twin's on the same backend: below 1 the "
                       "feature saves time (a window skips keys, an fp8 cache halves the bytes)",
}


def effective_declarations(results: ResultSet, defaults: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """What each backend declares (baseline, colour, in_sweep): as recorded with the results, falling back
    to ``defaults`` (e.g. the declarations of the checkout that renders) for results that recorded none."""
    merged = {backend: dict(values) for backend, values in (defaults or {}).items()}
    for backend, values in results.declarations().items():
        merged.setdefault(backend, {}).update(values)
    return merged


def baseline_backend(declarations: dict[str, dict[str, Any]]) -> str | None:
    return next((backend for backend, values in sorted(declarations.items()) if values.get("baseline")), None)


def _timer_words(results: ResultSet) -> str:
    """How the rows were timed, in words for the page ("GPU launch times", or the CPU clock)."""
    methods = " ".join(sorted(set(results.rows["method"]) - {""}))
    if methods and "cuda" not in methods:
        return "host wall-clock times (perf_counter: no GPU in these results)"
    return "GPU launch times"


def _result_rows(results: ResultSet) -> list[dict[str, Any]]:
    """Display rows, without the rows of backends skipped everywhere (the summary gives their reason once)."""
    rows = []
    skipped = set(results.skipped_backends())
    previous_case = None
    for row in results.sorted_rows().to_dict("records"):
        if row["backend"] in skipped:
            continue
        row["first_of_case"] = row["case"] != previous_case
        previous_case = row["case"]
        row["config_text"] = config_text(row)
        row["bound"] = ""
        if not is_missing(row.get("pct_matmul_ceiling")) and not is_missing(row.get("pct_copy_ceiling")):
            row["bound"] = "compute" if row["pct_matmul_ceiling"] >= row["pct_copy_ceiling"] else "memory"
        rows.append(row)
    return rows


def _provenance_view(sets: list[tuple[str, ResultSet]]) -> dict[str, Any]:
    """One table, fields x runs of every set (results first, then the baseline): every provenance
    field, the ceilings, the run's argv and date, and the versions each backend's rows recorded;
    ``varies`` marks fields whose values differ between the columns."""
    columns, sources = [], []
    for role, results in sets:
        versions = {f"backend_versions.{backend}.{key}": value
                    for backend, keys in results.backend_versions().items() for key, value in keys.items()}
        records = results.provenance_records()
        sources.append({"role": role, "label": results.label, "source": str(results.source or ""),
                        "runs": len(records)})
        for record in records or [{}]:
            columns.append({"role": role, "label": results.label, "run_id": record.get("run_id", "(no run record)"),
                            "record": {**record, **versions}})
    fields = list(dict.fromkeys(key for column in columns for key in column["record"]))
    table = []
    for key in fields:
        values = [str(column["record"].get(key, "")) for column in columns]
        table.append({"field": key, "cells": values, "varies": len(set(values)) > 1})
    return {"columns": columns, "table": table, "sources": sources}


def _comparison_view(comparison: Comparison) -> dict[str, Any]:
    cells = comparison.cells
    order = {status: i for i, status in enumerate(STATUS_ORDER)}
    flagged = cells[~cells["status"].isin(["same", "unchanged"])] if len(cells) else cells
    if len(flagged):
        flagged = flagged.assign(_o=flagged["status"].map(order)).sort_values(["_o", "backend", "case"])
    capability = comparison.capability
    cap_changes = capability[~capability["status"].isin(["same", "unchanged"])] if len(capability) else capability
    all_cells = cells.assign(_o=cells["status"].map(order)).sort_values(["_o", "backend", "case"]) if len(cells) else cells
    return {
        "old": comparison.old.label, "new": comparison.new.label, "summary": comparison.summary(),
        "counts": comparison.status_counts(), "status_order": STATUS_ORDER,
        "flagged": flagged.to_dict("records"), "cells": all_cells.to_dict("records"),
        "capability_changes": cap_changes.to_dict("records"), "provenance": comparison.provenance.to_dict("records"),
        "regressions": len(comparison.regressions), "breakdown": comparison.regression_breakdown(),
        "figures": plots.comparison_figures(comparison),
        "rule": NOISE_RULE,
    }


def _short_date(value: Any) -> str:
    """'2026-11-24T08:00:00+00:00' -> '2026-11-24 08:00'."""
    text = str(value or "?")
    return text[:16].replace("T", " ") if len(text) >= 16 and text[10] == "T" else text


def _headline(results: ResultSet) -> dict[str, str]:
    records = results.provenance_records()
    first = records[-1] if records else {}
    ceilings = results.ceilings() or {}
    facts = {
        "GPU": str(first.get("gpu") or ceilings.get("gpu") or "unknown"),
        "ceilings": (f"{ceilings['matmul_bf16_tflops']:.0f} TFLOP/s bf16 · {ceilings['copy_tbps']:.2f} TB/s copy"
                     if ceilings.get("matmul_bf16_tflops") and ceilings.get("copy_tbps") else "not measured"),
        "commit": " | ".join(dict.fromkeys(str(r.get("commit")) for r in records if r.get("commit"))) or "unknown",
        "sweep": " | ".join(dict.fromkeys(str(r.get("sweep")) for r in records if r.get("sweep"))) or "unknown",
        "runs": f"{len(records)}: {', '.join(_short_date(r.get('started_at') or r.get('date')) for r in records[:3])}"
                f"{', …' if len(records) > 3 else ''}" if records else "no run record",
        "cells": f"{len(results.rows)} ({int((results.rows['verdict'] == 'ok').sum())} ok)",
    }
    cell_seconds = results.rows["cell_s"].sum(min_count=1)
    if not pd.isna(cell_seconds):
        facts["time in cells"] = (f"{duration(cell_seconds)} (gate, compiling and timing, summed over cells; "
                                  f"each backend's share is on its card)")
    return facts


def build_context(results: ResultSet, *, baseline: ResultSet | None = None, title: str = "",
                  declarations: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain data (figures already rendered to SVG)."""
    declared = effective_declarations(results, declarations)
    reference = baseline_backend(declared)
    registered = [backend for backend, values in declared.items() if values.get("in_sweep", True)]
    on_cpu = results.measured_on_cpu or (baseline is not None and baseline.measured_on_cpu)
    win_table = pd.DataFrame() if on_cpu else winners(results)  # CPU timings name no winner (CPU_SMOKE_NOTE)
    styles = plots.backend_styles(sorted(set(results.rows["backend"]) - {""}),
                                  {backend: values.get("color") for backend, values in declared.items()})
    colors = {backend: style.color for backend, style in styles.items()}
    figures = plots.result_figures(results, styles, None if on_cpu else reference)
    comparison = compare(baseline, results) if baseline is not None else None
    sets = [("results", results)] + ([("baseline", baseline)] if baseline is not None else [])
    matrix = capability_matrix(results)
    return {
        "title": title or f"Paged-attention benchmark: {results.label}",
        "cpu_note": CPU_SMOKE_NOTE if on_cpu else "",
        "generated_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "label": results.label, "headline": _headline(results), "reference": reference,
        "timer_words": _timer_words(results), "warnings": results.warnings + (baseline.warnings if baseline else []),
        "backends": backend_summaries(results, registered), "colors": colors, "styles": styles,
        "verdicts": list(VERDICTS), "winners": win_table.to_dict("records") if len(win_table) else [],
        "win_counts": win_counts(win_table), "figures": figures,
        "speedups": ([] if on_cpu or not reference else speedup_summary(results, reference).to_dict("records")),
        "rows": _result_rows(results), "skipped": results.skipped_backends(), "matrix": matrix, "symbols": SYMBOLS,
        "features": feature_cells(results, name_fastest=not on_cpu), "feature_words": MODEL_FEATURE_WORDS,
        "comparison": _comparison_view(comparison) if comparison is not None else None,
        "provenance": _provenance_view(sets),
        "glossary": {"columns": GLOSSARY, "verdicts": VERDICTS, "report": REPORT_GLOSSARY},
        "markup": Markup,
    }


def render_html(results: ResultSet, *, baseline: ResultSet | None = None, title: str = "",
                declarations: dict[str, dict[str, Any]] | None = None) -> str:
    context = build_context(results, baseline=baseline, title=title, declarations=declarations)
    return environment().get_template(TEMPLATE).render(**context)


def render_report(results: ResultSet, out_path: str | Path, *, baseline: ResultSet | None = None, title: str = "",
                  declarations: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the report page to ``out_path`` and return it. ``baseline`` adds the version comparison
    (``results`` is the new side). ``declarations``: what the backends of the rendering checkout declare
    (baseline, colour, in_sweep), used where the results recorded none; backends registered but without
    a row are listed in the summary."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(results, baseline=baseline, title=title, declarations=declarations),
                        encoding="utf-8")
    return out_path
