"""Bit-for-bit guard of the Triton paged-attention kernel: every case below runs under Triton's
interpreter and the SHA-256 of its output bytes must equal the one stored in
``tests/data/kernel_golden.json`` (recorded from the kernel before it became a package, commit 73a1f9f).

The inputs are built here from integer hashes, not from ``adapters.batch`` (whose random draws may
change): values are multiples of 1/64 in [-2, 2] (exact in fp16 and fp32), pages are scattered
over a pool, and every slot no sequence owns holds NaN (it must never reach an output). The
interpreter computes ``tl.dot`` with numpy's matmul, whose summation order depends on the BLAS
kernel numpy picks for the CPU; the check therefore runs in a subprocess with OpenBLAS pinned to
one kernel family and one thread, which makes the hashes the same on every x86-64 CPU with AVX2.

Regenerate (only for a change that is meant to alter outputs, and say so in the commit):

    python tests/test_kernel_golden.py --write
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "kernel_golden.json"
PINNED_ENV = {"TRITON_INTERPRET": "1", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1",
              "OMP_NUM_THREADS": "1"}
"""Environment of the subprocess that runs the cases: the interpreter, one BLAS kernel family."""


@dataclass(frozen=True)
class Case:
    """One launch: per-sequence lengths, layout, and the launch overrides (None: the table / heuristic)."""

    name: str
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    page_size: int = 16
    num_q_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 32
    dtype: str = "fp32"
    causal: bool = True
    config: dict | None = field(default_factory=lambda: dict(SMALL_TILES))
    """KernelConfig fields; None: the table's choice."""
    num_splits: int | None = None
    layout: str = "plain"
    """plain; strided-q (q and out are column slices of wider rows); padded-v (V rows padded, so K
    and V have different slot strides and each looks its rows up)."""
    extra: dict = field(default_factory=dict)


SMALL_TILES = dict(block_m=16, block_n=16, num_warps=4, num_stages=1)
"""Small tiles: the tiny batches below span several query tiles, key tiles and pages."""
TMA_TILES = dict(SMALL_TILES, use_tma=True)
DECODE = ((1, 1, 1), (37, 5, 20))
PREFILL = ((33, 9), (33, 9))
MIXED = ((1, 9, 17), (40, 20, 17))
BATCHES = {"decode": DECODE, "prefill": PREFILL, "mixed": MIXED}


