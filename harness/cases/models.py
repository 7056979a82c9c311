"""Model presets: real models' attention layers per GPU shard, for ``--model NAME`` and sweep files.

A preset is the attention layer one GPU sees: query heads, KV heads and head dim after tensor
parallelism (TP) splits the heads across GPUs, and the layer's model features (`adapters.features`:
sliding window, logit soft-cap, sinks). Query heads divide by TP; KV heads divide too, or, when TP
exceeds them, each GPU keeps one (replicated, as vLLM and TensorRT-LLM do), so Llama-3-70B at TP 8 is
8 query heads on one KV head per GPU; per-head sinks go with their query heads. Any base model takes a
``-tpN`` suffix (``qwen2.5-72b-tp4``); `PRESETS` lists the common ones.

Layer kinds: a model whose layers differ (Gemma 2 and gpt-oss alternate sliding-window and full
layers, Gemma 3 has five sliding layers to each full one) has one kind per kind of layer, ``full``
(global attention, also written ``global``) and ``sliding`` (also ``local``), repeated over the layers
by the model's ``layer_types`` pattern. ``NAME`` picks the model's full layer (its only kind when all
layers are alike, e.g. Mistral-7B-v0.1's sliding layers); ``NAME:sliding`` picks the other, after
any ``-tpN``: ``gpt-oss-120b-tp4:sliding``. Shapes and features come from each model's ``config.json``
on the Hugging Face Hub (``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or
``hidden_size / num_attention_heads``, ``num_hidden_layers``, ``sliding_window``,
``attn_logit_softcapping``) and, for which layer is which, the config's ``layer_types`` rule in
Hugging Face transformers (`LAYER_RULES`); `BASE_MODELS` names the file. A preset sets no KV-cache
dtype (``--kv-dtype`` is a serving choice, not the model's). Torch-free.

    paged-bench models [--json]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from adapters.features import feature_words

_HF = "https://huggingface.co/{}/blob/main/config.json"
_TRANSFORMERS = "https://github.com/huggingface/transformers/blob/main/src/transformers/models/{}"

LAYER_RULES: dict[str, str] = {
    "gemma2": _TRANSFORMERS.format("gemma2/configuration_gemma2.py") + " (layer_types: layer i is sliding "
              "iff (i + 1) % 2, i.e. even layers sliding, odd layers full)",
    "gemma3": _TRANSFORMERS.format("gemma3/configuration_gemma3.py") + " (layer_types with sliding_window_pattern "
              "6: layer i is sliding iff (i + 1) % 6, i.e. layers 5, 11, 17, ... full)",
    "gpt_oss": _TRANSFORMERS.format("gpt_oss/configuration_gpt_oss.py") + " (layer_types: layer i is sliding iff "
               "(i + 1) % 2; openai/gpt-oss gpt_oss/torch/model.py: sliding_window if layer_idx % 2 == 0; "
               "sinks: one learned logit per query head in every attention layer)",
}
"""Where each layer pattern comes from (the modeling code that says which layer uses which kind)."""

FULL, SLIDING = "full", "sliding"
LAYER_KIND_NAMES: tuple[str, ...] = (FULL, SLIDING)
"""Kinds of attention layer: ``full`` (global causal attention) and ``sliding`` (a window of the
config's ``sliding_window`` keys)."""

_KIND_ALIASES = {"full": FULL, "global": FULL, "full_attention": FULL, "sliding": SLIDING, "local": SLIDING,
                 "sliding_attention": SLIDING}


@dataclass(frozen=True)
class LayerKind:
    """One kind of attention layer of a model: its name, which layers (0-based indices; empty when the
    model's layer count is not recorded, meaning every layer) and its features."""

    name: str
    layers: tuple[int, ...]
    num_layers: int | None
    pattern: tuple[str, ...] = (FULL,)
    sliding_window: int | None = None
    softcap: float | None = None
    sinks: bool = False

    @property
    def features(self) -> dict[str, Any]:
        """The case fields of the layer's features (every one, unset ones at their plain value)."""
        return {"sliding_window": self.sliding_window, "softcap": self.softcap, "sinks": self.sinks}

    @property
    def count_text(self) -> str:
        """``"21 of 42"``, or ``"all 32"`` / ``"all"`` when every layer is of this kind."""
        if not self.num_layers:
            return "all"
        if len(self.layers) == self.num_layers:
            return f"all {self.num_layers}"
        return f"{len(self.layers)} of {self.num_layers}"

    @property
    def which_text(self) -> str:
        """Which layers, in words, from the model's layer pattern: ``"every"``, ``"even: 0, 2, ..., 40"``,
        ``"every 6th: 5, 11, ..., 59"``, ``"5 of every 6: all but 5, 11, ..."``."""
        period = len(self.pattern)
        mine = [i for i, name in enumerate(self.pattern) if name == self.name]
        if period == 1 or len(mine) == period:
            return "every"

        def listed(start: int) -> str:
            indices = list(range(start, self.num_layers or 3 * period, period))
            return ", ".join(map(str, indices[:3])) + (f", ..., {indices[-1]}" if len(indices) > 3 else "")
        if len(mine) == 1:
            if period == 2:
                return ("even: " if mine[0] == 0 else "odd: ") + listed(mine[0])
            return f"every {period}th: {listed(mine[0])}"
        others = [i for i in range(period) if i not in mine]
        if len(others) == 1:
            return f"{len(mine)} of every {period}: all but {listed(others[0])}"
        return f"positions {', '.join(map(str, mine))} of every {period}"


def features_text(fields: dict[str, Any]) -> str:
    """A layer's features in words, e.g. ``"window 4096, soft-cap 50, sinks"``; ``"-"`` for none."""
    return ", ".join(feature_words(fields)) or "-"


@dataclass(frozen=True)
class BaseModel:
    """A model's attention layers as released (TP 1): the heads, and, for models with features, the
    layer count, the ``layer_types`` pattern repeated over the layers (layer i is
    ``layer_pattern[i % len(layer_pattern)]``), the window of the sliding layers, the soft-cap and
    sinks of every layer, and ``rule``: the `LAYER_RULES` entry that says which layer is which."""

    display: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    repo: str
    note: str = ""
    num_layers: int | None = None
    layer_pattern: tuple[str, ...] = (FULL,)
    sliding_window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    rule: str = ""

    @property
    def source(self) -> str:
        return _HF.format(self.repo)

    @property
    def layers_source(self) -> str:
        """Where the layer pattern comes from (empty when every layer is alike by the config alone)."""
        return LAYER_RULES.get(self.rule, "")

    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """The model's kinds of layer, the default (`default_kind`) first."""
        kinds = []
        for name in dict.fromkeys(self.layer_pattern):
            layers = tuple(i for i in range(self.num_layers or 0)
                           if self.layer_pattern[i % len(self.layer_pattern)] == name)
            kinds.append(LayerKind(name=name, layers=layers, num_layers=self.num_layers, pattern=self.layer_pattern,
                                   sliding_window=self.sliding_window if name == SLIDING else None,
                                   softcap=self.softcap, sinks=self.sinks))
        default = self.default_kind
        return tuple(sorted(kinds, key=lambda kind: kind.name != default))

    @property
    def default_kind(self) -> str:
        """The kind ``--model NAME`` picks: the full layer when the model has one, else its only kind."""
        return FULL if FULL in self.layer_pattern else self.layer_pattern[0]


BASE_MODELS: dict[str, BaseModel] = {
    "llama-3-8b": BaseModel("Llama-3-8B", 32, 8, 128, "meta-llama/Meta-Llama-3-8B"),
    "llama-3-70b": BaseModel("Llama-3-70B", 64, 8, 128, "meta-llama/Meta-Llama-3-70B"),
    "llama-3.1-405b": BaseModel("Llama-3.1-405B", 128, 8, 128, "meta-llama/Llama-3.1-405B"),
    "llama-3.2-1b": BaseModel("Llama-3.2-1B", 32, 8, 64, "meta-llama/Llama-3.2-1B", "D 64"),
    "mistral-7b": BaseModel("Mistral-7B-v0.1", 32, 8, 128, "mistralai/Mistral-7B-v0.1",
                            "sliding_window 4096 on every layer (v0.1; v0.2 and later set it to null)",
                            num_layers=32, layer_pattern=(SLIDING,), sliding_window=4096),
    "qwen2.5-7b": BaseModel("Qwen2.5-7B", 28, 4, 128, "Qwen/Qwen2.5-7B", "GQA 7:1"),
    "qwen2.5-72b": BaseModel("Qwen2.5-72B", 64, 8, 128, "Qwen/Qwen2.5-72B"),
    "gemma-2-9b": BaseModel("Gemma-2-9B", 16, 8, 256, "google/gemma-2-9b", "D 256 (head_dim in config)",
                            num_layers=42, layer_pattern=(SLIDING, FULL), sliding_window=4096, softcap=50.0,
                            rule="gemma2"),
    "gemma-2-27b": BaseModel("Gemma-2-27B", 32, 16, 128, "google/gemma-2-27b",
                             "query_pre_attn_scalar 144: the model scales by 144^-0.5, the suite by D^-0.5",
                             num_layers=46, layer_pattern=(SLIDING, FULL), sliding_window=4096, softcap=50.0,
                             rule="gemma2"),
    "gemma-3-4b": BaseModel("Gemma-3-4B", 8, 4, 256, "google/gemma-3-4b-pt", "D 256; no attention soft-cap",
                            num_layers=34, layer_pattern=(SLIDING,) * 5 + (FULL,), sliding_window=1024,
                            rule="gemma3"),
    "gemma-3-12b": BaseModel("Gemma-3-12B", 16, 8, 256, "google/gemma-3-12b-pt", "D 256; no attention soft-cap",
                             num_layers=48, layer_pattern=(SLIDING,) * 5 + (FULL,), sliding_window=1024,
                             rule="gemma3"),
    "gemma-3-27b": BaseModel("Gemma-3-27B", 32, 16, 128, "google/gemma-3-27b-pt",
                             "no attention soft-cap; query_pre_attn_scalar 168 (hidden 5376 / 32): the model "
                             "scales by 168^-0.5, the suite by D^-0.5",
                             num_layers=62, layer_pattern=(SLIDING,) * 5 + (FULL,), sliding_window=1024,
                             rule="gemma3"),
    "gpt-oss-20b": BaseModel("gpt-oss-20b", 64, 8, 64, "openai/gpt-oss-20b", "D 64, GQA 8:1, learned sinks",
                             num_layers=24, layer_pattern=(SLIDING, FULL), sliding_window=128, sinks=True,
                             rule="gpt_oss"),
    "gpt-oss-120b": BaseModel("gpt-oss-120b", 64, 8, 64, "openai/gpt-oss-120b", "D 64, GQA 8:1, learned sinks",
                              num_layers=36, layer_pattern=(SLIDING, FULL), sliding_window=128, sinks=True,
                              rule="gpt_oss"),
    "falcon-7b": BaseModel("Falcon-7B", 71, 1, 64, "tiiuae/falcon-7b", "MQA (multi_query), D 64"),
    "starcoder": BaseModel("StarCoder", 48, 1, 128, "bigcode/starcoder", "MQA (multi_query)"),
    "phi-3-mini": BaseModel("Phi-3-mini-4k", 32, 32, 96, "microsoft/Phi-3-mini-4k-instruct", "MHA, D 96"),
}
"""Base models at TP 1: (display name, Hq, Hkv, D, Hugging Face repo of the config.json, note, then for
models with features: layer count, layer pattern, window, soft-cap, sinks, layer rule)."""

PRESETS: tuple[str, ...] = (
    "llama-3-8b", "llama-3-70b", "llama-3-70b-tp8", "llama-3.1-405b-tp8", "llama-3.2-1b", "mistral-7b",
    "qwen2.5-7b", "qwen2.5-72b", "qwen2.5-72b-tp8", "gemma-2-9b", "gemma-2-27b", "gemma-3-4b", "gemma-3-12b",
    "gemma-3-27b", "gpt-oss-20b", "gpt-oss-120b", "gpt-oss-120b-tp8", "falcon-7b", "starcoder", "phi-3-mini",
)
"""The names `paged-bench models` lists (any base model also takes ``-tpN``, any model ``:KIND``)."""

_TP = re.compile(r"^(?P<base>.+)-tp(?P<tp>\d+)$")


@dataclass(frozen=True)
class ModelPreset:
    """The attention layer one GPU shard runs: ``num_q_heads`` / ``num_kv_heads`` / ``head_dim`` and the
    features of the chosen layer kind (``layer``; ``layer_kinds`` names them all, ``layers`` is how
    many of the model's ``num_layers`` are of this kind)."""

    name: str
    display: str
    tp: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    source: str
    note: str = ""
    layer: str = FULL
    layer_kinds: tuple[str, ...] = (FULL,)
    layers: int | None = None
    num_layers: int | None = None
    sliding_window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    layers_source: str = ""
    base: str = ""
    """The `BASE_MODELS` key."""

    @property
    def heads(self) -> str:
        """``"HQ/HKV/D"``, the form ``--heads`` takes."""
        return format_heads(self.num_q_heads, self.num_kv_heads, self.head_dim)

    @property
    def fields(self) -> dict[str, int]:
        """The head fields this preset sets (what ``--heads`` sets; the built-in sweeps use these)."""
        return {"num_q_heads": self.num_q_heads, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim}

    @property
    def features(self) -> dict[str, Any]:
        """The layer's feature fields, every one (a layer without a window sets ``sliding_window`` None)."""
        return {"sliding_window": self.sliding_window, "softcap": self.softcap, "sinks": self.sinks}

    @property
    def case_fields(self) -> dict[str, Any]:
        """Every case field ``--model`` sets: the heads and the layer's features (not the KV dtype)."""
        return {**self.fields, **self.features}

    @property
    def features_text(self) -> str:
        return features_text(self.features)


def shard(name: str, base: BaseModel, tp: int, layer: str | None = None, key: str = "") -> ModelPreset:
    """``base`` split over ``tp`` GPUs: query heads divided, KV heads divided or (TP above them) one per
    GPU; ``layer`` picks the kind of layer (default: `BaseModel.default_kind`)."""
    if tp < 1:
        raise ValueError(f"model {name!r}: tensor parallelism {tp} must be at least 1")
    if base.num_q_heads % tp:
        raise ValueError(f"model {name!r}: {base.display} has {base.num_q_heads} query heads, which TP {tp} "
                         "does not divide")
    note = base.note
    if base.num_kv_heads % tp == 0:
        kv = base.num_kv_heads // tp
    elif tp % base.num_kv_heads == 0:
        kv = 1
        note = "; ".join(filter(None, [note, f"{base.num_kv_heads} KV heads over {tp} GPUs: one per GPU (replicated)"]))
    else:
        raise ValueError(f"model {name!r}: {base.display} has {base.num_kv_heads} KV heads, which TP {tp} neither "
                         "divides nor is a multiple of")
    kinds = base.layer_kinds()
    kind_names = tuple(kind.name for kind in kinds)
    wanted = base.default_kind if layer is None else _KIND_ALIASES.get(layer.strip().lower(), layer)
    if wanted not in kind_names:
        raise ValueError(f"model {name!r}: {base.display} has no {layer!r} layers; its layer kinds are "
                         f"{', '.join(kind_names)} (write NAME for the {base.default_kind} layer, NAME:KIND "
                         "for another)")
    kind = next(k for k in kinds if k.name == wanted)
    tp_name = name.split(":", 1)[0]
    return ModelPreset(name=tp_name + ("" if wanted == base.default_kind else f":{wanted}"),
                       display=base.display + (f" TP{tp}" if tp > 1 else ""), tp=tp,
                       num_q_heads=base.num_q_heads // tp, num_kv_heads=kv, head_dim=base.head_dim,
                       source=base.source, note=note, layer=wanted, layer_kinds=kind_names,
                       layers=len(kind.layers) if base.num_layers else None, num_layers=base.num_layers,
                       sliding_window=kind.sliding_window, softcap=kind.softcap, sinks=kind.sinks,
                       layers_source=base.layers_source, base=key)


def get_model(name: str) -> ModelPreset:
    """The preset ``name``: a base model, optionally with ``-tpN``, then optionally ``:KIND`` (``full`` or
    ``global``, ``sliding`` or ``local``); ValueError naming the choices."""
    text = str(name).strip().lower()
    key, _, layer = text.partition(":")
    key = key.strip()
    if _ and not layer.strip():
        raise ValueError(f"model {name!r}: name a layer kind after ':' ({', '.join(LAYER_KIND_NAMES)})")
    layer_arg = layer.strip() or None
    if key in BASE_MODELS:
        return shard(text, BASE_MODELS[key], 1, layer_arg, key)
    match = _TP.match(key)
    if match and match["base"] in BASE_MODELS:
        return shard(text, BASE_MODELS[match["base"]], int(match["tp"]), layer_arg, match["base"])
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)} "
                     f"(or any of {', '.join(BASE_MODELS)} with -tpN, and :sliding for a model's windowed "
                     "layers; `paged-bench models` lists them)")


