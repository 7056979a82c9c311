"""`paged-bench`: the suite's command line.

    paged-bench                      the main job: environment check, capability probe, gated timing
                                     sweep (results written as measured), HTML report
    paged-bench env                  which backends are available here, and why not; provenance
    paged-bench capability           only the capability probe
    paged-bench report DIR           render a report from existing results (--baseline OLD for a comparison)
    paged-bench compare OLD NEW      compare two result sets cell by cell (text table + HTML)
    paged-bench compare-envs A B     run one sweep in two Python environments and compare them
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

DEFAULT_OUT = Path("bench-out")


def _device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("paged-bench: --device cuda was asked for, but torch sees no CUDA GPU here")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare_cpu_backends(device: str) -> None:
    """On a CPU-only run the project's Triton kernel runs through Triton's interpreter."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def availability(device: str) -> list[dict[str, str]]:
    """One row per registered adapter: whether it runs here, why not, and its versions."""
    import torch

    from adapters.base import discover, versions_of

    rows = []
    for name, adapter in discover().items():
        try:
            ok, why = adapter.available(torch.device(device))
        except Exception as error:  # noqa: BLE001 - a broken probe is a reason, not a crash
            ok, why = False, f"available() raised {type(error).__name__}: {error}"
        versions = versions_of(adapter) if ok else {}
        rows.append({"backend": name, "available": "yes" if ok else "no", "reason": why,
                     "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
                     "in_sweep": "yes" if adapter.in_sweep else "probe only"})
    return rows


