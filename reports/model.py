"""The report's one model: a results folder read into pandas DataFrames.

A results folder holds (written by the harness; this module only reads):

    results.jsonl     one tidy row per line, keys = harness.measure.results.COLUMNS
    runs.jsonl        one object per run: run_id, env_id, provenance (harness.measure.provenance.collect()),
                      ceilings ({matmul_bf16_tflops, copy_tbps, gpu} or null), sweep, argv, started_at
    capability.csv    optional: backend, feature, value, verdict, reason, rel_l2, backend_versions, device

A trailing partial line (a run that was stopped mid-write) and any other unparsable line are skipped
and reported in ``ResultSet.warnings`` (how many, which line numbers); when several rows share a
cell_id (a resumed or repeated run) the last one wins.
Every renderer (HTML, text, CSV, comparison) starts from a `ResultSet` and nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from records.schema import CAPABILITY_COLUMNS, CAPABILITY_FILE, COLUMNS, RESULTS_FILE, RUNS_FILE, WARMUP_DIR
from records.store import ResultStore
RUN_COLUMNS: list[str] = ["run_id", "env_id", "provenance", "ceilings", "sweep", "argv", "started_at"]

NUMERIC_COLUMNS: list[str] = [
    "batch_size", "q_len", "context", "page_size", "num_q_heads", "num_kv_heads", "head_dim", "seed", "total_q",
    "total_kv", "rel_l2", "max_abs", "median_us", "q1_us", "q3_us", "min_us", "max_us", "iqr_pct", "reps", "flops",
    "bytes", "tflops", "tbps", "pct_matmul_ceiling", "pct_copy_ceiling", "setup_s", "inputs_s", "cell_s", "host_us", "lse_max_abs",
]
WORKLOAD_ORDER: tuple[str, ...] = ("decode", "spec-decode", "prefill", "mixed")
OK = "ok"
SKIPPED = "skipped"
ERROR = "error"
NOT_HERE_WORDS: tuple[str, ...] = (
    "Unable to find symbol", "cannot open shared object file", "No module named", "runs on CUDA devices only",
    "CUDA is not available", "not loadable here")
"""Words of an error that says the backend cannot run on this machine at all (its library or device is
missing, e.g. nvidia-cudnn-frontend without the cuDNN library: "Unable to find symbol cudnnGetVersion"):
such a cell is shown as skipped (not available here), not as a failure of the backend."""
CPU_SMOKE_NOTE = (
    "These results were measured on a CPU: they are a smoke test of the pipeline (Triton's interpreter, JAX and "
    "torch on the host), not a measurement of the backends. CPU timings swing by two orders of magnitude between "
    "runs, so no winners, margins, speed-ups or regressions are named from them.")
"""What every report of a CPU run says at its top (one text for the page and the terminal)."""


def rows_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Tidy rows as a DataFrame: every column of COLUMNS (missing ones None) in that order, any extra
    columns after them, numbers as numbers, one row per cell_id (the last one wins)."""
    frame = pd.DataFrame(list(records))
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    extras = [column for column in frame.columns if column not in COLUMNS]
    frame = frame[COLUMNS + extras]
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["causal"] = frame["causal"].map(lambda value: None if value is None else bool(value))
    for column in ("reason", "entry_point", "config", "backend_versions", "method", "l2_policy", "env_id",
                   "run_id", "device", "workload", "verdict", "backend", "case", "lse_note", "reproducer", "variant"):
        frame[column] = frame[column].where(frame[column].notna(), "").astype(str)
    if len(frame):
        keyed = frame["cell_id"].notna() & (frame["cell_id"].astype(str) != "")
        frame = pd.concat([frame[keyed].drop_duplicates("cell_id", keep="last"), frame[~keyed]])
        frame = frame.reset_index(drop=True)
    return frame


def runs_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(records))
    for column in RUN_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame["provenance"] = frame["provenance"].map(lambda value: value if isinstance(value, dict) else {})
    frame["ceilings"] = frame["ceilings"].map(lambda value: value if isinstance(value, dict) else None)
    return frame[RUN_COLUMNS + [column for column in frame.columns if column not in RUN_COLUMNS]]


