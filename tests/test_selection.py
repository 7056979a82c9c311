"""Command-line options -> cases (harness.cases.selection): sweeps, --case, --sweep-file, model/heads/dtype/page/
seed/causal/pool on any of them, workloads, one-line usage errors; and the sweeps' names and cell ids
staying what asv and published results key on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from harness.cases.selection import (UsageError, add_selection_options, select_cases, selection_argv,
                                     split_case_text)
from harness.cases.sweep import (RETIRED_FROM_DEFAULT, SWEEP_CASES, SWEEPS, Case, make_case, override_case,
                                 uniform_case)
from harness.measure.results import cell_id

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="paged-bench")
    add_selection_options(parser)
    return parser.parse_args(list(argv))


def names(*argv: str, device: str = "cuda") -> list[str]:
    return [case.name for case in select_cases(parse(*argv), device).cases]


# ---------------------------------------------------------------------------------------------- stable identity

def test_existing_cases_keep_their_cell_ids_golden_cpu_rows():
    tiny = {case.name: case for case in SWEEPS["cpu-tiny"]}
    rows = [json.loads(line) for line in (ROOT / "tests/data/golden_cpu_tiny.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        assert cell_id(row["backend"], tiny[row["case"]]) == row["cell_id"], row["case"]
    assert cell_id("triton", tiny["tiny-decode-b4-q1-c64-p16"]) == "c84522e77aa1ebc0"
    assert cell_id("cudnn", tiny["tiny-decode-b4-q1-c64-p16"]) == "7baf3e47c89a60fa"


def test_published_default_cases_keep_their_names_and_cell_ids_or_stay_reserved():
    """Append-only: every case of the published default sweep is still in it with the same cell id,
    or has left it with its name reserved (and, where another sweep runs it, the same definition)."""
    default = {case.name: case for case in SWEEPS["default"]}
    everywhere = {case.name: case for cases in SWEEPS.values() for case in cases}
    rows = [json.loads(line) for line in (ROOT / "results/h100/results.jsonl").read_text().splitlines()]
    published = {row["case"] for row in rows}
    assert len(published) == 58
    for row in rows:
        if row["case"] in default:
            assert cell_id(row["backend"], default[row["case"]]) == row["cell_id"], row["case"]
        else:
            assert row["case"] in RETIRED_FROM_DEFAULT, row["case"]
            if row["case"] in everywhere:
                assert cell_id(row["backend"], everywhere[row["case"]]) == row["cell_id"]
    assert set(RETIRED_FROM_DEFAULT) == published - set(default)


def test_one_name_one_case_across_every_sweep():
    seen: dict[str, Case] = {}
    for cases in SWEEPS.values():
        for case in cases:
            assert seen.setdefault(case.name, case) == case, case.name


def test_the_default_sweep_new_cells():
    assert len(SWEEPS["default"]) == 66
    assert [case.name for case in SWEEP_CASES["default"]] == [
        "decode-b64-q1-c4096-p16-h32x8d64", "decode-b64-q1-c4096-p16-h16x8d256",
        "decode-b64-q1-c4096-p16-h8x1d128", "decode-b64-q1-c4096-p16-fp16",
        "prefill-b4-q2048-c2048-p16-h32x8d64", "prefill-b4-q2048-c2048-p16-h16x8d256",
        "prefill-b4-q2048-c2048-p16-h8x1d128", "prefill-b4-q2048-c2048-p16-fp16",
        "specdec-b64-q4-c4096-p16", "specdec-b32-q2-8-c16384-p16",
        "decode-b64-q1-c4096-p16-h8x1d128-pool16gib",
        # model features (tests/test_feature_reports.py checks their fields)
        "decode-b64-q1-c16384-p16-w4096", "prefill-b4-q2048-c2048-p16-h16x8d256-w1024",
        "prefill-b4-q2048-c2048-p16-h16x8d256-cap50", "mixed-32d-2p4k-p16-h64x8d64",
        "mixed-32d-2p4k-p16-h64x8d64-w128-sinks", "decode-b64-q1-c16384-p16-kvfp8",
        "decode-b64-q1-c16384-p16-kvfp8h",
    ]
    by_name = {case.name: case for case in SWEEPS["default"]}
    assert {"mixed-traffic-64d-2p2k-p16", "mixed-traffic-64d-2p2k-p256"} <= set(by_name)
    assert by_name["decode-b64-q1-c4096-p16-h16x8d256"].head_dim == 256
    assert by_name["decode-b64-q1-c4096-p16-fp16"].grammar == by_name["decode-b64-q1-c4096-p16"].grammar
    assert [by_name[n].workload for n in ("specdec-b64-q4-c4096-p16", "specdec-b32-q2-8-c16384-p16")] == ["spec-decode"] * 2
    # every new cell is a variant of a case the sweep already times, so the two are directly comparable
    for case in SWEEP_CASES["default"][:8]:
        assert case.stem + f"-p{case.page_size}" in by_name


def test_names_spell_out_every_field_that_differs_from_the_standard():
    case = uniform_case("decode", 64, 1, 4096, 16)
    assert case.name == "decode-b64-q1-c4096-p16" and case.as_dict() == Case(
        "decode-b64-q1-c4096-p16", "64q1c4k", 16).as_dict()
    variant = override_case(case, num_q_heads=16, head_dim=256, dtype="fp16", causal=False, seed=3, pool_pages=90000)
    assert variant.name == "decode-b64-q1-c4096-p16-h16x8d256-fp16-noncausal-pool90000pages-s3"
    assert override_case(variant, **{k: v for k, v in case.fields().items()}).name == case.name
    assert override_case(case, page_size=256).name == "decode-b64-q1-c4096-p256"
    tiny = SWEEPS["cpu-tiny"][0]
    assert override_case(tiny, dtype="fp32") == tiny  # its own base: no suffix
    assert override_case(tiny, head_dim=64).name == "tiny-decode-b4-q1-c64-p16-h4x2d64"
    hand = Case("my-case", "4q1c64", 16)  # made without a stem: suffix after its own name
    assert override_case(hand, dtype="fp16", page_size=32).name == "my-case-p32-fp16"
    pooled = make_case("x", "1q1c1", 16, pool_gib=16)
    assert pooled.pool_gib == 16.0 and pooled.name == "x-p16-pool16gib"


# ---------------------------------------------------------------------------------------------- selection

def test_default_sweep_by_device():
    assert names() == [case.name for case in SWEEPS["default"]]
    cpu = select_cases(parse(), "cpu")
    assert cpu.label == "cpu-tiny" and [c.name for c in cpu.cases] == [c.name for c in SWEEPS["cpu-tiny"]]


def test_model_applies_to_any_sweep_and_identical_variants_collapse():
    plain = [case.name for case in select_cases(parse("--model", "llama-3-8b"), "cuda").cases if not case.features]
    # the standard heads: standard cases stay as they are, the other heads' cells merge into them and
    standard = [case.name for case in select_cases(parse(), "cuda").cases if "-h" not in case.name and not case.features]
    assert plain == standard + ["decode-b64-q1-c4096-p16-pool16gib"]  # the pool cell is re-headed
    gemma = select_cases(parse("--model", "gemma-2-9b"), "cuda")
    assert gemma.label == "default+model=gemma-2-9b"
    assert all(case.head_dim == 256 and case.num_q_heads == 16 for case in gemma.cases)
    # the model's full layer: its soft-cap 50 on every case, no window, no sinks (the KV dtype stays the case's)
    assert all((case.softcap, case.sliding_window, case.sinks) == (50.0, None, False) for case in gemma.cases)
    assert "decode-b64-q1-c4096-p16-h16x8d256-cap50" in [case.name for case in gemma.cases]
    # heads cells merge (6), so do the window / cap / gpt-oss feature cells into their twins (5); the fp8 ones stay
    assert len(gemma.cases) == len(set(case.name for case in gemma.cases)) == 66 - 6 - 5
    assert [case.name for case in gemma.cases if case.kv_dtype] == [
        "decode-b64-q1-c16384-p16-h16x8d256-cap50-kvfp8", "decode-b64-q1-c16384-p16-h16x8d256-cap50-kvfp8h"]
    short = names("--sweep", "short", "--heads", "8/1/128", "--dtype", "fp16")
    # 20 axes cells and 7 named ones, whose MHA / 8:1 / D 256 decodes become the axes' re-headed decode
    assert short[0] == "decode-b64-q1-c4096-p16-h8x1d128-fp16" and len(short) == 20 + 7 - 3


def test_page_sizes_repeatable_or_comma_separated():
    got = names("--sweep", "short", "--workloads", "decode", "--page-size", "16,64", "--page-size", "128")
    assert [name for name in got if name.startswith("decode-b64-q1-c4096-p") and "-h" not in name] == [
        "decode-b64-q1-c4096-p16", "decode-b64-q1-c4096-p64", "decode-b64-q1-c4096-p128"]


def test_case_options_make_cases_with_the_given_fields():
    selection = select_cases(parse("--case", "8q1c3000_8q9-2000c0-7000", "--case", "verify=64q4c4k",
                                   "--model", "llama-3-70b-tp8", "--pool-gib", "4", "--seed", "2"), "cpu")
    assert selection.label == "cases+model=llama-3-70b-tp8+seed=2+pool=4gib"
    auto, named = selection.cases
    assert auto.name == "8q1c3000_8q9-2000c0-7000-p16-h8x1d128-pool4gib-s2" and auto.seed == 2
    assert named.name == "verify" and (named.num_kv_heads, named.pool_gib, named.page_size) == (1, 4.0, 16)
    assert [c.page_size for c in select_cases(parse("--case", "4q1c64", "--page-size", "8,32"), "cpu").cases] == [8, 32]


def test_sweep_and_case_together_and_duplicates_once():
    got = names("--sweep", "short", "--case", "decode-b64-q1-c4096-p16=64q1c4k")
    assert got.count("decode-b64-q1-c4096-p16") == 1 and len(got) == len(SWEEPS["short"]) == 27


def test_a_case_name_with_two_definitions_is_refused():
    with pytest.raises(UsageError, match="given to two different cases"):
        select_cases(parse("--sweep", "short", "--case", "decode-b64-q1-c4096-p16=64q1c2k"), "cuda")


def test_workloads_including_spec_decode():
    assert names("--workloads", "spec-decode") == ["specdec-b64-q4-c4096-p16", "specdec-b32-q2-8-c16384-p16"]
    assert all(name.startswith("mixed") for name in names("--workloads", "mixed"))


def test_distribution_cases_are_recorded_in_the_case():
    case = select_cases(parse("--case", "32q1c~lognormal(median=2k,sigma=0.8)", "--seed", "5"), "cpu").cases[0]
    assert case.grammar == "32q1c~lognormal(median=2k,sigma=0.8)" and case.seed == 5
    q_lens, kv_lens = case.lengths()
    assert len(set(kv_lens)) > 20 and case.workload == "decode"


def test_sweep_file_through_the_options(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[case]]\nname = "serve"\ngrammar = "8q1c1k_1q64c0"\n[axes.decode]\nbatch_sizes = [4]\n'
                    'contexts = [1024]\npage_sizes = [16]\n')
    selection = select_cases(parse("--sweep-file", str(path), "--dtype", "fp16"), "cuda")
    assert selection.label == "mine+dtype=fp16" and selection.sweep_file == str(path) and selection.sweep is None
    assert [c.name for c in selection.cases] == ["decode-b4-q1-c1024-p16-fp16", "serve-p16-fp16"]
    path.write_text('[[case]]\nname = "serve"\ngrammar = "8q1c1k_1q64c0"\ndtype = "int4"\n')
    with pytest.raises(UsageError, match=rf"--sweep-file {path}:4: case #1 'serve', field 'dtype': 'int4' is not"):
        select_cases(parse("--sweep-file", str(path)), "cuda")


@pytest.mark.parametrize("argv,words", [
    (("--model", "llama3"), "--model: unknown model 'llama3'; choose one of llama-3-8b"),
    (("--heads", "32/8"), "--heads: heads '32/8' is not HQ/HKV/D"),
    (("--heads", "32/8/80"), "--heads '32/8/80': head dim 80 is not supported; choose one of 8, 16"),
    (("--model", "gemma-2-9b", "--heads", "1/1/64"), "both set the heads; give one"),
    (("--dtype", "int8"), "--dtype 'int8' is not a dtype; choose one of bf16, fp16, fp32"),
    (("--page-size", "16,a"), "--page-size 'a' is not an integer"),
    (("--page-size", "0"), "--page-size '0' must be at least 1"),
    (("--sweep", "nope"), "--sweep 'nope' is not a sweep; choose one of default, short, cpu-tiny"),
    (("--workloads", "decod"), "decod is not a workload; choose from decode, prefill, mixed, spec-decode"),
    (("--case", "8x1"), "--case '8x1': batch string '8x1'"),
    (("--case", "a=64q1c4k", "--page-size", "16,32"), "a named case takes one page size"),
    (("--case", "64q1c4k", "--pool-pages", "3"), "case 64q1c4k-p16-pool3pages: pool_pages: 3: too small"),
    (("--pool-pages", "100", "--pool-gib", "1"), "both size the pool; give one"),
    (("--pool-gib", "-2"), "--pool-gib '-2' must be a positive number of GiB"),
    (("--seed", "x"), "--seed 'x' is not an integer"),
    (("--sweep-file", "/nonexistent/s.toml"), "--sweep-file /nonexistent/s.toml: cannot be read"),
    (("--sweep", "cpu-tiny", "--workloads", "spec-decode"), "selects none of the 4 cases of cpu-tiny"),
])
def test_bad_values_are_one_usage_error_naming_the_value(argv, words):
    with pytest.raises(UsageError) as caught:
        select_cases(parse(*argv), "cuda")
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_split_case_text():
    assert split_case_text("8q1c3000") == (None, "8q1c3000")
    assert split_case_text("mine=8q1c3000") == ("mine", "8q1c3000")
    assert split_case_text("8q1c~normal(mean=4k,sd=1k)") == (None, "8q1c~normal(mean=4k,sd=1k)")
    assert split_case_text("8q1c~normal(mean=4k,sd=1k)-p16=8q1c~normal(mean=4k,sd=1k)") == (
        "8q1c~normal(mean=4k,sd=1k)-p16", "8q1c~normal(mean=4k,sd=1k)")


def test_selection_argv_passes_the_options_on():
    argv = ["--sweep", "short", "--case", "x=4q1c64", "--model", "gemma-2-9b", "--page-size", "16,64",
            "--no-causal", "--pool-gib", "2", "--seed", "1", "--workloads", "decode"]
    again = parse(*selection_argv(parse(*argv)))
    assert vars(again) == vars(parse(*argv))


def test_a_case_builds_its_spec_once_and_its_identity_ignores_the_cache():
    """`Case.spec` is built at the first call and kept (the memory check, the batch, the row and the
    reproducer read one spec); the cache is no field, so a pickled case (sent to a worker), an equal
    case and a replaced one keep their identity and cell id."""
    import dataclasses
    import pickle

    from harness.cases.sweep import SWEEPS, Case, cell_id

    case = SWEEPS["cpu-tiny"][0]
    fresh = Case(**{f.name: getattr(case, f.name) for f in dataclasses.fields(case)})
    spec = case.spec()
    assert case.spec() is spec
    travelled = pickle.loads(pickle.dumps(case))
    assert travelled == case == fresh and hash(travelled) == hash(fresh)
    assert cell_id("triton", travelled) == cell_id("triton", fresh) == cell_id("triton", case)
    assert travelled.spec() == fresh.spec() == spec
    other = dataclasses.replace(case, page_size=case.page_size * 2)
    assert other.spec().page_size == case.page_size * 2 and cell_id("triton", other) != cell_id("triton", case)
