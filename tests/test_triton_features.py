"""The Triton kernel's model features (sliding window, soft-cap, sinks, an fp8 e4m3 KV cache with
per-tensor or per-head scales) against the fp32 reference, output and LSE, with the gate's tolerances.

CPU tests run the kernel under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where
no CUDA device is visible), fp16 and fp32 (the interpreter mishandles bf16). The interpreter loads
``torch.float8_e4m3fn`` caches as Triton's ``float8e4nv`` and converts them in the kernel, so the fp8
tests run the kernel's own fp8 path (loads, conversion, scales), not a host dequantisation; what they
cannot show is the code the GPU compiler makes of it (fp8 conversion instructions, TMA descriptors of
fp8 pages, registers): the `gpu` class checks that on a CUDA device. Shapes are tiny (CI has two cores).
"""

import math

import pytest
import torch

from adapters.base import get_adapter
from adapters.batch import BatchSpec, make_batch
from adapters.features import FEATURES
from adapters.reference import reference_attention
from harness.measure.gate import TOLERANCES, run_gate
from tests.triton_setup import HAVE_TRITON, INTERPRETED, needs_interpreter, requires_triton

pytestmark = requires_triton

if HAVE_TRITON:
    from kernels.paged_attention import (  # noqa: E402
        LOG2E, KernelConfig, plan_launch, prepare_paged_attention, tile_key_span)


TINY = dict(num_q_heads=4, num_kv_heads=2, head_dim=32)
"""GQA, two query heads per KV head."""
SMALL_TILES = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
"""16-key steps: the tiny sequences still span several key tiles, windows skip whole tiles, and
forced splits give tiles of several chunks that the merge kernel combines."""
TMA_TILES = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, use_tma=True)

BATCHES = {
    "decode": "3q1c40",  # pure decode: one query per sequence (tile b is sequence b)
    "prefill": "1q12c20",  # q_len 12 against 32 keys, causal: several query rows per tile, a diagonal
    "mixed": "2q1c30_1q12c10",  # two decodes and a chunked prefill in one launch
}
ALL_FOUR = dict(sliding_window=7, softcap=1.0, sinks=True, kv_dtype="fp8", kv_scale="head")
FEATURE_FIELDS = {
    "window": dict(sliding_window=5),
    "softcap": dict(softcap=0.5),
    "sinks": dict(sinks=True),
    "fp8-tensor": dict(kv_dtype="fp8"),
    "fp8-head": dict(kv_dtype="fp8", kv_scale="head"),
    "all-four": ALL_FOUR,
}


def feature_batch(grammar, *, dtype="fp32", page_size=4, seed=1, **fields):
    spec = BatchSpec.from_grammar(grammar, page_size=page_size, dtype=dtype, seed=seed, **TINY, **fields)
    return make_batch(spec, "cpu")


def launch(batch, *, config=SMALL_TILES, num_splits=None):
    """(out, lse, launcher) of the kernel on ``batch`` with its features, out and lse NaN-poisoned."""
    spec = batch.spec
    launcher = prepare_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
        max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
        config=config, num_splits=num_splits, return_lse=True, sliding_window=spec.sliding_window,
        softcap=spec.softcap, sinks=batch.sinks, k_scale=batch.k_scale, v_scale=batch.v_scale)
    launcher.out.fill_(float("nan"))
    launcher.lse.fill_(float("nan"))
    out, lse = launcher()
    return out, lse, launcher


def assert_matches(batch, out, lse, reference=None):
    """Output and LSE within the gate's tolerances of the fp32 reference (its figures, not a looser bound)."""
    spec = batch.spec
    ref_out, ref_lse = reference if reference is not None else reference_attention(batch, with_lse=True)
    tolerance = TOLERANCES[spec.dtype]
    assert torch.isfinite(out).all(), "unwritten (NaN) or non-finite output elements"
    assert torch.isfinite(lse).all(), "unwritten (NaN) or non-finite LSE elements"
    diff = out.float() - ref_out
    rel_l2 = (diff.norm() / ref_out.norm()).item()
    max_abs = diff.abs().max().item()
    lse_error = (lse - ref_lse).abs().max().item()
    assert rel_l2 <= tolerance.rel_l2 and max_abs <= tolerance.max_abs, \
        f"rel L2 {rel_l2:.2e}, max abs {max_abs:.2e} for {spec.describe()}"
    assert lse_error <= tolerance.lse_max_abs, f"LSE max abs error {lse_error:.2e} for {spec.describe()}"


