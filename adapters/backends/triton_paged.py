"""The project's own Triton paged-attention kernel (the ``kernels/paged_attention`` package) as a backend.

Takes the canonical batch as is: packed q, NHD page caches, block table, cu_seqlens_q and kv_lens
(no conversion). ``prepare`` plans the launch from the spec's host-side lengths (as a serving engine
would: a mixed batch's leading decodes and every sequence's key count), allocates the
output, the log-sum-exp buffer and the split-KV workspace, and compiles by running once (reported as
``setup_s``); ``run`` only launches and returns ``(out, lse)`` (``lse`` ``[T, Hq]`` float32, natural log). On the CPU it runs under Triton's interpreter (TRITON_INTERPRET=1), fp16/fp32 only.

Model features: the kernel runs all four (sliding window, soft-cap, sinks, an fp8 e4m3 cache with
per-tensor or per-head scales), each a constexpr switch of the one kernel; the batch's fields are passed
as they are (the window W, the cap c, the ``[Hq]`` sink logits, the fp8 caches with their scales). An fp8
cache needs Triton's ``float8e4nv`` type: sm_89 or newer on a GPU (the interpreter loads it on the CPU).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import torch

from adapters.base import Adapter, Prepared, Unsupported, register
from adapters.batch import BatchSpec, PagedBatch
from adapters.features import FEATURES

ENTRY_POINT = "kernels.paged_attention.prepare_paged_attention"
FP8_MIN_CAPABILITY = (8, 9)
"""Triton converts float8 e4m3 (``float8e4nv``) only on sm_89 (Ada) and newer."""


def _interpreting() -> bool:
    """Whether the kernels run (or, not yet imported, will run) under Triton's interpreter: triton
    decides when the kernel package is imported, from TRITON_INTERPRET at that moment."""
    if "kernels.paged_attention" in sys.modules:
        from kernels.paged_attention import interpreted

        return interpreted()
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@register
class TritonPagedAdapter(Adapter):
    """One attention kernel with constexpr switches plus a split-KV merge kernel (see the module)."""

    name = "triton"
    disk_compile_cache = True
    devices = ("cuda", "cpu")
    packages = ("triton",)
    model_features = frozenset(FEATURES)

    def worker_env(self, device_type: str) -> dict[str, str]:
        """On a CPU the kernel runs under Triton's interpreter, which triton reads at import."""
        return {"TRITON_INTERPRET": "1"} if device_type == "cpu" else {}

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install triton)"
        if device.type == "cpu":
            if not _interpreting():
                return False, ("on the CPU the kernel runs only under Triton's interpreter: "
                               "set TRITON_INTERPRET=1 before kernels.paged_attention is imported")
            if importlib.util.find_spec("numpy") is None:
                return False, "Triton's interpreter needs numpy, which is not installed"
            return True, ""
        if _interpreting():
            return False, "the kernel was built for Triton's interpreter (TRITON_INTERPRET=1), not for the GPU"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return False, f"compute capability {major}.x: the kernel needs sm_80 or newer (bf16 dot)"
        return True, ""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if not (16 <= spec.head_dim <= 256 and spec.head_dim % 8 == 0):
            return False, f"head_dim {spec.head_dim} is not a multiple of 8 in 16..256"
        if spec.num_q_heads % spec.num_kv_heads:
            return False, f"num_q_heads {spec.num_q_heads} is not a multiple of num_kv_heads {spec.num_kv_heads}"
        return True, ""

    def prepare(self, batch: PagedBatch) -> Prepared:
        spec = batch.spec
        ok, reason = self.supports(spec)
        if not ok:
            raise Unsupported(reason)
        if batch.device.type == "cpu" and spec.torch_dtype == torch.bfloat16:
            raise Unsupported("bf16 under Triton's CPU interpreter returns garbage (docs/backends.md); "
                              "bf16 is checked on the GPU")
        if spec.kv_dtype is not None and batch.device.type == "cuda" \
                and torch.cuda.get_device_capability(batch.device) < FP8_MIN_CAPABILITY:
            major, minor = torch.cuda.get_device_capability(batch.device)
            raise Unsupported(f"an fp8 e4m3 KV cache needs Triton's float8e4nv, which compiles for sm_89 and "
                              f"newer; this GPU is sm_{major}{minor}")
        from kernels.paged_attention import prepare_paged_attention

        started = time.perf_counter()
        out = torch.empty_like(batch.q)
        launcher = prepare_paged_attention(
            batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
            max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
            out=out, return_lse=True, sliding_window=spec.sliding_window, softcap=spec.softcap,
            sinks=batch.sinks, k_scale=batch.k_scale, v_scale=batch.v_scale,
            num_decodes=spec.leading_decodes, host_kv_lens=spec.kv_lens)
        launcher()  # compiles (or loads from Triton's cache) outside the timed region
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        setup_s = time.perf_counter() - started
        notes = {"entry_point": ENTRY_POINT, "setup_s": round(setup_s, 4), **launcher.describe()}
        if spec.features:
            notes["features"] = list(spec.features)
        if batch.device.type == "cpu":
            notes["mode"] = "triton interpreter (TRITON_INTERPRET=1)"
        return Prepared(run=launcher, out=out, notes=notes)

    def versions(self) -> dict[str, str]:
        try:
            import triton
        except ImportError:
            return {}
        return {"triton": triton.__version__}
