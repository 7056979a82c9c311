"""`paged-bench releases`: one selection of cells across a list of cuDNN releases (or any environments),
each compared with a baseline; "did the new cuDNN release regress, or fix, anything for paged attention,
the way my engine calls it, on my model's shapes?" in one command.

    paged-bench releases 9.19.0.56 9.28.1.4                      # bare versions: labels cudnn-<version>
    paged-bench releases cudnn-9.19 9.28.1.4 --model llama-3-70b-tp8 --case 64q1c4k --fail-on-regression
    paged-bench releases bisect 9.22.0.52 9.28.1.4 --case 64q1c4k --backends cudnn-stats-ragged

Every way users call cuDNN is a row of its own (`adapters.base.rows_calling`: the cuDNN bindings of
``adapters/backends/cudnn_sdpa.py`` and FlashInfer's cuDNN path), and every one is gated (output and LSE)
and timed in each release by default; ``--backends`` narrows that. The cells are any selection ``run``
takes (``--sweep``, ``--case``, ``--sweep-file``, ``--model``, ``--heads``, ...; default: the ``short``
sweep). Each release runs in its own process (`harness.releases.environments.run_environment`: fetched and cached
by `harness.releases.cudnn_release`, preloaded), optionally after the capability probe, into ``<out>/<label>/``
(resumable: a rerun measures only what is missing). Then `reports.releases` writes ``<out>/releases.html``,
``<out>/releases.json`` and the text summary, both opening with what changed in behaviour: per binding
and cell, the verdict in each release and the release where it broke or was fixed.

Exit status: 0; 1 with ``--fail-on-regression`` when a binding that worked broke (or a cell got slower
beyond its noise band, or a capability stopped working) on some release; 2 when an environment could not
run (the others are still compared, and the reason is in the summary) or the arguments are wrong
(checked before any release is fetched; on a machine without a GPU nothing is downloaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from harness.releases.environments import EnvSpec, EnvSpecError, check_labels, parse_env_spec, run_environment
from harness.releases.cudnn_release import is_version
from harness.errors import UsageError
from records.schema import RESULTS_FILE

DEFAULT_OUT = Path("bench-out/releases")
DEFAULT_SWEEP = "short"
"""The sweep a release check runs when no selection option is given: the headline cells plus every head
grouping's decode, speculative decoding and the decode-heavy mixed step (`harness.cases.sweep.SWEEP_CASES["short"]`)."""
LIBRARY = "cudnn"
"""The library whose releases this command qualifies: every backend row calling it is gated by default."""


def parse_release(text: str) -> EnvSpec:
    """A bare version ``9.28.1.4`` is ``cudnn-9.28.1.4,cudnn=9.28.1.4``; anything else an environment spec
    (`harness.releases.environments.parse_env_spec`)."""
    text = text.strip()
    if is_version(text):
        return EnvSpec(label=f"cudnn-{text}", cudnn=text)
    return parse_env_spec(text)


def _log(message: str) -> None:
    print(f"paged-bench: {message}", file=sys.stderr, flush=True)


def default_backends() -> str:
    """Every backend row that calls cuDNN (its bindings, FlashInfer's cuDNN path), comma-separated."""
    from adapters.base import rows_calling

    return ",".join(rows_calling(LIBRARY))


def child_run_args(args: argparse.Namespace, *, capability: bool, backends: str | None,
                   extra: Sequence[str] = ()) -> list[str]:
    """The ``harness.frontends.cli run`` arguments each environment's process gets: the selection options of ``args``
    as given (`harness.cases.selection.selection_argv`), the backends, device and timing options, resumable, with
    its progress on the terminal and without a report of its own (the comparison is the report). One
    builder for ``releases``, ``releases bisect`` and ``compare-envs``."""
    from harness.cases.selection import selection_argv

    run_args = ["--no-report", "--resume", *selection_argv(args),
                "--capability" if capability else "--no-capability",
                "--shard", "1/1"]  # every environment runs the whole selection, even inside a job array
    for flag, value in (("--backends", backends), ("--device", getattr(args, "device", None))):
        if value:
            run_args += [flag, value]
    if getattr(args, "target_ms", None):
        run_args += ["--target-ms", str(args.target_ms)]
    return run_args + list(extra)


def default_sweep(args: argparse.Namespace, sweep: str) -> argparse.Namespace:
    """``args`` with ``--sweep sweep`` when it selects nothing itself (no --sweep, --case or --sweep-file)."""
    if not (getattr(args, "sweep", None) or getattr(args, "case", None) or getattr(args, "sweep_file", None)):
        args.sweep = sweep
    return args


def check_gpu(device: str | None, command: str) -> None:
    """Refuse, in one line and before anything is fetched, a GPU-only command where torch sees no CUDA GPU
    (or where ``--device cpu`` asks for the CPU): cuDNN releases change nothing there."""
    if device and device.split(":")[0] == "cpu":
        raise UsageError(f"{command} --device cpu: cuDNN releases run on an NVIDIA GPU only; nothing was fetched")
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{command}: cuDNN releases run on an NVIDIA GPU and torch sees none here; nothing was "
                         "fetched or run (compare folders measured elsewhere with --compare-only)")


def check_selection(args: argparse.Namespace, backends: str | None) -> None:
    """The same checks as ``run`` (selection options, backend names), before any release is fetched."""
    from harness.cases.selection import check_backends, select_cases

    select_cases(args, "cuda")
    check_backends(backends, hint=f"the rows calling cuDNN are {default_backends()}; ")


