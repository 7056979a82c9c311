"""Backends that fail on purpose, for the isolation tests. Registered only when this module is imported,
e.g. through ``PAGED_BENCH_EXTRA_ADAPTERS=tests.faulty_adapters``; never part of a real sweep.

fault-raise     prepare raises RuntimeError                    -> error (the worker survives)
fault-abort     run calls os.abort()                           -> error, SIGABRT (the worker dies)
fault-hang      run sleeps far past any cell timeout           -> timeout
fault-hang-compiled  as fault-hang, declaring a disk compile cache: the compile warm-up runs its cells too
fault-segfault  run reads address 0                            -> error, SIGSEGV
fault-oob       (CUDA) a Triton kernel reads 2**40 elements past its input: an illegal memory access that
                poisons the CUDA context                       -> error, the worker is replaced
good-ref        returns the fp32 reference cast to the batch dtype: a healthy neighbour (cpu and cuda)
fault-wait      run writes its process id to $PAGED_BENCH_TEST_PIDFILE, then waits to be killed from outside
fault-wait-once as fault-wait while $PAGED_BENCH_TEST_PIDFILE is set, else good-ref (an interrupted cell that a
                resumed run measures)
"""

from __future__ import annotations

import ctypes
import os
import time

import torch

from adapters.base import Adapter, Prepared, register
from adapters.batch import PagedBatch
from adapters.reference import reference_attention

HANG_SECONDS = 3600.0
OOB_OFFSET_ELEMENTS = 2**40


class _Faulty(Adapter):
    devices = ("cpu", "cuda")

    def available(self, device: torch.device) -> tuple[bool, str]:
        if device.type not in self.devices:
            return False, f"{self.name} runs on {', '.join(self.devices)}, not {device.type}"
        return True, ""

    def versions(self) -> dict[str, str]:
        return {"faulty_adapters": "test"}


@register
class RaiseInPrepare(_Faulty):
    name = "fault-raise"

    def prepare(self, batch: PagedBatch) -> Prepared:
        raise RuntimeError("fault-raise: prepare failed on purpose")


@register
class AbortInRun(_Faulty):
    name = "fault-abort"

    def prepare(self, batch: PagedBatch) -> Prepared:
        return Prepared(run=os.abort)


def _sleep_forever() -> torch.Tensor:
    time.sleep(HANG_SECONDS)
    raise AssertionError("fault-hang woke up")


@register
class HangInRun(_Faulty):
    name = "fault-hang"

    def prepare(self, batch: PagedBatch) -> Prepared:
        return Prepared(run=_sleep_forever)


@register
class HangInRunCompiled(HangInRun):
    name = "fault-hang-compiled"
    disk_compile_cache = True


def _read_address_zero() -> torch.Tensor:
    ctypes.string_at(0)
    raise AssertionError("fault-segfault survived reading address 0")


@register
class SegfaultInRun(_Faulty):
    name = "fault-segfault"

    def prepare(self, batch: PagedBatch) -> Prepared:
        return Prepared(run=_read_address_zero)


PIDFILE_ENV = "PAGED_BENCH_TEST_PIDFILE"  # tests/test_runner.py repeats the name (it must not import this module)


def _announce_and_wait() -> torch.Tensor:
    with open(os.environ[PIDFILE_ENV], "w") as file:
        file.write(str(os.getpid()))
    return _sleep_forever()


@register
class WaitToBeKilled(_Faulty):
    name = "fault-wait"

    def prepare(self, batch: PagedBatch) -> Prepared:
        return Prepared(run=_announce_and_wait)


@register
class OutOfBoundsRead(_Faulty):
    """A kernel that reads far outside its buffer without a mask: CUDA reports an illegal memory
    access (asynchronously: the gate's synchronize raises it) and the context stays broken."""

    name = "fault-oob"
    devices = ("cuda",)

    def available(self, device: torch.device) -> tuple[bool, str]:
        if device.type != "cuda":
            return False, "fault-oob needs a CUDA device"
        try:
            import triton  # noqa: F401
        except ImportError as error:
            return False, f"triton is not importable: {error}"
        return True, ""

    def prepare(self, batch: PagedBatch) -> Prepared:
        from tests._oob_kernel import read_far_out_of_bounds

        source = batch.q.reshape(-1)
        out = torch.empty_like(batch.q)
        return Prepared(run=lambda: read_far_out_of_bounds(source, out, OOB_OFFSET_ELEMENTS), out=out)


@register
class GoodReference(_Faulty):
    """Correct by construction: the reference computed at prepare time, cast to the batch dtype."""

    name = "good-ref"

    def prepare(self, batch: PagedBatch) -> Prepared:
        result = reference_attention(batch).to(batch.spec.torch_dtype)
        return Prepared(run=lambda: result, notes={"entry_point": "reference_attention (precomputed)"})


@register
class WaitOnceThenGood(_Faulty):
    """Waits like fault-wait while the pid file is asked for (the run to interrupt), else answers like
    good-ref (the resumed run)."""

    name = "fault-wait-once"

    def prepare(self, batch: PagedBatch) -> Prepared:
        if os.environ.get(PIDFILE_ENV):
            return Prepared(run=_announce_and_wait)
        result = reference_attention(batch).to(batch.spec.torch_dtype)
        return Prepared(run=lambda: result, notes={"entry_point": "reference_attention (precomputed)"})


@register
class WaitHoldingASemaphore(_Faulty):
    """Waits like fault-wait, holding a named semaphore as libraries' compile pools do (Inductor's): a worker
    killed outright leaves it registered with the run's resource tracker, which reports it as leaked when
    the run exits."""

    name = "fault-wait-semaphore"

    def prepare(self, batch: PagedBatch) -> Prepared:
        import multiprocessing

        self._semaphore = multiprocessing.get_context("spawn").Semaphore()
        return Prepared(run=_announce_and_wait)

