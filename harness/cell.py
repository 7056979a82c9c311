"""Measuring one (backend, case) cell in the current process: build the batch, compute the
reference, gate, and time only what passed. Consecutive cells of one case share batch and reference."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.base import Adapter, Prepared, discover, versions_of
from adapters.batch import PagedBatch, make_batch
from adapters.reference import reference_attention
from harness.gate import GateResult, failure_verdict, run_gate
from harness.results import make_row
from harness.sweep import Case
from harness.timer import DEFAULT_TARGET_MS, Timing, time_function

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


def time_prepared(prepared: Prepared, device: torch.device, timer: TimerOptions, *,
                  target_ms: float | None = None) -> Timing:
    """Time ``prepared.run`` the way its backend needs: CUDA events on torch's stream (optionally as a
    replayed CUDA graph), or the kernels' own times from the CUDA activity record when the backend
    runs on streams torch does not own."""
    target = timer.target_ms if target_ms is None else target_ms
    if prepared.external_streams and device.type == "cuda":
        from harness.profiler_timer import time_external

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
    """Measures cells on ``device``; returns result rows (see records.schema.COLUMNS)."""

    device: torch.device
    timer: TimerOptions = field(default_factory=TimerOptions)
    ceilings: dict[str, Any] | None = None
    env_id: str = ""
    run_id: str = ""
    gpu_index: int | None = None
    gpu_uuid: str | None = None
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

    def release(self) -> None:
        """Drop the current case's batch and reference and return their memory to the device."""
        self._case = self._batch = self._reference = None
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

    def _inputs(self, case: Case) -> tuple[PagedBatch, tuple[torch.Tensor, torch.Tensor]]:
        """The case's batch and its fp32 reference (output and LSE), built once per case."""
        if case != self._case:
            self.release()
            batch = make_batch(case.spec(), self.device)
            self._reference = reference_attention(batch, with_lse=True)
            self._batch, self._case = batch, case
        return self._batch, self._reference

    def row_for(self, backend: str, case: Case, gate: GateResult, timing: Timing | None = None,
                adapter: Adapter | None = None) -> dict[str, Any]:
        return make_row(backend=backend, case=case, gate=gate, timing=timing, ceilings=self.ceilings,
                        backend_versions=versions_of(adapter) if adapter is not None else None,
                        env_id=self.env_id, run_id=self.run_id, device=str(self.device.type),
                        gpu_index=self.gpu_index, gpu_uuid=self.gpu_uuid, timer_args=self.timer.args())

    def _fits(self, case: Case) -> str:
        """Empty when the cell fits in free device memory, else the `oom` reason. The case's inputs
        count only when they are not built yet; a previous case's are freed before looking."""
        if self.device.type != "cuda":
            return ""
        needed = backend_bytes(case)
        if case != self._case:
            self.release()
            needed += input_bytes(case)
        free, _ = torch.cuda.mem_get_info(self.device)
        if needed > free:
            return (f"needs about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free (checked before allocating)")
        return ""

    def measure(self, backend: str, case: Case) -> dict[str, Any]:
        started = time.perf_counter()
        row = self._measure(backend, case)
        row["cell_s"] = round(time.perf_counter() - started, 3)
        return row

    def _measure(self, backend: str, case: Case) -> dict[str, Any]:
        adapter = self.adapter(backend)
        available, why = adapter.available(self.device)
        if not available:
            return self.row_for(backend, case, GateResult("skipped", why), adapter=adapter)
        too_big = self._fits(case)
        if too_big:
            return self.row_for(backend, case, GateResult("oom", too_big), adapter=adapter)
        try:
            batch, reference = self._inputs(case)
            gate, prepared = run_gate(adapter, batch, reference)
            timing = None
            if prepared is not None:
                choose_entry_point(prepared, self.device, self.timer)
                gate.notes.update(prepared.notes)
                gate.use_candidate(prepared.notes.get("entry_point", ""))
                timing = time_prepared(prepared, self.device, self.timer)
        except Exception as error:  # noqa: BLE001 - every failure becomes a verdict
            self.release()
            gate, timing = failure_verdict(error, "measure"), None
        return self.row_for(backend, case, gate, timing, adapter=adapter)
