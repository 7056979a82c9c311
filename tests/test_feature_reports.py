"""Model features in the sweeps and the reports: the default sweep's featured cells (names, fields, plain
twins), and every report path rendering folders that hold featured rows (their own "model features"
group, each cell beside its plain twin, reasons of declined cells visible)."""

from __future__ import annotations

import pytest

from harness.sweep import SWEEP_CASES, SWEEPS, make_case

FEATURE_CELLS = {
    "decode-b64-q1-c16384-p16-w4096": dict(grammar="64q1c16k", heads=(32, 8, 128), sliding_window=4096),
    "prefill-b4-q2048-c2048-p16-h16x8d256-w1024": dict(grammar="4q2kc2k", heads=(16, 8, 256), sliding_window=1024),
    "prefill-b4-q2048-c2048-p16-h16x8d256-cap50": dict(grammar="4q2kc2k", heads=(16, 8, 256), softcap=50.0),
    "mixed-32d-2p4k-p16-h64x8d64-w128-sinks": dict(grammar="32q1c512-8k_2q4kc0-4k", heads=(64, 8, 64),
                                                   sliding_window=128, sinks=True),
    "decode-b64-q1-c16384-p16-kvfp8": dict(grammar="64q1c16k", heads=(32, 8, 128), kv_dtype="fp8"),
    "decode-b64-q1-c16384-p16-kvfp8h": dict(grammar="64q1c16k", heads=(32, 8, 128), kv_dtype="fp8", kv_scale="head"),
}
TWINS = {
    "decode-b64-q1-c16384-p16-w4096": "decode-b64-q1-c16384-p16",
    "prefill-b4-q2048-c2048-p16-h16x8d256-w1024": "prefill-b4-q2048-c2048-p16-h16x8d256",
    "prefill-b4-q2048-c2048-p16-h16x8d256-cap50": "prefill-b4-q2048-c2048-p16-h16x8d256",
    "mixed-32d-2p4k-p16-h64x8d64-w128-sinks": "mixed-32d-2p4k-p16-h64x8d64",
    "decode-b64-q1-c16384-p16-kvfp8": "decode-b64-q1-c16384-p16",
    "decode-b64-q1-c16384-p16-kvfp8h": "decode-b64-q1-c16384-p16",
}


# --- the sweeps ------------------------------------------------------------------------------------------
def test_the_default_sweep_has_the_feature_cells_with_their_fields():
    default = {case.name: case for case in SWEEPS["default"]}
    featured = [case for case in SWEEPS["default"] if case.features]
    assert [case.name for case in featured] == list(FEATURE_CELLS)
    for name, expected in FEATURE_CELLS.items():
        case = default[name]
        assert case.grammar == expected["grammar"] and case.page_size == 16
        assert (case.num_q_heads, case.num_kv_heads, case.head_dim) == expected["heads"]
        assert (case.dtype, case.causal, case.seed) == ("bf16", True, 0)
        assert case.sliding_window == expected.get("sliding_window")
        assert case.softcap == expected.get("softcap")
        assert case.sinks == expected.get("sinks", False)
        assert (case.kv_dtype, case.kv_scale) == (expected.get("kv_dtype"), expected.get("kv_scale", "tensor"))
        assert case.pool_pages is None and case.pool_gib is None
        # named by make_case from its stem: rebuilding it gives the same case
        assert make_case(case.stem, case.grammar, 16, **{k: v for k, v in case.fields().items()}) == case
        spec = case.spec()  # a valid batch (a window needs causal attention)
        assert spec.features == case.features


def test_every_feature_cell_has_its_plain_twin_in_the_sweep():
    default = {case.name: case for case in SWEEPS["default"]}
    for name, twin in TWINS.items():
        case, plain = default[name], default[twin]
        assert not plain.features and plain.grammar == case.grammar and plain.page_size == case.page_size
        assert (plain.num_q_heads, plain.num_kv_heads, plain.head_dim) == (case.num_q_heads, case.num_kv_heads,
                                                                          case.head_dim)


def test_the_windows_matter_on_their_cells():
    """Each window is shorter than the keys its cell's queries see, so it changes the work."""
    from harness.metrics import spec_bytes, spec_flops

    default = {case.name: case for case in SWEEPS["default"]}
    for name, twin in TWINS.items():
        case = default[name]
        if case.sliding_window is None:
            continue
        q_lens, kv_lens = case.lengths()
        assert case.sliding_window < max(kv_lens)
        assert spec_flops(case.spec()) < spec_flops(default[twin].spec())
    # the long decode reads a quarter of its cache; the fp8 cache holds half the bytes
    window = spec_bytes(default["decode-b64-q1-c16384-p16-w4096"].spec())
    plain = spec_bytes(default["decode-b64-q1-c16384-p16"].spec())
    fp8 = spec_bytes(default["decode-b64-q1-c16384-p16-kvfp8"].spec())
    assert 0.24 < window / plain < 0.26 and 0.49 < fp8 / plain < 0.51


def test_features_stay_out_of_the_short_and_tiny_sweeps_and_plain_ids_stay():
    assert not any(case.features for name in ("short", "cpu-tiny") for case in SWEEPS[name])
    assert not any(case.features for case in SWEEP_CASES["short"])
    plain = {case.name: case for case in SWEEPS["default"] if not case.features}
    assert plain["decode-b64-q1-c4096-p16"].as_dict() == {
        "name": "decode-b64-q1-c4096-p16", "grammar": "64q1c4k", "page_size": 16, "num_q_heads": 32,
        "num_kv_heads": 8, "head_dim": 128, "dtype": "bf16", "causal": True, "seed": 0}


@pytest.mark.parametrize("name", list(FEATURE_CELLS))
def test_feature_cells_have_their_own_cell_ids(name):
    from harness.sweep import cell_id

    default = {case.name: case for case in SWEEPS["default"]}
    assert cell_id("cudnn", default[name]) != cell_id("cudnn", default[TWINS[name]])
