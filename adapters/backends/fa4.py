"""FlashAttention 4 (flash-attn-4, CuTe DSL; module ``flash_attn.cute``): ``flash_attn_varlen_func``
with a page table, on the GPUs where its paged path exists (SM90 from 4.0.0b5, SM100/SM110; not SM80).

Call (everything after v by keyword: FA4's 4th positional parameter is ``qv``, not ``cu_seqlens_q``)::

    out, lse = flash_attn_varlen_func(q [T, Hq, D], k_cache, v_cache,        # NHD pages as they are
                                      cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max q_len,
                                      seqused_k=kv_lens, page_table=block_table,   # never cu_seqlens_k
                                      softmax_scale=scale, causal=causal, return_lse=True)

- ``page_table`` [B, max_pages] int32 with ``seqused_k`` (FA4 asserts "page_table is not supported with
  cu_seqlens_k"); the cache shape ``[num_pages, page_size, Hkv, D]`` is FA4's paged K/V layout.
- Causal is bottom-right (``col_limit_right = row + seqlen_k - seqlen_q``).
- Pages: on SM90 a page equal to the kernel's KV tile (128 keys at D 64 and 128, 80 at D 256) loads by TMA;
  any other size takes the cp.async (non-TMA) path (``notes["paged_kv_tma"]``). Rows past a sequence's
  kv length inside its last page must be finite (P = 0 times a NaN row is NaN): ours are zeros.
- LSE: ``[Hq, T]`` float32, natural log; ``to_lse`` transposes it.
- No split-KV on SM90 (``num_splits`` stays 1).

Model features (read from flash-attn-4's ``flash_attn/cute/interface.py``, ``mask.py``, ``softmax.py`` and
``utils.py`` at the repository's tags 4.0.0b5 to 4.0.0b27, the newest it holds; the GPU machine has
4.0.0b36, newer than any tag read here), passed by `fa4_arguments`:

- sliding window: ``window_size=(W - 1, 0)``. FA4's local mask keeps key columns
  ``row + seqlen_k - seqlen_q - window_size[0] <= j <= row + seqlen_k - seqlen_q + window_size[1]`` (the
  same bounds as flash-attn 2), so a left bound of W - 1 gives the suite's ``p - W < j <= p``. With causal
  the right bound is forced to 0 and the kernel runs its local (not causal) mask; on SM90 a local kernel
  picks another KV tile at head dims 192 and 256 (`sm90_kv_tile`).
- soft-cap: ``softcap=c``, applied as a score_mod after ``softmax_scale`` (``c * tanh(s / c)`` of the
  scaled score). SM100 at head dim 256 asserts "does not support softcap" (then ``unsupported``).
- sinks: ``learnable_sink`` = the batch's ``[Hq]`` float32 sink logits (float32 accepted from 4.0.0b26;
  earlier betas assert "learnable_sink must be bfloat16", which `prepare` reports as ``unsupported``).
  ``Softmax.finalize`` adds ``exp(sink)`` to each row's sum before it writes the LSE, and a row with no keys
  gets the sink itself as its LSE: FA4's returned LSE includes the sink, the suite's convention, so
  `fa4_lse` stays a transpose.
- fp8 KV cache: declined (`FEATURE_REASONS`): FA4 takes fp8 only for q, k and v together (one dtype,
  with ``q_descale``/``k_descale``/``v_descale`` of shape ``[B, Hkv]``) and only on SM100.
- FA4 compiles each kernel configuration with the CuTe DSL at first call (in ``prepare``;
  ``notes["setup_s"]``); with ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1`` (set by `worker_env`)
  compiled kernels are kept on disk for later processes.

Packaging trap: flash-attn-4 installs ``flash_attn/cute/`` without a ``flash_attn/__init__.py``, and
flash-attn 2 (``flash_attn``, a regular package) ships an *older* ``flash_attn/cute`` of its own. With
both on the path, ``import flash_attn.cute`` silently gives flash-attn 2's copy. `load_fa4` therefore
loads the ``flash_attn.cute`` package from flash-attn-4's own files (located through its distribution
metadata) and checks where it came from. The CuTe DSL's ``nvidia_cutlass_dsl_packages.pth`` is not
read for ``pip install --target`` folders: `load_fa4` adds ``nvidia_cutlass_dsl/dsl_packages`` to
``sys.path`` when ``import cutlass`` fails without it, as that .pth would.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

from adapters.base import Adapter, Prepared, Unsupported, installed_versions, register
from adapters.batch import BatchSpec, PagedBatch
from adapters.features import window_left

DISTRIBUTION = "flash-attn-4"
DTYPES = ("bf16", "fp16")
PAGED_ARCH_MAJORS = (9, 10, 11)
"""Compute capabilities (major) with a paged forward in FA4: SM90 (from 4.0.0b5) and SM100/SM110
(the SM80 and SM120 paths assert "paged KV not supported")."""


MODEL_FEATURES = frozenset({"sliding_window", "softcap", "sinks"})
"""Features FA4's ``flash_attn_varlen_func`` takes: ``window_size``, ``softcap``, ``learnable_sink``."""
FEATURE_REASONS = {
    "fp8_kv": "flash_attn.cute.flash_attn_varlen_func takes fp8 only for q, k and v together (\"q, k, v, and qv "
              "must have the same dtype\", with q_descale/k_descale/v_descale [B, Hkv]) and only on SM100 (\"FP8 is "
              "only supported on SM100 (compute capability 10.x) for FA4 CuTe.\", flash-attn-4 4.0.0b10-b27): no "
              "fp16/bf16 query over an fp8 KV cache",
}
"""Why the features FA4 lacks are declined, in its terms."""


