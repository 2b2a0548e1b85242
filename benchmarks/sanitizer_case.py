"""A small GPU workload for ``compute-sanitizer --tool memcheck`` (and racecheck).

Runs the ``cuda`` backend's forward and backward over the cases that touch
the edges of the kernels' memory accesses: every dtype, rows misaligned for
16-byte loads (odd V, ``logits[:, :-1]``), V smaller than one pack, k = 1,
k = 64 (the largest shared-memory list) and k > 64 (the fallback), each
top-k strategy, rows split across blocks, the single pass with and without
its shared-memory row cache, ignored rows, out-of-range targets with value
checks off, -inf and NaN rows, and in-place backward. Exits non-zero on any
Python-level error; the sanitizer
reports memory errors itself::

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitizer_case.py [--quick] [--large]

``--quick`` keeps two dtypes, two V and two k (for the slower racecheck);
``--large`` adds one bfloat16 case with ``N * V > 2**31`` (16400 x 131072):
forward and in-place backward, the int64 row offsets at full size;
``--large-only`` runs that case alone. Run it with
``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so that every tensor is its own
allocation and an overrun past one is reported rather than landing in the
caching allocator's slack.
"""

import os
import sys

import torch

import cringe_kernels as ck


def large_case(backend: str, dev: str) -> int:
    """Forward and in-place backward over ``N * V > 2**31`` bfloat16 logits."""
    N, V = (16400, 131072) if dev == "cuda" else (8, 1000)
    x = torch.empty(1, N, V, device=dev, dtype=torch.bfloat16)
    x.normal_(generator=torch.Generator(device=dev).manual_seed(1))
    y = torch.randint(0, V, (1, N), device=dev)
    y[0, -1] = -100
    loss = ck.cringe_loss(x.requires_grad_(True) * 1, y, torch.tensor([[False]], device=dev), backend=backend,
                          inplace_backward=True)
    loss.backward()
    if not torch.isfinite(x.grad[0, -2]).all():
        raise RuntimeError("large case: non-finite gradient in the last rows")
    return 1


def sweep(backend: str, dev: str) -> int:
    """The edge cases, under every other kernel setting on CUDA, and the large case with ``--large``."""
    cases = edge_cases(backend, dev, quick="--quick" in sys.argv)
    if backend in ("cuda", "cuda_sim"):
        # The other top-k strategies are other forward kernels: their edges
        # too, whichever one the environment made the default. Then rows
        # split across blocks (the forward's piece workspace and merge), the
        # single pass keeping 1 KB of each row in shared memory (all of the
        # short rows, part of the long ones), and the staged single pass in
        # its 64-register build (4 blocks per SM) with the same cache.
        in_use = os.environ.get("CRINGE_KERNELS_CUDA_FWD_GATE", "row")
        settings = [("CRINGE_KERNELS_CUDA_FWD_GATE", gate) for gate in ("thread", "warp", "row", "row-async")
                    if gate != in_use]
        settings += [("CRINGE_KERNELS_CUDA_SPLIT", "3"), ("CRINGE_KERNELS_CUDA_SINGLE_PASS", "128,1,1"),
                     ("CRINGE_KERNELS_CUDA_SINGLE_PASS", "128,4,1,async")]
        for name, value in settings:
            before = os.environ.get(name)
            os.environ[name] = value
            cases += edge_cases(backend, dev, quick=True)
            if before is None:
                del os.environ[name]
            else:
                os.environ[name] = before
    if "--large" in sys.argv:
        cases += large_case(backend, dev)
    return cases


def main() -> int:
    # --cpu runs the same cases on the cpu backend (to check this script
    # without a GPU); --sim on the CUDA kernels in the tests' CPU simulator
    # (tests/cuda_sim.py), which test_simt.py runs under AddressSanitizer.
    backend = "cpu" if "--cpu" in sys.argv else "cuda_sim" if "--sim" in sys.argv else "cuda"
    if backend == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; nothing to check")
        return 0
    if backend == "cuda_sim":
        from cringe_kernels import backends

        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        backends._KERNEL_BACKENDS.setdefault("cuda_sim", ("cuda_sim", "SimRowStats"))
    dev = "cuda" if backend == "cuda" else "cpu"
    if "--large-only" in sys.argv:  # memcheck of the int64 offsets alone, within a short GPU session
        cases = large_case(backend, dev)
    else:
        cases = sweep(backend, dev)
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer_case: {cases} cases ran on {backend}")
    return 0


def edge_cases(backend: str, dev: str, quick: bool) -> int:
    """Every dtype x vocabulary x k edge of the kernels' memory accesses."""
    g = torch.Generator(device=dev).manual_seed(0)
    fb = torch.tensor([[True], [False], [False]], device=dev)
    dtypes = (torch.float32, torch.bfloat16) if quick else (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    vocabs = (33, 4096) if quick else (2, 3, 7, 33, 1001, 4096)
    ks = (5, 64) if quick else (1, 5, 64, 100)
    cases = 0
    for dtype in dtypes:
        for V in vocabs:
            for k in ks:
                full = torch.randn(3, 5, V, device=dev, dtype=dtype, generator=g)
                full[1, 1] = float("-inf")
                full[2, 2, 0] = float("nan")
                y = torch.randint(0, V, (3, 4), device=dev, generator=g)
                y[0, 0] = -100
                # Two-pass, in place, and the single pass (gradient in the
                # forward; the scaled loss makes the backward redo some rows).
                for inplace, single, scale in ((False, False, 1.0), (True, False, 1.0), (False, True, 1.0),
                                               (False, True, 0.5)):
                    leaf = full.clone().requires_grad_(True)
                    # Rows misaligned for 16-byte access; the in-place backward
                    # writes over a non-leaf that nothing else reads.
                    x = (leaf * 1)[:, :-1] if inplace else leaf[:, :-1]
                    loss = ck.cringe_loss(x, y, fb, k=k, backend=backend, inplace_backward=inplace,
                                          grad_in_forward=single, ct_on_positives=True)
                    (loss * scale).backward()
                    cases += 1
            with ck.value_checks(False):
                bad = torch.tensor([[V, -7, 0, 1]] * 3, device=dev)
                for single in (False, True):
                    xb = torch.randn(3, 4, V, device=dev, dtype=dtype, requires_grad=True)
                    ck.cringe_loss(xb, bad, fb, backend=backend, grad_in_forward=single).backward()
                    cases += 1
    empty = torch.randn(0, 4, 10, device=dev, requires_grad=True)
    ck.cringe_loss(empty, torch.zeros(0, 4, dtype=torch.long, device=dev),
                   torch.zeros(0, 1, dtype=torch.bool, device=dev), backend=backend).backward()
    return cases


if __name__ == "__main__":
    sys.exit(main())
