"""FlashInfer (flashinfer-python, ``import flashinfer``): its paged decode and paged prefill wrappers
over our NHD cache, once per internal backend it offers on this GPU, so that FlashInfer's own choice
among them is visible beside each of them:

| adapter            | ``backend=`` | decode batches (every q_len == 1)                         | prefill and mixed batches        |
| ------------------ | ------------ | --------------------------------------------------------- | -------------------------------- |
| ``flashinfer``     | ``"auto"``   | ``BatchDecodeWithPagedKVCacheWrapper`` with its defaults   | ``BatchPrefillWithPagedKVCacheWrapper`` |
| ``flashinfer-fa2`` | ``"fa2"``    | decode wrapper, CUDA-core and tensor-core kernels (both timed, the faster kept) | prefill wrapper |
| ``flashinfer-fa3`` | ``"fa3"``    | decode wrapper with ``use_tensor_cores=True`` (fa3 runs only there) | prefill wrapper (SM90 only)  |
| ``flashinfer-cudnn`` | ``"cudnn"`` | decode wrapper (cuDNN's paged SDPA decode graph)          | prefill wrapper (cuDNN graph)    |
| ``flashinfer-batch-attention`` | --  | ``BatchAttention`` (one persistent kernel for prefill and decode rows) | the same       |

What ``auto`` resolved to is recorded (``notes["flashinfer_backend"]``: the decode wrapper's
``resolved_backend``, the prefill wrapper's planned backend).

The page description FlashInfer reads (`flashinfer_pages`, pure, on the host): ``qo_indptr`` =
``cu_seqlens_q``; ``paged_kv_indptr`` [B+1] = running sum of each sequence's page count;
``paged_kv_indices`` = the block table's first ``pages_per_seq[b]`` entries of each row, concatenated;
``paged_kv_last_page_len`` [B] = tokens in each sequence's last page (1..page_size). The caches are
passed as the tuple ``(k_cache, v_cache)`` with ``kv_layout="NHD"``: no copy. Causal is bottom-right
in FlashInfer (key j masked iff ``j + qo_len > kv_len + i``), as here; GQA by ``num_qo_heads`` /
``num_kv_heads``.

``prepare`` builds the wrappers (each with its own zeroed 256 MiB float workspace), calls ``plan()``
(host work, and the first time a kernel configuration is met FlashInfer compiles it with nvcc: JIT,
cached under ``~/.cache/flashinfer/<version>/<arch>/``) and runs once (the cuDNN backend builds its
graph at the first run); ``run`` is ``wrapper.run(q, (k_cache, v_cache), out=, lse=, return_lse=True)``
into buffers allocated in ``prepare``. FlashInfer's LSE is base 2 (``max + log2(sum(exp2(...)))``):
``to_lse`` multiplies by ln 2 -- except the cuDNN prefill path, asked for its native natural-log
stats (``lse_base="ln"``, which skips FlashInfer's conversion kernel).

Model features (`adapters.features`), read from FlashInfer 0.7.4's wrappers (`calls` builds every
argument, pure and testable without FlashInfer):

- sliding window W: ``plan(window_left=W - 1)`` (FlashInfer's left bound is inclusive: ``window_left=N``
  keeps N + 1 keys, the query's own included), on the prefill and decode wrappers and the sink wrappers'
  constructors (which compile the window in); ``BatchAttention.plan`` has no window.
- soft-cap c: ``plan(logits_soft_cap=c)`` (and ``BatchAttention.run(logits_soft_cap=c)``, which the
  holistic kernel reads at run time).
- sinks: the paged wrappers' fa2/fa3 kernels drop ``run(sinks=)`` (only trtllm-gen and the cuDNN decode
  graph read it), so the fa2/fa3 rows run FlashInfer's sink variant: ``BatchAttentionWithAttentionSinkWrapper``
  (prefill) / ``BatchDecodeWithAttentionSinkWrapper`` (decode, tensor cores), called
  ``run(q, kv, sinks, sm_scale, ...)``; the cuDNN row's decode wrapper takes ``run(sinks=)``. The sink
  enters the softmax denominator and the returned LSE (base 2, like the rest: ``to_lse`` unchanged).
- fp8 KV: ``plan(kv_data_type=torch.float8_e4m3fn)`` and ``run(k_scale=, v_scale=)`` as Python floats
  (FlashInfer folds k_scale into sm_scale and multiplies the output by v_scale); one scale per tensor,
  so per-KV-head scales are declined.

A feature a row's entry point lacks is declined before `prepare` in FlashInfer's words
(`Adapter.feature_reasons`, `feature_refusal`); a kernel FlashInfer has but that is not built ahead of
time where the JIT is switched off is `NotAvailable` (skipped), naming the variant it needed.

A layout FlashInfer refuses (its ``NotImplementedError`` / ``ValueError``, or a kernel dispatch
"not supported") is `Unsupported` with its own words; a failing nvcc build stays an error.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from adapters.base import Adapter, NotAvailable, Prepared, Unsupported, register
from adapters.batch import BatchSpec, PagedBatch
from adapters.features import window_left

WORKSPACE_BYTES = 256 << 20
"""Float workspace of each wrapper (split-KV partial results); FlashInfer recommends 128 MiB."""
DTYPES = ("bf16", "fp16")
"""FlashInfer's attention kernels take fp16/bf16 (or fp8) q/k/v; the suite's fp32 batches are declined."""
FA3_HEAD_DIMS = (64, 128, 256)
"""Head dims FlashInfer's SM90 (fa3) prefill kernels instantiate (``is_fa3_prefill_head_dim_supported``)."""
LN2 = math.log(2.0)
RunPair = tuple[torch.Tensor, torch.Tensor]
REFUSAL_WORDS = ("not supported", "unsupported", "only support", "does not support", "requires")
"""Words of a FlashInfer refusal raised as RuntimeError from a kernel's dispatch (e.g. a GQA group size
its decode kernel does not instantiate)."""


