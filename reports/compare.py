"""Version-regression comparison of two result sets, cell by cell.

Typical use: the same sweep at the same commit run in two environments that differ in one package
(e.g. nvidia-cudnn-frontend 1.22.1 vs 1.32.0). Cells are matched on ``cell_id`` (a hash of the
backend and every case field, independent of run and environment); capability rows on
(backend, feature, value).

Noise band (per cell): ``band = max(NOISE_FLOOR, NOISE_K * hypot(iqr_old, iqr_new) / 100)``, where
``iqr_*`` is each side's ``iqr_pct`` (the launch times' inter-quartile range as % of the median).

- The two sides' spreads are independent, so they add in quadrature.
- ``NOISE_K = 1.5``: for normally distributed launch times the IQR is 1.35 sigma, so 1.5 IQR is about
  2 sigma of the per-launch spread. The per-launch spread overstates the uncertainty of a median of
  hundreds of launches, but between separate processes (clocks, thermal state, page placement) medians
  move by about that much, so it is the honest figure for "two runs".
- ``NOISE_FLOOR = 5 %``: a quiet cell (IQR 0.5 %) still moves 2-3 % between processes and machines of
  one model (boost clock, L2/HBM state); a band tighter than that flags noise. asv's own default
  regression factor is 10 %; 5 % keeps a 10 %+ regression well clear of the band.

A cell is "slower" when ``new/old > 1 + band`` and "faster" when ``new/old < 1 / (1 + band)``
(symmetric on a log scale); otherwise "same". Each rule is a tiny check object whose ``check(pair)``
returns a message or None; `DEFAULT_CHECKS` is the list the comparison runs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import pandas as pd

from reports.model import CPU_SMOKE_NOTE, OK, ResultSet, load_results
from reports.text import compact, is_missing, percent, text_table

NOISE_FLOOR = 0.05
NOISE_K = 1.5
NOISE_RULE = (f"band = max({NOISE_FLOOR:.0%}, {NOISE_K} x sqrt(iqr_old^2 + iqr_new^2)); slower if new/old > 1 + band, "
              "faster if new/old < 1/(1 + band)")
IGNORED_PROVENANCE = ("run_id", "started_at", "date")
"""Fields that differ between any two runs and say nothing about the environment."""


def noise_band(old_iqr_pct: float | None, new_iqr_pct: float | None, *, floor: float = NOISE_FLOOR,
               k: float = NOISE_K) -> float:
    """Relative noise band of one cell (0.05 = 5 %) from both sides' IQR (% of median); missing IQR counts as 0."""
    spreads = [0.0 if is_missing(value) else float(value) / 100 for value in (old_iqr_pct, new_iqr_pct)]
    return max(floor, k * math.hypot(*spreads))


@dataclass(frozen=True)
class CellPair:
    """One cell (or capability entry) on both sides; ``old``/``new`` are its rows (None when absent)."""

    key: str
    label: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    def verdict(self, side: str) -> str | None:
        row = getattr(self, side)
        return None if row is None else str(row.get("verdict") or "")

    def reason(self, side: str) -> str:
        row = getattr(self, side)
        return "" if row is None else str(row.get("reason") or "")

    def median(self, side: str) -> float | None:
        row = getattr(self, side)
        value = None if row is None else row.get("median_us")
        return None if is_missing(value) else float(value)

    @property
    def timed(self) -> bool:
        return (self.verdict("old") == OK and self.verdict("new") == OK
                and self.median("old") is not None and self.median("new") is not None and self.median("old") > 0)

    @property
    def ratio(self) -> float | None:
        """Time ratio new/old of the medians (> 1 is slower), when both sides were timed."""
        return self.median("new") / self.median("old") if self.timed else None

    @property
    def band(self) -> float | None:
        if not self.timed:
            return None
        return noise_band(self.old.get("iqr_pct"), self.new.get("iqr_pct"))


class Check(Protocol):
    name: str
    severity: str  # "regression", "improvement" or "note"

    def check(self, pair: CellPair) -> str | None: ...


def _timing_message(pair: CellPair, word: str) -> str:
    return (f"{abs(pair.ratio - 1):.1%} {word} (new/old {pair.ratio:.3f}, noise band ±{pair.band:.1%}): "
            f"{compact(pair.median('old'))} -> {compact(pair.median('new'))} µs")


