"""cuDNN SDPA through nvidia-cudnn-frontend (``import cudnn``): packed (ragged) Q and O, paged K/V.

How the canonical batch is declared to cuDNN (see docs/backends.md for the traps each point avoids):

- Q and O are declared ``[B, Hq, S_q, D]`` over the packed ``[T, Hq, D]`` buffer, strides
  ``[S_q*Hq*D, D, Hq*D, 1]``, each with a ragged offset tensor ``(B+1, 1, 1, 1)`` of **element**
  offsets ``cu_seqlens_q * Hq * D`` (the batch stride is then nominal). ``S_q`` is the longest
  query bucketed to a power of two, so batches of similar shape reuse one graph.
- The NHD cache ``[num_pages, page_size, Hkv, D]`` is read as ``(num_pages, Hkv, page_size, D)``
  through the strides ``(page_size*Hkv*D, D, Hkv*D, 1)`` (a view; nothing is copied).
- Page table: int32 ``(B, 1, max_pages, 1)``, bound as both the K and the V table; ``max_pages`` is
  bucketed to a power of two (the extra columns hold the zero-filled null page) and
  ``paged_attention_max_seq_len_kv = max_pages * page_size``.
- ``seq_len_q``/``seq_len_kv``: int32 ``(B, 1, 1, 1)`` on the GPU with ``use_padding_mask=True``.
- Causal is bottom-right: ``diagonal_alignment=BOTTOM_RIGHT, diagonal_band_right_bound=0``
  (``use_causal_mask`` would be top-left).

- Softmax statistics (the LSE, for the gate): the SDPA node's ``Stats`` output
  (``generate_stats=True``), float32, natural log. ``Prepared.to_lse`` makes ``[T, Hq]`` outside any
  timing. The buffer starts as NaN, so rows cuDNN does not write are caught. Where cuDNN refuses the
  graph with Stats it is built without, the row's ``lse_note`` keeps cuDNN's words, and the refusal is
  remembered per graph key (one failed build, not one per cell). The timed launch is the graph with
  Stats (writing it costs 4 bytes per row and head).

**Bindings.** Users call this graph several ways, and a cuDNN release can break one while the others
work, so each way is its own backend row (`Binding`; a class per row below, all gated and timed, all in
``paged-bench releases`` by default):

  ============================== ======== ========================= =========================
  row                             Q        Stats (LSE)               ragged offsets
  ============================== ======== ========================= =========================
  ``cudnn``                       B rows   padded ``[B, Hq, S_q, 1]`` int32 (int64 when forced)
  ``cudnn-stats-ragged``          B rows   packed ``[T, Hq]``, ragged  int32 (int64 when forced)
  ``cudnn-offsets64``             B rows   padded                     int64, chosen
  ``cudnn-stats-ragged-offsets64`` B rows  packed ``[T, Hq]``, ragged  int64, chosen
  ``cudnn-trows``                 T rows   ``[T, Hq, 1, 1]``          none (probe only)
  ============================== ======== ========================= =========================

  - padded Stats: ``[B, Hq, S_q, 1]`` with packed BHSD strides ``[Hq*S_q, S_q, 1, 1]`` and no ragged
    offset (the layout the frontend infers for an undeclared Stats and the one its own ragged tests read
    back; the backend honours declared Stats strides from 9.12). Row i of sequence b, head h is
    ``stats[b, h, i]``; `stats_index` maps the packed rows to it.
  - packed/ragged Stats: the packed ``[T, Hq]`` that serving engines bind (FlashInfer's cuDNN prefill):
    ``[B, Hq, S_q, 1]`` with token-major strides ``[S_q*Hq, 1, Hq, 1]`` and a ragged offset
    ``cu_seqlens_q * Hq``. FlashInfer records a cuDNN bug in exactly this layout (NVBug 6783545: the
    s_q == 1 decode kernel with Hq != Hkv leaves most heads of a ragged Stats unwritten; the output is
    right), so the release check shows it as ``wrong`` (LSE off) where a release has it (measured on an
    H100: every GQA decode cell wrong in 9.19 to 9.26.1, right in 9.27.0; results/h100-cudnn-releases).
  - 64-bit offsets: engines with large pools or long packed batches declare the ragged offsets int64
    whatever the size; the other rows do so only when an element offset passes 2^31 - 1.
  - T rows: one "batch" per query token (B' = T, S_q = 1) against the B-row page table, as users first
    write it; cuDNN refuses it wherever a sequence has more than one query (docs/backends.md), and the
    capability probe keeps asking. On a pure decode batch the two forms coincide, and it runs.

Graphs are built in ``prepare`` (build seconds in ``notes["setup_s"]``) and cached on the adapter
instance by everything that changes them (`GraphKey`); ``run`` only binds the stream and executes.
``close()`` drops graphs and handles. A graph that cuDNN refuses to validate or build becomes
`Unsupported` with cuDNN's own message.

**Model features** (`adapters.features`), through ``graph.sdpa``'s own arguments (`sdpa_arguments`,
read from the frontend 1.32 headers, ``cudnn_frontend/node/sdpa_support_surface.h`` and
``utils/attn_score_modifiers.h``):

- sliding window W: ``diagonal_band_left_bound=W`` beside the bottom-right causal band. cuDNN keeps key
  j of query row i iff ``j + W - (s_kv - s_q) > i`` (per sequence, from ``seq_len_q``/``seq_len_kv``),
  i.e. ``p - W < j <= p`` at absolute position p: W keys, the query's own included (the left bound is
  W, not FlashAttention's W - 1). Bottom-right alignment with a left bound and s_q != s_kv needs cuDNN
  9.6.0 (`FEATURE_MIN_VERSION`).
- soft-cap c: sdpa has no cap argument; its ``score_mod`` callback is the way (the frontend's own
  paged soft-cap test, ``test/python/test_flexible_sdpa.py``). A score_mod switches off the node's own
  masks ("Attention score mod enabled and hence other subgraphs are disabled"), so the callback
  (`score_mod_ops`) also spells the padding mask, the bottom-right causal band and the window, with the
  pointwise ops the frontend's own masks are made of: ``c * tanh(s / c)`` on the scaled score, then
  ``binary_select(score, -inf, mask)``. ``use_padding_mask`` is then off; ``seq_len_q``/``seq_len_kv``
  are still bound (paged caches need them).
- sinks: ``sink_token``, float32 ``(1, Hq, 1, 1)`` (cuDNN 9.13.0+). The softmax adds ``exp(sink - max)``
  to the row's sum before the log (``node/softmax.h``), so Stats already include the sink: the suite's
  LSE (`STATS_INCLUDE_SINK`, `lse_with_sink`). cuDNN's backend declines a sink where S_q == 1 ("decode
  only mode, i.e. s_q == 1, not supported with sink_token"), so pure-decode graphs with sinks are its
  `unsupported` answer.
- fp8 K/V: declined (`FEATURE_REASONS`): ``sdpa`` takes no fp8 operand nor descale, and ``sdpa_fp8``
  wants Q in fp8 too, per-tensor descales only, and on Hopper neither bottom-right causal masks nor a
  bf16/fp16 output.

The argument builders (`cudnn_layout`, `ragged_offsets`, `page_table_view`, `seq_len_tensors`,
`cache_view`, `trow_arguments`, `stats_index`, `stats_strides`, `sdpa_arguments`, `score_mod_ops`,
`sink_tensor`, `packed_graph_key`, `trow_graph_key`) are pure functions of the spec or of CPU or GPU
tensors and need no cudnn.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from adapters.base import Adapter, Prepared, Unsupported, register
from adapters.batch import BatchSpec, PagedBatch

_INT32_MAX = 2**31 - 1


def next_power_of_two(value: int) -> int:
    """Smallest power of two >= value (1 for value <= 1): the shape buckets of the graph cache."""
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


Q_ROWS = ("B-rows", "T-rows")
STATS_LAYOUTS = ("padded", "ragged")
OFFSET_WIDTHS = ("int32", "int64")


@dataclass(frozen=True)
class Binding:
    """One way users declare cuDNN's paged SDPA (module docstring, "Bindings"): how Q is declared
    (``B-rows`` with ragged offsets, or ``T-rows``), the Stats layout (``padded`` or the packed
    ``ragged`` [T, Hq]) and the ragged offsets' width (``int32``, widened only when a size forces it,
    or ``int64`` chosen on purpose)."""

    q: str = "B-rows"
    stats: str = "padded"
    offsets: str = "int32"

    def __post_init__(self) -> None:
        for field_name, value, choices in (("q", self.q, Q_ROWS), ("stats", self.stats, STATS_LAYOUTS),
                                           ("offsets", self.offsets, OFFSET_WIDTHS)):
            if value not in choices:
                raise ValueError(f"Binding.{field_name}={value!r}: choose one of {', '.join(choices)}")

    def describe(self) -> str:
        """One line for results and reports, e.g. 'Q B rows + int32 ragged offsets; Stats packed [T, Hq] (ragged)'."""
        if self.q == "T-rows":
            return "Q T rows (one batch per token, S_q 1, no ragged offsets); Stats [T, Hq, 1, 1]"
        offsets = "int64 ragged offsets (chosen)" if self.offsets == "int64" else \
            "int32 ragged offsets (int64 past 2^31 elements)"
        stats = "packed [T, Hq] (ragged offset)" if self.stats == "ragged" else "padded [B, Hq, S_q, 1]"
        return f"Q B rows + {offsets}; Stats {stats}"


@dataclass(frozen=True)
class CudnnLayout:
    """Dims and strides of every tensor of the packed-Q paged graph, from the spec alone."""

    batch: int
    s_q: int
    """Longest query, bucketed (the S dim of Q and O)."""
    max_pages: int
    """Page-table width, bucketed."""
    q_dims: tuple[int, int, int, int]
    q_strides: tuple[int, int, int, int]
    cache_dims: tuple[int, int, int, int]
    cache_strides: tuple[int, int, int, int]
    page_table_dims: tuple[int, int, int, int]
    page_table_strides: tuple[int, int, int, int]
    seq_len_dims: tuple[int, int, int, int]
    ragged_dims: tuple[int, int, int, int]
    max_seq_len_kv: int
    pad_rows: int
    """Zero rows after the T packed rows of the Q and O buffers, so that the buffers cover both the last
    sequence's S_q-row window (whatever the kernel reads past T) and the nominal span of the declared
    [B, Hq, S_q, D] (B * S_q rows), should the frontend check a buffer against its declaration."""
    ragged_dtype: torch.dtype

    @property
    def o_dims(self) -> tuple[int, int, int, int]:
        return self.q_dims

    @property
    def o_strides(self) -> tuple[int, int, int, int]:
        return self.q_strides

    @property
    def stats_dims(self) -> tuple[int, int, int, int]:
        """The Stats output: ``[B, Hq, S_q, 1]`` float32, padded (not ragged)."""
        return (self.batch, self.q_dims[1], self.s_q, 1)

    @property
    def stats_strides(self) -> tuple[int, int, int, int]:
        return stats_strides("padded", self.q_dims[1], self.s_q)


def cudnn_layout(spec: BatchSpec, num_pages: int | None = None, *, offsets: str = "int32") -> CudnnLayout:
    """The declared shapes for ``spec`` (packed Q/O with ragged offsets, NHD cache as HND strides).
    ``num_pages``: the cache pool's real size (``k_cache.shape[0]``); the spec's by default. ``offsets``:
    "int32" widens the ragged offsets to int64 only when an element offset would pass 2^31 - 1;
    "int64" declares them int64 whatever the size (`Binding.offsets`)."""
    heads, head_dim, page = spec.num_q_heads, spec.head_dim, spec.page_size
    pool = spec.num_pages if num_pages is None else num_pages
    s_q = next_power_of_two(spec.max_q_len)
    max_pages = next_power_of_two(spec.max_pages)
    padded_elements = max(spec.total_q + s_q, spec.batch_size * s_q) * heads * head_dim
    return CudnnLayout(
        batch=spec.batch_size,
        s_q=s_q,
        max_pages=max_pages,
        q_dims=(spec.batch_size, heads, s_q, head_dim),
        q_strides=(s_q * heads * head_dim, head_dim, heads * head_dim, 1),
        cache_dims=(pool, spec.num_kv_heads, page, head_dim),
        cache_strides=(page * spec.num_kv_heads * head_dim, head_dim, spec.num_kv_heads * head_dim, 1),
        page_table_dims=(spec.batch_size, 1, max_pages, 1),
        page_table_strides=(max_pages, max_pages, 1, 1),
        seq_len_dims=(spec.batch_size, 1, 1, 1),
        ragged_dims=(spec.batch_size + 1, 1, 1, 1),
        max_seq_len_kv=max_pages * page,
        pad_rows=max(s_q, spec.batch_size * s_q - spec.total_q),
        ragged_dtype=torch.int64 if offsets == "int64" or padded_elements > _INT32_MAX else torch.int32,
    )


def stats_index(cu_seqlens_q: torch.Tensor, heads: int, s_q: int) -> torch.Tensor:
    """int64 ``[T, Hq]``: where packed row t (query i of sequence b), head h sits in the flattened padded
    Stats ``[B, Hq, S_q, 1]``: ``(b * Hq + h) * S_q + i``."""
    cu = cu_seqlens_q.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    total = int(cu[-1])
    sequence = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths, output_size=total)
    position = torch.arange(total, device=cu.device) - cu[:-1][sequence]
    head = torch.arange(heads, device=cu.device)
    return (sequence[:, None] * heads + head[None, :]) * s_q + position[:, None]


def gather_stats(stats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The canonical LSE ``[T, Hq]`` float32 of a Stats buffer, through `stats_index`."""
    return stats.reshape(-1)[index].float()


