"""FlashInfer's rows and the model features: the plan()/run() arguments each row builds for a window, a
soft-cap, sinks and an fp8 cache (`adapters.backends.flashinfer.calls`, pure), checked against values
written out by hand from FlashInfer 0.7.4's signatures, and the declines in FlashInfer's words. Needs
no GPU and no flashinfer; the GPU checks (the features through the real wrappers, against the
reference) are marked ``gpu`` and skip here."""

import pytest
import torch

from adapters.backends.flashinfer import (
    CUDNN_PREFILL_REFUSALS, PER_HEAD_SCALES, SINKS_WITH_SOFTCAP, FlashInferAutoAdapter,
    FlashInferBatchAttentionAdapter, FlashInferCall, FlashInferCudnnAdapter, FlashInferFa2Adapter,
    FlashInferFa3Adapter, batch_scales, kernel_variant, scale_kwargs,
)
from adapters.base import discover
from adapters.batch import BatchSpec, make_batch
from adapters.features import FEATURES

BF16, FP8 = torch.bfloat16, torch.float8_e4m3fn
SCALE = 1 / 128 ** 0.5
DECODE = BatchSpec.from_grammar("2q1c5000", num_q_heads=8, num_kv_heads=2, head_dim=128)
PREFILL = BatchSpec.from_grammar("1q7c5000_1q1c300", num_q_heads=8, num_kv_heads=2, head_dim=128)
ROWS = {"flashinfer": FlashInferAutoAdapter, "flashinfer-fa2": FlashInferFa2Adapter,
        "flashinfer-fa3": FlashInferFa3Adapter, "flashinfer-cudnn": FlashInferCudnnAdapter,
        "flashinfer-batch-attention": FlashInferBatchAttentionAdapter}
K_SCALE, V_SCALE = 0.015625, 0.03125


def plain_decode_plan(**extra):
    return {"q_data_type": BF16, "kv_data_type": BF16, "sm_scale": SCALE, **extra}


def plain_prefill_plan(**extra):
    return {"causal": True, "sm_scale": SCALE, "q_data_type": BF16, "kv_data_type": BF16, **extra}


def only(calls: list[FlashInferCall]) -> FlashInferCall:
    assert len(calls) == 1, calls
    return calls[0]


# ------------------------------------------------------------------------------------- what each row runs

def test_each_row_declares_the_features_its_entry_points_take():
    assert FlashInferAutoAdapter.model_features == FlashInferFa2Adapter.model_features == frozenset(FEATURES)
    assert FlashInferFa3Adapter.model_features == {"sliding_window", "softcap", "sinks"}
    assert FlashInferCudnnAdapter.model_features == {"sliding_window", "sinks"}
    assert FlashInferBatchAttentionAdapter.model_features == {"softcap", "fp8_kv"}
    for name, cls in ROWS.items():
        assert discover()[name].describe()["model_features"] == sorted(cls.model_features)
        for feature in set(FEATURES) - cls.model_features:  # every lacking feature has FlashInfer's reason
            assert "FlashInfer" in cls.feature_reasons[feature], (name, feature)


