"""What the asv benchmark classes (benchmarks/bench_*.py) share: their parameters (from harness.cases.sweep, the one
sweep definition), and one gated, GPU-timed measurement of a whole workload per asv `setup_cache`.

The sweep is the built-in one named by ``$PAGED_BENCH_SWEEP`` (default: the command line's own choice,
'default' with a GPU and 'cpu-tiny' without: `harness.cases.selection.default_sweep_name`), or the sweep file
at ``$PAGED_BENCH_SWEEP_FILE`` (harness/cases/sweepfile.py). Classes ``Decode``, ``Prefill`` and ``Mixed``
take their workload's axes (backend x batch x q_len x context x page, or backend x mix x page, then
heads / dtype / causal when the axes vary them); class ``Cases`` (workload `CASES`) takes every other
case of the sweep by name (the default sweep's curated head, dtype, spec-decode and pool cells and its
model-feature cells, docs/model-features.md; a file's [[case]] entries and spec-decode axes).

asv starts a fresh process for every parameter combination. Those processes only look values up in
the cache, so this module must import without torch: the backend names come from a small file
that discovery writes once (keyed by the adapter sources), and the measuring imports are lazy.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cases.selection import default_sweep_name
from harness.cases.sweep import BUILTIN_SWEEPS, SWEEP_AXES, Axes, Case, Sweep, case_for, cases_from_axes

ROOT = Path(__file__).resolve().parents[2]
SWEEP_ENV = "PAGED_BENCH_SWEEP"
SWEEP_FILE_ENV = "PAGED_BENCH_SWEEP_FILE"
"""A sweep file (TOML, harness/cases/sweepfile.py) for asv to run instead of a built-in sweep."""
CELLS_ENV = "PAGED_BENCH_ASV_CELLS"
"""Where each asv run keeps its gated rows (verdicts, reasons, timings) for the report."""

AXES_WORKLOADS = ("decode", "prefill", "mixed")
"""Workloads with their own asv class, parameterised over their axes."""
CASES = "cases"
"""The asv class of every other case, parameterised over backend x case name."""
NO_CASE = "none"
"""The one parameter value of a class whose workload the sweep does not have (its setup skips it)."""


@functools.lru_cache(maxsize=4)
def _sweep_file(path: str, mtime: float) -> Sweep:
    from harness.cases.sweepfile import load_sweep_file

    return load_sweep_file(path, validate=False)


def current_sweep() -> Sweep:
    """The sweep asv runs: ``$PAGED_BENCH_SWEEP_FILE`` if set, else the built-in ``$PAGED_BENCH_SWEEP``."""
    path = os.environ.get(SWEEP_FILE_ENV)
    if path:
        if os.environ.get(SWEEP_ENV):
            raise ValueError(f"${SWEEP_ENV} and ${SWEEP_FILE_ENV} are both set; set one")
        resolved = Path(path).expanduser().resolve()
        return _sweep_file(str(resolved), resolved.stat().st_mtime if resolved.exists() else 0.0)
    return BUILTIN_SWEEPS[sweep_name()]


def _cache_dir() -> Path:
    return Path(os.environ.get("PAGED_BENCH_CACHE", Path.home() / ".cache" / "paged-attn-bench"))


def _gpu_key() -> str:
    """What torch's CUDA answer depends on, short of importing torch: this boot, the visible devices,
    the interpreter and the installed torch."""
    parts = [sys.executable, os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):  # no torch here (or an import hook that hides it): nothing to key on
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        with contextlib.suppress(OSError):
            version = Path(folder) / "version.py"
            parts.append(f"{version}:{version.stat().st_mtime}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def device_type() -> str:
    """'cuda' when torch sees a GPU, else 'cpu' (the command line's default device). asv evaluates the
    parameters in a fresh process per benchmark, which must not import torch: the answer is asked of
    torch in a child process once and cached (per boot, visible devices and torch install)."""
    if "torch" in sys.modules:
        return "cuda" if sys.modules["torch"].cuda.is_available() else "cpu"
    cache = _cache_dir() / f"asv-device-{_gpu_key()}.txt"
    with contextlib.suppress(OSError):
        answer = cache.read_text().strip()
        if answer in ("cuda", "cpu"):
            return answer
    probe = subprocess.run([sys.executable, "-c", "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"],
                           capture_output=True, text=True, check=False)
    answer = probe.stdout.strip() if probe.returncode == 0 and probe.stdout.strip() in ("cuda", "cpu") else "cpu"
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(answer)
    return answer


def sweep_name() -> str:
    """The built-in sweep's name: ``$PAGED_BENCH_SWEEP``, else the command line's default for this
    machine (a CPU sweep without a GPU), or the sweep file's own name."""
    if os.environ.get(SWEEP_FILE_ENV) and not os.environ.get(SWEEP_ENV):
        return current_sweep().name
    name = os.environ.get(SWEEP_ENV) or default_sweep_name(device_type())
    if name not in SWEEP_AXES:
        raise ValueError(f"${SWEEP_ENV}={name!r}: choose one of {', '.join(SWEEP_AXES)}")
    return name


def _adapter_fingerprint() -> str:
    digest = hashlib.sha1(os.environ.get("PAGED_BENCH_EXTRA_ADAPTERS", "").encode())
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


BACKENDS_ENV = "PAGED_BENCH_BACKENDS"
"""Comma-separated backends asv measures (default: every backend of the sweep, unavailable ones shown as
skipped). asv starts a process per parameter combination and method, so naming only the backends a machine
has shortens a run by that share (on one H100, the short sweep over all 12 took over 13 minutes)."""


def _registered() -> dict[str, bool]:
    """Every registered backend and whether it takes part in sweeps, from a small file discovery writes
    once per set of adapter sources (asv's per-parameter processes must not import torch)."""
    cache = _cache_dir() / f"asv-registered-{_adapter_fingerprint()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from adapters.base import discover

    registered = {name: bool(adapter.in_sweep) for name, adapter in discover().items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(registered))
    return registered


def backend_names() -> list[str]:
    """The backends asv measures: ``$PAGED_BENCH_BACKENDS`` when set (any registered backend, probe-only
    bindings included), else every registered backend that takes part in sweeps (unavailable ones too:
    asv shows them as skipped with their reason rather than leaving them out)."""
    registered = _registered()
    chosen = os.environ.get(BACKENDS_ENV, "").strip()
    if not chosen:
        return [name for name, in_sweep in registered.items() if in_sweep]
    names = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = [name for name in names if name not in registered]
    if unknown or not names:
        raise ValueError(f"${BACKENDS_ENV}={chosen!r}: unknown backend(s) {', '.join(unknown) or '(none named)'}; "
                         f"choose from {', '.join(registered)}")
    return names


def workload_axes(workload: str) -> Axes | None:
    """The axes of one of `AXES_WORKLOADS` in the current sweep (None: the sweep has none)."""
    if workload not in AXES_WORKLOADS:
        return None
    return current_sweep().axes.get(workload)


def workload_cases(workload: str) -> list[Case]:
    """The cases one asv class measures: its workload's axes, or (`CASES`) every other case."""
    sweep = current_sweep()
    if workload != CASES:
        axes = workload_axes(workload)
        return cases_from_axes(workload, axes) if axes is not None else []
    covered = {case.name for name in AXES_WORKLOADS if name in sweep.axes
               for case in cases_from_axes(name, sweep.axes[name])}
    return [case for case in sweep.all_cases() if case.name not in covered]


def asv_params(workload: str) -> tuple[list[list], list[str]]:
    """asv ``params`` and ``param_names`` of one workload: backend x the sweep's axes (plus heads, dtype
    and causal when the axes vary them), or backend x case name for `CASES` and for a workload the
    sweep has no axes for (a single `NO_CASE` value then)."""
    axes = workload_axes(workload)
    if axes is None:
        names = [case.name for case in workload_cases(workload)] if workload == CASES else []
        return [backend_names(), names or [NO_CASE]], ["backend", "case"]
    extra = axes.extra_axes()
    extra_params, extra_names = [list(values) for _, values in extra], [name for name, _ in extra]
    if workload == "mixed":
        return ([backend_names(), list(axes.mixes), list(axes.page_sizes), *extra_params],
                ["backend", "mix", "page_size", *extra_names])
    return ([backend_names(), list(axes.batch_sizes), list(axes.q_lens), list(axes.contexts), list(axes.page_sizes),
             *extra_params], ["backend", "batch_size", "q_len", "context", "page_size", *extra_names])


def workload_case(workload: str, *axis_values) -> Case | None:
    """The case at one asv parameter point (None for `NO_CASE` or a name the sweep does not have)."""
    axes = workload_axes(workload)
    if axes is None:
        (name,) = axis_values
        return next((case for case in workload_cases(workload) if case.name == name), None)
    return case_for(workload, axes, *axis_values)


def measure_workload(workload: str) -> dict[str, dict]:
    """Gate and time every (backend, case) of a workload through the same run session as the command
    line (availability, provenance, ceilings, isolated workers with the environment the backends
    declare); return plain rows keyed by ``backend|case`` (asv pickles this: no tensors). SIGTERM (asv's
    timeout) stops the run's workers with it (`harness.measure.runner.run_cells`)."""
    from harness.measure.session import RunSession

    cases = workload_cases(workload)
    if not cases:
        return {}
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    commit = os.environ.get("ASV_COMMIT", "")[:12]
    if not commit:
        from harness.measure.provenance import project_commit

        commit = project_commit()[:12]
    out_dir = Path(os.environ.get(CELLS_ENV, ROOT / ".asv" / "cells")) / f"{commit}-{sweep_name()}-{stamp}"
    session = RunSession(out_dir=out_dir, device_type=device_type(), backends=backend_names(),
                         sweep_label=f"asv:{sweep_name()}:{workload}", argv=["asv"],
                         run_id=f"asv-{workload}-{stamp}")
    session.start()
    rows = session.run(cases, resume=False)
    keep = ("verdict", "reason", "median_us", "iqr_pct", "tflops", "tbps")
    return {f"{row['backend']}|{row['case']}": {key: row[key] for key in keep} for row in rows}


class WorkloadBenchmark:
    """Base of the asv classes: `setup` skips cells whose verdict is not ok (asv shows n/a, the
    reason is in the cells folder and asv's log); the track methods report GPU-side figures."""

    workload: str = ""

    def setup(self, cache: dict[str, dict], backend: str, *axis_values) -> None:
        case = workload_case(self.workload, *axis_values)
        if case is None:
            raise NotImplementedError(f"the '{sweep_name()}' sweep has no {self.workload} case {axis_values}")
        row = cache.get(f"{backend}|{case.name}")
        if row is None:
            raise NotImplementedError(f"{case.name} is not in the '{sweep_name()}' sweep")
        if row["verdict"] != "ok":
            raise NotImplementedError(f"{backend} on {case.name}: {row['verdict']}: {row['reason']}")
        self.row = row

    def track_time_us(self, cache, *params) -> float:
        return self.row["median_us"]

    track_time_us.unit = "us"

    def track_tflops(self, cache, *params) -> float:
        return self.row["tflops"]

    track_tflops.unit = "TFLOP/s"

    def track_tbps(self, cache, *params) -> float:
        return self.row["tbps"]

    track_tbps.unit = "TB/s"
