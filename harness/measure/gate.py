"""The correctness gate: run a backend once on NaN-poisoned output memory and compare with the fp32
reference. Every (backend, case) cell gets exactly one verdict; only `ok` cells are timed.

What is checked:

- the output ``[T, Hq, D]`` against the reference (relative L2 and max-abs error, `TOLERANCES`);
- the softmax log-sum-exp ``[T, Hq]`` when ``run()`` returns one (``(out, lse)``, made canonical by
  ``Prepared.to_lse``), against the reference LSE with its own absolute bound in nats: an output that
  is right with an LSE that is not is still `wrong` ("LSE off: ..."), because serving engines merge
  split attention and cascade prefixes with it;
- every entry point of ``Prepared.candidates``: the cell is wrong if any of them is (named in the
  reason); when all pass the prepared state comes back with its candidates intact, so the harness can
  time them and keep the fastest (`GateResult.use_candidate` then puts that one's figures on the row).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from adapters.base import Adapter, NotAvailable, Prepared, RunResult, Unsupported, split_result
from adapters.batch import PagedBatch
from adapters.validation import BatchValidationError, validate_batch
from records.schema import VERDICTS  # noqa: F401 - re-exported: the verdicts a gate gives

LSE_OFF = "LSE off"
"""How the reason of a cell whose output is right but whose log-sum-exp is not begins."""
NO_LSE_NOTE = "the backend returned no log-sum-exp"


@dataclass(frozen=True)
class Tolerance:
    """Relative L2 error ||out - ref|| / ||ref|| and max absolute error allowed for one dtype's output,
    and the max absolute error (natural log, "nats") of the softmax log-sum-exp."""

    rel_l2: float
    max_abs: float
    lse_max_abs: float = 1e-2


# The LSE bound. The LSE is computed from the same rounded inputs as the reference (bf16/fp16 values
# are exact in float32, and so are their products), so a correct kernel differs from the fp32
# reference only in the order it accumulates the D-term dot products and the kv_len-term exp sum and
# in its exp2/log approximations: below 1e-4 nats at D = 128 and 32k keys. The one legitimate larger
# source is a kernel that folds softmax_scale (and log2 e) into Q and rounds it to the input type
# before the product: each score moves by up to 2^-9 |s| (bf16) or 2^-12 |s| (fp16), the LSE by the
# softmax-weighted mean of those moves: measured 1e-3 nats (bf16) and 1e-4 (fp16) on the suite's
# N(0, 1) inputs (D = 128, 4k keys). tf32 products of fp32 inputs: 1e-4. The bounds sit 10x and more
# above those, and as far below what a layout bug does: a row or head read from another row moves the
# LSE by the spread of row LSEs (0.3 nats max over a decode batch of these inputs, more between
# sequences of different lengths), a base-2 LSE is off by 44 % (about 4 nats at 4k keys), an
# unscaled or unmasked one by whole nats.
# Model features keep the query dtype's bound: an fp8 cache is compared against its own dequantised
# values (fp8 times scale, exact in float32), so a kernel that dequantises exactly and computes in bf16
# errs as it does on a bf16 cache; soft-capping's tanh and a sink term add float32 rounding only.
TOLERANCES: dict[str, Tolerance] = {
    # bf16 keeps 8 mantissa bits: outputs of size ~1 round by up to 2^-8; seen on H100/H200: rel L2 ~2e-3.
    "bf16": Tolerance(rel_l2=1e-2, max_abs=6.25e-2, lse_max_abs=1e-2),
    # fp16 keeps 11 bits: an 8x tighter bound.
    "fp16": Tolerance(rel_l2=2e-3, max_abs=1e-2, lse_max_abs=2e-3),
    # fp32 inputs may go through tf32 tensor cores (~3e-4 rel L2).
    "fp32": Tolerance(rel_l2=2e-3, max_abs=1e-2, lse_max_abs=2e-3),
}


@dataclass
class GateResult:
    """One cell's verdict with the figures behind it; ``reason`` is empty only for `ok`.

    ``bad_elements``: output elements out of tolerance (or unwritten/non-finite). ``lse_max_abs``: the
    largest LSE error in nats when the backend returned an LSE, else None and ``lse_note`` says why
    (the row's ``lse_max_abs`` / ``lse_note`` columns). With several entry points, ``notes["candidates"]``
    holds each one's figures and ``notes["candidates_ok"]`` the names that passed."""

    verdict: str
    reason: str = ""
    rel_l2: float | None = None
    max_abs: float | None = None
    bad_elements: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    lse_max_abs: float | None = None
    lse_note: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def figures(self) -> dict[str, Any]:
        """The error figures as plain values (one entry of ``notes["candidates"]``)."""
        return {"verdict": self.verdict, "rel_l2": self.rel_l2, "max_abs": self.max_abs,
                "bad_elements": self.bad_elements, "lse_max_abs": self.lse_max_abs, "lse_note": self.lse_note}

    def use_candidate(self, name: str) -> None:
        """Put the figures of entry point ``name`` (chosen by timing) in place of the worst-of-all the
        gate reported; a no-op when the cell had one entry point."""
        figures = self.notes.get("candidates", {}).get(name)
        if figures is None:
            return
        self.rel_l2, self.max_abs = figures["rel_l2"], figures["max_abs"]
        self.lse_max_abs, self.lse_note = figures["lse_max_abs"], figures["lse_note"]


def _locate_rows(batch: PagedBatch, rows: torch.Tensor) -> str:
    """Name the sequences that own the given packed rows, e.g. 'sequences 1, 3 (rows 17..40)'."""
    if rows.numel() == 0:
        return ""
    rows = rows.cpu()
    cu = torch.tensor([0, *torch.tensor(batch.spec.q_lens).cumsum(0).tolist()])
    sequences = sorted(set((torch.searchsorted(cu, rows, right=True) - 1).tolist()))
    shown = ", ".join(map(str, sequences[:6])) + (", ..." if len(sequences) > 6 else "")
    return f"sequence{'s' if len(sequences) > 1 else ''} {shown} (rows {int(rows.min())}..{int(rows.max())})"


def _rows_with(mask: torch.Tensor) -> torch.Tensor:
    """Packed row indices where ``mask`` (``[T, ...]``) has any True."""
    return mask.reshape(mask.shape[0], -1).any(1).nonzero().flatten()


def _unwritten(values: torch.Tensor, batch: PagedBatch, noun: str, prefix: str = "") -> GateResult | None:
    """`wrong` when any of ``values`` (float32, rows first) is non-finite (a backend's unwritten memory reads as
    NaN or inf after the gate's poisoning), naming how many and in which sequences and rows; else None."""
    nonfinite = ~torch.isfinite(values)
    bad = int(nonfinite.sum())
    if not bad:
        return None
    return GateResult("wrong", f"{prefix}{bad} {noun} unwritten or non-finite in "
                               f"{_locate_rows(batch, _rows_with(nonfinite))}", bad_elements=bad)


def compare(out: torch.Tensor, reference: torch.Tensor, batch: PagedBatch) -> GateResult:
    """Verdict `ok` or `wrong` for an output against the reference, with the error figures.

    ``bad_elements`` counts the elements out of tolerance: those off by more than the max-abs bound,
    or, when the output fails on relative L2 alone (a small error spread over everything), those off
    by more than ``rel_l2`` times the reference's RMS (where the L2 bound puts each element's share)."""
    spec = batch.spec
    expected_shape = (spec.total_q, spec.num_q_heads, spec.head_dim)
    if tuple(out.shape) != expected_shape:
        return GateResult("wrong", f"output shape {tuple(out.shape)}, expected {expected_shape}")
    out = out.float()
    unwritten = _unwritten(out, batch, "output elements")
    if unwritten is not None:
        return unwritten
    diff = out - reference
    rel_l2 = float(diff.norm() / reference.norm().clamp_min(1e-30))
    error = diff.abs()
    max_abs = float(error.max()) if error.numel() else 0.0
    tolerance = TOLERANCES[spec.dtype]
    if rel_l2 <= tolerance.rel_l2 and max_abs <= tolerance.max_abs:
        return GateResult("ok", rel_l2=rel_l2, max_abs=max_abs, bad_elements=0)
    outside = error > tolerance.max_abs
    if not bool(outside.any()):
        rms = reference.norm() / max(reference.numel(), 1) ** 0.5
        outside = error > tolerance.rel_l2 * rms
    row_error = diff.flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-30)
    off_rows = ((row_error > tolerance.rel_l2) | outside.flatten(1).any(1)).nonzero().flatten()
    return GateResult(
        "wrong",
        f"rel L2 {rel_l2:.3g} (limit {tolerance.rel_l2:g}), max abs {max_abs:.3g} (limit {tolerance.max_abs:g}) "
        f"for {spec.dtype}; off in {_locate_rows(batch, off_rows)}",
        rel_l2=rel_l2, max_abs=max_abs, bad_elements=int(outside.sum()),
    )


