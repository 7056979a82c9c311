"""The Triton kernel's optional softmax statistics: ``return_lse=True`` also gives each query row's
natural-log log-sum-exp of the scaled, masked scores, ``[T, Hq]`` float32, checked against a float64
reference computed here from the same batch (K gathered through the block table), for launches
that write it directly and launches whose split chunks the merge kernel combines.

CPU tests run under Triton's interpreter (set here where no CUDA device is visible, as in
``tests/test_triton_kernel.py``), fp32 and fp16; the `gpu` class checks bf16/fp16 on a GPU.
"""


import pytest
import torch

from adapters.batch import BatchSpec, make_batch  # noqa: E402
from tests.triton_setup import HAVE_TRITON, INTERPRETED, needs_interpreter, requires_triton

pytestmark = requires_triton

if HAVE_TRITON:
    from kernels.paged_attention import (  # noqa: E402
        KernelConfig, PagedAttentionLauncher, paged_attention, prepare_paged_attention)


TINY = dict(num_q_heads=4, num_kv_heads=2, head_dim=32)
SMALL_TILES = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
TMA_TILES = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, use_tma=True)
MIXED = "2q1c30_1q9-20c0-7_1q40c10"
LSE_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-4, "bf16": 1e-3}
"""Absolute error allowed on the LSE (its values are of order 1 to 10 here). It depends on the
scores only (q . k in fp32, exact products for 16-bit inputs), not on the P . V product."""


def reference_lse(batch) -> torch.Tensor:
    """``[T, Hq]`` float64: ``logsumexp`` over each row's visible keys of ``scale * q . k``, per
    sequence, K read through the block table (bottom-right causal)."""
    spec = batch.spec
    rows = []
    q_start = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        pages = batch.block_table[seq, :spec.pages_per_seq[seq]].long()
        keys = batch.k_cache[pages].reshape(-1, spec.num_kv_heads, spec.head_dim)[:kv_len].double()
        keys = keys.repeat_interleave(spec.group_size, dim=1)  # [kv_len, Hq, D]
        queries = batch.q[q_start:q_start + q_len].double()  # [q_len, Hq, D]
        scores = torch.einsum("thd,khd->thk", queries, keys) * spec.scale
        if spec.causal:
            last_key = torch.arange(q_len, device=scores.device)[:, None] + (kv_len - q_len)
            hidden = torch.arange(kv_len, device=scores.device)[None, :] > last_key
            scores = scores.masked_fill(hidden[:, None, :], float("-inf"))
        rows.append(torch.logsumexp(scores, dim=-1))
        q_start += q_len
    return torch.cat(rows)


def launch(batch, *, return_lse=True, **overrides):
    """(result of the launcher, launcher); out and lse poisoned with NaN first."""
    spec = batch.spec
    launcher = prepare_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
        max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
        return_lse=return_lse, **overrides)
    launcher.out.fill_(float("nan"))
    if launcher.lse is not None:
        launcher.lse.fill_(float("nan"))
    return launcher(), launcher


def assert_lse_matches(batch, lse, tolerance):
    assert lse.dtype == torch.float32 and lse.shape == (batch.spec.total_q, batch.spec.num_q_heads)
    assert torch.isfinite(lse).all(), "unwritten (NaN) or non-finite LSE elements"
    error = (lse.double() - reference_lse(batch)).abs().max().item()
    assert error <= tolerance, f"LSE max abs error {error:.2e} > {tolerance:.0e} for {batch.spec.describe()}"


# ------------------------------------------------------------------------------------------------
# CPU, under the interpreter

@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("num_splits", [1, 3], ids=["unsplit", "split"])
def test_lse_matches_reference_and_leaves_out_unchanged(dtype, causal, num_splits):
    """Unsplit: every tile writes its LSE directly. Split: tiles whose keys span several chunks get
    theirs from the merge kernel, the decode tiles that fit one chunk write it directly. The output
    is the same, bit for bit, as without the LSE."""
    spec = BatchSpec.from_grammar(MIXED, page_size=16, dtype=dtype, causal=causal, **TINY)
    batch = make_batch(spec, "cpu")
    (out, lse), launcher = launch(batch, config=SMALL_TILES, num_splits=num_splits)
    assert (launcher.plan.num_splits > 1) == (num_splits > 1)
    assert out.data_ptr() == launcher.out.data_ptr() and lse.data_ptr() == launcher.lse.data_ptr()
    assert_lse_matches(batch, lse, LSE_TOLERANCE[dtype])
    plain, plain_launcher = launch(batch, return_lse=False, config=SMALL_TILES, num_splits=num_splits)
    assert plain_launcher.lse is None and isinstance(plain, torch.Tensor)
    assert torch.equal(out, plain)


