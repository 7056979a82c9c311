"""Model presets: shapes per GPU shard from the models' configs, tensor-parallel sharding, the listing."""

from __future__ import annotations

import argparse
import json

import pytest

from harness.cases.models import (BASE_MODELS, PRESETS, add_models_parser, cmd_models, get_model, layer_presets,
                                  models_table, parse_heads, presets)

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
    "gemma-2-27b": (32, 16, 128),        # head_dim 128 (hidden 4608 is not 32 * 128)
    "gemma-3-4b": (8, 4, 256),           # text_config: head_dim 256
    "gemma-3-12b": (16, 8, 256),
    "gemma-3-27b": (32, 16, 128),
    "gpt-oss-20b": (64, 8, 64),          # head_dim 64 (hidden 2880 is not 64 * 64)
    "gpt-oss-120b": (64, 8, 64),
    "gpt-oss-120b-tp8": (8, 1, 64),
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


def test_models_table_has_one_line_per_layer_kind_of_each_preset():
    kinds = sum(len(model.layer_kinds) for model in presets())
    assert len(models_table().splitlines()) == 1 + kinds
    assert set(BASE_MODELS) <= {name.split("-tp")[0] for name in PRESETS}


# (layers, the sliding layers' window, soft-cap, sinks, which layer indices are full) from each model's
# config.json (num_hidden_layers, sliding_window, attn_logit_softcapping) and the layer_types rule of its
# transformers configuration (Gemma 2 / gpt-oss: layer i sliding iff (i + 1) % 2; Gemma 3: iff (i + 1) % 6)
FEATURES = {
    "mistral-7b": (32, 4096, None, False, ()),
    "gemma-2-9b": (42, 4096, 50.0, False, tuple(range(1, 42, 2))),
    "gemma-2-27b": (46, 4096, 50.0, False, tuple(range(1, 46, 2))),
    "gemma-3-4b": (34, 1024, None, False, (5, 11, 17, 23, 29)),
    "gemma-3-12b": (48, 1024, None, False, (5, 11, 17, 23, 29, 35, 41, 47)),
    "gemma-3-27b": (62, 1024, None, False, tuple(range(5, 62, 6))),
    "gpt-oss-20b": (24, 128, None, True, tuple(range(1, 24, 2))),
    "gpt-oss-120b": (36, 128, None, True, tuple(range(1, 36, 2))),
}


@pytest.mark.parametrize("name", FEATURES)
def test_featured_models_carry_their_layers_and_features(name):
    layers, window, cap, sinks, full = FEATURES[name]
    base = BASE_MODELS[name]
    assert base.num_layers == layers
    kinds = {kind.name: kind for kind in base.layer_kinds()}
    assert sum(len(kind.layers) for kind in kinds.values()) == layers
    assert kinds.get("full", None) is None if not full else kinds["full"].layers == full
    sliding = kinds["sliding"]
    assert sliding.layers == tuple(i for i in range(layers) if i not in full)
    assert (sliding.sliding_window, sliding.softcap, sliding.sinks) == (window, cap, sinks)
    default = get_model(name)
    if full:  # the default is the full layer: no window, the model's cap and sinks
        assert default.layer == "full" and default.name == name
        assert default.features == {"sliding_window": None, "softcap": cap, "sinks": sinks}
        windowed = get_model(f"{name}:sliding")
        assert windowed.name == f"{name}:sliding" and windowed.layers == len(sliding.layers)
        assert windowed.features == {"sliding_window": window, "softcap": cap, "sinks": sinks}
        assert windowed.fields == default.fields  # the heads are the same in every layer
        assert base.layers_source.startswith("https://github.com/huggingface/transformers/")
    else:  # every layer alike (Mistral-7B-v0.1): the default is that kind
        assert default.layer == "sliding" and default.layer_kinds == ("sliding",)
        assert default.features == {"sliding_window": window, "softcap": None, "sinks": False}
    assert default.source == f"https://huggingface.co/{base.repo}/blob/main/config.json"


