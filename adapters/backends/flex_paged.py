"""FlexAttention's paged path (torch): ``flex_attention`` compiled with ``torch.compile`` over a
physical cache, with a block mask that lists each query block's physical pages and a ``mask_mod``
that maps physical slots back to logical positions, as
``torch.nn.attention.experimental._paged_attention.PagedAttention`` does.

Layout:
- Queries stay packed: one Flex "batch" of T query rows ``[1, Hq, T, D]`` (a view of ``[T, Hq, D]``),
  each row tagged with its sequence (document id) and its logical position ``kv_len - q_len + i``.
- The physical caches are Flex's ``[1, Hkv, num_pages * page_size, D]``: our NHD pages viewed through
  strides (``k_cache.view(1, N, Hkv, D).permute(0, 2, 1, 3)``). Flex only needs the last dim
  contiguous, so this costs nothing, neither in prepare nor in the timed call.
- The block mask has query blocks of `Q_BLOCK` (128) rows and KV blocks of one page, the
  granularity `PagedAttention.convert_logical_block_mask` requires (``BLOCK_SIZE[1] == page_size``).
  Per query block it lists the physical pages of every sequence present in it, split into
  "full" pages (every (query, key) pair visible: no mask evaluated) and "partial" ones (the mask_mod
  decides). Built on the host in prepare (`paged_block_mask_indices`).
- The mask_mod is `PagedAttention.get_mask_mod`'s mapping (physical page -> logical page through
  ``physical_to_logical``), indexed by the query's document instead of Flex's batch index (all our
  queries are Flex batch 0), then bounded by the sequence's kv length and bottom-right causality.
  ``PagedAttention.convert_logical_block_mask`` is not used: it maps a *batched* logical block mask
  ``[B, H, rows, blocks]`` through ``page_table[b]``, which packed queries do not have.
- GQA through ``enable_gqa=True``.

``prepare`` builds the tables and the block mask and compiles/warms the kernel (compile seconds in
``notes["setup_s"]``); ``run`` calls the compiled ``flex_attention`` only. Two compile failures seen
on the H100 (torch 2.11) are retried with Flex's own kernel options, recorded in
``notes["kernel_options"]`` and ``notes["compile_retries"]``:
- ``NoValidChoicesError``: for fewer than 128 query rows Flex picks its decoding kernel, which packs
  the GQA group into ``BLOCK_M = next_pow2(T * group)``; above the 128-row query block no config is
  valid (mixed batches with GQA) -> ``FORCE_USE_FLEX_ATTENTION=True`` (the main kernel);
- "Q and KV block size must be divisible by BLOCK_M and BLOCK_N": the default KV tile is larger than
  the page -> ``BLOCK_N = page_size``;
- "out of resource: ... shared memory" (the main kernel's default config at page >= 64 under
  FORCE_USE_FLEX_ATTENTION; Triton advises smaller blocks or fewer stages) -> `SHARED_MEMORY_LADDER`.
A layout that Flex still cannot compile (e.g. a tile below Triton's minimum) becomes `Unsupported`
with Flex's / Triton's own message; other failures stay errors. On CPU it runs compiled too (or eager,
which materialises the scores, when constructed with ``compile=False``: used by the CPU tests).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from adapters.base import Adapter, Prepared, Unsupported, register
from adapters.batch import BatchSpec, PagedBatch

Q_BLOCK = 128
"""Query rows per block-mask block (Flex's default SPARSE_Q_BLOCK_SIZE)."""
RECOMPILE_LIMIT = 512
"""Every new page size, head dim, dtype or head count recompiles flex_attention; torch's default limit
of 8 would silently fall back to the eager (score-materialising) path after the 8th."""

_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


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


@dataclass
class BlockMaskIndices:
    """The block-sparse structure Flex reads (batch and head dims of 1 broadcast):
    kv_num_blocks/full_kv_num_blocks int32 [1, 1, NQ]; kv_indices/full_kv_indices int32 [1, 1, NQ, num_pages]
    (physical page ids, zero-padded past the count; NQ = ceil(T / q_block))."""

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor

    def lists(self, q_block_index: int) -> tuple[list[int], list[int]]:
        """(partial pages, full pages) of one query block, for tests and debugging."""
        n = int(self.kv_num_blocks[0, 0, q_block_index])
        f = int(self.full_kv_num_blocks[0, 0, q_block_index])
        return (self.kv_indices[0, 0, q_block_index, :n].tolist(),
                self.full_kv_indices[0, 0, q_block_index, :f].tolist())


def paged_block_mask_indices(spec: BatchSpec, block_table: torch.Tensor, q_block: int = Q_BLOCK) -> BlockMaskIndices:
    """Per query block, the physical pages it must visit, split into full and partial (see module docstring).

    A page is *full* for a block when every row of the block belongs to one sequence, the page lies
    entirely inside that sequence's kv length and (causal) its last key is visible to the block's
    first query; pages a row may see but that are not full are *partial*; pages no row sees are left out.
    """
    table = block_table.cpu().tolist()
    page = spec.page_size
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
            first_pos, last_pos = context + row_lo - start, context + row_hi - 1 - start
            last_visible = last_pos if spec.causal else kv_len - 1
            visited = last_visible // page + 1
            if start <= block_lo and end >= block_hi:  # the block holds this sequence's rows only
                fully_inside = kv_len // page
                num_full = min(visited, fully_inside, (first_pos + 1) // page if spec.causal else fully_inside)
            else:
                num_full = 0
            full[block].extend(table[seq][:num_full])
            partial[block].extend(table[seq][num_full:visited])
        start = end

    def pack(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.tensor([len(pages) for pages in lists], dtype=torch.int32).view(1, 1, -1)
        indices = torch.zeros(1, 1, num_q_blocks, spec.num_pages, dtype=torch.int32)
        for block, pages in enumerate(lists):
            if pages:
                indices[0, 0, block, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        return counts, indices

    kv_num_blocks, kv_indices = pack(partial)
    full_kv_num_blocks, full_kv_indices = pack(full)
    return BlockMaskIndices(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)


def make_mask_mod(doc: torch.Tensor, query_pos: torch.Tensor, phys_to_logical: torch.Tensor,
                  kv_lens: torch.Tensor, page_size: int, causal: bool):
    """mask_mod(b, h, q_idx, physical_kv_idx) -> bool: the physical slot holds a key of the query's own
    sequence, inside its kv length, and (causal) at or before the query's logical position."""

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

    return paged_document_causal_mask if causal else paged_document_mask


def _flex_function(compiled: bool) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if "compiled" not in _COMPILED:
        config = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
                break
        if hasattr(config, "accumulated_recompile_limit"):
            config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
        if hasattr(config, "fail_on_recompile_limit_hit"):
            config.fail_on_recompile_limit_hit = True  # never fall back to eager silently
        _COMPILED["compiled"] = torch.compile(flex_attention, fullgraph=True, dynamic=False)
    return _COMPILED["compiled"]


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


@register
class FlexPagedAdapter(Adapter):
    """FlexAttention over the paged cache, packed queries (module docstring)."""

    name = "flex-paged"
    devices = ("cuda", "cpu")

    def __init__(self, compile: bool | None = None):
        self.compile = compile
        """None: compiled everywhere; False: eager (materialises scores; CPU tests only)."""

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type not in self.devices:
            return False, f"FlexAttention paged adapter runs on {', '.join(self.devices)}, not {device.type}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return False, "CUDA is not available"
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
        return True, ""

    def versions(self) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        try:
            import triton
            versions["triton"] = triton.__version__
        except Exception:  # noqa: BLE001 - CPU machines may have no triton
            pass
        return versions

    def prepare(self, batch: PagedBatch) -> Prepared:
        from torch.nn.attention.experimental._paged_attention import PagedAttention
        from torch.nn.attention.flex_attention import BlockMask

        spec, device = batch.spec, batch.device
        started = time.perf_counter()
        paged = PagedAttention(n_pages=spec.num_pages, page_size=spec.page_size, max_batch_size=spec.batch_size,
                               device=str(device))
        paged.page_table.copy_(logical_page_table(batch.block_table, spec.pages_per_seq, spec.num_pages))
        paged.physical_to_logical.copy_(physical_to_logical(batch.block_table, spec.pages_per_seq, spec.num_pages))
        paged.capacity.copy_(torch.tensor(spec.pages_per_seq, device=device) * spec.page_size)
        owned = set(batch.block_table.cpu().flatten().tolist())
        paged.empty_pages = [p for p in range(spec.num_pages - 1, -1, -1) if p not in owned]

        mask_mod = make_mask_mod(document_ids(spec.q_lens).to(device),
                                 query_positions(spec.q_lens, spec.kv_lens).to(device),
                                 paged.physical_to_logical, batch.kv_lens, spec.page_size, spec.causal)
        indices = paged_block_mask_indices(spec, batch.block_table)
        physical_len = spec.num_pages * spec.page_size
        block_mask = BlockMask.from_kv_blocks(
            indices.kv_num_blocks.to(device), indices.kv_indices.to(device),
            indices.full_kv_num_blocks.to(device), indices.full_kv_indices.to(device),
            BLOCK_SIZE=(Q_BLOCK, spec.page_size), mask_mod=mask_mod,
            seq_lengths=(spec.total_q, physical_len), compute_q_blocks=False,
        )
        mask_s = time.perf_counter() - started

        query = batch.q.transpose(0, 1).unsqueeze(0)  # [1, Hq, T, D], a view
        key = batch.k_cache.view(1, physical_len, spec.num_kv_heads, spec.head_dim).permute(0, 2, 1, 3)
        value = batch.v_cache.view(1, physical_len, spec.num_kv_heads, spec.head_dim).permute(0, 2, 1, 3)
        compiled = self.compile is not False
        flex = _flex_function(compiled)
        notes: dict[str, Any] = {"compiled": compiled, "block_mask_s": round(mask_s, 4),
                                 "q_block": Q_BLOCK, "kv_block": spec.page_size}

        def launcher(kernel_options: dict[str, Any] | None) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                out = flex(query, key, value, block_mask=block_mask, scale=spec.scale, enable_gqa=True,
                           kernel_options=kernel_options)
                return out[0].transpose(0, 1)  # [T, Hq, D], a view

            if compiled:
                return run

            def eager_run() -> torch.Tensor:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Flex warns that eager materialises the scores
                    return run()

            return eager_run

        started = time.perf_counter()
        options: dict[str, Any] = {}
        attempts: list[str] = []
        while True:
            run = launcher(dict(options) or None)
            try:
                run()
                break
            except Exception as error:  # noqa: BLE001 - compile failures are retried or classified below
                text = str(error)
                attempts.append(f"{options or 'default'}: {_reason(error)[:200]}")
                if compiled and "NoValidChoicesError" in text and "FORCE_USE_FLEX_ATTENTION" not in options:
                    # Flex's decoding kernel (chosen for < 128 query rows) packs the GQA group into BLOCK_M =
                    # next_pow2(T * group); above the 128-row query block it has no valid config.
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
                self._raise_refusal(error, spec, options, attempts)
        if attempts:
            notes["compile_retries"] = attempts
        if options:
            notes["kernel_options"] = dict(options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        notes["setup_s"] = round(mask_s + time.perf_counter() - started, 4)
        return Prepared(run=run, notes=notes)

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
