"""The capability probe on the CPU: probe cells measured by the sweep's cell measurer (gate only), the
matrix derived from their rows (per backend, feature, value: skipped and declined backends, the base-page
fallback, q_layout and lse rows, model features), equal to what the old probe produced, and the probe
through the runner (a hanging backend costs only its own cells; a second run measures nothing again)."""

from __future__ import annotations

import json

import pytest
import torch

from adapters.base import Adapter, Prepared, Unsupported
from adapters.batch import make_batch
from adapters.reference import reference_attention
from harness.measure import capability
from adapters.batch import BatchSpec, PagedBatch
from adapters.backends.sdpa_gather import SdpaGatherAdapter
from harness.measure.capability import (COLUMNS, FEATURES, T_ROW, THD, case_spec, one_line, probe_case,
                                        write_capability)
from harness.measure.cell import CellMeasurer
from reports.model import capability_frame

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def probe(adapters, device="cpu", *, features=FEATURES, progress=None, not_here=None):
    """The probe's cells measured here by the sweep's cell measurer (gate only), the matrix derived from
    their rows: what `harness.measure.capability.run_probe` does through the runner's workers, for adapters
    defined in a test (a worker cannot import them)."""
    measurer = CellMeasurer(device=torch.device(device), gate_only=True, _adapters=dict(adapters))
    layouts = {name: adapter.q_layout for name, adapter in adapters.items()}
    return capability.probe(layouts, lambda cells: [measurer.measure(cell) for cell in cells],
                            features=features, device=capability.device_label(device), not_here=not_here)


def read_capability(path):
    """capability.csv as the reports read it."""
    import pandas as pd

    return capability_frame(pd.read_csv(path, dtype=str, keep_default_na=False))


class _Missing(Adapter):
    name = "missing"

    def available(self, device):
        return False, "library not installed"

    def prepare(self, batch: PagedBatch) -> Prepared:
        raise AssertionError("never prepared")


class _BigPagesOnly(SdpaGatherAdapter):
    """Runs only page sizes >= 64, like flash-attn 2 with 256."""

    name = "big-pages"

    def supports(self, spec: BatchSpec):
        return (spec.page_size >= 64, "" if spec.page_size >= 64 else f"page size {spec.page_size} < 64")

    def versions(self):
        return {"torch": "9.9.9"}


class _TRowProbe(Adapter):
    name = "trow-probe"
    in_sweep = False
    q_layout = T_ROW

    def available(self, device):
        return True, ""

    def prepare(self, batch: PagedBatch) -> Prepared:
        raise Unsupported("pageTableKDim[0] != b\nsecond line")


SMALL_FEATURES = tuple(f for f in FEATURES if (f[0], f[1]) in {
    ("page_size", "16"), ("page_size", "64"), ("kind", "decode"), ("causal", "non-causal"),
    ("q_layout", THD), ("q_layout", T_ROW)})


def test_feature_list_covers_the_issue():
    values = {(feature, value) for feature, value, _ in FEATURES}
    for page in (1, 8, 16, 64, 128, 256):
        assert ("page_size", str(page)) in values
    for expected in [("head_dim", "64"), ("head_dim", "128"), ("head_dim", "256"), ("gqa", "1:1"), ("gqa", "4:1"),
                     ("gqa", "8:1"), ("gqa", "MQA"), ("causal", "causal"), ("causal", "non-causal"),
                     ("kind", "decode"), ("kind", "prefill"), ("kind", "mixed"), ("dtype", "bf16"),
                     ("dtype", "fp16"), ("q_layout", THD), ("q_layout", T_ROW)]:
        assert expected in values
    assert case_spec({"grammar": "4q1c200"}).kind == "decode"
    assert case_spec({"grammar": "2q128c0_2q60c40"}).kind == "prefill"
    assert case_spec({}).kind == "mixed"
    assert case_spec({"num_q_heads": 16, "num_kv_heads": 2}).group_size == 8
    assert case_spec({"num_q_heads": 8, "num_kv_heads": 1}).num_kv_heads == 1


