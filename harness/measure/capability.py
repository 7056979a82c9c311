"""The capability matrix: every adapter (probe-only variants included) through the correctness gate
on a small base case, varying one layout feature or model feature (sliding window, soft-cap, sinks,
fp8 KV cache) at a time.

`FEATURES` is the one list of what is probed: (feature, value, overrides of the base case). The base case
is `BASE_GRAMMAR` with `BASE_FIELDS`. Each (backend, feature row) is a cell of the one measuring pipeline:
a `harness.cases.sweep.Case` named ``probe-...`` (`probe_case`), measured by
`harness.measure.runner.run_cells` in isolated workers with the sweep's time limit (``--cell-timeout``),
resume, store and ``--gpus`` workers, gate only (a probe cell is never timed). Its rows are kept in
``<out>/probe/results.jsonl`` (`PROBE_DIR`), apart from the sweep's; the matrix (`CAPABILITY_COLUMNS`) is
derived from them (`derive_matrix`) and written atomically to ``<out>/capability.csv``.

The cells run in two rounds: first the page-size rows; then the other rows, at the base page size, or,
for a backend that cannot run it (flash-attn 2: multiples of 256 only), at the smallest page size it
passed, so its matrix says more than "page size" on every row; the row's ``case`` column names the exact
case. An adapter that declares Q another way than the canonical packed rows (``q_layout``, e.g. cuDNN
with a T-row Q) answers its ``q_layout`` row only; every other adapter, the bindings left out of the
default sweep included (e.g. cuDNN's packed Stats or 64-bit offsets), answers every feature. The ``lse``
row is the base case's cell, `unsupported` when the backend returned no log-sum-exp there. The cell's
own memory check (`harness.measure.cell`) makes a case that cannot fit `oom` before anything is allocated, and
a worker keeps one case's batch at a time, so the large pool row holds one large batch at a time. On the
CPU that row is `skipped` (`CPU_NOT_HERE`: 16 GiB of host memory per cell).

    paged-bench capability [--device cuda] [--out DIR] [--backends a,b] [--features page_size,lse]
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from adapters.base import THD
from adapters.batch import BatchSpec
from harness.cases.sweep import PROBE_CASE_PREFIX, Case, Cell, cell_id, make_case
from records.schema import CAPABILITY_COLUMNS, CAPABILITY_FILE, PROBE_DIR  # noqa: F401 (PROBE_DIR re-exported)

BASE_GRAMMAR = "2q1c100_2q37c60"
"""Mixed: two decodes with 100 tokens of context, two 37-token prefills after 60 tokens of context."""
BASE_FIELDS: dict[str, Any] = dict(page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="bf16",
                                   causal=True, seed=0)
T_ROW = "T-row"

LARGE_POOL_GIB = 16.0
"""The large pool row: 16 GiB of K and V cache, so each cache holds 2^32 elements in bf16 (twice the
2^31 where int32 element offsets overflow). The batch's pages are scattered over the whole pool, so
most of them lie past element 2^31 (tests/test_pool.py checks the page ids). It fits a 40 GB GPU: the
fp32 reference gathers only the sequences' own pages, and a worker keeps one case's batch at a time."""
LARGE_POOL = ">2^31 elements"

WINDOW = 32
"""The sliding-window row's window: fewer keys than any sequence of the base case sees (100 and 60..96),
so the window hides most of each row's keys (the output moves by ~0.8 in relative L2)."""
SOFTCAP = 2.0
"""The soft-cap row's cap. The base case's scores are N(0, 0.8)-like (|s| up to ~4): Gemma 2's cap of 50
moves the output by ~0.2 % in relative L2, inside the bf16 gate (1 %), so a backend ignoring it would
pass; a cap of 2 sits in tanh's curved part for every score and moves the output by ~47 %, so ignoring
the cap, or capping the unscaled scores, is `wrong`."""
SINKS = "per-head logit"
"""The sinks row's value: one learned logit per query head (`adapters.features`)."""

