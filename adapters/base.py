"""The contract every backend adapter implements, and the registry that finds them.

An adapter turns the canonical `PagedBatch` into its backend's layout in `prepare` (the only place
allowed to be slow, allocate or synchronise) and returns a `Prepared` whose `run()` is the timed
launch and nothing else. Adding a backend means adding one module to `adapters/` that defines a
subclass decorated with `@register`; discovery imports every module of the package.
"""

from __future__ import annotations

import abc
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from adapters.batch import BatchSpec, PagedBatch

EXTRA_ADAPTER_MODULES_ENV = "PAGED_BENCH_EXTRA_ADAPTERS"
"""Comma-separated modules imported by `discover()` besides this package's (used for test-only backends)."""

_NOT_ADAPTER_MODULES = {"base", "batch", "reference", "validation"}


class Unsupported(Exception):
    """Raised by an adapter (in `prepare`) when the backend declines the layout; the message is the reason."""


@dataclass
class Prepared:
    """A batch converted for one backend. ``run()`` launches the kernel(s) and returns ``[T, Hq, D]``.

    ``out`` is the buffer ``run`` writes into when the backend accepts one (the gate poisons it with
    NaN before the checked run); ``notes`` holds what the results should record (entry point, chosen
    config, setup seconds such as compile or graph-build time). ``cuda_graph`` asks the timer to
    replay ``run`` as a captured CUDA graph (for backends that launch many small kernels from Python,
    whose event timings would otherwise measure host launch jitter); the row's ``method`` says so.
    """

    run: Callable[[], torch.Tensor]
    out: torch.Tensor | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    cuda_graph: bool = False


class Adapter(abc.ABC):
    """One attention backend, seen through the canonical batch."""

    name: ClassVar[str]
    """Short stable identifier used in results, asv parameters and the CLI (never rename: history)."""
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    """Device types the backend runs on."""
    in_sweep: ClassVar[bool] = True
    """False for variants that only the capability probe runs (e.g. a layout users try that fails)."""

    @abc.abstractmethod
    def available(self, device: torch.device) -> tuple[bool, str]:
        """Whether the backend can run here at all (imports, GPU architecture, versions), and why not."""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        """Decline layouts the backend is known not to support, up front and in its own words."""
        return True, ""

    @abc.abstractmethod
    def prepare(self, batch: PagedBatch) -> Prepared:
        """Every conversion, plan and build; raise `Unsupported` when the backend refuses the layout."""

    def versions(self) -> dict[str, str]:
        """Library versions that belong in the results' provenance."""
        return {}


def versions_of(adapter: Adapter) -> dict[str, str]:
    """``adapter.versions()``, or ``{"error": ...}`` when the query itself fails: a broken version
    query must never lose a result row."""
    try:
        return adapter.versions()
    except Exception as error:  # noqa: BLE001 - recorded in place of the versions
        return {"error": f"{type(error).__name__}: {error}"}


_REGISTRY: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter discoverable under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two adapters are named {cls.name!r}: {existing.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def discover() -> dict[str, Adapter]:
    """Import every adapter module (and any named in $PAGED_BENCH_EXTRA_ADAPTERS); return one
    instance of each registered adapter, by name, in a stable order. Imports nothing heavy."""
    import adapters as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_ADAPTER_MODULES and not module.ispkg:
            importlib.import_module(f"adapters.{module.name}")
    for extra in filter(None, os.environ.get(EXTRA_ADAPTER_MODULES_ENV, "").split(",")):
        importlib.import_module(extra.strip())
    return {name: _REGISTRY[name]() for name in sorted(_REGISTRY)}


def get_adapter(name: str) -> Adapter:
    adapters = discover()
    if name not in adapters:
        raise KeyError(f"no adapter named {name!r}; known: {', '.join(adapters)}")
    return adapters[name]
