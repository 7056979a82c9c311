"""Many machines, one view (CPU): two synthetic machines' folders merged into one page.

The H200 folder is the fixtures' sweep (ceilings 790 TFLOP/s, 4.3 TB/s). The H100 folder is the same
sweep measured on a machine whose two ceilings are both 0.7x: every cell takes 1/0.7 as long there, so
its share of ITS OWN ceilings is unchanged — except one cell planted 2x slower on top, one cell that
fails there, and one case the H100 never ran. The page must show both machines side by side, the
planted cell standing out (share ratio 0.5) and no other, the shares normalised by each machine's
ceilings, the partial and failing cells, and collisions; and it must render without torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reports.machines import (STANDS_OUT, default_machines_out, format_machines_text, machine_labels, machine_set,
                              render_machines_report)
from reports.model import load_results
from tests.report_fixtures import CEILINGS, small_cases, synthetic_rows, synthetic_runs, write_results_folder

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.7
H100_CEILINGS = {"matmul_bf16_tflops": CEILINGS["matmul_bf16_tflops"] * SCALE, "copy_tbps": CEILINGS["copy_tbps"] * SCALE,
                 "gpu": "NVIDIA H100 80GB HBM3"}
PLANTED = ("triton", "decode-b64-q1-c8192-p256")
FAILS_ON_H100 = ("flex-paged", "prefill-b4-q512-c1024-p16")
FAIL_REASON = "CUDA error: an illegal memory access was encountered"
ONLY_ON_H200 = "mixed-8d3000-8p2000-p16"
PLAIN = ("cudnn", "decode-b64-q1-c1024-p256")
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""", re.I)


def other_machine(rows: list[dict], ceilings: dict, *, run_id: str, env_id: str) -> list[dict]:
    """``rows`` as measured on a machine with ``ceilings`` (SCALE x the fixtures'): times / SCALE, the
    planted cell 2x slower again, FAILS_ON_H100 an error, ONLY_ON_H200 never run; throughput and shares
    recomputed against the new ceilings as the harness computes them."""
    out = []
    for row in rows:
        if row["case"] == ONLY_ON_H200:
            continue
        row = dict(row, run_id=run_id, env_id=env_id)
        key = (row["backend"], row["case"])
        if key == FAILS_ON_H100:
            row.update(verdict="error", reason=FAIL_REASON, median_us=None, tflops=None, tbps=None,
                       pct_matmul_ceiling=None, pct_copy_ceiling=None)
        elif row["verdict"] == "ok":
            factor = (2.0 if key == PLANTED else 1.0) / SCALE
            for name in ("median_us", "q1_us", "q3_us", "min_us", "max_us"):
                row[name] *= factor
            row["tflops"] /= factor
            row["tbps"] /= factor
            row["pct_matmul_ceiling"] = 100 * row["tflops"] / ceilings["matmul_bf16_tflops"]
            row["pct_copy_ceiling"] = 100 * row["tbps"] / ceilings["copy_tbps"]
        out.append(row)
    return out


def machine_runs(*, run_id: str, env_id: str, host: str, ceilings: dict, **provenance) -> list[dict]:
    runs = synthetic_runs(env_id=env_id, run_id=run_id)
    runs[0]["provenance"].update(host=host, gpu=ceilings["gpu"], **provenance)
    runs[0]["ceilings"] = ceilings
    return runs


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("machines")
    rows = synthetic_rows(seed=3, case_list=small_cases(), env_id="env-h200", run_id="run-h200")
    h200 = write_results_folder(root / "h200", rows,
                                machine_runs(run_id="run-h200", env_id="env-h200", host="node-b", ceilings=CEILINGS))
    h100_rows = other_machine(rows, H100_CEILINGS, run_id="run-h100", env_id="env-h100")
    h100 = write_results_folder(root / "h100", h100_rows,
                                machine_runs(run_id="run-h100", env_id="env-h100", host="node-a", ceilings=H100_CEILINGS))
    # a second H100 folder that reuses the H200's run id (a copied run) and the H100's env id with another driver
    clash_rows = [dict(row, run_id="run-h200") for row in h100_rows]
    clash = write_results_folder(root / "h100-clash", clash_rows,
                                 machine_runs(run_id="run-h200", env_id="env-h100", host="node-c", ceilings=H100_CEILINGS,
                                              driver="999.99"))
    twin = write_results_folder(root / "h100-twin", [dict(row, run_id="run-twin") for row in h100_rows],
                                machine_runs(run_id="run-twin", env_id="env-h100", host="node-d", ceilings=H100_CEILINGS))
    return {"root": root, "h200": h200, "h100": h100, "clash": clash, "twin": twin}


