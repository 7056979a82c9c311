"""GPU-side timing: CUDA events around each launch, after warm-up, with L2 flushed between
repetitions; median and spread reported. When enqueueing a repetition costs the host about as long
as the GPU takes to run it (Python launchers, microsecond decodes), each repetition is queued behind
a GPU spin so the host stays ahead and its launch cost never shows up between the events (the
"blocking kernel" idea of NVBench). Optional CUDA-graph replay times the launches as serving engines
replay them. On a CPU device the same API uses a synchronised perf_counter."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from harness.defaults import DEFAULT_TARGET_MS
MIN_REPS = 20
MAX_REPS = 1000
WARMUP_MS = 40.0
MIN_WARMUP = 3
FLUSH_BYTES_FLOOR = 256 << 20
HOST_LEAD = 2.0
"""Each repetition keeps the GPU busy for at least this many times its host enqueue cost (spinning
first when flush plus launch are shorter), so the host runs ahead and launch gaps stay out."""
HOST_SAMPLES = 8


@dataclass
class Timing:
    """Per-launch times in microseconds; ``method`` and ``l2_policy`` say how they were taken."""

    median_us: float
    q1_us: float
    q3_us: float
    min_us: float
    max_us: float
    reps: int
    method: str
    l2_policy: str
    host_us: float | None = None
    """Host time to enqueue one repetition (flush, events and the launch), microseconds."""
    samples_us: list[float] = field(default_factory=list, repr=False)

    @property
    def iqr_pct(self) -> float:
        """Inter-quartile range as a share of the median, in percent: the run-to-run noise figure."""
        return 100.0 * (self.q3_us - self.q1_us) / self.median_us if self.median_us else 0.0

    def as_row(self) -> dict[str, float | int | str]:
        row = asdict(self)
        row.pop("samples_us")
        row["iqr_pct"] = self.iqr_pct
        return row

    @classmethod
    def from_samples(cls, samples_us: list[float], method: str, l2_policy: str,
                     host_us: float | None = None) -> "Timing":
        quartiles = statistics.quantiles(samples_us, n=4, method="inclusive") if len(samples_us) > 1 \
            else [samples_us[0]] * 3
        return cls(median_us=statistics.median(samples_us), q1_us=quartiles[0], q3_us=quartiles[2],
                   min_us=min(samples_us), max_us=max(samples_us), reps=len(samples_us), method=method,
                   l2_policy=l2_policy, host_us=host_us, samples_us=list(samples_us))


class L2Flusher:
    """Writes a buffer of at least twice the L2 size, so no input stays cached between repetitions."""

    def __init__(self, device: torch.device):
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (50 << 20)
        self.nbytes = max(2 * l2_bytes, FLUSH_BYTES_FLOOR)
        self.buffer = torch.empty(self.nbytes // 4, dtype=torch.int32, device=device)

    @property
    def policy(self) -> str:
        return f"flush {self.nbytes >> 20} MiB"

    def __call__(self) -> None:
        self.buffer.zero_()


class GpuSpin:
    """Keeps the stream busy for a given number of microseconds (``torch.cuda._sleep``, calibrated
    once per device against CUDA events), so launches queued after it find the GPU still working."""

    _cycles_per_us: dict[int, float] = {}

    def __init__(self, device: torch.device):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._cycles_per_us:
            cycles = 1_000_000
            torch.cuda._sleep(cycles)  # first call loads the kernel
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            self._cycles_per_us[index] = cycles / max(begin.elapsed_time(end) * 1e3, 1e-3)
        self.cycles_per_us = self._cycles_per_us[index]

    def __call__(self, microseconds: float) -> None:
        if microseconds > 0:
            torch.cuda._sleep(int(microseconds * self.cycles_per_us))


def _host_us(body: Callable[[], object], samples: int = HOST_SAMPLES) -> float:
    """Median host time of ``body`` (which only enqueues work), microseconds."""
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        body()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def _gap_free_us(launch: Callable[[], object], spin: GpuSpin, stream, host_us: float, count: int = 3) -> float:
    """The launch's own GPU time, without host gaps: the best of ``count`` launches queued behind a
    spin long enough for the host to enqueue them all (the first launch's estimate can hold gaps)."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
    spin(HOST_LEAD * host_us * (count + 1))
    for begin, end in events:
        begin.record(stream)
        launch()
        end.record(stream)
    torch.cuda.synchronize()
    return min(begin.elapsed_time(end) for begin, end in events) * 1e3


def _repetitions(single_ms: float, target_ms: float) -> int:
    return int(min(MAX_REPS, max(MIN_REPS, target_ms / max(single_ms, 1e-3))))


def _time_cpu(fn: Callable[[], object], target_ms: float) -> Timing:
    start = time.perf_counter()
    fn()
    single_ms = (time.perf_counter() - start) * 1e3
    samples = []
    for _ in range(_repetitions(single_ms, target_ms)):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return Timing.from_samples(samples, "cpu perf_counter", "none")


def _capture_graph(fn: Callable[[], object], device: torch.device) -> "torch.cuda.CUDAGraph":
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_function(fn: Callable[[], object], device: torch.device | str, *, target_ms: float = DEFAULT_TARGET_MS,
                  flush_l2: bool = True, cuda_graph: bool = False, reps: int | None = None) -> Timing:
    """Median and spread of ``fn``'s device time.

    CUDA: ``fn`` is warmed up (JIT, autotuning and lazy init stay out), then each repetition is
    [spin] -> flush -> start event -> fn -> end event; the spin comes in only when enqueueing a
    repetition costs the host more than 1/``HOST_LEAD`` of its GPU time (flush plus the launch's
    gap-free time), and ``method`` says so. With
    ``cuda_graph`` the launch is captured once and replayed (falls back to plain launches, and says
    so in ``method``, if capture fails).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return _time_cpu(fn, target_ms)
    stream = torch.cuda.current_stream(device)
    flusher = L2Flusher(device) if flush_l2 else None
    launch, method = fn, "cuda events"
    if cuda_graph:
        try:
            graph = _capture_graph(fn, device)
            launch, method = graph.replay, "cuda graph replay + events"
        except Exception as error:  # noqa: BLE001 - capture is an optimisation; record why it was not used
            torch.cuda.synchronize(device)
            method = f"cuda events (graph capture failed: {type(error).__name__})"
    # Warm-up, which also estimates one launch's time to size the repetitions.
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record(stream)
    launch()
    end.record(stream)
    torch.cuda.synchronize(device)
    single_ms = begin.elapsed_time(end)
    for _ in range(max(MIN_WARMUP, int(WARMUP_MS / max(single_ms, 1e-3)))):
        if flusher:
            flusher()
        launch()
    count = reps or _repetitions(single_ms, target_ms)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]

    def repetition(index: int) -> None:
        if flusher:
            flusher()
        starts[index].record(stream)
        launch()
        ends[index].record(stream)

    # Host cost of one repetition against its GPU time (flush + launch): spin ahead only where the
    # host could catch up with the GPU, so that long kernels are timed exactly as without a spin.
    torch.cuda.synchronize(device)
    host_us = _host_us(lambda: repetition(0))
    flush_us = 0.0
    if flusher:
        begin.record(stream)
        flusher()
        end.record(stream)
    torch.cuda.synchronize(device)
    if flusher:
        flush_us = begin.elapsed_time(end) * 1e3
    lead_us = HOST_LEAD * host_us - flush_us
    spin = None
    if lead_us > 0:
        spin = GpuSpin(device)
        lead_us -= _gap_free_us(launch, spin, stream, host_us)
        spin = spin if lead_us > 0 else None
    if spin:
        method += " (queued behind a GPU spin)"
        spin(4 * HOST_LEAD * host_us)  # a head start for the first repetitions
    for index in range(count):
        if spin:
            spin(lead_us)
        repetition(index)
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    return Timing.from_samples(samples, method, flusher.policy if flusher else "none (L2 warm)", host_us=host_us)
