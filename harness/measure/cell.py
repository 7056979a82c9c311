"""Measuring one cell (a `harness.cases.sweep.Cell`: a backend on a case, what travels from the session
to the row) in the current process: build the batch, compute the reference, gate, and time only what
passed (nothing with ``gate_only``, nor any capability probe cell). Consecutive cells of one case share
batch and reference."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.base import Adapter, Prepared, discover, versions_of
from adapters.batch import PagedBatch, make_batch
from adapters.reference import reference_attention
from harness.cases.sweep import Case, Cell, is_probe_case
from harness.measure.gate import GateResult, failure_verdict, run_gate
from harness.measure.results import make_row
from harness.measure.timer import DEFAULT_TARGET_MS, Timing, time_function

ENTRY_POINT_TARGET_MS = 5.0
"""Time spent timing each candidate entry point of a backend before the fastest is kept."""


@dataclass
class TimerOptions:
    """How ok cells are timed (recorded with each row)."""

    target_ms: float = DEFAULT_TARGET_MS
    flush_l2: bool = True
    cuda_graph: bool = False

    def args(self) -> tuple[str, ...]:
        """The command-line options that give these settings (what a reproducer must repeat)."""
        return ((("--cuda-graph",) if self.cuda_graph else ()) + (("--no-flush",) if not self.flush_l2 else ())
                + ((f"--target-ms={self.target_ms:g}",) if self.target_ms != DEFAULT_TARGET_MS else ()))


def input_bytes(case: Case) -> int:
    """Device memory of a case's inputs and reference at their peak: caches, q, output, the float32
    reference and one reference chunk (an upper bound)."""
    spec = case.spec()
    q_elements = spec.total_q * spec.num_q_heads * spec.head_dim
    longest = max(spec.kv_lens)
    gathered = 2 * longest * spec.num_q_heads * spec.head_dim * 4
    return spec.cache_bytes() + q_elements * (2 * spec.elem_bytes + 4) + gathered + (512 << 20)


def backend_bytes(case: Case) -> int:
    """What a backend adds while it runs, at least: its own output and float32 partial results of the
    size of the output (split-KV workspaces, a gathered copy); a lower bound, not a promise."""
    spec = case.spec()
    return spec.total_q * spec.num_q_heads * spec.head_dim * (spec.elem_bytes + 4)


def cell_bytes(case: Case) -> int:
    """The memory one cell needs before anything is built: its inputs and reference plus what a backend adds."""
    return input_bytes(case) + backend_bytes(case)


SHARED_GPU_WAIT_S = 60.0
"""How long a gate-only cell waits for the workers it shares its GPU with to free memory before it is `oom`
(`CellMeasurer._wait_for_shared_gpu`); a timed cell never shares its GPU and never waits."""
SHARED_GPU_POLL_S = 0.25


def _read_int(path: str) -> int | None:
    try:
        text = open(path).read().strip()  # noqa: SIM115 - tiny kernel files
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_available_bytes() -> int | None:
    """Host memory a cell may still take: the kernel's MemAvailable, capped by this process's cgroup limit
    (a container) less what the cgroup uses; None where neither can be read."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        available = min(available, limit - used) if available is not None else limit - used
    return available


def memory_limit(device: torch.device) -> tuple[int | None, str]:
    """(bytes a cell may use on ``device``, what that limit is): free device memory on a GPU, with the blocks
    torch's allocator keeps cached but unused (they serve the next allocations), available host memory on
    the CPU (inputs, reference and backends all live there)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached, "free on the GPU"
    return host_available_bytes(), "of host memory available"


def oom_reason(case: Case, limit: int | None, what: str, needed: int | None = None) -> str:
    """Empty when the cell fits ``limit``, else the one-line `oom` reason naming its size and the limit."""
    needed = cell_bytes(case) if needed is None else needed
    if limit is None or needed <= limit:
        return ""
    return f"needs about {needed / 2**30:.1f} GiB, {limit / 2**30:.1f} GiB {what} (checked before allocating)"


def machine_memory(device_type: str) -> tuple[int | None, str]:
    """(bytes, what they are) that bound any cell on this machine before a worker starts: available host
    memory for the CPU, the smallest visible GPU's total memory for CUDA (no CUDA context is created)."""
    if device_type == "cuda" and torch.cuda.is_available():
        totals = [torch.cuda.get_device_properties(index).total_memory for index in range(torch.cuda.device_count())]
        return min(totals), "on the GPU in all"
    return host_available_bytes(), "of host memory available"


