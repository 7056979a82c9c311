"""CPU checks of the FlexAttention paged adapter: the page maps, the packed path's block mask and
mask_mod by hand, the batched path's logical block mask and its conversion by
``PagedAttention.convert_logical_block_mask``, attention computed from each physical block mask as
Flex's kernel reads it (listed pages only, full pages unmasked) against the fp32 reference, and the
adapter through the gate (eager, and compiled for one cell of each path)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from adapters.batch import BatchSpec, make_batch
from adapters.backends.flex_paged import (PAGE_SIZE_ONE, PATH_BATCHED, PATH_PACKED, Q_BLOCK, FlexPagedAdapter,
                                          _smaller_tile,
                                          batched_query_view, document_ids, dynamo_settings, flex_path,
                                          logical_block_mask_indices, logical_page_table, make_logical_mask_mod,
                                          make_mask_mod, packed_lse, packed_output, paged_block_mask_indices,
                                          physical_cache_view, physical_to_logical, query_positions)
from adapters.reference import reference_attention
from harness.measure.gate import run_gate


def test_flex_documents_positions_and_page_maps_by_hand():
    assert document_ids((2, 3)).tolist() == [0, 0, 1, 1, 1]
    assert query_positions((2, 3), (5, 4)).tolist() == [3, 4, 1, 2, 3]
    block_table = torch.tensor([[3, 1, 0], [2, 5, 4]], dtype=torch.int32)
    p2l = physical_to_logical(block_table, (2, 3), 6)
    assert p2l.tolist() == [[-1, 1, -1, 0, -1, -1], [-1, -1, 0, -1, 2, 1]]
    assert logical_page_table(block_table, (2, 3), 6).tolist() == [[3, 1, -1, -1, -1, -1], [2, 5, 4, -1, -1, -1]]


# q_lens (2, 3), kv_lens (5, 4), page 2: seq 0 owns pages [3, 1, 6], seq 1 pages [2, 5]; T = 5 rows:
# rows 0-1 are seq 0 at positions 3, 4; rows 2-4 are seq 1 at positions 1, 2, 3. Query blocks of 4 rows.
TINY = BatchSpec(q_lens=(2, 3), kv_lens=(5, 4), page_size=2, num_q_heads=2, num_kv_heads=1, head_dim=8, dtype="fp32")
TINY_TABLE = torch.tensor([[3, 1, 6], [2, 5, 0]], dtype=torch.int32)


def test_flex_block_mask_by_hand_causal():
    indices = paged_block_mask_indices(TINY, TINY_TABLE, q_block=4)
    assert indices.kv_num_blocks.shape == (1, 1, 2)
    assert indices.kv_indices.shape == (1, 1, 2, TINY.num_pages)
    # block 0 (rows 0-3) holds two sequences: every page partial; seq 1 rows 2-3 (positions 1-2) see pages 0-1
    assert indices.lists(0) == ([3, 1, 6, 2, 5], [])
    # block 1 (row 4, seq 1 at position 3) is one sequence and sees keys 0..3 = both pages entirely
    assert indices.lists(1) == ([], [2, 5])


def test_flex_block_mask_by_hand_non_causal():
    indices = paged_block_mask_indices(TINY.replace(causal=False), TINY_TABLE, q_block=4)
    assert indices.lists(0) == ([3, 1, 6, 2, 5], [])
    assert indices.lists(1) == ([], [2, 5])
    # a longer sequence: 4 queries after 3 tokens of context (kv 7, pages [4, 2, 5, 1]); blocks of 2 rows
    spec = BatchSpec(q_lens=(4,), kv_lens=(7,), page_size=2, num_q_heads=1, num_kv_heads=1, head_dim=8, dtype="fp32")
    table = torch.tensor([[4, 2, 5, 1]], dtype=torch.int32)
    causal = paged_block_mask_indices(spec, table, q_block=2)
    # rows 0-1 at positions 3-4: pages 0-1 (keys 0-3) visible to both -> full; page 2 (keys 4-5) partial
    assert causal.lists(0) == ([5], [4, 2])
    # rows 2-3 at positions 5-6: keys 0-5 visible to both -> pages 0-2 full; page 3 (key 6, 7 > kv) partial
    assert causal.lists(1) == ([1], [4, 2, 5])
    non_causal = paged_block_mask_indices(spec.replace(causal=False), table, q_block=2)
    assert non_causal.lists(0) == ([1], [4, 2, 5])  # last page only half inside kv 7


def test_flex_mask_mod_by_hand():
    p2l = physical_to_logical(TINY_TABLE, TINY.pages_per_seq, TINY.num_pages)
    mask = make_mask_mod(document_ids(TINY.q_lens), query_positions(TINY.q_lens, TINY.kv_lens), p2l,
                         torch.tensor(TINY.kv_lens), TINY.page_size, causal=True)

    def allowed(row: int, slot: int) -> bool:
        return bool(mask(torch.tensor(0), torch.tensor(0), torch.tensor(row), torch.tensor(slot)))

    assert allowed(4, 10) and allowed(4, 11)           # seq 1 page 5 = logical keys 2, 3 <= position 3
    assert not allowed(2, 11)                          # row 2 (position 1) may not see key 3
    assert not allowed(4, 12)                          # page 6 belongs to seq 0
    assert not allowed(0, 12) and allowed(1, 12)       # key 4 of seq 0: position 3 no, position 4 yes
    assert not allowed(1, 13)                          # key 5 of seq 0 is past kv_len 5
    assert not allowed(0, 0)                           # the null page belongs to nobody


@pytest.mark.parametrize("causal", [True, False])
def test_flex_block_mask_covers_exactly_the_mask(causal):
    """Every pair the mask_mod allows lies in a listed page of its query block; full pages are fully allowed."""
    spec = BatchSpec.from_grammar("2q1c13_1q9c5_1q20c0_1q3c30", page_size=4, num_q_heads=2, num_kv_heads=1,
                                  head_dim=8, dtype="fp32", causal=causal)
    batch = make_batch(spec)
    q_block = 8
    indices = paged_block_mask_indices(spec, batch.block_table, q_block=q_block)
    p2l = physical_to_logical(batch.block_table, spec.pages_per_seq, spec.num_pages)
    mask = make_mask_mod(document_ids(spec.q_lens), query_positions(spec.q_lens, spec.kv_lens), p2l,
                         batch.kv_lens, spec.page_size, causal)
    rows = torch.arange(spec.total_q)[:, None]
    slots = torch.arange(spec.num_pages * spec.page_size)[None, :]
    dense = mask(torch.tensor(0), torch.tensor(0), rows, slots)  # [T, N]
    for block in range((spec.total_q + q_block - 1) // q_block):
        partial, full = indices.lists(block)
        assert not set(partial) & set(full)
        block_rows = dense[block * q_block:(block + 1) * q_block].view(-1, spec.num_pages, spec.page_size)
        needed = set(block_rows.any(dim=(0, 2)).nonzero().flatten().tolist())
        assert needed <= set(partial) | set(full), f"block {block} misses pages {needed - set(partial) - set(full)}"
        for page in full:
            assert bool(block_rows[:, page].all()), f"block {block}: page {page} listed full but partly masked"


def test_flex_shared_memory_ladder_keeps_the_tile_dividing_the_page():
    def ladder(page, options):
        steps = []
        while (step := _smaller_tile(options, page)) is not None:
            options.update(step)
            steps.append(step)
        return steps

    assert ladder(64, {"FORCE_USE_FLEX_ATTENTION": True}) == [{"num_stages": 2}, {"BLOCK_N": 32}, {"BLOCK_N": 16}]
    assert ladder(16, {"BLOCK_N": 16}) == [{"num_stages": 2}]
    assert ladder(16, {"BLOCK_N": 16, "num_stages": 1}) == []


# ------------------------------------------------------------------------------------------ batched path

def test_flex_path_choice():
    assert flex_path(BatchSpec.from_grammar("4q1c100")) == PATH_BATCHED          # decode
    assert flex_path(BatchSpec.from_grammar("2q64c512")) == PATH_BATCHED         # uniform prefill
    assert flex_path(BatchSpec.from_grammar("2q1c100_2q37c60")) == PATH_PACKED   # mixed
    with pytest.raises(ValueError):
        logical_block_mask_indices(BatchSpec.from_grammar("2q1c100_2q37c60"))


def test_flex_logical_block_mask_by_hand():
    # 2 sequences of 3 queries, kv 7 and 4 (context 4 and 1), page 2, query blocks of 2 rows
    spec = BatchSpec(q_lens=(3, 3), kv_lens=(7, 4), page_size=2, num_q_heads=2, num_kv_heads=1, head_dim=8,
                     dtype="fp32")
    causal = logical_block_mask_indices(spec, q_block=2)
    assert causal.kv_num_blocks.shape == (2, 1, 2) and causal.kv_indices.shape == (2, 1, 2, spec.max_pages)
    # row 0: queries at positions 4, 5 then 6. Block 0 sees keys 0..5: pages 0-1 full (keys 0-3 <= 4), page 2 partial
    assert causal.lists(0, row=0) == ([2], [0, 1])
    # block 1 (position 6) sees keys 0..6: pages 0-2 full, page 3 (key 6 of 7, slot 7 past kv) partial
    assert causal.lists(1, row=0) == ([3], [0, 1, 2])
    # row 1: positions 1, 2 then 3 of kv 4. Block 0 sees keys 0..2: page 0 full (keys 0-1 <= 1), page 1 partial
    assert causal.lists(0, row=1) == ([1], [0])
    assert causal.lists(1, row=1) == ([], [0, 1])
    non_causal = logical_block_mask_indices(spec.replace(causal=False), q_block=2)
    assert non_causal.lists(0, row=0) == ([3], [0, 1, 2]) and non_causal.lists(0, row=1) == ([], [0, 1])


def test_flex_logical_mask_mod_by_hand():
    mask = make_logical_mask_mod(torch.tensor([7, 4]), 3, causal=True)

    def allowed(b, q, kv):
        return bool(mask(torch.tensor(b), torch.tensor(0), torch.tensor(q), torch.tensor(kv)))

    assert allowed(0, 0, 4) and not allowed(0, 0, 5) and allowed(0, 2, 6) and not allowed(0, 2, 7)
    assert allowed(1, 0, 1) and not allowed(1, 0, 2) and allowed(1, 2, 3) and not allowed(1, 2, 4)
    assert not allowed(0, 2, -1)                      # slots of pages a row does not own
    open_mask = make_logical_mask_mod(torch.tensor([7, 4]), 3, causal=False)
    assert bool(open_mask(torch.tensor(1), torch.tensor(0), torch.tensor(0), torch.tensor(3)))
    assert not bool(open_mask(torch.tensor(1), torch.tensor(0), torch.tensor(0), torch.tensor(4)))


def _physical_batched_mask(batch):
    """The batched path's physical block mask, built as the adapter builds it."""
    adapter = FlexPagedAdapter(compile=False)
    return adapter._batched_layout(batch).block_mask


