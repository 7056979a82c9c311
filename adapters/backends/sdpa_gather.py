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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adapters.base import Adapter, Prepared, register
from adapters.batch import BatchSpec, PagedBatch


LSE_NOTE = ("torch.nn.functional.scaled_dot_product_attention returns only the output; its log-sum-exp "
            "stays inside the private aten kernels")


@dataclass(frozen=True)
class SequencePlan:
    """What run() does for one sequence: rows [row_start, row_end) of q/out, its page ids (a device
    view of the block table) and its mask ('none', 'causal' = top-left == bottom-right when q == kv,
    'lower_right')."""

    row_start: int
    row_end: int
    kv_len: int
    pages: torch.Tensor
    mask: str


def mask_kind(q_len: int, kv_len: int, causal: bool) -> str:
    if not causal or q_len == 1:
        return "none"
    return "causal" if q_len == kv_len else "lower_right"


def plan_sequences(batch: PagedBatch) -> list[SequencePlan]:
    spec = batch.spec
    plans, start = [], 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        plans.append(SequencePlan(start, start + q_len, kv_len, batch.block_table[seq, : spec.pages_per_seq[seq]],
                                  mask_kind(q_len, kv_len, spec.causal)))
        start += q_len
    return plans


@register
class SdpaGatherAdapter(Adapter):
    name = "sdpa-gather"
    devices = ("cuda", "cpu")

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
        q, k_cache, v_cache, scale = batch.q, batch.k_cache, batch.v_cache, spec.scale

        def run() -> torch.Tensor:
            for i, plan in enumerate(plans):
                keys = k_cache.index_select(0, plan.pages).view(-1, heads_kv, dim)[: plan.kv_len]
                values = v_cache.index_select(0, plan.pages).view(-1, heads_kv, dim)[: plan.kv_len]
                query = q[plan.row_start: plan.row_end].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
                attended = F.scaled_dot_product_attention(
                    query, keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0),
                    attn_mask=masks.get(i), is_causal=plan.mask == "causal", scale=scale, enable_gqa=True)
                out[plan.row_start: plan.row_end].copy_(attended[0].transpose(0, 1))
            return out

        return Prepared(run=run, out=out, notes={"masks": sorted({p.mask for p in plans})},
                        cuda_graph=batch.device.type == "cuda", lse_note=LSE_NOTE)
