"""Compile the Triton kernels for a GPU target without a GPU (run by test_triton_compile.py).

Triton's interpreter runs the kernels' Python semantics on the CPU but never
lowers them, so a kernel can pass every interpreter test and still fail to
compile for a GPU (a branch yielding different types, an unsupported op), or
compile to narrow loads. This script compiles the launch configurations the
backend uses for ``sm_90`` with Triton's own compiler (and its ptxas), with the
16-byte alignment facts a real launch has (Triton specialises pointers and
integers divisible by 16), and prints one JSON line per kernel: registers,
stack and local-memory bytes (spills), and whether the logits are read (and the gradient written) with
16-byte vector accesses.

Must run without ``TRITON_INTERPRET`` (the kernels must be JIT functions).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cringe_kernels.backends import triton_kernels as k


def _aligned(fn, names):
    """The divisibility-by-16 attributes a launch with aligned pointers and strides gets."""
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}


def forward(dtype, acc, K, block, sub, warps, with_grad=False):
    sig = dict(x_ptr=f"*{dtype}", target_ptr="*i64", uniform_ptr="*fp32", lse_ptr=f"*{acc}", tlogit_ptr=f"*{acc}",
               slogit_ptr=f"*{acc}", sidx_ptr="*i64", w_ptr=f"*{acc}", out_ptr=f"*{dtype}", T="i32", V="i32",
               stride_b="i64", stride_t="i64", out_stride_b="i64", out_stride_t="i64", ignore_index="i64",
               ACC="constexpr", K="constexpr", KPAD="constexpr", BLOCK="constexpr", SUB="constexpr",
               WITH_GRAD="constexpr", BF16_BY_HAND="constexpr")
    const = dict(ACC=tl.float64 if acc == "fp64" else tl.float32, K=K, KPAD=triton.next_power_of_2(max(K, 1)),
                 BLOCK=block, SUB=sub, WITH_GRAD=with_grad, BF16_BY_HAND=False)
    fn = k.row_stats_fwd_kernel
    attrs = _aligned(fn, ["x_ptr", "target_ptr", "uniform_ptr", "lse_ptr", "tlogit_ptr", "slogit_ptr", "sidx_ptr",
                          "w_ptr", "out_ptr", "V", "stride_b", "stride_t", "out_stride_b", "out_stride_t"])
    name = f"fwd{'+grad' if with_grad else ''} {dtype} K={K} BLOCK={block} SUB={sub} warps={warps}"
    return name, ASTSource(fn, sig, const, attrs), warps


def backward(dtype, acc, block, warps):
    sig = dict(x_ptr=f"*{dtype}", out_ptr=f"*{dtype}", target_ptr="*i64", sidx_ptr="*i64", lse_ptr=f"*{acc}",
               glse_ptr=f"*{acc}", gt_ptr=f"*{acc}", gs_ptr=f"*{acc}", T="i32", V="i32", stride_b="i64",
               stride_t="i64", out_stride_b="i64", out_stride_t="i64", ignore_index="i64",
               ACC="constexpr", BLOCK="constexpr", BF16_BY_HAND="constexpr")
    const = dict(ACC=tl.float64 if acc == "fp64" else tl.float32, BLOCK=block, BF16_BY_HAND=False)
    fn = k.row_stats_bwd_kernel
    attrs = _aligned(fn, ["x_ptr", "out_ptr", "target_ptr", "sidx_ptr", "lse_ptr", "glse_ptr", "gt_ptr", "gs_ptr",
                          "V", "stride_b", "stride_t", "out_stride_b", "out_stride_t"])
    name = f"bwd {dtype} BLOCK={block} warps={warps}"
    return name, ASTSource(fn, sig, const, attrs), warps


def complete(dtype, acc, rows, block, warps):
    """The single pass's completion (rows written in full keep 16-byte accesses)."""
    sig = dict(x_ptr=f"*{dtype}", out_ptr=f"*{dtype}", target_ptr="*i64", sidx_ptr="*i64", lse_ptr=f"*{acc}",
               glse_ptr=f"*{acc}", gt_ptr=f"*{acc}", gs_ptr=f"*{acc}", w_ptr=f"*{acc}", N="i32", T="i32", V="i32",
               stride_b="i64", stride_t="i64", out_stride_b="i64", out_stride_t="i64", ignore_index="i64",
               ACC="constexpr", ROWS="constexpr", BLOCK="constexpr", BF16_BY_HAND="constexpr")
    const = dict(ACC=tl.float64 if acc == "fp64" else tl.float32, ROWS=rows, BLOCK=block, BF16_BY_HAND=False)
    fn = k.row_stats_complete_kernel
    attrs = _aligned(fn, ["x_ptr", "out_ptr", "target_ptr", "sidx_ptr", "lse_ptr", "glse_ptr", "gt_ptr", "gs_ptr",
                          "w_ptr", "V", "stride_b", "stride_t", "out_stride_b", "out_stride_t"])
    name = f"bwd-complete {dtype} ROWS={rows} BLOCK={block} warps={warps}"
    return name, ASTSource(fn, sig, const, attrs), warps


CASES = [
    forward("bf16", "fp32", 5, 2048, 2048, 4),   # the default at k <= 8
    forward("bf16", "fp32", 5, 4096, 256, 8),    # the register-light variant the tune tries
    forward("fp16", "fp32", 0, 2048, 2048, 4),   # no sampling
    forward("fp32", "fp32", 64, 1024, 1024, 4),  # the default for k > 8
    forward("fp64", "fp64", 3, 256, 256, 4),     # float64 (gradcheck): libdevice exp/log
    forward("bf16", "fp32", 5, 2048, 2048, 4, with_grad=True),  # the single pass
    backward("bf16", "fp32", 4096, 8),
    backward("fp64", "fp64", 4096, 8),
    complete("bf16", "fp32", 16, 8192, 8),  # completing the single pass
]


def main() -> int:
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    # Triton's wheel carries cuobjdump: read registers, stack and local memory
    # (spills) off the cubin Triton assembled.
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    target = GPUTarget("cuda", arch, 32)
    for name, src, warps in CASES:
        out = triton.compile(src, target=target, options=dict(num_warps=warps))
        ptx = out.asm["ptx"]
        # 16-byte accesses: v4 of 32-bit words, or v2 of 64-bit ones (float64).
        row = {"kernel": name, "arch": arch, "cubin_bytes": len(out.asm["cubin"]),
               "vector_loads": len(re.findall(r"ld\.global(?:\.nc)?\.(?:v4\.b32|v2\.b64)", ptx)),
               "vector_stores": len(re.findall(r"st\.global\.(?:v4\.b32|v2\.b64)", ptx))}
        if os.path.exists(cuobjdump):
            with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
                f.write(out.asm["cubin"])
            usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
            os.unlink(f.name)
            m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
            row.update(registers=int(m.group(1)), stack_bytes=int(m.group(2)), shared_bytes=int(m.group(3)),
                       local_bytes=int(m.group(4)))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
