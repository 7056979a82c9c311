"""Host side of a launch: input validation, what the device allows (TMA, programmatic dependent
launch, multiprocessor count), and the launcher that binds one batch's arguments once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .configs import (DECODES_APART_MIN_KEYS_PER_SM, HOPPER_PREFILL_MIN_WINDOW, HopperPrefillConfig, KernelConfig,
                      hopper_prefill_config, query_bucket)
from .device import _merge_splits_kernel, _paged_attention_kernel

try:
    from .hopper_prefill import HopperPrefillLauncher, hopper_prefill_refusal
except ImportError as _gluon_error:  # a Triton without Gluon: long queries run the Triton kernel
    HopperPrefillLauncher = None

    def hopper_prefill_refusal(*args, _reason=f"Gluon does not import here ({_gluon_error})", **kwargs) -> str:
        return _reason
from .plan import (LaunchPlan, allocate_workspace, decode_keys_per_sm, next_power_of_2, plan_launch,
                   register_report, tile_key_span)

LOG2E = 1.4426950408889634
"""log2(e): scores are kept in the log2 domain so that the softmax uses exp2."""


def score_scales(scale: float, softcap: float | None) -> dict:
    """The score arguments both kernels take: ``qk_scale`` (log2 units) and, with a soft-cap c, ``softcap_in``:
    the kernel computes ``tanh(q.k * scale / c)`` and scales it by ``c`` (``qk_scale = c * log2(e)``)."""
    if softcap is None:
        return dict(qk_scale=float(scale) * LOG2E, softcap_in=None, SOFTCAP=False)
    return dict(qk_scale=float(softcap) * LOG2E, softcap_in=float(scale) / float(softcap), SOFTCAP=True)


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_KV_DTYPE = torch.float8_e4m3fn
"""The one cache dtype besides q's: float8 e4m3 (Triton's ``float8e4nv``), with float32 scales."""
MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
"""Head dims from 16 to 256; those that are not a power of two (96, 192) run padded to the next one."""
INTERPRETER_SM_COUNT = 4
"""Stands in for the multiprocessor count when the kernel runs under the interpreter (CPU tensors)."""


def interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 when this package
    was first imported): they then run on CPU tensors only, and never on a GPU."""
    return type(_paged_attention_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------------
# What the device allows
# --------------------------------------------------------------------------------------------------

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


def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


def _tma_descriptor(cache: torch.Tensor, block_n: int):
    """Descriptor of ``cache`` viewed ``[num_pages * page_size, Hkv * D]``, block ``[block_n, D]``."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    num_pages, page_size, num_kv_heads, head_dim = cache.shape
    rows = cache.view(num_pages * page_size, num_kv_heads * head_dim)
    return TensorDescriptor(base=rows, shape=list(rows.shape), strides=list(rows.stride()),
                            block_shape=[block_n, head_dim])


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, *,
                    max_q_len: int, max_kv_len: int, scale: float, out: torch.Tensor | None,
                    causal: bool = True, sliding_window: int | None = None, softcap: float | None = None,
                    sinks: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None) -> None:
    """Raise ValueError naming the first argument that does not fit the canonical layout."""
    _check(q.dim() == 3, f"q must be [T, Hq, D], got shape {tuple(q.shape)}")
    _check(k_cache.dim() == 4, f"k_cache must be [num_pages, page_size, Hkv, D], got shape {tuple(k_cache.shape)}")
    _check(v_cache.shape == k_cache.shape,
           f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    _check(q.dtype in SUPPORTED_DTYPES, f"q dtype {q.dtype} is not one of {SUPPORTED_DTYPES}")
    kv_fp8 = k_cache.dtype == FP8_KV_DTYPE
    _check((k_cache.dtype == q.dtype or kv_fp8) and v_cache.dtype == k_cache.dtype,
           f"k_cache/v_cache dtypes {k_cache.dtype}/{v_cache.dtype} differ from q dtype {q.dtype} "
           f"(and are not both {FP8_KV_DTYPE})")
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    _check(kv_fp8 == (k_scale is not None) and kv_fp8 == (v_scale is not None),
           f"k_scale and v_scale are needed with a {FP8_KV_DTYPE} cache and only then, got a "
           f"{k_cache.dtype} cache with k_scale {'given' if k_scale is not None else None}, "
           f"v_scale {'given' if v_scale is not None else None}")
    if kv_fp8:
        for name, tensor in (("k_scale", k_scale), ("v_scale", v_scale)):
            _check(tensor.dtype == torch.float32 and tensor.dim() == 1 and tensor.numel() in (1, num_kv_heads)
                   and tensor.is_contiguous() and tensor.device == q.device,
                   f"{name} must be a contiguous float32 [1] (per tensor) or [Hkv] = [{num_kv_heads}] "
                   f"(per KV head) on {q.device}, got {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}")
        _check(k_scale.numel() == v_scale.numel(),
               f"k_scale has {k_scale.numel()} values, v_scale {v_scale.numel()}: give both per tensor or both per head")
    if sinks is not None:
        _check(sinks.shape == (num_q_heads,) and sinks.dtype == torch.float32 and sinks.is_contiguous()
               and sinks.device == q.device,
               f"sinks must be a contiguous float32 [Hq] = [{num_q_heads}] on {q.device}, "
               f"got {tuple(sinks.shape)} {sinks.dtype} on {sinks.device}")
    if sliding_window is not None:
        _check(isinstance(sliding_window, int) and not isinstance(sliding_window, bool) and sliding_window >= 1,
               f"sliding_window={sliding_window!r} must be a positive number of keys")
        _check(causal, "a sliding window needs causal attention (it ends at the query's own position)")
    if softcap is not None:
        _check(math.isfinite(softcap) and softcap > 0, f"softcap={softcap} must be a positive finite number")
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


# --------------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------------

class PagedAttentionLauncher:
    """Bound arguments of one batch: ``__call__`` only launches (the attention kernel, then the
    merge kernel when keys are split) and returns ``out``, or ``(out, lse)`` when an ``lse`` tensor
    ``[T, Hq]`` float32 (contiguous) was given: each row's natural-log log-sum-exp of the scaled
    scores ``scale * q . k`` over its visible keys (soft-capped when ``softcap`` is set, with
    ``exp(sinks[h])`` in the sum when sinks are given). Build it outside any timed region.

    Model features (see ``prepare_paged_attention``): ``sliding_window``, ``softcap``, ``sinks``,
    and a float8 e4m3 cache with ``k_scale``/``v_scale``; each turns on its constexpr switch."""

    def __init__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor,
                 out: torch.Tensor, *, causal: bool, scale: float, plan: LaunchPlan,
                 workspace: tuple[torch.Tensor, torch.Tensor] | None, lse: torch.Tensor | None = None,
                 sliding_window: int | None = None, softcap: float | None = None,
                 sinks: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                 v_scale: torch.Tensor | None = None):
        num_tokens, num_q_heads, head_dim = q.shape
        if lse is not None:
            _check(lse.shape == q.shape[:2] and lse.dtype == torch.float32 and lse.device == q.device
                   and lse.is_contiguous(),
                   f"lse must be a contiguous {tuple(q.shape[:2])} float32 tensor on {q.device}, "
                   f"got {tuple(lse.shape)} {lse.dtype} on {lse.device}")
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
        self.lse = lse
        self.plan = plan
        self._empty = num_tokens == 0
        use_window = sliding_window is not None
        kv_fp8 = k_scale is not None
        common = dict(
            lse_ptr=lse, WRITE_LSE=lse is not None,
            cu_seqlens_q_ptr=cu_seqlens_q, kv_lens_ptr=kv_lens,
            sinks_ptr=sinks, HAS_SINKS=sinks is not None,
            # a feature's runtime values are None (constexpr) when it is off: the plain kernel's parameters
            window=int(sliding_window) if use_window else None, USE_WINDOW=use_window, BLOCK_N=plan.config.block_n,
            num_seqs=block_table.shape[0], num_q_blocks=plan.num_q_blocks, split_size=plan.split_size,
            stride_o_t=out.stride(0), stride_o_h=out.stride(1),
            stride_po_split=po_strides[0], stride_po_t=po_strides[1], stride_po_h=po_strides[2],
            stride_pl_split=pl_strides[0], stride_pl_t=pl_strides[1],
            NUM_KV_HEADS=num_kv_heads, GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim,
            BLOCK_D=next_power_of_2(head_dim),
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
            k_scale_ptr=k_scale, v_scale_ptr=v_scale, KV_FP8=kv_fp8,
            stride_scale=(1 if k_scale.numel() > 1 else 0) if kv_fp8 else None,
            **score_scales(scale, softcap),
            stride_q_t=q.stride(0), stride_q_h=q.stride(1),
            stride_k_page=k_cache.stride(0), stride_k_slot=k_cache.stride(1), stride_k_head=k_cache.stride(2),
            stride_v_page=v_cache.stride(0), stride_v_slot=v_cache.stride(1), stride_v_head=v_cache.stride(2),
            stride_bt_seq=block_table.stride(0),
            PAGE_SIZE=k_cache.shape[1],
            SPLIT_KV=split_kv, TILE_IN_PAGE=plan.tile_in_page, USE_TMA=plan.use_tma,
            SHARED_ROWS=k_cache.stride()[:2] == v_cache.stride()[:2],
            OFFSETS_32=offsets_fit_int32(k_cache) and offsets_fit_int32(v_cache),
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=plan.config.num_warps, num_stages=plan.config.num_stages,
            **({"maxnreg": plan.config.max_registers} if plan.config.max_registers else {}),
        )
        self._merge_grid = (plan.num_q_blocks * num_kv_heads,)
        self._merge_args = dict(
            common, out_ptr=out, part_out_ptr=part_out, part_lse_ptr=part_lse,
            num_warps=plan.config.merge_warps,
            **({"launch_pdl": True} if plan.launch_merge_early else {}),
        ) if split_kv else None

    def describe(self) -> dict:
        """The plan's figures (configuration, tiles, split, page path) for a result row's notes."""
        return self.plan.describe()

    def register_report(self) -> dict:
        """The attention kernel's registers and spills as compiled (`plan.register_report`; after the first call)."""
        return register_report(getattr(self, "_compiled", None))

    def __call__(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self._empty:
            self._compiled = _paged_attention_kernel[self._attn_grid](**self._attn_args)
            if self._merge_args is not None:
                _merge_splits_kernel[self._merge_grid](**self._merge_args)
        return self.out if self.lse is None else (self.out, self.lse)


class DecodesApartLauncher:
    """A mixed batch whose first ``num_decodes`` sequences have one query each (the order serving
    engines give a mixed batch), run as two launches on views of one output: those sequences with the
    decode bucket's tiles (one query per tile, keys split across the multiprocessors), then the others
    with the long bucket's, where a decode would take a whole 64- or 128-row tile for its ``GROUP``
    rows. Same interface as ``PagedAttentionLauncher``; ``plan`` is the long launch's."""

    def __init__(self, decodes: PagedAttentionLauncher, rest: PagedAttentionLauncher | HopperPrefillLauncher,
                 out: torch.Tensor,
                 lse: torch.Tensor | None):
        self.decodes, self.rest = decodes, rest
        self.out, self.lse = out, lse
        self.plan = rest.plan  # None where the long launch is the Gluon kernel's (it has no LaunchPlan)

    def describe(self) -> dict:
        decode_plan = self.decodes.plan
        rest = self.rest.describe()
        return {**rest, "config": f"{decode_plan.config.label()} (decodes) + {rest['config']}",
                "decodes_apart": self.decodes.out.shape[0], "decode_num_splits": decode_plan.num_splits}

    def register_report(self) -> dict:
        return self.rest.register_report()

    def __call__(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.decodes()
        self.rest()
        return self.out if self.lse is None else (self.out, self.lse)


def prepare_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, *,
                            max_q_len: int, max_kv_len: int, causal: bool, scale: float,
                            out: torch.Tensor | None = None,
                            config: KernelConfig | HopperPrefillConfig | None = None,
                            num_splits: int | None = None, launch_merge_early: bool | None = None,
                            return_lse: bool = False, sliding_window: int | None = None,
                            softcap: float | None = None, sinks: torch.Tensor | None = None,
                            k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
                            num_decodes: int = 0, decodes_apart: bool | None = None,
                            host_kv_lens: Sequence[int] | None = None, hopper_prefill: bool | None = None,
                            ) -> PagedAttentionLauncher | HopperPrefillLauncher | DecodesApartLauncher:
    """Validate, plan and allocate (output, split workspace, LSE) once; the launcher only launches.
    ``launch_merge_early`` (None: wherever the device has programmatic dependent launch) can turn
    the early merge launch off, to measure what it gains. ``return_lse``: the launcher also writes
    ``launcher.lse`` ``[T, Hq]`` float32, each row's natural-log log-sum-exp of ``scale * q . k``
    over its visible keys, and returns ``(out, lse)``.

    Model features (``adapters/features.py``), each a constexpr switch of the kernel, off by default:
    ``sliding_window`` W (causal only): the query at position p sees keys ``p - W < j <= p``, key
    tiles before a tile's first visible key are skipped; ``softcap`` c: each score s becomes
    ``c * tanh(s / c)``; ``sinks`` ``[Hq]`` float32: a per-head logit in every row's softmax
    denominator (and LSE), with no value; a ``torch.float8_e4m3fn`` cache with ``k_scale`` and
    ``v_scale`` float32 ``[1]`` (per tensor) or ``[Hkv]`` (per KV head): true K = k_cache * k_scale.

    ``num_decodes`` d: the host's word that sequences ``0 .. d-1`` have one query each (tokens
    ``0 .. d-1``); with ``0 < d < B`` and longer queries after them they run as a launch of their own
    with the decode bucket's tiles (``DecodesApartLauncher``; ``config`` / ``num_splits`` then apply to
    the other sequences only) where their keys are worth it (``DECODES_APART_MIN_KEYS_PER_SM``);
    ``decodes_apart`` True / False forces either way. It is not checked on the device: a wrong count
    gives wrong rows. ``host_kv_lens``: every sequence's key count as the host knows it (serving
    engines keep that copy; the device's ``kv_lens`` must hold the same values): a decode's key split
    is then weighted by the keys the batch holds (``plan.decode_fill``), and the decodes' own launch
    is bounded by their longest.

    ``hopper_prefill``: long-query launches (query bucket ``long``, keys unsplit, ``config`` and
    ``num_splits`` not given) run the warp-specialised Gluon kernel (``hopper_prefill.py``) where it can
    run the batch (an sm_90 GPU, bf16/fp16, head dim 64/128/256, no fp8 cache; a window, soft-cap and sinks
    run there too); None: wherever it can but for windows under ``HOPPER_PREFILL_MIN_WINDOW`` keys (faster in the
    Triton kernel), False: never, True: a ValueError saying why where it cannot. A
    ``HopperPrefillConfig`` as ``config`` (the long launch's) asks for the Gluon kernel with that configuration
    instead of its table's."""
    validate_inputs(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens,
                    max_q_len=max_q_len, max_kv_len=max_kv_len, scale=scale, out=out, causal=causal,
                    sliding_window=sliding_window, softcap=softcap, sinks=sinks, k_scale=k_scale, v_scale=v_scale)
    num_seqs = block_table.shape[0]
    _check(isinstance(num_decodes, int) and not isinstance(num_decodes, bool)
           and 0 <= num_decodes <= min(num_seqs, q.shape[0]),
           f"num_decodes={num_decodes!r} must be a whole number of leading one-query sequences in "
           f"0..{min(num_seqs, q.shape[0])}")
    _check(decodes_apart in (None, True, False), f"decodes_apart={decodes_apart!r} must be None, True or False")
    _check(hopper_prefill in (None, True, False), f"hopper_prefill={hopper_prefill!r} must be None, True or False")
    if host_kv_lens is not None:
        host_kv_lens = tuple(host_kv_lens)
        _check(len(host_kv_lens) == num_seqs and all(
                   isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= max_kv_len for n in host_kv_lens),
               f"host_kv_lens must hold {num_seqs} whole key counts in 0..max_kv_len={max_kv_len}, "
               f"got {host_kv_lens[:8]}{'...' if len(host_kv_lens) > 8 else ''} ({len(host_kv_lens)} values)")
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], q.shape[1], dtype=torch.float32, device=q.device) if return_lse else None
    features = dict(causal=causal, scale=scale, launch_merge_early=launch_merge_early, hopper_prefill=hopper_prefill,
                    sliding_window=sliding_window, softcap=softcap, sinks=sinks, k_scale=k_scale, v_scale=v_scale)
    d = num_decodes
    decode_lens, rest_lens = (host_kv_lens[:d], host_kv_lens[d:]) if host_kv_lens is not None else (None, None)
    if decodes_apart is None:
        decode_span = tile_key_span(max_kv_len, 1, 1, 1, sliding_window)  # a window's keys, or all
        decodes_apart = decode_keys_per_sm(decode_lens or (max_kv_len,) * d, decode_span, k_cache.shape[2],
                                           multiprocessor_count(q.device)) >= DECODES_APART_MIN_KEYS_PER_SM
    if not (decodes_apart and 0 < d < num_seqs and max_q_len > 1):
        return _prepare_one(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens, out, lse,
                            max_q_len=max_q_len, max_kv_len=max_kv_len, config=config, num_splits=num_splits,
                            host_kv_lens=host_kv_lens, **features)
    decodes = _prepare_one(q[:d], k_cache, v_cache, block_table[:d], cu_seqlens_q[:d + 1], kv_lens[:d],
                           out[:d], None if lse is None else lse[:d], max_q_len=1,
                           max_kv_len=max(1, *decode_lens) if decode_lens else max_kv_len,
                           config=None, num_splits=None, host_kv_lens=decode_lens,
                           **{**features, "hopper_prefill": False})  # hopper_prefill is the long launch's
    # the other sequences' query offsets from their own first token (one small copy, here, not per call)
    rest = _prepare_one(q[d:], k_cache, v_cache, block_table[d:], cu_seqlens_q[d:] - d, kv_lens[d:],
                        out[d:], None if lse is None else lse[d:], max_q_len=max_q_len, max_kv_len=max_kv_len,
                        config=config, num_splits=num_splits, host_kv_lens=rest_lens, **features)
    return DecodesApartLauncher(decodes, rest, out, lse)