def capability_frame(records: pd.DataFrame | Iterable[dict[str, Any]] | None) -> pd.DataFrame:
    """Capability rows with CAPABILITY_COLUMNS first (files written before the column was renamed call
    it ``versions``: read as ``backend_versions``); one row per (backend, feature, value), the last wins."""
    frame = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records or []))
    if "backend_versions" not in frame.columns and "versions" in frame.columns:
        frame = frame.rename(columns={"versions": "backend_versions"})
    for column in CAPABILITY_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in ("backend", "feature", "value", "verdict", "reason", "backend_versions", "device", "case", "lse_note"):
        frame[column] = frame[column].where(frame[column].notna(), "").astype(str)
    for column in ("rel_l2", "max_abs", "lse_max_abs"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if len(frame):
        frame = frame.drop_duplicates(["backend", "feature", "value"], keep="last").reset_index(drop=True)
    return frame[CAPABILITY_COLUMNS + [column for column in frame.columns if column not in CAPABILITY_COLUMNS]]


def _read_capability(path: Path) -> pd.DataFrame:
    if not path.exists():
        return capability_frame(None)
    try:
        return capability_frame(pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="skip"))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return capability_frame(None)


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"packages": {"torch": "2.11"}}`` -> ``{"packages.torch": "2.11"}``. A list of records that each
    name a backend becomes one field per backend (``availability.cudnn`` = 'available=no, reason=...');
    other lists are JSON-encoded."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) and "backend" in v for v in value):
            for item in value:
                flat[f"{name}.{item['backend']}"] = ", ".join(f"{k}={v}" for k, v in item.items()
                                                             if k != "backend" and v not in ("", None))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


# --- model features, read from the case's variant --------------------------------------------------
MODEL_FEATURES: tuple[str, ...] = ("sliding_window", "softcap", "sinks", "fp8_kv")
"""The model features (adapters.features.FEATURES, which this torch-free, adapter-free layer cannot
import; tests/test_feature_reports.py checks that the two agree), in the order case names list them."""
MODEL_FEATURE_WORDS: dict[str, str] = {"sliding_window": "sliding window", "softcap": "soft-cap", "sinks": "sinks",
                                       "fp8_kv": "fp8 KV cache"}
"""Each feature in a few words, for column heads and legends."""
_VARIANT_TOKEN = re.compile(r"cap\d[\d.]*(?:e[+-]?\d+)?|[^-]+")
"""One part of a variant (``h16x8d256``, ``w4096``, ``cap50``, ``cap1e-05``: a cap may hold a minus)."""
_FEATURE_PARTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sliding_window", re.compile(r"w(\d+)")), ("softcap", re.compile(r"cap(\d[\d.]*(?:e[+-]?\d+)?)")),
    ("sinks", re.compile(r"sinks")), ("fp8_kv", re.compile(r"kv(fp8)(h?)")))
"""How harness.cases.sweep names each feature in a case's variant suffix: ``-w{W}``, ``-cap{c}``, ``-sinks``,
``-kvfp8`` (``-kvfp8h`` with per-head scales); they come last, after the heads, dtype, causality, pool
and seed parts."""


def _feature_of(part: str) -> tuple[str, str] | None:
    """(feature, value in words) of one variant part, or None when the part names no model feature."""
    for feature, pattern in _FEATURE_PARTS:
        match = pattern.fullmatch(part)
        if match:
            if feature == "sliding_window":
                return feature, match.group(1)
            if feature == "softcap":
                return feature, match.group(1)
            if feature == "sinks":
                return feature, "on"
            return feature, "per head" if match.group(2) else "per tensor"
    return None


