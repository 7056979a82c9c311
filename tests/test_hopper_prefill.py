"""The warp-specialised Gluon prefill kernel (``kernels/paged_attention/hopper_prefill.py``).

Gluon has no interpreter, so the kernel's results are checked on an sm_90 GPU (class ``gpu``) with the
gate's own comparisons, output and LSE, against the fp32 reference, model features (window, soft-cap,
sinks) included; on the CPU the tests compile it for sm_90 and check its partitions, what decides where it
runs (``hopper_prefill_refusal``), what the launcher binds and its bad-input errors."""

import dataclasses

import pytest
import torch

from adapters.batch import BatchSpec, make_batch, owned_slots
from adapters.reference import reference_attention
from harness.measure.gate import compare, compare_lse
from tests.triton_setup import HAVE_TRITON, INTERPRETED

try:  # Gluon ships with Triton 3.5+; older or missing Triton skips the module
    from kernels.paged_attention.configs import (HOPPER_PREFILL_MIN_WINDOW, HOPPER_PREFILL_SHORT_TABLE,
                                                 HOPPER_PREFILL_SHORT_KEYS, HOPPER_PREFILL_TABLE,
                                                 HOPPER_PREFILL_WINDOW_SCHEDULE, HopperPrefillConfig,
                                                 hopper_prefill_config)
    from kernels.paged_attention.hopper_prefill import HopperPrefillLauncher, hopper_prefill_refusal
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


def _features(batch):
    """The model features of ``batch`` as ``prepare_paged_attention`` takes them."""
    return dict(sliding_window=batch.spec.sliding_window, softcap=batch.spec.softcap, sinks=batch.sinks)


def assert_gluon(launcher):
    """The launch is the Gluon kernel's: a silent fallback to the Triton kernel fails the test."""
    assert isinstance(launcher, HopperPrefillLauncher), type(launcher)
    assert launcher.describe()["kernel"] == "gluon warp-specialised (sm_90)"


def run_poisoned(launcher):
    """Run a Gluon launch with its output and LSE NaN-poisoned first (a row it never writes fails the gate)
    -> (out, lse)."""
    assert_gluon(launcher)
    launcher.out.fill_(float("nan"))
    launcher.lse.fill_(float("nan"))
    out, lse = launcher()
    torch.cuda.synchronize()
    return out, lse


def gate_launch(launcher, batch, reference=None):
    """Run ``launcher`` on ``batch`` with NaN-poisoned output and LSE (``run_poisoned``); the gate's verdicts for
    both against ``reference`` ((out, lse); the fp32 reference's where None)."""
    out, lse = run_poisoned(launcher)
    ref, ref_lse = reference if reference is not None else reference_attention(batch, with_lse=True)
    return compare(out, ref, batch), compare_lse(lse, ref_lse, batch)


def run_and_gate(batch, config=None):
    """Launch the Gluon kernel on ``batch`` with its features, NaN-poisoned output and LSE; the gate's verdicts
    for both."""
    return gate_launch(_prepare(batch, return_lse=True, hopper_prefill=True, config=config, **_features(batch)), batch)


RAGGED = "2q1000c0-500_1q1c50_2q300c0_1q17c0_1q100c37"
"""The schedule tests' batch: ragged sequences, a decode, single-step tiles."""


def ragged_batch(variant, head_dim, heads, page_size, device="cuda"):
    """``RAGGED`` for a test ``variant``: ``"full"`` not causal, ``"window-N..."`` with an N-key window, ``"...-capped-
    sunk"`` with soft-cap 1 and sinks, any other causal and plain -> (the batch, its window or None)."""
    window = int(variant.split("-")[1]) if variant.startswith("window") else None
    features = dict(softcap=1.0, sinks=True) if variant.endswith("capped-sunk") else {}
    spec = BatchSpec.from_grammar(RAGGED, page_size=page_size, num_q_heads=heads[0], num_kv_heads=heads[1],
                                  head_dim=head_dim, dtype="bf16", causal=variant != "full", sliding_window=window,
                                  **features)
    return make_batch(spec, device), window


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
    """Each head dim's entry holds Q and its K/V ring in the 227 KiB an sm_90 block may use; 64-row tiles of short
    sequences' 64-key steps fit twice on a multiprocessor, 128-row ones (registers) and D=256's 64-row ones once."""
    for head_dim, config in HOPPER_PREFILL_TABLE.items():
        assert config.shared_bytes(head_dim) <= 227 * 1024, (head_dim, config.label())
        assert config.block_m % 64 == 0 and config.block_n % 16 == 0
        assert config.programs_per_sm(head_dim) == 1
    one_consumer = HOPPER_PREFILL_SHORT_TABLE[128]
    assert one_consumer.consumers == 1 and one_consumer.shared_bytes(128) == (64 + 2 * 2 * 64) * 128 * 2
    assert one_consumer.programs_per_sm(128) == 2 and one_consumer.programs_per_sm(256) == 1
    assert one_consumer.label() == "gluon-ws M64-N64-s2-persistent"
    # persistent programs where measured to win (notes, "v5.8"): D=64, D=128 and short 64-row tiles; not D=256
    assert [HOPPER_PREFILL_TABLE[d].persistent for d in (64, 128, 256)] == [True, True, False]
    assert [HOPPER_PREFILL_SHORT_TABLE[d].persistent for d in (64, 128, 256)] == [True, True, False]
    # every short entry fits its head dim, and 64-row tiles only where they compile (not at D=256)
    for head_dim, config in HOPPER_PREFILL_SHORT_TABLE.items():
        assert config.shared_bytes(head_dim) <= 227 * 1024, (head_dim, config.label())
        assert config.head_dim_refusal(head_dim) is None, (head_dim, config)
    assert one_consumer.head_dim_refusal(256) == "64-row tiles run head dims up to 128, not 256"
    assert set(HOPPER_PREFILL_SHORT_TABLE) == set(HOPPER_PREFILL_TABLE)


