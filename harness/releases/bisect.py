"""`paged-bench releases bisect GOOD BAD`: the first cuDNN release between two releases where a cell
changed: its verdict (a binding broke or was fixed) or its time beyond the noise band.

    paged-bench releases bisect 9.22.0.52 9.28.1.4 --case 64q1c4k --backends cudnn-stats-ragged

The releases in between come from the ``nvidia-cudnn-cu13`` list of the package registry (9.12 to 9.28.1
are there) or, where the registry cannot be reached, from the releases already cached
(`harness.releases.cudnn_release.cache_root`). GOOD and BAD are measured first, each in its own process on its own
release (`harness.releases.environments.run_environment`, the same child command as ``releases``); the cells that
differ between them are what the search follows. Then the release halfway between the last one like GOOD
and the first one like BAD is measured, and so on: about log2(n) releases are fetched and run, never the
whole list. Each step is printed; the answer is the first release like BAD and the last one like GOOD.
The search itself (`bisect`) takes any ``measure`` callable, so it is tested on planted verdicts without
a GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import UsageError
from harness.releases.cudnn_release import PACKAGE, cache_root, is_version
from harness.releases.environments import EnvSpec, run_environment
from records.schema import RESULTS_FILE

BISECT_JSON = "bisect.json"
Cells = dict[str, dict[str, Any]]
"""A release's outcome: per cell id, the row's backend, case, verdict, reason, median_us and iqr_pct."""


def version_key(version: str) -> tuple[int, ...]:
    """'9.28.1.4' -> (9, 28, 1, 4): the order of releases."""
    return tuple(int(part) for part in version.split("."))


def registry_releases(timeout_s: float = 60.0) -> list[str]:
    """Every ``nvidia-cudnn-cu13`` version the package registry lists (``pip index versions``); [] when it
    cannot be reached."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", PACKAGE, "--disable-pip-version-check"],
                              capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return []
    match = re.search(r"Available versions:\s*(.+)", done.stdout)
    return [v.strip() for v in match.group(1).split(",") if is_version(v.strip())] if match else []


def cached_releases(root: Path | None = None) -> list[str]:
    """Versions with a complete folder in the release cache."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    return [p.name for p in root.iterdir() if is_version(p.name) and (p / "release.json").exists()]


def candidates_between(good: str, bad: str, known: Sequence[str]) -> list[str]:
    """GOOD, the known releases strictly between GOOD and BAD in version order, BAD (either direction:
    a fix is bisected from the broken release to the fixed one just the same)."""
    low, high = sorted((good, bad), key=version_key)
    inner = sorted({v for v in known if version_key(low) < version_key(v) < version_key(high)}, key=version_key)
    ordered = [low, *inner, high]
    return ordered if version_key(good) <= version_key(bad) else ordered[::-1]


def cell_difference(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """How a cell differs between two releases ("" when alike): its verdict, or its time beyond the noise
    band of `reports.compare.noise_band` (the rule every comparison of this suite uses)."""
    from reports.compare import noise_band

    if before is None or after is None:
        return "" if before is after else ("measured only on one side")
    if before["verdict"] != after["verdict"]:
        return f"{before['verdict']} -> {after['verdict']}"
    if before["verdict"] == "ok" and before.get("median_us") and after.get("median_us"):
        ratio = after["median_us"] / before["median_us"]
        band = noise_band(before.get("iqr_pct"), after.get("iqr_pct"))
        if ratio > 1 + band or ratio < 1 / (1 + band):
            return f"time x{ratio:.2f} (band ±{band:.0%})"
    return ""


@dataclass
class Step:
    """One measured release: its place in the list, whether it is like GOOD, and why not."""

    release: str
    position: int
    like_good: bool
    why: dict[str, str] = field(default_factory=dict)
    """Per followed cell, how it differs from GOOD."""


@dataclass
class BisectResult:
    """The search: the candidate list, the cells that differ between GOOD and BAD, each step, and the
    answer (``first_changed``: the first release like BAD; ``last_unchanged``: the one before it)."""

    candidates: list[str]
    changed_cells: dict[str, str]
    steps: list[Step]
    first_changed: str | None
    last_unchanged: str | None
    labels: dict[str, str] = field(default_factory=dict)
    """Per cell id, 'backend case' for the messages."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def answer(self) -> str:
        if self.first_changed is None:
            return (f"no cell differs between {self.candidates[0]} and {self.candidates[-1]} "
                    "(same verdicts, times within their noise band): nothing to bisect")
        cells = "; ".join(f"{self.labels.get(c, c)}: {why}" for c, why in self.changed_cells.items())
        return (f"first release that changed: {self.first_changed} (last one like {self.candidates[0]}: "
                f"{self.last_unchanged}); {len(self.steps)} of {len(self.candidates)} releases measured; {cells}")


