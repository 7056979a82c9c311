"""The speed-up summary (`reports.tables.speedup_summary`): the speed-up maps in numbers, per workload kind
and backend; checked against ratios computed by hand from the rows it reads."""

from __future__ import annotations

import math

import pytest

from harness.cases.sweep import uniform_case
from reports.html import render_html
from reports.model import ResultSet
from reports.tables import format_speedup_text, speedup_summary
from tests.report_fixtures import synthetic_rows, synthetic_runs

CASES = [uniform_case("decode", 8, 1, 4096, 16), uniform_case("decode", 8, 1, 16384, 16),
         uniform_case("prefill", 1, 512, 0, 16), uniform_case("prefill", 4, 2048, 2048, 16)]


def _results(**kwargs) -> ResultSet:
    return ResultSet.from_records(synthetic_rows(case_list=CASES, **kwargs), synthetic_runs())


def _time(results: ResultSet, case: str, backend: str) -> float:
    rows = results.rows
    return float(rows[(rows["case"] == case) & (rows["backend"] == backend)]["median_us"].iloc[0])


def test_geomean_min_and_max_are_the_hand_computed_ratios():
    results = _results()
    table = speedup_summary(results, "cudnn")
    row = table[(table["workload"] == "prefill") & (table["backend"] == "triton")].iloc[0]
    ratios = {case.name: _time(results, case.name, "cudnn") / _time(results, case.name, "triton")
              for case in CASES if case.spec().kind == "prefill"}
    assert row["cells"] == 2
    assert row["geomean"] == pytest.approx(math.sqrt(math.prod(ratios.values())), rel=1e-12)
    assert row["min"] == pytest.approx(min(ratios.values()), rel=1e-12)
    assert row["min_case"] == min(ratios, key=ratios.get)
    assert row["max_case"] == max(ratios, key=ratios.get)
    assert row["slower"] == sum(value < 1 for value in ratios.values())
    assert "cudnn" not in set(table["backend"])
    assert list(dict.fromkeys(table["workload"])) == ["decode", "prefill"]  # the report's order of kinds


def test_a_planted_slow_cell_becomes_the_minimum_and_counts_as_slower():
    slow = CASES[1].name
    plain_results, planted_results = _results(), _results(factors={("triton", slow): 10.0})
    plain, planted = speedup_summary(plain_results, "cudnn"), speedup_summary(planted_results, "cudnn")
    pick = lambda table: table[(table["workload"] == "decode") & (table["backend"] == "triton")].iloc[0]
    assert _time(planted_results, slow, "triton") == pytest.approx(10 * _time(plain_results, slow, "triton"), rel=1e-9)
    assert pick(planted)["min_case"] == slow
    assert pick(planted)["min"] == pytest.approx(_time(planted_results, slow, "cudnn")
                                                 / _time(planted_results, slow, "triton"), rel=1e-12)
    assert pick(planted)["slower"] >= 1
    # only that backend's row moved
    assert pick(planted)["geomean"] < pick(plain)["geomean"]
    other = lambda table: table[(table["workload"] == "decode") & (table["backend"] == "flex-paged")].iloc[0]
    assert other(planted)["geomean"] == pytest.approx(other(plain)["geomean"], rel=1e-12)


def test_cells_that_did_not_run_are_left_out_not_counted_as_zero():
    case = CASES[0].name
    results = _results(overrides={("triton", case): ("wrong", "planted")})
    row = speedup_summary(results, "cudnn")
    row = row[(row["workload"] == "decode") & (row["backend"] == "triton")].iloc[0]
    assert row["cells"] == 1 and case not in (row["min_case"], row["max_case"])


def test_an_absent_reference_gives_an_empty_table_and_a_sentence():
    results = _results()
    assert speedup_summary(results, "no-such-backend").empty
    assert "no plain cell" in format_speedup_text(results, "no-such-backend")


def test_the_text_and_the_page_show_the_table():
    results = _results()
    text = format_speedup_text(results, "cudnn")
    assert text.startswith("Speed-up against cudnn") and "triton" in text and "prefill" in text
    assert 'id="speedup-summary"' in render_html(results, declarations={"cudnn": {"baseline": True}})
    assert 'id="speedup-summary"' not in render_html(results)  # no baseline declared: no table


def test_the_command_line_prints_it_and_names_an_unknown_backend(tmp_path, capsys):
    from reports.cli import main
    from tests.report_fixtures import write_results_folder

    folder = tmp_path / "results"
    write_results_folder(folder, synthetic_rows(case_list=CASES), synthetic_runs())
    assert main([str(folder), "--text", "--against", "triton", "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "Speed-up against triton" in out and "cudnn" in out
    assert main([str(folder), "--text", "--against", "no-such", "--out", str(tmp_path / "s.html")]) == 2
    err = capsys.readouterr().err
    assert "'no-such' is not a backend" in err and "triton" in err
    assert not (tmp_path / "s.html").exists()
