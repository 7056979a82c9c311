"""Releases side by side: one sweep run in several environments (typically cuDNN backend releases),
each compared with one baseline.

What changed in behaviour comes first (`ReleaseComparison.behaviour`): per backend row (each way of
calling cuDNN is a row of its own) and cell, the verdict on every release in order, and the releases
where it broke (ok before, not ok from there), was fixed (the reverse) or failed differently; a binding
that breaks on any release is a regression even where the baseline had it broken too (broken, fixed,
broken again).

Every non-baseline set is also compared with the baseline by `reports.compare.compare` (the same cell
matching, noise band and check objects as a two-set comparison; nothing is recomputed here). On top
of those pairwise comparisons this module gives:

- per cell, its time on every release and its ratio to the baseline with the noise band and status
  (`ReleaseComparison.timeline`, one row per cell and release);
- regressions (a cell slower beyond its band, a cell or capability that stopped working) and
  improvements (faster beyond the band, started working), per release;
- capability changes: lost, gained, and changed failures (another verdict or another refusal message,
  the `FailureChanged` check), of sweep cells and of capability-probe entries alike;
- which cuDNN each set really ran on, read from its rows (``backend_versions`` of the cuDNN backends),
  and whether that is the release asked for.

Renderers: `format_releases_text` (terminal, closing note), `releases_summary` (JSON for CI) and
`render_releases` (a self-contained HTML page with the time of each cell across releases as a plot).
Torch-free: records.*, pandas, matplotlib, jinja2 and reports.* only.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from markupsafe import Markup  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from reports.compare import (BEHAVIOUR_CHECKS, CELL_FIELDS, DEFAULT_CHECKS, NOISE_FLOOR, NOISE_RULE, Comparison,  # noqa: E402
                             Finding, compare)
from reports.model import OK, ResultSet, load_results, workload_kinds  # noqa: E402
from reports.plots import STYLE, Figure, short_case, svg_of  # noqa: E402
from reports.templating import environment  # noqa: E402
from reports.text import compact, is_missing, text_table  # noqa: E402

__all__ = ["ReleaseComparison", "Behaviour", "compare_releases", "load_releases", "format_releases_text", "releases_summary",
           "release_figures", "render_releases", "render_releases_html", "write_summary", "time_grid",
           "verdict_line", "release_tuple", "CAPABILITY_CHECKS", "RELEASES_FILE", "RELEASES_JSON"]

RELEASES_FILE = "releases.html"
RELEASES_JSON = "releases.json"
CAPABILITY_CHECKS = ("lost", "gained", "changed")
"""Checks whose findings are capability changes: stopped working, started working, failing differently
(another verdict or another refusal message)."""
MISSING_CHECKS = ("only-old", "only-new")
VERSION_KEYS = ("cudnn_backend", "torch_cudnn")
"""The keys of a cuDNN backend's ``backend_versions`` that say which library really ran."""
STATUS_ORDER = ("slower", "lost", "changed", "only-old", "only-new", "gained", "faster", "same", "unchanged")
LINE_COLORS = {"slower": "#d62728", "lost": "#d62728", "faster": "#2ca02c", "gained": "#2ca02c"}
TEMPLATE = "releases.html.j2"


def release_tuple(text: Any) -> tuple[int, ...] | None:
    """A cuDNN version as numbers: '9.28.1' / '9.28.1.4' -> (9, 28, 1[, 4]); cuDNN's integer 92801 -> (9, 28, 1)."""
    text = str(text or "").strip()
    if re.fullmatch(r"\d+(\.\d+)+", text):
        return tuple(int(part) for part in text.split("."))
    if re.fullmatch(r"\d{5,6}", text):
        number = int(text)
        return (number // 10000, number % 10000 // 100, number % 100)
    return None


@dataclass(frozen=True)
class Behaviour:
    """One cell's verdicts across the releases in order, and where they changed: ``broke_in`` (ok on the
    release before, not ok here), ``fixed_in`` (the reverse), ``changed_in`` (not ok on both, another
    verdict). ``reasons``: the reason of each failed verdict, by release."""

    backend: str
    binding: str
    case: str
    workload: str
    verdicts: dict[str, str]
    reasons: dict[str, str]
    broke_in: tuple[str, ...] = ()
    fixed_in: tuple[str, ...] = ()
    changed_in: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.broke_in or self.fixed_in or self.changed_in)

    def transitions(self) -> str:
        """'broke in 9.24; fixed in 9.27' or ''."""
        parts = [f"{word} in {', '.join(labels)}" for word, labels in
                 (("broke", self.broke_in), ("fixed", self.fixed_in), ("changed verdict", self.changed_in)) if labels]
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "binding": self.binding, "case": self.case, "workload": self.workload,
                "verdicts": self.verdicts, "broke_in": list(self.broke_in), "fixed_in": list(self.fixed_in),
                "changed_in": list(self.changed_in), "reasons": self.reasons}


