"""The cuDNN release check as users of an engine need it: every way of calling cuDNN is a gated row (layout
builders of each binding against hand-computed strides and offsets), `releases` and `compare-envs` take
every selection option of `run` (good and bad values), the "what changed" table and the exit status from
planted result folders, bisect's search order and answer on planted verdicts, and no download on a machine
without a GPU. No GPU and no cuDNN library needed."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from adapters.backends import cudnn_sdpa
from adapters.backends.cudnn_sdpa import Binding, cudnn_layout, ragged_offsets, stats_index, stats_strides
from adapters.base import adapter_classes, rows_calling
from adapters.batch import BatchSpec
from harness.frontends import cli
from harness.releases.environments import EnvSpec
from harness.measure.gate import GateResult
from harness.releases.bisect import bisect, candidates_between, cell_difference
from harness.releases.check import add_releases_arguments, child_run_args, cmd_releases, run_releases
from harness.measure.results import make_row
from harness.cases.sweep import Cell, make_case
from harness.measure.timer import Timing
from reports.releases import RELEASES_JSON, behaviour_of, format_releases_text, load_releases, render_releases_html
from tests.report_fixtures import synthetic_runs, write_results_folder

# ------------------------------------------------------------------------------------ the bindings


def test_every_way_of_calling_cudnn_is_a_row_and_the_release_check_gates_them_all():
    rows = rows_calling("cudnn")
    assert {"cudnn", "cudnn-stats-ragged", "cudnn-offsets64", "cudnn-stats-ragged-offsets64", "cudnn-trows",
            "flashinfer-cudnn"} <= set(rows)
    classes = adapter_classes()
    forms = {name: classes[name].form for name in rows if hasattr(classes[name], "form")}
    assert forms["cudnn"] == Binding("B-rows", "padded", "int32")
    assert forms["cudnn-stats-ragged"] == Binding("B-rows", "ragged", "int32")
    assert forms["cudnn-offsets64"] == Binding("B-rows", "padded", "int64")
    assert forms["cudnn-stats-ragged-offsets64"] == Binding("B-rows", "ragged", "int64")
    assert forms["cudnn-trows"].q == "T-rows"
    assert len(set(forms.values())) == len(forms)  # no two rows bind the same way
    for name in rows:  # each row names its binding; only cudnn itself is in the default sweep
        assert classes[name].binding
        assert classes[name].in_sweep == (name == "cudnn") or name == "flashinfer-cudnn"
    assert "packed [T, Hq]" in classes["cudnn-stats-ragged"].binding
    assert "int64 ragged offsets (chosen)" in classes["cudnn-offsets64"].binding


def test_a_binding_with_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="Binding.stats='packed'"):
        Binding(stats="packed")


def _spec(q_lens, kv_lens, heads=(8, 2), head_dim=64, page=16) -> BatchSpec:
    return BatchSpec(q_lens=tuple(q_lens), kv_lens=tuple(kv_lens), num_q_heads=heads[0], num_kv_heads=heads[1],
                     head_dim=head_dim, page_size=page, dtype="bf16", causal=True)


def test_offsets_are_int32_unless_chosen_or_forced():
    spec = _spec([1, 3], [40, 70])
    assert cudnn_layout(spec).ragged_dtype == torch.int32
    assert cudnn_layout(spec, offsets="int64").ragged_dtype == torch.int64
    # the q/o element offsets are cu_seqlens_q * Hq * D whatever the width: [0, 1, 4] * 8 * 64
    cu = torch.tensor([0, 1, 4], dtype=torch.int32)
    for dtype in (torch.int32, torch.int64):
        offsets = ragged_offsets(cu, 8, 64, dtype)
        assert offsets.dtype == dtype and offsets.shape == (3, 1, 1, 1)
        assert offsets.flatten().tolist() == [0, 512, 2048]


def test_stats_strides_of_each_layout_by_hand():
    # padded [B, Hq, S_q, 1] in BHSD order: (Hq*S_q, S_q, 1, 1); packed [T, Hq] token-major: (S_q*Hq, 1, Hq, 1)
    assert stats_strides("padded", heads=8, s_q=4) == (32, 4, 1, 1)
    assert stats_strides("ragged", heads=8, s_q=4) == (32, 1, 8, 1)
    layout = cudnn_layout(_spec([1, 3], [40, 70]))
    assert layout.s_q == 4 and layout.stats_dims == (2, 8, 4, 1) and layout.stats_strides == (32, 4, 1, 1)
    # the packed Stats' ragged offsets are cu_seqlens_q * Hq (rows of Hq floats)
    assert ragged_offsets(torch.tensor([0, 1, 4]), 8, 1).flatten().tolist() == [0, 8, 32]


def test_padded_and_packed_stats_address_the_same_rows():
    """Element (b, h, i) of the declared [B, Hq, S_q, 1] is read at b*stride0 + h*stride1 + i*stride2 (+ the
    ragged offset of b in the packed layout): both layouts must put packed row t, head h where `to_lse` of
    that layout reads it."""
    heads, cu = 3, [0, 1, 4]
    s_q = 4
    index = stats_index(torch.tensor(cu), heads, s_q)  # padded: where row t, head h sits
    padded = stats_strides("padded", heads, s_q)
    packed = stats_strides("ragged", heads, s_q)
    for b in range(2):
        for i in range(cu[b + 1] - cu[b]):
            t = cu[b] + i
            for h in range(heads):
                assert index[t, h] == b * padded[0] + h * padded[1] + i * padded[2]
                assert cu[b] * heads + h * packed[1] + i * packed[2] == t * heads + h  # packed [T, Hq] row-major


def test_each_binding_builds_its_graph_key_from_its_form(monkeypatch):
    """prepare() of each B-row binding declares its offsets' width and asks for its Stats layout: checked
    on the key the graph is built for, with a stand-in for cuDNN (no library here)."""
    from adapters.batch import make_batch

    seen = {}

    class Stop(Exception):
        pass

    def fake_graph_with_stats(self, cudnn, key, device, *, ragged):
        seen[self.name] = (key.ragged_dtype, self.form.stats if ragged else "padded")
        raise Stop

    monkeypatch.setattr(cudnn_sdpa.CudnnSdpaAdapter, "_graph_with_stats", fake_graph_with_stats)
    monkeypatch.setitem(__import__("sys").modules, "cudnn", object())
    batch = make_batch(_spec([1, 3], [40, 70]), device="cpu")
    classes = adapter_classes()
    for name in ("cudnn", "cudnn-stats-ragged", "cudnn-offsets64", "cudnn-stats-ragged-offsets64"):
        with pytest.raises(Stop):
            classes[name]().prepare(batch)
    assert seen == {"cudnn": ("int32", "padded"), "cudnn-stats-ragged": ("int32", "ragged"),
                    "cudnn-offsets64": ("int64", "padded"), "cudnn-stats-ragged-offsets64": ("int64", "ragged")}


def test_the_probe_asks_every_binding_every_feature_and_the_t_row_form_its_own_row():
    from harness.measure.capability import FEATURES, _rows_for

    classes = adapter_classes()
    every = _rows_for(classes["cudnn-stats-ragged"](), FEATURES)
    assert len(every) == len(FEATURES) - 1  # all but the T-row q_layout row
    assert [(f, v) for f, v, _ in _rows_for(classes["cudnn-trows"](), FEATURES)] == [("q_layout", "T-row")]
    assert set(cli.with_probe_variants(["cudnn"])) >= {"cudnn-stats-ragged", "cudnn-offsets64", "cudnn-trows"}


# ------------------------------------------------------------------------------------ the command line


def _main(argv, capsys) -> tuple[int, str]:
    status = cli.main(argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--heads", "3/2/128"], "3 query heads is not a multiple of 2 KV heads"),
    (["--case", "64q1cx"], "--case '64q1cx'"),
    (["--model", "no-such-model"], "no-such-model"),
    (["--dtype", "int8"], "int8"),
    (["--page-size", "0"], "--page-size"),
    (["--workloads", "decoding"], "decoding"),
    (["--pool-gib", "-1"], "--pool-gib"),
    (["--sweep-file", "/nonexistent.toml"], "/nonexistent.toml"),
    (["--backends", "cudnn,nope"], "nope"),
])
@pytest.mark.parametrize("command", [["releases", "9.19.0.56", "9.28.1.4"], ["compare-envs", "a", "b,cudnn=9.28.1.4"],
                                     ["releases", "bisect", "9.19.0.56", "9.28.1.4", "--case", "4q1c64"]])
def test_bad_selection_values_are_one_line_before_anything_is_fetched(command, argv, message, capsys, monkeypatch,
                                                                      tmp_path):
    monkeypatch.setattr("harness.releases.cudnn_release.download_wheel",
                        lambda *a, **k: pytest.fail("a release was downloaded for a bad command line"))
    status, err = _main([*command, *argv, "--out", str(tmp_path / "o")], capsys)
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "o").exists()


def _gpu_here(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_good_selection_values_reach_every_release_process(capsys, monkeypatch, tmp_path):
    _gpu_here(monkeypatch)
    calls = []

    def runner(env, folder, args):
        calls.append((env.label, args))
        return 3  # nothing measured: the command still reports and exits 2

    monkeypatch.setattr("harness.releases.check.run_environment", runner)
    status = cli.main(["releases", "9.19.0.56", "9.28.1.4", "--model", "llama-3-70b-tp8", "--case", "64q1c4k",
                       "--page-size", "16", "--pool-gib", "2", "--dtype", "fp16", "--workloads", "decode",
                       "--out", str(tmp_path)])
    assert status == 2
    assert [label for label, _ in calls] == ["cudnn-9.19.0.56", "cudnn-9.28.1.4"]
    args = calls[0][1]
    assert args == calls[1][1]
    for option in (["--model", "llama-3-70b-tp8"], ["--case", "64q1c4k"], ["--page-size", "16"],
                   ["--pool-gib", "2"], ["--dtype", "fp16"], ["--workloads", "decode"]):
        position = args.index(option[0])
        assert args[position:position + 2] == option
    backends = args[args.index("--backends") + 1].split(",")
    assert set(backends) == set(rows_calling("cudnn"))  # every binding by default
    assert "--sweep" not in args  # --case given: no built-in sweep added


def test_releases_default_to_the_short_sweep_and_narrow_by_binding(monkeypatch, tmp_path):
    _gpu_here(monkeypatch)
    calls = []
    monkeypatch.setattr("harness.releases.check.run_environment", lambda env, folder, args: calls.append(args) or 3)
    cli.main(["releases", "9.19.0.56", "9.28.1.4", "--binding", "cudnn-stats-ragged", "--out", str(tmp_path)])
    args = calls[0]
    assert args[args.index("--sweep") + 1] == "short"
    assert args[args.index("--backends") + 1] == "cudnn-stats-ragged"


def test_compare_envs_with_a_case_runs_that_case_only(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("harness.releases.environments.run_environment",
                        lambda spec, folder, args: calls.append(args) or 3)
    status = cli.main(["compare-envs", "a", "b", "--case", "4q1c64", "--heads", "4/2/32", "--dtype", "fp32",
                       "--device", "cpu", "--out", str(tmp_path)])
    assert status == 3
    assert "--sweep" not in calls[0] and calls[0][calls[0].index("--case") + 1] == "4q1c64"


@pytest.mark.parametrize("argv", [["releases", "9.19.0.56", "9.28.1.4"],
                                  ["releases", "9.19.0.56", "9.28.1.4", "--sweep", "cpu-tiny", "--device", "cpu"],
                                  ["releases", "bisect", "9.22.0.52", "9.28.1.4", "--case", "64q1c4k"]])
def test_without_a_gpu_releases_refuse_before_any_download(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("harness.releases.cudnn_release.download_wheel", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr("harness.releases.check.run_environment", lambda *a, **k: pytest.fail("ran"))
    status, err = _main([*argv, "--out", str(tmp_path / "o")], capsys)
    assert status == 2 and "NVIDIA GPU" in err and "nothing was fetched" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ what changed

CASES = [make_case("decode-b64-q1-c4096", "64q1c4k", 16), make_case("specdec-b64-q4-c4096", "64q4c4k", 16),
         make_case("prefill-b4-q512-c1024", "4q512c1k", 16)]
LSE_OFF = "LSE off: 3 of every 4 heads of a KV group never written (NaN) [ragged Stats]"


def _rows(label: str, verdicts: dict[tuple[str, str], str], slow: dict[tuple[str, str], float]):
    rng = random.Random(label)
    rows = []
    for backend in ("cudnn", "cudnn-stats-ragged"):
        for case in CASES:
            verdict = verdicts.get((backend, case.name), "ok")
            timing = None
            if verdict == "ok":
                median = 100.0 * slow.get((backend, case.name), 1.0)
                samples = sorted(median * (1 + rng.uniform(-0.01, 0.01)) for _ in range(41))
                timing = Timing.from_samples(samples, "cuda events", "flush 256 MiB")
            gate = GateResult(verdict, "" if verdict == "ok" else LSE_OFF)
            rows.append(make_row(cell=Cell(backend, case), gate=gate, timing=timing, env_id=f"env-{label}",
                                 run_id=f"run-{label}", device="cuda:0",
                                 backend_versions={"cudnn_backend": label.split("-")[1]}))
    return rows


def _plan() -> dict[str, list]:
    """9.19 baseline: ragged-Stats decode wrong; 9.24: it still is, and the padded prefill got 30 % slower;
    9.27: the decode is fixed; 9.28: the spec-decode of the ragged binding breaks."""
    wrong = {("cudnn-stats-ragged", "decode-b64-q1-c4096-p16"): "wrong"}
    return {
        "cudnn-9.19.0": _rows("cudnn-9.19.0", wrong, {}),
        "cudnn-9.24.1": _rows("cudnn-9.24.1", wrong, {("cudnn", "prefill-b4-q512-c1024-p16"): 1.3}),
        "cudnn-9.27.0": _rows("cudnn-9.27.0", {}, {}),
        "cudnn-9.28.1": _rows("cudnn-9.28.1", {("cudnn-stats-ragged", "specdec-b64-q4-c4096-p16"): "wrong"}, {}),
    }


def _runner(plan):
    def run(env, folder: Path, args) -> int:
        write_results_folder(folder, plan[env.label], synthetic_runs(env_id=f"env-{env.label}",
                                                                     run_id=f"run-{env.label}", label=env.label),
                             None, partial_tail=False)
        return 0
    return run


def test_verdict_transitions_walk_the_releases_in_order():
    labels = ["a", "b", "c", "d", "e"]
    assert behaviour_of(labels, {"a": "wrong", "b": "wrong", "c": "ok", "d": "ok", "e": "wrong"}) == (("e",), ("c",), ())
    assert behaviour_of(labels, {"a": "ok", "c": "error", "d": "unsupported"}) == (("c",), (), ("d",))
    assert behaviour_of(labels, {label: "ok" for label in labels}) == ((), (), ())


def test_what_changed_comes_first_and_breaking_a_binding_fails_the_check(tmp_path, capsys):
    envs = [EnvSpec(label) for label in _plan()]
    status = run_releases(envs, None, tmp_path, ["--no-report"], runner=_runner(_plan()), fail_on_regression=True,
                          log=lambda message: None)
    assert status == 1
    text = capsys.readouterr().out
    assert text.index("What changed in behaviour") < text.index("Regressions:")
    assert "behaviour: 1 cell(s) broke (1 in cudnn-9.28.1); 1 fixed (1 in cudnn-9.27.0)" in text
    summary = json.loads((tmp_path / RELEASES_JSON).read_text())
    changes = {(c["backend"], c["case"]): c for c in summary["behaviour_changes"]}
    assert set(changes) == {("cudnn-stats-ragged", "decode-b64-q1-c4096-p16"),
                            ("cudnn-stats-ragged", "specdec-b64-q4-c4096-p16")}
    decode = changes[("cudnn-stats-ragged", "decode-b64-q1-c4096-p16")]
    assert decode["verdicts"] == {"cudnn-9.19.0": "wrong", "cudnn-9.24.1": "wrong", "cudnn-9.27.0": "ok",
                                  "cudnn-9.28.1": "ok"}
    assert decode["fixed_in"] == ["cudnn-9.27.0"] and decode["broke_in"] == []
    assert decode["reasons"]["cudnn-9.19.0"] == LSE_OFF
    assert "packed [T, Hq]" in decode["binding"]
    assert changes[("cudnn-stats-ragged", "specdec-b64-q4-c4096-p16")]["broke_in"] == ["cudnn-9.28.1"]
    # the fix is an improvement against the baseline; the timing regression is listed after behaviour
    assert [(r["release"], r["label"]) for r in summary["improvements"]] == [
        ("cudnn-9.27.0", "cudnn-stats-ragged decode-b64-q1-c4096-p16"),
        ("cudnn-9.28.1", "cudnn-stats-ragged decode-b64-q1-c4096-p16")]
    assert ("cudnn-9.24.1", "slower", "cudnn prefill-b4-q512-c1024-p16") in {
        (r["release"], r["check"], r["label"]) for r in summary["regressions"]}
    html = (tmp_path / "releases.html").read_text()
    assert html.index("What changed in behaviour") < html.index("id=\"regressions\"")


def test_a_timing_regression_alone_fails_the_check_and_nothing_broke(tmp_path, capsys):
    plan = _plan()
    plan = {label: plan[label] for label in ("cudnn-9.27.0", "cudnn-9.28.1")}
    plan["cudnn-9.28.1"] = _rows("cudnn-9.28.1", {}, {("cudnn", "decode-b64-q1-c4096-p16"): 1.5})
    status = run_releases([EnvSpec(label) for label in plan], None, tmp_path, ["--no-report"], runner=_runner(plan),
                          fail_on_regression=True, log=lambda message: None)
    assert status == 1
    text = capsys.readouterr().out
    assert "behaviour: every cell has the same verdict on every release" in text
    assert "1 regression(s) against cudnn-9.27.0 (cudnn-9.28.1: 1 cell slower)" in text


def test_releases_where_every_cell_was_skipped_compare_nothing(tmp_path):
    plan = {}
    for label in ("cudnn-9.19.0", "cudnn-9.28.1"):
        rows = _rows(label, {}, {})
        for row in rows:
            row.update(verdict="skipped", reason="cuDNN SDPA runs on CUDA devices only, not cpu", median_us=None)
        plan[label] = rows
    folders = {}
    for label, rows in plan.items():
        _runner(plan)(EnvSpec(label), tmp_path / label, [])
        folders[label] = tmp_path / label
    rc = load_releases(folders)
    text = format_releases_text(rc)
    assert "Nothing was compared: every cell was skipped" in text and "no regressions" not in text
    assert "Nothing was compared" in render_releases_html(rc)


# ------------------------------------------------------------------------------------ bisect


def test_candidates_are_the_known_releases_between_in_version_order():
    known = ["9.28.1.4", "9.12.0.46", "9.24.1.1", "9.26.1.1", "9.27.0.42", "9.28.0.42", "9.22.0.52", "9.30.0.1"]
    assert candidates_between("9.22.0.52", "9.28.1.4", known) == [
        "9.22.0.52", "9.24.1.1", "9.26.1.1", "9.27.0.42", "9.28.0.42", "9.28.1.4"]
    # a fix is bisected from the broken release forward just the same, and the ends need not be listed
    assert candidates_between("9.28.1.4", "9.25.1.1", known) == ["9.28.1.4", "9.28.0.42", "9.27.0.42",
                                                                  "9.26.1.1", "9.25.1.1"]


def _planted(verdicts: dict[str, str], times: dict[str, float] | None = None):
    measured: list[str] = []

    def measure(release: str):
        measured.append(release)
        time = (times or {}).get(release, 100.0)
        return {"cell": {"backend": "cudnn-stats-ragged", "case": "decode-b64-q1-c4096-p16",
                         "verdict": verdicts[release], "reason": "", "median_us": time, "iqr_pct": 1.0}}
    return measure, measured


def test_bisect_finds_the_first_release_that_changed_in_log_steps():
    releases = [f"9.{minor}.0" for minor in range(12, 29)]  # 17 releases
    verdicts = {release: ("wrong" if int(release.split(".")[1]) < 27 else "ok") for release in releases}
    measure, measured = _planted(verdicts)
    logged = []
    result = bisect(releases, measure, logged.append)
    assert result.first_changed == "9.27.0" and result.last_unchanged == "9.26.0"
    assert measured[:2] == ["9.12.0", "9.28.0"]  # GOOD and BAD first
    assert measured[2] == releases[8]  # then halfway
    assert len(measured) <= 2 + 4  # ceil(log2(15)) steps between the ends
    assert len(set(measured)) == len(measured)
    assert any("like BAD" in line for line in logged) and any("like GOOD" in line for line in logged)
    assert "first release that changed: 9.27.0" in result.answer()
    assert "wrong -> ok" in result.answer()


def test_bisect_follows_time_beyond_the_noise_band_and_ignores_noise():
    releases = ["9.20", "9.21", "9.22", "9.23", "9.24"]
    times = {"9.20": 100.0, "9.21": 102.0, "9.22": 98.0, "9.23": 140.0, "9.24": 141.0}
    measure, _ = _planted({release: "ok" for release in releases}, times)
    result = bisect(releases, measure)
    assert result.first_changed == "9.23" and result.last_unchanged == "9.22"
    assert cell_difference({"verdict": "ok", "median_us": 100.0, "iqr_pct": 1.0},
                           {"verdict": "ok", "median_us": 103.0, "iqr_pct": 1.0}) == ""


def test_bisect_with_nothing_changed_says_so():
    measure, measured = _planted({"9.20": "ok", "9.21": "ok", "9.22": "ok"})
    result = bisect(["9.20", "9.21", "9.22"], measure)
    assert result.first_changed is None and measured == ["9.20", "9.22"]
    assert "nothing to bisect" in result.answer()


def test_bisect_command_measures_only_the_releases_it_needs(monkeypatch, tmp_path, capsys):
    _gpu_here(monkeypatch)
    known = ["9.22.0.52", "9.24.1.1", "9.25.1.1", "9.26.1.1", "9.27.0.42", "9.28.0.42", "9.28.1.4"]
    monkeypatch.setattr("harness.releases.bisect.registry_releases", lambda: known)
    ran = []

    def fake_run(env, folder, args):
        ran.append(env.cudnn)
        broken = env.cudnn < "9.27"
        rows = _rows(f"cudnn-{env.cudnn}", {("cudnn-stats-ragged", "decode-b64-q1-c4096-p16"): "wrong"} if broken else {},
                     {})
        write_results_folder(folder, rows, synthetic_runs(env_id="e", run_id=f"r{env.cudnn}", label=env.label), None,
                             partial_tail=False)
        return 0

    monkeypatch.setattr("harness.releases.bisect.run_environment", fake_run)
    status = cli.main(["releases", "bisect", "9.22.0.52", "9.28.1.4", "--case", "64q1c4k", "--binding",
                       "cudnn-stats-ragged", "--out", str(tmp_path)])
    assert status == 0
    assert ran[:2] == ["9.22.0.52", "9.28.1.4"] and len(ran) == 4 and "9.27.0.42" in ran
    out = capsys.readouterr()
    assert "first release that changed: 9.27.0.42 (last one like 9.22.0.52: 9.26.1.1)" in out.out
    assert "step 3" in out.err
    saved = json.loads((tmp_path / "bisect.json").read_text())
    assert saved["first_changed"] == "9.27.0.42"


def test_release_check_arguments_parse_every_selection_option():
    parser = add_releases_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["9.19.0.56", "9.28.1.4", "--sweep-file", "x.toml", "--heads", "8/1/128", "--seed", "3",
                              "--no-causal", "--pool-pages", "4096"])
    words = child_run_args(args, capability=True, backends=None)
    for option in ("--sweep-file", "--heads", "--seed", "--no-causal", "--pool-pages", "--capability"):
        assert option in words
    assert cmd_releases is not None


def test_no_timing_compares_behaviour_only(tmp_path, capsys):
    """Result sets whose times are not comparable (a shared GPU): --no-timing keeps every verdict change and
    drops the timing findings, the time plot and the time table."""
    envs = [EnvSpec(label) for label in _plan()]
    status = run_releases(envs, None, tmp_path, ["--no-report"], runner=_runner(_plan()), fail_on_regression=True,
                          timing=False, log=lambda message: None)
    assert status == 1  # the binding that broke still fails the check
    text = capsys.readouterr().out
    assert "Timings not compared" in text and "slower" not in text.lower().split("what changed")[1]
    summary = json.loads((tmp_path / RELEASES_JSON).read_text())
    assert summary["timing_compared"] is False
    assert not [r for r in summary["regressions"] if r["check"] == "slower"]
    assert {(c["backend"], c["case"]) for c in summary["behaviour_changes"]} == {
        ("cudnn-stats-ragged", "decode-b64-q1-c4096-p16"), ("cudnn-stats-ragged", "specdec-b64-q4-c4096-p16")}
    html = (tmp_path / "releases.html").read_text()
    assert "Timings were not compared" in html and "plot-releases" not in html and 'id="cells"' not in html