def test_fields_stay_the_heads_and_case_fields_add_the_features():
    """The built-in sweeps take `fields` (heads only), so their Gemma-2-9B cells keep their names."""
    gemma = get_model("gemma-2-9b")
    assert gemma.fields == {"num_q_heads": 16, "num_kv_heads": 8, "head_dim": 256}
    assert gemma.case_fields == {**gemma.fields, "sliding_window": None, "softcap": 50.0, "sinks": False}
    assert get_model("llama-3-8b").case_fields == {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128,
                                                   "sliding_window": None, "softcap": None, "sinks": False}


@pytest.mark.parametrize("name,expected", [
    ("gemma-2-9b:global", "gemma-2-9b"), ("gemma-2-9b:full", "gemma-2-9b"), ("Gemma-2-9B:Local", "gemma-2-9b:sliding"),
    ("gpt-oss-120b-tp4:sliding", "gpt-oss-120b-tp4:sliding"), ("mistral-7b:sliding", "mistral-7b"),
])
def test_layer_kinds_are_named_after_the_tp_suffix(name, expected):
    assert get_model(name).name == expected


def test_tp_shards_featured_models_and_keeps_their_features():
    oss = get_model("gpt-oss-120b-tp4:sliding")
    assert (oss.num_q_heads, oss.num_kv_heads, oss.head_dim, oss.tp) == (16, 2, 64, 4)
    assert oss.features == {"sliding_window": 128, "softcap": None, "sinks": True}
    eight = get_model("gpt-oss-20b-tp16")  # 8 KV heads over 16 GPUs: one each, replicated
    assert (eight.num_q_heads, eight.num_kv_heads) == (4, 1) and "replicated" in eight.note and eight.sinks
    gemma = get_model("gemma-2-27b-tp2:sliding")
    assert (gemma.num_q_heads, gemma.num_kv_heads, gemma.sliding_window, gemma.softcap) == (16, 8, 4096, 50.0)
    assert [m.name for m in layer_presets(get_model("gemma-3-27b-tp2"))] == ["gemma-3-27b-tp2",
                                                                             "gemma-3-27b-tp2:sliding"]


@pytest.mark.parametrize("name,words", [
    ("llama-3-8b:sliding", "Llama-3-8B has no 'sliding' layers; its layer kinds are full"),
    ("mistral-7b:full", "Mistral-7B-v0.1 has no 'full' layers; its layer kinds are sliding"),
    ("gemma-2-9b:", "name a layer kind after ':'"),
    ("gemma-2-9b:chunked", "has no 'chunked' layers"),
    ("gpt-oss-20b-tp3", "64 query heads, which TP 3 does not divide"),
])
def test_bad_layer_kinds_are_named(name, words):
    with pytest.raises(ValueError, match=words):
        get_model(name)


def test_models_listing_names_layer_kinds_and_features(capsys):
    table = models_table()
    line = next(row for row in table.splitlines() if row.startswith("gemma-2-9b:sliding "))
    assert "21 of 42 (even: 0, 2, 4, ..., 40)" in line and "window 4096, soft-cap 50" in line
    line = next(row for row in table.splitlines() if row.startswith("gemma-3-27b "))
    assert "10 of 62 (every 6th: 5, 11, 17, ..., 59)" in line
    line = next(row for row in table.splitlines() if row.startswith("gpt-oss-20b:sliding "))
    assert "window 128, sinks" in line and "64/8/64" in line
    parser = argparse.ArgumentParser(prog="paged-bench")
    add_models_parser(parser.add_subparsers(dest="command"))
    assert cmd_models(parser.parse_args(["models", "--json"])) == 0
    rows = {row["name"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    oss = rows["gpt-oss-120b"]
    assert oss["layer"] == "full" and oss["num_layers"] == 36 and oss["sinks"] is True
    assert [(k["name"], k["layers"], k["sliding_window"]) for k in oss["kinds"]] == [
        ("gpt-oss-120b", 18, None), ("gpt-oss-120b:sliding", 18, 128)]
    assert oss["kinds"][1]["layer_indices"][:3] == [0, 2, 4]
