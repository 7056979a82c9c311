"""Timing of backends that launch on CUDA streams torch does not own (JAX/XLA): CUDA events on torch's
stream cannot bracket their kernels, so each repetition's device time is read from the CUDA activity
record instead -- ``torch.profiler`` with ``ProfilerActivity.CUDA`` sees, through CUPTI, every kernel,
copy and memset of the process, whichever library launched it.

Each repetition is: flush L2 (`harness.measure.timer.L2Flusher`, on torch's stream) -> wait for it -> ``fn()``,
which returns only once its work is done (``block_until_ready``) -> wait again. The GPU timeline is
then strictly ``[separator][fn][separator][fn]...``: the separator is the flush (or, without a flush,
a one-element ``zero_()``), whose kernel names are learned by profiling it alone first. A repetition's
time is the span from the start of its first device activity to the end of its last (gaps between
the kernels of one call count, as they would for a user; the flush never does). When ``fn``'s own
kernels share a name with the separator's, the activities are split by position instead (the count of
each per call, also learned first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from harness.measure.timer import DEFAULT_TARGET_MS, MAX_REPS, MIN_REPS, MIN_WARMUP, WARMUP_MS, L2Flusher, Timing

METHOD = "cupti kernel span (torch.profiler)"
DEVICE_ACTIVITY_TYPES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
"""Kineto activity types of work on the device (runtime calls, syncs and annotations are left out)."""
DISCARD = 2
"""Repetitions profiled first and dropped (the profiler's own warm-up)."""


@dataclass(frozen=True)
class Activity:
    """One device activity (kernel, copy, memset) from the CUDA activity record, times in ns."""

    name: str
    start_ns: int
    end_ns: int


class SpanError(RuntimeError):
    """The activity record does not split into the expected repetitions (the message says how)."""


def _is_cuda(device_type: Any) -> bool:
    return str(device_type).split(".")[-1].upper() == "CUDA"


def device_activities(prof: Any) -> list[Activity]:
    """Kernels, copies and memsets of a finished ``torch.profiler.profile``, sorted by start time:
    from the kineto events (ns) where available, else from ``prof.events()`` (us)."""
    activities: list[Activity] = []
    try:
        events = prof.profiler.kineto_results.events()
    except Exception:  # noqa: BLE001 - older/newer torch: fall back to the FunctionEvents
        events = None
    if events is not None:
        for event in events:
            if not _is_cuda(event.device_type()):
                continue
            kind = event.activity_type() if hasattr(event, "activity_type") else "kernel"
            if str(kind) not in DEVICE_ACTIVITY_TYPES:
                continue
            start = int(event.start_ns())
            end = int(event.end_ns()) if hasattr(event, "end_ns") else start + int(event.duration_ns())
            activities.append(Activity(event.name(), start, end))
    else:
        for event in prof.events():
            if not _is_cuda(getattr(event, "device_type", "")):
                continue
            start, end = event.time_range.start, event.time_range.end
            activities.append(Activity(event.name, int(round(start * 1000)), int(round(end * 1000))))
    activities.sort(key=lambda a: (a.start_ns, a.end_ns))
    return activities


def split_by_separator(activities: Sequence[Activity], separator_names: Iterable[str]) -> list[list[Activity]]:
    """Maximal runs of activities between separator activities (by name), in time order."""
    separators = set(separator_names)
    groups: list[list[Activity]] = []
    current: list[Activity] = []
    for activity in activities:
        if activity.name in separators:
            if current:
                groups.append(current)
            current = []
        else:
            current.append(activity)
    if current:
        groups.append(current)
    return groups


def split_by_count(activities: Sequence[Activity], separator_count: int, fn_count: int) -> list[list[Activity]]:
    """Repetitions of ``separator_count`` separator activities then ``fn_count`` of fn's, by position."""
    period = separator_count + fn_count
    if fn_count < 1 or len(activities) % period:
        raise SpanError(f"{len(activities)} device activities do not split into repetitions of "
                        f"{separator_count} separator + {fn_count} fn activities")
    return [list(activities[start + separator_count: start + period]) for start in range(0, len(activities), period)]


def span_us(group: Sequence[Activity]) -> float:
    """First start to last end of one repetition's activities, microseconds."""
    return (max(a.end_ns for a in group) - min(a.start_ns for a in group)) / 1000.0


def repetition_spans(activities: Sequence[Activity], separator_names: Iterable[str], reps: int, *,
                     separator_count: int | None = None, fn_names: Iterable[str] = (),
                     fn_count: int | None = None) -> list[float]:
    """Per repetition, the span of fn's device activities (us), for a record of ``reps`` repetitions of
    ``[separator][fn]``. Split by the separator's names when fn launches none of them, else by position
    (``separator_count`` and ``fn_count`` per repetition). Raises `SpanError` when the record does not
    hold exactly ``reps`` repetitions."""
    separator_names = set(separator_names)
    if separator_names & set(fn_names):
        if separator_count is None or fn_count is None:
            raise SpanError(f"fn launches {sorted(separator_names & set(fn_names))} like the separator, and no "
                            "per-call counts were given to split by position")
        groups = split_by_count(activities, separator_count, fn_count)
    else:
        groups = split_by_separator(activities, separator_names)
    if len(groups) != reps:
        names = sorted({a.name for a in activities})[:8]
        raise SpanError(f"expected {reps} repetitions in the CUDA activity record, found {len(groups)} "
                        f"({len(activities)} activities; names include {names})")
    return [span_us(group) for group in groups]


def _profile(body: Callable[[], None]) -> list[Activity]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        body()
    return device_activities(prof)


def time_external(fn: Callable[[], object], device: torch.device | str, *, target_ms: float = DEFAULT_TARGET_MS,
                  flush_l2: bool = True) -> Timing:
    """Median and spread of ``fn``'s device time, read from the CUDA activity record (module docstring).

    ``fn`` must return only when its device work is done (e.g. ``block_until_ready``); it is warmed up
    first (compilation stays out). On a CPU device this is `harness.measure.timer.time_function`."""
    device = torch.device(device)
    if device.type != "cuda":
        from harness.measure.timer import time_function

        return time_function(fn, device, target_ms=target_ms, flush_l2=flush_l2)
    flusher = L2Flusher(device) if flush_l2 else None
    marker = torch.zeros(1, dtype=torch.int32, device=device)
    separator: Callable[[], None] = flusher if flusher is not None else marker.zero_

    def wait() -> None:
        torch.cuda.synchronize(device)

    # Warm-up, which also estimates one call's wall time (an upper bound of its device time).
    fn()
    wait()
    start = time.perf_counter()
    fn()
    wait()
    single_ms = (time.perf_counter() - start) * 1e3
    for _ in range(max(MIN_WARMUP, int(WARMUP_MS / max(single_ms, 1e-3)))):
        fn()
    wait()
    reps = int(min(MAX_REPS, max(MIN_REPS, target_ms / max(single_ms, 1e-3))))

    # Learn the separator's and fn's activities (names, counts per call).
    def one(body: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            wait()
            body()
            wait()
        return run

    separator_acts = _profile(one(separator))
    fn_acts = _profile(one(fn))
    if not separator_acts:
        raise SpanError("the CUDA activity record holds no kernel of the separator (is CUPTI available?)")
    if not fn_acts:
        raise SpanError("the CUDA activity record holds no device activity of fn: it launched nothing on this "
                        "GPU, or not before returning")

    def repetitions() -> None:
        for _ in range(reps + DISCARD):
            separator()
            wait()
            fn()
            wait()

    spans = repetition_spans(_profile(repetitions), {a.name for a in separator_acts}, reps + DISCARD,
                             separator_count=len(separator_acts), fn_names={a.name for a in fn_acts},
                             fn_count=len(fn_acts))[DISCARD:]
    policy = flusher.policy if flusher is not None else "none (L2 warm)"
    return Timing.from_samples(spans, METHOD, policy)


def busy_us(group: Sequence[Activity]) -> float:
    """Sum of one repetition's activity durations (us): the span without the gaps between them."""
    return sum(a.end_ns - a.start_ns for a in group) / 1000.0
