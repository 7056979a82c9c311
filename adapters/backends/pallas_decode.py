"""JAX Pallas paged decode (``jax.experimental.pallas.ops.gpu.paged_attention.paged_attention``, the
Triton-lowered Pallas kernel JAX ships; JAX 0.11 marks the module deprecated). Decode batches only.

Its layout, and how the canonical batch gets there (all in ``prepare``, timed apart as
``notes["conversion_s"]``):

- q ``[B, Hq, D]``: the packed decode rows (T = B) as they are, **pre-multiplied by the softmax
  scale** (the kernel has no scale argument and computes ``q . k``): ``(q * scale)`` rounded to the
  input dtype, the same rounding as kernels that fold the scale into Q.
- k_pages / v_pages ``[Hkv, num_pages, page_size, D]`` (head-major): our NHD pages
  ``[num_pages, page_size, Hkv, D]`` moved to JAX by DLPack (zero copy, same GPU) and transposed with
  ``jnp.transpose(x, HEAD_MAJOR_AXES)`` -- a materialised copy (the kernel indexes pages of one head).
- block_tables ``[B, W]`` int32 and lengths ``[B]`` int32: the block table padded with the zeroed null
  page to a width ``W`` that its tiling accepts (`pallas_plan`: ``W = k_splits * pages_per_partition``,
  pages_per_partition a multiple of pages_per_compute_block, powers of two throughout); pages past a
  sequence's length are masked by ``lengths`` and whole partitions past it are skipped.
- Knobs: ``block_h = 16`` (query heads of one KV head per program; the GQA group is padded up to 16),
  ``pages_per_compute_block = max(1, 128 // page_size)`` (128 keys per step, one page when larger),
  ``k_splits <= 16`` (the library default 16 where the table is long enough), ``num_warps = 8``,
  ``num_stages = 2``, stepped down when Triton runs out of shared memory (`STAGE_LADDER`).

The timed call is the AOT-compiled ``paged_attention`` executable (``.lower(...).compile()`` in
``prepare``, ``notes["compile_s"]``), then ``block_until_ready``; its output comes back to torch by
DLPack (``torch.from_dlpack``, no copy). JAX runs on its own CUDA streams, so CUDA events on torch's
stream cannot bracket it: ``Prepared.external_streams`` makes the harness time it from the CUDA
activity record (`harness.measure.profiler_timer.time_external`: first to last kernel of each call).
JAX preallocates 75% of the GPU by default: `worker_env` sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
(and `available` sets it too, as a default, before it first initialises JAX's GPU backend).

On the CPU (tests) the same kernel runs in Pallas' interpreter (``interpret=True``).
No LSE: ``paged_attention`` returns only the output (`LSE_NOTE`).

Model features (`MODEL_FEATURES`; read from the signature and kernel of ``paged_attention`` in JAX 0.10
and the JAX repository's current source, which are the same):

- soft-cap c: ``attn_logits_soft_cap=c`` (a static argument): the kernel caps ``c * tanh(logits / c)`` the
  logits ``q . k`` of the pre-scaled q (times the key scale, below): the cap on the scaled score.
- fp8 (e4m3) cache: fp8 ``k_pages``/``v_pages`` with ``k_scales_pages``/``v_scales_pages``, the kernel's
  quantised-cache arguments: one scale per KV head, page and slot ``[Hkv, num_pages, page_size]``; it casts
  the keys to q's dtype and multiplies the logits by the key scales, and multiplies the probabilities by
  the value scales before the PV product. The suite's per-tensor or per-head scales are broadcast to that
  layout once in ``prepare`` (`scale_pages`, as a user with coarser scales fills it); the fp8 pages cross
  DLPack as uint8 bytes and are bitcast to ``float8_e4m3fn`` in the head-major transpose.
- sliding window and sinks: declined (`FEATURE_REASONS`): no window bound and no sink argument.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from adapters.base import Adapter, Prepared, Unsupported, installed_versions, register
from adapters.batch import NULL_PAGE, BatchSpec, PagedBatch

HEAD_MAJOR_AXES = (2, 0, 1, 3)
"""NHD pages ``[num_pages, page_size, Hkv, D]`` -> the kernel's ``[Hkv, num_pages, page_size, D]``."""
BLOCK_H = 16
KEYS_PER_STEP = 128
MAX_K_SPLITS = 16
NUM_WARPS = 8
NUM_STAGES = 2
STAGE_LADDER: tuple[dict[str, int], ...] = ({"num_stages": 1}, {"num_stages": 1, "num_warps": 4})
"""Compiler settings tried in turn when Triton reports the shared memory exceeded (a page of 256 keys
at D 128 is one 64 KiB K tile and one V tile, times the pipeline stages)."""
LSE_NOTE = ("jax.experimental.pallas.ops.gpu.paged_attention returns only the output; its per-split "
            "max and sum stay inside the jitted function")
