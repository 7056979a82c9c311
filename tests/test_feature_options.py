"""Model features everywhere a user names a case (issue 26): --model presets with their layer's features,
the --window / --softcap / --sinks / --kv-dtype / --kv-scale options (good values rename the case, bad
ones are one usage line before anything runs), the same keys in sweep files with line-numbered errors,
reproducers that carry the features back, and plain cases that keep their names and cell ids."""

from __future__ import annotations

import argparse
import shlex

import pytest

from harness.cases.reproducer import reproducer, reproducer_argv
from harness.cases.selection import UsageError, add_selection_options, select_cases, selection_argv
from harness.cases.sweep import SWEEPS, Case, cell_id, make_case
from harness.cases.sweepfile import SweepFileError, parse_sweep_text


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="paged-bench")
    add_selection_options(parser)
    for option in ("--backends", "--out", "--device"):
        parser.add_argument(option)
    parser.add_argument("--capability", action=argparse.BooleanOptionalAction, default=None)
    return parser.parse_args(list(argv))


def tiny(*argv: str) -> list[Case]:
    return select_cases(parse("--sweep", "cpu-tiny", "--workloads", "decode", *argv), "cpu").cases


# --- --model and the feature options ------------------------------------------------------------------

@pytest.mark.parametrize("argv,name,fields", [
    (("--model", "gemma-2-9b"), "tiny-decode-b4-q1-c64-p16-h16x8d256-cap50", {"softcap": 50.0}),
    (("--model", "gemma-2-9b:sliding"), "tiny-decode-b4-q1-c64-p16-h16x8d256-w4096-cap50",
     {"sliding_window": 4096, "softcap": 50.0}),
    (("--model", "mistral-7b"), "tiny-decode-b4-q1-c64-p16-h32x8d128-w4096", {"sliding_window": 4096}),
    (("--model", "gpt-oss-120b-tp4:sliding"), "tiny-decode-b4-q1-c64-p16-h16x2d64-w128-sinks",
     {"sliding_window": 128, "sinks": True}),
    (("--model", "gemma-3-27b"), "tiny-decode-b4-q1-c64-p16-h32x16d128", {}),
    (("--window", "8"), "tiny-decode-b4-q1-c64-p16-w8", {"sliding_window": 8}),
    (("--window", "4k"), "tiny-decode-b4-q1-c64-p16-w4096", {"sliding_window": 4096}),
    (("--softcap", "30"), "tiny-decode-b4-q1-c64-p16-cap30", {"softcap": 30.0}),
    (("--softcap", "2.5"), "tiny-decode-b4-q1-c64-p16-cap2.5", {"softcap": 2.5}),
    (("--sinks",), "tiny-decode-b4-q1-c64-p16-sinks", {"sinks": True}),
    (("--kv-dtype", "fp8"), "tiny-decode-b4-q1-c64-p16-kvfp8", {"kv_dtype": "fp8"}),
    (("--kv-dtype", "fp8", "--kv-scale", "head"), "tiny-decode-b4-q1-c64-p16-kvfp8h",
     {"kv_dtype": "fp8", "kv_scale": "head"}),
    (("--kv-dtype", "fp8", "--kv-scale", "tensor"), "tiny-decode-b4-q1-c64-p16-kvfp8", {"kv_dtype": "fp8"}),
    # an explicit option wins over the model's feature, `none` turns one off
    (("--model", "gemma-2-9b", "--softcap", "none"), "tiny-decode-b4-q1-c64-p16-h16x8d256", {}),
    (("--model", "gemma-2-9b:sliding", "--window", "1024"), "tiny-decode-b4-q1-c64-p16-h16x8d256-w1024-cap50",
     {"sliding_window": 1024, "softcap": 50.0}),
    (("--model", "gpt-oss-20b", "--no-sinks", "--kv-dtype", "fp8"), "tiny-decode-b4-q1-c64-p16-h64x8d64-kvfp8",
     {"kv_dtype": "fp8"}),
    (("--model", "mistral-7b", "--window", "none"), "tiny-decode-b4-q1-c64-p16-h32x8d128", {}),
])
def test_options_and_models_rename_the_case_like_dtype_does(argv, name, fields):
    (case,) = tiny(*argv)
    assert case.name == name
    plain = {"sliding_window": None, "softcap": None, "sinks": False, "kv_dtype": None, "kv_scale": "tensor"}
    assert {key: getattr(case, key) for key in plain} == {**plain, **fields}
    case.spec()  # a valid batch


