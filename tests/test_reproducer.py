"""The reproducer in every row: the exact paged-bench command that measures one cell again, checked by
parsing it back into cases (same cell id) and, where the CLI takes the selection options, by running one
on the CPU."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cases.reproducer import reproducer, reproducer_argv
from harness.cases.selection import add_selection_options, select_cases
from harness.cases.sweep import SWEEPS, Case, make_case, override_case
from harness.measure.results import cell_id

ROOT = Path(__file__).resolve().parents[1]


def run_parser() -> argparse.ArgumentParser:
    """`paged-bench run`'s options as far as a reproducer uses them (the selection options are the real ones)."""
    parser = argparse.ArgumentParser(prog="paged-bench")
    run = parser.add_subparsers(dest="command").add_parser("run")
    add_selection_options(run)
    run.add_argument("--backends")
    run.add_argument("--out")
    run.add_argument("--device")
    run.add_argument("--capability", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument("--cuda-graph", action="store_true")
    return parser


def replay(command: str, device: str = "cuda") -> tuple[argparse.Namespace, list[Case]]:
    argv = shlex.split(command)
    assert argv[:2] == ["paged-bench", "run"]
    args = run_parser().parse_args(argv[1:])
    return args, select_cases(args, device).cases


EXTRA_CASES = [
    override_case(SWEEPS["default"][0], seed=7, causal=False, pool_pages=4000),
    override_case(SWEEPS["cpu-tiny"][-1], dtype="fp16", page_size=8),
    make_case("64q1c~lognormal(median=2k,sigma=1)", "64q1c~lognormal(median=2k,sigma=1)", 16, pool_gib=1.5),
    make_case("it's mine", "2q1c40", 32, num_q_heads=71, num_kv_heads=1, head_dim=64),
    Case("hand-made", "4q1c64", 16, dtype="fp32", causal=False, seed=3, pool_pages=100),
]
ALL_CASES = [case for cases in SWEEPS.values() for case in cases] + EXTRA_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.name for case in ALL_CASES])
def test_a_reproducer_re_creates_the_same_cell(case):
    command = reproducer("flex-paged", case)
    args, cases = replay(command)
    assert len(cases) == 1
    assert cases[0].as_dict() == case.as_dict()
    assert cell_id("flex-paged", cases[0]) == cell_id("flex-paged", case)
    assert args.backends == "flex-paged" and args.capability is False
    assert args.out == f"bench-repro/{cell_id('flex-paged', case)}"


def test_the_command_names_backend_case_heads_page_dtype_seed():
    case = next(case for case in SWEEPS["default"] if case.name == "decode-b64-q1-c4096-p16-h8x1d128-pool16gib")
    assert reproducer("cudnn", case) == (
        "paged-bench run --backends cudnn --case decode-b64-q1-c4096-p16-h8x1d128-pool16gib=64q1c4k "
        "--page-size 16 --heads 8/1/128 --dtype bf16 --seed 0 --pool-gib 16.0 --no-capability "
        f"--out bench-repro/{cell_id('cudnn', case)}")
    noncausal = dataclasses.replace(case, causal=False)
    assert "--no-causal" in reproducer_argv("cudnn", noncausal)
    assert "--no-causal" not in reproducer_argv("cudnn", case)


def test_shell_quoting_and_options():
    case = EXTRA_CASES[2]
    command = reproducer("triton", case, out="/tmp/x y/{cell_id}", extra=["--cuda-graph"])
    assert "'--case' " not in command and "--case '64q1c~lognormal(median=2k,sigma=1)-p16-pool1.5gib=" in command
    args, cases = replay(command)
    assert args.cuda_graph and args.out == f"/tmp/x y/{cell_id('triton', case)}"
    assert cases[0] == case


def _cli_takes_selection_options() -> bool:
    from harness.frontends import cli

    try:
        cli.build_parser().parse_args(["run", "--case", "x=1q1c1", "--heads", "4/2/32", "--page-size", "16"])
    except (SystemExit, ValueError):  # argparse's exit, or the CLI's UsageError
        return False
    return True


def test_a_reproducer_runs_end_to_end_on_the_cpu(tmp_path):
    """The tiny decode's reproducer, run as a command, measures that one cell again, same cell id."""
    if not _cli_takes_selection_options():
        pytest.skip("harness.frontends.cli does not take the selection options yet (--case/--heads/--page-size)")
    case = next(case for case in SWEEPS["cpu-tiny"] if case.name == "tiny-decode-b4-q1-c64-p16")
    argv = reproducer_argv("sdpa-gather", case, out=str(tmp_path / "{cell_id}"),
                           extra=["--device", "cpu", "--no-report", "--quiet"])
    done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", *argv[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / cell_id("sdpa-gather", case) / "results.jsonl").read_text().splitlines()]
    assert [(row["backend"], row["case"], row["cell_id"], row["verdict"]) for row in rows] == [
        ("sdpa-gather", case.name, cell_id("sdpa-gather", case), "ok")]
    golden = [json.loads(line) for line in (ROOT / "tests/data/golden_cpu_tiny.jsonl").read_text().splitlines()]
    assert rows[0]["cell_id"] in {row["cell_id"] for row in golden}
