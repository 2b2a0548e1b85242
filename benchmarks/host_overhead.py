"""Host time of one loss call, at a size where the kernels cost next to nothing.

The GPU waits for the host between the start of a loss call and its first
large kernel: everything Python does before that launch (argument checks,
the value checks, masks, ``autograd.Function``, the op dispatcher,
allocation) is time the device sits idle, added to every call. At the goal
point (H100, N=16384, V=128256) the loss took 0.45-0.83 ms more than its
kernels (benchmarks/results/cuda-h100-3); this script measures where the host
part of that goes, on any device.

For each kernel backend and each path (two-pass, single pass), at a tiny
problem (``--N`` rows of ``--V`` columns, default 8 x 64), it times:

``fwd``
    host time of ``cringe_loss(...)`` alone (call to return, no sync);
``fwd+bwd``
    host time of the loss and ``torch.autograd.grad`` on it;
``to_launch``
    host time from the call to the forward kernel's launch (the native
    backends: it wraps the compiled modules' entry points; Triton ``-``),

each with the value checks on (the default) and off, as the median of
``--reps`` calls after a warm-up. On CUDA it synchronises once per call
outside the timed region so that a full launch queue cannot slow the host.

Usage::

    python benchmarks/host_overhead.py [--device cpu|cuda] [--out DIR]

Writes ``DIR/host_overhead.csv`` and prints a table (DIR default:
benchmarks/results/host-overhead-<device>).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

import torch

import cringe_kernels as ck
from cringe_kernels.bench.providers import kernel_backends


class _LaunchClock:
    """Stamps the time at which a native backend's forward kernel is launched.

    The CPU backend calls ``_C_cpu.forward`` through its module global: that
    is wrapped. The CUDA launcher holds its module in a closure, but looks
    up ``_forward_gate`` (its top-k strategy) as a global right in the
    launch call: that is wrapped. The host time from the loss call to the
    stamp is what the device waits before the loss's one large kernel.
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


def _case(N: int, V: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, N, V, generator=g).to(device).requires_grad_(True)
    target = torch.randint(0, V, (1, N), generator=g).to(device)
    feedback = (torch.arange(N) % 2 == 0).reshape(1, N).to(device)
    uniform = torch.rand(1, N, generator=g).to(device)
    return logits, target, feedback, uniform


def measure(backend: str, single_pass: bool, checks: bool, N: int, V: int, device: torch.device, reps: int,
            clock: _LaunchClock) -> dict:
    logits, target, feedback, uniform = _case(N, V, device)
    opts = dict(k=5, backend=backend, uniform=uniform, single_pass=single_pass)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fwd, full, to_launch = [], [], []
    previous = ck.set_value_checks(checks)
    try:
        for i in range(reps + reps // 5):
            sync()
            clock.stamp = None
            t0 = time.perf_counter()
            loss = ck.cringe_loss(logits, target, feedback, **opts)
            t1 = time.perf_counter()
            torch.autograd.grad(loss, logits)
            t2 = time.perf_counter()
            if i >= reps // 5:  # the first fifth warms up
                fwd.append(t1 - t0)
                full.append(t2 - t0)
                if clock.stamp is not None:
                    to_launch.append(clock.stamp - t0)
        sync()
    finally:
        ck.set_value_checks(previous)
    us = lambda xs: round(statistics.median(xs) * 1e6, 1) if xs else "-"  # noqa: E731
    return dict(backend=backend, path="single-pass" if single_pass else "two-pass",
                value_checks="on" if checks else "off", to_launch_us=us(to_launch), fwd_us=us(fwd),
                fwd_bwd_us=us(full))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--N", type=int, default=8)
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"host-overhead-{device.type}")
    os.makedirs(out, exist_ok=True)

    clock = _LaunchClock()
    clock.install()
    rows = []
    try:
        for backend in kernel_backends(device):
            for single_pass in (False, True):
                for checks in (True, False):
                    rows.append(measure(backend, single_pass, checks, args.N, args.V, device, args.reps, clock))
    finally:
        clock.uninstall()

    header = (f"host time per loss call, median of {args.reps} (us); N={args.N}, V={args.V}, k=5, device {device}; "
              f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} cpus, "
              f"torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(header)
    cols = ("backend", "path", "value_checks", "to_launch_us", "fwd_us", "fwd_bwd_us")
    print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>13}" for c in cols))
    with open(os.path.join(out, "host_overhead.csv"), "w", newline="") as f:
        f.write(f"# {header}\n")
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
