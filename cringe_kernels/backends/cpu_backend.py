"""The ``cpu`` backend: the C++/OpenMP kernels of ``cringe_kernels._C_cpu``.

The kernels are torch-free (csrc/cpu, csrc/include/cringe); this module
allocates the top-k workspace (one slice of ``k_eff`` keys and columns per
thread, so peak memory is logits + gradient + O(threads * k)) and launches
the kernels. :func:`cringe_kernels.backends._native.define_row_stats_ops`
checks the arguments, allocates the outputs and exposes the calls as
``torch.library`` custom ops with fake implementations, so that
``torch.compile`` traces through them:

``cringe_kernels::cpu_row_stats(logits, target, uniform, k, ignore_index)``
    -> ``(lse, target_logit, sample_logit, sample_index)``
``cringe_kernels::cpu_row_stats_backward(logits, target, sample_index, lse,
grad_lse, grad_target, grad_sample, ignore_index)`` -> ``grad [B, T, V]``
``cringe_kernels::cpu_row_stats_backward_(...)``
    the same, written over ``logits`` (mutates it, returns nothing).
"""

import torch

from . import _native
from .base import BackendStatus

try:
    from .. import _C_cpu
except ImportError as err:  # not built (e.g. a source checkout without build_ext)
    _C_cpu = None
    _IMPORT_ERROR = f"cringe_kernels._C_cpu is not built ({err}); reinstall with a C++ compiler (pip install -e .)"
else:
    _IMPORT_ERROR = ""


# Logits per OpenMP thread below which another thread costs more (fork,
# join, dynamic scheduling) than it saves. Measured on the 2-core CI machine,
# forward alone, fp32 (us, 1 thread / 2 threads): 8 x 64: 12.7 / 24.9;
# 8 x 4096: 56.7 / 62.2; 64 x 1024: 181 / 230; 16 x 32000: 509 / 372;
# 256 x 8192: 3120 / 2429.
_LOGITS_PER_THREAD = 1 << 17


def _threads(logits) -> int:
    """OpenMP threads for ``logits``: torch's setting, one per 128 Ki logits at most."""
    B, T, V = logits.shape
    return max(1, min(torch.get_num_threads(), (B * T * V) // _LOGITS_PER_THREAD))


def _launch_forward(logits, target, uniform, k, ignore_index, out, lse_weight=None, grad=None) -> None:
    B, T, V = logits.shape
    threads = _threads(logits)
    k_eff = min(k, V - 1)
    # One slice of k_eff keys (at most 8 bytes each) and k_eff columns per thread.
    workspace = torch.empty(2 * threads * k_eff, dtype=torch.int64)
    keys = workspace.data_ptr()
    _C_cpu.forward(
        _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
        target.data_ptr(), _native.ptr(uniform if k > 0 else None), k, ignore_index,
        *(t.data_ptr() for t in out), keys, keys + 8 * threads * k_eff, threads,
        _native.ptr(lse_weight), _native.ptr(grad), *(grad.stride()[:2] if grad is not None else (0, 0)),
    )


def _launch_backward(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index,
                     lse_weight=None):
    B, T, V = logits.shape
    _C_cpu.backward(
        _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
        target.data_ptr(), sample_index.data_ptr(), lse.data_ptr(), grad_lse.data_ptr(), grad_target.data_ptr(),
        grad_sample.data_ptr(), ignore_index, grad.data_ptr(), grad.stride(0), grad.stride(1), _threads(logits),
        _native.ptr(lse_weight),
    )


OPS = _native.define_row_stats_ops("cpu", _launch_forward, _launch_backward)
SINGLE_PASS_OPS = _native.define_single_pass_ops("cpu", _launch_forward, _launch_backward)


class CpuRowStats(_native.NativeRowStats):
    """Row statistics by the C++/OpenMP kernels (float16/bfloat16/float32/float64)."""

    name = "cpu"
    ops = OPS
    single_pass_ops = SINGLE_PASS_OPS

    def status(self) -> BackendStatus:
        if _C_cpu is None:
            return BackendStatus(self.name, False, (), _IMPORT_ERROR)
        return BackendStatus(self.name, True, ("cpu",))