def compare_lse(lse: torch.Tensor, reference_lse: torch.Tensor, batch: PagedBatch) -> GateResult:
    """Verdict `ok` or `wrong` for a canonical LSE ``[T, Hq]`` (float32, natural log) against the
    reference's; ``lse_max_abs`` is the largest error in nats, ``bad_elements`` the (row, head) values
    off by more than the bound or non-finite. A `wrong` reason starts with "LSE off"."""
    spec = batch.spec
    expected_shape = (spec.total_q, spec.num_q_heads)
    if tuple(lse.shape) != expected_shape:
        return GateResult("wrong", f"{LSE_OFF}: shape {tuple(lse.shape)}, expected {expected_shape} "
                                   "(the canonical [T, Hq] after to_lse)")
    lse = lse.float()
    unwritten = _unwritten(lse, batch, "values", prefix=f"{LSE_OFF}: ")
    if unwritten is not None:
        return unwritten
    error = (lse - reference_lse.float()).abs()
    worst = float(error.max()) if error.numel() else 0.0
    limit = TOLERANCES[spec.dtype].lse_max_abs
    if worst <= limit:
        return GateResult("ok", lse_max_abs=worst, bad_elements=0)
    outside = error > limit
    return GateResult("wrong", f"{LSE_OFF}: max abs {worst:.3g} nats (limit {limit:g} for {spec.dtype}) in "
                               f"{int(outside.sum())} of {error.numel()} (row, head) values; off in "
                               f"{_locate_rows(batch, _rows_with(outside))}",
                      lse_max_abs=worst, bad_elements=int(outside.sum()))


