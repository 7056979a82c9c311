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

The argument builders (`cudnn_layout`, `ragged_offsets`, `page_table_view`, `seq_len_tensors`,
`cache_view`, `trow_arguments`, `stats_index`, `stats_strides`) are pure functions of CPU or GPU
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


def _sdpa(cudnn, graph, q, k, v, *, scale: float, causal: bool, seq_q, seq_kv, table_k, table_v,
          max_seq_len_kv: int, stats: bool):
    """The SDPA node -> [O, Stats] (Stats None without ``stats``)."""
    options: dict[str, Any] = dict(
        name="paged_sdpa", attn_scale=scale, use_padding_mask=True, seq_len_q=seq_q, seq_len_kv=seq_kv,
        paged_attention_k_table=table_k, paged_attention_v_table=table_v,
        paged_attention_max_seq_len_kv=max_seq_len_kv,
    )
    if causal:
        options.update(diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT, diagonal_band_right_bound=0)
    try:
        return graph.sdpa(q=q, k=k, v=v, generate_stats=stats, **options)
    except TypeError:  # frontends before generate_stats: the deprecated spelling
        return graph.sdpa(q=q, k=k, v=v, is_inference=not stats, **options)


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
    o, stats = _sdpa(cudnn, graph, t["q"], t["k"], t["v"], scale=key.scale, causal=key.causal, seq_q=t["seq_q"],
                     seq_kv=t["seq_kv"], table_k=t["table_k"], table_v=t["table_v"],
                     max_seq_len_kv=key.max_seq_len_kv, stats=bool(key.stats))
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
    if device.type != "cuda":
        return False, "cuDNN SDPA runs on CUDA devices only"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
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


def _supports(spec: BatchSpec) -> tuple[bool, str]:
    if spec.dtype not in ("bf16", "fp16"):
        return False, f"cuDNN SDPA takes fp16/bf16 (or fp8) inputs, not {spec.dtype}"
    if spec.page_size & (spec.page_size - 1):
        return False, f"cuDNN paged attention needs a power-of-two page size (got {spec.page_size})"
    return True, ""


@register
class CudnnSdpaAdapter(Adapter):
    """cuDNN SDPA, packed Q/O with ragged offsets over the NHD paged cache (module docstring)."""

    name = "cudnn"
    baseline = True
    color = "#76b900"
    packages = ("nvidia-cudnn-frontend", "nvidia-cudnn-cu13", "nvidia-cudnn-cu12")
    library = "cudnn"
    form: ClassVar[Binding] = Binding()
    """How this row declares the graph (module docstring, "Bindings"); `binding` is its description."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.binding = cls.form.describe()

    def __init__(self) -> None:
        self._graphs: dict[GraphKey, _BuiltGraph] = {}
        self._handles: dict[int, Any] = {}
        self._stats_refused: dict[GraphKey, str] = {}
        """cuDNN's refusal of the Stats output, by the key of the graph with it."""

    def available(self, device: torch.device) -> tuple[bool, str]:
        return _available(torch.device(device))

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        return _supports(spec)

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
        key = GraphKey(
            variant="packed", device=device.index or 0, dtype=spec.dtype, causal=spec.causal, scale=spec.scale,
            q_dims=layout.q_dims, q_strides=layout.q_strides, cache_dims=layout.cache_dims,
            cache_strides=layout.cache_strides, page_table_dims=layout.page_table_dims,
            max_seq_len_kv=layout.max_seq_len_kv, ragged_dtype=str(layout.ragged_dtype).removeprefix("torch."),
        )
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
        }
        heads, total = spec.num_q_heads, spec.total_q
        index = stats_index(batch.cu_seqlens_q, heads, layout.s_q)
        stats_buffers = {
            "padded": (layout.stats_dims, lambda stats: gather_stats(stats, index)),
            # packed rows, padded like Q and O so the nominal [B, Hq, S_q] span stays inside the buffer
            "ragged": ((total + layout.pad_rows, heads), lambda stats: stats[:total].float()),
            "offsets": ragged_offsets(batch.cu_seqlens_q, heads, 1, layout.ragged_dtype),
        }
        return self._prepared(
            cudnn, built, cached, lse_note, pack, device, o_buffer[:total], stats_buffers,
            {"graph_s_q": layout.s_q, "graph_max_pages": layout.max_pages, "workspace_bytes": built.workspace_bytes})


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
        layout = cudnn_layout(spec, num_pages=int(batch.k_cache.shape[0]))
        args = trow_arguments(spec, batch.block_table)
        key = GraphKey(
            variant="t-rows", device=device.index or 0, dtype=spec.dtype, causal=spec.causal, scale=spec.scale,
            q_dims=args.q_dims, q_strides=args.q_strides, cache_dims=layout.cache_dims,
            cache_strides=layout.cache_strides, page_table_dims=tuple(args.page_table.shape),
            max_seq_len_kv=spec.max_pages * spec.page_size, ragged_dtype="none",
        )
        built, cached, lse_note = self._graph_with_stats(cudnn, key, device, ragged=False)
        out = torch.zeros_like(batch.q)
        t = built.tensors
        pack = {
            t["q"]: batch.q.view(args.q_dims), t["k"]: cache_view(batch.k_cache), t["v"]: cache_view(batch.v_cache),
            t["table_k"]: args.page_table, t["table_v"]: args.page_table, t["seq_q"]: args.seq_len_q,
            t["seq_kv"]: args.seq_len_kv, t["o"]: out.view(args.q_dims),
        }
        heads = spec.num_q_heads
        # one "batch" per token, S_q = 1: Stats [T, Hq, 1, 1] is already the canonical [T, Hq]
        stats_buffers = {"padded": ((spec.total_q, heads, 1, 1), lambda stats: stats.reshape(spec.total_q, heads).float())}
        return self._prepared(cudnn, built, cached, lse_note, pack, device, out, stats_buffers, {})
