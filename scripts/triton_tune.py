#!/usr/bin/env python3
"""Check and time the Triton paged-attention kernel on a GPU over the target cases, for several
launch configurations each, next to cuDNN where it can be built; print a short table last.

    python3 scripts/triton_tune.py [--budget-s 330] [--out DIR] [--cases ...] [--pages 16 256]

Every timed configuration is first checked against ``reference_attention`` (NaN-poisoned output,
relative L2 <= 1e-2 for bf16). Times: CUDA events around each launch, L2 flushed between launches by
writing a 256 MiB buffer, median (and IQR) of ``--reps`` launches after warm-up. Full rows go to
``DIR/tune.jsonl``. Configurations are tried in order and skipped once ``--budget-s`` is spent, so
the table always comes out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from adapters.batch import BatchSpec, make_batch  # noqa: E402
from adapters.reference import reference_attention  # noqa: E402
from kernels.paged_attention import (  # noqa: E402
    KernelConfig, config_key, prepare_paged_attention, query_bucket, select_config)

CASES = ["64q1c4k", "4q2kc2k", "8q512c1k", "8q1c3000_8q9-2000c0-7000"]
PAGES = [16, 256]
CUDNN_H200_US = {"64q1c4k": 279.0, "4q2kc2k": 705.0, "8q512c1k": 178.0, "8q1c3000_8q9-2000c0-7000": 269.0}
"""cuDNN 9.19 on an H200, page 256 (docs/backends.md): only a lead where cuDNN cannot run here."""
FLUSH_BYTES = 256 << 20

_D = dict(split_programs_per_sm=8, min_split_keys=256)
DECODE_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(16, 64, 4, 3, **_D), 2),
    (KernelConfig(16, 128, 4, 2, **_D), 4),
    (KernelConfig(16, 32, 4, 4, **_D), 4),
    (KernelConfig(16, 64, 2, 3, **_D), 8),
    (KernelConfig(16, 64, 4, 3, use_tma=True, **_D), None),
    (KernelConfig(16, 64, 4, 4, use_tma=True, **_D), None),
    (KernelConfig(16, 128, 4, 3, use_tma=True, **_D), 4),
]
"""(config, num_splits or None for the heuristic) for the decode bucket; TMA ones only where a
tile fits in a page."""

_L = dict(split_programs_per_sm=2, min_split_keys=2048)
LONG_CANDIDATES: list[tuple[KernelConfig, int | None]] = [
    (KernelConfig(128, 128, 8, 2, **_L), None),
    (KernelConfig(128, 128, 8, 3, **_L), None),
    (KernelConfig(64, 64, 4, 3, **_L), None),
    (KernelConfig(64, 64, 4, 4, **_L), None),
    (KernelConfig(64, 64, 4, 2, **_L), None),
    (KernelConfig(128, 64, 8, 2, **_L), None),
    (KernelConfig(64, 32, 4, 3, **_L), None),
    (KernelConfig(128, 128, 8, 2, use_tma=True, **_L), None),
    (KernelConfig(128, 128, 8, 3, use_tma=True, **_L), None),
    (KernelConfig(64, 64, 4, 3, use_tma=True, **_L), None),
    (KernelConfig(64, 64, 4, 4, use_tma=True, **_L), None),
    (KernelConfig(128, 64, 8, 3, use_tma=True, **_L), None),
    (KernelConfig(128, 64, 8, 4, use_tma=True, **_L), None),
]
"""Candidates for the long-query bucket (prefill and mixed)."""


# ------------------------------------------------------------------------------------------------
# Figures of merit

def flops(spec: BatchSpec) -> float:
    pairs = 0
    for q, kv in zip(spec.q_lens, spec.kv_lens):
        pairs += q * kv - (q * (q - 1) // 2 if spec.causal else 0)
    return 4.0 * spec.num_q_heads * spec.head_dim * pairs


def bytes_moved(spec: BatchSpec) -> float:
    qo = 2 * spec.total_q * spec.num_q_heads * spec.head_dim * spec.elem_bytes
    kv = sum(2 * kv * spec.num_kv_heads * spec.head_dim * spec.elem_bytes for kv in spec.kv_lens)
    return float(qo + kv)


# ------------------------------------------------------------------------------------------------
# Timing

class Timer:
    """CUDA events around each launch; the L2 is flushed before each by writing FLUSH_BYTES."""

    def __init__(self, reps: int, warmup: int, device: str = "cuda"):
        self.reps, self.warmup, self.device = reps, warmup, device
        if device == "cuda":
            self.flush_buffer = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")

    def __call__(self, fn) -> dict:
        for _ in range(self.warmup):
            fn()
        if self.device != "cuda":  # --smoke on the CPU: wall clock, no flush
            samples = []
            for _ in range(self.reps):
                start = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - start) * 1e6)
            samples.sort()
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
            return {"median_us": statistics.median(samples), "q1_us": q1, "q3_us": q3, "min_us": samples[0],
                    "reps": self.reps}
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for start, end in zip(starts, ends):
            self.flush_buffer.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        samples = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return {"median_us": statistics.median(samples), "q1_us": q1, "q3_us": q3, "min_us": samples[0],
                "reps": self.reps}


def ceilings() -> dict:
    """Device copy bandwidth (read + write) and a bf16 8192^3 matrix product, measured once."""
    result = {}
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    result["copy_TBps"] = 2 * src.numel() * 10 / (start.elapsed_time(end) * 1e-3) / 1e12
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    result["matmul_TFLOPs"] = 2 * 8192 ** 3 * 10 / (start.elapsed_time(end) * 1e-3) / 1e12
    return result


# ------------------------------------------------------------------------------------------------
# Checking

def check(out: torch.Tensor, ref: torch.Tensor) -> dict:
    finite = bool(torch.isfinite(out).all())
    diff = out.float() - ref
    return {"finite": finite, "rel_l2": (diff.norm() / ref.norm()).item(), "max_abs": diff.abs().max().item(),
            "ok": finite and (diff.norm() / ref.norm()).item() <= 1e-2}


# ------------------------------------------------------------------------------------------------
# cuDNN baseline: the project's adapter if it works here, else a minimal graph of our own

def cudnn_runner(batch):
    """(run, out, how) or raises. Tries the project's cuDNN adapter, then a local graph."""
    errors = []
    try:
        from adapters.base import get_adapter
        adapter = get_adapter("cudnn")
        ok, reason = adapter.available(batch.device)
        if not ok:
            raise RuntimeError(reason)
        prepared = adapter.prepare(batch)
        return prepared.run, prepared.out, "adapters.cudnn"
    except Exception as error:  # noqa: BLE001 - any failure falls through to the local graph
        errors.append(f"adapter: {error!r}"[:300])
    try:
        run, out = _local_cudnn_graph(batch)
        return run, out, "local graph"
    except Exception as error:  # noqa: BLE001
        errors.append(f"local: {error!r}"[:300])
    raise RuntimeError(" | ".join(errors))


