"""The capability matrix: every adapter (probe-only variants included) through the correctness gate
on a small base case, varying one layout feature or model feature (sliding window, soft-cap, sinks,
fp8 KV cache) at a time.

`FEATURES` is the one list of what is probed: (feature, value, overrides of the base case). The base
case is `BASE_GRAMMAR` with `BASE_FIELDS`. A backend that cannot run the base page size (flash-attn 2:
multiples of 256 only) is probed on the other features at the smallest page size it passed, so its
matrix says more than "page size" on every row; the row's ``case`` column names the exact case.
An adapter that declares Q another way than the canonical packed rows (``q_layout``, e.g. cuDNN with a
T-row Q) answers its ``q_layout`` row only; every other adapter, the bindings left out of the default
sweep included (e.g. cuDNN's packed Stats or 64-bit offsets), answers every feature.

    python -m harness.capability [--device cuda] [--out results/capability/x.csv] [--adapters a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch

from adapters.base import THD, Adapter, discover, versions_of
from adapters.batch import BatchSpec, PagedBatch, make_batch
from adapters.reference import reference_attention
from harness.gate import GateResult, run_gate
from records.schema import CAPABILITY_COLUMNS

BASE_GRAMMAR = "2q1c100_2q37c60"
"""Mixed: two decodes with 100 tokens of context, two 37-token prefills after 60 tokens of context."""
BASE_FIELDS: dict[str, Any] = dict(page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="bf16",
                                   causal=True, seed=0)
T_ROW = "T-row"

LARGE_POOL_GIB = 16.0
"""The large pool row: 16 GiB of K and V cache, so each cache holds 2^32 elements in bf16 (twice the
2^31 where int32 element offsets overflow). The batch's pages are scattered over the whole pool, so
most of them lie past element 2^31 (tests/test_pool.py checks the page ids). It fits a 40 GB GPU: the
fp32 reference gathers only the sequences' own pages, and the probe keeps one large batch at a time."""
LARGE_POOL = ">2^31 elements"
LARGE_BATCH_BYTES = 1 << 30
"""Batches whose caches take more than this are not kept for later adapters (one large batch at a time)."""

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
DEFAULT_DIR = Path("results/capability")


