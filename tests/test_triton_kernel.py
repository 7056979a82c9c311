"""The project's Triton paged-attention kernel against the fp32 reference.

CPU tests run the kernel under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 for the
session where no CUDA device is visible) and skip cleanly when triton or numpy is missing. Shapes are tiny (the interpreter is slow; CI has two cores). The interpreter mishandles
bf16, so the CPU tests use fp32 and fp16; bf16 is checked by the `gpu` class on a CUDA device.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapters.base import Unsupported, get_adapter  # noqa: E402
from adapters.batch import BatchSpec, make_batch  # noqa: E402
from adapters.reference import reference_attention  # noqa: E402
from tests.triton_setup import HAVE_TRITON, INTERPRETED, needs_interpreter, requires_triton

REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_triton

if HAVE_TRITON:
    from kernels.paged_attention import (  # noqa: E402
        CONFIG_TABLE, KernelConfig, config_key, paged_attention, plan_launch, prepare_paged_attention)


TINY = dict(num_q_heads=4, num_kv_heads=2, head_dim=32)
"""Default heads for CPU cases: GQA with two query heads per KV head."""
SMALL_TILES = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
"""Small tiles so that tiny batches still span several key tiles, query tiles and splits."""
TMA_TILES = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, use_tma=True)
CPU_TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3}
GPU_TOLERANCE = {"bf16": 1e-2, "fp16": 3e-3}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def run_kernel(batch, *, config=None, num_splits=None, launch_merge_early=None):
    """Launch on ``batch`` with a NaN-poisoned output; return (output, plan)."""
    spec = batch.spec
    launcher = prepare_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q, batch.kv_lens,
        max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=spec.causal, scale=spec.scale,
        config=config, num_splits=num_splits, launch_merge_early=launch_merge_early)
    launcher.out.fill_(float("nan"))
    return launcher(), launcher.plan


def assert_matches_reference(batch, out, tolerance):
    assert torch.isfinite(out).all(), "unwritten (NaN) or non-finite output elements"
    error = relative_error(out, reference_attention(batch))
    assert error <= tolerance, f"relative L2 error {error:.2e} > {tolerance:.0e} for {batch.spec.describe()}"


# ------------------------------------------------------------------------------------------------
# CPU, under the interpreter

@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
def test_gqa_mixed_batch_default_config(dtype, causal):
    spec = BatchSpec.from_grammar("2q1c30_1q9-20c0-7", page_size=3, dtype=dtype, causal=causal, **TINY)
    batch = make_batch(spec, "cpu")
    out, _ = run_kernel(batch)
    assert_matches_reference(batch, out, CPU_TOLERANCE[dtype])


@needs_interpreter
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("causal", [True, False])
def test_page_sizes_tiles_and_splits(page_size, causal):
    """Small tiles: several query tiles per prefill, key tiles crossing pages (page 1, 3) or inside
    one page (16), and three key chunks merged by the split kernel."""
    spec = BatchSpec.from_grammar("2q1c30_1q9-20c0-7_1q40c10", page_size=page_size, dtype="fp32",
                                  causal=causal, seed=page_size, **TINY)
    batch = make_batch(spec, "cpu")
    out, plan = run_kernel(batch, config=SMALL_TILES, num_splits=3)
    assert plan.num_splits > 1
    assert plan.tile_in_page == (page_size % SMALL_TILES.block_n == 0)
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp32"])


@needs_interpreter
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
def test_tma_path(dtype, causal):
    """K/V tiles through TMA descriptors (tile inside one page), with splits; the interpreter
    emulates the descriptor loads."""
    spec = BatchSpec.from_grammar("2q1c30_1q9-20c0-7_1q40c10", page_size=32, dtype=dtype, causal=causal,
                                  **TINY)
    batch = make_batch(spec, "cpu")
    out, plan = run_kernel(batch, config=TMA_TILES, num_splits=2)
    assert plan.use_tma
    assert_matches_reference(batch, out, CPU_TOLERANCE[dtype])


@needs_interpreter
@pytest.mark.parametrize("config", [SMALL_TILES, None], ids=["small-tiles", "table"])
def test_unowned_slots_holding_nan_are_never_used(config):
    """Slots past kv_len in a sequence's last page may hold anything: NaN there must not leak."""
    from adapters.batch import owned_slots

    spec = BatchSpec.from_grammar("2q1c20_1q5c9", page_size=16, dtype="fp32", **TINY)
    batch = make_batch(spec, "cpu")
    unowned = ~owned_slots(spec, batch.block_table)
    unowned[0] = False  # the null page stays zero (the canonical batch's promise)
    batch.k_cache[unowned] = float("nan")
    batch.v_cache[unowned] = float("nan")
    for use_tma in (False, True):
        chosen = KernelConfig(16, 16, 4, 1, use_tma=use_tma) if config is not None else None
        out, _ = run_kernel(batch, config=chosen, num_splits=2 if config is not None else None)
        assert_matches_reference(batch, out, CPU_TOLERANCE["fp32"])