def stats_strides(stats: str, heads: int, s_q: int) -> tuple[int, int, int, int]:
    """Strides of the Stats output declared ``[B, Hq, S_q, 1]``: packed BHSD ``[Hq*S_q, S_q, 1, 1]`` when
    ``padded``; token-major ``[S_q*Hq, 1, Hq, 1]`` when ``ragged`` (the packed [T, Hq] buffer, each
    sequence's first row found through the ragged offset ``cu_seqlens_q * Hq``)."""
    if stats == "ragged":
        return (s_q * heads, 1, heads, 1)
    return (heads * s_q, s_q, 1, 1)


def ragged_offsets(cu_seqlens_q: torch.Tensor, heads: int, head_dim: int,
                   dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Element offsets of each sequence's first row: ``cu_seqlens_q * heads * head_dim``, shape (B+1, 1, 1, 1)."""
    return (cu_seqlens_q.to(torch.int64) * (heads * head_dim)).to(dtype).view(-1, 1, 1, 1).contiguous()


def page_table_view(block_table: torch.Tensor, max_pages: int) -> torch.Tensor:
    """int32 (B, 1, max_pages, 1): the block table, zero-padded (null page) to the bucketed width."""
    batch, width = block_table.shape
    if width > max_pages:
        raise ValueError(f"block table has {width} columns, more than the graph's {max_pages}")
    table = torch.zeros(batch, 1, max_pages, 1, dtype=torch.int32, device=block_table.device)
    table[:, 0, :width, 0] = block_table.to(torch.int32)
    return table


def seq_len_tensors(q_lens: torch.Tensor, kv_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 (B, 1, 1, 1) query and kv lengths (on the device of the inputs)."""
    return (q_lens.to(torch.int32).view(-1, 1, 1, 1).contiguous(),
            kv_lens.to(torch.int32).view(-1, 1, 1, 1).contiguous())


def cache_view(cache: torch.Tensor) -> torch.Tensor:
    """The NHD cache [num_pages, page_size, Hkv, D] as cuDNN's (num_pages, Hkv, page_size, D), by strides."""
    return cache.permute(0, 2, 1, 3)


def padded_rows(packed: torch.Tensor, pad_rows: int) -> torch.Tensor:
    """A zero-filled [T + pad_rows, H, D] buffer holding ``packed`` in its first T rows."""
    buffer = torch.zeros(packed.shape[0] + pad_rows, *packed.shape[1:], dtype=packed.dtype, device=packed.device)
    buffer[: packed.shape[0]] = packed
    return buffer


@dataclass(frozen=True)
class TRowArguments:
    """The form users first try: one "batch" per query token (B' = T, S_q = 1), no ragged offsets,
    per-token kv lengths, and the page table of the B sequences as they have it."""

    q_dims: tuple[int, int, int, int]
    q_strides: tuple[int, int, int, int]
    seq_len_q: torch.Tensor
    seq_len_kv: torch.Tensor
    page_table: torch.Tensor


def trow_arguments(spec: BatchSpec, block_table: torch.Tensor) -> TRowArguments:
    """Arguments of the T-row declaration; token t of sequence b sees ``kv_len - q_len + i + 1`` keys
    when causal (i its index among the sequence's queries), all ``kv_len`` otherwise."""
    visible = []
    for q_len, kv_len in zip(spec.q_lens, spec.kv_lens):
        for i in range(q_len):
            visible.append(kv_len - q_len + i + 1 if spec.causal else kv_len)
    device = block_table.device
    heads, head_dim = spec.num_q_heads, spec.head_dim
    return TRowArguments(
        q_dims=(spec.total_q, heads, 1, head_dim),
        q_strides=(heads * head_dim, head_dim, heads * head_dim, 1),
        seq_len_q=torch.ones(spec.total_q, 1, 1, 1, dtype=torch.int32, device=device),
        seq_len_kv=torch.tensor(visible, dtype=torch.int32, device=device).view(-1, 1, 1, 1),
        page_table=block_table.to(torch.int32).view(spec.batch_size, 1, spec.max_pages, 1),
    )


# ----------------------------------------------------------------------------------------------
# Model features (module docstring, "Model features"): pure descriptions of the sdpa arguments

CUDNN_FEATURES: frozenset[str] = frozenset({"sliding_window", "softcap", "sinks"})
"""The model features the cuDNN rows pass to ``graph.sdpa`` (`Adapter.model_features`)."""

FEATURE_REASONS: dict[str, str] = {
    "fp8_kv": (
        "cuDNN: graph.sdpa takes Q, K and V in one fp16/bf16 type and has no K/V descale input, so a bf16 "
        "query over an fp8 e4m3 cache is no form it takes; its fp8 node, graph.sdpa_fp8 (cuDNN 9.1.0+, paged "
        "caches 9.5.0+), wants Q in fp8 as well, takes per-tensor descale_q/descale_k/descale_v scalars only "
        "(no per-KV-head scales; MXFP8 block scales are not served over paged caches), and on Hopper refuses a "
        "bottom-right causal mask ('only supported on Blackwell architecture', cuDNN 9.7.0+) and a bf16/fp16 "
        "output ('only supported on Blackwell architecture with cuDNN version 9.13.0 and newer')"),
}
"""Why the cuDNN rows decline a feature, in cuDNN's terms (`Adapter.feature_reasons`)."""

FEATURE_MIN_VERSION: dict[str, tuple[int, str]] = {
    "sliding_window": (90600, "a diagonal_band_left_bound (sliding window) with the bottom-right causal band "
                              "and s_q != s_kv"),
    "sinks": (91300, "graph.sdpa's sink_token (attention sinks)"),
}
"""The first cuDNN release (``cudnn.backend_version()``) that takes each feature in this graph, and what it
takes (the frontend 1.32 support surface): `supports` declines below it with the version found."""

STATS_INCLUDE_SINK = True
"""cuDNN's Stats with a ``sink_token``: ``max + log(sum_j exp(s_j - max) + exp(sink - max))`` (the frontend's
softmax node), already the suite's LSE. Were it the sink-free LSE, `lse_with_sink` adds the sink."""


def lse_with_sink(lse: torch.Tensor, sinks: torch.Tensor | None, *, stats_include_sink: bool = STATS_INCLUDE_SINK
                  ) -> torch.Tensor:
    """The suite's LSE ``[T, Hq]`` from cuDNN's Stats gathered to ``[T, Hq]``: unchanged when the Stats hold the
    sink (or there is none), else ``logaddexp(lse, sink_h)``."""
    if sinks is None or stats_include_sink:
        return lse
    return torch.logaddexp(lse.float(), sinks.float().to(lse.device)[None, :])


@dataclass(frozen=True)
class ScoreMod:
    """The ``score_mod`` callback `score_mod_ops` builds: the soft-cap ``c * tanh(s / c)`` of the scaled score,
    then the masks a score_mod must spell itself (padding always; the bottom-right causal band when
    ``causal``; the window's left bound W when set)."""

    softcap: float
    causal: bool
    sliding_window: int | None = None


@dataclass(frozen=True)
class SinkToken:
    """The ``sink_token`` input: float32 ``(1, Hq, 1, 1)``, one logit per query head."""

    dims: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]


def sdpa_arguments(heads: int, *, causal: bool, sliding_window: int | None = None, softcap: float | None = None,
                   sinks: bool = False) -> dict[str, Any]:
    """The masking and feature keywords of ``graph.sdpa`` for this graph, without cudnn: enums by name
    (``"BOTTOM_RIGHT"``), the score_mod as a `ScoreMod`, the sink as a `SinkToken`. The paged-cache, length and
    Stats keywords are the same for every graph (`_sdpa`)."""
    arguments: dict[str, Any]
    if softcap is not None:
        arguments = {"use_padding_mask": False,
                     "score_mod": ScoreMod(softcap=float(softcap), causal=causal, sliding_window=sliding_window)}
    else:
        arguments = {"use_padding_mask": True}
        if causal:
            arguments.update(diagonal_alignment="BOTTOM_RIGHT", diagonal_band_right_bound=0)
            if sliding_window is not None:
                arguments["diagonal_band_left_bound"] = int(sliding_window)
    if sinks:
        arguments["sink_token"] = SinkToken(dims=(1, heads, 1, 1), strides=(heads, 1, 1, 1))
    return arguments


def describe_arguments(arguments: dict[str, Any]) -> str:
    """The feature keywords of `sdpa_arguments` in one line for a result's notes, e.g.
    'diagonal_band_left_bound=4096; sink_token (1, 32, 1, 1)'; "" for plain attention."""
    parts = []
    for name, value in arguments.items():
        if name == "diagonal_band_left_bound":
            parts.append(f"{name}={value}")
        elif isinstance(value, ScoreMod):
            masks = "padding" + (", bottom-right causal" if value.causal else "") + \
                (f", window {value.sliding_window}" if value.causal and value.sliding_window is not None else "")
            parts.append(f"score_mod {value.softcap:g}*tanh(s/{value.softcap:g}) + masks ({masks})")
        elif isinstance(value, SinkToken):
            parts.append(f"sink_token {value.dims}")
    return "; ".join(parts)


def sink_tensor(sinks: torch.Tensor) -> torch.Tensor:
    """The batch's sink logits ``[Hq]`` as cuDNN's ``sink_token``: float32 ``(1, Hq, 1, 1)``, contiguous."""
    return sinks.to(torch.float32).reshape(1, -1, 1, 1).contiguous()


def score_mod_constants(mod: ScoreMod) -> dict[str, tuple[float | int, torch.dtype]]:
    """The pass-by-value scalars the score_mod reads, by name: (value, dtype); bound as (1, 1, 1, 1) CPU tensors."""
    constants: dict[str, tuple[float | int, torch.dtype]] = {"softcap": (float(mod.softcap), torch.float32),
                                                              "neg_inf": (float("-inf"), torch.float32)}
    if mod.causal and mod.sliding_window is not None:
        constants["window"] = (int(mod.sliding_window), torch.int32)
    return constants


def score_mod_ops(graph, score, mod: ScoreMod, *, constants: dict[str, Any], seq_q, seq_kv, int32, boolean):
    """Spell ``mod`` on ``score`` ([B, H, S_q, S_kv], scaled) with ``graph``'s pointwise ops (the frontend's
    ``gen_index``/``cmp_*``/``logical_and``/``binary_select``, ``div``/``tanh``/``mul``); ``constants``: the
    graph tensors of `score_mod_constants`; ``seq_q``/``seq_kv``: the (B, 1, 1, 1) int32 lengths. With row i
    and column j of sequence b, a score is kept iff ``i < seq_q`` and ``j < seq_kv`` and, when causal,
    ``j + seq_q <= i + seq_kv`` (bottom-right: j <= p) and, with a window W, ``j + seq_q + W > i + seq_kv``
    (j > p - W). ``binary_select(x, y, mask)`` is ``mask ? x : y``, as in the frontend's own padding mask."""

    def typed(tensor, dtype):
        tensor.set_data_type(dtype)
        return tensor

    capped = graph.div(a=score, b=constants["softcap"], name="softcap_div")
    capped = graph.tanh(input=capped, name="softcap_tanh")
    capped = graph.mul(a=capped, b=constants["softcap"], name="softcap_mul")
    row = typed(graph.gen_index(input=capped, axis=2, compute_data_type=int32, name="row_index"), int32)
    col = typed(graph.gen_index(input=capped, axis=3, compute_data_type=int32, name="col_index"), int32)
    keep = typed(graph.cmp_lt(input=row, comparison=seq_q, compute_data_type=boolean, name="row_in_q"), boolean)
    in_kv = typed(graph.cmp_lt(input=col, comparison=seq_kv, compute_data_type=boolean, name="col_in_kv"), boolean)
    keep = typed(graph.logical_and(a=keep, b=in_kv, compute_data_type=boolean, name="padding"), boolean)
    if mod.causal:
        shifted_col = typed(graph.add(a=col, b=seq_q, compute_data_type=int32, name="col_plus_sq"), int32)
        shifted_row = typed(graph.add(a=row, b=seq_kv, compute_data_type=int32, name="row_plus_skv"), int32)
        causal = typed(graph.cmp_le(input=shifted_col, comparison=shifted_row, compute_data_type=boolean,
                                    name="causal_bottom_right"), boolean)
        keep = typed(graph.logical_and(a=keep, b=causal, compute_data_type=boolean, name="and_causal"), boolean)
        if mod.sliding_window is not None:
            window_col = typed(graph.add(a=shifted_col, b=constants["window"], compute_data_type=int32,
                                         name="col_plus_sq_plus_window"), int32)
            window = typed(graph.cmp_gt(input=window_col, comparison=shifted_row, compute_data_type=boolean,
                                        name="window_left_bound"), boolean)
            keep = typed(graph.logical_and(a=keep, b=window, compute_data_type=boolean, name="and_window"), boolean)
    return graph.binary_select(input0=capped, input1=constants["neg_inf"], mask=keep, name="score_mod_mask")


def feature_fields(spec: BatchSpec) -> dict[str, Any]:
    """The feature fields of a `GraphKey` (every value that changes the graph)."""
    return {"sliding_window": spec.sliding_window,
            "softcap": None if spec.softcap is None else float(spec.softcap), "sinks": bool(spec.sinks)}


def version_refusal(spec: BatchSpec, version: int | None) -> str:
    """Why the loaded cuDNN (``version`` as ``cudnn.backend_version()`` gives it; None when unknown) cannot take
    a feature ``spec`` asks for, or ""."""
    if version is None:
        return ""
    for feature in spec.features:
        needed = FEATURE_MIN_VERSION.get(feature)
        if needed is not None and version < needed[0]:
            return (f"cuDNN {_version_text(version)} is loaded; {needed[1]} needs cuDNN "
                    f"{_version_text(needed[0])} or newer")
    return ""


# ----------------------------------------------------------------------------------------------
# cuDNN graph building (needs `import cudnn`)

@dataclass(frozen=True)
class GraphKey:
    """Everything that changes a graph: a key that forgets one of these returns a wrong graph."""

    variant: str
    device: int
    dtype: str
    causal: bool
    scale: float
    q_dims: tuple[int, ...]
    q_strides: tuple[int, ...]
    cache_dims: tuple[int, ...]
    cache_strides: tuple[int, ...]
    page_table_dims: tuple[int, ...]
    max_seq_len_kv: int
    ragged_dtype: str
    stats: str = ""
    """The Stats (LSE) output's layout: "" (none), "padded" or "ragged" (module docstring)."""
    sliding_window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    """The model features (`feature_fields`): each one changes the sdpa node (`sdpa_arguments`)."""

    def sdpa_arguments(self) -> dict[str, Any]:
        return sdpa_arguments(self.q_dims[1], causal=self.causal, sliding_window=self.sliding_window,
                              softcap=self.softcap, sinks=self.sinks)


@dataclass
class _BuiltGraph:
    graph: Any
    tensors: dict[str, Any]
    workspace_bytes: int
    build_s: float
    engine: str = ""
    """Who serves the selected plan: "cudnn backend", or the frontend's python engine by name."""


def _cudnn_types(cudnn) -> dict[Any, Any]:
    return {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF,
            torch.int32: cudnn.data_type.INT32, torch.int64: cudnn.data_type.INT64}


def _is_cudnn_refusal(error: BaseException) -> bool:
    """cuDNN's own refusals (status errors, not-supported) as opposed to bugs in this adapter."""
    if isinstance(error, (TypeError, AttributeError, NameError, KeyError)):
        return False
    text = f"{type(error).__module__}.{type(error).__name__}: {error}"
    return "cudnn" in text.lower() or "CUDNN_STATUS" in text


def refusal_reason(stage: str, error: BaseException) -> str:
    """cuDNN's refusal, its backend's own words first: frontends that also try python engines wrap the
    backend's message as "... (the backend declined: <message>; python engines declined: ...)"."""
    message = " ".join(str(error).split())
    marker = "the backend declined:"
    if marker in message:
        backend = message.split(marker, 1)[1].split("; python engines declined", 1)[0].rstrip(")").strip()
        return f"cuDNN backend ({stage}): {backend} [{type(error).__name__}: {message}]"
    return f"cuDNN {stage}: {type(error).__name__}: {message}"


def _sdpa(cudnn, graph, key: GraphKey, t: dict[str, Any], *, stats: bool):
    """The SDPA node -> [O, Stats] (Stats None without ``stats``), its masks and features from
    `GraphKey.sdpa_arguments`; feature inputs (sink, score_mod constants) are added to ``t``."""
    options: dict[str, Any] = dict(
        name="paged_sdpa", attn_scale=key.scale, seq_len_q=t["seq_q"], seq_len_kv=t["seq_kv"],
        paged_attention_k_table=t["table_k"], paged_attention_v_table=t["table_v"],
        paged_attention_max_seq_len_kv=key.max_seq_len_kv,
    )
    for name, value in key.sdpa_arguments().items():
        if name == "diagonal_alignment":
            options[name] = getattr(cudnn.diagonal_alignment, value)
        elif isinstance(value, SinkToken):
            t["sink"] = graph.tensor(name="sink_token", dim=list(value.dims), stride=list(value.strides),
                                     data_type=cudnn.data_type.FLOAT)
            options[name] = t["sink"]
        elif isinstance(value, ScoreMod):
            options[name] = _score_mod(cudnn, graph, value, t)
        else:
            options[name] = value
    try:
        return graph.sdpa(q=t["q"], k=t["k"], v=t["v"], generate_stats=stats, **options)
    except TypeError:  # frontends before generate_stats: the deprecated spelling
        return graph.sdpa(q=t["q"], k=t["k"], v=t["v"], is_inference=not stats, **options)


def _score_mod(cudnn, graph, mod: ScoreMod, t: dict[str, Any]) -> Callable[[Any, Any], Any]:
    """The score_mod callback of ``mod``; its scalars become pass-by-value graph tensors ``t["const:<name>"]``."""
    types = {torch.float32: cudnn.data_type.FLOAT, torch.int32: cudnn.data_type.INT32}
    constants = {}
    for name, (_, dtype) in score_mod_constants(mod).items():
        constants[name] = t[f"const:{name}"] = graph.tensor(
            name=f"score_mod_{name}", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], is_pass_by_value=True,
            data_type=types[dtype])
    seq_q, seq_kv = t["seq_q"], t["seq_kv"]

    def score_mod(sdpa_graph, score):
        return score_mod_ops(sdpa_graph, score, mod, constants=constants, seq_q=seq_q, seq_kv=seq_kv,
                             int32=cudnn.data_type.INT32, boolean=cudnn.data_type.BOOLEAN)

    return score_mod


