"""FLOP and byte formulas of paged attention: pure functions of lengths, heads, head dim, dtype
size, causality and sliding window. The one place these numbers are defined (reports and the kernel
notes use them). A window counts only the (query, key) pairs and keys inside it, as a kernel that
skips the rest does; soft-capping and sinks add no matrix FLOPs."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.batch import BatchSpec


def attention_pairs(q_len: int, kv_len: int, causal: bool, window: int | None = None) -> int:
    """(query, key) pairs one sequence's head computes; bottom-right causal drops the upper triangle
    of the last q_len x q_len block; a window of W keys caps each query's keys at W."""
    if not causal:
        return q_len * kv_len
    if window is None:
        return q_len * kv_len - q_len * (q_len - 1) // 2
    first = kv_len - q_len + 1  # keys the first new token sees without a window; each next one sees one more
    growing = max(0, min(q_len, window - first))
    return growing * first + growing * (growing - 1) // 2 + (q_len - growing) * window


def keys_read(q_len: int, kv_len: int, window: int | None = None) -> int:
    """Keys of one sequence some query sees: all of them, or with a window the last W + q_len - 1."""
    return kv_len if window is None else min(kv_len, window + q_len - 1)


def attention_flops(q_lens: Sequence[int], kv_lens: Sequence[int], num_q_heads: int, head_dim: int,
                    causal: bool, window: int | None = None) -> int:
    """Matrix FLOPs: two products (QK^T and PV) of 2*D FLOPs per pair and query head."""
    pairs = sum(attention_pairs(q, kv, causal, window) for q, kv in zip(q_lens, kv_lens))
    return 4 * num_q_heads * head_dim * pairs


def attention_bytes(q_lens: Sequence[int], kv_lens: Sequence[int], num_q_heads: int, num_kv_heads: int,
                    head_dim: int, elem_bytes: int, kv_elem_bytes: int | None = None,
                    window: int | None = None) -> int:
    """Bytes at least moved: Q read and O written once (``elem_bytes`` each), each sequence's K and V
    read once (``kv_elem_bytes`` each, 1 for an fp8 cache; only the keys some query sees)."""
    kv_elem_bytes = elem_bytes if kv_elem_bytes is None else kv_elem_bytes
    q_and_o = 2 * sum(q_lens) * num_q_heads * head_dim * elem_bytes
    keys = sum(keys_read(q, kv, window) for q, kv in zip(q_lens, kv_lens))
    k_and_v = 2 * keys * num_kv_heads * head_dim * kv_elem_bytes
    return q_and_o + k_and_v


def spec_flops(spec: BatchSpec) -> int:
    return attention_flops(spec.q_lens, spec.kv_lens, spec.num_q_heads, spec.head_dim, spec.causal,
                           spec.sliding_window)


def spec_bytes(spec: BatchSpec) -> int:
    return attention_bytes(spec.q_lens, spec.kv_lens, spec.num_q_heads, spec.num_kv_heads, spec.head_dim,
                           spec.elem_bytes, spec.kv_elem_bytes, spec.sliding_window)


def throughput(spec: BatchSpec, seconds: float) -> dict[str, float]:
    """TFLOP/s and TB/s of a batch that took ``seconds``."""
    return {"tflops": spec_flops(spec) / seconds / 1e12, "tbps": spec_bytes(spec) / seconds / 1e12}