def test_config_names_its_schedule_or_says_what_is_wrong():
    """A schedule is one of the kernel's four and shows in the config's label, and so does one range; a misspelt
    schedule, half-wide steps with a paired schedule (whose loop runs full-width steps only) or one range with
    "step" is a ValueError that names it."""
    assert HopperPrefillConfig(128, 2).label() == "gluon-ws M128-N128-s2"
    assert HopperPrefillConfig(128, 2, schedule="pingpong").label() == "gluon-ws M128-N128-s2-pingpong"
    one_range = HopperPrefillConfig(64, 2, schedule="paired", one_range=True)
    assert one_range.label() == "gluon-ws M128-N64-s2-paired-onerange"
    with pytest.raises(ValueError, match="schedule 'ping': one of step, paired, pingpong, overlap"):
        HopperPrefillConfig(128, 2, schedule="ping")
    with pytest.raises(ValueError, match="half_step runs with the schedule 'step' only, not 'paired'"):
        HopperPrefillConfig(128, 2, half_step=True, schedule="paired")
    with pytest.raises(ValueError, match="one_range needs a paired schedule .* not 'step'"):
        HopperPrefillConfig(128, 2, one_range=True)
    with pytest.raises(ValueError, match="block_m=96: 64 .one consumer warpgroup. or 128 .two."):
        HopperPrefillConfig(128, 2, block_m=96)
    with pytest.raises(ValueError, match="the schedule 'pingpong' takes turns between two consumers: block_m=128"):
        HopperPrefillConfig(128, 2, schedule="pingpong", block_m=64)


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
    (``hopper_prefill=True``) applies to the long launch only; the configuration: short sequences' (64-row tiles
    at D=128), the head dim's, a windowed launch's schedule, the caller's."""
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
    assert _prepare(batch, num_decodes=0).config == HOPPER_PREFILL_SHORT_TABLE[64]
    longer = make_batch(BatchSpec.from_grammar(f"2q40c{HOPPER_PREFILL_SHORT_KEYS - 40 + 1}", page_size=16,
                                               num_q_heads=4, num_kv_heads=2, head_dim=64, dtype="fp16"), "cpu")
    assert _prepare(longer).config == HOPPER_PREFILL_TABLE[64] != HOPPER_PREFILL_SHORT_TABLE[64]
    # at D=64 and D=128 short sequences run 64-row tiles of one consumer (group 2: 32 queries a tile); at D=256
    # 128-row ones
    for head_dim, block_m in ((64, 64), (128, 64), (256, 128)):
        short = make_batch(BatchSpec.from_grammar("2q40c0-20", page_size=16, num_q_heads=4, num_kv_heads=2,
                                                  head_dim=head_dim, dtype="fp16"), "cpu")
        launcher = _prepare(short, num_decodes=0)
        assert launcher.config == HOPPER_PREFILL_SHORT_TABLE[head_dim] and launcher.config.block_m == block_m
        assert launcher.block_q == block_m // 2
    with pytest.raises(ValueError, match="is the Gluon kernel's, but hopper_prefill=False"):
        _prepare(batch, config=chosen, hopper_prefill=False)
    # a window shorter than HOPPER_PREFILL_MIN_WINDOW keys runs the Triton kernel, unless this one is asked for
    assert isinstance(_prepare(batch, num_decodes=0, sliding_window=HOPPER_PREFILL_MIN_WINDOW - 1),
                      PagedAttentionLauncher)
    assert isinstance(_prepare(batch, num_decodes=0, sliding_window=HOPPER_PREFILL_MIN_WINDOW),
                      HopperPrefillLauncher)
    assert isinstance(_prepare(batch, num_decodes=0, sliding_window=8, hopper_prefill=True), HopperPrefillLauncher)
    assert isinstance(_prepare(batch, num_decodes=0, sliding_window=8, config=chosen), HopperPrefillLauncher)
    # the table's schedule in ranges, but with a window HOPPER_PREFILL_WINDOW_SCHEDULE in one range (short
    # sequences' entry too); a caller's config as given
    d128 = make_batch(BatchSpec.from_grammar("2q40c600", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=128,
                                             dtype="fp16"), "cpu")
    assert _prepare(d128).config == HOPPER_PREFILL_TABLE[128] and HOPPER_PREFILL_TABLE[128].schedule == "overlap"
    assert not HOPPER_PREFILL_TABLE[128].one_range
    windowed = _prepare(d128, sliding_window=HOPPER_PREFILL_MIN_WINDOW).config
    assert windowed == dataclasses.replace(HOPPER_PREFILL_TABLE[128], schedule=HOPPER_PREFILL_WINDOW_SCHEDULE,
                                           one_range=True, persistent=False)
    # the entry's persistent programs give way to one tile a program (HOPPER_PREFILL_WINDOW_PERSISTENT)
    assert HOPPER_PREFILL_TABLE[128].persistent and windowed.label() == "gluon-ws M128-N128-s2-overlap-onerange"
    short_windowed = _prepare(batch, num_decodes=0, sliding_window=HOPPER_PREFILL_MIN_WINDOW).config
    assert short_windowed == dataclasses.replace(HOPPER_PREFILL_SHORT_TABLE[64], schedule="overlap", one_range=True,
                                                 persistent=False)
    paired = HopperPrefillConfig(128, 2, schedule="paired")
    assert _prepare(d128, sliding_window=HOPPER_PREFILL_MIN_WINDOW, config=paired).config == paired
    # the window's schedule and range replace the entry's, whatever they are
    from kernels.paged_attention import configs

    monkeypatch.setitem(configs.HOPPER_PREFILL_TABLE, 128, HopperPrefillConfig(128, 2, schedule="paired",
                                                                                one_range=True))
    for window_schedule, one_range, persistent in (("step", False, False), ("pingpong", True, True),
                                                   ("paired", False, True)):
        monkeypatch.setattr(configs, "HOPPER_PREFILL_WINDOW_SCHEDULE", window_schedule)
        monkeypatch.setattr(configs, "HOPPER_PREFILL_WINDOW_ONE_RANGE", one_range)
        monkeypatch.setattr(configs, "HOPPER_PREFILL_WINDOW_PERSISTENT", persistent)
        assert configs.hopper_prefill_config(128, 4096, 1024) == HopperPrefillConfig(
            128, 2, schedule=window_schedule, one_range=one_range, persistent=persistent)


