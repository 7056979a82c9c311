"""The sweeps: named, seeded cases shared by the CLI, the asv suite and the report.

A `Case` is one batch shape (a batch string, page size, heads, dtype, causal, seed, page pool). Case
names are stable and append-only (asv keys its history on them): add new cases, never rename or reuse
one; a case dropped from a sweep keeps its name reserved (`RETIRED_FROM_DEFAULT`).

Names: ``{stem}-p{page}{variant}``, where the stem names the batch (``decode-b64-q1-c4096``,
``mixed-8d3000-8p2000``, a file's case name, or the batch string itself) and the variant suffix
names every field that differs from the case's base (`STANDARD_FIELDS`: 32/8/128 heads, bf16, causal,
seed 0, default pool), in this order: ``-h{Hq}x{Hkv}d{D}``, ``-{dtype}``, ``-noncausal``,
``-pool{N}pages`` or ``-pool{G}gib``, ``-s{seed}``, then the model features (`adapters.features`):
``-w{window}``, ``-cap{softcap}``, ``-sinks``, ``-kvfp8`` (``-kvfp8h`` with per-head scales). So ``decode-b64-q1-c4096-p16-h16x8d256`` is the
headline decode with Gemma-2-9B's heads, and a standard case keeps the name it always had.

A sweep (`Sweep`) is a product of axes per workload (`Axes`; asv parameterises over exactly these)
plus a list of named cases (`SWEEP_CASES`: the curated head/dtype/spec-decode/pool cells of the
default sweep and its model-feature cells: a Mistral-like sliding-window decode, Gemma 3's windowed and
Gemma 2's soft-capped prefill, a gpt-oss sliding layer with sinks, and decode on an fp8 KV cache with
per-tensor and per-head scales, see `_default_cases` and docs/model-features.md; asv shows them as the
``Cases`` benchmark). This module imports no torch, so asv's per-parameter processes stay light.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from adapters.batch import BatchSpec

from adapters.grammar import (  # noqa: F401 (DTYPE_NAMES re-exported)
    DTYPE_NAMES, classify_workload, format_length, parse_grammar, resolve_lengths,
)
from adapters.features import features_of, feature_suffix
from harness.cases.models import format_heads, get_model, parse_heads

STANDARD_HEADS = {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128}
"""A Llama-3-8B-like layer (GQA 4:1): the head configuration of every case that names no other."""

FEATURE_DEFAULTS: dict[str, Any] = {"sliding_window": None, "softcap": None, "sinks": False, "kv_dtype": None,
                                    "kv_scale": "tensor"}
"""The model-feature fields of a plain case (`adapters.features`); a case's identity leaves them out
while they hold these values, so every case made before them keeps its cell id."""

STANDARD_FIELDS: dict[str, Any] = {**STANDARD_HEADS, "dtype": "bf16", "causal": True, "seed": 0,
                                   "pool_pages": None, "pool_gib": None, **FEATURE_DEFAULTS}
"""The fields a case name does not spell out (see the module docstring); anything else gets a suffix."""

VARIANT_FIELDS: tuple[str, ...] = tuple(STANDARD_FIELDS)
"""Case fields besides name, grammar and page size."""

WORKLOADS: tuple[str, ...] = ("decode", "prefill", "mixed", "spec-decode")
"""Workload kinds (``--workloads``): adapters.grammar.classify_workload of a case's lengths."""

PROBE_CASE_PREFIX = "probe-"
"""Names of the capability probe's cases (`harness.measure.capability.probe_case`) start with this: such a cell
is gated, never timed, and its rows live apart from the sweep's (``<out>/probe/``)."""


def is_probe_case(case: "Case | str") -> bool:
    """Whether a case (or case name) is one of the capability probe's."""
    return str(getattr(case, "name", case)).startswith(PROBE_CASE_PREFIX)


_NAME_KIND = {"decode": "decode", "prefill": "prefill", "spec-decode": "specdec"}
"""The kind word in the names of uniform cases of each workload."""


