"""The batch-string grammar, torch-free so that light processes (asv's per-parameter runs) can use it.

A batch is written as groups joined by ``_``, each ``{count}q{q_len}c{context}``: ``count`` sequences
with ``q_len`` new (query) tokens each on ``context`` tokens already cached, so ``kv_len = context +
q_len``. A length is

- an integer, or an integer with ``k`` (x1024): ``1``, ``3000``, ``4k``;
- a range ``lo-hi``, drawn uniformly from the seed: ``9-2000``, ``0-7k``;
- a named distribution ``~name(key=value,...)``, drawn from the seed like traffic (`DISTRIBUTIONS`):
  ``~lognormal(median=2k,sigma=1)``, ``~exponential(mean=300)``, ``~normal(mean=4k,sd=1k)``; every
  one takes ``min=`` and ``max=`` too (defaults: 0 for a context, 1 for a q_len; max `MAX_DRAWN_LENGTH`).
  Draws are rounded to the nearest integer and clipped to [min, max].

Examples: ``"8q1c3000_8q9-2000c0-7000"`` is 8 decodes beside 8 prefills of varied lengths;
``"64q1c~lognormal(median=2k,sigma=1,max=32k)_2q2kc0-4k"`` is 64 decodes whose contexts look like
serving traffic beside two prefill chunks.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Literal, Union

SequenceKind = Literal["decode", "prefill"]
WorkloadKind = Literal["decode", "prefill", "mixed", "spec-decode"]

SPEC_DECODE_MAX_Q = 16
"""A batch whose every sequence has at most this many new tokens on a cached context, some more than one,
is a speculative-decoding verify step (draft tokens checked against a long context)."""

DTYPE_NAMES: tuple[str, ...] = ("bf16", "fp16", "fp32")
"""The dtypes a batch may take (adapters.batch.DTYPES maps them to torch dtypes)."""

MAX_DRAWN_LENGTH = 128 * 1024
"""Default upper clip of a length drawn from a distribution."""

MAX_SEQUENCES = 1 << 20
"""Most sequences one batch may have: checked before anything is expanded, so a mistyped count is refused
at once instead of building a list of that many lengths."""
MAX_TOKENS = (1 << 31) - 1
"""Most tokens (cached plus new, over all sequences, at their largest) one batch may have: offsets and page
ids are int32."""

DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "lognormal": ("median", "sigma"),   # exp(N(ln median, sigma)): request lengths in serving traces
    "exponential": ("mean",),            # memoryless arrivals / output lengths
    "normal": ("mean", "sd"),
}
"""Named length distributions and their required parameters (each also takes optional ``min``/``max``)."""
_BOUNDS = ("min", "max")

_LENGTH = r"(?:~[a-z]+\([^()]*\)|[0-9k]+(?:-[0-9k]+)?)"
_GROUP = re.compile(rf"^(?P<count>[0-9]+)q(?P<q>{_LENGTH})c(?P<ctx>{_LENGTH})$")
_DISTRIBUTION = re.compile(r"^~(?P<name>[a-z]+)\((?P<params>[^()]*)\)$")


def classify_sequence(q_len: int, kv_len: int) -> SequenceKind:
    """The one place that decides what a sequence is: one new token is a decode, more is a prefill
    (with or without cached context before it)."""
    return "decode" if q_len == 1 else "prefill"


def classify_workload(q_lens, kv_lens) -> WorkloadKind:
    """What a whole batch is, for sweeps and reports: decode or prefill when all its sequences are,
    ``spec-decode`` when every sequence has 1..`SPEC_DECODE_MAX_Q` new tokens on cached context and some
    have more than one (a speculative-decoding verify step), else mixed."""
    kinds = {classify_sequence(q, kv) for q, kv in zip(q_lens, kv_lens)}
    if "prefill" in kinds and all(q <= SPEC_DECODE_MAX_Q and kv > q for q, kv in zip(q_lens, kv_lens)):
        return "spec-decode"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _parse_int(part: str) -> int:
    if part.endswith("k"):
        return int(part[:-1]) * 1024
    return int(part)


def parse_length(text: str) -> tuple[int, int]:
    """``"4k"`` -> (4096, 4096); ``"9-2000"`` -> (9, 2000)."""
    lo, _, hi = text.partition("-")
    low = _parse_int(lo)
    high = _parse_int(hi) if hi else low
    if high < low:
        raise ValueError(f"length range {text!r} has its upper end below its lower end")
    return low, high


def format_length(value: int) -> str:
    """A length as the grammar writes it: ``4096`` -> ``4k``, ``100`` -> ``100``."""
    return f"{value // 1024}k" if value >= 1024 and value % 1024 == 0 else str(value)


def _format_number(value: float) -> str:
    if float(value).is_integer():
        return format_length(int(value))
    return format(value, "g")


@dataclass(frozen=True)
class Distribution:
    """A named length distribution: ``params`` in the order written, e.g. (("median", 2048.0), ("sigma", 1.0))."""

    name: str
    params: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        if self.name not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
        required = DISTRIBUTIONS[self.name]
        seen: set[str] = set()
        for key, value in self.params:
            if key not in required + _BOUNDS:
                raise ValueError(f"{self.name}: unknown parameter {key!r}; it takes {', '.join(required)} "
                                 "(and optional min, max)")
            if key in seen:
                raise ValueError(f"{self.name}: parameter {key!r} is given twice")
            seen.add(key)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.name}: {key}={value:g} must be a finite number >= 0")
        missing = [key for key in required if key not in seen]
        if missing:
            raise ValueError(f"{self.name} needs {', '.join(missing)}, e.g. {EXAMPLES[self.name]}")
        given = dict(self.params)
        for key in ("median", "sigma", "sd") + (("mean",) if self.name == "exponential" else ()):
            if key in given and given[key] <= 0:
                raise ValueError(f"{self.name}: {key}={given[key]:g} must be positive")
        if given.get("max", MAX_DRAWN_LENGTH) < given.get("min", 0):
            raise ValueError(f"{self.name}: max={given['max']:g} is below min={given.get('min', 0):g}")

    def bounds(self, floor: int) -> tuple[int, int]:
        given = dict(self.params)
        low = max(floor, int(math.ceil(given.get("min", floor))))
        high = int(given.get("max", MAX_DRAWN_LENGTH))
        return low, max(low, high)

    def draw(self, generator: random.Random, floor: int) -> int:
        """One length, rounded to the nearest integer and clipped to [max(floor, min), max]."""
        p = dict(self.params)
        if self.name == "lognormal":
            value = generator.lognormvariate(math.log(p["median"]), p["sigma"])
        elif self.name == "exponential":
            value = generator.expovariate(1.0 / p["mean"])
        else:
            value = generator.normalvariate(p["mean"], p["sd"])
        low, high = self.bounds(floor)
        return min(high, max(low, int(math.floor(value + 0.5))))

    def format(self) -> str:
        return f"~{self.name}(" + ",".join(f"{key}={_format_number(value)}" for key, value in self.params) + ")"


EXAMPLES = {"lognormal": "~lognormal(median=2k,sigma=1)", "exponential": "~exponential(mean=300)",
            "normal": "~normal(mean=4k,sd=1k)"}

Length = Union[tuple[int, int], Distribution]
"""A group's q_len or context: an inclusive range (lo == hi for a fixed length) or a distribution."""