def feature_pack(key: GraphKey, tensors: dict[str, Any], sinks: torch.Tensor | None) -> dict[Any, torch.Tensor]:
    """Variant-pack entries of the feature inputs of a graph built for ``key``: the sink logits
    (`sink_tensor`) and the score_mod's pass-by-value scalars as (1, 1, 1, 1) CPU tensors."""
    pack: dict[Any, torch.Tensor] = {}
    if "sink" in tensors:
        if sinks is None:
            raise ValueError("the graph takes a sink_token but the batch has no sink logits")
        pack[tensors["sink"]] = sink_tensor(sinks)
    score_mod = key.sdpa_arguments().get("score_mod")
    if score_mod is not None:
        for name, (value, dtype) in score_mod_constants(score_mod).items():
            pack[tensors[f"const:{name}"]] = torch.full((1, 1, 1, 1), value, dtype=dtype)
    return pack


def _feature_notes(key: GraphKey) -> dict[str, str]:
    described = describe_arguments(key.sdpa_arguments())
    return {"cudnn_features": described} if described else {}


def packed_graph_key(spec: BatchSpec, num_pages: int | None = None, *, offsets: str = "int32",
                     device: int = 0) -> GraphKey:
    """The `GraphKey` of the packed (B-row) graph of ``spec`` (`cudnn_layout`; Stats layout left "")."""
    layout = cudnn_layout(spec, num_pages=num_pages, offsets=offsets)
    return GraphKey(
        variant="packed", device=device, dtype=spec.dtype, causal=spec.causal, scale=spec.scale,
        q_dims=layout.q_dims, q_strides=layout.q_strides, cache_dims=layout.cache_dims,
        cache_strides=layout.cache_strides, page_table_dims=layout.page_table_dims,
        max_seq_len_kv=layout.max_seq_len_kv, ragged_dtype=str(layout.ragged_dtype).removeprefix("torch."),
        **feature_fields(spec))