@dataclass(frozen=True)
class Case:
    """One batch shape of a sweep; ``spec()`` gives the `BatchSpec` every backend is run on.

    ``pool_pages`` / ``pool_gib`` size the page pool (default: the batch's pages plus 25%). ``stem`` and
    ``base`` only say how the name was made (so that `override_case` can name a variant); they are not
    part of the case's identity (`as_dict`, equality).
    """

    name: str
    grammar: str
    page_size: int
    num_q_heads: int = STANDARD_HEADS["num_q_heads"]
    num_kv_heads: int = STANDARD_HEADS["num_kv_heads"]
    head_dim: int = STANDARD_HEADS["head_dim"]
    dtype: str = "bf16"
    causal: bool = True
    seed: int = 0
    pool_pages: int | None = None
    pool_gib: float | None = None
    sliding_window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    kv_dtype: str | None = None
    kv_scale: str = "tensor"
    stem: str = field(default="", compare=False, repr=False)
    base: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)

    def spec(self) -> "BatchSpec":
        """The case's `BatchSpec`, built at the first call and kept: the memory check, the batch, the row's
        figures and its reproducer all read the one spec (a BatchSpec is immutable; drawn lengths are drawn
        once). The cache is no field: equality, hashing, `as_dict` and cell ids do not see it."""
        return self._kept("_spec", self._build_spec)

    def _build_spec(self) -> "BatchSpec":
        from adapters.batch import BatchSpec

        return BatchSpec.from_grammar(self.grammar, seed=self.seed, page_size=self.page_size,
                                      num_q_heads=self.num_q_heads, num_kv_heads=self.num_kv_heads,
                                      head_dim=self.head_dim, dtype=self.dtype, causal=self.causal,
                                      pool_pages=self.pool_pages, pool_gib=self.pool_gib,
                                      **{name: getattr(self, name) for name in FEATURE_DEFAULTS})

    def _kept(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()``'s value, built at the first call and kept in the instance under ``key`` (no field: the
        case is frozen, so it is set once past ``__setattr__``)."""
        if key not in self.__dict__:
            object.__setattr__(self, key, build())
        return self.__dict__[key]

    @property
    def features(self) -> tuple[str, ...]:
        """The model features the case asks for (`adapters.features.FEATURES`), empty for plain attention."""
        return features_of(self)

    def lengths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(q_lens, kv_lens), drawn from the seed (torch-free), once per case (kept like `spec`)."""
        return self._kept("_lengths", lambda: resolve_lengths(self.grammar, self.seed))

    @property
    def workload(self) -> str:
        """decode / prefill / mixed / spec-decode (adapters.grammar.classify_workload)."""
        return classify_workload(*self.lengths())

    def axes(self) -> dict[str, object]:
        """The case's coordinates for tables and plots: workload, batch size, mean tokens per sequence,
        mean context (kv_len - q_len), page size."""
        q_lens, kv_lens = self.lengths()
        batch = len(q_lens)
        contexts = [kv - q for q, kv in zip(q_lens, kv_lens)]
        return {"workload": classify_workload(q_lens, kv_lens), "batch_size": batch,
                "q_len": round(sum(q_lens) / batch, 1), "context": round(sum(contexts) / batch, 1),
                "page_size": self.page_size}

    @property
    def variant(self) -> str:
        """What sets the case apart from the standard layer (32/8/128 bf16 causal, default pool, seed 0),
        e.g. ``"h16x8d256"`` or ``"fp16"``; empty for a standard case. Reports keep variants out of the
        standard cells' curves and show them beside their twins."""
        return variant_suffix(_normalise(self.fields()), _normalise(STANDARD_FIELDS)).lstrip("-")

    def fields(self) -> dict[str, Any]:
        """Every field besides name, grammar and page size (`VARIANT_FIELDS`)."""
        return {name: getattr(self, name) for name in VARIANT_FIELDS}

    def as_dict(self) -> dict[str, object]:
        """The case's identity (what `harness.measure.results.cell_id` hashes): the original fields always, the
        pool fields only when set, so every case that existed before them keeps its cell id."""
        out: dict[str, object] = {"name": self.name, "grammar": self.grammar, "page_size": self.page_size}
        out.update(self.fields())
        for name in ("pool_pages", "pool_gib"):
            if out[name] is None:
                del out[name]
        for name, default in FEATURE_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out