@needs_interpreter
@pytest.mark.parametrize("page_size,use_tma", [(3, False), (16, False), (16, True)],
                         ids=["per-key-pages", "tile-in-page", "tma"])
def test_register_cap_keeps_results(page_size, use_tma):
    """A register cap (``maxnreg``) only changes how the compiler allocates, never the values."""
    spec = BatchSpec.from_grammar("2q1c70_1q9-40c0-50_1q33c40_1q1c0", page_size=page_size, dtype="fp32",
                                  seed=page_size, **TINY)
    batch = make_batch(spec, "cpu")
    config = KernelConfig(16, 16, 4, 1, use_tma=use_tma, max_registers=128)
    out, plan = run_kernel(batch, config=config, num_splits=2)
    assert plan.use_tma == use_tma and "-r128" in plan.config.label()
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp32"])


@needs_interpreter
@pytest.mark.parametrize("num_splits", [1, 3])
def test_pure_decode_maps_tiles_to_sequences(num_splits):
    """A pure decode batch (one query per sequence) numbers its tiles by sequence, with no search;
    only when the host values prove that every sequence has exactly one query."""
    decode = make_batch(BatchSpec.from_grammar("5q1c37", page_size=3, dtype="fp32", seed=1, **TINY), "cpu")
    out, plan = run_kernel(decode, config=SMALL_TILES, num_splits=num_splits)
    assert plan.one_query_per_seq and plan.num_q_blocks == 5 and plan.num_splits == num_splits
    assert_matches_reference(decode, out, CPU_TOLERANCE["fp32"])

    # as many tokens as sequences, but the host bound allows 2 queries (some sequence may have none)
    common = dict(num_q_heads=4, num_kv_heads=2, head_dim=32, page_size=3, max_kv_len=37, num_sms=4)
    assert not plan_launch(num_tokens=5, num_seqs=5, max_q_len=2, **common).one_query_per_seq
    assert not plan_launch(num_tokens=4, num_seqs=5, max_q_len=1, **common).one_query_per_seq


@needs_interpreter
def test_sequence_crossing_pages_fp16():
    spec = BatchSpec.from_grammar("1q23c17", page_size=16, dtype="fp16", **TINY)
    batch = make_batch(spec, "cpu")
    assert spec.pages_per_seq == (3,)
    out, _ = run_kernel(batch, config=SMALL_TILES)
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp16"])


@needs_interpreter
@pytest.mark.parametrize("grammar", ["1q1c0", "3q1c0"])
def test_single_token_sequences(grammar):
    """q_len == kv_len == 1: the output is the one value row."""
    spec = BatchSpec.from_grammar(grammar, page_size=16, dtype="fp16", **TINY)
    batch = make_batch(spec, "cpu")
    out, _ = run_kernel(batch)
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp16"])


@needs_interpreter
@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(4, 1), (8, 1), (6, 2), (2, 2)],
                         ids=["mqa4", "mqa8", "group3", "mha"])
