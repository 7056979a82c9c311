"""The machine's own ceilings, measured once per machine and stored: a large bf16 matrix product
(TFLOP/s) and a large device-to-device copy (TB/s, bytes read plus written). Results report their
share of these rather than of datasheet numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from harness.measure.timer import time_function

CACHE_DIR_ENV = "PAGED_BENCH_CACHE"
MATMUL_SIZE = 8192
COPY_BYTES = 2 << 30


def gpu_uuid(device: torch.device | str) -> str | None:
    """The GPU's UUID as the driver reports it (None where torch does not expose it)."""
    uuid = getattr(torch.cuda.get_device_properties(torch.device(device)), "uuid", None)
    return str(uuid) if uuid is not None else None


def _cache_file(device: torch.device) -> Path:
    """One file per GPU (its UUID) and torch version: each GPU of a host is measured once."""
    root = Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "paged-attn-bench"))
    name = torch.cuda.get_device_name(device).replace(" ", "_")
    return root / f"ceilings-{name}-{gpu_uuid(device) or 'gpu'}-torch{torch.__version__}.json"


def measure_ceilings(device: torch.device | str = "cuda") -> dict[str, float | str]:
    """Time an 8192^3 bf16 matmul on random data and a 2 GiB copy; return TFLOP/s and TB/s."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16, generator=generator)
    matmul = time_function(lambda: torch.matmul(a, b), device, target_ms=300, flush_l2=False)
    del a, b
    source = torch.empty(COPY_BYTES // 2, dtype=torch.bfloat16, device=device).normal_(generator=generator)
    target = torch.empty_like(source)
    copy = time_function(lambda: target.copy_(source), device, target_ms=300, flush_l2=False)
    del source, target
    return {
        "matmul_bf16_tflops": 2 * MATMUL_SIZE**3 / (matmul.median_us * 1e-6) / 1e12,
        "copy_tbps": 2 * COPY_BYTES / (copy.median_us * 1e-6) / 1e12,
        "gpu": torch.cuda.get_device_name(device),
    }


def machine_ceilings(device: torch.device | str = "cuda", *, refresh: bool = False) -> dict[str, float | str]:
    """The stored ceilings of this GPU, measuring them the first time (a few seconds)."""
    device = torch.device(device)
    path = _cache_file(device)
    if path.exists() and not refresh:
        return json.loads(path.read_text())
    ceilings = measure_ceilings(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ceilings, indent=1))
    return ceilings
