"""The fp32 reference every backend is checked against: each sequence's K/V gathered through the
block table, attention computed per sequence in float32, in query chunks so that a 32k-context decode
or a B=8 x 4k prefill fits in GPU memory.

Besides the output it gives the softmax statistics serving engines merge split attention with: the
log-sum-exp (LSE) of each query row, ``lse[t, h] = log(sum_j exp(s_tj))`` over the scaled, masked scores
``s_tj = scale * q_t . k_j`` of the keys row t sees (natural log, float32, ``[T, Hq]``).

Model features (`adapters.features`): an fp8 cache is dequantised with its scales first; a soft-cap c
turns each score into ``c * tanh(s / c)``; a sliding window of W keys masks keys at or before ``p - W``;
a sink logit enters the denominator, so ``lse = log(exp(sink_h) + sum_j exp(s_tj))``."""

from __future__ import annotations

from typing import Literal, overload

import torch

from adapters.batch import PagedBatch

REFERENCE_CHUNK_ELEMENTS = 1 << 27
"""Upper bound on the float32 score elements held at once (512 MiB)."""


def gather_sequence_kv(batch: PagedBatch, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of sequence ``seq`` as contiguous float32 ``[kv_len, Hkv, D]``, read through the block
    table (an fp8 cache dequantised with its scales)."""
    spec = batch.spec
    kv_len = spec.kv_lens[seq]
    pages = batch.block_table[seq, : spec.pages_per_seq[seq]].long()
    keys = batch.k_cache[pages].reshape(-1, spec.num_kv_heads, spec.head_dim)[:kv_len].float()
    values = batch.v_cache[pages].reshape(-1, spec.num_kv_heads, spec.head_dim)[:kv_len].float()
    if batch.k_scale is not None:
        keys = keys * batch.k_scale.float().view(1, -1, 1)
        values = values * batch.v_scale.float().view(1, -1, 1)
    return keys, values


@overload
def reference_attention(batch: PagedBatch, chunk_elements: int = ..., *,
                        with_lse: Literal[False] = ...) -> torch.Tensor: ...


@overload
def reference_attention(batch: PagedBatch, chunk_elements: int = ..., *,
                        with_lse: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...


def reference_attention(batch: PagedBatch, chunk_elements: int = REFERENCE_CHUNK_ELEMENTS, *,
                        with_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``batch`` in float32 -> ``[T, Hq, D]`` float32 on the batch's device; with
    ``with_lse`` also the log-sum-exp of each row's scaled, masked scores -> ``[T, Hq]`` float32
    (natural log), as ``(out, lse)``.

    Query i of sequence b (0-based among its q_len new tokens) sees key j iff
    ``j <= i + kv_len - q_len`` when causal (bottom-right), every key otherwise; with a sliding window
    of W keys also ``j > i + kv_len - q_len - W``.
    """
    spec = batch.spec
    out = torch.empty(spec.total_q, spec.num_q_heads, spec.head_dim, dtype=torch.float32, device=batch.device)
    lse = (torch.empty(spec.total_q, spec.num_q_heads, dtype=torch.float32, device=batch.device)
           if with_lse else None)
    q_start = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        keys, values = gather_sequence_kv(batch, seq)
        # [Hq, kv_len, D]: query head h reads KV head h // group_size
        keys = keys.repeat_interleave(spec.group_size, dim=1).transpose(0, 1)
        values = values.repeat_interleave(spec.group_size, dim=1).transpose(0, 1)
        rows_per_chunk = max(1, chunk_elements // (spec.num_q_heads * kv_len))
        for row in range(0, q_len, rows_per_chunk):
            rows = min(rows_per_chunk, q_len - row)
            packed = slice(q_start + row, q_start + row + rows)
            query = batch.q[packed].float().transpose(0, 1)  # [Hq, rows, D]
            scores = torch.matmul(query, keys.transpose(1, 2)) * spec.scale  # [Hq, rows, kv_len]
            if spec.softcap is not None:
                scores = spec.softcap * torch.tanh(scores / spec.softcap)
            if spec.causal:
                query_pos = torch.arange(row, row + rows, device=batch.device)[:, None] + (kv_len - q_len)
                key_pos = torch.arange(kv_len, device=batch.device)[None, :]
                hidden = key_pos > query_pos
                if spec.sliding_window is not None:
                    hidden |= key_pos <= query_pos - spec.sliding_window
                scores.masked_fill_(hidden, float("-inf"))
            row_lse = torch.logsumexp(scores, dim=-1)  # [Hq, rows]
            if batch.sinks is not None:
                row_lse = torch.logaddexp(row_lse, batch.sinks.float()[:, None])
            if lse is not None:
                lse[packed] = row_lse.transpose(0, 1)
            probs = torch.exp(scores - row_lse[..., None])
            out[packed] = torch.matmul(probs, values).transpose(0, 1)
        q_start += q_len
    return (out, lse) if lse is not None else out
