"""FlexAttention's paged path (torch): ``flex_attention`` compiled with ``torch.compile`` over a
physical cache, with a block mask that lists each query block's physical pages and a ``mask_mod``
that maps physical slots back to logical positions, as
``torch.nn.attention.experimental._paged_attention.PagedAttention`` does.

Two paths; ``notes["flex_path"]`` records which one a cell used:

- **batched** (every sequence has the same q_len: pure decode and uniform prefill) -- the layout
  gpt-fast-style servers use. One Flex batch row per sequence: q ``[B, Hq, q_len, D]`` (a view of the
  packed ``[T, Hq, D]`` rows), a *logical* block mask ``[B, 1, NQ, max_pages]`` (query blocks of
  `Q_BLOCK` rows, KV blocks of one page, built on the host by `logical_block_mask_indices`, with a
  ``mask_mod`` on logical positions: kv length and bottom-right causality) converted to physical pages
  by ``PagedAttention.convert_logical_block_mask`` through ``PagedAttention.page_table`` (the block
  table) and ``physical_to_logical``. Flex's own GQA decoding kernel serves ``q_len < 128``.
- **packed** (mixed batches, where no batched layout exists): one Flex "batch" of T query rows
  ``[1, Hq, T, D]`` (a view of ``[T, Hq, D]``), each row tagged with its sequence (document id) and
  logical position ``kv_len - q_len + i``. The block mask (`paged_block_mask_indices`) lists, per
  query block, the physical pages of every sequence present in it, split into "full" pages (every
  (query, key) pair visible: no mask evaluated) and "partial" ones; its ``mask_mod`` is
  ``PagedAttention.get_mask_mod``'s physical -> logical mapping indexed by the query's document
  instead of Flex's batch index, bounded by the kv length and bottom-right causality.
  ``convert_logical_block_mask`` does not apply: it maps a *batched* logical mask through
  ``page_table[b]``, which packed queries do not have.

Both read the physical caches as Flex's ``[1, Hkv, num_pages * page_size, D]``: our NHD pages viewed
through strides (``k_cache.view(1, N, Hkv, D).permute(0, 2, 1, 3)``); Flex only needs the last dim
contiguous, so this costs nothing. GQA through ``enable_gqa=True``. ``run`` returns ``(out, lse)``:
Flex's log-sum-exp is natural log (``return_aux=AuxRequest(lse=True)``, or ``return_lse`` on torch
versions without it); ``to_lse`` only reshapes it to ``[T, Hq]``.

``prepare`` builds the tables and the block mask and compiles/warms the kernel (compile seconds in
``notes["setup_s"]``); ``run`` calls the compiled ``flex_attention`` only. Compile failures seen on
the H100 (torch 2.11) are retried with Flex's own kernel options, recorded in
``notes["kernel_options"]`` and ``notes["compile_retries"]``:
- ``NoValidChoicesError``: for fewer than 128 query rows Flex picks its decoding kernel, which packs
  the GQA group into ``BLOCK_M = next_pow2(rows * group)``; above the 128-row query block no config is
  valid (mixed batches with GQA) -> ``FORCE_USE_FLEX_ATTENTION=True`` (the main kernel);
- "Q and KV block size must be divisible by BLOCK_M and BLOCK_N": the default KV tile is larger than
  the page -> ``BLOCK_N = page_size``;
- "out of resource: ... shared memory" (the main kernel's default config at page >= 64 under
  FORCE_USE_FLEX_ATTENTION; Triton advises smaller blocks or fewer stages) -> `SHARED_MEMORY_LADDER`.
A layout that Flex still cannot compile (e.g. a tile below Triton's minimum) becomes `Unsupported`
with Flex's / Triton's own message; other failures stay errors. Page size 1 is declined up front
(`PAGE_SIZE_ONE`): the compile failure there did not read as a refusal and showed as an error. On CPU it runs compiled
too (or eager, which materialises the scores, when constructed with ``compile=False``: used by the
CPU tests).

State lives on the adapter instance (the compiled function); dynamo's recompile limit is raised only
around the compiling calls in ``prepare`` (``torch._dynamo.config.patch``), never process-wide.

Model features (`MODEL_FEATURES`; read from torch 2.13's ``torch/nn/attention/flex_attention.py``, its
Inductor lowerings and its own tests), each the way FlexAttention's users write it:

- sliding window of W keys: in the mask_mod (``position - key < W`` beside causality, FlexAttention's
  sliding-window example on logical positions) and in the block mask: pages before every row's window are
  left out of a query block, pages wholly inside every row's window are "full" (`_page_split`), as
  ``create_block_mask`` would find them.
- soft-cap c: ``score_mod`` ``c * tanh(score / c)`` (the Gemma 2 example of the FlexAttention docs); Flex
  applies ``scale`` before score_mod, so the cap is on the scaled score, and its LSE is the capped scores'.
- fp8 (e4m3) cache: the fp8 pages go into flex_attention as K and V beside bf16/fp16 queries (torch accepts
  low-precision K/V, ``_validate_sdpa_input(..., allow_lowp_kv=True)``, and its Triton kernels upcast them to
  Q's dtype); the key scale multiplies the score in score_mod and the value scale the output, per query
  head (`head_scales`), as torch's own fp8 KV tests do (``flex_attention(q, k_fp8, v_fp8, score_mod) *
  value_scale`` with ``score * key_scale[b, h]``). The output multiply is part of ``run`` (timed). Inductor's
  CPU lowering refuses mixed dtypes ("Mixed query, key, and value dtype is not supported on this
  platform"): `Unsupported` in those words; eager Flex runs it on the CPU.
- sinks: declined (`FEATURE_REASONS`): flex_attention has no sink argument, and a per-head logit that
  enters only the denominator is not a score_mod or a mask_mod.
"""

