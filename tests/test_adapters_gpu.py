"""GPU checks of the backend adapters: each passes the gate (ok, or unsupported with a reason) on the
capability features, bf16 and fp16; the cuDNN T-row probe is never silently wrong. Skips cleanly
without CUDA (tests/conftest.py) or without a backend's library (its available() reason)."""

from __future__ import annotations

import pytest
import torch

from adapters.base import discover
from adapters.batch import BatchSpec, make_batch
from adapters.reference import reference_attention
from harness.measure.capability import FEATURES, T_ROW, case_spec
from harness.measure.gate import run_gate

pytestmark = pytest.mark.gpu

ADAPTERS = ("cudnn", "flash-attn2", "flex-paged", "sdpa-gather")


BASE_PAGE = {"flash-attn2": 256}
"""Adapters probed at another base page size (flash-attn 2 takes multiples of 256 only), so that their
other features are checked too."""


def _grid() -> list[tuple[str, str, BatchSpec]]:
    """Per adapter, the capability features (one change from the base case each) in bf16 and in fp16,
    deduplicated."""
    grid = []
    for name in ADAPTERS:
        cases: dict[BatchSpec, str] = {}
        for feature, value, overrides in FEATURES:
            if feature in ("q_layout", "pool"):  # the probe-only variant has its own test; the 16 GiB pool is the probe's
                continue
            for dtype in ("bf16", "fp16"):
                spec = case_spec(dict(overrides, dtype=overrides.get("dtype", dtype)), page_size=BASE_PAGE.get(name))
                cases.setdefault(spec, f"{feature}={value}-{spec.dtype}-p{spec.page_size}")
        grid.extend((name, label, spec) for spec, label in cases.items())
    return grid


GRID = _grid()
_INPUTS: dict[BatchSpec, tuple] = {}
VERDICTS: dict[str, list[str]] = {}
"""Each adapter's verdicts over the grid, for the check that it passed somewhere."""


def _inputs(spec: BatchSpec):
    if spec not in _INPUTS:
        if len(_INPUTS) > 8:
            _INPUTS.clear()
        batch = make_batch(spec, "cuda")
        _INPUTS[spec] = (batch, reference_attention(batch, with_lse=True))
    return _INPUTS[spec]


@pytest.fixture(scope="module")
def adapters():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return discover()


def _adapter(adapters, name):
    adapter = adapters[name]
    ok, why = adapter.available(torch.device("cuda"))
    if not ok:
        pytest.skip(f"{name} not available: {why}")
    return adapter


@pytest.mark.parametrize("name,label,spec", GRID, ids=[f"{name}-{label}" for name, label, _ in GRID])
def test_gate_ok_or_declined(adapters, name, label, spec):
    adapter = _adapter(adapters, name)
    batch, reference = _inputs(spec)
    result, _ = run_gate(adapter, batch, reference)
    VERDICTS.setdefault(name, []).append(result.verdict)
    if name == "flash-attn2" and result.verdict == "skipped":
        # the kit's reduced build compiled the window / soft-cap out: skipped with the build, never unsupported
        assert result.reason.startswith("this flash-attn build compiled out"), result.reason
        return
    assert result.verdict in ("ok", "unsupported"), f"{name} {spec.describe()}: {result.verdict}: {result.reason}"
    if result.verdict == "unsupported":
        assert result.reason, f"{name} declined {spec.describe()} without a reason"


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_passed_somewhere_in_the_grid(adapters, name):
    """A backend that declines every layout would pass the grid above: it must pass some of it."""
    _adapter(adapters, name)
    verdicts = VERDICTS.get(name)
    if not verdicts:
        pytest.skip(f"the grid of {name} did not run in this session (select it too)")
    assert "ok" in verdicts, f"{name} passed none of its {len(verdicts)} grid cells: {sorted(set(verdicts))}"


