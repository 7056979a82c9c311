"""The report on the CPU: a synthetic results folder (several backends including cuDNN, decode /
prefill / mixed cases, a skipped backend, declined cells, a capability table, a run record) is read
into the model and rendered; the page has every section, every reason, figures and provenance,
and references nothing outside itself."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from records.schema import VERDICTS
from records.schema import COLUMNS, GLOSSARY
from reports.capability import capability_matrix, format_capability_text
from reports.cli import main
from reports.html import render_report, write_csv
from reports.model import flatten, load_results
from tests.report_fixtures import (FA2_PAGE_REASON, PROBE_ONLY_BACKEND, PROFILES, SKIP_REASON, SKIPPED_BACKEND,
                                   small_cases, synthetic_capability, synthetic_rows, synthetic_runs,
                                   write_results_folder)

SLOW_CELL = ("cudnn", "decode-b64-q1-c8192-p256")
T_ROW_REASON = "pageTableKDim[0] != b (CUDNN_STATUS_BAD_PARAM)"
EXTERNAL = re.compile(r"""(?:src|href|action|poster|srcset)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
                      re.I)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    cases = small_cases()
    old = write_results_folder(root / "old", synthetic_rows(seed=0, case_list=cases), synthetic_runs(label="fe-1.32.0"),
                               synthetic_capability())
    new_rows = synthetic_rows(seed=1, jitter=0.02, case_list=cases, factors={SLOW_CELL: 1.25}, env_id="env-new",
                              run_id="run-2", versions={"cudnn_frontend": "1.22.1"})
    new = write_results_folder(root / "new", new_rows,
                               synthetic_runs(env_id="env-new", run_id="run-2", frontend="1.22.1", label="fe-1.22.1"),
                               synthetic_capability(lost=("cudnn", "page_size", "16")))
    return {"root": root, "old": old, "new": new}


def checkout_declarations() -> dict[str, dict]:
    """What this checkout's real backends declare (the command line passes it to the report)."""
    from adapters.base import adapter_classes

    return {name: cls.describe() for name, cls in adapter_classes().items() if cls.__module__.startswith("adapters.backends")}


BASELINE_ONLY = {"cudnn": {"baseline": True, "in_sweep": True, "color": "#76b900"}}


@pytest.fixture(scope="module")
def page(folders) -> str:
    """The page of the new set alone (adapters of this checkout expected in the summary)."""
    return render_report(load_results(folders["new"]), folders["root"] / "report.html",
                         declarations=checkout_declarations()).read_text()


@pytest.fixture(scope="module")
def comparison_page(folders) -> str:
    out = render_report(load_results(folders["new"]), folders["root"] / "comparison.html",
                        baseline=load_results(folders["old"]), declarations=BASELINE_ONLY)
    return out.read_text()


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


# --- the model -------------------------------------------------------------------------------
def test_model_skips_partial_lines_and_keeps_the_last_row_per_cell(tmp_path):
    rows = synthetic_rows(case_list=small_cases()[:2])
    again = {**rows[0], "median_us": 123.0, "run_id": "run-again"}
    folder = write_results_folder(tmp_path / "r", rows + [again], synthetic_runs(), partial_tail=True)
    with (folder / "results.jsonl").open("a") as handle:
        handle.write("\nnot json at all\n")
    results = load_results(folder)
    assert len(results.rows) == len({row["cell_id"] for row in rows})
    assert list(results.rows.columns[:len(COLUMNS)]) == COLUMNS
    assert results.rows.set_index("cell_id").loc[rows[0]["cell_id"], "median_us"] == 123.0
    assert results.capability.empty and results.ceilings()["gpu"] == "NVIDIA H200"
    assert results.skipped_backends() == {SKIPPED_BACKEND: SKIP_REASON}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        load_results(tmp_path)


# --- the page --------------------------------------------------------------------------------
def test_page_has_every_section(page):
    for section_id in ("summary", "winners", "plots", "results", "capability-matrix", "comparison", "provenance",
                       "glossary"):
        assert f'id="{section_id}"' in page
    assert page.count('class="plot"') >= 5 and page.count("<svg") >= 5
    assert "No baseline given" in section(page, "comparison")


def test_page_is_self_contained(page, comparison_page):
    for html in (page, comparison_page):
        assert not EXTERNAL.findall(html)
        assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
        assert "<img" not in html or "data:image" in html


