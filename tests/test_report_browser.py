"""The report in a real browser: headless Chromium (Debian's `chromium` package) loads the page from
disk through the DevTools protocol; the page must raise no error, log no console error, request
nothing outside itself, show the capability matrix, the figures and the provenance, and its table
sorting and filtering must work. The screenshot is kept as artifacts/report-screenshot.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reports.html import render_report
from reports.model import load_results
from tests.browser import Chromium, find_chromium
from tests.report_fixtures import small_cases, synthetic_capability, synthetic_rows, synthetic_runs, write_results_folder

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]
websocket = pytest.importorskip("websocket", reason="websocket-client is not installed (pip install websocket-client)")

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SLOW_CELL = ("cudnn", "decode-b64-q1-c8192-p256")


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM, width=1400, height=1000) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    cases = small_cases()
    old = write_results_folder(root / "old", synthetic_rows(seed=0, case_list=cases), synthetic_runs(label="fe-1.32.0"),
                               synthetic_capability())
    new = write_results_folder(
        root / "new", synthetic_rows(seed=1, jitter=0.02, case_list=cases, factors={SLOW_CELL: 1.25}, env_id="env-new",
                                     run_id="run-2", versions={"cudnn_frontend": "1.22.1"}),
        synthetic_runs(env_id="env-new", run_id="run-2", frontend="1.22.1", label="fe-1.22.1"),
        synthetic_capability(lost=("cudnn", "page_size", "16")))
    return render_report(load_results(new), root / "report.html", baseline=load_results(old),
                         declarations={"cudnn": {"baseline": True, "in_sweep": True}})


def test_the_error_capture_catches_planted_faults(browser, tmp_path):
    """A test of the test: a thrown error, a console error and an external request are all caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><p>x</p>'
                   '<img src="http://example.invalid/pixel.png">'
                   '<script>console.error("planted console error"); throw new Error("planted failure");</script>'
                   '</body></html>')
    load = browser.load(bad.as_uri())
    assert any("planted failure" in text for text in load.exceptions), load.problems
    assert any("planted console error" in text for text in load.console_errors), load.problems
    assert "http://example.invalid/pixel.png" in load.external_requests
    good = tmp_path / "good.html"
    good.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><p>fine</p></body></html>')
    clean = browser.load(good.as_uri())
    assert not clean.problems and not clean.external_requests


def test_report_loads_cleanly_and_shows_its_sections(browser, report, tmp_path):
    load = browser.load(report.as_uri())
    assert not load.problems, load.problems
    assert not load.external_requests, load.external_requests
    visible = browser.evaluate("""(() => {
        const shown = (el) => !!el && el.getBoundingClientRect().height > 0 && getComputedStyle(el).display !== 'none';
        const plots = Array.from(document.querySelectorAll('.plot svg')).filter((svg) => svg.getBoundingClientRect().width > 300);
        return {
          summary: shown(document.getElementById('summary')),
          matrix: shown(document.querySelector('#capability-matrix table.matrix')),
          matrixRows: document.querySelectorAll('#capability-matrix table.matrix tbody tr').length,
          refusalTitles: document.querySelectorAll('#capability-matrix td.v-unsupported[title*="—"]').length,
          plots: plots.length,
          provenance: shown(document.getElementById('provenance-table')),
          provenanceText: document.getElementById('provenance').innerText,
          comparison: document.getElementById('comparison').innerText,
          pageWidth: document.documentElement.scrollWidth,
        };
    })()""")
    assert visible["summary"] and visible["matrix"] and visible["provenance"]
    assert visible["matrixRows"] >= 6 and visible["refusalTitles"] >= 4
    assert visible["plots"] >= 6
    assert "packages.nvidia-cudnn-frontend" in visible["provenanceText"]
    assert SLOW_CELL[1] in visible["comparison"] and "1.22.1" in visible["comparison"]
    assert visible["pageWidth"] <= 1400, "the page scrolls sideways"
    shot = browser.screenshot(tmp_path / "report-screenshot.png")
    assert shot.stat().st_size > 50_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-screenshot.png")


def test_tables_sort_and_filter(browser, report):
    browser.load(report.as_uri())
    ordered = browser.evaluate("""(() => {
        const table = document.getElementById('results-table');
        const header = Array.from(table.tHead.rows[0].cells).findIndex((th) => th.textContent.startsWith('median'));
        table.tHead.rows[0].cells[header].click();
        const values = Array.from(table.tBodies[0].rows).map((row) => row.cells[header] && row.cells[header].dataset.sort)
            .filter((value) => value !== undefined && value !== '').map(Number);
        return values;
    })()""")
    assert len(ordered) > 20 and ordered == sorted(ordered)
    filtered = browser.evaluate("""(() => {
        const input = document.querySelector('input[data-filter="results-table"]');
        input.value = 'flash-attn2 unsupported';
        input.dispatchEvent(new Event('input'));
        const rows = Array.from(document.getElementById('results-table').tBodies[0].rows).filter((row) => !row.hidden);
        return rows.map((row) => row.textContent);
    })()""")
    assert filtered and all("flash-attn2" in text and "unsupported" in text for text in filtered)
