"""Backends seen through one canonical paged batch: `batch` (the input), `grammar` (batch strings),
`reference` (the fp32 truth), `base` (the contract and registry) and one module per backend.

Names are resolved lazily, so that importing a torch-free submodule (`adapters.grammar`) stays light.
"""

import importlib

_EXPORTS = {
    "Adapter": "adapters.base", "Prepared": "adapters.base", "Unsupported": "adapters.base",
    "discover": "adapters.base", "get_adapter": "adapters.base", "register": "adapters.base",
    "BatchSpec": "adapters.batch", "PagedBatch": "adapters.batch", "make_batch": "adapters.batch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")