def test_flash_attn_declines_small_pages_in_its_words(adapters):
    adapter = _adapter(adapters, "flash-attn2")
    batch, reference = _inputs(case_spec({"page_size": 16}))
    result, _ = run_gate(adapter, batch, reference)
    assert result.verdict == "unsupported"
    assert "Paged KV cache block size must be divisible by 256" in result.reason


def test_flash_attn_decode_offers_both_entry_points(adapters):
    """Both entry points are gated; the harness times them and keeps the faster (harness.measure.cell)."""
    from harness.measure.cell import TimerOptions, choose_entry_point

    adapter = _adapter(adapters, "flash-attn2")
    batch, reference = _inputs(case_spec({"grammar": "4q1c200"}, page_size=256))
    result, prepared = run_gate(adapter, batch, reference)
    assert result.verdict == "ok", result.reason
    assert set(result.notes["candidates"]) == {"flash_attn_varlen_func", "flash_attn_with_kvcache"}
    choose_entry_point(prepared, batch.device, TimerOptions())
    assert prepared.notes["entry_point"] in result.notes["candidates_ok"]
    assert set(prepared.notes["entry_point_us"]) == set(result.notes["candidates_ok"])


def test_cudnn_reuses_graphs_across_batches_of_one_bucket(adapters):
    adapter = _adapter(adapters, "cudnn")
    first = case_spec({"grammar": "2q1c100_2q37c60"})
    second = case_spec({"grammar": "2q1c105_2q40c60"})  # same B, pool, S_q bucket (64) and table bucket (8)
    assert first.num_pages == second.num_pages
    for spec, cached in ((first, None), (second, True)):
        batch, reference = _inputs(spec)
        result, _ = run_gate(adapter, batch, reference)
        assert result.verdict == "ok", result.reason
        if cached is not None:
            assert result.notes["graph_cached"] is cached


def test_cudnn_trow_q_is_never_silently_wrong(adapters):
    adapter = _adapter(adapters, "cudnn-trows")
    assert adapter.q_layout == T_ROW and not adapter.in_sweep
    batch, reference = _inputs(case_spec({}))
    result, _ = run_gate(adapter, batch, reference)
    assert result.verdict in ("unsupported", "ok"), f"{result.verdict}: {result.reason}"
    if result.verdict == "unsupported":  # cuDNN 9.19: "pageTableDesc.getDimA()[0] != B ... CUDNN_STATUS_BAD_PARAM"
        assert "pageTable" in result.reason or "CUDNN_STATUS" in result.reason, result.reason


PEER_CASES = [("4q1c200", 16), ("4q1c200", 256), ("2q1c100_2q37c60", 16), ("2q1c100_2q37c60", 256)]
"""A decode and a mixed batch at pages 16 and 256, bf16, the base heads: every peer backend either
passes, declines with its reason, or says why it cannot run here."""


def _peers() -> list[str]:
    from adapters.base import adapter_classes

    return [name for name, cls in adapter_classes().items()
            if cls.__module__.startswith("adapters.backends.") and cls.in_sweep and name not in ADAPTERS
            and name != "triton"]


OWN_PROCESS = {"jax-pallas-decode": "JAX's GPU runtime aborted while starting in a pytest process that had already "
                                     "loaded the other GPU libraries (the sweep runs every backend in a worker process)"}
"""Peers checked in a process of their own, and why."""


def peer_verdicts(name: str, device: str = "cuda") -> list[tuple[str, str]]:
    """(verdict, reason) of one backend on each of `PEER_CASES`, gated in this process; ("skipped", why)
    once when it is not available here."""
    adapter = discover()[name]
    available, why = adapter.available(torch.device(device))
    if not available:
        return [("skipped", why)]
    verdicts = []
    for grammar, page in PEER_CASES:
        batch = make_batch(case_spec({"grammar": grammar}, page_size=page), device)
        result, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
        verdicts.append((result.verdict, result.reason or ""))
    return verdicts