def poison_output(prepared: Prepared, batch: PagedBatch) -> None:
    """NaN in the output buffer, and in freed allocator memory the size of the output, so that an
    unwritten element of either a caller-given or a freshly allocated output is caught."""
    if prepared.out is not None:
        prepared.out.fill_(float("nan"))
    spec = batch.spec
    decoy = torch.full((spec.total_q * 2, spec.num_q_heads, spec.head_dim), float("nan"),
                       dtype=spec.torch_dtype, device=batch.device)
    del decoy


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")
"""How allocators word running out: CUDA's, and the CPU allocator's (ENOMEM: "can't allocate memory")."""


def _is_oom(error: BaseException) -> bool:
    """Out of memory on the GPU or the host (torch's OutOfMemoryError, Python's MemoryError, ENOMEM)."""
    text = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(words in text for words in _OOM_TEXT)


def failure_verdict(error: BaseException, stage: str) -> GateResult:
    """The verdict for an exception: `unsupported` for Unsupported, `oom` for out-of-memory, else `error`."""
    if isinstance(error, Unsupported):
        return GateResult("unsupported", str(error))
    if isinstance(error, NotAvailable):
        return GateResult("skipped", str(error))
    if _is_oom(error):
        return GateResult("oom", f"{stage}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    last_frames = "".join(traceback.format_exception(error)[-3:]).strip()
    return GateResult("error", f"{stage}: {type(error).__name__}: {error}", notes={"traceback": last_frames})


class _ReferenceLse:
    """The reference LSE, computed only when some entry point returns an LSE and the caller gave none."""

    def __init__(self, batch: PagedBatch, given: torch.Tensor | None):
        self.batch, self.value = batch, given

    def get(self) -> torch.Tensor:
        if self.value is None:
            from adapters.reference import reference_attention

            self.value = reference_attention(self.batch, with_lse=True)[1]
        return self.value


def check_result(result: RunResult, prepared: Prepared, reference: torch.Tensor,
                 reference_lse: torch.Tensor | Callable[[], torch.Tensor] | None, batch: PagedBatch) -> GateResult:
    """The verdict of one ``run()`` result: the output first; then, if it is right and an LSE came
    back, the LSE (``wrong`` with "LSE off: ..." when it is not). Without an LSE, ``lse_note`` says why."""
    out, raw_lse = split_result(result)
    gate = compare(out, reference, batch)
    if raw_lse is None:
        gate.lse_note = prepared.lse_note or NO_LSE_NOTE
        return gate
    try:
        lse = prepared.canonical_lse(raw_lse)
    except Exception as error:  # noqa: BLE001 - an adapter's broken conversion is a verdict, not a crash
        if not gate.ok:
            return gate
        failed = failure_verdict(error, "to_lse")
        failed.rel_l2, failed.max_abs, failed.bad_elements = gate.rel_l2, gate.max_abs, gate.bad_elements
        return failed
    expected = reference_lse() if callable(reference_lse) else reference_lse
    lse_gate = compare_lse(lse, expected, batch)
    gate.lse_max_abs = lse_gate.lse_max_abs
    if not lse_gate.ok:
        gate.notes["lse_bad_values"] = lse_gate.bad_elements
        if gate.ok:
            gate.verdict, gate.reason = "wrong", lse_gate.reason
    return gate


def _entry_points(prepared: Prepared) -> dict[str | None, Callable[[], RunResult]]:
    """What to gate: every candidate when there are several, else the one ``run`` (name None)."""
    if len(prepared.candidates) > 1:
        return dict(prepared.candidates)
    return {None: prepared.run}


def _run_one(fn: Callable[[], RunResult], prepared: Prepared, batch: PagedBatch) -> RunResult:
    poison_output(prepared, batch)
    result = fn()
    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)
    return result


