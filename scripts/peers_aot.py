"""Build FlashInfer's attention modules for the GPU machine ahead of time, on a machine without a GPU
(nvcc only), and copy each ``<module>.so`` to ``OUT/<module>/<module>.so``: FlashInfer loads a module
from ``flashinfer/data/aot/<module>/<module>.so`` instead of compiling it (``jit/env.py``,
``get_aot_artifacts``). Run through scripts/build-peers-aot.sh, which sets the environment
(FLASHINFER_CUDA_ARCH_LIST, CUDA_HOME, the workspace and a libcuda stub for the link).

The modules are those the flashinfer adapters ask for (`adapters/backends/flashinfer.py`), per q/kv/o
dtype, head dim and model-feature variant, int32 indices, no RoPE:
- ``decode``: the CUDA-core paged decode (decode wrapper, ``use_tensor_cores=False``: the
  ``flashinfer-fa2`` row's CUDA-core entry point and the ``flashinfer`` (auto) row's decode batches);
- ``fa2``: the fa2 batch prefill module (prefill wrapper fa2, and the decode wrapper's tensor-core path);
- ``fa3``: the SM90 batch prefill module (prefill wrapper fa3, decode wrapper fa3);
- ``holistic``: ``BatchAttention``'s persistent kernel (flashinfer-batch-attention).

A variant (``--variants``) is ``plain`` or model features joined by ``+``: ``window`` (the wrappers'
``plan(window_left=W-1)``: ``use_swa``), ``softcap`` (``plan(logits_soft_cap=c)``: ``use_logits_cap``),
``fp8`` (``plan(kv_data_type=torch.float8_e4m3fn)`` under a bf16/fp16 query and output: ``dtype_kv_e4m3``)
and ``sinks`` (the fa2/fa3 rows' ``BatchAttentionWithAttentionSinkWrapper`` /
``BatchDecodeWithAttentionSinkWrapper``: FlashInfer's ``AttentionSink`` custom variant, one module per
backend, dtypes, head dim and whether a window is used, shared by both sink wrappers). A model layer
with two features needs the joined variant (Gemma 2's sliding layers ``window+softcap``, gpt-oss's
``window+sinks``): each combination is its own module. Each spec is made by the function FlashInfer's
runtime path calls for that plan (``get_batch_decode_module``, ``get_batch_prefill_module``,
``BatchAttention.plan``, the sink wrappers' ``_sink_jit_args``), so its name is the one FlashInfer looks
up under ``data/aot`` (tests/test_peers_aot.py checks this against the real wrappers). A (kind,
variant) that no flashinfer row runs is skipped with the reason (`skip_reason`).

``--list`` prints the names without building (generated sources go to a temporary folder): usable
on a machine without nvcc.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
KINDS = ("decode", "fa2", "fa3", "holistic")
FEATURES = ("window", "softcap", "sinks", "fp8")
"""Variant parts, in the order a variant's name lists them (`adapters.features.FEATURES` order)."""
PLAIN = "plain"
FA3_HEAD_DIMS = (64, 128, 256)
"""Head dims FlashInfer's SM90 prefill kernels instantiate (the adapter's ``FA3_HEAD_DIMS``)."""
DEFAULT_ARCH = "9.0a"
"""FLASHINFER_CUDA_ARCH_LIST when unset (as scripts/build-peers-aot.sh): FlashInfer refuses to make a
spec on a machine without a GPU and without it; the module names do not depend on it."""


class UsageError(ValueError):
    """A bad option value (printed as one line, exit status 2)."""


def parse_variant(text: str) -> tuple[str, ...]:
    """``"plain"`` -> (); ``"sinks+window"`` -> ("window", "sinks") (`FEATURES` order)."""
    text = text.strip()
    if text == PLAIN:
        return ()
    parts = [part.strip() for part in text.split("+")]
    unknown = [part for part in parts if part not in FEATURES]
    if unknown or not parts:
        raise UsageError(f"unknown variant {text!r} in --variants: each is {PLAIN} or one or more of "
                         f"{', '.join(FEATURES)} joined by '+' (e.g. window+sinks)")
    if len(set(parts)) != len(parts):
        raise UsageError(f"variant {text!r} in --variants names a feature twice")
    return tuple(feature for feature in FEATURES if feature in parts)


def variant_name(features: tuple[str, ...]) -> str:
    return "+".join(features) if features else PLAIN


def _parse_list(text: str, option: str, allowed) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UsageError(f"{option} is empty")
    bad = [item for item in items if item not in allowed]
    if bad:
        raise UsageError(f"unknown {option} value {bad[0]!r}: one or more of {', '.join(allowed)}")
    return items


