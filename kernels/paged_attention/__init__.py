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

A mixed batch whose first sequences are decodes can run them apart (``num_decodes``): a decode
launch over those sequences and the long launch over the rest, on views of the same tensors
(``DecodesApartLauncher``), so that a decode does not take a whole long-bucket tile for one query.

Model features (``adapters/features.py``), each a constexpr switch that leaves the plain kernel's code
as it was when off: ``USE_WINDOW`` (a sliding window: tiles start at the first key tile a query of the
tile sees, key chunks count from there, the window's left edge is masked per element), ``SOFTCAP``
(``c * tanh(s / c)`` on each score), ``HAS_SINKS`` (a per-head logit in the softmax denominator and
the LSE, added once per row: where a tile is written directly, or in the merge) and ``KV_FP8`` (float8
e4m3 caches converted to q's dtype in registers; the program's K scale joins the score scale, its V
scale the output).

On an sm_90 GPU a long-query launch (more than 16 queries, keys unsplit, no fp8 cache)
runs ``hopper_prefill``'s warp-specialised Gluon kernel instead: a producer warp's TMA loads into a K/V ring,
two consumer warpgroups with asynchronous wgmma and registers moved to them (``setmaxnreg``); the launcher picks
it (``prepare_paged_attention(hopper_prefill=...)``). Gluon has no interpreter: on the CPU it is compiled for
sm_90, not run.

Modules: ``device`` (the @triton.jit code: one attention kernel with constexpr switches
``IS_CAUSAL``, ``SPLIT_KV``, ``TILE_IN_PAGE``, ``USE_TMA`` and the features', plus one merge kernel),
``hopper_prefill`` (the Gluon prefill kernel and its launcher), ``configs``
(``KernelConfig`` and the table keyed on head dim, page-size class and bucketed max query length;
``HopperPrefillConfig`` and the Gluon kernel's table by head dim),
``plan`` (tiles, grid and key split from host values), ``launch`` (validation and the launcher).
Measurements behind the table: ``docs/triton_kernel_notes.md``.
"""

from .configs import (CONFIG_TABLE, FEW_PROGRAMS_PER_SM, HOPPER_PREFILL_TABLE, TABLE_HEAD_DIMS, HopperPrefillConfig,
                      KernelConfig, config_key, page_class, query_bucket)
from .launch import (FP8_KV_DTYPE, INTERPRETER_SM_COUNT, LOG2E, MAX_HEAD_DIM, MIN_HEAD_DIM, SUPPORTED_DTYPES,
                     DecodesApartLauncher, PagedAttentionLauncher, interpreted, multiprocessor_count, offsets_fit_int32, paged_attention,
                     pdl_possible, prepare_paged_attention, tma_possible, validate_inputs)
from .plan import MAX_SPLITS, LaunchPlan, allocate_workspace, next_power_of_2, plan_launch, tile_key_span

__all__ = [
    "CONFIG_TABLE", "DecodesApartLauncher", "FEW_PROGRAMS_PER_SM", "HOPPER_PREFILL_TABLE", "HopperPrefillConfig", "FP8_KV_DTYPE", "INTERPRETER_SM_COUNT", "LOG2E", "MAX_HEAD_DIM", "MAX_SPLITS",
    "MIN_HEAD_DIM", "SUPPORTED_DTYPES", "TABLE_HEAD_DIMS", "KernelConfig", "LaunchPlan", "PagedAttentionLauncher",
    "allocate_workspace", "config_key", "interpreted", "multiprocessor_count", "next_power_of_2",
    "offsets_fit_int32", "page_class", "paged_attention", "pdl_possible", "plan_launch", "prepare_paged_attention",
    "query_bucket", "tile_key_span", "tma_possible", "validate_inputs",
]