def test_summary_names_backends_verdicts_and_the_skip_reason(page):
    summary = section(page, "summary")
    for backend in [*PROFILES, SKIPPED_BACKEND]:
        assert f'id="backend-{backend}"' in summary
    assert SKIP_REASON.replace("'", "&#39;") in summary
    assert "unsupported" in summary and "ok" in summary


def test_cards_say_how_long_each_backend_took(folders, page):
    """Each backend's card gives the wall time its cells took (summed ``cell_s``), so a reader sees
    where a sweep's time went; the headline gives the total."""
    rows = load_results(folders["new"]).rows
    seconds = rows[rows["backend"] == "cudnn"]["cell_s"].sum()
    assert seconds > 0
    card = re.search(r'id="backend-cudnn"(.*?)</div>\s*</div>', section(page, "summary"), re.S).group(1)
    minutes, rest = divmod(int(round(seconds)), 60)
    assert f"time in the sweep: {minutes}m{rest:02d}s" in card if minutes else f"time in the sweep: {rest}s" in card
    assert "time in cells" in section(page, "summary")


def test_cards_give_the_cold_compiles_of_a_compile_warm_up(folders, tmp_path):
    """After a compile warm-up the sweep's ``setup_s`` are loads from the disk cache; the warmed backends'
    cards also give what their compiles took on cold caches (the warm-up's rows in warmup/), the others not."""
    import shutil

    folder = shutil.copytree(folders["new"], tmp_path / "run")
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()[:-1]]  # last: cut off
    warmed = [dict(row, setup_s=1.5, median_us=None) for row in rows if row["backend"] == "triton"][:4]
    assert len(warmed) == 4
    (folder / "warmup").mkdir()
    (folder / "warmup" / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in warmed))
    html = render_report(load_results(folder), tmp_path / "r.html", declarations=checkout_declarations()).read_text()

    def card(backend: str) -> str:  # from its id to the next card's
        return next(part for part in section(html, "summary").split('id="backend-')[1:] if part.startswith(f'{backend}"'))

    assert "compiled ahead in the warm-up (cold caches): 6s over 4 cells" in card("triton")
    assert "compiled ahead" not in card("cudnn")


def test_every_registered_adapter_appears(page):
    """style.md 15: no backend goes missing silently (a registered one without rows is named)."""
    for name, declared in checkout_declarations().items():
        if declared["in_sweep"]:
            assert f'id="backend-{name}"' in page, name


def test_results_table_has_figures_and_reasons(page):
    results = section(page, "results")
    assert FA2_PAGE_REASON in results  # the declined cells' reason, in full
    assert "flash_attn_varlen_func" in results and "BLOCK_M=64" in results  # entry point and config
    assert "% matmul" in results and "TB/s" in results
    # skipped everywhere: named once below the table, not once per row
    assert f'<td class="backend">{SKIPPED_BACKEND}<' not in results and f"<b>{SKIPPED_BACKEND}</b>" in results
    winners = section(page, "winners")
    assert "decode" in winners and "prefill" in winners and "mixed" in winners


def test_capability_matrix_shows_verdicts_and_reasons(page):
    matrix = section(page, "capability-matrix")
    assert "page_size" in matrix and "q_layout" in matrix and PROBE_ONLY_BACKEND in matrix
    assert 'class="v-unsupported" title="' in matrix  # the reason on hover...
    assert T_ROW_REASON in matrix and matrix.count(T_ROW_REASON) >= 2  # ...and listed below the grid
    assert 'class="v-error"' in matrix  # the planted capability loss in this set


def test_plots_cover_latency_throughput_speedup_roofline(page):
    for figure_id in ("plot-latency-decode", "plot-latency-prefill", "plot-tflops-prefill", "plot-tbps-decode",
                      "plot-roofline", "plot-speedup-triton", "plot-speedup-flash-attn2"):
        assert f'id="{figure_id}"' in page, figure_id


def test_provenance_lists_every_field(folders, page):
    provenance = section(page, "provenance")
    run = json.loads((folders["new"] / "runs.jsonl").read_text().splitlines()[0])
    for key, value in flatten(run["provenance"]).items():
        assert f"<td>{key}</td>" in provenance, key
        assert str(value) in provenance, (key, value)
    assert "ceilings.matmul_bf16_tflops" in provenance and "paged-bench run --sweep synthetic" in provenance


def test_glossary_has_every_metric_and_verdict(page):
    glossary = section(page, "glossary")
    for term in [*GLOSSARY, *VERDICTS]:
        assert f">{term}<" in glossary, term