def trow_graph_key(spec: BatchSpec, num_pages: int | None = None, *, device: int = 0) -> GraphKey:
    """The `GraphKey` of the T-row graph of ``spec`` (`trow_arguments`' dims; Stats layout left "")."""
    layout = cudnn_layout(spec, num_pages=num_pages)
    heads, head_dim = spec.num_q_heads, spec.head_dim
    return GraphKey(
        variant="t-rows", device=device, dtype=spec.dtype, causal=spec.causal, scale=spec.scale,
        q_dims=(spec.total_q, heads, 1, head_dim), q_strides=(heads * head_dim, head_dim, heads * head_dim, 1),
        cache_dims=layout.cache_dims, cache_strides=layout.cache_strides,
        page_table_dims=(spec.batch_size, 1, spec.max_pages, 1), max_seq_len_kv=spec.max_pages * spec.page_size,
        ragged_dtype="none", **feature_fields(spec))


def _build(cudnn, key: GraphKey, handle, *, ragged: bool) -> _BuiltGraph:
    types = _cudnn_types(cudnn)
    io_type = types[{"bf16": torch.bfloat16, "fp16": torch.float16}[key.dtype]]
    started = time.perf_counter()
    graph = cudnn.pygraph(io_data_type=io_type, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    batch, heads, s_q = key.q_dims[0], key.q_dims[1], key.q_dims[2]
    int32 = cudnn.data_type.INT32
    t: dict[str, Any] = {}
    t["q"] = graph.tensor(name="q", dim=list(key.q_dims), stride=list(key.q_strides), data_type=io_type)
    t["k"] = graph.tensor(name="k_cache", dim=list(key.cache_dims), stride=list(key.cache_strides), data_type=io_type)
    t["v"] = graph.tensor(name="v_cache", dim=list(key.cache_dims), stride=list(key.cache_strides), data_type=io_type)
    table_dims = list(key.page_table_dims)
    table_strides = [table_dims[2], table_dims[2], 1, 1]
    t["table_k"] = graph.tensor(name="page_table_k", dim=table_dims, stride=table_strides, data_type=int32)
    t["table_v"] = graph.tensor(name="page_table_v", dim=table_dims, stride=table_strides, data_type=int32)
    t["seq_q"] = graph.tensor(name="seq_len_q", dim=[batch, 1, 1, 1], stride=[1, 1, 1, 1], data_type=int32)
    t["seq_kv"] = graph.tensor(name="seq_len_kv", dim=[batch, 1, 1, 1], stride=[1, 1, 1, 1], data_type=int32)
    if ragged:
        ragged_type = types[{"int32": torch.int32, "int64": torch.int64}[key.ragged_dtype]]
        t["q_offsets"] = graph.tensor(name="q_ragged_offsets", dim=[batch + 1, 1, 1, 1], stride=[1, 1, 1, 1],
                                      data_type=ragged_type)
        t["o_offsets"] = graph.tensor(name="o_ragged_offsets", dim=[batch + 1, 1, 1, 1], stride=[1, 1, 1, 1],
                                      data_type=ragged_type)
        t["q"].set_ragged_offset(t["q_offsets"])
    o, stats = _sdpa(cudnn, graph, key, t, stats=bool(key.stats))
    o.set_output(True).set_dim(list(key.q_dims)).set_stride(list(key.q_strides)).set_data_type(io_type)
    if ragged:
        o.set_ragged_offset(t["o_offsets"])
    t["o"] = o
    if key.stats:
        stats.set_output(True).set_data_type(cudnn.data_type.FLOAT).set_dim([batch, heads, s_q, 1])
        if key.stats == "ragged" and ragged:  # packed [T, Hq]: token-major strides, offsets cu_seqlens_q * Hq
            stats.set_stride(list(stats_strides("ragged", heads, s_q)))
            t["stats_offsets"] = graph.tensor(name="stats_ragged_offsets", dim=[batch + 1, 1, 1, 1],
                                              stride=[1, 1, 1, 1], data_type=ragged_type)
            stats.set_ragged_offset(t["stats_offsets"])
        else:  # padded [B, Hq, S_q, 1] in packed BHSD strides, no ragged offset
            stats.set_stride(list(stats_strides("padded", heads, s_q)))
        t["stats"] = stats
    stage = "validate"
    try:
        graph.validate()
        stage = "build_operation_graph"
        graph.build_operation_graph()
        stage = "create_execution_plans"
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        stage = "check_support"
        graph.check_support()
        stage = "build_plans"
        graph.build_plans()
    except Exception as error:  # noqa: BLE001 - cuDNN's refusal is the capability answer
        if _is_cudnn_refusal(error):
            raise Unsupported(refusal_reason(stage, error)) from error
        raise
    return _BuiltGraph(graph=graph, tensors=t, workspace_bytes=int(graph.get_workspace_size()),
                       build_s=time.perf_counter() - started, engine=_engine_name(graph))


def _engine_name(graph) -> str:
    """Frontends from 1.2x may serve a graph with their own python engines instead of the backend."""
    try:
        engine = getattr(graph, "selected_engine", None)
    except Exception as error:  # noqa: BLE001 - informational only
        return f"unknown ({type(error).__name__})"
    return "cudnn backend" if engine is None else str(getattr(engine, "name", engine))


def _make_run(cudnn, built: _BuiltGraph, pack: dict[Any, torch.Tensor], workspace: torch.Tensor, handle,
              device: torch.device, result: torch.Tensor, stats: torch.Tensor | None):
    bound_stream: list[int | None] = [None]
    returned = result if stats is None else (result, stats)

    def run():
        stream = torch.cuda.current_stream(device).cuda_stream
        if stream != bound_stream[0]:  # host-side call, no sync: keep the handle on torch's stream
            cudnn.set_stream(handle=handle, stream=stream)
            bound_stream[0] = stream
        built.graph.execute(pack, workspace, handle=handle)
        return returned

    return run


def _version_text(number: int) -> str:
    """cuDNN's integer version (e.g. 92801 or 8907) as 'major.minor.patch'."""
    if number >= 90000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def _loaded_library(stem: str) -> str:
    """Path of the shared library ``stem`` (e.g. 'libcudnn_graph.so') this process has mapped, read
    from /proc/self/maps: which release's files really run, whatever was asked for."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if stem in line}
    except OSError:
        return ""
    return " | ".join(sorted(path for path in paths if path.startswith("/")))


def _backend_version(cudnn) -> str:
    """The cuDNN library's version as the frontend finds it; raises when no cuDNN library can be loaded
    (the frontend then says e.g. "Unable to find symbol cudnnGetVersion")."""
    return _version_text(int(cudnn.backend_version()))


def _versions() -> dict[str, str]:
    try:
        import cudnn

        versions = {"cudnn_backend": _backend_version(cudnn)}
    except Exception as error:  # noqa: BLE001 - a frontend without its library is "not here", not a failure
        return {"cudnn": f"not loadable here ({type(error).__name__}: {' '.join(str(error).split())[:120]})"}
    versions["cudnn_frontend"] = str(getattr(cudnn, "__version__", "?"))
    try:
        torch_cudnn = torch.backends.cudnn.version()
        versions["torch_cudnn"] = _version_text(int(torch_cudnn)) if torch_cudnn else "none"
    except Exception as error:  # noqa: BLE001 - recorded in place of the version
        versions["torch_cudnn"] = f"unknown ({type(error).__name__})"
    library = _loaded_library("libcudnn_graph.so")
    if library:
        versions["cudnn_graph_library"] = library
    return versions


def _available(device: torch.device) -> tuple[bool, str]:
    """The library's own reasons, on a CUDA device `Adapter.device_refusal` accepted."""
    try:
        import cudnn
    except Exception as error:  # noqa: BLE001 - any import failure is the reason
        return False, f"cannot import cudnn (nvidia-cudnn-frontend): {type(error).__name__}: {error}"
    try:
        _backend_version(cudnn)
    except Exception as error:  # noqa: BLE001 - the frontend is there, the library is not
        return False, f"the cuDNN library cannot be loaded: {type(error).__name__}: {error}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"cuDNN SDPA needs SM80 or newer (this GPU is SM{major}{minor})"
    return True, ""


def _supports(spec: BatchSpec, version: int | None = None) -> tuple[bool, str]:
    """``version``: the loaded cuDNN's (`_loaded_version`), for the features that need a newer one."""
    if spec.dtype not in ("bf16", "fp16"):
        return False, f"cuDNN SDPA takes fp16/bf16 (or fp8) inputs, not {spec.dtype}"
    if spec.page_size & (spec.page_size - 1):
        return False, f"cuDNN paged attention needs a power-of-two page size (got {spec.page_size})"
    refusal = version_refusal(spec, version)
    if refusal:
        return False, refusal
    return True, ""


def _loaded_version() -> int | None:
    """``cudnn.backend_version()`` of this process, or None where the frontend or its library is missing
    (`available` says why; nothing is declined for a version then)."""
    try:
        import cudnn

        return int(cudnn.backend_version())
    except Exception:  # noqa: BLE001 - unknown version: no version-based decline
        return None


@register
class CudnnSdpaAdapter(Adapter):
    """cuDNN SDPA, packed Q/O with ragged offsets over the NHD paged cache (module docstring)."""

    name = "cudnn"
    display_name = "cuDNN SDPA"
    baseline = True
    color = "#76b900"
    packages = ("nvidia-cudnn-frontend", "nvidia-cudnn-cu13", "nvidia-cudnn-cu12")
    library = "cudnn"
    form: ClassVar[Binding] = Binding()
    """How this row declares the graph (module docstring, "Bindings"); `binding` is its description."""
    model_features = CUDNN_FEATURES
    feature_reasons = FEATURE_REASONS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.binding = cls.form.describe()

    def __init__(self) -> None:
        self._graphs: dict[GraphKey, _BuiltGraph] = {}
        self._handles: dict[int, Any] = {}
        self._stats_refused: dict[GraphKey, str] = {}
        """cuDNN's refusal of the Stats output, by the key of the graph with it."""
        self._version: list[int | None] = []
        """The loaded cuDNN's version, once looked up (`_loaded_version`)."""

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        refusal = self.device_refusal(device)
        if refusal:
            return False, refusal
        return _available(device)

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        if not spec.features:
            return _supports(spec)
        if not self._version:
            self._version.append(_loaded_version())
        return _supports(spec, self._version[0])

    def versions(self) -> dict[str, str]:
        return _versions()

    def close(self) -> None:
        """Drop the built graphs and destroy the handles (objects left alive at interpreter exit are what
        nanobind reports as leaked)."""
        self._graphs.clear()
        self._stats_refused.clear()
        handles, self._handles = self._handles, {}
        if handles:
            try:
                import cudnn

                destroy = getattr(cudnn, "destroy_handle", None)
                for handle in handles.values():
                    if destroy is not None:
                        destroy(handle)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # --- graphs and handles of this instance ------------------------------------------------------
    def _handle(self, cudnn, device: torch.device) -> Any:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._handles:
            with torch.cuda.device(index):
                self._handles[index] = cudnn.create_handle()
        return self._handles[index]

    def _graph(self, cudnn, key: GraphKey, device: torch.device, *, ragged: bool) -> tuple[_BuiltGraph, bool]:
        """The cached graph for ``key`` (built now if new) and whether it was cached."""
        built = self._graphs.get(key)
        if built is not None:
            return built, True
        built = _build(cudnn, key, self._handle(cudnn, device), ragged=ragged)
        self._graphs[key] = built
        return built, False

    def _graph_with_stats(self, cudnn, key: GraphKey, device: torch.device, *,
                          ragged: bool) -> tuple[_BuiltGraph, bool, str]:
        """The graph with the Stats output where cuDNN builds it, else without: (graph, cached, lse_note).
        A refusal of Stats is remembered for ``key``, so it costs one build attempt."""
        layout = self.form.stats if ragged else "padded"  # T rows: the padded layout is already [T, Hq]
        refused = self._stats_refused.get(dataclasses.replace(key, stats=layout))
        if refused is None:
            try:
                built, cached = self._graph(cudnn, dataclasses.replace(key, stats=layout), device, ragged=ragged)
                return built, cached, ""
            except Unsupported as refusal:
                refused = str(refusal)
            built, cached = self._graph(cudnn, key, device, ragged=ragged)  # Unsupported here: the layout itself
            self._stats_refused[dataclasses.replace(key, stats=layout)] = refused
        else:
            built, cached = self._graph(cudnn, key, device, ragged=ragged)
        return built, cached, f"cuDNN refused the Stats (LSE) output for this graph: {refused}"

    def _prepared(self, cudnn, built: _BuiltGraph, cached: bool, lse_note: str, pack: dict[Any, torch.Tensor],
                  device: torch.device, out: torch.Tensor,
                  stats_buffers: dict[str, tuple[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]]],
                  notes: dict[str, Any]) -> Prepared:
        """``stats_buffers``: per Stats layout, the buffer's shape and its ``to_lse``."""
        stats, to_lse, layout = None, None, ""
        if "stats" in built.tensors:
            layout = "ragged" if "stats_offsets" in built.tensors else "padded"
            shape, to_lse = stats_buffers[layout]
            stats = torch.full(shape, float("nan"), dtype=torch.float32, device=device)
            pack[built.tensors["stats"]] = stats
            if layout == "ragged":
                pack[built.tensors["stats_offsets"]] = stats_buffers["offsets"]
        workspace = torch.empty(max(built.workspace_bytes, 1), dtype=torch.uint8, device=device)
        run = _make_run(cudnn, built, pack, workspace, self._handle(cudnn, device), device, out, stats)
        notes = {"setup_s": 0.0 if cached else built.build_s, "graph_cached": cached, "cudnn_engine": built.engine,
                 "cudnn_stats": layout or "none", **notes}
        return Prepared(run=run, out=out, notes=notes, to_lse=to_lse, lse_note=lse_note)

    def prepare(self, batch: PagedBatch) -> Prepared:
        import cudnn

        spec, device = batch.spec, batch.device
        layout = cudnn_layout(spec, num_pages=int(batch.k_cache.shape[0]), offsets=self.form.offsets)
        key = packed_graph_key(spec, int(batch.k_cache.shape[0]), offsets=self.form.offsets, device=device.index or 0)
        built, cached, lse_note = self._graph_with_stats(cudnn, key, device, ragged=True)
        q_buffer = padded_rows(batch.q, layout.pad_rows)
        o_buffer = torch.zeros_like(q_buffer)
        offsets = ragged_offsets(batch.cu_seqlens_q, spec.num_q_heads, spec.head_dim, layout.ragged_dtype)
        q_lens = batch.cu_seqlens_q[1:] - batch.cu_seqlens_q[:-1]
        seq_q, seq_kv = seq_len_tensors(q_lens, batch.kv_lens)
        table = page_table_view(batch.block_table, layout.max_pages)
        t = built.tensors
        pack = {
            t["q"]: q_buffer, t["k"]: cache_view(batch.k_cache), t["v"]: cache_view(batch.v_cache),
            t["table_k"]: table, t["table_v"]: table, t["seq_q"]: seq_q, t["seq_kv"]: seq_kv,
            t["q_offsets"]: offsets, t["o_offsets"]: offsets, t["o"]: o_buffer,
            **feature_pack(key, t, batch.sinks),
        }
        heads, total, sinks = spec.num_q_heads, spec.total_q, batch.sinks
        index = stats_index(batch.cu_seqlens_q, heads, layout.s_q)
        stats_buffers = {
            "padded": (layout.stats_dims, lambda stats: lse_with_sink(gather_stats(stats, index), sinks)),
            # packed rows, padded like Q and O so the nominal [B, Hq, S_q] span stays inside the buffer
            "ragged": ((total + layout.pad_rows, heads), lambda stats: lse_with_sink(stats[:total].float(), sinks)),
            "offsets": ragged_offsets(batch.cu_seqlens_q, heads, 1, layout.ragged_dtype),
        }
        return self._prepared(
            cudnn, built, cached, lse_note, pack, device, o_buffer[:total], stats_buffers,
            {"graph_s_q": layout.s_q, "graph_max_pages": layout.max_pages, "workspace_bytes": built.workspace_bytes,
             **_feature_notes(key)})


