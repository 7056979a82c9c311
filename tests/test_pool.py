"""Serving-sized page pools: the pool arithmetic (pages or GiB), its validation, batches built on an
explicit pool, and the >2^31-element pool checked on a fake, device-free path: the adapters' own layout
and offset functions fed meta tensors (no memory allocated), and the capability probe's large-pool row."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.batch import GIB, BatchSpec, make_batch, page_assignment, pool_pages_for_gib
from adapters.validation import BatchValidationError, validate_batch
from harness.cases.sweep import SWEEPS, Case
from harness.measure import capability

INT32_MAX = 2**31 - 1


def small(**fields) -> BatchSpec:
    fields = {"page_size": 4, "num_q_heads": 4, "num_kv_heads": 2, "head_dim": 8, "dtype": "fp32", **fields}
    return BatchSpec.from_grammar("1q1c6_1q5c3_1q3c0", seed=11, **fields)


# ---------------------------------------------------------------------------------------------- arithmetic

def test_pool_in_pages_and_in_gib_by_hand():
    # pages per sequence (2, 2, 1) -> 5 owned; default pool 1 + 5 + ceil(5/4) = 8
    assert small().num_pages == 8 and small().owned_pages == 5
    assert small(pool_pages=40).num_pages == 40
    # one page of K and V: 2 caches * 4 tokens * 2 heads * 8 dims * 4 bytes = 512 bytes -> 1 GiB holds 2^21 pages
    assert small(pool_gib=1.0).num_pages == GIB // 512 == 2**21
    assert small(pool_gib=1.0).cache_bytes() == GIB
    assert pool_pages_for_gib(16, page_size=16, num_kv_heads=8, head_dim=128, elem_bytes=2) == 16 * GIB // (2 * 16 * 8 * 128 * 2)
    # the same GiB hold twice the pages in a 2-byte dtype
    assert small(pool_gib=1.0, dtype="bf16").num_pages == 2 * small(pool_gib=1.0).num_pages
    # a fraction of a page is not a page
    assert pool_pages_for_gib(1000 / GIB, page_size=4, num_kv_heads=2, head_dim=8, elem_bytes=4) == 1


def test_cache_elements_cross_2_to_the_31():
    spec = BatchSpec.from_grammar("4q1c64", page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=128,
                                  pool_gib=16.0)
    assert spec.cache_elements == spec.num_pages * 16 * 2 * 128 == 2**32
    assert spec.cache_bytes() == 16 * GIB
    assert BatchSpec.from_grammar("4q1c64").cache_elements < INT32_MAX


@pytest.mark.parametrize("fields,field,words", [
    ({"pool_pages": 5}, "pool_pages", "5: too small for the batch, which needs 6 pages"),
    ({"pool_pages": 1}, "pool_pages", "the null page and its 5 pages of 4 tokens"),
    ({"pool_gib": 2000 / GIB}, "pool_gib", "holds 3 pages of 512 bytes (K and V), too few for the batch, which needs 6"),
    ({"pool_gib": -1.0}, "pool_gib", "not a positive number"),
    ({"pool_gib": float("nan")}, "pool_gib", "not a positive number"),
    ({"pool_pages": 100, "pool_gib": 1.0}, "pool_pages", "not both"),
    ({"pool_pages": 10.5}, "pool_pages", "not an integer"),
])
def test_a_pool_too_small_or_malformed_is_refused_by_name(fields, field, words):
    with pytest.raises(BatchValidationError) as caught:
        small(**fields)  # the batch owns 5 pages: 6 with the null page
    assert caught.value.field == field and words in str(caught.value)


def test_the_smallest_pool_is_the_null_page_and_the_owned_pages():
    batch = make_batch(small(pool_pages=6), "cpu")
    validate_batch(batch)
    assert batch.k_cache.shape[0] == 6


# ---------------------------------------------------------------------------------------------- batches

def test_default_pool_is_unchanged_and_an_equal_explicit_pool_gives_the_same_tensors():
    default, explicit = make_batch(small(), "cpu"), make_batch(small(pool_pages=8), "cpu")
    for name in ("q", "k_cache", "v_cache", "block_table", "cu_seqlens_q", "kv_lens"):
        assert torch.equal(getattr(default, name), getattr(explicit, name))


def test_a_large_explicit_pool_scatters_the_pages_over_all_of_it():
    spec = small(pool_pages=4000)
    batch = make_batch(spec, "cpu")
    validate_batch(batch)
    assert batch.k_cache.shape == (4000, 4, 2, 8) and batch.v_cache.shape == (4000, 4, 2, 8)
    owned = [p for b, n in enumerate(spec.pages_per_seq) for p in batch.block_table[b, :n].tolist()]
    assert len(set(owned)) == 5 and all(0 < p < 4000 for p in owned)
    assert max(owned) > 400  # not packed at the bottom of the pool
    used = torch.zeros(4000, dtype=torch.bool)
    used[owned] = True
    assert batch.k_cache[~used].eq(0).all() and batch.v_cache[~used].eq(0).all()


def test_validation_reads_the_pool_from_the_cache_tensors():
    batch = make_batch(small(pool_pages=20), "cpu")
    batch.k_cache = batch.k_cache[:10].clone()
    with pytest.raises(BatchValidationError, match=r"k_cache: shape \(10, 4, 2, 8\), expected \(20, 4, 2, 8\)"):
        validate_batch(batch)


def test_case_pool_fields_reach_the_spec_and_only_show_when_set():
    case = Case(name="x", grammar="4q1c64", page_size=16, pool_gib=2.0)
    assert case.spec().pool_gib == 2.0 and case.spec().num_pages == 2 * GIB // (2 * 16 * 8 * 128 * 2)
    assert "pool_gib" in case.as_dict() and "pool_pages" not in case.as_dict()
    assert "pool_gib" not in Case(name="x", grammar="4q1c64", page_size=16).as_dict()


def test_the_default_sweep_has_a_serving_sized_pool_case():
    pooled = [case for case in SWEEPS["default"] if case.pool_gib or case.pool_pages]
    assert [case.name for case in pooled] == ["decode-b64-q1-c4096-p16-h8x1d128-pool16gib"]
    spec = pooled[0].spec()
    assert spec.cache_elements > INT32_MAX and spec.cache_bytes() == 16 * GIB


# ---------------------------------------------------------------------------------------------- >2^31 elements, no device

LARGE = capability.case_spec(next(overrides for feature, value, overrides in capability.FEATURES
                                  if (feature, value) == ("pool", capability.LARGE_POOL)))


def meta_cache(spec: BatchSpec) -> torch.Tensor:
    """A cache tensor of ``spec``'s pool on the meta device: shapes and strides, no memory."""
    return torch.empty(spec.num_pages, spec.page_size, spec.num_kv_heads, spec.head_dim, dtype=spec.torch_dtype,
                       device="meta")


