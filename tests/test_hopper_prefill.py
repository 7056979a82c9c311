"""The warp-specialised Gluon prefill kernel (``kernels/paged_attention/hopper_prefill.py``).

Gluon has no interpreter, so the kernel's results are checked on an sm_90 GPU (class ``gpu``) with the
gate's own comparisons, output and LSE, against the fp32 reference; on the CPU the tests compile it for
sm_90 and check its partitions, what decides where it runs (``hopper_prefill_refusal``) and its bad-input
errors."""

import pytest
import torch

from adapters.batch import BatchSpec, make_batch, owned_slots
from adapters.reference import reference_attention
from harness.measure.gate import compare, compare_lse
from tests.triton_setup import HAVE_TRITON, INTERPRETED

try:  # Gluon ships with Triton 3.5+; older or missing Triton skips the module
    from kernels.paged_attention.configs import (HOPPER_PREFILL_SHORT, HOPPER_PREFILL_SHORT_KEYS, HOPPER_PREFILL_TABLE,
                                                 HopperPrefillConfig)
    from kernels.paged_attention.hopper_prefill import BLOCK_M, hopper_prefill_refusal
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - depends on the installed triton
    HAVE_GLUON = False

pytestmark = pytest.mark.skipif(not (HAVE_TRITON and HAVE_GLUON), reason="needs triton with Gluon")

ON_HOPPER = (torch.cuda.is_available() and not INTERPRETED and torch.cuda.get_device_capability() == (9, 0))


def _prepare(batch, **kwargs):
    """``prepare_paged_attention`` on ``batch`` with its spec's lengths, causality and scale."""
    from kernels.paged_attention import prepare_paged_attention

    spec = batch.spec
    return prepare_paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table, batch.cu_seqlens_q,
                                   batch.kv_lens, max_q_len=spec.max_q_len, max_kv_len=spec.max_kv_len,
                                   causal=spec.causal, scale=spec.scale, **kwargs)


def run_and_gate(batch, config=None):
    """Launch on ``batch`` with NaN-poisoned output and LSE; the gate's verdicts for both."""
    launcher = _prepare(batch, return_lse=True, hopper_prefill=True, config=config,
                        sliding_window=batch.spec.sliding_window)
    launcher.out.fill_(float("nan"))
    launcher.lse.fill_(float("nan"))
    out, lse = launcher()
    torch.cuda.synchronize()
    ref, ref_lse = reference_attention(batch, with_lse=True)
    return compare(out, ref, batch), compare_lse(lse, ref_lse, batch)


# ------------------------------------------------------------------------------------------------
# CPU: where it runs, and bad input

def _cpu_tensors(page_size=16, head_dim=128, heads=(32, 8), dtype=torch.bfloat16):
    q = torch.empty(8, heads[0], head_dim, dtype=dtype)
    cache = torch.empty(4, page_size, heads[1], head_dim, dtype=dtype)
    return q, cache, cache.clone()


def test_refusal_names_why_not():
    """Every reason this kernel declines a batch is one line, and a CPU tensor is declined first."""
    q, k, v = _cpu_tensors()
    assert hopper_prefill_refusal(q, k, v) == "needs an sm_90 GPU"


def test_configs_fit_shared_memory():
    """Each head dim's entry holds Q and its K/V ring in the 227 KiB an sm_90 block may use."""
    for head_dim, config in HOPPER_PREFILL_TABLE.items():
        assert config.shared_bytes(head_dim) <= 227 * 1024, (head_dim, config.label())
        assert BLOCK_M % 64 == 0 and config.block_n % 16 == 0


@pytest.mark.skipif(ON_HOPPER, reason="checks the refusal off sm_90")
@pytest.mark.parametrize("grammar,kwargs,message", [
    ("1q64c64", dict(hopper_prefill=True), "cannot run this launch: needs an sm_90 GPU"),
    ("1q64c64", dict(config=HopperPrefillConfig(128, 2)), "cannot run this launch: needs an sm_90 GPU"),
    ("2q1c64", dict(hopper_prefill=True), "max_q_len=1 is not a long-query launch"),
    ("1q64c64", dict(hopper_prefill="yes"), "hopper_prefill='yes' must be None, True or False"),
])
def test_launcher_says_why_it_cannot_take_the_gluon_kernel(grammar, kwargs, message):
    spec = BatchSpec.from_grammar(grammar, page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=64, dtype="fp16")
    with pytest.raises(ValueError, match=message):
        _prepare(make_batch(spec, "cpu"), **kwargs)


