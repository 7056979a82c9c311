"""CPU checks of the backend adapters: the argument builders against hand-computed values (cuDNN
dims/strides/ragged offsets, flash-attn cumulative kv lengths), the
adapter that runs on the CPU (sdpa-gather) through the gate, and discovery without GPU
libraries (the Flex adapter's checks are in test_flex_paged.py). Needs no GPU, cudnn or flash_attn."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adapters.base import adapter_classes, discover
from adapters.batch import BatchSpec, make_batch
from adapters.backends.cudnn_sdpa import (CudnnSdpaAdapter, cache_view, cudnn_layout, next_power_of_two, padded_rows,
                                 page_table_view, ragged_offsets, refusal_reason, seq_len_tensors, trow_arguments)
from adapters.backends.flash_attn2 import FlashAttn2Adapter, cumulative_kv_lengths, decode_query_view, is_pure_decode
from adapters.reference import reference_attention
from adapters.backends.sdpa_gather import SdpaGatherAdapter, mask_kind
from harness.measure.gate import run_gate

ROOT = Path(__file__).resolve().parents[1]

# q_lens (1, 3), kv_lens (5, 20), page 4, Hq 4, Hkv 2, D 8:
# pages per sequence (2, 5) -> 7 owned, pool 1 + 7 + ceil(7 / 4) = 10 pages; T = 4.
SMALL = BatchSpec(q_lens=(1, 3), kv_lens=(5, 20), page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=8,
                  dtype="fp32")


# ---------------------------------------------------------------------------------------------- cuDNN

def test_next_power_of_two():
    assert [next_power_of_two(n) for n in (0, 1, 2, 3, 4, 5, 37, 64, 65)] == [1, 1, 2, 4, 4, 8, 64, 64, 128]


def test_cudnn_layout_dims_and_strides_by_hand():
    layout = cudnn_layout(SMALL)
    assert layout.s_q == 4                        # longest query 3, bucketed
    assert layout.max_pages == 8                  # 5 pages, bucketed
    assert layout.q_dims == (2, 4, 4, 8)          # [B, Hq, S_q, D]
    assert layout.q_strides == (128, 8, 32, 1)    # [S_q*Hq*D, D, Hq*D, 1]
    assert layout.o_dims == layout.q_dims and layout.o_strides == layout.q_strides
    assert layout.cache_dims == (10, 2, 4, 8)     # (num_pages, Hkv, page, D)
    assert layout.cache_strides == (64, 8, 16, 1)  # (page*Hkv*D, D, Hkv*D, 1)
    assert layout.page_table_dims == (2, 1, 8, 1)
    assert layout.page_table_strides == (8, 8, 1, 1)
    assert layout.seq_len_dims == (2, 1, 1, 1)
    assert layout.ragged_dims == (3, 1, 1, 1)
    assert layout.max_seq_len_kv == 32            # max_pages * page_size
    assert layout.pad_rows == 4
    assert layout.ragged_dtype == torch.int32
    # many short queries and one long: the buffers cover the declared B * S_q rows (4 * 64 = 256 > 43 + 64)
    wide = cudnn_layout(BatchSpec(q_lens=(1, 1, 1, 40), kv_lens=(9, 9, 9, 50), page_size=4, num_q_heads=4,
                                  num_kv_heads=2, head_dim=8))
    assert wide.s_q == 64 and wide.pad_rows == 256 - 43


def test_cudnn_ragged_offsets_are_elements():
    cu = torch.tensor([0, 1, 4], dtype=torch.int32)
    offsets = ragged_offsets(cu, heads=4, head_dim=8)
    assert offsets.shape == (3, 1, 1, 1) and offsets.dtype == torch.int32
    assert offsets.flatten().tolist() == [0, 32, 128]  # tokens * Hq * D
    assert ragged_offsets(cu, 4, 8, torch.int64).dtype == torch.int64


def test_cudnn_declared_q_addresses_the_packed_rows():
    """Element (b, h, s, d) of the declared Q (ragged offset + strides) is row cu[b] + s of the packed q."""
    batch = make_batch(SMALL)
    layout = cudnn_layout(SMALL)
    buffer = padded_rows(batch.q, layout.pad_rows).flatten()
    assert buffer.numel() == (SMALL.total_q + layout.pad_rows) * 4 * 8
    assert torch.all(buffer[SMALL.total_q * 32:] == 0)
    offsets = ragged_offsets(batch.cu_seqlens_q, 4, 8).flatten().tolist()
    _, stride_h, stride_s, stride_d = layout.q_strides
    for b, q_len in enumerate(SMALL.q_lens):
        for s in range(q_len):
            for h in range(4):
                start = offsets[b] + s * stride_s + h * stride_h
                row = int(batch.cu_seqlens_q[b]) + s
                assert torch.equal(buffer[start: start + 8 * stride_d: stride_d], batch.q[row, h])


def test_cudnn_page_table_and_seq_lens():
    block_table = torch.tensor([[3, 7, 0, 0, 0], [1, 2, 4, 5, 6]], dtype=torch.int32)
    table = page_table_view(block_table, 8)
    assert table.shape == (2, 1, 8, 1) and table.dtype == torch.int32
    assert table[:, 0, :, 0].tolist() == [[3, 7, 0, 0, 0, 0, 0, 0], [1, 2, 4, 5, 6, 0, 0, 0]]
    assert table.stride() == (8, 8, 1, 1)
    with pytest.raises(ValueError):
        page_table_view(block_table, 4)
    seq_q, seq_kv = seq_len_tensors(torch.tensor([1, 3]), torch.tensor([5, 20]))
    assert seq_q.shape == seq_kv.shape == (2, 1, 1, 1)
    assert seq_q.dtype == seq_kv.dtype == torch.int32
    assert seq_q.flatten().tolist() == [1, 3] and seq_kv.flatten().tolist() == [5, 20]


def test_cudnn_cache_view_is_hnd_by_strides():
    batch = make_batch(SMALL)
    view = cache_view(batch.k_cache)
    assert tuple(view.shape) == cudnn_layout(SMALL).cache_dims
    assert view.stride() == cudnn_layout(SMALL).cache_strides
    assert view.data_ptr() == batch.k_cache.data_ptr()  # no copy
    assert torch.equal(view[3, 1, 2], batch.k_cache[3, 2, 1])  # [page, head, slot] == NHD [page, slot, head]


def test_cudnn_trow_arguments():
    block_table = torch.tensor([[3, 7, 0, 0, 0], [1, 2, 4, 5, 6]], dtype=torch.int32)
    args = trow_arguments(SMALL.replace(causal=True), block_table)
    assert args.q_dims == (4, 4, 1, 8) and args.q_strides == (32, 8, 32, 1)
    assert args.seq_len_q.flatten().tolist() == [1, 1, 1, 1]
    assert args.seq_len_kv.flatten().tolist() == [5, 18, 19, 20]  # per token, bottom-right causal
    assert tuple(args.page_table.shape) == (2, 1, 5, 1)            # B rows: what cuDNN refuses for B' = T
    non_causal = trow_arguments(SMALL.replace(causal=False), block_table)
    assert non_causal.seq_len_kv.flatten().tolist() == [5, 20, 20, 20]


def test_cudnn_supports():
    adapter = CudnnSdpaAdapter()
    assert adapter.supports(SMALL.replace(dtype="bf16")) == (True, "")
    ok, why = adapter.supports(SMALL.replace(dtype="bf16", page_size=12))
    assert not ok and "power-of-two" in why
    ok, why = adapter.supports(SMALL)
    assert not ok and "fp32" in why


def test_cudnn_refusal_reason_puts_the_backend_words_first():
    # the text frontend 1.32 raised for the T-row Q on cuDNN 9.19 (H100), shortened
    error = RuntimeError("no engine — python or backend — proposed a plan for this graph (the backend declined: "
                         "pageTableDesc.getDimA()[0] != B, and code: CUDNN_STATUS_BAD_PARAM; python engines "
                         "declined: sdpa_fwd_prefill_sm90: requires SM90-90)")
    reason = refusal_reason("create_execution_plans", error)
    assert reason.startswith("cuDNN backend (create_execution_plans): pageTableDesc.getDimA()[0] != B, and code: "
                             "CUDNN_STATUS_BAD_PARAM [RuntimeError: no engine")
    assert refusal_reason("validate", ValueError("bad")) == "cuDNN validate: ValueError: bad"


def test_cudnn_layout_takes_the_pool_size_from_the_tensors():
    batch = make_batch(SMALL)
    pool = int(batch.k_cache.shape[0])
    assert cudnn_layout(SMALL, num_pages=pool + 6).cache_dims == (pool + 6, 2, 4, 8)
    assert cudnn_layout(SMALL, num_pages=pool).cache_dims == cudnn_layout(SMALL).cache_dims


def test_cudnn_stats_are_declared_padded_bhsd():
    layout = cudnn_layout(SMALL)
    assert layout.stats_dims == (2, 4, 4, 1)       # [B, Hq, S_q, 1]
    assert layout.stats_strides == (16, 4, 1, 1)   # packed BHSD: [Hq*S_q, S_q, 1, 1]


class FakeCudnn:
    """Just enough of ``import cudnn`` for the adapter's graph cache: every build records its key, a graph
    with Stats is refused when ``refuse_stats`` (as a backend that declines the stats output would)."""

    def __init__(self, refuse_stats: bool):
        self.refuse_stats, self.builds, self.destroyed = refuse_stats, [], []

    def create_handle(self):
        return object()

    def destroy_handle(self, handle):
        self.destroyed.append(handle)


def _fake_build(fake):
    from adapters.backends import cudnn_sdpa

    def build(cudnn, key, handle, *, ragged):
        fake.builds.append(key)
        if key.stats and fake.refuse_stats:
            raise cudnn_sdpa.Unsupported("cuDNN backend (check_support): no engine for the Stats output")
        return cudnn_sdpa._BuiltGraph(graph=None, tensors={"stats": 1} if key.stats else {}, workspace_bytes=0,
                                      build_s=0.01)

    return build


@pytest.mark.parametrize("refuse", [False, True])
def test_cudnn_stats_refusal_costs_one_build_and_is_noted(monkeypatch, refuse):
    from adapters.backends import cudnn_sdpa

    fake = FakeCudnn(refuse)
    monkeypatch.setattr(cudnn_sdpa, "_build", _fake_build(fake))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: __import__("contextlib").nullcontext())
    adapter = CudnnSdpaAdapter()
    key = cudnn_sdpa.GraphKey(variant="packed", device=0, dtype="bf16", causal=True, scale=0.1, q_dims=(2, 4, 4, 8),
                              q_strides=(128, 8, 32, 1), cache_dims=(10, 2, 4, 8), cache_strides=(64, 8, 16, 1),
                              page_table_dims=(2, 1, 8, 1), max_seq_len_kv=32, ragged_dtype="int32")
    device = torch.device("cuda", 0)
    first = adapter._graph_with_stats(fake, key, device, ragged=True)
    second = adapter._graph_with_stats(fake, key, device, ragged=True)
    assert [k.stats for k in fake.builds] == (["padded", ""] if refuse else ["padded"])
    assert second[1] is True  # cached
    if refuse:
        assert "refused the Stats" in first[2] and "no engine for the Stats output" in second[2]
    else:
        assert first[2] == "" and "stats" in first[0].tensors
    monkeypatch.setitem(sys.modules, "cudnn", fake)
    adapter.close()
    assert adapter._graphs == {} and adapter._handles == {} and len(fake.destroyed) == 1


def test_cudnn_ragged_stats_only_where_q_is_ragged(monkeypatch):
    from adapters.backends import cudnn_sdpa

    fake = FakeCudnn(False)
    monkeypatch.setattr(cudnn_sdpa, "_build", _fake_build(fake))
    monkeypatch.setattr(torch.cuda, "device", lambda index: __import__("contextlib").nullcontext())
    adapter = adapter_classes()["cudnn-stats-ragged"]()
    key = cudnn_sdpa.GraphKey(variant="packed", device=0, dtype="bf16", causal=True, scale=0.1, q_dims=(2, 4, 4, 8),
                              q_strides=(128, 8, 32, 1), cache_dims=(10, 2, 4, 8), cache_strides=(64, 8, 16, 1),
                              page_table_dims=(2, 1, 8, 1), max_seq_len_kv=32, ragged_dtype="int32")
    device = torch.device("cuda", 0)
    adapter._graph_with_stats(fake, key, device, ragged=True)
    adapter._graph_with_stats(fake, cudnn_sdpa.dataclasses.replace(key, variant="t-rows"), device, ragged=False)
    assert [k.stats for k in fake.builds] == ["ragged", "padded"]


def test_cudnn_graphs_live_on_the_instance():
    from adapters.backends import cudnn_sdpa

    assert not hasattr(cudnn_sdpa, "_GRAPHS") and not hasattr(cudnn_sdpa, "_HANDLES")
    one, two = CudnnSdpaAdapter(), CudnnSdpaAdapter()
    assert one._graphs is not two._graphs


def test_cudnn_version_text():
    from adapters.backends.cudnn_sdpa import _version_text

    assert _version_text(92801) == "9.28.1" and _version_text(91900) == "9.19.0" and _version_text(8907) == "8.9.7"


# ------------------------------------------------------------------------------------------ flash-attn

def test_flash_cumulative_kv_lengths_by_hand():
    cu = cumulative_kv_lengths(torch.tensor([5, 20, 7], dtype=torch.int32))
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 5, 25, 32]


def test_flash_decode_query_view():
    q = torch.randn(3, 4, 8)
    view = decode_query_view(q, 3)
    assert view.shape == (3, 1, 4, 8) and view.data_ptr() == q.data_ptr()
    assert torch.equal(view[2, 0], q[2])
    with pytest.raises(ValueError):
        decode_query_view(torch.randn(4, 4, 8), 3)
    assert is_pure_decode(BatchSpec.from_grammar("3q1c10"))
    assert not is_pure_decode(BatchSpec.from_grammar("3q1c10_1q2c0"))


def test_flash_supports_in_its_own_words():
    adapter = FlashAttn2Adapter()
    base = BatchSpec.from_grammar("2q1c10", page_size=256, num_q_heads=8, num_kv_heads=2, head_dim=128)
    assert adapter.supports(base) == (True, "")
    ok, why = adapter.supports(base.replace(page_size=16))
    assert not ok and "Paged KV cache block size must be divisible by 256" in why
    ok, why = adapter.supports(base.replace(dtype="fp32"))
    assert not ok and "fp16 and bf16" in why
    # head dims a BatchSpec refuses to hold: supports() only reads the fields
    ok, why = adapter.supports(SimpleNamespace(page_size=256, dtype="bf16", head_dim=512, num_q_heads=8, num_kv_heads=2))
    assert not ok and "at most 256" in why
    ok, why = adapter.supports(SimpleNamespace(page_size=256, dtype="bf16", head_dim=100, num_q_heads=8, num_kv_heads=2))
    assert not ok and "multiple of 8" in why


def test_flash_versions_carry_the_build_note(monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_BUILD_NOTE", "built here")
    versions = FlashAttn2Adapter().versions()
    assert versions["flash_attn_build"] == "built here" and "flash_attn" in versions


# ------------------------------------------------------------------------------- adapters through the gate

GATE_CASES = [
    dict(text="2q1c100_2q37c60", page_size=16, heads=(8, 2), causal=True),
    dict(text="3q1c50", page_size=1, heads=(4, 4), causal=True),
    dict(text="1q150c10_2q20c0", page_size=64, heads=(8, 1), causal=True),
    dict(text="2q9c30_1q1c7", page_size=8, heads=(8, 2), causal=False),
]


def _gate(adapter, case, dtype="fp32", head_dim=32):
    spec = BatchSpec.from_grammar(case["text"], page_size=case["page_size"], num_q_heads=case["heads"][0],
                                  num_kv_heads=case["heads"][1], head_dim=head_dim, dtype=dtype, causal=case["causal"])
    batch = make_batch(spec)
    result, _ = run_gate(adapter, batch, reference_attention(batch))
    return result


@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: f"{c['text']}-p{c['page_size']}")
def test_sdpa_gather_passes_the_gate_on_cpu(case):
    result = _gate(SdpaGatherAdapter(), case)
    assert result.verdict == "ok", result.reason


def test_sdpa_gather_bf16_on_cpu():
    result = _gate(SdpaGatherAdapter(), GATE_CASES[0], dtype="bf16")
    assert result.verdict == "ok", result.reason


def test_sdpa_gather_mask_choice():
    assert mask_kind(1, 50, True) == "none"
    assert mask_kind(20, 20, True) == "causal"
    assert mask_kind(20, 50, True) == "lower_right"
    assert mask_kind(20, 50, False) == "none"


# ------------------------------------------------------------------------------------------- discovery

def test_every_adapter_imports_and_answers_available_on_cpu():
    adapters = discover()
    for name in ("cudnn", "cudnn-trows", "flash-attn2", "flex-paged", "sdpa-gather"):
        assert name in adapters
    assert adapters["cudnn-trows"].in_sweep is False
    for name, adapter in adapters.items():
        ok, why = adapter.available(torch.device("cpu"))
        assert isinstance(ok, bool) and isinstance(why, str)
        if not ok:
            assert why, f"{name} is unavailable without a reason"
        assert isinstance(adapter.versions(), dict)
    assert adapters["sdpa-gather"].available(torch.device("cpu"))[0]
    assert adapters["flex-paged"].available(torch.device("cpu"))[0]



def _frontend_without_library() -> SimpleNamespace:
    """What nvidia-cudnn-frontend (the [gpu] extra) looks like on a machine with no cuDNN library: it
    imports, and asking it for the library's version raises."""
    def backend_version():
        raise RuntimeError("Unable to find symbol cudnnGetVersion")
    return SimpleNamespace(backend_version=backend_version, __version__="1.32.0")


