"""The capability matrix: backend x (feature, value) verdicts with their reasons, from the folder's
capability.csv (the probe's answers) or, when the folder has none, derived from the sweep's own cells
(feature = workload kind and page size of the plain cells, and each model-feature value the featured
cells ask for). One model, rendered by the HTML page and as text here; `CapabilityMatrix.groups` puts the
model features (sliding window, soft-cap, sinks, fp8 KV) under their own heading."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from reports.model import MODEL_FEATURES, OK, ResultSet, variant_features, workload_kinds
from reports.text import text_table

PARTIAL = "partial"
"""Derived matrix only: some of the backend's cells with this feature value passed, some did not."""
MODEL_FEATURE_GROUP = "model features"
"""The heading of the model-feature columns (sliding window, soft-cap, sinks, fp8 KV)."""
SYMBOLS = {"ok": "✓", "unsupported": "—", "error": "✗", "wrong": "≠", "oom": "oom", "timeout": "t/o", "skipped": "skip",
           PARTIAL: "½"}


@dataclass(frozen=True)
class Entry:
    verdict: str
    reason: str = ""
    detail: str = ""  # e.g. "3 of 4 cells ok" for a derived entry


@dataclass
class CapabilityMatrix:
    """``columns``: (feature, value) in display order; ``cells[backend][(feature, value)]``: an `Entry`."""

    backends: list[str]
    columns: list[tuple[str, str]]
    cells: dict[str, dict[tuple[str, str], Entry]]
    source: str  # "probe" (capability.csv) or "sweep" (derived from result rows)
    versions: dict[str, str] = field(default_factory=dict)

    def entry(self, backend: str, column: tuple[str, str]) -> Entry | None:
        return self.cells.get(backend, {}).get(column)

    @property
    def features(self) -> list[tuple[str, list[str]]]:
        grouped: dict[str, list[str]] = {}
        for feature, value in self.columns:
            grouped.setdefault(feature, []).append(value)
        return list(grouped.items())

    @property
    def groups(self) -> list[tuple[str, list[tuple[str, list[str]]]]]:
        """`features` under two headings: ``layout`` (page size, heads, workload, ...) and ``model
        features`` (`MODEL_FEATURES`), each heading with its features in column order (empty ones left out)."""
        layout = [(feature, values) for feature, values in self.features if feature not in MODEL_FEATURES]
        model = [(feature, values) for feature, values in self.features if feature in MODEL_FEATURES]
        return [(name, features) for name, features in (("layout", layout), (MODEL_FEATURE_GROUP, model)) if features]

    @property
    def group_spans(self) -> list[tuple[str, int]]:
        """(heading, number of columns under it) of each of `groups`."""
        return [(name, sum(len(values) for _, values in features)) for name, features in self.groups]

    def ordered_columns(self) -> list[tuple[str, str]]:
        """`columns` in `groups` order (layout first, then the model features)."""
        return [(feature, value) for _, features in self.groups for feature, values in features for value in values]

    def refusals(self) -> list[tuple[str, str, str, Entry]]:
        """Every entry that is not ok: (backend, feature, value, entry)."""
        return [(backend, feature, value, entry) for backend in self.backends
                for (feature, value), entry in self.cells.get(backend, {}).items() if entry.verdict != OK]

    def grouped_refusals(self) -> list[RefusalGroup]:
        """Refusals grouped by (backend, verdict, reason): a backend skipped everywhere is one line."""
        groups: dict[tuple[str, str, str], list[str]] = {}
        for backend, feature, value, entry in self.refusals():
            reason = entry.reason or entry.detail or "no reason recorded"
            groups.setdefault((backend, entry.verdict, reason), []).append(f"{feature}={value}")
        return [RefusalGroup(backend, verdict, reason, self._where(backend, where))
                for (backend, verdict, reason), where in groups.items()]

    def _where(self, backend: str, where: list[str]) -> str:
        """'page_size=1, page_size=8', or 'every probed feature (except dtype=fp16)' when that is shorter."""
        probed = [f"{feature}={value}" for feature, value in self.cells.get(backend, {})]
        rest = [name for name in probed if name not in where]
        if len(where) > 1 and not rest:
            return "every probed feature"
        if len(where) > 3 and len(rest) <= 3:
            return f"every probed feature except {', '.join(rest)}"
        return ", ".join(where)


@dataclass(frozen=True)
class RefusalGroup:
    """Refusals of one backend sharing verdict and reason; ``where`` lists the feature values."""

    backend: str
    verdict: str
    reason: str
    where: str


def _versions_text(text: str) -> str:
    """'{"torch": "2.11", "triton": "3.6"}' -> 'torch 2.11, triton 3.6' (other text as is)."""
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return str(text)
    if isinstance(parsed, dict):
        return ", ".join(f"{key} {value}" for key, value in parsed.items())
    return str(parsed)


def _value_order(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value.split()[0]), value)
    except (ValueError, IndexError):
        return (1, 0.0, value)


