"""`asv compare` on the suite's tracked GPU times flags a 20% slow-down and stays quiet on noise.

Built from the asv result file of the real H100 run (results/asv/h100): a second commit's results
are the same cells with +-2% noise on every time and one cell 20% slower.
"""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
H100 = ROOT / "results" / "asv" / "h100"

pytestmark = pytest.mark.skipif(shutil.which("asv") is None or not H100.exists(),
                                reason="needs asv and the committed H100 asv results")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout.strip()


def _results_dir() -> str:
    """asv's results folder as asv.conf.json names it (JSON with // comments)."""
    text = (ROOT / "asv.conf.json").read_text()
    return json.loads("\n".join(line for line in text.splitlines() if not line.strip().startswith("//")))["results_dir"]


def test_asv_compare_flags_a_20_percent_slowdown_and_not_noise(tmp_path):
    repo = tmp_path / "repo"
    results = repo / _results_dir()
    (results / "h100").mkdir(parents=True)
    shutil.copy(ROOT / "asv.conf.json", repo)
    shutil.copy(ROOT / "results" / "asv" / "benchmarks.json", results)
    shutil.copy(H100 / "machine.json", results / "h100")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "old")
    old = _git(repo, "rev-parse", "HEAD")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "new")
    new = _git(repo, "rev-parse", "HEAD")

    template = json.loads(next(H100.glob("*-existing-*.json")).read_text())
    rng = random.Random(0)
    slowed = ("bench_decode.Decode.track_time_us", 0)  # cudnn, page 16: the first parameter combination
    for commit in (old, new):
        result = json.loads(json.dumps(template))
        result["commit_hash"] = commit
        for name, columns in result["results"].items():
            values = columns[0]
            if commit == new and name.endswith("track_time_us"):
                for index, value in enumerate(values):
                    if value is None or value != value:
                        continue
                    values[index] = value * (1.2 if (name, index) == slowed else rng.uniform(0.98, 1.02))
        path = results / "h100" / f"{commit[:8]}-{result['env_name']}.json"
        path.write_text(json.dumps(result))

    done = subprocess.run([sys.executable, "-m", "asv", "compare", old, new, "--machine", "h100", "--factor", "1.1",
                           "--only-changed"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in done.stdout.splitlines()
            if line.strip().startswith("|")]
    flagged = [row for row in rows if row[0] == "+"]  # asv's mark for "worse beyond the factor"
    assert len(flagged) == 1, done.stdout
    change, before, after, ratio, benchmark = flagged[0]
    assert benchmark == "bench_decode.Decode.track_time_us('cudnn', 64, 1, 4096, 16)"
    assert float(ratio) == pytest.approx(1.2, abs=0.01)
