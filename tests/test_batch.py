"""The canonical batch: grammar, page assignment, zeroed slots, reproducibility, layout by hand."""

import pytest
import torch

from adapters.batch import NULL_PAGE, BatchSpec, LengthGroup, format_grammar, make_batch, parse_grammar, resolve_lengths


def test_grammar_parses_counts_lengths_and_ranges():
    groups = parse_grammar("8q1c3000_8q9-2000c0-7k")
    assert groups == [LengthGroup(8, (1, 1), (3000, 3000)), LengthGroup(8, (9, 2000), (0, 7168))]
    assert format_grammar(groups) == "8q1c3000_8q9-2000c0-7k"


@pytest.mark.parametrize("text", ["8q1", "q1c2", "0q1c2", "2q0c5", "2q9-3c0", "2x1c2"])
def test_grammar_rejects_malformed_groups_by_name(text):
    with pytest.raises(ValueError, match="batch string"):
        parse_grammar(text)


def test_resolved_lengths_are_reproducible_and_within_ranges():
    q_lens, kv_lens = resolve_lengths("3q1c4k_5q9-20c0-7", seed=3)
    assert q_lens[:3] == (1, 1, 1) and kv_lens[:3] == (4097, 4097, 4097)
    assert all(9 <= q <= 20 and q <= kv <= q + 7 for q, kv in zip(q_lens[3:], kv_lens[3:]))
    assert resolve_lengths("3q1c4k_5q9-20c0-7", seed=3) == (q_lens, kv_lens)
    assert resolve_lengths("3q1c4k_5q9-20c0-7", seed=4) != (q_lens, kv_lens)


def test_spec_derived_sizes_by_hand():
    spec = BatchSpec(q_lens=(1, 5), kv_lens=(7, 16), page_size=4, num_q_heads=8, num_kv_heads=2, head_dim=16)
    assert spec.pages_per_seq == (2, 4) and spec.max_pages == 4
    assert spec.num_pages == 1 + 6 + 2  # null page + owned + ceil(25% spare)
    assert spec.total_q == 6 and spec.group_size == 4 and spec.kind == "mixed"
    assert BatchSpec(q_lens=(1, 1), kv_lens=(3, 9)).kind == "decode"
    assert BatchSpec(q_lens=(2,), kv_lens=(2,)).kind == "prefill"


def small_batch(**fields):
    spec = BatchSpec.from_grammar("1q1c6_1q5c3_1q3c0", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=8,
                                  dtype="fp32", seed=11, **fields)
    return make_batch(spec, "cpu")


def test_block_table_owns_distinct_pages_and_pads_with_the_null_page():
    batch = small_batch()
    spec = batch.spec
    owned = [batch.block_table[b, :n].tolist() for b, n in enumerate(spec.pages_per_seq)]
    flat = [page for pages in owned for page in pages]
    assert len(flat) == len(set(flat)) and NULL_PAGE not in flat
    assert all(0 < page < spec.num_pages for page in flat)
    for b, n in enumerate(spec.pages_per_seq):
        assert batch.block_table[b, n:].eq(NULL_PAGE).all()
    assert batch.cu_seqlens_q.tolist() == [0, 1, 6, 9]
    assert batch.kv_lens.tolist() == [7, 8, 3]
    assert batch.block_table.dtype == torch.int32 and batch.cu_seqlens_q.dtype == torch.int32