def split_variant(variant: Any) -> tuple[str, tuple[str, ...]]:
    """(the variant without its model features, the feature parts): ``"h16x8d256-cap50"`` ->
    ``("h16x8d256", ("cap50",))``, ``"w128-sinks"`` -> ``("", ("w128", "sinks"))``, ``"fp16"`` -> ``("fp16", ())``."""
    parts = _VARIANT_TOKEN.findall(variant if isinstance(variant, str) else "")
    end = len(parts)
    while end and _feature_of(parts[end - 1]) is not None:
        end -= 1
    return "-".join(parts[:end]), tuple(parts[end:])


def variant_features(variant: Any) -> dict[str, str]:
    """The model features a variant names, in `MODEL_FEATURES` order, each with its value in words:
    ``"h64x8d64-w128-sinks"`` -> ``{"sliding_window": "128", "sinks": "on"}``; empty for plain attention."""
    found = dict(_feature_of(part) for part in split_variant(variant)[1])
    return {feature: found[feature] for feature in MODEL_FEATURES if feature in found}


def features_text(variant: Any) -> str:
    """A variant's model features in words: ``"window 4096, soft-cap 50, sinks, fp8 KV (per-head scales)"``."""
    words = []
    for feature, value in variant_features(variant).items():
        words.append({"sliding_window": f"window {value}", "softcap": f"soft-cap {value}", "sinks": "sinks",
                      "fp8_kv": f"fp8 KV ({value.replace(' ', '-')} scales)"}[feature])
    return ", ".join(words)


def plain_twin(case: str, variant: Any) -> str:
    """The name of a featured case's plain twin (the same case without its model features: the name
    without their suffix), or "" for a case without features."""
    parts = split_variant(variant)[1]
    suffix = "-" + "-".join(parts) if parts else ""
    return case[: -len(suffix)] if suffix and str(case).endswith(suffix) else ""


def workload_kinds(kinds: Iterable[Any]) -> list[str]:
    """The distinct workload kinds in display order: those of `WORKLOAD_ORDER` first, then any other
    (a kind added after this report was written) by name, so every renderer can place every kind."""
    present = {str(kind) for kind in kinds if isinstance(kind, str) and kind}
    return [kind for kind in WORKLOAD_ORDER if kind in present] + sorted(present - set(WORKLOAD_ORDER))


def workload_rank(kinds: pd.Series) -> pd.Series:
    """Each row's position in `workload_kinds` order, for sorting rows by kind (never NaN, never an error)."""
    order = {kind: index for index, kind in enumerate(workload_kinds(kinds))}
    return kinds.map(lambda kind: order.get(kind, len(order)))


def cannot_run_here(reason: str) -> bool:
    """True when an error's text says the backend cannot run on this machine (`NOT_HERE_WORDS`)."""
    return any(words in str(reason) for words in NOT_HERE_WORDS)


def _available_no(record: dict[str, Any]) -> bool:
    return str(record.get("available", "")).lower() in ("no", "false")


def not_here_rows(rows: pd.DataFrame, availability: dict[str, dict[str, Any]]) -> pd.Series:
    """Error rows of backends that could not run here: their runs recorded them unavailable, or the
    error's words say the library or device is missing (`cannot_run_here`)."""
    unavailable = {backend for backend, record in availability.items() if _available_no(record)}
    return (rows["verdict"] == ERROR) & (rows["backend"].isin(unavailable) | rows["reason"].map(cannot_run_here))


def _sort_key(frame: pd.DataFrame) -> pd.Series:
    return workload_rank(frame["workload"])