def test_comparison_view(comparison_page):
    comparison = section(comparison_page, "comparison")
    assert "No baseline given" not in comparison
    assert SLOW_CELL[1] in comparison and "slower" in comparison
    assert "page_size=16" in comparison and "lost" in comparison  # the capability loss
    assert "packages.nvidia-cudnn-frontend" in comparison and "1.22.1" in comparison and "1.32.0" in comparison
    assert 'id="plot-comparison"' in comparison
    assert "Baseline" in section(comparison_page, "provenance")


def test_without_cudnn_ceilings_runs_or_capability(tmp_path):
    """Degraded inputs still render: no cuDNN ok rows (no speed-up maps), no ceilings (no roofline),
    no runs.jsonl (said so), no capability.csv (matrix derived from the sweep)."""
    rows = [dict(row, pct_matmul_ceiling=None, pct_copy_ceiling=None) for row in synthetic_rows(case_list=small_cases()[:3])
            if row["backend"] != "cudnn"]
    folder = write_results_folder(tmp_path / "bare", rows, runs=[])
    html = render_report(load_results(folder), tmp_path / "bare.html", declarations=BASELINE_ONLY).read_text()
    assert "plot-speedup" not in html and "the baseline backend “cudnn” has no ok cells" in html
    assert 'id="plot-roofline"' not in html and 'id="plot-latency-decode"' in html
    assert "no run record" in html
    assert "Derived from the sweep" in html and FA2_PAGE_REASON in section(html, "capability-matrix")


# --- the other renderers ---------------------------------------------------------------------
def test_csv_has_the_fixed_columns(folders, tmp_path):
    results = load_results(folders["new"])
    path = write_csv(results, tmp_path / "rows.csv")
    with path.open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames[:len(COLUMNS)] == COLUMNS
        assert sum(1 for _ in reader) == len(results.rows)


def test_capability_text(folders):
    results = load_results(folders["new"])
    text = format_capability_text(results)
    assert "page_size=16" in text and T_ROW_REASON in text and "every probed feature" in text
    matrix = capability_matrix(results)
    assert matrix.source == "probe" and matrix.entry("flash-attn2", ("page_size", "16")).verdict == "unsupported"


def test_cli(folders, tmp_path, capsys):
    out, summary = tmp_path / "cli.html", tmp_path / "summary.json"
    status = main([str(folders["new"]), "--baseline", str(folders["old"]), "--out", str(out), "--json", str(summary),
                   "--csv", str(tmp_path / "rows.csv"), "--text", "--fail-on-regression"])
    assert status == 1  # the planted slow-down
    printed = capsys.readouterr().out
    assert "SLOWER" in printed and SLOW_CELL[1] in printed and "Capability matrix" in printed
    assert out.exists() and (tmp_path / "rows.csv").exists()
    assert json.loads(summary.read_text())["status_counts"]["slower"] == 1
    assert main([str(tmp_path / "nowhere")]) == 2


def test_flatten_spreads_per_backend_lists():
    record = {"packages": {"torch": "2.11"}, "availability": [{"backend": "cudnn", "available": "no", "reason": "no GPU"}],
              "argv": ["a", "b"]}
    assert flatten(record) == {"packages.torch": "2.11", "availability.cudnn": "available=no, reason=no GPU",
                               "argv": '["a", "b"]'}


def test_summary_uses_the_runs_availability_for_backends_without_rows(tmp_path):
    rows = [row for row in synthetic_rows(case_list=small_cases()[:1]) if row["backend"] != SKIPPED_BACKEND]
    runs = synthetic_runs()
    runs[0]["availability"] = [{"backend": "fa4", "available": "no", "reason": "flash_attn.cute is not importable"}]
    folder = write_results_folder(tmp_path / "r", rows, runs)
    declared = {name: {"in_sweep": True} for name in [*PROFILES, "fa4", "fa5"]}
    html = render_report(load_results(folder), tmp_path / "r.html", declarations=declared).read_text()
    summary = section(html, "summary")
    assert 'id="backend-fa4"' in summary and "flash_attn.cute is not importable" in summary
    assert 'id="backend-fa5"' in summary and "registered in this checkout but absent" in summary


def test_durations_read_the_same_in_progress_lines_and_reports():
    from reports.text import duration

    assert [duration(s) for s in (7, 59.6, 95.2, 3600, 3725, None)] == ["7s", "1m00s", "1m35s", "1h00m", "1h02m", "–"]