def test_tma_loads_take_16_keys_unless_the_config_says_otherwise():
    """Each TMA load brings 16 keys at every page size (at page 256 they beat whole 128-key steps); a config's
    ``tma_keys`` replaces that where it divides the step and the page, and says why not where it does not."""
    from kernels.paged_attention.configs import HOPPER_PREFILL_TMA_KEYS
    from kernels.paged_attention.hopper_prefill import tma_keys

    assert HOPPER_PREFILL_TMA_KEYS == 16
    for page_size in (16, 32, 128, 256):
        assert tma_keys(HopperPrefillConfig(128, 2), page_size) == 16
        assert tma_keys(HopperPrefillConfig(64, 2), page_size) == 16
    assert tma_keys(HopperPrefillConfig(128, 2, tma_keys=64), 256) == 64
    assert tma_keys(HopperPrefillConfig(64, 2, tma_keys=32), 32) == 32
    for config, page_size in ((HopperPrefillConfig(128, 2, tma_keys=64), 32),
                              (HopperPrefillConfig(64, 2, tma_keys=128), 256),
                              (HopperPrefillConfig(128, 2, tma_keys=24), 256)):
        with pytest.raises(ValueError, match=f"tma_keys={config.tma_keys} must be a multiple of 16 dividing"):
            tma_keys(config, page_size)


def test_launcher_binds_softcap_and_sinks(monkeypatch):
    """Soft-cap and sinks reach the Gluon kernel as the Triton kernel takes them (its refusal patched to None, on
    CPU tensors never launched): ``tanh(q.k * scale / c)`` then ``c`` in log2 units, the sink logits' tensor;
    without them their switches are off and their runtime values None (constexprs: the plain kernel)."""
    from kernels.paged_attention import LOG2E, launch

    monkeypatch.setattr(launch, "hopper_prefill_refusal", lambda *args, **kwargs: None)
    spec = BatchSpec.from_grammar("2q40c0-20", page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=64,
                                  dtype="fp16", softcap=30.0, sinks=True)
    batch = make_batch(spec, "cpu")
    launcher = _prepare(batch, **_features(batch))
    assert_gluon(launcher)
    args = launcher._args
    assert args["SOFTCAP"] and args["HAS_SINKS"] and args["sinks_ptr"] is batch.sinks
    assert args["qk_scale"] == pytest.approx(30.0 * LOG2E) and args["softcap_in"] == pytest.approx(spec.scale / 30.0)
    plain = _prepare(batch)._args
    assert not plain["SOFTCAP"] and not plain["HAS_SINKS"]
    assert plain["softcap_in"] is None and plain["sinks_ptr"] is None
    assert plain["qk_scale"] == pytest.approx(spec.scale * LOG2E)


# ------------------------------------------------------------------------------------------------
# GPU (sm_90)

CAPPED_AND_SUNK = {"softcap": dict(softcap=1.0), "sinks": dict(sinks=True), "both": dict(softcap=1.0, sinks=True)}
"""Soft-cap and sinks as BatchSpec fields: a cap of 1 (scores of about N(0, 1) squeezed into (-1, 1): a kernel
that drops or misplaces the cap fails by far); ``adapters.batch.sink_logits`` gives the sinks a visible share
of each row."""