@dataclass
class ResultSet:
    """One results folder: ``rows`` (COLUMNS, one per cell), ``runs`` (RUN_COLUMNS; provenance and
    ceilings as dicts) and ``capability`` (CAPABILITY_COLUMNS, empty when the folder has none)."""

    rows: pd.DataFrame
    runs: pd.DataFrame = field(default_factory=lambda: runs_frame([]))
    capability: pd.DataFrame = field(default_factory=lambda: capability_frame(None))
    warmup: pd.DataFrame = field(default_factory=lambda: rows_frame([]))
    """The compile warm-up's gate-only rows (``warmup/``), empty when the run had none: their ``setup_s`` are
    the compiles on a cold cache that the sweep's rows no longer show."""
    source: Path | None = None
    name: str = ""
    warnings: list[str] = field(default_factory=list)
    """What reading the folder could not take in (unreadable lines, with their numbers)."""

    def __post_init__(self) -> None:
        """Error cells of a backend that cannot run here become skipped, with the reason (`not_here_rows`)."""
        if len(self.rows):
            mask = not_here_rows(self.rows, self.availability())
            if mask.any():
                self.rows = self.rows.copy()
                availability = self.availability()
                self.rows.loc[mask, "reason"] = [
                    f"not available here: {reason or availability.get(backend, {}).get('reason', '')}"
                    for backend, reason in zip(self.rows.loc[mask, "backend"], self.rows.loc[mask, "reason"])]
                self.rows.loc[mask, "verdict"] = SKIPPED

    @property
    def measured_on_cpu(self) -> bool:
        """True when these results hold no GPU measurement: every row names a CPU device, or (rows naming
        none) every run's provenance says it had no GPU. Their timings are a smoke test (`CPU_SMOKE_NOTE`)."""
        devices = {str(device) for device in self.rows["device"] if device}
        if devices:
            return not any(device.startswith("cuda") for device in devices)
        records = [record for record in self.runs["provenance"] if record]
        return bool(records) and all(not record.get("gpu_count") and str(record.get("gpu") or "none").lower()
                                     in ("none", "cpu") for record in records)

    @classmethod
    def from_records(cls, rows: Iterable[dict[str, Any]], runs: Iterable[dict[str, Any]] = (),
                     capability: Iterable[dict[str, Any]] | pd.DataFrame | None = None,
                     name: str = "") -> "ResultSet":
        return cls(rows=rows_frame(rows), runs=runs_frame(runs), capability=capability_frame(capability), name=name)

    # --- what the set contains -------------------------------------------------------------
    @property
    def label(self) -> str:
        """A short name: the environment label of its runs if set, else the folder name, else the env ids."""
        if self.name:
            return self.name
        labels = sorted({str(p.get("env_label")) for p in self.runs["provenance"] if p.get("env_label")})
        if labels:
            return ", ".join(labels)
        if self.source is not None:
            return self.source.name
        return ", ".join(sorted(set(self.rows["env_id"]) - {""})) or "results"

    @property
    def backends(self) -> list[str]:
        return sorted((set(self.rows["backend"]) | set(self.capability["backend"])) - {""})

    @property
    def featured(self) -> pd.Series:
        """Per row: whether its case asks for a model feature (`variant_features`)."""
        return self.rows["variant"].map(lambda variant: bool(split_variant(variant)[1])).astype(bool)

    @property
    def feature_rows(self) -> pd.DataFrame:
        """Rows of cases with model features (sliding window, soft-cap, sinks, fp8 KV): the report shows
        them as their own group, each beside its plain twin, never in the plain cells' curves."""
        return self.rows[self.featured]

    @property
    def plain_rows(self) -> pd.DataFrame:
        """Rows of cases without model features."""
        return self.rows[~self.featured]

    @property
    def main_variant(self) -> str:
        """The variant most plain cells share (the standard layer in a default sweep): the curves and heat
        maps show these cells; the others (other heads, dtypes, pools) are shown beside them, and cells
        with model features in their own group."""
        counts = self.plain_rows["variant"].value_counts()
        return str(counts.index[0]) if len(counts) else ""

    @property
    def variant_rows(self) -> pd.DataFrame:
        """Rows of plain cases that are not of the main variant (model-feature rows: `feature_rows`)."""
        plain = self.plain_rows
        return plain[plain["variant"] != self.main_variant]

    @property
    def ok_rows(self) -> pd.DataFrame:
        return self.rows[(self.rows["verdict"] == OK) & self.rows["median_us"].notna()]

    def sorted_rows(self) -> pd.DataFrame:
        """Rows ordered by workload kind, page size, batch size, q_len, context, backend."""
        rows = self.rows.assign(_kind=_sort_key(self.rows))
        rows = rows.sort_values(["_kind", "page_size", "batch_size", "q_len", "context", "case", "backend"])
        return rows.drop(columns="_kind")

    def verdict_counts(self) -> pd.DataFrame:
        """Backends x verdicts: how many cells each backend got of each verdict."""
        counts = pd.crosstab(self.rows["backend"], self.rows["verdict"]) if len(self.rows) else pd.DataFrame()
        ordered = [v for v in ("ok", "unsupported", "wrong", "error", "oom", "timeout", "skipped") if v in counts]
        return counts[ordered + [v for v in counts.columns if v not in ordered]]

    def skipped_backends(self) -> dict[str, str]:
        """Backends none of whose cells ran, with the reason(s) their rows give."""
        skipped = {}
        for backend, rows in self.rows.groupby("backend"):
            if (rows["verdict"] == SKIPPED).all():
                reasons = [r for r in dict.fromkeys(rows["reason"]) if r]
                skipped[backend] = "; ".join(reasons) or "no reason recorded"
        return skipped

    # --- where the numbers came from ---------------------------------------------------------
    def ceilings(self) -> dict[str, Any] | None:
        """The machine ceilings of the set's runs (the last run that recorded them)."""
        recorded = [c for c in self.runs["ceilings"] if isinstance(c, dict) and c]
        return recorded[-1] if recorded else None

    def provenance_records(self) -> list[dict[str, Any]]:
        """One flat dict per run: run fields, ``ceilings.*`` and every provenance field (``packages.*`` flattened)."""
        records = []
        for run in self.runs.to_dict("records"):
            record = {"run_id": run.get("run_id"), "env_id": run.get("env_id"), "sweep": run.get("sweep"),
                      "started_at": run.get("started_at"),
                      "argv": " ".join(map(str, run["argv"])) if isinstance(run.get("argv"), list) else run.get("argv")}
            record.update(flatten(run.get("ceilings") or {}, "ceilings."))
            record.update(flatten(run.get("provenance") or {}))
            records.append({key: value for key, value in record.items() if value is not None})
        return records

    def availability(self) -> dict[str, dict[str, Any]]:
        """Per backend, the availability record its runs stored (``runs.jsonl`` key ``availability``, a list
        of {backend, available, reason, ...}); the last run wins. Empty when runs recorded none."""
        found: dict[str, dict[str, Any]] = {}
        if "availability" in self.runs.columns:
            for records in self.runs["availability"]:
                if isinstance(records, list):
                    found.update({r["backend"]: r for r in records if isinstance(r, dict) and "backend" in r})
        return found

    def declarations(self) -> dict[str, dict[str, Any]]:
        """Per backend, what its adapter declared when these results were measured (baseline, colour,
        Q layout, whether it takes part in sweeps): the ``availability`` records of the runs."""
        keys = ("in_sweep", "baseline", "color", "q_layout")
        return {backend: {key: record[key] for key in keys if key in record}
                for backend, record in self.availability().items()}

    def backend_versions(self) -> dict[str, dict[str, str]]:
        """Per backend, each version key with the distinct values its rows recorded ('a | b' if several)."""
        versions: dict[str, dict[str, list[str]]] = {}
        for backend, text in zip(self.rows["backend"], self.rows["backend_versions"]):
            try:
                parsed = json.loads(text) if text else {}
            except json.JSONDecodeError:
                parsed = {"unparsed": text}
            for key, value in flatten(parsed if isinstance(parsed, dict) else {}).items():
                seen = versions.setdefault(backend, {}).setdefault(key, [])
                if str(value) not in seen:
                    seen.append(str(value))
        return {backend: {key: " | ".join(values) for key, values in keys.items()}
                for backend, keys in sorted(versions.items())}


