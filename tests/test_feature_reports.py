"""Model features in the sweeps and the reports: the default sweep's featured cells (names, fields, plain
twins), and every report path rendering folders that hold featured rows (their own "model features"
group, each cell beside its plain twin, reasons of declined cells visible)."""

from __future__ import annotations

import pytest

from harness.cases.sweep import SWEEP_CASES, SWEEPS, make_case

FEATURE_CELLS = {
    "decode-b64-q1-c16384-p16-w4096": dict(grammar="64q1c16k", heads=(32, 8, 128), sliding_window=4096),
    "prefill-b4-q2048-c2048-p16-h16x8d256-w1024": dict(grammar="4q2kc2k", heads=(16, 8, 256), sliding_window=1024),
    "prefill-b4-q2048-c2048-p16-h16x8d256-cap50": dict(grammar="4q2kc2k", heads=(16, 8, 256), softcap=50.0),
    "mixed-32d-2p4k-p16-h64x8d64-w128-sinks": dict(grammar="32q1c512-8k_2q4kc0-4k", heads=(64, 8, 64),
                                                   sliding_window=128, sinks=True),
    "decode-b64-q1-c16384-p16-kvfp8": dict(grammar="64q1c16k", heads=(32, 8, 128), kv_dtype="fp8"),
    "decode-b64-q1-c16384-p16-kvfp8h": dict(grammar="64q1c16k", heads=(32, 8, 128), kv_dtype="fp8", kv_scale="head"),
}
TWINS = {
    "decode-b64-q1-c16384-p16-w4096": "decode-b64-q1-c16384-p16",
    "prefill-b4-q2048-c2048-p16-h16x8d256-w1024": "prefill-b4-q2048-c2048-p16-h16x8d256",
    "prefill-b4-q2048-c2048-p16-h16x8d256-cap50": "prefill-b4-q2048-c2048-p16-h16x8d256",
    "mixed-32d-2p4k-p16-h64x8d64-w128-sinks": "mixed-32d-2p4k-p16-h64x8d64",
    "decode-b64-q1-c16384-p16-kvfp8": "decode-b64-q1-c16384-p16",
    "decode-b64-q1-c16384-p16-kvfp8h": "decode-b64-q1-c16384-p16",
}


# --- the sweeps ------------------------------------------------------------------------------------------
def test_the_default_sweep_has_the_feature_cells_with_their_fields():
    default = {case.name: case for case in SWEEPS["default"]}
    featured = [case for case in SWEEPS["default"] if case.features]
    assert [case.name for case in featured] == list(FEATURE_CELLS)
    for name, expected in FEATURE_CELLS.items():
        case = default[name]
        assert case.grammar == expected["grammar"] and case.page_size == 16
        assert (case.num_q_heads, case.num_kv_heads, case.head_dim) == expected["heads"]
        assert (case.dtype, case.causal, case.seed) == ("bf16", True, 0)
        assert case.sliding_window == expected.get("sliding_window")
        assert case.softcap == expected.get("softcap")
        assert case.sinks == expected.get("sinks", False)
        assert (case.kv_dtype, case.kv_scale) == (expected.get("kv_dtype"), expected.get("kv_scale", "tensor"))
        assert case.pool_pages is None and case.pool_gib is None
        # named by make_case from its stem: rebuilding it gives the same case
        assert make_case(case.stem, case.grammar, 16, **{k: v for k, v in case.fields().items()}) == case
        spec = case.spec()  # a valid batch (a window needs causal attention)
        assert spec.features == case.features


def test_every_feature_cell_has_its_plain_twin_in_the_sweep():
    default = {case.name: case for case in SWEEPS["default"]}
    for name, twin in TWINS.items():
        case, plain = default[name], default[twin]
        assert not plain.features and plain.grammar == case.grammar and plain.page_size == case.page_size
        assert (plain.num_q_heads, plain.num_kv_heads, plain.head_dim) == (case.num_q_heads, case.num_kv_heads,
                                                                          case.head_dim)