def peer_verdicts_in_own_process(name: str, device: str = "cuda") -> list[tuple[str, str]]:
    """`peer_verdicts` in a fresh Python process: a backend whose runtime aborts there fails this check
    with the process's exit status and output instead of taking the test session down."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, sys; from tests.test_adapters_gpu import peer_verdicts; "
            f"print('VERDICTS ' + json.dumps(peer_verdicts({name!r}, {device!r})))")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("VERDICTS ")]
    assert done.returncode == 0 and lines, (f"{name}: its process ended with status {done.returncode}:\n"
                                            f"{(done.stdout + done.stderr)[-3000:]}")
    return [tuple(pair) for pair in json.loads(lines[-1][len("VERDICTS "):])]


@pytest.mark.parametrize("name", _peers())
def test_peer_backends_pass_or_say_why(adapters, name):
    if name in OWN_PROCESS:
        verdicts = peer_verdicts_in_own_process(name)
    else:
        _adapter(adapters, name)  # skips with the reason when the backend is not available here
        verdicts = peer_verdicts(name)
    if verdicts[0][0] == "skipped" and len(verdicts) == 1:
        pytest.skip(f"{name} not available: {verdicts[0][1]}")
    for (grammar, page), (verdict, reason) in zip(PEER_CASES, verdicts):
        assert verdict in ("ok", "unsupported", "skipped"), f"{name} {grammar} p{page}: {verdict}: {reason}"
        assert verdict == "ok" or reason, f"{name} {grammar} p{page}: {verdict} without a reason"
    assert "ok" in [verdict for verdict, _ in verdicts], f"{name} passed none of {PEER_CASES}: {verdicts}"


BINDINGS = ("cudnn", "cudnn-stats-ragged", "cudnn-offsets64", "cudnn-stats-ragged-offsets64")


@pytest.mark.parametrize("name", BINDINGS)
@pytest.mark.parametrize("grammar,heads", [("2q1c100_2q37c60", (8, 2)), ("4q1c200", (8, 8)), ("4q3c200", (8, 2))],
                         ids=["mixed-gqa", "decode-mha", "specdec-gqa"])
def test_every_cudnn_binding_is_right_where_cudnn_has_no_known_bug(adapters, name, grammar, heads):
    """Each way of binding cuDNN's paged SDPA, gated output and LSE, on batches no cuDNN release is known to
    get wrong (mixed, MHA decode, s_q > 1); its graph declares the offsets and Stats its form says."""
    adapter = _adapter(adapters, name)
    spec = case_spec({"grammar": grammar, "num_q_heads": heads[0], "num_kv_heads": heads[1]})
    batch, reference = _inputs(spec)
    result, _ = run_gate(adapter, batch, reference)
    assert result.verdict == "ok", f"{name} {spec.describe()}: {result.verdict}: {result.reason}"
    assert result.lse_max_abs is not None, result.lse_note
    assert result.notes["cudnn_stats"] == adapter.form.stats
    assert {key.ragged_dtype for key in adapter._graphs} == {adapter.form.offsets}


def test_packed_stats_on_gqa_decode_is_right_or_caught(adapters):
    """The packed [T, Hq] Stats on single-token GQA decode: some cuDNN releases leave most heads of a KV group
    unwritten (docs/backends.md); the gate must then say `wrong` (LSE off) while the output itself is right."""
    adapter = _adapter(adapters, "cudnn-stats-ragged")
    batch, reference = _inputs(case_spec({"grammar": "4q1c200", "num_q_heads": 8, "num_kv_heads": 2}))
    result, _ = run_gate(adapter, batch, reference)
    assert result.verdict in ("ok", "wrong"), f"{result.verdict}: {result.reason}"
    if result.verdict == "wrong":
        assert "LSE" in result.reason, result.reason
        assert result.rel_l2 is not None and result.rel_l2 < 1e-2, result.reason