class SlowerThanNoise:
    name, severity = "slower", "regression"

    def check(self, pair: CellPair) -> str | None:
        if pair.ratio is not None and pair.ratio > 1 + pair.band:
            return _timing_message(pair, "slower")
        return None


class FasterThanNoise:
    name, severity = "faster", "improvement"

    def check(self, pair: CellPair) -> str | None:
        if pair.ratio is not None and pair.ratio < 1 / (1 + pair.band):
            return _timing_message(pair, "faster")
        return None


class CapabilityLost:
    name, severity = "lost", "regression"

    def check(self, pair: CellPair) -> str | None:
        old, new = pair.verdict("old"), pair.verdict("new")
        if old == OK and new is not None and new != OK:
            return f"ok -> {new}: {pair.reason('new') or 'no reason recorded'}"
        return None


class CapabilityGained:
    name, severity = "gained", "improvement"

    def check(self, pair: CellPair) -> str | None:
        old, new = pair.verdict("old"), pair.verdict("new")
        if new == OK and old is not None and old != OK:
            return f"{old} -> ok (was: {pair.reason('old') or 'no reason recorded'})"
        return None


class FailureChanged:
    """Both sides fail, but with another verdict or reason (e.g. a new error message)."""

    name, severity = "changed", "note"

    def check(self, pair: CellPair) -> str | None:
        old, new = pair.verdict("old"), pair.verdict("new")
        if old in (None, OK) or new in (None, OK):
            return None
        if old != new:
            return f"{old} -> {new}: {pair.reason('new') or 'no reason recorded'}"
        if pair.reason("old") != pair.reason("new"):
            return f"{new}, reason changed: {pair.reason('old')!r} -> {pair.reason('new')!r}"
        return None


class OnlyInOld:
    name, severity = "only-old", "note"

    def check(self, pair: CellPair) -> str | None:
        return f"only in the old set ({pair.verdict('old')})" if pair.new is None else None


class OnlyInNew:
    name, severity = "only-new", "note"

    def check(self, pair: CellPair) -> str | None:
        return f"only in the new set ({pair.verdict('new')})" if pair.old is None else None


DEFAULT_CHECKS: tuple[Check, ...] = (OnlyInOld(), OnlyInNew(), CapabilityLost(), CapabilityGained(), FailureChanged(),
                                     SlowerThanNoise(), FasterThanNoise())
TIMING_CHECKS = ("slower", "faster")
BEHAVIOUR_CHECKS: tuple[Check, ...] = tuple(check for check in DEFAULT_CHECKS if check.name not in TIMING_CHECKS)
"""Verdicts, refusals and capabilities only: for result sets whose timings cannot be compared (measured on
a shared or busy GPU)."""


@dataclass(frozen=True)
class Finding:
    """One check that fired on one pair."""

    check: str
    severity: str
    kind: str  # "cell" or "capability"
    key: str
    label: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def evaluate(pair: CellPair, checks: Sequence[Check]) -> tuple[str, list[tuple[Check, str]]]:
    """The pair's status and every message: the first check that fired, else 'same' (both ok, within
    the noise band) or 'unchanged' (both not ok, with the same verdict and reason)."""
    fired = [(check, message) for check in checks if (message := check.check(pair)) is not None]
    if fired:
        return fired[0][0].name, fired
    return ("same" if pair.verdict("old") == OK else "unchanged"), fired


CELL_FIELDS = ("backend", "case", "workload", "batch_size", "q_len", "context", "page_size")


def _cell_pairs(old: ResultSet, new: ResultSet) -> list[CellPair]:
    old_rows = {row["cell_id"]: row for row in old.rows.to_dict("records")}
    new_rows = {row["cell_id"]: row for row in new.rows.to_dict("records")}
    pairs = []
    for key in list(dict.fromkeys([*old_rows, *new_rows])):
        row = new_rows.get(key) or old_rows[key]
        pairs.append(CellPair(key=key, label=f"{row['backend']} {row['case']}", old=old_rows.get(key),
                              new=new_rows.get(key)))
    return pairs