def presets() -> list[ModelPreset]:
    return [get_model(name) for name in PRESETS]


def layer_presets(model: ModelPreset) -> list[ModelPreset]:
    """``model`` in each of its layer kinds (the default first)."""
    base = model.name.split(":", 1)[0]
    return [get_model(base if kind == model.layer_kinds[0] else f"{base}:{kind}") for kind in model.layer_kinds]


def parse_heads(text: str) -> tuple[int, int, int]:
    """``"32/8/128"`` -> (32, 8, 128): query heads, KV heads, head dim; ValueError naming the value."""
    parts = str(text).strip().split("/")
    try:
        if len(parts) != 3:
            raise ValueError
        hq, hkv, dim = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"heads {text!r} is not HQ/HKV/D, e.g. 32/8/128 (query heads / KV heads / head dim)") from None
    if hq < 1 or hkv < 1 or dim < 1:
        raise ValueError(f"heads {text!r}: every number must be at least 1")
    if hq % hkv:
        raise ValueError(f"heads {text!r}: {hq} query heads is not a multiple of {hkv} KV heads")
    return hq, hkv, dim


def format_heads(num_q_heads: int, num_kv_heads: int, head_dim: int) -> str:
    return f"{num_q_heads}/{num_kv_heads}/{head_dim}"


