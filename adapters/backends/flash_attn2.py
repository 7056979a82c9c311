"""flash-attn 2 over the paged cache: ``flash_attn_varlen_func`` with ``block_table`` for every batch,
and for pure-decode batches (every q_len == 1) also ``flash_attn_with_kvcache``. Both are offered as
``Prepared.candidates``: the gate checks each, the harness times each briefly and keeps the faster
(the row's ``entry_point`` says which). The adapter itself times nothing.

Arguments: packed q ``[T, Hq, D]`` and the NHD caches as they are; ``cu_seqlens_q`` (B+1, int32);
``cu_seqlens_k`` the cumulative **kv** lengths (B+1, int32; FA3/FA4's ``seqused_k`` is a different
argument, do not cross-wire); causal is bottom-right in flash-attn 2, as here. The decode entry point
takes q as ``[B, 1, Hq, D]`` (a view of the packed rows) and ``cache_seqlens = kv_lens``.

Softmax statistics (the LSE, natural log, float32), read from flash-attn 2.8.3's sources:
``flash_attn_varlen_func(..., return_attn_probs=True)`` returns ``(out, softmax_lse, S_dmask)`` with
``softmax_lse`` ``[Hq, T]`` (the varlen API has no ``return_softmax_lse``; with dropout 0 no
probabilities are computed, ``S_dmask`` is empty, and the LSE is computed either way), so ``to_lse`` is a
transpose. ``flash_attn_with_kvcache(..., return_softmax_lse=True)`` returns ``(out, softmax_lse)`` with
``softmax_lse`` ``[B, Hq, 1]`` for the ``[B, 1, Hq, D]`` decode query: a reshape to ``[T = B, Hq]``.
Known from the sources: for a GQA decode batch the varlen call runs with the query heads swapped into
the sequence dimension (``seqlenq_ngroups_swapped``); the LSE it writes without a KV split is laid out
``[Hkv, B, groups]`` while the API reshapes it as ``[Hq, B]``, so its LSE can come back permuted for
B > 1 (fixed in forks, e.g. vLLM's). The gate checks each entry point's LSE, so this shows as
``wrong`` (``entry point flash_attn_varlen_func: LSE off: ...``) where it happens.

Limits checked up front (flash-attn's own words where it has them): page size a multiple of 256,
fp16/bf16 only, head dim <= 256 and a multiple of 8, SM80 or newer.
"""

from __future__ import annotations

import os

import torch

from adapters.base import Adapter, Prepared, register
from adapters.batch import BatchSpec, PagedBatch

PAGE_SIZE_MULTIPLE = 256
MAX_HEAD_DIM = 256
ENTRY_VARLEN = "flash_attn_varlen_func"
ENTRY_KVCACHE = "flash_attn_with_kvcache"


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
        total, heads, dim = q.shape

        def run_varlen() -> tuple[torch.Tensor, torch.Tensor]:
            out, lse, _ = flash_attn_varlen_func(q, k_cache, v_cache, batch.cu_seqlens_q, cu_seqlens_k, max_q, max_k,
                                                 softmax_scale=spec.scale, causal=spec.causal, block_table=block_table,
                                                 return_attn_probs=True)
            return out, lse  # lse [Hq, T]

        candidates = {ENTRY_VARLEN: run_varlen}
        if is_pure_decode(spec):
            q_decode = decode_query_view(q, spec.batch_size)

            def run_kvcache() -> tuple[torch.Tensor, torch.Tensor]:
                out, lse = flash_attn_with_kvcache(q_decode, k_cache, v_cache, cache_seqlens=batch.kv_lens,
                                                   block_table=block_table, softmax_scale=spec.scale,
                                                   causal=spec.causal, return_softmax_lse=True)
                return out.view(total, heads, dim), lse  # lse [B, Hq, 1]

            candidates[ENTRY_KVCACHE] = run_kvcache
        return Prepared(candidates=candidates, to_lse=canonical_lse_of(total, heads))


def canonical_lse_of(total: int, heads: int):
    """``to_lse`` for both entry points: varlen's ``[Hq, T]`` is transposed, with_kvcache's ``[B, Hq, 1]``
    (B = T in a decode batch) reshaped; the result is ``[T, Hq]`` float32."""
    def to_lse(lse: torch.Tensor) -> torch.Tensor:
        if lse.dim() == 2 and tuple(lse.shape) == (heads, total):
            return lse.transpose(0, 1).float()
        if lse.dim() == 3 and tuple(lse.shape) == (total, heads, 1):
            return lse.reshape(total, heads).float()
        raise ValueError(f"unexpected flash-attn softmax_lse shape {tuple(lse.shape)} for T={total}, Hq={heads}")

    return to_lse
