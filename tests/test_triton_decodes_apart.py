"""The Triton kernel's two-launch path for mixed batches (``prepare_paged_attention(num_decodes=d)``): the
first d sequences, one query each, in a decode launch of their own and the rest in a long launch, both
on views of one output and LSE. Checked under the interpreter (fp32, fp16) against the fp32 reference,
with and without the model features, split and unsplit; and the cases where it must stay one launch."""

from __future__ import annotations

import pytest
import torch

from adapters.batch import BatchSpec, make_batch
from adapters.reference import reference_attention
from tests.test_triton_features import ALL_FOUR, SMALL_TILES, TINY, assert_matches
from tests.triton_setup import HAVE_TRITON, INTERPRETED, needs_interpreter, requires_triton

pytestmark = requires_triton

if HAVE_TRITON:
    from kernels.paged_attention import (INTERPRETER_SM_COUNT, DecodesApartLauncher, KernelConfig,
                                         PagedAttentionLauncher, plan_launch, prepare_paged_attention)
    from kernels.paged_attention.configs import DECODES_APART_MIN_KEYS_PER_SM
    from kernels.paged_attention.plan import decode_fill

MIXED = "3q1c40_1q12c10_1q5-9c0-20"
"""Three decodes first (as serving engines order a mixed batch), then a chunked prefill and a prefill."""


def mixed_batch(grammar: str = MIXED, *, dtype: str = "fp32", device: str = "cpu", heads: dict = TINY,
                **fields):
    spec = BatchSpec.from_grammar(grammar, page_size=4, dtype=dtype, seed=2, **heads, **fields)
    return make_batch(spec, device)


def launch(batch, *, num_decodes: int, config=None, num_splits=None, decodes_apart=None, host_kv_lens=None):
    """(out, lse, launcher) with out and lse NaN-poisoned first, so an unwritten row fails the check."""
    spec = batch.spec
    launcher = prepare_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
        max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
        config=config, num_splits=num_splits, return_lse=True, sliding_window=spec.sliding_window,
        softcap=spec.softcap, sinks=batch.sinks, k_scale=batch.k_scale, v_scale=batch.v_scale,
        num_decodes=num_decodes, decodes_apart=decodes_apart, host_kv_lens=host_kv_lens)
    launcher.out.fill_(float("nan"))
    launcher.lse.fill_(float("nan"))
    out, lse = launcher()
    return out, lse, launcher


@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("features", ["plain", "all-four"])
@pytest.mark.parametrize("num_splits", [None, 2])
def test_decodes_apart_match_the_reference(dtype, features, num_splits):
    """Output and LSE of both launches within the gate's tolerances, every row written; the decode
    launch takes one tile per sequence, the long one numbers its tiles from its own first token."""
    batch = mixed_batch(dtype=dtype, **(ALL_FOUR if features == "all-four" else {}))
    assert batch.spec.leading_decodes == 3
    out, lse, launcher = launch(batch, num_decodes=3, config=SMALL_TILES, num_splits=num_splits, decodes_apart=True)
    assert isinstance(launcher, DecodesApartLauncher)
    assert launcher.decodes.plan.one_query_per_seq and launcher.decodes.out.shape[0] == 3
    assert launcher.rest.out.data_ptr() == out[3:].data_ptr()
    if num_splits:
        assert launcher.plan.num_splits == num_splits
    assert_matches(batch, out, lse)
    described = launcher.describe()
    assert described["decodes_apart"] == 3 and "(decodes) + " in described["config"]


@needs_interpreter
def test_decodes_apart_with_the_table_agree_with_one_launch():
    """With the table's configurations (the way the adapter would call it) the two launches give what
    one launch gives, within fp32 rounding."""
    batch = mixed_batch()
    apart, apart_lse, _ = launch(batch, num_decodes=3, decodes_apart=True)
    whole, whole_lse, launcher = launch(batch, num_decodes=0)
    assert isinstance(launcher, PagedAttentionLauncher)
    # fp32 throughout: the two paths differ only in summation order (other tiles, other splits)
    assert (apart - whole).abs().max().item() < 1e-5
    assert (apart_lse - whole_lse).abs().max().item() < 1e-5