@pytest.mark.parametrize("name", ROWS)
def test_plain_batches_are_called_as_before(name):
    adapter = ROWS[name]()
    assert adapter.feature_refusal(DECODE) == adapter.feature_refusal(PREFILL) == ""
    decode, prefill = adapter.calls(DECODE), adapter.calls(PREFILL)
    if name == "flashinfer-batch-attention":
        for calls in (decode, prefill):
            call = only(calls)
            assert (call.name, call.kind, call.run) == ("BatchAttention", "holistic", {})
            assert call.init == {"kv_layout": "NHD"}
            assert call.plan == plain_prefill_plan()
        return
    tensor_cores = {"flashinfer": [False], "flashinfer-fa2": [False, True], "flashinfer-fa3": [True],
                    "flashinfer-cudnn": [False]}[name]
    assert [call.init for call in decode] == [
        {"kv_layout": "NHD", "use_tensor_cores": tc, "backend": adapter.fi_backend} for tc in tensor_cores]
    assert [call.name for call in decode] == list(adapter.decode_variants())
    for call in decode:
        assert (call.wrapper, call.kind, call.sinks) == ("BatchDecodeWithPagedKVCacheWrapper", "decode", "")
        assert call.plan == plain_decode_plan() and call.run == {"return_lse": True}
    call = only(prefill)
    assert (call.name, call.wrapper, call.kind) == ("BatchPrefillWithPagedKVCacheWrapper",) * 2 + ("prefill",)
    assert call.init == {"kv_layout": "NHD", "backend": adapter.fi_backend}
    assert call.plan == plain_prefill_plan() and call.run == {"return_lse": True} and call.sinks == ""


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer-fa2", "flashinfer-fa3", "flashinfer-cudnn"])
def test_a_window_of_4096_keys_is_window_left_4095(name):
    adapter = ROWS[name]()
    decode = DECODE.replace(sliding_window=4096)
    assert adapter.feature_refusal(decode) == ""
    for call in adapter.calls(decode):
        assert call.plan == plain_decode_plan(window_left=4095)
    prefill = PREFILL.replace(sliding_window=4096)
    if name == "flashinfer-cudnn":  # FlashInfer's cuDNN prefill wrapper refuses window_left
        assert adapter.feature_refusal(prefill) == CUDNN_PREFILL_REFUSALS["sliding_window"]
        assert "window_left" in CUDNN_PREFILL_REFUSALS["sliding_window"]
    else:
        assert adapter.feature_refusal(prefill) == ""
        assert only(adapter.calls(prefill)).plan == plain_prefill_plan(window_left=4095)
    assert adapter.calls(DECODE.replace(sliding_window=1))[0].plan["window_left"] == 0  # the query's own key only


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer-fa2", "flashinfer-fa3", "flashinfer-batch-attention"])
def test_a_soft_cap_of_50_is_logits_soft_cap_50(name):
    adapter = ROWS[name]()
    for spec in (DECODE.replace(softcap=50), PREFILL.replace(softcap=50)):
        assert adapter.feature_refusal(spec) == ""
        for call in adapter.calls(spec):
            assert call.plan["logits_soft_cap"] == 50.0 and isinstance(call.plan["logits_soft_cap"], float)
            if name == "flashinfer-batch-attention":  # the holistic kernel reads the cap at run time
                assert call.plan == plain_prefill_plan(logits_soft_cap=50.0) and call.run == {"logits_soft_cap": 50.0}
            else:
                assert "logits_soft_cap" not in call.run


def test_the_cudnn_path_declines_a_soft_cap_in_its_words():
    for spec in (DECODE.replace(softcap=50), PREFILL.replace(softcap=50)):
        assert "does not support logits_soft_cap" in FlashInferCudnnAdapter().feature_refusal(spec)


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer-fa2", "flashinfer-fa3"])
def test_sinks_go_through_flashinfers_sink_wrappers(name):
    adapter = ROWS[name]()
    backend = adapter.fi_backend
    for spec, kind, plan in ((DECODE.replace(sinks=True), "decode", plain_decode_plan()),
                             (PREFILL.replace(sinks=True), "prefill", plain_prefill_plan())):
        assert adapter.feature_refusal(spec) == ""
        call = only(adapter.calls(spec))
        wrapper = {"decode": "BatchDecodeWithAttentionSinkWrapper", "prefill": "BatchAttentionWithAttentionSinkWrapper"}
        assert (call.wrapper, call.kind, call.sinks) == (wrapper[kind], kind, "positional")
        assert call.init == {"kv_layout": "NHD", "backend": backend, "q_data_type": BF16, "kv_data_type": BF16,
                             "head_dim_qk": 128, "head_dim_vo": 128, "window_left": -1}
        assert call.plan == plan and call.run == {"return_lse": True}
    windowed = only(adapter.calls(PREFILL.replace(sinks=True, sliding_window=4096)))
    assert windowed.init["window_left"] == windowed.plan["window_left"] == 4095  # compiled in and planned


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer-fa2", "flashinfer-fa3"])
def test_sinks_with_a_soft_cap_are_declined(name):
    for spec in (DECODE.replace(sinks=True, softcap=50), PREFILL.replace(sinks=True, softcap=50)):
        assert ROWS[name]().feature_refusal(spec) == SINKS_WITH_SOFTCAP
    assert "AttentionSink" in SINKS_WITH_SOFTCAP and "soft-cap" in SINKS_WITH_SOFTCAP


