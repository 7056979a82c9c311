"""The run's defaults that the command line shows in its help and the harness applies, torch-free
(the command line builds its parser without importing torch): one copy each."""

from __future__ import annotations

DEFAULT_TARGET_MS = 150.0
"""Time spent on the timed repetitions of one cell (the count adapts to the kernel's length)."""
DEFAULT_CELL_TIMEOUT_S = 300.0
"""Seconds a cell may run before its process is stopped (verdict ``timeout``)."""
DEFAULT_PROBE_WORKERS = 4
"""Gate-only workers per GPU for the capability probe: its cells are never timed, so several may share a
GPU; their time goes to compiling (Flex, FA4, Triton, cuDNN graphs), which is CPU work that runs in parallel."""
