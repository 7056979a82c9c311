"""Backends seen through one canonical paged batch: `batch` (the input), `reference` (the fp32 truth),
`base` (the contract and registry) and one module per backend."""

from adapters.base import Adapter, Prepared, Unsupported, discover, get_adapter, register
from adapters.batch import BatchSpec, PagedBatch, make_batch

__all__ = ["Adapter", "BatchSpec", "PagedBatch", "Prepared", "Unsupported", "discover", "get_adapter",
           "make_batch", "register"]