def _from_probe(frame: pd.DataFrame) -> CapabilityMatrix:
    features = list(dict.fromkeys(frame["feature"]))
    columns = []
    for feature in features:
        values = list(dict.fromkeys(frame.loc[frame["feature"] == feature, "value"]))
        numeric = all(_value_order(v)[0] == 0 for v in values)
        columns += [(feature, v) for v in (sorted(values, key=_value_order) if numeric else values)]
    cells: dict[str, dict[tuple[str, str], Entry]] = {}
    versions = {}
    for row in frame.to_dict("records"):
        cells.setdefault(row["backend"], {})[(row["feature"], row["value"])] = Entry(row["verdict"], row["reason"])
        if row.get("backend_versions") and row["backend_versions"] not in ("{}", ""):
            versions[row["backend"]] = _versions_text(row["backend_versions"])
    return CapabilityMatrix(sorted(cells), columns, cells, "probe", versions)


def _entry(match: pd.DataFrame) -> Entry:
    """The derived entry of a backend's cells sharing one feature value."""
    verdicts = match["verdict"].value_counts()
    reasons = "; ".join(r for r in dict.fromkeys(match.loc[match["verdict"] != OK, "reason"]) if r)
    detail = f"{int(verdicts.get(OK, 0))} of {len(match)} cells ok"
    if verdicts.get(OK, 0) == len(match):
        return Entry(OK, "", detail)
    if verdicts.get(OK, 0):
        return Entry(PARTIAL, reasons, detail)
    return Entry(str(verdicts.index[0]), reasons, detail)


def _from_sweep(rows: pd.DataFrame) -> CapabilityMatrix:
    """Per backend: workload kind and page size over the plain cells, then one column per model-feature
    value the featured cells ask for (``sliding_window=4096``, ``softcap=50``, ``sinks=on``,
    ``fp8_kv=per head``; a cell with two features counts under both)."""
    featured = rows["variant"].map(lambda variant: variant_features(variant))
    plain = rows[featured.map(len) == 0]
    columns = [("workload", kind) for kind in workload_kinds(plain["workload"])]
    columns += [("page_size", str(size)) for size in sorted({int(v) for v in plain["page_size"].dropna()})]
    feature_values: dict[tuple[str, str], list] = {}
    for index, found in featured.items():
        for feature, value in found.items():
            feature_values.setdefault((feature, value), []).append(index)
    feature_columns = sorted(feature_values, key=lambda column: (MODEL_FEATURES.index(column[0]),
                                                                 _value_order(column[1])))
    cells: dict[str, dict[tuple[str, str], Entry]] = {}
    for backend, own in rows.groupby("backend"):
        own_plain = own[own.index.isin(plain.index)]
        for feature, value in columns:
            match = own_plain[own_plain[feature].astype(str).str.replace(r"\.0$", "", regex=True) == value]
            if not match.empty:
                cells.setdefault(backend, {})[(feature, value)] = _entry(match)
        for column in feature_columns:
            match = own[own.index.isin(feature_values[column])]
            if not match.empty:
                cells.setdefault(backend, {})[column] = _entry(match)
    return CapabilityMatrix(sorted(cells), columns + feature_columns, cells, "sweep")


def capability_matrix(results: ResultSet) -> CapabilityMatrix:
    """The probe's matrix when the folder has capability.csv, else one derived from the result rows."""
    if len(results.capability):
        return _from_probe(results.capability)
    return _from_sweep(results.rows)


def format_capability_text(results: ResultSet | CapabilityMatrix) -> str:
    """The matrix for a terminal: one line per feature value, one column per backend (narrow even
    with many features), then every refusal with its reason."""
    matrix = results if isinstance(results, CapabilityMatrix) else capability_matrix(results)
    if not matrix.columns:
        return "Capability matrix: no entries.\n"
    rows = []
    model = dict(matrix.groups).get(MODEL_FEATURE_GROUP, [])
    first_model = (model[0][0], model[0][1][0]) if model else None
    for column in matrix.ordered_columns():
        if column == first_model and len(rows):
            rows.append([f"-- {MODEL_FEATURE_GROUP} --"] + [""] * len(matrix.backends))
        line = [f"{column[0]}={column[1]}"]
        for backend in matrix.backends:
            entry = matrix.entry(backend, column)
            line.append("" if entry is None else SYMBOLS.get(entry.verdict, entry.verdict))
        rows.append(line)
    source = "capability probe" if matrix.source == "probe" else "derived from the sweep's cells"
    legend = ", ".join(f"{symbol} {verdict}" for verdict, symbol in SYMBOLS.items() if symbol != verdict)
    lines = [f"Capability matrix ({source}); {legend}", text_table(["feature", *matrix.backends], rows), ""]
    refusals = matrix.grouped_refusals()
    if refusals:
        lines += ["Refusals and failures:",
                  text_table(["backend", "verdict", "where", "reason"],
                             [[g.backend, g.verdict, g.where, g.reason] for g in refusals]), ""]
    return "\n".join(lines)