def behaviour_of(labels: Sequence[str], verdicts: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """(broke_in, fixed_in, changed_in) of one cell's ``verdicts`` by release, walking ``labels`` in order;
    a release without the cell is passed over (compared with the last release that had it)."""
    broke, fixed, changed = [], [], []
    previous = None
    for label in labels:
        verdict = verdicts.get(label)
        if not verdict:
            continue
        if previous is not None and verdict != previous:
            if previous == OK:
                broke.append(label)
            elif verdict == OK:
                fixed.append(label)
            else:
                changed.append(label)
        previous = verdict
    return tuple(broke), tuple(fixed), tuple(changed)


@dataclass
class ReleaseComparison:
    """Result sets of one sweep by label (in the order given), the baseline's label, the pairwise
    comparisons of every other set with the baseline, and what each environment asked for."""

    sets: dict[str, ResultSet]
    baseline: str
    comparisons: dict[str, Comparison]
    requested: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Environments that produced no results, with why (listed, never silently left out)."""
    timing: bool = True
    """Whether times were compared; False compares verdicts, refusals and capabilities only (`BEHAVIOUR_CHECKS`)."""
    _timeline: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def labels(self) -> list[str]:
        return list(self.sets)

    def findings(self, severity: str | None = None, checks: Sequence[str] | None = None) -> list[tuple[str, Finding]]:
        """(release label, finding) of every comparison, filtered by severity and/or check name."""
        return [(label, finding) for label, comparison in self.comparisons.items() for finding in comparison.findings
                if (severity is None or finding.severity == severity) and (checks is None or finding.check in checks)]

    @property
    def regressions(self) -> list[tuple[str, Finding]]:
        return self.findings("regression")

    @property
    def improvements(self) -> list[tuple[str, Finding]]:
        return self.findings("improvement")

    @property
    def capability_changes(self) -> list[tuple[str, Finding]]:
        return self.findings(checks=CAPABILITY_CHECKS)

    @property
    def missing(self) -> list[tuple[str, Finding]]:
        return self.findings(checks=MISSING_CHECKS)

    def behaviour(self) -> list[Behaviour]:
        """Every cell's verdicts across the releases (`Behaviour`), in the page's cell order."""
        bindings = {}
        for results in self.sets.values():
            if "binding" in results.rows:
                for backend, binding in zip(results.rows["backend"], results.rows["binding"]):
                    if isinstance(binding, str) and binding:
                        bindings.setdefault(backend, binding)
        out = []
        for cell, own in self.by_cell():
            verdicts = {label: own[label]["verdict"] for label in self.labels if label in own and own[label]["verdict"]}
            reasons = {label: own[label]["reason"] for label in verdicts if verdicts[label] != OK and own[label]["reason"]}
            broke, fixed, changed = behaviour_of(self.labels, verdicts)
            out.append(Behaviour(cell["backend"], bindings.get(cell["backend"], ""), cell["case"], cell["workload"],
                                 verdicts, reasons, broke, fixed, changed))
        return out

    @property
    def broken(self) -> list[Behaviour]:
        """Cells that broke on some release (ok on the release before it): each a regression."""
        return [b for b in self.behaviour() if b.broke_in]

    @property
    def fixed(self) -> list[Behaviour]:
        """Cells fixed on some release: each an improvement."""
        return [b for b in self.behaviour() if b.fixed_in]

    @property
    def measured_anything(self) -> bool:
        """Whether any cell ran (ok, wrong, error...) on any release, rather than every cell being skipped."""
        return any(v not in ("skipped", "") for b in self.behaviour() for v in b.verdicts.values())

    def timeline(self) -> pd.DataFrame:
        """One row per (cell, release): the cell's fields, the release's ``position`` and label, verdict,
        reason, median and IQR, ratio to the baseline with its band, and the pairwise status ("baseline"
        on the baseline). Computed once."""
        if self._timeline is not None:
            return self._timeline
        frames = []
        for position, label in enumerate(self.labels):
            if label == self.baseline:
                rows = self.sets[label].rows
                timed = (rows["verdict"] == OK) & rows["median_us"].notna()
                frame = rows[["cell_id", *CELL_FIELDS, "verdict", "reason", "median_us", "iqr_pct"]].assign(
                    ratio=timed.map({True: 1.0, False: None}), band=None, status="baseline", message="")
            else:
                cells = self.comparisons[label].cells
                frame = cells.reindex(columns=["cell_id", *CELL_FIELDS, "new_verdict", "new_reason", "new_median_us",
                                               "new_iqr_pct", "ratio", "band", "status", "message"])
                frame = frame.rename(columns={"new_verdict": "verdict", "new_reason": "reason",
                                              "new_median_us": "median_us", "new_iqr_pct": "iqr_pct"})
            frames.append(frame.assign(release=label, position=position))
        columns = ["cell_id", *CELL_FIELDS, "release", "position", "verdict", "reason", "median_us", "iqr_pct", "ratio",
                   "band", "status", "message"]
        timeline = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
        self._timeline = timeline[columns] if timeline is not None else pd.DataFrame(columns=columns)
        for column in ("verdict", "reason", "status", "message"):
            self._timeline[column] = self._timeline[column].fillna("").astype(str)
        return self._timeline

    def by_cell(self) -> list[tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
        """Per cell (workload order, then backend and shape): its fields and ``{release: timeline record}``."""
        timeline = self.timeline()
        grouped: dict[str, dict[str, dict[str, Any]]] = {}
        first: dict[str, dict[str, Any]] = {}
        for record in timeline.to_dict("records"):
            grouped.setdefault(record["cell_id"], {})[record["release"]] = record
            first.setdefault(record["cell_id"], record)
        order = {kind: i for i, kind in enumerate(workload_kinds(timeline["workload"]))}

        def key(record):
            return (order.get(record["workload"], len(order)), record["backend"],
                    *[-1 if is_missing(record[f]) else record[f] for f in ("page_size", "batch_size", "q_len", "context")],
                    record["case"])

        return [(first[cell], grouped[cell]) for cell in sorted(first, key=lambda c: key(first[c]))]

    def loaded(self) -> dict[str, dict[str, str]]:
        """Per release, what its cuDNN rows say really ran: ``{key: value}`` over `VERSION_KEYS` (values
        of several rows joined by ' | '), plus the library path where recorded."""
        found = {}
        for label, results in self.sets.items():
            versions: dict[str, str] = {}
            for backend, keys in results.backend_versions().items():
                if not backend.startswith("cudnn"):
                    continue
                for key in (*VERSION_KEYS, "cudnn_graph_library", "cudnn_frontend"):
                    if key in keys and key not in versions:
                        versions[key] = keys[key]
            found[label] = versions
        return found

    def version_problems(self) -> list[str]:
        """Releases whose rows ran on another cuDNN than asked for, or on several."""
        problems = []
        for label, versions in self.loaded().items():
            for key in VERSION_KEYS:
                value = versions.get(key, "")
                if " | " in value:
                    problems.append(f"{label}: rows ran on several cuDNN releases ({key}: {value})")
            wanted = release_tuple(self.requested.get(label, ""))
            loaded = release_tuple(versions.get("cudnn_backend", ""))
            if wanted and loaded and loaded[:3] != wanted[:3]:
                problems.append(f"{label}: asked for cuDNN {self.requested[label]}, the rows ran on "
                                f"{versions['cudnn_backend']} (cudnn.backend_version())")
            torch_loaded = release_tuple(versions.get("torch_cudnn", ""))
            if loaded and torch_loaded and loaded[:3] != torch_loaded[:3]:
                problems.append(f"{label}: the frontend ran cuDNN {versions['cudnn_backend']} while torch reports "
                                f"{versions['torch_cudnn']} (two cuDNN releases in one process)")
        return problems

    def release_rows(self) -> list[dict[str, Any]]:
        """One summary row per release: label, requested, loaded, cells, ok, and counts of each status."""
        loaded = self.loaded()
        out = []
        for label, results in self.sets.items():
            counts = self.comparisons[label].status_counts() if label in self.comparisons else {}
            findings = self.comparisons[label].findings if label in self.comparisons else []
            out.append({
                "release": label, "baseline": label == self.baseline,
                "requested": self.requested.get(label, "") or "(its own)",
                "cudnn_backend": loaded[label].get("cudnn_backend", ""), "torch_cudnn": loaded[label].get("torch_cudnn", ""),
                "cells": int(len(results.rows)), "ok": int((results.rows["verdict"] == OK).sum()),
                "slower": counts.get("slower", 0), "faster": counts.get("faster", 0),
                "lost": sum(f.check == "lost" for f in findings), "gained": sum(f.check == "gained" for f in findings),
                "changed": sum(f.check == "changed" for f in findings),
                "regressions": sum(f.severity == "regression" for f in findings),
            })
        return out


def compare_releases(sets: Sequence[ResultSet] | dict[str, ResultSet], baseline: str | int = 0, *,
                     requested: dict[str, str] | None = None, failed: dict[str, str] | None = None,
                     timing: bool = True) -> ReleaseComparison:
    """Compare every set with the baseline (a label or an index into ``sets``), pairwise with
    `reports.compare.compare` (behaviour only when ``timing`` is False). Labels are the sets' own
    (``ResultSet.label``) unless a dict is given."""
    named = dict(sets) if isinstance(sets, dict) else {}
    if not isinstance(sets, dict):
        for results in sets:
            if results.label in named:
                raise ValueError(f"two result sets are labelled {results.label!r}; give them names")
            named[results.label] = results
    if not named:
        raise ValueError("no result sets to compare")
    base = list(named)[baseline] if isinstance(baseline, int) else baseline
    if base not in named:
        raise ValueError(f"baseline {base!r} is not one of the releases: {', '.join(named)}")
    checks = DEFAULT_CHECKS if timing else BEHAVIOUR_CHECKS
    comparisons = {label: compare(named[base], results, checks) for label, results in named.items() if label != base}
    return ReleaseComparison(sets=named, baseline=base, comparisons=comparisons, requested=dict(requested or {}),
                             failed=dict(failed or {}), timing=timing)


def load_releases(folders: dict[str, str | Path], baseline: str | int = 0, **kwargs) -> ReleaseComparison:
    """Load ``{label: results folder}`` and compare them (see `compare_releases`)."""
    return compare_releases({label: load_results(folder, name=label) for label, folder in folders.items()},
                            baseline, **kwargs)


# --- text ------------------------------------------------------------------------------------------

TEXT_DETAIL_CHARS = 240
"""A finding's detail on the terminal is cut here (cuDNN's refusals run to kilobytes); the page and the JSON
keep it whole."""


def _clipped(text: str, limit: int = TEXT_DETAIL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finding_rows(rc: ReleaseComparison, findings: list[tuple[str, Finding]]) -> list[list[str]]:
    return [[label, finding.check.upper(), finding.kind, finding.label, _clipped(finding.message)]
            for label, finding in findings]


def _per_label(behaviours: list[Behaviour], attribute: str) -> str:
    counts: dict[str, int] = {}
    for behaviour in behaviours:
        for label in getattr(behaviour, attribute):
            counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{count} in {label}" for label, count in counts.items())


def behaviour_rows(rc: ReleaseComparison, *, changed_only: bool = True) -> list[list[str]]:
    """backend, case, the verdict on each release, and what changed where: the table both summaries open
    with (only the cells whose verdict changed, unless ``changed_only`` is False)."""
    return [[b.backend, b.case, *[b.verdicts.get(label, "absent") for label in rc.labels], b.transitions()]
            for b in rc.behaviour() if b.changed or not changed_only]


def verdict_line(rc: ReleaseComparison) -> str:
    """One line for a closing note: regressions and improvements per release, or that there are none."""
    def per_release(findings: list[tuple[str, Finding]]) -> str:
        counts: dict[str, dict[str, int]] = {}
        for label, finding in findings:
            noun = f"{'cell' if finding.kind == 'cell' else 'capability'} {finding.check}"
            counts.setdefault(label, {}).setdefault(noun, 0)
            counts[label][noun] += 1
        return "; ".join(f"{label}: " + ", ".join(f"{n} {noun}" for noun, n in nouns.items())
                         for label, nouns in counts.items())

    if not rc.measured_anything:
        return ("Nothing was compared: every cell was skipped on every release (no backend that calls cuDNN "
                "could run here); see each release's reasons.")
    broken, fixed = rc.broken, rc.fixed
    behaviour = ("behaviour: " + "; ".join(
        [f"{len(broken)} cell(s) broke ({_per_label(broken, 'broke_in')})"] * bool(broken)
        + [f"{len(fixed)} fixed ({_per_label(fixed, 'fixed_in')})"] * bool(fixed))
        if broken or fixed else "behaviour: every cell has the same verdict on every release")
    parts = [behaviour]
    parts.append(f"{len(rc.regressions)} regression(s) against {rc.baseline} ({per_release(rc.regressions)})"
                 if rc.regressions else f"no regressions against {rc.baseline}")
    parts.append(f"{len(rc.improvements)} improvement(s) ({per_release(rc.improvements)})" if rc.improvements
                 else "no improvements")
    changed = rc.findings(checks=("changed",))
    if changed:
        parts.append(f"{len(changed)} failure(s) with a changed verdict or message")
    return "; ".join(parts) + "."


def format_releases_text(rc: ReleaseComparison, *, show_all: bool = False) -> str:
    """The comparison for a terminal: releases (asked for / really loaded), the verdict line, every
    regression, improvement and capability change, and the time of each flagged cell across releases
    (every cell with ``show_all``)."""
    lines = [f"cuDNN releases compared with {rc.baseline} (order: {', '.join(rc.labels)})",
             f"Noise band per cell: {NOISE_RULE}" if rc.timing else
             "Timings not compared (--no-timing): verdicts, refusals and capabilities only", ""]
    table = [[r["release"] + (" (baseline)" if r["baseline"] else ""), r["requested"], r["cudnn_backend"],
              r["torch_cudnn"], r["cells"], r["ok"], r["slower"], r["faster"], r["lost"], r["gained"], r["changed"]]
             for r in rc.release_rows()]
    lines += ["Releases:", text_table(["release", "asked for", "cudnn ran", "torch cudnn", "cells", "ok", "slower",
                                       "faster", "lost", "gained", "changed"], table), ""]
    for label, why in rc.failed.items():
        lines.append(f"{'INCOMPLETE' if label in rc.sets else 'NOT RUN'}: {label}: {why}")
    for problem in rc.version_problems():
        lines.append(f"WARNING: {problem}")
    if rc.failed or rc.version_problems():
        lines.append("")
    lines += [verdict_line(rc), ""]
    behaviour = rc.behaviour()
    changed = behaviour_rows(rc)
    lines.append(f"What changed in behaviour ({len(changed)} of {len(behaviour)} cells changed verdict on some release):")
    if changed:
        lines.append(text_table(["backend", "case", *rc.labels, "where"], changed))
        reasons = [(b, label) for b in behaviour if b.changed for label in (*b.broke_in, *b.changed_in)]
        for b, label in reasons[:20]:
            lines.append(f"  {b.backend} {b.case} on {label}: {_clipped(b.reasons.get(label, ''))}")
    else:
        lines.append("  none: every binding has the same verdict on every release, cell by cell")
    lines.append("")
    headers = ["release", "check", "kind", "cell / capability", "detail"]
    for title, findings in (("Regressions", rc.regressions), ("Improvements", rc.improvements),
                            ("Capability changes (started or stopped working, or failing differently)",
                             rc.capability_changes), ("Only on one side", rc.missing)):
        if findings:
            lines += [f"{title}:", text_table(headers, _finding_rows(rc, findings)), ""]
    grid = time_grid(rc, flagged_only=not show_all) if rc.timing else pd.DataFrame()
    if len(grid):
        lines += [("Every cell" if show_all else "Flagged cells") + " across releases (µs; x ratio to "
                  f"{rc.baseline}; status):", text_table(list(grid.columns), grid.values.tolist()), ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell_text(row: dict[str, Any]) -> str:
    if row["verdict"] != OK or is_missing(row["median_us"]):
        return row["verdict"] or "—"
    text = compact(row["median_us"])
    if row["status"] != "baseline" and not is_missing(row["ratio"]):
        text += f" x{row['ratio']:.2f}"
    if row["status"] not in ("baseline", "same", "unchanged"):
        text += f" {row['status']}"
    return text


def time_grid(rc: ReleaseComparison, *, flagged_only: bool = True) -> pd.DataFrame:
    """backend, case, then one text column per release ('123 x1.21 slower'); only cells some release
    flagged unless ``flagged_only`` is False."""
    out = []
    for cell, own in rc.by_cell():
        if flagged_only and all(r["status"] in ("baseline", "same", "unchanged") for r in own.values()):
            continue
        out.append([cell["backend"], cell["case"], *[_cell_text(own[label]) if label in own else "absent"
                                                      for label in rc.labels]])
    return pd.DataFrame(out, columns=["backend", "case", *rc.labels])


def releases_summary(rc: ReleaseComparison) -> dict[str, Any]:
    """JSON-able: baseline, releases (asked for, loaded, counts), the verdict line, every regression,
    improvement, capability change and missing cell (with the release), version problems, each pairwise
    comparison's summary."""
    def listed(findings):
        return [{"release": label, **finding.as_dict()} for label, finding in findings]

    return {
        "baseline": rc.baseline, "releases": rc.release_rows(), "noise_band": NOISE_RULE if rc.timing else None,
        "timing_compared": rc.timing,
        "verdict": verdict_line(rc), "behaviour_changes": [b.as_dict() for b in rc.behaviour() if b.changed],
        "broken": [b.as_dict() for b in rc.broken], "fixed": [b.as_dict() for b in rc.fixed],
        "regressions": listed(rc.regressions), "improvements": listed(rc.improvements),
        "capability_changes": listed(rc.capability_changes), "missing": listed(rc.missing),
        "version_problems": rc.version_problems(), "failed": rc.failed, "loaded": rc.loaded(),
        "pairwise": {label: comparison.summary() for label, comparison in rc.comparisons.items()},
    }


