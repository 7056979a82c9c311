#!/usr/bin/env python3
"""Check and time the Triton paged-attention kernel on a GPU over the target cases, for several
launch configurations each, next to cuDNN where it can be built; print a short table last.

    python3 scripts/triton_tune.py [--budget-s 60] [--out DIR] [--cases ...] [--pages 16 256]
                                   [--head-dims 64 128 256] [--dtype bf16|fp16] [--heads 32 8]
                                   [--window W] [--softcap C] [--sinks] [--kv-dtype fp8 [--kv-scale head]]

Every timed configuration is first checked against ``reference_attention`` with the gate's own
comparison (NaN-poisoned output, the dtype's tolerance from ``harness.measure.gate.TOLERANCES``). Times come
from the suite's timer (``harness.measure.timer.time_function``: CUDA events, L2 flushed between launches, median
and quartiles of ``--reps`` launches after warm-up); FLOPs, bytes and ceilings from ``harness.measure.metrics``
and ``harness.measure.ceilings``; cuDNN through the project's adapter. Full rows go to
``DIR/tune.jsonl``. Each (head dim, case, page) cell tries the table's choice as the adapter calls it
(the batch's leading decodes and host lengths passed), in a mixed batch that starts with decodes the
table with those decodes forced into the long launch and forced apart (``decodes_apart``), then the
candidates of its bucket and table head dim (``CANDIDATES``), skipped once the cell has spent
``--budget-s`` seconds, then the table's choice again: the table rows always come out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from adapters.base import get_adapter  # noqa: E402
from adapters.batch import BatchSpec, make_batch  # noqa: E402
from adapters.reference import reference_attention  # noqa: E402
from harness.cases.selection import add_feature_options, feature_fields  # noqa: E402
from harness.errors import UsageError  # noqa: E402
from harness.measure.ceilings import machine_ceilings  # noqa: E402
from harness.measure.gate import compare, compare_lse  # noqa: E402
from harness.measure.metrics import spec_bytes, spec_flops  # noqa: E402
from harness.measure.timer import time_function  # noqa: E402
from kernels.paged_attention import (  # noqa: E402
    KernelConfig, config_key, multiprocessor_count, plan_launch, prepare_paged_attention, query_bucket)
from kernels.paged_attention.configs import HOPPER_PREFILL_SCHEDULES, HopperPrefillConfig  # noqa: E402

CASES = ["64q1c4k", "4q2kc2k", "8q512c1k", "8q1c3000_8q9-2000c0-7000", "32q1c512-8k_2q4kc0-4k"]
PAGES = [16, 256]

_D = dict(split_programs_per_sm=12, min_split_keys=256)
DECODE_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(16, 64, 4, 2, split_programs_per_sm=8, min_split_keys=256), None),
    (KernelConfig(16, 32, 4, 2, **_D), None),
    (KernelConfig(16, 32, 4, 2, **_D), 1),
    (KernelConfig(16, 32, 4, 3, **_D), 1),
    (KernelConfig(16, 64, 4, 2, **_D), 1),
    (KernelConfig(16, 32, 2, 2, **_D), 1),
    (KernelConfig(16, 32, 4, 2, **_D), 2),
]
"""(config, num_splits or None for the heuristic) for the decode bucket at D=128; TMA ones only
where a tile fits in a page."""

_L = dict(split_programs_per_sm=2, min_split_keys=2048)
_R = dict(max_registers=128, **_L)
_R512 = {**_R, "min_split_keys": 512}
LONG_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(64, 64, 4, 3, **_L), None),
    (KernelConfig(64, 64, 4, 3, use_tma=True, **_L), None),
    (KernelConfig(128, 64, 8, 3, **_R), None),
    (KernelConfig(128, 64, 8, 4, **_R), None),
    (KernelConfig(128, 64, 8, 2, use_tma=True, **_R), None),
    (KernelConfig(128, 64, 8, 3, use_tma=True, **_R), None),
    (KernelConfig(128, 64, 8, 3, **_R512), None),
    (KernelConfig(128, 64, 8, 2, use_tma=True, **_R512), None),
]
"""Candidates for the long-query bucket (prefill and mixed) at D=128."""

# Head dims 64 and 256 were never timed. These candidates come from the sm_90 register, spill and
# shared-memory report (``scripts/kernel_ptx_diff.py --report --configs candidates``, triton 3.6;
# docs/triton_kernel_notes.md, "Head dims 64 and 256: register reports"): none spills, and each
# changes how many programs or warps share a multiprocessor against the table's entry.
_L4 = dict(split_programs_per_sm=2, min_split_keys=4096)
_D3 = dict(split_programs_per_sm=3, min_split_keys=256)
D64_LONG_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(128, 64, 8, 2, **_L4), None),  # 122 to 128 registers: two 8-warp programs per SM
    (KernelConfig(128, 64, 8, 2, use_tma=True, **_L4), None),
    (KernelConfig(128, 64, 8, 3, use_tma=True, **_L4), None),
    (KernelConfig(128, 64, 4, 2, **_L4), None),
    (KernelConfig(64, 64, 4, 3, **_L4), None),  # 138 registers: three programs per SM
    (KernelConfig(64, 64, 4, 3, use_tma=True, **_L4), None),
    (KernelConfig(128, 32, 4, 3, use_tma=True, **_L4), None),
    (KernelConfig(128, 128, 8, 2, use_tma=True, **_L4), None),
]
D64_DECODE_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(16, 64, 4, 2, **_D3), None),
    (KernelConfig(16, 128, 4, 2, **_D3), None),
    (KernelConfig(16, 64, 4, 3, split_programs_per_sm=1, min_split_keys=256), None),
    (KernelConfig(16, 64, 4, 2, **_D3), 1),
]
D256_LONG_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(128, 32, 8, 3, merge_warps=16, **_L4), None),
    (KernelConfig(128, 32, 8, 3, use_tma=True, merge_warps=16, **_L4), None),
    (KernelConfig(128, 64, 8, 2, merge_warps=16, **_L4), None),  # 192 KiB of shared memory
    (KernelConfig(128, 16, 8, 2, merge_warps=16, **_L4), None),
    (KernelConfig(128, 16, 8, 2, use_tma=True, merge_warps=16, **_L4), None),
    (KernelConfig(64, 32, 4, 3, merge_warps=8, **_L4), None),  # two 4-warp programs per SM
    (KernelConfig(64, 64, 8, 2, merge_warps=8, **_L4), None),
    (KernelConfig(64, 64, 8, 2, use_tma=True, merge_warps=8, **_L4), None),
    (KernelConfig(64, 32, 8, 2, merge_warps=8, **_L4), None),
    (KernelConfig(64, 32, 4, 2, merge_warps=8, **_L4), None),
    (KernelConfig(64, 32, 4, 3, use_tma=True, merge_warps=8, **_L4), None),
    (KernelConfig(128, 64, 8, 2, use_tma=True, merge_warps=16, **_L4), None),  # spills 72 B
    # 64 rows over 8 warps: a 64 x 256 accumulator in 64 registers a thread (the D=128 winner's
    # share), capped at 128 so that two programs share a multiprocessor (spills 24 to 76 B)
    (KernelConfig(64, 32, 8, 3, max_registers=128, merge_warps=8, **_L4), None),
    (KernelConfig(64, 16, 8, 3, max_registers=128, merge_warps=8, **_L4), None),
    (KernelConfig(64, 16, 8, 3, use_tma=True, max_registers=128, merge_warps=8, **_L4), None),
]
D256_DECODE_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(16, 32, 4, 2, **_D3), None),  # 110 registers (table: 168): four programs per SM
    (KernelConfig(16, 64, 4, 2, **_D3), None),
    (KernelConfig(16, 64, 8, 2, **_D3), None),
    (KernelConfig(16, 128, 8, 2, **_D3), None),
    (KernelConfig(16, 32, 4, 2, split_programs_per_sm=1, min_split_keys=256), None),
]
_S = dict(split_programs_per_sm=4, min_split_keys=512)
SHORT_CANDIDATES: dict[int, list[tuple[KernelConfig, int | None]]] = {
    # short queries (2 to 16) split their keys like the table's short entries; at D=256 the 32- and
    # 64-key steps that won unsplit on B64 q4 (notes, "v3.5") against the table's 16-key one
    64: [(KernelConfig(64, 64, 4, 2, **_S), None), (KernelConfig(128, 64, 4, 3, **_S), None)],
    128: [(KernelConfig(64, 64, 4, 2, **_S), None), (KernelConfig(128, 64, 8, 3, max_registers=128, **_S), None)],
    256: [(KernelConfig(64, 32, 4, 3, merge_warps=8, **_S), None),
          (KernelConfig(64, 32, 4, 2, merge_warps=8, **_S), None),
          (KernelConfig(64, 64, 4, 2, merge_warps=8, **_S), None),
          (KernelConfig(128, 64, 8, 2, merge_warps=16, **_S), None)],
}
CANDIDATES: dict[tuple[str, int], list[tuple[KernelConfig, int | None]]] = {
    ("decode", 64): D64_DECODE_CANDIDATES, ("long", 64): D64_LONG_CANDIDATES,
    ("decode", 128): DECODE_CANDIDATES, ("long", 128): LONG_CANDIDATES,
    ("decode", 256): D256_DECODE_CANDIDATES, ("long", 256): D256_LONG_CANDIDATES,
    **{("short", dim): pool for dim, pool in SHORT_CANDIDATES.items()},
}
"""Candidate pools by (query bucket, the table's head dim)."""


# ------------------------------------------------------------------------------------------------
# Checking, timing and the cuDNN baseline: the suite's own pieces

def check(out: torch.Tensor, ref: torch.Tensor, batch) -> dict:
    """The gate's comparison, as a flat dict for the log."""
    result = compare(out, ref, batch)
    return {"ok": result.ok, "rel_l2": result.rel_l2, "max_abs": result.max_abs, "reason": result.reason}


def time_launches(fn, device: str, reps: int) -> dict:
    return time_function(fn, device, reps=reps).as_row()


def cudnn_runner(batch):
    """(run, out) of the project's cuDNN adapter, or raises with its reason."""
    adapter = get_adapter("cudnn")
    ok, reason = adapter.available(batch.device)
    if not ok:
        raise RuntimeError(reason)
    prepared = adapter.prepare(batch)
    return prepared.run, prepared.out


# ------------------------------------------------------------------------------------------------
# Main loop

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def table_choice(spec: BatchSpec, device: str) -> KernelConfig:
    """The configuration the launcher picks for this batch by itself (table and few-tiles rule)."""
    return plan_launch(num_tokens=spec.total_q, num_seqs=spec.batch_size, num_q_heads=spec.num_q_heads,
                       num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim, page_size=spec.page_size,
                       max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len,
                       num_sms=multiprocessor_count(torch.device(device))).config


def candidates_for(spec: BatchSpec, device: str) -> list[tuple[KernelConfig | None, int | None, bool | None]]:
    """(config, num_splits, decodes_apart) to try: the table's choice as the adapter calls it (the
    batch's leading decodes and host lengths passed; None: the launcher's rule keeps the decodes apart
    or not); in a mixed batch that starts with decodes, the table with them forced into the long
    launch and forced apart (config None: the table picks for each launch); then the bucket's
    candidates (TMA ones only where a key tile fits in a page; for long queries on a GPU the Triton
    table's entry first, since the table's choice there may be the Gluon kernel), then the table's
    choice again: the spread between two runs of one build."""
    table = table_choice(spec, device)
    pool = CANDIDATES[query_bucket(spec.max_q_len), config_key(spec.head_dim, spec.page_size, spec.max_q_len)[1]]
    pool = [(config, splits, False) for config, splits in pool
            if (config, splits) != (table, None) and (not config.use_tma or spec.page_size % config.block_n == 0)]
    mixed = 0 < spec.leading_decodes < spec.batch_size and spec.max_q_len > 1
    forced = [(None, None, False), (None, None, True)] if mixed else []
    # long queries on an sm_90 GPU: the table's choice is the Gluon kernel; the Triton table entry beside it
    triton_table = [(table, None, False)] if query_bucket(spec.max_q_len) == "long" and device == "cuda" else []
    return [(None, None, None)] + forced + triton_table + pool + [(None, None, None)]


SCHEDULE_FLAGS = tuple(schedule for schedule in HOPPER_PREFILL_SCHEDULES if schedule != "step")
"""``--gluon`` options that name the consumers' schedule (``HopperPrefillConfig.schedule``; at most one; without
one, "step")."""
GLUON_FLAGS = {"half", "persistent", "onerange", "m64", "kahead", "oq", "qahead", *SCHEDULE_FLAGS}
"""Options after ``N,STAGES`` in a ``--gluon`` value (besides ``tmaK``: K keys per TMA load)."""


def gluon_config(text: str, pages: Sequence[int] = (), head_dims: Sequence[int] = ()) -> HopperPrefillConfig:
    """``--gluon`` value
    ``N,STAGES[,half][,persistent][,paired|,pingpong|,overlap][,onerange][,m64][,kahead][,oq][,qahead][,tmaK]``
    (e.g. ``128,2,half``: half-wide masked steps; ``128,2,persistent``: programs looping over the tiles;
    ``128,2,pingpong``: the consumers' schedule; ``128,2,paired,onerange``: a tile's steps in one range; ``64,2,m64``:
    64-row tiles of one consumer, for head dims up to ``HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM`` in ``head_dims``;
    ``128,2,overlap,kahead``: the producer loads the next step's K before this step's V; ``128,3,overlap,oq``: the
    consumers stage their output in their Q buffer (room for a third stage of 128-key steps at D=128);
    ``128,2,overlap,persistent,qahead``: persistent consumers load the next tile's Q before storing this one's output;
    ``128,2,tma64``: 64 keys per TMA load, which must suit the step and every page size in ``pages``) -> the Gluon
    kernel's config."""
    parts = text.split(",")
    numbers, flags = parts[:2], parts[2:]
    tma = [flag for flag in flags if flag.startswith("tma") and flag[3:].isdigit() and int(flag[3:]) > 0]
    if (len(numbers) != 2 or not all(number.isdigit() and int(number) > 0 for number in numbers)
            or not set(flags) - set(tma) <= GLUON_FLAGS or len(set(flags)) != len(flags) or len(tma) > 1
            or len(set(flags) & set(SCHEDULE_FLAGS)) > 1):
        raise UsageError(f"--gluon {text!r}: give N,STAGES, two positive whole numbers, optionally followed by "
                         f",half, ,persistent, one of ,paired / ,pingpong / ,overlap, ,onerange, ,m64, ,kahead, ,oq, "
                         f",qahead (with ,persistent) "
                         f"and/or ,tmaK "
                         f"(K keys per TMA load; e.g. 128,2 or 128,2,half,tma64 or 128,2,paired,onerange or 64,2,m64)")
    schedule = next((flag for flag in flags if flag in SCHEDULE_FLAGS), "step")
    try:
        config = HopperPrefillConfig(int(numbers[0]), int(numbers[1]), half_step="half" in flags,
                                     persistent="persistent" in flags, tma_keys=int(tma[0][3:]) if tma else 0,
                                     schedule=schedule, one_range="onerange" in flags,
                                     block_m=64 if "m64" in flags else 128, k_ahead="kahead" in flags,
                                     o_in_q="oq" in flags, q_ahead="qahead" in flags)
    except ValueError as error:  # the config's own check (half-wide steps, "step" in one range, pingpong at m64)
        raise UsageError(f"--gluon {text!r}: {error}") from None
    refusal = next(filter(None, map(config.head_dim_refusal, head_dims)), None)
    if refusal is not None:
        raise UsageError(f"--gluon {text!r}: {refusal} (--head-dims)")
    if tma:
        from kernels.paged_attention.hopper_prefill import tma_keys  # needs Gluon: only where a size is asked for

        for page_size in pages:
            try:
                tma_keys(config, page_size)
            except ValueError as error:
                raise UsageError(f"--gluon {text!r}: {error}") from None
    return config


def candidate_label(config: KernelConfig | HopperPrefillConfig | None, decodes_apart: bool | None) -> str:
    """A candidate's name in the rows: its configuration, or the table's with how it placed the decodes."""
    if config is not None:
        return config.label()
    return "table" + {None: "", False: ", decodes in the long launch", True: ", decodes apart"}[decodes_apart]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--pages", nargs="*", type=int, default=PAGES)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="seconds per (head dim, case, page) cell before its remaining candidates are skipped")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--no-cudnn", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--head-dims", nargs="*", type=int, default=None,
                        help="head dims to tune (default 128; 32 with --smoke)")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default=None, help="default bf16 (fp16 with --smoke)")
    parser.add_argument("--heads", nargs=2, type=int, default=None, metavar=("HQ", "HKV"),
                        help="query and KV heads (default 32 8; 4 2 with --smoke)")
    add_feature_options(parser)  # paged-bench's own model-feature options, checked the same way
    parser.add_argument("--gluon", nargs="*", default=[],
                        metavar="N,STAGES[,half][,persistent][,SCHEDULE][,onerange][,m64][,kahead][,oq][,qahead]"
                                "[,tmaK]",
                        help="long queries: also time the warp-specialised Gluon prefill kernel (sm_90) with these "
                             "key steps and stages, ',half' for half-wide masked steps, ',persistent' for one "
                             "program per multiprocessor, ',paired', ',pingpong' or ',overlap' for the consumers' "
                             "schedule, ',onerange' for a tile's steps in one range (a paired schedule), ',m64' for "
                             "64-row tiles of one consumer, ',kahead' for the producer loading the next step's K "
                             "before this step's V, ',oq' for the output staged in the Q buffer, ',qahead' (with "
                             "',persistent') for the next tile's Q loaded before this one's output is stored, ',tmaK' "
                             "for K keys per TMA load (its table entry is the table's choice where it can run)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny cases on the CPU under TRITON_INTERPRET=1: checks this script, times nothing real")
    args = parser.parse_args()
    try:
        # model features (adapters/features.py) as BatchSpec fields: the batch carries them to the
        # kernel, the reference and cuDNN's adapter alike
        features = feature_fields(args)
        head_dims = args.head_dims or ([32] if args.smoke else [128])
        # a malformed value stops here, before any GPU work
        gluon_configs = [gluon_config(text, args.pages, head_dims) for text in args.gluon]
    except UsageError as error:
        parser.error(str(error))
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("times kernels on a CUDA GPU and this machine has none (--smoke checks the script on the CPU)")
    num_q_heads, num_kv_heads = args.heads or ((4, 2) if args.smoke else (32, 8))
    dtype = args.dtype or ("fp16" if args.smoke else "bf16")
    if args.smoke:
        args.cases, args.reps, args.no_cudnn = ["2q1c40", "1q1c30_2q20c10"], 3, True
    started = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "tune.jsonl", "w")

    def emit(row: dict) -> None:
        log.write(json.dumps(row) + "\n")
        log.flush()

    import triton
    env = {"gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
           "torch": torch.__version__, "triton": triton.__version__,
           "sms": torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 0}
    try:
        import cudnn
        env["cudnn"] = f"{cudnn.backend_version()} frontend {cudnn.__version__}"
    except Exception as error:  # noqa: BLE001
        env["cudnn"] = f"unavailable: {error!r}"
    ceilings = machine_ceilings(device) if device == "cuda" else {}
    env["copy_tbps"] = ceilings.get("copy_tbps", float("nan"))
    env["matmul_bf16_tflops"] = ceilings.get("matmul_bf16_tflops", float("nan"))
    print("env", json.dumps(env), flush=True)
    emit({"env": env})
    summary = []

    for head_dim, case, page in ((d, c, p) for d in head_dims for c in args.cases for p in args.pages):
        spec = BatchSpec.from_grammar(case, page_size=page, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                                      head_dim=head_dim, dtype=dtype, **features)
        batch = make_batch(spec, device)
        ref, ref_lse = reference_attention(batch, with_lse=True)  # once per case: every candidate is checked on both
        fl, by = spec_flops(spec), spec_bytes(spec)
        row_base = {"case": case, "page": page, "head_dim": head_dim, "dtype": dtype, "features": features,
                    "heads": [num_q_heads, num_kv_heads], "flops": fl, "bytes": by,
                    "key": list(config_key(spec.head_dim, spec.page_size, spec.max_q_len))}
        cudnn_us = None
        if not args.no_cudnn:
            try:
                run, out = cudnn_runner(batch)
                out.fill_(float("nan"))
                run()
                _sync(device)
                verdict = check(out, ref, batch)
                timing = time_launches(run, device, args.reps) if verdict["ok"] else None
                cudnn_us = timing["median_us"] if timing else None
                emit({**row_base, "backend": "cudnn", **verdict, **(timing or {})})
                print(f"{case} D{head_dim} p{page} cudnn "
                      + (f"{cudnn_us:.1f} us rel_l2 {verdict['rel_l2']:.1e}" if cudnn_us else f"WRONG: {verdict['reason']}"),
                      flush=True)
            except Exception as error:  # noqa: BLE001
                emit({**row_base, "backend": "cudnn", "error": repr(error)[:600]})
                print(f"{case} D{head_dim} p{page} cudnn error {error!r}"[:400], flush=True)
        results = []
        candidates = candidates_for(spec, device)
        triton_table = table_choice(spec, device)  # timed whatever the budget, as the table's own rows are
        if gluon_configs and query_bucket(spec.max_q_len) == "long":  # before the table's repeat
            candidates[-1:-1] = [(config, None, None) for config in gluon_configs]
        cell_started = time.perf_counter()
        for index, (config, num_splits, decodes_apart) in enumerate(candidates):
            repeat = index == len(candidates) - 1
            label = candidate_label(config, decodes_apart)
            in_pool = isinstance(config, KernelConfig) and (config, num_splits) != (triton_table, None)
            if in_pool and not repeat and time.perf_counter() - cell_started > args.budget_s:
                emit({**row_base, "config": label, "label": label, "skipped": "budget"})
                continue
            try:
                compile_start = time.perf_counter()
                launcher = prepare_paged_attention(
                    batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                    batch.kv_lens, max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len,
                    causal=spec.causal, scale=spec.scale, config=config, num_splits=num_splits,
                    num_decodes=spec.leading_decodes if config is None else 0, decodes_apart=decodes_apart,
                    host_kv_lens=spec.kv_lens, sliding_window=spec.sliding_window, softcap=spec.softcap,
                    sinks=batch.sinks, k_scale=batch.k_scale, v_scale=batch.v_scale, return_lse=True)
                launcher.out.fill_(float("nan"))
                launcher()
                _sync(device)
                first_s = time.perf_counter() - compile_start
                verdict = check(launcher.out, ref, batch)
                if getattr(launcher, "lse", None) is not None:  # the LSE too, where the launcher writes one
                    lse_verdict = compare_lse(launcher.lse, ref_lse, batch)
                    verdict = {**verdict, "ok": verdict["ok"] and lse_verdict.ok, "lse_max_abs": lse_verdict.lse_max_abs,
                               "reason": verdict["reason"] or lse_verdict.reason}
                timing = time_launches(launcher, device, args.reps) if verdict["ok"] else {}
                row = {**row_base, "backend": "triton", "table": index == 0, "repeat": repeat, "label": label,
                       **launcher.describe(), **launcher.register_report(),
                       "first_call_s": first_s, **verdict, **timing}
            except Exception:  # noqa: BLE001 - the traceback is the row's record
                row = {**row_base, "backend": "triton", "table": index == 0, "config": label, "label": label,
                       "num_splits_req": num_splits, "error": traceback.format_exc()[-1500:]}
            emit(row)
            results.append(row)
            us = row.get("median_us")
            print(f"{case} D{head_dim} p{page} {'' if config else label + ': '}{row.get('config')} splits {row.get('num_splits', num_splits)} "
                  f"{'table ' if index == 0 else 'repeat ' if repeat else ''}"
                  + (f"{us:.1f} us ({fl / us / 1e6:.0f} TFLOP/s, {by / us / 1e6:.2f} TB/s) "
                     f"rel_l2 {row['rel_l2']:.1e} first {row['first_call_s']:.1f}s regs {row.get('regs')} spills {row.get('spills')}" if us else
                     f"FAILED {row.get('error', '')[-300:] or row.get('reason')}"), flush=True)
        timed = [r for r in results if r.get("median_us")]
        table_row = next((r for r in results if r.get("table")), {})
        repeat_row = next((r for r in results if r.get("repeat")), {})
        best = min(timed, key=lambda r: r["median_us"]) if timed else {}
        summary.append((f"{case} D{head_dim}", page, table_row, repeat_row, best, cudnn_us, fl, by))
        del batch, ref
        if device == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{dtype}, Hq {num_q_heads}, Hkv {num_kv_heads}; GPU {env['gpu']}, copy {env['copy_tbps']:.2f} TB/s, "
          f"bf16 mm {env['matmul_bf16_tflops']:.0f} TFLOP/s, triton {env['triton']}, cudnn {env['cudnn']}; elapsed {time.perf_counter() - started:.0f}s")
    header = (f"{'case':30} {'pg':>3} {'table us':>9} {'again':>7} {'x cudnn':>7} {'best us':>9} {'TFLOP/s':>7} "
              f"{'TB/s':>5} {'cudnn us':>9} {'x cudnn':>7}  best config")
    print(header)
    nan = float("nan")
    for case, page, table_row, repeat_row, best, cudnn_us, fl, by in summary:
        best_us, table_us = best.get("median_us"), table_row.get("median_us")
        ratio = f"{cudnn_us / best_us:.2f}" if (cudnn_us and best_us) else "-"
        table_ratio = f"{cudnn_us / table_us:.2f}" if (cudnn_us and table_us) else "-"
        print(f"{case:30} {page:>3} {table_us or nan:9.1f} {repeat_row.get('median_us', nan):7.1f} {table_ratio:>7} "
              f"{best_us or nan:9.1f} {fl / best_us / 1e6 if best_us else 0:7.0f} "
              f"{by / best_us / 1e6 if best_us else 0:5.2f} {cudnn_us or nan:9.1f} {ratio:>7}  "
              f"{best.get('config', '-')} splits {best.get('num_splits', '-')}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