def case_spec(overrides: dict[str, Any], page_size: int | None = None) -> BatchSpec:
    """The base case with ``overrides`` applied (``page_size`` replaces the base page size unless the
    overrides set one)."""
    fields = dict(BASE_FIELDS)
    if page_size is not None:
        fields["page_size"] = page_size
    fields.update({k: v for k, v in overrides.items() if k != "grammar"})
    return BatchSpec.from_grammar(overrides.get("grammar", BASE_GRAMMAR), **fields)


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """The first meaningful line of an error text, whitespace collapsed, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _versions(adapter: Adapter) -> str:
    versions = versions_of(adapter)
    if "error" in versions:
        versions["error"] = one_line(versions["error"], 120)
    return json.dumps(versions, sort_keys=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def short_device_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA GeForce RTX 4090' -> 'rtx4090', 'cpu' -> 'cpu'."""
    match = re.search(r"\b(RTX\s?\d{4}\w*|[A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    text = match.group(1) if match else name
    return re.sub(r"[^a-z0-9]+", "", text.lower()) or "device"


def free_memory(device: torch.device) -> int | None:
    """Bytes a probe may allocate on ``device``: free device memory on a GPU, half the available host
    memory on the CPU (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def memory_verdict(spec: BatchSpec, device: torch.device) -> GateResult | None:
    """``oom`` (with the sizes) when the caches of ``spec`` cannot fit on ``device``, else None."""
    free = free_memory(device)
    needed = spec.cache_bytes()
    if free is None or needed <= 0.9 * free:
        return None
    return GateResult("oom", f"the K/V caches need {needed / 2**30:.1f} GiB ({spec.num_pages} pages); "
                             f"{free / 2**30:.1f} GiB usable on {device}")


class _Cases:
    """Batches and references by spec, built once per probe and shared by every adapter; a batch of
    more than `LARGE_BATCH_BYTES` is dropped as soon as another spec is asked for."""

    def __init__(self, device: torch.device):
        self.device = device
        self._cache: dict[BatchSpec, tuple[PagedBatch, tuple[torch.Tensor, torch.Tensor]]] = {}

    def get(self, spec: BatchSpec) -> tuple[PagedBatch, tuple[torch.Tensor, torch.Tensor]]:
        if spec not in self._cache:
            large = [other for other in self._cache if other.cache_bytes() > LARGE_BATCH_BYTES]
            for other in large:
                del self._cache[other]
            if large and self.device.type == "cuda":
                torch.cuda.empty_cache()
            batch = make_batch(spec, self.device)
            self._cache[spec] = (batch, reference_attention(batch, with_lse=True))
        return self._cache[spec]


def _gate(adapter: Adapter, spec: BatchSpec, cases: _Cases) -> GateResult:
    if spec not in cases._cache:
        too_large = memory_verdict(spec, cases.device)
        if too_large is not None:
            return too_large
    try:
        batch, reference = cases.get(spec)
    except Exception as error:  # noqa: BLE001 - e.g. oom while building the inputs
        return GateResult("error", f"building the case: {type(error).__name__}: {error}")
    result, prepared = run_gate(adapter, batch, reference)
    del prepared
    if cases.device.type == "cuda":
        # Kernels still in flight can fail after the gate read its numbers (errors are asynchronous):
        # pin such a failure on this row, not on whatever synchronises next.
        try:
            torch.cuda.synchronize(cases.device)
        except Exception as error:  # noqa: BLE001 - a broken context becomes this row's verdict
            return GateResult("error", f"the CUDA context broke after this cell ran: {type(error).__name__}: {error}")
    return result


def _row(adapter: Adapter, feature: str, value: str, result: GateResult, spec: BatchSpec | None,
         versions: str, device: str) -> dict[str, Any]:
    return {"backend": adapter.name, "feature": feature, "value": value, "verdict": result.verdict,
            "reason": one_line(result.reason), "rel_l2": result.rel_l2, "max_abs": result.max_abs,
            "lse_max_abs": result.lse_max_abs, "lse_note": one_line(result.lse_note),
            "case": spec.describe() if spec else "", "backend_versions": versions, "device": device}


def lse_answer(result: GateResult) -> GateResult:
    """The ``lse`` row: the base case's verdict, except that an ok cell whose backend returned no
    softmax statistics is `unsupported` with the reason it gave."""
    if result.ok and result.lse_max_abs is None:
        return GateResult("unsupported", result.lse_note or "the backend returns no log-sum-exp",
                          rel_l2=result.rel_l2, max_abs=result.max_abs, lse_note=result.lse_note)
    return result


def _rows_for(adapter: Adapter, features: Iterable[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict]]:
    """The feature rows one adapter answers: its own ``q_layout`` row, and every other feature unless it
    declares Q another way than the canonical rows (then that one row says whether the form works)."""
    layout = adapter.q_layout
    rows = []
    for feature, value, overrides in features:
        if feature == "q_layout":
            if value == layout:
                rows.append((feature, value, overrides))
        elif layout == THD:
            rows.append((feature, value, overrides))
    return rows


def probe_adapter(adapter: Adapter, device: torch.device, cases: "_Cases",
                  rows: list[tuple[str, str, dict[str, Any]]], bar=None) -> list[dict[str, Any]]:
    """One adapter over its feature rows: `COLUMNS` dicts, in the order of ``rows``."""
    dev_name = device_name(device)
    versions = _versions(adapter)
    tick = bar.update if bar is not None else (lambda _n: None)
    try:
        available, why = adapter.available(device)
    except Exception as error:  # noqa: BLE001
        available, why = False, f"available() raised {type(error).__name__}: {error}"
    out: list[dict[str, Any]] = []
    if not available:
        skipped = GateResult("skipped", why or "not available")
        for feature, value, _ in rows:
            out.append(_row(adapter, feature, value, skipped, None, versions, dev_name))
            tick(1)
        return out
    results: dict[BatchSpec, GateResult] = {}

    def answer(spec: BatchSpec) -> GateResult:
        if spec not in results:
            if bar is not None:
                bar.set_postfix_str(f"{adapter.name}: {spec.describe()}"[:60])
            results[spec] = _gate(adapter, spec, cases)
        return results[spec]

    page_rows = [r for r in rows if r[0] == "page_size"]
    for feature, value, overrides in page_rows:
        spec = case_spec(overrides)
        out.append(_row(adapter, feature, value, answer(spec), spec, versions, dev_name))
        tick(1)
    base_page = BASE_FIELDS["page_size"]
    passed = sorted(int(v) for f, v, o in page_rows if answer(case_spec(o)).ok)
    if page_rows and base_page not in passed and passed:
        base_page = passed[0]
    for feature, value, overrides in rows:
        if feature == "page_size":
            continue
        spec = case_spec(overrides, page_size=base_page)
        result = lse_answer(answer(spec)) if feature == "lse" else answer(spec)
        out.append(_row(adapter, feature, value, result, spec, versions, dev_name))
        tick(1)
    if device.type == "cuda":  # every gate synchronised (`_gate`); what is left is returning the memory
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a broken context is already on the row that broke it
            pass
    return out


def probe(adapters: dict[str, Adapter], device: torch.device | str, *, progress: bool = True,
          features: tuple[tuple[str, str, dict[str, Any]], ...] = FEATURES,
          on_adapter: Callable[[str, list[dict[str, Any]]], bool] | None = None) -> pd.DataFrame:
    """Run every adapter over ``features``; one row per (backend, feature, value) with `COLUMNS`.
    ``on_adapter(name, rows)`` is told each adapter's rows as soon as they are known; returning False
    stops the probe there (e.g. the CUDA context is poisoned: a fresh process takes the rest)."""
    device = torch.device(device)
    cases = _Cases(device)
    plan = {name: _rows_for(adapter, features) for name, adapter in adapters.items()}
    bar = _progress(sum(len(rows) for rows in plan.values()), progress)
    out: list[dict[str, Any]] = []
    for name, adapter in adapters.items():
        started = time.perf_counter()
        rows = probe_adapter(adapter, device, cases, plan[name], bar)
        out += rows
        if progress and bar.disable:  # a log gets one line per backend instead of bar frames
            print(f"capability: {name}: {adapter_tally(rows)} ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
        if on_adapter is not None and on_adapter(name, rows) is False:
            break
    bar.close()
    return pd.DataFrame(out, columns=list(COLUMNS))


def adapter_tally(rows: list[dict[str, Any]]) -> str:
    """'20 ok, 4 unsupported': how one backend's probe rows ended."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    return ", ".join(f"{count} {verdict}" for verdict, count in sorted(counts.items()))


def error_rows(adapter: Adapter, reason: str, device: str,
               features: tuple[tuple[str, str, dict[str, Any]], ...] = FEATURES) -> list[dict[str, Any]]:
    """The rows of an adapter whose probe could not finish (its process died): `error` with the reason."""
    failed = GateResult("error", reason)
    return [_row(adapter, feature, value, failed, None, _versions(adapter), device)
            for feature, value, _ in _rows_for(adapter, features)]


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Add rows to a capability CSV as they are known (header once), so a probe that dies keeps them."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame.to_csv(path, mode="a", header=not path.exists() or path.stat().st_size == 0, index=False)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="capability", unit="cell", file=sys.stderr, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))  # a log gets the summary, not bar frames


def version_tag(df: pd.DataFrame) -> str:
    """A short file-name tag of every version the probed backends reported, in key order, e.g.
    'cudnn_backend9.19.0_flash_attn2.8.3_torch2.11.0_triton3.6.0' (no backend is named here)."""
    merged: dict[str, str] = {}
    for text in df["backend_versions"].dropna().unique():
        try:
            merged.update({k: str(v) for k, v in json.loads(text).items() if not k.endswith("_build")})
        except (TypeError, ValueError, AttributeError):
            continue
    parts = [f"{key}{value.split('+')[0]}" for key, value in sorted(merged.items())
             if value and not value.startswith("not importable") and key != "error"]
    return re.sub(r"[^A-Za-z0-9._-]+", "", "_".join(parts))


def default_path(df: pd.DataFrame, directory: Path | str = DEFAULT_DIR) -> Path:
    """results/capability/capability-<gpu short name>-<version tag>.csv"""
    device = df["device"].iloc[0] if len(df) else "device"
    tag = version_tag(df)
    return Path(directory) / f"capability-{short_device_name(device)}{'-' + tag if tag else ''}.csv"


def write_capability(df: pd.DataFrame, path: Path | str | None = None) -> Path:
    path = Path(path) if path else default_path(df)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def summary(df: pd.DataFrame) -> str:
    """Backends as columns, feature=value as rows, verdicts as cells (for the terminal)."""
    table = df.assign(cell=df["feature"] + "=" + df["value"].astype(str))
    pivot = table.pivot_table(index="cell", columns="backend", values="verdict", aggfunc="first", sort=False)
    return pivot.fillna("").to_string()


POISONED_EXIT = 3
"""Exit status of a probe that stopped because a backend left the CUDA context unusable; the adapters
after it still need a fresh process."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="CSV path (default: results/capability/capability-<gpu>-<versions>.csv)")
    parser.add_argument("--adapters", default="", help="comma-separated adapter names (default: all registered)")
    parser.add_argument("--append", action="store_true",
                        help="add each adapter's rows to --out as soon as they are known (a caller that "
                             "restarts the probe after a crash keeps them); stop with exit status "
                             f"{POISONED_EXIT} when a backend poisons the CUDA context")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    adapters = discover()
    if args.adapters:
        wanted = [name.strip() for name in args.adapters.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in adapters]
        if unknown:
            parser.error(f"unknown adapters {unknown}; known: {', '.join(adapters)}")
        adapters = {name: adapters[name] for name in wanted}
    poisoned: list[str] = []

    def keep(name: str, rows: list[dict[str, Any]]) -> bool:
        from harness.runner import context_poisoned

        append_rows(Path(args.out), rows)
        if any(context_poisoned(row) for row in rows):
            poisoned.append(name)
            return False
        return True

    if args.append:
        if not args.out:
            parser.error("--append needs --out")
        df = probe(adapters, args.device, progress=not args.no_progress, on_adapter=keep)
        path = Path(args.out)
    else:
        df = probe(adapters, args.device, progress=not args.no_progress)
        path = write_capability(df, args.out)
    print(summary(df))
    skipped = df[df["verdict"] == "skipped"].drop_duplicates("backend")
    for row in skipped.itertuples():
        print(f"skipped {row.backend}: {row.reason}")
    declined = df[~df["verdict"].isin(["ok", "skipped"])]
    if len(declined):
        print("\nnot ok:")
        for row in declined.itertuples():
            cell = f"{row.feature}={row.value}"
            print(f"  {row.backend:12s} {cell:20s} {row.verdict:11s} {row.reason[:200]}")
    print(f"\nwrote {path} ({len(df)} rows)")
    for adapter in adapters.values():
        adapter.close()
    if poisoned:
        print(f"stopped after {poisoned[0]}: it left the CUDA context unusable; the rest need a fresh process")
        return POISONED_EXIT
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception:  # noqa: BLE001 - say what broke, then leave without teardown like a normal exit
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: GPU libraries still holding objects then print leak reports