def test_the_cudnn_row_passes_sinks_to_its_decode_wrapper_and_declines_them_for_prefill():
    adapter = FlashInferCudnnAdapter()
    decode = DECODE.replace(sinks=True, sliding_window=4096)
    assert adapter.feature_refusal(decode) == ""
    call = only(adapter.calls(decode))
    assert (call.wrapper, call.sinks) == ("BatchDecodeWithPagedKVCacheWrapper", "keyword")
    assert call.init == {"kv_layout": "NHD", "use_tensor_cores": False, "backend": "cudnn"}
    assert call.plan == plain_decode_plan(window_left=4095)
    refusal = adapter.feature_refusal(PREFILL.replace(sinks=True, sliding_window=4096))
    assert refusal == CUDNN_PREFILL_REFUSALS["sliding_window"] + "; " + CUDNN_PREFILL_REFUSALS["sinks"]
    assert "does not support sinks" in refusal


def test_batch_attention_declines_a_window_and_sinks():
    adapter = FlashInferBatchAttentionAdapter()
    assert "window_left" in adapter.feature_refusal(PREFILL.replace(sliding_window=4096))
    assert "no sinks argument" in adapter.feature_refusal(DECODE.replace(sinks=True))


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer-fa2", "flashinfer-batch-attention"])
def test_an_fp8_cache_with_per_tensor_scales(name):
    adapter = ROWS[name]()
    for spec in (DECODE.replace(kv_dtype="fp8"), PREFILL.replace(kv_dtype="fp8")):
        assert adapter.feature_refusal(spec) == ""
        calls = adapter.calls(spec, K_SCALE, V_SCALE)
        assert calls
        for call in calls:
            assert call.plan["kv_data_type"] is FP8 and call.plan["q_data_type"] is BF16
            assert call.run["k_scale"] == K_SCALE and call.run["v_scale"] == V_SCALE
            assert type(call.run["k_scale"]) is float and type(call.run["v_scale"]) is float
    with_sinks = DECODE.replace(kv_dtype="fp8", sinks=True)
    if name != "flashinfer-batch-attention":  # the sink wrappers are compiled for the cache dtype too
        call = only(adapter.calls(with_sinks, K_SCALE, V_SCALE))
        assert call.init["kv_data_type"] is FP8 and call.run == {"return_lse": True, "k_scale": K_SCALE,
                                                                 "v_scale": V_SCALE}


def test_the_scales_are_read_from_the_batch_as_floats():
    batch = make_batch(BatchSpec.from_grammar("1q1c20", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=8,
                                              kv_dtype="fp8"))
    k_scale, v_scale = batch_scales(batch)
    assert k_scale == batch.k_scale.item() and v_scale == batch.v_scale.item() and type(k_scale) is float
    assert scale_kwargs(batch.spec, k_scale, v_scale) == {"k_scale": k_scale, "v_scale": v_scale}
    assert batch_scales(make_batch(batch.spec.replace(kv_dtype=None))) == (None, None)
    assert batch_scales(make_batch(batch.spec.replace(kv_scale="head"))) == (None, None)
    assert scale_kwargs(batch.spec.replace(kv_dtype=None)) == {}
    with pytest.raises(ValueError, match="one dequantisation scale per tensor"):
        scale_kwargs(batch.spec.replace(kv_scale="head"), 1.0, 1.0)


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer-fa2", "flashinfer-batch-attention"])
def test_per_head_fp8_scales_are_declined(name):
    refusal = ROWS[name]().feature_refusal(PREFILL.replace(kv_dtype="fp8", kv_scale="head"))
    assert refusal == PER_HEAD_SCALES and "k_scale" in refusal and "per-KV-head" in refusal


