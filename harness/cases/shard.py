"""``--shard I/N``: one sweep's cells split over N hosts, deterministically, so that every host computes
the same split from the selection alone and `paged-bench report` merges the N folders into one sweep.

The split deals whole cases (a case's cells stay together: its batch and reference are built once)
round-robin over the shards, cases sorted by name and then by their identity (`Case.as_dict`), so the
shards differ by at most one case. Every run of a shard records it in ``runs.jsonl`` under ``shard``:
``{"index": I, "count": N, "selection": <sha1 of the selection's cell ids>, "cases": <cases in the
selection>, "source": <where I/N came from>}``; the report reads that record (`reports.model`).

Without ``--shard`` the index comes from a job array's environment: Slurm (``SLURM_ARRAY_TASK_ID``,
``SLURM_ARRAY_TASK_COUNT``, ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_STEP``) or a Kubernetes
Indexed Job (``JOB_COMPLETION_INDEX``, 0-based, with the count from ``--shard-count`` or
``PAGED_BENCH_SHARD_COUNT``). ``--shard 1/1`` turns that pick-up off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.cases.sweep import Case

COUNT_VARIABLE = "PAGED_BENCH_SHARD_COUNT"
"""The shard count of a Kubernetes Indexed Job (Kubernetes sets only the index, ``JOB_COMPLETION_INDEX``)."""
RECORD_KEY = "shard"
"""The key of a run's shard record in ``runs.jsonl``."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``, and where that came from (``--shard``, Slurm, Kubernetes)."""

    index: int
    count: int
    source: str = "--shard"

    @property
    def label(self) -> str:
        """``I/N``, as ``--shard`` takes it."""
        return f"{self.index}/{self.count}"


def _whole(text: str, what: str) -> int:
    """An integer written in decimal digits, or a `UsageError` naming ``what`` and the value."""
    text = str(text).strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"{what}: {text!r} is not a whole number")
    return int(text)


def _checked(index: int, count: int, source: str, shown: str) -> Shard:
    """A `Shard` when 1 <= index <= count, else a `UsageError` naming ``shown``."""
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"{shown}: the shard must be I/N with 1 <= I <= N (N >= 1)")
    return Shard(index, count, source)


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> `Shard`; anything else (``0/3``, ``3/2``, ``a/b``) is a `UsageError`."""
    parts = str(text).split("/")
    if len(parts) != 2:
        raise UsageError(f"--shard {text}: expected I/N, e.g. 1/4 (shard I of N, 1 <= I <= N)")
    index, count = (_whole(part, f"--shard {text}") for part in parts)
    return _checked(index, count, "--shard", f"--shard {text}")


def _slurm_shard(environ: Mapping[str, str]) -> Shard:
    """The shard of a Slurm array task: its position among the array's ids (min, min+step, ...)."""
    task = _whole(environ["SLURM_ARRAY_TASK_ID"], "SLURM_ARRAY_TASK_ID")
    if "SLURM_ARRAY_TASK_COUNT" not in environ:
        raise UsageError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
    count = _whole(environ["SLURM_ARRAY_TASK_COUNT"], "SLURM_ARRAY_TASK_COUNT")
    low = _whole(environ.get("SLURM_ARRAY_TASK_MIN", "0"), "SLURM_ARRAY_TASK_MIN")
    step = max(1, _whole(environ.get("SLURM_ARRAY_TASK_STEP", "1"), "SLURM_ARRAY_TASK_STEP"))
    offset, rest = divmod(task - low, step)
    if task < low or rest or offset >= count:
        raise UsageError(f"SLURM_ARRAY_TASK_ID={task} is outside the array ({count} task(s) from {low}, step {step}); "
                         "for an array with irregular ids pass --shard I/N")
    return _checked(offset + 1, count, "slurm", f"SLURM_ARRAY_TASK_ID={task}")


def _kubernetes_shard(environ: Mapping[str, str], count_text: str | None) -> Shard:
    """The shard of a Kubernetes Indexed Job's pod: ``JOB_COMPLETION_INDEX`` (0-based) of the given count."""
    index = _whole(environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX")
    count_text = count_text if count_text is not None else environ.get(COUNT_VARIABLE)
    if count_text is None:
        raise UsageError(f"JOB_COMPLETION_INDEX={index} is set but not the shard count: pass --shard-count N "
                         f"(the Job's completions) or set {COUNT_VARIABLE}, or --shard 1/1 to run every cell")
    count = _whole(count_text, "--shard-count")
    return _checked(index + 1, count, "kubernetes", f"JOB_COMPLETION_INDEX={index} of {count}")


def resolve_shard(option: str | None, count_option: str | None, environ: Mapping[str, str]) -> Shard | None:
    """The run's shard: ``--shard``, else a Slurm array task, else a Kubernetes Indexed Job, else None
    (every cell). Bad values are a `UsageError`, raised before anything starts."""
    if option is not None:
        shard = parse_shard(option)
        if count_option is not None and _whole(count_option, "--shard-count") != shard.count:
            raise UsageError(f"--shard-count {count_option} contradicts --shard {option}")
        return shard
    if environ.get("SLURM_ARRAY_TASK_ID", "").strip():
        return _slurm_shard(environ)
    if environ.get("JOB_COMPLETION_INDEX", "").strip():
        return _kubernetes_shard(environ, count_option)
    if count_option is not None:
        raise UsageError(f"--shard-count {count_option}: only for a Kubernetes Indexed Job (JOB_COMPLETION_INDEX "
                         "is not set here); use --shard I/N")
    return None


def case_key(case: "Case") -> str:
    """A case's identity as text, the same on every host (never Python's randomized ``hash()``)."""
    return json.dumps(case.as_dict(), sort_keys=True, default=str)


def deal(cases: Sequence["Case"], count: int) -> list[list["Case"]]:
    """The ``count`` shards of a selection, each a list of cases in the selection's order: distinct cases
    sorted by (name, identity) are dealt round-robin; a repeated case goes where its first copy went."""
    order = sorted({case_key(case): case.name for case in cases}.items(), key=lambda item: (item[1], item[0]))
    home = {key: position % count for position, (key, _) in enumerate(order)}
    shards: list[list[Case]] = [[] for _ in range(count)]
    for case in cases:
        shards[home[case_key(case)]].append(case)
    return shards


def shard_cases(cases: Sequence["Case"], shard: Shard | None) -> list["Case"]:
    """The cases of ``shard`` (all of them when None), in the selection's order."""
    return list(cases) if shard is None else deal(cases, shard.count)[shard.index - 1]


def selection_id(cases: Sequence["Case"], backends: Sequence[str]) -> str:
    """A hash of the whole selection (its cell ids), equal on every host that runs the same sweep."""
    from harness.cases.sweep import cell_id

    cells = sorted({cell_id(backend, case) for case in cases for backend in backends})
    return hashlib.sha1("\n".join(cells).encode()).hexdigest()[:16]


def shard_record(shard: Shard, cases: Sequence["Case"], backends: Sequence[str]) -> dict[str, Any]:
    """What a shard's run records in ``runs.jsonl`` under `RECORD_KEY`."""
    return {"index": shard.index, "count": shard.count, "selection": selection_id(cases, backends),
            "cases": len({case_key(case) for case in cases}), "source": shard.source}
