"""Model features (sliding window, soft-cap, sinks, fp8 KV) in the flash-attn 2 and FlashAttention 4 rows.

On this machine (no GPU, neither library): the keyword arguments of every entry point against hand-computed
values, the declines in each library's terms, flash-attn 2's reduced-build `skipped` path, and the whole gate
path (feature refusal, supports, prepare, run, to_lse) through stand-ins of both libraries written from their
documented semantics (`flash_attn_interface.py` 2.8.3, `flash_attn/cute/interface.py` 4.0.0b27): window
``[i + sk - sq - left, i + sk - sq + right]`` inclusive, ``softcap * tanh(scaled / softcap)``, FA4's sink in
the denominator and in the LSE; they refuse an unknown keyword (TypeError) as the real functions do. What only
the real kernels can show is in the `gpu`-marked tests at the end."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from adapters.backends import flash_attn2 as fa2_module
from adapters.backends.fa4 import FA4Adapter, fa4_arguments, sm90_kv_tile
from adapters.backends.flash_attn2 import (
    ENTRY_KVCACHE, ENTRY_VARLEN, FlashAttn2Adapter, build_refusal, compiled_out, cumulative_kv_lengths,
    kvcache_arguments, varlen_arguments,
)
from adapters.batch import BatchSpec, make_batch
from adapters.features import FEATURES
from adapters.reference import reference_attention
from harness.measure.gate import run_gate

NOTE = "flash-attn 2.8.3.post2 built from source for sm_90; dropout/alibi/softcap/local/uneven-K compiled out"
DECODE = dict(text="2q1c300", page_size=256, num_q_heads=8, num_kv_heads=2, head_dim=64)
MIXED = dict(text="1q5c300_1q1c200", page_size=256, num_q_heads=8, num_kv_heads=2, head_dim=64)


def _batch(case: dict, dtype: str = "bf16", **features):
    fields = {key: value for key, value in case.items() if key != "text"}
    return make_batch(BatchSpec.from_grammar(case["text"], dtype=dtype, **fields, **features))


# ------------------------------------------------------------------------------------ FA2 keyword arguments

VARIANTS = {
    "plain": ({}, {}),
    "window-4096": (dict(sliding_window=4096), {"window_size": (4095, 0)}),
    "window-one-key": (dict(sliding_window=1), {"window_size": (0, 0)}),
    "softcap-50": (dict(softcap=50), {"softcap": 50.0}),
    "window-and-cap": (dict(sliding_window=128, softcap=30.0), {"window_size": (127, 0), "softcap": 30.0}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_fa2_arguments_of_both_entry_points(name):
    features, expected = VARIANTS[name]
    batch = _batch(DECODE, **features)
    cu_k = cumulative_kv_lengths(batch.kv_lens)
    assert cu_k.tolist() == [0, 301, 602]  # "c300": 300 cached tokens and the new one and cu_k.dtype == torch.int32
    varlen = varlen_arguments(batch, cu_k)
    assert varlen.pop("cu_seqlens_q") is batch.cu_seqlens_q and varlen.pop("cu_seqlens_k") is cu_k
    assert varlen.pop("block_table") is batch.block_table
    assert varlen == {"max_seqlen_q": 1, "max_seqlen_k": 301, "softmax_scale": 0.125, "causal": True,
                      "return_attn_probs": True, **expected}
    kvcache = kvcache_arguments(batch)
    assert kvcache.pop("cache_seqlens") is batch.kv_lens and kvcache.pop("block_table") is batch.block_table
    assert kvcache == {"softmax_scale": 0.125, "causal": True, "return_softmax_lse": True, **expected}
    if "softcap" in expected:
        assert type(varlen["softcap"]) is float and type(kvcache["softcap"]) is float


def test_fa2_declines_sinks_and_fp8_in_its_own_terms():
    adapter = FlashAttn2Adapter()
    assert adapter.model_features == frozenset({"sliding_window", "softcap"})
    assert adapter.describe()["model_features"] == ["sliding_window", "softcap"]
    spec = BatchSpec.from_grammar("2q1c300", page_size=256)
    assert adapter.feature_refusal(spec.replace(sliding_window=64, softcap=50.0)) == ""
    sinks = adapter.feature_refusal(spec.replace(sinks=True))
    assert sinks.startswith("flash-attn 2.8 has no sink argument") and "flash_attn_with_kvcache" in sinks
    for scale in ("tensor", "head"):
        fp8 = adapter.feature_refusal(spec.replace(kv_dtype="fp8", kv_scale=scale))
        assert "fp16 and bf16" in fp8 and "flash_attn_varlen_func" in fp8 and "scale" in fp8
    both = adapter.feature_refusal(spec.replace(sinks=True, kv_dtype="fp8", sliding_window=8))
    assert "no sink argument" in both and "fp16 and bf16" in both and "window" not in both


# ----------------------------------------------------------------------------- FA2 reduced build (skipped)

def test_the_build_note_names_what_was_compiled_out():
    assert compiled_out(NOTE) == {"dropout", "alibi", "softcap", "local", "uneven-k"}
    assert compiled_out("flash-attn 2.8.3 built with FA_KEEP; dropout/alibi/uneven-K compiled out") == \
        {"dropout", "alibi", "uneven-k"}
    assert compiled_out(None) == frozenset() and compiled_out("full build") == frozenset()


def _probe_of(refusing: dict[str, str]):
    asked = []

    def probe(feature):
        asked.append(feature)
        return refusing.get(feature, "")

    return probe, asked


LOCAL_WORDS = "This flash attention build does not support local attention."
SOFTCAP_WORDS = "This flash attention build does not support softcap."


def test_build_refusal_from_the_probe_with_the_note():
    spec = BatchSpec.from_grammar("2q1c300", page_size=256, sliding_window=4096, softcap=50.0)
    probe, asked = _probe_of({"sliding_window": LOCAL_WORDS, "softcap": SOFTCAP_WORDS})
    refusal, remark = build_refusal(spec, probe, NOTE)
    assert asked == ["sliding_window", "softcap"] and remark == ""
    assert refusal.startswith("this flash-attn build compiled out sliding-window attention and logit soft-capping")
    assert LOCAL_WORDS in refusal and SOFTCAP_WORDS in refusal
    assert f"FLASH_ATTN_BUILD_NOTE: {NOTE}" in refusal and 'rebuild with FA_KEEP="SOFTCAP LOCAL"' in refusal
    # the probe decides: a build that runs the features is used whatever the note says (the note is then stale)
    probe, _ = _probe_of({})
    refusal, remark = build_refusal(spec, probe, NOTE)
    assert refusal == "" and "softcap" in remark and "local" in remark and "ran them" in remark
    # only the refused feature is named; no note set
    probe, _ = _probe_of({"softcap": SOFTCAP_WORDS})
    refusal, _ = build_refusal(spec, probe, None)
    assert "compiled out logit soft-capping (" in refusal and "FLASH_ATTN_BUILD_NOTE: not set" in refusal
    # plain cells and features the build cannot switch off never probe
    probe, asked = _probe_of({"sliding_window": LOCAL_WORDS})
    assert build_refusal(BatchSpec.from_grammar("2q1c300", page_size=256, sinks=True), probe, NOTE) == ("", "")
    assert asked == []


# ------------------------------------------------------------- library stand-ins from their documented semantics

def _attend(q, k, v, scale, causal, window, softcap, sink):
    """One sequence, as both libraries document it: q [sq, Hq, D], k/v [sk, Hkv, D] -> out [sq, Hq, D],
    lse [Hq, sq]; query i sees keys [i + sk - sq - left, i + sk - sq + right] (-1: unbounded; causal: right 0)."""
    q, k, v = q.float(), k.float(), v.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale  # both libraries' default
    sq, sk = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    left, right = (-1 if bound is None else bound for bound in window)
    if causal:
        right = 0
    position = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    keep = torch.ones(sq, sk, dtype=torch.bool)
    if right >= 0:
        keep &= j <= position + right
    if left >= 0:
        keep &= j >= position - left
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    if sink is not None:
        lse = torch.logaddexp(lse, sink.float()[:, None])
    out = torch.einsum("hqk,khd->qhd", torch.exp(s - lse[..., None]), v)
    return out, lse


def _paged(cache, pages, length):
    return cache[pages.long()].reshape(-1, cache.shape[2], cache.shape[3])[:length]


def fake_flash_attn2(compiled_out_switches=()):
    """A `flash_attn` module with flash-attn 2.8.3's two entry points (signatures as in its interface) on the
    CPU; a switch in ``compiled_out_switches`` ("local", "softcap") is refused as the reduced build's host check
    refuses it."""
    calls = []

    def check_build(window_size, softcap):
        if "softcap" in compiled_out_switches and softcap > 0:
            raise RuntimeError(SOFTCAP_WORDS)
        if "local" in compiled_out_switches and window_size[0] >= 0:
            raise RuntimeError(LOCAL_WORDS)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
        entry = "varlen" if block_table is not None else "unpaged"
        calls.append((entry, dict(window_size=window_size, softcap=softcap)))
        check_build(window_size, softcap)
        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[1], q.shape[0])
        for b in range(cu_seqlens_q.numel() - 1):
            rows = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]))
            length = int(cu_seqlens_k[b + 1] - cu_seqlens_k[b])
            if block_table is None:
                keys = k[int(cu_seqlens_k[b]):int(cu_seqlens_k[b + 1])]
                values = v[int(cu_seqlens_k[b]):int(cu_seqlens_k[b + 1])]
            else:
                keys, values = _paged(k, block_table[b], length), _paged(v, block_table[b], length)
            o, l = _attend(q[rows], keys, values, softmax_scale, causal, window_size, softcap, None)
            out[rows], lse[:, rows] = o.to(q.dtype), l
        return (out, lse, None) if return_attn_probs else out

    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
        calls.append(("kvcache", dict(window_size=window_size, softcap=softcap)))
        check_build(window_size, softcap)
        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[0], q.shape[2], q.shape[1])
        for b in range(q.shape[0]):
            length = int(cache_seqlens[b])
            o, l = _attend(q[b], _paged(k_cache, block_table[b], length), _paged(v_cache, block_table[b], length),
                           softmax_scale, causal, window_size, softcap, None)
            out[b], lse[b] = o.to(q.dtype), l
        return (out, lse) if return_softmax_lse else out

    module = types.ModuleType("flash_attn")
    module.__version__ = "2.8.3.post2"
    module.flash_attn_varlen_func = flash_attn_varlen_func
    module.flash_attn_with_kvcache = flash_attn_with_kvcache
    module.calls = calls
    return module


def fake_fa4():
    """FA4's ``flash_attn.cute`` varlen entry point (signature as in 4.0.0b27) on the CPU: page_table with
    seqused_k, window_size, softcap, learnable_sink; the LSE [Hq, T] includes the sink."""
    calls = []

    def flash_attn_varlen_func(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                               max_seqlen_k=None, min_seqlen_k=None, seqused_q=None, seqused_k=None,
                               gather_kv_indices=None, page_table=None, softmax_scale=None, causal=False,
                               window_size=(None, None), learnable_sink=None, softcap=0.0, num_splits=1,
                               pack_gqa=None, deterministic=False, score_mod=None, score_mod_bwd=None, mask_mod=None,
                               block_sparse_tensors=None, aux_tensors=None, aux_scalars=None, return_lse=False,
                               scheduler_metadata=None, seqlen_k_per_split=None, disable_scheduler_metadata=False):
        calls.append(dict(window_size=window_size, softcap=softcap, learnable_sink=learnable_sink))
        assert page_table is None or cu_seqlens_k is None, "page_table is not supported with cu_seqlens_k"
        if learnable_sink is not None:
            assert learnable_sink.shape == (q.shape[1],)
        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[1], q.shape[0])
        for b in range(cu_seqlens_q.numel() - 1):
            rows = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]))
            length = int(seqused_k[b])
            o, l = _attend(q[rows], _paged(k, page_table[b], length), _paged(v, page_table[b], length),
                           softmax_scale, causal, window_size, softcap, learnable_sink)
            out[rows], lse[:, rows] = o.to(q.dtype), l
        return out, (lse if return_lse else None)

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func, calls=calls)


@pytest.fixture
def flash_attn2(monkeypatch):
    """Install a stand-in flash-attn 2 (full build unless the test asks for another)."""
    def install(compiled_out_switches=()):
        module = fake_flash_attn2(compiled_out_switches)
        monkeypatch.setitem(sys.modules, "flash_attn", module)
        return module
    monkeypatch.delenv("FLASH_ATTN_BUILD_NOTE", raising=False)
    return install


def test_the_window_bound_is_w_minus_one():
    """Under the libraries' documented rule, (W - 1, 0) gives the suite's window and (W, 0) one key too many."""
    batch = _batch(dict(text="1q6c40", page_size=16, num_q_heads=2, num_kv_heads=1, head_dim=16), "fp32",
                   sliding_window=8)
    length = batch.spec.kv_lens[0]
    keys = _paged(batch.k_cache, batch.block_table[0], length)
    values = _paged(batch.v_cache, batch.block_table[0], length)
    expected = reference_attention(batch)
    right, _ = _attend(batch.q, keys, values, batch.scale, True, varlen_arguments(batch, None)["window_size"], 0, None)
    torch.testing.assert_close(right, expected, rtol=1e-5, atol=1e-5)
    wide, _ = _attend(batch.q, keys, values, batch.scale, True, (8, 0), 0, None)
    assert (wide - expected).abs().max() > 1e-2


GATE_VARIANTS = {
    "plain": {},
    "window": dict(sliding_window=100),
    "window-one-key": dict(sliding_window=1),
    "softcap": dict(softcap=0.5),
    "window-and-cap": dict(sliding_window=64, softcap=1.0),
}


@pytest.mark.parametrize("case", [DECODE, MIXED], ids=["decode", "mixed"])
@pytest.mark.parametrize("name", GATE_VARIANTS)
def test_fa2_through_the_gate(flash_attn2, case, name):
    module = flash_attn2()
    batch = _batch(case, **GATE_VARIANTS[name])
    gate, prepared = run_gate(FlashAttn2Adapter(), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok", gate.reason
    assert gate.lse_max_abs is not None
    if case is DECODE:  # both entry points gated, both right
        assert gate.notes["candidates_ok"] == [ENTRY_VARLEN, ENTRY_KVCACHE]
    else:
        assert prepared.notes["entry_point"] == ENTRY_VARLEN
    launched = {entry for entry, _ in module.calls if entry != "unpaged"}
    assert launched == ({"varlen", "kvcache"} if case is DECODE else {"varlen"})
    # one probe (a tiny unpaged call with only that feature on) per feature, none for plain cells
    probes = [kwargs for entry, kwargs in module.calls if entry == "unpaged"]
    assert probes == [{"window_size": (0, 0), "softcap": 0.0} if feature == "sliding_window" else
                      {"window_size": (-1, -1), "softcap": 1.0} for feature in batch.spec.features]
    expected = fa2_module.feature_arguments(batch.spec)
    for entry, kwargs in module.calls:
        if entry != "unpaged":
            assert kwargs == {"window_size": expected.get("window_size", (-1, -1)),
                              "softcap": expected.get("softcap", 0.0)}


def test_fa2_reduced_build_is_skipped_not_unsupported(flash_attn2, monkeypatch):
    flash_attn2(compiled_out_switches=("local", "softcap"))
    monkeypatch.setenv("FLASH_ATTN_BUILD_NOTE", NOTE)
    adapter = FlashAttn2Adapter()
    for features, words in ((dict(sliding_window=100), "sliding-window attention"),
                            (dict(softcap=50.0), "logit soft-capping")):
        batch = _batch(DECODE, **features)
        gate, prepared = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
        assert gate.verdict == "skipped" and prepared is None
        assert gate.reason.startswith(f"this flash-attn build compiled out {words}")
        assert NOTE in gate.reason and 'FA_KEEP="SOFTCAP LOCAL"' in gate.reason
    # plain cells still run on the reduced build
    batch = _batch(DECODE)
    assert run_gate(adapter, batch, reference_attention(batch, with_lse=True))[0].verdict == "ok"


def test_fa2_a_stale_note_is_recorded_when_the_build_runs_the_feature(flash_attn2, monkeypatch):
    flash_attn2()  # full build
    monkeypatch.setenv("FLASH_ATTN_BUILD_NOTE", NOTE)
    batch = _batch(DECODE, sliding_window=100)
    gate, prepared = run_gate(FlashAttn2Adapter(), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok", gate.reason
    assert "says local compiled out, but this build ran it" in prepared.notes["flash_attn_build_note_stale"]


def test_fa2_probes_each_feature_once_per_adapter(flash_attn2):
    module = flash_attn2()
    adapter = FlashAttn2Adapter()
    for _ in range(2):
        adapter.prepare(_batch(MIXED, sliding_window=100))
    assert [entry for entry, _ in module.calls] == ["unpaged"]  # prepare launches nothing else


# ---------------------------------------------------------------------------------------------------- FA4

FA4_VARIANTS = {
    "plain": ({}, {}),
    "window-4096": (dict(sliding_window=4096), {"window_size": (4095, 0)}),
    "softcap-50": (dict(softcap=50), {"softcap": 50.0}),
    "sinks": (dict(sinks=True), {"learnable_sink": "the batch's"}),
    "all-three": (dict(sliding_window=16, softcap=30.0, sinks=True),
                  {"window_size": (15, 0), "softcap": 30.0, "learnable_sink": "the batch's"}),
}


@pytest.mark.parametrize("name", FA4_VARIANTS)
def test_fa4_arguments(name):
    features, expected = FA4_VARIANTS[name]
    batch = _batch(MIXED, **features)
    kwargs = fa4_arguments(batch)
    assert kwargs.pop("cu_seqlens_q") is batch.cu_seqlens_q and kwargs.pop("seqused_k") is batch.kv_lens
    assert kwargs.pop("page_table") is batch.block_table
    if "learnable_sink" in expected:
        sink = kwargs.pop("learnable_sink")
        assert sink is batch.sinks and sink.shape == (8,) and sink.dtype == torch.float32
        expected = {key: value for key, value in expected.items() if key != "learnable_sink"}
    assert kwargs == {"max_seqlen_q": 5, "softmax_scale": 0.125, "causal": True, "return_lse": True, **expected}


def test_fa4_declines_fp8_in_its_own_terms():
    adapter = FA4Adapter()
    assert adapter.describe()["model_features"] == ["sinks", "sliding_window", "softcap"]
    spec = BatchSpec.from_grammar("2q1c300", page_size=128)
    assert adapter.feature_refusal(spec.replace(sliding_window=64, softcap=50.0, sinks=True)) == ""
    for scale in ("tensor", "head"):
        why = adapter.feature_refusal(spec.replace(kv_dtype="fp8", kv_scale=scale))
        assert "q, k, v, and qv must have the same dtype" in why and "SM100" in why
    assert set(FEATURES) == adapter.model_features | set(adapter.feature_reasons)


def test_fa4_tile_of_a_local_kernel():
    assert sm90_kv_tile(128, False, local=True) == 128 and sm90_kv_tile(96, False, local=True) == 128
    assert sm90_kv_tile(192, False, local=True) == 96 and sm90_kv_tile(256, False, local=True) == 64
    assert sm90_kv_tile(256, True) == 80 and sm90_kv_tile(192, True) == 112


FA4_GATE_VARIANTS = {
    "plain": {},
    "window": dict(sliding_window=100),
    "softcap": dict(softcap=0.5),
    "sinks": dict(sinks=True),
    "all-three": dict(sliding_window=64, softcap=1.0, sinks=True),
}


@pytest.mark.parametrize("name", FA4_GATE_VARIANTS)
def test_fa4_through_the_gate(monkeypatch, name):
    """The whole path with a stand-in FA4 (its LSE includes the sink): the suite's LSE needs no conversion."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: (9, 0))
    adapter = FA4Adapter()
    adapter._module = fake_fa4()
    batch = _batch(dict(MIXED, page_size=128), **FA4_GATE_VARIANTS[name])
    gate, prepared = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok", gate.reason
    assert gate.lse_max_abs is not None and gate.lse_max_abs < 0.05
    assert prepared.notes["paged_kv_tma"] is True  # page 128 = the SM90 tile at head dim 64, local or not
    if batch.sinks is not None:
        assert adapter._module.calls[-1]["learnable_sink"] is batch.sinks


