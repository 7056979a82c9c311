"""The contract every backend adapter implements, and the registry that finds them.

An adapter turns the canonical `PagedBatch` into its backend's layout in `prepare` (the only place
allowed to be slow, allocate or synchronise) and returns a `Prepared` whose `run()` is the timed
launch and nothing else. Adding a backend means adding one module to `adapters/backends/` that
defines a subclass decorated with `@register`; discovery imports every module of that package.

What the shared code needs to know about a backend (its role as the speed-up baseline, its plot
colour, how it declares Q, the environment its worker process needs, the packages whose versions
matter) is declared on the adapter class, never written into the harness or the reports.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import os
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Union

if TYPE_CHECKING:
    import torch

    from adapters.batch import BatchSpec, PagedBatch

EXTRA_ADAPTER_MODULES_ENV = "PAGED_BENCH_EXTRA_ADAPTERS"
"""Comma-separated modules imported by `discover()` besides this package's (used for test-only backends)."""

THD = "THD"
"""The canonical query layout: packed ``[T, Hq, D]`` rows with ``cu_seqlens_q``."""

DEVICE_WORDS: dict[str, str] = {"cuda": "CUDA", "cpu": "CPU"}
"""How `Adapter.device_refusal` writes a device type the adapter declares."""

RunResult = Union["torch.Tensor", tuple["torch.Tensor", "torch.Tensor"]]
"""What ``Prepared.run`` returns: the output ``[T, Hq, D]``, or ``(output, lse)`` when the backend also
returns the softmax statistics (in its own layout; ``Prepared.to_lse`` makes them canonical)."""


class ExtraAdaptersError(ValueError):
    """A module named in ``PAGED_BENCH_EXTRA_ADAPTERS`` cannot be imported: a mistake in the environment,
    which the command line reports in one line."""


class Unsupported(Exception):
    """Raised by an adapter (in `prepare`) when the backend declines the layout; the message is the reason."""


class NotAvailable(Exception):
    """Raised by an adapter (in `prepare`) when this machine cannot run the cell although the backend
    could (e.g. its kernel for this layout is not compiled here and compiling is switched off); the
    cell is `skipped` with the message, like a backend that is not installed."""


@dataclass
class Prepared:
    """A batch converted for one backend. ``run()`` launches the kernel(s) and returns ``[T, Hq, D]``
    (or ``(out, lse)``, see `RunResult`).

    ``out`` is the buffer ``run`` writes into when the backend accepts one (the gate poisons it with
    NaN before the checked run); ``notes`` holds what the results should record (entry point, chosen
    config, setup seconds such as compile or graph-build time). ``cuda_graph`` asks the timer to
    replay ``run`` as a captured CUDA graph (for backends that launch many small kernels from Python,
    whose event timings would otherwise measure host launch jitter); the row's ``method`` says so.

    Softmax statistics (optional): when ``run`` returns ``(out, lse)``, ``to_lse(lse)`` gives the
    canonical ``[T, Hq]`` float32 natural-log log-sum-exp of each query row's scaled scores (identity
    when None); the gate checks it against the reference. A backend that cannot return it here says
    why in ``lse_note``.

    ``candidates`` offers several entry points for the same work (e.g. a varlen call and a decode
    call): the harness gates each, times each briefly, keeps the fastest as ``run`` and records its
    name as the row's entry point. Leave ``run`` unset then.
    """

    run: Callable[[], RunResult] | None = None
    out: torch.Tensor | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    cuda_graph: bool = False
    to_lse: Callable[[torch.Tensor], torch.Tensor] | None = None
    lse_note: str = ""
    candidates: dict[str, Callable[[], RunResult]] = field(default_factory=dict)
    external_streams: bool = False
    """``run`` enqueues its work on streams torch does not own (e.g. JAX's): CUDA events on torch's
    stream cannot bracket it, so the timer reads the kernels' own times from the CUDA activity record."""

    def __post_init__(self) -> None:
        if self.run is None and not self.candidates:
            raise ValueError("Prepared needs run() or at least one candidate entry point")
        if self.run is None and len(self.candidates) == 1:
            (name, only), = self.candidates.items()
            self.run = only
            self.notes.setdefault("entry_point", name)

    def canonical_lse(self, raw: torch.Tensor) -> torch.Tensor:
        """The backend's LSE as ``[T, Hq]`` float32 natural log (outside any timing)."""
        return (self.to_lse(raw) if self.to_lse is not None else raw).float()