def bisect(candidates: Sequence[str], measure: Callable[[str], Cells],
           log: Callable[[str], None] = lambda message: None) -> BisectResult:
    """Binary search over ``candidates`` (GOOD first, BAD last) for the first release whose cells differ
    from GOOD's in the way BAD's do. ``measure(release)`` returns that release's `Cells`."""
    candidates = list(candidates)
    if len(candidates) < 2:
        raise ValueError("bisect needs two releases")
    good = measure(candidates[0])
    log(f"step 1: {candidates[0]} (GOOD) measured: {len(good)} cell(s)")
    bad = measure(candidates[-1])
    changed = {cell: why for cell in sorted(set(good) | set(bad)) if (why := cell_difference(good.get(cell), bad.get(cell)))}
    labels = {cell: f"{row['backend']} {row['case']}" for cells in (good, bad) for cell, row in cells.items()}
    steps = [Step(candidates[0], 0, True), Step(candidates[-1], len(candidates) - 1, not changed, dict(changed))]
    log(f"step 2: {candidates[-1]} (BAD): " + ("; ".join(f"{labels[c]}: {w}" for c, w in changed.items())
                                                 or "like GOOD"))
    if not changed:
        return BisectResult(candidates, {}, steps, None, None, labels)
    low, high = 0, len(candidates) - 1
    while high - low > 1:
        middle = (low + high) // 2
        release = candidates[middle]
        cells = measure(release)
        why = {cell: diff for cell in changed if (diff := cell_difference(good.get(cell), cells.get(cell)))}
        steps.append(Step(release, middle, not why, why))
        if why:
            high = middle
        else:
            low = middle
        left = max(high - low - 1, 0)
        log(f"step {len(steps)}: {release}: " + ("like BAD (" + "; ".join(f"{labels.get(c, c)}: {w}" for c, w in why.items())
                                                  + ")" if why else "like GOOD") + f"; {left} release(s) left between")
    return BisectResult(candidates, changed, steps, candidates[high], candidates[low], labels)


def read_cells(folder: Path, backends: set[str] | None = None) -> Cells:
    """The last row of every cell in ``folder``'s results (of ``backends`` when given)."""
    from records.store import ResultStore

    return {cell: {key: row.get(key) for key in ("backend", "case", "verdict", "reason", "median_us", "iqr_pct")}
            for cell, row in ResultStore(folder).latest_rows().items()
            if backends is None or row.get("backend") in backends}


def add_bisect_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``releases bisect GOOD BAD`` and the selection options ``releases`` takes."""
    from harness.releases.check import DEFAULT_OUT, add_common_arguments

    parser.add_argument("good", metavar="GOOD", help="a cuDNN release version whose cells are as expected, e.g. 9.22.0.52")
    parser.add_argument("bad", metavar="BAD", help="a release where they changed, e.g. 9.28.1.4 (either may be the "
                                                   "older one: a fix is bisected the same way)")
    add_common_arguments(parser)
    parser.set_defaults(out=str(DEFAULT_OUT.parent / "bisect"))
    parser.add_argument("--releases", metavar="V,V,...",
                        help="the releases to search among (default: the registry's nvidia-cudnn-cu13 list, else "
                             "the cached releases)")
    return parser


def cmd_bisect(args: argparse.Namespace) -> int:
    """Entry point of ``paged-bench releases bisect``: checks, the candidate list, the search, the answer
    (printed and written to ``<out>/bisect.json``). Exit status 0 with an answer, 2 otherwise."""
    from harness.releases.check import backends_option, check_gpu, check_selection, child_run_args

    def log(message: str) -> None:
        print(f"paged-bench: bisect: {message}", file=sys.stderr, flush=True)

    try:
        for value, name in ((args.good, "GOOD"), (args.bad, "BAD")):
            if not is_version(value):
                raise UsageError(f"releases bisect {name} {value!r}: give a cuDNN release version, e.g. 9.28.1.4")
        if version_key(args.good) == version_key(args.bad):
            raise UsageError(f"releases bisect: GOOD and BAD are the same release ({args.good})")
        if not (args.case or args.sweep or args.sweep_file):
            raise UsageError("releases bisect: name the cells to follow (--case, --sweep or --sweep-file)")
        backends = backends_option(args)
        check_selection(args, backends)
        check_gpu(args.device, "releases bisect")
        if args.releases:
            known = [v.strip() for v in args.releases.split(",") if v.strip()]
            bad = [v for v in known if not is_version(v)]
            if bad:
                raise UsageError(f"--releases: {', '.join(bad)} is not a release version")
            source = "--releases"
        else:
            known = registry_releases()
            source = f"the package registry's {PACKAGE} list"
            if not known:
                known = cached_releases()
                source = f"the releases cached in {cache_root()} (the registry could not be reached)"
        candidates = candidates_between(args.good, args.bad, known)
        log(f"{len(candidates)} releases from {args.good} to {args.bad} ({source}): {', '.join(candidates)}")
    except UsageError as error:
        print(f"paged-bench: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    run_args = child_run_args(args, capability=False, backends=backends)
    wanted = set(backends.split(",")) if backends else None
    failures: list[str] = []

    def measure(release: str) -> Cells:
        folder = out / f"cudnn-{release}"
        log(f"measuring {release} -> {folder}")
        status = run_environment(EnvSpec(label=f"cudnn-{release}", cudnn=release), folder, run_args)
        if status != 0:
            failures.append(f"{release}: exit status {status}")
        return read_cells(folder, wanted) if (folder / RESULTS_FILE).exists() else {}

    result = bisect(candidates, measure, log)
    out.mkdir(parents=True, exist_ok=True)
    (out / BISECT_JSON).write_text(json.dumps({**result.as_dict(), "answer": result.answer(), "failures": failures},
                                              indent=1) + "\n")
    print(result.answer())
    if failures:
        log("some releases did not run cleanly: " + "; ".join(failures))
    return 0 if result.first_changed and not failures else 2