def golden_cases() -> list[Case]:
    """The cases, in a fixed order (append new ones at the end; names are keys in the JSON file)."""
    cases = []
    # the core matrix: dtype x batch kind x causal x split, small tiles, pages of 16 (tile in page)
    for dtype in ("fp32", "fp16"):
        for kind, (q_lens, kv_lens) in BATCHES.items():
            for causal in (True, False):
                for num_splits in (1, 3):
                    cases.append(Case(f"{dtype}-{kind}-{'causal' if causal else 'full'}-split{num_splits}",
                                      q_lens, kv_lens, dtype=dtype, causal=causal, num_splits=num_splits))
    q_lens, kv_lens = MIXED
    # page sizes: one lookup per key (1, 3), one per tile (64)
    for page_size in (1, 3, 64):
        cases.append(Case(f"fp32-mixed-page{page_size}-split2", q_lens, kv_lens, page_size=page_size, num_splits=2))
    cases.append(Case("fp16-decode-page1-split3", *DECODE, page_size=1, dtype="fp16", num_splits=3))
    # head dims (96: padded to 128)
    cases.append(Case("fp16-mixed-d64-split2", q_lens, kv_lens, head_dim=64, dtype="fp16", num_splits=2))
    cases.append(Case("fp32-mixed-d128-split2", q_lens, kv_lens, head_dim=128, num_splits=2))
    cases.append(Case("fp32-mixed-d96-split2", q_lens, kv_lens, head_dim=96, num_splits=2))
    cases.append(Case("fp16-prefill-d256", (13,), (20,), head_dim=256, dtype="fp16", num_q_heads=2,
                      num_kv_heads=1))
    cases.append(Case("fp32-decode-d256-split2", (1, 1), (40, 9), head_dim=256, num_q_heads=2, num_kv_heads=1,
                      num_splits=2))
    # head groupings: MHA, MQA, a group of 3
    for name, heads in (("mha", (2, 2)), ("mqa", (4, 1)), ("group3", (6, 2))):
        cases.append(Case(f"fp16-mixed-{name}-split2", q_lens, kv_lens, num_q_heads=heads[0],
                          num_kv_heads=heads[1], dtype="fp16", num_splits=2))
        cases.append(Case(f"fp32-decode-{name}", *DECODE, num_q_heads=heads[0], num_kv_heads=heads[1],
                          page_size=3))
    # TMA loads (a key tile inside one page)
    cases.append(Case("fp32-mixed-tma-split2", q_lens, kv_lens, config=TMA_TILES, num_splits=2))
    cases.append(Case("fp16-prefill-tma-full", *PREFILL, config=TMA_TILES, dtype="fp16", causal=False))
    cases.append(Case("fp16-decode-tma-page64-split3", *DECODE, page_size=64, config=TMA_TILES,
                      dtype="fp16", num_splits=3))
    # wider tiles
    cases.append(Case("fp32-mixed-m32n32-split2", q_lens, kv_lens, num_splits=2,
                      config=dict(block_m=32, block_n=32, num_warps=4, num_stages=2)))
    # the table and the split heuristic (4 programs per SM under the interpreter)
    cases.append(Case("table-fp16-mixed-d128-page16", q_lens, kv_lens, head_dim=128, dtype="fp16", config=None))
    cases.append(Case("table-fp32-decode-d128-page64", (1,), (300,), page_size=64, head_dim=128, config=None))
    cases.append(Case("table-fp32-decode-d64-page16", (1, 1, 1), (70, 33, 129), head_dim=64, config=None))
    cases.append(Case("table-fp16-long-d64-page64", (40, 20), (60, 20), page_size=64, head_dim=64, dtype="fp16",
                      config=None))
    cases.append(Case("table-fp32-short-d32-page3", (5, 1, 12), (9, 30, 12), page_size=3, config=None,
                      causal=False))
    # strides: q/out views into wider rows; V with its own slot stride
    cases.append(Case("fp32-mixed-strided-q-split2", q_lens, kv_lens, num_splits=2, layout="strided-q"))
    cases.append(Case("fp16-mixed-padded-v-split2", q_lens, kv_lens, dtype="fp16", num_splits=2, layout="padded-v"))
    cases.append(Case("fp32-mixed-padded-v-page3", q_lens, kv_lens, page_size=3, layout="padded-v"))
    return cases


# ------------------------------------------------------------------------------------------------
# Inputs from integer hashes

