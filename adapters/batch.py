"""The canonical input every backend adapts from: packed (THD) queries against a paged K/V cache.

`BatchSpec` is the host-side description (per-sequence lengths, page size, heads, dtype, seed);
`PagedBatch` holds the tensors made from it by `make_batch`; `adapters.grammar` writes a batch as a
short string such as ``"8q1c3000_8q9-2000c0-7000"``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from adapters.grammar import (  # noqa: F401 (re-exported)
    DTYPE_NAMES, Distribution, LengthGroup, SequenceKind, classify_sequence, format_grammar, parse_grammar,
    resolve_lengths,
)
from adapters.validation import NULL_PAGE, validate_spec  # noqa: F401 (NULL_PAGE re-exported)

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""`DTYPE_NAMES` as torch dtypes."""
BatchKind = Literal["decode", "prefill", "mixed"]

SPARE_PAGE_FRACTION = 0.25
"""Extra pages in the pool beyond those the sequences own, so page ids are scattered, not dense
(the pool of a spec that sets neither ``pool_pages`` nor ``pool_gib``)."""

GIB = 1 << 30


def pool_pages_for_gib(gib: float, page_size: int, num_kv_heads: int, head_dim: int, elem_bytes: int) -> int:
    """Pages of a pool of ``gib`` GiB of device memory for the K and V caches together (as a serving
    engine sizes its KV cache): ``floor(gib * 2^30 / (2 * page_size * Hkv * D * elem_bytes))``."""
    return int(gib * GIB) // (2 * page_size * num_kv_heads * head_dim * elem_bytes)


@dataclass(frozen=True)
class BatchSpec:
    """Everything that defines a batch, on the host: the same spec and seed give the same tensors.

    ``q_lens[b]`` new tokens of sequence b attend to ``kv_lens[b] >= q_lens[b]`` cached tokens, the
    new ones being the last ``q_lens[b]`` of them (causal is bottom-right).

    The page pool (``num_pages``, the first dim of each cache, null page included) is ``pool_pages``
    when set, else as many pages as ``pool_gib`` GiB of K and V caches hold, else the null page, the
    pages the batch owns and `SPARE_PAGE_FRACTION` more. The batch's pages are scattered over the
    whole pool, so a serving-sized pool spreads them over gigabytes (and past 2^31 elements).
    """

    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    page_size: int = 16
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bf16"
    causal: bool = True
    seed: int = 0
    label: str = ""
    pool_pages: int | None = None
    pool_gib: float | None = None

    def __post_init__(self) -> None:
        validate_spec(self)

    @classmethod
    def from_grammar(cls, text: str, *, seed: int = 0, **fields) -> "BatchSpec":
        q_lens, kv_lens = resolve_lengths(text, seed)
        return cls(q_lens=q_lens, kv_lens=kv_lens, seed=seed, label=text, **fields)

    def replace(self, **fields) -> "BatchSpec":
        return dataclasses.replace(self, **fields)

    @property
    def batch_size(self) -> int:
        return len(self.q_lens)

    @property
    def total_q(self) -> int:
        return sum(self.q_lens)

    @property
    def total_kv(self) -> int:
        return sum(self.kv_lens)

    @property
    def max_q_len(self) -> int:
        return max(self.q_lens)

    @property
    def max_kv_len(self) -> int:
        return max(self.kv_lens)

    @property
    def pages_per_seq(self) -> tuple[int, ...]:
        return tuple(math.ceil(kv / self.page_size) for kv in self.kv_lens)

    @property
    def max_pages(self) -> int:
        return max(self.pages_per_seq)

    @property
    def owned_pages(self) -> int:
        """Pages the sequences own (the pool holds these and the null page at least)."""
        return sum(self.pages_per_seq)

    @property
    def num_pages(self) -> int:
        """Pool size in pages, the null page included: ``pool_pages``, or what ``pool_gib`` holds, or
        the null page, the owned pages and a share of spare ones."""
        if self.pool_pages is not None:
            return self.pool_pages
        if self.pool_gib is not None:
            return pool_pages_for_gib(self.pool_gib, self.page_size, self.num_kv_heads, self.head_dim,
                                      self.elem_bytes)
        owned = self.owned_pages
        return 1 + owned + math.ceil(owned * SPARE_PAGE_FRACTION)

    @property
    def cache_elements(self) -> int:
        """Elements of one cache (K or V): ``num_pages * page_size * Hkv * D``; above 2^31 - 1 an
        element offset no longer fits in int32."""
        return self.num_pages * self.page_size * self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 = MHA, num_q_heads = MQA)."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def elem_bytes(self) -> int:
        return torch.finfo(self.torch_dtype).bits // 8

    @property
    def kind(self) -> BatchKind:
        kinds = {classify_sequence(q, kv) for q, kv in zip(self.q_lens, self.kv_lens)}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def cache_bytes(self) -> int:
        """Bytes of K and V caches together, for sizing before allocation."""
        return 2 * self.cache_elements * self.elem_bytes

    def describe(self) -> str:
        name = self.label or f"B{self.batch_size}"
        pool = ""
        if self.pool_pages is not None or self.pool_gib is not None:
            pool = f" pool {self.num_pages} pages ({self.cache_bytes() / GIB:.3g} GiB)"
        return (f"{name} page {self.page_size} H {self.num_q_heads}/{self.num_kv_heads} D {self.head_dim} "
                f"{self.dtype} {'causal' if self.causal else 'non-causal'}{pool}")