# --- figures -----------------------------------------------------------------------------------------

def _worst_status(statuses: list[str]) -> str:
    for status in ("slower", "lost", "faster", "gained"):
        if status in statuses:
            return status
    return "same"


def release_figures(rc: ReleaseComparison) -> list[Figure]:
    """One figure, one panel per workload kind: x = the releases in order, y = each cell's time divided
    by its baseline time (log scale), a line per cell. Cells some release flagged are drawn in colour
    (red: slower or lost somewhere, green: only faster or gained) and named; the rest thin and grey.
    The grey band is the narrowest noise band (the 5 % floor); each cell's own band is in the tables. At
    the bottom, a cross marks a release where a cell stopped working, a triangle one where a cell the
    baseline could not run started working."""
    timeline = rc.timeline()
    if timeline.empty or len(rc.labels) < 2 or not rc.timing:
        return []
    kinds = [kind for kind in workload_kinds(timeline["workload"]) if kind]
    if not kinds:
        return []
    positions = list(range(len(rc.labels)))
    every_cell = rc.by_cell()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(kinds), squeeze=False, layout="constrained",
                                 figsize=(max(4.2 * len(kinds), 6.0), 4.2))
        for ax, kind in zip(axes[0], kinds):
            cells = [(cell, own) for cell, own in every_cell if cell["workload"] == kind]
            ratios_seen: list[float] = []
            ax.axhspan(1 / (1 + NOISE_FLOOR), 1 + NOISE_FLOOR, color="#e3e3e3", linewidth=0, zorder=0)
            ax.axhline(1, color="#555", linewidth=0.8, zorder=1)
            lost_marks, gained_marks = [], []
            for cell, own in cells:
                ys = np.full(len(positions), np.nan)
                for row in own.values():
                    if not is_missing(row["ratio"]):
                        ys[row["position"]] = row["ratio"]
                    elif row["status"] == "lost":
                        lost_marks.append(row["position"])
                    elif row["status"] == "gained":
                        gained_marks.append(row["position"])
                status = _worst_status([row["status"] for row in own.values()])
                ratios_seen += [y for y in ys if not np.isnan(y)]
                if status == "same":
                    ax.plot(positions, ys, color="#9a9a9a", linewidth=0.7, alpha=0.7, zorder=2)
                    continue
                color = LINE_COLORS[status]
                ax.plot(positions, ys, color=color, linewidth=1.6, marker="o", markersize=4, zorder=3)
                for row in own.values():
                    if row["status"] in ("slower", "faster"):
                        ax.scatter([row["position"]], [row["ratio"]], s=40, color=LINE_COLORS[row["status"]],
                                   edgecolors="white", linewidths=0.6, zorder=4)
                timed = [p for p in positions if not np.isnan(ys[p])]
                if timed:
                    worst = max(timed, key=lambda p: abs(np.log(ys[p])))
                    ax.annotate(f"{cell['backend']} {short_case(cell)}", (worst, ys[worst]), xytext=(5, 0),
                                textcoords="offset points", fontsize=6.5, color=color, va="center")
            low = min([*ratios_seen, 1 / (1 + NOISE_FLOOR)]) / 1.05
            high = max([*ratios_seen, 1 + NOISE_FLOOR]) * 1.05
            ax.set_yscale("log")
            ax.set_ylim(low, high)
            if lost_marks:
                ax.scatter(lost_marks, [low * 1.02] * len(lost_marks), marker="x", s=36, color=LINE_COLORS["lost"],
                           zorder=5, clip_on=False)
            if gained_marks:
                ax.scatter(gained_marks, [low * 1.02] * len(gained_marks), marker="^", s=30,
                           color=LINE_COLORS["gained"], zorder=5, clip_on=False)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2f}"))
            ax.tick_params(axis="y", which="minor", labelsize=6.5)
            ax.set_xticks(positions)
            ax.set_xticklabels([f"{label}\n(baseline)" if label == rc.baseline else label for label in rc.labels],
                               rotation=20 if len(rc.labels) > 4 else 0, ha="right" if len(rc.labels) > 4 else "center")
            ax.set_xlim(-0.3, len(positions) - 0.4)
            ax.set_title(f"{kind} ({len(cells)} cells)", loc="left")
            ax.set_ylabel(f"time / time on {rc.baseline}")
        handles = [Patch(color="#e3e3e3", label=f"±{NOISE_FLOOR:.0%} (narrowest band)"),
                   Line2D([], [], color=LINE_COLORS["slower"], marker="o", label="slower or lost on some release"),
                   Line2D([], [], color=LINE_COLORS["faster"], marker="o", label="faster or gained"),
                   Line2D([], [], color="#9a9a9a", label="within its band everywhere"),
                   Line2D([], [], color=LINE_COLORS["lost"], marker="x", linestyle="", label="stopped working"),
                   Line2D([], [], color=LINE_COLORS["gained"], marker="^", linestyle="", label="started working")]
        fig.legend(handles=handles, loc="outside upper center", ncol=6, frameon=False)
        svg = svg_of(fig, "plot-releases")
    return [Figure("plot-releases", "Each cell's time across releases",
                   f"Time divided by the cell's time on {rc.baseline}, per workload; above 1 is slower. "
                   "Coloured lines: cells outside their noise band on some release.", svg)]


