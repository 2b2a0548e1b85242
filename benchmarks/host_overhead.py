"""Host time of a loss call at a size where the kernels cost next to nothing.

The device waits for the host between the start of a loss call and its
first large kernel, and a small call is all host time: argument checks,
value checks, the autograd node, the ops, allocation. This script measures
forward + backward (``torch.autograd.grad``) of ``cringe_loss`` (``--N``
rows of ``--V`` columns, default 8 x 64) and ``pairwise_cringe_loss`` (2
pairs of N/4 + N/4 rows), per kernel backend, single pass (the default)
and two passes, value checks on and off, beside ``F.cross_entropy`` forward
+ backward on the same logits **in the same run**, as the median of
``--reps`` calls on one thread. ``to_launch_us`` is the host time from the
call to the forward kernel's launch (native backends; ``-`` elsewhere).

Usage::

    python benchmarks/host_overhead.py [--device cpu|cuda] [--out DIR]

Writes ``DIR/host_overhead.csv`` and prints the table (DIR default:
benchmarks/results/host-overhead-<device>).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import cringe_kernels as ck
from cringe_kernels.bench.providers import kernel_backends


class _LaunchClock:
    """Stamps the time at which a native backend's forward kernel is launched.

    The CPU backend calls ``_C_cpu.forward`` through its module global: that
    is wrapped. The CUDA launcher looks up its launch shape in
    :mod:`cringe_kernels.backends.heuristics` right before the binding call:
    those lookups are wrapped. The host time from the loss call to the stamp
    is what the device waits before the loss's one large kernel.
    """

    def __init__(self):
        self.stamp = None
        self._installed = []

    def _wrap(self, owner, attr, stamped) -> None:
        self._installed.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, stamped)

    def install(self) -> bool:
        clock = self
        try:
            from cringe_kernels.backends import cpu_backend
        except ImportError:
            cpu_backend = None
        if cpu_backend is not None and cpu_backend._C_cpu is not None:
            module = cpu_backend._C_cpu

            class Stamped:
                def __getattr__(self, name):
                    return getattr(module, name)

                def forward(self, *args):
                    clock.stamp = time.perf_counter()
                    return module.forward(*args)

            self._wrap(cpu_backend, "_C_cpu", Stamped())
        try:
            from cringe_kernels.backends import cuda_backend
        except ImportError:
            cuda_backend = None
        if cuda_backend is not None and cuda_backend._C_cuda is not None:
            from cringe_kernels.backends import heuristics

            for name in ("row_pieces", "single_pass_shape"):
                def stamped(*args, _rule=getattr(heuristics, name)):
                    clock.stamp = time.perf_counter()
                    return _rule(*args)

                self._wrap(heuristics, name, stamped)
        return bool(self._installed)

    def uninstall(self) -> None:
        for owner, attr, original in reversed(self._installed):
            setattr(owner, attr, original)
        self._installed = []


def _timed(fn, reps: int, sync, clock: _LaunchClock):
    """Median host time of ``fn()`` (call to return) and of call to launch, in us."""
    full, to_launch = [], []
    for i in range(reps + reps // 5):
        sync()
        clock.stamp = None
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if i >= reps // 5:  # the first fifth warms up
            full.append(t1 - t0)
            if clock.stamp is not None:
                to_launch.append(clock.stamp - t0)
    sync()
    us = lambda xs: round(statistics.median(xs) * 1e6, 1) if xs else "-"  # noqa: E731
    return us(full), us(to_launch)


def measure(N: int, V: int, device: torch.device, reps: int, clock: _LaunchClock) -> list:
    """One row per (loss, backend, path, value checks): host us of forward + backward."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, N, V, generator=g).to(device).requires_grad_(True)
    target = torch.randint(0, V, (1, N), generator=g).to(device)
    feedback = (torch.arange(N) % 2 == 0).reshape(1, N).to(device)
    half = N // 2
    chosen = torch.randn(2, half // 2, V, generator=g).to(device).requires_grad_(True)
    rejected = torch.randn(2, half // 2, V, generator=g).to(device).requires_grad_(True)
    t_w = torch.randint(0, V, (2, half // 2), generator=g).to(device)
    t_l = torch.randint(0, V, (2, half // 2), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    ce_us, _ = _timed(lambda: torch.autograd.grad(
        torch.nn.functional.cross_entropy(logits.view(-1, V), target.view(-1)), logits), reps, sync, clock)
    rows = [dict(loss="F.cross_entropy", backend="torch", path="-", value_checks="-", fwd_bwd_us=ce_us,
                 to_launch_us="-", ratio_to_ce=1.0)]
    for backend in kernel_backends(device):
        for single_pass in (None, False):
            for checks in ("on", "off"):
                with ck.value_checks(checks):
                    binary = lambda: torch.autograd.grad(ck.cringe_loss(  # noqa: E731
                        logits, target, feedback, backend=backend, single_pass=single_pass), logits)
                    pairwise = lambda: torch.autograd.grad(ck.pairwise_cringe_loss(  # noqa: E731
                        chosen, t_w, rejected, t_l, backend=backend, single_pass=single_pass), (chosen, rejected))
                    for name, fn in (("cringe_loss", binary), ("pairwise_cringe_loss", pairwise)):
                        us, launch = _timed(fn, reps, sync, clock)
                        rows.append(dict(loss=name, backend=backend,
                                         path="single pass (auto)" if single_pass is None else "two passes",
                                         value_checks=checks, fwd_bwd_us=us, to_launch_us=launch,
                                         ratio_to_ce=round(us / ce_us, 2)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--N", type=int, default=8, help="rows of the binary call; the pairwise call has 2 pairs "
                        "of N/4 chosen and N/4 rejected rows")
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the goal is stated at 1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"host-overhead-{device.type}")
    os.makedirs(out, exist_ok=True)

    clock = _LaunchClock()
    clock.install()
    try:
        rows = measure(args.N, args.V, device, args.reps, clock)
    finally:
        clock.uninstall()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    header = (f"host time of forward + backward, median of {args.reps} calls (us); binary N={args.N}, V={args.V}; "
              f"pairwise 2 pairs of {args.N // 4}+{args.N // 4} rows; k=5; device {device}; commit {commit}; "
              f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} cpus, "
              f"torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(header)
    cols = ("loss", "backend", "path", "value_checks", "fwd_bwd_us", "ratio_to_ce", "to_launch_us")
    print("  ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>20}" for c in cols))
    with open(os.path.join(out, "host_overhead.csv"), "w", newline="") as f:
        f.write(f"# {header}\n")
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