def test_probe_rows_verdicts_and_base_page_fallback():
    adapters = {"sdpa-gather": SdpaGatherAdapter(), "missing": _Missing(), "big-pages": _BigPagesOnly(),
                "trow-probe": _TRowProbe()}
    df = probe(adapters, "cpu", progress=False, features=SMALL_FEATURES)
    assert list(df.columns) == list(COLUMNS)
    by = {(r.backend, r.feature, r.value): r for r in df.itertuples()}
    assert by[("sdpa-gather", "kind", "decode")].verdict == "ok"
    assert by[("sdpa-gather", "q_layout", THD)].verdict == "ok"
    assert ("sdpa-gather", "q_layout", T_ROW) not in by
    assert by[("missing", "page_size", "16")].verdict == "skipped"
    assert by[("missing", "page_size", "16")].reason == "library not installed"
    assert by[("big-pages", "page_size", "16")].verdict == "unsupported"
    assert by[("big-pages", "kind", "decode")].verdict == "ok"          # probed at page 64, its smallest ok
    assert "page 64" in by[("big-pages", "kind", "decode")].case
    trow = df[df.backend == "trow-probe"]
    assert len(trow) == 1 and trow.iloc[0].value == T_ROW and trow.iloc[0].verdict == "unsupported"
    assert trow.iloc[0].reason == "pageTableKDim[0] != b second line"
    assert json.loads(by[("big-pages", "kind", "decode")].backend_versions) == {"torch": "9.9.9"}
    assert set(df.device) == {"cpu"}


def test_csv_round_trip_and_names(tmp_path):
    df = probe({"sdpa-gather": SdpaGatherAdapter()}, "cpu", progress=False, features=SMALL_FEATURES[:2])
    path = write_capability(df, tmp_path / "sub" / "cap.csv")
    back = read_capability(path)
    assert list(back.columns) == list(COLUMNS)
    assert back["verdict"].tolist() == df["verdict"].tolist()
    assert back["reason"].tolist() == ["", ""]
    assert back["rel_l2"].tolist() == df["rel_l2"].tolist()
    assert one_line("a\n  b\tc") == "a b c" and len(one_line("x" * 1000)) == 300
    assert torch.isfinite(torch.tensor(back["rel_l2"].tolist())).all()


# --- model features ----------------------------------------------------------------------------------
MODEL_FEATURE_ROWS = [("sliding_window", "32"), ("softcap", "2"), ("sinks", capability.SINKS),
                      ("fp8_kv", "per tensor"), ("fp8_kv", "per head")]


class _AllFeatures(Adapter):
    """A CPU row that runs every model feature: the fp32 reference of the batch it is given (``change``
    plants a mistake: the reference of another spec)."""

    devices = ("cpu",)
    model_features = frozenset({"sliding_window", "softcap", "sinks", "fp8_kv"})

    def __init__(self, name="all-features", change=None):
        self.name, self.change = name, change

    def available(self, device):
        return True, ""

    def prepare(self, batch: PagedBatch) -> Prepared:
        import dataclasses

        planted = dataclasses.replace(batch, **self.change(batch)) if self.change else batch
        return Prepared(run=lambda: reference_attention(planted, with_lse=True))


class _NoFeatures(SdpaGatherAdapter):
    """A row that runs none of the model features, with a reason for one of them."""

    name = "no-features"
    model_features = frozenset()
    feature_reasons = {"softcap": "the entry point has no soft-cap argument"}


def test_a_row_per_model_feature_variant_on_the_base_case():
    from adapters.features import FEATURES as MODEL_FEATURES

    rows = {(feature, value): overrides for feature, value, overrides in FEATURES}
    assert [key for key in rows if key[0] in MODEL_FEATURES] == MODEL_FEATURE_ROWS
    assert {feature for feature, _ in MODEL_FEATURE_ROWS} == set(MODEL_FEATURES)
    specs = {key: case_spec(rows[key]) for key in MODEL_FEATURE_ROWS}
    assert specs[("sliding_window", "32")].sliding_window == 32 < min(
        kv - q for q, kv in zip(specs[("sliding_window", "32")].q_lens, specs[("sliding_window", "32")].kv_lens))
    assert specs[("softcap", "2")].softcap == 2.0
    assert specs[("sinks", capability.SINKS)].sinks
    assert (specs[("fp8_kv", "per tensor")].kv_dtype, specs[("fp8_kv", "per tensor")].kv_scale) == ("fp8", "tensor")
    assert (specs[("fp8_kv", "per head")].kv_dtype, specs[("fp8_kv", "per head")].kv_scale) == ("fp8", "head")
    for key, spec in specs.items():  # each row changes only its own feature of the base case
        assert len(spec.features) == 1 and spec.replace(sliding_window=None, softcap=None, sinks=False,
                                                        kv_dtype=None, kv_scale="tensor") == case_spec({}), key