# --- HTML --------------------------------------------------------------------------------------------

def build_releases_context(rc: ReleaseComparison, title: str = "") -> dict[str, Any]:
    """Everything the page shows, as plain data (figures rendered to SVG)."""
    grid_cells = [{"backend": cell["backend"], "case": cell["case"], "workload": cell["workload"],
                   "flag": _worst_status([r["status"] for r in own.values()]),
                   "releases": [own.get(label) for label in rc.labels]} for cell, own in rc.by_cell()]

    def listed(findings):
        return [{"release": label, **finding.as_dict()} for label, finding in findings]

    return {
        "title": title or f"cuDNN releases against {rc.baseline}",
        "generated_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "baseline": rc.baseline, "labels": rc.labels, "releases": rc.release_rows(), "verdict": verdict_line(rc),
        "rule": NOISE_RULE, "failed": {label: ("Incomplete" if label in rc.sets else "Not run", why)
                                       for label, why in rc.failed.items()}, "problems": rc.version_problems(), "loaded": rc.loaded(),
        "regressions": listed(rc.regressions), "improvements": listed(rc.improvements),
        "capability_changes": listed(rc.capability_changes), "missing": listed(rc.missing),
        "cells": grid_cells, "figures": release_figures(rc), "markup": Markup,
        "behaviour": rc.behaviour(), "broken": rc.broken, "measured_anything": rc.measured_anything,
        "timing": rc.timing,
    }


def render_releases_html(rc: ReleaseComparison, title: str = "") -> str:
    return environment().get_template(TEMPLATE).render(**build_releases_context(rc, title))


def render_releases(rc: ReleaseComparison, out_path: str | Path, title: str = "") -> Path:
    """Write the releases page (one self-contained HTML file) and return its path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_releases_html(rc, title), encoding="utf-8")
    return out_path


def write_summary(rc: ReleaseComparison, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(releases_summary(rc), indent=1, default=str) + "\n", encoding="utf-8")
    return out_path
