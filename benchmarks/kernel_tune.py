"""Launch-parameter sweep of the GPU kernels at one size (default: the goal point).

Times the row-statistics kernels alone (no loss algebra, no autograd) so that
launch parameters can be chosen from measurements:

* Triton forward: ``BLOCK`` x ``num_warps`` x ``SUB``, and the same kernel
  with ``k = 0`` (the streaming ceiling: no top-k work);
* Triton backward: ``BLOCK`` x ``num_warps``, out of place;
* the CUDA forward with each top-k gate (``thread``, ``warp``, ``row``) and the CUDA
  backward, when ``_C_cuda`` is built; each forward's sampled columns and
  log-sum-exp are compared with the Triton forward's;
* the single pass (forward + gradient, Triton and CUDA), the CUDA one in
  several launch shapes (``CRINGE_KERNELS_CUDA_SINGLE_PASS``: threads,
  blocks per SM, KB of each row kept in shared memory), and the sparse
  backward that completes it; the completed gradient is compared with the
  two-pass one bit for bit;
* few rows (``--small-n``): the CUDA forward and backward with one block
  per row against rows split into pieces (``CRINGE_KERNELS_CUDA_SPLIT``),
  the ``auto`` policy's choice included, and the Triton forward and
  backward, at each N (the first N rows of the logits);
* a device-to-device copy of the logits (1 read + 1 write), the bandwidth
  ceiling every fraction is taken against.

Each time is the median of ``triton.testing.do_bench`` (CUDA events). The
logits (``N x V`` bf16 = 4.2 GB at the goal point) are far beyond L2, so one
buffer suffices. Fractions use the byte model of :mod:`cringe_kernels.bench.metrics`:
forward 1 read, backward and single pass 1 read + 1 write.

Usage::

    python benchmarks/kernel_tune.py [--N 16384] [--V 128256] [--k 5] [--dtype bf16] [--csv OUT.csv]

Without a GPU it exits at once, unless ``TRITON_INTERPRET=1`` is set: then
it runs the same launches through Triton's interpreter on the CPU (use tiny
``--N``/``--V``), which checks the script, not the speed.
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
                    "(the format of CRINGE_KERNELS_TRITON_FWD)")
    ap.add_argument("--best-cuda-gate", default=None, help="write the fastest CUDA forward gate ('thread', "
                    "'warp' or 'row', the values of CRINGE_KERNELS_CUDA_FWD_GATE) here, when all ran and agreed with "
                    "the Triton forward")
    ap.add_argument("--best-cuda-single-pass", default=None, help="write the fastest CUDA single-pass launch shape "
                    "as 'THREADS,BLOCKS_PER_SM,CACHE_KB[,async]' (the format of CRINGE_KERNELS_CUDA_SINGLE_PASS) "
                    "here, when the completed gradients (with and without cache, staged or not) matched the "
                    "two-pass one")
    args = ap.parse_args()
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpreting:
        print("kernel_tune: no CUDA device; nothing to time")
        return 0

    import triton

    from cringe_kernels.backends import triton_kernels as tk
    from cringe_kernels.backends import triton_backend as tb
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
    record("copy", "dst.copy_(src)", copy_ms, 2 * N * V * es)
    del copy_dst
    copy_gbps = rows[0]["gbps"]

    # (BLOCK, num_warps, SUB): SUB < BLOCK offers gated blocks to the top-k in
    # pieces (fewer registers, more rows in flight; see _fwd_config).
    fwd_configs = [(1024, 4, 1024), (2048, 4, 2048), (2048, 4, 512), (2048, 4, 256),
                   (4096, 4, 512), (4096, 8, 4096), (4096, 8, 512), (4096, 8, 256),
                   (8192, 8, 512), (8192, 8, 256), (8192, 16, 512), (16384, 16, 512)]
    for block, warps, sub in fwd_configs:
        def fwd(block=block, warps=warps, sub=sub, kk=k, kp=kpad):
            tk.row_stats_fwd_kernel[(N,)](
                x, target, u, lse, tlog, slog, sidx, lse, x, 1 * N, V, x.stride(0), x.stride(1), 0, 0, -100,
                ACC=acc_tl, K=kk, KPAD=kp, BLOCK=block, SUB=sub, num_warps=warps)
        try:
            record("triton-fwd", f"BLOCK={block} warps={warps} SUB={sub}", bench(fwd), N * V * es,
                   (block, warps, sub))
        except Exception as err:  # an out-of-resources config is a result, not a failure
            print(f"triton-fwd     BLOCK={block} warps={warps} SUB={sub}: {type(err).__name__}: {str(err)[:200]}")
    # The streaming ceiling: the same kernel with no top-k (k = 0).
    for block, warps in ((2048, 4), (4096, 8)):
        def fwd0(block=block, warps=warps):
            tk.row_stats_fwd_kernel[(N,)](
                x, target, u, lse, tlog, slog, sidx, lse, x, 1 * N, V, x.stride(0), x.stride(1), 0, 0, -100,
                ACC=acc_tl, K=0, KPAD=1, BLOCK=block, SUB=block, num_warps=warps)
        record("triton-fwd-k0", f"BLOCK={block} warps={warps}", bench(fwd0), N * V * es)
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
    record("triton-fwd+grad", f"BLOCK={bb} warps={bw} SUB={bs}", bench(fwd_grad), 2 * N * V * es)

    def triton_bwd(n, block, warps, single_pass=False):
        # single_pass: complete the gradient fwd_grad wrote (grads[0] is its guess: two columns a row).
        by_hand = dev.type == "cpu" and dtype == torch.bfloat16  # the interpreter, like fwd_grad
        if single_pass:
            rows = tb._COMPLETE_ROWS
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
                   bench(lambda block=block, warps=warps: triton_bwd(N, block, warps)), 2 * N * V * es)
        except Exception as err:
            print(f"triton-bwd     BLOCK={block} warps={warps}: {type(err).__name__}: {str(err)[:200]}")

    # The single pass's completion, checked against the two-pass gradient
    # of the same statistics (fwd_grad left them in lse and sidx).
    try:
        fwd_grad()
        triton_bwd(N, 8192, 8, single_pass=True)
        triton_bwd(N, 8192, 8)
        exact = torch.equal(single_t, out)
        record("triton-bwd-sparse", f"ROWS={tb._COMPLETE_ROWS} warps=8 (2 columns a row)",
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
        record(f"triton-small-fwd N={n}", f"BLOCK={bb} warps={bw} SUB={bs}", bench(small_fwd), n * V * es)
        record(f"triton-small-bwd N={n}", "BLOCK=4096 warps=8", bench(lambda n=n: triton_bwd(n, 4096, 8)),
               2 * n * V * es)

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

        def cfwd(gate):
            cuda_module.forward(_native.DTYPE_CODES[dtype], x.data_ptr(), 1, N, V, x.stride(0), x.stride(1),
                               target.data_ptr(), u.data_ptr(), k, -100, lse.data_ptr(), tlog.data_ptr(),
                               slog.data_ptr(), sidx.data_ptr(), 0, stream, gate)

        def cbwd():
            launch_backward(out, x, target, sidx, lse, *grads, -100)

        for gate_name, gate in cb._GATES.items():
            try:
                record("cuda-fwd", f"gate={gate_name}", bench(lambda gate=gate: cfwd(gate)), N * V * es)
                same = (sidx == fwd_ref).float().mean().item()
                diff = (lse - lse_ref).abs().max().item()
                rows[-1]["agrees"] = same > 0.999 and diff < 1e-3
                print(f"cuda (gate={gate_name}) vs triton: sample_index agreement {same:.6f}, "
                      f"max |lse difference| {diff:.3g}")
            except Exception as err:
                print(f"cuda-fwd gate={gate_name} failed: {type(err).__name__}: {err}")
        try:
            record("cuda-bwd", "as built", bench(cbwd), 2 * N * V * es)
        except Exception as err:
            print(f"cuda-bwd failed: {type(err).__name__}: {err}")
        # The single pass: forward + gradient sweep (1 read + 1 write of the
        # logits from HBM if the rows stay in L2), then the backward that
        # finds grad_lse equal to the guess (two columns a row).
        try:
            weight = grads[0]
            single = torch.empty_like(x)

            def cfwd_grad(threads=512, blocks=1, cache_kb=0, gate="row"):
                cuda_module.forward(_native.DTYPE_CODES[dtype], x.data_ptr(), 1, N, V, x.stride(0), x.stride(1),
                                    target.data_ptr(), u.data_ptr(), k, -100, lse.data_ptr(), tlog.data_ptr(),
                                    slog.data_ptr(), sidx.data_ptr(), 0, stream, cb._GATES[gate], weight.data_ptr(),
                                    single.data_ptr(), single.stride(0), single.stride(1), threads, blocks,
                                    cache_kb * 1024)

            def cbwd_sparse():
                launch_backward(single, x, target, sidx, lse, weight, *grads[1:], -100, lse_weight=weight)

            # Launch shapes (CRINGE_KERNELS_CUDA_SINGLE_PASS): rows in flight
            # against their second read staying on chip, from L2 alone or
            # with a shared-memory cache of each row's start (KB per block,
            # about what an SM's 228 KB leaves per block), with the row gate
            # and with row-async (cp.async rounds: more loads in flight for
            # the same rows in flight, 2 x 16 KB per 256 threads of stages
            # before the cache; 4 blocks of 256 threads take the build limited
            # to 64 registers). The last four are checked bit for bit.
            shapes = ((256, 2, 0, "row"), (256, 3, 0, "row"), (128, 4, 0, "row"), (256, 2, 100, "row"),
                      (256, 3, 64, "row"), (128, 4, 48, "row"), (256, 2, 0, "row-async"), (256, 3, 0, "row-async"),
                      (256, 2, 48, "row-async"), (512, 1, 0, "row-async"), (512, 2, 0, "row-async"),
                      (256, 4, 12, "row-async"), (256, 4, 0, "row-async"), (512, 1, 100, "row-async"),
                      (512, 1, 200, "row"), (512, 1, 0, "row"))
            checked_shapes = shapes[-4:]
            for threads, blocks, cache_kb, gate in shapes:
                record("cuda-fwd+grad", f"threads={threads} blocks/SM={blocks} cache={cache_kb}KB gate={gate}",
                       bench(lambda t=threads, b=blocks, c=cache_kb, g=gate: cfwd_grad(t, b, c, g)), 2 * N * V * es,
                       (threads, blocks, cache_kb, gate))
                if (threads, blocks, cache_kb, gate) not in checked_shapes:
                    continue
                same = (sidx == fwd_ref).float().mean().item()
                cbwd_sparse()
                cbwd()  # the two-pass gradient into `out` for the same statistics
                exact = torch.equal(single, out)
                rows[-1]["agrees"] = same > 0.999 and exact
                print(f"cuda single pass (cache={cache_kb}KB, {gate}) vs triton: sample_index agreement {same:.6f}; "
                      f"completed gradient == two-pass gradient: {exact}")
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
    gates = [r for r in rows if r["kind"] == "cuda-fwd"]
    gates_ok = bool(gates) and len(gates) == len(cb._GATES) and all(r.get("agrees") for r in gates)
    best_gate = min(gates, key=lambda r: r["ms"])["config"].split("=")[1] if gates_ok else "row"
    if args.best_cuda_gate and gates_ok:
        with open(args.best_cuda_gate, "w") as f:
            f.write(best_gate + "\n")
    # The single pass's fastest shape, staged or not (`async` stages it
    # whatever the forward's gate; a row-async forward stages it anyway, so
    # then only staged shapes are candidates).
    shapes = [r for r in rows if r["kind"] == "cuda-fwd+grad"]
    checked = [r for r in shapes if "agrees" in r]  # row with and without cache, row-async with and without
    candidates = [r for r in shapes if best_gate != "row-async" or r["params"][3] == "row-async"]
    if args.best_cuda_single_pass and len(checked) == 4 and all(r["agrees"] for r in checked) and candidates:
        best = min(candidates, key=lambda r: r["ms"])["params"]
        with open(args.best_cuda_single_pass, "w") as f:
            f.write("%d,%d,%d%s\n" % (*best[:3], ",async" if best[3] == "row-async" else ""))
    return 0


def small_rows(module, stream, x, target, u, k, stats, grad_out, grads, record, bench, row_counts) -> None:
    """Few rows: one block per row (each gate) against rows in pieces.

    Records ``cuda-small-fwd N=..`` and ``cuda-small-bwd N=..`` rows, one per
    configuration; every split forward must give the one-block forward's
    sampled columns and target logits exactly (the log-sum-exp to rounding),
    or the row is marked as disagreeing.
    """
    from cringe_kernels.backends import _native
    from cringe_kernels.backends import cuda_backend as cb

    _, _, V = x.shape
    code = _native.DTYPE_CODES[x.dtype]
    es = x.element_size()
    lse, tlog, slog, sidx = stats
    for n in row_counts:
        xs, gs = x[:, :n], grad_out[:, :n]
        auto = module.row_pieces(n, V, x.device.index or 0)
        candidates = sorted({1, 2, 4, 8, auto})
        workspaces = {p: torch.empty(module.forward_workspace_bytes(code, n, V, k, p), dtype=torch.uint8,
                                     device=x.device) for p in candidates}

        def fwd(gate, pieces):
            module.forward(code, xs.data_ptr(), 1, n, V, xs.stride(0), xs.stride(1), target.data_ptr(), u.data_ptr(),
                           k, -100, lse.data_ptr(), tlog.data_ptr(), slog.data_ptr(), sidx.data_ptr(), 0, stream,
                           gate, pieces=pieces, workspace=_native.ptr(workspaces[pieces]))

        def bwd(pieces):
            module.backward(code, xs.data_ptr(), 1, n, V, xs.stride(0), xs.stride(1), target.data_ptr(),
                            sidx.data_ptr(), lse.data_ptr(), *(g.data_ptr() for g in grads), -100, gs.data_ptr(),
                            gs.stride(0), gs.stride(1), 0, stream, pieces=pieces)

        fwd(cb._GATES["row"], 1)
        want = (sidx[:n].clone(), tlog[:n].clone(), lse[:n].clone())
        for gate_name in ("thread", "row"):
            record(f"cuda-small-fwd N={n}", f"gate={gate_name} pieces=1",
                   bench(lambda g=cb._GATES[gate_name]: fwd(g, 1)), n * V * es)
        for pieces in candidates[1:]:
            tag = " (auto)" if pieces == auto else ""
            record(f"cuda-small-fwd N={n}", f"pieces={pieces}{tag}", bench(lambda p=pieces: fwd(0, p)), n * V * es)
            agrees = (torch.equal(sidx[:n], want[0]) and torch.equal(tlog[:n].nan_to_num(), want[1].nan_to_num())
                      and torch.allclose(lse[:n], want[2], rtol=1e-5, atol=1e-5, equal_nan=True))
            if not agrees:
                print(f"cuda split rows N={n} pieces={pieces}: DISAGREES with one block per row")
        for pieces in candidates:
            tag = " (auto)" if pieces == auto else ""
            record(f"cuda-small-bwd N={n}", f"pieces={pieces}{tag}", bench(lambda p=pieces: bwd(p)), 2 * n * V * es)


if __name__ == "__main__":
    sys.exit(main())