def test_head_groupings(num_q_heads, num_kv_heads):
    """MQA (every query head on one KV head), a group that is not a power of two, and plain MHA."""
    spec = BatchSpec.from_grammar("2q1c12_1q5-9c0-9", page_size=4, num_q_heads=num_q_heads,
                                  num_kv_heads=num_kv_heads, head_dim=32, dtype="fp16")
    batch = make_batch(spec, "cpu")
    out, _ = run_kernel(batch, config=SMALL_TILES, num_splits=2)
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp16"])


@needs_interpreter
def test_head_dim_not_a_power_of_two():
    spec = BatchSpec.from_grammar("1q1c20_1q7c5", page_size=8, num_q_heads=2, num_kv_heads=1,
                                  head_dim=96, dtype="fp32")
    batch = make_batch(spec, "cpu")
    out, _ = run_kernel(batch, config=SMALL_TILES, num_splits=2)
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp32"])


@needs_interpreter
def test_adapter_prepare_and_run_on_cpu():
    adapter = get_adapter("triton")
    assert adapter.available(torch.device("cpu")) == (True, "")
    spec = BatchSpec.from_grammar("2q1c30_1q9-20c0-7", page_size=3, dtype="fp16", **TINY)
    batch = make_batch(spec, "cpu")
    prepared = adapter.prepare(batch)
    prepared.out.fill_(float("nan"))
    out, lse = prepared.run()
    assert out.data_ptr() == prepared.out.data_ptr()
    assert_matches_reference(batch, out, CPU_TOLERANCE["fp16"])
    assert lse.shape == (spec.total_q, spec.num_q_heads) and lse.dtype == torch.float32
    for key in ("config", "setup_s", "num_splits", "page_path", "entry_point"):
        assert key in prepared.notes
    assert adapter.versions()["triton"]


@needs_interpreter
def test_adapter_declines_bf16_on_cpu():
    spec = BatchSpec.from_grammar("1q4c4", page_size=4, dtype="bf16", **TINY)
    with pytest.raises(Unsupported, match="bf16"):
        get_adapter("triton").prepare(make_batch(spec, "cpu"))


# ------------------------------------------------------------------------------------------------
# Host side: validation, configs, planning (no kernel launch)

def _inputs(dtype=torch.float16):
    spec = BatchSpec.from_grammar("2q1c5_1q3c2", page_size=4, dtype="fp16", **TINY)
    batch = make_batch(spec, "cpu")
    return spec, batch


@pytest.mark.parametrize("change,message", [
    (dict(block_table=lambda b: b.block_table.long()), "block_table"),
    (dict(kv_lens=lambda b: b.kv_lens.long()), "kv_lens"),
    (dict(q=lambda b: b.q[:, :3]), "num_q_heads=3"),
    (dict(k_cache=lambda b: b.k_cache.float()), "dtype"),
    (dict(cu_seqlens_q=lambda b: b.cu_seqlens_q[:-1]), "cu_seqlens_q"),
])
def test_wrapper_rejects_bad_inputs(change, message):
    spec, batch = _inputs()
    tensors = dict(q=batch.q, k_cache=batch.k_cache, v_cache=batch.v_cache, block_table=batch.block_table,
                   cu_seqlens_q=batch.cu_seqlens_q, kv_lens=batch.kv_lens)
    for name, make in change.items():
        tensors[name] = make(batch)
        if name == "k_cache":
            tensors["v_cache"] = make(batch)
    with pytest.raises(ValueError, match=message):
        paged_attention(**tensors, max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=True,
                        scale=spec.scale)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_q_len=0), "max_q_len=0"),
    (dict(max_kv_len=10_000), "max_kv_len=10000"),
    (dict(scale=-1.0), "scale=-1.0"),
])
def test_wrapper_rejects_bad_host_values(kwargs, message):
    spec, batch = _inputs()
    args = dict(max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len, causal=True, scale=spec.scale)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                        batch.kv_lens, **args)


