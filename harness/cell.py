"""Measuring one (backend, case) cell in the current process: build the batch, compute the
reference, gate, and time only what passed. Consecutive cells of one case share batch and reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.base import Adapter, discover, versions_of
from adapters.batch import PagedBatch, make_batch
from adapters.reference import reference_attention
from harness.gate import GateResult, failure_verdict, run_gate
from harness.results import make_row
from harness.sweep import Case
from harness.timer import DEFAULT_TARGET_MS, time_function


@dataclass
class TimerOptions:
    """How ok cells are timed (recorded with each row)."""

    target_ms: float = DEFAULT_TARGET_MS
    flush_l2: bool = True
    cuda_graph: bool = False


def estimated_bytes(case: Case) -> int:
    """Device memory a cell needs at its peak: caches, q, output, the float32 reference and a
    reference chunk (an upper bound; checked against free memory before anything is allocated)."""
    spec = case.spec()
    q_bytes = spec.total_q * spec.num_q_heads * spec.head_dim
    longest = max(spec.kv_lens)
    gathered = 2 * longest * spec.num_q_heads * spec.head_dim * 4
    return spec.cache_bytes() + q_bytes * (2 * spec.elem_bytes + 4) + gathered + (512 << 20)


@dataclass
class CellMeasurer:
    """Measures cells on ``device``; returns result rows (see harness.results.COLUMNS)."""

    device: torch.device
    timer: TimerOptions = field(default_factory=TimerOptions)
    ceilings: dict[str, Any] | None = None
    env_id: str = ""
    run_id: str = ""
    _adapters: dict[str, Adapter] = field(default_factory=dict)
    _case: Case | None = None
    _batch: PagedBatch | None = None
    _reference: torch.Tensor | None = None

    def adapter(self, name: str) -> Adapter:
        if not self._adapters:
            self._adapters = discover()
        if name not in self._adapters:
            raise KeyError(f"no adapter named {name!r}; known: {', '.join(self._adapters)}")
        return self._adapters[name]

    def _inputs(self, case: Case) -> tuple[PagedBatch, torch.Tensor]:
        if case != self._case:
            self._case = self._batch = self._reference = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            batch = make_batch(case.spec(), self.device)
            self._reference = reference_attention(batch)
            self._batch, self._case = batch, case
        return self._batch, self._reference

    def _row(self, adapter: Adapter, case: Case, gate: GateResult, timing=None) -> dict[str, Any]:
        return make_row(backend=adapter.name, case=case, gate=gate, timing=timing, ceilings=self.ceilings,
                        backend_versions=versions_of(adapter), env_id=self.env_id, run_id=self.run_id, device=str(self.device))

    def measure(self, backend: str, case: Case) -> dict[str, Any]:
        adapter = self.adapter(backend)
        available, why = adapter.available(self.device)
        if not available:
            return self._row(adapter, case, GateResult("skipped", why))
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            needed = estimated_bytes(case)
            if needed > free:
                return self._row(adapter, case, GateResult(
                    "oom", f"needs about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free (checked before allocating)"))
        try:
            batch, reference = self._inputs(case)
            gate, prepared = run_gate(adapter, batch, reference)
            timing = None
            if prepared is not None:
                timing = time_function(prepared.run, self.device, target_ms=self.timer.target_ms,
                                       flush_l2=self.timer.flush_l2,
                                       cuda_graph=self.timer.cuda_graph or prepared.cuda_graph)
        except Exception as error:  # noqa: BLE001 - every failure becomes a verdict
            self._case = self._batch = self._reference = None
            gate, timing = failure_verdict(error, "measure"), None
        return self._row(adapter, case, gate, timing)
