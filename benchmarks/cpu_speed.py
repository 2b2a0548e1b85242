"""CPU speed and peak memory of one Cringe forward+backward, per backend.

Each backend runs in a fresh process (so peak RSS is its own): logits
``[N, V]`` float32 with half the rows negative, ``k=5``, the loss's
``backward()`` timed end to end (median of ``--repeat`` runs after one warm-up).
Peak memory is the process's peak RSS minus its RSS once the inputs exist,
so "logits + gradient + O(N*k)" shows as about one gradient (N*V*4 bytes).

Usage::

    python benchmarks/cpu_speed.py                      # cpu vs reference
    python benchmarks/cpu_speed.py --backends cpu --N 512
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(backend: str, N: int, V: int, k: int, repeat: int, inplace: bool) -> dict:
    import torch

    import cringe_kernels as ck

    torch.manual_seed(0)
    x = torch.randn(N, V)
    y = torch.randint(0, V, (N,))
    fb = torch.arange(N) % 2 == 0
    u = torch.rand(N)
    # Import-time memory (lazy modules, the compiled backend) is not the loss's.
    small = torch.randn(4, V, requires_grad=True)
    ck.cringe_loss(small, y[:4], fb[:4], k=k, uniform=u[:4], backend=backend).backward()
    base = _rss_bytes()
    times = []
    for _ in range(repeat + 1):
        xx = x.clone().requires_grad_(True) if inplace else x.requires_grad_(True)
        t0 = time.perf_counter()
        loss = ck.cringe_loss(xx, y, fb, k=k, uniform=u, backend=backend, inplace_backward=inplace)
        loss.backward()
        times.append(time.perf_counter() - t0)
        x.grad = None
        del xx, loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "backend": backend, "N": N, "V": V, "k": k, "threads": torch.get_num_threads(),
        "median_s": statistics.median(times[1:]), "min_s": min(times[1:]),
        "peak_extra_MiB": (peak - base) / 2**20, "logits_MiB": N * V * 4 / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="reference,cpu")
    ap.add_argument("--N", type=int, default=2048)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inplace", action="store_true", help="inplace_backward=True (kernel backends only)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.N, args.V, args.k, args.repeat, args.inplace)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    rows = []
    for b in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", b, "--N", str(args.N), "--V", str(args.V), "--k", str(args.k),
               "--repeat", str(args.repeat)] + (["--inplace"] if args.inplace else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if len(rows) > 1:
        print(f"# speedup {rows[-1]['backend']} vs {rows[0]['backend']}: {rows[0]['median_s'] / rows[-1]['median_s']:.1f}x")


if __name__ == "__main__":
    main()