def variant_suffix(values: dict[str, Any], base: dict[str, Any]) -> str:
    """The name suffix of the fields in ``values`` that differ from ``base`` (see the module docstring)."""
    parts = []
    heads = ("num_q_heads", "num_kv_heads", "head_dim")
    if any(values[key] != base[key] for key in heads):
        parts.append("h{}x{}d{}".format(*(values[key] for key in heads)))
    if values["dtype"] != base["dtype"]:
        parts.append(values["dtype"])
    if values["causal"] != base["causal"]:
        parts.append("causal" if values["causal"] else "noncausal")
    if (values["pool_pages"], values["pool_gib"]) != (base["pool_pages"], base["pool_gib"]):
        if values["pool_pages"] is not None:
            parts.append(f"pool{values['pool_pages']}pages")
        elif values["pool_gib"] is not None:
            parts.append(f"pool{values['pool_gib']:g}gib")
        else:
            parts.append("pooldefault")
    if values["seed"] != base["seed"]:
        parts.append(f"s{values['seed']}")
    feature_names = tuple(FEATURE_DEFAULTS)
    if any(values.get(name) != base.get(name) for name in feature_names):
        parts += feature_suffix({name: values.get(name) for name in feature_names})
    return "".join(f"-{part}" for part in parts)


def _normalise(fields: dict[str, Any]) -> dict[str, Any]:
    """Types a case keeps (an int pool_gib becomes a float, so ``16`` and ``16.0`` are one case)."""
    out = dict(fields)
    for name in ("pool_gib", "softcap"):
        if out.get(name) is not None and isinstance(out[name], int) and not isinstance(out[name], bool):
            out[name] = float(out[name])
    if out.get("kv_dtype", None) is None and "kv_scale" in out:
        out["kv_scale"] = "tensor"  # scales exist only with an fp8 cache
    return out


def make_case(stem: str, grammar: str, page_size: int, *, base: dict[str, Any] | None = None,
              **fields) -> Case:
    """The case ``{stem}-p{page_size}{variant suffix}``: ``fields`` over ``base`` (itself over
    `STANDARD_FIELDS`; a base field never shows in the name, a field that differs from it does)."""
    unknown = set(fields) - set(VARIANT_FIELDS)
    if unknown:
        raise TypeError(f"unknown case field(s) {sorted(unknown)}; known: {', '.join(VARIANT_FIELDS)}")
    base_values = _normalise({**STANDARD_FIELDS, **(base or {})})
    values = _normalise({**base_values, **fields})
    return Case(name=f"{stem}-p{page_size}{variant_suffix(values, base_values)}", grammar=grammar,
                page_size=page_size, **values, stem=stem, base=tuple(base_values.items()))


def override_case(case: Case, *, page_size: int | None = None, **changes) -> Case:
    """``case`` with other fields (heads, dtype, causal, seed, pool) or page size, named as a variant
    of its stem: equal fields give the same name, so ``--model llama-3-8b`` leaves standard cases as
    they are. A case made without a stem gets a suffix for what changed, after its own name."""
    unknown = set(changes) - set(VARIANT_FIELDS)
    if unknown:
        raise TypeError(f"unknown case field(s) {sorted(unknown)}; known: {', '.join(VARIANT_FIELDS)}")
    if changes.get("pool_pages") is not None:
        changes.setdefault("pool_gib", None)
    if changes.get("pool_gib") is not None:
        changes.setdefault("pool_pages", None)
    page = case.page_size if page_size is None else page_size
    values = _normalise({**case.fields(), **changes})
    if case.stem:
        base = dict(case.base) or dict(STANDARD_FIELDS)
        return make_case(case.stem, case.grammar, page, base=base, **values)
    if values == case.fields() and page == case.page_size:
        return case
    name = case.name + (f"-p{page}" if page != case.page_size else "") + variant_suffix(values, case.fields())
    return dataclasses.replace(case, name=name, page_size=page, **values)


def uniform_case(kind: str, batch_size: int, q_len: int, context: int, page_size: int, prefix: str = "",
                 **fields) -> Case:
    """A case where every sequence has the same lengths, named ``{prefix}{kind}-b{B}-q{q}-c{ctx}-p{page}``;
    ``fields`` (e.g. the tiny sweep's heads) are its base, so they do not show in the name."""
    grammar = f"{batch_size}q{format_length(q_len)}c{format_length(context)}"
    parse_grammar(grammar)
    return make_case(f"{prefix}{kind}-b{batch_size}-q{q_len}-c{context}", grammar, page_size, base=fields)


MIXED_GRAMMARS = {
    # 8 decodes at context 3000 beside 8 prefills of 9..2000 new tokens on 0..7000 cached ones.
    "mixed-8d3000-8p2000": "8q1c3000_8q9-2000c0-7000",
    # a serving step: 32 decodes of mixed context beside 2 long prefill chunks.
    "mixed-32d-2p4k": "32q1c512-8k_2q4kc0-4k",
    # for CPU-only machines
    "tiny-mixed": "2q1c40_2q9-24c0-24",
    # traffic: 64 decodes whose contexts follow a lognormal (median 2k, heavy tail to 32k) beside 2 prefill chunks.
    "mixed-traffic-64d-2p2k": "64q1c~lognormal(median=2k,sigma=1,max=32k)_2q2kc0-4k",
}