FEATURES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("page_size", "1", {"page_size": 1}),
    ("page_size", "8", {"page_size": 8}),
    ("page_size", "16", {"page_size": 16}),
    ("page_size", "64", {"page_size": 64}),
    ("page_size", "128", {"page_size": 128}),
    ("page_size", "256", {"page_size": 256}),
    ("head_dim", "64", {"head_dim": 64}),
    ("head_dim", "128", {"head_dim": 128}),
    ("head_dim", "256", {"head_dim": 256}),
    ("gqa", "1:1", {"num_q_heads": 8, "num_kv_heads": 8}),
    ("gqa", "4:1", {"num_q_heads": 8, "num_kv_heads": 2}),
    ("gqa", "8:1", {"num_q_heads": 16, "num_kv_heads": 2}),
    ("gqa", "MQA", {"num_q_heads": 8, "num_kv_heads": 1}),
    ("causal", "causal", {"causal": True}),
    ("causal", "non-causal", {"causal": False}),
    ("kind", "decode", {"grammar": "4q1c200"}),
    ("kind", "prefill", {"grammar": "2q128c0_2q60c40"}),
    ("kind", "mixed", {"grammar": BASE_GRAMMAR}),
    ("dtype", "bf16", {"dtype": "bf16"}),
    ("dtype", "fp16", {"dtype": "fp16"}),
    ("q_layout", THD, {}),
    ("q_layout", T_ROW, {}),
    ("lse", "returned", {}),
    ("pool", "default", {}),
    ("pool", LARGE_POOL, {"pool_gib": LARGE_POOL_GIB}),
    ("sliding_window", str(WINDOW), {"sliding_window": WINDOW}),
    ("softcap", f"{SOFTCAP:g}", {"softcap": SOFTCAP}),
    ("sinks", SINKS, {"sinks": True}),
    ("fp8_kv", "per tensor", {"kv_dtype": "fp8", "kv_scale": "tensor"}),
    ("fp8_kv", "per head", {"kv_dtype": "fp8", "kv_scale": "head"}),
)
"""(feature, value, overrides): each row changes the base case by its overrides only. ``grammar``
replaces the batch string; ``q_layout`` is how the adapter declares Q (`Adapter.q_layout`) and
selects the adapters that answer the row; ``lse`` says whether the backend returns the softmax
log-sum-exp on the base case (`unsupported` with its reason when it does not); ``pool`` is the page pool (default: the batch's pages plus
25%; `LARGE_POOL`: each cache holds more than 2^31 elements, where 32-bit offsets overflow). The model
features (`adapters.features`, named as there) come last, one row per variant: a sliding window of
`WINDOW` keys, a soft-cap of `SOFTCAP`, sink logits, and an fp8 e4m3 cache with per-tensor or per-head
scales; a row that lacks one answers `unsupported` with the reason its adapter gives."""

COLUMNS = tuple(CAPABILITY_COLUMNS)
REASON_CHARS = 300

Feature = tuple[str, str, dict[str, Any]]


def probe_case(overrides: dict[str, Any], page_size: int | None = None) -> Case:
    """The probe cell's case: the base case with ``overrides`` applied (``page_size`` replaces the base
    page size unless the overrides set one), named ``probe-<grammar>-p<page><suffix>`` where the suffix
    names what differs from the base case (`harness.cases.sweep.make_case`)."""
    base = {k: v for k, v in BASE_FIELDS.items() if k != "page_size"}
    fields = dict(base)
    page = BASE_FIELDS["page_size"] if page_size is None else page_size
    for key, value in overrides.items():
        if key == "page_size":
            page = value
        elif key != "grammar":
            fields[key] = value
    grammar = overrides.get("grammar", BASE_GRAMMAR)
    return make_case(f"{PROBE_CASE_PREFIX}{grammar}", grammar, int(page), base=base, **fields)