def parse_head_dims(text: str) -> list[int]:
    try:
        dims = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--head-dims {text!r}: comma-separated integers (e.g. 64,128,256)") from None
    if not dims or any(dim <= 0 for dim in dims):
        raise UsageError(f"--head-dims {text!r}: comma-separated positive integers")
    return dims


def skip_reason(kind: str, features: tuple[str, ...], head_dim: int) -> str | None:
    """Why no flashinfer row runs module ``kind`` with these features at this head dim (None: one does).
    Mirrors `adapters/backends/flashinfer.py` (which row uses which wrapper, ``feature_reasons``,
    ``extra_refusals``); tests/test_peers_aot.py checks it against the adapter's ``calls``."""
    if kind not in KINDS:
        raise ValueError(f"unknown module kind {kind!r} ({', '.join(KINDS)})")
    has = set(features)
    if kind == "fa3" and head_dim not in FA3_HEAD_DIMS:
        return f"FlashInfer's fa3 (SM90) kernels are instantiated for head_dim in {FA3_HEAD_DIMS} only"
    if kind == "holistic" and head_dim > 256:
        return "BatchAttention (holistic persistent kernel) does not support head_dim > 256"
    if kind == "decode" and "sinks" in has:
        return ("the CUDA-core decode kernel has no sink variant: the flashinfer/flashinfer-fa2 rows run sinks "
                "through BatchDecodeWithAttentionSinkWrapper (tensor cores), i.e. the fa2/fa3 sinks module")
    if kind == "holistic" and "window" in has:
        return ("flashinfer-batch-attention declines a sliding window: BatchAttention.plan() takes no window_left "
                "(its feature_reasons)")
    if kind == "holistic" and "sinks" in has:
        return "flashinfer-batch-attention declines sinks: BatchAttention has no sinks argument (its feature_reasons)"
    if kind == "fa3" and "fp8" in has:
        return ("flashinfer-fa3 declines an fp8 KV cache under a 16-bit query: FlashInfer's fa3 needs an fp8 query "
                "(is_fa3_backend_supported); the flashinfer (auto) row takes fa2 there")
    if "sinks" in has and "softcap" in has:
        return ("the fa2/fa3 rows decline sinks with a soft-cap: the AttentionSink variant applies no logits "
                "soft-cap (SINKS_WITH_SOFTCAP)")
    return None


def module_spec(kind: str, dtype, head_dim: int, features: tuple[str, ...] = ()):
    """The JitSpec FlashInfer's runtime path makes for the adapter's call with ``features`` (not built).
    Call `skip_reason` first: a skipped pair may still yield a spec FlashInfer never asks for."""
    import torch
    from flashinfer.jit.attention import modules

    index = torch.int32
    swa, cap = "window" in features, "softcap" in features
    dtype_kv = torch.float8_e4m3fn if "fp8" in features else dtype
    if "sinks" in features:
        if kind not in ("fa2", "fa3"):
            raise ValueError(f"no sinks module for kind {kind!r} (fa2, fa3)")
        if cap:
            raise ValueError("the AttentionSink variant has no soft-cap")
        # What both sink wrappers' constructors build (flashinfer/attention/_core.py), under their own URI
        # batch_prefill_attention_sink_..._swa_<bool>_<backend>; not gen_batch_prefill_attention_sink_module
        # (batch_prefill_with_attention_sink_..., what FlashInfer's aot.py builds), which the wrappers never
        # look up. Any window_left >= 0 makes the same module; the backend is explicit: no device is read.
        from flashinfer.attention._core import BatchAttentionWithAttentionSinkWrapper
        from flashinfer.prefill import gen_customize_batch_prefill_module

        backend, jit_args, jit_kwargs = BatchAttentionWithAttentionSinkWrapper._sink_jit_args(
            torch.device("cpu"), kind, dtype, dtype_kv, head_dim, head_dim, 0 if swa else -1)
        return gen_customize_batch_prefill_module(backend, *jit_args, **jit_kwargs)
    if kind == "decode":  # get_batch_decode_module(...) in BatchDecodeWithPagedKVCacheWrapper.plan
        return modules.gen_batch_decode_module(dtype, dtype_kv, dtype, index, head_dim, head_dim, 0, swa, cap)
    if kind == "fa2":  # what get_batch_prefill_module("fa2", ...) builds first (equal K/V strides)
        return modules._gen_batch_prefill_primary_module("fa2", dtype, dtype_kv, dtype, index, head_dim, head_dim, 0,
                                                         swa, cap, False)
    if kind == "holistic":  # BatchAttention.plan: get_holistic_attention_module (no window argument)
        if swa:
            raise ValueError("BatchAttention has no sliding window")
        return modules._gen_batch_attention_primary_module(dtype, dtype_kv, dtype, index, head_dim, head_dim, 0,
                                                           cap, False)
    if kind == "fa3":  # get_batch_prefill_module("fa3", ...)
        return modules.gen_batch_prefill_module("fa3", dtype, dtype_kv, dtype, index, head_dim, head_dim, 0,
                                                swa, cap, False)
    raise ValueError(f"unknown module kind {kind!r} ({', '.join(KINDS)})")