def test_the_windows_matter_on_their_cells():
    """Each window is shorter than the keys its cell's queries see, so it changes the work."""
    from harness.measure.metrics import spec_bytes, spec_flops

    default = {case.name: case for case in SWEEPS["default"]}
    for name, twin in TWINS.items():
        case = default[name]
        if case.sliding_window is None:
            continue
        q_lens, kv_lens = case.lengths()
        assert case.sliding_window < max(kv_lens)
        assert spec_flops(case.spec()) < spec_flops(default[twin].spec())
    # the long decode reads a quarter of its cache; the fp8 cache holds half the bytes
    window = spec_bytes(default["decode-b64-q1-c16384-p16-w4096"].spec())
    plain = spec_bytes(default["decode-b64-q1-c16384-p16"].spec())
    fp8 = spec_bytes(default["decode-b64-q1-c16384-p16-kvfp8"].spec())
    assert 0.24 < window / plain < 0.26 and 0.49 < fp8 / plain < 0.51


def test_features_stay_out_of_the_short_and_tiny_sweeps_and_plain_ids_stay():
    assert not any(case.features for name in ("short", "cpu-tiny") for case in SWEEPS[name])
    assert not any(case.features for case in SWEEP_CASES["short"])
    plain = {case.name: case for case in SWEEPS["default"] if not case.features}
    assert plain["decode-b64-q1-c4096-p16"].as_dict() == {
        "name": "decode-b64-q1-c4096-p16", "grammar": "64q1c4k", "page_size": 16, "num_q_heads": 32,
        "num_kv_heads": 8, "head_dim": 128, "dtype": "bf16", "causal": True, "seed": 0}


@pytest.mark.parametrize("name", list(FEATURE_CELLS))
def test_feature_cells_have_their_own_cell_ids(name):
    from harness.cases.sweep import cell_id

    default = {case.name: case for case in SWEEPS["default"]}
    assert cell_id("cudnn", default[name]) != cell_id("cudnn", default[TWINS[name]])


# --- the reports -----------------------------------------------------------------------------------------
import html  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

from harness.cases.sweep import uniform_case  # noqa: E402
from reports.capability import MODEL_FEATURE_GROUP, capability_matrix, format_capability_text  # noqa: E402
from reports.compare import compare, format_comparison_text  # noqa: E402
from reports.html import render_report  # noqa: E402
from reports.machines import format_machines_text, render_machines_report  # noqa: E402
from reports.model import (MODEL_FEATURES, ResultSet, features_text, load_results, plain_twin,  # noqa: E402
                           split_variant, variant_features)
from reports.releases import compare_releases, format_releases_text, render_releases_html  # noqa: E402
from reports.tables import feature_table, format_features_text, winners  # noqa: E402
from tests.report_fixtures import synthetic_capability, synthetic_rows, synthetic_runs, write_results_folder  # noqa: E402

SOFTCAP_REASON = "torch's scaled_dot_product_attention has no score hook: a logit soft-cap cannot be passed"
SINK_REASON = "flash_attn_varlen_func has no sink argument (flash-attn 2.8)"
FP8_ERROR = "run: RuntimeError: expected k and v in the query's dtype, got Float8_e4m3fn"


def report_cases():
    """Plain cases (the curves) and three featured ones with their twins, at a size the CPU renders fast."""
    plain = [uniform_case("decode", 64, 1, c, 16) for c in (1024, 4096, 16384)]
    plain += [uniform_case("prefill", 4, 2048, 2048, 16), uniform_case("prefill", 1, 512, 0, 16)]
    gemma = {"num_q_heads": 16, "num_kv_heads": 8, "head_dim": 256}
    return plain + [
        make_case("prefill-b4-q2048-c2048", "4q2kc2k", 16, **gemma),
        make_case("decode-b64-q1-c16384", "64q1c16k", 16, sliding_window=4096),
        make_case("prefill-b4-q2048-c2048", "4q2kc2k", 16, **gemma, softcap=50.0),
        make_case("decode-b64-q1-c16384", "64q1c16k", 16, kv_dtype="fp8", kv_scale="head"),
        # no plain twin in these results
        make_case("mixed-32d-2p4k", "32q1c512-8k_2q4kc0-4k", 16, num_q_heads=64, num_kv_heads=8, head_dim=64,
                  sliding_window=128, sinks=True),
    ]