def test_each_feature_row_bites_on_the_base_case():
    """The rows' values change the base case's output far beyond the bf16 gate, so a backend that ignored
    the feature would be `wrong`; Gemma 2's cap of 50 would not (that is why the row uses 2)."""
    base = reference_attention(make_batch(case_spec({})))

    def moved(overrides):
        changed = reference_attention(make_batch(case_spec(overrides)))
        return ((changed - base).norm() / base.norm()).item()

    for feature, value, overrides in FEATURES:
        if (feature, value) in MODEL_FEATURE_ROWS and feature != "fp8_kv":
            assert moved(overrides) > 0.2, (feature, value)
    assert moved({"softcap": 50.0}) < 1e-2  # inside the bf16 gate's rel L2 bound


def test_model_feature_rows_through_the_gate():
    """A row that runs the features is ok on every variant; one that lacks them is `unsupported` with its
    reason before prepare; one that ignores the cap or the sinks is `wrong`."""
    features = tuple(f for f in FEATURES if (f[0], f[1]) in MODEL_FEATURE_ROWS)
    adapters = {"all-features": _AllFeatures(), "no-features": _NoFeatures(),
                "no-cap": _AllFeatures("no-cap", lambda batch: {"spec": batch.spec.replace(softcap=None)}),
                "no-sinks": _AllFeatures("no-sinks", lambda batch: {"sinks": None}),
                "trow-probe": _TRowProbe()}
    df = probe(adapters, "cpu", progress=False, features=features)
    by = {(r.backend, r.feature, r.value): r for r in df.itertuples()}
    for key in MODEL_FEATURE_ROWS:
        assert by[("all-features", *key)].verdict == "ok", by[("all-features", *key)].reason
        declined = by[("no-features", *key)]
        assert declined.verdict == "unsupported" and declined.reason, key
    assert not (df["backend"] == "trow-probe").any()  # a T-row adapter answers its q_layout row only
    assert by[("no-features", "softcap", "2")].reason == "the entry point has no soft-cap argument"
    assert "fp8" in by[("no-features", "fp8_kv", "per head")].reason
    assert "window 32" in by[("all-features", "sliding_window", "32")].case
    assert by[("no-cap", "softcap", "2")].verdict == "wrong"
    assert by[("no-cap", "sinks", capability.SINKS)].verdict == "ok"
    assert by[("no-sinks", "sinks", capability.SINKS)].verdict == "wrong"


# --- the probe as cells of the one pipeline --------------------------------------------------------------

def test_probe_cases_are_named_and_never_timed():
    """A probe cell is a sweep `Case` named probe-..., whose spec is the old probe's case; the cell
    measurer gates it and never times it, even when the run is not gate-only."""
    from harness.cases.sweep import Cell, is_probe_case

    base = probe_case({})
    assert base.name == "probe-2q1c100_2q37c60-p16" and is_probe_case(base)
    assert probe_case({"num_q_heads": 8, "num_kv_heads": 1}, page_size=64).name == "probe-2q1c100_2q37c60-p64-h8x1d128"
    assert probe_case({"kv_dtype": "fp8", "kv_scale": "head"}).name.endswith("-kvfp8h")
    names = {probe_case(overrides, page).name for _, _, overrides in FEATURES for page in (None, 64)}
    cases = {probe_case(overrides, page) for _, _, overrides in FEATURES for page in (None, 64)}
    assert len(names) == len(cases)  # one name per distinct case
    timed = CellMeasurer(device=torch.device("cpu"))  # not gate-only
    case = probe_case({"grammar": "1q1c40", "head_dim": 32, "dtype": "fp32"})
    row = timed.measure(Cell("sdpa-gather", case))
    assert row["verdict"] == "ok" and row["median_us"] is None and row["case"].startswith("probe-")
    from harness.cases.sweep import make_case

    plain = make_case("tiny", "1q1c40", 16, head_dim=32, dtype="fp32")
    gated = CellMeasurer(device=torch.device("cpu"), gate_only=True).measure(Cell("sdpa-gather", plain))
    assert gated["verdict"] == "ok" and gated["median_us"] is None


