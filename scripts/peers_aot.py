"""Build FlashInfer's attention modules for the GPU machine ahead of time, on a machine without a GPU
(nvcc only), and copy each ``<module>.so`` to ``OUT/<module>/<module>.so``: FlashInfer loads a module
from ``flashinfer/data/aot/<module>/<module>.so`` instead of compiling it (``jit/env.py``,
``get_aot_artifacts``). Run through scripts/build-peers-aot.sh, which sets the environment
(FLASHINFER_CUDA_ARCH_LIST, CUDA_HOME, the workspace and a libcuda stub for the link).

The modules are those the flashinfer adapters ask for (`adapters/backends/flashinfer.py`), per q/kv/o
dtype and head dim, int32 indices, no RoPE, no sliding window, no soft cap:
- ``decode``: the CUDA-core paged decode (decode wrapper, ``use_tensor_cores=False``);
- ``fa2``: the fa2 batch prefill module (prefill wrapper fa2, and the decode wrapper's tensor-core path);
- ``fa3``: the SM90 batch prefill module (prefill wrapper fa3, decode wrapper fa3);
- ``holistic``: ``BatchAttention``'s persistent kernel (flashinfer-batch-attention).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def module_spec(kind: str, dtype, head_dim: int):
    import torch
    from flashinfer.jit.attention import modules

    index = torch.int32
    if kind == "decode":
        return modules.gen_batch_decode_module(dtype, dtype, dtype, index, head_dim, head_dim, 0, False, False)
    if kind == "fa2":  # what get_batch_prefill_module("fa2", ...) builds first (equal K/V strides)
        return modules._gen_batch_prefill_primary_module("fa2", dtype, dtype, dtype, index, head_dim, head_dim, 0,
                                                         False, False, False)
    if kind == "holistic":  # BatchAttention's persistent kernel (flashinfer-batch-attention)
        return modules._gen_batch_attention_primary_module(dtype, dtype, dtype, index, head_dim, head_dim, 0,
                                                           False, False)
    if kind == "fa3":
        return modules.gen_batch_prefill_module("fa3", dtype, dtype, dtype, index, head_dim, head_dim, 0,
                                                False, False, False)
    raise ValueError(f"unknown module kind {kind!r} (decode, fa2, fa3, holistic)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--modules", default="decode,fa2,fa3,holistic")
    parser.add_argument("--dtypes", default="bf16")
    parser.add_argument("--head-dims", default="128")
    args = parser.parse_args(argv)

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dtype_name])
        for head_dim in map(int, args.head_dims.split(",")):
            for kind in args.modules.split(","):
                spec = module_spec(kind, dtype, head_dim)
                target = args.out / spec.name / f"{spec.name}.so"
                if target.exists():
                    print(f"have   {kind:6s} {dtype_name} D{head_dim}: {spec.name}", flush=True)
                    continue
                started = time.perf_counter()
                spec.build(verbose=False)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(spec.jit_library_path, target)
                print(f"built  {kind:6s} {dtype_name} D{head_dim} in {time.perf_counter() - started:6.0f} s, "
                      f"{target.stat().st_size >> 10} KiB: {spec.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