def _capability_pairs(old: ResultSet, new: ResultSet) -> list[CellPair]:
    def keyed(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
        return {f"{r['backend']}|{r['feature']}|{r['value']}": r for r in frame.to_dict("records")}

    old_rows, new_rows = keyed(old.capability), keyed(new.capability)
    pairs = []
    for key in list(dict.fromkeys([*old_rows, *new_rows])):
        row = new_rows.get(key) or old_rows[key]
        pairs.append(CellPair(key=key, label=f"{row['backend']} {row['feature']}={row['value']}",
                              old=old_rows.get(key), new=new_rows.get(key)))
    return pairs


def _provenance_values(results: ResultSet) -> dict[str, str]:
    """Every provenance field of the set's runs (distinct values joined by ' | '), ceilings to 3 digits,
    and each backend's recorded versions as ``backend_versions.<backend>.<key>``."""
    values: dict[str, list[str]] = {}
    for record in results.provenance_records():
        for key, value in record.items():
            if key in IGNORED_PROVENANCE:
                continue
            text = f"{value:.3g}" if key.startswith("ceilings.") and isinstance(value, float) else str(value)
            seen = values.setdefault(key, [])
            if text not in seen:
                seen.append(text)
    merged = {key: " | ".join(texts) for key, texts in values.items()}
    for backend, versions in results.backend_versions().items():
        merged.update({f"backend_versions.{backend}.{key}": value for key, value in versions.items()})
    return merged


def provenance_diff(old: ResultSet, new: ResultSet) -> pd.DataFrame:
    """The provenance fields whose values differ (absent on one side counts), as field / old / new."""
    old_values, new_values = _provenance_values(old), _provenance_values(new)
    keys = list(dict.fromkeys([*old_values, *new_values]))
    rows = [{"field": key, "old": old_values.get(key, "(absent)"), "new": new_values.get(key, "(absent)")}
            for key in keys if old_values.get(key) != new_values.get(key)]
    return pd.DataFrame(rows, columns=["field", "old", "new"])


@dataclass
class Comparison:
    """Two result sets compared: ``cells`` (one row per cell), ``capability`` (one per capability
    entry), ``provenance`` (differing fields) and the ``findings`` of every check."""

    old: ResultSet
    new: ResultSet
    cells: pd.DataFrame
    capability: pd.DataFrame
    provenance: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "regression"]

    @property
    def improvements(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "improvement"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "note"]

    def regression_breakdown(self) -> str:
        """'1 cell slower, 1 capability lost' (empty when nothing regressed)."""
        counts = Counter((f.kind, f.check) for f in self.regressions)
        nouns = {"cell": ("cell", "cells"), "capability": ("capability", "capabilities")}
        return ", ".join(f"{n} {nouns[kind][n != 1]} {check}" for (kind, check), n in counts.items())

    def status_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.cells["status"].value_counts().items()} if len(self.cells) else {}

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: both sides, the noise rule, counts, every finding and the provenance diff."""
        def side(results: ResultSet) -> dict[str, Any]:
            return {"label": results.label, "source": str(results.source) if results.source else None,
                    "env_ids": sorted((set(results.runs["env_id"].dropna().astype(str))
                                        | set(results.rows["env_id"])) - {""}),
                    "cells": int(len(results.rows))}

        return {
            "old": side(self.old), "new": side(self.new),
            "noise_band": {"floor": NOISE_FLOOR, "k": NOISE_K, "rule": NOISE_RULE},
            "cells_compared": int(len(self.cells)), "status_counts": self.status_counts(),
            "capability_counts": ({str(k): int(v) for k, v in self.capability["status"].value_counts().items()}
                                  if len(self.capability) else {}),
            "regression_breakdown": self.regression_breakdown(),
            "regressions": [f.as_dict() for f in self.regressions],
            "improvements": [f.as_dict() for f in self.improvements],
            "notes": [f.as_dict() for f in self.notes],
            "provenance_diff": self.provenance.to_dict("records"),
        }


def _pair_frame(pairs: list[CellPair], checks: Sequence[Check], kind: str,
                fields: Sequence[str]) -> tuple[pd.DataFrame, list[Finding]]:
    records, findings = [], []
    for pair in pairs:
        status, fired = evaluate(pair, checks)
        row = pair.new or pair.old
        record = {"key": pair.key, **{name: row.get(name) for name in fields},
                  "old_verdict": pair.verdict("old"), "new_verdict": pair.verdict("new"),
                  "old_reason": pair.reason("old"), "new_reason": pair.reason("new")}
        if kind == "cell":
            record.update(old_median_us=pair.median("old"), new_median_us=pair.median("new"),
                          old_iqr_pct=(pair.old or {}).get("iqr_pct"), new_iqr_pct=(pair.new or {}).get("iqr_pct"),
                          ratio=pair.ratio, band=pair.band)
        record.update(status=status, severity=fired[0][0].severity if fired else "",
                      message="; ".join(message for _, message in fired))
        records.append(record)
        findings += [Finding(check.name, check.severity, kind, pair.key, pair.label, message) for check, message in fired]
    return pd.DataFrame(records), findings


def compare(old: ResultSet, new: ResultSet, checks: Sequence[Check] = DEFAULT_CHECKS) -> Comparison:
    """Compare ``new`` against ``old`` (the baseline), cell by cell and capability by capability."""
    cells, cell_findings = _pair_frame(_cell_pairs(old, new), checks, "cell", CELL_FIELDS)
    if len(cells):
        cells = cells.rename(columns={"key": "cell_id"})
    else:
        cells = pd.DataFrame(columns=["cell_id", *CELL_FIELDS, "status", "ratio", "band", "message"])
    capability, capability_findings = _pair_frame(_capability_pairs(old, new), checks, "capability",
                                                  ("backend", "feature", "value"))
    if not len(capability):
        capability = pd.DataFrame(columns=["key", "backend", "feature", "value", "old_verdict", "new_verdict", "status",
                                           "message"])
    return Comparison(old=old, new=new, cells=cells, capability=capability, provenance=provenance_diff(old, new),
                      findings=cell_findings + capability_findings)


def compare_folders(old_dir: str | Path, new_dir: str | Path, checks: Sequence[Check] = DEFAULT_CHECKS) -> Comparison:
    """Load two results folders and compare them (``old_dir`` is the baseline)."""
    return compare(load_results(old_dir), load_results(new_dir), checks)


STATUS_ORDER = ("slower", "lost", "changed", "only-old", "only-new", "gained", "faster", "same", "unchanged")


def format_comparison_text(comparison: Comparison, *, show_same: bool = False) -> str:
    """The comparison for a terminal or a closing note: sides, provenance differences, counts, and
    every flagged cell and capability change (all cells with ``show_same``)."""
    old, new = comparison.old, comparison.new
    on_cpu = old.measured_on_cpu or new.measured_on_cpu
    lines = ([f"CPU run: {CPU_SMOKE_NOTE}", ""] if on_cpu else []) + [
        f"Version comparison: old = {old.label}, new = {new.label}", f"Noise band per cell: {NOISE_RULE}", ""]
    if len(comparison.provenance):
        lines += ["Provenance differences:",
                  text_table(["field", "old", "new"], comparison.provenance[["field", "old", "new"]].values.tolist()), ""]
    else:
        lines += ["Provenance: no differences recorded.", ""]
    counts = comparison.status_counts()
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts.get(s))
    lines.append(f"Cells: {len(comparison.cells)} compared: {summary or 'none'}")
    regressions = comparison.regressions
    lines.append(f"Regressions: {len(regressions)} ({comparison.regression_breakdown()})" if regressions
                 else "Regressions: none")
    if on_cpu and regressions:
        lines[-1] += " - CPU timings: not findings (see the note at the top)"
    lines.append("")
    cells = comparison.cells
    if len(cells):
        shown = cells if show_same else cells[~cells["status"].isin(["same", "unchanged"])]
        order = {status: index for index, status in enumerate(STATUS_ORDER)}
        shown = shown.assign(_o=shown["status"].map(order)).sort_values(["_o", "backend", "case"])
        if len(shown):
            table = [[row.status.upper(), row.backend, row.case, compact(row.old_median_us), compact(row.new_median_us),
                      "" if is_missing(row.ratio) else f"{row.ratio:.3f}",
                      "" if is_missing(row.band) else percent(100 * row.band), row.message]
                     for row in shown.itertuples()]
            lines += ["Cells:", text_table(["status", "backend", "case", "old µs", "new µs", "new/old", "band", "detail"],
                                           table), ""]
    capability = comparison.capability
    changed = capability[~capability["status"].isin(["same", "unchanged"])] if len(capability) else capability
    if len(changed):
        table = [[row.status.upper(), row.backend, f"{row.feature}={row.value}", row.message]
                 for row in changed.itertuples()]
        lines += ["Capability changes:", text_table(["status", "backend", "feature", "detail"], table), ""]
    elif len(capability):
        lines += ["Capability: no changes.", ""]
    return "\n".join(lines).rstrip() + "\n"