class FA4ImportError(ImportError):
    """flash-attn-4 cannot be loaded here; the message says why."""


def _distribution_package_dir(distribution: str = DISTRIBUTION) -> Path:
    """The ``flash_attn/cute`` folder the installed flash-attn-4 distribution owns."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FA4ImportError(f"{distribution} is not installed (pip install {distribution})") from None
    init = Path(str(dist.locate_file("flash_attn/cute/__init__.py")))
    if not init.is_file():
        raise FA4ImportError(f"{distribution} {dist.version} has no flash_attn/cute/__init__.py at {init}")
    return init.parent


def ensure_cutlass_dsl_path() -> None:
    """Make ``import cutlass`` (the CuTe DSL) work where the ``nvidia_cutlass_dsl_packages.pth`` of
    nvidia-cutlass-dsl was not processed (``pip install --target``): put ``dsl_packages`` on sys.path."""
    if importlib.util.find_spec("cutlass") is not None:
        return
    spec = importlib.util.find_spec("nvidia_cutlass_dsl")
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "dsl_packages"
        if candidate.is_dir() and str(candidate) not in sys.path:
            sys.path.insert(0, str(candidate))
            importlib.invalidate_caches()
            return


def load_fa4(package_dir: Path | None = None) -> types.ModuleType:
    """FA4's ``flash_attn.cute`` module, loaded from flash-attn-4's own files even when flash-attn 2's
    regular ``flash_attn`` package (with its older ``cute`` folder) is importable (module docstring)."""
    package_dir = (package_dir or _distribution_package_dir()).resolve()
    loaded = sys.modules.get("flash_attn.cute")
    if loaded is not None:
        origin = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if origin == package_dir:
            return loaded
        raise FA4ImportError(f"another flash_attn.cute is already imported from {origin} (flash-attn 2 ships an "
                             f"older copy); flash-attn-4's is at {package_dir}")
    ensure_cutlass_dsl_path()
    try:
        parent = importlib.import_module("flash_attn")
    except Exception:  # noqa: BLE001 - e.g. flash-attn 2 present but its extension does not load here
        parent = types.ModuleType("flash_attn")
        parent.__path__ = [str(package_dir.parent)]  # a namespace-like parent holding only FA4
        sys.modules["flash_attn"] = parent
    spec = importlib.util.spec_from_file_location("flash_attn.cute", package_dir / "__init__.py",
                                                  submodule_search_locations=[str(package_dir)])
    if spec is None or spec.loader is None:
        raise FA4ImportError(f"cannot load flash_attn.cute from {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["flash_attn.cute"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [name for name in sys.modules if name == "flash_attn.cute" or name.startswith("flash_attn.cute.")]:
            del sys.modules[name]
        raise
    parent.cute = module
    return module


def feature_arguments(batch: PagedBatch) -> dict[str, Any]:
    """The model-feature keyword arguments of FA4's varlen call (none for plain attention)."""
    spec = batch.spec
    kwargs: dict[str, Any] = {}
    if spec.sliding_window is not None:
        kwargs["window_size"] = (window_left(spec.sliding_window), 0)
    if spec.softcap is not None:
        kwargs["softcap"] = float(spec.softcap)
    if spec.sinks:
        kwargs["learnable_sink"] = batch.sinks  # [Hq] float32
    return kwargs


