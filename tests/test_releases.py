"""Several releases against one baseline, on synthetic result sets: a planted 20 % regression in one
release and a capability gained in another are found, the noise of repeated runs is not; changed
refusal messages are listed as capability changes; the releases page, the JSON summary, the text, and
`paged-bench releases` end to end with a stand-in for the measuring processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.releases.check import add_releases_arguments, child_run_args, cmd_releases, parse_release, run_releases
from harness.releases.environments import EnvSpec, EnvSpecError
from reports.model import ResultSet
from reports.releases import (RELEASES_FILE, RELEASES_JSON, compare_releases, format_releases_text, release_tuple,
                              releases_summary, render_releases_html)
from tests.report_fixtures import (small_cases, synthetic_capability, synthetic_rows, synthetic_runs,
                                   write_results_folder)

SLOW = ("cudnn", "decode-b64-q1-c4096-p256")
GAINED = ("cudnn", "prefill-b8-q2048-c2048-p16")
REFUSED = ("cuDNN backend (check_support): CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN: no engine for paged K/V "
           "with head dim 128 and page 16")
REWORDED = "cuDNN backend (check_support): CUDNN_STATUS_NOT_SUPPORTED: page size 16 with bottom-right causal"
PROBE_GAINED = ("cudnn", "page_size", "1")


def release_rows(seed: int, version: str, **kwargs):
    return synthetic_rows(seed=seed, jitter=0.02 if seed else 0.0, env_id=f"env-{version}", run_id=f"run-{version}",
                          versions={"cudnn_backend": version, "torch_cudnn": version}, **kwargs)


def release(label: str, rows, capability=None) -> ResultSet:
    return ResultSet.from_records(rows, synthetic_runs(env_id=f"env-{label}", run_id=f"run-{label}", label=label),
                                  capability if capability is not None else synthetic_capability(), name=label)


@pytest.fixture(scope="module")
def sets() -> list[ResultSet]:
    """9.19 (baseline): one cell refused, one probe entry failing; 9.24: a 20 % slower cell, the refusal
    reworded; 9.28: the refused cell works and the probe entry too; everything else +-2 % noise."""
    base = release("cudnn-9.19", release_rows(0, "9.19.0", overrides={GAINED: ("unsupported", REFUSED)}),
                   synthetic_capability(lost=PROBE_GAINED))
    slow = release("cudnn-9.24", release_rows(1, "9.24.0", factors={SLOW: 1.2}, overrides={GAINED: ("unsupported", REWORDED)}),
                   synthetic_capability(lost=PROBE_GAINED))
    fixed = release("cudnn-9.28", release_rows(2, "9.28.1"))
    return [base, slow, fixed]


@pytest.fixture(scope="module")
def rc(sets):
    return compare_releases(sets, "cudnn-9.19", requested={"cudnn-9.24": "9.24.0.43", "cudnn-9.28": "9.28.1.4"})


def test_planted_regression_is_the_only_regression(rc):
    assert [(label, f.check, f.label) for label, f in rc.regressions] == [("cudnn-9.24", "slower", " ".join(SLOW))]
    [(_, finding)] = rc.regressions
    assert "20" in finding.message or "19" in finding.message or "21" in finding.message


def test_capability_gained_in_another_release(rc):
    gained = [(label, f.kind, f.label) for label, f in rc.findings(checks=("gained",))]
    assert ("cudnn-9.28", "cell", " ".join(GAINED)) in gained
    assert ("cudnn-9.28", "capability", "cudnn page_size=1") in gained
    assert all(label == "cudnn-9.28" for label, *_ in gained)


def test_noise_stays_quiet(rc):
    timeline = rc.timeline()
    others = timeline[(timeline["status"] != "baseline") & ~timeline["case"].isin([SLOW[1], GAINED[1]])]
    assert set(others["status"]) <= {"same", "unchanged"}
    assert [f for _, f in rc.improvements if f.check == "faster"] == []


def test_changed_refusal_message_is_a_capability_change(rc):
    changes = [(label, f.check, f.label, f.message) for label, f in rc.capability_changes]
    reworded = [c for c in changes if c[0] == "cudnn-9.24" and c[1] == "changed"]
    assert len(reworded) == 1 and reworded[0][2] == " ".join(GAINED)
    assert "CUDNN_STATUS_NOT_SUPPORTED:" in reworded[0][3] and "reason changed" in reworded[0][3]


def test_timeline_has_every_cell_on_every_release(rc, sets):
    timeline = rc.timeline()
    assert set(timeline["release"]) == {"cudnn-9.19", "cudnn-9.24", "cudnn-9.28"}
    assert len(timeline) == sum(len(s.rows) for s in sets)
    slow = timeline[(timeline["backend"] == SLOW[0]) & (timeline["case"] == SLOW[1])].set_index("release")
    assert slow.loc["cudnn-9.19", "ratio"] == 1.0 and slow.loc["cudnn-9.19", "status"] == "baseline"
    assert slow.loc["cudnn-9.24", "ratio"] == pytest.approx(1.2, rel=0.03) and slow.loc["cudnn-9.24", "status"] == "slower"
    assert slow.loc["cudnn-9.28", "status"] == "same"


def test_loaded_versions_are_read_from_the_rows_and_checked(sets):
    rc = compare_releases(sets, requested={"cudnn-9.24": "9.24.0.43", "cudnn-9.28": "9.26.1.1"})
    loaded = rc.loaded()
    assert loaded["cudnn-9.24"]["cudnn_backend"] == "9.24.0" and loaded["cudnn-9.19"]["cudnn_backend"] == "9.19.0"
    problems = rc.version_problems()
    assert len(problems) == 1 and "cudnn-9.28: asked for cuDNN 9.26.1.1, the rows ran on 9.28.1" in problems[0]
    assert release_tuple("92801") == (9, 28, 1) and release_tuple("9.28.1.4") == (9, 28, 1, 4)
    assert release_tuple("not a version") is None


def test_text_summary(rc):
    text = format_releases_text(rc)
    assert text.startswith("cuDNN releases compared with cudnn-9.19 (order: cudnn-9.19, cudnn-9.24, cudnn-9.28)")
    assert "1 regression(s) against cudnn-9.19 (cudnn-9.24: 1 cell slower)" in text
    assert "behaviour: 1 fixed (1 in cudnn-9.28)" in text
    assert text.index("What changed in behaviour") < text.index("Regressions:")
    assert "Capability changes" in text and "REWORDED"[:0] + "CHANGED" in text
    assert SLOW[1] in text and "slower" in text
    assert re.search(r"cudnn-9\.28\s+9\.28\.1\.4\s+9\.28\.1", text)  # asked for, and what ran
    assert "WARNING" not in text


def test_summary_json(rc):
    summary = releases_summary(rc)
    json.dumps(summary)
    assert summary["baseline"] == "cudnn-9.19" and len(summary["regressions"]) == 1
    assert summary["regressions"][0]["release"] == "cudnn-9.24"
    assert {r["release"] for r in summary["releases"]} == {"cudnn-9.19", "cudnn-9.24", "cudnn-9.28"}
    assert set(summary["pairwise"]) == {"cudnn-9.24", "cudnn-9.28"}


def test_releases_page_is_self_contained_with_the_plot(rc):
    html = render_releases_html(rc)
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert "Each cell&#39;s time across releases" in html or "Each cell's time across releases" in html
    assert SLOW[1] in html and "cudnn-9.28" in html and "Capability changes" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)  # nothing fetched


def test_baseline_must_be_a_release(sets):
    with pytest.raises(ValueError, match="not one of the releases"):
        compare_releases(sets, "cudnn-9.99")


# ------------------------------------------------------------------------------------------ the command

def test_bare_versions_become_release_environments():
    assert parse_release("9.28.1.4") == EnvSpec(label="cudnn-9.28.1.4", cudnn="9.28.1.4")
    assert parse_release("own") == EnvSpec(label="own")
    with pytest.raises(EnvSpecError):
        parse_release("x,cudnn=latest")


def test_run_args_are_the_same_selection_for_every_release():
    import argparse

    args = add_releases_arguments(argparse.ArgumentParser()).parse_args(
        ["9.19.0.56", "9.28.1.4", "--sweep", "short", "--workloads", "decode", "--model", "llama-3-70b-tp8",
         "--page-size", "16", "--target-ms", "50"])
    assert child_run_args(args, capability=False, backends="cudnn") == [
        "--no-report", "--resume", "--sweep", "short", "--workloads", "decode", "--model", "llama-3-70b-tp8",
        "--page-size", "16", "--no-capability", "--shard", "1/1", "--backends", "cudnn", "--target-ms", "50.0"]


RUN_ARGS = ["--no-report", "--resume", "--sweep", "short", "--no-capability"]


def fake_runner(plan: dict[str, tuple[list, list]], calls: list):
    """Stands in for run_environment: writes the planned rows (and capability) into the folder."""
    def run(env, folder: Path, args: list[str]) -> int:
        calls.append((env.label, folder, args))
        if env.label not in plan:
            return 3
        rows, capability = plan[env.label]
        write_results_folder(folder, rows, synthetic_runs(env_id=f"env-{env.label}", run_id=f"run-{env.label}",
                                                          label=env.label), capability, partial_tail=False)
        return 0
    return run


SMALL_SLOW = ("cudnn", "decode-b64-q1-c8192-p256")
SMALL_GAINED = ("cudnn", "prefill-b4-q2048-c1024-p16")


def plan_of():
    """The small sweep (every workload, both page sizes): a 20 % slower cell on 9.24, a gained cell on 9.28."""
    cases = small_cases()
    assert {SMALL_SLOW[1], SMALL_GAINED[1]} <= {c.name for c in cases}
    return {
        "cudnn-9.19": (release_rows(0, "9.19.0", overrides={SMALL_GAINED: ("unsupported", REFUSED)}, case_list=cases),
                       synthetic_capability()),
        "cudnn-9.24": (release_rows(1, "9.24.0", factors={SMALL_SLOW: 1.2},
                                    overrides={SMALL_GAINED: ("unsupported", REFUSED)}, case_list=cases),
                       synthetic_capability()),
        "cudnn-9.28": (release_rows(2, "9.28.1", case_list=cases), synthetic_capability()),
    }


ENVS = [EnvSpec("cudnn-9.19"), EnvSpec("cudnn-9.24", cudnn="9.24.0.43"), EnvSpec("cudnn-9.28", cudnn="9.28.1.4")]


def test_run_releases_end_to_end(tmp_path, capsys):
    calls = []
    status = run_releases(ENVS, None, tmp_path, RUN_ARGS, runner=fake_runner(plan_of(), calls), log=lambda m: None)
    assert status == 0
    assert [label for label, *_ in calls] == ["cudnn-9.19", "cudnn-9.24", "cudnn-9.28"]
    assert all(args == calls[0][2] for *_, args in calls) and "--sweep" in calls[0][2]
    assert (tmp_path / RELEASES_FILE).exists() and (tmp_path / RELEASES_JSON).exists()
    summary = json.loads((tmp_path / RELEASES_JSON).read_text())
    assert [(r["release"], r["check"], r["label"]) for r in summary["regressions"]] == [
        ("cudnn-9.24", "slower", " ".join(SMALL_SLOW))]
    assert [(r["release"], r["label"]) for r in summary["improvements"]] == [("cudnn-9.28", " ".join(SMALL_GAINED))]
    assert "1 regression(s)" in capsys.readouterr().out


def test_fail_on_regression_exits_1(tmp_path):
    status = run_releases(ENVS, "cudnn-9.19", tmp_path, RUN_ARGS, fail_on_regression=True,
                          runner=fake_runner(plan_of(), []), log=lambda m: None)
    assert status == 1


def test_a_release_that_cannot_run_is_listed_and_the_rest_compared(tmp_path, capsys):
    plan = plan_of()
    del plan["cudnn-9.28"]
    status = run_releases(ENVS, None, tmp_path, RUN_ARGS, runner=fake_runner(plan, []), log=lambda m: None)
    assert status == 2
    out = capsys.readouterr().out
    assert "NOT RUN: cudnn-9.28" in out and "cudnn-9.24" in out
    summary = json.loads((tmp_path / RELEASES_JSON).read_text())
    assert "cudnn-9.28" in summary["failed"]


def test_no_baseline_results_means_nothing_to_compare(tmp_path):
    plan = plan_of()
    del plan["cudnn-9.19"]
    assert run_releases(ENVS, None, tmp_path, RUN_ARGS, runner=fake_runner(plan, []), log=lambda m: None) == 2


def test_command_line_compare_only(tmp_path, capsys):
    run_releases(ENVS, None, tmp_path, RUN_ARGS, runner=fake_runner(plan_of(), []), log=lambda m: None)
    capsys.readouterr()
    import argparse

    parser = add_releases_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["cudnn-9.19", "cudnn-9.24,cudnn=9.24.0.43", "cudnn-9.28,cudnn=9.28.1.4", "--out",
                              str(tmp_path), "--compare-only", "--fail-on-regression"])
    assert cmd_releases(args) == 1
    assert "cudnn-9.24: 1 cell slower" in capsys.readouterr().out
    bad = parser.parse_args(["a", "a", "--out", str(tmp_path), "--compare-only"])
    assert cmd_releases(bad) == 2  # two environments with one label


def test_the_releases_report_is_torch_free():
    import subprocess
    import sys

    code = ("import sys, reports.releases; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'harness', 'adapters')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "[]"


def test_a_release_that_stopped_midway_is_compared_and_marked_incomplete(tmp_path, capsys):
    inner = fake_runner(plan_of(), [])

    def runner(env, folder, args):
        status = inner(env, folder, args)
        return 1 if env.label == "cudnn-9.28" else status

    assert run_releases(ENVS, None, tmp_path, RUN_ARGS, runner=runner, log=lambda m: None) == 2
    out = capsys.readouterr().out
    assert "INCOMPLETE: cudnn-9.28" in out and "its finished cells are compared" in out
    assert "cudnn-9.28: 1 cell gained" in out
