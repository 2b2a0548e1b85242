"""A small GPU workload for ``compute-sanitizer --tool memcheck`` (and racecheck).

Runs the ``cuda`` backend's forward and backward over the cases that touch
the edges of the kernels' memory accesses: every dtype, rows misaligned for
16-byte loads (odd V, ``logits[:, :-1]``), V smaller than one pack, k = 1,
k = 64 (the largest shared-memory list) and k > 64 (the fallback), ignored
rows, out-of-range targets with value checks off, -inf and NaN rows, and
in-place backward. Exits non-zero on any Python-level error; the sanitizer
reports memory errors itself::

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitizer_case.py
"""

import sys

import torch

import cringe_kernels as ck


def main() -> int:
    # --cpu runs the same cases on the cpu backend (to check this script without a GPU).
    backend = "cpu" if "--cpu" in sys.argv else "cuda"
    if backend == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; nothing to check")
        return 0
    dev = "cuda" if backend == "cuda" else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    fb = torch.tensor([[True], [False], [False]], device=dev)
    cases = 0
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for V in (2, 3, 7, 33, 1001, 4096):
            for k in (1, 5, 64, 100):
                full = torch.randn(3, 5, V, device=dev, dtype=dtype, generator=g)
                full[1, 1] = float("-inf")
                full[2, 2, 0] = float("nan")
                y = torch.randint(0, V, (3, 4), device=dev, generator=g)
                y[0, 0] = -100
                for inplace in (False, True):
                    leaf = full.clone().requires_grad_(True)
                    # Rows misaligned for 16-byte access; the in-place backward
                    # writes over a non-leaf that nothing else reads.
                    x = (leaf * 1)[:, :-1] if inplace else leaf[:, :-1]
                    loss = ck.cringe_loss(x, y, fb, k=k, backend=backend, inplace_backward=inplace,
                                          ct_on_positives=True)
                    loss.backward()
                    cases += 1
            with ck.value_checks(False):
                bad = torch.tensor([[V, -7, 0, 1]] * 3, device=dev)
                ck.cringe_loss(torch.randn(3, 4, V, device=dev, dtype=dtype), bad, fb, backend=backend)
                cases += 1
    empty = torch.randn(0, 4, 10, device=dev, requires_grad=True)
    ck.cringe_loss(empty, torch.zeros(0, 4, dtype=torch.long, device=dev),
                   torch.zeros(0, 1, dtype=torch.bool, device=dev), backend=backend).backward()
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer_case: {cases} cases ran on {backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