from __future__ import annotations

import inspect
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from adapters.base import Adapter, Prepared, RunResult, Unsupported, register, split_result
from adapters.batch import BatchSpec, PagedBatch

Q_BLOCK = 128
"""Query rows per block-mask block (Flex's default SPARSE_Q_BLOCK_SIZE)."""
RECOMPILE_LIMIT = 512
"""Every new page size, head dim, dtype, head count or batch layout recompiles flex_attention; torch's
default limit of 8 would silently fall back to the eager (score-materialising) path after the 8th."""
PATH_BATCHED = "batched"
PATH_PACKED = "packed"
PAGE_SIZE_ONE = ("torch's FlexAttention cannot run page size 1: the block mask's KV block is one page, so Flex's "
                 "kernels tile the keys by BLOCK_N = 1 (its decoding kernel shrinks BLOCK_N to the KV block), which "
                 "Inductor fails to compile on the GPU (InductorError), and a CPU capability probe got wrong bf16 "
                 "outputs there")
"""Why `FlexPagedAdapter.supports` declines page size 1 (a layout of the block mask, not of the batch)."""

MODEL_FEATURES = frozenset({"sliding_window", "softcap", "fp8_kv"})
"""What this row passes to flex_attention: the window in the block mask and mask_mod, the soft-cap and an fp8
cache's key scale in score_mod, the cache itself as fp8 K/V (module docstring)."""
FEATURE_REASONS = {
    "sinks": ("torch.nn.attention.flex_attention has no sink argument (torch 2.11 to 2.13): score_mod rewrites the "
              "score of an existing (query, key) pair and mask_mod hides keys, and neither can add a term that "
              "enters the softmax denominator without a value; its aux outputs (AuxRequest: lse, max_scores) let a "
              "caller rescale the output by 1 / (1 + exp(sink - lse)) afterwards (as transformers' flex path does), "
              "a correction outside FlexAttention, not FlexAttention computing sinks"),
}
"""Why the row declines the features flex_attention lacks, in torch's terms."""
MIXED_DTYPE_REFUSALS = ("Mixed query, key, and value dtype is not supported",
                        "Expected query, key, and value to have the same dtype")
"""How flex_attention refuses K/V in another dtype than Q: Inductor's lowerings other than the Triton one
(CPU, CuTe flash) and, before torch accepted low-precision K/V, its input check."""


def feature_notes(spec: BatchSpec) -> dict[str, Any]:
    """What the row records of how each model feature of ``spec`` reaches flex_attention."""
    notes: dict[str, Any] = {}
    if spec.sliding_window is not None:
        notes["sliding_window"] = (f"block mask and mask_mod: position - key < {spec.sliding_window} "
                                   "(pages before every row's window left out)")
    if spec.softcap is not None:
        notes["softcap"] = f"score_mod: {spec.softcap:g} * tanh(score / {spec.softcap:g})"
    if spec.kv_dtype is not None:
        notes["fp8_kv"] = (f"{spec.kv_dtype} K/V into flex_attention; score_mod: score * k_scale[head]; "
                           f"output * v_scale[head] (per-{spec.kv_scale} scales)")
    return notes


def document_ids(q_lens: tuple[int, ...] | list[int]) -> torch.Tensor:
    """int32 [T]: the sequence each packed query row belongs to."""
    return torch.repeat_interleave(torch.arange(len(q_lens), dtype=torch.int32),
                                   torch.tensor(q_lens, dtype=torch.int64))


def query_positions(q_lens, kv_lens) -> torch.Tensor:
    """int32 [T]: each query's logical position among its sequence's keys, ``kv_len - q_len + i``."""
    return torch.cat([torch.arange(kv - q, kv, dtype=torch.int32) for q, kv in zip(q_lens, kv_lens)])


def physical_to_logical(block_table: torch.Tensor, pages_per_seq, num_pages: int) -> torch.Tensor:
    """int64 [B, num_pages]: logical page index of each physical page owned by sequence b, -1 elsewhere
    (PagedAttention.physical_to_logical)."""
    table = torch.full((block_table.shape[0], num_pages), -1, dtype=torch.int64, device=block_table.device)
    for seq, pages in enumerate(pages_per_seq):
        table[seq, block_table[seq, :pages].long()] = torch.arange(pages, device=block_table.device)
    return table