@needs_interpreter
@pytest.mark.parametrize("page_size,config,num_splits", [
    (32, TMA_TILES, 2), (3, SMALL_TILES, 3), (16, None, None)], ids=["tma-split", "per-key-pages", "table"])
def test_lse_on_other_paths(page_size, config, num_splits):
    """TMA loads, per-key page lookups, and the table's own configuration and split choice."""
    spec = BatchSpec.from_grammar(MIXED, page_size=page_size, dtype="fp32", seed=page_size, **TINY)
    batch = make_batch(spec, "cpu")
    (_, lse), launcher = launch(batch, config=config, num_splits=num_splits)
    assert launcher.plan.use_tma == (config is TMA_TILES)
    assert_lse_matches(batch, lse, LSE_TOLERANCE["fp32"])


@needs_interpreter
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("heads", [(4, 1), (6, 2), (2, 2)], ids=["mqa", "group3", "mha"])
def test_lse_pure_decode_and_head_groupings(num_splits, heads):
    spec = BatchSpec.from_grammar("5q1c37", page_size=3, dtype="fp16", seed=1, num_q_heads=heads[0],
                                  num_kv_heads=heads[1], head_dim=32)
    batch = make_batch(spec, "cpu")
    (_, lse), launcher = launch(batch, config=SMALL_TILES, num_splits=num_splits)
    assert launcher.plan.one_query_per_seq and launcher.plan.num_splits == num_splits
    assert_lse_matches(batch, lse, LSE_TOLERANCE["fp16"])


@needs_interpreter
def test_lse_merges_two_halves_of_a_context_into_the_whole():
    """What serving engines use the LSE for: attention over a prefix and over the rest, merged
    with their LSEs, equals attention over the whole context (and its LSE the whole LSE)."""
    spec = BatchSpec.from_grammar("3q1c63", page_size=16, dtype="fp32", causal=False, seed=3, **TINY)
    batch = make_batch(spec, "cpu")
    whole, whole_lse = paged_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
        max_q_len=1, max_kv_len=64, causal=False, scale=spec.scale, config=SMALL_TILES, return_lse=True)
    halves = []
    for pages in (slice(0, 2), slice(2, 4)):  # keys 0..31 and 32..63
        table = batch.block_table[:, pages].contiguous()
        halves.append(paged_attention(
            batch.q, batch.k_cache, batch.v_cache, table, batch.cu_seqlens_q, torch.full_like(batch.kv_lens, 32),
            max_q_len=1, max_kv_len=32, causal=False, scale=spec.scale, config=SMALL_TILES, return_lse=True))
    (out_a, lse_a), (out_b, lse_b) = halves
    merged_lse = torch.logaddexp(lse_a, lse_b)
    merged = (out_a * (lse_a - merged_lse).exp()[..., None] + out_b * (lse_b - merged_lse).exp()[..., None])
    assert (merged_lse - whole_lse).abs().max().item() <= 1e-5
    assert (merged - whole).abs().max().item() <= 1e-5


def test_launcher_rejects_an_lse_of_the_wrong_shape():
    spec = BatchSpec.from_grammar("2q1c5_1q3c2", page_size=4, dtype="fp16", **TINY)
    batch = make_batch(spec, "cpu")
    good = prepare_paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                                   batch.kv_lens, max_q_len=3, max_kv_len=5, causal=True, scale=spec.scale)
    with pytest.raises(ValueError, match="lse must be"):
        PagedAttentionLauncher(batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                               batch.kv_lens, good.out, causal=True, scale=spec.scale, plan=good.plan,
                               workspace=None, lse=torch.empty(3, 5))


# ------------------------------------------------------------------------------------------------
# GPU

@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(),
                    reason="needs a CUDA device and the kernels built for it (TRITON_INTERPRET unset)")
class TestLseOnGPU:
    @pytest.mark.parametrize("dtype", ["bf16", "fp16"])
    @pytest.mark.parametrize("grammar,page_size", [
        ("16q1c100-3000", 16), ("1q1c5000", 256), ("2q1c2000_3q33-700c100-1500", 256), ("4q300c0-500", 16)])
    @pytest.mark.parametrize("num_splits", [None, 1, 5])
    def test_lse_matches_reference(self, dtype, grammar, page_size, num_splits):
        spec = BatchSpec.from_grammar(grammar, page_size=page_size, dtype=dtype, seed=len(grammar))
        batch = make_batch(spec, "cuda")
        (out, lse), launcher = launch(batch, num_splits=num_splits)
        plain, _ = launch(batch, return_lse=False, num_splits=num_splits)
        torch.cuda.synchronize()
        assert_lse_matches(batch, lse, LSE_TOLERANCE[dtype])
        assert torch.equal(out, plain)
        if num_splits == 5:
            assert launcher.plan.num_splits > 1
