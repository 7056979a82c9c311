"""`paged-bench`: the suite's command line.

    paged-bench                      the main job: environment check, capability probe, gated timing
                                     sweep (results written as measured), HTML report
    paged-bench env                  which backends are available here, and why not; provenance
    paged-bench capability           only the capability probe
    paged-bench report DIR [DIR...]  render a report from existing results (several folders: machines
                                     side by side; --baseline OLD for a version comparison)
    paged-bench compare OLD NEW      compare two result sets cell by cell (text table + HTML)
    paged-bench compare-envs A B     run one sweep in two environments (e.g. cuDNN releases) and compare them
    paged-bench releases R1 R2 ...   one selection across cuDNN releases, every way of calling cuDNN,
                                     each compared with the first; what changed in behaviour first
    paged-bench releases bisect GOOD BAD --case ...
                                     the first release between two where a cell changed
    paged-bench models               the model presets (attention shapes per GPU shard) for --model

A mistake on the command line (an unknown sweep, backend or workload, a folder that does not exist or
cannot be written) is one line naming the value and the choices, exit status 2, and nothing is created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from adapters.base import ExtraAdaptersError
from harness.defaults import CORES_PER_GATE_WORKER, DEFAULT_CELL_TIMEOUT_S, DEFAULT_GATE_WORKERS, DEFAULT_TARGET_MS
from harness.errors import UsageError
from records.schema import CAPABILITY_FILE, PROBE_DIR, REPORT_FILE, RESULTS_FILE, WARMUP_DIR

USER_MISTAKES = (UsageError, ExtraAdaptersError)
"""Errors that are the user's mistake (the command line, a file they named, the environment): one line, exit 2."""

DEFAULT_OUT = Path("bench-out")
CPU_SWEEPS = ("cpu-tiny",)
"""Named sweeps sized for a machine without a GPU (Triton's interpreter, eager Flex): the others
would take hours there."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is a `UsageError` (one line, exit status 2) like every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog.removeprefix('paged-bench').strip() or 'arguments'}: {message}")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        return super().parse_known_args(_attach_dash_values(sys.argv[1:] if args is None else list(args)), namespace)


def _attach_dash_values(argv: list[str]) -> list[str]:
    """``--case -3q1c10`` as ``--case=-3q1c10``: argparse takes a value starting with '-' for an option
    and says only "expected one argument"; attached, the value reaches its own check, which names it."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-") \
                and token[1:2].isdigit():
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _log(message: str) -> None:
    print(f"paged-bench: {message}", file=sys.stderr, flush=True)


# --- shared checks (nothing here creates a file) -------------------------------------------------

