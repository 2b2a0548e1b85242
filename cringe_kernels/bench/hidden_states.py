"""Hidden-state mode: ``python -m cringe_kernels.bench --linear``.

The loss from the last hidden states ``hidden [N, D]`` and the output layer
``weight [V, D]``, forward and backward (the gradients of both) as one step,
against the ways to get the same or a cheaper result:

``linear``
    Ours from hidden states: ``linear_cringe_loss`` /
    ``linear_pairwise_cringe_loss`` (row chunks; never the ``[N, V]`` logits).
``logits+cringe``
    The logits path: ``hidden @ weight.T``, then ``cringe_loss`` /
    ``pairwise_cringe_loss`` (default options), autograd through both.
``matmuls``
    The floor: the logits matmul and the two backward matmuls
    (``grad_logits @ weight``, ``grad_logits.T @ hidden``) and nothing else
    (the logits buffer stands in for their gradient).
``matmuls+kernel``, ``matmuls+kernel-single-pass``
    The floor plus our loss kernel on the logits, with the gradient written
    over the logits (``inplace_backward=True``) or in the forward
    (``single_pass=True``); the time target of the fused path is 1.1x
    the faster of the two.
``logits+ce``, ``liger-flce``, ``cce``
    Plain cross-entropy (no Cringe term, so a floor rather than a
    like-for-like): ``F.cross_entropy`` of the logits, Liger-Kernel's fused
    linear cross-entropy and Apple's Cut Cross-Entropy, the last two when
    installed and on CUDA (both are Triton GPU kernels).

Workload: ``N`` rows as ``N / T`` sequences of ``T`` tokens (binary: half of
the sequences negative; pairwise: ``N / 2`` chosen and ``N / 2`` rejected
rows), hidden standard normal, ``weight`` normal with variance ``1 / D`` (so
logits are about standard normal), targets uniform, no ignored row, draws
fixed per point so every Cringe provider samples the same columns.

Measured: median time of the whole step (the providers sharing a
workload sampled in interleaved rounds, so a shared machine's changing
load reaches all of them alike), peak memory beyond the inputs,
parameters and their gradients (:mod:`.steps`), ratios to the logits path,
to the floors and to the cross-entropy libraries measured in the same run,
and the achieved matmul rate against the FLOP floor ``6 * N * D * V``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import env as env_mod
from . import output, steps, timing
from .config import DTYPES
from .progress import Progress
from .workloads import shape_rows

CRINGE = ("binary", "pairwise")
#: The logits path each loss is compared with.
LOGITS_PATH = {"binary": "logits+cringe", "pairwise": "logits+cringe", "ce": "logits+ce"}
FLOOR_KERNEL = ("matmuls+kernel", "matmuls+kernel-single-pass")

COLUMNS = (
    "device", "provider", "loss", "N", "D", "V", "dtype", "status", "reason",
    "median_ms", "p20_ms", "p80_ms", "reps", "first_call_ms", "peak_mem_mib", "kept_mib",
    "matmul_tflops", "speedup_vs_logits", "mem_vs_logits", "time_vs_matmuls", "time_vs_matmuls_kernel",
    "speedup_vs_liger_flce", "speedup_vs_cce", "note",
)

#: Goals of the fused path (issue 18): memory at most this fraction of the
#: logits path's; on a GPU also time within 1.1x of matmuls + kernel.
MEMORY_GOAL = {"cuda": 1 / 8, "cpu": 1 / 4}
FLOOR_GOAL = 1.1

FLOP_MODEL_TEXT = ("FLOPs = 6 * N * D * V: the logits matmul (2 N D V) and the two backward matmuls "
                   "(grad_hidden, grad_weight: 2 N D V each); matmul_tflops = that / median time, for every "
                   "provider (those that compute nothing else are closest to the device's matmul rate)")
MEMORY_TEXT = ("peak memory beyond inputs, parameters and gradients: the meter's peak above the memory "
               "allocated before the step, minus the bytes of the gradients the step returns (kept_mib)")


@dataclass(frozen=True)
class HiddenConfig:
    """One hidden-state sweep (every combination of the sizes is a point).

    Attributes
    ----------
    device, preset : str
    row_counts, hidden_sizes, vocab_sizes : tuple of int
        ``N``, ``D``, ``V``.
    dtypes : tuple of str
        Keys of :data:`.config.DTYPES`.
    losses : tuple of str
        Subset of ``("binary", "pairwise")``; cross-entropy providers run
        on the binary workload.
    providers : tuple of str or None
        Names to run (None: all).
    k : int
    chunk_size : int or None
        Passed to the fused losses (None: their own choice).
    seq_len : int
        Tokens per sequence.
    warmup, min_reps, max_reps : int
    warmup_ms : float or None
    rep_ms : float
    time_budget_s : float or None
    seed : int
    threads : int or None
    value_checks : bool
    out_dir : str or None
    plot, progress : bool
    """

    device: str = "cpu"
    preset: str = "default"
    row_counts: Tuple[int, ...] = (8192,)
    hidden_sizes: Tuple[int, ...] = (512,)
    vocab_sizes: Tuple[int, ...] = (32000,)
    dtypes: Tuple[str, ...] = ("fp32",)
    losses: Tuple[str, ...] = CRINGE
    providers: Optional[Tuple[str, ...]] = None
    k: int = 5
    chunk_size: Optional[int] = None
    seq_len: int = 1024
    warmup: int = 1
    warmup_ms: Optional[float] = None
    min_reps: int = 3
    max_reps: int = 10
    rep_ms: float = 1000.0
    time_budget_s: Optional[float] = None
    seed: int = 0
    threads: Optional[int] = None
    value_checks: bool = False
    out_dir: Optional[str] = None
    plot: bool = True
    progress: bool = True

    def with_(self, **changes) -> "HiddenConfig":
        return replace(self, **changes)

    def points(self) -> List[Tuple[int, int, int, str]]:
        """Every ``(N, D, V, dtype)``, smallest logits first."""
        pts = [(N, D, V, dt) for dt in self.dtypes for N in self.row_counts for D in self.hidden_sizes
               for V in self.vocab_sizes]
        return sorted(pts, key=lambda p: (p[0] * p[2] * DTYPES[p[3]].itemsize, p[1]))


def preset(device: str, name: str = "default") -> HiddenConfig:
    """The hidden-state sweep ``name`` for ``device``'s type.

    The default points are issue 18's goal shapes: on a GPU N=16384, D=4096,
    V=128256 in bf16 (Llama 3's vocabulary and a 8B-class hidden size); on
    the CPU N=8192, D=512, V=32000 in float32.
    """
    if name not in ("quick", "default", "full"):
        raise ValueError(f"preset must be quick, default or full, got {name!r}")
    if torch.device(device).type == "cuda":
        base = HiddenConfig(device=device, preset=name, row_counts=(16384,), hidden_sizes=(4096,),
                            vocab_sizes=(128256,), dtypes=("bf16",), seq_len=1024, warmup=2, min_reps=5,
                            max_reps=50, rep_ms=300.0)
        if name == "quick":
            return base.with_(row_counts=(4096,), vocab_sizes=(32000,), min_reps=3, max_reps=10, rep_ms=50.0)
        if name == "full":
            return base.with_(row_counts=(4096, 16384), vocab_sizes=(32000, 128256, 256000),
                              dtypes=("bf16", "fp32"))
        return base
    base = HiddenConfig(device=device, preset=name, row_counts=(8192,), hidden_sizes=(512,), vocab_sizes=(32000,),
                        dtypes=("fp32",), seq_len=1024, warmup=1, min_reps=3, max_reps=5, rep_ms=1000.0)
    if name == "quick":
        return base.with_(row_counts=(64,), hidden_sizes=(32,), vocab_sizes=(512,), seq_len=16, max_reps=3,
                          rep_ms=20.0, warmup_ms=5.0)
    if name == "full":
        return base.with_(row_counts=(2048, 8192), vocab_sizes=(32000, 128256), min_reps=5)
    return base


# ---------------------------------------------------------------- workload


@dataclass
class HiddenWorkload:
    """Inputs of one ``(loss, N, D, V, dtype)`` point.

    Attributes
    ----------
    hidden : tuple of Tensor
        Binary: ``([B, T, D],)``; pairwise: ``(chosen [P, T, D], rejected
        [P, T, D])`` with ``P = B / 2``; leaves requiring grad.
    weight : Tensor ``[V, D]``
        Requires grad.
    targets : tuple of Tensor
        int64, one per hidden tensor, shape ``hidden.shape[:-1]``.
    feedback : Tensor ``[B, 1]`` bool or None
        Binary only: even sequences positive.
    uniform : Tensor
        float32 draws, the first target's shape.
    """

    loss: str
    N: int
    D: int
    V: int
    dtype: str
    hidden: tuple
    weight: torch.Tensor
    targets: tuple
    feedback: Optional[torch.Tensor]
    uniform: torch.Tensor

    @property
    def leaves(self) -> tuple:
        """What the gradients are taken of: the hidden states, then the weight."""
        return tuple(self.hidden) + (self.weight,)


def make_workload(loss: str, N: int, D: int, V: int, dtype: str, device, seq_len: int,
                  seed: int = 0) -> HiddenWorkload:
    """Build the inputs of one point (``loss`` ``"binary"`` or ``"pairwise"``)."""
    device = torch.device(device)
    tdtype = DTYPES[dtype]
    B, T = shape_rows(N, seq_len)
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(*shape, std=1.0):
        # Filled in place: a bf16 tensor never passes through an fp32 copy.
        x = torch.empty(*shape, dtype=tdtype, device=device)
        with torch.no_grad():
            x.normal_(0.0, std, generator=gen)
        return x.requires_grad_(True)

    weight = normal(V, D, std=D ** -0.5)
    if loss == "binary":
        hidden = (normal(B, T, D),)
        feedback = (torch.arange(B, device=device) % 2 == 0).unsqueeze(1)
        shape = (B, T)
    elif loss == "pairwise":
        hidden = (normal(B // 2, T, D), normal(B // 2, T, D))
        feedback = None
        shape = (B // 2, T)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    targets = tuple(torch.randint(0, V, shape, generator=gen, device=device) for _ in hidden)
    uniform = torch.rand(shape, generator=gen, device=device)
    return HiddenWorkload(loss, N, D, V, dtype, hidden, weight, targets, feedback, uniform)


# ---------------------------------------------------------------- providers


def _cringe_on_logits(w: HiddenWorkload, logits: tuple, k: int, **opts) -> torch.Tensor:
    from .. import cringe_loss, pairwise_cringe_loss

    if w.loss == "binary":
        return cringe_loss(logits[0], w.targets[0], w.feedback, uniform=w.uniform, k=k, **opts)
    return pairwise_cringe_loss(logits[0], w.targets[0], logits[1], w.targets[1], uniform=w.uniform, k=k, **opts)


def _backward_matmuls(w: HiddenWorkload, grads: tuple) -> tuple:
    """``(grad_hidden..., grad_weight)`` from the logits' gradients (no autograd)."""
    with torch.no_grad():
        grad_weight = None
        grad_hidden = []
        for h, g in zip(w.hidden, grads):
            g2 = g.reshape(-1, w.V)
            grad_hidden.append((g2 @ w.weight).view(h.shape))
            part = g2.T @ h.reshape(-1, w.D)
            grad_weight = part if grad_weight is None else grad_weight.add_(part)
    return tuple(grad_hidden) + (grad_weight,)


def build_linear(k: int, chunk_size: Optional[int]) -> Callable:
    def build(w: HiddenWorkload):
        from ..linear import linear_cringe_loss, linear_pairwise_cringe_loss

        opts = {"k": k}
        if chunk_size is not None:
            opts["chunk_size"] = chunk_size

        def step():
            if w.loss == "binary":
                loss = linear_cringe_loss(w.hidden[0], w.weight, w.targets[0], w.feedback, uniform=w.uniform, **opts)
            else:
                loss = linear_pairwise_cringe_loss(w.hidden[0], w.targets[0], w.hidden[1], w.targets[1], w.weight,
                                                   uniform=w.uniform, **opts)
            return torch.autograd.grad(loss, w.leaves)
        return step
    return build


def build_logits_cringe(k: int) -> Callable:
    def build(w: HiddenWorkload):
        def step():
            logits = tuple(F.linear(h, w.weight) for h in w.hidden)
            return torch.autograd.grad(_cringe_on_logits(w, logits, k), w.leaves)
        return step
    return build


def build_matmuls(w: HiddenWorkload):
    def step():
        with torch.no_grad():
            out = []
            for h in w.hidden:
                # The logits stand in for their own gradient: same shape,
                # same dtype, and no other work.
                g = F.linear(h, w.weight)
                out.append(g)
            return _backward_matmuls(w, tuple(out))
    return step


def build_matmuls_kernel(k: int, single_pass: bool) -> Callable:
    def build(w: HiddenWorkload):
        opts = {"single_pass": True} if single_pass else {"inplace_backward": True}

        def step():
            with torch.no_grad():
                logits = tuple(F.linear(h, w.weight) for h in w.hidden)
            logits = tuple(x.requires_grad_(True) for x in logits)
            grads = torch.autograd.grad(_cringe_on_logits(w, logits, k, **opts), logits)
            del logits
            return _backward_matmuls(w, grads)
        return step
    return build


def build_logits_ce(w: HiddenWorkload):
    def step():
        logits = F.linear(w.hidden[0], w.weight)
        loss = F.cross_entropy(logits.reshape(-1, w.V), w.targets[0].reshape(-1))
        return torch.autograd.grad(loss, w.leaves)
    return step


def build_liger_flce(w: HiddenWorkload):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    module = LigerFusedLinearCrossEntropyLoss()

    def step():
        loss = module(w.weight, w.hidden[0].reshape(-1, w.D), w.targets[0].reshape(-1))
        return torch.autograd.grad(loss, w.leaves)
    return step


def build_cce(w: HiddenWorkload):
    from cut_cross_entropy import linear_cross_entropy

    def step():
        loss = linear_cross_entropy(w.hidden[0], w.weight, w.targets[0])
        return torch.autograd.grad(loss, w.leaves)
    return step


def gpu_library_unavailable(module: str, what: str, device: torch.device) -> str:
    """Why a Triton GPU library cannot run here, or ``""``."""
    if device.type != "cuda":
        return f"{what} is a Triton GPU kernel; the device is not CUDA"
    try:
        importlib.import_module(module)
    except Exception as err:
        return f"{module} is not installed or does not import ({type(err).__name__}: {err})"
    return ""


def linear_unavailable() -> str:
    """Why ``cringe_kernels.linear`` cannot be used, or ``""``."""
    try:
        from ..linear import linear_cringe_loss, linear_pairwise_cringe_loss  # noqa: F401
    except Exception as err:
        return f"cringe_kernels.linear does not import ({type(err).__name__}: {err})"
    return ""


def all_providers(device, k: int = 5, chunk_size: Optional[int] = None) -> List[steps.StepProvider]:
    """Every hidden-state provider, runnable here or skipped with a reason."""
    device = torch.device(device)
    P = steps.StepProvider
    chunk = f", chunk_size={chunk_size}" if chunk_size else ""
    return [
        P("linear", "cringe", build_linear(k, chunk_size),
          note=f"ours from hidden states: linear_cringe_loss / linear_pairwise_cringe_loss{chunk}",
          unavailable=linear_unavailable()),
        P("logits+cringe", "cringe", build_logits_cringe(k),
          note="hidden @ weight.T, then cringe_loss / pairwise_cringe_loss (defaults), autograd"),
        P("matmuls", "cringe", build_matmuls,
          note="floor: logits matmul + its two backward matmuls, nothing else"),
        P("matmuls+kernel", "cringe", build_matmuls_kernel(k, single_pass=False),
          note="floor + our loss kernel, gradient over the logits (inplace_backward=True)"),
        P("matmuls+kernel-single-pass", "cringe", build_matmuls_kernel(k, single_pass=True),
          note="floor + our loss kernel, gradient in the forward (single_pass=True)"),
        P("logits+ce", "ce", build_logits_ce, note="hidden @ weight.T, then F.cross_entropy (plain CE)"),
        P("liger-flce", "ce", build_liger_flce, note="Liger-Kernel fused linear cross-entropy (plain CE)",
          unavailable=gpu_library_unavailable("liger_kernel.transformers", "Liger-Kernel's fused linear CE",
                                              device)),
        P("cce", "ce", build_cce, note="Cut Cross-Entropy, linear_cross_entropy impl='cce' (plain CE)",
          unavailable=gpu_library_unavailable("cut_cross_entropy", "Cut Cross-Entropy", device)),
    ]


def select(providers: List[steps.StepProvider], names: Optional[List[str]]) -> List[steps.StepProvider]:
    """The providers named (None: all); an unknown name raises with the known ones."""
    if not names:
        return list(providers)
    known = [p.name for p in providers]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown hidden-state provider {name!r}; known: {', '.join(known)}")
    return [p for p in providers if p.name in names]


# ---------------------------------------------------------------- sweep


@dataclass
class HiddenResult:
    config: HiddenConfig
    records: List[dict]
    env: dict
    memory_method: str
    elapsed_s: float = 0.0
    interrupted: bool = False


def _tasks(cfg: HiddenConfig, providers: List[steps.StepProvider]):
    """``(point, workload loss, record loss, provider)`` in execution order.

    Cross-entropy runs once per point, on the binary inputs (the same rows
    and columns as either loss), right after the binary Cringe providers.
    """
    cringe = [p for p in providers if p.family == "cringe"]
    ce = [p for p in providers if p.family == "ce"]
    out = []
    for point in cfg.points():
        for loss in cfg.losses:
            out += [(point, loss, loss, p) for p in cringe]
            if loss == "binary":
                out += [(point, "binary", "ce", p) for p in ce]
        if "binary" not in cfg.losses:
            out += [(point, "binary", "ce", p) for p in ce]
    return out


def run(cfg: HiddenConfig, providers: Optional[List[steps.StepProvider]] = None,
        on_record: Optional[Callable[[dict], None]] = None) -> HiddenResult:
    """Measure every provider at every point of ``cfg``.

    Nothing aborts the sweep: an unavailable provider, an out-of-memory, an
    exhausted budget and an exception become records with ``status``
    ``skipped`` or ``error`` and a ``reason``.
    """
    from ..validate import set_value_checks

    device = torch.device(cfg.device)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if providers is None:
        providers = select(all_providers(device, cfg.k, cfg.chunk_size),
                           list(cfg.providers) if cfg.providers else None)
    environment = env_mod.collect(device)
    timer = timing.make_timer(device, cfg.warmup, cfg.rep_ms, cfg.min_reps, cfg.max_reps, cfg.warmup_ms)
    meter = timing.make_memory_meter(device)
    result = HiddenResult(cfg, [], environment, meter.method if meter.available else f"NA: {meter.reason}")
    previous_checks = set_value_checks(cfg.value_checks)
    budget = steps.Budget(cfg.time_budget_s)
    tasks = _tasks(cfg, providers)
    progress = Progress(len(tasks), enabled=cfg.progress)
    groups: List[Tuple[tuple, list]] = []
    for point, loss, record_loss, p in tasks:
        if not groups or groups[-1][0] != (point, loss):
            groups.append(((point, loss), []))
        groups[-1][1].append((record_loss, p))
    workload = None
    try:
        for ((N, D, V, dtype), loss), group in groups:
            runnable = [(rl, p) for rl, p in group if not p.unavailable]
            measured, reason = {}, ""
            if runnable and budget.exhausted():
                reason = budget.reason()
            elif runnable:
                try:
                    workload = make_workload(loss, N, D, V, dtype, device, cfg.seq_len, cfg.seed)
                except Exception as err:  # out of memory, or a shape that cannot be split
                    reason = f"building inputs failed: {type(err).__name__}: {str(err).splitlines()[0]}"
                else:
                    # Interleaved: the providers sharing these inputs are
                    # sampled in rounds (see steps.measure_group).
                    measured = steps.measure_group(
                        [(p.name, lambda p=p: p.build(workload)) for _, p in runnable], timer, meter, device)
                workload = None
                steps.release(device)
            for record_loss, p in group:
                record = {"device": cfg.device, "provider": p.name, "loss": record_loss, "N": N, "D": D, "V": V,
                          "dtype": dtype, "status": "ok", "reason": "", "note": p.note}
                if p.unavailable:
                    record.update(status="skipped", reason=p.unavailable)
                elif reason:
                    record.update(status="skipped", reason=reason)
                else:
                    record.update(measured[p.name])
                if record["status"] == "ok":
                    record["matmul_tflops"] = 6 * N * D * V / (record["median_ms"] * 1e-3) / 1e12
                result.records.append(record)
                if on_record is not None:
                    on_record(record)
                shown = (f"{record['median_ms']:.1f} ms" if record["status"] == "ok"
                         else f"{record['status']}: {record['reason'][:70]}")
                progress.update(f"{p.name} {record_loss} N={N} D={D} V={V} {dtype}", shown)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        workload = None
        progress.close()
        set_value_checks(previous_checks)
        torch.set_num_threads(previous_threads)
    add_ratios(result.records)
    try:
        result.env["load_average_end"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    result.elapsed_s = time.perf_counter() - started
    return result


def _point(r: dict) -> tuple:
    return (r["N"], r["D"], r["V"], r["dtype"])


def add_ratios(records: List[dict]) -> None:
    """Same-run ratios of each record (see :data:`COLUMNS`).

    ``speedup_vs_logits`` = logits path time / this time and
    ``mem_vs_logits`` = this peak / logits path peak, against the logits
    path of the same loss (``logits+ce`` for cross-entropy rows);
    ``time_vs_matmuls`` and ``time_vs_matmuls_kernel`` = this time / the
    floor's (the faster of the two kernel variants); the speedups against
    Liger's and CCE's fused cross-entropy (Cringe rows only).
    """
    cringe = lambda r: r["loss"] in CRINGE
    steps.fill_ratio(records, _point, "speedup_vs_logits", lambda r: [(r["loss"], LOGITS_PATH[r["loss"]])],
                     "median_ms", invert=True)
    steps.fill_ratio(records, _point, "mem_vs_logits", lambda r: [(r["loss"], LOGITS_PATH[r["loss"]])],
                     "peak_mem_mib")
    # The floor of a cross-entropy row is the binary workload's matmuls.
    steps.fill_ratio(records, _point, "time_vs_matmuls",
                     lambda r: [(r["loss"] if cringe(r) else "binary", "matmuls")], "median_ms")
    steps.fill_ratio(records, _point, "time_vs_matmuls_kernel",
                     lambda r: [(r["loss"], name) for name in FLOOR_KERNEL] if cringe(r) else [], "median_ms")
    steps.fill_ratio(records, _point, "speedup_vs_liger_flce",
                     lambda r: [("ce", "liger-flce")] if cringe(r) else [], "median_ms", invert=True)
    steps.fill_ratio(records, _point, "speedup_vs_cce",
                     lambda r: [("ce", "cce")] if cringe(r) else [], "median_ms", invert=True)


# ---------------------------------------------------------------- output


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def goal_lines(records: List[dict], device_type: str) -> List[str]:
    """Issue 18's goals, checked on the ``linear`` rows: met or missed, and by how much."""
    lines = []
    mem_goal = MEMORY_GOAL.get(device_type, MEMORY_GOAL["cuda"])
    for r in records:
        if r["provider"] != "linear" or r["status"] != "ok":
            continue
        where = f"{r['loss']} N={r['N']} D={r['D']} V={r['V']} {r['dtype']}"
        mem = r.get("mem_vs_logits")
        if mem is not None:
            verdict = "met" if mem <= mem_goal else f"MISSED by {mem / mem_goal:.2f}x"
            lines.append(f"  {where}: memory {mem:.3f} of the logits path's (goal <= 1/{round(1 / mem_goal)}): "
                         f"{verdict}")
        speed = r.get("speedup_vs_logits")
        if speed is not None and device_type == "cpu":
            verdict = "met" if speed > 1 else f"MISSED (logits path {1 / speed:.2f}x as fast)"
            lines.append(f"  {where}: {speed:.2f}x the logits path's speed (goal > 1): {verdict}")
        floor = r.get("time_vs_matmuls_kernel")
        if floor is not None and device_type == "cuda":
            verdict = "met" if floor <= FLOOR_GOAL else f"MISSED by {floor / FLOOR_GOAL:.2f}x"
            lines.append(f"  {where}: {floor:.2f}x the time of matmuls + kernel (goal <= {FLOOR_GOAL}): {verdict}")
        elif floor is not None:
            lines.append(f"  {where}: {floor:.2f}x the time of matmuls + kernel (the {FLOOR_GOAL}x goal is a GPU's; "
                         "for reference)")
        for column, name in (("speedup_vs_liger_flce", "Liger's fused linear CE"), ("speedup_vs_cce", "CCE")):
            if r.get(column) is not None:
                verdict = "met" if r[column] > 1 else "MISSED"
                lines.append(f"  {where}: {r[column]:.2f}x {name}'s speed (goal > 1): {verdict}")
    return lines


def summary(result: HiddenResult) -> str:
    """A table per point, then the goals."""
    env = result.env
    out = [
        f"hidden-state losses on {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
        f"{env.get('usable_cores')} usable cores, torch threads {env.get('torch_threads')}, load avg start "
        f"{output.load_text(env.get('load_average_start'))} end {output.load_text(env.get('load_average_end'))}",
        f"commit {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}, {env.get('date_utc')}, "
        f"took {result.elapsed_s:.0f} s" + (" (INTERRUPTED)" if result.interrupted else ""),
        f"one step = forward + backward (gradients of hidden and weight); k={result.config.k}; "
        f"memory: {MEMORY_TEXT} ({result.memory_method})",
        FLOP_MODEL_TEXT,
    ]
    header = ["provider", "loss", "ms", "MiB", "x logits speed", "mem / logits", "/ matmuls",
              "/ (matmuls+kernel)", "TFLOP/s"]
    for point in dict.fromkeys(_point(r) for r in result.records):
        rows, reasons = [], []
        for r in result.records:
            if _point(r) != point:
                continue
            if r["status"] != "ok":
                rows.append([r["provider"], r["loss"], r["status"]] + ["-"] * 6)
                reasons.append(f"  {r['provider']} {r['loss']}: {r['status']}: {r['reason']}")
                continue
            rows.append([r["provider"], r["loss"], f"{r['median_ms']:.1f}", _f(r.get("peak_mem_mib"), ".0f"),
                         _f(r.get("speedup_vs_logits"), ".2f"), _f(r.get("mem_vs_logits"), ".3f"),
                         _f(r.get("time_vs_matmuls"), ".2f"), _f(r.get("time_vs_matmuls_kernel"), ".2f"),
                         _f(r.get("matmul_tflops"), ".2f")])
        N, D, V, dtype = point
        out += ["", f"N={N} D={D} V={V} {dtype}"] + output.table(header, rows) + reasons
    goals = goal_lines(result.records, torch.device(result.config.device).type)
    if goals:
        out += ["", "goals (issue 18), ratios from this run:"] + goals
    return "\n".join(out)


def plot(records: List[dict], out_dir: str, title: str = "") -> Tuple[List[str], str]:
    """One PNG per point: time (left) and peak memory (right), a bar per provider and loss."""
    plt = output.pyplot()
    if plt is None:
        return [], output.NO_MATPLOTLIB
    paths = []
    for point in dict.fromkeys(_point(r) for r in records):
        ok = [r for r in records if _point(r) == point and r["status"] == "ok"]
        if not ok:
            continue
        labels = [f"{r['provider']}\n{r['loss']}" for r in ok]
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(ok)), 5))
        colors = ["tab:red" if r["provider"] == "linear" else "tab:gray" if r["loss"] == "ce" else "tab:blue"
                  for r in ok]
        axes[0].bar(range(len(ok)), [r["median_ms"] for r in ok], color=colors)
        axes[0].set_ylabel("median time of one step (ms)")
        axes[1].bar(range(len(ok)), [r.get("peak_mem_mib") or 0 for r in ok], color=colors)
        axes[1].set_ylabel("peak memory beyond inputs, params, grads (MiB)")
        for ax in axes:
            ax.set_xticks(range(len(ok)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize="small")
            ax.grid(True, axis="y", alpha=0.3)
        N, D, V, dtype = point
        fig.suptitle(f"hidden states N={N} D={D} V={V} {dtype}" + (f"\n{title}" if title else ""),
                     fontsize="small")
        fig.tight_layout()
        path = os.path.join(out_dir, f"plot_hidden_{dtype}_N{N}_D{D}_V{V}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths, ""


def write(result: HiddenResult, out_dir: str) -> Tuple[str, List[str]]:
    """CSV, JSON, summary and plots into ``out_dir``; returns the summary and the files written."""
    text = summary(result)
    timing = ("CUDA events per call, L2 flushed before each call, warm-up excluded"
              if result.config.device.startswith("cuda") else "time.perf_counter per call, warm-up excluded")
    goals = {"memory_vs_logits_at_most": MEMORY_GOAL, "time_vs_matmuls_kernel_at_most_gpu": FLOOR_GOAL}
    notes = output.write_mode(result, out_dir, COLUMNS, plot, text, "hidden states (--linear)", MEMORY_TEXT, timing,
                              extra={"flop_model": FLOP_MODEL_TEXT, "goals": goals})
    return text, notes