def test_the_matrix_from_probe_rows_equals_the_old_probe():
    """tests/data/capability_old_path.csv is what the old probe (its own cache, gate and row builder,
    commit f8f8bef) wrote for these planted backends; the matrix derived from probe cells is the same:
    verdicts, reasons, cases (page fallback included), q_layout and lse rows, and the gate's numbers."""
    import pandas as pd

    old = pd.read_csv(ROOT / "tests" / "data" / "capability_old_path.csv", dtype=str, keep_default_na=False)
    keep = set(zip(old["feature"], old["value"]))
    features = tuple(f for f in FEATURES if (f[0], f[1]) in keep)
    adapters = {"sdpa-gather": SdpaGatherAdapter(), "missing": _Missing(), "big-pages": _BigPagesOnly(),
                "trow-probe": _TRowProbe(), "all-features": _AllFeatures(), "no-features": _NoFeatures(),
                "no-cap": _AllFeatures("no-cap", lambda batch: {"spec": batch.spec.replace(softcap=None)})}
    df = probe(adapters, features=features)
    new = df[list(old.columns)].astype(object).where(df[list(old.columns)].notna(), "").astype(str)
    for column in ("backend", "feature", "value", "verdict", "reason", "lse_note", "case"):
        assert new[column].tolist() == old[column].tolist(), column
    # The gate's numbers are error norms of bf16 results, and the CSV was written on another CPU: one whose
    # vector width or fused multiply-adds round a few products differently moves such a norm by a small
    # fraction of itself (5.4e-4 of it between two x86-64 machines). 2 % of the norm allows that and still
    # catches another computation: the wrong reference or layout, whose errors are orders of magnitude apart.
    for column in ("rel_l2", "lse_max_abs"):
        assert pd.to_numeric(new[column]).fillna(-1).tolist() == pytest.approx(
            pd.to_numeric(old[column]).fillna(-1).tolist(), rel=2e-2), column


def test_a_cpu_probe_leaves_the_large_pool_row_to_gpus():
    rows = tuple(f for f in FEATURES if f[0] == "pool")
    df = probe({"sdpa-gather": SdpaGatherAdapter()}, features=rows, not_here=capability.CPU_NOT_HERE)
    by_value = dict(zip(df["value"], zip(df["verdict"], df["reason"])))
    assert by_value["default"][0] == "ok"
    assert by_value[capability.LARGE_POOL][0] == "skipped" and "GPUs only" in by_value[capability.LARGE_POOL][1]


def _bench(*args, env_extra=None, timeout=900):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters", "PYTHONPATH": str(ROOT),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_hanging_backend_costs_only_its_own_probe_cells_and_a_second_run_measures_nothing(tmp_path):
    """The probe runs through the sweep's runner: a backend that hangs is stopped after --cell-timeout
    (`timeout` on each of its cells), one that crashes its worker is `error` with the signal, and every
    other backend's cells are measured; the rows are in <out>/probe/, not in the sweep's results, and a
    second run resumes: it measures nothing already recorded and derives the same matrix."""
    # no compiling backend here (Flex): on a loaded 2-core machine its compile alone can pass the 20 s limit
    backends = "fault-hang,sdpa-gather,fault-segfault,good-ref"
    args = ("capability", "--device", "cpu", "--out", str(tmp_path), "--backends", backends,
            "--features", "kind=decode,lse", "--cell-timeout", "20")
    done = _bench(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = read_capability(tmp_path / "capability.csv")
    assert list(frame.columns) == list(COLUMNS)
    by = {(r.backend, r.feature, r.value): r for r in frame.itertuples()}
    assert set(frame["backend"]) == set(backends.split(","))
    for feature, value in (("kind", "decode"), ("lse", "returned")):
        hung = by[("fault-hang", feature, value)]
        assert hung.verdict == "timeout" and "20 s limit" in hung.reason and "_sleep_forever" in hung.reason
        crashed = by[("fault-segfault", feature, value)]
        assert crashed.verdict == "error" and "SIGSEGV" in crashed.reason
    for name in ("sdpa-gather", "good-ref"):
        assert by[(name, "kind", "decode")].verdict == "ok", by[(name, "kind", "decode")].reason
        assert by[(name, "lse", "returned")].verdict in ("ok", "unsupported")
    assert by[("good-ref", "lse", "returned")].verdict == "unsupported"
    assert not (tmp_path / "results.jsonl").exists()  # the sweep's table holds no probe cell
    probe_rows = [json.loads(line) for line in (tmp_path / "probe" / "results.jsonl").read_text().splitlines()]
    assert len(probe_rows) == 2 * len(backends.split(","))
    assert all(row["case"].startswith("probe-") and row["median_us"] is None for row in probe_rows)
    assert "capability: fault-hang: 2 timeout" in done.stderr
    before = (tmp_path / "capability.csv").read_text()

    again = _bench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((tmp_path / "probe" / "results.jsonl").read_text().splitlines()) == len(probe_rows)
    assert (tmp_path / "capability.csv").read_text() == before
    assert "timeout" not in again.stderr.replace("capability: fault-hang: 2 timeout", "")
