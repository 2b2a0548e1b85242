"""Timers, percentiles and peak-memory meters.

A measurement is a list of per-call times, each taken around the timed
function only: an untimed ``setup`` (for example the forward pass before a
backward-only measurement, or refilling logits an in-place provider
overwrote) runs before every call, outside the timed region. Warm-up calls
(which include ``torch.compile`` and autotuning) are never part of the
samples.

GPU times come from CUDA events recorded on the current stream around each
call, with the L2 cache flushed (a 256 MiB buffer zeroed) before each call so
a small problem is not timed out of cache. We do not use
``triton.testing.do_bench`` because it cannot run an untimed setup between
calls, which backward-only timing and in-place providers need; its other
habits (warm-up excluded, L2 flush, quantiles) are kept.

CPU times come from :func:`time.perf_counter`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation (numpy's default).

    Parameters
    ----------
    values : sequence of float
        At least one value.
    q : float
        In ``[0, 100]``.

    Returns
    -------
    float
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timing:
    """Summary of the samples of one measurement, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    first_call_ms: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], first_call_ms: float) -> "Timing":
        return cls(percentile(samples_ms, 50), percentile(samples_ms, 20), percentile(samples_ms, 80),
                   len(samples_ms), first_call_ms)


def _noop() -> None:
    return None


class Timer:
    """Base timer: ``warmup`` calls, then enough calls to fill ``rep_ms``.

    Parameters
    ----------
    warmup : int
        Untimed calls before the samples (at least 1: the first call compiles).
    rep_ms : float
        Target total time of the samples; the number of samples is
        ``rep_ms / (estimated time per call)`` clamped to
        ``[min_reps, max_reps]``.
    min_reps, max_reps : int
    """

    #: Warm-up continues past ``warmup`` calls until the warm-up calls add
    #: up to this much time (first calls compile, fault pages in, spin up
    #: thread pools), at most :attr:`MAX_EXTRA_WARMUP` more calls. A call
    #: slower than this needs no second warm-up call: the steady state is
    #: reached once the first call has run.
    WARMUP_MS = 50.0
    MAX_EXTRA_WARMUP = 8

    def __init__(self, warmup: int, rep_ms: float, min_reps: int, max_reps: int,
                 warmup_ms: Optional[float] = None):
        if warmup_ms is not None:
            self.WARMUP_MS = warmup_ms
        self.warmup = max(1, warmup)
        self.rep_ms = rep_ms
        self.min_reps = max(1, min_reps)
        self.max_reps = max(self.min_reps, max_reps)

    def warm_up(self, fn, setup=None) -> List[float]:
        """Untimed calls until the warm-up policy is met; returns their times (ms)."""
        setup = setup or _noop
        warm: List[float] = []
        while True:
            setup()
            warm.append(self.time_once(fn))
            n = len(warm)
            if n >= self.warmup and (sum(warm) >= self.WARMUP_MS or n >= self.warmup + self.MAX_EXTRA_WARMUP):
                return warm

    def reps_for(self, warm: List[float]) -> int:
        """How many samples to take after the warm-up calls that took ``warm`` ms."""
        # Steady-state estimate: the fastest warm-up call after the first
        # (the first may include compilation).
        estimate = max(min(warm[1:] or warm), 1e-3)
        return int(min(self.max_reps, max(self.min_reps, round(self.rep_ms / estimate))))

    # Subclasses implement one timed call.
    def time_once(self, fn: Callable[[], object]) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def measure(self, fn: Callable[[], object], setup: Optional[Callable[[], object]] = None) -> Timing:
        """Time ``fn``; ``setup`` runs untimed before every call.

        Returns
        -------
        Timing
        """
        setup = setup or _noop
        warm = self.warm_up(fn, setup)
        reps = self.reps_for(warm)
        samples = []
        for _ in range(reps):
            setup()
            samples.append(self.time_once(fn))
        return Timing.from_samples(samples, warm[0])