def case_spec(overrides: dict[str, Any], page_size: int | None = None) -> BatchSpec:
    """The `BatchSpec` of `probe_case` (``page_size`` replaces the base page size unless the overrides set one)."""
    return probe_case(overrides, page_size).spec()


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """The first meaningful line of an error text, whitespace collapsed, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def rows_for(adapter: Any, features: Iterable[Feature]) -> list[Feature]:
    """The feature rows one adapter (or adapter class) answers: its own ``q_layout`` row, and every other
    feature unless it declares Q another way than the canonical rows (then that one row says whether
    the form works)."""
    layout = getattr(adapter, "q_layout", THD)
    rows = []
    for feature, value, overrides in features:
        if feature == "q_layout":
            if value == layout:
                rows.append((feature, value, overrides))
        elif layout == THD:
            rows.append((feature, value, overrides))
    return rows


_rows_for = rows_for  # the name tests and older callers use


def with_probe_variants(backends: list[str]) -> list[str]:
    """The backends and the probe-only variants of them (e.g. a layout users try that the backend
    refuses), so that a probe of one backend answers its variants' rows too."""
    from adapters.base import adapter_classes

    classes = adapter_classes()
    chosen = [classes[name] for name in backends if name in classes]
    variants = [name for name, cls in classes.items()
                if not cls.in_sweep and name not in backends and any(issubclass(cls, base) for base in chosen)]
    return [*backends, *variants]


def select_features(names: Iterable[str] | None, features: tuple[Feature, ...] = FEATURES) -> tuple[Feature, ...]:
    """The rows of ``features`` whose feature is named (``page_size``) or whose ``feature=value`` is
    (``kind=decode``); all of them for None. Raises ValueError naming an unknown one."""
    if names is None:
        return features
    wanted = [name.strip() for name in names if name.strip()]
    known = {f for f, _, _ in features} | {f"{f}={v}" for f, v, _ in features}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(dict.fromkeys(f for f, _, _ in features))} (or feature=value)")
    return tuple(f for f in features if f[0] in wanted or f"{f[0]}={f[1]}" in wanted)


# --- the two rounds of cells ---------------------------------------------------------------------------

MeasureCells = Callable[[list[Cell]], list[dict[str, Any]]]


def page_cells(layouts: dict[str, str], features: Iterable[Feature]) -> list[Cell]:
    """Round one: every backend's page-size rows (``layouts``: backend name -> its ``q_layout``)."""
    features = tuple(features)
    return [Cell(name, probe_case(overrides)) for name, layout in layouts.items()
            for feature, _, overrides in rows_for(_Layout(layout), features) if feature == "page_size"]


class _Layout:
    def __init__(self, q_layout: str):
        self.q_layout = q_layout


def _passed(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("verdict") == "ok"


def base_page(name: str, layout: str, features: Iterable[Feature], recorded: dict[str, dict[str, Any]]) -> int:
    """The page size a backend's other rows run at: the base page size if it passed it (or has no page
    rows), else the smallest page size it passed, else the base page size."""
    page = BASE_FIELDS["page_size"]
    page_rows = [overrides for feature, _, overrides in rows_for(_Layout(layout), features) if feature == "page_size"]
    passed = sorted(int(overrides["page_size"]) for overrides in page_rows
                    if _passed(recorded.get(cell_id(name, probe_case(overrides)))))
    if page_rows and page not in passed and passed:
        page = passed[0]
    return page


def feature_cells(layouts: dict[str, str], features: Iterable[Feature], pages: dict[str, int],
                  not_here: dict[tuple[str, str], str] | None = None) -> list[Cell]:
    """Round two: every backend's other rows, at its base page size (``pages``), but the rows of ``not_here``."""
    features = tuple(features)
    return [Cell(name, probe_case(overrides, page_size=pages[name])) for name, layout in layouts.items()
            for feature, value, overrides in rows_for(_Layout(layout), features)
            if feature != "page_size" and (feature, value) not in (not_here or {})]


CPU_NOT_HERE: dict[tuple[str, str], str] = {
    ("pool", LARGE_POOL): f"the {LARGE_POOL_GIB:g} GiB pool row is probed on GPUs only (on the CPU its caches "
                          "would fill host memory for minutes)"}
"""Rows a CPU probe does not measure (answered `skipped` with this reason)."""


def plan_cells(layouts: dict[str, str], features: Iterable[Feature],
               recorded: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, Case]]:
    """(backend, feature, value, case) of every matrix row, given round one's rows (``recorded`` by cell id)."""
    features = tuple(features)
    out = []
    for name, layout in layouts.items():
        page = base_page(name, layout, features, recorded)
        for feature, value, overrides in rows_for(_Layout(layout), features):
            case = probe_case(overrides) if feature == "page_size" else probe_case(overrides, page_size=page)
            out.append((name, feature, value, case))
    return out