# ------------------------------------------------------------------------------------------------
# CPU, under the interpreter

@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("feature", FEATURE_FIELDS)
def test_each_feature_on_a_mixed_batch(feature, dtype):
    """Each feature alone, and all four together, on decodes and a chunked prefill in one launch, keys
    split three ways (the merge kernel adds the sink once)."""
    batch = feature_batch(BATCHES["mixed"], dtype=dtype, **FEATURE_FIELDS[feature])
    out, lse, launcher = launch(batch, num_splits=3)
    assert launcher.plan.num_splits > 1
    assert_matches(batch, out, lse)


@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_windowed_decode_with_the_table_entry(dtype):
    """A windowed D=128 decode at page 16 with no config given runs the table's ``decode-window`` entry (32-key
    steps): keys before the window skipped, its left edge inside a step, whole and split in two."""
    spec = BatchSpec.from_grammar("3q1c70-200", page_size=16, dtype=dtype, seed=3, num_q_heads=4, num_kv_heads=2,
                                  head_dim=128, sliding_window=45)
    batch = make_batch(spec, "cpu")
    for num_splits in (None, 2):
        out, lse, launcher = launch(batch, config=None, num_splits=num_splits)
        assert launcher.plan.config.block_n == 32, launcher.plan.config.label()
        assert launcher.plan.num_splits == (num_splits or launcher.plan.num_splits)
        assert_matches(batch, out, lse)


@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["decode", "prefill"])
@pytest.mark.parametrize("num_splits", [1, 2])
def test_all_four_on_decode_and_prefill(kind, dtype, num_splits):
    """All four features on a pure decode batch (no tile search) and a causal prefill (query tiles
    with a diagonal), each written directly (1 chunk) and merged (2)."""
    batch = feature_batch(BATCHES[kind], dtype=dtype, **ALL_FOUR)
    out, lse, launcher = launch(batch, num_splits=num_splits)
    assert launcher.plan.num_splits == num_splits
    assert_matches(batch, out, lse)


@needs_interpreter
@pytest.mark.parametrize("window", [1, 16, 60])
def test_window_edges_and_splits(window):
    """A window of one key (each query sees only itself), one of exactly a key tile, one longer than
    any sequence (the plain causal result); prefill tiles of 16 rows, keys split into 16-key chunks
    counted from each tile's first visible key tile."""
    batch = feature_batch("1q20c30_1q1c50", page_size=3, sliding_window=window, seed=window)
    reference = reference_attention(batch, with_lse=True)
    for num_splits in (1, 4):
        out, lse, _ = launch(batch, num_splits=num_splits)
        assert_matches(batch, out, lse, reference)
    if window == 60:
        plain = feature_batch("1q20c30_1q1c50", page_size=3, seed=window)
        plain_out, plain_lse = reference_attention(plain, with_lse=True)
        assert torch.allclose(reference[0], plain_out) and torch.allclose(reference[1], plain_lse)