def refuse_what_cannot_fit(cases: list[Case], device_type: str) -> None:
    """Refuse (one-line `UsageError`) a selection none of whose cells fits this machine, before any cell
    starts; cells that fit run, the others are `oom` one by one (`CellMeasurer._fits`)."""
    from harness.errors import UsageError

    limit, what = machine_memory(device_type)
    if limit is None or not cases:
        return
    needed, smallest = min(((cell_bytes(case), case) for case in cases), key=lambda pair: pair[0])
    if needed > limit:
        raise UsageError(f"no cell fits this machine: the smallest, {smallest.name}, needs about "
                         f"{needed / 2**30:.1f} GiB (K/V caches and pool {smallest.spec().cache_bytes() / 2**30:.1f} GiB), "
                         f"{limit / 2**30:.1f} GiB {what}; choose a smaller batch or pool (--pool-gib, --pool-pages)")


def time_prepared(prepared: Prepared, device: torch.device, timer: TimerOptions, *,
                  target_ms: float | None = None) -> Timing:
    """Time ``prepared.run`` the way its backend needs: CUDA events on torch's stream (optionally as a
    replayed CUDA graph), or the kernels' own times from the CUDA activity record when the backend
    runs on streams torch does not own."""
    target = timer.target_ms if target_ms is None else target_ms
    if prepared.external_streams and device.type == "cuda":
        from harness.measure.profiler_timer import time_external

        return time_external(prepared.run, device, target_ms=target, flush_l2=timer.flush_l2)
    return time_function(prepared.run, device, target_ms=target, flush_l2=timer.flush_l2,
                         cuda_graph=timer.cuda_graph or prepared.cuda_graph)


def choose_entry_point(prepared: Prepared, device: torch.device, timer: TimerOptions) -> None:
    """Where a backend offers several entry points for the same work (all of them gated), time each
    briefly and keep the fastest as ``prepared.run``; the notes say which, and what each took."""
    if prepared.run is not None or not prepared.candidates:
        return
    medians = {}
    for name, candidate in prepared.candidates.items():
        trial = Prepared(run=candidate, external_streams=prepared.external_streams, cuda_graph=prepared.cuda_graph)
        medians[name] = time_prepared(trial, device, timer, target_ms=ENTRY_POINT_TARGET_MS).median_us
    chosen = min(medians, key=medians.get)
    prepared.run = prepared.candidates[chosen]
    prepared.notes["entry_point"] = chosen
    prepared.notes["entry_point_us"] = {name: round(us, 2) for name, us in medians.items()}