PAGE_SIZES = (16, 256)


@dataclass(frozen=True)
class Axes:
    """A workload's sweep as a product of axes (asv parameterises over exactly these).

    ``prefix`` and ``heads`` (fields such as num_q_heads, head_dim, dtype) apply to every case and are
    its base: they do not show in names (the tiny sweep). ``head_configs`` ("HQ/HKV/D"), ``dtypes`` and
    ``causals`` are further product axes when not empty (named by suffix; asv gets a parameter for each),
    and ``overrides`` are fields set on every case, named by suffix (a sweep file's pool or seed).
    """

    batch_sizes: tuple[int, ...] = ()
    q_lens: tuple[int, ...] = ()
    contexts: tuple[int, ...] = ()
    page_sizes: tuple[int, ...] = PAGE_SIZES
    mixes: tuple[str, ...] = ()
    prefix: str = ""
    heads: tuple[tuple[str, object], ...] = ()
    head_configs: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    causals: tuple[bool, ...] = ()
    overrides: tuple[tuple[str, object], ...] = ()

    def extra_axes(self) -> list[tuple[str, tuple]]:
        """(asv parameter name, values) of the optional product axes in use."""
        named = (("heads", self.head_configs), ("dtype", self.dtypes), ("causal", self.causals))
        return [(name, values) for name, values in named if values]


TINY = {"prefix": "tiny-", "heads": (("num_q_heads", 4), ("num_kv_heads", 2), ("head_dim", 32), ("dtype", "fp32")),
        "page_sizes": (16,)}

