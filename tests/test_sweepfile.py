"""Sweep files (TOML): named cases and axes with heads, dtype, page sizes, causal, pool; errors that name
the file, the line and the field."""

from __future__ import annotations

import textwrap

import pytest

from harness.cases.sweep import SWEEPS
from harness.cases.sweepfile import KeyLines, SweepFileError, load_sweep_file, parse_sweep_text
from harness.measure.results import cell_id

GOOD = textwrap.dedent("""\
    # a serving setup
    name = "llama70b-serving"
    description = "Llama-3-70B at TP 8, page 16"

    [defaults]
    model = "llama-3-70b-tp8"
    page_sizes = [16]
    pool_gib = 40

    [[case]]
    name = "serve-300"
    grammar = "296q1c~lognormal(median=2k,sigma=1,max=32k)_4q512c0-4k"

    [[case]]
    name = "verify"    # spec decoding
    grammar = "64q4c4k"
    dtype = "fp16"
    page_sizes = [16, 64]
    pool_pages = 40000

    [axes.decode]
    batch_sizes = [16, 64]
    contexts = [4096, "16k"]
    heads = ["32/8/128", "16/8/256"]
    dtypes = ["bf16", "fp16"]
    causal = [true]

    [axes.mixed]
    mixes = ["mixed-8d3000-8p2000"]
    page_sizes = [16, 256]
""")


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_file_gives_named_cases_and_axes(tmp_path):
    sweep = load_sweep_file(write(tmp_path, GOOD))
    assert sweep.name == "llama70b-serving" and sweep.source.endswith("sweep.toml")
    cases = {case.name: case for case in sweep.all_cases()}
    serve = cases["serve-300-p16-h8x1d128-pool40gib"]
    assert (serve.num_q_heads, serve.num_kv_heads, serve.head_dim, serve.pool_gib) == (8, 1, 128, 40.0)
    assert serve.grammar == "296q1c~lognormal(median=2k,sigma=1,max=32k)_4q512c0-4k"
    assert {"verify-p16-h8x1d128-fp16-pool40000pages", "verify-p64-h8x1d128-fp16-pool40000pages"} <= set(cases)
    # axes: product of batch x context x heads x dtype, with the defaults' page size and pool
    decode = [name for name in cases if name.startswith("decode-")]
    assert len(decode) == 2 * 2 * 2 * 2
    assert "decode-b64-q1-c16384-p16-h16x8d256-fp16-pool40gib" in cases
    assert cases["decode-b16-q1-c4096-p16-pool40gib"].num_q_heads == 32  # the axis' heads win over the default
    mixed = [name for name in cases if name.startswith("mixed-")]
    assert mixed == ["mixed-8d3000-8p2000-p16-h8x1d128-pool40gib", "mixed-8d3000-8p2000-p256-h8x1d128-pool40gib"]


def test_a_file_that_declares_a_builtin_shape_gets_the_builtin_cell_ids():
    sweep = parse_sweep_text(textwrap.dedent("""\
        [axes.decode]
        batch_sizes = [64]
        contexts = [4096]
        page_sizes = [16]
        [[case]]
        name = "mixed-8d3000-8p2000"
        grammar = "8q1c3000_8q9-2000c0-7000"
        page_size = 256
    """), "same.toml")
    builtin = {case.name: case for case in SWEEPS["default"]}
    for case in sweep.all_cases():
        assert cell_id("triton", case) == cell_id("triton", builtin[case.name]), case.name
    assert sweep.name == "same"


def test_spec_decode_axes_and_causal_product():
    sweep = parse_sweep_text(textwrap.dedent("""\
        [axes.spec-decode]
        batch_sizes = [32]
        q_lens = [2, 4]
        contexts = [8192]
        page_sizes = [16]
        causal = [true, false]
    """), "s.toml")
    names = [case.name for case in sweep.all_cases()]
    assert names == ["specdec-b32-q2-c8192-p16", "specdec-b32-q2-c8192-p16-noncausal",
                     "specdec-b32-q4-c8192-p16", "specdec-b32-q4-c8192-p16-noncausal"]
    assert {case.workload for case in sweep.all_cases()} == {"spec-decode"}


