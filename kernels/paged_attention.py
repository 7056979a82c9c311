"""Paged attention in Triton: packed (THD) queries against a paged K/V cache, for prefill, decode and
mixed batches through one entry point.

Layout (the project's canonical batch, see ``adapters/batch.py``):

    q            [T, Hq, D]                        packed new tokens of every sequence
    k_cache      [num_pages, PAGE_SIZE, Hkv, D]    NHD pages (v_cache the same)
    block_table  [B, max_pages] int32              page ids of each sequence
    cu_seqlens_q [B + 1] int32                     query offsets in tokens
    kv_lens      [B] int32                         keys of each sequence, the last q_len of them new

Causal is bottom-right: query i of a sequence (0-based among its q_len new tokens) sees key j iff
``j <= i + kv_len - q_len``.

Work decomposition. The ``GROUP = Hq // Hkv`` query heads that share a KV head are packed into the
rows of one tile (row r = query token ``r // GROUP``, head ``r % GROUP``), so each K/V tile is read
once for the whole group. A tile covers ``BLOCK_Q = BLOCK_M // GROUP`` query tokens of one
sequence; tiles are numbered over the packed batch so that the grid is sized from host values alone
(``T // BLOCK_Q + B`` is an upper bound on their count, surplus programs return at once) and a
program finds its sequence by binary search over ``cu_seqlens_q`` (a pure decode batch, one query
per sequence, skips both: tile b is sequence b). Programs run the heaviest tile of each sequence
first (the last one under bottom-right causal).

When there are too few tiles to fill the GPU (decode, or a few long sequences) the key range is split
into ``num_splits`` chunks of ``split_size`` keys (flash-decoding). A tile whose keys fit in one chunk
writes its output directly; the others write fp32 partial outputs and log2-sum-exp values that a
small second kernel merges.

One attention kernel (constexpr switches ``IS_CAUSAL``, ``SPLIT_KV``, ``TILE_IN_PAGE``, ``USE_TMA``)
plus one merge kernel. Launch configurations come from a table keyed on head dim, page-size class,
bucketed max query length (decode / short / long, and long-few when wide tiles would not fill the
GPU): see ``CONFIG_TABLE`` and ``docs/triton_kernel_notes.md``. At D=128 long queries run 128-row
tiles capped at 128 registers so that two 8-warp programs share a multiprocessor: K/V traffic
from L2, not issue rate, bounds this loop on the H100.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
"""log2(e): scores are kept in the log2 domain so that the softmax uses exp2."""

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
"""Head dims from 16 to 256; those that are not a power of two (96, 192) run padded to the next one."""
MAX_SPLITS = 1024
INTERPRETER_SM_COUNT = 4
"""Stands in for the multiprocessor count when the kernel runs under the interpreter (CPU tensors)."""


# --------------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------------

@triton.jit
def _find_sequence(cu_seqlens_q_ptr,  # [B + 1] int32
                   q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """Sequence that owns packed query block ``q_block``: the last b with
    ``cu_seqlens_q[b] // BLOCK_Q + b <= q_block`` (sequence b's blocks are numbered from there)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _locate_tile(cu_seqlens_q_ptr,  # [B + 1] int32
                 kv_lens_ptr,  # [B] int32
                 q_block, num_seqs, BLOCK_Q: tl.constexpr, ONE_QUERY_PER_SEQ: tl.constexpr):
    """(seq_idx, q_start, q_len, kv_len, tile_start) of query block ``q_block``: the tile holds the
    sequence's queries ``tile_start .. tile_start + BLOCK_Q - 1``; ``tile_start >= q_len`` marks a
    surplus block (the grid is an upper bound). With ``ONE_QUERY_PER_SEQ`` (pure decode: the host
    knows every sequence has exactly one query) block b is sequence b and token b: no search."""
    if ONE_QUERY_PER_SEQ:
        return q_block, q_block, 1, tl.load(kv_lens_ptr + q_block), 0
    seq_idx = _find_sequence(cu_seqlens_q_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_seqlens_q_ptr + seq_idx)
    q_len = tl.load(cu_seqlens_q_ptr + seq_idx + 1) - q_start
    kv_len = tl.load(kv_lens_ptr + seq_idx)
    tile_start = (q_block - (q_start // BLOCK_Q + seq_idx)) * BLOCK_Q
    return seq_idx, q_start, q_len, kv_len, tile_start


@triton.jit
def _tile_key_bounds(tile_start, q_len, kv_len, BLOCK_Q: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """(kv_full, kv_end) of a tile: keys below ``kv_full`` are visible to every query of the tile,
    keys from ``kv_end`` on to none of them (bottom-right causal, or the whole cache)."""
    if IS_CAUSAL:
        context = kv_len - q_len
        last_query = tl.minimum(tile_start + BLOCK_Q, q_len) - 1
        kv_full = tile_start + context + 1
        kv_end = last_query + context + 1
    else:
        kv_full = kv_len
        kv_end = kv_len
    return kv_full, kv_end


@triton.jit
def _tile_rows(tile_start, q_len, kv_head, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_Q: tl.constexpr):
    """Per-row (query index within the sequence, query head, valid) of a tile that packs
    ``BLOCK_Q`` queries x ``GROUP`` heads into ``BLOCK_M`` rows."""
    offs_m = tl.arange(0, BLOCK_M)
    row_query = tile_start + offs_m // GROUP
    row_head = kv_head * GROUP + offs_m % GROUP
    row_valid = (offs_m < BLOCK_Q * GROUP) & (row_query < q_len)
    return row_query, row_head, row_valid


@triton.jit
def _load(ptrs, mask_a, mask_b, USE_A: tl.constexpr, USE_B: tl.constexpr):
    """``tl.load`` under ``mask_a & mask_b`` where each mask applies only when its switch is on, so
    tiles known to be in bounds load with no mask at all."""
    if USE_A:
        if USE_B:
            value = tl.load(ptrs, mask=mask_a & mask_b, other=0.0)
        else:
            value = tl.load(ptrs, mask=mask_a, other=0.0)
    else:
        if USE_B:
            value = tl.load(ptrs, mask=mask_b, other=0.0)
        else:
            value = tl.load(ptrs)
    return value


@triton.jit
def _kv_rows(block_table_row_ptr, start_n, keys, key_valid, stride_page, stride_slot,
             PAGE_SIZE: tl.constexpr, TILE_IN_PAGE: tl.constexpr, MASKED: tl.constexpr,
             OFFSETS_32: tl.constexpr):
    """Element offsets of keys ``start_n .. start_n + BLOCK_N - 1`` in a cache with these page and
    slot strides: one page lookup per tile when the tile sits inside one page, else one per key.
    int32 when ``OFFSETS_32`` (the whole cache is under 2**31 elements: cheaper address math and
    fewer registers), else int64."""
    if TILE_IN_PAGE:
        pages = tl.load(block_table_row_ptr + start_n // PAGE_SIZE)
    else:
        if MASKED:
            pages = tl.load(block_table_row_ptr + keys // PAGE_SIZE, mask=key_valid, other=0)
        else:
            pages = tl.load(block_table_row_ptr + keys // PAGE_SIZE)
    if OFFSETS_32:
        rows = pages * stride_page + (keys % PAGE_SIZE) * stride_slot
    else:
        rows = pages.to(tl.int64) * stride_page + (keys % PAGE_SIZE).to(tl.int64) * stride_slot
    return rows


@triton.jit
def _key_tile(k_cache_ptr, k_desc, key_valid, rows, k_head_offset, head_col,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr):
    """K^T tile ``[BLOCK_D, BLOCK_N]``: one TMA load at row ``rows`` of the cache viewed
    ``[pages * PAGE_SIZE, Hkv * D]`` (the tile inside one page), or per-thread pointer loads at
    element offsets ``rows``. Keys past the end read as zero (pointers) or are masked later."""
    if USE_TMA:
        k = tl.trans(k_desc.load([rows, head_col]))
    else:
        offs_d = tl.arange(0, BLOCK_D)
        k_ptrs = k_cache_ptr + k_head_offset + rows[None, :] + offs_d[:, None]
        k = _load(k_ptrs, key_valid[None, :], (offs_d < HEAD_DIM)[:, None], MASKED, HEAD_DIM != BLOCK_D)
    return k


@triton.jit
def _value_tile(v_cache_ptr, v_desc, key_valid, rows, v_head_offset, head_col,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr):
    """V tile ``[BLOCK_N, BLOCK_D]`` (TMA at row ``rows``, or pointers at offsets ``rows``); in
    masked tiles the rows past the end are zero (slots past the end of the last page may hold
    anything, NaN included)."""
    if USE_TMA:
        v = v_desc.load([rows, head_col])
        if MASKED:
            v = tl.where(key_valid[:, None], v, 0.0)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        v_ptrs = v_cache_ptr + v_head_offset + rows[:, None] + offs_d[None, :]
        v = _load(v_ptrs, key_valid[:, None], (offs_d < HEAD_DIM)[None, :], MASKED, HEAD_DIM != BLOCK_D)
    return v


@triton.jit
def _softmax_update(acc, l_i, m_i, qk, v, keys, key_valid, row_limit, qk_scale,
                    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step: fold the scores ``qk`` of ``keys`` and their values into
    (acc, l_i, m_i). Scores are in the log2 domain (``qk_scale = scale * log2(e)``); masked tiles
    drop keys that are not ``key_valid`` and, causal, past each row's last visible key."""
    if MASKED:
        visible = key_valid[None, :]
        if IS_CAUSAL:
            visible = visible & (keys[None, :] <= row_limit[:, None])
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attend_keys(acc, l_i, m_i, q,
                 k_cache_ptr,  # [num_pages, PAGE_SIZE, Hkv, D]
                 v_cache_ptr,  # [num_pages, PAGE_SIZE, Hkv, D]
                 k_desc,  # TMA descriptor of k_cache as [num_pages * PAGE_SIZE, Hkv * D], block [BLOCK_N, D] (USE_TMA)
                 v_desc,  # the same over v_cache (USE_TMA)
                 block_table_row_ptr,  # [max_pages] int32, this sequence's row
                 kv_lo, kv_hi, kv_len, row_limit, qk_scale,
                 k_head_offset, v_head_offset, head_col,
                 stride_k_page, stride_k_slot, stride_v_page, stride_v_slot,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 PAGE_SIZE: tl.constexpr, TILE_IN_PAGE: tl.constexpr, USE_TMA: tl.constexpr,
                 MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 SHARED_ROWS: tl.constexpr, OFFSETS_32: tl.constexpr):
    """Online softmax over keys ``[kv_lo, kv_hi)`` in steps of BLOCK_N (``kv_lo`` a multiple of it).

    ``MASKED`` tiles apply the key-length and causal masks (the diagonal and the last tile);
    unmasked ones are known fully visible. ``SHARED_ROWS``: K and V have the same page and slot
    strides, so one page lookup per key serves both.
    """
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        key_valid = keys < kv_len
        if USE_TMA:  # one row of the [pages * PAGE_SIZE, Hkv * D] view serves K and V
            page = tl.load(block_table_row_ptr + start_n // PAGE_SIZE)
            k_rows = page * PAGE_SIZE + start_n % PAGE_SIZE
            v_rows = k_rows
        else:
            k_rows = _kv_rows(block_table_row_ptr, start_n, keys, key_valid, stride_k_page, stride_k_slot,
                              PAGE_SIZE, TILE_IN_PAGE, MASKED, OFFSETS_32)
            if SHARED_ROWS:
                v_rows = k_rows
            else:
                v_rows = _kv_rows(block_table_row_ptr, start_n, keys, key_valid, stride_v_page,
                                  stride_v_slot, PAGE_SIZE, TILE_IN_PAGE, MASKED, OFFSETS_32)
        k = _key_tile(k_cache_ptr, k_desc, key_valid, k_rows, k_head_offset, head_col,
                      HEAD_DIM, BLOCK_D, USE_TMA, MASKED)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        v = _value_tile(v_cache_ptr, v_desc, key_valid, v_rows, v_head_offset, head_col,
                        HEAD_DIM, BLOCK_D, USE_TMA, MASKED)
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, qk, v, keys, key_valid, row_limit, qk_scale,
                                        MASKED, IS_CAUSAL, DOT_PRECISION)
    return acc, l_i, m_i


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

@triton.jit
def _paged_attention_kernel(
    out_ptr,  # [T, Hq, D] output, q's dtype
    part_out_ptr,  # [num_splits, T, Hq, D] fp32 partial outputs (SPLIT_KV only)
    part_lse_ptr,  # [num_splits, T, Hq] fp32 partial log2-sum-exp (SPLIT_KV only)
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [num_pages, PAGE_SIZE, Hkv, D]
    v_cache_ptr,  # [num_pages, PAGE_SIZE, Hkv, D]
    k_desc,  # TMA descriptor of k_cache viewed [num_pages * PAGE_SIZE, Hkv * D] (USE_TMA), else None
    v_desc,  # the same over v_cache
    block_table_ptr,  # [B, max_pages] int32
    cu_seqlens_q_ptr,  # [B + 1] int32
    kv_lens_ptr,  # [B] int32
    qk_scale,  # scale * log2(e)
    num_seqs, num_q_blocks, split_size,
    stride_q_t, stride_q_h,
    stride_k_page, stride_k_slot, stride_k_head,
    stride_v_page, stride_v_slot, stride_v_head,
    stride_bt_seq,
    stride_o_t, stride_o_h,
    stride_po_split, stride_po_t, stride_po_h,
    stride_pl_split, stride_pl_t,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, SPLIT_KV: tl.constexpr, TILE_IN_PAGE: tl.constexpr, USE_TMA: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ONE_QUERY_PER_SEQ: tl.constexpr, SHARED_ROWS: tl.constexpr,
    OFFSETS_32: tl.constexpr, LAUNCH_MERGE_EARLY: tl.constexpr,
):
    """One program: one tile (BLOCK_Q queries x the GROUP heads of one KV head) and, with SPLIT_KV,
    one chunk of ``split_size`` keys. Grid: (num_q_blocks * Hkv, num_splits)."""
    if LAUNCH_MERGE_EARLY:  # the merge kernel may start now; it waits for this grid before reading
        tl.extra.cuda.gdc_launch_dependents()
    flat_idx = tl.program_id(0)
    kv_head = flat_idx % NUM_KV_HEADS
    q_block = num_q_blocks - 1 - flat_idx // NUM_KV_HEADS  # last (heaviest) tiles first
    split_idx = tl.program_id(1)

    seq_idx, q_start, q_len, kv_len, tile_start = _locate_tile(
        cu_seqlens_q_ptr, kv_lens_ptr, q_block, num_seqs, BLOCK_Q, ONE_QUERY_PER_SEQ)
    if tile_start >= q_len:
        return
    kv_full, kv_end = _tile_key_bounds(tile_start, q_len, kv_len, BLOCK_Q, IS_CAUSAL)
    if SPLIT_KV:
        kv_lo = split_idx * split_size
        kv_hi = tl.minimum(kv_end, kv_lo + split_size)
        num_tile_splits = tl.cdiv(kv_end, split_size)
    else:
        kv_lo = 0
        kv_hi = kv_end
        num_tile_splits = 1
    if kv_lo >= kv_hi:
        return
    kv_mid = tl.maximum(tl.minimum((kv_full // BLOCK_N) * BLOCK_N, kv_hi), kv_lo)

    stride_q_t = tl.cast(stride_q_t, tl.int64)
    stride_q_h = tl.cast(stride_q_h, tl.int64)
    if not OFFSETS_32:
        stride_k_page = tl.cast(stride_k_page, tl.int64)
        stride_k_slot = tl.cast(stride_k_slot, tl.int64)
        stride_v_page = tl.cast(stride_v_page, tl.int64)
        stride_v_slot = tl.cast(stride_v_slot, tl.int64)
    stride_bt_seq = tl.cast(stride_bt_seq, tl.int64)
    stride_o_t = tl.cast(stride_o_t, tl.int64)
    stride_o_h = tl.cast(stride_o_h, tl.int64)
    stride_po_split = tl.cast(stride_po_split, tl.int64)
    stride_po_t = tl.cast(stride_po_t, tl.int64)
    stride_po_h = tl.cast(stride_po_h, tl.int64)
    stride_pl_split = tl.cast(stride_pl_split, tl.int64)
    stride_pl_t = tl.cast(stride_pl_t, tl.int64)

    row_query, row_head, row_valid = _tile_rows(tile_start, q_len, kv_head, GROUP, BLOCK_M, BLOCK_Q)
    row_token = (q_start + row_query).to(tl.int64)
    row_limit = row_query + (kv_len - q_len)  # last key each row may see (causal)
    offs_d = tl.arange(0, BLOCK_D)
    row_d_mask = row_valid[:, None] & (offs_d < HEAD_DIM)[None, :]

    q_ptrs = q_ptr + (row_token * stride_q_t + row_head * stride_q_h)[:, None] + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_d_mask, other=0.0)

    block_table_row_ptr = block_table_ptr + seq_idx * stride_bt_seq
    k_head_offset = kv_head * tl.cast(stride_k_head, tl.int64)
    v_head_offset = kv_head * tl.cast(stride_v_head, tl.int64)
    head_col = kv_head * HEAD_DIM  # column of this head in the TMA view

    # m_i starts finite so that a row with every key masked keeps p = 0 and alpha = 1 (no NaN)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # keys every row sees: no mask; then the diagonal and the ragged end: masked
    acc, l_i, m_i = _attend_keys(
        acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr, k_desc, v_desc, block_table_row_ptr,
        kv_lo, kv_mid, kv_len, row_limit, qk_scale, k_head_offset, v_head_offset, head_col,
        stride_k_page, stride_k_slot, stride_v_page, stride_v_slot,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, TILE_IN_PAGE, USE_TMA, False, IS_CAUSAL, DOT_PRECISION,
        SHARED_ROWS, OFFSETS_32)
    acc, l_i, m_i = _attend_keys(
        acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr, k_desc, v_desc, block_table_row_ptr,
        kv_mid, kv_hi, kv_len, row_limit, qk_scale, k_head_offset, v_head_offset, head_col,
        stride_k_page, stride_k_slot, stride_v_page, stride_v_slot,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, TILE_IN_PAGE, USE_TMA, True, IS_CAUSAL, DOT_PRECISION,
        SHARED_ROWS, OFFSETS_32)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if num_tile_splits > 1:
        split_off = split_idx.to(tl.int64)
        po_ptrs = (part_out_ptr + split_off * stride_po_split
                   + (row_token * stride_po_t + row_head * stride_po_h)[:, None] + offs_d[None, :])
        tl.store(po_ptrs, out, mask=row_d_mask)
        # -inf where this chunk saw no key of the row: the merge gives it weight 0
        lse = tl.where(l_i > 0.0, m_i + tl.math.log2(l_safe), float("-inf"))
        pl_ptrs = part_lse_ptr + split_off * stride_pl_split + row_token * stride_pl_t + row_head
        tl.store(pl_ptrs, lse, mask=row_valid)
    else:
        o_ptrs = out_ptr + (row_token * stride_o_t + row_head * stride_o_h)[:, None] + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_d_mask)


@triton.jit
def _merge_splits_kernel(
    out_ptr,  # [T, Hq, D] output, q's dtype
    part_out_ptr,  # [num_splits, T, Hq, D] fp32
    part_lse_ptr,  # [num_splits, T, Hq] fp32
    cu_seqlens_q_ptr,  # [B + 1] int32
    kv_lens_ptr,  # [B] int32
    num_seqs, num_q_blocks, split_size,
    stride_o_t, stride_o_h,
    stride_po_split, stride_po_t, stride_po_h,
    stride_pl_split, stride_pl_t,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, IS_CAUSAL: tl.constexpr, ONE_QUERY_PER_SEQ: tl.constexpr,
    LAUNCH_MERGE_EARLY: tl.constexpr,
):
    """Merge the key chunks of every tile that was split, with log-sum-exp weights. Same tiles and
    grid axis 0 as the attention kernel; tiles with a single chunk were written directly: skipped.
    With LAUNCH_MERGE_EARLY (programmatic dependent launch) it starts while the attention kernel
    runs and waits for that grid to finish before it reads a partial result."""
    flat_idx = tl.program_id(0)
    kv_head = flat_idx % NUM_KV_HEADS
    q_block = num_q_blocks - 1 - flat_idx // NUM_KV_HEADS

    seq_idx, q_start, q_len, kv_len, tile_start = _locate_tile(
        cu_seqlens_q_ptr, kv_lens_ptr, q_block, num_seqs, BLOCK_Q, ONE_QUERY_PER_SEQ)
    if tile_start >= q_len:
        return
    kv_full, kv_end = _tile_key_bounds(tile_start, q_len, kv_len, BLOCK_Q, IS_CAUSAL)
    num_tile_splits = tl.cdiv(kv_end, split_size)
    if num_tile_splits <= 1:
        return

    stride_o_t = tl.cast(stride_o_t, tl.int64)
    stride_o_h = tl.cast(stride_o_h, tl.int64)
    stride_po_split = tl.cast(stride_po_split, tl.int64)
    stride_po_t = tl.cast(stride_po_t, tl.int64)
    stride_po_h = tl.cast(stride_po_h, tl.int64)
    stride_pl_split = tl.cast(stride_pl_split, tl.int64)
    stride_pl_t = tl.cast(stride_pl_t, tl.int64)

    row_query, row_head, row_valid = _tile_rows(tile_start, q_len, kv_head, GROUP, BLOCK_M, BLOCK_Q)
    row_token = (q_start + row_query).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    row_d_mask = row_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    po_rows = row_token * stride_po_t + row_head * stride_po_h
    pl_rows = row_token * stride_pl_t + row_head

    if LAUNCH_MERGE_EARLY:
        tl.extra.cuda.gdc_wait()
    lse_max = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    for split in range(0, num_tile_splits):
        lse = tl.load(part_lse_ptr + split * stride_pl_split + pl_rows,
                      mask=row_valid, other=float("-inf"))
        lse_max = tl.maximum(lse_max, lse)
    weight_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for split in range(0, num_tile_splits):
        lse = tl.load(part_lse_ptr + split * stride_pl_split + pl_rows,
                      mask=row_valid, other=float("-inf"))
        weight = tl.math.exp2(lse - lse_max)
        part = tl.load(part_out_ptr + split * stride_po_split
                       + po_rows[:, None] + offs_d[None, :], mask=row_d_mask, other=0.0)
        acc += weight[:, None] * part
        weight_sum += weight
    out = acc / tl.where(weight_sum > 0.0, weight_sum, 1.0)[:, None]
    o_ptrs = out_ptr + (row_token * stride_o_t + row_head * stride_o_h)[:, None] + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_d_mask)


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of the attention kernel.

    block_m: rows of a tile (``block_m // group`` queries x ``group`` heads; raised to the group
    size where that is larger); block_n: keys per inner step; split_programs_per_sm: split the keys
    until about this many programs per multiprocessor are launched; min_split_keys: never split
    below this many keys per chunk.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split_programs_per_sm: int = 0
    min_split_keys: int = 1 << 30
    use_tma: bool = False
    """Load K/V tiles through TMA descriptors where a tile sits inside one page (Hopper and newer)."""
    max_registers: int = 0
    """Cap on registers per thread (Triton's ``maxnreg``; 0 leaves it to the compiler): 128 lets two
    8-warp programs share a multiprocessor, at the price of some spills."""

    def label(self) -> str:
        return (f"M{self.block_m}-N{self.block_n}-w{self.num_warps}-s{self.num_stages}"
                f"{'-tma' if self.use_tma else ''}{f'-r{self.max_registers}' if self.max_registers else ''}"
                f"-split{self.split_programs_per_sm}/{self.min_split_keys}")


def query_bucket(max_q_len: int) -> str:
    """Bucketed max query length: the only length the config depends on."""
    if max_q_len <= 1:
        return "decode"
    if max_q_len <= 16:
        return "short"
    return "long"


def page_class(page_size: int) -> str:
    """Page sizes that behave alike: below 16 every key looks its page up; from 64 a 64-key tile
    can sit inside one page (and load through TMA)."""
    if page_size < 16:
        return "small"
    if page_size < 64:
        return "medium"
    return "large"


# Decode splits keys until about one program per SM where key tiles sit inside pages: fewer, longer
# chunks stream better than many short ones (H100, page 256: B16 ctx 4096 108.5 us in 2 chunks, 115 us
# in 9; B64 368 us unsplit, 378 us in 4 chunks). Smaller pages look every key's page up, which costs
# latency that more programs hide: about 3 per SM (page 16: B16 ctx 16384 380 us in 4 chunks, 408 in 2).
_DECODE = {"large": dict(split_programs_per_sm=1, min_split_keys=256),
           "medium": dict(split_programs_per_sm=3, min_split_keys=256),
           "small": dict(split_programs_per_sm=3, min_split_keys=256)}
_SHORT = dict(split_programs_per_sm=4, min_split_keys=512)
# Long queries split only where chunks stay long: B1 q512 ctx 2048 takes 61.5 us whole and 72.2 us
# in two chunks of 1280 keys on the H100.
_LONG = dict(split_programs_per_sm=2, min_split_keys=4096)


FEW_PROGRAMS_PER_SM = {"long": 2.0, "decode": 0.25}
"""A launch whose table tiles would make fewer programs than this per multiprocessor takes its
bucket's ``-few`` entry instead. Long queries: less than one wave of the two-per-SM 128-row tiles,
so smaller tiles and more programs (a B1 q512 prefill: 128 programs of 128 rows 55.8 us, 256 of 64
rows 42.8 us on the H100). Decode: so few sequences that even split, each SM streams one chunk on
its own; 128-key steps keep more bytes in flight (B1 ctx 16384 at page 256: 46.6 us against 49.6)."""


def _table() -> dict[tuple[str, int, str], KernelConfig]:
    """(query bucket, head dim, page class) -> config. The D=128 decode and long entries are the
    winners measured on an H100 by scripts/triton_tune.py (bf16, Hq 32, Hkv 8, pages 16 and 256;
    docs/triton_kernel_notes.md); the short bucket and D=64/256 were chosen from the compiler's
    register and spill report and checked for correctness on the GPU, not timed."""
    table = {}
    for page in ("small", "medium", "large"):
        table["decode", 64, page] = KernelConfig(16, 64, 4, 3, **_DECODE[page])
        # 2 stages (B64 ctx 4096 unsplit: 2.92 TB/s on the H100)
        table["decode", 128, page] = KernelConfig(16, 64, 4, 2, **_DECODE[page])
        table["decode-few", 128, page] = KernelConfig(16, 128, 4, 2, split_programs_per_sm=1, min_split_keys=128)
        table["decode", 256, page] = KernelConfig(16, 32, 4, 3, **_DECODE[page])
        table["short", 64, page] = KernelConfig(64, 64, 4, 3, **_SHORT)
        table["short", 128, page] = KernelConfig(64, 64, 4, 3, **_SHORT)
        table["short", 256, page] = KernelConfig(64, 16, 4, 2, **_SHORT)
        table["long", 64, page] = KernelConfig(128, 64, 4, 3, **_LONG)
        # 128-row tiles halve the K/V traffic from L2 against 64-row ones; capped at 128 registers,
        # two 8-warp programs share a multiprocessor (about 25% faster on the H100)
        table["long", 128, page] = KernelConfig(128, 64, 8, 3, max_registers=128, **_LONG)
        table["long", 256, page] = KernelConfig(128, 32, 8, 2, **_LONG)
        table["long-few", 128, page] = KernelConfig(64, 64, 4, 3, **_LONG)
    # pages of 64+ keys hold a whole key tile: TMA loads win there (10 to 15% on the H100)
    table["long", 128, "large"] = KernelConfig(128, 64, 8, 2, use_tma=True, max_registers=128, **_LONG)
    table["long-few", 128, "large"] = KernelConfig(64, 64, 4, 3, use_tma=True, **_LONG)
    return table


CONFIG_TABLE: dict[tuple[str, int, str], KernelConfig] = _table()
"""Chosen configuration per (query bucket, head dim, page class). Head dims between the listed ones
use the next larger listed one. ``long-few`` and ``decode-few`` entries replace ``long`` and
``decode`` ones for launches with few tiles (see ``FEW_PROGRAMS_PER_SM``)."""


def config_key(head_dim: int, page_size: int, max_q_len: int) -> tuple[str, int, str]:
    table_dim = next((d for d in (64, 128, 256) if head_dim <= d), 256)
    return query_bucket(max_q_len), table_dim, page_class(page_size)


def select_config(head_dim: int, page_size: int, max_q_len: int) -> KernelConfig:
    """The tuned configuration for these (bucketed) parameters."""
    return CONFIG_TABLE[config_key(head_dim, page_size, max_q_len)]


# --------------------------------------------------------------------------------------------------
# Planning (host only, no device synchronisation)
# --------------------------------------------------------------------------------------------------

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


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def plan_launch(*, num_tokens: int, num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                page_size: int, max_q_len: int, max_kv_len: int, num_sms: int,
                config: KernelConfig | None = None, num_splits: int | None = None,
                tma_possible: bool = False, pdl_possible: bool = False) -> LaunchPlan:
    """Tile sizes, grid and key split from host-side upper bounds (``max_q_len``, ``max_kv_len``
    must bound every sequence's lengths). ``num_splits`` overrides the split heuristic;
    ``tma_possible`` says the device and the caches allow TMA descriptors, ``pdl_possible`` that
    the device has programmatic dependent launch."""
    group = num_q_heads // num_kv_heads
    one_query_per_seq = max_q_len <= 1 and num_tokens == num_seqs

    def tiles(config: KernelConfig) -> tuple[int, int, int, int]:
        """(block_m, block_q, num_q_blocks, programs: real tiles x KV heads, an upper bound)."""
        block_m = max(config.block_m, _next_power_of_2(group), 16)
        block_q = block_m // group
        num_q_blocks = num_seqs if one_query_per_seq else num_tokens // block_q + num_seqs
        real_tiles = min(num_q_blocks, num_seqs * math.ceil(max_q_len / block_q))
        return block_m, block_q, num_q_blocks, max(1, real_tiles * num_kv_heads)

    if config is None:
        bucket, table_dim, pages = config_key(head_dim, page_size, max_q_len)
        config = CONFIG_TABLE[bucket, table_dim, pages]
        few = CONFIG_TABLE.get((f"{bucket}-few", table_dim, pages))
        if few is not None and tiles(config)[3] < FEW_PROGRAMS_PER_SM[bucket] * num_sms:
            config = few
    block_m, block_q, num_q_blocks, programs = tiles(config)
    if num_splits is None:
        wanted = math.ceil(config.split_programs_per_sm * num_sms / programs)
        useful = math.ceil(max_kv_len / config.min_split_keys)
        num_splits = max(1, min(wanted, useful, MAX_SPLITS))
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits} must lie in 1..{MAX_SPLITS}")
    split_size = math.ceil(math.ceil(max(max_kv_len, 1) / num_splits) / config.block_n) * config.block_n
    num_splits = math.ceil(max(max_kv_len, 1) / split_size)
    tile_in_page = page_size % config.block_n == 0
    use_tma = config.use_tma and tma_possible and tile_in_page and head_dim == _next_power_of_2(head_dim)
    return LaunchPlan(config=config, block_m=block_m, block_q=block_q, num_q_blocks=num_q_blocks,
                      num_splits=num_splits, split_size=split_size, tile_in_page=tile_in_page,
                      use_tma=use_tma, one_query_per_seq=one_query_per_seq,
                      launch_merge_early=pdl_possible and num_splits > 1)


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


def offsets_fit_int32(tensor: torch.Tensor) -> bool:
    """Every element offset of ``tensor`` (from its strides) fits in int32."""
    return sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride())) < 2**31 - 1


def tma_possible(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """TMA descriptors need a Hopper-class GPU (or the interpreter, on CPU tensors), caches that are
    contiguous and 16-byte aligned, and row coordinates that fit in int32."""
    if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device)[0] < 9:
        return False
    num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
    return all(cache.is_contiguous() and cache.data_ptr() % 16 == 0 for cache in (k_cache, v_cache)) \
        and num_pages * page_size < 2 ** 31 and (num_kv_heads * head_dim * k_cache.element_size()) % 16 == 0


def pdl_possible(device: torch.device) -> bool:
    """Programmatic dependent launch needs a Hopper-class GPU (the interpreter has no grid control)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _tma_descriptor(cache: torch.Tensor, block_n: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    num_pages, page_size, num_kv_heads, head_dim = cache.shape
    rows = cache.view(num_pages * page_size, num_kv_heads * head_dim)
    return TensorDescriptor(base=rows, shape=list(rows.shape), strides=list(rows.stride()),
                            block_shape=[block_n, head_dim])


def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


# --------------------------------------------------------------------------------------------------
# Validation and launch
# --------------------------------------------------------------------------------------------------

def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, *,
                    max_q_len: int, max_kv_len: int, scale: float, out: torch.Tensor | None) -> None:
    """Raise ValueError naming the first argument that does not fit the canonical layout."""
    _check(q.dim() == 3, f"q must be [T, Hq, D], got shape {tuple(q.shape)}")
    _check(k_cache.dim() == 4, f"k_cache must be [num_pages, page_size, Hkv, D], got shape {tuple(k_cache.shape)}")
    _check(v_cache.shape == k_cache.shape,
           f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    _check(q.dtype in SUPPORTED_DTYPES, f"q dtype {q.dtype} is not one of {SUPPORTED_DTYPES}")
    _check(k_cache.dtype == q.dtype and v_cache.dtype == q.dtype,
           f"k_cache/v_cache dtypes {k_cache.dtype}/{v_cache.dtype} differ from q dtype {q.dtype}")
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    _check(k_cache.shape[3] == head_dim, f"k_cache head dim {k_cache.shape[3]} differs from q head dim {head_dim}")
    _check(MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM and head_dim % 8 == 0,
           f"head_dim={head_dim} must be a multiple of 8 in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    _check(num_kv_heads >= 1 and num_q_heads % num_kv_heads == 0,
           f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    _check(k_cache.shape[1] >= 1, f"page_size={k_cache.shape[1]} must be at least 1")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check(tensor.stride(-1) == 1, f"{name} must be contiguous in its last dim, stride {tensor.stride()}")
        _check(tensor.device == q.device, f"{name} is on {tensor.device}, q on {q.device}")
    _check(block_table.dim() == 2 and block_table.dtype == torch.int32,
           f"block_table must be [B, max_pages] int32, got {tuple(block_table.shape)} {block_table.dtype}")
    _check(block_table.stride(1) == 1, f"block_table must be contiguous in its last dim, stride {block_table.stride()}")
    num_seqs = block_table.shape[0]
    _check(cu_seqlens_q.shape == (num_seqs + 1,) and cu_seqlens_q.dtype == torch.int32,
           f"cu_seqlens_q must be [B + 1] = [{num_seqs + 1}] int32, got {tuple(cu_seqlens_q.shape)} {cu_seqlens_q.dtype}")
    _check(kv_lens.shape == (num_seqs,) and kv_lens.dtype == torch.int32,
           f"kv_lens must be [B] = [{num_seqs}] int32, got {tuple(kv_lens.shape)} {kv_lens.dtype}")
    for name, tensor in (("block_table", block_table), ("cu_seqlens_q", cu_seqlens_q), ("kv_lens", kv_lens)):
        _check(tensor.device == q.device, f"{name} is on {tensor.device}, q on {q.device}")
    _check(cu_seqlens_q.is_contiguous() and kv_lens.is_contiguous(), "cu_seqlens_q and kv_lens must be contiguous")
    _check(max_q_len >= 1, f"max_q_len={max_q_len} must be at least 1")
    _check(max_kv_len >= max_q_len, f"max_kv_len={max_kv_len} is below max_q_len={max_q_len}")
    _check(max_kv_len <= block_table.shape[1] * k_cache.shape[1],
           f"max_kv_len={max_kv_len} exceeds the block table's reach "
           f"{block_table.shape[1]} pages x {k_cache.shape[1]} = {block_table.shape[1] * k_cache.shape[1]}")
    _check(math.isfinite(scale) and scale > 0, f"scale={scale} must be a positive finite number")
    if out is not None:
        _check(out.shape == q.shape and out.dtype == q.dtype and out.device == q.device,
               f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
        _check(out.stride(-1) == 1, f"out must be contiguous in its last dim, stride {out.stride()}")


class PagedAttentionLauncher:
    """Bound arguments of one batch: ``__call__`` only launches (the attention kernel, then the
    merge kernel when keys are split) and returns ``out``. Build it outside any timed region."""

    def __init__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor,
                 out: torch.Tensor, *, causal: bool, scale: float, plan: LaunchPlan,
                 workspace: tuple[torch.Tensor, torch.Tensor] | None):
        num_tokens, num_q_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[2]
        split_kv = plan.num_splits > 1
        if split_kv and workspace is None:
            raise ValueError(f"plan splits keys {plan.num_splits} ways but no workspace was given")
        part_out, part_lse = workspace if split_kv else (out, out)
        if split_kv:
            _check(part_out.shape[0] >= plan.num_splits and part_out.shape[1:] == q.shape,
                   f"workspace partial outputs {tuple(part_out.shape)} do not fit {plan.num_splits} x {tuple(q.shape)}")
        po_strides = part_out.stride()[:3] if split_kv else (0, 0, 0)
        pl_strides = part_lse.stride()[:2] if split_kv else (0, 0)
        self.out = out
        self.plan = plan
        self._empty = num_tokens == 0
        common = dict(
            cu_seqlens_q_ptr=cu_seqlens_q, kv_lens_ptr=kv_lens,
            num_seqs=block_table.shape[0], num_q_blocks=plan.num_q_blocks, split_size=plan.split_size,
            stride_o_t=out.stride(0), stride_o_h=out.stride(1),
            stride_po_split=po_strides[0], stride_po_t=po_strides[1], stride_po_h=po_strides[2],
            stride_pl_split=pl_strides[0], stride_pl_t=pl_strides[1],
            NUM_KV_HEADS=num_kv_heads, GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim,
            BLOCK_D=_next_power_of_2(head_dim),
            BLOCK_M=plan.block_m, BLOCK_Q=plan.block_q, IS_CAUSAL=bool(causal),
            ONE_QUERY_PER_SEQ=plan.one_query_per_seq, LAUNCH_MERGE_EARLY=plan.launch_merge_early,
        )
        self._attn_grid = (plan.num_q_blocks * num_kv_heads, plan.num_splits)
        self._attn_args = dict(
            common, out_ptr=out, part_out_ptr=part_out, part_lse_ptr=part_lse,
            q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache,
            k_desc=_tma_descriptor(k_cache, plan.config.block_n) if plan.use_tma else None,
            v_desc=_tma_descriptor(v_cache, plan.config.block_n) if plan.use_tma else None,
            block_table_ptr=block_table,
            qk_scale=float(scale) * LOG2E,
            stride_q_t=q.stride(0), stride_q_h=q.stride(1),
            stride_k_page=k_cache.stride(0), stride_k_slot=k_cache.stride(1), stride_k_head=k_cache.stride(2),
            stride_v_page=v_cache.stride(0), stride_v_slot=v_cache.stride(1), stride_v_head=v_cache.stride(2),
            stride_bt_seq=block_table.stride(0),
            PAGE_SIZE=k_cache.shape[1], BLOCK_N=plan.config.block_n,
            SPLIT_KV=split_kv, TILE_IN_PAGE=plan.tile_in_page, USE_TMA=plan.use_tma,
            SHARED_ROWS=k_cache.stride()[:2] == v_cache.stride()[:2],
            OFFSETS_32=offsets_fit_int32(k_cache) and offsets_fit_int32(v_cache),
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=plan.config.num_warps, num_stages=plan.config.num_stages,
            **({"maxnreg": plan.config.max_registers} if plan.config.max_registers else {}),
        )
        self._merge_grid = (plan.num_q_blocks * num_kv_heads,)
        self._merge_args = dict(
            common, out_ptr=out, part_out_ptr=part_out, part_lse_ptr=part_lse, num_warps=4,
            **({"launch_pdl": True} if plan.launch_merge_early else {}),
        ) if split_kv else None

    def register_report(self) -> dict:
        """Registers per thread and spilled bytes of the attention kernel as compiled (after the first
        call; empty under the interpreter): what decides how many programs share a multiprocessor."""
        compiled = getattr(self, "_compiled", None)
        return {key: getattr(compiled, f"n_{key}") for key in ("regs", "spills") if hasattr(compiled, f"n_{key}")}

    def __call__(self) -> torch.Tensor:
        if self._empty:
            return self.out
        self._compiled = _paged_attention_kernel[self._attn_grid](**self._attn_args)
        if self._merge_args is not None:
            _merge_splits_kernel[self._merge_grid](**self._merge_args)
        return self.out


def prepare_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, *,
                            max_q_len: int, max_kv_len: int, causal: bool, scale: float,
                            out: torch.Tensor | None = None, config: KernelConfig | None = None,
                            num_splits: int | None = None,
                            launch_merge_early: bool | None = None) -> PagedAttentionLauncher:
    """Validate, plan and allocate (output and split workspace) once; the launcher only launches.
    ``launch_merge_early`` (None: wherever the device has programmatic dependent launch) can turn
    the early merge launch off, to measure what it gains."""
    validate_inputs(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens,
                    max_q_len=max_q_len, max_kv_len=max_kv_len, scale=scale, out=out)
    num_tokens, num_q_heads, head_dim = q.shape
    plan = plan_launch(num_tokens=num_tokens, num_seqs=block_table.shape[0], num_q_heads=num_q_heads,
                       num_kv_heads=k_cache.shape[2], head_dim=head_dim, page_size=k_cache.shape[1],
                       max_q_len=max_q_len, max_kv_len=max_kv_len, num_sms=multiprocessor_count(q.device),
                       config=config, num_splits=num_splits, tma_possible=tma_possible(q, k_cache, v_cache),
                       pdl_possible=launch_merge_early is not False and pdl_possible(q.device))
    if out is None:
        out = torch.empty_like(q)
    workspace = allocate_workspace(plan, num_tokens, num_q_heads, head_dim, q.device)
    return PagedAttentionLauncher(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens, out,
                                  causal=causal, scale=scale, plan=plan, workspace=workspace)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, *, max_q_len: int, max_kv_len: int,
                    causal: bool, scale: float, out: torch.Tensor | None = None,
                    config: KernelConfig | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Attention of packed queries ``q [T, Hq, D]`` over paged ``k_cache``/``v_cache``
    ``[num_pages, page_size, Hkv, D]`` -> ``[T, Hq, D]`` in q's dtype (written into ``out`` if given).

    ``max_q_len`` / ``max_kv_len`` are host-side upper bounds of the per-sequence lengths (they size
    the grid; the kernel reads the real lengths on the device, never synchronising). ``causal`` is
    bottom-right. ``config`` / ``num_splits`` override the tuned table and the split heuristic.
    For repeated calls on one batch, build a launcher once with ``prepare_paged_attention``.
    """
    return prepare_paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens,
                                   max_q_len=max_q_len, max_kv_len=max_kv_len, causal=causal,
                                   scale=scale, out=out, config=config, num_splits=num_splits)()
