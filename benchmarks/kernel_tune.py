"""Launch-parameter sweep of the GPU kernels at one size (default: the goal point),
and the workload gpu_check.sh runs under compute-sanitizer.

Times the row-statistics kernels alone (no loss algebra, no autograd) so that
the rules of ``cringe_kernels/backends/heuristics.py`` can be checked against
measurements; every choice is passed to the kernels explicitly:

* Triton forward: ``BLOCK`` x ``num_warps`` x ``SUB``, and the same kernel
  with ``k = 0`` (the streaming ceiling: no top-k work);
* Triton backward: ``BLOCK`` x ``num_warps``, out of place;
* the CUDA forward and backward, when ``_C_cuda`` is built; the forward's
  sampled columns and log-sum-exp are compared with the Triton forward's;
* the single pass (forward + gradient, Triton and CUDA), the CUDA one in
  several launch shapes (threads, blocks per SM, KB of each row kept in
  shared memory, staged or not), and the sparse backward that completes
  it; the completed gradient is compared with the two-pass one bit for bit;
* few rows (``--small-n``): the CUDA forward and backward with one block
  per row against rows split into pieces (``heuristics.row_pieces``'s
  choice included), and the Triton forward and backward, at each N (the
  first N rows of the logits);
* a device-to-device copy of the logits (1 read + 1 write), the bandwidth
  ceiling every fraction is taken against.

Each time is the median of ``triton.testing.do_bench`` (CUDA events). The
logits (``N x V`` bf16 = 4.2 GB at the goal point) are far beyond L2, so one
buffer suffices. One row in seven is ignored (the benchmark suite ignores
none), so that the kernels' ignored-row paths are timed too.
Byte model (only what a kernel must move): the forward reads the rows that
are not ignored; the backward and the single pass read those and write
every row (ignored rows get zeros); the copy reads and writes every row.

Usage::

    python benchmarks/kernel_tune.py [--N 16384] [--V 128256] [--k 5] [--dtype bf16] [--csv OUT.csv]
    python benchmarks/kernel_tune.py --sanitizer-case [--quick] [--large-only] [--triton] [--sim]

Without a GPU it exits at once, unless ``TRITON_INTERPRET=1`` is set: then
it runs the same launches through Triton's interpreter on the CPU (use tiny
``--N``/``--V``), which checks the script, not the speed.

``--sanitizer-case`` runs the loss forward and backward over the edges of
the kernels' memory accesses (every dtype, misaligned rows, V below one
pack, k = 1 and 64, rows split into pieces, the single pass in both of its
launch shapes and with a partial row cache, ignored and out-of-range
targets, -inf and NaN rows, in-place backward) for ``compute-sanitizer``;
``--quick`` keeps two dtypes, two V and two k (for racecheck);
``--large-only`` runs one bf16 batch with ``N * V > 2**31`` instead;
``--triton`` takes the Triton backend, ``--sim`` the CUDA kernels in the
tests' CPU simulator (tests/cuda_sim.py). Run it with
``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so that an overrun past a tensor is
reported rather than landing in the caching allocator's slack.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--N", type=int, default=16384)
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--small-n", default="64,256,1024",
                    help="row counts (comma-separated, each <= N; '' for none) for the split-row comparison")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--best-fwd", default=None, help="write the fastest Triton forward as 'BLOCK,WARPS,SUB' here "
                    "(compare with heuristics.triton_forward_config)")
    ap.add_argument("--best-cuda-single-pass", default=None, help="write the fastest CUDA single-pass launch shape "
                    "as 'THREADS,BLOCKS_PER_SM,CACHE_KB,STAGED' here (compare with heuristics.single_pass_shape), "
                    "when the completed gradients (with and without cache, staged or not) matched the two-pass one")
    ap.add_argument("--sanitizer-case", action="store_true", help="run the compute-sanitizer workload instead")
    ap.add_argument("--quick", action="store_true", help="--sanitizer-case: fewer dtypes, V and k")
    ap.add_argument("--large-only", action="store_true", help="--sanitizer-case: the N * V > 2**31 batch alone")
    ap.add_argument("--triton", action="store_true", help="--sanitizer-case: the Triton backend")
    ap.add_argument("--sim", action="store_true", help="--sanitizer-case: the CUDA kernels in the CPU simulator")
    args = ap.parse_args()
    if args.sanitizer_case:
        return sanitizer_case(args)
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpreting:
        print("kernel_tune: no CUDA device; nothing to time")
        return 0

    import triton

    from cringe_kernels.backends import heuristics
    from cringe_kernels.backends import triton_kernels as tk
    from cringe_kernels.backends.base import stats_dtype

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    N, V, k = args.N, args.V, args.k
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    es = torch.empty((), dtype=dtype).element_size()
    g = torch.Generator(dev).manual_seed(0)
    x = torch.empty(1, N, V, dtype=dtype, device=dev)
    x.normal_(generator=g)
    x.mul_(2)
    target = torch.randint(0, V, (N,), device=dev, generator=g)
    target[::7] = -100
    # Bytes of the rows a kernel must read (the rows not ignored) and of all rows.
    read_bytes = int((target != -100).sum()) * V * es
    all_bytes = N * V * es
    u = torch.rand(N, device=dev, generator=g)
    acc = stats_dtype(dtype)
    lse, tlog, slog = (torch.empty(N, dtype=acc, device=dev) for _ in range(3))
    sidx = torch.empty(N, dtype=torch.long, device=dev)
    out = torch.empty_like(x)
    grads = [torch.randn(N, device=dev, generator=g).to(acc) for _ in range(3)]
    acc_tl = tk.tl.float64 if acc == torch.float64 else tk.tl.float32
    kpad = triton.next_power_of_2(max(k, 1))

    rows = []

    def record(kind, config, ms, nbytes, params=None):
        gbs = nbytes / ms / 1e6
        rows.append(dict(kind=kind, config=config, ms=ms, gbps=gbs, params=params))
        print(f"{kind:14s} {config:28s} {ms:8.3f} ms {gbs:8.0f} GB/s", flush=True)

    def bench(fn):
        if dev.type == "cpu":  # the interpreter: one timed call checks the launch
            fn()
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        from triton.testing import do_bench

        return do_bench(fn, warmup=50, rep=200, return_mode="median")

    copy_dst = torch.empty_like(x)
    copy_ms = bench(lambda: copy_dst.copy_(x))
    record("copy", "dst.copy_(src)", copy_ms, 2 * all_bytes)
    del copy_dst
    copy_gbps = rows[0]["gbps"]

    # (BLOCK, num_warps, SUB): SUB < BLOCK offers gated blocks to the top-k in
    # pieces (fewer registers, more rows in flight; see heuristics.triton_forward_config).
    fwd_configs = [(1024, 4, 1024), (2048, 4, 2048), (2048, 4, 512), (2048, 4, 256),
                   (4096, 4, 512), (4096, 8, 4096), (4096, 8, 512), (4096, 8, 256),
                   (8192, 8, 512), (8192, 8, 256), (8192, 16, 512), (16384, 16, 512)]
    for block, warps, sub in fwd_configs:
        def fwd(block=block, warps=warps, sub=sub, kk=k, kp=kpad):
            tk.row_stats_fwd_kernel[(N,)](
                x, target, u, lse, tlog, slog, sidx, lse, x, 1 * N, V, x.stride(0), x.stride(1), 0, 0, -100,
                ACC=acc_tl, K=kk, KPAD=kp, BLOCK=block, SUB=sub, num_warps=warps)
        try:
            record("triton-fwd", f"BLOCK={block} warps={warps} SUB={sub}", bench(fwd), read_bytes,
                   (block, warps, sub))
        except Exception as err:  # an out-of-resources config is a result, not a failure
            print(f"triton-fwd     BLOCK={block} warps={warps} SUB={sub}: {type(err).__name__}: {str(err)[:200]}")
    # The streaming ceiling: the same kernel with no top-k (k = 0).
    for block, warps in ((2048, 4), (4096, 8)):
        def fwd0(block=block, warps=warps):
            tk.row_stats_fwd_kernel[(N,)](
                x, target, u, lse, tlog, slog, sidx, lse, x, 1 * N, V, x.stride(0), x.stride(1), 0, 0, -100,
                ACC=acc_tl, K=0, KPAD=1, BLOCK=block, SUB=block, num_warps=warps)
        record("triton-fwd-k0", f"BLOCK={block} warps={warps}", bench(fwd0), read_bytes)
    # Leave the k > 0 results of the best configuration for the comparisons below.
    best_fwd = min((r for r in rows if r["kind"] == "triton-fwd"), key=lambda r: r["ms"])
    bb, bw, bs = best_fwd["params"]
    tk.row_stats_fwd_kernel[(N,)](
        x, target, u, lse, tlog, slog, sidx, lse, x, 1 * N, V, x.stride(0), x.stride(1), 0, 0, -100,
        ACC=acc_tl, K=k, KPAD=kpad, BLOCK=bb, SUB=bs, num_warps=bw)
    fwd_ref = sidx.clone()
    lse_ref = lse.clone()
    # The Triton single pass at that configuration: forward + gradient sweep.
    single_t = torch.empty_like(x)

    def fwd_grad():
        tk.row_stats_fwd_kernel[(N,)](
            x, target, u, lse, tlog, slog, sidx, grads[0], single_t, 1 * N, V, x.stride(0), x.stride(1),
            single_t.stride(0), single_t.stride(1), -100, ACC=acc_tl, K=k, KPAD=kpad, BLOCK=bb, SUB=bs,
            WITH_GRAD=True, BF16_BY_HAND=dev.type == "cpu" and dtype == torch.bfloat16, num_warps=bw)
    record("triton-fwd+grad", f"BLOCK={bb} warps={bw} SUB={bs}", bench(fwd_grad), read_bytes + all_bytes)

    def triton_bwd(n, block, warps, single_pass=False):
        # single_pass: complete the gradient fwd_grad wrote (grads[0] is its guess: two columns a row).
        by_hand = dev.type == "cpu" and dtype == torch.bfloat16  # the interpreter, like fwd_grad
        if single_pass:
            rows = heuristics.TRITON_COMPLETE_ROWS
            tk.row_stats_complete_kernel[(triton.cdiv(n, rows),)](
                x, single_t, target, sidx, lse, *grads, grads[0], n, n, V, x.stride(0), x.stride(1),
                single_t.stride(0), single_t.stride(1), -100, ACC=acc_tl, ROWS=rows, BLOCK=block,
                BF16_BY_HAND=by_hand, num_warps=warps)
            return
        tk.row_stats_bwd_kernel[(n, triton.cdiv(V, block))](
            x, out, target, sidx, lse, *grads, n, V, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            -100, ACC=acc_tl, BLOCK=block, BF16_BY_HAND=by_hand, num_warps=warps)

    for block, warps in ((2048, 4), (4096, 8), (8192, 8), (8192, 16)):
        try:
            record("triton-bwd", f"BLOCK={block} warps={warps}",
                   bench(lambda block=block, warps=warps: triton_bwd(N, block, warps)), read_bytes + all_bytes)
        except Exception as err:
            print(f"triton-bwd     BLOCK={block} warps={warps}: {type(err).__name__}: {str(err)[:200]}")

    # The single pass's completion, checked against the two-pass gradient
    # of the same statistics (fwd_grad left them in lse and sidx).
    try:
        fwd_grad()
        triton_bwd(N, 8192, 8, single_pass=True)
        triton_bwd(N, 8192, 8)
        exact = torch.equal(single_t, out)
        record("triton-bwd-sparse", f"ROWS={heuristics.TRITON_COMPLETE_ROWS} warps=8 (2 columns a row)",
               bench(lambda: triton_bwd(N, 8192, 8, single_pass=True)), 0)
        rows[-1]["agrees"] = exact
        print(f"triton single pass: completed gradient == two-pass gradient: {exact}")
    except Exception as err:
        print(f"triton-bwd-sparse: {type(err).__name__}: {str(err)[:200]}")

    # Few rows, against the CUDA kernels' split rows below: the Triton forward
    # at its best configuration is one program per row; its backward already
    # spreads a row over V / BLOCK programs. Rows are the first n of x.
    small_ns = [int(n) for n in args.small_n.split(",") if n and int(n) <= N]
    for n in small_ns:
        def small_fwd(n=n):
            tk.row_stats_fwd_kernel[(n,)](
                x, target, u, lse, tlog, slog, sidx, lse, x, n, V, x.stride(0), x.stride(1), 0, 0, -100,
                ACC=acc_tl, K=k, KPAD=kpad, BLOCK=bb, SUB=bs, num_warps=bw)
        n_read = int((target[:n] != -100).sum()) * V * es
        record(f"triton-small-fwd N={n}", f"BLOCK={bb} warps={bw} SUB={bs}", bench(small_fwd), n_read)
        record(f"triton-small-bwd N={n}", "BLOCK=4096 warps=8", bench(lambda n=n: triton_bwd(n, 4096, 8)),
               n_read + n * V * es)

    try:
        from cringe_kernels.backends import cuda_backend as cb
        from cringe_kernels.backends import _native
    except Exception as err:
        cb = None
        print(f"cuda backend unavailable: {err}")
    cuda_module, stream = None, 0
    if cb is not None and cb._C_cuda is not None and dev.type == "cuda":
        cuda_module, stream = cb._C_cuda, torch.cuda.current_stream().cuda_stream
    elif cb is not None and os.environ.get("CRINGE_KERNELS_TUNE_CUDA_SIM") == "1":
        # The tests: the same calls into the CPU simulator build of _C_cuda.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import cuda_sim

        cuda_module = cuda_sim.MODULE
    if cuda_module is not None:
        _, launch_backward = cb.launchers(cuda_module, lambda device: stream)
        code = _native.DTYPE_CODES[dtype]
        head = (code, x.data_ptr(), 1, N, V, x.stride(0), x.stride(1), target.data_ptr(), u.data_ptr(), k, -100,
                lse.data_ptr(), tlog.data_ptr(), slog.data_ptr(), sidx.data_ptr(), 0, stream)

        def cfwd():
            cuda_module.forward(*head)  # one block per row

        def cbwd():
            cuda_module.backward(code, x.data_ptr(), 1, N, V, x.stride(0), x.stride(1), target.data_ptr(),
                                 sidx.data_ptr(), lse.data_ptr(), *(t.data_ptr() for t in grads), -100,
                                 out.data_ptr(), out.stride(0), out.stride(1), 0, stream)

        try:
            record("cuda-fwd", "one block a row", bench(cfwd), read_bytes)
            same = (sidx == fwd_ref).float().mean().item()
            diff = (lse - lse_ref).abs().max().item()
            rows[-1]["agrees"] = same > 0.999 and diff < 1e-3
            print(f"cuda vs triton: sample_index agreement {same:.6f}, max |lse difference| {diff:.3g}")
        except Exception as err:
            print(f"cuda-fwd failed: {type(err).__name__}: {err}")
        try:
            record("cuda-bwd", "one block a row", bench(cbwd), read_bytes + all_bytes)
        except Exception as err:
            print(f"cuda-bwd failed: {type(err).__name__}: {err}")
        # The single pass: forward + gradient sweep (1 read + 1 write of the
        # logits from HBM if the rows stay in L2), then the backward that
        # finds grad_lse equal to the guess (two columns a row).
        try:
            weight = grads[0]
            single = torch.empty_like(x)

            def cfwd_grad(threads, blocks, cache_kb, staged):
                cuda_module.single_pass(*head, weight.data_ptr(), single.data_ptr(), threads, blocks, cache_kb * 1024,
                                        staged)

            def cbwd_sparse():
                launch_backward(single, x, target, sidx, lse, weight, *grads[1:], -100, lse_weight=weight)

            # Launch shapes (threads, blocks per SM, KB of each row kept in
            # shared memory, staged): rows in flight against their second
            # read staying on chip, from L2 alone or with a shared-memory
            # cache of each row's start (about what an SM's 228 KB leaves per
            # block), staged (cp.async rounds: more loads in flight for the
            # same rows in flight, 2 x 16 KB per 256 threads before the
            # cache) or not. heuristics.single_pass_shape's two shapes are
            # (256, 3, 64, False) and (512, 2, 0, True). The last four are
            # checked bit for bit.
            shapes = ((256, 2, 0, False), (256, 3, 0, False), (128, 4, 0, False), (256, 2, 100, False),
                      (256, 3, 64, False), (128, 4, 48, False), (256, 2, 0, True), (256, 3, 0, True),
                      (256, 2, 48, True), (512, 1, 0, True), (512, 2, 0, True), (512, 1, 100, True),
                      (512, 1, 200, False), (512, 1, 0, False))
            checked_shapes = shapes[-4:]
            for shape in shapes:
                threads, blocks, cache_kb, staged = shape
                record("cuda-fwd+grad", f"threads={threads} blocks/SM={blocks} cache={cache_kb}KB staged={staged}",
                       bench(lambda sh=shape: cfwd_grad(*sh)), read_bytes + all_bytes, shape)
                if shape not in checked_shapes:
                    continue
                same = (sidx == fwd_ref).float().mean().item()
                cbwd_sparse()
                cbwd()  # the two-pass gradient into `out` for the same statistics
                exact = torch.equal(single, out)
                rows[-1]["agrees"] = same > 0.999 and exact
                print(f"cuda single pass (cache={cache_kb}KB, staged={staged}) vs triton: sample_index agreement "
                      f"{same:.6f}; completed gradient == two-pass gradient: {exact}")
            record("cuda-bwd-sparse", "after single pass (2 columns a row)", bench(cbwd_sparse), 0)
        except Exception as err:
            print(f"cuda single pass failed: {type(err).__name__}: {err}")
        try:
            small_rows(cuda_module, stream, x, target, u, k, (lse, tlog, slog, sidx), out, grads, record, bench,
                       small_ns)
        except Exception as err:
            print(f"cuda split rows failed: {type(err).__name__}: {err}")

    print()
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (Triton interpreter)"
    print(f"device: {name}, torch {torch.__version__}, triton {triton.__version__}; "
          f"N={N} V={V} k={k} {args.dtype}; copy {copy_gbps:.0f} GB/s")
    for kind in ("triton-fwd", "triton-fwd-k0", "triton-bwd", "triton-fwd+grad", "triton-bwd-sparse", "cuda-fwd",
                 "cuda-bwd", "cuda-fwd+grad", "cuda-bwd-sparse",
                 *sorted({r["kind"] for r in rows if "-small-" in r["kind"]})):
        best = min((r for r in rows if r["kind"] == kind), key=lambda r: r["ms"], default=None)
        if best:
            print(f"best {kind:11s} {best['config']:24s} {best['ms']:.3f} ms, {best['gbps'] / copy_gbps:.2f} of copy")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["kind", "config", "ms", "gbps", "frac_copy"])
            w.writeheader()
            for r in rows:
                w.writerow({"kind": r["kind"], "config": r["config"], "ms": r["ms"], "gbps": r["gbps"],
                            "frac_copy": r["gbps"] / copy_gbps})
    if args.best_fwd:
        with open(args.best_fwd, "w") as f:
            f.write("%d,%d,%d\n" % best_fwd["params"])
    # The single pass's fastest shape, when the checked shapes (with and
    # without cache, staged or not) all completed to the two-pass gradient.
    shapes = [r for r in rows if r["kind"] == "cuda-fwd+grad"]
    checked = [r for r in shapes if "agrees" in r]
    if args.best_cuda_single_pass and len(checked) == 4 and all(r["agrees"] for r in checked):
        best = min(shapes, key=lambda r: r["ms"])["params"]
        with open(args.best_cuda_single_pass, "w") as f:
            f.write("%d,%d,%d,%s\n" % (*best[:3], best[3]))
    return 0


def small_rows(module, stream, x, target, u, k, stats, grad_out, grads, record, bench, row_counts) -> None:
    """Few rows: one block per row against rows in pieces.

    Records ``cuda-small-fwd N=..`` and ``cuda-small-bwd N=..`` rows, one per
    number of pieces (``heuristics.row_pieces``'s choice marked ``auto``);
    every split forward must give the one-block forward's sampled columns
    and target logits exactly (the log-sum-exp to rounding), or the row is
    marked as disagreeing.
    """
    from cringe_kernels.backends import _native, heuristics

    _, _, V = x.shape
    code = _native.DTYPE_CODES[x.dtype]
    es = x.element_size()
    lse, tlog, slog, sidx = stats
    sms = module.sm_count(x.device.index or 0)
    for n in row_counts:
        xs, gs = x[:, :n], grad_out[:, :n]
        n_read = int((target[:n] != -100).sum()) * V * es
        auto = heuristics.row_pieces(n, V, sms)
        candidates = sorted({1, 2, 4, 8, auto})
        workspaces = {p: torch.empty(module.forward_workspace_bytes(code, n, V, k, p), dtype=torch.uint8,
                                     device=x.device) for p in candidates}

        def fwd(pieces):
            module.forward(code, xs.data_ptr(), 1, n, V, xs.stride(0), xs.stride(1), target.data_ptr(), u.data_ptr(),
                           k, -100, lse.data_ptr(), tlog.data_ptr(), slog.data_ptr(), sidx.data_ptr(), 0, stream,
                           pieces, _native.ptr(workspaces[pieces]))

        def bwd(pieces):
            module.backward(code, xs.data_ptr(), 1, n, V, xs.stride(0), xs.stride(1), target.data_ptr(),
                            sidx.data_ptr(), lse.data_ptr(), *(g.data_ptr() for g in grads), -100, gs.data_ptr(),
                            gs.stride(0), gs.stride(1), 0, stream, 0, pieces)

        fwd(1)
        want = (sidx[:n].clone(), tlog[:n].clone(), lse[:n].clone())
        for pieces in candidates:
            tag = " (auto)" if pieces == auto else ""
            record(f"cuda-small-fwd N={n}", f"pieces={pieces}{tag}", bench(lambda p=pieces: fwd(p)), n_read)
            agrees = (torch.equal(sidx[:n], want[0]) and torch.equal(tlog[:n].nan_to_num(), want[1].nan_to_num())
                      and torch.allclose(lse[:n], want[2], rtol=1e-5, atol=1e-5, equal_nan=True))
            if not agrees:
                print(f"cuda split rows N={n} pieces={pieces}: DISAGREES with one block per row")
        for pieces in candidates:
            tag = " (auto)" if pieces == auto else ""
            record(f"cuda-small-bwd N={n}", f"pieces={pieces}{tag}", bench(lambda p=pieces: bwd(p)),
                   n_read + n * V * es)


def sanitizer_case(args) -> int:
    """The compute-sanitizer workload (see the module docstring); exits non-zero on a Python-level error."""
    import cringe_kernels as ck

    backend = "triton" if args.triton else "cuda_sim" if args.sim else "cuda"
    if backend != "cuda_sim" and not torch.cuda.is_available():
        print("kernel_tune --sanitizer-case: no CUDA device; nothing to check")
        return 0
    if backend == "cuda_sim":
        from cringe_kernels import backends

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        backends._KERNEL_BACKENDS.setdefault("cuda_sim", ("cuda_sim", "SimRowStats"))
    dev = "cpu" if backend == "cuda_sim" else "cuda"
    if args.large_only:
        cases = _large_case(ck, backend, dev)
    else:
        cases = _edge_cases(ck, backend, dev, args.quick)
        if backend != "triton":
            # Rows split across blocks (the forward's piece workspace and
            # merge) and the single pass keeping 1 KB of each row in shared
            # memory (all of the short rows, part of the long ones), staged
            # and not; the default shapes ran above.
            from cringe_kernels.backends import heuristics

            rule_pieces, rule_shape = heuristics.row_pieces, heuristics.single_pass_shape
            try:
                heuristics.row_pieces = lambda n_rows, V, sm_count: 3
                cases += _edge_cases(ck, backend, dev, True)
                heuristics.row_pieces = rule_pieces
                for staged in (False, True):
                    heuristics.single_pass_shape = lambda row_bytes, s=staged: heuristics.SinglePassShape(
                        128, 4, 1024, s)
                    cases += _edge_cases(ck, backend, dev, True)
            finally:
                heuristics.row_pieces, heuristics.single_pass_shape = rule_pieces, rule_shape
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer_case: {cases} cases ran on {backend}")
    return 0


def _large_case(ck, backend: str, dev: str) -> int:
    """Two-pass (in place) and single pass over ``N * V > 2**31`` bfloat16 logits."""
    N, V = (16400, 131072) if dev == "cuda" else (8, 1000)
    x = torch.empty(1, N, V, device=dev, dtype=torch.bfloat16)
    x.normal_(generator=torch.Generator(device=dev).manual_seed(1))
    y = torch.randint(0, V, (1, N), device=dev)
    y[0, -1] = -100
    for single in (False, True):
        leaf = x.requires_grad_(True) if not single else x.detach().requires_grad_(True)
        loss = ck.cringe_loss(leaf * 1 if not single else leaf, y, torch.tensor([[False]], device=dev),
                              backend=backend, inplace_backward=not single, single_pass=single)
        loss.backward()
        if not torch.isfinite(leaf.grad[0, -2]).all():
            raise RuntimeError("large case: non-finite gradient in the last rows")
        leaf.grad = None
    return 2


def _edge_cases(ck, backend: str, dev: str, quick: bool) -> int:
    """Every dtype x vocabulary x k edge of the kernels' memory accesses."""
    g = torch.Generator(device=dev).manual_seed(0)
    fb = torch.tensor([[True], [False], [False]], device=dev)
    dtypes = (torch.float32, torch.bfloat16) if quick else (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    # V: one element, under one pack, odd, a few packs, several rounds, and
    # rows past 128 KB (the staged single pass); k: the smallest list and
    # the largest.
    vocabs = (33, 4096) if quick else (2, 7, 33, 1001, 4096, 70001)
    ks = (5, 64) if quick else (1, 64)
    cases = 0
    for dtype in dtypes:
        for V in vocabs:
            for k in ks:
                full = torch.randn(3, 5, V, device=dev, dtype=dtype, generator=g)
                full[1, 1] = float("-inf")
                full[2, 2, 0] = float("nan")
                y = torch.randint(0, V, (3, 4), device=dev, generator=g)
                y[0, 0] = -100
                # Two-pass, in place, and the single pass (the scaled loss
                # makes the completion redo some rows in full).
                for inplace, single, scale in ((False, False, 1.0), (True, False, 1.0), (False, True, 1.0),
                                               (False, True, 0.5)):
                    leaf = full.clone().requires_grad_(True)
                    # Rows misaligned for 16-byte access; the in-place backward
                    # writes over a non-leaf that nothing else reads.
                    x = (leaf * 1)[:, :-1] if inplace else leaf[:, :-1]
                    loss = ck.cringe_loss(x, y, fb, k=k, backend=backend, inplace_backward=inplace,
                                          single_pass=single, ct_on_positives=True)
                    (loss * scale).backward()
                    cases += 1
            with ck.value_checks(False):
                bad = torch.tensor([[V, -7, 0, 1]] * 3, device=dev)
                for single in (False, True):
                    xb = torch.randn(3, 4, V, device=dev, dtype=dtype, requires_grad=True)
                    ck.cringe_loss(xb, bad, fb, backend=backend, single_pass=single).backward()
                    cases += 1
    empty = torch.randn(0, 4, 10, device=dev, requires_grad=True)
    ck.cringe_loss(empty, torch.zeros(0, 4, dtype=torch.long, device=dev),
                   torch.zeros(0, 1, dtype=torch.bool, device=dev), backend=backend).backward()
    return cases


if __name__ == "__main__":
    sys.exit(main())
