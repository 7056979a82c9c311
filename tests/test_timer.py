"""The timer's statistics (CPU) and, on a GPU, its agreement with torch.profiler and with itself."""

import statistics
import time

import pytest
import torch

from harness.measure.timer import Timing, time_function


def test_quartiles_median_and_spread_from_samples():
    timing = Timing.from_samples([10.0, 12.0, 11.0, 13.0, 50.0], "test", "none")
    assert timing.median_us == 12.0 and timing.min_us == 10.0 and timing.max_us == 50.0
    assert (timing.q1_us, timing.q3_us) == (11.0, 13.0)
    assert timing.iqr_pct == pytest.approx(100 * 2 / 12)
    assert "samples_us" not in timing.as_row()


def test_cpu_path_times_with_a_synchronous_clock():
    timing = time_function(lambda: sum(range(20000)), "cpu", target_ms=20)
    assert timing.method == "cpu perf_counter" and timing.reps >= 20 and timing.median_us > 0


def _matmul(size=6144):
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    return lambda: torch.matmul(a, b)


def _kernel_groups(prof) -> dict[str, list[float]]:
    """Device durations (us) of every CUDA kernel in a profile, by kernel name."""
    by_name: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_name.setdefault(event.name, []).append(event.device_time)
    return by_name


@pytest.mark.gpu
@pytest.mark.parametrize("flush_l2", [True, False])
def test_timer_median_agrees_with_profiler_within_5_percent(flush_l2):
    """The same launches seen two ways: the timer's CUDA events and the profiler's CUPTI records.
    The timed kernel is the one with the most device time (the L2 flush is a short memset)."""
    from torch.profiler import ProfilerActivity, profile

    fn = _matmul()
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timing = time_function(fn, "cuda", target_ms=300, flush_l2=flush_l2)
    groups = _kernel_groups(prof)
    kernel = max(groups, key=lambda name: sum(groups[name]))
    profiled = statistics.median(groups[kernel])
    summary = {name[:60]: (len(times), round(statistics.median(times), 1)) for name, times in groups.items()}
    print(f"timer {timing.median_us:.1f} us ({timing.method}, {timing.l2_policy}); profiler {profiled:.1f} us; {summary}")
    assert timing.median_us >= 100, "pick a kernel of at least 100 us"
    assert len(groups[kernel]) >= timing.reps
    assert timing.median_us == pytest.approx(profiled, rel=0.05), (timing.median_us, profiled, summary)


@pytest.mark.gpu
def test_two_timer_runs_differ_by_less_than_3_percent():
    fn = _matmul()
    first = time_function(fn, "cuda", target_ms=300)
    second = time_function(fn, "cuda", target_ms=300)
    assert first.median_us == pytest.approx(second.median_us, rel=0.03)
    assert first.l2_policy.startswith("flush")


@pytest.mark.gpu
def test_cuda_graph_replay_is_labelled():
    fn = _matmul(1024)
    timing = time_function(fn, "cuda", target_ms=50, cuda_graph=True)
    assert timing.method.startswith("cuda graph") and timing.median_us > 0


@pytest.mark.gpu
def test_host_bound_launches_time_the_device_not_the_host():
    """A launch that spends 300 us in Python before a ~20 us kernel: the events must see the kernel
    (as the profiler does), not the host's launch cost; the timer says it queued behind a spin."""
    from torch.profiler import ProfilerActivity, profile

    data = torch.ones(16 << 20, device="cuda")

    def slow_launch():
        deadline = time.perf_counter() + 300e-6
        while time.perf_counter() < deadline:
            pass
        data.mul_(1.0)

    slow_launch()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timing = time_function(slow_launch, "cuda", target_ms=30)
    groups = _kernel_groups(prof)
    kernel = next(name for name in groups if "mul" in name.lower() or "elementwise" in name.lower())
    profiled = statistics.median(groups[kernel])
    print(f"timer {timing.median_us:.1f} us, host {timing.host_us:.0f} us ({timing.method}); profiler {profiled:.1f} us")
    assert timing.host_us > 250
    assert "spin" in timing.method
    assert timing.median_us == pytest.approx(profiled, rel=0.15, abs=3.0)
