"""The asv suite mirrors the one sweep definition, leaves no backend out, and stays light to import."""

import os
import subprocess
import sys

import pytest

from adapters.base import discover
from harness import asv_suite
from harness.sweep import SWEEP_AXES, SWEEPS


def test_every_sweep_backend_is_an_asv_parameter():
    in_sweep = [name for name, adapter in discover().items() if adapter.in_sweep]
    assert in_sweep and asv_suite.backend_names() == in_sweep


@pytest.mark.parametrize("sweep", list(SWEEP_AXES))
def test_asv_parameters_are_exactly_the_sweeps_cases(monkeypatch, sweep):
    import itertools

    monkeypatch.setenv(asv_suite.SWEEP_ENV, sweep)
    names = set()
    for workload in SWEEP_AXES[sweep]:
        params, param_names = asv_suite.asv_params(workload)
        assert param_names[0] == "backend"
        for values in itertools.product(*params[1:]):
            names.add(asv_suite.workload_case(workload, *values).name)
    assert names == {case.name for case in SWEEPS[sweep]}


def test_a_cell_that_did_not_pass_the_gate_is_skipped_with_its_reason():
    bench = asv_suite.WorkloadBenchmark()
    bench.workload = "decode"
    cache = {"flash-attn2|decode-b64-q1-c4096-p16": {"verdict": "unsupported", "reason": "block size must be divisible by 256"}}
    with pytest.raises(NotImplementedError, match="unsupported: block size must be divisible by 256"):
        bench.setup(cache, "flash-attn2", 64, 1, 4096, 16)
    cache["triton|decode-b64-q1-c4096-p16"] = {"verdict": "ok", "reason": "", "median_us": 300.0, "tflops": 1.0,
                                               "tbps": 3.0, "iqr_pct": 1.0}
    bench.setup(cache, "triton", 64, 1, 4096, 16)
    assert bench.track_time_us(cache) == 300.0 and bench.track_tbps(cache) == 3.0


def test_benchmark_modules_import_without_torch():
    """asv starts one process per parameter: those must not pay for importing torch."""
    asv_suite.backend_names()  # discovery writes the names once
    code = ("import sys; import benchmarks.bench_decode, benchmarks.bench_prefill, benchmarks.bench_mixed; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