@needs_interpreter
@pytest.mark.parametrize("grammar, num_decodes", [
    (MIXED, 0),  # asked for nothing
    ("3q1c40", 3),  # a pure decode batch is one decode launch already
    ("2q1c40", 1),  # max_q_len 1: nothing long to keep apart
    ("1q12c10_2q1c40", 0),  # decodes after a prefill: none leads
])
def test_one_launch_where_nothing_is_kept_apart(grammar, num_decodes):
    batch = mixed_batch(grammar)
    out, lse, launcher = launch(batch, num_decodes=num_decodes)
    assert isinstance(launcher, PagedAttentionLauncher)
    assert_matches(batch, out, lse)


@needs_interpreter
@pytest.mark.parametrize("grammar, window, apart", [
    ("3q1c40_1q12c10_1q5-9c0-20", None, False),  # 3 x 40 keys x 2 KV heads / 4 SMs = 60 per SM
    ("2q1c4100_1q12c10", None, True),  # 2 x 4100 x 2 / 4 = 4100 >= 4096
    ("2q1c4100_1q12c10", 64, False),  # a 64-key window: 2 x 64 x 2 / 4 = 64
])
def test_the_decodes_keys_decide_whether_they_run_apart(grammar, window, apart):
    """The launcher's rule (``DECODES_APART_MIN_KEYS_PER_SM`` = 4096 against the interpreter's 4
    multiprocessors): decodes with few keys to read fill gaps in the long launch, heavy ones get a
    launch of their own; ``decodes_apart`` overrides the rule either way, and every path is right."""
    assert DECODES_APART_MIN_KEYS_PER_SM == 4096 and INTERPRETER_SM_COUNT == 4
    batch = mixed_batch(grammar, sliding_window=window)
    decodes = batch.spec.leading_decodes
    lengths = list(batch.spec.kv_lens)
    out, lse, launcher = launch(batch, num_decodes=decodes, host_kv_lens=lengths)
    assert isinstance(launcher, DecodesApartLauncher if apart else PagedAttentionLauncher)
    assert_matches(batch, out, lse)
    out, lse, forced = launch(batch, num_decodes=decodes, host_kv_lens=lengths, decodes_apart=not apart)
    assert isinstance(forced, PagedAttentionLauncher if apart else DecodesApartLauncher)
    assert_matches(batch, out, lse)


def test_host_lengths_split_the_long_decodes_of_a_ragged_batch():
    """Planning only: 64 decodes of which one holds 32k keys and the rest 1k, at page 256 on 132
    multiprocessors. Taken as 64 x 32k keys they make 512 programs, enough not to split, and the long
    one streams its 32k keys alone; with the host's lengths the batch is 5 % full and the split follows
    its real work."""
    common = dict(num_tokens=64, num_seqs=64, num_q_heads=32, num_kv_heads=8, head_dim=128, page_size=256,
                  max_q_len=1, max_kv_len=32768, num_sms=132)
    lengths = [32768] + [1024] * 63
    assert decode_fill(lengths, 32768) == pytest.approx((32768 + 63 * 1024) / (64 * 32768))
    assert plan_launch(**common).num_splits == 1
    ragged = plan_launch(**common, host_kv_lens=lengths)
    # 512 programs x 0.0464 full = 23.75 -> ceil(132 / 23.75) = 6 chunks of 32768 / 6 keys, rounded up to
    # the 64-key step: 5462 -> 5504
    assert ragged.num_splits == 6 and ragged.split_size == 5504
    # a batch of equal lengths plans as without them, and long queries ignore them
    assert plan_launch(**common, host_kv_lens=[32768] * 64) == plan_launch(**common)
    prefill = dict(common, num_tokens=64 * 512, max_q_len=512)
    assert plan_launch(**prefill, host_kv_lens=lengths) == plan_launch(**prefill)