def plan(kinds: list[str], dtypes: list[str], head_dims: list[int], variants: list[tuple[str, ...]]):
    """Every (kind, dtype name, head dim, features, skip reason or None), in build order: dtype, head dim,
    variant, kind (today's order for plain)."""
    return [(kind, dtype_name, head_dim, features, skip_reason(kind, features, head_dim))
            for dtype_name in dtypes for head_dim in head_dims for features in variants for kind in kinds]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where <module>/<module>.so go (required unless --list)")
    parser.add_argument("--modules", default=",".join(KINDS), help=f"kinds, of {','.join(KINDS)}")
    parser.add_argument("--dtypes", default="bf16", help="query/output dtypes, of bf16,fp16")
    parser.add_argument("--head-dims", default="128")
    parser.add_argument("--variants", default=PLAIN,
                        help=f"{PLAIN} or features joined by '+', of {','.join(FEATURES)} "
                             "(e.g. plain,window,window+sinks)")
    parser.add_argument("--list", action="store_true", help="print the module names, build nothing")
    args = parser.parse_args(argv)
    args.modules = _parse_list(args.modules, "--modules", KINDS)
    args.dtypes = _parse_list(args.dtypes, "--dtypes", tuple(DTYPES))
    args.head_dims = parse_head_dims(args.head_dims)
    variants = [parse_variant(text) for text in args.variants.split(",") if text.strip()]
    if not variants:
        raise UsageError("--variants is empty")
    args.variants = list(dict.fromkeys(variants))
    if args.out is None and not args.list:
        raise UsageError("--out is required (or --list)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as error:
        print(f"peers_aot.py: error: {error}", file=sys.stderr)
        return 2

    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", DEFAULT_ARCH)
    import torch

    scratch = generated = None
    if args.list:  # the specs write their generated sources into FlashInfer's workspace: not for a listing
        scratch = tempfile.TemporaryDirectory(prefix="peers-aot-list-")
        os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", scratch.name)  # where importing flashinfer logs
    try:
        from flashinfer.jit import env as jit_env
    except ImportError as error:
        print(f"peers_aot.py: error: cannot import flashinfer ({error}); put FlashInfer's Python on PYTHONPATH "
              "(scripts/build-peers-aot.sh installs it into .peers/host)", file=sys.stderr)
        return 1
    if args.list:
        generated, jit_env.FLASHINFER_GEN_SRC_DIR = jit_env.FLASHINFER_GEN_SRC_DIR, Path(scratch.name) / "generated"
    else:
        args.out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    skipped = 0
    try:
        for kind, dtype_name, head_dim, features, reason in plan(args.modules, args.dtypes, args.head_dims,
                                                                 args.variants):
            what = f"{kind:8s} {dtype_name} D{head_dim:<3d} {variant_name(features):14s}"
            if reason:
                skipped += 1
                print(f"skip   {what} {reason}", flush=True)
                continue
            spec = module_spec(kind, getattr(torch, DTYPES[dtype_name]), head_dim, features)
            if spec.name in seen:
                continue
            seen.add(spec.name)
            if args.list:
                print(f"module {what} {spec.name}", flush=True)
                continue
            target = args.out / spec.name / f"{spec.name}.so"
            if target.exists():
                print(f"have   {what} {spec.name}", flush=True)
                continue
            started = time.perf_counter()
            spec.build(verbose=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(spec.jit_library_path, target)
            print(f"built  {what} in {time.perf_counter() - started:6.0f} s, "
                  f"{target.stat().st_size >> 10} KiB: {spec.name}", flush=True)
    finally:
        if scratch is not None:
            jit_env.FLASHINFER_GEN_SRC_DIR = generated
            scratch.cleanup()
    print(f"{len(seen)} modules{' listed' if args.list else ''}, {skipped} skipped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