def test_config_key_uses_buckets_only():
    assert config_key(128, 16, 1) == ("decode", 128, "medium")
    assert config_key(128, 256, 2048) == config_key(128, 64, 300) == ("long", 128, "large")
    assert config_key(128, 32, 300) == ("long", 128, "medium")
    assert config_key(96, 3, 9) == ("short", 128, "small")
    assert config_key(128, 16, 512) == config_key(128, 16, 4096)


def test_plan_splits_decode_not_prefill():
    """On an H100-sized GPU a B16 decode is split over keys; a B64 decode (512 programs, about 4 per
    SM) and a large prefill fill it without."""
    common = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, page_size=16, num_sms=132)
    decode = plan_launch(num_tokens=16, num_seqs=16, max_q_len=1, max_kv_len=4097, **common)
    wide_decode = plan_launch(num_tokens=64, num_seqs=64, max_q_len=1, max_kv_len=4097, **common)
    prefill = plan_launch(num_tokens=8192, num_seqs=4, max_q_len=2048, max_kv_len=4096, **common)
    assert decode.num_splits > 1 and decode.split_size % decode.config.block_n == 0
    assert decode.num_splits * decode.split_size >= 4097
    assert wide_decode.num_splits == 1
    assert prefill.num_splits == 1
    assert prefill.num_q_blocks >= 8192 // prefill.block_q


def test_plan_takes_smaller_tiles_when_wide_ones_would_not_fill_the_gpu():
    """On 132 SMs a B1 q512 prefill has too few 128-row tiles for one wave: the plan takes the
    ``long-few`` entry; a B4 q2048 prefill keeps the wide tiles; an explicit config is never replaced."""
    common = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, page_size=256, num_sms=132)
    small = plan_launch(num_tokens=512, num_seqs=1, max_q_len=512, max_kv_len=1536, **common)
    large = plan_launch(num_tokens=8192, num_seqs=4, max_q_len=2048, max_kv_len=4096, **common)
    assert small.config == CONFIG_TABLE["long-few", 128, "large"] and small.block_m == 64
    assert large.config == CONFIG_TABLE["long", 128, "large"] and large.block_m == 128
    forced = plan_launch(num_tokens=512, num_seqs=1, max_q_len=512, max_kv_len=1536,
                         config=CONFIG_TABLE["long", 128, "large"], **common)
    assert forced.block_m == 128
    # a B16 decode (128 programs) keeps the decode tiles; a B1 decode (8) takes 128-key steps
    decode = plan_launch(num_tokens=16, num_seqs=16, max_q_len=1, max_kv_len=4097, **common)
    assert decode.config == CONFIG_TABLE["decode", 128, "large"]
    single = plan_launch(num_tokens=1, num_seqs=1, max_q_len=1, max_kv_len=16385, **common)
    assert single.config == CONFIG_TABLE["decode-few", 128, "large"] and single.config.block_n == 128
    assert single.num_splits * 8 >= 132 and single.split_size % 128 == 0


def test_plan_takes_the_window_entry_of_windowed_decodes():
    """A windowed D=128 decode at pages of 16 takes the ``decode-window`` entry (32-key steps); without a window,
    or at page 256 (no such entry), the plain decode entry; an explicit config is never replaced."""
    common = dict(num_tokens=64, num_seqs=64, num_q_heads=32, num_kv_heads=8, head_dim=128, max_q_len=1,
                  max_kv_len=16384, num_sms=132, host_kv_lens=[16384] * 64)
    windowed = plan_launch(page_size=16, sliding_window=4096, **common)
    assert windowed.config == CONFIG_TABLE["decode-window", 128, "medium"] and windowed.config.block_n == 32
    assert plan_launch(page_size=16, **common).config == CONFIG_TABLE["decode", 128, "medium"]
    assert plan_launch(page_size=256, sliding_window=4096, **common).config == CONFIG_TABLE["decode", 128, "large"]
    forced = plan_launch(page_size=16, sliding_window=4096, config=CONFIG_TABLE["decode", 128, "medium"], **common)
    assert forced.config.block_n == 64


