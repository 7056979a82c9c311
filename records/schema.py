"""The results' schema, torch-free: the columns of a result row, the verdicts a cell can end with, a
glossary of every figure, and the file names of a results folder. The harness writes rows with these
columns; reports, asv glue and comparisons read them; none of them defines its own copy."""

from __future__ import annotations

RESULTS_FILE = "results.jsonl"
"""One JSON row per finished cell (`COLUMNS`)."""
RUNS_FILE = "runs.jsonl"
"""One JSON object per run: run_id, env_id, provenance, ceilings, sweep, argv, started_at, availability."""
CAPABILITY_FILE = "capability.csv"
"""The capability probe's answers (`CAPABILITY_COLUMNS`), when the run probed."""
REPORT_FILE = "report.html"
"""The HTML report `run --report` and `report` write into a results folder by default."""
PROBE_DIR = "probe"
"""The capability probe's cells live in ``<out>/probe/`` (results.jsonl, runs.jsonl), apart from the sweep's rows."""
WARMUP_DIR = "warmup"
"""The compile warm-up's gate-only cells live in ``<out>/warmup/`` (results.jsonl, runs.jsonl): no results of
the sweep, but the only rows whose ``setup_s`` is a compile on a cold cache (`harness.measure.session`)."""

VERDICTS: dict[str, str] = {
    "ok": "ran and matched the fp32 reference within the dtype's tolerance; timed",
    "unsupported": "the backend declines this layout (its reason is kept); a capability, not a failure",
    "error": "the backend raised or its process died (message and exit status kept)",
    "wrong": "it ran, but the output differs from the reference or leaves elements unwritten/non-finite",
    "oom": "the cell does not fit in device memory",
    "timeout": "the cell ran past its time limit and its process was stopped",
    "skipped": "the backend is not available on this machine (reason kept); nothing was run",
}

RETRYABLE_VERDICTS = frozenset({"timeout", "error"})
"""Verdicts that a resumed run with ``--retry-failed`` measures again (every other verdict is final)."""

COLUMNS: list[str] = [
    # identity
    "cell_id", "run_id", "backend", "binding", "case", "variant", "workload", "grammar", "batch_size", "q_len", "context", "page_size",
    "num_q_heads", "num_kv_heads", "head_dim", "dtype", "causal", "seed", "total_q", "total_kv", "num_pages",
    # gate
    "verdict", "reason", "rel_l2", "max_abs", "lse_max_abs", "lse_note",
    # timing (microseconds) and how it was taken
    "median_us", "q1_us", "q3_us", "min_us", "max_us", "iqr_pct", "reps", "method", "l2_policy", "host_us",
    # derived figures
    "flops", "bytes", "tflops", "tbps", "pct_matmul_ceiling", "pct_copy_ceiling",
    # what the backend reported, and where
    "setup_s", "inputs_s", "cell_s", "entry_point", "config", "backend_versions", "env_id", "device", "gpu_index", "gpu_uuid", "finished_at",
    # how to measure this one cell again
    "reproducer",
]

GLOSSARY: dict[str, str] = {
    "median_us": "median device time of one launch, microseconds (CUDA events, L2 flushed between launches)",
    "q1_us": "first quartile of the launch times", "q3_us": "third quartile of the launch times",
    "iqr_pct": "inter-quartile range as a percentage of the median: the cell's run-to-run noise",
    "host_us": ("host time to enqueue one timed repetition (L2 flush, two events, the backend's launch), "
                "microseconds; where it nears the GPU time the timer spins the GPU ahead so it stays out of median_us"),
    "tflops": "matrix FLOPs (4*Hq*D*pairs, bottom-right causal pairs) per second, in 10^12",
    "tbps": "bytes at least moved (Q and O once, each sequence's K and V once) per second, in 10^12",
    "pct_matmul_ceiling": "TFLOP/s as a share of this machine's measured bf16 matmul rate",
    "pct_copy_ceiling": "TB/s as a share of this machine's measured device-copy bandwidth",
    "setup_s": ("time spent outside the timing: compilation, autotuning, graph building (after a compile warm-up, "
                "loading what it compiled from the disk cache; the warm-up's own rows, in warmup/, hold the cold "
                "compiles)"),
    "inputs_s": ("seconds building the case's batch and its fp32 reference, on the cell that built them (the "
                 "first cell of a case in its worker); empty on the case's other cells"),
    "cell_s": ("wall time the cell took in its worker, seconds: the case's inputs and reference (first cell of a "
               "case), the gate, compiling and timing; where a sweep's time goes"),
    "q_len": "mean new (query) tokens per sequence", "context": "mean cached tokens before them per sequence",
    "rel_l2": "||out - ref|| / ||ref|| against the fp32 reference",
    "lse_max_abs": ("largest absolute error of the backend's softmax log-sum-exp (natural log, per query row and "
                    "head) against the fp32 reference; empty when the backend returned none (lse_note says why)"),
    "lse_note": "why the log-sum-exp was not checked: the backend cannot return it for this cell",
    "gpu_index": "index of the GPU the cell ran on, among the GPUs of its host", "gpu_uuid": "that GPU's UUID",
    "reproducer": "the paged-bench command that measures this one cell again",
    "binding": ("how the row calls its library, for backends users call several ways (each way is its own backend "
                "row, e.g. cuDNN's Stats layout and ragged-offset width); empty for a backend with one way"),
    "variant": ("what sets the case apart from the standard layer (32 query heads, 8 KV heads, D 128, bf16, causal, "
                "default pool), e.g. h16x8d256 or fp16; empty for a standard case"),
    "num_pages": "pages in the K/V pool (the null page included): the batch's pages plus 25% unless the case sets a pool",
}

CAPABILITY_COLUMNS: list[str] = ["backend", "feature", "value", "verdict", "reason", "rel_l2", "max_abs",
                                 "lse_max_abs", "lse_note", "case", "backend_versions", "device"]
"""Columns of capability.csv: one row per (backend, feature, value) the probe answered."""