def _attention_through_block_mask(query, key, value, block_mask, scale):
    """Attention as Flex's compiled kernel reads a block mask: per query block only the listed KV blocks,
    "full" ones without the mask_mod, the others through it. query [R, Hq, L, D]; key/value [1 or R, Hkv, S, D]."""
    rows, heads, length, dim = query.shape
    group = heads // key.shape[1]
    q_block, kv_block = block_mask.BLOCK_SIZE
    kv_num, kv_idx = block_mask.kv_num_blocks, block_mask.kv_indices
    full_num, full_idx = block_mask.full_kv_num_blocks, block_mask.full_kv_indices
    out = torch.zeros(rows, heads, length, dim)
    lse = torch.zeros(rows, heads, length)
    slots = key.shape[2]
    for r in range(rows):
        k = key[min(r, key.shape[0] - 1)].float().repeat_interleave(group, 0)
        v = value[min(r, value.shape[0] - 1)].float().repeat_interleave(group, 0)
        for block in range(math.ceil(length / q_block)):
            q_rows = torch.arange(block * q_block, min((block + 1) * q_block, length))
            visible = torch.zeros(len(q_rows), slots, dtype=torch.bool)
            for page in kv_idx[r, 0, block, : int(kv_num[r, 0, block])].tolist():
                cols = torch.arange(page * kv_block, (page + 1) * kv_block)
                allowed = block_mask.mask_mod(torch.tensor(r), torch.tensor(0), q_rows[:, None], cols[None, :])
                visible[:, cols] |= allowed
            if full_num is not None:
                for page in full_idx[r, 0, block, : int(full_num[r, 0, block])].tolist():
                    visible[:, page * kv_block:(page + 1) * kv_block] = True
            scores = torch.einsum("hld,hsd->hls", query[r][:, q_rows].float(), k) * scale
            scores = scores.masked_fill(~visible[None], float("-inf"))
            lse[r][:, q_rows] = torch.logsumexp(scores, -1)
            out[r][:, q_rows] = torch.einsum("hls,hsd->hld", torch.softmax(scores, -1), v)
    return out, lse


