"""Reports of CPU runs say at the top that their numbers are a smoke test and name no winners or speed-ups;
a backend that cannot run on the machine (its library or device missing) shows as skipped, never as error."""

from __future__ import annotations

import re

import pytest

from reports.compare import compare, format_comparison_text
from reports.html import render_report
from reports.model import CPU_SMOKE_NOTE, ResultSet, cannot_run_here, load_results
from tests.report_fixtures import small_cases, synthetic_rows, synthetic_runs, write_results_folder

BASELINE = {"cudnn": {"baseline": True}}
"""The declarations of a checkout whose cuDNN adapter is the baseline (speed-up maps are drawn against it)."""
CUDNN_MISSING = "measure: RuntimeError: Unable to find symbol cudnnGetVersion"


def _cpu_rows(**kwargs) -> list[dict]:
    return [dict(row, device="cpu") for row in synthetic_rows(case_list=small_cases(), **kwargs)]


def _cpu_runs(**kwargs) -> list[dict]:
    runs = synthetic_runs(**kwargs)
    for run in runs:
        run["provenance"] = dict(run["provenance"], gpu="none", gpu_count=0, timer="perf_counter")
        run["ceilings"] = None
    return runs


@pytest.fixture(scope="module")
def cpu_folder(tmp_path_factory):
    return write_results_folder(tmp_path_factory.mktemp("cpu") / "run", _cpu_rows(), _cpu_runs())


@pytest.fixture(scope="module")
def gpu_folder(tmp_path_factory):
    return write_results_folder(tmp_path_factory.mktemp("gpu") / "run", synthetic_rows(case_list=small_cases()),
                                synthetic_runs())


def _winner_cells(page: str) -> list[str]:
    section = re.search(r'<section id="winners">(.*?)</section>', page, re.S).group(1)
    return re.findall(r"<td>.*?<b>([^<]+)</b></td>", section)


def test_cpu_is_recognised_from_rows_or_provenance(cpu_folder, gpu_folder):
    assert load_results(cpu_folder).measured_on_cpu
    assert not load_results(gpu_folder).measured_on_cpu
    no_device = [dict(row, device="") for row in _cpu_rows()]
    assert ResultSet.from_records(no_device, _cpu_runs()).measured_on_cpu
    assert not ResultSet.from_records(no_device, synthetic_runs()).measured_on_cpu


def test_cpu_report_says_smoke_test_at_the_top_and_names_no_winner(cpu_folder, tmp_path):
    page = render_report(load_results(cpu_folder), tmp_path / "cpu.html", declarations=BASELINE).read_text()
    note = page.index('id="cpu-smoke-test"')
    assert note < page.index('<section id="summary">')
    assert "smoke test of the pipeline" in page and "not a measurement of the backends" in page
    assert _winner_cells(page) == []
    assert "No winners named" in page and "plot-speedup-" not in page and "No speed-ups named" in page


def test_gpu_report_keeps_its_winners(gpu_folder, tmp_path):
    page = render_report(load_results(gpu_folder), tmp_path / "gpu.html", declarations=BASELINE).read_text()
    assert 'id="cpu-smoke-test"' not in page
    assert _winner_cells(page) and "plot-speedup-" in page


def test_comparison_of_cpu_runs_starts_with_the_note(cpu_folder, tmp_path):
    slower = {("triton", case.name): 3.0 for case in small_cases()}
    other = write_results_folder(tmp_path / "other", _cpu_rows(factors=slower, env_id="env-new", run_id="run-2"),
                                 _cpu_runs(env_id="env-new", run_id="run-2"))
    text = format_comparison_text(compare(load_results(cpu_folder), load_results(other)))
    assert text.startswith(f"CPU run: {CPU_SMOKE_NOTE}")
    assert "CPU timings: not findings" in text


def test_a_backend_that_cannot_run_here_is_skipped_not_error(tmp_path):
    """cuDNN's frontend without its library raised in every cell: the card says skipped with the reason,
    and no cell of it counts as an error; a real failure of another backend stays an error."""
    overrides = {("cudnn", case.name): ("error", CUDNN_MISSING) for case in small_cases()}
    overrides[("triton", small_cases()[0].name)] = ("error", "run: RuntimeError: CUDA error: an illegal memory access")
    folder = write_results_folder(tmp_path / "run", _cpu_rows(overrides=overrides), _cpu_runs())
    results = load_results(folder)
    cudnn = results.rows[results.rows["backend"] == "cudnn"]
    assert set(cudnn["verdict"]) == {"skipped"} and cudnn["reason"].str.contains("cudnnGetVersion").all()
    assert "cudnn" in results.skipped_backends()
    assert (results.rows["verdict"] == "error").sum() == 1
    page = render_report(results, tmp_path / "report.html").read_text()
    assert '<div class="card skipped" id="backend-cudnn">' in page, "cudnn's card is not marked skipped"
    card = page.split('id="backend-cudnn">', 1)[1].split('<div class="card', 1)[0]
    assert "cudnnGetVersion" in card and "v-error" not in card and "skipped" in card


def test_an_error_of_a_backend_recorded_unavailable_is_skipped():
    runs = _cpu_runs()
    runs[0]["availability"] = [{"backend": "cudnn", "available": "no",
                                "reason": "cuDNN SDPA runs on CUDA devices only, not cpu"}]
    rows = [dict(row, verdict="error", reason="") if row["backend"] == "cudnn" else row for row in _cpu_rows()]
    results = ResultSet.from_records(rows, runs)
    cudnn = results.rows[results.rows["backend"] == "cudnn"]
    assert set(cudnn["verdict"]) == {"skipped"}
    assert cudnn["reason"].str.contains("CUDA devices only").all()


def test_cannot_run_here_words():
    assert cannot_run_here(CUDNN_MISSING)
    assert cannot_run_here("libcudnn_graph.so.9: cannot open shared object file: No such file or directory")
    assert not cannot_run_here("run: RuntimeError: CUDNN_STATUS_EXECUTION_FAILED")
