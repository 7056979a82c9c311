"""Model presets: real models' attention shapes per GPU shard, for ``--model NAME`` and sweep files.

A preset is the head configuration one GPU sees: query heads, KV heads and head dim after tensor
parallelism (TP) splits the heads across GPUs. Query heads divide by TP; KV heads divide too, or, when
TP exceeds them, each GPU keeps one (replicated, as vLLM and TensorRT-LLM do), so Llama-3-70B at TP 8
is 8 query heads on one KV head per GPU. Any base model takes a ``-tpN`` suffix (``qwen2.5-72b-tp4``);
`PRESETS` lists the common ones. Shapes come from each model's ``config.json`` on the Hugging Face
Hub (``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or ``hidden_size /
num_attention_heads``); `BASE_MODELS` names the file. Torch-free.

    paged-bench models [--json]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass

_HF = "https://huggingface.co/{}/blob/main/config.json"


@dataclass(frozen=True)
class BaseModel:
    """A model's attention layer as released (TP 1)."""

    display: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    repo: str
    note: str = ""

    @property
    def source(self) -> str:
        return _HF.format(self.repo)


BASE_MODELS: dict[str, BaseModel] = {
    "llama-3-8b": BaseModel("Llama-3-8B", 32, 8, 128, "meta-llama/Meta-Llama-3-8B"),
    "llama-3-70b": BaseModel("Llama-3-70B", 64, 8, 128, "meta-llama/Meta-Llama-3-70B"),
    "llama-3.1-405b": BaseModel("Llama-3.1-405B", 128, 8, 128, "meta-llama/Llama-3.1-405B"),
    "llama-3.2-1b": BaseModel("Llama-3.2-1B", 32, 8, 64, "meta-llama/Llama-3.2-1B", "D 64"),
    "mistral-7b": BaseModel("Mistral-7B-v0.1", 32, 8, 128, "mistralai/Mistral-7B-v0.1"),
    "qwen2.5-7b": BaseModel("Qwen2.5-7B", 28, 4, 128, "Qwen/Qwen2.5-7B", "GQA 7:1"),
    "qwen2.5-72b": BaseModel("Qwen2.5-72B", 64, 8, 128, "Qwen/Qwen2.5-72B"),
    "gemma-2-9b": BaseModel("Gemma-2-9B", 16, 8, 256, "google/gemma-2-9b", "D 256 (head_dim in config)"),
    "falcon-7b": BaseModel("Falcon-7B", 71, 1, 64, "tiiuae/falcon-7b", "MQA (multi_query), D 64"),
    "starcoder": BaseModel("StarCoder", 48, 1, 128, "bigcode/starcoder", "MQA (multi_query)"),
    "phi-3-mini": BaseModel("Phi-3-mini-4k", 32, 32, 96, "microsoft/Phi-3-mini-4k-instruct", "MHA, D 96"),
}
"""Base models at TP 1: (display name, Hq, Hkv, D, Hugging Face repo of the config.json, note)."""

PRESETS: tuple[str, ...] = (
    "llama-3-8b", "llama-3-70b", "llama-3-70b-tp8", "llama-3.1-405b-tp8", "llama-3.2-1b", "mistral-7b",
    "qwen2.5-7b", "qwen2.5-72b", "qwen2.5-72b-tp8", "gemma-2-9b", "falcon-7b", "starcoder", "phi-3-mini",
)
"""The names `paged-bench models` lists (any base model also takes ``-tpN``)."""

_TP = re.compile(r"^(?P<base>.+)-tp(?P<tp>\d+)$")


@dataclass(frozen=True)
class ModelPreset:
    """The attention shape one GPU shard runs: ``num_q_heads`` / ``num_kv_heads`` / ``head_dim``."""

    name: str
    display: str
    tp: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    source: str
    note: str = ""

    @property
    def heads(self) -> str:
        """``"HQ/HKV/D"``, the form ``--heads`` takes."""
        return format_heads(self.num_q_heads, self.num_kv_heads, self.head_dim)

    @property
    def fields(self) -> dict[str, int]:
        """The case fields this preset sets."""
        return {"num_q_heads": self.num_q_heads, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim}


def shard(name: str, base: BaseModel, tp: int) -> ModelPreset:
    """``base`` split over ``tp`` GPUs: query heads divided, KV heads divided or (TP above them) one per GPU."""
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
    return ModelPreset(name=name, display=base.display + (f" TP{tp}" if tp > 1 else ""), tp=tp,
                       num_q_heads=base.num_q_heads // tp, num_kv_heads=kv, head_dim=base.head_dim,
                       source=base.source, note=note)


def get_model(name: str) -> ModelPreset:
    """The preset ``name`` (a base model, optionally with ``-tpN``); ValueError naming the choices."""
    key = name.strip().lower()
    if key in BASE_MODELS:
        return shard(key, BASE_MODELS[key], 1)
    match = _TP.match(key)
    if match and match["base"] in BASE_MODELS:
        return shard(key, BASE_MODELS[match["base"]], int(match["tp"]))
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)} "
                     f"(or any of {', '.join(BASE_MODELS)} with -tpN; `paged-bench models` lists them)")


def presets() -> list[ModelPreset]:
    return [get_model(name) for name in PRESETS]


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


def models_table(models: list[ModelPreset] | None = None) -> str:
    """The presets as an aligned text table (what `paged-bench models` prints)."""
    models = presets() if models is None else models
    header = ("name", "model", "TP", "Hq/Hkv/D", "GQA", "note", "source")
    rows = [(m.name, m.display, str(m.tp), m.heads, f"{m.num_q_heads // m.num_kv_heads}:1", m.note, m.source)
            for m in models]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    """`paged-bench models`: list the presets (``--json`` for one object per line)."""
    if getattr(args, "json", False):
        for model in presets():
            print(json.dumps({**asdict(model), "heads": model.heads}))
    else:
        print(models_table())
        print("\nUse one with --model NAME (any base model also takes -tpN, e.g. qwen2.5-72b-tp4), "
              "or give the shape with --heads HQ/HKV/D.")
    return 0


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to a CLI's subparsers; it runs `cmd_models`."""
    parser = subparsers.add_parser("models", help="list the model presets (attention shapes per GPU shard)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per preset")
    parser.set_defaults(func=cmd_models)
    return parser