MODEL_FEATURES = frozenset({"softcap", "fp8_kv"})
"""What this row passes to ``paged_attention``: ``attn_logits_soft_cap`` and quantised pages with their scales."""
FEATURE_REASONS = {
    "sliding_window": ("jax.experimental.pallas.ops.gpu.paged_attention masks keys by `lengths` only (key index < "
                       "length): it takes no window or left bound, and every sequence's keys start at the first "
                       "page of its block table"),
    "sinks": ("jax.experimental.pallas.ops.gpu.paged_attention has no sink argument (it takes q, k_pages, v_pages, "
              "block_tables, lengths, k_scales_pages, v_scales_pages, mask_value, attn_logits_soft_cap and tiling "
              "arguments) and returns only the output, so no per-head sink logit can enter its softmax"),
}
"""Why the row declines the features ``paged_attention`` lacks, in its terms."""
JAX_ENV_DEFAULTS = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
"""JAX would otherwise take 75% of the GPU's memory at its first GPU use, beside torch's caches."""
JAX_CACHE_SETTINGS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
"""With a cache folder: keep every compiled program (JAX keeps only those that took a second or more by
default, and the Pallas decode compiles in less)."""


def jax_cache_env() -> dict[str, str]:
    """JAX's persistent compilation cache in ``$XDG_CACHE_HOME/paged-bench/jax`` (``~/.cache`` by default),
    so the timed sweep loads what the compile warm-up compiled (`Adapter.disk_compile_cache`); nothing
    when the user chose a folder (``JAX_COMPILATION_CACHE_DIR``), which JAX then uses as set."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return {"JAX_COMPILATION_CACHE_DIR": os.path.join(root, "paged-bench", "jax"), **JAX_CACHE_SETTINGS}


def _next_pow2(value: int) -> int:
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def _is_pow2(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class PallasPlan:
    """The kernel's tiling for one batch (all powers of two)."""

    width: int
    """Block-table columns W = k_splits * pages_per_partition (>= max_pages)."""
    k_splits: int
    pages_per_partition: int
    pages_per_compute_block: int
    block_h: int = BLOCK_H
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES

    def static_args(self) -> dict[str, int]:
        """The keyword arguments ``paged_attention`` takes for this tiling."""
        return {"block_h": self.block_h, "pages_per_compute_block": self.pages_per_compute_block,
                "k_splits": self.k_splits, "num_warps": self.num_warps, "num_stages": self.num_stages}