def _table_config(head_dim, persistent):
    """The head dim's table entry, as persistent programs where asked (None: the launch's own choice)."""
    return dataclasses.replace(HOPPER_PREFILL_TABLE[head_dim], persistent=True) if persistent else None


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
        """Long-query launches take this kernel, with a window, soft-cap or sinks too; decodes, an fp8 cache, a
        forced Triton configuration and hopper_prefill=False keep the Triton kernel; a mixed batch's decodes run
        apart beside it."""
        from kernels.paged_attention import DecodesApartLauncher, KernelConfig, PagedAttentionLauncher
        from kernels.paged_attention.hopper_prefill import HopperPrefillLauncher

        heads = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, dtype="bf16")
        prefill = make_batch(BatchSpec.from_grammar("2q300c100", page_size=16, **heads), "cuda")
        assert isinstance(_prepare(prefill), HopperPrefillLauncher)
        assert isinstance(_prepare(prefill, hopper_prefill=False), PagedAttentionLauncher)
        assert isinstance(_prepare(prefill, config=KernelConfig(128, 64, 8, 2)), PagedAttentionLauncher)
        # windows below HOPPER_PREFILL_MIN_WINDOW run the Triton kernel unless this one is asked for
        assert isinstance(_prepare(prefill, sliding_window=64), PagedAttentionLauncher)
        assert isinstance(_prepare(prefill, sliding_window=64, hopper_prefill=True), HopperPrefillLauncher)
        assert isinstance(_prepare(prefill, sliding_window=HOPPER_PREFILL_MIN_WINDOW), HopperPrefillLauncher)
        assert isinstance(_prepare(prefill, softcap=30.0), HopperPrefillLauncher)
        assert isinstance(_prepare(prefill, sinks=torch.zeros(32, device="cuda")), HopperPrefillLauncher)
        fp8 = make_batch(BatchSpec.from_grammar("2q300c100", page_size=16, kv_dtype="fp8", **heads), "cuda")
        scales = dict(k_scale=fp8.k_scale, v_scale=fp8.v_scale)
        assert isinstance(_prepare(fp8, **scales), PagedAttentionLauncher)
        with pytest.raises(ValueError, match="fp8 caches run the Triton kernel"):
            _prepare(fp8, hopper_prefill=True, **scales)
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
    @pytest.mark.parametrize("q_ahead", [False, True], ids=["q-in-tile", "q-ahead"])
    def test_persistent_programs_match_reference(self, head_dim, heads, block_n, stages, page_size, causal, window,
                                                 half, q_ahead):
        """``persistent``: one program per multiprocessor, each looping over hundreds of tiles it takes from the
        launch's counter, with the ring's slots counted on from tile to tile (a stage count that does not divide a
        tile's steps shifts the next tile's slots): ragged sequences, padding tiles, decodes in the launch, windows,
        half-wide steps, each next tile's Q loaded before the output of the one before is stored (``q_ahead``);
        output and LSE, in three launches of one launcher (each launch's last take sets the counter back to 0: left
        anywhere else, the next launch skips tiles)."""
        spec = BatchSpec.from_grammar("4q1000c0-500_3q1c50_2q300c0_1q17c0", page_size=page_size,
                                      num_q_heads=heads[0], num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16",
                                      causal=causal, sliding_window=window)
        config = HopperPrefillConfig(block_n, stages, half_step=half, persistent=True, q_ahead=q_ahead)
        batch = make_batch(spec, "cuda")
        launcher = _prepare(batch, config=config, return_lse=True, hopper_prefill=True, **_features(batch))
        programs = torch.cuda.get_device_properties(0).multi_processor_count
        assert launcher.describe()["programs"] == programs < launcher.num_q_blocks * heads[1]
        reference = reference_attention(batch, with_lse=True)
        for launch in range(3):
            verdict, lse_verdict = gate_launch(launcher, batch, reference)
            assert verdict.ok, f"launch {launch}: {verdict.reason}"
            assert lse_verdict.ok, f"launch {launch}: {lse_verdict.reason}"
            assert launcher.tile_counter.item() == 0, f"launch {launch} left the counter at {launcher.tile_counter}"

    @pytest.mark.parametrize("schedule", ["paired", "pingpong", "overlap"])
    @pytest.mark.parametrize("one_range", [False, True], ids=["ranges", "one-range"])
    @pytest.mark.parametrize("head_dim,heads,block_n", [(128, (32, 8), 128), (128, (32, 8), 64), (64, (64, 8), 128),
                                                        (256, (16, 8), 64), (128, (8, 8), 128)])
    @pytest.mark.parametrize("page_size", [16, 256])
    @pytest.mark.parametrize("variant", ["causal", "full", "window-100", "window-1000-capped-sunk", "persistent"])
    def test_paired_schedules_match_reference(self, schedule, one_range, head_dim, heads, block_n, page_size,
                                              variant):
        """``schedule`` ``"paired"``, ``"pingpong"`` and ``"overlap"``: a step's ``Q K^T`` issued beside the step
        before's ``P V`` (overlap: its softmax while that product is in flight, O rescaled after), each range's V
        buffers released by itself, and (pingpong) the two warpgroups' turns counted across the
        window's edge, unmasked and masked ranges (and from tile to tile in persistent programs; a miscount
        deadlocks or races); with ``one_range`` a tile's steps in one range, each step's masks chosen as it runs (a
        wrong choice drops or leaks keys at the window's edge, the diagonal or the ragged end): ragged sequences, a
        decode, single-step tiles, soft-cap and sinks; output and LSE."""
        batch, _ = ragged_batch(variant, head_dim, heads, page_size)
        config = HopperPrefillConfig(block_n, 2, persistent=variant == "persistent", schedule=schedule,
                                     one_range=one_range)
        label = _prepare(batch, config=config, **_features(batch)).describe()["config"]
        assert label.endswith(f"-{schedule}" + ("-onerange" if one_range else "")), label
        verdict, lse_verdict = run_and_gate(batch, config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("schedule", ["step", "paired", "pingpong", "overlap"])
    @pytest.mark.parametrize("head_dim,heads,block_n,stages,block_m", [(128, (32, 8), 128, 2, 128),
                                                                       (256, (16, 8), 64, 2, 128),
                                                                       (64, (64, 8), 128, 3, 128),
                                                                       (128, (32, 8), 64, 2, 64)])
    @pytest.mark.parametrize("page_size", [16, 256])
    @pytest.mark.parametrize("variant", ["causal", "window-100-capped-sunk", "persistent"])
    def test_k_ahead_matches_reference(self, schedule, head_dim, heads, block_n, stages, block_m, page_size, variant):
        """``k_ahead``: the producer loads step j+1's K before step j's V, so each ring's stages are filled in another
        order than the consumers release them in pairs (a slot or phase counted wrong deadlocks, or hands a
        consumer a tile before it has landed): every schedule, two and one consumers, windows in one range,
        persistent programs counting the ring on across tiles; ragged sequences, a decode, single-step tiles;
        output and LSE."""
        if schedule == "pingpong" and block_m == 64:
            pytest.skip("the schedule 'pingpong' takes turns between two consumers (the config refuses 64-row tiles)")
        batch, window = ragged_batch(variant, head_dim, heads, page_size)
        config = HopperPrefillConfig(block_n, stages, persistent=variant == "persistent", schedule=schedule,
                                     block_m=block_m, one_range=window is not None and schedule != "step",
                                     k_ahead=True)
        label = _prepare(batch, config=config, **_features(batch)).describe()["config"]
        assert label.endswith("-kahead"), label
        verdict, lse_verdict = run_and_gate(batch, config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("schedule", ["step", "pingpong", "overlap"])
    @pytest.mark.parametrize("head_dim,heads,block_n,stages,block_m", [(128, (32, 8), 128, 3, 128),
                                                                       (256, (16, 8), 64, 2, 128),
                                                                       (64, (64, 8), 128, 3, 128),
                                                                       (128, (8, 8), 64, 2, 64)])
    @pytest.mark.parametrize("page_size", [16, 256])
    @pytest.mark.parametrize("variant", ["causal", "full", "window-100-capped-sunk", "persistent", "persistent-qahead"])
    def test_o_in_q_matches_reference(self, schedule, head_dim, heads, block_n, stages, block_m, page_size, variant):
        """``o_in_q``: each consumer warpgroup stages its output in its own Q buffer. A read-back before every warp
        of the warpgroup has written its rows, or a persistent program's next Q written over rows not read back
        yet, gives wrong rows: 128-key steps in three stages at D=128 (what the option makes room for), D=256 with
        the producer's K ahead (its table entry), MHA in 64-row tiles, every schedule; ragged sequences, a decode,
        single-step tiles, windows with soft-cap and sinks, persistent programs (loading the next tile's Q before
        the output goes through the buffer, too); output and LSE."""
        if schedule == "pingpong" and block_m == 64:
            pytest.skip("the schedule 'pingpong' takes turns between two consumers (the config refuses 64-row tiles)")
        batch, window = ragged_batch(variant, head_dim, heads, page_size)
        config = HopperPrefillConfig(block_n, stages, persistent=variant.startswith("persistent"), schedule=schedule,
                                     block_m=block_m, one_range=window is not None and schedule != "step",
                                     k_ahead=head_dim == 256, o_in_q=True, q_ahead=variant.endswith("qahead"))
        label = _prepare(batch, config=config, **_features(batch)).describe()["config"]
        assert "-oq" in label, label
        verdict, lse_verdict = run_and_gate(batch, config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("schedule", ["step", "overlap"])
    @pytest.mark.parametrize("head_dim,heads,block_n,stages", [(128, (32, 8), 64, 2), (128, (32, 8), 128, 2),
                                                               (64, (64, 8), 128, 3), (128, (8, 8), 64, 2)])
    @pytest.mark.parametrize("page_size", [16, 256])
    @pytest.mark.parametrize("variant", ["causal", "full", "window-100-capped-sunk", "persistent", "half"])
    def test_one_consumer_tiles_match_reference(self, schedule, head_dim, heads, block_n, stages, page_size, variant):
        """``block_m`` 64: one consumer warpgroup a program (16 queries of GQA 4, 8 of GQA 8, 64 of MHA), each empty
        barrier released by it alone, the ring counted on across tiles in persistent programs (two a multiprocessor),
        windows in one range, soft-cap and sinks, half-wide masked steps ("step" only): ragged sequences, a decode,
        single-step tiles; output and LSE."""
        if variant == "half" and schedule != "step":
            pytest.skip("half-wide steps run with the schedule 'step' only (the config refuses the pair)")
        batch, window = ragged_batch(variant, head_dim, heads, page_size)
        config = HopperPrefillConfig(block_n, stages, persistent=variant == "persistent", schedule=schedule,
                                     half_step=variant == "half", block_m=64,
                                     one_range=window is not None and schedule != "step")
        launcher = _prepare(batch, config=config, **_features(batch))
        assert launcher.describe()["config"].startswith("gluon-ws M64-"), launcher.describe()
        assert launcher.block_q == 64 // (heads[0] // heads[1])
        verdict, lse_verdict = run_and_gate(batch, config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    def test_one_consumer_tiles_refuse_head_dim_256(self):
        """64-row tiles stop at ``HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM``: at D=256 the launch says why, before
        compiling."""
        spec = BatchSpec.from_grammar("1q300c0", page_size=16, num_q_heads=16, num_kv_heads=8, head_dim=256,
                                      dtype="bf16")
        with pytest.raises(ValueError, match="one consumer's 64-row tiles run head dims up to 128, not 256"):
            _prepare(make_batch(spec, "cuda"), config=HopperPrefillConfig(64, 2, block_m=64))

    @pytest.mark.parametrize("feature", CAPPED_AND_SUNK)
    @pytest.mark.parametrize("head_dim,heads,page_size", [(64, (64, 8), 32), (128, (32, 8), 16), (256, (16, 8), 256)])
    @pytest.mark.parametrize("causal,dtype", [(True, "bf16"), (False, "fp16")])
    @pytest.mark.parametrize("persistent", [False, True], ids=["one-tile", "persistent"])
    def test_softcap_and_sinks_match_reference(self, feature, head_dim, heads, page_size, causal, dtype, persistent):
        """Soft-cap (a cap of 1, where tanh saturates), sinks and both on ragged prefills, chunked prefills and a
        short sequence: every step's scores capped before the masks, each row's sink folded in once where the
        tile is written; one program per tile and persistent programs; output and LSE."""
        spec = BatchSpec.from_grammar("1q700c300_2q64-300c0-900_1q1c77", page_size=page_size, num_q_heads=heads[0],
                                      num_kv_heads=heads[1], head_dim=head_dim, dtype=dtype, causal=causal,
                                      **CAPPED_AND_SUNK[feature])
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"), config=_table_config(head_dim, persistent))
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("window", [1, 100])
    @pytest.mark.parametrize("head_dim,heads,page_size,feature", [(128, (32, 8), 16, "sinks"),
                                                                  (256, (16, 8), 256, "both")])
    @pytest.mark.parametrize("persistent", [False, True], ids=["one-tile", "persistent"])
    def test_window_with_sinks_matches_reference(self, window, head_dim, heads, page_size, feature, persistent):
        """A sliding window with sinks (and a soft-cap): a window of one key (each row sees itself and the sink)
        and one wider than a step (skipped steps, a masked left edge); output and LSE."""
        spec = BatchSpec.from_grammar("1q700c900_2q64-300c0-900_1q1c77", page_size=page_size, num_q_heads=heads[0],
                                      num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16", sliding_window=window,
                                      **CAPPED_AND_SUNK[feature])
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"), config=_table_config(head_dim, persistent))
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("head_dim,heads,block_n", [(128, (32, 8), 128), (256, (16, 8), 64)])
    @pytest.mark.parametrize("persistent", [False, True], ids=["one-tile", "persistent"])
    def test_half_wide_steps_with_softcap_and_sinks(self, head_dim, heads, block_n, persistent):
        """``half_step``'s half-wide masked steps cap their scores too; output and LSE."""
        spec = BatchSpec.from_grammar("1q700c300_2q64-300c0-900_1q1c77_1q512c0", page_size=16, num_q_heads=heads[0],
                                      num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16",
                                      **CAPPED_AND_SUNK["both"])
        config = HopperPrefillConfig(block_n, 2, half_step=True, persistent=persistent)
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"), config=config)
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("window", [None, 4096])
    def test_gemma2_like_cell(self, window):
        """The benchmark's Gemma-2-like cell: 16 query heads on 8 KV heads, D=256, soft-cap 50, global and local
        (a 4096-key window) layers, the launch's own configuration; output and LSE."""
        spec = BatchSpec.from_grammar("1q3000c2000_2q1000c0", page_size=16, num_q_heads=16, num_kv_heads=8,
                                      head_dim=256, dtype="bf16", softcap=50.0, sliding_window=window)
        verdict, lse_verdict = run_and_gate(make_batch(spec, "cuda"))
        assert verdict.ok, verdict.reason
        assert lse_verdict.ok, lse_verdict.reason

    @pytest.mark.parametrize("head_dim,heads", [(128, (32, 8)), (256, (16, 8))])
    @pytest.mark.parametrize("persistent", [False, True], ids=["one-tile", "persistent"])
    def test_rows_without_keys_get_the_sink(self, head_dim, heads, persistent):
        """Rows that see no key at all, with sinks: the device's ``kv_lens`` 20 below the first sequence's
        ``q_len`` (which no BatchSpec makes: its promise is ``kv_len >= q_len``), so bottom-right causal puts its
        first 20 queries before every key (a whole warpgroup's rows at GROUP 4). Those rows keep m = -1e30, l = 0
        until the sink: output exactly 0 and LSE the sink. The other rows are a batch with 20 fewer queries."""
        shift = 20
        fields = dict(page_size=16, num_q_heads=heads[0], num_kv_heads=heads[1], head_dim=head_dim, dtype="bf16",
                      softcap=1.0, sinks=True)
        batch = make_batch(BatchSpec.from_grammar("1q300c0_1q200c50", **fields), "cuda")
        kv_lens = batch.kv_lens - torch.tensor([shift, 0], dtype=torch.int32, device="cuda")
        # what the kernel sees after the empty rows: the same caches and block table, 20 fewer queries
        seen = dataclasses.replace(batch, spec=BatchSpec.from_grammar(f"1q{300 - shift}c0_1q200c50", **fields),
                                   q=batch.q[shift:], cu_seqlens_q=(batch.cu_seqlens_q - shift).clamp_min(0),
                                   kv_lens=kv_lens)
        from kernels.paged_attention import prepare_paged_attention

        spec = batch.spec
        launcher = prepare_paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_table,
                                           batch.cu_seqlens_q, kv_lens, max_q_len=spec.max_q_len,
                                           max_kv_len=spec.max_kv_len, causal=True, scale=spec.scale,
                                           return_lse=True, hopper_prefill=True, softcap=1.0, sinks=batch.sinks,
                                           config=_table_config(head_dim, persistent))
        out, lse = run_poisoned(launcher)
        seen_out, seen_lse = reference_attention(seen, with_lse=True)
        empty_lse = batch.sinks.expand(shift, -1)
        assert torch.equal(out[:shift], torch.zeros_like(out[:shift]))
        torch.testing.assert_close(lse[:shift], empty_lse, rtol=1e-6, atol=1e-5)
        ref = torch.cat([torch.zeros_like(seen_out[:shift]), seen_out])
        ref_lse = torch.cat([empty_lse, seen_lse])
        verdict, lse_verdict = compare(out, ref, batch), compare_lse(lse, ref_lse, batch)
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
for head_dim, page_size, group, dtype, window, config, softcap, sinks in {cases!r}:
    compiled = compile_sm90(head_dim, page_size, group, getattr(torch, dtype), sliding_window=window,
                            config=HopperPrefillConfig(*config) if config else None, softcap=softcap, sinks=sinks)
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
    print(len(re.findall(r"HGMMA", sass)), len(re.findall(r"WARPGROUP.DEPBAR", sass)),
          head_dim, page_size, group, dtype, compiled.metadata.shared,
          # the consumers' registers: 240 each of two, 232 for one (what its producer leaves: LAUNCH_MAXNREG)
          len(re.findall(r"setmaxnreg.inc.sync.aligned.u32\\s+%d;" % (232 if config and config[7:8] == (64,) else 240),
                         ptx)),
          len(re.findall(r"setmaxnreg.dec.sync.aligned.u32\\s+24;", ptx)),
          len(re.findall(r"wgmma.mma_async", ptx)), len(re.findall(r"cp.async.bulk.tensor", ptx)),
          len(re.findall(r"\\.param \\.f32", ptx)), len(re.findall(r"\\.param \\.u64 \\.ptr", ptx)))
"""


def _compile_for_sm90(cases):
    """``COMPILE_CHECK`` on ``cases`` (head dim, page size, group, dtype, window, config fields, soft-cap,
    sinks) in a subprocess without TRITON_INTERPRET; its rows after checking the partitions of each: the
    consumers' 240 registers (232 for a tile's one) and the producer's 24 (setmaxnreg), wgmma and TMA loads, shared
    memory that fits
    an sm_90 block, SASS that does not wait after every wgmma. Each row: (f32 parameters, pointer parameters)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_CHECK.format(repo=str(Path(__file__).parents[1]),
                                                                        cases=cases)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert len(rows) == len(cases), result.stdout
    params = []
    for row in rows:
        hgmma, waits = int(row[0]), int(row[1])
        # ptxas serialises every wgmma (a wait after each k-chunk, its C7512) when a product stays in flight
        # across the key loop's back edge: then there are as many waits as HGMMA instructions
        assert 0 < waits < hgmma / 2, f"{hgmma} HGMMA, {waits} WARPGROUP.DEPBAR: wgmma serialised ({row})"
        row = row[2:]
        shared, to_consumers, to_producer, wgmma, tma_loads, f32_params, ptr_params = map(int, row[4:])
        assert shared <= 227 * 1024, row
        assert to_consumers >= 1 and to_producer >= 1, row
        assert wgmma > 0 and tma_loads > 0, row
        params.append((f32_params, ptr_params))
    return params


@pytest.mark.skipif(ON_HOPPER, reason="the GPU class runs the kernel itself")
def test_compiles_for_sm90_with_its_partitions():
    """The CPU's check of the Gluon code (Triton's interpreter does not run Gluon): the kernel compiles
    for sm_90 at each head dim, at pages of 16 to 256 keys, GQA and MHA, bf16 and fp16, with half-wide masked
    steps, as persistent programs, in the paired schedules (in ranges or one), in tiles of one consumer, with the
    producer's K a step ahead, with the output staged in the Q buffer and with the next tile's Q loaded ahead; its PTX
    gives the consumers 240 registers (232 for one) and the producer 24 (setmaxnreg), issues wgmma and TMA loads, its
    shared memory fits an sm_90 block, and its SASS does not wait after every wgmma."""
    cases = [(64, 16, 8, "bfloat16", None, None), (128, 256, 4, "bfloat16", None, None),
             (128, 32, 1, "float16", 100, None), (256, 16, 2, "bfloat16", 1024, None),
             (128, 256, 4, "bfloat16", None, (128, 2, True)), (256, 16, 2, "bfloat16", 1024, (64, 2, True)),
             (128, 16, 4, "bfloat16", None, (128, 2, False, True)), (256, 256, 2, "float16", 1024, (64, 2, True, True)),
             # the paired schedules (HopperPrefillConfig.schedule)
             (128, 256, 4, "bfloat16", None, (128, 2, False, False, 0, "paired")),
             (128, 16, 4, "float16", 100, (128, 2, False, False, 0, "pingpong")),
             (256, 16, 2, "bfloat16", 1024, (64, 2, False, True, 0, "pingpong")),
             (64, 256, 8, "bfloat16", None, (128, 2, False, False, 0, "pingpong")),
             (128, 256, 4, "bfloat16", None, (128, 2, False, False, 0, "overlap")),
             (256, 16, 2, "float16", 1024, (64, 2, False, False, 0, "overlap")),
             # a tile's steps in one range (HopperPrefillConfig.one_range)
             (128, 256, 4, "bfloat16", None, (128, 2, False, False, 0, "paired", True)),
             (256, 16, 2, "bfloat16", 1024, (64, 2, False, True, 0, "overlap", True)),
             (128, 16, 4, "float16", 100, (128, 2, False, False, 0, "pingpong", True)),
             # tiles of one consumer, 64 rows (HopperPrefillConfig.block_m)
             (128, 256, 4, "bfloat16", None, (64, 2, False, False, 0, "step", False, 64)),
             (64, 16, 8, "float16", 100, (128, 3, True, True, 0, "step", False, 64)),
             (128, 16, 4, "bfloat16", 1024, (64, 2, False, False, 0, "overlap", True, 64)),
             # the producer's next K before this step's V (HopperPrefillConfig.k_ahead)
             (128, 256, 4, "bfloat16", None, (128, 2, False, False, 0, "overlap", False, 128, True)),
             (256, 16, 2, "bfloat16", 1024, (64, 2, False, True, 0, "overlap", True, 128, True)),
             (128, 16, 4, "float16", None, (64, 2, False, True, 0, "step", False, 64, True)),
             # the output staged in the Q buffer (HopperPrefillConfig.o_in_q): 128-key steps in three stages at D=128
             # fit only with it (245,888 bytes without)
             (128, 256, 4, "bfloat16", None, (128, 3, False, False, 0, "overlap", False, 128, False, True)),
             (128, 16, 1, "float16", 100, (128, 3, False, True, 0, "pingpong", False, 128, False, True)),
             (128, 256, 4, "bfloat16", None, (64, 2, False, True, 0, "step", False, 64, False, True)),
             # persistent consumers load the next tile's Q before storing this one's output (q_ahead)
             (128, 256, 4, "bfloat16", None, (128, 2, False, True, 0, "overlap", False, 128, False, False, True)),
             (128, 16, 4, "float16", None, (128, 3, False, True, 0, "overlap", False, 128, False, True, True))]
    _compile_for_sm90([case + (None, False) for case in cases])


@pytest.mark.skipif(ON_HOPPER, reason="the GPU class runs the kernel itself")
def test_compiles_softcap_and_sinks_for_sm90():
    """Soft-cap, sinks and both compile for sm_90 with the plain kernel's partitions (as
    ``test_compiles_for_sm90_with_its_partitions`` checks them) at D=64/128/256, one program per tile and
    persistent, with windows and half-wide steps; the soft-cap's ``scale / c`` and the sinks' pointer are the
    kernel's parameters there and only there, as the tile counter's pointer is where programs are persistent (the
    first case, plain and one tile a program, counts the others)."""
    plain = (128, 16, 4, "bfloat16", None, (128, 2, False, False), None, False)
    cases = [plain,
             # soft-cap (Gemma 2's 50, a 4096-key window at D=256 as its local layers)
             (128, 16, 4, "bfloat16", None, None, 50.0, False),
             (128, 256, 4, "float16", None, (128, 2, False, True), 1.0, False),
             (256, 256, 2, "bfloat16", None, None, 50.0, False),
             (256, 16, 2, "bfloat16", 4096, (64, 2, False, True), 50.0, False),
             # sinks
             (128, 32, 4, "float16", 100, None, None, True),
             (128, 16, 4, "bfloat16", None, (128, 2, False, True), None, True),
             (256, 16, 2, "bfloat16", None, None, None, True),
             (256, 256, 2, "bfloat16", None, (64, 2, False, True), None, True),
             # both
             (64, 16, 8, "bfloat16", None, None, 1.0, True),
             (128, 16, 4, "bfloat16", None, (128, 2, True), 50.0, True),
             (128, 16, 4, "bfloat16", 100, (128, 2, False, True), 50.0, True),
             (256, 16, 2, "bfloat16", 4096, None, 50.0, True),
             (256, 256, 2, "float16", None, (64, 2, True, True), 50.0, True)]
    params = _compile_for_sm90(cases)
    (plain_f32, plain_ptrs), rest = params[0], params[1:]
    for case, (f32_params, ptr_params) in zip(cases[1:], rest):
        head_dim, window, (config, softcap, sinks) = case[0], case[4], case[-3:]
        # a case without a config takes the launch's choice, as compile_sm90 does
        persistent = (HopperPrefillConfig(*config) if config
                      else hopper_prefill_config(head_dim, 2 ** 31 - 1, window)).persistent
        assert f32_params == plain_f32 + (softcap is not None), (case, f32_params, plain_f32)
        assert ptr_params == plain_ptrs + sinks + persistent, (case, ptr_params, plain_ptrs)
