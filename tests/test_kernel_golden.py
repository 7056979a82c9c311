"""Golden check of the Triton paged-attention kernel: every case below runs under Triton's interpreter;
its output must match a float64 reference computed here, and sampled output values must match the ones
stored in ``tests/data/kernel_golden.json`` (recorded from the kernel; the first golden file, SHA-256
hashes of the kernel at 73a1f9f, pinned floating-point bits and failed on other CPUs and numpy builds).

The inputs are built here from integer hashes, not from ``adapters.batch`` (whose random draws may
change): values are multiples of 1/64 in [-2, 2] (exact in fp16 and fp32), pages are scattered
over a pool, and every slot no sequence owns holds NaN (it must never reach an output). The
interpreter computes ``tl.dot`` with numpy's matmul, whose summation order depends on the BLAS build
and the CPU, so outputs are compared with tolerances (`REFERENCE_ATOL`, `SAMPLE_ATOL`), never bit for
bit; the configuration label, the split count and finiteness are compared exactly.

Re-record the stored values (only for a change that is meant to alter outputs, and say so in the commit):

    python tests/test_kernel_golden.py --write
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "kernel_golden.json"
SAMPLES = 32
"""Output values stored per case, at evenly spread flat positions (`sample_positions`)."""
REFERENCE_ATOL = {"fp32": 2.0 ** -18, "fp16": 2.0 ** -9}
"""Largest |kernel - float64 reference| allowed (|outputs| <= 2). fp32: the kernel's fp32 dots and online
softmax drift a few fp32 ulps (measured: under 5e-7 on every case); another BLAS summation order moves that
by a few more, far under 2^-18 (3.8e-6). fp16: the output is rounded to fp16 (up to 2^-11 at |o| < 2) and
the probabilities are rounded to fp16 before the PV dot (up to 2^-11 of sum(p |v|) <= 2^-10), so at most
about 1.5e-3 (measured: under 7.2e-4); 2^-9 (2e-3) is that bound with a little room."""
SAMPLE_ATOL = {"fp32": 2.0 ** -19, "fp16": 2.0 ** -9}
"""Largest change allowed from a stored sample: another BLAS build or CPU reorders the fp32 sums of the
interpreter's dots, a few fp32 ulps (2^-19 = 1.9e-6 is 16 ulps at 1.0); in an fp16 output that can flip one
rounding, one fp16 ulp (2^-10 at |o| < 2), and 2^-9 allows that. Any larger move of a sampled value fails."""


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
    # D=256's long entry (64-key steps: per-key lookups at page 16, TMA at page 64) and its decode entry
    cases.append(Case("table-fp16-long-d256-page16", (40, 20), (100, 20), head_dim=256, dtype="fp16",
                      num_q_heads=2, num_kv_heads=1, config=None))
    cases.append(Case("table-fp16-long-d256-page64", (40, 20), (100, 20), page_size=64, head_dim=256, dtype="fp16",
                      num_q_heads=2, num_kv_heads=1, config=None))
    cases.append(Case("table-fp32-decode-d256-page16", (1, 1), (70, 129), head_dim=256, num_q_heads=2,
                      num_kv_heads=1, config=None))
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


def sample_positions(numel: int, count: int = SAMPLES) -> list[int]:
    """``count`` flat positions spread evenly over an output of ``numel`` elements (first and last included)."""
    count = min(count, numel)
    return sorted({round(i * (numel - 1) / max(count - 1, 1)) for i in range(count)})


def reference_output(inputs: dict):
    """The attention of ``inputs`` in float64: keys gathered through the block table, bottom-right causal
    (query i of a sequence sees key j when j <= i + kv_len - q_len), softmax with the same scale."""
    import torch

    q = inputs["q"].double()
    hq, hkv = q.shape[1], inputs["k_cache"].shape[2]
    page_size = inputs["k_cache"].shape[1]
    out = torch.empty_like(q)
    cu, kv_lens = inputs["cu_seqlens_q"].tolist(), inputs["kv_lens"].tolist()
    for seq, kv_len in enumerate(kv_lens):
        pages = inputs["block_table"][seq, :-(-kv_len // page_size)].long()
        k = inputs["k_cache"][pages].double().reshape(-1, hkv, q.shape[2])[:kv_len]
        v = inputs["v_cache"][pages].double().reshape(-1, hkv, q.shape[2])[:kv_len]
        k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
        rows = q[cu[seq]:cu[seq + 1]]
        scores = torch.einsum("qhd,khd->hqk", rows, k) * inputs["scale"]
        if inputs["causal"]:
            q_len = rows.shape[0]
            allowed = torch.arange(kv_len)[None, :] <= torch.arange(q_len)[:, None] + kv_len - q_len
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[cu[seq]:cu[seq + 1]] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def run_case(case: Case) -> dict:
    """Launch ``case``: its configuration label, split count, finiteness, largest difference from the
    float64 reference and the output values at `sample_positions`."""
    import torch

    from kernels.paged_attention import KernelConfig, prepare_paged_attention

    inputs = build_inputs(case)
    config = KernelConfig(**case.config) if case.config is not None else None
    launcher = prepare_paged_attention(**inputs, config=config, num_splits=case.num_splits)
    launcher.out.fill_(float("nan"))
    result = launcher()
    out = result[0] if isinstance(result, tuple) else result
    assert out.data_ptr() == launcher.out.data_ptr()
    flat = out.double().flatten()
    return {"config": launcher.plan.config.label(), "num_splits": launcher.plan.num_splits,
            "finite": bool(torch.isfinite(out).all()),
            "reference_error": float((out.double() - reference_output(inputs)).abs().max()),
            "samples": [float(f"{flat[i].item():.9g}") for i in sample_positions(flat.numel())]}


def sample_mismatches(got: list[float], stored: list[float], atol: float) -> list[str]:
    """'position: got vs stored' for each sample further than ``atol`` from the stored value."""
    if len(got) != len(stored):
        return [f"{len(got)} samples, {len(stored)} stored"]
    return [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(got, stored))
            if not math.isclose(a, b, rel_tol=0.0, abs_tol=atol)]


def golden_problems(case: Case, got: dict, stored: dict) -> list[str]:
    """What differs between a case's run and its stored row: non-float fields exactly, the output within
    the tolerances of the case's dtype (an empty list: it matches)."""
    problems = [f"{key}: {got[key]!r} vs stored {stored[key]!r}" for key in ("config", "num_splits")
                if got[key] != stored[key]]
    if not got["finite"]:
        problems.append("non-finite output (a NaN slot reached it)")
    if not got["reference_error"] <= REFERENCE_ATOL[case.dtype]:
        problems.append(f"max |out - float64 reference| = {got['reference_error']:.3g} "
                        f"> {REFERENCE_ATOL[case.dtype]:.3g}")
    problems += [f"sample {m}" for m in sample_mismatches(got["samples"], stored["samples"], SAMPLE_ATOL[case.dtype])]
    return problems


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text())["cases"]