@dataclass(frozen=True)
class FlashInferPages:
    """The ragged page description of FlashInfer's paged wrappers (int32 tensors on the host)."""

    qo_indptr: torch.Tensor
    """[B + 1] query offsets in tokens (``cu_seqlens_q``)."""
    kv_indptr: torch.Tensor
    """[B + 1] offsets of each sequence's pages in ``kv_indices``."""
    kv_indices: torch.Tensor
    """[sum of pages] physical page ids, sequence after sequence, in logical order."""
    last_page_len: torch.Tensor
    """[B] tokens in each sequence's last page, 1..page_size (0 only for an empty sequence)."""


def flashinfer_pages(spec: BatchSpec, block_table: torch.Tensor, cu_seqlens_q: torch.Tensor) -> FlashInferPages:
    """``block_table [B, max_pages]`` + lengths -> FlashInfer's indptr / indices / last-page-length form."""
    table = block_table.cpu().to(torch.int32)
    pages = torch.tensor(spec.pages_per_seq, dtype=torch.int32)
    kv_indptr = torch.zeros(spec.batch_size + 1, dtype=torch.int32)
    kv_indptr[1:] = torch.cumsum(pages, 0)
    kv_indices = torch.cat([table[seq, :count] for seq, count in enumerate(spec.pages_per_seq)])
    last = [(kv - 1) % spec.page_size + 1 if kv > 0 else 0 for kv in spec.kv_lens]
    return FlashInferPages(
        qo_indptr=cu_seqlens_q.cpu().to(torch.int32).contiguous(),
        kv_indptr=kv_indptr,
        kv_indices=kv_indices.contiguous(),
        last_page_len=torch.tensor(last, dtype=torch.int32),
    )


def is_pure_decode(spec: BatchSpec) -> bool:
    return all(q_len == 1 for q_len in spec.q_lens)


def lse_from_base2(raw: torch.Tensor) -> torch.Tensor:
    """FlashInfer's base-2 LSE ``[T, Hq]`` as natural log."""
    return raw.float() * LN2


# ------------------------------------------------------------------------------ model features

SINK_WRAPPERS = {"prefill": "BatchAttentionWithAttentionSinkWrapper", "decode": "BatchDecodeWithAttentionSinkWrapper"}
"""FlashInfer's attention-sink variant (``AttentionSink``, fa2 and fa3), one wrapper per batch kind."""

PER_HEAD_SCALES = ("FlashInfer's fp8 KV cache takes one dequantisation scale per tensor: run(k_scale=, v_scale=) "
                   "are single floats (k_scale is folded into sm_scale, the output is multiplied by v_scale); it has "
                   "no per-KV-head scale argument (its finer fp8 scales are per token and head, "
                   "plan(use_token_head_sf=True) with run(kv_cache_sf=), fa2 only)")
