"""`paged-bench releases`: one sweep across a list of cuDNN releases (or any environments), each
compared with a baseline; "did the new cuDNN release regress, or fix, anything for paged attention?"
in one command.

    paged-bench releases 9.19.0.56 9.28.1.4                      # bare versions: labels cudnn-<version>
    paged-bench releases cudnn-9.19 cudnn-9.28,cudnn=9.28.1.4 --baseline cudnn-9.19 --fail-on-regression

Each release runs the same sweep in its own process (`harness.environments.run_environment`: fetched
and cached by `harness.cudnn_release`, preloaded), optionally after the capability probe, into
``<out>/<label>/`` (resumable: a rerun measures only what is missing). Then `reports.releases`
compares every release with the baseline pairwise and writes ``<out>/releases.html`` (the time of each
cell across releases as a plot), ``<out>/releases.json`` and the text summary on stdout.

Exit status: 0; 1 with ``--fail-on-regression`` when a cell got slower beyond its noise band or a
cell or capability stopped working on some release; 2 when an environment could not run (the others
are still compared, and the reason is in the summary) or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from harness.environments import EnvSpec, EnvSpecError, check_labels, parse_env_spec, run_environment
from harness.cudnn_release import is_version

DEFAULT_OUT = Path("bench-out/releases")
DEFAULT_BACKENDS = "cudnn"
"""The backends whose numbers a cuDNN release changes (the probe-only T-row variant runs in the probe)."""


def parse_release(text: str) -> EnvSpec:
    """A bare version ``9.28.1.4`` is ``cudnn-9.28.1.4,cudnn=9.28.1.4``; anything else an environment spec
    (`harness.environments.parse_env_spec`)."""
    text = text.strip()
    if is_version(text):
        return EnvSpec(label=f"cudnn-{text}", cudnn=text)
    return parse_env_spec(text)


def _log(message: str) -> None:
    print(f"paged-bench: {message}", file=sys.stderr, flush=True)


def run_args_for(*, sweep: str, backends: str | None, workloads: str | None, device: str | None, capability: bool,
                 extra: Sequence[str] = ()) -> list[str]:
    """The ``harness.cli run`` arguments every environment gets (the same sweep for all)."""
    args = ["--no-report", "--resume", "--sweep", sweep, "--capability" if capability else "--no-capability"]
    for flag, value in (("--backends", backends), ("--workloads", workloads), ("--device", device)):
        if value:
            args += [flag, value]
    return args + list(extra)


def run_releases(envs: Sequence[EnvSpec], baseline_label: str | None, out_dir: str | Path, *, sweep: str = "short",
                 backends: str | None = DEFAULT_BACKENDS, workloads: str | None = None, device: str | None = None,
                 capability: bool = True, extra_run_args: Sequence[str] = (), fail_on_regression: bool = False,
                 compare_only: bool = False, title: str = "",
                 runner: Callable[[EnvSpec, Path, list[str]], int] = run_environment,
                 log: Callable[[str], None] = _log) -> int:
    """Run the sweep in each environment (in order; ``compare_only`` skips running and compares the
    folders already there), compare each with the baseline (default: the first), write the releases
    page and JSON, print the text summary; the exit status (module docstring)."""
    from reports.releases import RELEASES_FILE, RELEASES_JSON, format_releases_text, load_releases, render_releases, \
        write_summary

    if not envs:
        raise EnvSpecError("no releases given")
    check_labels(envs)
    labels = [env.label for env in envs]
    baseline = baseline_label or labels[0]
    if baseline not in labels:
        raise EnvSpecError(f"--baseline {baseline!r} is not one of the releases: {', '.join(labels)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_args = run_args_for(sweep=sweep, backends=backends, workloads=workloads, device=device, capability=capability,
                            extra=extra_run_args)
    failed: dict[str, str] = {}
    for env in envs:
        folder = out / env.label
        if compare_only:
            if not (folder / "results.jsonl").exists():
                failed[env.label] = f"no results in {folder} (run without --compare-only first)"
            continue
        log(f"release {env.label} ({env.describe()}) -> {folder}")
        status = runner(env, folder, run_args)
        if status != 0:
            failed[env.label] = f"its sweep exited with status {status} (see the log above)"
            if not (folder / "results.jsonl").exists():
                continue
            log(f"release {env.label}: comparing the cells it finished")
            failed[env.label] += "; its finished cells are compared"
    folders = {env.label: out / env.label for env in envs if (out / env.label / "results.jsonl").exists()}
    if baseline not in folders:
        log(f"the baseline {baseline} has no results ({failed.get(baseline, 'nothing measured')}): nothing to compare")
        return 2
    requested = {env.label: env.cudnn for env in envs if env.cudnn}
    rc = load_releases(folders, baseline, requested=requested,
                       failed={label: why for label, why in failed.items() if label not in folders})
    for label, why in failed.items():
        if label in folders:
            rc.failed.setdefault(label, why)
    print(format_releases_text(rc))
    page = render_releases(rc, out / RELEASES_FILE, title)
    summary = write_summary(rc, out / RELEASES_JSON)
    log(f"releases page: {page}; summary: {summary}")
    if fail_on_regression and rc.regressions:
        log(f"{len(rc.regressions)} regression(s): exit status 1 (--fail-on-regression)")
        return 1
    return 2 if failed else 0


def add_releases_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``releases`` subcommand's arguments (the caller sets ``func=cmd_releases``)."""
    parser.add_argument("releases", nargs="+", metavar="RELEASE",
                        help="a cuDNN version (e.g. 9.28.1.4; label cudnn-<version>) or an environment "
                             "LABEL[,python=PATH][,pythonpath=DIRS][,cudnn=VERSION|DIR]; in the order to plot")
    parser.add_argument("--baseline", help="label of the release the others are compared with (default: the first)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder of the result sets (default: {DEFAULT_OUT})")
    parser.add_argument("--sweep", default="short", help="the sweep every release runs (default: short)")
    parser.add_argument("--backends", default=DEFAULT_BACKENDS,
                        help=f"comma-separated backends (default: {DEFAULT_BACKENDS}; 'all' for every one)")
    parser.add_argument("--workloads", help="comma-separated workload kinds: decode, prefill, mixed")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--capability", action=argparse.BooleanOptionalAction, default=True,
                        help="run the capability probe in each release too (default: on)")
    parser.add_argument("--target-ms", type=float, help="timed repetitions per cell, in ms (passed to each run)")
    parser.add_argument("--compare-only", action="store_true", help="run nothing: compare the folders already in --out")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when a cell got slower beyond its noise band or stopped working (for CI)")
    parser.add_argument("--title", default="", help="title of the releases page")
    return parser


def cmd_releases(args: argparse.Namespace) -> int:
    """Entry point of ``paged-bench releases`` (see `add_releases_arguments`)."""
    try:
        envs = [parse_release(text) for text in args.releases]
        extra = ["--target-ms", str(args.target_ms)] if args.target_ms else []
        return run_releases(envs, args.baseline, args.out, sweep=args.sweep,
                            backends=None if args.backends == "all" else args.backends, workloads=args.workloads,
                            device=args.device, capability=args.capability, extra_run_args=extra,
                            fail_on_regression=args.fail_on_regression, compare_only=args.compare_only,
                            title=args.title)
    except EnvSpecError as error:
        _log(str(error))
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paged-bench releases", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return cmd_releases(add_releases_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