def print_availability(rows: list[dict[str, str]], device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Backends on {device}", show_lines=False)
    for column in ("backend", "available", "in_sweep", "versions", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = "green" if row["available"] == "yes" else "yellow"
        table.add_row(*(row[c] for c in ("backend", "available", "in_sweep", "versions", "reason")), style=style)
    Console(stderr=True).print(table)
    skipped = [r for r in rows if r["available"] != "yes"]
    if skipped:
        print(f"paged-bench: skipping {len(skipped)} backend(s) not available on {device}: "
              + "; ".join(f"{r['backend']} ({r['reason']})" for r in skipped), file=sys.stderr)


def _log(message: str) -> None:
    print(f"paged-bench: {message}", file=sys.stderr, flush=True)


def cmd_env(args: argparse.Namespace) -> int:
    from harness import provenance

    device = _device(args.device)
    _prepare_cpu_backends(device)
    print_availability(availability(device), device)
    print(json.dumps(provenance.collect(), indent=1, default=str))
    return 0


def _run_capability(device: str, out_dir: Path, backends: str | None = None) -> Path | None:
    """The capability probe in its own process, so a crashing backend cannot take the main job down."""
    target = out_dir / "capability.csv"
    command = [sys.executable, "-m", "harness.capability", "--device", device, "--out", str(target)]
    if backends:
        command += ["--adapters", backends]
    _log(f"capability probe: {shlex.join(command)}")
    done = subprocess.run(command, env=os.environ.copy())
    if done.returncode != 0 or not target.exists():
        _log(f"capability probe failed (exit status {done.returncode}); the sweep goes on without it")
        return None
    return target


def _cells(args: argparse.Namespace, device: str, rows: list[dict[str, str]]):
    from harness.sweep import get_sweep, select

    known = {r["backend"]: r for r in rows}
    names = args.backends.split(",") if args.backends else [n for n, r in known.items() if r["in_sweep"] == "yes"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"paged-bench: unknown backend(s) {', '.join(unknown)}; known: {', '.join(known)}")
    sweep_name = args.sweep or ("default" if device.startswith("cuda") else "cpu-tiny")
    cases = select(get_sweep(sweep_name), args.workloads.split(",") if args.workloads else None)
    # Grouped by case, so a worker builds each batch and reference once for all backends.
    return sweep_name, [(name, case) for case in cases for name in names]


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from harness import provenance
    from harness.cell import TimerOptions
    from harness.runner import run_cells
    from records.store import ResultStore

    device = _device(args.device)
    _prepare_cpu_backends(device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume and (out_dir / "results.jsonl").exists():
        raise SystemExit(f"paged-bench: {out_dir}/results.jsonl exists; use --resume to continue it, "
                         "or choose another --out")
    rows = availability(device)
    print_availability(rows, device)
    if device == "cpu":
        _log("no CUDA GPU here: running the CPU-capable backends on the tiny CPU sweep; "
             "GPU-only backends are recorded as skipped with their reason")
    sweep_name, cells = _cells(args, device, rows)
    ceilings = None
    if device.startswith("cuda"):
        from harness.ceilings import machine_ceilings

        _log("machine ceilings (measured once per machine, then read from the cache) ...")
        ceilings = machine_ceilings(device)
        _log(f"  bf16 matmul {ceilings['matmul_bf16_tflops']:.0f} TFLOP/s, copy {ceilings['copy_tbps']:.2f} TB/s "
             f"on {torch.cuda.get_device_name(device)}")
    timer = TimerOptions(target_ms=args.target_ms, flush_l2=not args.no_flush, cuda_graph=args.cuda_graph)
    method = "cuda graph replay" if timer.cuda_graph else ("cuda events" if device.startswith("cuda") else "perf_counter")
    record = provenance.collect(timer=method, l2_policy="flush" if timer.flush_l2 else "none")
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    store = ResultStore(out_dir)
    store.append_run({"run_id": run_id, "env_id": record["env_id"], "provenance": record, "ceilings": ceilings,
                      "sweep": sweep_name, "argv": sys.argv, "started_at": record["date"],
                      "availability": rows})
    if args.capability is None:
        args.capability = device != "cpu"
        if not args.capability:
            _log("capability probe skipped on the CPU (its layouts are GPU-sized and Triton's interpreter "
                 "cannot run bf16); the report shows the sweep's own cells instead. Force it with --capability")
    if args.capability:
        _run_capability(device, out_dir, args.backends)
    _log(f"sweep '{sweep_name}': {len(cells)} cells -> {out_dir / 'results.jsonl'}")
    results = run_cells(cells, out_dir, device=device, timer=timer, ceilings=ceilings, env_id=record["env_id"],
                        run_id=run_id, resume=args.resume, cell_timeout_s=args.cell_timeout,
                        progress=not args.quiet, retry_failed=args.retry_failed)
    verdicts: dict[str, int] = {}
    for row in results:
        verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
    _log("verdicts: " + ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items())))
    if args.report:
        path = render(out_dir, Path(args.report_path) if args.report_path else out_dir / "report.html")
        _log(f"report: {path}")
    return 0


def render(results_dir: Path, out_path: Path, baseline_dir: Path | None = None) -> Path:
    from reports.html import render_report
    from reports.model import load_results

    baseline = load_results(baseline_dir) if baseline_dir else None
    return render_report(load_results(results_dir), out_path, baseline=baseline)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.results) / "report.html"
    _log(f"report: {render(Path(args.results), out, Path(args.baseline) if args.baseline else None)}")
    return 0


