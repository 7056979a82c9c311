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
    from kernels.paged_attention import DecodesApartLauncher, PagedAttentionLauncher, prepare_paged_attention

MIXED = "3q1c40_1q12c10_1q5-9c0-20"
"""Three decodes first (as serving engines order a mixed batch), then a chunked prefill and a prefill."""


def mixed_batch(grammar: str = MIXED, *, dtype: str = "fp32", device: str = "cpu", heads: dict = TINY,
                **fields):
    spec = BatchSpec.from_grammar(grammar, page_size=4, dtype=dtype, seed=2, **heads, **fields)
    return make_batch(spec, device)


def leading_decodes(spec: BatchSpec) -> int:
    """How many sequences at the front of the batch have one query each."""
    count = 0
    while count < spec.batch_size and spec.q_lens[count] == 1:
        count += 1
    return count


def launch(batch, *, num_decodes: int, config=None, num_splits=None):
    """(out, lse, launcher) with out and lse NaN-poisoned first, so an unwritten row fails the check."""
    spec = batch.spec
    launcher = prepare_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
        max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
        config=config, num_splits=num_splits, return_lse=True, sliding_window=spec.sliding_window,
        softcap=spec.softcap, sinks=batch.sinks, k_scale=batch.k_scale, v_scale=batch.v_scale,
        num_decodes=num_decodes)
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
    assert leading_decodes(batch.spec) == 3
    out, lse, launcher = launch(batch, num_decodes=3, config=SMALL_TILES, num_splits=num_splits)
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
    apart, apart_lse, _ = launch(batch, num_decodes=3)
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
    """bf16 on the GPU with the table's tiles: 32 decodes of up to 2k keys beside two 300-token prefills."""
    batch = mixed_batch("32q1c100-2000_2q300c0-500", dtype="bf16", device="cuda",
                        heads=dict(num_q_heads=32, num_kv_heads=8, head_dim=128),
                        **(ALL_FOUR if features == "all-four" else {}))
    out, lse, launcher = launch(batch, num_decodes=leading_decodes(batch.spec))
    torch.cuda.synchronize()
    assert isinstance(launcher, DecodesApartLauncher)
    assert_matches(batch, out.cpu(), lse.cpu(), reference=tuple(t.cpu() for t in
                                                                  reference_attention(batch, with_lse=True)))