BATCHED_CASES = [
    dict(text="3q1c50", page_size=16, causal=True),
    dict(text="4q1c7", page_size=4, causal=True),
    dict(text="2q20c40", page_size=8, causal=True),
    dict(text="2q20c40", page_size=8, causal=False),
    dict(text="3q1c50", page_size=1, causal=True),
]


@pytest.mark.parametrize("case", BATCHED_CASES, ids=lambda c: f"{c['text']}-p{c['page_size']}-{c['causal']}")
def test_flex_batched_tables_give_the_reference(case):
    """convert_logical_block_mask(logical block mask) read as Flex's kernel reads it == the fp32 reference."""
    spec = BatchSpec.from_grammar(case["text"], page_size=case["page_size"], num_q_heads=4, num_kv_heads=2,
                                  head_dim=8, dtype="fp32", causal=case["causal"])
    batch = make_batch(spec)
    block_mask = _physical_batched_mask(batch)
    assert tuple(block_mask.kv_indices.shape[:3]) == (spec.batch_size, 1, math.ceil(spec.q_lens[0] / Q_BLOCK))
    assert block_mask.seq_lengths == (spec.q_lens[0], spec.num_pages * spec.page_size)
    out, lse = _attention_through_block_mask(batched_query_view(batch.q, spec.batch_size),
                                             physical_cache_view(batch.k_cache), physical_cache_view(batch.v_cache),
                                             block_mask, spec.scale)
    ref_out, ref_lse = reference_attention(batch, with_lse=True)
    torch.testing.assert_close(packed_output(out), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_lse(lse), ref_lse, rtol=1e-5, atol=1e-5)