def test_plain_options_leave_plain_cases_and_their_cell_ids_alone():
    base = tiny()
    for argv in ((), ("--model", "llama-3-8b"), ("--no-sinks",), ("--softcap", "none"), ("--window", "none"),
                 ("--kv-dtype", "none")):
        cases = tiny(*argv) if "--model" not in argv else None
        if cases is None:  # llama's 32/8/128 heads rename the tiny 4/2/32 cases; its features are plain
            (case,) = tiny(*argv)
            assert not case.features
            continue
        assert [(c.name, cell_id("x", c)) for c in cases] == [(c.name, cell_id("x", c)) for c in base]


def test_the_selection_label_names_the_features():
    label = select_cases(parse("--sweep", "cpu-tiny", "--model", "gpt-oss-20b:sliding", "--softcap", "20",
                               "--kv-dtype", "fp8", "--kv-scale", "head"), "cpu").label
    assert label == "cpu-tiny+model=gpt-oss-20b:sliding+softcap=20+kv=fp8h"


@pytest.mark.parametrize("argv,message", [
    (("--window", "0"), "--window '0': 0 is not a positive number of keys"),
    (("--window", "abc"), "--window 'abc' is not a number of keys (e.g. 4096 or 4k) or none"),
    (("--window", "8-16"), "--window '8-16' is not a number of keys"),
    (("--softcap", "0"), "--softcap '0': 0.0 is not a positive, finite cap"),
    (("--softcap", "inf"), "--softcap 'inf': inf is not a positive, finite cap"),
    (("--softcap", "nan"), "--softcap 'nan': nan is not a positive, finite cap"),
    (("--softcap", "big"), "--softcap 'big' is not a number (e.g. 50) or none"),
    (("--kv-dtype", "fp16"), "--kv-dtype 'fp16' is not a KV cache dtype; choose fp8 or none"),
    (("--kv-scale", "head"), "--kv-scale head sets the scales of an fp8 cache; give --kv-dtype fp8 with it"),
    (("--kv-dtype", "fp8", "--kv-scale", "row"), "--kv-scale 'row' is not a scale grain; choose tensor or head"),
    (("--window", "8", "--no-causal"), "--window sets a sliding window of 8 keys, which needs causal attention"),
    (("--model", "mistral-7b", "--no-causal"), "--model mistral-7b sets a sliding window of 4096 keys"),
    (("--model", "llama-3-8b:sliding"), "--model: model 'llama-3-8b:sliding': Llama-3-8B has no 'sliding' layers"),
    (("--model", "gemma-2-9b:"), "--model: model 'gemma-2-9b:': name a layer kind after ':' (full, sliding)"),
])
def test_a_bad_feature_value_is_one_usage_line(argv, message):
    with pytest.raises(UsageError) as error:
        tiny(*argv)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_cli_refuses_a_bad_feature_before_anything_runs(tmp_path, capsys):
    from harness.frontends.cli import main

    out = tmp_path / "out"
    status = main(["run", "--device", "cpu", "--sweep", "cpu-tiny", "--backends", "sdpa-gather",
                   "--softcap", "-1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "paged-bench: --softcap '-1': -1.0 is not a positive, finite cap" in err
    assert not out.exists()


def test_a_named_case_takes_the_features():
    (case,) = select_cases(parse("--case", "mine=4q1c64", "--window", "16", "--sinks"), "cpu").cases
    assert (case.name, case.sliding_window, case.sinks) == ("mine", 16, True)
    (case,) = select_cases(parse("--case", "4q1c64", "--model", "gpt-oss-20b:sliding"), "cpu").cases
    assert case.name == "4q1c64-p16-h64x8d64-w128-sinks"


def test_child_commands_get_the_feature_options_back():
    args = parse("--sweep", "cpu-tiny", "--model", "gemma-2-9b", "--window", "64", "--softcap", "none",
                 "--no-sinks", "--kv-dtype", "fp8", "--kv-scale", "head")
    argv = selection_argv(args)
    assert argv == ["--sweep", "cpu-tiny", "--model", "gemma-2-9b", "--window", "64", "--softcap", "none",
                    "--kv-dtype", "fp8", "--kv-scale", "head", "--no-sinks"]
    again = parse(*argv)
    assert [c.name for c in select_cases(again, "cpu").cases] == [c.name for c in select_cases(args, "cpu").cases]


def test_releases_and_compare_envs_take_the_feature_options():
    from harness.frontends.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["compare-envs", "a", "b", "--window", "128", "--sinks"])
    assert (args.window, args.sinks) == ("128", True)
    args = parser.parse_args(["releases", "9.19", "--kv-dtype", "fp8", "--kv-scale", "head"])
    assert (args.kv_dtype, args.kv_scale) == ("fp8", "head")


# --- sweep files ----------------------------------------------------------------------------------------

FEATURED_FILE = """\
name = "features"

[defaults]
model = "gemma-2-9b:sliding"
page_sizes = [16]

[[case]]
name = "local"
grammar = "4q64c64"

[[case]]
name = "global"
grammar = "4q64c64"
model = "gemma-2-9b"

[[case]]
name = "fp8"
grammar = "4q64c64"
softcap = "none"
kv_dtype = "fp8"
kv_scale = "head"

[axes.decode]
batch_sizes = [4]
contexts = [64]
models = ["gpt-oss-20b:sliding", "gpt-oss-120b-tp2:sliding"]

[axes.prefill]
batch_sizes = [2]
q_lens = [32]
contexts = [0]
sinks = true
sliding_window = 16
"""


def test_sweep_file_features_per_file_case_and_axes_block():
    sweep = parse_sweep_text(FEATURED_FILE, "f.toml")
    cases = {case.name: case for case in sweep.all_cases()}
    assert list(cases) == [
        "decode-b4-q1-c64-p16-h64x8d64-w128-sinks", "decode-b4-q1-c64-p16-h32x4d64-w128-sinks",
        "prefill-b2-q32-c0-p16-h16x8d256-w16-cap50-sinks",
        "local-p16-h16x8d256-w4096-cap50", "global-p16-h16x8d256-cap50", "fp8-p16-h16x8d256-w4096-kvfp8h",
    ]
    assert cases["fp8-p16-h16x8d256-w4096-kvfp8h"].kv_scale == "head"


def test_a_sweep_file_case_is_the_cli_case():
    """The same features written in a file and on the command line give one case, cell id included."""
    text = ('[[case]]\nname = "x"\ngrammar = "4q1c64"\nmodel = "gpt-oss-20b"\nsliding_window = 32\n'
            'kv_dtype = "fp8"\nkv_scale = "head"\n')
    (from_file,) = parse_sweep_text(text, "x.toml").all_cases()
    (from_cli,) = select_cases(parse("--case", "4q1c64", "--model", "gpt-oss-20b", "--window", "32",
                                     "--kv-dtype", "fp8", "--kv-scale", "head"), "cpu").cases
    assert from_file.name == "x-p16-h64x8d64-w32-sinks-kvfp8h"
    assert from_file.fields() == from_cli.fields()


def test_plain_sweep_files_keep_their_cases():
    text = "[axes.decode]\nbatch_sizes = [64]\ncontexts = [4096]\npage_sizes = [16]\nheads = [\"16/8/256\"]\n"
    (case,) = parse_sweep_text(text, "p.toml").all_cases()
    builtin = next(c for c in SWEEPS["default"] if c.name == "decode-b64-q1-c4096-p16-h16x8d256")
    assert case.name == builtin.name and cell_id("x", case) == cell_id("x", builtin)


@pytest.mark.parametrize("body,message", [
    ('sliding_window = 0', "x.toml:4: case #1 'a', field 'sliding_window': 0 is below 1"),
    ('sliding_window = [16, 32]', "field 'sliding_window': [16, 32] is a list; give one window"),
    ('softcap = -3', "x.toml:4: case #1 'a', field 'softcap': -3 is not a positive, finite cap"),
    ('softcap = "50"', "field 'softcap': '50' is not a positive, finite cap"),
    ('sinks = "yes"', "field 'sinks': 'yes' is not true or false"),
    ('kv_dtype = "fp16"', "field 'kv_dtype': 'fp16' is not a KV cache dtype"),
    ('kv_scale = "head"', "field 'kv_scale': sets the scales of an fp8 cache; set kv_dtype = \"fp8\""),
    ('kv_dtype = "fp8"\nkv_scale = "row"', "x.toml:5: case #1 'a', field 'kv_scale': 'row' is not a scale grain"),
    ('model = "llama-3-8b:sliding"', "field 'model': model 'llama-3-8b:sliding': Llama-3-8B has no 'sliding'"),
    ('model = "mistral-7b"\ncausal = false', "x.toml:4: case #1 'a', field 'model': a sliding window (4096 keys) "
                                             "needs causal attention"),
])
def test_sweep_file_feature_errors_name_the_line_and_field(body, message):
    text = f'[[case]]\nname = "a"\ngrammar = "4q64c64"\n{body}\n'
    with pytest.raises(SweepFileError) as error:
        parse_sweep_text(text, "x.toml")
    assert message in str(error.value)


def test_sweep_file_axes_errors():
    head = "[axes.decode]\nbatch_sizes = [4]\ncontexts = [64]\n"
    with pytest.raises(SweepFileError, match=r"x.toml:4: \[axes.decode\], field 'models': 'gemma-2-9b', "
                                             r"'gemma-2-9b:sliding' differ in their attention features"):
        parse_sweep_text(head + 'models = ["gemma-2-9b", "gemma-2-9b:sliding"]\n', "x.toml")
    with pytest.raises(SweepFileError, match=r"x.toml:5: \[axes.decode\], field 'sliding_window': a sliding "
                                             "window"):
        parse_sweep_text(head + "causal = [true, false]\nsliding_window = 8\n", "x.toml")
    with pytest.raises(SweepFileError, match=r"x.toml:4: \[axes.decode\], field 'kv_scale': sets the scales"):
        parse_sweep_text(head + 'kv_scale = "head"\n', "x.toml")
    # a [defaults] kv_scale is a default for the fp8 cases only
    sweep = parse_sweep_text('[defaults]\nkv_scale = "head"\n' + head + 'kv_dtype = "fp8"\n', "x.toml")
    assert [case.name for case in sweep.all_cases()] == ["decode-b4-q1-c64-p16-kvfp8h",
                                                         "decode-b4-q1-c64-p256-kvfp8h"]


# --- reproducers ----------------------------------------------------------------------------------------

FEATURED = [
    make_case("decode-b4-q1-c64", "4q1c64", 16, sliding_window=32),
    make_case("decode-b4-q1-c64", "4q1c64", 16, softcap=50.0),
    make_case("decode-b4-q1-c64", "4q1c64", 16, softcap=0.1 + 0.2),  # a cap with no short decimal form
    make_case("decode-b4-q1-c64", "4q1c64", 16, sinks=True, num_q_heads=64, num_kv_heads=8, head_dim=64),
    make_case("decode-b4-q1-c64", "4q1c64", 16, kv_dtype="fp8"),
    make_case("decode-b4-q1-c64", "4q1c64", 16, kv_dtype="fp8", kv_scale="head"),
    make_case("mine", "2q9c40", 8, sliding_window=4, softcap=2.0, sinks=True, kv_dtype="fp8", kv_scale="head",
              dtype="fp32", seed=3),
    Case("hand-made", "4q1c64", 16, sliding_window=7, sinks=True),
]


@pytest.mark.parametrize("case", FEATURED, ids=[case.name for case in FEATURED])
def test_a_featured_reproducer_re_creates_the_same_cell(case):
    command = reproducer("triton", case)
    argv = shlex.split(command)
    args = parse(*argv[2:])
    (again,) = select_cases(args, "cpu").cases
    assert again.name == case.name and again.as_dict() == case.as_dict()
    assert cell_id("triton", again) == cell_id("triton", case)
    assert "--model" not in argv


def test_reproducer_words_for_features_and_none_for_plain_cases():
    argv = reproducer_argv("triton", FEATURED[6])
    tail = argv[argv.index("--seed") + 2:argv.index("--no-capability")]
    assert tail == ["--window", "4", "--softcap", "2.0", "--sinks", "--kv-dtype", "fp8", "--kv-scale", "head"]
    plain = reproducer_argv("triton", SWEEPS["cpu-tiny"][0])
    assert not {"--window", "--softcap", "--sinks", "--kv-dtype", "--kv-scale"} & set(plain)
