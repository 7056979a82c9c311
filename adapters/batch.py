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

from adapters.features import FP8_MAX, feature_words, features_of, window_left  # noqa: F401 (window_left re-exported)
from adapters.grammar import (  # noqa: F401 (re-exported)
    DTYPE_NAMES, Distribution, LengthGroup, SequenceKind, classify_sequence, format_grammar, parse_grammar,
    resolve_lengths,
)
from adapters.validation import NULL_PAGE, validate_spec  # noqa: F401 (NULL_PAGE re-exported)

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""`DTYPE_NAMES` as torch dtypes."""
KV_TORCH_DTYPES: dict[str, torch.dtype] = {"fp8": torch.float8_e4m3fn}
"""`adapters.features.KV_DTYPES` as torch dtypes."""
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

    Model features (`adapters.features`): ``sliding_window``, ``softcap``, ``sinks`` and an fp8 cache
    (``kv_dtype`` "fp8" with ``kv_scale`` "tensor" or "head"); the defaults are plain attention.

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
    sliding_window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    kv_dtype: str | None = None
    kv_scale: str = "tensor"

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
    def leading_decodes(self) -> int:
        """Sequences at the front of the batch with one query each: the decodes of a mixed batch, which
        serving engines order first (a kernel may run them apart from the longer queries)."""
        count = 0
        while count < self.batch_size and self.q_lens[count] == 1:
            count += 1
        return count

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
                                      self.kv_elem_bytes)
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
    def cache_dtype(self) -> torch.dtype:
        """dtype of the K and V caches: the query's, or fp8 e4m3 for ``kv_dtype`` "fp8"."""
        return KV_TORCH_DTYPES[self.kv_dtype] if self.kv_dtype is not None else self.torch_dtype

    @property
    def kv_elem_bytes(self) -> int:
        return torch.finfo(self.cache_dtype).bits // 8

    @property
    def features(self) -> tuple[str, ...]:
        """The model features this batch asks for (`adapters.features.FEATURES`), empty for plain attention."""
        return features_of(self)

    @property
    def kind(self) -> BatchKind:
        kinds = {classify_sequence(q, kv) for q, kv in zip(self.q_lens, self.kv_lens)}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def cache_bytes(self) -> int:
        """Bytes of K and V caches together, for sizing before allocation."""
        return 2 * self.cache_elements * self.kv_elem_bytes

    def describe(self) -> str:
        name = self.label or f"B{self.batch_size}"
        pool = ""
        if self.pool_pages is not None or self.pool_gib is not None:
            pool = f" pool {self.num_pages} pages ({self.cache_bytes() / GIB:.3g} GiB)"
        extras = feature_words({name: getattr(self, name) for name in
                                ("sliding_window", "softcap", "sinks", "kv_dtype", "kv_scale")})
        return (f"{name} page {self.page_size} H {self.num_q_heads}/{self.num_kv_heads} D {self.head_dim} "
                f"{self.dtype} {'causal' if self.causal else 'non-causal'}{pool}"
                + "".join(f", {extra}" for extra in extras))


@dataclass
class PagedBatch:
    """The tensors of one batch, on one device.

    q            [T, Hq, D]                        packed new tokens, T = sum(q_lens), spec dtype
    k_cache      [num_pages, page_size, Hkv, D]    NHD pages, spec dtype (``spec.cache_dtype``: fp8 e4m3)
    v_cache      [num_pages, page_size, Hkv, D]
    block_table  [B, max_pages] int32              page ids; padding entries hold NULL_PAGE
    cu_seqlens_q [B + 1] int32                     query offsets in tokens, starts at 0, ends at T
    kv_lens      [B] int32                         tokens in the cache per sequence, >= q_len
    sinks        [Hq] float32 or None              per-head sink logits (``spec.sinks``)
    k_scale      [1] or [Hkv] float32 or None      fp8 caches only: true K = k_cache * k_scale
    v_scale      [1] or [Hkv] float32 or None      (per tensor: one value; per head: one per KV head)
    """

    spec: BatchSpec
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    cu_seqlens_q: torch.Tensor
    kv_lens: torch.Tensor
    sinks: torch.Tensor | None = None
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

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
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if f.name != "spec" and getattr(self, f.name) is not None}
        return PagedBatch(spec=self.spec, **moved)

    def dequantised_caches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) caches in float32 with their scales applied: what the cache stands for."""
        k, v = self.k_cache.float(), self.v_cache.float()
        if self.k_scale is not None:
            k = k * self.k_scale.float().view(1, 1, -1, 1)
            v = v * self.v_scale.float().view(1, 1, -1, 1)
        return k, v


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


def _quantised_cache(values: torch.Tensor, spec: BatchSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` (a cache in the query dtype) as fp8 e4m3 and its float32 scales: each KV head's values
    are first multiplied by a gain of 0.5, 1 or 2 (head h: 2^(h mod 3 - 1)), so that per-head scales differ
    and a kernel that applies the wrong head's scale is caught; the scale maps the largest magnitude (of
    the tensor, or of each head) onto `FP8_MAX`, as engines calibrate it."""
    heads = spec.num_kv_heads
    gains = torch.tensor([2.0 ** (h % 3 - 1) for h in range(heads)], device=values.device, dtype=values.dtype)
    values.mul_(gains.view(1, 1, heads, 1))
    amax = values.abs().amax(dim=(0, 1, 3)).float()  # [Hkv]
    if spec.kv_scale == "tensor":
        amax = amax.amax().reshape(1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    quantised = (values.float() / scale.view(1, 1, -1, 1)).to(KV_TORCH_DTYPES[spec.kv_dtype])
    return quantised, scale


def sink_logits(spec: BatchSpec, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-head sink logits ``[Hq]`` float32: the log of the expected softmax mass of the median
    sequence's keys (``kv_len * e^(1/2)`` for the suite's N(0, 1) scores) plus U(-1, 1), so that the sink
    holds a visible share (about a quarter to three quarters) of a row's mass and a backend that drops or
    misplaces it fails the gate by a wide margin."""
    median_kv = sorted(spec.kv_lens)[len(spec.kv_lens) // 2]
    centre = math.log(median_kv) + 0.5
    jitter = torch.rand(spec.num_q_heads, generator=generator, device=device, dtype=torch.float32) * 2 - 1
    return centre + jitter


def make_batch(spec: BatchSpec, device: torch.device | str = "cpu") -> PagedBatch:
    """Build the tensors of ``spec`` on ``device``: random normal q/k/v from ``spec.seed`` (the same
    on every run on one kind of device), every slot no sequence owns zeroed; an fp8 cache quantised
    from such values (`_quantised_cache`), sink logits drawn last (`sink_logits`)."""
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
    k_scale = v_scale = None
    if spec.kv_dtype is not None:
        k_cache, k_scale = _quantised_cache(k_cache, spec)
        v_cache, v_scale = _quantised_cache(v_cache, spec)
    sinks = sink_logits(spec, generator, device) if spec.sinks else None
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
        sinks=sinks,
        k_scale=k_scale,
        v_scale=v_scale,
    )