def _parse_distribution(text: str) -> Distribution:
    match = _DISTRIBUTION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a distribution; write e.g. {EXAMPLES['lognormal']}")
    params = []
    for item in filter(None, (part.strip() for part in match["params"].split(","))):
        key, sep, value = (piece.strip() for piece in item.partition("="))
        if not sep:
            example = EXAMPLES.get(match["name"], EXAMPLES["lognormal"])
            raise ValueError(f"{match['name']}: parameter {item!r} is not key=value, e.g. {example}")
        try:
            number = float(value[:-1]) * 1024 if value.endswith("k") else float(value)
        except ValueError:
            raise ValueError(f"{match['name']}: {key}={value!r} is not a number") from None
        params.append((key, number))
    return Distribution(match["name"], tuple(params))


def _parse_any_length(text: str) -> Length:
    return _parse_distribution(text) if text.startswith("~") else parse_length(text)


@dataclass(frozen=True)
class LengthGroup:
    """``count`` sequences whose q_len and context are fixed, drawn from inclusive ranges, or drawn
    from a distribution."""

    count: int
    q_len: Length
    context: Length

    def format(self) -> str:
        def fmt(span: Length) -> str:
            if isinstance(span, Distribution):
                return span.format()
            lo, hi = span
            return format_length(lo) if lo == hi else f"{format_length(lo)}-{format_length(hi)}"
        return f"{self.count}q{fmt(self.q_len)}c{fmt(self.context)}"


