"""ADD_BACKEND.md stays true: a backend written as one new file in adapters/backends/ (and nothing else
changed) is listed by `paged-bench env`, swept by `paged-bench run`, probed by the capability matrix,
and shown in the report, with the colour it declares. The project is copied to a temporary folder so
the source tree is never written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_FILE = '''
"""A made-up backend for the test: the gather + SDPA baseline under another name and colour."""

from adapters.backends.sdpa_gather import SdpaGatherAdapter
from adapters.base import register


@register
class OneFileBackend(SdpaGatherAdapter):
    name = "one-file-backend"
    color = "#123456"
    packages = ("torch",)
'''


def test_a_backend_is_one_file(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", "*.egg-info",
                                                                 ".asv", "bench-out", ".device", ".fa_prebuilt", ".peers"))
    (project / "adapters" / "backends" / "one_file_backend.py").write_text(ONE_FILE)
    env = {**os.environ, "PYTHONPATH": str(project), "PAGED_BENCH_CACHE": str(tmp_path / "cache")}
    env.pop("PAGED_BENCH_EXTRA_ADAPTERS", None)

    def bench(*args):
        done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    listed = bench("env", "--device", "cpu")
    assert any(line.split()[:2] == ["one-file-backend", "yes"] for line in listed.stderr.splitlines())
    out = tmp_path / "out"
    bench("run", "--device", "cpu", "--backends", "one-file-backend,sdpa-gather", "--workloads", "decode,mixed",
          "--capability", "--out", str(out), "--quiet")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mine = [row for row in rows if row["backend"] == "one-file-backend"]
    assert len(mine) == 2 and all(row["verdict"] == "ok" for row in mine), [r["reason"] for r in mine]
    capability = (out / "capability.csv").read_text()
    assert capability.count("one-file-backend,") >= 10
    html = (out / "report.html").read_text()
    assert 'id="backend-one-file-backend"' in html and "#123456" in html
