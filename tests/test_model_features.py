"""Model features (sliding window, soft-cap, sinks, fp8 KV cache): the reference against a naive loop
written from each feature's definition, the gate catching a planted wrong window or sink, rows that
lack a feature declining it, case names, FLOP/byte formulas and validation."""

import dataclasses
import itertools
import math

import pytest
import torch

from adapters.base import Adapter, Prepared
from adapters.batch import BatchSpec, make_batch
from adapters.features import FEATURES, features_of, window_left
from adapters.reference import reference_attention
from adapters.validation import BatchValidationError, validate_batch
from harness.cases.sweep import cell_id, make_case
from harness.measure.gate import run_gate
from harness.measure.metrics import attention_pairs, keys_read, spec_bytes


def naive_attention(batch):
    """Output and LSE from the definitions, one sequence, head and query at a time, in float64: an fp8
    key is its stored value times its scale; the score is scale * q.k, capped as c*tanh(s/c); the query
    at position p sees keys p - W < j <= p; the sink adds exp(sink) to the denominator only."""
    spec = batch.spec
    out = torch.zeros(spec.total_q, spec.num_q_heads, spec.head_dim, dtype=torch.float64)
    lse = torch.zeros(spec.total_q, spec.num_q_heads, dtype=torch.float64)
    row = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        for i in range(q_len):
            position = i + kv_len - q_len
            for head in range(spec.num_q_heads):
                kv_head = head // spec.group_size
                query = batch.q[row + i, head].double()
                scores, values = [], []
                for j in range(kv_len):
                    if spec.causal and j > position:
                        continue
                    if spec.sliding_window is not None and j <= position - spec.sliding_window:
                        continue
                    page = int(batch.block_table[seq, j // spec.page_size])
                    key = batch.k_cache[page, j % spec.page_size, kv_head].double()
                    value = batch.v_cache[page, j % spec.page_size, kv_head].double()
                    if batch.k_scale is not None:
                        key = key * float(batch.k_scale[kv_head if batch.k_scale.numel() > 1 else 0])
                        value = value * float(batch.v_scale[kv_head if batch.v_scale.numel() > 1 else 0])
                    score = float(query @ key) * spec.scale
                    if spec.softcap is not None:
                        score = spec.softcap * math.tanh(score / spec.softcap)
                    scores.append(score)
                    values.append(value)
                terms = [math.exp(s) for s in scores]
                denominator = sum(terms) + (math.exp(float(batch.sinks[head])) if batch.sinks is not None else 0.0)
                out[row + i, head] = sum(t / denominator * v for t, v in zip(terms, values))
                lse[row + i, head] = math.log(denominator)
        row += q_len
    return out, lse


VARIANTS = {
    "window": dict(sliding_window=3),
    "window-one-key": dict(sliding_window=1),
    "softcap": dict(softcap=0.5),
    "sinks": dict(sinks=True),
    "fp8-tensor": dict(kv_dtype="fp8"),
    "fp8-head": dict(kv_dtype="fp8", kv_scale="head"),
    "all-four": dict(sliding_window=4, softcap=1.0, sinks=True, kv_dtype="fp8", kv_scale="head"),
    "sinks-noncausal": dict(sinks=True, causal=False),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_reference_matches_the_naive_loop(name):
    spec = BatchSpec.from_grammar("2q1c9_1q6c4", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=8,
                                  dtype="fp32", seed=3, **VARIANTS[name])
    batch = make_batch(spec)
    validate_batch(batch)
    out, lse = reference_attention(batch, with_lse=True)
    expected_out, expected_lse = naive_attention(batch)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-5, atol=1e-5)


def test_each_feature_changes_the_result():
    """The naive loop must not agree with plain attention by accident: every feature moves the output."""
    plain = BatchSpec.from_grammar("2q1c9_1q6c4", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=8,
                                   dtype="fp32", seed=3)
    base = reference_attention(make_batch(plain))
    for name in ("window", "softcap", "sinks"):
        changed = reference_attention(make_batch(plain.replace(**VARIANTS[name])))
        assert (changed - base).abs().max() > 1e-2, name


def test_fp8_cache_holds_e4m3_values_with_per_head_scales():
    spec = BatchSpec.from_grammar("2q1c40", num_q_heads=4, num_kv_heads=4, head_dim=16, dtype="fp16",
                                  kv_dtype="fp8", kv_scale="head")
    batch = make_batch(spec)
    assert batch.k_cache.dtype == torch.float8_e4m3fn and batch.k_scale.shape == (4,)
    # heads carry gains 0.5, 1, 2, 0.5: their scales differ accordingly (within the draw's spread)
    ratio = (batch.k_scale[2] / batch.k_scale[0]).item()
    assert 2.5 < ratio < 6.5
    # the largest stored magnitude of each head sits at the top of e4m3's range
    stored = batch.k_cache.float().abs().amax(dim=(0, 1, 3))
    assert torch.allclose(stored, torch.full_like(stored, 448.0))
    assert spec.kv_elem_bytes == 1 and spec.cache_bytes() == 2 * spec.cache_elements


def test_sinks_hold_a_visible_share_of_each_row():
    spec = BatchSpec.from_grammar("4q1c2000", num_q_heads=8, num_kv_heads=2, head_dim=64, dtype="fp32", sinks=True)
    batch = make_batch(spec)
    _, lse = reference_attention(batch, with_lse=True)
    share = torch.exp(batch.sinks[None, :] - lse)
    assert share.min() > 0.1 and share.max() < 0.9


class Planted(Adapter):
    """A CPU row that writes a planted variant of the reference (the batch with some fields changed)."""

    devices = ("cpu",)
    model_features = frozenset(FEATURES)

    def __init__(self, name, change):
        self.name, self.change = name, change

    def available(self, device):
        return True, ""

    def prepare(self, batch):
        planted = dataclasses.replace(batch, **self.change(batch))

        def run():
            return reference_attention(planted, with_lse=True)

        return Prepared(run=run)


@pytest.fixture
def featured_batch():
    spec = BatchSpec.from_grammar("2q1c40_1q8c24", page_size=8, num_q_heads=4, num_kv_heads=2, head_dim=16,
                                  dtype="fp32", sliding_window=16, sinks=True, kv_dtype="fp8", kv_scale="head")
    return make_batch(spec)


@pytest.mark.parametrize("name, change", [
    ("sink-dropped", lambda b: {"sinks": None}),
    ("sink-of-another-head", lambda b: {"sinks": b.sinks.roll(1)}),
    ("window-ignored", lambda b: {"spec": b.spec.replace(sliding_window=None)}),
    ("window-one-key-wider", lambda b: {"spec": b.spec.replace(sliding_window=17)}),
    ("per-tensor-scale", lambda b: {"k_scale": b.k_scale.mean().reshape(1).expand(2).contiguous()}),
])
def test_the_gate_catches_a_planted_wrong_feature(featured_batch, name, change):
    reference = reference_attention(featured_batch, with_lse=True)
    correct, _ = run_gate(Planted("right", lambda b: {}), featured_batch, reference)
    assert correct.verdict == "ok", correct.reason
    gate, _ = run_gate(Planted(name, change), featured_batch, reference)
    assert gate.verdict == "wrong", (name, gate.reason)


def test_a_row_without_a_feature_declines_it_in_its_own_words(featured_batch):
    class Plain(Planted):
        model_features = frozenset({"fp8_kv"})
        feature_reasons = {"sinks": "the library's entry point has no sink argument"}

    gate, prepared = run_gate(Plain("plain", lambda b: {}), featured_batch, reference_attention(featured_batch))
    assert gate.verdict == "unsupported" and prepared is None
    assert "no sink argument" in gate.reason and "sliding-window attention" in gate.reason


def test_case_names_and_cell_ids():
    plain = make_case("decode-b64-q1-c4096", "64q1c4k", 16)
    assert plain.as_dict() == {"name": "decode-b64-q1-c4096-p16", "grammar": "64q1c4k", "page_size": 16,
                               "num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128, "dtype": "bf16",
                               "causal": True, "seed": 0}
    assert cell_id("cudnn", plain) == "19317d99f298176d"  # as before the features existed
    featured = make_case("decode-b64-q1-c4096", "64q1c4k", 16, sliding_window=4096, softcap=50, sinks=True,
                         kv_dtype="fp8", kv_scale="head")
    assert featured.name == "decode-b64-q1-c4096-p16-w4096-cap50-sinks-kvfp8h"
    assert featured.features == FEATURES == features_of(featured.spec())
    assert featured.softcap == 50.0 and cell_id("cudnn", featured) != cell_id("cudnn", plain)
    assert make_case("x", "1q1c1", 16, kv_dtype="fp8").name == "x-p16-kvfp8"


def test_window_formulas_against_counting():
    for q_len, kv_len, window in itertools.product([1, 2, 5, 9], [9, 12, 30], [None, 1, 3, 8, 40]):
        pairs = sum(1 for i in range(q_len) for j in range(kv_len)
                    if j <= i + kv_len - q_len and (window is None or j > i + kv_len - q_len - window))
        assert attention_pairs(q_len, kv_len, True, window) == pairs
        seen = {j for i in range(q_len) for j in range(kv_len)
                if j <= i + kv_len - q_len and (window is None or j > i + kv_len - q_len - window)}
        assert keys_read(q_len, kv_len, window) == len(seen)
    assert window_left(4096) == 4095


def test_an_fp8_cache_halves_the_kv_bytes():
    plain = BatchSpec.from_grammar("64q1c16k")
    fp8 = plain.replace(kv_dtype="fp8")
    q_and_o = 2 * 64 * 32 * 128 * 2
    assert spec_bytes(plain) - q_and_o == 2 * (spec_bytes(fp8) - q_and_o)


@pytest.mark.parametrize("fields, field", [
    (dict(sliding_window=0), "sliding_window"),
    (dict(sliding_window=True), "sliding_window"),
    (dict(sliding_window=8, causal=False), "sliding_window"),
    (dict(softcap=-1.0), "softcap"),
    (dict(softcap=float("inf")), "softcap"),
    (dict(sinks="yes"), "sinks"),
    (dict(kv_dtype="int8"), "kv_dtype"),
    (dict(kv_dtype="fp8", kv_scale="channel"), "kv_scale"),
])
def test_bad_feature_values_are_refused_by_field(fields, field):
    with pytest.raises(BatchValidationError) as error:
        BatchSpec.from_grammar("2q1c8", **fields)
    assert error.value.field == field


def test_validation_wants_the_feature_tensors_the_spec_asks_for(featured_batch):
    with pytest.raises(BatchValidationError, match="sinks: is missing"):
        validate_batch(dataclasses.replace(featured_batch, sinks=None))
    with pytest.raises(BatchValidationError, match="k_scale: shape"):
        validate_batch(dataclasses.replace(featured_batch, k_scale=featured_batch.k_scale[:1]))
    with pytest.raises(BatchValidationError, match="k_cache: dtype"):
        validate_batch(dataclasses.replace(featured_batch, k_cache=featured_batch.k_cache.float()))