@needs_interpreter
def test_window_skips_key_tiles_no_query_sees():
    """Key tiles wholly before every query's window are never read: V and K there hold NaN (which a
    masked load-and-multiply would spread, 0 * NaN = NaN) and the output stays exact. Decode, window 5,
    kv 70: the query at position 69 sees keys 65..69, so tiles 0..63 are skipped."""
    from adapters.batch import owned_slots

    batch = feature_batch("2q1c70", page_size=16, sliding_window=5)
    reference = reference_attention(batch, with_lse=True)
    keys = torch.arange(batch.spec.page_size * batch.block_table.shape[1])
    for seq in range(batch.spec.batch_size):
        hidden = keys[keys < 64]  # the tiles no query of the sequence sees
        pages = batch.block_table[seq, hidden // batch.spec.page_size].long()
        batch.k_cache[pages, hidden % batch.spec.page_size] = float("nan")
        batch.v_cache[pages, hidden % batch.spec.page_size] = float("nan")
    assert owned_slots(batch.spec, batch.block_table).any()
    for num_splits in (1, 2):
        out, lse, launcher = launch(batch, num_splits=num_splits)
        assert launcher.plan.num_splits == num_splits
        assert_matches(batch, out, lse, reference)


@needs_interpreter
def test_sinks_are_counted_once_across_chunks():
    """With sinks the merged result of 1, 2 and 4 chunks is one result: a sink added per chunk (or
    never) would move the LSE by about log(chunks) and scale the output down."""
    batch = feature_batch("1q1c63_1q3c60", page_size=8, sinks=True)
    reference = reference_attention(batch, with_lse=True)
    results = []
    for num_splits in (1, 2, 4):
        out, lse, launcher = launch(batch, num_splits=num_splits)
        assert launcher.plan.num_splits == num_splits
        assert_matches(batch, out, lse, reference)
        results.append((out.clone(), lse.clone()))
    for out, lse in results[1:]:
        assert torch.allclose(out, results[0][0], atol=1e-5) and torch.allclose(lse, results[0][1], atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_all_four_through_tma_descriptors(dtype):
    """Key tiles inside one page go through TMA descriptors (emulated by the interpreter), fp8 pages
    included; split and merged."""
    batch = feature_batch(BATCHES["mixed"], dtype=dtype, page_size=32, **ALL_FOUR)
    out, lse, launcher = launch(batch, config=TMA_TILES, num_splits=2)
    assert launcher.plan.use_tma
    assert_matches(batch, out, lse)


@needs_interpreter
def test_non_causal_with_cap_and_sinks():
    """A cap and sinks work without causal masking too (a window needs causal)."""
    batch = feature_batch(BATCHES["mixed"], dtype="fp16", causal=False, softcap=2.0, sinks=True,
                          kv_dtype="fp8")
    out, lse, _ = launch(batch, num_splits=2)
    assert_matches(batch, out, lse)


@needs_interpreter
@pytest.mark.parametrize("fields", [ALL_FOUR, dict(sliding_window=3, sinks=True)], ids=["all-four", "window-sinks"])
def test_adapter_passes_the_gate_with_features(fields):
    """The `triton` row through the harness's gate (table configuration, NaN-poisoned output, LSE
    checked): ok, with its features named in the notes."""
    batch = feature_batch(BATCHES["mixed"], dtype="fp16", **fields)
    adapter = get_adapter("triton")
    assert adapter.feature_refusal(batch.spec) == ""
    gate, prepared = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok", gate.reason
    assert gate.notes["features"] == list(batch.spec.features)


@needs_interpreter
def test_plain_launch_keeps_every_switch_off():
    """A batch with no feature compiles the plain kernel: every feature switch off, the score scale
    unchanged, no sink, scale or window argument (tests/test_kernel_golden.py pins its values)."""
    batch = feature_batch(BATCHES["mixed"])
    out, lse, launcher = launch(batch, num_splits=3)
    args = launcher._attn_args
    assert not any(args[switch] for switch in ("USE_WINDOW", "SOFTCAP", "HAS_SINKS", "KV_FP8"))
    assert args["qk_scale"] == batch.spec.scale * LOG2E
    assert args["sinks_ptr"] is None and args["k_scale_ptr"] is None and args["v_scale_ptr"] is None
    assert not any(launcher._merge_args[switch] for switch in ("USE_WINDOW", "HAS_SINKS"))
    assert_matches(batch, out, lse)


# ------------------------------------------------------------------------------------------------
# Host side (no launch)

def test_adapter_declares_all_four_features():
    adapter = get_adapter("triton")
    assert adapter.model_features == frozenset(FEATURES)
    spec = BatchSpec.from_grammar("1q4c4", page_size=4, dtype="fp16", **TINY, **ALL_FOUR)
    assert adapter.feature_refusal(spec) == "" and adapter.supports(spec) == (True, "")


def test_window_shrinks_the_split_span():
    """Decode with a window reads at most W + block_n - 1 keys per tile: the split heuristic divides
    that span, not the whole context (32k keys, window 4096: the same split size as a 4.1k context with
    the same configuration; the windowed decode takes the ``decode-window`` entry's 32-key steps)."""
    common = dict(num_tokens=16, num_seqs=16, num_q_heads=32, num_kv_heads=8, head_dim=128, page_size=16,
                  max_q_len=1, num_sms=132)
    windowed = plan_launch(max_kv_len=32768, sliding_window=4096, **common)
    block_n = windowed.config.block_n
    assert block_n == 32
    assert tile_key_span(32768, 1, windowed.block_q, block_n, 4096) == 4096 + block_n - 1
    assert windowed.num_splits * windowed.split_size >= 4096 + block_n - 1
    short = plan_launch(max_kv_len=4096 + block_n - 1, config=windowed.config, **common)
    assert (windowed.num_splits, windowed.split_size) == (short.num_splits, short.split_size)
    assert plan_launch(max_kv_len=100, sliding_window=4096, **common).split_size == \
        plan_launch(max_kv_len=100, config=windowed.config, **common).split_size
    assert tile_key_span(1000, 64, 16, 64, None) == 1000
    assert tile_key_span(1000, 64, 16, 64, 100) == 15 + 100 + 63


@pytest.mark.parametrize("change,message", [
    (dict(k_scale=None), "k_scale and v_scale"),
    (dict(k_scale=torch.ones(3)), "k_scale must be"),
    (dict(v_scale=torch.ones(1)), "both per tensor or both per head"),
    (dict(sinks=torch.zeros(3)), "sinks must be"),
    (dict(sinks=torch.zeros(4, dtype=torch.float16)), "sinks must be"),
    (dict(sliding_window=0), "sliding_window=0"),
    (dict(causal=False), "needs causal"),
    (dict(softcap=-1.0), "softcap=-1.0"),
    (dict(softcap=math.inf), "softcap=inf"),
])
def test_feature_arguments_are_validated(change, message):
    batch = feature_batch("2q1c5_1q3c2", **ALL_FOUR)
    spec = batch.spec
    args = dict(max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=True, scale=spec.scale,
                sliding_window=spec.sliding_window, softcap=spec.softcap, sinks=batch.sinks,
                k_scale=batch.k_scale, v_scale=batch.v_scale)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        prepare_paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                                batch.kv_lens, **args)


def test_scales_without_an_fp8_cache_are_refused():
    batch = feature_batch("1q3c2")
    spec = batch.spec
    with pytest.raises(ValueError, match="k_scale and v_scale"):
        prepare_paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                                batch.kv_lens, max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=True,
                                scale=spec.scale, k_scale=torch.ones(1), v_scale=torch.ones(1))