def test_rows_without_an_fp8_cache_decline_it_in_flashinfers_words():
    spec = DECODE.replace(kv_dtype="fp8")
    assert "requires FP8 query" in FlashInferFa3Adapter().feature_refusal(spec)
    assert "share one fp16 or bf16 dtype" in FlashInferCudnnAdapter().feature_refusal(spec)
    # one reason per missing feature, not the per-head one on top for rows that lack fp8 altogether
    assert PER_HEAD_SCALES not in FlashInferFa3Adapter().feature_refusal(spec.replace(kv_scale="head"))


def test_everything_at_once():
    spec = PREFILL.replace(sliding_window=4096, softcap=50.0, sinks=True, kv_dtype="fp8")
    assert FlashInferFa2Adapter().feature_refusal(spec) == SINKS_WITH_SOFTCAP
    no_cap = spec.replace(softcap=None)
    call = only(FlashInferFa2Adapter().calls(no_cap, K_SCALE, V_SCALE))
    assert call.wrapper == "BatchAttentionWithAttentionSinkWrapper" and call.sinks == "positional"
    assert call.init == {"kv_layout": "NHD", "backend": "fa2", "q_data_type": BF16, "kv_data_type": FP8,
                         "head_dim_qk": 128, "head_dim_vo": 128, "window_left": 4095}
    assert call.plan == {"causal": True, "sm_scale": SCALE, "q_data_type": BF16, "kv_data_type": FP8,
                         "window_left": 4095}
    assert call.run == {"return_lse": True, "k_scale": K_SCALE, "v_scale": V_SCALE}


def test_a_missing_kernel_names_its_variant():
    assert kernel_variant(PREFILL) == "bf16 q, bf16 KV, head dim 128"
    spec = PREFILL.replace(sliding_window=4096, softcap=50, kv_dtype="fp8")
    assert kernel_variant(spec) == "bf16 q, fp8 e4m3 KV, head dim 128, sliding window, logits soft-cap"
    assert kernel_variant(spec, True).endswith("AttentionSink variant")


# ------------------------------------------------------------------------ the executor, with a stand-in

class Recorder:
    """Stands in for one FlashInfer wrapper class: records how it is built, planned and run."""

    log: list = []

    def __init__(self, *args, **kwargs):
        self.resolved_backend = self._backend = kwargs.get("backend", "fa2")
        self.log.append(("init", type(self).__name__, args, kwargs))

    def plan(self, *args, **kwargs):
        self.log.append(("plan", type(self).__name__, args, kwargs))

    def run(self, q, kv, *args, out=None, lse=None, return_lse=False, lse_base="log2", **kwargs):
        self.log.append(("run", type(self).__name__, args, kwargs))
        return out, lse


def stand_in(resolved_prefill="fa2"):
    wrappers = ("BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper", "BatchAttention",
                "BatchAttentionWithAttentionSinkWrapper", "BatchDecodeWithAttentionSinkWrapper")
    classes = {name: type(name, (Recorder,), {}) for name in wrappers}

    def init(self, *args, **kwargs):
        Recorder.__init__(self, *args, **kwargs)
        if kwargs.get("backend") == "auto":
            self._backend = resolved_prefill

    classes["BatchPrefillWithPagedKVCacheWrapper"].__init__ = init
    return type("flashinfer", (), classes)


