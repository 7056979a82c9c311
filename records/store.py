"""Results on disk, durable line by line: ``<out>/results.jsonl`` holds one JSON row per finished cell,
``<out>/runs.jsonl`` one line per run (its id, environment, ceilings, sweep, command line).

Each line is appended under an exclusive lock as one ``os.write`` of the complete line, then fsynced,
so an interrupted run (Ctrl-C, kill -9, power loss after the fsync) keeps every finished cell and never
leaves half a row behind it; several runs may write to one folder at once. If an older crash did leave
a partial last line, readers skip it and the next writer starts on a fresh line.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from records.schema import RESULTS_FILE, RETRYABLE_VERDICTS, RUNS_FILE  # noqa: F401 - RETRYABLE_VERDICTS re-exported


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: lock, repair a partial last line, one write, fsync."""
    line = json.dumps(record, sort_keys=False, default=str, allow_nan=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as reader:
                    reader.seek(size - 1)
                    if reader.read(1) != b"\n":
                        line = "\n" + line  # a crashed writer left a partial line: end it, start afresh
            data = line.encode()
            written = os.write(fd, data)
            while written < len(data):  # only on a full disk or a signal; never interleaves (we hold the lock)
                written += os.write(fd, data[written:])
            os.fsync(fd)
            if not size:
                _fsync_dir(path.parent)  # a new file: make its directory entry durable too
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Every complete, parseable JSON object line of ``path``, and the (1-based) numbers of the lines
    that were skipped (a writer killed mid-line before this format's fsynced appends, a garbled edit)."""
    if not path.exists():
        return [], []
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            with os.fdopen(os.dup(fd), "rb") as reader:
                data = reader.read()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    records, skipped = [], []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            skipped.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped.append(number)
    return records, skipped


class ResultStore:
    """The results and runs of one output folder (created at the first write, never by reading)."""

    def __init__(self, out_dir: str | os.PathLike[str]):
        self.out_dir = Path(out_dir)
        self.results_path = self.out_dir / RESULTS_FILE
        self.runs_path = self.out_dir / RUNS_FILE
        self.skipped_results: list[int] = []
        """Numbers of the unreadable lines of results.jsonl met by the last read."""
        self.skipped_runs: list[int] = []
        """The same for runs.jsonl."""

    def append(self, row: dict[str, Any]) -> None:
        """Record one finished cell (a row of records.schema.COLUMNS, with its run_id) durably."""
        _append_line(self.results_path, row)

    def append_run(self, meta: dict[str, Any]) -> None:
        """Record one run: run_id, env_id, provenance dict, ceilings, sweep name, argv, started_at."""
        _append_line(self.runs_path, meta)

    def read_rows(self) -> list[dict[str, Any]]:
        """Every recorded row, in the order written (a cell measured twice appears twice)."""
        rows, self.skipped_results = _read_lines(self.results_path)
        return rows

    def read_runs(self) -> list[dict[str, Any]]:
        runs, self.skipped_runs = _read_lines(self.runs_path)
        return runs

    def latest_rows(self, *, env_id: str | None = None) -> dict[str, dict[str, Any]]:
        """The last row recorded for each cell_id (of environment ``env_id`` only, when given)."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.read_rows():
            if "cell_id" in row and (not env_id or row.get("env_id") == env_id):
                latest[row["cell_id"]] = row
        return latest