# --- the matrix from the probe's rows ------------------------------------------------------------------

def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def _versions(text: Any) -> str:
    try:
        versions = json.loads(text) if text else {}
    except (TypeError, ValueError):
        versions = {}
    if not isinstance(versions, dict):
        versions = {}
    if "error" in versions:
        versions["error"] = one_line(versions["error"], 120)
    return json.dumps(versions, sort_keys=True)


def matrix_row(backend: str, feature: str, value: str, case: Case, row: dict[str, Any] | None,
               versions: str, device: str) -> dict[str, Any]:
    """One `COLUMNS` row from the probe cell's result row (None: the cell has no row, e.g. the run stopped)."""
    if row is None:
        row = {"verdict": "error", "reason": "the probe cell has no result (the run stopped before it)"}
    verdict, reason = row.get("verdict") or "error", _text(row.get("reason"))
    lse_max_abs, lse_note = _number(row.get("lse_max_abs")), _text(row.get("lse_note"))
    if feature == "lse" and verdict == "ok" and lse_max_abs is None:
        verdict, reason = "unsupported", lse_note or "the backend returns no log-sum-exp"
    return {"backend": backend, "feature": feature, "value": value, "verdict": verdict, "reason": one_line(reason),
            "rel_l2": _number(row.get("rel_l2")), "max_abs": _number(row.get("max_abs")), "lse_max_abs": lse_max_abs,
            "lse_note": one_line(lse_note), "case": "" if verdict == "skipped" else case.spec().describe(),
            "backend_versions": versions, "device": device}