"""Why every FlashInfer row declines an fp8 cache with per-KV-head scales."""

SINKS_WITH_SOFTCAP = ("FlashInfer's attention-sink wrappers (BatchAttentionWithAttentionSinkWrapper, "
                      "BatchDecodeWithAttentionSinkWrapper) compile the AttentionSink variant, whose only extra "
                      "parameters are sink and sm_scale: it applies no logits soft-cap (plan(logits_soft_cap=) "
                      "would be ignored), and the wrappers' own kernels drop run(sinks=)")
"""Why the fa2/fa3 rows decline sinks together with a soft-cap."""

CUDNN_PREFILL_REFUSALS = {
    "sliding_window": ("FlashInfer's cuDNN prefill (BatchPrefillWithPagedKVCacheWrapper(backend='cudnn')) refuses "
                       "window_left: 'cuDNN paged prefill supports only causal or full attention without position "
                       "encoding, window_left, logits_soft_cap or custom masks' (its decode wrapper takes it)"),
    "sinks": ("FlashInfer's cuDNN prefill (BatchPrefillWithPagedKVCacheWrapper(backend='cudnn')) refuses sinks: "
              "'cuDNN paged prefill does not support sinks, NVFP4 or skip-softmax' (its decode wrapper takes them)"),
}
"""The cuDNN row's prefill and mixed batches: FlashInfer's cuDNN prefill wrapper lacks what its decode wrapper has."""


def feature_plan_kwargs(spec: BatchSpec, *, window: bool = True) -> dict[str, Any]:
    """``plan()`` keywords of the window (``window_left = W - 1``) and the soft-cap (a float), when asked for."""
    kwargs: dict[str, Any] = {}
    if window and spec.sliding_window is not None:
        kwargs["window_left"] = window_left(spec.sliding_window)
    if spec.softcap is not None:
        kwargs["logits_soft_cap"] = float(spec.softcap)
    return kwargs


def prefill_plan_kwargs(spec: BatchSpec) -> dict[str, Any]:
    """Keywords of ``BatchPrefillWithPagedKVCacheWrapper.plan`` after the page description and head sizes."""
    return {"causal": spec.causal, "sm_scale": spec.scale, "q_data_type": spec.torch_dtype,
            "kv_data_type": spec.cache_dtype, **feature_plan_kwargs(spec)}


def decode_plan_kwargs(spec: BatchSpec) -> dict[str, Any]:
    """Keywords of ``BatchDecodeWithPagedKVCacheWrapper.plan`` after the page description and head sizes."""
    return {"q_data_type": spec.torch_dtype, "kv_data_type": spec.cache_dtype, "sm_scale": spec.scale,
            **feature_plan_kwargs(spec)}


def holistic_plan_kwargs(spec: BatchSpec) -> dict[str, Any]:
    """Keywords of ``BatchAttention.plan`` (no window: it has no such argument)."""
    return {"causal": spec.causal, "sm_scale": spec.scale, "q_data_type": spec.torch_dtype,
            "kv_data_type": spec.cache_dtype, **feature_plan_kwargs(spec, window=False)}


def sink_wrapper_init(spec: BatchSpec, backend: str) -> dict[str, Any]:
    """Constructor keywords of the sink wrappers: they compile the variant for the dtypes, head dims and
    whether a window is used (``window_left >= 0``), so these come at construction, besides ``plan()``."""
    return {"kv_layout": "NHD", "backend": backend, "q_data_type": spec.torch_dtype,
            "kv_data_type": spec.cache_dtype, "head_dim_qk": spec.head_dim, "head_dim_vo": spec.head_dim,
            "window_left": window_left(spec.sliding_window) if spec.sliding_window is not None else -1}


def scale_kwargs(spec: BatchSpec, k_scale: float | None = None, v_scale: float | None = None) -> dict[str, float]:
    """``run(k_scale=, v_scale=)`` of an fp8 cache with per-tensor scales, as Python floats (FlashInfer
    multiplies sm_scale by k_scale and the output by v_scale); empty for a cache in the query's dtype."""
    if spec.kv_dtype is None:
        return {}
    if spec.kv_scale != "tensor":
        raise ValueError(PER_HEAD_SCALES)
    if k_scale is None or v_scale is None:
        raise ValueError("an fp8 cache needs its k_scale and v_scale")
    return {"k_scale": float(k_scale), "v_scale": float(v_scale)}