SWEEP_AXES: dict[str, dict[str, Axes]] = {
    "default": {
        "decode": Axes(batch_sizes=(1, 16, 64), q_lens=(1,), contexts=(1024, 4096, 16384)),
        # context 1024 left the default sweep (RETIRED_FROM_DEFAULT): 0 and 2048 bracket it
        "prefill": Axes(batch_sizes=(1, 4, 8), q_lens=(512, 2048), contexts=(0, 2048)),
        "mixed": Axes(mixes=("mixed-8d3000-8p2000", "mixed-32d-2p4k", "mixed-traffic-64d-2p2k")),
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

RETIRED_FROM_DEFAULT: dict[str, str] = {
    f"prefill-b{b}-q{q}-c1024-p{p}": "prefill at context 1024 sits between contexts 0 and 2048, which stay; "
                                     "dropped to make room for the head/dtype cells (the short sweep keeps "
                                     "b4/b8 at context 1024)"
    for b in (1, 4, 8) for q in (512, 2048) for p in PAGE_SIZES
}
"""Case names that left the default sweep: reserved, never reused for another batch (asv history)."""


def _default_cases() -> tuple[Case, ...]:
    """The default sweep's curated cells beyond its axes: other head configurations and fp16 on the
    headline decode (B64 at context 4096) and prefill (B4, 2048 new on 2048 cached), speculative
    decoding, the 8:1 decode in a serving-sized pool (16 GiB: 2^32 elements per cache), then the
    model-feature cells (`_feature_cases`)."""
    decode, prefill = ("decode-b64-q1-c4096", "64q1c4k"), ("prefill-b4-q2048-c2048", "4q2kc2k")
    variants = [
        get_model("llama-3.2-1b").fields,     # D 64
        get_model("gemma-2-9b").fields,       # D 256, Hq 16 / Hkv 8
        get_model("llama-3-70b-tp8").fields,  # one KV head per GPU (8:1), the MQA path
        {"dtype": "fp16"},
    ]
    cases = [make_case(stem, grammar, 16, **fields) for stem, grammar in (decode, prefill) for fields in variants]
    cases += [
        make_case("specdec-b64-q4-c4096", "64q4c4k", 16),          # 3 drafts + 1 on a 4k context
        make_case("specdec-b32-q2-8-c16384", "32q2-8c16k", 16),    # 1-7 drafts + 1 on a 16k context
        make_case(*decode, 16, **get_model("llama-3-70b-tp8").fields, pool_gib=16.0),
    ]
    cases += _feature_cases()
    return tuple(cases)


def _feature_cases() -> list[Case]:
    """The default sweep's model-feature cells (`adapters.features`), each the twin of a plain cell the
    sweep also times (the report shows the two side by side), all at page 16:

    - Mistral-7B-like sliding window on a long decode: 32/8/128, B64 x 16k context, window 4096 (the
      model's ``sliding_window``): a kernel that skips the keys outside the window reads a quarter of the
      cache. Twin: ``decode-b64-q1-c16384-p16``.
    - Gemma 3's local layers in prefill: 16/8/256 (Gemma-3-12B's heads, the same as Gemma-2-9B's), window
      1024, B4 x 2048 new on 2048 cached: each new token sees 1024 of its 2049..4096 keys, so the window
      cuts the work by about 3x. Twin: ``prefill-b4-q2048-c2048-p16-h16x8d256``.
    - Gemma 2's logit soft-cap (``attn_logit_softcapping`` 50) in the same prefill, the global layer (no
      window; at 4096 keys Gemma 2's 4096-key window would change nothing anyway). On the suite's
      N(0,1)-like scores a cap of 50 moves the output by ~0.25 % (inside the bf16 gate), so this cell times
      the capped path; the capability probe's soft-cap row (cap 2) checks that a backend applies it.
      Twin: ``prefill-b4-q2048-c2048-p16-h16x8d256``.
    - gpt-oss's sliding layers in a serving step: 64/8/64 heads (gpt-oss-20b/120b at TP 1), a learned
      sink logit per head and window 128 (the layers gpt-oss alternates with full ones), on the
      ``mixed-32d-2p4k`` batch; its plain twin with the same heads is the cell before it.
    - An fp8 (e4m3) KV cache on the long decode (32/8/128, B64 x 16k): per-tensor scales (vLLM's
      ``kv_cache_dtype="fp8"``) and per-KV-head scales; half the bytes of the bf16 twin
      ``decode-b64-q1-c16384-p16``.
    """
    long_decode = ("decode-b64-q1-c16384", "64q1c16k")
    prefill = ("prefill-b4-q2048-c2048", "4q2kc2k")
    mixed = ("mixed-32d-2p4k", MIXED_GRAMMARS["mixed-32d-2p4k"])
    gemma = get_model("gemma-2-9b").fields      # 16/8/256: Gemma-2-9B and Gemma-3-12B
    gpt_oss = {"num_q_heads": 64, "num_kv_heads": 8, "head_dim": 64}
    return [
        make_case(*long_decode, 16, sliding_window=4096),                     # Mistral-7B
        make_case(*prefill, 16, **gemma, sliding_window=1024),               # Gemma 3 local layer
        make_case(*prefill, 16, **gemma, softcap=50.0),                      # Gemma 2 global layer
        make_case(*mixed, 16, **gpt_oss),                                    # gpt-oss heads, plain twin
        make_case(*mixed, 16, **gpt_oss, sliding_window=128, sinks=True),    # gpt-oss sliding layer
        make_case(*long_decode, 16, kv_dtype="fp8"),                         # fp8 cache, per-tensor scales
        make_case(*long_decode, 16, kv_dtype="fp8", kv_scale="head"),        # fp8 cache, per-head scales
    ]


def _short_cases() -> tuple[Case, ...]:
    """The short sweep's cells beyond its axes: decode in every head grouping (MHA 1:1, GQA 4:1 is the
    axes', 8:1 with one KV head, D 256), a small-batch long-context decode, speculative decoding (4 and
    2-8 new tokens per sequence) and the decode-heavy mixed step: the shapes where a cuDNN release has
    broken one binding while the others worked (docs/backends.md), so that the quick check and the
    release check (`paged-bench releases`) see them."""
    decode = ("decode-b64-q1-c4096", "64q1c4k")
    return (
        make_case(*decode, 16, num_q_heads=32, num_kv_heads=32, head_dim=128),    # MHA
        make_case(*decode, 16, **get_model("llama-3-70b-tp8").fields),           # 8:1, one KV head
        make_case(*decode, 16, **get_model("gemma-2-9b").fields),                # D 256, 16/8
        make_case("decode-b8-q1-c16384", "8q1c16k", 16),
        make_case("specdec-b64-q4-c4096", "64q4c4k", 16),
        make_case("specdec-b32-q2-8-c16384", "32q2-8c16k", 16),
        make_case("mixed-32d-2p4k", MIXED_GRAMMARS["mixed-32d-2p4k"], 16),
    )


SWEEP_CASES: dict[str, tuple[Case, ...]] = {"default": _default_cases(), "short": _short_cases(), "cpu-tiny": ()}
"""Named cases of each sweep beyond its axes."""


def case_for(workload: str, axes: Axes, *values) -> Case:
    """The case at one point of a workload's axes: (batch, q_len, context, page) or (mix, page), then
    the values of `Axes.extra_axes` in order."""
    count = 2 if workload == "mixed" else 4
    point, extra = values[:count], list(values[count:])
    if workload == "mixed":
        mix, page_size = point
        case = make_case(mix, MIXED_GRAMMARS[mix], page_size, base=dict(axes.heads))
    else:
        case = uniform_case(_NAME_KIND.get(workload, workload), *point, prefix=axes.prefix, **dict(axes.heads))
    changes: dict[str, Any] = {}
    for (name, _), value in zip(axes.extra_axes(), extra):
        if name == "heads":
            changes.update(zip(("num_q_heads", "num_kv_heads", "head_dim"), parse_heads(value)))
        else:
            changes[name] = value
    changes.update(dict(axes.overrides))
    return override_case(case, **changes) if changes else case


def axis_values(workload: str, axes: Axes) -> list[tuple]:
    if workload == "mixed":
        point = [axes.mixes, axes.page_sizes]
    else:
        point = [axes.batch_sizes, axes.q_lens, axes.contexts, axes.page_sizes]
    return list(itertools.product(*point, *(values for _, values in axes.extra_axes())))


def cases_from_axes(workload: str, axes: Axes) -> list[Case]:
    return [case_for(workload, axes, *values) for values in axis_values(workload, axes)]


@dataclass(frozen=True)
class Sweep:
    """A named sweep: axes per workload and named cases (a built-in sweep or a sweep file)."""

    name: str
    axes: dict[str, Axes]
    cases: tuple[Case, ...] = ()
    source: str = ""
    """Where it came from: empty for a built-in sweep, the file's path for a sweep file."""

    def axes_cases(self) -> list[Case]:
        return [case for workload, axes in self.axes.items() for case in cases_from_axes(workload, axes)]

    def all_cases(self) -> list[Case]:
        """Axes cases first, then the named ones; a name given twice keeps its first case."""
        return unique_cases([*self.axes_cases(), *self.cases])


def unique_cases(cases: Iterable[Case]) -> list[Case]:
    """``cases`` without repeats (same name, same case); ValueError when one name has two cases."""
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            if seen[case.name] != case:
                raise ValueError(f"case name {case.name!r} is given to two different cases: "
                                 f"{seen[case.name].as_dict()} and {case.as_dict()}")
            continue
        seen[case.name] = case
    return list(seen.values())


BUILTIN_SWEEPS: dict[str, Sweep] = {name: Sweep(name, SWEEP_AXES[name], SWEEP_CASES.get(name, ()))
                                    for name in SWEEP_AXES}

SWEEPS: dict[str, list[Case]] = {name: sweep.all_cases() for name, sweep in BUILTIN_SWEEPS.items()}


def get_sweep(name: str) -> list[Case]:
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {', '.join(SWEEPS)}")
    return SWEEPS[name]


def select(cases: list[Case], workloads: list[str] | None = None) -> list[Case]:
    """Keep the cases of the given workload kinds (decode / prefill / mixed / spec-decode)."""
    if not workloads:
        return cases
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        raise ValueError(f"unknown workload kind(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    return [case for case in cases if case.workload in workloads]


def heads_text(case: Case) -> str:
    """``"HQ/HKV/D"`` of a case (the form ``--heads`` takes)."""
    return format_heads(case.num_q_heads, case.num_kv_heads, case.head_dim)


@functools.lru_cache(maxsize=1 << 16)
def cell_id(backend: str, case: Case) -> str:
    """Stable key of a cell: the backend and every identity field of the case (`Case.as_dict`); resume
    and comparisons across runs, environments and machines match cells on it. Computed once per cell
    (the runner's resume rule, the row and the run's result order all ask for it)."""
    payload = json.dumps({"backend": backend, **case.as_dict()}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One measurement cell: a backend on a case. What travels from the session through the runner and
    its workers to the row (`harness.measure.results.make_row`); ``id`` is its `cell_id`."""

    backend: str
    case: Case

    @property
    def id(self) -> str:
        """The cell's stable key (`cell_id`): resume and comparisons match cells on it."""
        return cell_id(self.backend, self.case)