def split_result(result: RunResult) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, lse or None) of what ``run()`` returned."""
    if isinstance(result, tuple):
        out, lse = result
        return out, lse
    return result, None


class Adapter(abc.ABC):
    """One attention backend, seen through the canonical batch."""

    name: ClassVar[str]
    """Short stable identifier used in results, asv parameters and the CLI (never rename: history)."""
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    """Device types the backend runs on (`device_refusal` refuses the others)."""
    display_name: ClassVar[str] = ""
    """The library as its users name it (e.g. "FlashAttention 4"), for the reasons `device_refusal` gives;
    empty: `name`."""
    in_sweep: ClassVar[bool] = True
    """False for variants that only the capability probe runs (e.g. a layout users try that fails)."""
    q_layout: ClassVar[str] = THD
    """How the backend is handed Q: the canonical packed rows, or another declaration a probe-only
    variant tries (the capability matrix's ``q_layout`` row)."""
    baseline: ClassVar[bool] = False
    """The backend the report measures speed-ups against (one per checkout: cuDNN)."""
    color: ClassVar[str | None] = None
    """A fixed plot colour (hex); None takes one from the report's palette."""
    packages: ClassVar[tuple[str, ...]] = ()
    """Distributions whose installed versions belong in every run's provenance."""
    library: ClassVar[str] = ""
    """The library whose releases change this row's numbers, when a release check should gate it ("cudnn"
    for every way of calling cuDNN, FlashInfer's cuDNN path included); see `rows_calling`."""
    binding: ClassVar[str] = ""
    """How this row calls its library, for backends users call several ways (each way is its own row,
    e.g. cuDNN's Stats layouts and offset widths); empty when there is one way."""
    model_features: ClassVar[frozenset[str]] = frozenset()
    """The model features (`adapters.features.FEATURES`: sliding window, soft-cap, sinks, fp8 KV) this
    row runs through its library's own API. A batch asking for any other is `unsupported` before
    `prepare` (`feature_refusal`): a row is the library as its users call it, never an emulation."""
    feature_reasons: ClassVar[dict[str, str]] = {}
    """Why the library cannot run a feature this row lacks, in its own terms (e.g. the API that has no
    such argument, or the build that compiled it out): the `unsupported` cell's reason."""

    def feature_refusal(self, spec: BatchSpec) -> str:
        """Why this row declines the model features ``spec`` asks for, or "" when it runs them all."""
        from adapters.features import FEATURE_TEXT

        missing = [name for name in spec.features if name not in self.model_features]
        return "; ".join(self.feature_reasons.get(name) or f"{FEATURE_TEXT[name]}: not passed to the library by "
                         f"this row (no reason recorded in adapters/backends)" for name in missing)

    disk_compile_cache: ClassVar[bool] = False
    """Compiles a kernel per layout (seconds a cell) into a cache on disk that later processes read
    (Inductor's and Triton's caches, CuTe DSL's, JAX's): a gate-only pass over the sweep's cells in
    parallel workers before the timed sweep (the compile warm-up, `harness.measure.session`) leaves its
    timing worker cached kernels to load, and the capability probe hands these cells out first."""

    shared_gpu_env: ClassVar[dict[str, str]] = {}
    """Added to the environment of gate-only workers that share a GPU (the capability probe, the compile
    warm-up): settings that hand memory back to the device after each cell instead of pooling it, so the
    workers beside it can use it (e.g. JAX's platform allocator). Never set for a timed worker."""

    def worker_env(self, device_type: str) -> dict[str, str]:
        """Environment variables a measuring process needs before it imports this backend (e.g. the
        Triton interpreter on a CPU)."""
        return {}

    @abc.abstractmethod
    def available(self, device: torch.device) -> tuple[bool, str]:
        """Whether the backend can run here at all (imports, GPU architecture, versions), and why not."""

    def device_refusal(self, device: torch.device | str) -> str:
        """Why this adapter cannot use ``device`` at all, or "" when it can: a device type missing from
        `devices` ("FlashAttention 4 runs on CUDA devices only, not cpu"), or CUDA asked for where there is
        none. Every `available` starts with it; the reports read these words as "cannot run here"
        (`reports.model.NOT_HERE_WORDS`)."""
        import torch  # this module stays importable without torch

        device = torch.device(device)
        if device.type not in self.devices:
            kinds = " and ".join(DEVICE_WORDS.get(kind, kind) for kind in self.devices)
            return f"{self.display_name or self.name} runs on {kinds} devices only, not {device.type}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available"
        return ""

    def supports(self, spec: BatchSpec) -> tuple[bool, str]:
        """Decline layouts the backend is known not to support, up front and in its own words."""
        return True, ""

    @abc.abstractmethod
    def prepare(self, batch: PagedBatch) -> Prepared:
        """Every conversion, plan and build; raise `Unsupported` when the backend refuses the layout."""

    def versions(self) -> dict[str, str]:
        """Library versions that belong in the results' provenance."""
        return {}

    def close(self) -> None:
        """Release what the adapter holds across cells (built graphs, handles, compiled functions);
        a measuring process calls it before it exits."""

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The declared facts the harness and the reports use, as plain values (stored with each run)."""
        return {"in_sweep": cls.in_sweep, "q_layout": cls.q_layout, "baseline": cls.baseline, "color": cls.color,
                "devices": list(cls.devices), "library": cls.library, "binding": cls.binding,
                "model_features": sorted(cls.model_features)}


def installed_versions(distributions: Iterable[str], *, required: str | None = None) -> dict[str, str]:
    """Versions of the installed ``distributions`` (pip names), for `Adapter.versions`; absent ones are
    left out, except ``required``, which reads "not installed"."""
    versions: dict[str, str] = {}
    for distribution in distributions:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            if distribution == required:
                versions[distribution] = "not installed"
    return versions


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


def _import_backends() -> None:
    import adapters.backends as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.ispkg and not module.name.startswith("_"):
            importlib.import_module(f"adapters.backends.{module.name}")
    for extra in filter(None, (name.strip() for name in os.environ.get(EXTRA_ADAPTER_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(extra)
        except ImportError as error:
            raise ExtraAdaptersError(f"{EXTRA_ADAPTER_MODULES_ENV} names {extra!r}, which cannot be imported "
                                     f"({type(error).__name__}: {error}); fix or unset it") from error


def adapter_classes() -> dict[str, type[Adapter]]:
    """Every registered adapter class by name, in a stable order (imports the backend modules, which
    import nothing heavy)."""
    _import_backends()
    return {name: _REGISTRY[name] for name in sorted(_REGISTRY)}


def discover() -> dict[str, Adapter]:
    """One new instance of each registered adapter, by name, in a stable order."""
    return {name: cls() for name, cls in adapter_classes().items()}


def get_adapter(name: str) -> Adapter:
    adapters = discover()
    if name not in adapters:
        raise KeyError(f"no adapter named {name!r}; known: {', '.join(adapters)}")
    return adapters[name]


def rows_calling(library: str, classes: dict[str, type[Adapter]] | None = None) -> list[str]:
    """Every registered backend row that calls ``library`` (`Adapter.library`), probe-only bindings
    included: what a release check of that library gates by default."""
    classes = adapter_classes() if classes is None else classes
    return [name for name, cls in classes.items() if cls.library == library]


def worker_environment(names: list[str] | None, device_type: str, *, shared_gpu: bool = False) -> dict[str, str]:
    """The environment the measuring processes of these backends (all registered ones when None) need; with
    ``shared_gpu`` (gate-only workers sharing a GPU) their `Adapter.shared_gpu_env` too."""
    env: dict[str, str] = {}
    for name, adapter in discover().items():
        if names is None or name in names:
            env.update(adapter.worker_env(device_type))
            if shared_gpu and device_type == "cuda":
                env.update(adapter.shared_gpu_env)
    return env


def declared_packages() -> list[str]:
    """Every distribution some registered backend declares as version-relevant."""
    return sorted({package for cls in adapter_classes().values() for package in cls.packages})
