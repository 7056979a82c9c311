"""The baseline a user without a paged kernel writes: gather each sequence's pages into contiguous
K/V, then ``torch.nn.functional.scaled_dot_product_attention`` with ``enable_gqa=True``.

Per sequence, not padded-batched: a padded batch needs an explicit ``[B, 1, S_q, S_kv]`` mask for
ragged lengths and bottom-right causality, and SDPA's fused kernels do not take an arbitrary mask
together with GQA, so it falls back to the math kernel that materialises every score (gigabytes at
mixed-batch sizes). One SDPA call per sequence keeps the fused kernels: ``is_causal=True`` when
``q_len == kv_len``, ``torch.nn.attention.bias.causal_lower_right`` (bottom-right, served by the
flash / memory-efficient kernels) when a causal prefill has context before it, no mask for decode
(q_len 1 sees every key) or non-causal. The price — B gathers and B launches — is the cost of having
no paged kernel, and it is timed: ``run`` does the gathers (``index_select`` of the sequence's pages),
the attention and the copy into the packed output. Those hundreds of small launches make event
timings host-bound: on an H100 two runs of one decode cell differed by up to 2x with host jitter, so
the timer replays ``run`` as a CUDA graph (``Prepared.cuda_graph``), as serving engines do, and
measures the GPU work of gathers and attention; the row's ``method`` records it.
Everything ``run`` needs from the host (page-index views, lengths, mask choice) is set up in
``prepare``: ``run`` never synchronises.

Model features (`MODEL_FEATURES`), as a user of this approach writes them:

- sliding window of W keys: the gather reads only the pages from the one holding the first query's first
  visible key (``p - W + 1``) and slices the keys from there (`window_keys`); a decode query then sees every
  gathered key (no mask), a longer query block gets a boolean ``attn_mask`` ``[q_len, keys]`` built in
  ``prepare`` (`window_mask`: True where ``key <= p`` and ``p - key < W``), the band SDPA's mask argument takes.
- fp8 (e4m3) cache: the fp8 pages are gathered (``index_select`` reads 1 byte per element) and dequantised
  in the same step, ``(keys.float() * k_scale).to(q.dtype)`` with the per-tensor or per-head scale (the
  gather is this row's own code, so is its dequantisation; SDPA itself takes one dtype for Q, K and V).
- soft-cap and sinks: declined (`FEATURE_REASONS`): SDPA has no score hook and no sink argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adapters.base import Adapter, Prepared, register
from adapters.batch import BatchSpec, PagedBatch


MODEL_FEATURES = frozenset({"sliding_window", "fp8_kv"})
"""What this row runs: the window in the gather and SDPA's attn_mask, an fp8 cache dequantised in the gather."""
FEATURE_REASONS = {
    "softcap": ("torch.nn.functional.scaled_dot_product_attention has no score hook: it takes attn_mask (a "
                "boolean mask or an additive bias on the scaled scores), is_causal, scale, dropout_p and "
                "enable_gqa, and a soft-cap c * tanh(s / c) is a nonlinear function of each score that neither "
                "expresses (torch's API for it is FlexAttention's score_mod)"),
    "sinks": ("torch.nn.functional.scaled_dot_product_attention has no sink argument: its softmax runs over the "
              "given keys only (attn_mask can shift or hide their scores, not add a denominator term without a "
              "value), and it returns no log-sum-exp to fold a per-head sink logit in afterwards"),
}
"""Why the row declines the features SDPA lacks, in torch's terms."""

LSE_NOTE = ("torch.nn.functional.scaled_dot_product_attention returns only the output; its log-sum-exp "
            "stays inside the private aten kernels")


@dataclass(frozen=True)
class SequencePlan:
    """What run() does for one sequence: rows [row_start, row_end) of q/out, its page ids (a device
    view of the block table, from the first page it reads), the gathered keys ``[key_offset, key_offset +
    kv_len)`` of those pages (``kv_len`` keys: all of the sequence's, or those from its first visible one
    under a sliding window) and its mask ('none', 'causal' = top-left == bottom-right when q == kv,
    'lower_right', 'window' = a boolean attn_mask)."""

    row_start: int
    row_end: int
    kv_len: int
    pages: torch.Tensor
    mask: str
    key_offset: int = 0


def mask_kind(q_len: int, kv_len: int, causal: bool, window: int | None = None) -> str:
    """How SDPA is told which of the ``kv_len`` gathered keys the ``q_len`` queries see. With a window the
    gathered keys start at the first query's first visible key (`window_keys`): a single query then sees
    them all, longer blocks need the band."""
    if not causal or q_len == 1:
        return "none"
    if window is not None:
        return "window"
    return "causal" if q_len == kv_len else "lower_right"


