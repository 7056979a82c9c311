"""Shared test setup.

- The `gpu` marker skips cleanly on machines without CUDA.
- On such machines the project's Triton kernels run under Triton's interpreter for the whole session:
  triton decides when the kernel package is first imported, so the choice is made once, here, before
  any test module is imported (never as a side effect of importing one test module).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
