"""The ``cpu`` backend: the C++/OpenMP kernels of ``cringe_kernels._C_cpu``.

The kernels are torch-free (csrc/cpu, csrc/include/cringe); this module
checks the arguments, allocates outputs and the top-k workspace (one slice of
``k_eff`` keys and columns per thread, so peak memory is logits + gradient +
O(threads * k)), and exposes the calls as ``torch.library`` custom ops with
fake implementations, so that ``torch.compile`` traces through them:

``cringe_kernels::cpu_row_stats(logits, target, uniform, k, ignore_index)``
    -> ``(lse, target_logit, sample_logit, sample_index)``
``cringe_kernels::cpu_row_stats_backward(logits, target, sample_index, lse,
grad_lse, grad_target, grad_sample, ignore_index)`` -> ``grad [B, T, V]``
``cringe_kernels::cpu_row_stats_backward_(...)``
    the same, written over ``logits`` (mutates it, returns nothing).
"""

from typing import Optional, Tuple

import torch

from . import _native
from .base import BackendStatus, RowStats, RowStatsBackend

try:
    from .. import _C_cpu
except ImportError as err:  # not built (e.g. a source checkout without build_ext)
    _C_cpu = None
    _IMPORT_ERROR = f"cringe_kernels._C_cpu is not built ({err}); reinstall with a C++ compiler (pip install -e .)"
else:
    _IMPORT_ERROR = ""

Tensor = torch.Tensor


def _threads() -> int:
    return max(1, torch.get_num_threads())


@torch.library.custom_op("cringe_kernels::cpu_row_stats", mutates_args=(), device_types="cpu")
def cpu_row_stats(
    logits: Tensor, target: Tensor, uniform: Optional[Tensor], k: int, ignore_index: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward primitive on the CPU; see :mod:`cringe_kernels.backends.base`."""
    _native.check_forward(logits, target, uniform, k, "cpu")
    B, T, V = logits.shape
    out = _native.new_stats(logits, B * T)
    if B * T == 0:
        return out
    threads = _threads()
    k_eff = min(k, V - 1)
    ws_keys = torch.empty(threads * k_eff, dtype=out[0].dtype)
    ws_cols = torch.empty(threads * k_eff, dtype=torch.int64)
    _C_cpu.forward(
        _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
        target.data_ptr(), _native.ptr(uniform if k > 0 else None), k, ignore_index,
        *(t.data_ptr() for t in out), ws_keys.data_ptr(), ws_cols.data_ptr(), threads,
    )
    return out


@cpu_row_stats.register_fake
def _(logits, target, uniform, k, ignore_index):
    return _native.fake_stats(logits, target)


def _backward_into(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
    _native.check_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, "cpu")
    B, T, V = logits.shape
    if B * T == 0:
        return
    _C_cpu.backward(
        _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
        target.data_ptr(), sample_index.data_ptr(), lse.data_ptr(), grad_lse.data_ptr(), grad_target.data_ptr(),
        grad_sample.data_ptr(), ignore_index, grad.data_ptr(), grad.stride(0), grad.stride(1), _threads(),
    )


@torch.library.custom_op("cringe_kernels::cpu_row_stats_backward", mutates_args=(), device_types="cpu")
def cpu_row_stats_backward(
    logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, grad_lse: Tensor, grad_target: Tensor,
    grad_sample: Tensor, ignore_index: int,
) -> Tensor:
    """Gradient of the logits as a new contiguous ``[B, T, V]`` tensor of the logits' dtype."""
    _native.check_logits(logits, "cpu")
    grad = torch.empty(logits.shape, dtype=logits.dtype)
    _backward_into(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)
    return grad


@cpu_row_stats_backward.register_fake
def _(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
    return logits.new_empty(logits.shape)


@torch.library.custom_op("cringe_kernels::cpu_row_stats_backward_", mutates_args=("logits",), device_types="cpu")
def cpu_row_stats_backward_(
    logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, grad_lse: Tensor, grad_target: Tensor,
    grad_sample: Tensor, ignore_index: int,
) -> None:
    """In-place form: the gradient is written over ``logits``."""
    _backward_into(logits, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)


@cpu_row_stats_backward_.register_fake
def _(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
    return None


class CpuRowStats(RowStatsBackend):
    """Row statistics by the C++/OpenMP kernels (float16/bfloat16/float32/float64)."""

    name = "cpu"

    def status(self) -> BackendStatus:
        if _C_cpu is None:
            return BackendStatus(self.name, False, (), _IMPORT_ERROR)
        return BackendStatus(self.name, True, ("cpu",))

    def supports(self, logits: torch.Tensor) -> tuple:
        ok, reason = super().supports(logits)
        if ok and logits.dtype not in _native.DTYPE_CODES:
            return False, f"backend 'cpu' does not support {logits.dtype}"
        return ok, reason

    @torch.no_grad()
    def forward(self, logits, target, uniform, k, ignore_index) -> RowStats:
        return RowStats(*torch.ops.cringe_kernels.cpu_row_stats(logits, target, uniform, k, ignore_index))

    @torch.no_grad()
    def backward(self, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, inplace):
        args = (target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)
        if inplace:
            torch.ops.cringe_kernels.cpu_row_stats_backward_(logits, *args)
            return logits
        return torch.ops.cringe_kernels.cpu_row_stats_backward(logits, *args)