def _device_type(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = requested.split(":")[0]
    if kind not in ("cuda", "cpu"):
        raise UsageError(f"--device {requested}: choose cuda or cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
    return kind


def _writable_folder(path: Path, *, must_be_new: bool) -> Path:
    """Check that ``path`` can be a results folder (without creating it)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a folder")
    if must_be_new and (path / RESULTS_FILE).exists():
        raise UsageError(f"--out {path}: already holds {RESULTS_FILE}; resume it (the default) or choose another --out")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: {probe} is not writable")
    return path


def _create(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {path}: cannot be created ({error.strerror or error})") from None
    return path


def _results_folder(text: str, option: str = "results folder") -> Path:
    folder = Path(text)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {text}: no such folder")
    if not (folder / RESULTS_FILE).exists():
        raise UsageError(f"{option} {text}: holds no {RESULTS_FILE} (not a results folder)")
    if folder.name == PROBE_DIR and (folder.parent / CAPABILITY_FILE).exists():
        raise UsageError(f"{option} {text}: holds the capability probe's gate-only cells, not a sweep; give the "
                         f"run folder {folder.parent} (its report shows the matrix made from them)")
    if folder.name == WARMUP_DIR and (folder.parent / RESULTS_FILE).exists():
        raise UsageError(f"{option} {text}: holds the compile warm-up's gate-only cells, not a sweep; give the "
                         f"run folder {folder.parent}")
    return folder


def _select(args: argparse.Namespace, device_type: str) -> tuple[str, list]:
    """(label, cases) from the selection options (harness.cases.selection), checked before anything runs;
    a built-in sweep sized for a GPU is refused on the CPU."""
    from harness.cases.selection import select_cases

    selection = select_cases(args, device_type)
    if device_type == "cpu" and selection.sweep is not None and selection.sweep not in CPU_SWEEPS:
        raise UsageError(f"--sweep {selection.sweep} is sized for a GPU ({len(selection.cases)} cases: hours under "
                         f"Triton's interpreter); on the CPU use --sweep {' or '.join(CPU_SWEEPS)} or --case, "
                         "or run on a machine with a GPU")
    return selection.label, selection.cases


def _session(args: argparse.Namespace, device_type: str, sweep_label: str):
    import torch

    from harness.cases.selection import backend_list
    from harness.measure.cell import TimerOptions
    from harness.measure.session import RunSession, parse_gpus

    try:
        gpus = parse_gpus(args.gpus, torch.cuda.device_count() if device_type == "cuda" else 0) \
            if getattr(args, "gpus", None) else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    timer = TimerOptions(target_ms=args.target_ms, flush_l2=not args.no_flush, cuda_graph=args.cuda_graph)
    session = RunSession(out_dir=Path(args.out), device_type=device_type, backends=backend_list(args.backends),
                         timer=timer, gpus=gpus, sweep_label=sweep_label, argv=["paged-bench", *sys.argv[1:]],
                         cell_timeout_s=args.cell_timeout)
    unknown = session.unknown_backends()
    if unknown:
        known = ", ".join(row["backend"] for row in session.availability())
        raise UsageError(f"--backends: unknown backend(s) {', '.join(unknown)}; choose from {known}")
    return session


# --- printing --------------------------------------------------------------------------------------

def _versions_text(versions: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in versions.items())


def print_availability(rows: list[dict[str, Any]], device_type: str) -> None:
    """One line per backend, narrow enough for 80 columns: name, yes/no, and its versions or why not."""
    from reports.text import text_table

    table = [[row["backend"], row["available"], "" if row["in_sweep"] else "probe only",
              _versions_text(row["versions"]) if row["available"] == "yes" else row["reason"]]
             for row in rows]
    print(f"Backends on {device_type}:\n" + text_table(["backend", "here", "", "versions / why not"], table),
          file=sys.stderr)


# --- commands --------------------------------------------------------------------------------------

def cmd_env(args: argparse.Namespace) -> int:
    from adapters.base import declared_packages
    from harness.measure import provenance
    from harness.measure.session import availability
    from adapters.base import worker_environment

    device_type = _device_type(args.device)
    rows = availability(device_type, worker_environment(None, device_type))
    print_availability(rows, device_type)
    versions = {row["backend"]: row["versions"] for row in rows if row["versions"]}
    print(json.dumps(provenance.collect(packages=declared_packages(), backend_versions=versions), indent=1,
                     default=str))
    return 0


def with_probe_variants(backends: list[str]) -> list[str]:
    """The backends and their probe-only variants (`harness.measure.capability.with_probe_variants`)."""
    from harness.measure.capability import with_probe_variants as variants

    return variants(backends)


def _run_capability(out_dir: Path, device_type: str, backends: list[str] | None, pools, *, resume: bool = True,
                    retry_failed: bool = False, features=None, run_meta: dict[str, Any] | None = None,
                    quiet: bool = False) -> Path:
    """The capability probe as gate-only cells of the sweep's runner (`harness.measure.capability.run_probe`) on
    the gate-only ``pools``: the same isolated workers, ``--cell-timeout`` and resume; rows in ``<out>/probe/``,
    the matrix derived from them in ``<out>/capability.csv``."""
    from harness.measure import capability
    from harness.frontends.progress import ProbeProgress

    _log(f"capability probe: gate-only cells -> {out_dir / capability.PROBE_DIR / RESULTS_FILE}")
    show = ProbeProgress(quiet=quiet)
    try:
        df, path = capability.run_probe(
            out_dir, device_type, backends, pools=pools, resume=resume, retry_failed=retry_failed,
            features=capability.FEATURES if features is None else features, run_meta=run_meta, on_progress=show,
            on_slot_failure=lambda slot, why: _log(f"{slot.label} stopped: {why}; its probe cells go to the others"))
    finally:
        show.close()
    for backend, rows in df.groupby("backend", sort=False):
        _log(f"capability: {backend}: {capability.adapter_tally(rows)}")
    _log(f"capability matrix: {path} ({len(df)} rows)")
    return path


def _warm_up(session, cases: list, pools, *, resume: bool, run_meta: dict[str, Any], quiet: bool) -> None:
    """The compile warm-up (`harness.measure.session.RunSession.warm_up`) with its own progress count; the
    cells that fail are not listed here (the sweep gates them again and lists them)."""
    from harness.frontends.progress import ProgressReporter

    cells = session.warm_up_cells(cases, resume=resume)
    if not cells:
        return
    backends = ", ".join(dict.fromkeys(cell.backend for cell in cells))
    _log(f"compile warm-up: {len(cells)} gate-only cells of the backends that compile per layout ({backends}) "
         f"on {len(pools)} worker(s), so the timed sweep loads their kernels -> {session.out_dir / WARMUP_DIR}")
    show = ProgressReporter(len(cells), quiet=quiet, list_failures=False, prefix="paged-bench: compile warm-up: ")
    try:
        rows = session.warm_up(cells, pools=pools, resume=resume, run_meta=run_meta, on_progress=show,
                               on_slot_failure=lambda slot, why: _log(f"{slot} stopped: {why}; its cells go to the others"))
    finally:
        show.close()
    compiled = sum(row.get("setup_s") or 0.0 for row in rows)
    _log(f"compile warm-up: {len(rows)} cells, {compiled:.0f} s of compiling and building (setup_s) done ahead")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.frontends.progress import JobSteps

    steps = JobSteps()
    try:
        return _run(args, steps)
    except USER_MISTAKES:  # a mistake on the command line or in the environment stays one line
        steps.seconds.clear()
        raise
    finally:
        if steps.seconds:
            _log(f"steps: {steps.summary()}")


def _run(args: argparse.Namespace, steps) -> int:
    from harness.frontends.progress import ProgressReporter

    from harness.cases.shard import resolve_shard

    shard = resolve_shard(args.shard, args.shard_count, os.environ)  # a bad value stops here, before anything
    device_type = _device_type(args.device)
    sweep_label, cases = _select(args, device_type)
    from harness.measure.cell import refuse_what_cannot_fit

    refuse_what_cannot_fit(cases, device_type)  # before anything starts: every cell would be oom
    with steps.step("environment check"):
        session = _session(args, device_type, sweep_label)
        session.shard = shard
        out_dir = _create(_writable_folder(Path(args.out), must_be_new=not args.resume))
        print_availability(session.availability(), device_type)
    skipped = [row for row in session.availability()
               if row["backend"] in session.selected_backends() and row["available"] != "yes"]
    if skipped:
        _log(f"{len(skipped)} backend(s) not available on {device_type} are recorded as skipped: "
             + "; ".join(f"{row['backend']} ({row['reason']})" for row in skipped))
    if device_type == "cuda":
        _log("machine ceilings (measured once per GPU, then read from the cache) ...")
    with steps.step("ceilings and provenance"):
        meta = session.start(on_slot_failure=lambda slot, why: _log(f"{slot} left out: {why}"), cases=cases)
    for slot in session.slots:
        if slot.ceilings:
            _log(f"  {slot.label}: bf16 matmul {slot.ceilings['matmul_bf16_tflops']:.0f} TFLOP/s, "
                 f"copy {slot.ceilings['copy_tbps']:.2f} TB/s on {slot.ceilings.get('gpu', '')}")
    capability = args.capability
    if capability is None:
        capability = device_type == "cuda"
        if not capability:
            _log("capability probe skipped on the CPU (its layouts are GPU-sized and Triton's interpreter "
                 "cannot run bf16); the report shows the sweep's own cells instead. Force it with --capability")
    warm_up = device_type == "cuda" if args.warm_up is None else args.warm_up
    if capability or warm_up:
        from harness.measure.capability import with_probe_variants
        from harness.measure.runner import worker_pools

        probed = with_probe_variants(session.backends) if session.backends else None
        gate_slots = session.gate_slots(args.gate_workers)
        with worker_pools(session.gate_config(probed), gate_slots) as pools:  # started once for both steps
            if capability:
                with steps.step("capability probe"):
                    _run_capability(out_dir, device_type, probed, pools, resume=args.resume,
                                    retry_failed=args.retry_failed, run_meta=meta, quiet=args.quiet)
            if warm_up:
                with steps.step("compile warm-up"):
                    _warm_up(session, cases, pools, resume=args.resume, run_meta=meta, quiet=args.quiet)
    cells = len(session.cases_here(cases)) * len(session.selected_backends())
    if shard is not None:
        _log(f"shard {shard.label} ({shard.source}): {cells} of the sweep's "
             f"{len(cases) * len(session.selected_backends())} cells")
        if not cells:  # more shards than cases: an empty results file keeps the folder a (merge-able) shard
            from records.store import ResultStore

            ResultStore(out_dir).results_path.touch()
            return 0
    _log(f"sweep '{sweep_label}': {cells} cells on {len(session.slots)} worker(s) -> {out_dir / RESULTS_FILE}")
    reporter = ProgressReporter(cells, quiet=args.quiet)
    try:
        with steps.step("sweep"):
            rows = session.run(cases, resume=args.resume, retry_failed=args.retry_failed, on_progress=reporter,
                               on_slot_failure=lambda slot, why: _log(f"{slot} stopped: {why}; its cells go to the others"))
    finally:
        reporter.close()
    verdicts: dict[str, int] = {}
    for row in rows:
        verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
    _log("verdicts: " + ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items())))
    if args.report:
        with steps.step("report"):
            path = render(out_dir, Path(args.report_path) if args.report_path else out_dir / REPORT_FILE)
        _log(f"report: {path}")
    return 0


def _declarations() -> dict[str, dict[str, Any]]:
    """What this checkout's adapters declare (baseline, colour), for results that did not record it."""
    try:
        from adapters.base import adapter_classes

        return {name: cls.describe() for name, cls in adapter_classes().items()}
    except Exception:  # noqa: BLE001 - a report must render even if an adapter module is broken
        return {}


def render(results_dir: Path, out_path: Path, baseline_dir: Path | None = None) -> Path:
    from reports.html import render_report
    from reports.model import load_results

    results = load_results(results_dir)
    baseline = load_results(baseline_dir) if baseline_dir else None
    for result_set in filter(None, (results, baseline)):
        for warning in result_set.warnings:
            _log(f"warning: {warning}")
    return render_report(results, out_path, baseline=baseline, declarations=_declarations())


def _merged_shards(folders: list[Path]):
    """The folders as one result set when they are shards of one sweep (`run --shard`), else None."""
    from reports.model import load_results, merge_shards

    return merge_shards([load_results(folder) for folder in folders])


def cmd_report(args: argparse.Namespace) -> int:
    folders = [_results_folder(text) for text in args.results]
    baseline = _results_folder(args.baseline, "--baseline") if args.baseline else None
    if len(folders) > 1 and baseline is None:
        merged = _merged_shards(folders)
        if merged is not None:
            out = Path(args.out) if args.out else folders[0].parent / REPORT_FILE
            _writable_folder(out.parent, must_be_new=False)
            _log(merged.warnings[0])  # which shards are merged, which are missing
            for warning in merged.warnings[1:]:
                _log(f"warning: {warning}")
            from reports.html import render_report

            _log(f"report: {render_report(merged, out, declarations=_declarations())}")
            return 0
    if len(folders) > 1:
        if baseline is not None:
            raise UsageError("--baseline compares two result sets; with several folders the report compares the machines")
        from reports.machines import default_machines_out, format_machines_text, machine_set, render_machines_report

        out = Path(args.out) if args.out else default_machines_out(folders)
        _writable_folder(out.parent, must_be_new=False)
        machines = machine_set(folders)
        for machine in machines.machines:
            for warning in machine.results.warnings:
                _log(f"warning: {warning}")
        print(format_machines_text(machines))
        _log(f"machines report: {render_machines_report(machines, out)}")
        return 1 if machines.errors else 0
    out = Path(args.out) if args.out else folders[0] / REPORT_FILE
    _writable_folder(out.parent, must_be_new=False)
    _log(f"report: {render(folders[0], out, baseline)}")
    return 0


def cmd_capability(args: argparse.Namespace) -> int:
    import torch

    from harness.cases.selection import backend_list
    from harness.measure import capability
    from harness.measure.runner import worker_pools
    from harness.measure.session import RunSession, parse_gpus

    device_type = _device_type(args.device)
    try:
        features = capability.select_features(args.features.split(",")) if args.features else None
        gpus = parse_gpus(args.gpus, torch.cuda.device_count() if device_type == "cuda" else 0) if args.gpus else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    backends = backend_list(args.backends)
    probed = capability.with_probe_variants(backends) if backends else None
    session = RunSession(out_dir=Path(args.out) / capability.PROBE_DIR, device_type=device_type, backends=probed,
                         gpus=gpus, sweep_label="capability probe", argv=["paged-bench", *sys.argv[1:]],
                         cell_timeout_s=args.cell_timeout)
    unknown = session.unknown_backends()
    if unknown:
        known = ", ".join(row["backend"] for row in session.availability())
        raise UsageError(f"--backends: unknown backend(s) {', '.join(unknown)}; choose from {known}")
    out_dir = _create(_writable_folder(Path(args.out), must_be_new=False))
    session.start(on_slot_failure=lambda slot, why: _log(f"{slot} left out: {why}"))
    with worker_pools(session.gate_config(probed), session.gate_slots(args.gate_workers)) as pools:
        path = _run_capability(out_dir, device_type, probed, pools, resume=args.resume,
                               retry_failed=args.retry_failed, features=features)
    return 0 if path.exists() else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from reports.compare import compare_folders, format_comparison_text

    old, new = _results_folder(args.old, "OLD"), _results_folder(args.new, "NEW")
    out = Path(args.out) if args.out else new / "comparison.html"
    _writable_folder(out.parent, must_be_new=False)
    comparison = compare_folders(old, new)
    print(format_comparison_text(comparison))
    _log(f"comparison report: {render(new, out, old)}")
    return 1 if args.fail_on_regression and comparison.regressions else 0


def cmd_compare_envs(args: argparse.Namespace) -> int:
    """Run the same selection at the same commit in two environments (e.g. two cuDNN releases), then compare."""
    from harness.releases.check import child_run_args, default_sweep
    from harness.releases.environments import check_labels, parse_env_spec, run_environment

    out_root = Path(args.out)
    specs = [parse_env_spec(text) for text in (args.old_env, args.new_env)]
    check_labels(specs)
    from harness.cases.selection import check_backends

    check_backends(args.backends)
    device_type = _device_type(args.device)
    default_sweep(args, "short" if device_type == "cuda" else CPU_SWEEPS[0])
    _select(args, device_type)  # the same checks as `run`, before anything starts
    _writable_folder(out_root, must_be_new=False)
    run_args = child_run_args(args, capability=args.capability, backends=args.backends)
    for spec in specs:
        status = run_environment(spec, out_root / spec.label, run_args)
        if status != 0:
            return status
    compare_args = argparse.Namespace(old=str(out_root / specs[0].label), new=str(out_root / specs[1].label),
                                      out=str(out_root / "comparison.html"), fail_on_regression=args.fail_on_regression)
    return cmd_compare(compare_args)


# --- the parser ------------------------------------------------------------------------------------

def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    from harness.cases.selection import add_selection_options

    add_selection_options(parser)
    parser.add_argument("--backends", help="comma-separated backend names (default: every backend in the sweep)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def _gate_workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker count: give 1..32")
    return value


def _add_gate_workers(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--gate-workers", "--probe-workers", dest="gate_workers", type=_gate_workers, default=None,
                        metavar="N",
                        help=f"{what}: gate-only workers per GPU at once (default {DEFAULT_GATE_WORKERS}, at most one "
                             f"per {CORES_PER_GATE_WORKER} CPU cores; their cells are never timed, and most of their "
                             "time is compiling)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="paged-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = commands.add_parser("run", help="the main job (also what a bare `paged-bench` does)")
    _add_sweep_options(run)
    run.add_argument("--out", default=str(DEFAULT_OUT), help=f"results folder (default: {DEFAULT_OUT})")
    run.add_argument("--gpus", help="measure on several GPUs of this host at once, one worker each: 'all', a count, "
                                    "or indices like 0,2 (default: one worker on the current GPU)")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="keep finished cells of an earlier run in --out and measure only the rest (default: on)")
    run.add_argument("--retry-failed", action="store_true",
                     help="when resuming, measure cells recorded as error or timeout again")
    run.add_argument("--capability", action=argparse.BooleanOptionalAction, default=None,
                     help="run the capability probe first (default: on with a GPU, off on the CPU)")
    run.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                     help="render the HTML report at the end (default: on)")
    run.add_argument("--report-path", help=f"where to write the report (default: <out>/{REPORT_FILE})")
    run.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays instead of launches")
    run.add_argument("--no-flush", action="store_true", help="do not flush L2 between repetitions")
    run.add_argument("--target-ms", type=float, default=DEFAULT_TARGET_MS,
                     help=f"timed repetitions per cell, in ms (default {DEFAULT_TARGET_MS:g})")
    run.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S,
                     help=f"seconds before a cell is stopped (default {DEFAULT_CELL_TIMEOUT_S:g})")
    run.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=None,
                     help="before the timed sweep, run the cells of the backends that compile per layout gate-only "
                          f"on --gate-workers workers per GPU, so the sweep loads their kernels (rows in "
                          f"<out>/{WARMUP_DIR}/; default: on with a GPU, off on the CPU)")
    _add_gate_workers(run, "capability probe and compile warm-up")
    run.add_argument("--quiet", action="store_true", help="no progress display (cells that fail are still listed)")
    run.add_argument("--shard", metavar="I/N",
                     help="measure only shard I of N of the selection (whole cases, split the same way on every "
                          "host; `report` merges the N folders). Default: from a Slurm array task or a Kubernetes "
                          "Indexed Job's environment, else every cell; --shard 1/1 ignores that environment")
    run.add_argument("--shard-count", metavar="N",
                     help="the shard count of a Kubernetes Indexed Job, whose JOB_COMPLETION_INDEX gives the "
                          "shard (default: $PAGED_BENCH_SHARD_COUNT)")
    run.set_defaults(func=cmd_run)

    env = commands.add_parser("env", help="backends available here and provenance")
    env.add_argument("--device")
    env.set_defaults(func=cmd_env)

    capability = commands.add_parser("capability", help="only the capability probe")
    capability.add_argument("--device")
    capability.add_argument("--backends", help="comma-separated backend names (default: all registered)")
    capability.add_argument("--out", default=str(DEFAULT_OUT),
                            help=f"results folder: cells in <out>/probe/, the matrix in <out>/{CAPABILITY_FILE}")
    capability.add_argument("--features", help="comma-separated feature rows to probe, by feature (page_size) or "
                                               "feature=value (kind=decode) (default: every row)")
    capability.add_argument("--gpus", help="probe on several GPUs of this host at once, one worker each (as `run --gpus`)")
    capability.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                            help="keep probe cells already recorded in <out>/probe and measure only the rest (default: on)")
    capability.add_argument("--retry-failed", action="store_true",
                            help="when resuming, probe cells recorded as error or timeout again")
    capability.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S,
                            help=f"seconds before a probe cell is stopped (default {DEFAULT_CELL_TIMEOUT_S:g})")
    _add_gate_workers(capability, "the probe")
    capability.set_defaults(func=cmd_capability)

    report = commands.add_parser("report", help="render the HTML report of one results folder, or of several "
                                                "(machines side by side)")
    report.add_argument("results", nargs="+")
    report.add_argument("--baseline", help="a second results folder to compare against (e.g. an older release)")
    report.add_argument("--out", help=f"HTML path (default: <results>/{REPORT_FILE}; machines.html beside them for several)")
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="compare two results folders cell by cell")
    compare.add_argument("old")
    compare.add_argument("new")
    compare.add_argument("--out", help="HTML path (default: <new>/comparison.html)")
    compare.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a cell got slower or lost")
    compare.set_defaults(func=cmd_compare)

    envs = commands.add_parser("compare-envs", help="run one sweep in two environments and compare them",
                               description="Each environment is LABEL[,python=PATH][,pythonpath=DIRS][,cudnn=VERSION|DIR], "
                                           "e.g. 'cudnn-9.19' and 'cudnn-9.28,cudnn=9.28.1.4'.")
    envs.add_argument("old_env")
    envs.add_argument("new_env")
    _add_sweep_options(envs)
    envs.add_argument("--out", default=str(DEFAULT_OUT / "versions"))
    envs.add_argument("--capability", action=argparse.BooleanOptionalAction, default=False)
    envs.add_argument("--fail-on-regression", action="store_true")
    envs.add_argument("--target-ms", type=float, help="timed repetitions per cell, in ms (passed to each run)")
    envs.set_defaults(func=cmd_compare_envs)

    from harness.releases.check import add_releases_arguments, cmd_releases

    releases = commands.add_parser("releases", help="one sweep across several cuDNN releases, each compared with a baseline",
                                   description="Did a new cuDNN release regress or fix anything? Each RELEASE is a "
                                               "version of nvidia-cudnn-cu13 (fetched once, cached) or an environment.")
    add_releases_arguments(releases)
    releases.set_defaults(func=cmd_releases)

    from harness.releases.bisect import add_bisect_arguments, cmd_bisect

    bisect = commands.add_parser("releases-bisect", prog="paged-bench releases bisect",
                                 help="(written `releases bisect GOOD BAD`) the first cuDNN release between two where "
                                      "a cell's verdict or time changed",
                                 description="Binary search over the cuDNN releases between GOOD and BAD for the first "
                                             "one where the selected cells change (verdict, or time beyond the noise "
                                             "band); fetches only the releases it measures.")
    add_bisect_arguments(bisect)
    bisect.set_defaults(func=cmd_bisect)

    from harness.cases.models import add_models_parser

    add_models_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    if argv[:2] == ["releases", "bisect"]:
        argv = ["releases-bisect", *argv[2:]]
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("choose a command: run, env, capability, report, compare, compare-envs, releases, models")
        return args.func(args)
    except USER_MISTAKES as error:
        print(f"paged-bench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _log(f"interrupted; every finished cell is in {RESULTS_FILE} (run the same command again to resume)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
