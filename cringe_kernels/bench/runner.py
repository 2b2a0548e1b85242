"""The sweep loop: plan the tasks, build inputs once per point, measure, record.

Order: every eager provider over every point first, then the compiled ones
(a compile that takes minutes or is killed by a time limit cannot cost the
eager results). Within a point the workload is built once and shared by all
providers of that loss; providers that overwrite the logits refill them
(untimed) before each call and after they finish.

Nothing aborts the sweep: an unavailable provider, a dtype a backend does
not support, an estimated or real out-of-memory, an exhausted time budget
and any exception are recorded as a row with ``status`` ``skipped`` or
``error`` and a ``reason``. A ``KeyboardInterrupt`` (and SIGTERM, which the
CLI turns into one) stops the sweep and returns what was measured.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import env as env_mod
from . import metrics, timing
from .config import DTYPES, SweepConfig
from .progress import Progress
from .providers import Provider, all_providers, select
from .workloads import Workload, make_workload


@dataclass
class Task:
    """One measurement: a provider, a loss, a point and a mode."""

    provider: Provider
    loss: str
    V: int
    N: int
    dtype: str
    mode: str

    @property
    def label(self) -> str:
        return f"{self.provider.name} {self.loss} {self.mode} V={self.V} N={self.N} {self.dtype}"


@dataclass
class SweepResult:
    """What a sweep produced: records plus the context needed to read them."""

    config: SweepConfig
    records: List[dict]
    env: Dict
    copy_bandwidth: Optional[Dict]
    memory_method: str
    elapsed_s: float = 0.0
    interrupted: bool = False
    notes: List[str] = field(default_factory=list)


def plan(cfg: SweepConfig, providers: List[Provider]) -> List[Task]:
    """All tasks of the sweep, in execution order.

    Compiled providers run where ``cfg.compile_at`` says: at the standard
    point (or, when the sweep does not contain it, at the sweep's first
    point; a provider marked ``compile_everywhere`` at every point), at all
    points, or nowhere.
    """
    points = cfg.points()
    standard = tuple(cfg.standard) if tuple(cfg.standard) in points else (points[0] if points else None)

    def runs_here(p: Provider, point) -> bool:
        if not p.compiled or cfg.compile_at == "all":
            return True
        return cfg.compile_at == "standard" and (p.compile_everywhere or point == standard)

    tasks: List[Task] = []
    for compiled in (False, True):
        for V, N, dtype in points:
            # Compiled: cross-entropy first, its compile is quick; the
            # reference's may not finish within a time budget.
            losses = ("ce",) + tuple(cfg.losses) if compiled else tuple(cfg.losses) + ("ce",)
            for loss in losses:
                for p in providers:
                    if p.compiled != compiled or loss not in p.losses() or not runs_here(p, (V, N, dtype)):
                        continue
                    for mode in cfg.modes:
                        tasks.append(Task(p, loss, V, N, dtype, mode))
    return tasks


def _record(task: Task, cfg: SweepConfig, **values) -> dict:
    r = {
        "device": cfg.device, "provider": task.provider.name, "loss": task.loss, "mode": task.mode,
        "V": task.V, "N": task.N, "dtype": task.dtype, "status": "ok", "reason": "",
        "median_ms": None, "p20_ms": None, "p80_ms": None, "reps": None, "first_call_ms": None,
        "peak_mem_mib": None, "note": task.provider.note,
    }
    r.update(values)
    return r


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free_bytes(device: torch.device) -> Optional[int]:
    """Bytes a new allocation could get on a GPU (free plus the cache); None on the CPU."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def mode_functions(fn: Callable, workload: Workload, mode: str, mutates: Optional[str]):
    """``(setup, run)`` for one mode; ``setup`` is untimed, ``run`` is timed.

    fwd: run the loss with autograd recording (as in training, so the saved
    tensors count in its memory). bwd: setup runs the forward, run takes the
    gradient. full: run does both. Gradients come from
    ``torch.autograd.grad`` on the logits, so nothing accumulates into
    ``.grad`` between calls.
    """
    args, leaves = workload.args, workload.leaves
    refill = workload.refill if (mutates == "forward" or (mutates == "backward" and mode != "fwd")) else None

    if mode == "fwd":
        return refill, lambda: fn(*args)
    if mode == "full":
        def full():
            return torch.autograd.grad(fn(*args), leaves)
        return refill, full
    if mode == "bwd":
        state = {}

        def setup():
            if refill is not None:
                refill()
            state["loss"] = fn(*args)

        def backward():
            return torch.autograd.grad(state.pop("loss"), leaves)
        return setup, backward
    raise ValueError(f"unknown mode {mode!r}")


