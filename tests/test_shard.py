"""`paged-bench run --shard I/N`: the split partitions a selection's cells (whole cases, balanced,
the same from the selection alone), job arrays' environments give the shard, bad values are one line
with exit status 2, and `paged-bench report` merges the shard folders into the unsharded sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cases.shard import COUNT_VARIABLE, RECORD_KEY, Shard, deal, parse_shard, resolve_shard, shard_cases
from harness.cases.sweep import cell_id, make_case
from harness.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("sdpa-gather", "triton", "flex")


def _cases() -> list:
    """Seven cases (one of them twice) in no particular order."""
    cases = [make_case(f"c{n}", f"{n + 1}q1c64", 16) for n in (5, 2, 6, 0, 3, 1, 4)]
    return cases + [cases[2]]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_shards_partition_the_cells_by_whole_cases(count):
    cases = _cases()
    everything = {cell_id(backend, case) for case in cases for backend in BACKENDS}
    seen: list[str] = []
    per_shard = []
    for index in range(1, count + 1):
        mine = shard_cases(cases, Shard(index, count))
        cells = {cell_id(backend, case) for case in mine for backend in BACKENDS}
        per_shard.append(len(cells))
        seen += sorted(cells)
    assert len(seen) == len(set(seen)) and set(seen) == everything  # no cell twice, none missing
    assert max(per_shard) - min(per_shard) <= len(BACKENDS)  # balanced: at most one case apart


def test_the_split_depends_on_the_selection_only():
    cases = _cases()
    shuffled = list(reversed(cases))
    for index in (1, 2, 3):
        names = {case.name for case in shard_cases(cases, Shard(index, 3))}
        assert names == {case.name for case in shard_cases(shuffled, Shard(index, 3))}
    dealt = [{case.name.removesuffix("-p16") for case in shard} for shard in deal(cases, 3)]
    assert dealt == [{"c0", "c3", "c6"}, {"c1", "c4"}, {"c2", "c5"}]  # sorted by name, dealt round-robin
    code = ("from harness.cases.shard import deal; from harness.cases.sweep import make_case; "
            "print([[c.name for c in s] for s in deal([make_case(f'c{n}', f'{n+1}q1c64', 16) "
            "for n in range(7)], 3)])")
    runs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(runs) == 1, runs  # no randomized hash() in the split


def test_more_shards_than_cases_leaves_shards_empty():
    cases = _cases()[:2]
    assert [len(shard) for shard in deal(cases, 4)] == [1, 1, 0, 0]


@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/3", (2, 3)), (" 3/3 ", (3, 3))])
def test_parse_shard(text, expected):
    shard = parse_shard(text)
    assert (shard.index, shard.count) == expected and shard.label == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("text", ["0/3", "3/2", "a/b", "1/0", "1", "1/2/3", "-1/2", "１/2"])
def test_bad_shard_values_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


@pytest.mark.parametrize("task, low, count, step, expected", [
    ("0", "0", "4", None, 1), ("3", "0", "4", None, 4), ("1", "1", "3", None, 1), ("3", "1", "3", None, 3),
    ("8", "0", "4", "4", 3),
])
def test_slurm_array_gives_the_shard(monkeypatch, task, low, count, step, expected):
    for name, value in (("SLURM_ARRAY_TASK_ID", task), ("SLURM_ARRAY_TASK_MIN", low),
                        ("SLURM_ARRAY_TASK_COUNT", count), ("SLURM_ARRAY_TASK_STEP", step)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert resolve_shard(None, None, os.environ) == Shard(expected, int(count), "slurm")
    assert resolve_shard("1/1", None, os.environ) == Shard(1, 1)  # --shard wins over the environment


@pytest.mark.parametrize("environ", [
    {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"},
    {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"},
    {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2",
     "SLURM_ARRAY_TASK_STEP": "4"},
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"},
    {"SLURM_ARRAY_TASK_ID": "1"},
])
def test_a_slurm_id_outside_its_array_is_a_usage_error(environ):
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK"):
        resolve_shard(None, None, environ)


def test_kubernetes_indexed_job_gives_the_shard(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setenv(COUNT_VARIABLE, "3")
    assert resolve_shard(None, None, os.environ) == Shard(1, 3, "kubernetes")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert resolve_shard(None, None, os.environ) == Shard(3, 3, "kubernetes")
    assert resolve_shard(None, "4", os.environ) == Shard(3, 4, "kubernetes")  # --shard-count wins
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX"):
        resolve_shard(None, "2", os.environ)  # index 2 of 2 shards (0-based): outside
    monkeypatch.delenv(COUNT_VARIABLE)
    with pytest.raises(UsageError, match="--shard-count"):
        resolve_shard(None, None, os.environ)  # Kubernetes sets no count


def test_no_job_array_means_no_shard():
    assert resolve_shard(None, None, {}) is None
    with pytest.raises(UsageError, match="--shard-count"):
        resolve_shard(None, "3", {})
    with pytest.raises(UsageError, match="contradicts"):
        resolve_shard("1/2", "3", {})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith("SLURM_ARRAY_") and key not in ("JOB_COMPLETION_INDEX", COUNT_VARIABLE)}
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**clean, **(env or {}), "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("args, env, needle", [
    (["--shard", "0/3"], {}, "--shard 0/3"),
    (["--shard", "3/2"], {}, "--shard 3/2"),
    (["--shard", "a/b"], {}, "--shard a/b"),
    ([], {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"},
     "SLURM_ARRAY_TASK_ID=9"),
    ([], {"JOB_COMPLETION_INDEX": "1"}, "--shard-count"),
])
def test_a_bad_shard_is_one_line_and_creates_nothing(tmp_path, args, env, needle):
    out = tmp_path / "out"
    done = _cli("run", "--device", "cpu", "--sweep", "cpu-tiny", "--out", str(out), *args, env=env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("paged-bench: ") and needle in lines[0], done.stderr
    assert not out.exists()


def _rows(folder: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    return {row["cell_id"]: row["verdict"] for row in rows}


def test_shard_folders_merge_into_the_unsharded_sweep(tmp_path):
    from reports.model import load_results, merge_shards

    common = ["run", "--device", "cpu", "--sweep", "cpu-tiny", "--backends", "sdpa-gather", "--quiet", "--no-report"]
    folders = {}
    for name, extra, env in (("all", [], {}), ("s1", ["--shard", "1/2"], {}),
                             ("s2", [], {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1",
                                         "SLURM_ARRAY_TASK_COUNT": "2"})):
        folders[name] = tmp_path / name
        done = _cli(*common, "--out", str(folders[name]), *extra, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    whole, one, two = (_rows(folders[name]) for name in ("all", "s1", "s2"))
    assert one and two and not set(one) & set(two)
    assert {**one, **two} == whole  # the same cells, the same verdicts (timings are never compared)
    records = [json.loads(line)[RECORD_KEY] for name in ("s1", "s2")
               for line in (folders[name] / "runs.jsonl").read_text().splitlines()]
    assert [(r["index"], r["count"], r["source"]) for r in records] == [(1, 2, "--shard"), (2, 2, "slurm")]
    assert records[0]["selection"] == records[1]["selection"]
    assert RECORD_KEY not in json.loads((folders["all"] / "runs.jsonl").read_text().splitlines()[0])

    merged = merge_shards([load_results(folders["s1"]), load_results(folders["s2"])])
    assert merged is not None and dict(zip(merged.rows["cell_id"], merged.rows["verdict"])) == whole
    assert "1/2, 2/2" in merged.warnings[0] and "missing" not in merged.warnings[0]
    lone = merge_shards([load_results(folders["s2"])])
    assert lone is not None and "missing: 1/2" in lone.warnings[0]
    assert merge_shards([load_results(folders["all"]), load_results(folders["s1"])]) is None  # machines
    assert merge_shards([load_results(folders["s1"]), load_results(folders["s1"])]) is None  # same shard twice

    out = tmp_path / "merged.html"
    done = _cli("report", str(folders["s1"]), str(folders["s2"]), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged shards 1/2, 2/2" in done.stderr and out.exists()
    assert "merged shards 1/2, 2/2" in out.read_text()


def test_an_empty_shard_is_a_results_folder_of_no_cells(tmp_path):
    from reports.model import load_results, merge_shards

    out = tmp_path / "s5"
    done = _cli("run", "--device", "cpu", "--sweep", "cpu-tiny", "--backends", "sdpa-gather", "--shard", "5/5",
                "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "results.jsonl").read_text() == ""
    merged = merge_shards([load_results(out)])  # cpu-tiny has 4 cases: shard 5/5 holds none
    assert merged is not None and len(merged.rows) == 0
    assert "missing: 1/5, 2/5, 3/5, 4/5 " in merged.warnings[0]