def pallas_plan(max_pages: int, page_size: int) -> PallasPlan:
    """A tiling ``paged_attention`` accepts for tables of ``max_pages`` pages: pages_per_sequence
    divisible by k_splits, the partition divisible by the compute block, every block a power of two
    with at least 16 keys per step (Triton's dot)."""
    per_block = max(1, KEYS_PER_STEP // page_size)
    blocks = math.ceil(max_pages / per_block)
    k_splits = min(MAX_K_SPLITS, _next_pow2(blocks))
    per_partition = max(_next_pow2(math.ceil(max_pages / k_splits)), per_block)
    return PallasPlan(width=k_splits * per_partition, k_splits=k_splits, pages_per_partition=per_partition,
                      pages_per_compute_block=per_block)


def padded_block_table(block_table: torch.Tensor, width: int) -> torch.Tensor:
    """int32 ``[B, width]``: the block table, extra columns holding the (zeroed) null page."""
    batch, columns = block_table.shape
    if columns > width:
        raise ValueError(f"block table has {columns} columns, more than the plan's {width}")
    table = torch.full((batch, width), NULL_PAGE, dtype=torch.int32, device=block_table.device)
    table[:, :columns] = block_table.to(torch.int32)
    return table


def scaled_query(q: torch.Tensor, scale: float) -> torch.Tensor:
    """``q * scale`` in float32, rounded once to q's dtype (the kernel has no scale argument)."""
    return (q.float() * scale).to(q.dtype).contiguous()


def scale_pages(scale: torch.Tensor, num_kv_heads: int, num_pages: int, page_size: int) -> torch.Tensor:
    """float32 ``[Hkv, num_pages, page_size]`` (contiguous): ``paged_attention``'s ``k_scales_pages`` /
    ``v_scales_pages`` layout, one scale per KV head, page and slot, filled from one scale per tensor
    (``[1]``) or per KV head (``[Hkv]``)."""
    scale = scale.float().reshape(-1)
    if scale.numel() not in (1, num_kv_heads):
        raise ValueError(f"{scale.numel()} scales for {num_kv_heads} KV heads")
    return scale.view(-1, 1, 1).expand(num_kv_heads, num_pages, page_size).contiguous()


def feature_arguments(spec: BatchSpec) -> dict[str, Any]:
    """The static keyword arguments of ``paged_attention`` for the batch's features (the soft-cap)."""
    return {"attn_logits_soft_cap": float(spec.softcap)} if spec.softcap is not None else {}


def _pallas_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # JAX 0.11: "paged_attention is deprecated"
        from jax.experimental.pallas.ops.gpu import paged_attention as module
    return module


def _is_resource_error(error: BaseException) -> bool:
    text = str(error).lower()
    return "out of resource" in text or "shared memory" in text or "outofresources" in text


@register
class PallasPagedDecodeAdapter(Adapter):
    """JAX Pallas (Triton) paged decode, through DLPack from the canonical torch batch."""

    name = "jax-pallas-decode"
    disk_compile_cache = True
    shared_gpu_env = {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}
    """JAX's own pool keeps what a cell's converted pages took (GBs on a long-context case) after the cell; on a
    GPU shared by gate-only workers the platform allocator hands it back at once."""
    devices = ("cuda", "cpu")
    model_features = MODEL_FEATURES
    feature_reasons = FEATURE_REASONS
    packages = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt")

    def worker_env(self, device_type: str) -> dict[str, str]:
        if device_type == "cuda":
            return {**JAX_ENV_DEFAULTS, **jax_cache_env()}
        return {"JAX_PLATFORMS": "cpu"}

    @staticmethod
    def _jax_device(device: torch.device):
        import jax

        if device.type == "cpu":
            return jax.devices("cpu")[0]
        index = device.index if device.index is not None else torch.cuda.current_device()
        return jax.devices("gpu")[index]

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
        for key, value in JAX_ENV_DEFAULTS.items():  # before JAX's GPU backend first starts in this process
            os.environ.setdefault(key, value)
        try:
            import jax  # noqa: F401
            _pallas_module()
        except Exception as error:  # noqa: BLE001
            return False, f"cannot import jax's Pallas paged_attention: {type(error).__name__}: {error}"
        try:
            self._jax_device(device)
        except Exception as error:  # noqa: BLE001
            return False, f"JAX sees no {'GPU' if device.type == 'cuda' else 'CPU'} device: {type(error).__name__}: {error}"
        return True, ""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if any(q_len != 1 for q_len in spec.q_lens):
            return False, ("jax.experimental.pallas.ops.gpu.paged_attention is decode-only: q is "
                           "[batch_size, num_heads, head_dim], one query token per sequence")
        if spec.num_q_heads % spec.num_kv_heads:
            return False, "Number of Q heads must be divisible by number of KV heads."
        if not _is_pow2(spec.head_dim) or spec.head_dim < 16:
            return False, (f"Pallas' Triton lowering needs power-of-two blocks of at least 16 for tl.dot; "
                           f"head_dim {spec.head_dim}")
        if not _is_pow2(spec.page_size):
            return False, f"Pallas' Triton lowering needs power-of-two blocks; a page of {spec.page_size} keys is not"
        return True, ""

    def versions(self) -> dict[str, str]:
        return installed_versions(("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin"),
                                  required="jax")

    def prepare(self, batch: PagedBatch) -> Prepared:
        import jax
        import jax.numpy as jnp
        from jax import dlpack as jax_dlpack

        module = _pallas_module()
        spec, device = batch.spec, batch.device
        interpret = device.type == "cpu"
        plan = pallas_plan(spec.max_pages, spec.page_size)

        # Conversion: DLPack into JAX (no copy), head-major pages (a copy), the scaled q, the padded table.
        started = time.perf_counter()
        q_scaled = scaled_query(batch.q, spec.scale)
        table = padded_block_table(batch.block_table, plan.width)
        lengths = batch.kv_lens.to(torch.int32).contiguous()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        fp8 = batch.k_scale is not None
        if fp8:  # fp8 bytes cross DLPack as uint8 and become float8_e4m3fn again in the transpose
            to_head_major = jax.jit(lambda x: jnp.transpose(jax.lax.bitcast_convert_type(x, jnp.float8_e4m3fn),
                                                            HEAD_MAJOR_AXES))
        else:
            to_head_major = jax.jit(lambda x: jnp.transpose(x, HEAD_MAJOR_AXES))
        q_j = jax_dlpack.from_dlpack(q_scaled)
        pages_in = [cache.contiguous().view(torch.uint8) if fp8 else cache.contiguous()
                    for cache in (batch.k_cache, batch.v_cache)]
        k_pages, v_pages = (to_head_major(jax_dlpack.from_dlpack(pages)) for pages in pages_in)
        table_j = jax_dlpack.from_dlpack(table)
        lengths_j = jax_dlpack.from_dlpack(lengths)
        args = (q_j, k_pages, v_pages, table_j, lengths_j)
        keep_alive: tuple[Any, ...] = (q_scaled, table, lengths)  # torch memory the imported arrays alias
        if fp8:
            scales = [scale_pages(scale, spec.num_kv_heads, batch.k_cache.shape[0], spec.page_size)
                      for scale in (batch.k_scale, batch.v_scale)]
            args += tuple(jax_dlpack.from_dlpack(scale) for scale in scales)  # k_scales_pages, v_scales_pages
            keep_alive += tuple(scales)
        for array in args:
            array.block_until_ready()
        conversion_s = time.perf_counter() - started
        features = feature_arguments(spec)
        attempts: list[str] = []
        started = time.perf_counter()
        for overrides in ({}, *STAGE_LADDER):
            chosen = PallasPlan(**{**plan.__dict__, **overrides})
            try:
                compiled = module.paged_attention.lower(*args, interpret=interpret, **chosen.static_args(),
                                                        **features).compile()
                compiled(*args).block_until_ready()
                break
            except Exception as error:  # noqa: BLE001 - a resource limit is retried, then declined
                attempts.append(f"{chosen.static_args()}: {type(error).__name__}: {str(error).strip()[:200]}")
                if not _is_resource_error(error):
                    if isinstance(error, (ValueError, NotImplementedError, AssertionError)):
                        raise Unsupported(f"Pallas paged_attention: {type(error).__name__}: {error}") from error
                    raise
        else:
            raise Unsupported(f"Pallas paged_attention runs out of GPU resources for page size {spec.page_size}, "
                              f"D {spec.head_dim}: {' | '.join(attempts)}")
        compile_s = time.perf_counter() - started

        def run() -> torch.Tensor:
            out = compiled(*args)
            out.block_until_ready()
            return torch.from_dlpack(out)  # [B, Hq, D] == [T, Hq, D] for decode

        run.keep_alive = keep_alive  # type: ignore[attr-defined]
        notes: dict[str, Any] = {
            "entry_point": "jax.experimental.pallas.ops.gpu.paged_attention (AOT-compiled)",
            "conversion_s": round(conversion_s, 4), "compile_s": round(compile_s, 4),
            "setup_s": round(conversion_s + compile_s, 4), "pallas": chosen.static_args(),
            "block_table_width": chosen.width, "interpret": interpret, "jax": jax.__version__,
        }
        if attempts:
            notes["compile_retries"] = attempts
        if features:
            notes["features"] = dict(features)
        if fp8:
            notes["fp8_kv"] = (f"{spec.kv_dtype} k_pages/v_pages with k_scales_pages/v_scales_pages [Hkv, pages, "
                               f"page_size] filled from per-{spec.kv_scale} scales")
        return Prepared(run=run, notes=notes, lse_note=LSE_NOTE, external_streams=device.type == "cuda")