@pytest.mark.parametrize("name", ROWS)
def test_the_executor_passes_what_calls_says(name, monkeypatch):
    from adapters.backends.flashinfer import flashinfer_pages, lse_from_base2

    adapter = ROWS[name]()
    monkeypatch.setattr(type(adapter), "_workspace", lambda self, device: torch.zeros(8, dtype=torch.uint8))
    extra = {} if name == "flashinfer-batch-attention" else {"sinks": True}
    spec = BatchSpec.from_grammar("2q1c40", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=128,
                                  kv_dtype="fp8" if name in ("flashinfer", "flashinfer-fa2") else None,
                                  sliding_window=None if name == "flashinfer-batch-attention" else 9,
                                  **extra)
    batch = make_batch(spec)
    pages = flashinfer_pages(spec, batch.block_table, batch.cu_seqlens_q)
    out, lse = torch.empty_like(batch.q), torch.empty(spec.total_q, spec.num_q_heads)
    Recorder.log = []
    candidates, resolved, base2 = adapter._entry_points(stand_in(), batch, pages, out, lse)
    calls = adapter.calls(spec, *batch_scales(batch))
    assert list(candidates) == [call.name for call in calls] and base2
    for call in calls:
        inits = [entry for entry in Recorder.log if entry[0] == "init" and entry[1] == call.wrapper]
        plans = [entry for entry in Recorder.log if entry[0] == "plan" and entry[1] == call.wrapper]
        runs = [entry for entry in Recorder.log if entry[0] == "run" and entry[1] == call.wrapper]
        assert any(entry[3] == {**call.init, **({"device": "cpu"} if call.kind == "holistic" else {})}
                   for entry in inits)
        assert any(entry[3] == call.plan for entry in plans)
        heads = (4, 2, 128, 128, 16) if call.kind == "holistic" else (4, 2, 128, 16)
        assert all(entry[2][-len(heads):] == heads for entry in plans)
        positional = [entry[2] for entry in runs]
        if call.sinks == "positional":  # run(q, kv, sinks, sm_scale)
            assert all(args[0] is batch.sinks and args[1] == spec.scale for args in positional)
        else:
            assert all(args == () for args in positional)
        if call.sinks == "keyword":
            assert all(entry[3]["sinks"] is batch.sinks for entry in runs)
        assert all({k: v for k, v in entry[3].items() if k != "sinks"} ==
                   {k: v for k, v in call.run.items() if k != "return_lse"} for entry in runs)
    torch.testing.assert_close(lse_from_base2(torch.ones(1)), torch.tensor([0.6931472]))


def test_the_cudnn_prefill_asks_for_natural_log_stats():
    adapter = FlashInferCudnnAdapter()
    adapter._workspace = lambda device: torch.zeros(8, dtype=torch.uint8)
    from adapters.backends.flashinfer import flashinfer_pages

    batch = make_batch(BatchSpec.from_grammar("1q5c40", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=128))
    pages = flashinfer_pages(batch.spec, batch.block_table, batch.cu_seqlens_q)
    _, resolved, base2 = adapter._entry_points(stand_in("cudnn"), batch, pages, torch.empty_like(batch.q),
                                               torch.empty(5, 4))
    assert resolved == {"BatchPrefillWithPagedKVCacheWrapper": "cudnn"} and not base2


# ------------------------------------------------------------------------------------------------- GPU

FEATURED = {"window": dict(sliding_window=37), "softcap": dict(softcap=5.0), "sinks": dict(sinks=True),
            "fp8": dict(kv_dtype="fp8"), "window-sinks": dict(sliding_window=37, sinks=True),
            "window-fp8": dict(sliding_window=37, kv_dtype="fp8")}


@pytest.mark.gpu
@pytest.mark.parametrize("grammar", ["4q1c300", "1q40c300_2q1c90"])
@pytest.mark.parametrize("variant", FEATURED)
@pytest.mark.parametrize("name", ROWS)
def test_features_through_flashinfer_match_the_reference(name, variant, grammar):
    """Each row on a featured batch: declined, skipped (kernel not built ahead of time), or ok against
    the reference with its LSE (the sink inside it). Never wrong."""
    from adapters.reference import reference_attention
    from harness.measure.gate import run_gate

    adapter = ROWS[name]()
    device = torch.device("cuda")
    ok, why = adapter.available(device)
    if not ok:
        pytest.skip(why)
    spec = BatchSpec.from_grammar(grammar, page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=128, seed=5,
                                  **FEATURED[variant])
    batch = make_batch(spec, device)
    gate, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    if adapter.feature_refusal(spec):
        assert gate.verdict == "unsupported" and gate.reason == adapter.feature_refusal(spec)
    elif gate.verdict == "skipped":  # a variant not built ahead of time (FLASHINFER_DISABLE_JIT)
        assert "no compiled kernel for" in gate.reason
        pytest.skip(gate.reason)
    else:
        assert gate.verdict in ("ok", "unsupported"), (name, variant, grammar, gate.verdict, gate.reason)
