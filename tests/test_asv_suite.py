"""The asv suite mirrors the one sweep definition, leaves no backend out, and stays light to import."""

import os
import subprocess
import sys

import pytest

from adapters.base import discover
from harness.cases.sweep import SWEEP_AXES, SWEEPS
from harness.frontends import asv_suite


def test_every_sweep_backend_is_an_asv_parameter(monkeypatch):
    monkeypatch.delenv(asv_suite.BACKENDS_ENV, raising=False)
    in_sweep = [name for name, adapter in discover().items() if adapter.in_sweep]
    assert in_sweep and asv_suite.backend_names() == in_sweep


def test_the_backends_variable_narrows_every_class_and_names_unknown_ones(monkeypatch):
    monkeypatch.setenv(asv_suite.BACKENDS_ENV, "cudnn, triton,cudnn-stats-ragged")
    assert asv_suite.backend_names() == ["cudnn", "triton", "cudnn-stats-ragged"]  # a probe-only binding too
    for workload in (*asv_suite.AXES_WORKLOADS, asv_suite.CASES):
        assert asv_suite.asv_params(workload)[0][0] == ["cudnn", "triton", "cudnn-stats-ragged"]
    monkeypatch.setenv(asv_suite.BACKENDS_ENV, "cudnn,nope")
    with pytest.raises(ValueError, match="unknown backend.*nope.*choose from"):
        asv_suite.backend_names()


@pytest.mark.parametrize("sweep", list(SWEEP_AXES))
def test_asv_parameters_are_exactly_the_sweeps_cases(monkeypatch, sweep):
    import itertools

    monkeypatch.setenv(asv_suite.SWEEP_ENV, sweep)
    names = []
    for workload in (*asv_suite.AXES_WORKLOADS, asv_suite.CASES):
        params, param_names = asv_suite.asv_params(workload)
        assert param_names[0] == "backend"
        for values in itertools.product(*params[1:]):
            case = asv_suite.workload_case(workload, *values)
            if values == (asv_suite.NO_CASE,):
                assert case is None
                continue
            names.append(case.name)
    assert sorted(names) == sorted(case.name for case in SWEEPS[sweep])  # each case in exactly one class


def test_existing_asv_parameters_keep_their_names_and_values(monkeypatch):
    """asv keys history on (class, parameter names, values): the default sweep's classes keep theirs
    (prefill lost context 1024, mixed gained the traffic mix; the new cells are class Cases)."""
    monkeypatch.setenv(asv_suite.SWEEP_ENV, "default")
    params, names = asv_suite.asv_params("decode")
    assert names == ["backend", "batch_size", "q_len", "context", "page_size"]
    assert params[1:] == [[1, 16, 64], [1], [1024, 4096, 16384], [16, 256]]
    params, names = asv_suite.asv_params("prefill")
    assert names == ["backend", "batch_size", "q_len", "context", "page_size"]
    assert params[1:] == [[1, 4, 8], [512, 2048], [0, 2048], [16, 256]]
    params, names = asv_suite.asv_params("mixed")
    assert names == ["backend", "mix", "page_size"]
    assert params[1][:2] == ["mixed-8d3000-8p2000", "mixed-32d-2p4k"]
    params, names = asv_suite.asv_params(asv_suite.CASES)
    assert names == ["backend", "case"] and "decode-b64-q1-c4096-p16-h16x8d256" in params[1]
    # the model-feature cells are class Cases too, appended after the cells that were there before them
    featured = ["decode-b64-q1-c16384-p16-w4096", "prefill-b4-q2048-c2048-p16-h16x8d256-w1024",
                "prefill-b4-q2048-c2048-p16-h16x8d256-cap50", "mixed-32d-2p4k-p16-h64x8d64",
                "mixed-32d-2p4k-p16-h64x8d64-w128-sinks", "decode-b64-q1-c16384-p16-kvfp8",
                "decode-b64-q1-c16384-p16-kvfp8h"]
    assert params[1][-len(featured):] == featured
    assert asv_suite.workload_case(asv_suite.CASES, featured[1]).sliding_window == 1024