def derive_matrix(layouts: dict[str, str], features: Iterable[Feature], recorded: dict[str, dict[str, Any]],
                  device: str, not_here: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """The capability matrix (`COLUMNS`, one row per backend and feature row it answers) from the probe's
    result rows by cell id: the page-size fallback, the ``q_layout`` selection and the ``lse`` row
    follow the module docstring."""
    features = tuple(features)
    plan = plan_cells(layouts, features, recorded)
    versions: dict[str, str] = {}
    for name, _, _, case in plan:  # a timed-out or crashed cell has no versions: take the backend's others
        row = recorded.get(cell_id(name, case))
        if row is not None and _versions(row.get("backend_versions")) != "{}":
            versions.setdefault(name, _versions(row.get("backend_versions")))
    not_here = not_here or {}
    out = [matrix_row(name, feature, value, case,
                      {"verdict": "skipped", "reason": not_here[(feature, value)]} if (feature, value) in not_here
                      else recorded.get(cell_id(name, case)), versions.get(name, "{}"), device)
           for name, feature, value, case in plan]
    return pd.DataFrame(out, columns=list(COLUMNS))


def probe(layouts: dict[str, str], measure: MeasureCells, *, features: tuple[Feature, ...] = FEATURES,
          device: str = "cpu", not_here: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Measure the probe's cells in two rounds through ``measure`` (the runner: `run_probe`) and derive
    the matrix. ``layouts``: backend name -> its ``q_layout``; ``not_here``: (feature, value) rows not
    measured here, answered `skipped` with the reason."""
    recorded: dict[str, dict[str, Any]] = {}
    for row in measure(page_cells(layouts, features)):
        recorded[row["cell_id"]] = row
    pages = {name: base_page(name, layout, features, recorded) for name, layout in layouts.items()}
    for row in measure(feature_cells(layouts, features, pages, not_here)):
        recorded[row["cell_id"]] = row
    return derive_matrix(layouts, features, recorded, device, not_here)


def adapter_layouts(names: list[str]) -> dict[str, str]:
    """Backend name -> its declared ``q_layout`` (classes only: nothing is instantiated)."""
    from adapters.base import adapter_classes

    classes = adapter_classes()
    return {name: getattr(classes[name], "q_layout", THD) for name in names}


def device_label(device_type: str, slots: list | None = None) -> str:
    """The matrix's ``device`` column: the GPU's name (from the slot's ceilings when measured), or 'cpu'."""
    if device_type != "cuda":
        return "cpu"
    for slot in slots or []:
        if slot.ceilings and slot.ceilings.get("gpu"):
            return str(slot.ceilings["gpu"])
    import torch

    index = next((slot.gpu_index for slot in slots or [] if slot.gpu_index is not None), 0)
    return torch.cuda.get_device_name(index)


def run_probe(out_dir: Path | str, device_type: str, backends: list[str] | None, *, pools: list,
              resume: bool = True, retry_failed: bool = False, features: tuple[Feature, ...] = FEATURES,
              run_meta: dict[str, Any] | None = None, on_progress: Callable | None = None,
              on_slot_failure: Callable | None = None) -> tuple[pd.DataFrame, Path]:
    """The probe as cells of the sweep's pipeline: every (backend, feature row) measured gate-only by
    `harness.measure.runner.run_cells` into ``<out>/probe/`` (isolated workers, the cell time limit, resume),
    then the matrix derived from those rows and written atomically to ``<out>/capability.csv``.
    ``backends``: None probes every registered adapter, else these and their probe-only variants. ``pools``:
    the gate-only workers, kept by the caller (`harness.measure.runner.worker_pools` of `gate_config` and
    `gate_slots`, several per GPU; e.g. to go on into the compile warm-up): probe cells are never timed, and
    most of their time is compiling, so the small cases' cells are spread over the workers one by one, the
    compiling backends' first."""
    from adapters.base import adapter_classes
    from harness.measure.runner import run_cells
    from records.store import ResultStore

    out_dir = Path(out_dir)
    probe_dir = out_dir / PROBE_DIR
    classes = adapter_classes()
    names = with_probe_variants(list(backends)) if backends else list(classes)
    config = pools[0].config
    if run_meta is not None:
        ResultStore(probe_dir).append_run(run_meta)

    def compiles(cell: Cell) -> bool:
        return bool(getattr(classes.get(cell.backend), "disk_compile_cache", False))

    def measure(cells: list[Cell]) -> list[dict[str, Any]]:
        if not cells:
            return []
        return run_cells(cells, probe_dir, config, pools=pools, resume=resume, retry_failed=retry_failed,
                         spread=True, first=compiles, on_progress=on_progress, on_slot_failure=on_slot_failure)

    df = probe(adapter_layouts(names), measure, features=features,
               device=device_label(device_type, [pool.slot for pool in pools]),
               not_here=CPU_NOT_HERE if device_type == "cpu" else None)
    return df, write_capability(df, out_dir / CAPABILITY_FILE)


def write_capability(df: pd.DataFrame, path: Path | str) -> Path:
    """Write the matrix atomically: a temporary file in the same folder, fsynced, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            df.to_csv(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return path


def summary(df: pd.DataFrame) -> str:
    """Backends as columns, feature=value as rows, verdicts as cells (for the terminal)."""
    table = df.assign(cell=df["feature"] + "=" + df["value"].astype(str))
    pivot = table.pivot_table(index="cell", columns="backend", values="verdict", aggfunc="first", sort=False)
    return pivot.fillna("").to_string()


def adapter_tally(rows: pd.DataFrame) -> str:
    """'20 ok, 4 unsupported': how one backend's matrix rows ended."""
    counts = rows["verdict"].value_counts()
    return ", ".join(f"{count} {verdict}" for verdict, count in sorted(counts.items()))