def test_unowned_slots_are_zero_and_owned_ones_random():
    batch = small_batch()
    spec = batch.spec
    used = torch.zeros(spec.num_pages, spec.page_size, dtype=torch.bool)
    for b, kv_len in enumerate(spec.kv_lens):
        for token in range(kv_len):
            used[batch.block_table[b, token // spec.page_size], token % spec.page_size] = True
    for cache in (batch.k_cache, batch.v_cache):
        assert cache[~used].eq(0).all()
        assert cache[used].abs().sum(-1).gt(0).all()
    assert batch.k_cache[NULL_PAGE].eq(0).all()


def test_same_seed_same_tensors_other_seed_other_tensors():
    first, second = small_batch(), small_batch()
    for name in ("q", "k_cache", "v_cache", "block_table"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    other = make_batch(first.spec.replace(seed=12), "cpu")
    assert not torch.equal(first.q, other.q)


def test_token_position_maps_to_page_and_offset_by_hand():
    """Token 5 of sequence 1 (page size 4) lives in its second page (5 // 4 = 1), slot 1 (5 % 4)."""
    from adapters.reference import gather_sequence_kv

    batch = small_batch()
    keys, values = gather_sequence_kv(batch, 1)
    page = int(batch.block_table[1, 1])
    assert torch.equal(keys[5], batch.k_cache[page, 1])
    assert torch.equal(values[5], batch.v_cache[page, 1])
    assert keys.shape == (8, 2, 8)


# ---------------------------------------------------------------------------------------------- distributions

def test_grammar_distributions_parse_format_and_round_trip():
    from adapters.batch import Distribution

    text = "64q1c~lognormal(median=2k,sigma=1,max=32k)_2q2kc0-4k_4q~exponential(mean=4)c8k"
    groups = parse_grammar(text)
    assert groups[0].context == Distribution("lognormal", (("median", 2048.0), ("sigma", 1.0), ("max", 32768.0)))
    assert groups[2].q_len == Distribution("exponential", (("mean", 4.0),))
    assert format_grammar(groups) == text
    assert format_grammar(parse_grammar("8q1c~normal(mean=4096, sd=1.5k)")) == "8q1c~normal(mean=4k,sd=1536)"


def test_distribution_draws_are_seeded_clipped_and_leave_old_strings_alone():
    text = "200q1c~lognormal(median=2k,sigma=1,min=64,max=8k)_50q~exponential(mean=3)c16k"
    q_lens, kv_lens = resolve_lengths(text, seed=7)
    contexts = [kv - q for q, kv in zip(q_lens, kv_lens)]
    assert resolve_lengths(text, seed=7) == (q_lens, kv_lens)
    assert resolve_lengths(text, seed=8) != (q_lens, kv_lens)
    assert all(64 <= c <= 8192 for c in contexts[:200]) and min(contexts[:200]) < 2048 < max(contexts[:200])
    assert 8192 in contexts[:200]  # the tail is clipped, not redrawn
    assert all(q >= 1 for q in q_lens[200:]) and len(set(q_lens[200:])) > 3  # a q_len is never below 1
    # strings without a distribution draw exactly as before (same generator calls)
    assert resolve_lengths("3q1c4k_5q9-20c0-7", seed=3) == (
        (1, 1, 1, 12, 14, 19, 18, 16), (4097, 4097, 4097, 14, 21, 20, 18, 20))


@pytest.mark.parametrize("text,words", [
    ("4q1c~lognormal(median=2k)", "lognormal needs sigma"),
    ("4q1c~zipf(a=1)", "unknown distribution 'zipf'; choose one of lognormal, exponential, normal"),
    ("4q1c~lognormal(median=2k,sigma=0)", "sigma=0 must be positive"),
    ("4q1c~lognormal(median=x,sigma=1)", "median='x' is not a number"),
    ("4q1c~normal(mean=1,sd=1,min=5,max=1)", "max=1 is below min=5"),
    ("4q1c~exponential(mean=3,bogus=1)", "unknown parameter 'bogus'; it takes mean (and optional min, max)"),
    ("4q1c~exponential(mean=3,mean=4)", "given twice"),
    ("4q1c~exponential(mean)", "is not key=value"),
])
def test_bad_distributions_are_named(text, words):
    with pytest.raises(ValueError, match="batch string") as caught:
        parse_grammar(text)
    assert words in str(caught.value)


def test_workload_kinds_spec_decode_is_a_verify_step_on_context():
    from adapters.grammar import classify_workload

    assert classify_workload((1, 1), (5, 9)) == "decode"
    assert classify_workload((4, 4), (4000, 900)) == "spec-decode"
    assert classify_workload((1, 4, 8), (4000, 900, 100)) == "spec-decode"
    assert classify_workload((4,), (4,)) == "prefill"          # no context: a short prefill
    assert classify_workload((17, 4), (4000, 900)) == "prefill"  # past 16 new tokens: prefill chunks
    assert classify_workload((1, 512), (4000, 900)) == "mixed"
    assert BatchSpec(q_lens=(4, 4), kv_lens=(4000, 900)).kind == "prefill"  # the adapters' own kinds stay


def test_dtype_names_and_torch_dtypes_agree():
    from adapters.batch import DTYPE_NAMES, DTYPES
    from harness.cases.sweep import DTYPE_NAMES as SWEEP_DTYPES

    assert tuple(DTYPES) == DTYPE_NAMES == SWEEP_DTYPES
