"""Model features (sliding window, soft-cap, sinks, fp8 KV cache) on the FlexAttention, gather+SDPA and JAX
Pallas rows, on the CPU: the arguments each row builds (Flex's mask_mod, block-mask page split and
score_mod; SDPA's gathered key range and boolean attn_mask; Pallas' scale pages) against hand-computed
values, every supported variant through the gate against the fp32 reference (output, and the LSE where
the row returns one), and every declined variant `unsupported` with the library's reason."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.backends.flex_paged import (FlexPagedAdapter, _page_split, batched_query_view, document_ids,
                                          head_scales, logical_block_mask_indices, make_logical_mask_mod,
                                          make_mask_mod, make_score_mod, packed_lse, packed_output,
                                          paged_block_mask_indices, physical_cache_view, physical_to_logical,
                                          query_positions)
from adapters.backends.pallas_decode import PallasPagedDecodeAdapter, feature_arguments, scale_pages
from adapters.backends.sdpa_gather import (SdpaGatherAdapter, dequantise, mask_kind, plan_sequences, window_keys,
                                           window_mask)
from adapters.batch import BatchSpec, make_batch
from adapters.features import FEATURES
from adapters.reference import reference_attention
from harness.measure.gate import TOLERANCES, run_gate
from tests.test_flex_paged import _attention_through_block_mask, _physical_batched_mask


def _t(value):
    return torch.tensor(value)


def _spec(text, dtype="fp32", page_size=8, heads=(4, 2), head_dim=16, **features):
    return BatchSpec.from_grammar(text, page_size=page_size, num_q_heads=heads[0], num_kv_heads=heads[1],
                                  head_dim=head_dim, dtype=dtype, seed=5, **features)


def _gate(adapter, spec):
    batch = make_batch(spec)
    return run_gate(adapter, batch, reference_attention(batch, with_lse=True))[0]


# ------------------------------------------------------------------------------------ what each row declares

@pytest.mark.parametrize("adapter, runs", [
    (FlexPagedAdapter, {"sliding_window", "softcap", "fp8_kv"}),
    (SdpaGatherAdapter, {"sliding_window", "fp8_kv"}),
    (PallasPagedDecodeAdapter, {"softcap", "fp8_kv"}),
])
def test_each_row_declares_what_it_runs_and_why_not_the_rest(adapter, runs):
    assert adapter.model_features == runs
    assert set(adapter.feature_reasons) == set(FEATURES) - runs  # a reason for every declined feature
    assert adapter.describe()["model_features"] == sorted(runs)


# ------------------------------------------------------------------------------------------------ Flex

def test_flex_logical_window_mask_by_hand():
    # one row, kv 7, 2 queries at positions 5 and 6, window of 3 keys: p - 3 < j <= p
    mask = make_logical_mask_mod(_t([7]), 2, causal=True, window=3)

    def seen(q):
        return [j for j in range(-1, 9) if bool(mask(_t(0), _t(0), _t(q), _t(j)))]

    assert seen(0) == [3, 4, 5] and seen(1) == [4, 5, 6]
    one_key = make_logical_mask_mod(_t([7]), 2, causal=True, window=1)
    assert [j for j in range(8) if bool(one_key(_t(0), _t(0), _t(1), _t(j)))] == [6]
    with pytest.raises(ValueError):
        make_logical_mask_mod(_t([7]), 2, causal=False, window=3)


def test_flex_packed_window_mask_by_hand():
    # q_lens (2, 3), kv_lens (5, 4), page 2: seq 0 owns pages [3, 1, 6], seq 1 pages [2, 5] (as test_flex_paged's TINY)
    spec = BatchSpec(q_lens=(2, 3), kv_lens=(5, 4), page_size=2, num_q_heads=2, num_kv_heads=1, head_dim=8,
                     dtype="fp32", sliding_window=2)
    table = torch.tensor([[3, 1, 6], [2, 5, 0]], dtype=torch.int32)
    mask = make_mask_mod(document_ids(spec.q_lens), query_positions(spec.q_lens, spec.kv_lens),
                         physical_to_logical(table, spec.pages_per_seq, spec.num_pages), _t(spec.kv_lens),
                         spec.page_size, causal=True, window=2)

    def seen(row):
        slots = [s for s in range(spec.num_pages * spec.page_size) if bool(mask(_t(0), _t(0), _t(row), _t(s)))]
        return slots

    assert seen(1) == [3, 12]   # seq 0 at position 4: keys 3 (page 1, slot 1) and 4 (page 6, slot 0)
    assert seen(0) == [2, 3]    # position 3: keys 2, 3 (page 1)
    assert seen(4) == [10, 11]  # seq 1 at position 3: keys 2, 3 (page 5)
    assert seen(2) == [4, 5]    # position 1: keys 0, 1 (page 2)


def test_flex_page_split_by_hand():
    # rows at positions 10..13 of kv 14, page 4, window 3: keys 8..13 visible -> pages 2, 3; page 2's key 8 is
    # outside row 13's window and page 3 reaches past kv: both partial
    assert _page_split(10, 13, 14, 4, True, True, window=3) == ([2, 3], [])
    # rows 20..21 of kv 22, page 2, window 6: keys 15..21 -> pages 7..10; pages 8, 9 (keys 16-19) seen by both rows
    assert _page_split(20, 21, 22, 2, True, True, window=6) == ([7, 10], [8, 9])
    # the same rows sharing their block with another sequence: nothing is full
    assert _page_split(20, 21, 22, 2, True, False, window=6) == ([7, 8, 9, 10], [])
    # no window: as before (pages 0..visited, the first full)
    assert _page_split(20, 21, 22, 2, True, True) == ([10], list(range(10)))
    # a window wider than the context changes nothing
    assert _page_split(20, 21, 22, 2, True, True, window=100) == _page_split(20, 21, 22, 2, True, True)


def test_flex_logical_block_mask_leaves_out_pages_before_the_window():
    # 2 sequences of 3 queries, kv 13 and 6, page 2, window 4, query blocks of 2 rows
    spec = BatchSpec(q_lens=(3, 3), kv_lens=(13, 6), page_size=2, num_q_heads=2, num_kv_heads=1, head_dim=8,
                     dtype="fp32", sliding_window=4)
    indices = logical_block_mask_indices(spec, q_block=2)
    # row 0, block 0: positions 10, 11 see keys 7..11 -> pages 3..5; page 4 (keys 8-9) inside both windows
    assert indices.lists(0, row=0) == ([3, 5], [4])
    # block 1: position 12 sees keys 9..12 -> pages 4..6; page 5 (keys 10-11) full
    assert indices.lists(1, row=0) == ([4, 6], [5])
    # row 1, block 0: positions 3, 4 see keys 0..4 -> pages 0..2; page 1 (keys 2-3) full
    assert indices.lists(0, row=1) == ([0, 2], [1])


@pytest.mark.parametrize("text, window", [("2q1c13_1q9c5_1q20c0_1q3c30", 5), ("2q1c13_1q9c5_1q20c0_1q3c30", 1),
                                          ("2q1c13_1q9c5_1q20c0_1q3c30", 12)])
def test_flex_packed_block_mask_covers_exactly_the_window(text, window):
    """Every pair the mask_mod allows lies in a listed page, full pages are fully allowed, and every listed
    page holds some allowed pair (pages outside the window are left out)."""
    spec = _spec(text, page_size=4, heads=(2, 1), sliding_window=window)
    batch = make_batch(spec)
    q_block = 8
    indices = paged_block_mask_indices(spec, batch.block_table, q_block=q_block)
    mask = make_mask_mod(document_ids(spec.q_lens), query_positions(spec.q_lens, spec.kv_lens),
                         physical_to_logical(batch.block_table, spec.pages_per_seq, spec.num_pages), batch.kv_lens,
                         spec.page_size, True, window)
    dense = mask(_t(0), _t(0), torch.arange(spec.total_q)[:, None], torch.arange(spec.num_pages * spec.page_size)[None])
    for block in range(math.ceil(spec.total_q / q_block)):
        partial, full = indices.lists(block)
        rows = dense[block * q_block:(block + 1) * q_block].view(-1, spec.num_pages, spec.page_size)
        needed = set(rows.any(dim=(0, 2)).nonzero().flatten().tolist())
        assert needed == set(partial) | set(full)
        assert all(bool(rows[:, page].all()) for page in full)


@pytest.mark.parametrize("text", ["3q1c50", "2q20c40"])
def test_flex_batched_window_block_mask_gives_the_reference(text):
    """The physical block mask of the batched path, read as Flex's kernel reads it (listed pages only, full
    pages unmasked), gives the windowed reference: pages left out are truly outside every window."""
    spec = _spec(text, sliding_window=7)
    batch = make_batch(spec)
    out, lse = _attention_through_block_mask(batched_query_view(batch.q, spec.batch_size),
                                             physical_cache_view(batch.k_cache), physical_cache_view(batch.v_cache),
                                             _physical_batched_mask(batch), spec.scale)
    ref_out, ref_lse = reference_attention(batch, with_lse=True)
    torch.testing.assert_close(packed_output(out), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_lse(lse), ref_lse, rtol=1e-5, atol=1e-5)


def test_flex_score_mod_and_head_scales_by_hand():
    assert make_score_mod() is None
    cap = make_score_mod(softcap=2.0)
    assert math.isclose(float(cap(_t(1.0), _t(0), _t(0), _t(0), _t(0))), 2 * math.tanh(0.5), rel_tol=1e-6)
    assert math.isclose(float(cap(_t(100.0), _t(0), _t(0), _t(0), _t(0))), 2.0, rel_tol=1e-6)  # capped
    per_head = head_scales(_t([0.5, 2.0]), 4, 2)
    assert per_head.tolist() == [0.5, 0.5, 2.0, 2.0]  # query heads 2, 3 read KV head 1
    assert head_scales(_t([0.25]), 4, 2).tolist() == [0.25] * 4
    dequant = make_score_mod(k_scale=per_head)
    assert float(dequant(_t(3.0), _t(0), _t(2), _t(0), _t(0))) == 6.0
    both = make_score_mod(softcap=2.0, k_scale=per_head)  # dequantise first, then cap
    assert math.isclose(float(both(_t(1.0), _t(0), _t(3), _t(0), _t(0))), 2 * math.tanh(1.0), rel_tol=1e-6)


FLEX_VARIANTS = {
    "window-packed": ("2q1c40_1q37c20", dict(sliding_window=6)),
    "window-batched-prefill": ("2q9c30", dict(sliding_window=4)),
    "window-one-key-decode": ("3q1c40", dict(sliding_window=1)),
    "softcap": ("2q1c40_1q37c20", dict(softcap=0.5)),
    "fp8-tensor": ("3q1c40", dict(kv_dtype="fp8")),
    "fp8-head": ("2q1c40_1q37c20", dict(kv_dtype="fp8", kv_scale="head")),
    "window-softcap-fp8-head": ("2q9c30", dict(sliding_window=10, softcap=1.0, kv_dtype="fp8", kv_scale="head")),
}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("name", FLEX_VARIANTS)
def test_flex_eager_runs_each_feature_through_the_gate(name, dtype):
    text, features = FLEX_VARIANTS[name]
    spec = _spec(text, dtype=dtype, **features)
    result = _gate(FlexPagedAdapter(compile=False), spec)
    assert result.verdict == "ok", result.reason
    assert result.lse_max_abs is not None and result.lse_max_abs <= TOLERANCES[dtype].lse_max_abs
    for feature in spec.features:
        assert feature in result.notes  # how the feature reached flex_attention is recorded


def test_flex_compiled_runs_a_window_and_a_cap_through_its_block_mask():
    """The compiled kernel reads the block mask (eager does not): a packed cell of two query blocks with
    pages left out before the windows and full pages inside them, capped."""
    spec = _spec("1q150c10_2q20c0", page_size=16, sliding_window=40, softcap=1.0)
    result = _gate(FlexPagedAdapter(), spec)
    assert result.verdict == "ok", result.reason
    assert result.notes["compiled"] is True


def test_flex_compiled_on_the_cpu_declines_fp8_in_inductors_words():
    result = _gate(FlexPagedAdapter(), _spec("3q1c40", kv_dtype="fp8"))
    assert result.verdict == "unsupported"
    assert "FlexAttention" in result.reason and "fp8 K/V with fp32 queries" in result.reason
    assert "Mixed query, key, and value dtype is not supported" in result.reason


def test_flex_declines_sinks_before_prepare():
    result = _gate(FlexPagedAdapter(compile=False), _spec("3q1c40", sinks=True, softcap=1.0))
    assert result.verdict == "unsupported"
    assert "flex_attention has no sink argument" in result.reason and "score_mod" in result.reason


# ------------------------------------------------------------------------------------------- gather + SDPA

def test_sdpa_window_keys_and_mask_by_hand():
    # 3 queries at positions 7, 8, 9 of kv 10, window of 3: keys 5..9 gathered
    assert window_keys(3, 10, 3) == 5 and window_keys(3, 10, None) == 0 and window_keys(3, 10, 50) == 0
    assert window_mask(3, 10, 5, 3).tolist() == [[True, True, True, False, False],
                                                 [False, True, True, True, False],
                                                 [False, False, True, True, True]]
    assert mask_kind(3, 10, True, 3) == "window" and mask_kind(1, 10, True, 3) == "none"
    assert window_mask(1, 10, 7, 3).all()  # a decode query sees exactly the gathered window


def test_sdpa_plan_gathers_from_the_first_visible_page():
    spec = _spec("1q3c7_1q1c9", page_size=4, sliding_window=3)  # kv 10 and 10 (c: context before the queries)
    batch = make_batch(spec)
    assert spec.kv_lens == (10, 10)
    prefill, decode = plan_sequences(batch)
    # prefill: keys 5..9 -> pages 1, 2 of the sequence, starting at slot 1 of page 1
    assert prefill.pages.tolist() == batch.block_table[0, 1:3].tolist()
    assert (prefill.key_offset, prefill.kv_len, prefill.mask) == (1, 5, "window")
    # decode at position 9: keys 7..9 -> pages 1, 2 from slot 3, no mask
    assert decode.pages.tolist() == batch.block_table[1, 1:3].tolist()
    assert (decode.key_offset, decode.kv_len, decode.mask) == (3, 3, "none")
    plain = plan_sequences(make_batch(spec.replace(sliding_window=None)))[0]
    assert plain.key_offset == 0 and plain.kv_len == 10 and len(plain.pages) == 3


def test_sdpa_dequantises_in_the_gather():
    stored = torch.tensor([[[1.0], [2.0]], [[-0.5], [448.0]]]).to(torch.float8_e4m3fn)  # [S 2, Hkv 2, D 1]
    per_head = dequantise(stored, _t([0.5, 0.25]), torch.float16)
    assert per_head.dtype == torch.float16 and per_head.flatten().tolist() == [0.5, 0.5, -0.25, 112.0]
    assert dequantise(stored, _t([2.0]), torch.float32).flatten().tolist() == [2.0, 4.0, -1.0, 896.0]
    plain = torch.randn(2, 2, 1)
    assert dequantise(plain, None, torch.float32) is plain


SDPA_VARIANTS = {
    "window-mixed": ("2q1c40_1q37c20", dict(sliding_window=6)),
    "window-one-key": ("2q9c30", dict(sliding_window=1)),
    "window-wider-than-context": ("3q1c40", dict(sliding_window=100)),
    "window-prefill-from-zero": ("1q20c0_1q1c3", dict(sliding_window=5)),
    "fp8-tensor": ("2q1c40_1q37c20", dict(kv_dtype="fp8")),
    "fp8-head": ("2q9c30", dict(kv_dtype="fp8", kv_scale="head")),
    "window-fp8-head": ("2q1c40_1q37c20", dict(sliding_window=17, kv_dtype="fp8", kv_scale="head")),
}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("name", SDPA_VARIANTS)
def test_sdpa_runs_each_feature_through_the_gate(name, dtype):
    text, features = SDPA_VARIANTS[name]
    spec = _spec(text, dtype=dtype, **features)
    result = _gate(SdpaGatherAdapter(), spec)
    assert result.verdict == "ok", result.reason
    assert "returns only the output" in result.lse_note
    for feature in spec.features:
        assert feature in result.notes


@pytest.mark.parametrize("features, words", [
    (dict(softcap=1.0), "has no score hook"),
    (dict(sinks=True), "has no sink argument"),
])
def test_sdpa_declines_softcap_and_sinks_in_torchs_terms(features, words):
    result = _gate(SdpaGatherAdapter(), _spec("2q1c40_1q37c20", **features))
    assert result.verdict == "unsupported"
    assert "scaled_dot_product_attention" in result.reason and words in result.reason


# ------------------------------------------------------------------------------------------------ Pallas

def test_pallas_scale_pages_and_arguments_by_hand():
    pages = scale_pages(_t([0.5, 2.0]), 2, 3, 4)
    assert pages.shape == (2, 3, 4) and pages.is_contiguous() and pages.dtype == torch.float32
    assert pages[0].unique().tolist() == [0.5] and pages[1].unique().tolist() == [2.0]
    assert scale_pages(_t([0.25]), 2, 3, 4).unique().tolist() == [0.25]
    with pytest.raises(ValueError):
        scale_pages(_t([1.0, 2.0, 3.0]), 2, 3, 4)
    assert feature_arguments(_spec("3q1c40", softcap=30)) == {"attn_logits_soft_cap": 30.0}
    assert feature_arguments(_spec("3q1c40", kv_dtype="fp8")) == {}


@pytest.mark.parametrize("features", [dict(softcap=0.5), dict(kv_dtype="fp8", kv_scale="head"),
                                      dict(softcap=1.0, kv_dtype="fp8")],
                         ids=["softcap", "fp8-head", "softcap-fp8-tensor"])
def test_pallas_kernel_in_the_interpreter_runs_each_feature(features):
    pytest.importorskip("jax")
    adapter = PallasPagedDecodeAdapter()
    ok, why = adapter.available(torch.device("cpu"))
    assert ok, why
    spec = _spec("2q1c7_1q1c33", dtype="fp16", page_size=4, heads=(8, 2), **features)
    result = _gate(adapter, spec)
    assert result.verdict == "ok", result.reason
    assert ("features" in result.notes) == ("softcap" in features)
    assert ("fp8_kv" in result.notes) == ("kv_dtype" in features)


@pytest.mark.parametrize("features, words", [
    (dict(sliding_window=4), "masks keys by `lengths` only"),
    (dict(sinks=True), "has no sink argument"),
])
def test_pallas_declines_window_and_sinks_in_its_terms(features, words):
    result = _gate(PallasPagedDecodeAdapter(), _spec("3q1c40", **features))
    assert result.verdict == "unsupported"
    assert "paged_attention" in result.reason and words in result.reason


def test_pallas_workers_keep_compiled_programs_in_a_disk_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    """The compile warm-up only helps the timed sweep if JAX keeps what it compiled: its persistent cache in
    paged-bench's cache folder, every program kept; a folder the user set is left to JAX as set."""
    from adapters.backends import pallas_decode

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    env = pallas_decode.PallasPagedDecodeAdapter().worker_env("cuda")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "paged-bench" / "jax")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/my/cache")
    assert "JAX_COMPILATION_CACHE_DIR" not in pallas_decode.PallasPagedDecodeAdapter().worker_env("cuda")
    assert pallas_decode.PallasPagedDecodeAdapter.disk_compile_cache