def batch_scales(batch: PagedBatch) -> tuple[float | None, float | None]:
    """The batch's per-tensor fp8 scales as floats (read once in ``prepare``), or (None, None)."""
    if batch.k_scale is None or batch.k_scale.numel() != 1:
        return None, None
    return float(batch.k_scale.reshape(())), float(batch.v_scale.reshape(()))


def kernel_variant(spec: BatchSpec, sink_variant: bool = False) -> str:
    """The FlashInfer kernel a batch needs, in words (the `NotAvailable` reason when it is not built)."""
    cache = "fp8 e4m3" if spec.kv_dtype == "fp8" else spec.dtype
    parts = [f"{spec.dtype} q", f"{cache} KV", f"head dim {spec.head_dim}"]
    if spec.sliding_window is not None:
        parts.append("sliding window")
    if spec.softcap is not None:
        parts.append("logits soft-cap")
    if sink_variant:
        parts.append("AttentionSink variant")
    return ", ".join(parts)


@dataclass(frozen=True)
class FlashInferCall:
    """One FlashInfer entry point for a batch, as data: which wrapper, built, planned and run how.

    ``kind`` says which positional arguments the executor adds: "prefill" (workspace; qo_indptr,
    kv_indptr, kv_indices, last_page_len, Hq, Hkv, D, page_size), "decode" (workspace; kv_indptr,
    kv_indices, last_page_len, Hq, Hkv, D, page_size) or "holistic" (``BatchAttention``: device;
    qo_indptr, kv_indptr, kv_indices on the device, kv_lens, Hq, Hkv, D, D, page_size). ``run`` is
    called ``run(q, (k_cache, v_cache), *sink_args, out=, lse=, **run)`` where ``sinks`` is
    "positional" (the sink wrappers: ``sink_args = (sinks, sm_scale)``), "keyword" (``run(sinks=)``)
    or "" (none)."""

    name: str
    wrapper: str
    kind: str
    init: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    sinks: str = ""


def aot_modules() -> list[str]:
    """Names of FlashInfer modules built ahead of time and installed in ``flashinfer/data/aot`` (loaded
    there instead of compiled; empty without flashinfer)."""
    import importlib.util

    spec = importlib.util.find_spec("flashinfer")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / "aot"
        if folder.is_dir():
            found += sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.so").is_file())
    return found