SWEEP_FILE = """
name = "mine"
[defaults]
model = "llama-3-70b-tp8"
[[case]]
name = "serve"
grammar = "8q1c~lognormal(median=1k,sigma=1)_1q64c0"
[axes.decode]
batch_sizes = [4]
contexts = [1024]
page_sizes = [16]
dtypes = ["bf16", "fp16"]
[axes.spec-decode]
batch_sizes = [4]
q_lens = [4]
contexts = [2048]
page_sizes = [16]
"""


def test_asv_reads_a_sweep_file_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(SWEEP_FILE)
    monkeypatch.delenv(asv_suite.SWEEP_ENV, raising=False)
    monkeypatch.setenv(asv_suite.SWEEP_FILE_ENV, str(path))
    assert asv_suite.sweep_name() == "mine"
    params, names = asv_suite.asv_params("decode")
    assert names == ["backend", "batch_size", "q_len", "context", "page_size", "heads", "dtype"]
    assert params[1:] == [[4], [1], [1024], [16], ["8/1/128"], ["bf16", "fp16"]]
    case = asv_suite.workload_case("decode", 4, 1, 1024, 16, "8/1/128", "fp16")
    assert case.name == "decode-b4-q1-c1024-p16-h8x1d128-fp16" and case.num_kv_heads == 1
    params, names = asv_suite.asv_params("prefill")  # the file has no prefill axes
    assert names == ["backend", "case"] and params[1] == [asv_suite.NO_CASE]
    params, names = asv_suite.asv_params(asv_suite.CASES)
    assert params[1] == ["specdec-b4-q4-c2048-p16-h8x1d128", "serve-p16-h8x1d128"]
    bench = asv_suite.WorkloadBenchmark()
    bench.workload = "prefill"
    with pytest.raises(NotImplementedError, match="no prefill case"):
        bench.setup({}, "triton", asv_suite.NO_CASE)
    monkeypatch.setenv(asv_suite.SWEEP_ENV, "short")
    with pytest.raises(ValueError, match="both set"):
        asv_suite.current_sweep()


def test_a_cell_that_did_not_pass_the_gate_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setenv(asv_suite.SWEEP_ENV, "default")
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
            "from harness.frontends import asv_suite; asv_suite.asv_params(asv_suite.CASES); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_a_sweep_file_is_read_without_torch(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(SWEEP_FILE)
    code = ("import sys; from harness.frontends import asv_suite; import benchmarks.bench_decode; "
            "asv_suite.asv_params(asv_suite.CASES); assert 'torch' not in sys.modules, 'torch imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, asv_suite.SWEEP_FILE_ENV: str(path)}
    env.pop(asv_suite.SWEEP_ENV, None)
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env=env)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_without_a_named_sweep_asv_runs_the_command_lines_default_for_this_machine(monkeypatch, device):
    """No GPU: the CPU sweep, as `paged-bench run` would choose (not the GPU sweep under the interpreter)."""
    from harness.cases.selection import CPU_SWEEP, select_cases

    monkeypatch.delenv(asv_suite.SWEEP_ENV, raising=False)
    monkeypatch.delenv(asv_suite.SWEEP_FILE_ENV, raising=False)
    monkeypatch.setattr(asv_suite, "device_type", lambda: device)
    import argparse

    assert asv_suite.sweep_name() == select_cases(argparse.Namespace(), device).label
    assert asv_suite.sweep_name() == (CPU_SWEEP if device == "cpu" else "default")
    monkeypatch.setenv(asv_suite.SWEEP_ENV, "short")  # a named sweep wins on any machine
    assert asv_suite.sweep_name() == "short"


def test_the_device_is_torchs_answer_asked_once_without_importing_torch(tmp_path):
    """asv's per-benchmark processes learn the device from a cache written by a child process."""
    code = ("import sys, torch; from harness.frontends import asv_suite; "
            "expected = 'cuda' if torch.cuda.is_available() else 'cpu'; del sys.modules['torch']; "
            "assert asv_suite.device_type() == expected, asv_suite.device_type()")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PAGED_BENCH_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env=env)
    assert [path.read_text() for path in tmp_path.glob("asv-device-*.txt")] in (["cpu"], ["cuda"])
    code = ("import sys; from harness.frontends import asv_suite; asv_suite.device_type(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env=env)