CudnnSdpaAdapter.binding = CudnnSdpaAdapter.form.describe()


class _CudnnBinding(CudnnSdpaAdapter):
    """Another way of binding the same graph: gated and timed like ``cudnn`` wherever it is asked for
    (``--backends``, ``paged-bench releases`` by default, the capability probe), left out of the default
    sweep so that its numbers are not counted twice beside ``cudnn``'s."""

    in_sweep = False
    baseline = False
    color = None


@register
class CudnnStatsRaggedAdapter(_CudnnBinding):
    """Stats bound as the packed [T, Hq] with a ragged offset, as FlashInfer's cuDNN prefill binds it."""

    name = "cudnn-stats-ragged"
    form = Binding(stats="ragged")


@register
class CudnnOffsets64Adapter(_CudnnBinding):
    """Ragged offsets declared int64 on purpose (engines that size offsets for their largest pool)."""

    name = "cudnn-offsets64"
    form = Binding(offsets="int64")


@register
class CudnnStatsRaggedOffsets64Adapter(_CudnnBinding):
    """Packed [T, Hq] Stats and int64 ragged offsets together."""

    name = "cudnn-stats-ragged-offsets64"
    form = Binding(stats="ragged", offsets="int64")


@register
class CudnnTRowsAdapter(CudnnSdpaAdapter):
    """Probe only: Q declared with one "batch" per token (B' = T, S_q = 1) against the B-row page table,
    as users first write it; the capability matrix records cuDNN's answer (docs/backends.md: refused
    with ``pageTableKDim[0] != b``). Availability, supports and versions are the cuDNN adapter's."""

    name = "cudnn-trows"
    in_sweep = False
    baseline = False
    color = None
    q_layout = "T-row"
    form = Binding(q="T-rows")

    def prepare(self, batch: PagedBatch) -> Prepared:
        import cudnn

        spec, device = batch.spec, batch.device
        args = trow_arguments(spec, batch.block_table)
        key = trow_graph_key(spec, int(batch.k_cache.shape[0]), device=device.index or 0)
        built, cached, lse_note = self._graph_with_stats(cudnn, key, device, ragged=False)
        out = torch.zeros_like(batch.q)
        t = built.tensors
        pack = {
            t["q"]: batch.q.view(args.q_dims), t["k"]: cache_view(batch.k_cache), t["v"]: cache_view(batch.v_cache),
            t["table_k"]: args.page_table, t["table_v"]: args.page_table, t["seq_q"]: args.seq_len_q,
            t["seq_kv"]: args.seq_len_kv, t["o"]: out.view(args.q_dims), **feature_pack(key, t, batch.sinks),
        }
        heads, sinks = spec.num_q_heads, batch.sinks
        # one "batch" per token, S_q = 1: Stats [T, Hq, 1, 1] is already the canonical [T, Hq]
        stats_buffers = {"padded": ((spec.total_q, heads, 1, 1),
                                    lambda stats: lse_with_sink(stats.reshape(spec.total_q, heads).float(), sinks))}
        return self._prepared(cudnn, built, cached, lse_note, pack, device, out, stats_buffers, _feature_notes(key))
