"""The cuDNN rows' model features: the sdpa keywords each feature becomes (window band bounds, the soft-cap
score_mod, the sink_token), the graph cache key, the version and fp8 declines, the LSE convention; the
score_mod's pointwise ops and cuDNN's band comparisons are evaluated in torch against the suite's
definitions. The GPU tests (marker ``gpu``) run every row through the gate and skip cleanly here."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.backends import cudnn_sdpa
from adapters.backends.cudnn_sdpa import (
    CUDNN_FEATURES, FEATURE_REASONS, GraphKey, ScoreMod, SinkToken, _supports, describe_arguments, feature_pack,
    lse_with_sink, packed_graph_key, score_mod_constants, score_mod_ops, sdpa_arguments, sink_tensor,
    trow_graph_key, version_refusal,
)
from adapters.base import adapter_classes
from adapters.batch import BatchSpec, make_batch
from adapters.features import window_left
from adapters.reference import reference_attention
from harness.measure.gate import run_gate

ROWS = ("cudnn", "cudnn-stats-ragged", "cudnn-offsets64", "cudnn-stats-ragged-offsets64", "cudnn-trows")

VARIANTS = {
    "plain": {},
    "window": dict(sliding_window=4096),
    "softcap": dict(softcap=50.0),
    "sinks": dict(sinks=True),
    "fp8-tensor": dict(kv_dtype="fp8"),
    "fp8-head": dict(kv_dtype="fp8", kv_scale="head"),
}

PLAIN_CAUSAL = {"use_padding_mask": True, "diagonal_alignment": "BOTTOM_RIGHT", "diagonal_band_right_bound": 0}
"""What the graph passed for every causal cell before the features existed."""


def spec_of(variant: str, **fields) -> BatchSpec:
    return BatchSpec.from_grammar("4q1c8k_1q300c8k", **{**VARIANTS[variant], **fields})


# ------------------------------------------------------------------------------------------- arguments

def test_plain_arguments_are_unchanged():
    assert sdpa_arguments(32, causal=True) == PLAIN_CAUSAL
    assert sdpa_arguments(32, causal=False) == {"use_padding_mask": True}
    key = packed_graph_key(spec_of("plain"))
    assert key.sdpa_arguments() == PLAIN_CAUSAL
    assert (key.sliding_window, key.softcap, key.sinks) == (None, None, False)
    assert describe_arguments(key.sdpa_arguments()) == ""


def test_window_passes_w_as_the_left_bound():
    """W = 4096 keys including the query's own: cuDNN's left bound is W itself (FlashAttention's window_left + 1)."""
    arguments = packed_graph_key(spec_of("window")).sdpa_arguments()
    assert arguments == {**PLAIN_CAUSAL, "diagonal_band_left_bound": 4096}
    assert arguments["diagonal_band_left_bound"] == window_left(4096) + 1
    assert sdpa_arguments(8, causal=True, sliding_window=1)["diagonal_band_left_bound"] == 1
    assert describe_arguments(arguments) == "diagonal_band_left_bound=4096"


def cudnn_band_keeps(row: int, col: int, s_q: int, s_kv: int, left: int | None, right: int | None) -> bool:
    """cuDNN's bottom-right band as the frontend builds it (utils/attn_score_modifiers.h, sliding_window_mask):
    the right bound keeps ``row + (s_kv - s_q) + right >= col``; the left bound keeps
    ``col + left - (s_kv - s_q) > row`` (per sequence, from seq_len_q/seq_len_kv)."""
    keep = True
    if right is not None:
        keep &= row + (s_kv - s_q) + right >= col
    if left is not None:
        keep &= col + left - (s_kv - s_q) > row
    return keep


@pytest.mark.parametrize("window", [1, 2, 3, 7, 40])
@pytest.mark.parametrize("q_len, kv_len", [(1, 9), (4, 9), (9, 9), (5, 30)])
def test_the_band_keeps_the_suites_window(window, q_len, kv_len):
    arguments = sdpa_arguments(4, causal=True, sliding_window=window)
    left, right = arguments["diagonal_band_left_bound"], arguments["diagonal_band_right_bound"]
    for i in range(q_len):
        position = i + kv_len - q_len
        kept = [j for j in range(kv_len) if cudnn_band_keeps(i, j, q_len, kv_len, left, right)]
        assert kept == [j for j in range(kv_len) if position - window < j <= position]
        assert len(kept) == min(window, position + 1)


def test_softcap_goes_through_score_mod_without_the_nodes_own_masks():
    arguments = packed_graph_key(spec_of("softcap")).sdpa_arguments()
    assert arguments == {"use_padding_mask": False, "score_mod": ScoreMod(softcap=50.0, causal=True)}
    both = sdpa_arguments(8, causal=True, sliding_window=4096, softcap=30)
    assert both == {"use_padding_mask": False, "score_mod": ScoreMod(softcap=30.0, causal=True, sliding_window=4096)}
    assert not {"diagonal_alignment", "diagonal_band_left_bound", "diagonal_band_right_bound"} & set(both)
    assert score_mod_constants(both["score_mod"]) == {"softcap": (30.0, torch.float32),
                                                      "neg_inf": (-math.inf, torch.float32),
                                                      "window": (4096, torch.int32)}
    assert "window" not in score_mod_constants(arguments["score_mod"])
    assert describe_arguments(both) == "score_mod 30*tanh(s/30) + masks (padding, bottom-right causal, window 4096)"


def test_sinks_pass_a_float32_sink_token_per_query_head():
    arguments = packed_graph_key(spec_of("sinks", num_q_heads=32)).sdpa_arguments()
    assert arguments == {**PLAIN_CAUSAL, "sink_token": SinkToken(dims=(1, 32, 1, 1), strides=(32, 1, 1, 1))}
    logits = torch.arange(32, dtype=torch.float32) / 7
    token = sink_tensor(logits)
    assert token.shape == (1, 32, 1, 1) and token.dtype == torch.float32 and token.is_contiguous()
    assert torch.equal(token.flatten(), logits)
    assert describe_arguments(arguments) == "sink_token (1, 32, 1, 1)"


def test_lse_takes_the_sink_only_where_cudnns_stats_lack_it():
    lse, sinks = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([0.5, 3.0])
    assert cudnn_sdpa.STATS_INCLUDE_SINK  # frontend softmax: Stats = max + log(sum + exp(sink - max))
    assert lse_with_sink(lse, sinks) is lse and lse_with_sink(lse, None) is lse
    torch.testing.assert_close(lse_with_sink(lse, sinks, stats_include_sink=False),
                               torch.log(torch.exp(lse) + torch.exp(sinks)[None, :]))


# --------------------------------------------------------------------- the score_mod, evaluated in torch

class Value:
    """A torch tensor standing for a cuDNN graph tensor (``set_data_type`` as the frontend's tensors have)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.dtype = None

    def set_data_type(self, dtype):
        self.dtype = dtype
        return self


class TorchGraph:
    """The pointwise ops the score_mod uses, computed in torch (the frontend's semantics: gen_index along an axis;
    ``binary_select(x, y, mask)`` = mask ? x : y); records the op names."""

    def __init__(self):
        self.ops: list[str] = []

    def _op(self, name, result):
        self.ops.append(name)
        return Value(result)

    def div(self, a, b, name=""):
        return self._op("div", a.tensor / b.tensor)

    def mul(self, a, b, name=""):
        return self._op("mul", a.tensor * b.tensor)

    def add(self, a, b, name="", compute_data_type=None):
        return self._op("add", a.tensor + b.tensor)

    def tanh(self, input, name=""):
        return self._op("tanh", torch.tanh(input.tensor))

    def gen_index(self, input, axis, name="", compute_data_type=None):
        shape = input.tensor.shape
        index = torch.arange(shape[axis]).view([-1 if d == axis else 1 for d in range(4)]).expand(shape)
        return self._op("gen_index", index)

    def cmp_lt(self, input, comparison, name="", compute_data_type=None):
        return self._op("cmp_lt", input.tensor < comparison.tensor)

    def cmp_le(self, input, comparison, name="", compute_data_type=None):
        return self._op("cmp_le", input.tensor <= comparison.tensor)

    def cmp_gt(self, input, comparison, name="", compute_data_type=None):
        return self._op("cmp_gt", input.tensor > comparison.tensor)

    def logical_and(self, a, b, name="", compute_data_type=None):
        return self._op("logical_and", a.tensor & b.tensor)

    def binary_select(self, input0, input1, mask, name=""):
        return self._op("binary_select", torch.where(mask.tensor, input0.tensor, input1.tensor))


@pytest.mark.parametrize("mod", [ScoreMod(softcap=0.7, causal=True), ScoreMod(softcap=2.0, causal=True, sliding_window=3),
                                 ScoreMod(softcap=1.5, causal=False)], ids=["causal", "window", "non-causal"])
def test_score_mod_caps_and_masks_as_the_reference(mod):
    q_lens, kv_lens, s_q, s_kv = (3, 1, 4), (9, 5, 4), 4, 16
    scores = torch.randn(len(q_lens), 2, s_q, s_kv, generator=torch.Generator().manual_seed(5)) * 3
    constants = {name: Value(torch.full((1, 1, 1, 1), value, dtype=dtype))
                 for name, (value, dtype) in score_mod_constants(mod).items()}
    graph = TorchGraph()
    lengths = [Value(torch.tensor(v, dtype=torch.int32).view(-1, 1, 1, 1)) for v in (q_lens, kv_lens)]
    out = score_mod_ops(graph, Value(scores), mod, constants=constants, seq_q=lengths[0], seq_kv=lengths[1],
                        int32="INT32", boolean="BOOL").tensor
    assert graph.ops[:3] == ["div", "tanh", "mul"] and graph.ops[-1] == "binary_select"
    expected = torch.full_like(scores, -math.inf)
    for b, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens)):
        for i in range(q_len):
            position = i + kv_len - q_len
            for j in range(kv_len):
                if mod.causal and j > position:
                    continue
                if mod.causal and mod.sliding_window is not None and j <= position - mod.sliding_window:
                    continue
                expected[b, :, i, j] = mod.softcap * torch.tanh(scores[b, :, i, j] / mod.softcap)
    torch.testing.assert_close(out, expected)


def test_feature_pack_binds_the_sinks_and_the_score_mod_scalars():
    spec = spec_of("softcap", sinks=True, sliding_window=64)
    key = packed_graph_key(spec)
    tensors = {"sink": "S", "const:softcap": "C", "const:neg_inf": "N", "const:window": "W"}
    sinks = torch.linspace(-1, 1, spec.num_q_heads)
    pack = feature_pack(key, tensors, sinks)
    assert set(pack) == {"S", "C", "N", "W"}
    assert pack["S"].shape == (1, spec.num_q_heads, 1, 1) and torch.equal(pack["S"].flatten(), sinks)
    assert pack["C"].item() == 50.0 and pack["N"].item() == -math.inf
    assert pack["W"].dtype == torch.int32 and pack["W"].item() == 64 and pack["W"].device.type == "cpu"
    assert feature_pack(packed_graph_key(spec_of("plain")), {}, None) == {}
    with pytest.raises(ValueError, match="no sink logits"):
        feature_pack(key, tensors, None)


# ------------------------------------------------------------------------------------------------ keys

def test_every_feature_value_changes_the_graph_key():
    specs = [spec_of("plain"), spec_of("window"), spec_of("window", sliding_window=2048), spec_of("softcap"),
             spec_of("softcap", softcap=30.0), spec_of("sinks"), spec_of("window", softcap=50.0, sinks=True)]
    for make in (packed_graph_key, lambda spec: packed_graph_key(spec, offsets="int64"), trow_graph_key):
        keys = [make(spec) for spec in specs]
        assert len(set(keys)) == len(keys)
    # the same features at another seed (other sink logits: data, not graph) share the graph
    assert packed_graph_key(spec_of("sinks")) == packed_graph_key(spec_of("sinks", seed=4))


def test_the_plain_key_is_the_key_of_before():
    spec = spec_of("plain")
    key = packed_graph_key(spec)
    layout = cudnn_sdpa.cudnn_layout(spec)
    before = GraphKey(variant="packed", device=0, dtype="bf16", causal=True, scale=spec.scale, q_dims=layout.q_dims,
                      q_strides=layout.q_strides, cache_dims=layout.cache_dims, cache_strides=layout.cache_strides,
                      page_table_dims=layout.page_table_dims, max_seq_len_kv=layout.max_seq_len_kv,
                      ragged_dtype="int32")
    assert key == before


def test_the_trow_key_matches_the_trow_arguments():
    spec = spec_of("window")
    batch_table = torch.zeros(spec.batch_size, spec.max_pages, dtype=torch.int32)
    arguments = cudnn_sdpa.trow_arguments(spec, batch_table)
    key = trow_graph_key(spec)
    assert key.q_dims == arguments.q_dims and key.q_strides == arguments.q_strides
    assert key.page_table_dims == tuple(arguments.page_table.shape) and key.sliding_window == 4096


# -------------------------------------------------------------------------------------- rows and declines

@pytest.mark.parametrize("row", ROWS)
def test_every_row_declares_the_same_features(row):
    cls = adapter_classes()[row]
    assert cls.model_features == CUDNN_FEATURES == frozenset({"sliding_window", "softcap", "sinks"})
    assert cls.feature_reasons == FEATURE_REASONS and set(FEATURE_REASONS) == {"fp8_kv"}
    assert cls.describe()["model_features"] == ["sinks", "sliding_window", "softcap"]


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp8_is_declined_in_cudnns_terms_and_the_rest_passes_the_feature_check(row, variant):
    adapter = adapter_classes()[row]()
    refusal = adapter.feature_refusal(spec_of(variant))
    if variant.startswith("fp8"):
        assert refusal == FEATURE_REASONS["fp8_kv"]
        for words in ("graph.sdpa", "sdpa_fp8", "per-tensor", "Blackwell", "9.13.0"):
            assert words in refusal
    else:
        assert refusal == ""


@pytest.mark.parametrize("kv_scale", ["tensor", "head"])
def test_the_gate_returns_the_fp8_reason_before_prepare(kv_scale):
    spec = BatchSpec.from_grammar("2q1c20", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="bf16",
                                  kv_dtype="fp8", kv_scale=kv_scale)
    batch = make_batch(spec)
    adapter = adapter_classes()["cudnn"]()
    gate, prepared = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "unsupported" and prepared is None and "sdpa_fp8" in gate.reason


@pytest.mark.parametrize("variant, loaded, declined", [
    ("sinks", 91200, True), ("sinks", 91300, False), ("sinks", 91900, False),
    ("window", 90500, True), ("window", 90600, False), ("window", 92801, False),
    ("softcap", 90700, False), ("plain", 90000, False), ("sinks", None, False),
])
def test_version_declines_name_the_version_found_and_the_one_needed(variant, loaded, declined):
    spec = spec_of(variant)
    ok, why = _supports(spec, loaded)
    assert ok is not declined and (why == version_refusal(spec, loaded))
    if declined:
        found = cudnn_sdpa._version_text(loaded)
        needed = cudnn_sdpa._version_text(cudnn_sdpa.FEATURE_MIN_VERSION[spec.features[0]][0])
        assert f"cuDNN {found} is loaded" in why and f"needs cuDNN {needed} or newer" in why


def test_supports_looks_the_version_up_once_and_only_for_features(monkeypatch):
    calls = []
    monkeypatch.setattr(cudnn_sdpa, "_loaded_version", lambda: calls.append(1) or 91200)
    adapter = adapter_classes()["cudnn-stats-ragged"]()
    assert adapter.supports(spec_of("plain")) == (True, "") and calls == []
    ok, why = adapter.supports(spec_of("sinks"))
    assert not ok and "cuDNN 9.12.0 is loaded" in why and "sink_token" in why
    assert adapter.supports(spec_of("window")) == (True, "") and calls == [1]


# --------------------------------------------------------------------------------------------------- GPU

GPU_VARIANTS = {
    "plain": {},
    "window": dict(sliding_window=64),
    "softcap": dict(softcap=2.0),
    "sinks": dict(sinks=True),
    "window-softcap-sinks": dict(sliding_window=64, softcap=2.0, sinks=True),
    "fp8-tensor": dict(kv_dtype="fp8"),
    "fp8-head": dict(kv_dtype="fp8", kv_scale="head"),
}
GPU_BATCHES = {"mixed": "2q1c300_1q40c200", "decode": "4q1c300"}


@pytest.fixture(scope="module")
def gpu_adapters():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return {name: adapter_classes()[name]() for name in ROWS}


@pytest.mark.gpu
@pytest.mark.parametrize("batch_name", GPU_BATCHES)
@pytest.mark.parametrize("variant", GPU_VARIANTS)
@pytest.mark.parametrize("row", ROWS)
def test_gpu_each_feature_is_right_or_declined_in_cudnns_words(gpu_adapters, row, variant, batch_name):
    """On the GPU: never wrong, never an error: ok, or unsupported with cuDNN's own reason (a sink where
    S_q == 1 is cuDNN's 'decode only mode' refusal; the T rows' refusal of multi-query sequences stays)."""
    adapter = gpu_adapters[row]
    ok, why = adapter.available(torch.device("cuda"))
    if not ok:
        pytest.skip(f"{row} not available: {why}")
    spec = BatchSpec.from_grammar(GPU_BATCHES[batch_name], page_size=16, num_q_heads=8, num_kv_heads=2,
                                  head_dim=128, dtype="bf16", **GPU_VARIANTS[variant])
    batch = make_batch(spec, "cuda")
    gate, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    if gate.verdict == "wrong" and adapter.form.stats == "ragged" and batch_name == "decode":
        # cuDNN before 9.27 leaves the packed Stats of most heads of a KV group unwritten on GQA decode
        # (results/h100-cudnn-releases/): the gate must say so on the LSE while the output is right
        assert "LSE" in gate.reason and gate.rel_l2 is not None and gate.rel_l2 < 1e-2, gate.reason
        return
    assert gate.verdict in ("ok", "unsupported"), gate.reason
    if variant.startswith("fp8"):
        assert gate.verdict == "unsupported" and gate.reason == FEATURE_REASONS["fp8_kv"]
    elif gate.verdict == "unsupported":
        assert "cuDNN" in gate.reason, gate.reason