def _merged(results: dict[str, GateResult], prepared: Prepared) -> GateResult:
    """The candidates that passed: one ok verdict with the worst figures of any, each one's in notes."""
    def worst(name: str) -> float | None:
        values = [getattr(r, name) for r in results.values() if getattr(r, name) is not None]
        return max(values) if values else None

    without = [name for name, r in results.items() if r.lse_max_abs is None]
    if not without:
        note = ""
    elif len(without) == len(results):
        note = prepared.lse_note or NO_LSE_NOTE
    else:
        note = f"{', '.join(without)}: {prepared.lse_note or NO_LSE_NOTE}"
    return GateResult("ok", rel_l2=worst("rel_l2"), max_abs=worst("max_abs"), bad_elements=0,
                      lse_max_abs=worst("lse_max_abs"), lse_note=note,
                      notes={"candidates": {name: r.figures() for name, r in results.items()},
                             "candidates_ok": list(results)})


def run_gate(adapter: Adapter, batch: PagedBatch, reference: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
             reference_lse: torch.Tensor | None = None) -> tuple[GateResult, Prepared | None]:
    """Check one backend on one batch: declined layouts are `unsupported`, exceptions `error`/`oom`,
    a mismatch of the output or of the returned LSE `wrong`. Returns the prepared state too, so an
    `ok` cell is timed without re-preparing (with ``candidates`` intact when there are several entry
    points: all passed, the harness picks). A malformed batch is an `error` before anything is
    prepared or launched.

    ``reference`` is the fp32 output, or ``(output, lse)`` as ``reference_attention(batch,
    with_lse=True)`` returns it; without a reference LSE one is computed if a backend returns an LSE."""
    if isinstance(reference, tuple):
        reference, reference_lse = reference
    try:
        validate_batch(batch)
    except BatchValidationError as error:
        return GateResult("error", f"invalid input batch, nothing launched: {error}"), None
    refusal = adapter.feature_refusal(batch.spec)
    if refusal:
        return GateResult("unsupported", refusal), None
    supported, why = adapter.supports(batch.spec)
    if not supported:
        return GateResult("unsupported", why), None
    try:
        prepared = adapter.prepare(batch)
    except Exception as error:  # noqa: BLE001 - every failure becomes a verdict with its message
        return failure_verdict(error, "prepare"), None
    lazy_lse = _ReferenceLse(batch, reference_lse)
    results: dict[str, GateResult] = {}
    failed: dict[str, GateResult] = {}
    for name, fn in _entry_points(prepared).items():
        try:
            result = _run_one(fn, prepared, batch)
        except Exception as error:  # noqa: BLE001
            gate = failure_verdict(error, "run" if name is None else f"run {name}")
        else:
            gate = check_result(result, prepared, reference, lazy_lse.get, batch)
        if name is None:
            gate.notes.update(prepared.notes)
            return gate, (prepared if gate.ok else None)
        (results if gate.ok else failed)[name] = gate
    figures = {name: r.figures() for name, r in {**results, **failed}.items()}
    if not results:  # no entry point passed: the first failure is the cell's verdict
        name, gate = next(iter(failed.items()))
        gate.reason = f"entry point {name}: {gate.reason}"
        gate.notes.update(prepared.notes)
        gate.notes["candidates"] = figures
        return gate, None
    merged = _merged(results, prepared)
    merged.notes.update(prepared.notes)
    merged.notes["candidates"] = figures
    if failed:
        # The backend's other entry point(s) passed: the cell is timed on those, and the failure stays
        # on the row (a finding: the library is wrong through that call), never silently dropped.
        prepared.candidates = {name: fn for name, fn in prepared.candidates.items() if name in results}
        merged.reason = "; ".join(f"entry point {name} not used: {gate.verdict}: {gate.reason}"
                                  for name, gate in failed.items())
        merged.notes["candidates_failed"] = list(failed)
    return merged, prepared