def _check_ascii(text: str) -> None:
    """Only ASCII: Python's ``int``/``float`` also read other scripts' digits (``８``), which a batch string
    must not silently accept."""
    odd = next((char for char in text if not char.isascii()), None)
    if odd is not None:
        raise ValueError(f"batch string {text!r}: {odd!r} is not an ASCII character; write counts and lengths "
                         "with the digits 0-9, e.g. '8q1c100'")


def _check_size(text: str, groups: list[LengthGroup]) -> None:
    """Refuse a batch beyond `MAX_SEQUENCES` or `MAX_TOKENS` from its groups alone (nothing expanded)."""
    sequences = sum(group.count for group in groups)
    if sequences > MAX_SEQUENCES:
        raise ValueError(f"batch string {text!r}: {sequences} sequences; at most {MAX_SEQUENCES} per batch")
    tokens = sum(group.count * (_largest(group.q_len, 1) + _largest(group.context, 0)) for group in groups)
    if tokens > MAX_TOKENS:
        raise ValueError(f"batch string {text!r}: up to {tokens} tokens; at most {MAX_TOKENS} per batch "
                         "(int32 offsets)")


def _largest(span: Length, floor: int) -> int:
    return span.bounds(floor)[1] if isinstance(span, Distribution) else span[1]


def parse_grammar(text: str) -> list[LengthGroup]:
    """Parse a batch string (see the module docstring) into its groups; refuses non-ASCII text and
    batches beyond `MAX_SEQUENCES` / `MAX_TOKENS` before anything is expanded."""
    _check_ascii(text)
    groups = []
    for part in text.strip().split("_"):
        match = _GROUP.match(part)
        if not match:
            raise ValueError(f"batch string {text!r}: group {part!r} is not of the form "
                             "'{count}q{q_len}c{context}', e.g. '8q512c1k', '8q9-2000c0-7000' or "
                             "'32q1c~lognormal(median=2k,sigma=1)'")
        try:
            group = LengthGroup(int(match["count"]), _parse_any_length(match["q"]), _parse_any_length(match["ctx"]))
        except ValueError as error:
            raise ValueError(f"batch string {text!r}: group {part!r}: {error}") from None
        if group.count < 1:
            raise ValueError(f"batch string {text!r}: group {part!r} has no sequences")
        if isinstance(group.q_len, tuple) and group.q_len[0] < 1:
            raise ValueError(f"batch string {text!r}: group {part!r} has q_len < 1")
        groups.append(group)
    _check_size(text, groups)
    return groups


def format_grammar(groups: list[LengthGroup]) -> str:
    return "_".join(group.format() for group in groups)


def resolve_lengths(text: str, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-sequence (q_lens, kv_lens) of a batch string; ranges and distributions are drawn reproducibly
    from ``seed`` (sequence by sequence, q_len before context)."""
    generator = random.Random(seed)

    def draw(span: Length, floor: int) -> int:
        if isinstance(span, Distribution):
            return span.draw(generator, floor)
        lo, hi = span
        return lo if lo == hi else generator.randint(lo, hi)

    q_lens: list[int] = []
    kv_lens: list[int] = []
    for group in parse_grammar(text):
        for _ in range(group.count):
            q_len = draw(group.q_len, 1)
            q_lens.append(q_len)
            kv_lens.append(draw(group.context, 0) + q_len)
    return tuple(q_lens), tuple(kv_lens)