def test_cudnn_without_its_library_is_unavailable_with_the_reason(monkeypatch):
    """A frontend that imports but cannot load the library: versions() still answers (a dict saying so)
    and available() on a CUDA device is False with the frontend's words, never an exception."""
    monkeypatch.setitem(sys.modules, "cudnn", _frontend_without_library())
    adapter = discover()["cudnn"]
    versions = adapter.versions()
    assert isinstance(versions, dict) and "cudnnGetVersion" in " ".join(versions.values())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    ok, why = adapter.available(torch.device("cuda"))
    assert not ok and "cudnnGetVersion" in why

def test_discovery_is_silent_and_lazy():
    """Importing every adapter prints nothing and loads no GPU library."""
    code = textwrap.dedent("""
        import sys
        from adapters.base import discover
        names = sorted(discover())
        heavy = [m for m in ("cudnn", "flash_attn", "flash_attn_2_cuda") if m in sys.modules]
        sys.stderr.write(repr((names, heavy)))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    names, heavy = eval(done.stderr)  # noqa: S307 - our own repr
    assert heavy == []
    assert {"cudnn", "cudnn-trows", "flash-attn2", "flex-paged", "sdpa-gather"} <= set(names)


def test_device_refusal_and_installed_versions():
    """The shared helpers adapters start `available` and `versions` with: a device type the adapter does
    not declare is refused in words that name both; absent distributions are left out unless required."""
    from adapters.base import installed_versions
    from adapters.backends.sdpa_gather import SdpaGatherAdapter

    class CudaOnly(SdpaGatherAdapter):
        name, devices = "cuda-only", ("cuda",)

    class Named(CudaOnly):
        display_name = "Some Library"

    assert CudaOnly().device_refusal("cpu") == "cuda-only runs on CUDA devices only, not cpu"
    assert Named().device_refusal("cpu") == "Some Library runs on CUDA devices only, not cpu"
    assert SdpaGatherAdapter().device_refusal("meta") == "sdpa-gather runs on CUDA and CPU devices only, not meta"
    assert SdpaGatherAdapter().device_refusal("cpu") == ""
    found = installed_versions(["torch", "no-such-distribution"], required="no-such-distribution")
    assert found["no-such-distribution"] == "not installed"
    assert found["torch"].startswith(torch.__version__.split("+")[0])
    assert installed_versions(["no-such-distribution"]) == {}


def _refused_device_types(adapter) -> list[str]:
    """Device types ``adapter`` must refuse with `device_refusal`'s words on this machine: one it does not
    declare, and CUDA where there is none."""
    refused = ["meta"] + [kind for kind in ("cpu",) if kind not in adapter.devices]
    if not torch.cuda.is_available():
        refused.append("cuda")
    return refused


def test_every_adapter_refuses_a_device_in_device_refusal_s_words():
    """`Adapter.device_refusal` is the one place that says why an adapter cannot use a device at all:
    every registered adapter's `available` answers a device type it does not declare (and CUDA on a
    machine without it) with exactly its text, never with words of its own. (Test-only adapters that
    other tests register, e.g. tests/faulty_adapters.py, are left out: they are not backends.)"""
    from reports.model import cannot_run_here

    adapters = {name: adapter for name, adapter in discover().items()
                if type(adapter).__module__.startswith("adapters.backends.")}
    assert {"cudnn", "fa4", "flash-attn2", "flashinfer", "flex-paged", "jax-pallas-decode", "sdpa-gather",
            "triton"} <= set(adapters)
    for name, adapter in adapters.items():
        for kind in _refused_device_types(adapter):
            refusal = adapter.device_refusal(torch.device(kind))
            assert refusal, (name, kind)
            assert adapter.available(torch.device(kind)) == (False, refusal), (name, kind)
            if kind in ("cpu", "cuda"):  # the report shows such a cell as "not available here"
                assert cannot_run_here(refusal), (name, refusal)
    assert adapters["fa4"].available(torch.device("cpu")) == (False, "FlashAttention 4 runs on CUDA devices "
                                                                     "only, not cpu")
    assert adapters["cudnn-trows"].device_refusal("cpu") == "cuDNN SDPA runs on CUDA devices only, not cpu"


def test_a_peer_checked_in_its_own_process_reports_its_verdicts():
    """The GPU peer test's own-process path (used for JAX, whose runtime aborted in a shared pytest
    process) returns the same verdicts as gating in this process; here on the CPU with sdpa-gather."""
    from tests.test_adapters_gpu import PEER_CASES, peer_verdicts, peer_verdicts_in_own_process

    apart = peer_verdicts_in_own_process("sdpa-gather", "cpu")
    assert len(apart) == len(PEER_CASES) and {verdict for verdict, _ in apart} == {"ok"}
    assert apart == peer_verdicts("sdpa-gather", "cpu")


def test_a_peer_whose_process_aborts_fails_with_its_exit_status(monkeypatch):
    from tests.test_adapters_gpu import peer_verdicts_in_own_process

    monkeypatch.setenv("PAGED_BENCH_EXTRA_ADAPTERS", "tests.faulty_adapters")
    with pytest.raises(AssertionError, match=r"fault-abort: its process ended with status -6"):
        peer_verdicts_in_own_process("fault-abort", "cpu")