def logical_page_table(block_table: torch.Tensor, pages_per_seq, num_pages: int) -> torch.Tensor:
    """int64 [B, num_pages]: PagedAttention.page_table (logical page -> physical page, -1 unused)."""
    table = torch.full((block_table.shape[0], num_pages), -1, dtype=torch.int64, device=block_table.device)
    for seq, pages in enumerate(pages_per_seq):
        table[seq, :pages] = block_table[seq, :pages].long()
    return table


def is_uniform(spec: BatchSpec) -> bool:
    """Every sequence has the same q_len (pure decode, uniform prefill): the batched path applies."""
    return len(set(spec.q_lens)) == 1


INT32_MAX = 2**31 - 1


def large_cache_refusal(cache: torch.Tensor, device_type: str) -> str:
    """Why Flex is not launched over this cache, or "": on CUDA its kernel addresses the physical cache
    with 32-bit element offsets, so a cache past 2^31 elements is an illegal memory access (seen on
    the H200 with torch 2.11, which leaves the process's CUDA context unusable) -- declined up front."""
    if device_type != "cuda" or cache.numel() <= INT32_MAX:
        return ""
    return (f"FlexAttention's kernel (torch {torch.__version__}) indexes the cache with 32-bit offsets: a cache of "
            f"{cache.numel():,} elements (more than 2^31) is an illegal memory access on the GPU; declined before launch")


def flex_path(spec: BatchSpec) -> str:
    """Which path a batch takes: `PATH_BATCHED` for uniform q_len, `PATH_PACKED` otherwise."""
    return PATH_BATCHED if is_uniform(spec) else PATH_PACKED


@dataclass
class BlockMaskIndices:
    """The block-sparse structure Flex reads: kv_num_blocks/full_kv_num_blocks int32 [R, 1, NQ];
    kv_indices/full_kv_indices int32 [R, 1, NQ, width] (page ids, zero-padded past the count). The packed
    path has R = 1 row of NQ = ceil(T / q_block) blocks over physical pages (width = pool size); the
    batched path's logical mask has R = B rows of NQ = ceil(q_len / q_block) blocks over logical pages
    (width = max_pages)."""

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor

    def lists(self, q_block_index: int, row: int = 0) -> tuple[list[int], list[int]]:
        """(partial pages, full pages) of one query block of one row, for tests and debugging."""
        n = int(self.kv_num_blocks[row, 0, q_block_index])
        f = int(self.full_kv_num_blocks[row, 0, q_block_index])
        return (self.kv_indices[row, 0, q_block_index, :n].tolist(),
                self.full_kv_indices[row, 0, q_block_index, :f].tolist())