def fa4_arguments(batch: PagedBatch) -> dict[str, Any]:
    """Keyword arguments of FA4's paged varlen call for ``batch`` (after q, k_cache, v_cache)."""
    spec = batch.spec
    return dict(cu_seqlens_q=batch.cu_seqlens_q, max_seqlen_q=spec.max_q_len, seqused_k=batch.kv_lens,
                page_table=batch.block_table, softmax_scale=spec.scale, causal=spec.causal, return_lse=True,
                **feature_arguments(batch))


def fa4_lse(raw: torch.Tensor) -> torch.Tensor:
    """FA4's varlen LSE ``[Hq, T]`` (natural log, the sink included when there is one) as ``[T, Hq]``."""
    return raw.float().transpose(0, 1)


def sm90_kv_tile(head_dim: int, causal: bool, local: bool = False) -> int:
    """FA4's SM90 forward KV tile for q/k/v of one head dim (as its ``_tile_size_fwd_sm90`` chooses it;
    ``local``: a sliding window, for which FA4 runs its local mask instead of the causal one): a page of
    exactly this many keys loads by TMA."""
    if head_dim <= 64:
        return 128
    if head_dim <= 96:
        return 128 if causal or local else 144
    if head_dim <= 128:
        return 128
    if head_dim <= 192:
        return 96 if local else 112
    return 64 if local else 80


@register
class FA4Adapter(Adapter):
    """FlashAttention 4 (CuTe DSL) paged varlen forward."""

    name = "fa4"
    display_name = "FlashAttention 4"
    disk_compile_cache = True
    packages = ("flash-attn-4", "nvidia-cutlass-dsl", "quack-kernels", "apache-tvm-ffi")
    model_features = MODEL_FEATURES
    feature_reasons = FEATURE_REASONS

    def __init__(self) -> None:
        self._module: types.ModuleType | None = None

    def worker_env(self, device_type: str) -> dict[str, str]:
        return {"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1"} if device_type == "cuda" else {}

    def _fa4(self) -> types.ModuleType:
        if self._module is None:
            self._module = load_fa4()
        return self._module

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
        major, minor = torch.cuda.get_device_capability(device)
        if major not in PAGED_ARCH_MAJORS:
            words = "paged KV not supported on SM 8.0" if major == 8 else "no paged forward for this architecture"
            return False, f"FlashAttention 4 on SM{major}{minor}: {words} (paged FA4 runs on SM90, SM100, SM110)"
        try:
            module = self._fa4()
            module.flash_attn_varlen_func  # noqa: B018 - the entry point must exist
        except Exception as error:  # noqa: BLE001 - any import failure is the reason
            return False, f"cannot load flash-attn-4 (flash_attn.cute): {type(error).__name__}: {error}"
        return True, ""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if spec.dtype not in DTYPES:
            return False, "inputs must be float16, bfloat16, fp8 e4m3fn, or fp8 e5m2"
        if spec.num_q_heads % spec.num_kv_heads:
            return False, "num_head must be divisible by num_head_kv"
        return True, ""

    def versions(self) -> dict[str, str]:
        return installed_versions(("flash-attn-4", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-base",
                                   "quack-kernels", "apache-tvm-ffi"), required="flash-attn-4")

    def close(self) -> None:
        self._module = None

    def prepare(self, batch: PagedBatch) -> Prepared:
        module = self._fa4()
        spec = batch.spec
        kwargs = fa4_arguments(batch)
        q, k_cache, v_cache = batch.q, batch.k_cache, batch.v_cache

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            out, lse = module.flash_attn_varlen_func(q, k_cache, v_cache, **kwargs)
            return out, lse

        started = time.perf_counter()
        try:
            run()
        except AssertionError as error:  # FA4 validates its inputs with assertions: its own words
            raise Unsupported(f"FlashAttention 4: {error}") from error
        except NotImplementedError as error:
            raise Unsupported(f"FlashAttention 4: NotImplementedError: {error}") from error
        torch.cuda.synchronize(batch.device)
        major, _ = torch.cuda.get_device_capability(batch.device)
        notes: dict[str, Any] = {"entry_point": "flash_attn.cute.flash_attn_varlen_func(page_table, seqused_k)",
                                 "setup_s": round(time.perf_counter() - started, 4)}
        if major == 9:
            local = spec.sliding_window is not None
            notes["paged_kv_tma"] = spec.page_size == sm90_kv_tile(spec.head_dim, spec.causal and not local, local)
        return Prepared(run=run, notes=notes, to_lse=fa4_lse)