def test_routing_with_the_device_check_passed(monkeypatch):
    """Where the Gluon kernel can run (its refusal patched to None here, on CPU tensors that are never
    launched): long-query launches take it, a mixed batch's decodes run apart beside it, and forcing it
    (``hopper_prefill=True``) applies to the long launch only."""
    from kernels.paged_attention import DecodesApartLauncher, PagedAttentionLauncher, launch
    from kernels.paged_attention.hopper_prefill import HopperPrefillLauncher

    monkeypatch.setattr(launch, "hopper_prefill_refusal", lambda *args, **kwargs: None)
    spec = BatchSpec.from_grammar("4q1c300_2q40c0-20", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=64,
                                  dtype="fp16")
    batch = make_batch(spec, "cpu")
    assert isinstance(_prepare(batch, num_decodes=0), HopperPrefillLauncher)
    for forced in (None, True):
        mixed = _prepare(batch, num_decodes=4, decodes_apart=True, hopper_prefill=forced)
        assert isinstance(mixed, DecodesApartLauncher)
        assert isinstance(mixed.decodes, PagedAttentionLauncher) and isinstance(mixed.rest, HopperPrefillLauncher)
    assert isinstance(_prepare(batch, hopper_prefill=False), PagedAttentionLauncher)
    chosen = HopperPrefillConfig(64, 3)
    assert _prepare(batch, config=chosen).config == chosen
    # short sequences (at most HOPPER_PREFILL_SHORT_KEYS keys) take 64-key steps, longer ones the head dim's entry
    assert _prepare(batch, num_decodes=0).config == HOPPER_PREFILL_SHORT
    longer = make_batch(BatchSpec.from_grammar(f"2q40c{HOPPER_PREFILL_SHORT_KEYS - 40 + 1}", page_size=16,
                                               num_q_heads=4, num_kv_heads=2, head_dim=64, dtype="fp16"), "cpu")
    assert _prepare(longer).config == HOPPER_PREFILL_TABLE[64] != HOPPER_PREFILL_SHORT
    with pytest.raises(ValueError, match="is the Gluon kernel's, but hopper_prefill=False"):
        _prepare(batch, config=chosen, hopper_prefill=False)


# ------------------------------------------------------------------------------------------------
# GPU (sm_90)