BAD = [
    # (text, line, words in the message)
    ('name = "x"\n[[case]]\nname = "a"\ngrammar = 4q1c3\n', 4, "not valid TOML"),
    ('[[case]]\nname = "a"\ngrammar = "4q1c3"\n\n[[case]]\nname = "b"\ngrammar = "4x1c3"\n', 7,
     "case #2 'b', field 'grammar': batch string '4x1c3'"),
    ('[[case]]\nname = "a"\ngrammar = "4q1c3"\npagesize = 16\n', 4, "case #1, field 'pagesize': unknown field"),
    ('[axes.decode]\nbatch_sizes = [1]\ncontexts = [4096]\ndtypes = ["bf16", "int8"]\n', 4,
     "[axes.decode], field 'dtypes': 'int8' is not a dtype; choose one of bf16, fp16, fp32"),
    ('[axes.decode]\nbatch_sizes = [1]\ncontexts = [4096, 1.5]\n', 3, "field 'contexts': 1.5 is not an integer"),
    ('[[case]]\nname = "a"\ngrammar = "64q1c4k"\npool_pages = 10\n', 4,
     "field 'pool_pages': case a-p16-pool10pages: pool_pages: 10: too small for the batch, which needs 16449 pages"),
    ('[defaults]\npool_gib = 0.001\n\n[axes.decode]\nbatch_sizes = [64]\ncontexts = [4096]\n', 2,
     "[defaults], field 'pool_gib': case decode-b64-q1-c4096-p16-pool0.001gib: pool_gib: 0.001 GiB holds"),
    ('[defaults]\nheads = "32/8/80"\n[[case]]\nname = "a"\ngrammar = "64q1c4k"\n', 2,
     "[defaults], field 'heads': case a-p16-h32x8d80: head_dim: 80 is not supported"),
    ('[defaults]\nmodel = "llama3"\n', 2, "field 'model': unknown model 'llama3'; choose one of"),
    ('[[case]]\nname = "a"\n', 1, "case #1: has no 'grammar'"),
    ('[[case]]\nname = "a"\ngrammar = "1q1c1"\n[[case]]\nname = "a"\ngrammar = "1q1c1"\n', 5,
     "case #2 'a', field 'name': case name 'a-p16' is already used by case #1 'a'"),
    ('[axes.decod]\nbatch_sizes = [1]\n', 1, "[axes.decod]: unknown workload 'decod'; choose one of decode"),
    ('[axes.mixed]\nmixes = ["nope"]\n', 2, "'nope' is not a built-in mix"),
    ('[axes.prefill]\nbatch_sizes = [1]\ncontexts = [0]\n', 1, "[axes.prefill]: has no 'q_lens'"),
    ('x = 1\n', 1, "the file, field 'x': unknown field"),
    ('[[case]]\nname = "1st"\ngrammar = "1q1c1"\n', 2, "field 'name': '1st' is not a case name"),
    ('[[case]]\nname = "a"\ngrammar = "1q1c1"\nmodel = "gemma-2-9b"\nheads = "32/8/128"\n', 5,
     "give either model or heads"),
    ('[[case]]\nname = "a"\ngrammar = "1q1c1"\ncausal = "yes"\n', 4, "field 'causal': 'yes' is not true or false"),
    ('[[case]]\nname = "a"\n\ngrammar = "1q1c~lognormal(median=2k)"\n', 4, "lognormal needs sigma"),
    ('name = "x"\n', 0, "has no cases"),
]


@pytest.mark.parametrize("text,line,words", BAD, ids=[words[:40] for _, _, words in BAD])
def test_a_bad_file_names_the_line_and_the_field(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(SweepFileError) as caught:
        load_sweep_file(path)
    message = str(caught.value)
    prefix = f"{path}:{line}:" if line else f"{path}:"
    assert message.startswith(prefix), message
    assert words in message, message
    assert caught.value.line == line


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SweepFileError, match="missing.toml: cannot be read"):
        load_sweep_file(tmp_path / "missing.toml")


def test_key_lines_follow_tables_arrays_and_comments():
    lines = KeyLines(GOOD)
    assert lines.find(("name",)) == 2
    assert lines.find(("defaults", "pool_gib")) == 8
    assert lines.find(("case", 1, "dtype")) == 17
    assert lines.find(("case", 1, "nothing")) == 14          # falls back to the [[case]] header
    assert lines.find(("axes", "decode", "contexts")) == 23
    assert lines.find(("axes", "mixed")) == 28


def test_validation_can_be_left_to_later_without_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = write(tmp_path, GOOD)
    code = (f"import sys; from harness.cases.sweepfile import load_sweep_file; s = load_sweep_file({str(path)!r}, "
            "validate=False); s.all_cases(); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)