WINDOWED = "decode-b64-q1-c16384-p16-w4096"
CAPPED = "prefill-b4-q2048-c2048-p16-h16x8d256-cap50"
FP8 = "decode-b64-q1-c16384-p16-kvfp8h"
SINKS = "mixed-32d-2p4k-p16-h64x8d64-w128-sinks"
OVERRIDES = {("sdpa-gather", CAPPED): ("unsupported", SOFTCAP_REASON), ("flash-attn2", SINKS): ("unsupported", SINK_REASON),
             ("triton", FP8): ("error", FP8_ERROR)}


def featured_rows(**kwargs):
    return synthetic_rows(case_list=report_cases(), overrides=OVERRIDES, **kwargs)


@pytest.fixture(scope="module")
def feature_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    old = write_results_folder(root / "old", featured_rows(seed=0), synthetic_runs(label="old"), synthetic_capability())
    new = write_results_folder(root / "new", featured_rows(seed=1, jitter=0.02, env_id="env-new", run_id="run-2"),
                               synthetic_runs(env_id="env-new", run_id="run-2", label="new"))
    return {"root": root, "old": old, "new": new}


def test_reports_name_the_same_features_as_the_adapters():
    """reports may not import adapters: its copy of the feature names and its reading of case names agree
    with adapters.features and harness.cases.sweep."""
    from adapters.features import FEATURES, feature_suffix

    assert MODEL_FEATURES == FEATURES
    for case in [*report_cases(), *SWEEPS["default"], make_case("x", "2q1c8", 16, softcap=1e-5, sinks=True)]:
        base, parts = split_variant(case.variant)
        assert tuple(variant_features(case.variant)) == case.features, case.name
        fields = {name: getattr(case, name) for name in ("sliding_window", "softcap", "sinks", "kv_dtype", "kv_scale")}
        assert list(parts) == (feature_suffix(fields) if case.features else []), case.name
        if case.features:
            assert plain_twin(case.name, case.variant) == make_case(
                case.stem, case.grammar, case.page_size, num_q_heads=case.num_q_heads, num_kv_heads=case.num_kv_heads,
                head_dim=case.head_dim).name
    assert features_text("h16x8d256-w4096-cap50-sinks-kvfp8h") == (
        "window 4096, soft-cap 50, sinks, fp8 KV (per-head scales)")
    assert split_variant("h8x1d128-pool16gib-s3") == ("h8x1d128-pool16gib-s3", ())


def test_featured_cells_leave_the_plain_groups(feature_folders):
    results = load_results(feature_folders["new"])
    assert set(results.feature_rows["case"]) == {WINDOWED, CAPPED, FP8, SINKS}
    assert results.main_variant == ""
    assert not results.variant_rows["case"].isin(results.feature_rows["case"]).any()
    assert set(results.variant_rows["case"]) == {"prefill-b4-q2048-c2048-p16-h16x8d256"}
    assert not set(winners(results)["case"]) & {WINDOWED, CAPPED, FP8, SINKS}
    table = feature_table(results)
    by = {(r["case"], r["backend"]): r for r in table.to_dict("records")}
    windowed = by[(WINDOWED, "cudnn")]
    assert windowed["twin"] == "decode-b64-q1-c16384-p16" and windowed["twin_verdict"] == "ok"
    assert 0.2 < windowed["ratio"] < 0.5  # the roofline model reads a quarter of the keys
    assert by[(CAPPED, "sdpa-gather")]["verdict"] == "unsupported"
    assert by[(CAPPED, "sdpa-gather")]["reason"] == SOFTCAP_REASON and pd_missing(by[(CAPPED, "sdpa-gather")]["ratio"])
    assert by[(SINKS, "cudnn")]["twin"] == "mixed-32d-2p4k-p16-h64x8d64" and by[(SINKS, "cudnn")]["twin_verdict"] == ""
    assert "fa3" not in set(table["backend"])  # skipped everywhere: the summary says why once