# ------------------------------------------------------------------------------------------------
# GPU: bf16 and fp16, the compiled fp8 path and TMA on fp8 pages

@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(),
                    reason="needs a CUDA device and the kernels built for it (TRITON_INTERPRET unset)")
class TestOnGPU:
    @pytest.mark.parametrize("dtype", ["bf16", "fp16"])
    @pytest.mark.parametrize("feature", FEATURE_FIELDS)
    @pytest.mark.parametrize("page_size", [16, 256])
    def test_features_through_the_gate(self, feature, dtype, page_size):
        fields = dict(FEATURE_FIELDS[feature])
        if "sliding_window" in fields:
            fields["sliding_window"] = 700
        spec = BatchSpec.from_grammar("8q1c3000_2q33-500c100-1500", page_size=page_size, dtype=dtype, **fields)
        if spec.kv_dtype is not None and torch.cuda.get_device_capability() < (8, 9):
            pytest.skip("fp8 e4m3 needs sm_89 or newer")
        batch = make_batch(spec, "cuda")
        gate, _ = run_gate(get_adapter("triton"), batch, reference_attention(batch, with_lse=True))
        assert gate.verdict == "ok", gate.reason

    @pytest.mark.parametrize("num_splits", [1, 3, 8])
    def test_all_four_split_and_merged(self, num_splits):
        spec = BatchSpec.from_grammar("4q1c5000_2q40c2000", page_size=64, **ALL_FOUR)
        if torch.cuda.get_device_capability() < (8, 9):
            pytest.skip("fp8 e4m3 needs sm_89 or newer")
        batch = make_batch(spec, "cuda")
        out, lse, _ = launch(batch, config=None, num_splits=num_splits)
        torch.cuda.synchronize()
        assert_matches(batch, out, lse)
