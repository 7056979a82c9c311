"""What the Triton kernel's CPU tests share: whether triton and numpy are installed, whether the kernels
run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where no CUDA device is
visible), and the marks that skip cleanly otherwise."""

import importlib.util

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None
HAVE_NUMPY = importlib.util.find_spec("numpy") is not None

requires_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

if HAVE_TRITON:
    from kernels.paged_attention import interpreted

    INTERPRETED = interpreted()
else:  # pragma: no cover - only without triton
    INTERPRETED = False

needs_interpreter = pytest.mark.skipif(
    not (INTERPRETED and HAVE_NUMPY),
    reason="CPU tests need Triton's interpreter (TRITON_INTERPRET=1 before the kernels are imported) and numpy")