def _curand_headers() -> str | None:
    """The include folder of an installed nvidia-curand package (``nvidia/*/include/curand_kernel.h``)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for location in (spec.submodule_search_locations or []) if spec else []:
        for header in sorted(Path(location).glob("*/include/curand_kernel.h")):
            return str(header.parent)
    return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_refusal(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return False
    if isinstance(error, (NotImplementedError, ValueError)):
        return True
    text = str(error).lower()
    if "ninja" in text or "nvcc" in text or "error:" in text:  # a failing JIT build is an error, not a decline
        return False
    return any(word in text for word in REFUSAL_WORDS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class _FlashInfer(Adapter):
    """One FlashInfer internal backend (``fi_backend``) through its paged decode / prefill wrappers."""

    fi_backend: ClassVar[str] = "auto"
    display_name = "FlashInfer"
    packages = ("flashinfer-python", "apache-tvm-ffi", "nvidia-cudnn-frontend")

    # ------------------------------------------------------------------------------ capability

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
        try:
            import flashinfer
            from flashinfer import BatchDecodeWithPagedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper  # noqa: F401
        except Exception as error:  # noqa: BLE001 - any import failure is the reason
            return False, f"cannot import flashinfer: {type(error).__name__}: {error}"
        major, minor = torch.cuda.get_device_capability(device)
        if self.fi_backend == "fa3" and major != 9:
            return False, (f"FlashInfer's fa3 backend runs on SM90 (Hopper) only (is_sm90a_supported); "
                           f"this GPU is SM{major}{minor}")
        if self.fi_backend == "cudnn":
            try:
                from flashinfer.cudnn.decode import CUDNN_AVAILABLE
            except Exception as error:  # noqa: BLE001
                return False, f"FlashInfer's cudnn backend is not importable: {type(error).__name__}: {error}"
            if not CUDNN_AVAILABLE:
                return False, ("FlashInfer's cudnn backend needs the cuDNN graph API (nvidia-cudnn-frontend, "
                               "import cudnn); without it FlashInfer downloads cubins, which this machine cannot")
            return True, ""
        return self._jit_toolchain()

    @staticmethod
    def _jit_toolchain() -> tuple[bool, str]:
        """fa2/fa3 kernels are compiled by FlashInfer with nvcc at first use, unless built ahead of time
        (``flashinfer/data/aot``, see scripts/build-peers-aot.sh)."""
        if aot_modules():
            return True, ""
        try:
            from flashinfer.jit import cpp_ext
            cuda_home = cpp_ext.get_cuda_path()
        except Exception as error:  # noqa: BLE001
            return False, f"FlashInfer's JIT finds no CUDA toolkit: {type(error).__name__}: {error}"
        nvcc = os.environ.get("FLASHINFER_NVCC", os.path.join(cuda_home, "bin", "nvcc"))
        if not os.path.exists(nvcc) and shutil.which(nvcc) is None:
            return False, (f"FlashInfer compiles its attention kernels with nvcc at first use (JIT); "
                           f"no nvcc at {nvcc} (CUDA_HOME={cuda_home})")
        if not os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h")):
            return False, (f"FlashInfer's JIT compiles against CUDA_HOME={cuda_home}, which has no "
                           f"include/cuda_runtime.h (set CUDA_HOME to the toolkit)")
        return True, ""

    def worker_env(self, device_type: str) -> dict[str, str]:
        """FlashInfer finds the toolkit as CUDA_HOME, else from ``which nvcc`` (two folders up), which is
        wrong for an nvcc wrapper in /usr/local/bin: point it at /usr/local/cuda when that is a toolkit.
        Its fa3 sources include ``curand_kernel.h``: a toolkit without cuRAND's headers gets those of the
        nvidia-curand package, where one is installed."""
        if device_type != "cuda":
            return {}
        env: dict[str, str] = {}
        toolkit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        if not toolkit and os.path.isfile("/usr/local/cuda/bin/nvcc") \
                and os.path.isfile("/usr/local/cuda/include/cuda_runtime.h"):
            toolkit = env["CUDA_HOME"] = "/usr/local/cuda"
        if toolkit and not os.path.isfile(os.path.join(toolkit, "include", "curand_kernel.h")) \
                and not os.environ.get("FLASHINFER_EXTRA_CUDAFLAGS"):
            headers = _curand_headers()
            if headers:
                env["FLASHINFER_EXTRA_CUDAFLAGS"] = f"-I{headers}"
        return env

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if spec.dtype not in DTYPES:
            return False, f"FlashInfer's attention kernels take fp16/bf16 (or fp8) q/k/v, not {spec.dtype}"
        if spec.num_q_heads % spec.num_kv_heads:
            return False, "The num_qo_heads must be a multiple of num_kv_heads"
        if self.fi_backend == "fa3" and spec.head_dim not in FA3_HEAD_DIMS:
            return False, (f"FlashInfer's fa3 (SM90) kernels are instantiated for head_dim in "
                           f"{FA3_HEAD_DIMS}, not {spec.head_dim}")
        return True, ""

    def versions(self) -> dict[str, str]:
        versions: dict[str, str] = {}
        for distribution in ("flashinfer-python", "apache-tvm-ffi", "flashinfer-cubin", "flashinfer-jit-cache"):
            found = _version(distribution)
            if found:
                versions[distribution] = found
        if "flashinfer-python" not in versions:
            versions["flashinfer-python"] = "not installed"
        if self.fi_backend == "cudnn":
            versions["nvidia-cudnn-frontend"] = _version("nvidia-cudnn-frontend") or "not installed"
            try:
                import cudnn
                versions["cudnn_backend"] = str(cudnn.backend_version())
            except Exception:  # noqa: BLE001
                pass
        return versions

    # ------------------------------------------------------------------------------- prepare

    def decode_variants(self) -> dict[str, bool]:
        """Decode entry points: name -> ``use_tensor_cores``."""
        if self.fi_backend == "fa2":
            return {"BatchDecodeWithPagedKVCacheWrapper(cuda cores)": False,
                    "BatchDecodeWithPagedKVCacheWrapper(tensor cores)": True}
        if self.fi_backend == "fa3":  # the decode wrapper reaches fa3 only through its tensor-core path
            return {"BatchDecodeWithPagedKVCacheWrapper(tensor cores)": True}
        return {"BatchDecodeWithPagedKVCacheWrapper": False}

    def _workspace(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)  # zeroed before first use

    # ------------------------------------------------------------------------------ features

    def feature_refusal(self, spec: BatchSpec) -> str:
        """The declared features (`Adapter.feature_refusal`), then what this row's entry points lack in
        combination: per-KV-head fp8 scales, and (`extra_refusals`) whatever the row adds."""
        reasons = [reason for reason in (super().feature_refusal(spec),) if reason]
        if spec.kv_dtype is not None and spec.kv_scale != "tensor" and "fp8_kv" in self.model_features:
            reasons.append(PER_HEAD_SCALES)
        reasons += self.extra_refusals(spec)
        return "; ".join(reasons)

    def extra_refusals(self, spec: BatchSpec) -> list[str]:
        """The fa2/fa3 rows run sinks through the AttentionSink variant, which has no soft-cap."""
        if spec.sinks and spec.softcap is not None and "sinks" in self.model_features:
            return [SINKS_WITH_SOFTCAP]
        return []

    def calls(self, spec: BatchSpec, k_scale: float | None = None,
              v_scale: float | None = None) -> list[FlashInferCall]:
        """The entry points of ``spec`` and every argument they take (pure: no FlashInfer, no device):
        decode batches through the decode wrapper (once per `decode_variants`), others through the
        prefill wrapper; with sinks through FlashInfer's sink wrappers instead."""
        run = {"return_lse": True, **scale_kwargs(spec, k_scale, v_scale)}
        if is_pure_decode(spec):
            if spec.sinks:
                name = SINK_WRAPPERS["decode"] + ("(tensor cores)" if self.fi_backend != "auto" else "")
                return [FlashInferCall(name, SINK_WRAPPERS["decode"], "decode",
                                       sink_wrapper_init(spec, self.fi_backend), decode_plan_kwargs(spec), run,
                                       sinks="positional")]
            return [FlashInferCall(name, "BatchDecodeWithPagedKVCacheWrapper", "decode",
                                   {"kv_layout": "NHD", "use_tensor_cores": tensor_cores, "backend": self.fi_backend},
                                   decode_plan_kwargs(spec), run)
                    for name, tensor_cores in self.decode_variants().items()]
        if spec.sinks:
            return [FlashInferCall(SINK_WRAPPERS["prefill"], SINK_WRAPPERS["prefill"], "prefill",
                                   sink_wrapper_init(spec, self.fi_backend), prefill_plan_kwargs(spec), run,
                                   sinks="positional")]
        return [FlashInferCall("BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper", "prefill",
                               {"kv_layout": "NHD", "backend": self.fi_backend}, prefill_plan_kwargs(spec), run)]

    # ------------------------------------------------------------------------------- prepare

    def _launch(self, flashinfer, call: FlashInferCall, batch: PagedBatch, pages: FlashInferPages,
                out: torch.Tensor, lse: torch.Tensor) -> tuple[Callable[[], RunPair], str, bool]:
        """Build, plan and run ``call`` once -> (the timed run, the backend FlashInfer resolved to, whether
        its LSE is base 2)."""
        spec, device = batch.spec, batch.device
        cls = getattr(flashinfer, call.wrapper)
        heads = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim)
        if call.kind == "holistic":
            wrapper = cls(device=str(device), **call.init)
            # Unlike the decode/prefill wrappers, BatchAttention.plan keeps kv_indices as given and its
            # kernel reads them on the device: host page indices are an illegal memory access (seen on the
            # H200 with flashinfer 0.7.4, every batch). The indptr and lengths are read on the host.
            wrapper.plan(pages.qo_indptr, pages.kv_indptr, pages.kv_indices.to(device),
                         torch.tensor(spec.kv_lens, dtype=torch.int32), *heads, spec.head_dim, spec.page_size,
                         **call.plan)
        else:
            wrapper = cls(self._workspace(device), **call.init)
            indptr = (pages.qo_indptr,) if call.kind == "prefill" else ()
            wrapper.plan(*indptr, pages.kv_indptr, pages.kv_indices, pages.last_page_len, *heads, spec.page_size,
                         **call.plan)
        q, kv = batch.q, (batch.k_cache, batch.v_cache)
        sink_args: tuple = ()
        run_kwargs = dict(call.run)
        if call.sinks == "positional":
            sink_args = (batch.sinks, spec.scale)
        elif call.sinks == "keyword":
            run_kwargs["sinks"] = batch.sinks
        if call.kind == "decode":
            resolved = str(getattr(wrapper, "resolved_backend", None) or getattr(wrapper, "_backend", self.fi_backend))
        elif call.kind == "holistic":
            resolved = "holistic (persistent)"
        else:
            resolved = str(getattr(wrapper, "_backend", self.fi_backend))
            if resolved == "cudnn" and "lse_base" in inspect.signature(wrapper.run).parameters:
                run_kwargs["lse_base"] = "ln"  # cuDNN's native stats: no conversion kernel in the timed call

        def run_call() -> RunPair:
            return wrapper.run(q, kv, *sink_args, out=out, lse=lse, **run_kwargs)

        run_call()
        return run_call, resolved, run_kwargs.get("lse_base") != "ln"

    def _entry_points(self, flashinfer, batch: PagedBatch, pages: FlashInferPages, out: torch.Tensor,
                      lse: torch.Tensor) -> tuple[dict[str, Callable[[], RunPair]], dict[str, str], bool]:
        """(entry points by name, the FlashInfer backend each resolved to, whether the LSE is base 2);
        each entry point planned and run once."""
        candidates: dict[str, Callable[[], RunPair]] = {}
        resolved: dict[str, str] = {}
        base2 = True
        for call in self.calls(batch.spec, *batch_scales(batch)):
            candidates[call.name], resolved[call.name], base2 = self._launch(flashinfer, call, batch, pages, out, lse)
        return candidates, resolved, base2

    def prepare(self, batch: PagedBatch) -> Prepared:
        import flashinfer

        spec, device = batch.spec, batch.device
        started = time.perf_counter()
        pages = flashinfer_pages(spec, batch.block_table, batch.cu_seqlens_q)
        out = torch.empty_like(batch.q)
        lse = torch.empty(spec.total_q, spec.num_q_heads, dtype=torch.float32, device=device)
        try:
            candidates, resolved, base2 = self._entry_points(flashinfer, batch, pages, out, lse)
        except Exception as error:  # noqa: BLE001 - refusals become Unsupported, the rest stays an error
            if type(error).__name__ == "MissingJITCacheError":
                variant = kernel_variant(spec, spec.sinks and self.fi_backend in ("auto", "fa2", "fa3"))
                raise NotAvailable(f"FlashInfer {self.fi_backend}: no compiled kernel for {variant} here and its "
                                   f"JIT is switched off (FLASHINFER_DISABLE_JIT): {_first_line(error)}") from error
            if _is_refusal(error):
                raise Unsupported(f"FlashInfer {self.fi_backend}: {_first_line(error)}") from error
            raise
        torch.cuda.synchronize(device)
        notes: dict[str, Any] = {"flashinfer_requested": self.fi_backend, "kv_layout": "NHD",
                                 "flashinfer_backend": resolved if len(resolved) > 1 else next(iter(resolved.values())),
                                 "setup_s": round(time.perf_counter() - started, 4),
                                 "aot_modules": len(aot_modules())}
        features = {key: value for call in self.calls(spec, *batch_scales(batch))
                    for key, value in {**call.plan, **call.run}.items()
                    if key in ("window_left", "logits_soft_cap", "kv_data_type", "k_scale", "v_scale")
                    and (key != "kv_data_type" or spec.kv_dtype is not None)}
        if spec.sinks:
            features["sinks"] = "run(q, kv, sinks, sm_scale)" if self.fi_backend != "cudnn" else "run(sinks=)"
        if features:
            notes["flashinfer_features"] = {key: str(value) for key, value in features.items()}
        return Prepared(candidates=candidates, out=out, notes=notes, to_lse=lse_from_base2 if base2 else None)