def cmd_capability(args: argparse.Namespace) -> int:
    device = _device(args.device)
    _prepare_cpu_backends(device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return 0 if _run_capability(device, out_dir) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from reports.compare import compare_folders, format_comparison_text

    comparison = compare_folders(Path(args.old), Path(args.new))
    print(format_comparison_text(comparison))
    out = Path(args.out) if args.out else Path(args.new) / "comparison.html"
    _log(f"comparison report: {render(Path(args.new), out, Path(args.old))}")
    return 1 if args.fail_on_regression and comparison.regressions else 0


def parse_env_spec(text: str) -> dict[str, str]:
    """``LABEL[,python=PATH][,pythonpath=DIR[:DIR]]`` -> {"label", "python", "pythonpath"}."""
    label, *options = text.split(",")
    if not label:
        raise SystemExit(f"paged-bench: environment {text!r} needs a label first, e.g. 'fe-1.22,pythonpath=/tmp/fe122'")
    spec = {"label": label, "python": sys.executable, "pythonpath": ""}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("python", "pythonpath"):
            raise SystemExit(f"paged-bench: environment option {option!r} is not python=PATH or pythonpath=DIRS")
        spec[key] = value
    return spec


def cmd_compare_envs(args: argparse.Namespace) -> int:
    """Run the same sweep at the same commit in two environments, then compare them."""
    out_root = Path(args.out)
    folders = []
    for text in (args.old_env, args.new_env):
        env_spec = parse_env_spec(text)
        folder = out_root / env_spec["label"]
        env = os.environ.copy()
        env["PAGED_BENCH_ENV_LABEL"] = env_spec["label"]
        if env_spec["pythonpath"]:
            env["PYTHONPATH"] = env_spec["pythonpath"] + os.pathsep + env.get("PYTHONPATH", "")
        command = [env_spec["python"], "-m", "harness.cli", "run", "--out", str(folder), "--no-report",
                   "--sweep", args.sweep, "--resume"]
        for flag in ("backends", "workloads", "device"):
            if getattr(args, flag):
                command += [f"--{flag}", getattr(args, flag)]
        if not args.capability:
            command.append("--no-capability")
        _log(f"environment {env_spec['label']}: {shlex.join(command)}")
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            _log(f"environment {env_spec['label']} failed with exit status {done.returncode}")
            return done.returncode
        folders.append(folder)
    compare_args = argparse.Namespace(old=str(folders[0]), new=str(folders[1]), out=str(out_root / "comparison.html"),
                                      fail_on_regression=args.fail_on_regression)
    return cmd_compare(compare_args)


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", help="default (GPU), short (quick check) or cpu-tiny; default: "
                                        "'default' with a GPU, 'cpu-tiny' without")
    parser.add_argument("--backends", help="comma-separated backend names (default: every backend in the sweep)")
    parser.add_argument("--workloads", help="comma-separated workload kinds: decode, prefill, mixed")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paged-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="the main job (also what a bare `paged-bench` does)")
    _add_sweep_options(run)
    run.add_argument("--out", default=str(DEFAULT_OUT), help=f"results folder (default: {DEFAULT_OUT})")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="keep finished cells of an earlier run in --out and measure only the rest (default: on)")
    run.add_argument("--retry-failed", action="store_true",
                     help="when resuming, measure cells recorded as error or timeout again")
    run.add_argument("--capability", action=argparse.BooleanOptionalAction, default=None,
                     help="run the capability probe first (default: on with a GPU, off on the CPU)")
    run.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                     help="render the HTML report at the end (default: on)")
    run.add_argument("--report-path", help="where to write the report (default: <out>/report.html)")
    run.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays instead of launches")
    run.add_argument("--no-flush", action="store_true", help="do not flush L2 between repetitions")
    run.add_argument("--target-ms", type=float, default=150.0, help="timed repetitions per cell, in ms (default 150)")
    run.add_argument("--cell-timeout", type=float, default=300.0, help="seconds before a cell is stopped (default 300)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    env = commands.add_parser("env", help="backends available here and provenance")
    env.add_argument("--device")
    env.set_defaults(func=cmd_env)

    capability = commands.add_parser("capability", help="only the capability probe")
    capability.add_argument("--device")
    capability.add_argument("--out", default=str(DEFAULT_OUT))
    capability.set_defaults(func=cmd_capability)

    report = commands.add_parser("report", help="render the HTML report of a results folder")
    report.add_argument("results")
    report.add_argument("--baseline", help="a second results folder to compare against (e.g. an older release)")
    report.add_argument("--out", help="HTML path (default: <results>/report.html)")
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="compare two results folders cell by cell")
    compare.add_argument("old")
    compare.add_argument("new")
    compare.add_argument("--out", help="HTML path (default: <new>/comparison.html)")
    compare.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a cell got slower or lost")
    compare.set_defaults(func=cmd_compare)

    envs = commands.add_parser("compare-envs", help="run one sweep in two environments and compare them",
                               description="Each environment is LABEL[,python=PATH][,pythonpath=DIRS], e.g. "
                                           "'fe-1.32' and 'fe-1.22.1,pythonpath=/tmp/fe122'.")
    envs.add_argument("old_env")
    envs.add_argument("new_env")
    _add_sweep_options(envs)
    envs.set_defaults(sweep="short")
    envs.add_argument("--out", default=str(DEFAULT_OUT / "versions"))
    envs.add_argument("--capability", action=argparse.BooleanOptionalAction, default=False)
    envs.add_argument("--fail-on-regression", action="store_true")
    envs.set_defaults(func=cmd_compare_envs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