def _prepare_one(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                 cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, out: torch.Tensor, lse: torch.Tensor | None, *,
                 max_q_len: int, max_kv_len: int, causal: bool, scale: float,
                 config: KernelConfig | HopperPrefillConfig | None,
                 num_splits: int | None, launch_merge_early: bool | None, sliding_window: int | None,
                 softcap: float | None, sinks: torch.Tensor | None, k_scale: torch.Tensor | None,
                 v_scale: torch.Tensor | None, host_kv_lens: Sequence[int] | None,
                 hopper_prefill: bool | None) -> PagedAttentionLauncher | HopperPrefillLauncher:
    """Plan one launch over validated inputs and allocate its split workspace; a long-query launch
    goes to the Gluon prefill kernel where ``hopper_prefill`` and the batch allow."""
    num_tokens, num_q_heads, head_dim = q.shape
    gluon_config = config if isinstance(config, HopperPrefillConfig) else None
    if gluon_config is not None:  # the Gluon kernel's own configuration asks for it
        _check(hopper_prefill is not False, f"config={gluon_config} is the Gluon kernel's, but hopper_prefill=False")
        hopper_prefill, config = True, None
    if hopper_prefill is not False:
        if query_bucket(max_q_len) != "long":
            refusal = f"max_q_len={max_q_len} is not a long-query launch (more than 16 queries)"
        elif config is not None or num_splits is not None:
            refusal = "a Triton configuration or split was given"
        elif hopper_prefill is None and sliding_window is not None and sliding_window < HOPPER_PREFILL_MIN_WINDOW:
            refusal = f"a {sliding_window}-key window runs faster in the Triton kernel (HOPPER_PREFILL_MIN_WINDOW)"
        else:
            refusal = hopper_prefill_refusal(q, k_cache, v_cache, sliding_window=sliding_window, softcap=softcap,
                                             sinks=sinks, k_scale=k_scale)
        if refusal is None:
            return HopperPrefillLauncher(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens, out, lse,
                                         causal=causal, scale=scale,
                                         config=gluon_config or hopper_prefill_config(head_dim, max_kv_len,
                                                                                      sliding_window),
                                         sliding_window=sliding_window, softcap=softcap, sinks=sinks)
        _check(hopper_prefill is None, f"hopper_prefill=True, but the Gluon prefill kernel cannot run this launch: {refusal}")
    plan = plan_launch(num_tokens=num_tokens, num_seqs=block_table.shape[0], num_q_heads=num_q_heads,
                       num_kv_heads=k_cache.shape[2], head_dim=head_dim, page_size=k_cache.shape[1],
                       max_q_len=max_q_len, max_kv_len=max_kv_len, num_sms=multiprocessor_count(q.device),
                       config=config, num_splits=num_splits, tma_possible=tma_possible(q, k_cache, v_cache),
                       pdl_possible=launch_merge_early is not False and pdl_possible(q.device),
                       sliding_window=sliding_window, host_kv_lens=host_kv_lens)
    workspace = allocate_workspace(plan, num_tokens, num_q_heads, head_dim, q.device)
    return PagedAttentionLauncher(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens, out,
                                  causal=causal, scale=scale, plan=plan, workspace=workspace, lse=lse,
                                  sliding_window=sliding_window, softcap=softcap, sinks=sinks,
                                  k_scale=k_scale, v_scale=v_scale)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, *, max_q_len: int, max_kv_len: int,
                    causal: bool, scale: float, out: torch.Tensor | None = None,
                    config: KernelConfig | None = None, num_splits: int | None = None,
                    return_lse: bool = False, sliding_window: int | None = None,
                    softcap: float | None = None, sinks: torch.Tensor | None = None,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
                    num_decodes: int = 0, decodes_apart: bool | None = None,
                    host_kv_lens: Sequence[int] | None = None,
                    hopper_prefill: bool | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of packed queries ``q [T, Hq, D]`` over paged ``k_cache``/``v_cache``
    ``[num_pages, page_size, Hkv, D]`` -> ``[T, Hq, D]`` in q's dtype (written into ``out`` if given);
    with ``return_lse`` -> ``(out, lse)``, lse ``[T, Hq]`` float32 as in ``prepare_paged_attention``.

    ``max_q_len`` / ``max_kv_len`` are host-side upper bounds of the per-sequence lengths (they size
    the grid; the kernel reads the real lengths on the device, never synchronising). ``causal`` is
    bottom-right. ``config`` / ``num_splits`` override the tuned table and the split heuristic.
    Model features, ``num_decodes``, ``decodes_apart``, ``host_kv_lens`` and ``hopper_prefill`` as in
    ``prepare_paged_attention``.
    For repeated calls on one batch, build a launcher once with ``prepare_paged_attention``.
    """
    return prepare_paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens,
                                   max_q_len=max_q_len, max_kv_len=max_kv_len, causal=causal,
                                   scale=scale, out=out, config=config, num_splits=num_splits,
                                   return_lse=return_lse, sliding_window=sliding_window, softcap=softcap,
                                   sinks=sinks, k_scale=k_scale, v_scale=v_scale, num_decodes=num_decodes,
                                   decodes_apart=decodes_apart, host_kv_lens=host_kv_lens,
                                   hopper_prefill=hopper_prefill)()