def test_plan_splits_keys_only_into_long_chunks():
    """Decode splits to about one program per SM and never below the config's chunk length; a long
    query splits only where chunks stay long (a B1 q64 chunked prefill against 32k keys), not a
    B1 q512 prefill with 2.5k keys (whole: 61.5 us, two chunks: 72.2 us on the H100)."""
    common = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, page_size=256, num_sms=132)
    b16 = plan_launch(num_tokens=16, num_seqs=16, max_q_len=1, max_kv_len=16385, **common)
    assert b16.num_splits == 2
    short_context = plan_launch(num_tokens=1, num_seqs=1, max_q_len=1, max_kv_len=1025, **common)
    assert short_context.split_size >= short_context.config.min_split_keys
    assert short_context.num_splits == 9
    prefill = plan_launch(num_tokens=512, num_seqs=1, max_q_len=512, max_kv_len=2560, **common)
    assert prefill.num_splits == 1
    chunked = plan_launch(num_tokens=64, num_seqs=1, max_q_len=64, max_kv_len=32768, **common)
    assert chunked.num_splits > 1 and chunked.split_size >= chunked.config.min_split_keys
    assert not chunked.launch_merge_early  # the planner is told whether the device has PDL
    assert plan_launch(num_tokens=64, num_seqs=1, max_q_len=64, max_kv_len=32768, pdl_possible=True,
                       **common).launch_merge_early


def test_d256_split_merge_gets_more_warps():
    """At D=256 the merge kernel's tile (block_m x 256 fp32, twice) spills at 4 warps: the D=256 short
    and long entries give it 8 and 16; every other entry keeps 4 (docs/triton_kernel_notes.md)."""
    assert {key: config.merge_warps for key, config in CONFIG_TABLE.items() if config.merge_warps != 4} == {
        (bucket, 256, page): warps for bucket, warps in (("short", 8), ("long", 16))
        for page in ("small", "medium", "large")}
    spec = BatchSpec.from_grammar("1q40c2000", page_size=16, dtype="fp16", num_q_heads=2, num_kv_heads=1,
                                  head_dim=256)
    batch = make_batch(spec, "cpu")
    launcher = prepare_paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table,
                                       batch.cu_seqlens_q, batch.kv_lens, max_q_len=40, max_kv_len=2040,
                                       causal=True, scale=spec.scale, num_splits=2)
    assert launcher.plan.config == CONFIG_TABLE["long", 256, "medium"]
    assert launcher._merge_args["num_warps"] == 16


