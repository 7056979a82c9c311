"""How a run shows its progress: a live bar on a terminal, and on anything else (a log file, CI, a
pipe) one plain line every few cells, so logs stay readable. Cells that did not pass are always
reported, one line each, even with ``--quiet`` (which only hides the progress itself)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import IO, Iterator

from harness.measure.runner import Progress
from reports.text import duration

NOT_REPORTED = frozenset({"ok", "skipped"})
"""Verdicts that need no line of their own (skipped backends are named once, before the sweep)."""
LINES_PER_RUN = 20
"""A non-terminal log gets about this many progress lines per run (and at least one a minute)."""
LINE_EVERY_S = 60.0


def failure_line(progress: Progress) -> str:
    row = progress.row
    reason = " ".join(str(row.get("reason") or "").split())
    return f"{row['verdict']:<11} {row['backend']} / {row['case']}: {reason[:300]}"


class ProgressReporter:
    """A `harness.measure.runner.ProgressCallback` writing to ``stream`` (stderr by default)."""

    def __init__(self, total: int, *, done: int = 0, quiet: bool = False, stream: IO[str] | None = None,
                 prefix: str = "paged-bench: ", list_failures: bool = True):
        self.stream = stream or sys.stderr
        self.total, self.quiet, self.prefix = total, quiet, prefix
        self.list_failures = list_failures
        """False for cells that are no results (the compile warm-up's): what failed is still counted."""
        self.started = time.monotonic()
        self.first_done = done
        self.last_line_at = self.started
        self.every = max(1, total // LINES_PER_RUN)
        self.counts: dict[str, int] = {}
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="cell", desc="cells", file=self.stream,
                            dynamic_ncols=True)

    def _eta(self, done: int) -> str:
        measured = done - self.first_done
        if measured <= 0:
            return "?"
        elapsed = time.monotonic() - self.started
        return duration(elapsed / measured * (self.total - done))

    def __call__(self, progress: Progress) -> None:
        verdict = progress.row["verdict"]
        self.counts[verdict] = self.counts.get(verdict, 0) + 1
        if verdict not in NOT_REPORTED and self.list_failures:
            self._write(failure_line(progress))
        if self.bar is not None:
            self.bar.set_postfix_str(f"{progress.row['backend']} / {progress.row['case']}"[:60])
            self.bar.update(progress.done - self.bar.n)
            return
        if self.quiet:
            return
        now = time.monotonic()
        if progress.done % self.every == 0 or progress.done == self.total or now - self.last_line_at >= LINE_EVERY_S:
            self.last_line_at = now
            tally = ", ".join(f"{n} {v}" for v, n in sorted(self.counts.items()))
            self._write(f"{self.prefix}{progress.done}/{self.total} cells ({tally}); "
                        f"elapsed {duration(now - self.started)}, about {self._eta(progress.done)} left")

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JobSteps:
    """The wall time of each step of one command (environment check, ceilings, capability probe, sweep,
    report), so a log says where a job's minutes went: ``with steps.step("sweep"): ...``, then `summary`."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - began

    def summary(self) -> str:
        """'environment check 4s, ceilings 9s, capability probe 1m02s, sweep 6m40s, report 11s; total 8m14s'
        (the total is the whole command, so it includes what no step names)."""
        parts = [f"{name} {duration(seconds)}" for name, seconds in self.seconds.items()]
        return ", ".join(parts) + f"; total {duration(time.monotonic() - self.started)}"


class ProbeProgress:
    """Progress of the capability probe's two rounds of cells (page sizes, then the other rows), each
    shown as its own count: a `harness.measure.runner.ProgressCallback`."""

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None):
        self.quiet, self.stream = quiet, stream
        self.reporter: ProgressReporter | None = None
        self.last_done = 0

    def __call__(self, progress: Progress) -> None:
        if self.reporter is None or progress.done <= self.last_done or progress.total != self.reporter.total:
            self.close()  # a new round of cells
            self.reporter = ProgressReporter(progress.total, done=progress.done - 1, quiet=self.quiet,
                                             stream=self.stream, prefix="paged-bench: capability probe: ")
        self.last_done = progress.done
        self.reporter(progress)

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