@pytest.fixture(scope="module")
def merged(folders):
    return machine_set([folders["h200"], folders["h100"]])


@pytest.fixture(scope="module")
def torchless(folders) -> dict[str, str]:
    """The page and the text, rendered in a process where ``import torch`` fails (the reports package
    must not need it), with the list of torch / harness / adapters / kernels modules it loaded."""
    out = folders["root"] / "machines.html"
    sources = f"[{str(folders['h200'])!r}, {str(folders['h100'])!r}]"
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now fails\n"
        "import reports.machines as machines\n"
        f"machines.render_machines_report({sources}, {str(out)!r})\n"
        f"print(machines.format_machines_text({sources}))\n"
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'harness', 'adapters', 'kernels')\n"
        "                and sys.modules[n] is not None)\n"
        "print('LOADED', loaded)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return {"stdout": done.stdout, "page": out.read_text()}


@pytest.fixture(scope="module")
def page(torchless) -> str:
    return torchless["page"]


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def cell(merged, key: tuple[str, str]) -> dict:
    cells = merged.cells
    return cells[(cells["backend"] == key[0]) & (cells["case"] == key[1])].iloc[0].to_dict()


# --- the model ---------------------------------------------------------------------------------
def test_machines_are_labelled_from_provenance(merged):
    assert [m.label for m in merged.machines] == ["H200", "H100 80GB HBM3"]
    assert merged.reference.label == "H200" and not merged.errors


def test_shares_are_normalised_by_each_machines_own_ceilings(merged):
    plain = cell(merged, PLAIN)
    assert plain["ratio_1"] == pytest.approx(1 / SCALE)  # 1.43x the time on the slower machine...
    assert plain["share_ratio_1"] == pytest.approx(1.0)  # ...and the same share of its own ceilings
    assert plain["share_0"] == pytest.approx(plain["share_1"]) and plain["status"] == "same"
    summary = merged.pair_summaries()[0]
    assert summary["median_time_ratio"] == pytest.approx(1 / SCALE) and summary["median_share_ratio"] == pytest.approx(1.0)


def test_the_planted_cell_and_only_it_stands_out(merged):
    standing = merged.stand_out()
    assert list(zip(standing["backend"], standing["case"])) == [PLANTED]
    planted = cell(merged, PLANTED)
    assert planted["status"] == "lower share" and planted["share_ratio_1"] == pytest.approx(0.5)
    assert planted["ratio_1"] == pytest.approx(2 / SCALE)


def test_partial_and_failing_cells_are_shown_as_such(merged):
    partial = merged.partial()
    assert set(partial["case"]) == {ONLY_ON_H200} and set(partial["status"]) == {"absent"}
    assert set(partial["present"]) == {"H200"}
    failing = cell(merged, FAILS_ON_H100)
    assert failing["status"] == "verdict differs" and failing["verdict_1"] == "error" and failing["reason_1"] == FAIL_REASON


def test_collisions_same_run_id_env_id_and_folder(folders):
    clash = machine_set([folders["h100"], folders["clash"]])
    kinds = {(c.kind, c.severity) for c in clash.collisions}
    assert ("run id", "error") not in kinds
    assert ("env id", "error") in kinds  # env-h100 names two environments (driver differs)
    message = next(c.message for c in clash.collisions if c.kind == "env id")
    assert "driver" in message
    copied = machine_set([folders["h200"], folders["clash"]])
    run_clash = [c for c in copied.errors if c.kind == "run id"]
    assert run_clash and "run-h200" in run_clash[0].message
    twice = machine_set([folders["h200"], folders["h200"] / ".." / "h200"])
    assert len(twice.machines) == 1 and [c.kind for c in twice.errors] == ["same folder"]
    twins = machine_set([folders["h100"], folders["twin"]])
    assert not twins.errors and any(c.kind == "env id" and c.severity == "note" for c in twins.collisions)
    assert [m.label for m in twins.machines] == ["H100 80GB HBM3 (node-a)", "H100 80GB HBM3 (node-d)"]


