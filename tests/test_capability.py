"""The capability probe on the CPU: rows per (backend, feature, value), skipped and declined
backends, the base-page fallback, and the CSV round trip."""

from __future__ import annotations

import json
import re

import torch

from adapters.base import Adapter, Prepared, Unsupported, discover
from adapters.batch import make_batch
from adapters.reference import reference_attention
from harness import capability
from adapters.batch import BatchSpec, PagedBatch
from adapters.backends.sdpa_gather import SdpaGatherAdapter
from harness.capability import (COLUMNS, FEATURES, T_ROW, THD, case_spec, default_path, one_line, probe,
                                short_device_name, write_capability)
from reports.model import capability_frame


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


def test_a_log_gets_one_line_per_backend(capsys):
    """Without a terminal the probe's bar is off: each backend's tally and time is one line on stderr."""
    probe({"sdpa-gather": SdpaGatherAdapter(), "missing": _Missing()}, "cpu", progress=True, features=SMALL_FEATURES)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("capability: ")]
    assert len(lines) == 2
    assert lines[0].startswith("capability: sdpa-gather: ") and " ok" in lines[0] and lines[0].endswith(" s)")
    assert re.match(r"capability: missing: \d+ skipped \(\d+ s\)$", lines[1]), lines[1]


def test_csv_round_trip_and_names(tmp_path):
    df = probe({"sdpa-gather": SdpaGatherAdapter()}, "cpu", progress=False, features=SMALL_FEATURES[:2])
    path = write_capability(df, tmp_path / "sub" / "cap.csv")
    back = read_capability(path)
    assert list(back.columns) == list(COLUMNS)
    assert back["verdict"].tolist() == df["verdict"].tolist()
    assert back["reason"].tolist() == ["", ""]
    assert back["rel_l2"].tolist() == df["rel_l2"].tolist()
    name = default_path(df).name
    assert name.startswith("capability-cpu-torch") and name.endswith(".csv")
    assert short_device_name("NVIDIA H100 80GB HBM3") == "h100"
    assert short_device_name("NVIDIA H200") == "h200"
    assert short_device_name("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert short_device_name("cpu") == "cpu"
    assert one_line("a\n  b\tc") == "a b c" and len(one_line("x" * 1000)) == 300
    assert torch.isfinite(torch.tensor(back["rel_l2"].tolist())).all()


def test_a_backend_that_kills_the_probe_costs_only_its_own_rows(tmp_path):
    """The command line's probe keeps each backend's rows as they finish and starts a fresh process for
    the backends left when one crashes the probe (seen on the H200: a backend's illegal memory access)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "capability", "--device", "cpu", "--out", str(tmp_path),
                           "--backends", "fault-segfault,good-ref"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = read_capability(tmp_path / "capability.csv")
    crashed = frame[frame["backend"] == "fault-segfault"]
    assert len(crashed) and set(crashed["verdict"]) == {"error"}
    assert "died while probing fault-segfault" in crashed["reason"].iloc[0] and "SIGSEGV" in crashed["reason"].iloc[0]
    healthy = frame[frame["backend"] == "good-ref"]
    assert "ok" in set(healthy["verdict"]) and len(healthy) == len(crashed)
    assert not (tmp_path / "capability.csv.partial").exists()


def test_a_kernel_failing_after_the_gate_is_pinned_on_its_own_row(monkeypatch):
    """CUDA errors are asynchronous: a launch that breaks the context after the gate read its numbers
    (seen: FlexAttention over a >2^31-element cache) is that row's `error`, recognised as a poisoned
    context, instead of an exception from the next synchronise that takes the probe process down."""
    from harness.runner import context_poisoned

    class FakeCudaCases(capability._Cases):
        def __init__(self):
            super().__init__(torch.device("cpu"))
            self.device = torch.device("cuda")  # as the probe sees it; batches stay on the CPU

        def get(self, spec):
            batch = make_batch(spec, "cpu")
            return batch, reference_attention(batch, with_lse=True)

    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(capability, "memory_verdict", lambda spec, device: None)
    monkeypatch.setattr(torch.cuda, "synchronize", broken)
    spec = capability.case_spec({"page_size": 16, "head_dim": 32, "dtype": "fp32"})
    result = capability._gate(discover()["sdpa-gather"], spec, FakeCudaCases())
    assert result.verdict == "error" and "context broke after this cell" in result.reason
    assert context_poisoned({"verdict": result.verdict, "reason": result.reason})


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
