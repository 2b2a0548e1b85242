"""The ``cuda`` backend: the hand-written kernels of ``cringe_kernels._C_cuda``.

The kernels are torch-free (csrc/cuda) and take raw pointers, sizes, strides
and a stream; this module checks the arguments, allocates the outputs, runs
on the logits' device and torch's current stream, and registers the calls as
``torch.library`` custom ops with fake implementations (``torch.compile``
traces through them):

``cringe_kernels::cuda_row_stats``, ``cringe_kernels::cuda_row_stats_backward``
and the in-place ``cringe_kernels::cuda_row_stats_backward_`` (same
signatures as the ``cpu_*`` ops in :mod:`cringe_kernels.backends.cpu_backend`).

The forward kernel keeps its top-k lists in shared memory, for
``k_eff = min(k, V - 1)`` up to ``_C_cuda.max_k`` (64). Beyond that the
kernel computes ``lse`` and the target logit and the draw is made by
:func:`cringe_kernels.reference.sample_columns` on the non-ignored rows
(same rule, so the same column; slower and with ``[rows, V]`` temporaries).
"""

from typing import Optional, Tuple

import torch

from .. import reference
from . import _native
from .base import BackendStatus, RowStats, RowStatsBackend, stats_dtype

try:
    from .. import _C_cuda
except ImportError as err:
    _C_cuda = None
    _IMPORT_ERROR = (f"cringe_kernels._C_cuda is not built ({err}); it is built when nvcc is found at install "
                     "time (CUDA_HOME, or CRINGE_KERNELS_FORCE_CUDA=1 to make that an error)")
else:
    _IMPORT_ERROR = ""

Tensor = torch.Tensor
MAX_K = _C_cuda.max_k if _C_cuda is not None else 64


def _archs() -> Tuple[int, ...]:
    """Compute capabilities the module has SASS for, e.g. ``(80, 90)``."""
    return tuple(int(a.replace("sm_", "").rstrip("a")) for a in _C_cuda.archs.split(",") if a.startswith("sm_"))


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@torch.library.custom_op("cringe_kernels::cuda_row_stats", mutates_args=(), device_types="cuda")
def cuda_row_stats(
    logits: Tensor, target: Tensor, uniform: Optional[Tensor], k: int, ignore_index: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward primitive on a CUDA device; see :mod:`cringe_kernels.backends.base`."""
    _native.check_forward(logits, target, uniform, k, "cuda")
    B, T, V = logits.shape
    k_eff = min(k, V - 1)
    kernel_k = k if k_eff <= MAX_K else 0
    with torch.cuda.device(logits.device):
        out = _native.new_stats(logits, B * T)
        if B * T:
            _C_cuda.forward(
                _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
                target.data_ptr(), _native.ptr(uniform if kernel_k > 0 else None), kernel_k, ignore_index,
                *(t.data_ptr() for t in out), logits.device.index, _stream(logits.device),
            )
        if kernel_k != k and B * T:
            _sample_large_k(logits, target, uniform, k, ignore_index, out)
    return out


def _sample_large_k(logits, target, uniform, k, ignore_index, out) -> None:
    """Draw for ``k_eff > MAX_K`` with the reference's rule (rows with a target in range)."""
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    keep = ((target != ignore_index) & (target >= 0) & (target < V)).nonzero().squeeze(1)
    if keep.numel() == 0:
        return
    x = rows.index_select(0, keep).to(stats_dtype(logits.dtype))
    s = reference.sample_columns(x, target.index_select(0, keep), uniform.index_select(0, keep), k)
    out[3].index_copy_(0, keep, s)
    out[2].index_copy_(0, keep, x.gather(1, s[:, None]).squeeze(1))


@cuda_row_stats.register_fake
def _(logits, target, uniform, k, ignore_index):
    return _native.fake_stats(logits, target)


def _backward_into(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
    _native.check_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, "cuda")
    B, T, V = logits.shape
    if B * T == 0:
        return
    with torch.cuda.device(logits.device):
        _C_cuda.backward(
            _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
            target.data_ptr(), sample_index.data_ptr(), lse.data_ptr(), grad_lse.data_ptr(),
            grad_target.data_ptr(), grad_sample.data_ptr(), ignore_index, grad.data_ptr(), grad.stride(0),
            grad.stride(1), logits.device.index, _stream(logits.device),
        )


@torch.library.custom_op("cringe_kernels::cuda_row_stats_backward", mutates_args=(), device_types="cuda")
def cuda_row_stats_backward(
    logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, grad_lse: Tensor, grad_target: Tensor,
    grad_sample: Tensor, ignore_index: int,
) -> Tensor:
    """Gradient of the logits as a new contiguous ``[B, T, V]`` tensor of the logits' dtype."""
    _native.check_logits(logits, "cuda")
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _backward_into(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)
    return grad


@cuda_row_stats_backward.register_fake
def _(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
    return logits.new_empty(logits.shape)


@torch.library.custom_op("cringe_kernels::cuda_row_stats_backward_", mutates_args=("logits",), device_types="cuda")
def cuda_row_stats_backward_(
    logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, grad_lse: Tensor, grad_target: Tensor,
    grad_sample: Tensor, ignore_index: int,
) -> None:
    """In-place form: the gradient is written over ``logits``."""
    _backward_into(logits, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)


@cuda_row_stats_backward_.register_fake
def _(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
    return None


class CudaRowStats(RowStatsBackend):
    """Row statistics by the hand-written CUDA kernels (float16/bfloat16/float32/float64)."""

    name = "cuda"

    def status(self) -> BackendStatus:
        if _C_cuda is None:
            return BackendStatus(self.name, False, (), _IMPORT_ERROR)
        built = f"_C_cuda built for {_C_cuda.archs} (CUDA runtime {_C_cuda.cuda_runtime_version}, linked statically)"
        if torch.version.cuda is None:
            return BackendStatus(self.name, True, (), f"{built}, but torch {torch.__version__} has no CUDA support")
        if not torch.cuda.is_available():
            return BackendStatus(self.name, True, (), f"{built}, but no CUDA device is visible")
        count, err = _C_cuda.device_count()
        if count == 0:
            return BackendStatus(self.name, True, (), f"{built}, but its runtime sees no device ({err})")
        return BackendStatus(self.name, True, ("cuda",))

    def supports(self, logits: torch.Tensor) -> tuple:
        ok, reason = super().supports(logits)
        if not ok:
            return ok, reason
        if logits.dtype not in _native.DTYPE_CODES:
            return False, f"backend 'cuda' does not support {logits.dtype}"
        major, minor = torch.cuda.get_device_capability(logits.device)
        cc = 10 * major + minor
        archs = _archs()
        # SASS for sm_X runs on sm_X.y (same major, y >= 0); PTX of the
        # highest arch is JIT-compiled on newer majors.
        if not any(a // 10 == major and a <= cc for a in archs) and not (archs and cc > max(archs)):
            return False, f"_C_cuda was built for {_C_cuda.archs}, not for this GPU (sm_{cc}); set CRINGE_CUDA_ARCH_LIST"
        return True, ""

    @torch.no_grad()
    def forward(self, logits, target, uniform, k, ignore_index) -> RowStats:
        return RowStats(*torch.ops.cringe_kernels.cuda_row_stats(logits, target, uniform, k, ignore_index))

    @torch.no_grad()
    def backward(self, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, inplace):
        args = (target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)
        if inplace:
            torch.ops.cringe_kernels.cuda_row_stats_backward_(logits, *args)
            return logits
        return torch.ops.cringe_kernels.cuda_row_stats_backward(logits, *args)