def _local_cudnn_graph(batch):
    import cudnn

    spec = batch.spec
    B, Hq, Hkv, D, P = spec.batch_size, spec.num_q_heads, spec.num_kv_heads, spec.head_dim, spec.page_size
    s_q = spec.max_q_len
    max_pages = batch.block_table.shape[1]
    io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[batch.q.dtype]
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    pad = s_q * Hq * D
    q_buf = torch.zeros(batch.q.numel() + pad, dtype=batch.q.dtype, device="cuda")
    q_buf[: batch.q.numel()] = batch.q.reshape(-1)
    o_buf = torch.zeros_like(q_buf)
    qo_dims, qo_strides = [B, Hq, s_q, D], [s_q * Hq * D, D, Hq * D, 1]
    q = graph.tensor(name="q", dim=qo_dims, stride=qo_strides, data_type=io)
    k_view, v_view = batch.k_cache.permute(0, 2, 1, 3), batch.v_cache.permute(0, 2, 1, 3)
    k = graph.tensor_like(k_view)
    v = graph.tensor_like(v_view)
    q_lens = (batch.cu_seqlens_q[1:] - batch.cu_seqlens_q[:-1]).to(torch.int32).view(B, 1, 1, 1).contiguous()
    kv_lens = batch.kv_lens.view(B, 1, 1, 1).contiguous()
    table = batch.block_table.view(B, 1, max_pages, 1).contiguous()
    ragged_dtype = torch.int64 if cudnn.backend_version() >= 90600 else torch.int32
    ragged = (batch.cu_seqlens_q.to(torch.int64) * Hq * D).to(ragged_dtype).view(B + 1, 1, 1, 1).contiguous()
    seq_q, seq_kv = graph.tensor_like(q_lens), graph.tensor_like(kv_lens)
    table_k, table_v = graph.tensor_like(table), graph.tensor_like(table)
    q_off, o_off = graph.tensor_like(ragged), graph.tensor_like(ragged)
    q.set_ragged_offset(q_off)
    kwargs = dict(name="sdpa", q=q, k=k, v=v, attn_scale=spec.scale, use_padding_mask=True,
                  seq_len_q=seq_q, seq_len_kv=seq_kv, paged_attention_k_table=table_k,
                  paged_attention_v_table=table_v, paged_attention_max_seq_len_kv=max_pages * P)
    if spec.causal:
        kwargs.update(diagonal_band_right_bound=0, diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT)
    try:
        o, _ = graph.sdpa(generate_stats=False, **kwargs)
    except TypeError:
        o, _ = graph.sdpa(is_inference=True, **kwargs)
    o.set_output(True).set_dim(qo_dims).set_stride(qo_strides).set_ragged_offset(o_off)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    workspace = torch.empty(max(1, graph.get_workspace_size()), dtype=torch.uint8, device="cuda")
    pack = {q: q_buf, k: k_view, v: v_view, seq_q: q_lens, seq_kv: kv_lens, table_k: table, table_v: table,
            q_off: ragged, o_off: ragged, o: o_buf}
    out = o_buf[: batch.q.numel()].view_as(batch.q)

    def run():
        graph.execute(pack, workspace, handle=handle)
        return out

    return run, out


