"""Device code: the attention kernel, the split-merge kernel and their @triton.jit helpers.

Shapes and the work decomposition are described in the package docstring. Strides that address
whole tensors are declared ``tl.int64`` in the kernel signatures, so every offset built from them
is 64-bit without casts in the body. The page and slot strides of the caches are left to Triton
(int32 for any real cache): with ``OFFSETS_32`` the host has checked that every cache offset fits
in int32 and the key loop multiplies in int32 (cheaper address math, fewer registers); otherwise
``_kv_rows`` widens the page id and the slot before multiplying. Triton's interpreter ignores the
annotations (it types integers by value), which changes nothing for the tiny CPU tests.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

LN2: tl.constexpr = tl.constexpr(math.log(2.0))
"""ln(2): turns a log2-sum-exp into the natural-log one the LSE output holds."""
LOG2E: tl.constexpr = tl.constexpr(1.0 / math.log(2.0))
"""log2(e): turns a natural-log sink logit into the kernel's log2 units."""
TWO_LOG2E: tl.constexpr = tl.constexpr(2.0 / math.log(2.0))
"""2 log2(e): ``e^(2x) = 2^(x * TWO_LOG2E)`` (tanh)."""


# --------------------------------------------------------------------------------------------------
# Which tile a program owns
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
    seq_idx = _find_sequence(cu_seqlens_q_ptr, q_block=q_block, num_seqs=num_seqs, BLOCK_Q=BLOCK_Q)
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
def _tile_window_bounds(tile_start, q_len, kv_len, window, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """(kv_first, kv_all_lo) of a tile under a sliding window of ``window`` keys (query at position p
    sees keys ``p - window < j <= p``): ``kv_first`` is the first key tile (a multiple of BLOCK_N) that
    holds a key some query of the tile sees, so every tile before it is skipped; keys from
    ``kv_all_lo`` on are inside every query's window (the window's left edge needs no mask there)."""
    context = kv_len - q_len
    last_query = tl.minimum(tile_start + BLOCK_Q, q_len) - 1
    first_key = tl.maximum(tile_start + context - window + 1, 0)
    kv_first = (first_key // BLOCK_N) * BLOCK_N
    kv_all_lo = tl.maximum(last_query + context - window + 1, 0)
    return kv_first, kv_all_lo


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
def _store_lse(lse_ptr,  # [T, Hq] fp32, contiguous
               row_token, row_head, row_valid, lse2, NUM_Q_HEADS: tl.constexpr):
    """Store each row's log-sum-exp, given in the log2 domain (``lse2``, the kernel's units), as a
    natural log: ``lse[token, head] = ln(sum_j exp(scale * q . k_j))`` over the row's visible keys."""
    tl.store(lse_ptr + row_token * NUM_Q_HEADS + row_head, lse2 * LN2, mask=row_valid)


# --------------------------------------------------------------------------------------------------
# K/V tiles and the key loop
# --------------------------------------------------------------------------------------------------

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
def _kv_rows(block_table_row_ptr,  # [max_pages] int32, this sequence's row
             start_n, keys, key_valid, stride_page, stride_slot,
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
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr,
              KV_FP8: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """K^T tile ``[BLOCK_D, BLOCK_N]``: one TMA load at row ``rows`` of the cache viewed
    ``[pages * PAGE_SIZE, Hkv * D]`` (the tile inside one page), or per-thread pointer loads at
    element offsets ``rows``. Keys past the end read as zero (pointers) or are masked later.
    ``KV_FP8``: the cache holds float8 e4m3, converted here (in registers, exactly) to the query's
    dtype ``COMPUTE_DTYPE``; its scale is applied to the scores, not to the tile."""
    if USE_TMA:
        k = k_desc.load([rows, head_col])
        if KV_FP8:
            k = k.to(COMPUTE_DTYPE)
        k = tl.trans(k)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        k_ptrs = k_cache_ptr + k_head_offset + rows[None, :] + offs_d[:, None]
        k = _load(k_ptrs, key_valid[None, :], (offs_d < HEAD_DIM)[:, None],
                  USE_A=MASKED, USE_B=HEAD_DIM != BLOCK_D)
        if KV_FP8:
            k = k.to(COMPUTE_DTYPE)
    return k


@triton.jit
def _value_tile(v_cache_ptr, v_desc, key_valid, rows, v_head_offset, head_col,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr,
                KV_FP8: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """V tile ``[BLOCK_N, BLOCK_D]`` (TMA at row ``rows``, or pointers at offsets ``rows``); in
    masked tiles the rows past the end are zero (slots past the end of the last page may hold
    anything, NaN included). ``KV_FP8``: converted to ``COMPUTE_DTYPE`` as in ``_key_tile``; the V
    scale is applied to the output."""
    if USE_TMA:
        v = v_desc.load([rows, head_col])
        if KV_FP8:
            v = v.to(COMPUTE_DTYPE)
        if MASKED:
            v = tl.where(key_valid[:, None], v, 0.0)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        v_ptrs = v_cache_ptr + v_head_offset + rows[:, None] + offs_d[None, :]
        v = _load(v_ptrs, key_valid[:, None], (offs_d < HEAD_DIM)[None, :],
                  USE_A=MASKED, USE_B=HEAD_DIM != BLOCK_D)
        if KV_FP8:
            v = v.to(COMPUTE_DTYPE)
    return v


@triton.jit
def _tanh(x):
    """tanh from one exp2 (no tanh in triton.language; libdevice and PTX ``tanh.approx`` do not run
    under the interpreter): ``1 - 2 / (1 + e^(2x))``, exactly +-1 where e^(2x) over- or underflows."""
    return 1.0 - 2.0 / (1.0 + tl.math.exp2(x * TWO_LOG2E))


@triton.jit
def _softmax_update(acc, l_i, m_i, qk, v, keys, key_valid, row_limit, qk_scale, softcap_in, window,
                    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    SOFTCAP: tl.constexpr, USE_WINDOW: tl.constexpr):
    """One online-softmax step: fold the scores ``qk`` of ``keys`` and their values into
    (acc, l_i, m_i). Scores are in the log2 domain (``qk_scale = scale * log2(e)``); masked tiles
    drop keys that are not ``key_valid``, causal, past each row's last visible key and, with
    ``USE_WINDOW``, at or before ``row_limit - window``. ``SOFTCAP``: the score becomes
    ``c * tanh(s / c)``: ``qk`` is first mapped to ``tanh(qk * softcap_in)`` (``softcap_in = scale / c``)
    and ``qk_scale`` is then ``c * log2(e)``."""
    if SOFTCAP:
        qk = _tanh(qk * softcap_in)
    if MASKED:
        visible = key_valid[None, :]
        if IS_CAUSAL:
            visible = visible & (keys[None, :] <= row_limit[:, None])
        if USE_WINDOW:
            visible = visible & (keys[None, :] > (row_limit - window)[:, None])
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
                 kv_lo, kv_hi, kv_len, row_limit, qk_scale, softcap_in, window,
                 k_head_offset, v_head_offset, head_col,
                 stride_k_page, stride_k_slot, stride_v_page, stride_v_slot,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 PAGE_SIZE: tl.constexpr, TILE_IN_PAGE: tl.constexpr, USE_TMA: tl.constexpr,
                 MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 SHARED_ROWS: tl.constexpr, OFFSETS_32: tl.constexpr, SOFTCAP: tl.constexpr,
                 USE_WINDOW: tl.constexpr, KV_FP8: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """Online softmax over keys ``[kv_lo, kv_hi)`` in steps of BLOCK_N (``kv_lo`` a multiple of it).

    ``MASKED`` tiles apply the key-length, causal and window masks (the window's left edge, the
    diagonal and the last tile); unmasked ones are known fully visible. ``SHARED_ROWS``: K and V
    have the same page and slot strides, so one page lookup per key serves both.
    """
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        key_valid = keys < kv_len
        if USE_TMA:  # one row of the [pages * PAGE_SIZE, Hkv * D] view serves K and V
            page = tl.load(block_table_row_ptr + start_n // PAGE_SIZE)
            k_rows = page * PAGE_SIZE + start_n % PAGE_SIZE
            v_rows = k_rows
        else:
            k_rows = _kv_rows(block_table_row_ptr, start_n=start_n, keys=keys, key_valid=key_valid,
                              stride_page=stride_k_page, stride_slot=stride_k_slot, PAGE_SIZE=PAGE_SIZE,
                              TILE_IN_PAGE=TILE_IN_PAGE, MASKED=MASKED, OFFSETS_32=OFFSETS_32)
            if SHARED_ROWS:
                v_rows = k_rows
            else:
                v_rows = _kv_rows(block_table_row_ptr, start_n=start_n, keys=keys, key_valid=key_valid,
                                  stride_page=stride_v_page, stride_slot=stride_v_slot, PAGE_SIZE=PAGE_SIZE,
                                  TILE_IN_PAGE=TILE_IN_PAGE, MASKED=MASKED, OFFSETS_32=OFFSETS_32)
        k = _key_tile(k_cache_ptr, k_desc, key_valid=key_valid, rows=k_rows, k_head_offset=k_head_offset,
                      head_col=head_col, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, USE_TMA=USE_TMA, MASKED=MASKED,
                      KV_FP8=KV_FP8, COMPUTE_DTYPE=COMPUTE_DTYPE)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        v = _value_tile(v_cache_ptr, v_desc, key_valid=key_valid, rows=v_rows, v_head_offset=v_head_offset,
                        head_col=head_col, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, USE_TMA=USE_TMA, MASKED=MASKED,
                        KV_FP8=KV_FP8, COMPUTE_DTYPE=COMPUTE_DTYPE)
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, qk=qk, v=v, keys=keys, key_valid=key_valid,
                                        row_limit=row_limit, qk_scale=qk_scale, softcap_in=softcap_in,
                                        window=window, MASKED=MASKED, IS_CAUSAL=IS_CAUSAL,
                                        DOT_PRECISION=DOT_PRECISION, SOFTCAP=SOFTCAP, USE_WINDOW=USE_WINDOW)
    return acc, l_i, m_i


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

@triton.jit
def _fold_sink(acc, l_i, m_i, sinks_ptr, row_head, row_valid):
    """Add each row's sink logit (natural log, ``sinks[head]``) to the softmax denominator: the running
    max moves to ``max(m_i, sink)`` in log2 units, ``l_i`` gains ``2^(sink - m)``, ``acc`` gets no value
    from it. Once per row: where a tile is written directly, or in the merge of its chunks."""
    sink2 = tl.load(sinks_ptr + row_head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
    m_new = tl.maximum(m_i, sink2)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.math.exp2(sink2 - m_new)
    acc = acc * alpha[:, None]
    return acc, l_i, m_new


@triton.jit
def _paged_attention_kernel(
    out_ptr,  # [T, Hq, D] output, q's dtype
    lse_ptr,  # [T, Hq] fp32 log-sum-exp of each row (WRITE_LSE), else None
    part_out_ptr,  # [num_splits, T, Hq, D] fp32 partial outputs (SPLIT_KV only)
    part_lse_ptr,  # [num_splits, T, Hq] fp32 partial log2-sum-exp (SPLIT_KV only)
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [num_pages, PAGE_SIZE, Hkv, D], q's dtype or float8 e4m3 (KV_FP8)
    v_cache_ptr,  # [num_pages, PAGE_SIZE, Hkv, D]
    k_desc,  # TMA descriptor of k_cache viewed [num_pages * PAGE_SIZE, Hkv * D] (USE_TMA), else None
    v_desc,  # the same over v_cache
    block_table_ptr,  # [B, max_pages] int32
    cu_seqlens_q_ptr,  # [B + 1] int32
    kv_lens_ptr,  # [B] int32
    sinks_ptr,  # [Hq] fp32 sink logits, natural log (HAS_SINKS), else None
    k_scale_ptr,  # [1] or [Hkv] fp32 (KV_FP8), else None: true K = k_cache * k_scale
    v_scale_ptr,  # the same for V
    qk_scale,  # scale * log2(e); with SOFTCAP, softcap * log2(e)
    softcap_in,  # scale / softcap (SOFTCAP only)
    window,  # keys of the sliding window (USE_WINDOW only)
    stride_scale,  # 0: one scale per tensor, 1: one per KV head (KV_FP8 only)
    num_seqs, num_q_blocks, split_size,
    stride_q_t: tl.int64, stride_q_h: tl.int64,
    stride_k_page, stride_k_slot, stride_k_head: tl.int64,  # page and slot: see the module docstring
    stride_v_page, stride_v_slot, stride_v_head: tl.int64,
    stride_bt_seq: tl.int64,
    stride_o_t: tl.int64, stride_o_h: tl.int64,
    stride_po_split: tl.int64, stride_po_t: tl.int64, stride_po_h: tl.int64,
    stride_pl_split: tl.int64, stride_pl_t: tl.int64,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, SPLIT_KV: tl.constexpr, TILE_IN_PAGE: tl.constexpr, USE_TMA: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ONE_QUERY_PER_SEQ: tl.constexpr, SHARED_ROWS: tl.constexpr,
    OFFSETS_32: tl.constexpr, LAUNCH_MERGE_EARLY: tl.constexpr, WRITE_LSE: tl.constexpr,
    USE_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr, KV_FP8: tl.constexpr,
):
    """One program: one tile (BLOCK_Q queries x the GROUP heads of one KV head) and, with SPLIT_KV,
    one chunk of ``split_size`` keys. Grid: (num_q_blocks * Hkv, num_splits). With WRITE_LSE a tile
    written directly also writes its rows' log-sum-exp; split tiles leave it to the merge kernel.

    Model features, each a constexpr switch (off, the code is the plain kernel's): ``USE_WINDOW``
    starts the keys at the first tile a query of this tile sees (chunks count from there) and masks
    the window's left edge; ``SOFTCAP`` caps each score; ``HAS_SINKS`` adds the head's sink logit to
    the denominator (and LSE) once, where the row's result is final; ``KV_FP8`` converts float8 K/V
    tiles to q's dtype in registers, folds the program's K scale into the score scale and
    multiplies the output by its V scale."""
    if LAUNCH_MERGE_EARLY:  # the merge kernel may start now; it waits for this grid before reading
        tl.extra.cuda.gdc_launch_dependents()
    flat_idx = tl.program_id(0)
    kv_head = flat_idx % NUM_KV_HEADS
    q_block = num_q_blocks - 1 - flat_idx // NUM_KV_HEADS  # last (heaviest) tiles first
    split_idx = tl.program_id(1)

    seq_idx, q_start, q_len, kv_len, tile_start = _locate_tile(
        cu_seqlens_q_ptr, kv_lens_ptr, q_block=q_block, num_seqs=num_seqs, BLOCK_Q=BLOCK_Q,
        ONE_QUERY_PER_SEQ=ONE_QUERY_PER_SEQ)
    if tile_start >= q_len:
        return
    kv_full, kv_end = _tile_key_bounds(tile_start, q_len, kv_len, BLOCK_Q=BLOCK_Q, IS_CAUSAL=IS_CAUSAL)
    if USE_WINDOW:
        kv_first, kv_all_lo = _tile_window_bounds(tile_start, q_len, kv_len, window, BLOCK_Q=BLOCK_Q,
                                                  BLOCK_N=BLOCK_N)
        if SPLIT_KV:
            kv_lo = kv_first + split_idx * split_size
            kv_hi = tl.minimum(kv_end, kv_lo + split_size)
            num_tile_splits = tl.cdiv(kv_end - kv_first, split_size)
        else:
            kv_lo = kv_first
            kv_hi = kv_end
            num_tile_splits = 1
    else:
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
    if USE_WINDOW:
        # keys before kv_unmasked_lo are outside some row's window: a masked pass of their own first
        kv_unmasked_lo = tl.minimum(tl.maximum(tl.cdiv(kv_all_lo, BLOCK_N) * BLOCK_N, kv_lo), kv_hi)
        kv_mid = tl.maximum(tl.minimum((kv_full // BLOCK_N) * BLOCK_N, kv_hi), kv_unmasked_lo)
    else:
        kv_mid = tl.maximum(tl.minimum((kv_full // BLOCK_N) * BLOCK_N, kv_hi), kv_lo)

    row_query, row_head, row_valid = _tile_rows(tile_start, q_len, kv_head, GROUP=GROUP, BLOCK_M=BLOCK_M,
                                                BLOCK_Q=BLOCK_Q)
    row_token = (q_start + row_query).to(tl.int64)
    row_limit = row_query + (kv_len - q_len)  # last key each row may see (causal)
    offs_d = tl.arange(0, BLOCK_D)
    row_d_mask = row_valid[:, None] & (offs_d < HEAD_DIM)[None, :]

    q_ptrs = q_ptr + (row_token * stride_q_t + row_head * stride_q_h)[:, None] + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_d_mask, other=0.0)

    block_table_row_ptr = block_table_ptr + seq_idx * stride_bt_seq
    k_head_offset = kv_head * stride_k_head
    v_head_offset = kv_head * stride_v_head
    head_col = kv_head * HEAD_DIM  # column of this head in the TMA view
    if KV_FP8:  # one scale per program: K's joins the score scale (inside the cap), V's the output
        k_scale = tl.load(k_scale_ptr + kv_head * stride_scale)
        if SOFTCAP:
            softcap_in = softcap_in * k_scale
        else:
            qk_scale = qk_scale * k_scale

    # m_i starts finite so that a row with every key masked keeps p = 0 and alpha = 1 (no NaN)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if USE_WINDOW:  # the window's left edge, masked
        acc, l_i, m_i = _attend_keys(
            acc, l_i, m_i, q, k_cache_ptr=k_cache_ptr, v_cache_ptr=v_cache_ptr, k_desc=k_desc, v_desc=v_desc,
            block_table_row_ptr=block_table_row_ptr, kv_lo=kv_lo, kv_hi=kv_unmasked_lo, kv_len=kv_len,
            row_limit=row_limit, qk_scale=qk_scale, softcap_in=softcap_in, window=window,
            k_head_offset=k_head_offset, v_head_offset=v_head_offset,
            head_col=head_col, stride_k_page=stride_k_page, stride_k_slot=stride_k_slot,
            stride_v_page=stride_v_page, stride_v_slot=stride_v_slot, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D,
            BLOCK_N=BLOCK_N, PAGE_SIZE=PAGE_SIZE, TILE_IN_PAGE=TILE_IN_PAGE, USE_TMA=USE_TMA,
            MASKED=True, IS_CAUSAL=IS_CAUSAL, DOT_PRECISION=DOT_PRECISION,
            SHARED_ROWS=SHARED_ROWS, OFFSETS_32=OFFSETS_32, SOFTCAP=SOFTCAP, USE_WINDOW=USE_WINDOW,
            KV_FP8=KV_FP8, COMPUTE_DTYPE=q.dtype)
        kv_lo = kv_unmasked_lo

    # two passes, unrolled at compile time: keys every row sees, with no mask; then the diagonal
    # and the ragged end, masked (MASKED is a constexpr in each copy)
    for masked_part in tl.static_range(2):
        if masked_part == 0:
            part_lo = kv_lo
            part_hi = kv_mid
        else:
            part_lo = kv_mid
            part_hi = kv_hi
        acc, l_i, m_i = _attend_keys(
            acc, l_i, m_i, q, k_cache_ptr=k_cache_ptr, v_cache_ptr=v_cache_ptr, k_desc=k_desc, v_desc=v_desc,
            block_table_row_ptr=block_table_row_ptr, kv_lo=part_lo, kv_hi=part_hi, kv_len=kv_len,
            row_limit=row_limit, qk_scale=qk_scale, softcap_in=softcap_in, window=window,
            k_head_offset=k_head_offset, v_head_offset=v_head_offset,
            head_col=head_col, stride_k_page=stride_k_page, stride_k_slot=stride_k_slot,
            stride_v_page=stride_v_page, stride_v_slot=stride_v_slot, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D,
            BLOCK_N=BLOCK_N, PAGE_SIZE=PAGE_SIZE, TILE_IN_PAGE=TILE_IN_PAGE, USE_TMA=USE_TMA,
            MASKED=masked_part == 1, IS_CAUSAL=IS_CAUSAL, DOT_PRECISION=DOT_PRECISION,
            SHARED_ROWS=SHARED_ROWS, OFFSETS_32=OFFSETS_32, SOFTCAP=SOFTCAP, USE_WINDOW=USE_WINDOW,
            KV_FP8=KV_FP8, COMPUTE_DTYPE=q.dtype)

    if KV_FP8:  # sum_j p_j (v_j * s) = s * sum_j p_j v_j
        acc = acc * tl.load(v_scale_ptr + kv_head * stride_scale)
    if HAS_SINKS:  # once per row: here where the tile is written directly; partial results leave it out
        if num_tile_splits <= 1:
            acc, l_i, m_i = _fold_sink(acc, l_i, m_i, sinks_ptr, row_head, row_valid)
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
        if WRITE_LSE:
            _store_lse(lse_ptr, row_token, row_head, row_valid, lse2=m_i + tl.math.log2(l_safe),
                       NUM_Q_HEADS=NUM_KV_HEADS * GROUP)


@triton.jit
def _merge_splits_kernel(
    out_ptr,  # [T, Hq, D] output, q's dtype
    lse_ptr,  # [T, Hq] fp32 log-sum-exp of each row (WRITE_LSE), else None
    part_out_ptr,  # [num_splits, T, Hq, D] fp32
    part_lse_ptr,  # [num_splits, T, Hq] fp32
    cu_seqlens_q_ptr,  # [B + 1] int32
    kv_lens_ptr,  # [B] int32
    sinks_ptr,  # [Hq] fp32 sink logits, natural log (HAS_SINKS), else None
    window,  # keys of the sliding window (USE_WINDOW only)
    num_seqs, num_q_blocks, split_size,
    stride_o_t: tl.int64, stride_o_h: tl.int64,
    stride_po_split: tl.int64, stride_po_t: tl.int64, stride_po_h: tl.int64,
    stride_pl_split: tl.int64, stride_pl_t: tl.int64,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
    ONE_QUERY_PER_SEQ: tl.constexpr, LAUNCH_MERGE_EARLY: tl.constexpr, WRITE_LSE: tl.constexpr,
    USE_WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """Merge the key chunks of every tile that was split, with log-sum-exp weights (and, with
    WRITE_LSE, write the rows' total log-sum-exp). Same tiles and grid axis 0 as the attention
    kernel; tiles with a single chunk were written directly: skipped. With USE_WINDOW a tile's
    chunks count from its first visible key tile, as in the attention kernel; with HAS_SINKS the
    row's sink logit joins the weights here (the partial results leave it out), with no value.
    With LAUNCH_MERGE_EARLY (programmatic dependent launch) it starts while the attention kernel
    runs and waits for that grid to finish before it reads a partial result."""
    flat_idx = tl.program_id(0)
    kv_head = flat_idx % NUM_KV_HEADS
    q_block = num_q_blocks - 1 - flat_idx // NUM_KV_HEADS

    seq_idx, q_start, q_len, kv_len, tile_start = _locate_tile(
        cu_seqlens_q_ptr, kv_lens_ptr, q_block=q_block, num_seqs=num_seqs, BLOCK_Q=BLOCK_Q,
        ONE_QUERY_PER_SEQ=ONE_QUERY_PER_SEQ)
    if tile_start >= q_len:
        return
    kv_full, kv_end = _tile_key_bounds(tile_start, q_len, kv_len, BLOCK_Q=BLOCK_Q, IS_CAUSAL=IS_CAUSAL)
    if USE_WINDOW:
        kv_first, kv_all_lo = _tile_window_bounds(tile_start, q_len, kv_len, window, BLOCK_Q=BLOCK_Q,
                                                  BLOCK_N=BLOCK_N)
        num_tile_splits = tl.cdiv(kv_end - kv_first, split_size)
    else:
        num_tile_splits = tl.cdiv(kv_end, split_size)
    if num_tile_splits <= 1:
        return

    row_query, row_head, row_valid = _tile_rows(tile_start, q_len, kv_head, GROUP=GROUP, BLOCK_M=BLOCK_M,
                                                BLOCK_Q=BLOCK_Q)
    row_token = (q_start + row_query).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    row_d_mask = row_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    po_rows = row_token * stride_po_t + row_head * stride_po_h
    pl_rows = row_token * stride_pl_t + row_head

    if LAUNCH_MERGE_EARLY:
        tl.extra.cuda.gdc_wait()
    lse_max = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    if HAS_SINKS:
        sink2 = tl.load(sinks_ptr + row_head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
        lse_max = tl.maximum(lse_max, sink2)
    for split in range(0, num_tile_splits):
        lse = tl.load(part_lse_ptr + split * stride_pl_split + pl_rows,
                      mask=row_valid, other=float("-inf"))
        lse_max = tl.maximum(lse_max, lse)
    weight_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_SINKS:  # the sink's share of the denominator, with no value
        weight_sum += tl.math.exp2(sink2 - lse_max)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for split in range(0, num_tile_splits):
        lse = tl.load(part_lse_ptr + split * stride_pl_split + pl_rows,
                      mask=row_valid, other=float("-inf"))
        weight = tl.math.exp2(lse - lse_max)
        part = tl.load(part_out_ptr + split * stride_po_split
                       + po_rows[:, None] + offs_d[None, :], mask=row_d_mask, other=0.0)
        acc += weight[:, None] * part
        weight_sum += weight
    weight_safe = tl.where(weight_sum > 0.0, weight_sum, 1.0)  # 0 only in rows past the end
    out = acc / weight_safe[:, None]
    o_ptrs = out_ptr + (row_token * stride_o_t + row_head * stride_o_h)[:, None] + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_d_mask)
    if WRITE_LSE:
        _store_lse(lse_ptr, row_token, row_head, row_valid, lse2=lse_max + tl.math.log2(weight_safe),
                   NUM_Q_HEADS=NUM_KV_HEADS * GROUP)