def boundary_page(spec: BatchSpec) -> int:
    """The first page whose first element offset is past int32."""
    return math.ceil(2**31 / (spec.page_size * spec.num_kv_heads * spec.head_dim))


def test_capability_probes_a_pool_past_2_to_the_31_elements():
    assert ("pool", "default") in {(f, v) for f, v, _ in capability.FEATURES}
    assert LARGE.cache_elements > INT32_MAX and LARGE.cache_elements == 2**32
    # the reference gathers only the sequences' pages: besides the 16 GiB of caches, the case is small
    assert LARGE.cache_bytes() == 16 * GIB and LARGE.total_kv < 1000
    # whatever page size the probe falls back to, the pool stays past 2^31 elements
    for page in (1, 16, 256):
        assert capability.case_spec({"pool_gib": capability.LARGE_POOL_GIB}, page_size=page).cache_elements > INT32_MAX


def test_the_large_pool_case_puts_pages_past_the_int32_element_offset():
    """Pages are drawn over the whole pool: offsets of most of the batch's pages overflow int32, so a
    32-bit offset bug cannot hide behind pages that happen to sit low."""
    table = page_assignment(LARGE)
    owned = [p for b, n in enumerate(LARGE.pages_per_seq) for p in table[b, :n].tolist()]
    high = [p for p in owned if p >= boundary_page(LARGE)]
    assert len(high) >= 4 and max(owned) < LARGE.num_pages
    per_page = LARGE.page_size * LARGE.num_kv_heads * LARGE.head_dim
    assert max(owned) * per_page > INT32_MAX  # Python ints: the element offset an adapter must reach


