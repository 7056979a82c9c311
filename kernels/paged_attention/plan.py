"""Planning on the host, with no device synchronisation: tiles, grid and key split of a launch
from host-side upper bounds, and the split-KV workspace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .configs import CONFIG_TABLE, FEW_PROGRAMS_PER_SM, KernelConfig, config_key

MAX_SPLITS = 1024


@dataclass(frozen=True)
class LaunchPlan:
    """Everything about a launch that follows from host values: tiles, grid, key split."""

    config: KernelConfig
    block_m: int
    block_q: int
    num_q_blocks: int
    num_splits: int
    split_size: int
    tile_in_page: bool
    use_tma: bool = False
    one_query_per_seq: bool = False
    """Pure decode (as many tokens as sequences, none longer than 1): tile b is sequence b."""
    launch_merge_early: bool = False
    """The merge kernel goes out with programmatic dependent launch (Hopper and newer): its launch
    overlaps the attention kernel instead of following it (about 2 us per split launch)."""

    def describe(self) -> dict:
        path = "per-key page lookup"
        if self.tile_in_page:
            path = "tile-in-page, TMA" if self.use_tma else "tile-in-page"
        return {"config": self.config.label(), **asdict(self.config), "block_m_used": self.block_m,
                "block_q": self.block_q, "num_q_blocks": self.num_q_blocks,
                "num_splits": self.num_splits, "split_size": self.split_size, "page_path": path,
                "one_query_per_seq": self.one_query_per_seq, "launch_merge_early": self.launch_merge_early}


def next_power_of_2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def plan_launch(*, num_tokens: int, num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                page_size: int, max_q_len: int, max_kv_len: int, num_sms: int,
                config: KernelConfig | None = None, num_splits: int | None = None,
                tma_possible: bool = False, pdl_possible: bool = False,
                sliding_window: int | None = None, host_kv_lens: Sequence[int] | None = None) -> LaunchPlan:
    """Tile sizes, grid and key split from host-side upper bounds (``max_q_len``, ``max_kv_len``
    must bound every sequence's lengths). ``num_splits`` overrides the split heuristic;
    ``tma_possible`` says the device and the caches allow TMA descriptors, ``pdl_possible`` that
    the device has programmatic dependent launch. With a ``sliding_window`` a tile reads only the
    key tiles from its first visible key on (`tile_key_span`): the split covers that span, not
    ``max_kv_len``. ``host_kv_lens`` (every sequence's key count, known on the host) weights a
    decode's split by the keys the batch really holds (`decode_fill`) instead of taking every sequence
    to be ``max_kv_len`` long: a ragged batch's longest sequences then split as far as its total
    work calls for, instead of one program streaming each of them whole."""
    group = num_q_heads // num_kv_heads
    one_query_per_seq = max_q_len <= 1 and num_tokens == num_seqs

    def tiles(config: KernelConfig) -> tuple[int, int, int, int]:
        """(block_m, block_q, num_q_blocks, programs: real tiles x KV heads, an upper bound)."""
        block_m = max(config.block_m, next_power_of_2(group), 16)
        block_q = block_m // group
        num_q_blocks = num_seqs if one_query_per_seq else num_tokens // block_q + num_seqs
        real_tiles = min(num_q_blocks, num_seqs * math.ceil(max_q_len / block_q))
        return block_m, block_q, num_q_blocks, max(1, real_tiles * num_kv_heads)

    if config is None:
        bucket, table_dim, pages = config_key(head_dim, page_size, max_q_len)
        config = CONFIG_TABLE[bucket, table_dim, pages]
        if sliding_window is not None:
            config = CONFIG_TABLE.get((f"{bucket}-window", table_dim, pages), config)
        few = CONFIG_TABLE.get((f"{bucket}-few", table_dim, pages))
        if few is not None and tiles(config)[3] < FEW_PROGRAMS_PER_SM[bucket] * num_sms:
            config = few
    block_m, block_q, num_q_blocks, programs = tiles(config)
    span = tile_key_span(max_kv_len, max_q_len, block_q, config.block_n, sliding_window)
    if num_splits is None:
        if one_query_per_seq and host_kv_lens is not None:
            programs *= decode_fill(host_kv_lens, span)
        wanted = math.ceil(config.split_programs_per_sm * num_sms / max(programs, 1))
        useful = math.ceil(span / config.min_split_keys)
        num_splits = max(1, min(wanted, useful, MAX_SPLITS))
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits} must lie in 1..{MAX_SPLITS}")
    split_size = math.ceil(math.ceil(max(span, 1) / num_splits) / config.block_n) * config.block_n
    num_splits = math.ceil(max(span, 1) / split_size)
    tile_in_page = page_size % config.block_n == 0
    use_tma = config.use_tma and tma_possible and tile_in_page and head_dim == next_power_of_2(head_dim)
    return LaunchPlan(config=config, block_m=block_m, block_q=block_q, num_q_blocks=num_q_blocks,
                      num_splits=num_splits, split_size=split_size, tile_in_page=tile_in_page,
                      use_tma=use_tma, one_query_per_seq=one_query_per_seq,
                      launch_merge_early=pdl_possible and num_splits > 1)


def keys_read(kv_lens: Sequence[int], span: int) -> int:
    """Keys that sequences of these lengths read when each reads at most ``span`` (a window's keys)."""
    return sum(min(kv_len, span) for kv_len in kv_lens)


def decode_fill(host_kv_lens: Sequence[int], span: int) -> float:
    """The share of ``len(host_kv_lens) x span`` keys that a decode batch reads (`keys_read`): 1 when every
    sequence is as long as the longest, 0.1 when a few long ones sit among many short ones."""
    if not host_kv_lens or span <= 0:
        return 1.0
    return max(keys_read(host_kv_lens, span) / (len(host_kv_lens) * span), 1e-6)


def decode_keys_per_sm(kv_lens: Sequence[int], span: int, num_kv_heads: int, num_sms: int) -> float:
    """Keys that decodes of these lengths read per multiprocessor (`keys_read`, once per KV head): the
    work that decides whether they are worth a launch of their own."""
    return keys_read(kv_lens, span) * num_kv_heads / max(num_sms, 1)


def tile_key_span(max_kv_len: int, max_q_len: int, block_q: int, block_n: int,
                  sliding_window: int | None) -> int:
    """Upper bound on the keys one tile reads: ``max_kv_len``, or with a sliding window of W keys the
    span from the tile's first visible key, rounded down to a key tile, to its last query's key:
    at most ``(queries in the tile - 1) + W + (block_n - 1)``."""
    if sliding_window is None:
        return max_kv_len
    return min(max_kv_len, min(block_q, max_q_len) - 1 + sliding_window + block_n - 1)


def allocate_workspace(plan: LaunchPlan, num_tokens: int, num_q_heads: int, head_dim: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """fp32 partial outputs ``[num_splits, T, Hq, D]`` and log2-sum-exp ``[num_splits, T, Hq]``;
    None when the plan does not split keys."""
    if plan.num_splits == 1:
        return None
    part_out = torch.empty(plan.num_splits, num_tokens, num_q_heads, head_dim, dtype=torch.float32,
                           device=device)
    part_lse = torch.empty(plan.num_splits, num_tokens, num_q_heads, dtype=torch.float32, device=device)
    return part_out, part_lse


def register_report(compiled) -> dict:
    """Registers per thread and spilled bytes of a kernel as Triton compiled it (``compiled``: what its
    launch returned; None before the first call, and the interpreter's result has neither): what decides
    how many programs share a multiprocessor."""
    return {key: getattr(compiled, f"n_{key}") for key in ("regs", "spills") if hasattr(compiled, f"n_{key}")}