def test_flex_batched_physical_pages_are_the_rows_own():
    spec = BatchSpec.from_grammar("3q9c23", page_size=4, num_q_heads=2, num_kv_heads=1, head_dim=8, dtype="fp32")
    batch = make_batch(spec)
    block_mask = _physical_batched_mask(batch)
    for row in range(spec.batch_size):
        owned = set(batch.block_table[row, : spec.pages_per_seq[row]].tolist())
        listed = set(block_mask.kv_indices[row, 0, 0, : int(block_mask.kv_num_blocks[row, 0, 0])].tolist())
        listed |= set(block_mask.full_kv_indices[row, 0, 0, : int(block_mask.full_kv_num_blocks[row, 0, 0])].tolist())
        assert listed == owned                      # 9 queries at the end of 32 keys see all 8 pages


def test_flex_views_cost_nothing():
    q = torch.randn(6, 4, 8)
    view = batched_query_view(q, 2)
    assert view.shape == (2, 4, 3, 8) and view.data_ptr() == q.data_ptr()
    assert torch.equal(view[1, 2, 0], q[3, 2])
    cache = torch.randn(5, 4, 2, 8)
    flat = physical_cache_view(cache)
    assert flat.shape == (1, 2, 20, 8) and flat.data_ptr() == cache.data_ptr()
    assert torch.equal(flat[0, 1, 4 * 3 + 2], cache[3, 2, 1])
    out = torch.randn(2, 4, 3, 8)
    assert torch.equal(packed_output(out)[4], out[1, :, 1])
    assert packed_output(view)._base is not None    # Flex's output in the query's memory order: a view
    single = torch.randn(1, 4, 6, 8)
    assert packed_output(single)._base is not None and torch.equal(packed_output(single)[5], single[0, :, 5])
    lse = torch.randn(2, 4, 3)
    assert torch.equal(packed_lse(lse)[4], lse[1, :, 1])


def test_flex_dynamo_settings_are_scoped():
    settings = dynamo_settings()
    name = next(n for n in ("recompile_limit", "cache_size_limit") if n in settings)
    before = getattr(torch._dynamo.config, name)
    with torch._dynamo.config.patch(**settings):
        assert getattr(torch._dynamo.config, name) >= 512
    assert getattr(torch._dynamo.config, name) == before