ALL_FEATURES = frozenset({"sliding_window", "softcap", "sinks", "fp8_kv"})


@register
class FlashInferAutoAdapter(_FlashInfer):
    """FlashInfer with ``backend="auto"``: its own choice among its kernels (with an fp8 cache under a
    16-bit query it takes fa2: its fa3 needs an fp8 query)."""

    name = "flashinfer"
    fi_backend = "auto"
    model_features = ALL_FEATURES


@register
class FlashInferFa2Adapter(_FlashInfer):
    name = "flashinfer-fa2"
    fi_backend = "fa2"
    model_features = ALL_FEATURES


@register
class FlashInferFa3Adapter(_FlashInfer):
    name = "flashinfer-fa3"
    fi_backend = "fa3"
    model_features = frozenset({"sliding_window", "softcap", "sinks"})
    feature_reasons = {
        "fp8_kv": ("FlashInfer's fa3 backend takes an fp8 KV cache only with an fp8 query "
                   "(is_fa3_backend_supported: 'FA3 FP8 KV cache currently requires FP8 query'); the suite's "
                   "query stays fp16/bf16"),
    }


@register
class FlashInferCudnnAdapter(_FlashInfer):
    """FlashInfer's cuDNN path: cuDNN as an engine binds it (packed [T, Hq] Stats with a ragged offset), so
    a cuDNN release check gates it beside the cuDNN bindings (``library``).

    Its decode wrapper (decode batches) takes ``plan(window_left=)`` and ``run(sinks=)``; its prefill
    wrapper (prefill and mixed batches) takes neither (`CUDNN_PREFILL_REFUSALS`), so ``model_features``
    lists what the row runs for decode batches and `extra_refusals` declines the rest."""

    name = "flashinfer-cudnn"
    fi_backend = "cudnn"
    library = "cudnn"
    binding = "FlashInfer's cuDNN path (its own graph: packed [T, Hq] Stats, ragged offsets)"
    model_features = frozenset({"sliding_window", "sinks"})
    feature_reasons = {
        "softcap": ("FlashInfer's cuDNN path has no soft-cap: its decode wrapper raises 'cudnn decode backend does "
                    "not support logits_soft_cap.' and its prefill wrapper 'cuDNN paged prefill supports only causal "
                    "or full attention without position encoding, window_left, logits_soft_cap or custom masks'"),
        "fp8_kv": ("FlashInfer's cuDNN path has no fp8 cache under an fp16/bf16 query: its decode backend 'requires "
                   "q, kv and o to share one fp16 or bf16 dtype', and its prefill graph takes fp8 only with q, k "
                   "and v all fp8 (cuDNN's sdpa_fp8 with descale tensors)"),
    }

    def extra_refusals(self, spec: BatchSpec) -> list[str]:
        if is_pure_decode(spec):
            return []
        return [CUDNN_PREFILL_REFUSALS[name] for name in ("sliding_window", "sinks") if name in spec.features]

    def calls(self, spec: BatchSpec, k_scale: float | None = None,
              v_scale: float | None = None) -> list[FlashInferCall]:
        """The decode and prefill wrappers with ``backend="cudnn"``; sinks as ``run(sinks=)`` (decode)."""
        if spec.sinks and is_pure_decode(spec):
            return [FlashInferCall(call.name, call.wrapper, call.kind, call.init, call.plan, call.run, sinks="keyword")
                    for call in super().calls(spec.replace(sinks=False), k_scale, v_scale)]
        return super().calls(spec, k_scale, v_scale)