def pd_missing(value):
    return value is None or value != value


def test_the_page_has_a_model_features_group(feature_folders, tmp_path):
    page = render_report(load_results(feature_folders["new"]), tmp_path / "report.html").read_text()
    section = re.search(r'<section id="model-features">(.*?)</section>', page, re.S)
    assert section, "no model-features section"
    body = html.unescape(section.group(1))
    assert 'href="#model-features"' in page
    assert 'id="plot-model-features"' in body and "<svg" in body
    for case in (WINDOWED, CAPPED, FP8, SINKS):
        assert case in body
    assert SOFTCAP_REASON in body and SINK_REASON in body and FP8_ERROR in body
    assert "window 4096" in body and "soft-cap 50" in body and "fp8 KV (per-head scales)" in body
    assert "decode-b64-q1-c16384-p16" in body and "no plain twin" in body
    assert re.search(r"\d\.\d\d×", body)  # feature / plain ratios on GPU timings
    # the plain curves, maps and winners do not hold the featured cells
    winners_section = re.search(r'<section id="winners">(.*?)</section>', page, re.S).group(1)
    assert WINDOWED not in winners_section and "decode-b64-q1-c16384-p16<" in winners_section
    # the derived capability matrix has model-feature columns under their own heading
    capability = re.search(r'<section id="capability-matrix">(.*?)</section>', page, re.S).group(1)
    assert MODEL_FEATURE_GROUP in capability and "sliding_window" in capability and "softcap" in capability


def test_the_text_report_lists_the_featured_cells(feature_folders):
    results = load_results(feature_folders["new"])
    text = format_features_text(results)
    assert text.startswith("Model features (4 cells")
    assert f"{WINDOWED} [decode]: window 4096; plain twin decode-b64-q1-c16384-p16" in text
    assert SOFTCAP_REASON in text and SINK_REASON in text and FP8_ERROR in text
    assert "(not in these results)" in text and "x" in text
    assert format_features_text(ResultSet.from_records(synthetic_rows(case_list=report_cases()[:2]))).startswith(
        "Model features: no cells")


def test_the_derived_capability_matrix_keeps_features_out_of_the_kinds(feature_folders):
    results = load_results(feature_folders["new"])
    matrix = capability_matrix(results)
    assert matrix.source == "sweep"
    assert matrix.entry("sdpa-gather", ("workload", "prefill")).verdict == "ok"  # the cap's refusal is not a kind's
    assert matrix.entry("sdpa-gather", ("softcap", "50")).verdict == "unsupported"
    assert matrix.entry("sdpa-gather", ("softcap", "50")).reason == SOFTCAP_REASON
    assert matrix.entry("flash-attn2", ("sinks", "on")).reason == SINK_REASON
    assert matrix.entry("cudnn", ("sliding_window", "4096")).detail == "1 of 1 cells ok"
    assert matrix.entry("cudnn", ("sliding_window", "128")).verdict == "ok"  # the w128-sinks cell counts for both
    assert matrix.entry("triton", ("fp8_kv", "per head")).verdict == "error"
    assert [name for name, _ in matrix.groups] == ["layout", MODEL_FEATURE_GROUP]
    text = format_capability_text(matrix)
    assert f"-- {MODEL_FEATURE_GROUP} --" in text and "softcap=50" in text and SOFTCAP_REASON in text