def hashed_values(count: int, salt: int):
    """``count`` float32 values, multiples of 1/64 in [-2, 2], from an integer hash of (index, salt)."""
    import torch

    h = (torch.arange(count, dtype=torch.int64) * 2654435761 + salt * 40503 + 12345) & 0xFFFFFFFF
    h = h ^ (h >> 13)
    h = (h * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return ((h % 257) - 128).to(torch.float32) / 64.0


def build_inputs(case: Case) -> dict:
    """q, caches, block table, lengths and out of ``case`` on the CPU (see the module docstring)."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[case.dtype]
    size = case.head_dim
    pages_per_seq = [-(-kv // case.page_size) for kv in case.kv_lens]
    num_pages = 1 + sum(pages_per_seq) + 3  # the null page, owned pages, spare pages
    order = sorted(range(1, num_pages), key=lambda page: (page * 7919 + 13) % 104729)
    block_table = torch.zeros(len(case.q_lens), max(pages_per_seq), dtype=torch.int32)
    owned = torch.zeros(num_pages, case.page_size, dtype=torch.bool)
    start = 0
    for seq, (pages, kv_len) in enumerate(zip(pages_per_seq, case.kv_lens)):
        ids = torch.tensor(order[start:start + pages], dtype=torch.int32)
        block_table[seq, :pages] = ids
        slots = torch.zeros(pages * case.page_size, dtype=torch.bool)
        slots[:kv_len] = True
        owned[ids.long()] = slots.view(pages, case.page_size)
        start += pages
    total_q = sum(case.q_lens)
    hq, hkv = case.num_q_heads, case.num_kv_heads
    q_width = hq + 3 if case.layout == "strided-q" else hq
    q_rows = hashed_values(total_q * q_width * size, 1).view(total_q, q_width, size).to(dtype)
    q = q_rows[:, 1:hq + 1] if case.layout == "strided-q" else q_rows
    cache_shape = (num_pages, case.page_size, hkv, size)
    k_cache = hashed_values(num_pages * case.page_size * hkv * size, 2).view(cache_shape)
    v_width = size + 8 if case.layout == "padded-v" else size
    v_rows = hashed_values(num_pages * case.page_size * hkv * v_width, 3).view(*cache_shape[:3], v_width)
    v_cache = v_rows[..., :size]
    for cache in (k_cache, v_cache):
        cache[~owned] = float("nan")
        cache[0] = 0.0  # the null page pads the block table and stays zero
    k_cache, v_rows = k_cache.to(dtype), v_rows.to(dtype)
    v_cache = v_rows[..., :size]
    cu_seqlens_q = torch.zeros(len(case.q_lens) + 1, dtype=torch.int32)
    cu_seqlens_q[1:] = torch.cumsum(torch.tensor(case.q_lens, dtype=torch.int32), 0)
    kv_lens = torch.tensor(case.kv_lens, dtype=torch.int32)
    out = torch.full_like(q_rows, float("nan"))[:, 1:hq + 1] if case.layout == "strided-q" else None
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, cu_seqlens_q=cu_seqlens_q,
                kv_lens=kv_lens, out=out, max_q_len=max(case.q_lens), max_kv_len=max(case.kv_lens),
                causal=case.causal, scale=size ** -0.5)


def run_case(case: Case) -> dict:
    """Launch ``case``; the SHA-256 of its output bytes, the configuration label and the split count."""
    import torch

    from kernels.paged_attention import KernelConfig, prepare_paged_attention

    inputs = build_inputs(case)
    config = KernelConfig(**case.config) if case.config is not None else None
    launcher = prepare_paged_attention(**inputs, config=config, num_splits=case.num_splits)
    launcher.out.fill_(float("nan"))
    result = launcher()
    out = result[0] if isinstance(result, tuple) else result
    assert out.data_ptr() == launcher.out.data_ptr()
    data = out.contiguous().view(torch.uint8 if out.element_size() == 1 else torch.int16
                                 if out.element_size() == 2 else torch.int32).numpy().tobytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "config": launcher.plan.config.label(),
            "num_splits": launcher.plan.num_splits, "finite": bool(torch.isfinite(out).all())}


def run_all() -> dict:
    rows = {}
    for case in golden_cases():
        started = time.perf_counter()
        rows[case.name] = run_case(case)
        if os.environ.get("GOLDEN_TIMES"):
            print(f"{case.name} {time.perf_counter() - started:.2f}s", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------------
# The test

HAVE_TRITON = importlib.util.find_spec("triton") is not None and importlib.util.find_spec("numpy") is not None


@pytest.mark.skipif(not HAVE_TRITON, reason="triton and numpy are needed to run the kernel under the interpreter")
def test_outputs_match_golden_hashes_bit_for_bit():
    import torch

    if torch.cuda.is_available():
        pytest.skip("the golden hashes are a CPU (interpreter) check; this machine has a GPU for the GPU tests")
    golden = json.loads(GOLDEN.read_text())
    env = {**os.environ, **PINNED_ENV}
    result = subprocess.run([sys.executable, __file__, "--print"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(got) == sorted(golden["cases"]), "case list differs from the golden file"
    assert all(row["finite"] for row in got.values()), [name for name, row in got.items() if not row["finite"]]
    wrong = {name: (row, golden["cases"][name]) for name, row in got.items() if row != golden["cases"][name]}
    assert not wrong, f"{len(wrong)} of {len(got)} cases differ from the golden hashes: {wrong}"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    if argv[1:] == ["--print"]:
        print(json.dumps(run_all()))
        return 0
    if argv[1:] == ["--write"]:
        env = {**os.environ, **PINNED_ENV}
        if any(os.environ.get(key) != value for key, value in PINNED_ENV.items()):
            return subprocess.run([sys.executable, __file__, "--write"], env=env).returncode
        import triton
        import numpy

        cases = run_all()
        GOLDEN.write_text(json.dumps({
            "note": "SHA-256 of each case's output bytes under Triton's interpreter (tests/test_kernel_golden.py)",
            "recorded_with": {"triton": triton.__version__, "numpy": numpy.__version__, **PINNED_ENV},
            "cases": cases}, indent=1) + "\n")
        print(f"wrote {len(cases)} cases to {GOLDEN}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
