"""One launch of each forward kernel at the goal point, for Nsight Compute.

``gpu_check.sh`` runs this under ``ncu`` (step ``profile``) so that a GPU
session brings back why the forwards stop short of the copy bandwidth (warp
stall reasons, achieved occupancy, DRAM throughput), not only how long they
take::

    ncu --kernel-name regex:"row_threshold|row_stats_fwd" --section SpeedOfLight \\
        --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \\
        --section SourceCounters python benchmarks/profile_forward.py

It launches, once each after one warm-up: the Triton forward at its default
configuration, the CUDA row-threshold forward with its ``row`` and
``row-async`` gates, and the CUDA single pass at its launch shape
(``CRINGE_KERNELS_CUDA_SINGLE_PASS``; bf16, N=16384, V=128256, k=5 unless
given). The single pass's DRAM bytes say whether its second read of a row
found it on chip: 1 read + 1 write of the logits if so, 2 reads + 1 write
if not. Without a GPU it prints a line and exits 0.
"""

from __future__ import annotations

import argparse
import os

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--N", type=int, default=16384)
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("profile_forward: no CUDA device; nothing to profile")
        return 0
    from cringe_kernels import backends

    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(1, args.N, args.V, device="cuda", dtype=torch.bfloat16, generator=g)
    y = torch.randint(0, args.V, (args.N,), device="cuda", generator=g)  # the backends' [N] vectors
    u = torch.rand(args.N, device="cuda", generator=g)
    runs = [("triton", None)] + [("cuda", gate) for gate in ("row", "row-async")]
    for name, gate in runs:
        if gate is not None:
            os.environ["CRINGE_KERNELS_CUDA_FWD_GATE"] = gate
        try:
            be = backends.resolve(name, x)
        except Exception as err:  # a backend that is not built is a line, not a failure
            print(f"profile_forward: {name} unavailable: {err}")
            continue
        for _ in range(2):  # the first call compiles (Triton) or loads; ncu sees both
            be.forward(x, y, u, args.k, -100)
        torch.cuda.synchronize()
        print(f"profile_forward: {name}{'' if gate is None else ' gate=' + gate} launched", flush=True)
    os.environ["CRINGE_KERNELS_CUDA_FWD_GATE"] = "row"
    try:
        be = backends.resolve("cuda", x)
        weight = torch.full((args.N,), 1.0 / args.N, device="cuda")
        for _ in range(2):
            be.forward_with_grad(x, y, u, args.k, -100, weight)
        torch.cuda.synchronize()
        shape = os.environ.get("CRINGE_KERNELS_CUDA_SINGLE_PASS", "auto")
        print(f"profile_forward: cuda single pass ({shape}) launched", flush=True)
    except Exception as err:
        print(f"profile_forward: cuda single pass unavailable: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
