"""The batch-string grammar, torch-free so that light processes (asv's per-parameter runs) can use it.

A batch is written as groups joined by ``_``, each ``{count}q{q_len}c{context}``: ``count`` sequences
with ``q_len`` new (query) tokens each on ``context`` tokens already cached, so ``kv_len = context +
q_len``. A length is an integer, an integer with ``k`` (x1024), or a range ``lo-hi`` drawn uniformly from
the seed. Example: ``"8q1c3000_8q9-2000c0-7000"`` is 8 decodes beside 8 prefills of varied lengths.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

SequenceKind = Literal["decode", "prefill"]

_GROUP = re.compile(r"^(?P<count>\d+)q(?P<q>[0-9k]+(?:-[0-9k]+)?)c(?P<ctx>[0-9k]+(?:-[0-9k]+)?)$")


def classify_sequence(q_len: int, kv_len: int) -> SequenceKind:
    """The one place that decides what a sequence is: one new token is a decode, more is a prefill
    (with or without cached context before it)."""
    return "decode" if q_len == 1 else "prefill"


def _parse_length(text: str) -> tuple[int, int]:
    """``"4k"`` -> (4096, 4096); ``"9-2000"`` -> (9, 2000)."""
    def one(part: str) -> int:
        if part.endswith("k"):
            return int(part[:-1]) * 1024
        return int(part)
    lo, _, hi = text.partition("-")
    low = one(lo)
    high = one(hi) if hi else low
    if high < low:
        raise ValueError(f"length range {text!r} has its upper end below its lower end")
    return low, high


def _format_length(value: int) -> str:
    return f"{value // 1024}k" if value >= 1024 and value % 1024 == 0 else str(value)


@dataclass(frozen=True)
class LengthGroup:
    """``count`` sequences whose q_len and context are fixed or drawn from inclusive ranges."""

    count: int
    q_len: tuple[int, int]
    context: tuple[int, int]

    def format(self) -> str:
        def fmt(span: tuple[int, int]) -> str:
            lo, hi = span
            return _format_length(lo) if lo == hi else f"{_format_length(lo)}-{_format_length(hi)}"
        return f"{self.count}q{fmt(self.q_len)}c{fmt(self.context)}"


def parse_grammar(text: str) -> list[LengthGroup]:
    """Parse a batch string (see the module docstring) into its groups."""
    groups = []
    for part in text.strip().split("_"):
        match = _GROUP.match(part)
        if not match:
            raise ValueError(f"batch string {text!r}: group {part!r} is not of the form "
                             "'{count}q{q_len}c{context}', e.g. '8q512c1k' or '8q9-2000c0-7000'")
        try:
            group = LengthGroup(int(match["count"]), _parse_length(match["q"]), _parse_length(match["ctx"]))
        except ValueError as error:
            raise ValueError(f"batch string {text!r}: group {part!r}: {error}") from None
        if group.count < 1:
            raise ValueError(f"batch string {text!r}: group {part!r} has no sequences")
        if group.q_len[0] < 1:
            raise ValueError(f"batch string {text!r}: group {part!r} has q_len < 1")
        groups.append(group)
    return groups


def format_grammar(groups: list[LengthGroup]) -> str:
    return "_".join(group.format() for group in groups)


def resolve_lengths(text: str, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-sequence (q_lens, kv_lens) of a batch string; ranges are drawn reproducibly from ``seed``."""
    generator = random.Random(seed)

    def draw(span: tuple[int, int]) -> int:
        lo, hi = span
        return lo if lo == hi else generator.randint(lo, hi)

    q_lens: list[int] = []
    kv_lens: list[int] = []
    for group in parse_grammar(text):
        for _ in range(group.count):
            q_len = draw(group.q_len)
            q_lens.append(q_len)
            kv_lens.append(draw(group.context) + q_len)
    return tuple(q_lens), tuple(kv_lens)