@register
class FlashInferBatchAttentionAdapter(_FlashInfer):
    """FlashInfer's ``BatchAttention``: the holistic persistent kernel that serves the prefill and
    decode requests of one batch in a single launch (its fa2-style kernel; no ``backend`` argument).
    Its plan takes ``logits_soft_cap`` (run takes it again) and ``kv_data_type``; its run ``k_scale`` /
    ``v_scale``; it has no window and no sinks."""

    name = "flashinfer-batch-attention"
    fi_backend = "batch-attention"
    model_features = frozenset({"softcap", "fp8_kv"})
    feature_reasons = {
        "sliding_window": ("FlashInfer's BatchAttention has no sliding window: BatchAttention.plan() takes no "
                           "window_left and its holistic kernel is built without one (the window runs through "
                           "the prefill/decode wrappers)"),
        "sinks": ("FlashInfer's BatchAttention has no sinks argument (FlashInfer's sink variant is "
                  "BatchAttentionWithAttentionSinkWrapper, a prefill wrapper)"),
    }

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        ok, why = super().supports(spec)
        if ok and spec.head_dim > 256:
            return False, "BatchAttention (holistic persistent kernel) does not support head_dim > 256"
        return ok, why

    def calls(self, spec: BatchSpec, k_scale: float | None = None,
              v_scale: float | None = None) -> list[FlashInferCall]:
        """``BatchAttention(kv_layout="NHD")``; the soft-cap goes to plan (kernel template) and run (value)."""
        run = {**scale_kwargs(spec, k_scale, v_scale), **feature_plan_kwargs(spec, window=False)}
        return [FlashInferCall("BatchAttention", "BatchAttention", "holistic", {"kv_layout": "NHD"},
                               holistic_plan_kwargs(spec), run)]
