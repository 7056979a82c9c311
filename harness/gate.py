"""The correctness gate: run a backend once on NaN-poisoned output memory and compare with the fp32
reference. Every (backend, case) cell gets exactly one verdict; only `ok` cells are timed."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.base import Adapter, Prepared, Unsupported
from adapters.batch import PagedBatch
from adapters.validation import BatchValidationError, validate_batch
from records.schema import VERDICTS  # noqa: F401 - re-exported: the verdicts a gate gives



@dataclass(frozen=True)
class Tolerance:
    """Relative L2 error ||out - ref|| / ||ref|| and max absolute error allowed for one dtype."""

    rel_l2: float
    max_abs: float


TOLERANCES: dict[str, Tolerance] = {
    # bf16 keeps 8 mantissa bits: outputs of size ~1 round by up to 2^-8; seen on H100/H200: rel L2 ~2e-3.
    "bf16": Tolerance(rel_l2=1e-2, max_abs=6.25e-2),
    # fp16 keeps 11 bits: an 8x tighter bound.
    "fp16": Tolerance(rel_l2=2e-3, max_abs=1e-2),
    # fp32 inputs may go through tf32 tensor cores (~3e-4 rel L2).
    "fp32": Tolerance(rel_l2=2e-3, max_abs=1e-2),
}


@dataclass
class GateResult:
    """One cell's verdict with the figures behind it; ``reason`` is empty only for `ok`."""

    verdict: str
    reason: str = ""
    rel_l2: float | None = None
    max_abs: float | None = None
    bad_elements: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def _locate_rows(batch: PagedBatch, rows: torch.Tensor) -> str:
    """Name the sequences that own the given packed rows, e.g. 'sequences 1, 3 (rows 17..40)'."""
    if rows.numel() == 0:
        return ""
    rows = rows.cpu()
    cu = torch.tensor([0, *torch.tensor(batch.spec.q_lens).cumsum(0).tolist()])
    sequences = sorted(set((torch.searchsorted(cu, rows, right=True) - 1).tolist()))
    shown = ", ".join(map(str, sequences[:6])) + (", ..." if len(sequences) > 6 else "")
    return f"sequence{'s' if len(sequences) > 1 else ''} {shown} (rows {int(rows.min())}..{int(rows.max())})"


def compare(out: torch.Tensor, reference: torch.Tensor, batch: PagedBatch) -> GateResult:
    """Verdict `ok` or `wrong` for an output against the reference, with the error figures."""
    spec = batch.spec
    expected_shape = (spec.total_q, spec.num_q_heads, spec.head_dim)
    if tuple(out.shape) != expected_shape:
        return GateResult("wrong", f"output shape {tuple(out.shape)}, expected {expected_shape}")
    out = out.float()
    nonfinite = ~torch.isfinite(out)
    bad = int(nonfinite.sum())
    if bad:
        rows = nonfinite.flatten(1).any(1).nonzero().flatten()
        return GateResult("wrong", f"{bad} output elements unwritten or non-finite in {_locate_rows(batch, rows)}",
                          bad_elements=bad)
    diff = out - reference
    rel_l2 = float(diff.norm() / reference.norm().clamp_min(1e-30))
    max_abs = float(diff.abs().max())
    tolerance = TOLERANCES[spec.dtype]
    if rel_l2 <= tolerance.rel_l2 and max_abs <= tolerance.max_abs:
        return GateResult("ok", rel_l2=rel_l2, max_abs=max_abs, bad_elements=0)
    row_error = diff.flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-30)
    worst_rows = (row_error > tolerance.rel_l2).nonzero().flatten()
    return GateResult(
        "wrong",
        f"rel L2 {rel_l2:.3g} (limit {tolerance.rel_l2:g}), max abs {max_abs:.3g} (limit {tolerance.max_abs:g}) "
        f"for {spec.dtype}; off in {_locate_rows(batch, worst_rows)}",
        rel_l2=rel_l2, max_abs=max_abs, bad_elements=int(worst_rows.numel()) * spec.num_q_heads * spec.head_dim,
    )


def poison_output(prepared: Prepared, batch: PagedBatch) -> None:
    """NaN in the output buffer, and in freed allocator memory the size of the output, so that an
    unwritten element of either a caller-given or a freshly allocated output is caught."""
    if prepared.out is not None:
        prepared.out.fill_(float("nan"))
    spec = batch.spec
    decoy = torch.full((spec.total_q * 2, spec.num_q_heads, spec.head_dim), float("nan"),
                       dtype=spec.torch_dtype, device=batch.device)
    del decoy


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def failure_verdict(error: BaseException, stage: str) -> GateResult:
    """The verdict for an exception: `unsupported` for Unsupported, `oom` for out-of-memory, else `error`."""
    if isinstance(error, Unsupported):
        return GateResult("unsupported", str(error))
    if _is_oom(error):
        return GateResult("oom", f"{stage}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    last_frames = "".join(traceback.format_exception(error)[-3:]).strip()
    return GateResult("error", f"{stage}: {type(error).__name__}: {error}", notes={"traceback": last_frames})


def run_gate(adapter: Adapter, batch: PagedBatch, reference: torch.Tensor) -> tuple[GateResult, Prepared | None]:
    """Check one backend on one batch: declined layouts are `unsupported`, exceptions `error`/`oom`,
    a mismatch `wrong`. Returns the prepared state too, so an `ok` cell is timed without re-preparing.
    A malformed batch is an `error` before anything is prepared or launched."""
    try:
        validate_batch(batch)
    except BatchValidationError as error:
        return GateResult("error", f"invalid input batch, nothing launched: {error}"), None
    supported, why = adapter.supports(batch.spec)
    if not supported:
        return GateResult("unsupported", why), None
    try:
        prepared = adapter.prepare(batch)
    except Exception as error:  # noqa: BLE001 - every failure becomes a verdict with its message
        return failure_verdict(error, "prepare"), None
    try:
        poison_output(prepared, batch)
        out = prepared.run()
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
    except Exception as error:  # noqa: BLE001
        return failure_verdict(error, "run"), None
    result = compare(out, reference, batch)
    result.notes.update(prepared.notes)
    return result, (prepared if result.ok else None)