class CpuTimer(Timer):
    """Wall-clock timer for CPU work (``time.perf_counter``)."""

    def time_once(self, fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


class CudaTimer(Timer):
    """CUDA-event timer with an L2 flush before each call.

    Each call is bracketed by its own pair of events, so the untimed setup
    between calls stays out of the samples; the host does not wait per call
    except once per ``measure`` (and in the warm-up, to estimate the time).
    """

    FLUSH_BYTES = 256 << 20
    WARMUP_MS = 25.0

    def __init__(self, *args, device=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.device = torch.device(device or "cuda")
        self._flush = torch.empty(self.FLUSH_BYTES // 4, dtype=torch.int32, device=self.device)

    def _record(self, fn):
        """Flush L2, then enqueue ``fn`` between two timing events; no wait."""
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        self._flush.zero_()
        start.record()
        fn()
        end.record()
        return start, end

    def time_once(self, fn):
        start, end = self._record(fn)
        end.synchronize()
        return start.elapsed_time(end)

    def measure(self, fn, setup=None):
        setup = setup or _noop
        warm = self.warm_up(fn, setup)
        reps = self.reps_for(warm)
        events = []
        for _ in range(reps):
            setup()
            events.append(self._record(fn))
        torch.cuda.synchronize(self.device)
        return Timing.from_samples([s.elapsed_time(e) for s, e in events], warm[0])


# ---------------------------------------------------------------- memory


@dataclass
class MemoryReading:
    """Peak bytes above the starting point, or None with the reason."""

    peak_bytes: Optional[int]
    reason: str = ""


class MemoryMeter:
    """Peak memory of one call above what was allocated just before it."""

    method = "none"
    reason = ""

    @property
    def available(self) -> bool:
        return not self.reason

    def measure(self, fn: Callable[[], object]) -> MemoryReading:  # pragma: no cover - interface
        return MemoryReading(None, self.reason)


class CudaMemoryMeter(MemoryMeter):
    """``torch.cuda.max_memory_allocated`` minus the allocation before the call.

    Counts tensors the call creates and still holds at its peak (saved
    activations, the gradient, temporaries); not the caching allocator's
    reserve, not memory of other libraries (cuBLAS workspaces, Triton).
    """

    method = "torch.cuda.max_memory_allocated - memory_allocated before the call"

    def __init__(self, device=None):
        self.device = torch.device(device or "cuda")

    def measure(self, fn):
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        result = fn()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del result
        return MemoryReading(max(0, int(peak)))


def _read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class CpuMemoryMeter(MemoryMeter):
    """Peak resident memory of the process during the call (Linux).

    ``tracemalloc`` does not see torch's allocations, and ``ru_maxrss`` can
    only grow. Linux can reset the process's peak RSS (``VmHWM``) by writing
    ``5`` to ``/proc/self/clear_refs``; so: free what can be freed
    (``gc.collect`` and glibc's ``malloc_trim(0)``, which returns free heap
    pages to the OS so a reused chunk is counted again when it is touched),
    reset the peak, read ``VmRSS``, run, read ``VmHWM``. The difference counts
    pages the call touched and held at its peak: all large tensors it writes
    (an ``empty`` tensor that is never written costs no memory and is not
    counted). Allocations under a page or reused from a never-trimmed arena
    can be missed; they are small next to ``[N, V]`` tensors. Other threads of
    this process count too; other processes do not.
    """

    method = "Linux VmHWM - VmRSS around the call (clear_refs reset, malloc_trim first)"

    def __init__(self):
        self.reason = ""
        self._trim = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _read_status_kb("VmHWM")
        except (OSError, KeyError) as err:
            self.reason = f"cannot reset the peak RSS through /proc/self/clear_refs ({err})"
            return
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            self._trim = libc.malloc_trim
        except (OSError, AttributeError):
            # Without malloc_trim, reused free heap chunks are not counted:
            # the reading is a lower bound; say so rather than drop it.
            self.method += " (no malloc_trim: lower bound)"

    def measure(self, fn):
        if self.reason:
            return MemoryReading(None, self.reason)
        # Young generations only: a full collection takes a quarter second
        # once torch._dynamo is imported, and tensors rarely sit in old cycles.
        gc.collect(1)
        if self._trim is not None:
            self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _read_status_kb("VmRSS")
        result = fn()
        peak = _read_status_kb("VmHWM") - base
        del result
        return MemoryReading(max(0, peak) * 1024)


def make_timer(device: torch.device, warmup: int, rep_ms: float, min_reps: int, max_reps: int,
               warmup_ms: Optional[float] = None) -> Timer:
    """The timer for ``device``'s type."""
    if device.type == "cuda":
        return CudaTimer(warmup, rep_ms, min_reps, max_reps, warmup_ms, device=device)
    return CpuTimer(warmup, rep_ms, min_reps, max_reps, warmup_ms)


def make_memory_meter(device: torch.device) -> MemoryMeter:
    """The peak-memory meter for ``device``'s type (may be unavailable, with a reason)."""
    if device.type == "cuda":
        return CudaMemoryMeter(device)
    if device.type == "cpu":
        return CpuMemoryMeter()
    meter = MemoryMeter()
    meter.reason = f"no peak-memory meter for device type {device.type!r}"
    return meter
