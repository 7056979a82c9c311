"""GPU checks of the foundation: the reference on the GPU equals the CPU reference, and stays within
memory for a 32k-context decode and a B=8 x 4k prefill; the ceilings are measured and plausible."""

import pytest
import torch

from adapters.batch import BatchSpec, make_batch
from adapters.reference import reference_attention

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("grammar,page_size", [("3q1c700_2q37c0-90", 16), ("2q64c64", 1), ("1q300c5", 256)])
def test_gpu_reference_equals_cpu_reference(grammar, page_size):
    spec = BatchSpec.from_grammar(grammar, page_size=page_size, num_q_heads=8, num_kv_heads=2, head_dim=64,
                                  dtype="bf16", seed=9)
    batch = make_batch(spec, "cpu")
    cpu = reference_attention(batch)
    gpu = reference_attention(batch.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grammar", ["1q1c32k", "8q4kc0"])
def test_reference_fits_long_contexts_in_bounded_memory(grammar):
    spec = BatchSpec.from_grammar(grammar, page_size=16, dtype="bf16")
    batch = make_batch(spec, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = reference_attention(batch)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert torch.isfinite(out).all()
    assert extra < 3 * 2**30, f"reference used {extra / 2**30:.1f} GiB beyond the batch"


def test_ceilings_are_measured_and_plausible(tmp_path, monkeypatch):
    from harness.measure.ceilings import CACHE_DIR_ENV, machine_ceilings

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    ceilings = machine_ceilings("cuda")
    print("ceilings:", ceilings)
    assert 100 < ceilings["matmul_bf16_tflops"] < 2000
    assert 0.5 < ceilings["copy_tbps"] < 10
    assert machine_ceilings("cuda") == ceilings  # stored once per machine