def load_results(path: str | Path, name: str = "") -> ResultSet:
    """Read a results folder (or the path of its results.jsonl) into a `ResultSet`."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no results folder at {folder}")
    if not (folder / RESULTS_FILE).exists():
        raise FileNotFoundError(f"{folder} has no {RESULTS_FILE}: not a results folder")
    store = ResultStore(folder)  # its reader takes the writers' lock and skips unreadable lines
    rows, runs = store.read_rows(), store.read_runs()
    warnings = [f"{folder / name}: skipped {len(lines)} unreadable line{'s' if len(lines) > 1 else ''} "
                f"(line{'s' if len(lines) > 1 else ''} {_line_list(lines)})"
                for name, lines in ((RESULTS_FILE, store.skipped_results), (RUNS_FILE, store.skipped_runs)) if lines]
    warmup = ResultStore(folder / WARMUP_DIR).read_rows() if (folder / WARMUP_DIR / RESULTS_FILE).exists() else []
    return ResultSet(rows=rows_frame(rows), runs=runs_frame(runs), capability=_read_capability(folder / CAPABILITY_FILE),
                     warmup=rows_frame(warmup), source=folder, name=name, warnings=warnings)


def _line_list(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


# --- shards of one sweep (`paged-bench run --shard I/N`) ---------------------------------------------
SHARD_KEY = "shard"
"""The runs.jsonl key of a shard's record (written by harness.cases.shard, `RECORD_KEY`): index, count,
selection (a hash of the whole selection), cases (how many the selection has), source."""


def shard_records(results: ResultSet) -> list[dict[str, Any]]:
    """The shard record of each of the set's runs (None for a run that was not a shard)."""
    if SHARD_KEY not in results.runs.columns:
        return [None] * len(results.runs)  # type: ignore[list-item]
    return [record if isinstance(record, dict) else None for record in results.runs[SHARD_KEY]]