@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_ragged_decode_batch_with_host_lengths_matches_the_reference(dtype):
    """One long decode among short ones, split by the host's lengths (a chunk size the short sequences
    never reach, so most of their chunks are empty): output and LSE still within the gate's figures,
    also as the decode half of a mixed batch."""
    small_chunks = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1,
                                split_programs_per_sm=4, min_split_keys=16)
    batch = mixed_batch("1q1c300_5q1c20", dtype=dtype)
    out, lse, launcher = launch(batch, num_decodes=0, config=small_chunks, host_kv_lens=list(batch.spec.kv_lens))
    _, _, unweighted = launch(batch, num_decodes=0, config=small_chunks)
    assert launcher.plan.num_splits > unweighted.plan.num_splits > 1
    assert_matches(batch, out, lse)
    # the decodes' launch reads at most their own longest (under 100 keys), not the prefill's 312
    mixed = mixed_batch("8q1c20-100_1q12c300", dtype=dtype)
    out, lse, apart = launch(mixed, num_decodes=8, host_kv_lens=list(mixed.spec.kv_lens), decodes_apart=True)
    assert isinstance(apart, DecodesApartLauncher) and mixed.spec.max_kv_len == 312
    assert apart.decodes.plan.split_size * apart.decodes.plan.num_splits <= 128
    assert_matches(mixed, out, lse)


@needs_interpreter
@pytest.mark.parametrize("bad", [[40, 10], [40, 10, 20, 30, 10, 5], [40, 10, 20, 30, -1], [40, 10, 20, 30, 10**6],
                                 [40, 10, 20, 30, 2.5], [40, 10, 20, 30, True]])
def test_bad_host_lengths_are_one_clear_error(bad):
    """Host lengths that are not one whole count in 0..max_kv_len per sequence are refused before launch."""
    with pytest.raises(ValueError, match="host_kv_lens must hold 5 whole key counts"):
        launch(mixed_batch(), num_decodes=3, host_kv_lens=bad)


@needs_interpreter
@pytest.mark.parametrize("bad", [-1, 6, True, 1.5, "3"])
def test_a_bad_count_is_one_clear_error(bad):
    """A count that is not a whole number of leading sequences is refused before anything launches."""
    batch = mixed_batch()
    with pytest.raises(ValueError, match="num_decodes="):
        launch(batch, num_decodes=bad)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA GPU and compiled Triton")
@pytest.mark.parametrize("features", ["plain", "all-four"])
def test_decodes_apart_on_the_gpu(features):
    """bf16 on the GPU with the table's tiles: 32 decodes of 1k to 8k keys beside two 300-token prefills
    (about 8.7k keys per SM of an H100: apart by the launcher's own rule)."""
    batch = mixed_batch("32q1c1000-8000_2q300c0-500", dtype="bf16", device="cuda",
                        heads=dict(num_q_heads=32, num_kv_heads=8, head_dim=128),
                        **(ALL_FOUR if features == "all-four" else {}))
    # plain: apart by the rule; with the features' 7-key window the decodes are light (the rule keeps them
    # in the long launch), so the apart path is forced there to check it with every feature on
    out, lse, launcher = launch(batch, num_decodes=batch.spec.leading_decodes, host_kv_lens=batch.spec.kv_lens,
                                decodes_apart=None if features == "plain" else True)
    torch.cuda.synchronize()
    assert isinstance(launcher, DecodesApartLauncher)
    assert_matches(batch, out.cpu(), lse.cpu(), reference=tuple(t.cpu() for t in
                                                                  reference_attention(batch, with_lse=True)))


@needs_interpreter
@pytest.mark.parametrize("grammar, apart", [("2q1c4100_1q12c10", True), ("3q1c40_1q12c10_1q5-9c0-20", False)])
def test_the_adapter_passes_the_decodes_and_host_lengths(grammar, apart):
    """The suite's ``triton`` row calls the kernel as a serving engine would: the spec's leading decodes
    and key counts, so the rule applies, and its notes say how the decodes ran."""
    from adapters.base import adapter_classes

    batch = mixed_batch(grammar)
    prepared = adapter_classes()["triton"]().prepare(batch)
    out, lse = prepared.run()
    assert_matches(batch, out, lse)
    assert prepared.notes.get("decodes_apart") == (batch.spec.leading_decodes if apart else None)
    assert ("(decodes) + " in prepared.notes["config"]) == apart
