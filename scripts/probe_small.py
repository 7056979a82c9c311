#!/usr/bin/env python3
"""Small decodes and few-tile prefills on a GPU: the Triton kernel's table plan with and without
programmatic dependent launch of its merge kernel, next to flash-attn 2, FlexAttention and cuDNN
(default), or a sweep of key-split counts per decode configuration (``--splits``). Every Triton
launch is gate-checked first; times come from the suite's timer (with ``host_us``, the host cost of
a repetition). One line per measurement; rows also go to ``$OUT/probe.jsonl`` (or ./probe.jsonl).

    python3 scripts/probe_small.py [--splits]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from adapters.base import get_adapter  # noqa: E402
from adapters.batch import BatchSpec, make_batch  # noqa: E402
from adapters.reference import reference_attention  # noqa: E402
from harness.measure.gate import compare  # noqa: E402
from harness.measure.timer import time_function  # noqa: E402
from kernels.paged_attention import CONFIG_TABLE, KernelConfig, prepare_paged_attention  # noqa: E402

LOG_PATH = Path(os.environ.get("OUT", ".")) / "probe.jsonl"


def emit(row: dict) -> None:
    with open(LOG_PATH, "a") as log:
        log.write(json.dumps(row) + "\n")
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def times(fn) -> dict:
    timing = time_function(fn, "cuda")
    return {"us": timing.median_us, "iqr": timing.iqr_pct, "host_us": timing.host_us,
            "spin": "spin" in timing.method}


def backends(case: str, page: int, names: list[str]) -> None:
    """Time other backends on the same batch through their adapters (flash-attn at page 256 only)."""
    spec = BatchSpec.from_grammar(case, page_size=page, dtype="bf16")
    batch = make_batch(spec, "cuda")
    for name in names:
        if name == "flash-attn2" and page != 256:
            continue
        try:
            prepared = get_adapter(name).prepare(batch)
            emit({"part": "launch", "case": case, "page": page, "backend": name, **times(prepared.run),
                  **({"splits": prepared.notes.get("num_splits")} if name == "triton" else {})})
        except Exception as error:  # noqa: BLE001
            emit({"part": "launch", "case": case, "page": page, "backend": name, "error": repr(error)[:300]})


def sweep_splits(case: str, page: int, configs: list[KernelConfig], splits: list[int]) -> None:
    """Each config at each requested split count (as the planner rounds it; repeats skipped)."""
    spec = BatchSpec.from_grammar(case, page_size=page, dtype="bf16")
    batch = make_batch(spec, "cuda")
    ref = reference_attention(batch)
    seen: dict = {}
    for config in configs:
        for num_splits in splits:
            try:
                launcher = prepare_paged_attention(
                    batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
                    max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
                    config=config, num_splits=num_splits)
                if launcher.plan.num_splits in seen.setdefault(config, set()):
                    continue
                seen[config].add(launcher.plan.num_splits)
                num_splits = launcher.plan.num_splits
                launcher.out.fill_(float("nan"))
                launcher()
                torch.cuda.synchronize()
                gate = compare(launcher.out, ref, batch)
                row = {"part": "splits", "case": case, "page": page, "config": config.label(), "splits": num_splits,
                       "ok": gate.ok}
                if gate.ok:
                    row.update(times(launcher))
                emit(row)
            except Exception as error:  # noqa: BLE001
                emit({"part": "splits", "case": case, "page": page, "config": config.label(), "splits": num_splits,
                      "error": repr(error)[:300]})


def triton_ab(case: str, page: int) -> None:
    """The table's plan with and without programmatic dependent launch of the merge, gate-checked."""
    spec = BatchSpec.from_grammar(case, page_size=page, dtype="bf16")
    batch = make_batch(spec, "cuda")
    ref = reference_attention(batch)
    for early in (True, False):
        launcher = prepare_paged_attention(
            batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
            max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
            launch_merge_early=early)
        launcher.out.fill_(float("nan"))
        launcher()
        torch.cuda.synchronize()
        gate = compare(launcher.out, ref, batch)
        emit({"part": "pdl", "case": case, "page": page, "pdl": launcher.plan.launch_merge_early,
              "config": launcher.plan.config.label(), "splits": launcher.plan.num_splits, "ok": gate.ok,
              **(times(launcher) if gate.ok else {})})
        if launcher.plan.num_splits == 1:
            break


def split_sweep() -> None:
    """Split counts around the table's choice for the decode configurations tried in v3.2."""
    split = dict(split_programs_per_sm=1, min_split_keys=128)
    configs = [CONFIG_TABLE["decode", 128, "large"], KernelConfig(16, 64, 4, 3, **split),
               KernelConfig(16, 128, 4, 2, **split), KernelConfig(16, 128, 8, 2, **split)]
    plan = [("1q1c1k", 256, [5, 9, 17]), ("1q1c4k", 256, [9, 17, 24, 33]), ("1q1c16k", 256, [17, 24, 33, 48]),
            ("4q1c4k", 256, [5, 8, 11, 17]), ("16q1c4k", 256, [2, 3, 4, 9]), ("16q1c16k", 16, [2, 3, 4, 9]),
            ("16q1c16k", 256, [2, 3, 4, 9])]
    for case, page, splits in plan:
        sweep_splits(case, page, configs, splits)


def main() -> None:
    print("gpu", torch.cuda.get_device_name(), flush=True)
    started = time.perf_counter()
    if "--splits" in sys.argv[1:]:
        split_sweep()
        print(f"done {time.perf_counter() - started:.0f}s", flush=True)
        return
    for case in ["1q1c1k", "1q1c4k", "1q1c16k", "4q1c4k", "16q1c1k", "16q1c4k", "16q1c16k", "64q1c1k", "64q1c4k"]:
        for page in (16, 256):
            triton_ab(case, page)
            if page == 256:
                backends(case, page, ["flash-attn2"])
    for page in (16, 256):
        triton_ab("1q512c2k", page)
        backends("1q512c2k", page, ["flex-paged", "flash-attn2", "cudnn"])
    triton_ab("1q64c32k", 256)
    backends("1q64c32k", 256, ["flash-attn2", "cudnn"])
    print(f"done {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