def test_labels_fall_back_to_env_label_and_folder(folders):
    results = [load_results(folders["h100"]), load_results(folders["twin"])]
    for r in results:
        r.runs["provenance"] = [dict(p, host="same-host") for p in r.runs["provenance"]]
    assert machine_labels(results) == ["H100 80GB HBM3 (h100)", "H100 80GB HBM3 (h100-twin)"]


def test_default_output_path(folders):
    assert default_machines_out([folders["h200"], folders["h100"]]) == folders["root"].resolve() / "machines.html"


# --- the page ----------------------------------------------------------------------------------
def test_page_shows_both_machines_side_by_side(page):
    machines = section(page, "machines")
    assert "H200" in machines and "H100 80GB HBM3" in machines
    assert "790 TFLOP/s" in machines and "553 TFLOP/s" in machines  # each machine's own ceilings
    assert "4.30 TB/s" in machines and "3.01 TB/s" in machines
    assert "node-a" in machines and "node-b" in machines
    assert "No collisions" in machines
    table = re.search(r'<table class="kv" id="machines-table">(.*?)</table>', machines, re.S).group(1)
    assert table.count('<th class="machine"') == 2


def test_page_flags_the_planted_cell(page):
    standing = section(page, "stand-out")
    body = re.search(r'id="stand-out-table">.*?<tbody>(.*?)</tbody>', standing, re.S).group(1)
    assert body.count("<tr") == 1 and PLANTED[1] in body and "lower share" in body
    assert "0.50×" in body and "2.86×" in body
    assert FAIL_REASON in standing and ONLY_ON_H200 in standing  # verdict differs; on only some machines
    plain_row = re.search(rf'<tr class="[^"]*" data-cell="{cell_id(page, PLAIN)}">(.*?)</tr>', section(page, "cells"), re.S)
    assert plain_row and "1.43×" in plain_row.group(1) and "1.00×" in plain_row.group(1)


def cell_id(page: str, key: tuple[str, str]) -> str:
    match = re.search(rf'data-cell="([0-9a-f]+)">\s*<td>.*?</td><td class="backend">{key[0]}</td><td class="case">{key[1]}<',
                      section(page, "cells"), re.S)
    assert match, key
    return match.group(1)


def test_page_has_side_by_side_figures_and_is_self_contained(page):
    plots = section(page, "plots")
    for figure_id in ("plot-machines-shares", "plot-machines-time-decode", "plot-machines-share-decode",
                      "plot-machines-time-prefill", "plot-machines-share-mixed"):
        assert f'id="{figure_id}"' in plots, figure_id
    assert plots.count("<svg") >= 7
    assert not EXTERNAL.findall(page) and "<script src" not in page and "<img" not in page


def test_page_reports_collisions_loudly(folders, monkeypatch):
    monkeypatch.setattr("reports.machines.machine_figures", lambda mset: {"overview": [], "workloads": []})  # speed
    html = render_machines_report([folders["h200"], folders["clash"]], folders["root"] / "clash.html").read_text()
    machines = section(html, "machines")
    assert 'class="alert bad"' in machines and "run-h200" in machines and "No collisions" not in machines


# --- the terminal and the torch-free import -----------------------------------------------------
def test_text_renderer(folders):
    text = format_machines_text([folders["h100"], folders["h200"]])  # the H100 as the reference this time
    assert "reference [0] = H100 80GB HBM3" in text and "[1] H200" in text
    assert "HIGHER SHARE" in text and PLANTED[1] in text and "2.00×" in text  # the H200's share is twice the H100's
    assert "Collisions: none" in text and f"[0] error: {FAIL_REASON}" in text and ONLY_ON_H200 in text
    loud = format_machines_text([folders["h200"], folders["clash"]])
    assert "COLLISION (run id)" in loud


def test_renders_without_torch(torchless):
    assert "LOADED []" in torchless["stdout"] and "LOWER SHARE" in torchless["stdout"]
    assert PLANTED[1] in torchless["page"]


def test_summary_is_json(merged):
    summary = json.loads(json.dumps(merged.summary(), default=str))
    assert summary["reference"] == "H200" and len(summary["stand_out"]) == 1
    assert summary["stand_out"][0]["status"] in STANDS_OUT and summary["pairs"][0]["stand_out"] == 1