def test_fa4_a_sink_dropped_from_the_lse_would_be_caught(monkeypatch):
    """If FA4's LSE left the sink out, the gate would say so (the adapter's to_lse is a plain transpose)."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: (9, 0))
    fake = fake_fa4()
    inner = fake.flash_attn_varlen_func

    def without_sink_in_lse(q, k, v, **kwargs):
        out, lse = inner(q, k, v, **kwargs)
        sink = kwargs["learnable_sink"].float()[:, None]
        return out, torch.log(torch.exp(lse) - torch.exp(sink))

    adapter = FA4Adapter()
    adapter._module = types.SimpleNamespace(flash_attn_varlen_func=without_sink_in_lse)
    batch = _batch(dict(MIXED, page_size=128), sinks=True)
    gate, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "wrong" and "LSE" in gate.reason


# ------------------------------------------------------------------------------------------- on the GPU

GPU_VARIANTS = {
    "window-4096": dict(sliding_window=4096),
    "window-100": dict(sliding_window=100),
    "softcap-50": dict(softcap=50.0),
    "sinks": dict(sinks=True),
    "fp8-tensor": dict(kv_dtype="fp8"),
    "fp8-head": dict(kv_dtype="fp8", kv_scale="head"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("adapter_class, page_size", [(FlashAttn2Adapter, 256), (FA4Adapter, 128)],
                         ids=["flash-attn2", "fa4"])
@pytest.mark.parametrize("name", GPU_VARIANTS)
@pytest.mark.parametrize("text", ["8q1c5000", "2q300c4500_4q1c700"])
def test_features_on_the_gpu(adapter_class, page_size, name, text):
    """The real libraries: each feature is ok (window off-by-one, cap, sink in the LSE confirmed by the gate),
    `skipped` where this flash-attn build compiled it out, or `unsupported` with the declared reason."""
    adapter = adapter_class()
    ok, why = adapter.available(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    spec = BatchSpec.from_grammar(text, page_size=page_size, num_q_heads=32, num_kv_heads=8, head_dim=128,
                                  dtype="bf16", **GPU_VARIANTS[name])
    batch = make_batch(spec, "cuda")
    gate, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    declined = [feature for feature in spec.features if feature not in adapter.model_features]
    if declined:
        assert gate.verdict == "unsupported" and gate.reason == adapter.feature_refusal(spec)
    elif gate.verdict == "skipped":
        assert adapter_class is FlashAttn2Adapter and "compiled out" in gate.reason, gate.reason
    else:
        assert gate.verdict == "ok", gate.reason
        assert gate.lse_max_abs is not None and gate.lse_max_abs < 0.05
