"""Model presets: shapes per GPU shard from the models' configs, tensor-parallel sharding, the listing."""

from __future__ import annotations

import argparse
import json

import pytest

from harness.models import (BASE_MODELS, PRESETS, add_models_parser, cmd_models, get_model, models_table,
                            parse_heads, presets)

# (Hq, Hkv, D) per GPU shard, from each model's config.json (num_attention_heads, num_key_value_heads,
# head_dim or hidden_size / num_attention_heads)
EXPECTED = {
    "llama-3-8b": (32, 8, 128),          # hidden 4096 / 32 heads
    "llama-3-70b": (64, 8, 128),         # hidden 8192 / 64 heads
    "llama-3-70b-tp8": (8, 1, 128),      # 64 / 8 query heads, 8 / 8 KV heads
    "llama-3.1-405b-tp8": (16, 1, 128),  # 128 / 8, 8 / 8
    "llama-3.2-1b": (32, 8, 64),         # head_dim 64
    "mistral-7b": (32, 8, 128),
    "qwen2.5-7b": (28, 4, 128),          # hidden 3584 / 28 heads
    "qwen2.5-72b": (64, 8, 128),
    "qwen2.5-72b-tp8": (8, 1, 128),
    "gemma-2-9b": (16, 8, 256),          # head_dim 256 (hidden 3584 is not 16 * 256)
    "falcon-7b": (71, 1, 64),            # multi_query, hidden 4544 / 71
    "starcoder": (48, 1, 128),           # multi_query, hidden 6144 / 48
    "phi-3-mini": (32, 32, 96),          # MHA, hidden 3072 / 32
}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_shapes(name):
    model = get_model(name)
    assert (model.num_q_heads, model.num_kv_heads, model.head_dim) == EXPECTED[name]
    assert model.source.startswith("https://huggingface.co/") and model.source.endswith("/config.json")
    assert model.heads == "{}/{}/{}".format(*EXPECTED[name])


def test_the_issue_s_models_are_there():
    shapes = {name: (m.num_q_heads, m.num_kv_heads, m.head_dim) for name, m in zip(PRESETS, presets())}
    assert any(kv == 1 for _, kv, _ in shapes.values())          # an MQA model
    assert any(d == 64 for _, _, d in shapes.values())           # a D 64 model
    assert shapes["gemma-2-9b"][2] == 256
    assert get_model("llama-3-70b").tp == 1 and get_model("llama-3-70b-tp8").tp == 8


def test_any_base_model_takes_a_tp_suffix_and_kv_heads_replicate_past_their_count():
    assert get_model("qwen2.5-72b-tp4").fields == {"num_q_heads": 16, "num_kv_heads": 2, "head_dim": 128}
    sixteen = get_model("llama-3.1-405b-tp16")  # 8 KV heads over 16 GPUs: one each
    assert (sixteen.num_q_heads, sixteen.num_kv_heads) == (8, 1) and "replicated" in sixteen.note
    assert get_model("Llama-3-8B").name == "llama-3-8b"


@pytest.mark.parametrize("name,words", [
    ("llama3", "unknown model 'llama3'; choose one of llama-3-8b"),
    ("falcon-7b-tp2", "71 query heads, which TP 2 does not divide"),
    ("qwen2.5-7b-tp3", "28 query heads, which TP 3 does not divide"),
    ("phi-3-mini-tp0", "must be at least 1"),
])
def test_unknown_or_unshardable_models_are_named(name, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        get_model(name)


def test_parse_heads():
    assert parse_heads("16/8/256") == (16, 8, 256)
    for bad, words in (("32/8", "not HQ/HKV/D"), ("a/b/c", "not HQ/HKV/D"), ("32/7/128", "not a multiple of 7"),
                       ("0/1/64", "at least 1")):
        with pytest.raises(ValueError, match=words):
            parse_heads(bad)


def test_models_subcommand_lists_every_preset(capsys):
    parser = argparse.ArgumentParser(prog="paged-bench")
    add_models_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models"])
    assert args.func is cmd_models and args.func(args) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "8/1/128" in out and "--model" in out
    args = parser.parse_args(["models", "--json"])
    assert cmd_models(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["name"] for row in rows] == list(PRESETS) and rows[0]["heads"] == "32/8/128"


def test_models_table_has_one_line_per_preset():
    assert len(models_table().splitlines()) == 1 + len(PRESETS)
    assert set(BASE_MODELS) <= {name.split("-tp")[0] for name in PRESETS}