def window_keys(q_len: int, kv_len: int, window: int | None) -> int:
    """The first key any of the sequence's queries sees: ``p0 - W + 1`` for the first query's position
    ``p0 = kv_len - q_len`` under a sliding window of W keys (never below 0), else 0."""
    if window is None:
        return 0
    return max(0, kv_len - q_len - window + 1)


def window_mask(q_len: int, kv_len: int, first_key: int, window: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """bool ``[q_len, kv_len - first_key]``: True where query i (position ``p = kv_len - q_len + i``) sees
    gathered key c (position ``j = first_key + c``): ``j <= p`` and ``p - j < W``. SDPA's boolean attn_mask:
    True takes part in attention."""
    positions = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    keys = torch.arange(first_key, kv_len, device=device)[None, :]
    return (keys <= positions) & (positions - keys < window)


def plan_sequences(batch: PagedBatch) -> list[SequencePlan]:
    spec = batch.spec
    window = spec.sliding_window if spec.causal else None
    plans, start = [], 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        first_key = window_keys(q_len, kv_len, window)
        first_page = first_key // spec.page_size
        plans.append(SequencePlan(start, start + q_len, kv_len - first_key,
                                  batch.block_table[seq, first_page: spec.pages_per_seq[seq]],
                                  mask_kind(q_len, kv_len, spec.causal, window),
                                  key_offset=first_key - first_page * spec.page_size))
        start += q_len
    return plans


def dequantise(gathered: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Gathered fp8 keys or values ``[S, Hkv, D]`` times their scale (``[1]`` per tensor or ``[Hkv]`` per
    head), in float32, rounded once to the query's dtype; a cache in the query's dtype passes through."""
    if scale is None:
        return gathered
    return (gathered.float() * scale.view(1, -1, 1)).to(dtype)


@register
class SdpaGatherAdapter(Adapter):
    name = "sdpa-gather"
    devices = ("cuda", "cpu")
    model_features = MODEL_FEATURES
    feature_reasons = FEATURE_REASONS

    def available(self, device: torch.device) -> tuple[bool, str]:
        refusal = self.device_refusal(device)
        return not refusal, refusal

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if spec.num_q_heads % spec.num_kv_heads:
            return False, "enable_gqa needs the query heads to be a multiple of the kv heads"
        return True, ""

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def prepare(self, batch: PagedBatch) -> Prepared:
        from torch.nn.attention.bias import causal_lower_right

        spec = batch.spec
        plans = plan_sequences(batch)
        out = torch.empty_like(batch.q)
        heads_kv, dim = spec.num_kv_heads, spec.head_dim
        masks: dict[int, Any] = {
            i: causal_lower_right(p.row_end - p.row_start, p.kv_len) for i, p in enumerate(plans)
            if p.mask == "lower_right"
        }
        for i, (plan, kv_len) in enumerate(zip(plans, spec.kv_lens)):
            if plan.mask == "window":
                q_len = plan.row_end - plan.row_start
                masks[i] = window_mask(q_len, kv_len, kv_len - plan.kv_len, spec.sliding_window, batch.device)
        q, k_cache, v_cache, scale = batch.q, batch.k_cache, batch.v_cache, spec.scale
        k_scale, v_scale, dtype = batch.k_scale, batch.v_scale, batch.q.dtype

        def run() -> torch.Tensor:
            for i, plan in enumerate(plans):
                rows = slice(plan.key_offset, plan.key_offset + plan.kv_len)
                keys = dequantise(k_cache.index_select(0, plan.pages).view(-1, heads_kv, dim)[rows], k_scale, dtype)
                values = dequantise(v_cache.index_select(0, plan.pages).view(-1, heads_kv, dim)[rows], v_scale, dtype)
                query = q[plan.row_start: plan.row_end].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
                attended = F.scaled_dot_product_attention(
                    query, keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0),
                    attn_mask=masks.get(i), is_causal=plan.mask == "causal", scale=scale, enable_gqa=True)
                out[plan.row_start: plan.row_end].copy_(attended[0].transpose(0, 1))
            return out

        notes: dict[str, Any] = {"masks": sorted({p.mask for p in plans})}
        if spec.sliding_window is not None:
            notes["sliding_window"] = (f"gather from the first visible key (window {spec.sliding_window}); boolean "
                                       "attn_mask for query blocks longer than one")
        if spec.kv_dtype is not None:
            notes["fp8_kv"] = f"{spec.kv_dtype} pages gathered, dequantised with per-{spec.kv_scale} scales"
        return Prepared(run=run, out=out, notes=notes,
                        cuda_graph=batch.device.type == "cuda", lse_note=LSE_NOTE)
