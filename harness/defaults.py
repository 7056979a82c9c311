"""The run's defaults that the command line shows in its help and the harness applies, torch-free
(the command line builds its parser without importing torch): one copy each."""

from __future__ import annotations

DEFAULT_TARGET_MS = 150.0
"""Time spent on the timed repetitions of one cell (the count adapts to the kernel's length)."""
DEFAULT_CELL_TIMEOUT_S = 300.0
"""Seconds a cell may run before its process is stopped (verdict ``timeout``)."""
DEFAULT_GATE_WORKERS = 8
"""Gate-only workers per GPU, for the capability probe and the compile warm-up: their cells are never timed,
so several may share a GPU; their time goes to compiling (Flex, FA4, Triton, cuDNN graphs), CPU work that
runs in parallel. At most one per two CPU cores (`gate_workers`)."""
CORES_PER_GATE_WORKER = 2
"""A compiling worker keeps about a core busy, and its compilers (Inductor, nvcc in CuTe DSL) briefly more."""


def gate_workers(gpus: int, cores: int | None) -> int:
    """The default number of gate-only workers per GPU: `DEFAULT_GATE_WORKERS`, fewer where the host has
    fewer than `CORES_PER_GATE_WORKER` cores for each of them on every GPU (at least one)."""
    if not cores:
        return 1
    return max(1, min(DEFAULT_GATE_WORKERS, cores // (CORES_PER_GATE_WORKER * max(1, gpus))))
