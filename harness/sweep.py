"""The sweeps: named, seeded cases shared by the CLI, the asv suite and the report.

A `Case` is one batch shape (a batch string, page size, heads, dtype). Case names are stable and
append-only (asv keys its history on them): add new cases, never rename or reuse one. This module
imports no torch, so asv's per-parameter processes stay light.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.batch import BatchSpec

from adapters.grammar import _format_length, parse_grammar

STANDARD_HEADS = {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128}
"""A Llama-3-8B-like layer (GQA 4:1): the head configuration of every timed case."""


@dataclass(frozen=True)
class Case:
    """One batch shape of a sweep; ``spec()`` gives the `BatchSpec` every backend is run on."""

    name: str
    grammar: str
    page_size: int
    num_q_heads: int = STANDARD_HEADS["num_q_heads"]
    num_kv_heads: int = STANDARD_HEADS["num_kv_heads"]
    head_dim: int = STANDARD_HEADS["head_dim"]
    dtype: str = "bf16"
    causal: bool = True
    seed: int = 0

    def spec(self) -> "BatchSpec":
        from adapters.batch import BatchSpec

        return BatchSpec.from_grammar(self.grammar, seed=self.seed, page_size=self.page_size,
                                      num_q_heads=self.num_q_heads, num_kv_heads=self.num_kv_heads,
                                      head_dim=self.head_dim, dtype=self.dtype, causal=self.causal)

    def axes(self) -> dict[str, object]:
        """The case's coordinates for tables and plots: kind, batch size, mean tokens per sequence,
        mean context (kv_len - q_len), page size."""
        spec = self.spec()
        contexts = [kv - q for q, kv in zip(spec.q_lens, spec.kv_lens)]
        return {"workload": spec.kind, "batch_size": spec.batch_size,
                "q_len": round(sum(spec.q_lens) / spec.batch_size, 1),
                "context": round(sum(contexts) / spec.batch_size, 1), "page_size": self.page_size}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def uniform_case(kind: str, batch_size: int, q_len: int, context: int, page_size: int, prefix: str = "",
                 **fields) -> Case:
    """A case where every sequence has the same lengths, named ``{prefix}{kind}-b{B}-q{q}-c{ctx}-p{page}``."""
    grammar = f"{batch_size}q{_format_length(q_len)}c{_format_length(context)}"
    parse_grammar(grammar)
    return Case(name=f"{prefix}{kind}-b{batch_size}-q{q_len}-c{context}-p{page_size}", grammar=grammar,
                page_size=page_size, **fields)


MIXED_GRAMMARS = {
    # 8 decodes at context 3000 beside 8 prefills of 9..2000 new tokens on 0..7000 cached ones.
    "mixed-8d3000-8p2000": "8q1c3000_8q9-2000c0-7000",
    # a serving step: 32 decodes of mixed context beside 2 long prefill chunks.
    "mixed-32d-2p4k": "32q1c512-8k_2q4kc0-4k",
    # for CPU-only machines
    "tiny-mixed": "2q1c40_2q9-24c0-24",
}

PAGE_SIZES = (16, 256)


@dataclass(frozen=True)
class Axes:
    """A workload's sweep as a product of axes (asv parameterises over exactly these); ``prefix``
    and ``heads`` (num_q_heads, num_kv_heads, head_dim, dtype) apply to every case of it."""

    batch_sizes: tuple[int, ...] = ()
    q_lens: tuple[int, ...] = ()
    contexts: tuple[int, ...] = ()
    page_sizes: tuple[int, ...] = PAGE_SIZES
    mixes: tuple[str, ...] = ()
    prefix: str = ""
    heads: tuple[tuple[str, object], ...] = ()


TINY = {"prefix": "tiny-", "heads": (("num_q_heads", 4), ("num_kv_heads", 2), ("head_dim", 32), ("dtype", "fp32")),
        "page_sizes": (16,)}

SWEEP_AXES: dict[str, dict[str, Axes]] = {
    "default": {
        "decode": Axes(batch_sizes=(1, 16, 64), q_lens=(1,), contexts=(1024, 4096, 16384)),
        "prefill": Axes(batch_sizes=(1, 4, 8), q_lens=(512, 2048), contexts=(0, 1024, 2048)),
        "mixed": Axes(mixes=("mixed-8d3000-8p2000", "mixed-32d-2p4k")),
    },
    "short": {
        "decode": Axes(batch_sizes=(64,), q_lens=(1,), contexts=(4096,)),
        "prefill": Axes(batch_sizes=(4, 8), q_lens=(512, 2048), contexts=(1024, 2048)),
        "mixed": Axes(mixes=("mixed-8d3000-8p2000",)),
    },
    # For machines without a GPU: tiny shapes that the CPU-capable backends finish in seconds.
    "cpu-tiny": {
        "decode": Axes(batch_sizes=(4,), q_lens=(1,), contexts=(64,), **TINY),
        "prefill": Axes(batch_sizes=(2,), q_lens=(32,), contexts=(0, 32), **TINY),
        "mixed": Axes(mixes=("tiny-mixed",), **TINY),
    },
}


def case_for(workload: str, axes: Axes, *values) -> Case:
    """The case at one point of a workload's axes: (batch, q_len, context, page) or (mix, page)."""
    if workload == "mixed":
        mix, page_size = values
        return Case(name=f"{mix}-p{page_size}", grammar=MIXED_GRAMMARS[mix], page_size=page_size, **dict(axes.heads))
    return uniform_case(workload, *values, prefix=axes.prefix, **dict(axes.heads))


def axis_values(workload: str, axes: Axes) -> list[tuple[int, ...]]:
    if workload == "mixed":
        return list(itertools.product(axes.mixes, axes.page_sizes))
    return list(itertools.product(axes.batch_sizes, axes.q_lens, axes.contexts, axes.page_sizes))


def cases_from_axes(workload: str, axes: Axes) -> list[Case]:
    return [case_for(workload, axes, *values) for values in axis_values(workload, axes)]


SWEEPS: dict[str, list[Case]] = {
    name: [case for workload, axes in by_workload.items() for case in cases_from_axes(workload, axes)]
    for name, by_workload in SWEEP_AXES.items()
}


def get_sweep(name: str) -> list[Case]:
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {', '.join(SWEEPS)}")
    return SWEEPS[name]


def select(cases: list[Case], workloads: list[str] | None = None) -> list[Case]:
    """Keep the cases of the given workload kinds (decode / prefill / mixed)."""
    if not workloads:
        return cases
    unknown = set(workloads) - {"decode", "prefill", "mixed"}
    if unknown:
        raise ValueError(f"unknown workload kind(s) {sorted(unknown)}; choose from decode, prefill, mixed")
    return [case for case in cases if case.spec().kind in workloads]