def layer_kind(model: ModelPreset) -> LayerKind:
    """The `LayerKind` of the model's base that ``model`` runs."""
    return next(kind for kind in BASE_MODELS[model.base].layer_kinds() if kind.name == model.layer)


def _layers_text(model: ModelPreset) -> str:
    kind = layer_kind(model)
    which = kind.which_text
    return kind.count_text if which == "every" else f"{kind.count_text} ({which})"


def models_table(models: list[ModelPreset] | None = None) -> str:
    """The presets as an aligned text table (what `paged-bench models` prints): one line per layer kind
    of each preset, the default kind (what ``--model NAME`` picks) first."""
    models = presets() if models is None else models
    header = ("name", "model", "TP", "Hq/Hkv/D", "GQA", "layer", "layers", "features", "note", "source")
    rows = [(m.name, m.display, str(m.tp), m.heads, f"{m.num_q_heads // m.num_kv_heads}:1", m.layer,
             _layers_text(m), m.features_text, m.note, m.source)
            for model in models for m in layer_presets(model)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def model_json(model: ModelPreset) -> dict[str, Any]:
    """One preset as JSON: its fields (the default layer's), ``heads``, and every layer kind with its
    layer count, indices and features."""
    kinds = [{"layer": m.layer, "name": m.name, "layers": m.layers, "which": layer_kind(m).which_text,
              "layer_indices": list(layer_kind(m).layers), **m.features}
             for m in layer_presets(model)]
    out = {**asdict(model), "heads": model.heads, "kinds": kinds}
    out["layer_kinds"] = list(model.layer_kinds)
    return out


def cmd_models(args: argparse.Namespace) -> int:
    """`paged-bench models`: list the presets (``--json`` for one object per line)."""
    if getattr(args, "json", False):
        for model in presets():
            print(json.dumps(model_json(model)))
    else:
        print(models_table())
        print("\nUse one with --model NAME (the full layer; NAME:sliding for a model's windowed layers; any base "
              "model also takes -tpN, e.g. qwen2.5-72b-tp4 or gpt-oss-120b-tp4:sliding), or give the shape with "
              "--heads HQ/HKV/D and the features with --window W --softcap C --sinks --kv-dtype fp8.")
        print("Which layers are which: " + "; ".join(f"{rule}: {text}" for rule, text in LAYER_RULES.items()))
    return 0


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to a CLI's subparsers; it runs `cmd_models`."""
    parser = subparsers.add_parser("models", help="list the model presets (attention shapes per GPU shard)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per preset")
    parser.set_defaults(func=cmd_models)
    return parser