def measure(task: Task, workload: Workload, timer: timing.Timer, meter: timing.MemoryMeter) -> dict:
    """Time one task and read its peak memory; returns the record's values."""
    fn = task.provider.fn(task.loss)
    setup, run = mode_functions(fn, workload, task.mode, task.provider.mutates)
    # Timing first: its warm-up compiles, so compile-time memory (code,
    # caches) stays out of the memory reading taken afterwards.
    t = timer.measure(run, setup)
    if setup is not None:
        setup()
    mem = meter.measure(run)
    if task.provider.mutates:
        workload.refill()
    values = {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "reps": t.reps,
              "first_call_ms": t.first_call_ms}
    if mem.peak_bytes is not None:
        values["peak_mem_mib"] = mem.peak_bytes / 2**20
    elif mem.reason:
        values["mem_reason"] = mem.reason
    return values


def run_sweep(cfg: SweepConfig, providers: Optional[List[Provider]] = None,
              on_record: Optional[Callable[[dict], None]] = None) -> SweepResult:
    """Run the sweep ``cfg`` and return every record.

    Parameters
    ----------
    cfg : SweepConfig
    providers : list of Provider, optional
        Default: :func:`.providers.all_providers` filtered by ``cfg.providers``.
    on_record : callable, optional
        Called with each record as soon as it exists (the CLI appends it to
        the CSV, so a killed sweep still leaves its rows).

    Returns
    -------
    SweepResult
    """
    from ..validate import set_value_checks

    device = torch.device(cfg.device)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if providers is None:
        providers = select(all_providers(device, k=cfg.k), list(cfg.providers) if cfg.providers else None, device)
    environment = env_mod.collect(device)
    timer = timing.make_timer(device, cfg.warmup, cfg.rep_ms, cfg.min_reps, cfg.max_reps, cfg.warmup_ms)
    meter = timing.make_memory_meter(device)
    result = SweepResult(cfg, [], environment, None, meter.method if meter.available else f"NA: {meter.reason}")
    previous_checks = set_value_checks(cfg.value_checks)

    def emit(record: dict) -> None:
        result.records.append(record)
        if on_record is not None:
            on_record(record)

    tasks = plan(cfg, providers)
    progress = Progress(len(tasks), enabled=cfg.progress)
    disabled: Dict[str, str] = {p.name: p.unavailable for p in providers if p.unavailable}
    try:
        result.copy_bandwidth = metrics.measure_copy_bandwidth(
            device, timer, cfg.copy_mib << 20 if cfg.copy_mib else None)
        groups: List[Tuple[tuple, List[Task]]] = []
        for task in tasks:
            key = (task.provider.compiled, task.dtype, task.N, task.V, task.loss)
            if not groups or groups[-1][0] != key:
                groups.append((key, []))
            groups[-1][1].append(task)
        copy_gbps = result.copy_bandwidth["gbps"]
        deadline = _deadlines(cfg, tasks)
        for (_compiled, dtype, N, V, loss), group in groups:
            element_size = torch.empty((), dtype=DTYPES[dtype]).element_size()
            workload, group_reason = None, ""
            if all(t.provider.name in disabled for t in group):
                group_reason = "skip"
            elif time.perf_counter() - started > deadline[group[0].provider.compiled]:
                group_reason = _budget_reason(cfg, group[0].provider.compiled)
            else:
                need = N * V * element_size + 16 * N
                free = _free_bytes(device)
                if free is not None and need > 0.95 * free:
                    group_reason = f"inputs need {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
                else:
                    try:
                        workload = make_workload(loss, V, N, dtype, device, cfg.seq_len, cfg.seed)
                    except Exception as err:  # OOM or a shape that cannot be split
                        group_reason = f"building inputs failed: {type(err).__name__}: {str(err).splitlines()[0]}"
            for task in group:
                name = task.provider.name
                if name in disabled:
                    values = {"status": "skipped", "reason": disabled[name]}
                elif group_reason:
                    values = {"status": "skipped", "reason": group_reason}
                elif time.perf_counter() - started > deadline[task.provider.compiled]:
                    values = {"status": "skipped", "reason": _budget_reason(cfg, task.provider.compiled)}
                else:
                    remaining = None if cfg.time_budget_s is None else cfg.time_budget_s - (time.perf_counter() - started)
                    values = _measure_guarded(task, workload, timer, meter, element_size, device, remaining)
                    if values.get("budget_cut") and task.provider.compiled:
                        disabled[name] = values["reason"] + " (earlier)"
                    if values.get("status") == "error" and task.provider.compiled:
                        # A compiled provider that fails is a baseline we
                        # cannot have here, not a failure of ours: skip it,
                        # and skip it from then on (retrying per point would
                        # spend the budget compiling again).
                        values = {"status": "skipped", "reason": f"torch.compile failed: {values['reason']}"}
                        disabled[name] = f"{values['reason']} (earlier)"
                record = _record(task, cfg, **values)
                if workload is not None:
                    record["rows_read"] = workload.rows_read
                metrics.fill_bandwidth(record, element_size, copy_gbps)
                emit(record)
                shown = (f"{record['median_ms']:.3f} ms" if record["status"] == "ok"
                         else f"{record['status']}: {record['reason'][:70]}")
                progress.update(task.label, shown)
            del workload
            _release(device)
    except KeyboardInterrupt:
        result.interrupted = True
        result.notes.append("interrupted: the sweep stopped early; rows not run are missing")
    finally:
        progress.close()
        set_value_checks(previous_checks)
        torch.set_num_threads(previous_threads)
    metrics.add_speedups(result.records)
    try:
        result.env["load_average_end"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    result.elapsed_s = time.perf_counter() - started
    return result


#: Share of ``--time-budget`` the eager providers may use when compiled ones
#: are planned: the rest is kept for compiling, so neither phase can starve
#: the other (the largest eager points, run last, are the ones cut).
EAGER_SHARE = 0.7


def _deadlines(cfg: SweepConfig, tasks: List[Task]) -> Dict[bool, float]:
    """Seconds after the start past which no task starts: ``{compiled: limit}``."""
    if cfg.time_budget_s is None:
        return {False: float("inf"), True: float("inf")}
    has_compiled = any(t.provider.compiled and not t.provider.unavailable for t in tasks)
    return {False: cfg.time_budget_s * (EAGER_SHARE if has_compiled else 1.0), True: cfg.time_budget_s}


def _budget_reason(cfg: SweepConfig, compiled: bool) -> str:
    if compiled:
        return f"time budget of {cfg.time_budget_s:.0f} s exhausted"
    return (f"time budget exhausted ({EAGER_SHARE:.0%} of {cfg.time_budget_s:.0f} s for eager providers, "
            "the rest kept for the compiled ones)")


class BudgetExceeded(BaseException):
    """The time budget ended during a measurement (raised by an alarm).

    A BaseException, so that library code catching ``Exception`` (dynamo
    falls back to eager on errors) lets it through.
    """


@contextlib.contextmanager
def _alarm(seconds: Optional[float]):
    """Raise :class:`BudgetExceeded` in this thread after ``seconds``.

    A compile can take minutes; without this a time budget would only be
    checked between measurements, and an outer ``timeout`` would kill the
    sweep instead of one measurement. A no-op off the main thread or
    without ``setitimer`` (the budget is then checked between measurements
    only).
    """
    if (seconds is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def ring(signum, frame):
        raise BudgetExceeded()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _measure_guarded(task: Task, workload: Workload, timer, meter, element_size: int, device,
                     remaining_s: Optional[float] = None) -> dict:
    """:func:`measure` with every failure turned into a skipped/error record.

    ``remaining_s`` (the rest of the time budget) bounds the measurement: one
    that runs past it is recorded as skipped with ``budget_cut`` set.
    """
    from ..backends import BackendUnavailableError

    free = _free_bytes(device)
    if free is not None:
        need = task.provider.extra_bytes(task.N * task.V, element_size)
        if need > 0.9 * free:
            return {"status": "skipped",
                    "reason": f"estimated {need / 2**30:.1f} GiB beyond the inputs, {free / 2**30:.1f} GiB free"}
    try:
        with _alarm(remaining_s):
            return measure(task, workload, timer, meter)
    except BudgetExceeded:
        values = {"status": "skipped", "reason": "time budget ended during this measurement", "budget_cut": True}
    except BackendUnavailableError as err:
        return {"status": "skipped", "reason": str(err).splitlines()[0]}
    except KeyboardInterrupt:
        raise
    except Exception as err:
        if _is_oom(err):
            values = {"status": "skipped", "reason": "out of memory"}
        else:
            lines = str(err).strip().splitlines()
            values = {"status": "error", "reason": f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]}
    # Outside the except block, so the traceback (and the tensors its frames
    # hold) is gone before memory is released.
    if task.provider.mutates:
        try:
            workload.refill()
        except Exception:  # pragma: no cover - device already broken
            pass
    _release(device)
    return values
