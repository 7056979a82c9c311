"""The command that measures one cell again: ``reproducer(backend, case)`` is an exact, shell-quoted
``paged-bench run`` line whose options re-create the same case (same name and fields, so the same
``cell_id``) and nothing else:

    paged-bench run --backends triton --case 'decode-b64-q1-c4096-p16=64q1c4k' --page-size 16 \\
        --heads 32/8/128 --dtype bf16 --seed 0 --no-capability --out bench-repro/<cell_id>

``--case NAME=GRAMMAR`` carries the case's exact name, ``--no-causal`` and ``--pool-pages`` /
``--pool-gib`` appear only when the case sets them, and so do the model features (`adapters.features`):
``--window W``, ``--softcap C``, ``--sinks``, ``--kv-dtype fp8 --kv-scale tensor|head``, so a plain cell's
command is what it always was:

    paged-bench run --backends triton --case 'mixed-32d-2p4k-p16-h64x8d64-w128-sinks=...' --page-size 16 \\
        --heads 64/8/64 --dtype bf16 --seed 0 --window 128 --sinks --no-capability --out ...

The features are given one by one, never as ``--model``: a preset could change, the cell must not.
Timer options are not part of a cell; pass them in ``extra`` (e.g. ``("--cuda-graph",)``) to re-measure
the same way. The output folder is the cell's own, so the command never resumes another run's rows.
"""

from __future__ import annotations

import shlex
from typing import Iterable

from harness.cases.sweep import Case, cell_id, heads_text

PROGRAM = "paged-bench"
DEFAULT_OUT = "bench-repro/{cell_id}"


def reproducer_argv(backend: str, case: Case, *, out: str | None = None, extra: Iterable[str] = ()) -> list[str]:
    """The reproducer as a list of words (``argv[0]`` is ``paged-bench``)."""
    argv = [PROGRAM, "run", "--backends", backend, "--case", f"{case.name}={case.grammar}",
            "--page-size", str(case.page_size), "--heads", heads_text(case), "--dtype", case.dtype,
            "--seed", str(case.seed)]
    if not case.causal:
        argv.append("--no-causal")
    if case.pool_pages is not None:
        argv += ["--pool-pages", str(case.pool_pages)]
    elif case.pool_gib is not None:
        argv += ["--pool-gib", repr(float(case.pool_gib))]
    argv += feature_argv(case)
    argv += ["--no-capability", *extra, "--out", (out or DEFAULT_OUT).format(cell_id=cell_id(backend, case))]
    return argv


def feature_argv(case: Case) -> list[str]:
    """The selection options that give ``case``'s model features (none for plain attention)."""
    argv: list[str] = []
    if case.sliding_window is not None:
        argv += ["--window", str(case.sliding_window)]
    if case.softcap is not None:
        argv += ["--softcap", repr(float(case.softcap))]
    if case.sinks:
        argv.append("--sinks")
    if case.kv_dtype is not None:
        argv += ["--kv-dtype", case.kv_dtype, "--kv-scale", case.kv_scale]
    return argv


def reproducer(backend: str, case: Case, *, out: str | None = None, extra: Iterable[str] = ()) -> str:
    """The exact, shell-quoted command that measures the cell (``backend``, ``case``) again; ``out``
    may hold ``{cell_id}`` (default ``bench-repro/{cell_id}``)."""
    return shlex.join(reproducer_argv(backend, case, out=out, extra=extra))
