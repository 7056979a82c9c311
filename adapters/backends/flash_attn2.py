"""flash-attn 2 over the paged cache: ``flash_attn_varlen_func`` with ``block_table`` for every batch,
and for pure-decode batches (every q_len == 1) also ``flash_attn_with_kvcache``; both are timed in
``prepare`` and the faster is kept (``notes["entry_point"]`` says which, ``notes["entry_point_us"]``
the medians that decided it).

Arguments: packed q ``[T, Hq, D]`` and the NHD caches as they are; ``cu_seqlens_q`` (B+1, int32);
``cu_seqlens_k`` the cumulative **kv** lengths (B+1, int32; FA3/FA4's ``seqused_k`` is a different
argument, do not cross-wire); causal is bottom-right in flash-attn 2, as here. The decode entry point
takes q as ``[B, 1, Hq, D]`` (a view of the packed rows) and ``cache_seqlens = kv_lens``.

Limits checked up front (flash-attn's own words where it has them): page size a multiple of 256,
fp16/bf16 only, head dim <= 256 and a multiple of 8, SM80 or newer.
"""

from __future__ import annotations

import os
import time

import torch

from adapters.base import Adapter, Prepared, register
from adapters.batch import BatchSpec, PagedBatch

PAGE_SIZE_MULTIPLE = 256
MAX_HEAD_DIM = 256
ENTRY_VARLEN = "flash_attn_varlen_func"
ENTRY_KVCACHE = "flash_attn_with_kvcache"
SELECTION_TARGET_MS = 5.0
"""Time spent timing each candidate entry point in prepare (CUDA events, harness.timer)."""


def cumulative_kv_lengths(kv_lens: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens_k``: int32 [B + 1], 0 then the running sum of the kv lengths."""
    cu = torch.zeros(kv_lens.numel() + 1, dtype=torch.int32, device=kv_lens.device)
    cu[1:] = torch.cumsum(kv_lens.to(torch.int32), 0)
    return cu


def decode_query_view(q: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Packed decode queries [T = B, Hq, D] as ``flash_attn_with_kvcache``'s [B, 1, Hq, D] (a view)."""
    if q.shape[0] != batch_size:
        raise ValueError(f"decode view needs one query per sequence: T = {q.shape[0]}, B = {batch_size}")
    return q.view(batch_size, 1, q.shape[1], q.shape[2])


def is_pure_decode(spec: BatchSpec) -> bool:
    return all(q_len == 1 for q_len in spec.q_lens)


@register
class FlashAttn2Adapter(Adapter):
    name = "flash-attn2"
    packages = ("flash-attn", "flash_attn")

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, "flash-attn runs on CUDA devices only"
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        try:
            import flash_attn
            from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: F401 - loads the extension
        except Exception as error:  # noqa: BLE001 - any import failure is the reason
            return False, f"cannot import flash_attn: {type(error).__name__}: {error}"
        if not str(flash_attn.__version__).startswith("2."):
            return False, f"this adapter calls the flash-attn 2 API; found flash_attn {flash_attn.__version__}"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return False, f"FlashAttention only supports Ampere GPUs or newer (this GPU is SM{major}{minor})"
        return True, ""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if spec.page_size % PAGE_SIZE_MULTIPLE:
            return False, f"Paged KV cache block size must be divisible by {PAGE_SIZE_MULTIPLE} (page size {spec.page_size})"
        if spec.dtype not in ("bf16", "fp16"):
            return False, f"FlashAttention only support fp16 and bf16 data type (got {spec.dtype})"
        if spec.head_dim > MAX_HEAD_DIM:
            return False, f"FlashAttention forward only supports head dimension at most {MAX_HEAD_DIM} (got {spec.head_dim})"
        if spec.head_dim % 8:
            return False, f"paged flash-attn 2 needs a head dim that is a multiple of 8 (got {spec.head_dim})"
        if spec.num_q_heads % spec.num_kv_heads:
            return False, "Number of heads in key/value must divide number of heads in query"
        return True, ""

    def versions(self) -> dict[str, str]:
        try:
            import flash_attn
            versions = {"flash_attn": str(flash_attn.__version__)}
        except Exception as error:  # noqa: BLE001
            versions = {"flash_attn": f"not importable ({type(error).__name__})"}
        note = os.environ.get("FLASH_ATTN_BUILD_NOTE")
        if note:
            versions["flash_attn_build"] = note
        return versions

    def prepare(self, batch: PagedBatch) -> Prepared:
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        spec = batch.spec
        cu_seqlens_k = cumulative_kv_lengths(batch.kv_lens)
        max_q, max_k = spec.max_q_len, spec.max_kv_len
        q, k_cache, v_cache, block_table = batch.q, batch.k_cache, batch.v_cache, batch.block_table

        def run_varlen() -> torch.Tensor:
            return flash_attn_varlen_func(q, k_cache, v_cache, batch.cu_seqlens_q, cu_seqlens_k, max_q, max_k,
                                          softmax_scale=spec.scale, causal=spec.causal, block_table=block_table)

        candidates = {ENTRY_VARLEN: run_varlen}
        if is_pure_decode(spec):
            q_decode = decode_query_view(q, spec.batch_size)
            total, heads, dim = q.shape

            def run_kvcache() -> torch.Tensor:
                out = flash_attn_with_kvcache(q_decode, k_cache, v_cache, cache_seqlens=batch.kv_lens,
                                              block_table=block_table, softmax_scale=spec.scale, causal=spec.causal)
                return out.view(total, heads, dim)

            candidates[ENTRY_KVCACHE] = run_kvcache

        notes: dict[str, object] = {}
        started = time.perf_counter()
        if len(candidates) == 1:
            chosen = ENTRY_VARLEN
        else:
            from harness.timer import time_function

            medians = {name: time_function(fn, batch.device, target_ms=SELECTION_TARGET_MS).median_us
                       for name, fn in candidates.items()}
            chosen = min(medians, key=medians.get)
            notes["entry_point_us"] = {name: round(us, 2) for name, us in medians.items()}
        notes["entry_point"] = chosen
        notes["setup_s"] = time.perf_counter() - started
        return Prepared(run=candidates[chosen], notes=notes)
