"""Synthetic result sets for the report and comparison tests: real rows (harness.measure.results.make_row over
real `Case`s and `Timing.from_samples`) with latencies from a simple roofline model per backend, a
skipped backend, declined and failing cells, a capability table and a run record with provenance."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cases.sweep import Case, Cell, uniform_case
from harness.measure.gate import GateResult
from harness.measure.metrics import spec_bytes, spec_flops
from harness.measure.results import make_row
from harness.measure.timer import Timing

CEILINGS = {"matmul_bf16_tflops": 790.0, "copy_tbps": 4.3, "gpu": "NVIDIA H200"}
FA2_PAGE_REASON = "Paged KV cache block size must be divisible by 256 (page size 16)"
MIXED = {"mixed-8d3000-8p2000": "8q1c3000_8q9-2000c0-7000", "mixed-32d-2p4k": "32q1c512-8k_2q4kc0-4k"}
SKIP_REASON = "flash_attn_interface is not importable: No module named 'flash_attn_interface'"


@dataclass(frozen=True)
class Profile:
    """A made-up backend: shares of the matmul and copy ceilings it reaches, and a fixed launch cost."""

    matmul_share: float
    copy_share: float
    overhead_us: float
    entry_point: str


PROFILES = {
    "cudnn": Profile(0.70, 0.85, 12.0, "cudnn.pygraph sdpa (paged, ragged Q)"),
    "flash-attn2": Profile(0.33, 0.68, 8.0, "flash_attn_varlen_func"),
    "triton": Profile(0.30, 0.62, 6.0, "paged_attention_kernel"),
    "flex-paged": Profile(0.24, 0.45, 20.0, "flex_attention (PagedAttention block mask)"),
    "sdpa-gather": Profile(0.18, 0.22, 30.0, "gather + scaled_dot_product_attention"),
}
SKIPPED_BACKEND = "fa3"
PROBE_ONLY_BACKEND = "cudnn-trows"


def cases() -> list[Case]:
    """A small sweep: decode over batch x context, prefill over batch x q_len x context, two mixed; two page sizes."""
    out = []
    for page in (16, 256):
        out += [uniform_case("decode", b, 1, c, page) for b in (1, 64) for c in (1024, 4096, 16384)]
        out += [uniform_case("prefill", b, q, c, page) for b in (1, 8) for q in (512, 2048) for c in (0, 2048)]
        out += [Case(name=f"{name}-p{page}", grammar=grammar, page_size=page) for name, grammar in MIXED.items()]
    return out


def small_cases() -> list[Case]:
    """A handful of cases (every workload kind, both page sizes) for quick renders."""
    out = []
    for page in (16, 256):
        out += [uniform_case("decode", 64, 1, c, page) for c in (1024, 8192)]
        out += [uniform_case("prefill", b, q, 1024, page) for b in (1, 4) for q in (512, 2048)]
        out.append(Case(name=f"mixed-8d3000-8p2000-p{page}", grammar=MIXED["mixed-8d3000-8p2000"], page_size=page))
    return out


def model_us(backend: str, case: Case) -> float:
    profile, spec = PROFILES[backend], case.spec()
    compute = spec_flops(spec) / (profile.matmul_share * CEILINGS["matmul_bf16_tflops"] * 1e12)
    memory = spec_bytes(spec) / (profile.copy_share * CEILINGS["copy_tbps"] * 1e12)
    return max(compute, memory) * 1e6 + profile.overhead_us


def timing(median_us: float, iqr_pct: float, rng: random.Random, reps: int = 101) -> Timing:
    """Launch times around ``median_us`` whose IQR is about ``iqr_pct`` % of it."""
    sigma = median_us * iqr_pct / 100 / 1.349
    samples = sorted(rng.gauss(median_us, sigma) for _ in range(reps))
    shift = median_us - samples[reps // 2]
    return Timing.from_samples([s + shift for s in samples], "cuda events", "flush 256 MiB")


def synthetic_rows(*, seed: int = 0, jitter: float = 0.0, iqr_range: tuple[float, float] = (1.0, 3.0),
                   factors: dict[tuple[str, str], float] | None = None,
                   overrides: dict[tuple[str, str], tuple[str, str]] | None = None,
                   versions: dict[str, str] | None = None, env_id: str = "env-old", run_id: str = "run-1",
                   case_list: list[Case] | None = None) -> list[dict[str, Any]]:
    """Rows for every profile backend x case, plus the skipped backend.

    ``jitter``: each median moves by a uniform factor in [1 - jitter, 1 + jitter];
    ``factors[(backend, case)]``: a planted multiplier; ``overrides[(backend, case)] = (verdict, reason)``.
    flash_attn declines page size 16 (as flash-attn 2 does)."""
    rng = random.Random(seed)
    factors, overrides = factors or {}, overrides or {}
    rows = []
    for case in case_list or cases():
        for backend, profile in PROFILES.items():
            key = (backend, case.name)
            backend_versions = {"cudnn_frontend": "1.32.0", "cudnn_backend": "91900"} if backend == "cudnn" else {}
            backend_versions.update((versions or {}) if backend == "cudnn" else {})
            if key in overrides:
                verdict, reason = overrides[key]
            elif backend == "flash-attn2" and case.page_size % 256:
                verdict, reason = "unsupported", FA2_PAGE_REASON
            else:
                verdict, reason = "ok", ""
            notes = {"entry_point": profile.entry_point, "setup_s": round(rng.uniform(0.01, 2.0), 3)}
            if backend == "triton":
                notes["config"] = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "SPLIT_KV": case.spec().kind != "prefill"}
            gate = GateResult(verdict, reason, rel_l2=rng.uniform(1e-3, 3e-3) if verdict == "ok" else None,
                              max_abs=rng.uniform(5e-3, 2e-2) if verdict == "ok" else None, notes=notes)
            measured = None
            if verdict == "ok":
                median = model_us(backend, case) * factors.get(key, 1.0) * (1 + rng.uniform(-jitter, jitter))
                measured = timing(median, rng.uniform(*iqr_range), rng)
            rows.append(make_row(cell=Cell(backend, case), gate=gate, timing=measured, ceilings=CEILINGS,
                                 backend_versions=backend_versions, env_id=env_id, run_id=run_id, device="cuda:0"))
            rows[-1]["cell_s"] = round(notes["setup_s"] + 0.25, 3)
        rows.append(make_row(cell=Cell(SKIPPED_BACKEND, case), gate=GateResult("skipped", SKIP_REASON),
                             env_id=env_id, run_id=run_id, device="cuda:0"))
    return rows


def synthetic_runs(*, env_id: str = "env-old", run_id: str = "run-1", frontend: str = "1.32.0",
                   label: str = "") -> list[dict[str, Any]]:
    provenance = {
        "host": "gpu-node-07", "python": "3.11.9", "torch": "2.11.0+cu130", "gpu": "NVIDIA H200", "gpu_count": 1,
        "sm_count": 132, "compute_capability": "9.0", "gpu_memory_gib": 139.8, "l2_mib": 60.0, "cuda": "13.0",
        "driver": "580.95.05", "cudnn_torch": 91900, "cudnn_backend": 91900, "cudnn_frontend": frontend,
        "packages": {"torch": "2.11.0+cu130", "triton": "3.6.0", "nvidia-cudnn-frontend": frontend,
                     "nvidia-cudnn-cu13": "9.19.0.56", "flash-attn": "2.8.3", "pandas": "2.3.3"},
        "commit": "734f60312abc", "flash_attn_build": "built from source, sm_90", "env_label": label,
        "timer": "cuda events", "l2_policy": "flush 256 MiB", "env_id": env_id, "date": "2026-11-24T08:00:00+00:00",
    }
    return [{"run_id": run_id, "env_id": env_id, "provenance": provenance, "ceilings": CEILINGS, "sweep": "synthetic",
             "argv": ["paged-bench", "run", "--sweep", "synthetic"], "started_at": "2026-11-24T08:00:00+00:00"}]


def _answers(backend: str, feature: str, value: str) -> bool:
    """As in harness.measure.capability: every backend declares Q as THD and answers that q_layout row; the
    probe-only variant answers only its own (T-row) q_layout row."""
    if feature == "q_layout":
        return value == ("T-row" if backend == PROBE_ONLY_BACKEND else "THD")
    return backend != PROBE_ONLY_BACKEND


def synthetic_capability(*, lost: tuple[str, str, str] | None = None) -> list[dict[str, Any]]:
    """backend x feature/value verdicts like the capability probe's; ``lost`` = (backend, feature, value) made an error."""
    # the feature rows of harness.measure.capability (its CSV names the versions column "versions")
    features = {"page_size": ["1", "8", "16", "64", "128", "256"], "head_dim": ["64", "128", "256"],
                "gqa": ["1:1", "4:1", "8:1", "MQA"], "causal": ["causal", "non-causal"],
                "kind": ["decode", "prefill", "mixed"], "dtype": ["bf16", "fp16"], "q_layout": ["THD", "T-row"]}
    declined = {
        ("flash-attn2", "page_size", v): FA2_PAGE_REASON.replace("16", v) for v in ("1", "8", "16", "64", "128")}
    declined[("cudnn-trows", "q_layout", "T-row")] = ("cudnnGraph build: pageTableKDim[0] != b (CUDNN_STATUS_BAD_PARAM): "
                                              "Q declared with first dim T is refused on backend 9.19")
    declined[("triton", "head_dim", "256")] = "BLOCK_M x HEAD_DIM tile exceeds shared memory (232448 bytes) at head dim 256"
    records = []
    for backend in [*PROFILES, PROBE_ONLY_BACKEND, SKIPPED_BACKEND]:
        versions = json.dumps({"cudnn_frontend": "1.32.0"} if backend.startswith("cudnn") else {})
        for feature, values in features.items():
            for value in values:
                if not _answers(backend, feature, value):
                    continue
                if backend == SKIPPED_BACKEND:
                    verdict, reason = "skipped", SKIP_REASON
                elif (backend, feature, value) in declined:
                    verdict, reason = "unsupported", declined[(backend, feature, value)]
                else:
                    verdict, reason = "ok", ""
                if lost == (backend, feature, value):
                    verdict, reason = "error", "run: RuntimeError: CUDNN_STATUS_EXECUTION_FAILED"
                records.append({"backend": backend, "feature": feature, "value": value, "verdict": verdict,
                                "reason": reason, "rel_l2": 2e-3 if verdict == "ok" else "", "max_abs": "",
                                "case": "2q1c100_2q37c60", "versions": versions, "device": "NVIDIA H200"})
    return records


def write_results_folder(folder: Path, rows: list[dict[str, Any]], runs: list[dict[str, Any]],
                         capability: list[dict[str, Any]] | None = None, partial_tail: bool = True) -> Path:
    """Write the folder layout the report reads; ``partial_tail`` adds a cut-off last line, as a stopped run leaves."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "results.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        if partial_tail:
            handle.write(json.dumps(rows[0])[:57])
    with (folder / "runs.jsonl").open("w") as handle:
        for run in runs:
            handle.write(json.dumps(run) + "\n")
    if capability is not None:
        with (folder / "capability.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(capability[0]))
            writer.writeheader()
            writer.writerows(capability)
    return folder
