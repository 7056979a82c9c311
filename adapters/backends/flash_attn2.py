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

Model features (read from flash-attn 2.8.3's ``flash_attn_interface.py`` and ``csrc/flash_attn/flash_api.cpp``;
2.8.3.post2 is the same source re-published). Both entry points take the same two:

- sliding window: ``window_size=(W - 1, 0)``. flash-attn lets query i see keys
  ``[i + seqlen_k - seqlen_q - window_size[0], i + seqlen_k - seqlen_q + window_size[1]]`` inclusive,
  i.e. ``p - (W - 1) <= j <= p``: W keys, the suite's ``p - W < j <= p`` (`adapters.features.window_left`;
  vLLM passes ``sliding_window - 1`` the same way). A left bound ``>= seqlen_k`` is turned into -1 (no window)
  by the library itself. With a window the GQA decode swap (``seqlenq_ngroups_swapped``) is off.
- soft-cap: ``softcap=c``; the kernel computes ``c * tanh(softmax_scale * q.k / c)``, the suite's cap on the
  scaled score, and its LSE is that of the capped scores.
- sinks and fp8 caches: declined (`FEATURE_REASONS`): no argument for either in flash-attn 2.8.

Reduced builds: flash-attn compiles features out with ``-DFLASHATTENTION_DISABLE_LOCAL`` /
``..._SOFTCAP`` (this kit's ``build-flash-attn.sh`` does, unless ``FA_KEEP="SOFTCAP LOCAL"``). Such a build
still has the arguments and refuses them on the host, before any launch, with
``RuntimeError: This flash attention build does not support local attention.`` (``... softcap.``). The
library runs these features, so a cell asking for one is `skipped` (``NotAvailable``), never
`unsupported`. What decides is a probe (`probe_build`): one tiny ``flash_attn_varlen_func`` call per
feature and process with the feature switched on, whose refusal is flash-attn's own check;
``FLASH_ATTN_BUILD_NOTE`` only explains it in the message (the kit's scripts export a fixed note, which
would go stale after a rebuild with ``FA_KEEP``; a note that disagrees with the probe is recorded in the
cell's notes as ``flash_attn_build_note_stale``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import torch

from adapters.base import Adapter, NotAvailable, Prepared, register
from adapters.batch import BatchSpec, PagedBatch
from adapters.features import FEATURE_TEXT, window_left

PAGE_SIZE_MULTIPLE = 256
MAX_HEAD_DIM = 256
ENTRY_VARLEN = "flash_attn_varlen_func"
ENTRY_KVCACHE = "flash_attn_with_kvcache"

MODEL_FEATURES = frozenset({"sliding_window", "softcap"})
"""Features flash-attn 2.8 takes in both entry points (``window_size``, ``softcap``)."""
FEATURE_REASONS = {
    "sinks": "flash-attn 2.8 has no sink argument: neither flash_attn_varlen_func nor flash_attn_with_kvcache "
             "takes per-head sink logits (FlashAttention 4's learnable_sink; vLLM's fork adds s_aux)",
    "fp8_kv": "flash-attn 2.8 takes fp16 and bf16 caches only (\"FlashAttention only support fp16 and bf16 data "
              "type\"): neither flash_attn_varlen_func nor flash_attn_with_kvcache has an fp8 cache or k/v scale "
              "argument (FlashAttention 3's descale arguments are not in flash-attn 2)",
}
"""Why the features flash-attn 2.8 lacks are declined, in its terms."""

BUILD_NOTE_ENV = "FLASH_ATTN_BUILD_NOTE"
BUILD_SWITCHES = {"sliding_window": "local", "softcap": "softcap"}
"""The features a flash-attn build can compile out, by the name of its switch
(``-DFLASHATTENTION_DISABLE_LOCAL``, ``-DFLASHATTENTION_DISABLE_SOFTCAP``) as the build note spells it."""
BUILD_REFUSAL = "This flash attention build does not support"
"""How flash-attn's host-side check starts when the build compiled the asked-for feature out."""
REBUILD_HINT = 'rebuild with FA_KEEP="SOFTCAP LOCAL" (../shared/device/build-flash-attn.sh) to keep them'


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


def feature_arguments(spec: BatchSpec) -> dict[str, Any]:
    """The model-feature keyword arguments both entry points take (none for plain attention)."""
    kwargs: dict[str, Any] = {}
    if spec.sliding_window is not None:
        kwargs["window_size"] = (window_left(spec.sliding_window), 0)
    if spec.softcap is not None:
        kwargs["softcap"] = float(spec.softcap)
    return kwargs


def varlen_arguments(batch: PagedBatch, cu_seqlens_k: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments of ``flash_attn_varlen_func(q, k_cache, v_cache, **kwargs)`` for ``batch``."""
    spec = batch.spec
    return dict(cu_seqlens_q=batch.cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=spec.max_q_len,
                max_seqlen_k=spec.max_kv_len, softmax_scale=spec.scale, causal=spec.causal,
                block_table=batch.block_table, return_attn_probs=True, **feature_arguments(spec))


def kvcache_arguments(batch: PagedBatch) -> dict[str, Any]:
    """Keyword arguments of ``flash_attn_with_kvcache(q [B, 1, Hq, D], k_cache, v_cache, **kwargs)``."""
    spec = batch.spec
    return dict(cache_seqlens=batch.kv_lens, block_table=batch.block_table, softmax_scale=spec.scale,
                causal=spec.causal, return_softmax_lse=True, **feature_arguments(spec))


def compiled_out(note: str | None) -> frozenset[str]:
    """Switch names a build note says were compiled out, lower case: "...; dropout/alibi/softcap/local/uneven-K
    compiled out" gives dropout, alibi, softcap, local, uneven-k."""
    names: set[str] = set()
    for listed in re.findall(r"([\w/ ,+-]+?)\s+compiled out", note or "", flags=re.IGNORECASE):
        names.update(part.strip().lower() for part in re.split(r"[/,+]| and ", listed.split(";")[-1]) if part.strip())
    return frozenset(names)


def probe_build(feature: str, device: torch.device, dtype: torch.dtype) -> str:
    """"" when this flash-attn build runs ``feature`` (sliding_window or softcap), else flash-attn's refusal.

    One ``flash_attn_varlen_func`` call on two queries and two keys (head dim 64) with the feature on: a
    window of ``(0, 0)`` (narrower than the keys, so flash-attn keeps it) or a cap of 1. A build without
    the feature refuses it on the host before any launch; a full build runs one tiny kernel."""
    from flash_attn import flash_attn_varlen_func

    q = torch.zeros(2, 1, 64, device=device, dtype=dtype)
    cu = torch.tensor([0, 2], dtype=torch.int32, device=device)
    kwargs: dict[str, Any] = {"window_size": (0, 0)} if feature == "sliding_window" else {"softcap": 1.0}
    try:
        flash_attn_varlen_func(q, q, q, cu, cu, 2, 2, causal=True, **kwargs)
    except RuntimeError as error:
        if BUILD_REFUSAL in str(error):
            return str(error).strip().splitlines()[0]
        raise
    return ""


def build_refusal(spec: BatchSpec, probe: Callable[[str], str], note: str | None) -> tuple[str, str]:
    """(why this build cannot run ``spec``'s features, stale-note remark); "" for either when there is none.

    ``probe(feature)`` is flash-attn's refusal of the feature or "" (`probe_build`); ``note`` the
    ``FLASH_ATTN_BUILD_NOTE``. The refusal is a `NotAvailable` message: the library has these features."""
    refused, stale = [], []
    said_out = compiled_out(note)
    for feature in spec.features:
        switch = BUILD_SWITCHES.get(feature)
        if switch is None:
            continue
        words = probe(feature)
        if words:
            refused.append((feature, words))
        elif switch in said_out:
            stale.append(switch)
    remark = (f"{BUILD_NOTE_ENV} says {'/'.join(stale)} compiled out, but this build ran "
              f"{'them' if len(stale) > 1 else 'it'} (probe)") if stale else ""
    if not refused:
        return "", remark
    what = " and ".join(FEATURE_TEXT[feature] for feature, _ in refused)
    said = "; ".join(f'flash-attn: "{words}"' for _, words in refused)
    return (f"this flash-attn build compiled out {what} ({said}; {BUILD_NOTE_ENV}: {note or 'not set'}); "
            f"flash-attn 2 has {'them' if len(refused) > 1 else 'it'} in a full build: {REBUILD_HINT}"), remark


@register
class FlashAttn2Adapter(Adapter):
    name = "flash-attn2"
    display_name = "flash-attn"
    packages = ("flash-attn", "flash_attn")
    model_features = MODEL_FEATURES
    feature_reasons = FEATURE_REASONS

    def __init__(self) -> None:
        self._probed: dict[str, str] = {}

    def _probe(self, feature: str, device: torch.device, dtype: torch.dtype) -> str:
        """`probe_build` once per feature and adapter (the build does not change within a process)."""
        if feature not in self._probed:
            self._probed[feature] = probe_build(feature, device, dtype)
        return self._probed[feature]

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
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
        notes: dict[str, Any] = {}
        if spec.features:
            refusal, remark = build_refusal(spec, lambda feature: self._probe(feature, batch.device, spec.torch_dtype),
                                            os.environ.get(BUILD_NOTE_ENV))
            if refusal:
                raise NotAvailable(refusal)
            if remark:
                notes["flash_attn_build_note_stale"] = remark
        q, k_cache, v_cache = batch.q, batch.k_cache, batch.v_cache
        total, heads, dim = q.shape
        varlen_kwargs = varlen_arguments(batch, cumulative_kv_lengths(batch.kv_lens))

        def run_varlen() -> tuple[torch.Tensor, torch.Tensor]:
            out, lse, _ = flash_attn_varlen_func(q, k_cache, v_cache, **varlen_kwargs)
            return out, lse  # lse [Hq, T]

        candidates = {ENTRY_VARLEN: run_varlen}
        if is_pure_decode(spec):
            q_decode = decode_query_view(q, spec.batch_size)
            kvcache_kwargs = kvcache_arguments(batch)

            def run_kvcache() -> tuple[torch.Tensor, torch.Tensor]:
                out, lse = flash_attn_with_kvcache(q_decode, k_cache, v_cache, **kvcache_kwargs)
                return out.view(total, heads, dim), lse  # lse [B, Hq, 1]

            candidates[ENTRY_KVCACHE] = run_kvcache
        return Prepared(candidates=candidates, to_lse=canonical_lse_of(total, heads), notes=notes)


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