def _pack_lists(rows: list[list[list[int]]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and query block, page lists -> (counts int32 [R, 1, NQ], indices int32 [R, 1, NQ, width])."""
    num_rows, num_blocks = len(rows), len(rows[0])
    counts = torch.tensor([[len(pages) for pages in row] for row in rows], dtype=torch.int32).view(num_rows, 1, num_blocks)
    indices = torch.zeros(num_rows, 1, num_blocks, width, dtype=torch.int32)
    for r, row in enumerate(rows):
        for block, pages in enumerate(row):
            if pages:
                indices[r, 0, block, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
    return counts, indices


def _page_split(first_pos: int, last_pos: int, kv_len: int, page: int, causal: bool, one_sequence: bool,
                window: int | None = None) -> tuple[list[int], list[int]]:
    """(partial, full) logical pages of one sequence's query rows at positions first_pos..last_pos. The rows
    see keys ``[first_visible, last_visible]``: from ``first_pos - W + 1`` with a sliding window of W keys
    (else 0) to the last row's position (causal) or the last key; pages holding none of them are left out.
    A page is *full* when every row sees every key of it: it lies inside the kv length, (causal) its last
    key is at or before the first row's position and (window) its first key is inside the last row's
    window, ``> last_pos - W``. Only a block holding this sequence alone has full pages: another
    sequence's rows in it see none of them."""
    last_visible = last_pos if causal else kv_len - 1
    first_visible = max(0, first_pos - window + 1) if window is not None else 0
    first_page, end_page = first_visible // page, last_visible // page + 1
    full_lo = full_hi = first_page
    if one_sequence:
        bound = min(first_pos, kv_len - 1) if causal else kv_len - 1  # last key every row sees
        full_hi = max(first_page, min(end_page, (bound + 1) // page))
        full_lo = first_page if window is None else max(first_page, (last_pos - window) // page + 1)
        full_lo = min(full_lo, full_hi)
    return ([*range(first_page, full_lo), *range(full_hi, end_page)], list(range(full_lo, full_hi)))


def paged_block_mask_indices(spec: BatchSpec, block_table: torch.Tensor, q_block: int = Q_BLOCK) -> BlockMaskIndices:
    """Packed path: per query block of the T packed rows, the physical pages it must visit, split into
    full and partial.

    A page is *full* for a block when every row of the block belongs to one sequence, the page lies
    entirely inside that sequence's kv length, (causal) its last key is visible to the block's first
    query and (sliding window) its first key to the block's last query; pages a row may see but that are
    not full are *partial*; pages no row sees (past the last row's position, or before the first row's
    window) are left out (`_page_split`).
    """
    table = block_table.cpu().tolist()
    total = spec.total_q
    num_q_blocks = math.ceil(total / q_block)
    partial: list[list[int]] = [[] for _ in range(num_q_blocks)]
    full: list[list[int]] = [[] for _ in range(num_q_blocks)]
    start = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        context = kv_len - q_len
        end = start + q_len  # rows [start, end)
        for block in range(start // q_block, (end - 1) // q_block + 1):
            block_lo, block_hi = block * q_block, min((block + 1) * q_block, total)
            row_lo, row_hi = max(start, block_lo), min(end, block_hi)  # this sequence's rows in the block
            part, whole = _page_split(context + row_lo - start, context + row_hi - 1 - start, kv_len,
                                      spec.page_size, spec.causal, start <= block_lo and end >= block_hi,
                                      spec.sliding_window)
            full[block].extend(table[seq][i] for i in whole)
            partial[block].extend(table[seq][i] for i in part)
        start = end
    kv_num_blocks, kv_indices = _pack_lists([partial], spec.num_pages)
    full_kv_num_blocks, full_kv_indices = _pack_lists([full], spec.num_pages)
    return BlockMaskIndices(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)


def logical_block_mask_indices(spec: BatchSpec, q_block: int = Q_BLOCK) -> BlockMaskIndices:
    """Batched path: the *logical* block mask, one row per sequence (every q_len equal): per query block
    of the row's q_len queries, the logical pages (0..max_pages-1) it visits, full and partial by the
    same rule as `paged_block_mask_indices` (each row holds one sequence, so pages can be full).
    ``PagedAttention.convert_logical_block_mask`` maps them to physical pages."""
    if not is_uniform(spec):
        raise ValueError(f"the batched Flex layout needs one q_len for every sequence, got {sorted(set(spec.q_lens))}")
    q_len = spec.q_lens[0]
    num_q_blocks = math.ceil(q_len / q_block)
    partial: list[list[list[int]]] = []
    full: list[list[list[int]]] = []
    for kv_len in spec.kv_lens:
        context = kv_len - q_len
        row_partial, row_full = [], []
        for block in range(num_q_blocks):
            lo, hi = block * q_block, min((block + 1) * q_block, q_len)
            part, whole = _page_split(context + lo, context + hi - 1, kv_len, spec.page_size, spec.causal, True,
                                      spec.sliding_window)
            row_full.append(whole)
            row_partial.append(part)
        partial.append(row_partial)
        full.append(row_full)
    kv_num_blocks, kv_indices = _pack_lists(partial, spec.max_pages)
    full_kv_num_blocks, full_kv_indices = _pack_lists(full, spec.max_pages)
    return BlockMaskIndices(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)


def make_mask_mod(doc: torch.Tensor, query_pos: torch.Tensor, phys_to_logical: torch.Tensor,
                  kv_lens: torch.Tensor, page_size: int, causal: bool, window: int | None = None):
    """Packed path: mask_mod(b, h, q_idx, physical_kv_idx) -> bool: the physical slot holds a key of the
    query's own sequence, inside its kv length, and (causal) at or before the query's logical position p;
    with a sliding window of W keys also after ``p - W`` (Flex's own sliding-window mask_mod,
    ``q_idx - kv_idx < W`` on the causal mask, on logical positions)."""

    def paged_document_mask(b, h, q_idx, kv_idx):
        seq = doc[q_idx]
        logical_page = phys_to_logical[seq, kv_idx // page_size]
        logical_idx = logical_page * page_size + kv_idx % page_size
        return (logical_page >= 0) & (logical_idx < kv_lens[seq])

    def paged_document_causal_mask(b, h, q_idx, kv_idx):
        seq = doc[q_idx]
        logical_page = phys_to_logical[seq, kv_idx // page_size]
        logical_idx = logical_page * page_size + kv_idx % page_size
        return (logical_page >= 0) & (logical_idx < kv_lens[seq]) & (logical_idx <= query_pos[q_idx])

    def paged_document_sliding_window_mask(b, h, q_idx, kv_idx):
        seq = doc[q_idx]
        logical_page = phys_to_logical[seq, kv_idx // page_size]
        logical_idx = logical_page * page_size + kv_idx % page_size
        position = query_pos[q_idx]
        return ((logical_page >= 0) & (logical_idx < kv_lens[seq]) & (logical_idx <= position)
                & (position - logical_idx < window))

    if window is not None:
        if not causal:
            raise ValueError("a sliding window needs causal attention")
        return paged_document_sliding_window_mask
    return paged_document_causal_mask if causal else paged_document_mask


def make_logical_mask_mod(kv_lens: torch.Tensor, q_len: int, causal: bool, window: int | None = None):
    """Batched path: mask_mod(b, h, q_idx, logical_kv_idx) -> bool on logical positions (what
    ``PagedAttention.get_mask_mod`` wraps): the key lies inside row b's kv length and (causal,
    bottom-right) at or before query q_idx's position ``p = kv_len - q_len + q_idx``; with a sliding
    window of W keys also after ``p - W``. Negative indices (slots of pages the row does not own) are
    refused by the wrapper and by the bounds here."""

    def logical_mask(b, h, q_idx, kv_idx):
        return (kv_idx >= 0) & (kv_idx < kv_lens[b])

    def logical_causal_mask(b, h, q_idx, kv_idx):
        kv_len = kv_lens[b]
        return (kv_idx >= 0) & (kv_idx < kv_len) & (kv_idx <= q_idx + kv_len - q_len)

    def logical_sliding_window_mask(b, h, q_idx, kv_idx):
        kv_len = kv_lens[b]
        position = q_idx + kv_len - q_len
        return (kv_idx >= 0) & (kv_idx < kv_len) & (kv_idx <= position) & (position - kv_idx < window)

    if window is not None:
        if not causal:
            raise ValueError("a sliding window needs causal attention")
        return logical_sliding_window_mask
    return logical_causal_mask if causal else logical_mask


def head_scales(scale: torch.Tensor, num_q_heads: int, num_kv_heads: int) -> torch.Tensor:
    """float32 ``[Hq]``: the fp8 cache scale each query head's keys (or values) carry, from one scale per
    tensor (``[1]``) or one per KV head (``[Hkv]``; query head h reads KV head ``h // (Hq // Hkv)``)."""
    scale = scale.float().reshape(-1)
    if scale.numel() == 1:
        return scale.expand(num_q_heads).contiguous()
    if scale.numel() != num_kv_heads:
        raise ValueError(f"{scale.numel()} scales for {num_kv_heads} KV heads")
    return scale.repeat_interleave(num_q_heads // num_kv_heads).contiguous()


def make_score_mod(softcap: float | None = None, k_scale: torch.Tensor | None = None):
    """Flex's ``score_mod(score, b, h, q_idx, kv_idx)`` for the batch's features, or None when it has none.
    ``score`` arrives scaled (``scale * q.k``, Flex applies ``scale`` first). An fp8 cache's key scale
    (``k_scale``: float32 ``[Hq]``, `head_scales`) multiplies it first, as torch's own fp8 KV tests
    dequantise keys inside the score computation (``score * key_scale[b, h]``); then the soft-cap
    ``c * tanh(score / c)``, the Gemma 2 logit soft-capping example of the FlexAttention docs."""
    if softcap is None and k_scale is None:
        return None
    cap = float(softcap) if softcap is not None else None

    def dequantised(score, b, h, q_idx, kv_idx):
        return score * k_scale[h]

    def soft_cap(score, b, h, q_idx, kv_idx):
        score = score / cap
        score = torch.tanh(score)
        return score * cap

    def dequantised_soft_cap(score, b, h, q_idx, kv_idx):
        score = score * k_scale[h] / cap
        score = torch.tanh(score)
        return score * cap

    if cap is None:
        return dequantised
    return soft_cap if k_scale is None else dequantised_soft_cap


def batched_query_view(q: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Packed ``[T, Hq, D]`` rows of a uniform batch as Flex's ``[B, Hq, q_len, D]`` (a view)."""
    total, heads, dim = q.shape
    if total % batch_size:
        raise ValueError(f"{total} packed rows do not split into {batch_size} equal sequences")
    return q.view(batch_size, total // batch_size, heads, dim).transpose(1, 2)


def physical_cache_view(cache: torch.Tensor) -> torch.Tensor:
    """NHD pages ``[N, P, Hkv, D]`` as Flex's ``[1, Hkv, N * P, D]`` (a view by strides)."""
    pages, page_size, heads, dim = cache.shape
    return cache.view(1, pages * page_size, heads, dim).permute(0, 2, 1, 3)


def packed_output(out: torch.Tensor) -> torch.Tensor:
    """Flex's ``[R, Hq, L, D]`` output as the packed ``[R * L, Hq, D]`` rows. One row (the packed path)
    or one query per row (decode): always a view. Several rows of several queries: a view when Flex
    wrote the output in the query's ``[R, L, Hq, D]`` memory order (it keeps the query's stride order),
    else a copy (``notes["output_copy"]`` says which)."""
    rows, heads, length, dim = out.shape
    if rows == 1:
        return out[0].transpose(0, 1)
    return out.transpose(1, 2).reshape(rows * length, heads, dim)


def packed_lse(lse: torch.Tensor) -> torch.Tensor:
    """Flex's ``[R, Hq, L]`` log-sum-exp (natural log) as the canonical ``[R * L, Hq]`` float32."""
    rows, heads, length = lse.shape
    return lse.float().transpose(1, 2).reshape(rows * length, heads)


def _innermost(error: BaseException) -> BaseException:
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def _reason(error: BaseException) -> str:
    """Type and first line of the innermost error, plus its last line when that says more (Triton's
    CompilationError puts the source position first and the failed assertion last)."""
    inner = _innermost(error)
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    if not lines:
        return type(inner).__name__
    text = lines[0]
    tail = next((line for line in reversed(lines) if "TORCHDYNAMO_VERBOSE" not in line and "TORCH_LOGS" not in line), "")
    if tail and tail != text and len(lines) > 1:
        text = f"{text} ... {tail}"
    return f"{type(inner).__name__}: {text}"


SHARED_MEMORY_LADDER: tuple[dict[str, int], ...] = ({"num_stages": 2}, {"BLOCK_N": 32}, {"BLOCK_N": 16})
"""Kernel options tried in turn when Triton reports the shared memory exceeded, as its message advises;
BLOCK_N 16 fits at D 128 and 256 in bf16/fp16 on the H100 (seen: page 16 runs with it)."""


def _smaller_tile(options: dict[str, Any], page_size: int) -> dict[str, int] | None:
    """The next step of `SHARED_MEMORY_LADDER` that changes ``options``, or None when none is left."""
    for step in SHARED_MEMORY_LADDER:
        if "num_stages" in step and options.get("num_stages", 99) > step["num_stages"]:
            return step
        if "BLOCK_N" in step and options.get("BLOCK_N", 1 << 30) > step["BLOCK_N"] and page_size % step["BLOCK_N"] == 0:
            return step
    return None


_REFUSAL_TYPES = ("ValueError", "NotImplementedError", "OutOfResources")
"""Flex's own validation errors and Triton's resource limit (shared memory): a decline of the layout.
Anything else raised while compiling (a code-generation crash) stays an error."""


def _is_fatal(error: BaseException) -> bool:
    """Out of memory, or dynamo's recompile limit: never a property of the layout."""
    text = str(error)
    return bool(re.search(r"\brecompil", text)) or "out of memory" in text.lower()


def _is_compile_refusal(error: BaseException) -> bool:
    names = {type(error).__name__, type(_innermost(error)).__name__}
    text = str(error)
    if _is_fatal(error):
        return False
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return (bool(names & set(_REFUSAL_TYPES)) or "must be divisible" in text or "out of resource" in text
            or any(f"{name}:" in first_line for name in _REFUSAL_TYPES))


def dynamo_settings() -> dict[str, Any]:
    """The dynamo config entries `prepare` patches around its compiling calls: a recompile limit of
    `RECOMPILE_LIMIT` (named ``recompile_limit`` or, in older torch, ``cache_size_limit``) and a hard
    failure instead of the silent eager fallback when it is hit."""
    config = torch._dynamo.config
    settings: dict[str, Any] = {}
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            settings[name] = max(getattr(config, name), RECOMPILE_LIMIT)
            break
    if hasattr(config, "accumulated_recompile_limit"):
        settings["accumulated_recompile_limit"] = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    if hasattr(config, "fail_on_recompile_limit_hit"):
        settings["fail_on_recompile_limit_hit"] = True  # never fall back to eager silently
    return settings


def _lse_request() -> dict[str, Any]:
    """Keyword arguments that make flex_attention return ``(out, lse)`` with a natural-log LSE:
    ``return_aux=AuxRequest(lse=True)`` where torch has it, else the older ``return_lse=True``."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}


def _split_flex_result(result: Any) -> tuple[torch.Tensor, torch.Tensor]:
    out, aux = result
    lse = getattr(aux, "lse", aux)
    return out, lse


@dataclass
class _FlexLayout:
    """What one path hands flex_attention: q ``[R, Hq, L, D]`` and the physical block mask."""

    query: torch.Tensor
    block_mask: Any
    notes: dict[str, Any]


@register
class FlexPagedAdapter(Adapter):
    """FlexAttention over the paged cache: batched rows for uniform batches, packed rows otherwise
    (module docstring)."""

    name = "flex-paged"
    disk_compile_cache = True
    devices = ("cuda", "cpu")
    packages = ("torch", "triton")
    model_features = MODEL_FEATURES
    feature_reasons = FEATURE_REASONS

    def __init__(self, compile: bool | None = None):
        self.compile = compile
        """None: compiled everywhere; False: eager (materialises scores; CPU tests only)."""
        self._compiled: Callable[..., Any] | None = None
        self._no_lse: dict[tuple[str, bool], str] = {}
        """(device type, compiled) -> why Flex returned no LSE there (asked once per adapter)."""

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
        try:
            from torch.nn.attention.experimental._paged_attention import PagedAttention  # noqa: F401
            from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
        except Exception as error:  # noqa: BLE001
            return False, f"torch {torch.__version__} has no FlexAttention paged path: {type(error).__name__}: {error}"
        if device.type == "cuda":
            try:
                import triton  # noqa: F401
            except Exception as error:  # noqa: BLE001
                return False, f"compiled FlexAttention needs triton: {type(error).__name__}: {error}"
        return True, ""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if spec.num_q_heads % spec.num_kv_heads:
            return False, "Expect number of query heads to be a multiple of kv heads for GQA"
        if spec.page_size == 1:
            return False, PAGE_SIZE_ONE
        return True, ""

    def versions(self) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        try:
            import triton
            versions["triton"] = triton.__version__
        except Exception:  # noqa: BLE001 - CPU machines may have no triton
            pass
        return versions

    def close(self) -> None:
        self._compiled = None
        self._no_lse.clear()

    def _flex(self, compiled: bool) -> Callable[..., Any]:
        from torch.nn.attention.flex_attention import flex_attention

        if not compiled:
            return flex_attention
        if self._compiled is None:
            self._compiled = torch.compile(flex_attention, fullgraph=True, dynamic=False)
        return self._compiled

    @staticmethod
    def _paged_attention(batch: PagedBatch):
        """``PagedAttention`` holding the batch's block table: page_table, physical_to_logical, capacity."""
        from torch.nn.attention.experimental._paged_attention import PagedAttention

        spec, device = batch.spec, batch.device
        num_pages = batch.k_cache.shape[0]
        paged = PagedAttention(n_pages=num_pages, page_size=spec.page_size, max_batch_size=spec.batch_size,
                               device=str(device))
        paged.page_table.copy_(logical_page_table(batch.block_table, spec.pages_per_seq, num_pages))
        paged.physical_to_logical.copy_(physical_to_logical(batch.block_table, spec.pages_per_seq, num_pages))
        paged.capacity.copy_(torch.tensor(spec.pages_per_seq, device=device) * spec.page_size)
        if hasattr(paged, "seq_lens"):  # torch versions whose get_mask_mod bounds by PagedAttention.seq_lens
            paged.seq_lens.copy_(batch.kv_lens.to(paged.seq_lens.dtype))
        owned = set(batch.block_table.cpu().flatten().tolist())
        paged.empty_pages = [p for p in range(num_pages - 1, -1, -1) if p not in owned]
        return paged

    def _batched_layout(self, batch: PagedBatch) -> _FlexLayout:
        from torch.nn.attention.flex_attention import BlockMask

        spec, device = batch.spec, batch.device
        paged = self._paged_attention(batch)
        q_len = spec.q_lens[0]
        indices = logical_block_mask_indices(spec)
        logical = BlockMask.from_kv_blocks(
            indices.kv_num_blocks.to(device), indices.kv_indices.to(device),
            indices.full_kv_num_blocks.to(device), indices.full_kv_indices.to(device),
            BLOCK_SIZE=(Q_BLOCK, spec.page_size), mask_mod=make_logical_mask_mod(batch.kv_lens, q_len, spec.causal, spec.sliding_window),
            seq_lengths=(q_len, spec.max_pages * spec.page_size), compute_q_blocks=False,
        )
        convert_args: dict[str, Any] = {}
        if "kv_len" in inspect.signature(paged.convert_logical_block_mask).parameters:
            convert_args["kv_len"] = batch.kv_lens
        batch_idx = torch.arange(spec.batch_size, device=device)
        physical = paged.convert_logical_block_mask(logical, batch_idx, **convert_args)
        return _FlexLayout(batched_query_view(batch.q, spec.batch_size), physical,
                           {"entry_point": "PagedAttention.convert_logical_block_mask + flex_attention"})

    def _packed_layout(self, batch: PagedBatch) -> _FlexLayout:
        from torch.nn.attention.flex_attention import BlockMask

        spec, device = batch.spec, batch.device
        paged = self._paged_attention(batch)
        mask_mod = make_mask_mod(document_ids(spec.q_lens).to(device),
                                 query_positions(spec.q_lens, spec.kv_lens).to(device),
                                 paged.physical_to_logical, batch.kv_lens, spec.page_size, spec.causal,
                                 spec.sliding_window)
        indices = paged_block_mask_indices(spec, batch.block_table)
        num_pages = batch.k_cache.shape[0]
        if indices.kv_indices.shape[-1] != num_pages:
            raise ValueError(f"the cache holds {num_pages} pages, the spec {spec.num_pages}")
        block_mask = BlockMask.from_kv_blocks(
            indices.kv_num_blocks.to(device), indices.kv_indices.to(device),
            indices.full_kv_num_blocks.to(device), indices.full_kv_indices.to(device),
            BLOCK_SIZE=(Q_BLOCK, spec.page_size), mask_mod=mask_mod,
            seq_lengths=(spec.total_q, num_pages * spec.page_size), compute_q_blocks=False,
        )
        return _FlexLayout(batch.q.transpose(0, 1).unsqueeze(0), block_mask,
                           {"entry_point": "flex_attention (packed rows, document mask)"})

    def prepare(self, batch: PagedBatch) -> Prepared:
        spec, device = batch.spec, batch.device
        too_large = large_cache_refusal(batch.k_cache, device.type)
        if too_large:
            raise Unsupported(too_large)
        path = flex_path(spec)
        started = time.perf_counter()
        layout = self._batched_layout(batch) if path == PATH_BATCHED else self._packed_layout(batch)
        mask_s = time.perf_counter() - started

        key = physical_cache_view(batch.k_cache)
        value = physical_cache_view(batch.v_cache)
        compiled = self.compile is not False
        flex = self._flex(compiled)
        lse_request = _lse_request()
        query, block_mask = layout.query, layout.block_mask
        notes: dict[str, Any] = {"flex_path": path, "compiled": compiled, "block_mask_s": round(mask_s, 4),
                                 "q_block": Q_BLOCK, "kv_block": spec.page_size, **layout.notes,
                                 **feature_notes(spec)}
        k_heads = v_heads = None
        if batch.k_scale is not None:  # fp8 cache: keys dequantised in score_mod, values on the output
            k_heads = head_scales(batch.k_scale, spec.num_q_heads, spec.num_kv_heads)
            v_heads = head_scales(batch.v_scale, spec.num_q_heads, spec.num_kv_heads).view(1, -1, 1, 1)
        score_mod = make_score_mod(spec.softcap, k_heads)

        def finish(out: torch.Tensor) -> torch.Tensor:
            if v_heads is not None:
                out = out.mul_(v_heads)  # torch's fp8 KV pattern: flex_attention(...) * value_scale
            return packed_output(out)

        def launcher(kernel_options: dict[str, Any] | None, with_lse: bool) -> Callable[[], RunResult]:
            def run() -> RunResult:
                if not with_lse:
                    return finish(flex(query, key, value, score_mod=score_mod, block_mask=block_mask,
                                       scale=spec.scale, enable_gqa=True, kernel_options=kernel_options))
                out, lse = _split_flex_result(flex(query, key, value, score_mod=score_mod, block_mask=block_mask,
                                                   scale=spec.scale, enable_gqa=True, kernel_options=kernel_options,
                                                   **lse_request))
                return finish(out), lse  # lse [R, Hq, L]: to_lse makes it [T, Hq]

            if compiled:
                return run

            def eager_run() -> RunResult:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Flex warns that eager materialises the scores
                    return run()

            return eager_run

        started = time.perf_counter()
        options: dict[str, Any] = {}
        attempts: list[str] = []
        lse_note = self._no_lse.get((device.type, compiled), "")
        with torch._dynamo.config.patch(**dynamo_settings()):
            while True:
                run = launcher(dict(options) or None, not lse_note)
                try:
                    out, _ = split_result(run())
                    break
                except Exception as error:  # noqa: BLE001 - compile failures are retried or classified below
                    text = str(error)
                    attempts.append(f"{options or 'default'}: {_reason(error)[:200]}")
                    if not lse_note and "return_lse" in text and "not supported" in text:
                        # Inductor's CPU lowering of Flex: "torch.compile on CPU only supports inference and
                        # `return_lse` is not supported yet": time the output alone, say why there is no LSE.
                        lse_note = f"FlexAttention here cannot return the log-sum-exp: {_reason(error)[:200]}"
                        self._no_lse[(device.type, compiled)] = lse_note
                        continue
                    if compiled and "NoValidChoicesError" in text and "FORCE_USE_FLEX_ATTENTION" not in options:
                        # Flex's decoding kernel (chosen for < 128 query rows) packs the GQA group into
                        # BLOCK_M = next_pow2(rows * group); above the 128-row query block it has no valid config.
                        options["FORCE_USE_FLEX_ATTENTION"] = True
                        continue
                    if compiled and "must be divisible" in text and "BLOCK_N" not in options:
                        # The default KV tile is larger than a page (the block mask's KV block).
                        options["BLOCK_N"] = spec.page_size
                        continue
                    step = _smaller_tile(options, spec.page_size) if compiled and "out of resource" in text else None
                    if step:
                        # Triton: "out of resource: ... shared memory ... Reducing block sizes or `num_stages` may help."
                        options.update(step)
                        continue
                    if spec.kv_dtype is not None and any(words in text for words in MIXED_DTYPE_REFUSALS):
                        raise Unsupported(f"FlexAttention (torch {torch.__version__}, "
                                          f"{'compiled' if compiled else 'eager'} on {device.type}) does not take "
                                          f"{spec.kv_dtype} K/V with {spec.dtype} queries: {_reason(error)}") from error
                    self._raise_refusal(error, spec, options, attempts)
        if attempts:
            notes["compile_retries"] = attempts
        if options:
            notes["kernel_options"] = dict(options)
        notes["output_copy"] = out._base is None  # True: run() copies Flex's output into packed rows
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        notes["setup_s"] = round(mask_s + time.perf_counter() - started, 4)
        if lse_note:
            return Prepared(run=run, notes=notes, lse_note=lse_note)
        return Prepared(run=run, notes=notes, to_lse=packed_lse)

    @staticmethod
    def _raise_refusal(error: BaseException, spec: BatchSpec, options: dict[str, Any], attempts: list[str]) -> None:
        tile_retry = "BLOCK_N" in options
        if _is_compile_refusal(error) or (tile_retry and not _is_fatal(error)):
            # A failure with BLOCK_N = page size means Flex cannot tile this page size (Triton's dot needs
            # tiles of at least 16): a decline of the layout, recorded with Flex's / Triton's own words.
            tried = f" with kernel_options {options}" if options else ""
            why = (f"its KV tile must divide the page (block mask KV block = page) and BLOCK_N={spec.page_size} "
                   f"does not compile: " if tile_retry else "")
            raise Unsupported(f"FlexAttention cannot run page size {spec.page_size}, D {spec.head_dim}, "
                              f"{spec.dtype}{tried}: {why}{_reason(error)}; attempts: {' | '.join(attempts)}") from error
        raise error