@dataclass
class PagedBatch:
    """The tensors of one batch, on one device.

    q            [T, Hq, D]                        packed new tokens, T = sum(q_lens), spec dtype
    k_cache      [num_pages, page_size, Hkv, D]    NHD pages, spec dtype
    v_cache      [num_pages, page_size, Hkv, D]
    block_table  [B, max_pages] int32              page ids; padding entries hold NULL_PAGE
    cu_seqlens_q [B + 1] int32                     query offsets in tokens, starts at 0, ends at T
    kv_lens      [B] int32                         tokens in the cache per sequence, >= q_len
    """

    spec: BatchSpec
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    cu_seqlens_q: torch.Tensor
    kv_lens: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def causal(self) -> bool:
        return self.spec.causal

    @property
    def scale(self) -> float:
        return self.spec.scale

    def to(self, device: torch.device | str) -> "PagedBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "spec"}
        return PagedBatch(spec=self.spec, **moved)


def page_assignment(spec: BatchSpec) -> torch.Tensor:
    """Block table [B, max_pages] int32 on the CPU: pages drawn shuffled from the pool (never the
    null page), none shared between sequences, padding entries set to NULL_PAGE."""
    generator = torch.Generator().manual_seed(spec.seed + 1)
    shuffled = torch.randperm(spec.num_pages - 1, generator=generator).to(torch.int32) + 1
    block_table = torch.full((spec.batch_size, spec.max_pages), NULL_PAGE, dtype=torch.int32)
    start = 0
    for seq, pages in enumerate(spec.pages_per_seq):
        block_table[seq, :pages] = shuffled[start:start + pages]
        start += pages
    return block_table


def owned_slots(spec: BatchSpec, block_table: torch.Tensor) -> torch.Tensor:
    """Bool [num_pages, page_size] on the CPU: True where a slot holds one of a sequence's tokens."""
    used = torch.zeros(spec.num_pages, spec.page_size, dtype=torch.bool)
    for seq, kv_len in enumerate(spec.kv_lens):
        flat = torch.zeros(spec.pages_per_seq[seq] * spec.page_size, dtype=torch.bool)
        flat[:kv_len] = True
        used[block_table[seq, :spec.pages_per_seq[seq]].long()] = flat.view(-1, spec.page_size)
    return used


def make_batch(spec: BatchSpec, device: torch.device | str = "cpu") -> PagedBatch:
    """Build the tensors of ``spec`` on ``device``: random normal q/k/v from ``spec.seed`` (the same
    on every run on one kind of device), every slot no sequence owns zeroed."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    dtype = spec.torch_dtype
    q = torch.randn(spec.total_q, spec.num_q_heads, spec.head_dim, generator=generator, device=device, dtype=dtype)
    cache_shape = (spec.num_pages, spec.page_size, spec.num_kv_heads, spec.head_dim)
    k_cache = torch.randn(cache_shape, generator=generator, device=device, dtype=dtype)
    v_cache = torch.randn(cache_shape, generator=generator, device=device, dtype=dtype)
    block_table = page_assignment(spec)
    used = owned_slots(spec, block_table).to(device)[:, :, None, None]
    k_cache.mul_(used)
    v_cache.mul_(used)
    cu_seqlens_q = torch.zeros(spec.batch_size + 1, dtype=torch.int32)
    cu_seqlens_q[1:] = torch.cumsum(torch.tensor(spec.q_lens, dtype=torch.int32), 0)
    return PagedBatch(
        spec=spec,
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        block_table=block_table.to(device),
        cu_seqlens_q=cu_seqlens_q.to(device),
        kv_lens=torch.tensor(spec.kv_lens, dtype=torch.int32, device=device),
    )
