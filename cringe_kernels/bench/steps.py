"""Whole-step measurements, shared by the hidden-state and training-step modes.

A *step provider* builds, from a workload, a function that runs one whole
step (forward and backward; for the training step also the optimizer update)
and returns what the step produced and a training step keeps (the input and
weight gradients). Each step is timed with the suite's timers and its peak
memory read with the suite's meters (:mod:`.timing`); then the bytes of what
the step returned are subtracted, so the reading is the memory *beyond*
inputs, parameters and their gradients.

That subtraction is a lower bound of the working memory when the step's
peak came before its gradients existed (the logits path peaks while the
``[N, V]`` logits and their gradient are both alive, before the two
backward matmuls allocate the input and weight gradients): it can only make
a baseline look smaller, never ours.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from . import timing


@dataclass
class StepProvider:
    """One thing to time in a whole-step mode.

    Attributes
    ----------
    name : str
    family : str
        Which workloads it serves: a Cringe loss (``"binary"``,
        ``"pairwise"``), ``"ce"`` (plain cross-entropy, served by the binary
        workload), or ``"step"`` (the training step).
    build : callable
        ``build(workload) -> step``, ``step() -> tuple of Tensor`` (what the
        step keeps; its bytes are subtracted from the peak memory).
    note : str
    unavailable : str
        Non-empty when the provider cannot run here: it is recorded as
        skipped with this reason.
    """

    name: str
    family: str
    build: Callable[[object], Callable[[], object]]
    note: str = ""
    unavailable: str = ""


def tensor_bytes(value) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or nested tuples/lists of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def release(device: torch.device) -> None:
    """Free what Python and the CUDA cache hold, between measurements."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def failure(err: BaseException) -> dict:
    """The record values of a step that raised ``err``: skipped (out of memory) or error."""
    if is_oom(err):
        return {"status": "skipped", "reason": "out of memory"}
    lines = str(err).strip().splitlines()
    return {"status": "error", "reason": f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]}


def measure_group(builds: List[Tuple[str, Callable[[], Callable[[], object]]]], timer: timing.Timer,
                  meter: timing.MemoryMeter, device=None) -> Dict[str, dict]:
    """Time steps that share their inputs, interleaved; then read each one's peak memory.

    Each step is built and warmed up (the timer's warm-up policy), then the
    samples are taken in rounds, one call of every step per round, so that
    a change of the machine's load during the measurement (other people's
    jobs on a shared CPU, clocks) reaches every step alike and the ratios
    between them stay fair. The number of rounds is the timer's choice for
    the slowest step. Then each step's memory is read once, alone.

    Parameters
    ----------
    builds : list of (str, callable)
        ``(name, build)``, ``build() -> step``, ``step() -> what it keeps``.
    timer : Timer
    meter : MemoryMeter
    device : str or torch.device, optional
        Whose memory to release after a failure (default: the CPU's).

    Returns
    -------
    dict
        name -> ``median_ms``, ``p20_ms``, ``p80_ms``, ``reps``,
        ``first_call_ms``; ``peak_mem_mib`` (peak above the memory allocated
        before the call, minus the bytes of the tensors the step returned,
        at least 0) and ``kept_mib`` (those bytes), or ``mem_reason`` when no
        meter runs here. A step that raised gets ``status`` (``"skipped"``
        for out of memory, else ``"error"``) and ``reason`` instead.
    """
    device = torch.device(device or "cpu")
    out: Dict[str, dict] = {}
    live: Dict[str, Callable[[], object]] = {}
    warm: Dict[str, List[float]] = {}
    samples: Dict[str, List[float]] = {}
    kept: Dict[str, int] = {}
    memory: Dict[str, timing.MemoryReading] = {}

    def attempt(name: str, fn: Callable[[], None]) -> None:
        """Run ``fn``; if it raises, record the failure and drop the step."""
        failed = None
        try:
            fn()
        except KeyboardInterrupt:
            raise
        except Exception as err:
            failed = failure(err)
        if failed is not None:
            # Released outside the except block, so the traceback's frames
            # (and their tensors) are gone first.
            out[name] = failed
            live.pop(name, None)
            release(device)

    def prepare(name, build):
        step = build()
        warm[name] = timer.warm_up(step)
        live[name] = step

    for name, build in builds:
        attempt(name, lambda: prepare(name, build))
    for name in live:
        samples[name] = []
    rounds = min((timer.reps_for(warm[name]) for name in live), default=0)
    for _ in range(rounds):
        for name in list(live):
            attempt(name, lambda: samples[name].append(timer.time_once(live[name])))

    def read_memory(name):
        def counted():
            result = live[name]()
            kept[name] = tensor_bytes(result)
            return result
        memory[name] = meter.measure(counted)

    for name in list(live):
        attempt(name, lambda: read_memory(name))
    for name in live:
        t = timing.Timing.from_samples(samples[name], warm[name][0])
        values = {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "reps": t.reps,
                  "first_call_ms": t.first_call_ms}
        if memory[name].peak_bytes is not None:
            values["peak_mem_mib"] = max(0, memory[name].peak_bytes - kept.get(name, 0)) / 2**20
            values["kept_mib"] = kept.get(name, 0) / 2**20
        else:
            values["mem_reason"] = memory[name].reason
        out[name] = values
    return {name: out[name] for name, _ in builds}


def measure_step(step: Callable[[], object], timer: timing.Timer, meter: timing.MemoryMeter) -> dict:
    """One step alone: :func:`measure_group` of one."""
    return measure_group([("step", lambda: step)], timer, meter)["step"]


@dataclass
class Budget:
    """A time budget checked between measurements; None: no limit."""

    seconds: Optional[float]
    started: float = field(default_factory=time.perf_counter)

    def exhausted(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.started > self.seconds

    def reason(self) -> str:
        return f"time budget of {self.seconds:.0f} s exhausted"


def fill_ratio(records: List[dict], point: Callable[[dict], tuple], column: str,
               baseline: Callable[[dict], Iterable[Tuple[str, str]]], value: str, invert: bool = False) -> None:
    """Fill ``column`` of each ok record with a ratio to a baseline of the same point.

    Parameters
    ----------
    records : list of dict
        Each with ``provider``, ``loss``, ``status`` and ``value``.
    point : callable
        ``point(record)`` -> the inputs it was measured on (records with
        equal points shared them, in the same run).
    column : str
    baseline : callable
        ``baseline(record)`` -> ``(loss, provider)`` pairs to compare with;
        the smallest ok value among them is used; none: no ratio.
    value : str
        ``"median_ms"`` or ``"peak_mem_mib"``.
    invert : bool
        False: ``this / baseline``; True: ``baseline / this`` (a speedup).
    """
    ok: Dict[tuple, Dict[Tuple[str, str], float]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get(value) is not None:
            ok.setdefault(point(r), {})[(r["loss"], r["provider"])] = r[value]
    for r in records:
        r[column] = None
        if r.get("status") != "ok" or r.get(value) is None:
            continue
        found = [ok.get(point(r), {}).get(b) for b in baseline(r)]
        found = [v for v in found if v is not None]
        if not found:
            continue
        base, this = min(found), r[value]
        if invert:
            r[column] = base / this if this else None
        else:
            r[column] = this / base if base else None