@dataclass
class CellMeasurer:
    """Measures cells on ``device``; returns result rows (see records.schema.COLUMNS). With ``gate_only``
    (the capability probe) a cell is gated and never timed; a probe case (`is_probe_case`) never is either."""

    device: torch.device
    timer: TimerOptions = field(default_factory=TimerOptions)
    ceilings: dict[str, Any] | None = None
    env_id: str = ""
    run_id: str = ""
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gate_only: bool = False
    _adapters: dict[str, Adapter] = field(default_factory=dict)
    _case: Case | None = None
    _batch: PagedBatch | None = None
    _reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def load_adapters(self) -> dict[str, Adapter]:
        if not self._adapters:
            self._adapters = discover()
        return self._adapters

    def adapter(self, name: str) -> Adapter:
        adapters = self.load_adapters()
        if name not in adapters:
            raise KeyError(f"no adapter named {name!r}; known: {', '.join(adapters)}")
        return adapters[name]

    def release(self, *, collect: bool = True) -> None:
        """Drop the current case's batch and reference; with ``collect``, also collect garbage (tensors kept
        alive by reference cycles) and hand torch's cached blocks back to the device. Moving to the next case
        drops them without collecting (`_fits` collects only when a case does not fit at first look): a
        full collection in a worker with every library loaded takes a noticeable part of a second."""
        self._case = self._batch = self._reference = None
        if collect:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def close(self) -> None:
        """Release every adapter's cross-cell state (graphs, handles) and the current case."""
        for adapter in self._adapters.values():
            try:
                adapter.close()
            except Exception:  # noqa: BLE001 - closing is best effort at the end of a worker
                pass
        self.release()

    def _inputs(self, case: Case) -> tuple[PagedBatch, tuple[torch.Tensor, torch.Tensor], float | None]:
        """The case's batch and its fp32 reference (output and LSE), built once per case, and the seconds
        building them took when this call built them (None when they were already there)."""
        built_s = None
        if case != self._case:
            self.release(collect=False)
            started = time.perf_counter()
            batch = make_batch(case.spec(), self.device)
            self._reference = reference_attention(batch, with_lse=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            built_s = round(time.perf_counter() - started, 3)
            self._batch, self._case = batch, case
        return self._batch, self._reference, built_s

    def row_for(self, cell: Cell, gate: GateResult, timing: Timing | None = None,
                adapter: Adapter | None = None) -> dict[str, Any]:
        return make_row(cell=cell, gate=gate, timing=timing, ceilings=self.ceilings,
                        backend_versions=versions_of(adapter) if adapter is not None else None,
                        env_id=self.env_id, run_id=self.run_id, device=str(self.device.type),
                        gpu_index=self.gpu_index, gpu_uuid=self.gpu_uuid, timer_args=self.timer.args())

    def _fits(self, case: Case) -> str:
        """Empty when the cell fits in free device memory (host memory on the CPU), else the `oom` reason.
        The case's inputs count only when they are not built yet; a previous case's are freed before looking.
        Gate-only workers share their GPU (`harness.measure.runner.shared_slots`): one hands the previous case's
        cached blocks back to the device, and a cell that does not fit yet waits for the others
        (`_wait_for_shared_gpu`)."""
        needed = backend_bytes(case)
        shared_gpu = self.gate_only and self.device.type == "cuda"
        if case != self._case:
            self.release(collect=False)
            if shared_gpu:
                torch.cuda.empty_cache()
            needed += input_bytes(case)
        limit, what = memory_limit(self.device)
        reason = oom_reason(case, limit, what, needed)
        if reason:  # garbage held by reference cycles may be what is missing: collect it and look again
            self.release()
            limit, what = memory_limit(self.device)
            reason = oom_reason(case, limit, what, needed)
        if reason and shared_gpu:
            reason = self._wait_for_shared_gpu(case, needed)
        return reason

    def _wait_for_shared_gpu(self, case: Case, needed: int) -> str:
        """A gate-only cell that would fit the GPU's whole memory but not what its sibling workers leave free now
        waits for them (each frees its case when it moves on) up to `SHARED_GPU_WAIT_S`, then is `oom`."""
        deadline = time.monotonic() + (SHARED_GPU_WAIT_S if needed <= torch.cuda.mem_get_info(self.device)[1] else 0.0)
        while True:
            limit, what = memory_limit(self.device)
            reason = oom_reason(case, limit, what, needed)
            if not reason or time.monotonic() >= deadline:
                return reason
            time.sleep(SHARED_GPU_POLL_S)

    def measure(self, cell: Cell) -> dict[str, Any]:
        started = time.perf_counter()
        row = self._measure(cell)
        row["cell_s"] = round(time.perf_counter() - started, 3)
        return row

    def _measure(self, cell: Cell) -> dict[str, Any]:
        case = cell.case
        adapter = self.adapter(cell.backend)
        available, why = adapter.available(self.device)
        if not available:
            return self.row_for(cell, GateResult("skipped", why), adapter=adapter)
        too_big = self._fits(case)
        if too_big:
            return self.row_for(cell, GateResult("oom", too_big), adapter=adapter)
        inputs_s = None
        try:
            batch, reference, inputs_s = self._inputs(case)
            gate, prepared = run_gate(adapter, batch, reference)
            timing = None
            if prepared is not None and (self.gate_only or is_probe_case(case)):
                gate.notes.update(prepared.notes)  # gate only: what it ran, nothing timed
            elif prepared is not None:
                choose_entry_point(prepared, self.device, self.timer)
                gate.notes.update(prepared.notes)
                gate.use_candidate(prepared.notes.get("entry_point", ""))
                timing = time_prepared(prepared, self.device, self.timer)
        except Exception as error:  # noqa: BLE001 - every failure becomes a verdict
            self.release()
            gate, timing = failure_verdict(error, "measure"), None
        row = self.row_for(cell, gate, timing, adapter=adapter)
        row["inputs_s"] = inputs_s
        return row