def test_adapter_imports_and_explains_without_triton():
    """Discovery imports every adapter on CPU machines: the module must import with no triton."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from adapters.backends.triton_paged import TritonPagedAdapter\n"
            "ok, reason = TritonPagedAdapter().available(torch.device('cpu'))\n"
            "assert not ok and 'triton' in reason, reason\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


# ------------------------------------------------------------------------------------------------
# GPU: bf16 and fp16 over random batches

@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(),
                    reason="needs a CUDA device and the kernels built for it (TRITON_INTERPRET unset)")
class TestOnGPU:
    @pytest.mark.parametrize("dtype", ["bf16", "fp16"])
    @pytest.mark.parametrize("seed", range(6))
    def test_random_batches(self, dtype, seed):
        generator = torch.Generator().manual_seed(1000 + seed)

        def pick(options):
            return options[int(torch.randint(len(options), (1,), generator=generator))]

        grammar = pick(["4q1c100-3000", "2q1c500_2q7-300c0-900", "3q64-700c0-2000", "1q1c0_2q1-40c0-70",
                        "8q1-16c1-1500"])
        heads = pick([(32, 8), (8, 1), (16, 16), (12, 4)])
        spec = BatchSpec.from_grammar(grammar, seed=seed, page_size=pick([1, 16, 64, 256]),
                                      num_q_heads=heads[0], num_kv_heads=heads[1],
                                      head_dim=pick([64, 128, 256]), dtype=dtype, causal=bool(seed % 3))
        batch = make_batch(spec, "cuda")
        out, _ = run_kernel(batch)
        torch.cuda.synchronize()
        assert_matches_reference(batch, out, GPU_TOLERANCE[dtype])

    @pytest.mark.parametrize("dtype", ["bf16", "fp16"])
    def test_forced_splits_match(self, dtype):
        spec = BatchSpec.from_grammar("2q1c2000_2q33-500c100-1500", page_size=16, dtype=dtype)
        batch = make_batch(spec, "cuda")
        for num_splits in (1, 3, 8):
            out, _ = run_kernel(batch, num_splits=num_splits)
            torch.cuda.synchronize()
            assert_matches_reference(batch, out, GPU_TOLERANCE[dtype])

    @pytest.mark.parametrize("grammar", ["1q1c5000", "16q1c100-3000_2q33-500c100-1500"])
    def test_merge_launched_early_matches(self, grammar):
        """The merge kernel launched by programmatic dependent launch (Hopper) waits for every
        partial: its output equals the one launched after the attention kernel, bit for bit."""
        spec = BatchSpec.from_grammar(grammar, page_size=256)
        batch = make_batch(spec, "cuda")
        early, plan = run_kernel(batch, num_splits=7, launch_merge_early=True)
        early = early.clone()
        later, later_plan = run_kernel(batch, num_splits=7, launch_merge_early=False)
        torch.cuda.synchronize()
        assert plan.num_splits > 1 and not later_plan.launch_merge_early
        assert plan.launch_merge_early == (torch.cuda.get_device_capability()[0] >= 9)
        assert torch.equal(early, later)
        assert_matches_reference(batch, early, GPU_TOLERANCE["bf16"])

    @pytest.mark.parametrize("seed", range(4))
    def test_tma_path(self, seed):
        """TMA descriptors (tile inside a page) against the reference, decode and prefill shapes."""
        page_size = (64, 256)[seed % 2]
        head_dim = (64, 128, 256, 128)[seed]
        spec = BatchSpec.from_grammar("4q1c100-3000_2q30-400c0-900", seed=seed, page_size=page_size,
                                      head_dim=head_dim, causal=seed != 3)
        batch = make_batch(spec, "cuda")
        for config in (KernelConfig(64, 64, 4, 3, use_tma=True), KernelConfig(16, 64, 4, 3, use_tma=True)):
            out, plan = run_kernel(batch, config=config, num_splits=None if config.block_m > 16 else 4)
            torch.cuda.synchronize()
            assert plan.use_tma
            assert_matches_reference(batch, out, GPU_TOLERANCE["bf16"])

    @pytest.mark.parametrize("page_size", [16, 256])
    def test_register_capped_wide_tiles(self, page_size):
        """128-row tiles over 8 warps with registers capped at 128 (spilling) stay exact."""
        spec = BatchSpec.from_grammar("2q1c2000_3q33-700c100-1500", seed=page_size, page_size=page_size)
        batch = make_batch(spec, "cuda")
        config = KernelConfig(128, 64, 8, 3, use_tma=True, max_registers=128)
        out, plan = run_kernel(batch, config=config)
        torch.cuda.synchronize()
        assert plan.use_tma == (page_size == 256)
        assert_matches_reference(batch, out, GPU_TOLERANCE["bf16"])

    def test_adapter_on_gpu(self):
        adapter = get_adapter("triton")
        assert adapter.available(torch.device("cuda")) == (True, "")
        spec = BatchSpec.from_grammar("8q1c3000_2q9-200c0-700", page_size=16)
        batch = make_batch(spec, "cuda")
        prepared = adapter.prepare(batch)
        prepared.out.fill_(float("nan"))
        out, _ = prepared.run()
        torch.cuda.synchronize()
        assert_matches_reference(batch, out, GPU_TOLERANCE["bf16"])