def test_probe_rows_of_model_features_render(tmp_path):
    """A capability.csv with the probe's model-feature rows: the page groups them, hover text and the
    refusals table carry the reasons; the text matrix too."""
    records = synthetic_capability()
    for backend in ("cudnn", "sdpa-gather"):
        for feature, value in (("sliding_window", "32"), ("softcap", "2"), ("sinks", "per-head logit"),
                               ("fp8_kv", "per tensor"), ("fp8_kv", "per head")):
            declined = backend == "sdpa-gather" and feature in ("softcap", "sinks")
            records.append({"backend": backend, "feature": feature, "value": value,
                            "verdict": "unsupported" if declined else "ok", "reason": SOFTCAP_REASON if declined else "",
                            "rel_l2": "" if declined else 2e-3, "max_abs": "", "case": "2q1c100_2q37c60",
                            "versions": "{}", "device": "NVIDIA H200"})
    results = ResultSet.from_records(synthetic_rows(case_list=report_cases()[:3]), synthetic_runs(), records)
    matrix = capability_matrix(results)
    assert matrix.source == "probe"
    assert matrix.ordered_columns()[-5:] == [("sliding_window", "32"), ("softcap", "2"), ("sinks", "per-head logit"),
                                             ("fp8_kv", "per tensor"), ("fp8_kv", "per head")]
    assert dict(matrix.group_spans)[MODEL_FEATURE_GROUP] == 5
    page = render_report(results, tmp_path / "report.html").read_text()
    capability = re.search(r'<section id="capability-matrix">(.*?)</section>', page, re.S).group(1)
    assert f'colspan="5">{MODEL_FEATURE_GROUP}</th>' in capability
    assert f"sdpa-gather · softcap=2: unsupported — {SOFTCAP_REASON}" in html.unescape(capability)
    assert "softcap=2" in format_capability_text(results)


def test_comparison_and_compare_envs_pages_render_featured_rows(feature_folders, tmp_path):
    old, new = load_results(feature_folders["old"]), load_results(feature_folders["new"])
    comparison = compare(old, new)
    assert {WINDOWED, CAPPED} <= set(comparison.cells["case"])
    assert "Cells:" in format_comparison_text(comparison)
    json.dumps(comparison.summary(), default=str)
    page = render_report(new, tmp_path / "comparison.html", baseline=old).read_text()  # compare-envs renders this
    assert 'id="model-features"' in page and 'id="comparison-cells"' in page


def test_machines_page_renders_featured_rows(feature_folders, tmp_path):
    folders = [feature_folders["old"], feature_folders["new"]]
    page = render_machines_report(folders, tmp_path / "machines.html").read_text()
    assert WINDOWED in page or "w4096" in page
    assert WINDOWED in format_machines_text(folders, show_all=True, limit=1000)


def test_releases_page_renders_featured_rows():
    sets = [ResultSet.from_records(featured_rows(seed=seed, env_id=f"env-{label}", run_id=f"run-{label}",
                                                 versions={"cudnn_backend": version}),
                                   synthetic_runs(env_id=f"env-{label}", run_id=f"run-{label}", label=label),
                                   synthetic_capability(), name=label)
            for seed, label, version in ((0, "cudnn-9.19", "9.19.0"), (1, "cudnn-9.28", "9.28.1"))]
    rc = compare_releases(sets, "cudnn-9.19")
    assert "cudnn-9.28" in format_releases_text(rc, show_all=True)
    assert "<svg" in render_releases_html(rc) or "cudnn-9.28" in render_releases_html(rc)


def test_cpu_runs_name_no_feature_ratios(tmp_path):
    rows = featured_rows()
    for row in rows:
        row["device"] = "cpu"
        row["method"] = "perf_counter"
    results = ResultSet.from_records(rows, synthetic_runs())
    assert results.measured_on_cpu
    text = format_features_text(results)
    assert "feature/plain" not in text and "smoke test" in text
    page = render_report(results, tmp_path / "cpu.html").read_text()
    section = re.search(r'<section id="model-features">(.*?)</section>', page, re.S).group(1)
    assert "No feature / plain ratios" in section and not re.search(r"\d\.\d\d×", section)
    assert "fastest</span>" not in section


def test_the_report_command_prints_the_feature_cells(feature_folders, tmp_path, capsys):
    from reports.cli import main

    assert main([str(feature_folders["new"]), "--text", "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "Capability matrix" in out and "Model features (4 cells" in out and SOFTCAP_REASON in out
    assert 'id="model-features"' in (tmp_path / "r.html").read_text()
