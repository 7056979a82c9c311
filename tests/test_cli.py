"""The command line as a newcomer meets it, through the real console script in a subprocess: the main
command and `env` work on a CPU machine, every mistake is one line with exit status 2 and creates
nothing, progress in a log is plain lines, failures stay visible with --quiet, and unreadable lines of
a results file are reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "paged-bench"
PUBLISHED = ROOT / "results" / "h100-repeat" / "short-b"


def paged_bench(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 900) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"the console script {SCRIPT} is missing: pip install -e . first"
    return subprocess.run([str(SCRIPT), *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})


def real_backends() -> dict:
    """The checkout's backends (test-only adapters other tests registered in this process left out)."""
    from adapters.base import adapter_classes

    return {name: cls for name, cls in adapter_classes().items() if cls.__module__.startswith("adapters.backends.")}


def _one_line_usage_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("paged-bench: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("args, needles", [
    (["--workloads", "bogus"], ["bogus", "decode", "prefill", "mixed"]),
    (["--sweep", "nosuch"], ["nosuch", "cpu-tiny"]),
    (["--sweep", "short", "--device", "cpu"], ["short", "GPU", "cpu-tiny"]),
    (["--sweep", "default", "--device", "cpu"], ["default", "cpu-tiny"]),
    (["--backends", "nosuch-backend", "--device", "cpu"], ["nosuch-backend", "sdpa-gather"]),
    (["--gpus", "all", "--device", "cpu"], ["--gpus"]),
    (["--no-such-option"], ["--no-such-option"]),
    (["--case", "-3q1c10", "--device", "cpu"], ["'-3q1c10'", "is not of the form"]),
    (["--case=-3q1c10", "--device", "cpu"], ["'-3q1c10'", "is not of the form"]),
    (["--case", "８q1c100", "--device", "cpu"], ["８", "not an ASCII character"]),
    (["--case", "100000000q1c1000000", "--device", "cpu"], ["100000000 sequences", "at most 1048576"]),
    (["--case", "8q1c4k", "--pool-gib", "1000000", "--device", "cpu"], ["no cell fits this machine", "8q1c4k"]),
    (["--gate-workers", "0"], ["--gate-workers", "'0'", "1..32"]),
    (["--gate-workers", "many"], ["--gate-workers", "'many'"]),
    (["--probe-workers", "33"], ["--gate-workers", "'33'", "1..32"]),
])
def test_a_mistake_is_one_line_and_creates_nothing(tmp_path, args, needles):
    out = tmp_path / "out"
    done = paged_bench("run", "--out", str(out), *args)
    _one_line_usage_error(done, *needles)
    assert not out.exists()


@pytest.mark.parametrize("command", [["run", "--device", "cpu"], ["env"], ["capability", "--device", "cpu"]])
def test_an_unimportable_extra_adapter_module_is_one_line_and_creates_nothing(tmp_path, command):
    out = tmp_path / "out"
    done = paged_bench(*command, *(["--out", str(out)] if command[0] != "env" else []),
                       env={"PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters, no_such_module_here",
                            "PYTHONPATH": str(ROOT)})
    _one_line_usage_error(done, "PAGED_BENCH_EXTRA_ADAPTERS", "'no_such_module_here'", "No module named")
    assert not out.exists()


def test_an_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _one_line_usage_error(paged_bench("--device", "cpu", "--out", str(blocker / "out")), "is a file, not a folder")
    _one_line_usage_error(paged_bench("--device", "cpu", "--out", "/proc/paged-bench-out"), "/proc/paged-bench-out")
    assert not Path("/proc/paged-bench-out").exists()


@pytest.mark.parametrize("args, needles", [
    (["report", "/nonexistent/results"], ["/nonexistent/results", "no such folder"]),
    (["compare", "/nonexistent/old", str(PUBLISHED)], ["/nonexistent/old"]),
    (["compare", str(PUBLISHED), "/nonexistent/new"], ["/nonexistent/new"]),
    (["report", str(ROOT / "docs")], ["no results.jsonl"]),
])
def test_reading_commands_name_a_missing_folder(args, needles):
    _one_line_usage_error(paged_bench(*args), *needles)