def test_triton_kernel_switches_off_32_bit_offsets_for_the_large_pool():
    paged = pytest.importorskip("kernels.paged_attention")
    large, default = meta_cache(LARGE), meta_cache(LARGE.replace(pool_gib=None))
    assert paged.offsets_fit_int32(default)
    assert not paged.offsets_fit_int32(large)
    # TMA row coordinates (pages * page_size rows) still fit: TMA stays possible
    q = torch.empty(LARGE.total_q, LARGE.num_q_heads, LARGE.head_dim, dtype=LARGE.torch_dtype, device="meta")
    assert LARGE.num_pages * LARGE.page_size < 2**31
    assert paged.tma_possible(q, large, large)


def test_cudnn_declares_the_large_pool_with_64_bit_sized_dims():
    cudnn = pytest.importorskip("adapters.backends.cudnn_sdpa")
    layout = cudnn.cudnn_layout(LARGE)
    cache = meta_cache(LARGE)
    view = cudnn.cache_view(cache)
    assert layout.cache_dims == tuple(view.shape) and layout.cache_dims[0] == LARGE.num_pages
    assert layout.cache_strides == view.stride()
    assert math.prod(layout.cache_dims) > INT32_MAX
    # the last element's offset, from the declared strides, is past int32 (cuDNN must index it in 64 bits)
    last = sum((dim - 1) * stride for dim, stride in zip(layout.cache_dims, layout.cache_strides))
    assert last == LARGE.cache_elements - 1 > INT32_MAX
    # the ragged offsets are of Q (small here), so int32 is right for them
    assert layout.ragged_dtype == torch.int32


def test_flex_physical_view_and_page_tables_for_the_large_pool():
    flex = pytest.importorskip("adapters.backends.flex_paged")
    spec = LARGE
    physical_len = spec.num_pages * spec.page_size
    key = meta_cache(spec).view(1, physical_len, spec.num_kv_heads, spec.head_dim).permute(0, 2, 1, 3)
    assert key.shape == (1, spec.num_kv_heads, physical_len, spec.head_dim) and key.numel() > INT32_MAX
    assert physical_len < 2**31  # Flex's kv_idx (a token index) still fits int32
    table = page_assignment(spec)
    p2l = flex.physical_to_logical(table, spec.pages_per_seq, spec.num_pages)
    assert p2l.dtype == torch.int64 and p2l.shape == (spec.batch_size, spec.num_pages)
    top = int(table.max())
    seq, entry = (table == top).nonzero()[0].tolist()
    assert top >= boundary_page(spec) and int(p2l[seq, top]) == entry


def test_the_probe_answers_oom_for_a_pool_that_cannot_fit(monkeypatch):
    """The probe's cells take the sweep's memory check (`harness.measure.cell`): a pool that cannot fit is `oom`
    before anything is allocated."""
    from adapters.backends.sdpa_gather import SdpaGatherAdapter
    from harness.measure import cell
    from tests.test_capability import probe

    monkeypatch.setattr(cell, "memory_limit", lambda device: (1 << 30, "of host memory available"))
    rows = tuple(f for f in capability.FEATURES if f[0] == "pool")
    df = probe({"sdpa-gather": SdpaGatherAdapter()}, "cpu", features=rows)
    by_value = dict(zip(df["value"], zip(df["verdict"], df["reason"])))
    assert by_value["default"][0] == "ok"
    verdict, reason = by_value[capability.LARGE_POOL]
    assert verdict == "oom" and "1.0 GiB of host memory available" in reason and "needs about 16." in reason


def test_flex_declines_a_cache_past_2_to_the_31_elements_on_the_gpu():
    """Flex over a 16 GiB pool was an illegal memory access on the H200 (torch 2.11): the adapter
    declines such a cache before launching anything; the default pool and the CPU are unaffected."""
    from adapters.backends.flex_paged import large_cache_refusal

    large = meta_cache(LARGE)
    assert "32-bit offsets" in large_cache_refusal(large, "cuda") and "4,294,967,296 elements" in large_cache_refusal(large, "cuda")
    assert large_cache_refusal(large, "cpu") == ""
    default = capability.case_spec(next(o for f, v, o in capability.FEATURES if (f, v) == ("pool", "default")))
    assert large_cache_refusal(meta_cache(default), "cuda") == ""
