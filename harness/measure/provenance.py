"""Provenance: everything a number needs to be compared with another one (GPU, driver, CUDA, torch,
triton, cuDNN backend and frontend, flash-attn and its build note, project commit, timer, date)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

COMMIT_ENV = "PAGED_BENCH_COMMIT"
"""Set where the checkout has no .git (e.g. a copy sent to a GPU machine) so results name the real commit."""
ENV_LABEL_ENV = "PAGED_BENCH_ENV_LABEL"
"""A free-form name for the environment (e.g. 'cudnn-frontend-1.22.1'), shown in version comparisons."""

CORE_PACKAGES = ("torch", "numpy", "pandas")
"""Distributions every run depends on; each backend adds its own (`Adapter.packages`)."""


def project_commit() -> str:
    """The checkout's commit; with uncommitted changes to tracked files ``-dirty-`` and a hash of their diff, so
    that two runs of different uncommitted code never name the same thing (a GPU machine's copy of the tree may be a
    checkout of an older commit with later work on top). ``$PAGED_BENCH_COMMIT`` only where the code is not a git
    checkout, so a stale variable never names the wrong commit."""
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if not dirty:
            return commit
        diff = subprocess.run(["git", "diff", "--no-ext-diff", "--binary", "HEAD"], cwd=root, capture_output=True,
                              timeout=30).stdout
        return f"{commit}-dirty-{hashlib.sha256(diff).hexdigest()[:8]}"
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(COMMIT_ENV) or "unknown"


def _package_versions(names) -> dict[str, str]:
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _gpu() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu": "none", "gpu_count": 0}
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "gpu": props.name, "gpu_count": torch.cuda.device_count(), "sm_count": props.multi_processor_count,
        "compute_capability": f"{props.major}.{props.minor}", "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1), "cuda": torch.version.cuda,
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        info["driver"] = "unknown"
    return info


def collect(timer: str = "", l2_policy: str = "", packages: tuple[str, ...] | list[str] = (),
            backend_versions: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """A flat dict describing this machine and software: the GPU, the installed versions of the core
    packages and of those the backends declare, what each available backend reports about itself
    (``backend_versions``, e.g. the cuDNN release really loaded), the commit, timer and L2 policy.
    ``env_id`` hashes everything but the host and the date."""
    record: dict[str, Any] = {
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cudnn_torch": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **_gpu(), "packages": _package_versions([*CORE_PACKAGES, *packages]),
        "backend_versions": backend_versions or {}, "commit": project_commit(),
        "env_label": os.environ.get(ENV_LABEL_ENV, ""), "timer": timer, "l2_policy": l2_policy,
    }
    stable = {key: value for key, value in record.items() if key != "host"}
    record["env_id"] = hashlib.sha1(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]
    record["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return record
