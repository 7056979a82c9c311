"""Checks that a batch is well formed before anything is launched on it.

`validate_spec` looks at the host-side `BatchSpec` only (cheap; `BatchSpec` runs it on construction),
the page pool included (`validate_pool`: pages or GiB, room for the null page and the batch's pages).
`validate_batch` also checks the tensors of a `PagedBatch`: shapes against the spec, dtypes, one
device, contiguity, and the index tensors' values (page ids in the pool, no page owned twice, query
offsets, kv lengths covered by owned pages). It copies the small index tensors to the host, so it may
synchronise: it runs before a backend's prepare, outside any timing.

Every failure raises `BatchValidationError` (a `ValueError`) whose message starts with the field and
states the bad value, e.g. ``block_table[1, 0] = 57: page id outside the pool [0, 40)``.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from adapters.batch import BatchSpec, PagedBatch

SUPPORTED_HEAD_DIMS: tuple[int, ...] = (8, 16, 32, 64, 96, 128, 192, 256)
"""Head dimensions the suite builds batches for."""

INDEX_DTYPE = torch.int32
"""dtype of block_table, cu_seqlens_q and kv_lens."""

NULL_PAGE = 0
"""Page id 0 is never owned by a sequence: it is zero-filled and pads the block table (adapters.batch
re-exports it; defined here so that validation never imports the batch module back)."""


class BatchValidationError(ValueError):
    """A batch or spec that no backend should be run on; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _integer(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise BatchValidationError(field, f"{value!r} is a bool, expected an integer")
    try:
        return operator.index(value)
    except TypeError:
        raise BatchValidationError(field, f"{value!r} is not an integer") from None


def validate_spec(spec: "BatchSpec") -> None:
    """Raise `BatchValidationError` unless ``spec`` describes a batch the suite can build and run."""
    from adapters.grammar import DTYPE_NAMES

    q_lens = [_integer(f"q_lens[{i}]", value) for i, value in enumerate(spec.q_lens)]
    kv_lens = [_integer(f"kv_lens[{i}]", value) for i, value in enumerate(spec.kv_lens)]
    if not q_lens:
        raise BatchValidationError("q_lens", "empty batch: a batch needs at least one sequence")
    if len(kv_lens) != len(q_lens):
        raise BatchValidationError("kv_lens", f"{len(kv_lens)} lengths for {len(q_lens)} sequences (q_lens)")
    for seq, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens)):
        if q_len < 1:
            raise BatchValidationError(f"q_lens[{seq}]", f"{q_len}: every sequence needs at least one new token")
        if kv_len < q_len:
            raise BatchValidationError(f"kv_lens[{seq}]", f"{kv_len} < q_len {q_len}: the cache must hold the "
                                       "new tokens too (kv_len = context + q_len)")
    page_size = _integer("page_size", spec.page_size)
    if page_size < 1:
        raise BatchValidationError("page_size", f"{page_size}: must be at least 1")
    num_q_heads = _integer("num_q_heads", spec.num_q_heads)
    num_kv_heads = _integer("num_kv_heads", spec.num_kv_heads)
    if num_kv_heads < 1:
        raise BatchValidationError("num_kv_heads", f"{num_kv_heads}: must be at least 1")
    if num_q_heads < 1 or num_q_heads % num_kv_heads:
        raise BatchValidationError("num_q_heads", f"{num_q_heads} is not a positive multiple of "
                                   f"num_kv_heads {num_kv_heads}")
    head_dim = _integer("head_dim", spec.head_dim)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise BatchValidationError("head_dim", f"{head_dim} is not supported; choose one of "
                                   f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if spec.dtype not in DTYPE_NAMES:
        raise BatchValidationError("dtype", f"{spec.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    _integer("seed", spec.seed)
    from adapters.features import check_features

    problem = check_features(spec.sliding_window, spec.softcap, spec.sinks, spec.kv_dtype, spec.kv_scale, spec.causal)
    if problem is not None:
        raise BatchValidationError(*problem)
    validate_pool(spec)


def validate_pool(spec: "BatchSpec") -> None:
    """The page pool: at most one of ``pool_pages`` / ``pool_gib``, and room for the null page and every
    page the batch owns (``kv_lens`` and ``page_size`` must be valid already)."""
    pages, gib = getattr(spec, "pool_pages", None), getattr(spec, "pool_gib", None)
    if pages is None and gib is None:
        return
    needed = 1 + sum(math.ceil(kv / spec.page_size) for kv in spec.kv_lens)
    if pages is not None and gib is not None:
        raise BatchValidationError("pool_pages", f"{pages} and pool_gib {gib} are both set: give the pool "
                                   "in pages or in GiB, not both")
    if pages is not None:
        pages = _integer("pool_pages", pages)
        if pages < needed:
            raise BatchValidationError("pool_pages", f"{pages}: too small for the batch, which needs {needed} "
                                       f"pages (the null page and its {needed - 1} pages of {spec.page_size} tokens)")
        return
    if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib <= 0:
        raise BatchValidationError("pool_gib", f"{gib!r} is not a positive number of GiB")
    if spec.num_pages < needed:
        page_bytes = 2 * spec.page_size * spec.num_kv_heads * spec.head_dim * spec.kv_elem_bytes
        raise BatchValidationError("pool_gib", f"{gib:g} GiB holds {spec.num_pages} pages of {page_bytes} bytes "
                                   f"(K and V), too few for the batch, which needs {needed} (the null page and "
                                   f"its {needed - 1} pages)")


def _check_tensor(field: str, tensor: Any, shape: tuple[int, ...] | None, dtype: torch.dtype,
                  device: torch.device) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise BatchValidationError(field, f"is a {type(tensor).__name__}, expected a torch.Tensor")
    if shape is not None and tuple(tensor.shape) != shape:
        raise BatchValidationError(field, f"shape {tuple(tensor.shape)}, expected {shape} from the spec")
    if tensor.dtype != dtype:
        raise BatchValidationError(field, f"dtype {tensor.dtype}, expected {dtype}")
    if tensor.device != device:
        raise BatchValidationError(field, f"on {tensor.device}, but q is on {device}: all tensors must share a device")
    if not tensor.is_contiguous():
        raise BatchValidationError(field, f"is not contiguous (strides {tuple(tensor.stride())})")


def _check_optional(field: str, tensor: Any, wanted: bool, shapes: tuple[tuple[int, ...], ...],
                    device: torch.device) -> None:
    """A float32 tensor the spec's features call for (sink logits, fp8 scales), absent otherwise."""
    if not wanted:
        if tensor is not None:
            raise BatchValidationError(field, "is set, but the spec does not ask for it")
        return
    if tensor is None:
        raise BatchValidationError(field, "is missing: the spec asks for it")
    _check_tensor(field, tensor, shapes[0], torch.float32, device)
    if not torch.isfinite(tensor).all() or (field.endswith("scale") and not (tensor > 0).all()):
        raise BatchValidationError(field, "holds a non-finite" + (" or non-positive" if field.endswith("scale") else "")
                                   + " value")


def _check_tensors(batch: "PagedBatch") -> None:
    """Shapes against the spec, dtypes, one device, contiguity."""
    spec = batch.spec
    if not isinstance(batch.q, torch.Tensor):
        raise BatchValidationError("q", f"is a {type(batch.q).__name__}, expected a torch.Tensor")
    device = batch.q.device
    if batch.q.dtype != spec.torch_dtype:
        raise BatchValidationError("q", f"dtype {batch.q.dtype}, expected {spec.torch_dtype} (spec dtype {spec.dtype!r})")
    _check_tensor("q", batch.q, (spec.total_q, spec.num_q_heads, spec.head_dim), spec.torch_dtype, device)
    cache_shape = (spec.num_pages, spec.page_size, spec.num_kv_heads, spec.head_dim)
    _check_tensor("k_cache", batch.k_cache, cache_shape, spec.cache_dtype, device)
    _check_tensor("v_cache", batch.v_cache, cache_shape, spec.cache_dtype, device)
    _check_optional("sinks", batch.sinks, spec.sinks, ((spec.num_q_heads,),), device)
    scale_shapes = ((1,),) if spec.kv_scale == "tensor" else ((spec.num_kv_heads,),)
    _check_optional("k_scale", batch.k_scale, spec.kv_dtype is not None, scale_shapes, device)
    _check_optional("v_scale", batch.v_scale, spec.kv_dtype is not None, scale_shapes, device)
    if not isinstance(batch.block_table, torch.Tensor) or batch.block_table.dim() != 2 \
            or batch.block_table.shape[0] != spec.batch_size:
        shape = tuple(batch.block_table.shape) if isinstance(batch.block_table, torch.Tensor) else None
        raise BatchValidationError("block_table", f"shape {shape}, expected ({spec.batch_size}, max_pages)")
    _check_tensor("block_table", batch.block_table, None, INDEX_DTYPE, device)
    _check_tensor("cu_seqlens_q", batch.cu_seqlens_q, (spec.batch_size + 1,), INDEX_DTYPE, device)
    _check_tensor("kv_lens", batch.kv_lens, (spec.batch_size,), INDEX_DTYPE, device)


def _check_query_offsets(batch: "PagedBatch") -> None:
    spec = batch.spec
    cu = batch.cu_seqlens_q.cpu().tolist()
    if cu[0] != 0:
        raise BatchValidationError("cu_seqlens_q", f"starts at {cu[0]}, must start at 0")
    for seq in range(spec.batch_size):
        if cu[seq + 1] < cu[seq]:
            raise BatchValidationError(f"cu_seqlens_q[{seq + 1}]", f"{cu[seq + 1]} < cu_seqlens_q[{seq}] {cu[seq]}: "
                                       "offsets must be non-decreasing")
    if cu[-1] != spec.total_q:
        raise BatchValidationError("cu_seqlens_q", f"ends at {cu[-1]}, must end at T = {spec.total_q} (rows of q)")
    for seq, q_len in enumerate(spec.q_lens):
        if cu[seq + 1] - cu[seq] != q_len:
            raise BatchValidationError(f"cu_seqlens_q[{seq + 1}]", f"gives sequence {seq} {cu[seq + 1] - cu[seq]} "
                                       f"query tokens, the spec says q_len {q_len}")


def _check_pages(batch: "PagedBatch", allow_shared_pages: bool) -> None:
    """kv_lens against q_lens and the block table; page ids in the pool; no page owned twice."""
    spec = batch.spec
    kv_lens = batch.kv_lens.cpu().tolist()
    block_table = batch.block_table.cpu().long()
    width = block_table.shape[1]
    num_pages = batch.k_cache.shape[0]
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, kv_lens)):
        if kv_len < q_len:
            raise BatchValidationError(f"kv_lens[{seq}]", f"{kv_len} < q_len {q_len}")
        needed = math.ceil(kv_len / spec.page_size)
        if needed > width:
            raise BatchValidationError(f"kv_lens[{seq}]", f"{kv_len} needs {needed} pages of {spec.page_size} "
                                       f"tokens, beyond block_table width {width}")
    outside = (block_table < 0) | (block_table >= num_pages)
    if outside.any():
        seq, entry = outside.nonzero()[0].tolist()
        raise BatchValidationError(f"block_table[{seq}, {entry}]", f"{int(block_table[seq, entry])}: page id "
                                   f"outside the pool [0, {num_pages})")
    needed = torch.tensor([math.ceil(kv / spec.page_size) for kv in kv_lens])
    owned = torch.arange(width)[None, :] < needed[:, None]  # [B, width]: entries covering a sequence's tokens
    on_null = owned & (block_table == NULL_PAGE)
    if on_null.any():
        seq, entry = on_null.nonzero()[0].tolist()
        raise BatchValidationError(f"block_table[{seq}, {entry}]", f"{NULL_PAGE} is the null page, but kv_lens[{seq}] = "
                                   f"{kv_lens[seq]} covers {int(needed[seq])} pages: the sequence does not own "
                                   "the pages its kv_len needs")
    for seq, kv_len in enumerate(kv_lens):
        if kv_len != spec.kv_lens[seq]:
            raise BatchValidationError(f"kv_lens[{seq}]", f"{kv_len}, the spec says {spec.kv_lens[seq]}")
    if allow_shared_pages:
        return
    pages = block_table[owned]
    unique, counts = torch.unique(pages, return_counts=True)
    if (counts > 1).any():
        page = int(unique[counts > 1][0])
        where = (block_table == page) & owned
        holders = [f"block_table[{s}, {e}]" for s, e in where.nonzero().tolist()[:3]]
        raise BatchValidationError(holders[1], f"{page}: page already owned by {holders[0]}; pages may not be "
                                   "shared (pass allow_shared_pages=True for prefix sharing)")


def validate_batch(batch: "PagedBatch", *, allow_shared_pages: bool = False) -> None:
    """Raise `BatchValidationError` unless ``batch``'s tensors agree with its spec and with each other.

    May synchronise (index tensors are read on the host); call it before launching, never while timing.
    """
    validate_spec(batch.spec)
    _check_tensors(batch)
    _check_query_offsets(batch)
    _check_pages(batch, allow_shared_pages)