@pytest.mark.gpu
@pytest.mark.skipif(not ON_HOPPER, reason="needs an sm_90 GPU (Gluon's wgmma and setmaxnreg) and compiled kernels")
class TestOnHopper:
    @pytest.mark.parametrize("head_dim,heads", [(64, (64, 8)), (128, (32, 8)), (256, (16, 8)), (128, (8, 8)),
                                                (128, (64, 8))])
    @pytest.mark.parametrize("page_size", [16, 32, 256])
    @pytest.mark.parametrize("causal", [True, False])
    def test_ragged_batches_match_reference(self, head_dim, heads, page_size, causal):
        """Ragged prefills, chunked prefills and a short sequence in one batch: tiles that end
        mid-sequence, keys that end mid-step and mid-page, output and LSE."""
        spec = BatchSpec.from_grammar("1q700c300_2q64-300c0-900_1q1c77", page_size=page_size, num_q_heads=heads[0],
                                      num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16", causal=causal)
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"))
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("window", [1, 7, 100, 1000])
    @pytest.mark.parametrize("head_dim,heads,page_size", [(128, (32, 8), 16), (256, (16, 8), 256), (64, (64, 8), 32)])
    def test_sliding_window_matches_reference(self, window, head_dim, heads, page_size):
        """Windows narrower than a tile's queries and than a key step (every step masked), and wider
        than both (skipped steps, a masked left edge, unmasked steps, the diagonal)."""
        spec = BatchSpec.from_grammar("1q700c900_2q64-300c0-900_1q1c77", page_size=page_size, num_q_heads=heads[0],
                                      num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16", sliding_window=window)
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"))
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("page_size", [16, 256])
    def test_unowned_slots_holding_nan_are_never_used(self, page_size):
        """Slots past kv_len in a sequence's last page may hold anything, NaN included: the TMA loads
        bring them in, the masks and the zeroed V rows keep them out."""
        spec = BatchSpec.from_grammar("2q100c37_1q250c5", page_size=page_size, num_q_heads=32, num_kv_heads=8,
                                      head_dim=128, dtype="fp16")
        batch = make_batch(spec, "cuda")
        unowned = ~owned_slots(spec, batch.block_table)
        unowned[0] = False  # the null page stays zero (the canonical batch's promise)
        batch.k_cache[unowned] = float("nan")
        batch.v_cache[unowned] = float("nan")
        verdict, lse_verdict = run_and_gate(batch)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    def test_launcher_routes_long_queries_here(self):
        """Long-query launches take this kernel; decodes, model features, a forced Triton configuration
        and hopper_prefill=False keep the Triton kernel; a mixed batch's decodes run apart beside it."""
        from kernels.paged_attention import DecodesApartLauncher, KernelConfig, PagedAttentionLauncher
        from kernels.paged_attention.hopper_prefill import HopperPrefillLauncher

        heads = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, dtype="bf16")
        prefill = make_batch(BatchSpec.from_grammar("2q300c100", page_size=16, **heads), "cuda")
        assert isinstance(_prepare(prefill), HopperPrefillLauncher)
        assert isinstance(_prepare(prefill, hopper_prefill=False), PagedAttentionLauncher)
        assert isinstance(_prepare(prefill, config=KernelConfig(128, 64, 8, 2)), PagedAttentionLauncher)
        assert isinstance(_prepare(prefill, sliding_window=64), HopperPrefillLauncher)
        assert isinstance(_prepare(prefill, softcap=30.0), PagedAttentionLauncher)
        with pytest.raises(ValueError, match="soft-cap, sinks and fp8 caches run the Triton kernel"):
            _prepare(prefill, softcap=30.0, hopper_prefill=True)
        decode = make_batch(BatchSpec.from_grammar("4q1c300", page_size=16, **heads), "cuda")
        assert isinstance(_prepare(decode), PagedAttentionLauncher)
        mixed = make_batch(BatchSpec.from_grammar("64q1c4000_2q500c0", page_size=16, **heads), "cuda")
        launcher = _prepare(mixed, num_decodes=64, return_lse=True)
        assert isinstance(launcher, DecodesApartLauncher) and isinstance(launcher.rest, HopperPrefillLauncher)
        out, lse = launcher()
        ref, ref_lse = reference_attention(mixed, with_lse=True)
        assert compare(out, ref, mixed).ok and compare_lse(lse, ref_lse, mixed).ok
        assert "gluon-ws" in launcher.describe()["config"]

    @pytest.mark.parametrize("head_dim,heads,block_n", [(128, (32, 8), 128), (64, (64, 8), 128), (256, (16, 8), 64),
                                                        (128, (8, 8), 128), (128, (64, 8), 128)])
    @pytest.mark.parametrize("page_size", [16, 256])
    @pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 100), (True, 1)])
    def test_half_wide_masked_steps_match_reference(self, head_dim, heads, block_n, page_size, causal, window):
        """``half_step``: masked steps whose second half no row of a warpgroup sees run at half width, on
        tiles whose diagonal overhangs a step (GQA 4 and 8: 32 and 16 queries a tile), MHA (128 queries: no
        step qualifies but the last), ragged ends, windows; output and LSE."""
        spec = BatchSpec.from_grammar("1q700c300_2q64-300c0-900_1q1c77_1q512c0", page_size=page_size,
                                      num_q_heads=heads[0], num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16",
                                      causal=causal, sliding_window=window)
        config = HopperPrefillConfig(block_n, 2, half_step=True)
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"), config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("head_dim,heads,block_n,stages", [(128, (32, 8), 128, 2), (128, (32, 8), 64, 2),
                                                               (64, (64, 8), 128, 3), (256, (16, 8), 64, 2),
                                                               (128, (8, 8), 128, 2)])
    @pytest.mark.parametrize("page_size", [16, 256])
    @pytest.mark.parametrize("causal,window,half", [(True, None, False), (False, None, False), (True, 100, False),
                                                    (True, None, True)])
    def test_persistent_programs_match_reference(self, head_dim, heads, block_n, stages, page_size, causal, window,
                                                 half):
        """``persistent``: one program per multiprocessor, each looping over hundreds of tiles with the ring's
        slots counted on from tile to tile (a stage count that does not divide a tile's steps shifts the next
        tile's slots): ragged sequences, padding tiles, decodes in the launch, windows, half-wide steps; output
        and LSE."""
        spec = BatchSpec.from_grammar("4q1000c0-500_3q1c50_2q300c0_1q17c0", page_size=page_size,
                                      num_q_heads=heads[0], num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16",
                                      causal=causal, sliding_window=window)
        config = HopperPrefillConfig(block_n, stages, half_step=half, persistent=True)
        batch = make_batch(spec, "cuda")
        launcher = _prepare(batch, config=config, sliding_window=window)
        programs = torch.cuda.get_device_properties(0).multi_processor_count
        assert launcher.describe()["programs"] == programs < launcher.num_q_blocks * heads[1]
        verdict, lse_verdict = run_and_gate(batch, config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("config", [HopperPrefillConfig(64, 2), HopperPrefillConfig(128, 3)],
                             ids=lambda config: config.label())
    def test_other_steps_and_stages(self, config):
        """Other key steps and ring depths (the tuning script's candidates) give the same results."""
        spec = BatchSpec.from_grammar("4q200-600c0-1000", page_size=64, num_q_heads=32, num_kv_heads=8,
                                      head_dim=64, dtype="fp16")
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"), config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason


COMPILE_CHECK = """
import os, re, subprocess, sys, tempfile, torch
sys.path.insert(0, {repo!r})
import triton
from kernels.paged_attention.hopper_prefill import compile_sm90
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
from kernels.paged_attention.configs import HopperPrefillConfig
for head_dim, page_size, group, dtype, window, config in {cases!r}:
    compiled = compile_sm90(head_dim, page_size, group, getattr(torch, dtype), sliding_window=window,
                            config=HopperPrefillConfig(*config) if config else None)
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
    print(len(re.findall(r"HGMMA", sass)), len(re.findall(r"WARPGROUP.DEPBAR", sass)),
          head_dim, page_size, group, dtype, compiled.metadata.shared,
          len(re.findall(r"setmaxnreg.inc.sync.aligned.u32\\s+240;", ptx)),
          len(re.findall(r"setmaxnreg.dec.sync.aligned.u32\\s+24;", ptx)),
          len(re.findall(r"wgmma.mma_async", ptx)), len(re.findall(r"cp.async.bulk.tensor", ptx)))
"""


@pytest.mark.skipif(ON_HOPPER, reason="the GPU class runs the kernel itself")
def test_compiles_for_sm90_with_its_partitions():
    """The CPU's check of the Gluon code (Triton's interpreter does not run Gluon): the kernel compiles
    for sm_90 at each head dim, with page pieces and whole-step loads, GQA and MHA, bf16 and fp16, with
    half-wide masked steps and as persistent programs; its PTX gives the consumers 240 registers and the
    producer 24 (setmaxnreg), issues wgmma and TMA loads, its shared memory fits an sm_90 block, and its SASS
    does not wait after every wgmma."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cases = [(64, 16, 8, "bfloat16", None, None), (128, 256, 4, "bfloat16", None, None),
             (128, 32, 1, "float16", 100, None), (256, 16, 2, "bfloat16", 1024, None),
             (128, 256, 4, "bfloat16", None, (128, 2, True)), (256, 16, 2, "bfloat16", 1024, (64, 2, True)),
             (128, 16, 4, "bfloat16", None, (128, 2, False, True)), (256, 256, 2, "float16", 1024, (64, 2, True, True))]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_CHECK.format(repo=str(Path(__file__).parents[1]),
                                                                        cases=cases)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert len(rows) == len(cases), result.stdout
    for row in rows:
        hgmma, waits = int(row[0]), int(row[1])
        # ptxas serialises every wgmma (a wait after each k-chunk, its C7512) when a product stays in flight
        # across the key loop's back edge: then there are as many waits as HGMMA instructions
        assert 0 < waits < hgmma / 2, f"{hgmma} HGMMA, {waits} WARPGROUP.DEPBAR: wgmma serialised ({row})"
        row = row[2:]
        shared, to_consumers, to_producer, wgmma, tma_loads = map(int, row[4:])
        assert shared <= 227 * 1024, row
        assert to_consumers >= 1 and to_producer >= 1, row
        assert wgmma > 0 and tma_loads > 0, row
