"""Where a whole loss call spends its time beyond its kernels, on the device.

At the goal point the loss (forward + backward) took ~0.4 ms (two-pass) to
~0.65 ms (single pass) more than the kernel times of the launch sweep
(benchmarks/results/cuda-h100-4). This script traces a few calls with
``torch.profiler`` and prints, per backend and path (run 5 found the calls'
device work equal to the loss's time: the sweep's data ignores one row in
seven, the benchmark's none):

``span``
    from the call's start on the host to the end of its last kernel;
``kernels``
    the summed time of its kernels, and how many there were;
``to_main``
    from the call's start on the host to the start of its first large
    kernel (the device waits for the host's work before the launch);
``small``
    the summed time of the kernels other than the large ones.

followed by the top kernels by summed time. Without a GPU it prints a line
and exits 0. Used by ``gpu_check.sh`` (step ``trace``)::

    python benchmarks/profile_loss_call.py [--N 16384] [--V 128256] [--calls 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import cringe_kernels as ck

# A kernel that reads or writes the logits takes at least this long at the
# goal point; the loss algebra's kernels on [N] vectors take a few us.
_LARGE_US = 200.0


def _calls(backend: str, single_pass: bool, x, y, fb, n: int):
    from torch.profiler import ProfilerActivity, profile, record_function

    def call():
        loss = ck.cringe_loss(x, y, fb, k=5, backend=backend, single_pass=single_pass)
        torch.autograd.grad(loss, x)

    for _ in range(3):  # compile (Triton), allocate, warm up
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            with record_function(f"loss_call_{i}"):
                call()
            torch.cuda.synchronize()
    return prof


def _summarise(prof) -> dict:
    events = list(prof.events())
    calls = sorted((e for e in events if e.name.startswith("loss_call_")), key=lambda e: e.time_range.start)
    # The record_function ranges also appear on the device timeline (as GPU
    # user annotations spanning the call): not kernels (run 5 counted them).
    kernels = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                      and not e.name.startswith("loss_call_")), key=lambda e: e.time_range.start)
    rows = []
    for idx, c in enumerate(calls):
        end = calls[idx + 1].time_range.start if idx + 1 < len(calls) else float("inf")
        mine = [k for k in kernels if c.time_range.start <= k.time_range.start < end]
        if not mine:
            continue
        large = [k for k in mine if k.time_range.elapsed_us() >= _LARGE_US]
        rows.append(dict(
            span=max(k.time_range.end for k in mine) - c.time_range.start,
            kernels=sum(k.time_range.elapsed_us() for k in mine), count=len(mine),
            to_main=(large[0].time_range.start - c.time_range.start) if large else float("nan"),
            small=sum(k.time_range.elapsed_us() for k in mine if k.time_range.elapsed_us() < _LARGE_US)))
    return {key: statistics.median(r[key] for r in rows) for key in ("span", "kernels", "count", "to_main", "small")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--N", type=int, default=16384)
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("profile_loss_call: no CUDA device; nothing to trace")
        return 0
    from cringe_kernels.bench.providers import kernel_backends

    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(1, args.N, args.V, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
    y = torch.randint(0, args.V, (1, args.N), device="cuda", generator=g)
    fb = (torch.arange(args.N, device="cuda") % 2 == 0).reshape(1, args.N)
    print(f"loss call trace: bf16, N={args.N}, V={args.V}, k=5, median of {args.calls} calls (us); "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'backend':>8} {'path':>12} {'span':>9} {'kernels':>9} {'count':>6} {'to_main':>8} {'small':>8}")
    for backend in kernel_backends(torch.device("cuda")):
        for single_pass in (False, True):
            label = f"{backend:>8} {'single-pass' if single_pass else 'two-pass':>12}"
            try:
                prof = _calls(backend, single_pass, x, y, fb, args.calls)
                s = _summarise(prof)
            except Exception as err:  # a backend that fails is a line, not a lost step
                print(f"{label} failed: {type(err).__name__}: {err}")
                continue
            print(f"{label} {s['span']:9.0f} {s['kernels']:9.0f} {s['count']:6.0f} {s['to_main']:8.0f} "
                  f"{s['small']:8.0f}", flush=True)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60)
            print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
