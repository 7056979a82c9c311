"""Every report path (page, comparison, machines page, capability matrix) renders folders whose rows hold
any workload kind (decode, prefill, mixed, spec-decode and a kind added after the report was written)
with no capability.csv, so the capability matrix is derived from the rows."""

from __future__ import annotations

import json

import pytest

from harness.cases.sweep import Case, uniform_case
from reports.capability import capability_matrix, format_capability_text
from reports.compare import compare, format_comparison_text
from reports.html import render_report
from reports.machines import format_machines_text, render_machines_report
from reports.model import WORKLOAD_ORDER, ResultSet, load_results, workload_kinds, workload_rank
from tests.report_fixtures import synthetic_rows, synthetic_runs, write_results_folder

FUTURE_KIND = "tree-decode"
"""A workload kind no renderer knows by name."""


def _cases() -> list[Case]:
    return [uniform_case("decode", 4, 1, 1024, 16), uniform_case("prefill", 1, 512, 0, 16),
            Case(name="spec-b4-q4-c1k-p16", grammar="4q4c1024", page_size=16),
            Case(name="spec-b8-q4-c2k-p16", grammar="8q4c2048", page_size=16),
            Case(name="mixed-p16", grammar="8q1c3000_8q9-2000c0-7000", page_size=16)]


def _rows(env_id: str, run_id: str) -> list[dict]:
    """Rows of every kind; the last spec-decode case's rows relabelled as a future kind."""
    rows = synthetic_rows(case_list=_cases(), env_id=env_id, run_id=run_id)
    for row in rows:
        if row["case"] == "spec-b8-q4-c2k-p16":
            row["workload"] = FUTURE_KIND
    return rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("kinds")
    old = write_results_folder(base / "old", _rows("env-a", "run-a"), synthetic_runs(env_id="env-a", run_id="run-a"))
    new = write_results_folder(base / "new", _rows("env-b", "run-b"),
                               synthetic_runs(env_id="env-b", run_id="run-b", label="second"))
    return old, new


def test_the_fixture_holds_every_kind_and_no_probe(folders):
    results = load_results(folders[0])
    assert set(results.rows["workload"]) == {"decode", "prefill", "mixed", "spec-decode", FUTURE_KIND}
    assert results.capability.empty


def test_kinds_are_ordered_known_first_then_by_name():
    assert workload_kinds(["zeta", "mixed", "", "decode", "alpha", "decode"]) == ["decode", "mixed", "alpha", "zeta"]
    assert workload_kinds(WORKLOAD_ORDER) == list(WORKLOAD_ORDER)
    ranks = workload_rank(ResultSet.from_records([{"workload": k} for k in ("zeta", "decode", "spec-decode")]
                                                 ).rows["workload"])
    assert ranks.tolist() == [2, 0, 1]


def test_derived_capability_matrix_has_a_column_per_kind(folders):
    matrix = capability_matrix(load_results(folders[0]))
    assert matrix.source == "sweep"
    kinds = [value for feature, value in matrix.columns if feature == "workload"]
    assert kinds == ["decode", "spec-decode", "prefill", "mixed", FUTURE_KIND]
    assert matrix.entry("sdpa-gather", ("workload", "spec-decode")).verdict == "ok"
    text = format_capability_text(matrix)
    assert f"workload={FUTURE_KIND}" in text and "workload=spec-decode" in text


def test_report_page_renders_every_kind(folders, tmp_path):
    old, new = folders
    page = render_report(load_results(new), tmp_path / "report.html", baseline=load_results(old)).read_text()
    assert "spec-b4-q4-c1k-p16" in page and "spec-b8-q4-c2k-p16" in page
    assert f"workload={FUTURE_KIND}" in page or FUTURE_KIND in page


def test_comparison_covers_every_kind(folders):
    old, new = folders
    comparison = compare(load_results(old), load_results(new))
    assert {"spec-decode", FUTURE_KIND} <= set(comparison.cells["workload"])
    assert "Cells: 30 compared" in format_comparison_text(comparison)
    json.dumps(comparison.summary(), default=str)


def test_machines_page_and_text_cover_every_kind(folders, tmp_path):
    page = render_machines_report(list(folders), tmp_path / "machines.html").read_text()
    assert "spec-decode" in page and FUTURE_KIND in page
    assert "spec-b4-q4-c1k-p16" in format_machines_text(list(folders), show_all=True, limit=1000)
