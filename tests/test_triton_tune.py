"""scripts/triton_tune.py, the Triton kernel's tuning script, in its CPU smoke mode: every configuration it
would time on a GPU is built, launched under the interpreter and checked against the reference, and
the model features reach the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.triton_setup import needs_interpreter, requires_triton

REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_triton


@needs_interpreter
def test_smoke_run_checks_every_configuration_with_features(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "triton_tune.py"), "--smoke", "--pages", "16",
               "--window", "8", "--sinks", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "tune.jsonl").read_text().splitlines()][1:]
    triton_rows = [row for row in rows if row.get("backend") == "triton"]
    assert triton_rows and all(row.get("ok") for row in triton_rows), \
        [row.get("error") or row.get("reason") for row in triton_rows if not row.get("ok")]
    assert {row["case"] for row in triton_rows} == {"2q1c40", "1q1c30_2q20c10"}
    assert all(row["features"] == {"sliding_window": 8, "sinks": True} for row in triton_rows)
    assert {row["config"] for row in triton_rows if row["case"] == "2q1c40" and row.get("table")} \
        == {row["config"] for row in triton_rows if row["case"] == "2q1c40" and row.get("repeat")}