def run_releases(envs: Sequence[EnvSpec], baseline_label: str | None, out_dir: str | Path, run_args: Sequence[str], *,
                 fail_on_regression: bool = False, compare_only: bool = False, title: str = "", timing: bool = True,
                 runner: Callable[[EnvSpec, Path, list[str]], int] | None = None,
                 log: Callable[[str], None] = _log) -> int:
    """Run ``run_args`` (`child_run_args`) in each environment (in order; ``compare_only`` skips running
    and compares the folders already there), compare each with the baseline (default: the first), write
    the releases page and JSON, print the text summary; the exit status (module docstring)."""
    from reports.releases import RELEASES_FILE, RELEASES_JSON, format_releases_text, load_releases, render_releases, \
        write_summary

    if not envs:
        raise EnvSpecError("no releases given")
    check_labels(envs)
    labels = [env.label for env in envs]
    baseline = baseline_label or labels[0]
    if baseline not in labels:
        raise EnvSpecError(f"--baseline {baseline!r} is not one of the releases: {', '.join(labels)}")
    runner = runner or run_environment
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    for index, env in enumerate(envs, 1):
        folder = out / env.label
        if compare_only:
            if not (folder / RESULTS_FILE).exists():
                failed[env.label] = f"no results in {folder} (run without --compare-only first)"
            continue
        log(f"release {index}/{len(envs)}: {env.label} ({env.describe()}) -> {folder}")
        status = runner(env, folder, list(run_args))
        if status != 0:
            failed[env.label] = f"its run exited with status {status} (see the log above)"
            if not (folder / RESULTS_FILE).exists():
                continue
            log(f"release {env.label}: comparing the cells it finished")
            failed[env.label] += "; its finished cells are compared"
    folders = {env.label: out / env.label for env in envs if (out / env.label / RESULTS_FILE).exists()}
    if baseline not in folders:
        log(f"the baseline {baseline} has no results ({failed.get(baseline, 'nothing measured')}): nothing to compare")
        return 2
    requested = {env.label: env.cudnn for env in envs if env.cudnn}
    rc = load_releases(folders, baseline, requested=requested, timing=timing,
                       failed={label: why for label, why in failed.items() if label not in folders})
    for label, why in failed.items():
        if label in folders:
            rc.failed.setdefault(label, why)
    print(format_releases_text(rc))
    page = render_releases(rc, out / RELEASES_FILE, title)
    summary = write_summary(rc, out / RELEASES_JSON)
    log(f"releases page: {page}; summary: {summary}")
    if fail_on_regression and (rc.regressions or rc.broken):
        log(f"{len(rc.broken)} cell(s) broke on some release, {len(rc.regressions)} regression(s) against "
            f"{baseline}: exit status 1 (--fail-on-regression)")
        return 1
    return 2 if failed else 0


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """What ``releases`` and ``releases bisect`` share: every selection option of ``run``, the backend
    rows (default: every row calling cuDNN), device, output folder and timing."""
    from harness.cases.selection import add_selection_options

    add_selection_options(parser)
    parser.add_argument("--backends", "--binding", dest="backends",
                        help="comma-separated backend rows, e.g. cudnn-stats-ragged (default: every row that calls "
                             "cuDNN: its bindings and FlashInfer's cuDNN path; 'all' for every backend)")
    parser.add_argument("--device", help="cuda (cuDNN releases run on an NVIDIA GPU only)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder of the result sets (default: {DEFAULT_OUT})")
    parser.add_argument("--target-ms", type=float, help="timed repetitions per cell, in ms (passed to each run)")
    return parser


def add_releases_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``releases`` subcommand's arguments (the caller sets ``func=cmd_releases``)."""
    parser.add_argument("releases", nargs="+", metavar="RELEASE",
                        help="a cuDNN version (e.g. 9.28.1.4; label cudnn-<version>) or an environment "
                             "LABEL[,python=PATH][,pythonpath=DIRS][,cudnn=VERSION|DIR]; in the order to plot. "
                             "'releases bisect GOOD BAD' finds the first release that changed")
    parser.add_argument("--baseline", help="label of the release the others are compared with (default: the first)")
    add_common_arguments(parser)
    parser.add_argument("--capability", action=argparse.BooleanOptionalAction, default=True,
                        help="run the capability probe in each release too, every binding (default: on)")
    parser.add_argument("--compare-only", action="store_true", help="run nothing: compare the folders already in --out")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when a binding that worked broke, a capability was lost or a cell got slower "
                             "beyond its noise band on some release (for CI)")
    parser.add_argument("--title", default="", help="title of the releases page")
    parser.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                        help="compare times too (default: on); --no-timing compares verdicts, refusals and "
                             "capabilities only, for runs whose times are not comparable (a shared or busy GPU)")
    return parser


def backends_option(args: argparse.Namespace) -> str | None:
    """The ``--backends`` of ``args`` as passed on: every row calling cuDNN when not given, none (all) for 'all'."""
    if args.backends is None:
        return default_backends()
    return None if args.backends.strip() == "all" else args.backends


def cmd_releases(args: argparse.Namespace) -> int:
    """Entry point of ``paged-bench releases`` (see `add_releases_arguments`); every check before anything
    is fetched or run."""
    try:
        envs = [parse_release(text) for text in args.releases]
        if not envs:
            raise EnvSpecError("no releases given")
        check_labels(envs)
        backends = backends_option(args)
        default_sweep(args, DEFAULT_SWEEP)
        check_selection(args, backends)
        if not args.compare_only:
            check_gpu(args.device, "releases")
        run_args = child_run_args(args, capability=args.capability, backends=backends)
        return run_releases(envs, args.baseline, args.out, run_args, fail_on_regression=args.fail_on_regression,
                            compare_only=args.compare_only, title=args.title, timing=args.timing)
    except UsageError as error:
        _log(str(error))
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paged-bench releases", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return cmd_releases(add_releases_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
