"""FLOP and byte formulas of paged attention: pure functions of lengths, heads, head dim, dtype
size and causality. The one place these numbers are defined (reports and the kernel notes use them)."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.batch import BatchSpec


def attention_pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """(query, key) pairs one sequence's head computes; bottom-right causal drops the upper triangle
    of the last q_len x q_len block."""
    if causal:
        return q_len * kv_len - q_len * (q_len - 1) // 2
    return q_len * kv_len


def attention_flops(q_lens: Sequence[int], kv_lens: Sequence[int], num_q_heads: int, head_dim: int,
                    causal: bool) -> int:
    """Matrix FLOPs: two products (QK^T and PV) of 2*D FLOPs per pair and query head."""
    pairs = sum(attention_pairs(q, kv, causal) for q, kv in zip(q_lens, kv_lens))
    return 4 * num_q_heads * head_dim * pairs


def attention_bytes(q_lens: Sequence[int], kv_lens: Sequence[int], num_q_heads: int, num_kv_heads: int,
                    head_dim: int, elem_bytes: int) -> int:
    """Bytes at least moved: Q read and O written once, each sequence's K and V read once."""
    q_and_o = 2 * sum(q_lens) * num_q_heads * head_dim * elem_bytes
    k_and_v = 2 * sum(kv_lens) * num_kv_heads * head_dim * elem_bytes
    return q_and_o + k_and_v


def spec_flops(spec: BatchSpec) -> int:
    return attention_flops(spec.q_lens, spec.kv_lens, spec.num_q_heads, spec.head_dim, spec.causal)


def spec_bytes(spec: BatchSpec) -> int:
    return attention_bytes(spec.q_lens, spec.kv_lens, spec.num_q_heads, spec.num_kv_heads, spec.head_dim,
                           spec.elem_bytes)


def throughput(spec: BatchSpec, seconds: float) -> dict[str, float]:
    """TFLOP/s and TB/s of a batch that took ``seconds``."""
    return {"tflops": spec_flops(spec) / seconds / 1e12, "tbps": spec_bytes(spec) / seconds / 1e12}