# ------------------------------------------------------------------------------------------------
# The test

HAVE_TRITON = importlib.util.find_spec("triton") is not None and importlib.util.find_spec("numpy") is not None
needs_interpreter = pytest.mark.skipif(not HAVE_TRITON, reason="triton and numpy run the kernel under the interpreter")


def _skip_on_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("the golden values are a CPU (interpreter) check; this machine has a GPU for the GPU tests")


def test_stored_cases_are_the_case_list():
    assert sorted(load_golden()) == sorted(case.name for case in golden_cases()), "case list differs from the file"


@needs_interpreter
@pytest.mark.parametrize("case", golden_cases(), ids=lambda case: case.name)
def test_outputs_match_the_reference_and_the_stored_values(case):
    _skip_on_gpu()
    problems = golden_problems(case, run_case(case), load_golden()[case.name])
    assert not problems, problems


def _planted(prepare, nudge: float):
    """``prepare_paged_attention`` whose launches add ``nudge`` to the first output value (a planted bug)."""
    def planted_prepare(*args, **kwargs):
        launcher = prepare(*args, **kwargs)
        launch = launcher.__call__

        class Planted:
            def __getattr__(self, name):
                return getattr(launcher, name)

            def __call__(self):
                result = launch()
                out = result[0] if isinstance(result, tuple) else result
                out.view(-1)[0] += nudge
                return result
        return Planted()
    return planted_prepare


@needs_interpreter
@pytest.mark.parametrize("name", ["fp32-mixed-causal-split3", "fp16-decode-full-split1"])
def test_a_planted_change_of_the_output_fails_the_check(name, monkeypatch):
    """The tolerances still catch a real change: the kernel's first output value moved by twice the larger
    tolerance fails (the stored sample and the reference), and so does a changed split count."""
    _skip_on_gpu()
    import kernels.paged_attention as kernel

    case = next(c for c in golden_cases() if c.name == name)
    stored = load_golden()[name]
    nudge = 2 * max(REFERENCE_ATOL[case.dtype], SAMPLE_ATOL[case.dtype])
    monkeypatch.setattr(kernel, "prepare_paged_attention", _planted(kernel.prepare_paged_attention, nudge))
    got = run_case(case)
    problems = golden_problems(case, got, stored)
    assert any(p.startswith("max |out - float64 reference|") for p in problems), problems
    assert any(p.startswith("sample 0:") for p in problems), problems
    changed = dict(stored, num_splits=stored["num_splits"] + 1)
    assert golden_problems(case, changed, stored) == [f"num_splits: {changed['num_splits']} vs stored "
                                                      f"{stored['num_splits']}"]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel package imports triton
    if argv[1:] == ["--write"]:
        import numpy
        import triton

        cases = {}
        for case in golden_cases():
            started = time.perf_counter()
            cases[case.name] = row = run_case(case)
            if row["reference_error"] > REFERENCE_ATOL[case.dtype] or not row["finite"]:
                print(f"{case.name}: off the float64 reference ({row['reference_error']:.3g}); not written")
                return 1
            print(f"{case.name} {time.perf_counter() - started:.2f}s error {row['reference_error']:.2g}",
                  file=sys.stderr)
        lines = ",\n".join(f"  {json.dumps(name)}: {json.dumps(row)}" for name, row in cases.items())
        GOLDEN.write_text(
            '{"note": "Per case: the configuration label, split count, largest difference from the float64 reference '
            f'and {SAMPLES} output values at evenly spread positions, under Triton\'s interpreter '
            '(tests/test_kernel_golden.py; compared with tolerances)",\n'
            f' "recorded_with": {json.dumps({"triton": triton.__version__, "numpy": numpy.__version__})},\n'
            f' "cases": {{\n{lines}\n }}}}\n')
        print(f"wrote {len(cases)} cases to {GOLDEN}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