# ------------------------------------------------------------------------------------------ through the gate

GATE_CASES = [
    dict(text="2q1c100_2q37c60", page_size=16, heads=(8, 2), causal=True),
    dict(text="3q1c50", page_size=2, heads=(4, 4), causal=True),
    dict(text="1q150c10_2q20c0", page_size=64, heads=(8, 1), causal=True),
    dict(text="2q9c30_1q1c7", page_size=8, heads=(8, 2), causal=False),
    dict(text="4q1c40", page_size=8, heads=(8, 2), causal=True),
    dict(text="2q9c30", page_size=4, heads=(4, 2), causal=True),
    dict(text="2q9c30", page_size=4, heads=(4, 2), causal=False),
]


def _gate(adapter, case, dtype="fp32", head_dim=32):
    spec = BatchSpec.from_grammar(case["text"], page_size=case["page_size"], num_q_heads=case["heads"][0],
                                  num_kv_heads=case["heads"][1], head_dim=head_dim, dtype=dtype, causal=case["causal"])
    batch = make_batch(spec)
    result, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    return result, spec


@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: f"{c['text']}-p{c['page_size']}-{c['causal']}")
def test_flex_eager_passes_the_gate_on_cpu(case):
    result, spec = _gate(FlexPagedAdapter(compile=False), case)
    assert result.verdict == "ok", result.reason
    assert result.notes["compiled"] is False
    assert result.notes["flex_path"] == flex_path(spec)
    assert result.lse_max_abs is not None and result.lse_max_abs < 1e-4  # Flex's LSE is natural log


def test_flex_compiled_passes_the_gate_on_cpu():
    """The compiled kernels read the block masks (eager ignores them): a packed cell with two query
    blocks, full and partial pages, then a batched decode cell on the same adapter."""
    adapter = FlexPagedAdapter()
    result, _ = _gate(adapter, dict(text="1q150c10_2q20c0", page_size=16, heads=(4, 2), causal=True), head_dim=16)
    assert result.verdict == "ok", result.reason
    assert result.notes["compiled"] is True and result.notes["setup_s"] > 0
    assert result.notes["flex_path"] == PATH_PACKED
    result, _ = _gate(adapter, dict(text="3q1c40", page_size=16, heads=(4, 2), causal=True), head_dim=16)
    assert result.verdict == "ok", result.reason
    assert result.notes["flex_path"] == PATH_BATCHED and result.notes["output_copy"] is False
    if result.lse_max_abs is None:  # inductor's CPU lowering returns no LSE; it says so
        assert "log-sum-exp" in result.lse_note
    adapter.close()
    assert adapter._compiled is None


def test_flex_convert_logical_block_mask_signature_is_handled():
    from torch.nn.attention.experimental._paged_attention import PagedAttention

    parameters = inspect.signature(PagedAttention.convert_logical_block_mask).parameters
    assert "batch_idx" in parameters  # the adapter passes it positionally, kv_len only where it exists


@pytest.mark.parametrize("grammar", ["3q1c50", "2q1c100_2q37c60"])
def test_page_size_one_is_declined_with_flexs_reason(grammar):
    """Page size 1 (a KV block of one key: BLOCK_N = 1) is declined before anything is built, naming torch's
    FlexAttention and what fails; the gate records it as unsupported, never as an error or wrong."""
    adapter = FlexPagedAdapter(compile=False)
    spec = BatchSpec.from_grammar(grammar, page_size=1, num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="bf16")
    supported, why = adapter.supports(spec)
    assert not supported and why == PAGE_SIZE_ONE
    assert "FlexAttention" in why and "page size 1" in why and "BLOCK_N = 1" in why
    result, _ = _gate(adapter, dict(text=grammar, page_size=1, heads=(4, 2), causal=True), dtype="bf16", head_dim=16)
    assert (result.verdict, result.reason) == ("unsupported", PAGE_SIZE_ONE)
    assert adapter.supports(BatchSpec.from_grammar(grammar, page_size=2, num_q_heads=4, num_kv_heads=2,
                                                   head_dim=16, dtype="bf16"))[0]
