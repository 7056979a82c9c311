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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from adapters.base import Adapter, NotAvailable, Prepared, Unsupported, register
from adapters.batch import BatchSpec, PagedBatch

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
    packages = ("flashinfer-python", "apache-tvm-ffi", "nvidia-cudnn-frontend")

    # ------------------------------------------------------------------------------ capability

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, "FlashInfer runs on CUDA devices only"
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
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

    def _entry_points(self, flashinfer, batch: PagedBatch, pages: FlashInferPages, out: torch.Tensor,
                      lse: torch.Tensor) -> tuple[dict[str, Callable[[], RunPair]], dict[str, str], bool]:
        """(entry points by name, the FlashInfer backend each resolved to, whether the LSE is base 2);
        each entry point planned and run once."""
        spec, device = batch.spec, batch.device
        dtype = spec.torch_dtype
        q, kv = batch.q, (batch.k_cache, batch.v_cache)
        candidates: dict[str, Callable[[], RunPair]] = {}
        resolved: dict[str, str] = {}
        if is_pure_decode(spec):
            for name, tensor_cores in self.decode_variants().items():
                wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                    self._workspace(device), "NHD", use_tensor_cores=tensor_cores, backend=self.fi_backend)
                wrapper.plan(pages.kv_indptr, pages.kv_indices, pages.last_page_len, spec.num_q_heads,
                             spec.num_kv_heads, spec.head_dim, spec.page_size, q_data_type=dtype,
                             kv_data_type=dtype, sm_scale=spec.scale)

                def run_decode(wrapper=wrapper) -> RunPair:
                    return wrapper.run(q, kv, out=out, lse=lse, return_lse=True)

                run_decode()
                resolved[name] = str(getattr(wrapper, "resolved_backend", self.fi_backend))
                candidates[name] = run_decode
            return candidates, resolved, True
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace(device), "NHD",
                                                                 backend=self.fi_backend)
        wrapper.plan(pages.qo_indptr, pages.kv_indptr, pages.kv_indices, pages.last_page_len,
                     spec.num_q_heads, spec.num_kv_heads, spec.head_dim, spec.page_size,
                     causal=spec.causal, sm_scale=spec.scale, q_data_type=dtype, kv_data_type=dtype)
        backend = str(getattr(wrapper, "_backend", self.fi_backend))
        lse_args: dict[str, Any] = {}
        if backend == "cudnn" and "lse_base" in inspect.signature(wrapper.run).parameters:
            lse_args["lse_base"] = "ln"  # cuDNN's native stats: no conversion kernel in the timed call

        def run_prefill() -> RunPair:
            return wrapper.run(q, kv, out=out, lse=lse, return_lse=True, **lse_args)

        run_prefill()
        candidates["BatchPrefillWithPagedKVCacheWrapper"] = run_prefill
        resolved["BatchPrefillWithPagedKVCacheWrapper"] = backend
        return candidates, resolved, not lse_args

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
                raise NotAvailable(f"FlashInfer {self.fi_backend}: no compiled kernel for {spec.dtype}, head dim "
                                   f"{spec.head_dim} here and its JIT is switched off (FLASHINFER_DISABLE_JIT): "
                                   f"{_first_line(error)}") from error
            if _is_refusal(error):
                raise Unsupported(f"FlashInfer {self.fi_backend}: {_first_line(error)}") from error
            raise
        torch.cuda.synchronize(device)
        notes: dict[str, Any] = {"flashinfer_requested": self.fi_backend, "kv_layout": "NHD",
                                 "flashinfer_backend": resolved if len(resolved) > 1 else next(iter(resolved.values())),
                                 "setup_s": round(time.perf_counter() - started, 4),
                                 "aot_modules": len(aot_modules())}
        return Prepared(candidates=candidates, out=out, notes=notes, to_lse=lse_from_base2 if base2 else None)


@register
class FlashInferAutoAdapter(_FlashInfer):
    """FlashInfer with ``backend="auto"``: its own choice among its kernels."""

    name = "flashinfer"
    fi_backend = "auto"


@register
class FlashInferFa2Adapter(_FlashInfer):
    name = "flashinfer-fa2"
    fi_backend = "fa2"


@register
class FlashInferFa3Adapter(_FlashInfer):
    name = "flashinfer-fa3"
    fi_backend = "fa3"


@register
class FlashInferCudnnAdapter(_FlashInfer):
    """FlashInfer's cuDNN path: cuDNN as an engine binds it (packed [T, Hq] Stats with a ragged offset), so
    a cuDNN release check gates it beside the cuDNN bindings (``library``)."""

    name = "flashinfer-cudnn"
    fi_backend = "cudnn"
    library = "cudnn"
    binding = "FlashInfer's cuDNN path (its own graph: packed [T, Hq] Stats, ragged offsets)"


@register
class FlashInferBatchAttentionAdapter(_FlashInfer):
    """FlashInfer's ``BatchAttention``: the holistic persistent kernel that serves the prefill and
    decode requests of one batch in a single launch (its fa2-style kernel; no ``backend`` argument)."""

    name = "flashinfer-batch-attention"
    fi_backend = "batch-attention"

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        ok, why = super().supports(spec)
        if ok and spec.head_dim > 256:
            return False, "BatchAttention (holistic persistent kernel) does not support head_dim > 256"
        return ok, why

    def _entry_points(self, flashinfer, batch: PagedBatch, pages: FlashInferPages, out: torch.Tensor,
                      lse: torch.Tensor) -> tuple[dict[str, Callable[[], RunPair]], dict[str, str], bool]:
        spec = batch.spec
        wrapper = flashinfer.BatchAttention(kv_layout="NHD", device=str(batch.device))
        # Unlike the decode/prefill wrappers, BatchAttention.plan keeps kv_indices as given and its
        # kernel reads them on the device: host page indices are an illegal memory access (seen on the
        # H200 with flashinfer 0.7.4, every batch). The indptr and lengths are read on the host.
        wrapper.plan(pages.qo_indptr, pages.kv_indptr, pages.kv_indices.to(batch.device),
                     torch.tensor(spec.kv_lens, dtype=torch.int32), spec.num_q_heads, spec.num_kv_heads,
                     spec.head_dim, spec.head_dim, spec.page_size, causal=spec.causal, sm_scale=spec.scale,
                     q_data_type=spec.torch_dtype, kv_data_type=spec.torch_dtype)
        q, kv = batch.q, (batch.k_cache, batch.v_cache)

        def run_holistic() -> RunPair:
            return wrapper.run(q, kv, out=out, lse=lse)

        run_holistic()
        return {"BatchAttention": run_holistic}, {"BatchAttention": "holistic (persistent)"}, True