def test_unreadable_lines_are_reported_by_line_number(tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(PUBLISHED, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    damaged = lines[:4] + ["{this is not json"] + lines[4:-1] + [lines[-1][: len(lines[-1]) // 2]]
    (folder / "results.jsonl").write_text("\n".join(damaged))
    done = paged_bench("report", str(folder), "--out", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    expected = f"skipped 2 unreadable lines (lines 5, {len(damaged)})"
    assert expected in done.stderr
    assert expected in (tmp_path / "r.html").read_text()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The README's main command on a CPU machine, in a fresh folder, output not a terminal."""
    out = tmp_path_factory.mktemp("first") / "bench-out"
    done = paged_bench(cwd=out.parent)
    return out, done


def test_the_main_command_runs_the_tiny_sweep_on_the_cpu(first_run):
    out, done = first_run
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    from harness.cases.sweep import SWEEPS

    in_sweep = [name for name, cls in real_backends().items() if cls.in_sweep]
    assert len(rows) == len(in_sweep) * len(SWEEPS["cpu-tiny"])
    verdicts = {(row["backend"], row["verdict"]) for row in rows}
    for backend in ("sdpa-gather", "triton"):
        assert (backend, "ok") in verdicts, [r for r in rows if r["backend"] == backend][:1]
    assert all(row["verdict"] in ("ok", "skipped", "unsupported") for row in rows), \
        [(r["backend"], r["verdict"], r["reason"]) for r in rows if r["verdict"] not in ("ok", "skipped", "unsupported")]
    html = (out / "report.html").read_text()
    assert "host wall-clock times" in html and "GPU launch times" not in html
    assert "dashed:" not in html


def test_progress_in_a_log_is_plain_lines(first_run):
    _, done = first_run
    assert "\r" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if " cells (" in line and "left" in line]
    assert progress, done.stderr
    done_count, total = progress[-1].split()[1].split("/")
    assert done_count == total and len(progress) <= 25
    assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr


def test_the_job_ends_with_the_wall_time_of_each_step(first_run):
    """The last line says where the job's time went, step by step, and the steps add up to no more than
    the total (what no step names, e.g. choosing the cases, is in the total only)."""
    _, done = first_run
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("paged-bench: steps: environment check "), last
    for step in ("ceilings and provenance", "sweep", "report", "; total "):
        assert step in last, last
    from reports.text import duration  # noqa: F401 - the format the line uses

    def seconds(text: str) -> int:
        minutes, _, secs = text.rstrip("s").rpartition("m")
        return int(minutes or 0) * 60 + int(secs)

    parts = last.split("steps: ")[1]
    steps, total = parts.split("; total ")
    assert sum(seconds(part.rsplit(" ", 1)[1]) for part in steps.split(", ")) <= seconds(total) + len(steps.split(", "))


def test_the_backend_table_has_one_line_per_backend(first_run):
    _, done = first_run
    table = done.stderr.split("Backends on cpu:")[1].split("paged-bench:")[0]
    for name in real_backends():
        assert sum(1 for line in table.splitlines() if line.split()[:1] == [name]) == 1, name


def test_env_lists_backends_and_provenance():
    done = paged_bench("env", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["env_id"] and record["packages"]["torch"]
    assert "triton" in record["backend_versions"]
    assert "Backends on cpu:" in done.stderr


def test_quiet_keeps_the_lines_of_failing_cells(tmp_path):
    done = paged_bench("--quiet", "--device", "cpu", "--backends", "fault-raise,good-ref", "--workloads", "decode",
                       "--out", str(tmp_path / "out"), "--no-report",
                       env={"PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "error       fault-raise / tiny-decode-b4-q1-c64-p16: prepare: RuntimeError" in done.stderr
    assert " cells (" not in done.stderr  # no progress lines


def test_the_default_output_folder_is_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "-q", "bench-out/results.jsonl"], cwd=ROOT)
    assert done.returncode == 0


def test_asv_keeps_its_working_results_out_of_the_published_folders():
    text = (ROOT / "asv.conf.json").read_text()
    config = json.loads("\n".join(line for line in text.splitlines() if not line.strip().startswith("//")))
    assert not config["results_dir"].startswith("results")
    assert subprocess.run(["git", "check-ignore", "-q", config["results_dir"] + "/x.json"], cwd=ROOT).returncode == 0


def test_cpu_workers_get_the_environment_their_backends_declare():
    """asv and the command line share one session: on a CPU the Triton kernel's interpreter is set for
    its workers (it used to be set by the command line only, so asv showed triton as n/a)."""
    code = ("import os; from pathlib import Path; from harness.measure.session import RunSession\n"
            "session = RunSession(out_dir=Path('/nonexistent'), device_type='cpu')\n"
            "assert session.worker_env.get('TRITON_INTERPRET') == '1', session.worker_env\n"
            "rows = {row['backend']: row for row in session.availability()}\n"
            "assert rows['triton']['available'] == 'yes', rows['triton']['reason']\n"
            "assert 'TRITON_INTERPRET' not in os.environ  # the parent's own environment is left alone\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_report_of_a_probe_folder_points_at_the_run_folder(tmp_path):
    """The capability probe's cells live in <out>/probe/ beside the sweep; reporting that folder as a sweep
    would show probe cells as results, so the command names the run folder instead."""
    from harness.frontends.cli import main
    from records.schema import CAPABILITY_FILE, PROBE_DIR, RESULTS_FILE

    probe = tmp_path / PROBE_DIR
    probe.mkdir()
    (probe / RESULTS_FILE).write_text("")
    (tmp_path / CAPABILITY_FILE).write_text("")
    assert main(["report", str(probe)]) == 2
    assert not (probe / "report.html").exists()


def test_the_compile_warm_up_runs_the_compiling_backends_gate_only_before_the_sweep(tmp_path):
    """``--warm-up``: the sweep's cells of the backends that compile into a disk cache (the Triton kernel, not
    gather+SDPA) run gate-only into <out>/warmup/ first, as their own step; the sweep still gates and times
    every cell; the warm-up folder is refused as a sweep by `report`."""
    out = tmp_path / "out"
    done = paged_bench("--device", "cpu", "--warm-up", "--backends", "triton,sdpa-gather", "--workloads", "decode",
                       "--out", str(out), "--no-report")
    assert done.returncode == 0, done.stderr[-3000:]
    warm = [json.loads(line) for line in (out / "warmup" / "results.jsonl").read_text().splitlines()]
    sweep = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["backend"] for row in warm} == {"triton"}
    assert sorted(row["cell_id"] for row in warm) == sorted(row["cell_id"] for row in sweep if row["backend"] == "triton")
    assert all(row["verdict"] == "ok" and row["median_us"] is None for row in warm), warm[:1]
    assert all(row["verdict"] == "ok" and row["median_us"] for row in sweep), [r["reason"] for r in sweep]
    assert "compile warm-up: " in done.stderr and ", compile warm-up " in done.stderr.strip().splitlines()[-1]
    again = paged_bench("report", str(out / "warmup"))
    _one_line_usage_error(again, "compile warm-up", str(out))


def test_the_warm_up_leaves_out_what_cannot_run_here_and_what_the_sweep_has_measured(tmp_path):
    from harness.cases.sweep import SWEEPS, Cell
    from harness.measure.session import RunSession
    from records.store import ResultStore

    cases = list(SWEEPS["cpu-tiny"])[:2]
    session = RunSession(out_dir=tmp_path, device_type="cpu", backends=["triton", "flex-paged", "sdpa-gather"],
                         env_id="env-a")
    session._availability = [{"backend": "triton", "available": "yes", "in_sweep": True},
                             {"backend": "flex-paged", "available": "no", "in_sweep": True},
                             {"backend": "sdpa-gather", "available": "yes", "in_sweep": True}]
    assert session.warm_up_cells(cases) == [Cell("triton", case) for case in cases]
    ResultStore(tmp_path).append({"cell_id": Cell("triton", cases[0]).id, "env_id": "env-a", "verdict": "ok"})
    assert session.warm_up_cells(cases) == [Cell("triton", cases[1])]
    assert session.warm_up_cells(cases, resume=False) == [Cell("triton", case) for case in cases]
    ResultStore(tmp_path / "warmup").append({"cell_id": Cell("triton", cases[1]).id, "env_id": "env-a", "verdict": "ok"})
    assert session.warm_up_cells(cases) == []  # an interrupted warm-up resumes where it stopped


def test_the_probe_shows_progress_for_each_round_of_cells():
    """The probe's two rounds (page sizes, then the other rows) each get their own count in a log, and a
    cell that fails is named on its own line."""
    import io

    from harness.frontends.progress import ProbeProgress
    from harness.measure.runner import Progress

    stream = io.StringIO()
    show = ProbeProgress(stream=stream)
    for total, verdicts in ((2, ["ok", "ok"]), (3, ["ok", "timeout", "ok"])):
        for done, verdict in enumerate(verdicts, start=1):
            show(Progress(row={"verdict": verdict, "backend": "b", "case": f"probe-{done}", "reason": "stuck"},
                          done=done, total=total, slot="gpu#1"))
    show.close()
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("paged-bench: capability probe: 2/2 cells (2 ok)") for line in lines), lines
    assert any(line.startswith("paged-bench: capability probe: 3/3 cells (2 ok, 1 timeout)") for line in lines), lines
    assert any(line.startswith("timeout") and "probe-2" in line for line in lines), lines


def test_a_cell_that_timed_out_in_the_warm_up_is_not_run_again_in_the_sweep(tmp_path):
    """A backend that hangs in the compile warm-up would hang the sweep for the same limit again: the sweep
    records the warm-up's timeout instead, saying where it comes from, and measures the other cells."""
    out = tmp_path / "out"
    done = paged_bench("--device", "cpu", "--warm-up", "--backends", "fault-hang-compiled,good-ref",
                       "--workloads", "decode", "--cell-timeout", "15", "--out", str(out), "--no-report",
                       env={"PAGED_BENCH_EXTRA_ADAPTERS": "tests.faulty_adapters", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    warm = [json.loads(line) for line in (out / "warmup" / "results.jsonl").read_text().splitlines()]
    sweep = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [row["verdict"] for row in warm] == ["timeout"], warm
    by_backend = {row["backend"]: row for row in sweep}
    assert len(sweep) == 2 and by_backend["good-ref"]["verdict"] == "ok", sweep
    hung = by_backend["fault-hang-compiled"]
    assert hung["verdict"] == "timeout" and hung["cell_id"] == warm[0]["cell_id"]
    assert hung["reason"].startswith("in the compile warm-up: ran past the 15 s limit"), hung["reason"]
    assert "2/2 cells" in done.stderr, done.stderr[-2000:]  # the progress count includes the carried row