def shard_plan(sets: Sequence[ResultSet]) -> tuple[dict[str, Any], list[set[int]]] | None:
    """(the common shard record, each set's shard indices) when every run of every set is a shard of one
    selection and count and no index is in two sets; None otherwise (they are compared as machines)."""
    records = [shard_records(results) for results in sets]
    if not all(records) or any(record is None for found in records for record in found):
        return None
    first = records[0][0]
    if any((r.get("selection"), r.get("count")) != (first.get("selection"), first.get("count"))
           for found in records for r in found):
        return None
    indices = [{int(r["index"]) for r in found} for found in records]
    if sum(map(len, indices)) != len(set().union(*indices)):
        return None
    return first, indices


def shard_note(record: dict[str, Any], present: set[int], sweep: str) -> str:
    """Which shards of the sweep are merged and which are missing (shards with no case are not missing)."""
    count, cases = int(record["count"]), int(record.get("cases") or record["count"])
    missing = [index for index in range(1, count + 1) if index not in present and index <= cases]
    text = f"merged shards {', '.join(f'{i}/{count}' for i in sorted(present))} of sweep '{sweep}'"
    if missing:
        return text + f"; missing: {', '.join(f'{i}/{count}' for i in missing)} (their cells are absent)"
    return text + f" (all {min(count, cases)} shard(s) with cells present)"


def merge_shards(sets: Sequence[ResultSet]) -> ResultSet | None:
    """One `ResultSet` of the shard folders of one sweep (`shard_plan`), its first warning saying which
    shards are present and which are missing; None when the sets are not shards of one sweep."""
    plan = shard_plan(sets)
    if plan is None:
        return None
    record, indices = plan
    runs = pd.concat([results.runs for results in sets], ignore_index=True)
    sweeps = [str(sweep) for sweep in dict.fromkeys(runs["sweep"]) if sweep]
    sweep = ", ".join(sweeps) or "?"
    note = shard_note(record, set().union(*indices), sweep)
    rows = pd.concat([results.rows for results in sets], ignore_index=True)
    capability = pd.concat([results.capability for results in sets], ignore_index=True)
    warmup = pd.concat([results.warmup for results in sets], ignore_index=True)
    return ResultSet(rows=rows_frame(rows.to_dict("records")), runs=runs_frame(runs.to_dict("records")),
                     capability=capability_frame(capability), warmup=rows_frame(warmup.to_dict("records")),
                     name=f"{sweep} ({int(record['count'])} shards)",
                     warnings=[note] + [warning for results in sets for warning in results.warnings])