# ------------------------------------------------------------------------------------------------
# Main loop

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def candidates_for(spec: BatchSpec) -> list[tuple[KernelConfig, int | None]]:
    """The table's choice first, then the bucket's candidates (TMA ones only where a key tile fits
    in a page), then the table's choice again: the spread between the two runs of one build."""
    table = select_config(spec.head_dim, spec.page_size, spec.max_q_len)
    pool = DECODE_CANDIDATES if query_bucket(spec.max_q_len) == "decode" else LONG_CANDIDATES
    pool = [c for c in pool if c != (table, None) and (not c[0].use_tma or spec.page_size % c[0].block_n == 0)]
    return [(table, None)] + pool + [(table, None)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--pages", nargs="*", type=int, default=PAGES)
    parser.add_argument("--budget-s", type=float, default=330.0)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-cudnn", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny cases on the CPU under TRITON_INTERPRET=1: checks this script, times nothing real")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    shape = dict(num_q_heads=4, num_kv_heads=2, head_dim=32, dtype="fp16") if args.smoke else dict(dtype="bf16")
    if args.smoke:
        args.cases, args.reps, args.warmup, args.no_cudnn = ["2q1c40", "2q20c10_1q1c30"], 3, 1, True
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
    env.update(ceilings() if device == "cuda" else {"copy_TBps": float("nan"), "matmul_TFLOPs": float("nan")})
    print("env", json.dumps(env), flush=True)
    emit({"env": env})
    timer = Timer(args.reps, args.warmup, device)
    summary = []

    for case in args.cases:
        for page in args.pages:
            spec = BatchSpec.from_grammar(case, page_size=page, **shape)
            batch = make_batch(spec, device)
            ref = reference_attention(batch)
            fl, by = flops(spec), bytes_moved(spec)
            row_base = {"case": case, "page": page, "flops": fl, "bytes": by, "key": list(config_key(
                spec.head_dim, spec.page_size, spec.max_q_len))}
            cudnn_us = None
            if not args.no_cudnn:
                try:
                    run, out, how = cudnn_runner(batch)
                    out.fill_(float("nan"))
                    run()
                    _sync(device)
                    verdict = check(out, ref)
                    timing = timer(run) if verdict["ok"] else None
                    cudnn_us = timing["median_us"] if timing else None
                    emit({**row_base, "backend": "cudnn", "how": how, **verdict, **(timing or {})})
                    print(f"{case} p{page} cudnn[{how}] rel_l2 {verdict['rel_l2']:.1e} "
                          f"{'%.1f us' % cudnn_us if cudnn_us else 'WRONG'}", flush=True)
                except Exception as error:  # noqa: BLE001
                    emit({**row_base, "backend": "cudnn", "error": repr(error)[:600]})
                    print(f"{case} p{page} cudnn error {error!r}"[:400], flush=True)
            results = []
            candidates = candidates_for(spec)
            for index, (config, num_splits) in enumerate(candidates):
                repeat = index == len(candidates) - 1
                if 0 < index and not repeat and time.perf_counter() - started > args.budget_s:
                    emit({**row_base, "config": config.label(), "skipped": "budget"})
                    continue
                try:
                    compile_start = time.perf_counter()
                    launcher = prepare_paged_attention(
                        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                        batch.kv_lens, max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len,
                        causal=spec.causal, scale=spec.scale, config=config, num_splits=num_splits)
                    launcher.out.fill_(float("nan"))
                    launcher()
                    _sync(device)
                    first_s = time.perf_counter() - compile_start
                    verdict = check(launcher.out, ref)
                    timing = timer(launcher) if verdict["ok"] else {}
                    row = {**row_base, "backend": "triton", "table": index == 0, "repeat": repeat,
                           **launcher.plan.describe(),
                           "first_call_s": first_s, **verdict, **timing}
                except Exception as error:  # noqa: BLE001
                    row = {**row_base, "backend": "triton", "table": index == 0, "config": config.label(),
                           "num_splits_req": num_splits, "error": traceback.format_exc()[-1500:]}
                emit(row)
                results.append(row)
                us = row.get("median_us")
                print(f"{case} p{page} {row.get('config')} splits {row.get('num_splits', num_splits)} "
                      f"{'table ' if index == 0 else 'repeat ' if repeat else ''}"
                      + (f"{us:.1f} us ({fl / us / 1e6:.0f} TFLOP/s, {by / us / 1e6:.2f} TB/s) "
                         f"rel_l2 {row['rel_l2']:.1e} first {row['first_call_s']:.1f}s" if us else
                         f"FAILED {row.get('error', '')[-300:] or row.get('rel_l2')}"), flush=True)
            timed = [r for r in results if r.get("median_us")]
            table_row = next((r for r in results if r.get("table")), {})
            repeat_row = next((r for r in results if r.get("repeat")), {})
            best = min(timed, key=lambda r: r["median_us"]) if timed else {}
            summary.append((case, page, table_row, repeat_row, best, cudnn_us, fl, by))
            del batch, ref
            if device == "cuda":
                torch.cuda.empty_cache()

    print(f"\nGPU {env['gpu']}, copy {env['copy_TBps']:.2f} TB/s, bf16 mm {env['matmul_TFLOPs']:.0f} TFLOP/s, "
          f"triton {env['triton']}, cudnn {env['cudnn']}; elapsed {time.perf_counter() - started:.0f}s")
    header = (f"{'case':26} {'pg':>3} {'table us':>9} {'again':>7} {'x cudnn':>7} {'best us':>9} {'TFLOP/s':>7} "
              f"{'TB/s':>5} {'cudnn us':>9} {'x cudnn':>7}  best config")
    print(header)
    nan = float("nan")
    for case, page, table_row, repeat_row, best, cudnn_us, fl, by in summary:
        best_us, table_us = best.get("median_us"), table_row.get("median_us")
        ratio = f"{cudnn_us / best_us:.2f}" if (cudnn_us and best_us) else "-"
        table_ratio = f"{cudnn_us / table_us:.2f}" if (cudnn_us and table_us) else "-"
        print(f"{case:26} {page:>3} {table_us or nan:9.1f} {repeat_row.get('median_us', nan):7.1f} {table_ratio:>7} "
              f"{best_us or nan:9.1f} {fl / best_us / 1e6 if best_us else 0:7.0f} "
              f"{by / best_us / 1e6 if best_us else 0:5.2f} {cudnn_us or nan:9.1f} {ratio:>7}  "
              f"{best.get('config', '-')} splits {best.get('num_splits', '-')}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
