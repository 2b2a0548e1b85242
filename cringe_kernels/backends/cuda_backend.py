"""The ``cuda`` backend: the hand-written kernels of ``cringe_kernels._C_cuda``.

The kernels are torch-free (csrc/cuda) and take raw pointers, sizes, strides
and a stream; this module launches them on the logits' device and torch's
current stream, and :func:`cringe_kernels.backends._native.define_row_stats_ops`
checks the arguments, allocates the outputs and registers the calls as
``torch.library`` custom ops with fake implementations (``torch.compile``
traces through them):

``cringe_kernels::cuda_row_stats``, ``cringe_kernels::cuda_row_stats_backward``
and the in-place ``cringe_kernels::cuda_row_stats_backward_`` (same
signatures as the ``cpu_*`` ops in :mod:`cringe_kernels.backends.cpu_backend`),
and the single pass's ``cringe_kernels::cuda_row_stats_with_grad`` and
in-place ``cringe_kernels::cuda_row_stats_with_grad_backward_``.

The forward keeps the top-k in shared memory, for ``k_eff = min(k, V - 1)``
up to ``_C_cuda.max_k`` (64); a larger ``k_eff`` is refused with a
``ValueError`` (``backend="auto"`` takes the Triton backend there).

Launch choices (pieces per row for few rows, the single pass's launch
shape) are the pure functions of :mod:`cringe_kernels.backends.heuristics`,
looked up there at each launch; the SM count they need is queried once per
device.
"""

from typing import Callable, Dict, Tuple

import torch

from . import _native, heuristics
from .base import BackendStatus

try:
    from .. import _C_cuda
except ImportError as err:
    _C_cuda = None
    _IMPORT_ERROR = (f"cringe_kernels._C_cuda is not built ({err}); it is built when nvcc is found at install "
                     "time (CUDA_HOME, or CRINGE_KERNELS_FORCE_CUDA=1 to make that an error)")
else:
    _IMPORT_ERROR = ""


def _parse_archs(archs: str) -> Tuple[int, ...]:
    """Compute capabilities of an arch list such as ``"sm_80,sm_90"``: ``(80, 90)``."""
    return tuple(int(a.replace("sm_", "").rstrip("a")) for a in archs.split(",") if a.startswith("sm_"))


_ARCHS = _parse_archs(_C_cuda.archs) if _C_cuda is not None else ()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# The current stream's handle without building a torch.cuda.Stream object
# (what Inductor's generated code calls; absent from CPU builds of torch).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
if _raw_stream is not None:
    def _stream(device: torch.device) -> int:  # noqa: F811
        return _raw_stream(device.index)


def large_k_error(k: int, V: int, max_k: int) -> ValueError:
    """The error for a ``k_eff`` the CUDA kernels do not draw from."""
    return ValueError(f"backend='cuda' draws from at most {max_k} candidates; got k={k} (k_eff = min(k, V - 1) = "
                      f"{min(k, V - 1)}): use backend='triton' or backend='auto'")


def launchers(module, stream_of: Callable[[torch.device], int]):
    """The forward and backward launches of :func:`_native.define_row_stats_ops` over ``module``.

    Parameters
    ----------
    module
        ``_C_cuda``, or the same binding built for the tests' SIMT simulator
        (tests/cuda_sim.py), which runs these kernels on CPU tensors.
    stream_of : callable
        ``stream_of(device)``: the stream handle (an int) to launch on.

    Returns
    -------
    (launch_forward, launch_backward)
    """
    max_k = module.max_k
    forward, single_pass, backward = module.forward, module.single_pass, module.backward
    codes = _native.DTYPE_CODES
    sm_counts: Dict[int, int] = {}

    def pieces_for(n_rows: int, V: int, device: int) -> int:
        sms = sm_counts.get(device)
        if sms is None:
            sms = sm_counts[device] = module.sm_count(device)
        return heuristics.row_pieces(n_rows, V, sms)

    def launch_forward(logits, target, uniform, k, ignore_index, out, lse_weight=None, grad=None) -> None:
        B, T, V = logits.shape
        if k > max_k and V - 1 > max_k:
            raise large_k_error(k, V, max_k)
        device = logits.device.index or 0
        code = codes[logits.dtype]
        lse, target_logit, sample_logit, sample_index = out
        head = (code, logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1), target.data_ptr(),
                uniform.data_ptr() if k > 0 else 0, k, ignore_index, lse.data_ptr(), target_logit.data_ptr(),
                sample_logit.data_ptr(), sample_index.data_ptr(), device, stream_of(logits.device))
        if grad is not None:  # the single pass keeps each row in one block (it needs the row's lse)
            single_pass(*head, lse_weight.data_ptr(), grad.data_ptr(),
                        *heuristics.single_pass_shape(V * logits.element_size()))
            return
        pieces = pieces_for(B * T, V, device)
        if pieces == 1:
            forward(*head, 1, 0)
            return
        workspace = torch.empty(module.forward_workspace_bytes(code, B * T, V, k, pieces), dtype=torch.uint8,
                                device=logits.device)
        forward(*head, pieces, workspace.data_ptr())

    def launch_backward(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index,
                        lse_weight=None):
        B, T, V = logits.shape
        device = logits.device.index or 0
        backward(codes[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
                 target.data_ptr(), sample_index.data_ptr(), lse.data_ptr(), grad_lse.data_ptr(),
                 grad_target.data_ptr(), grad_sample.data_ptr(), ignore_index, grad.data_ptr(), grad.stride(0),
                 grad.stride(1), device, stream_of(logits.device), 0 if lse_weight is None else lse_weight.data_ptr(),
                 pieces_for(B * T, V, device))

    return launch_forward, launch_backward


# Allocation and launches run on the logits' device, whatever the current one.
if _C_cuda is not None:
    _launch_forward, _launch_backward = launchers(_C_cuda, _stream)
else:  # the ops exist either way; status() says why they cannot run
    def _launch_forward(*args, **kwargs):
        raise RuntimeError(_IMPORT_ERROR)

    _launch_backward = _launch_forward
OPS = _native.define_row_stats_ops("cuda", _launch_forward, _launch_backward, device_guard=torch.cuda.device)
SINGLE_PASS_OPS = _native.define_single_pass_ops("cuda", _launch_forward, _launch_backward,
                                                 device_guard=torch.cuda.device)


class CudaRowStats(_native.NativeRowStats):
    """Row statistics by the hand-written CUDA kernels (float16/bfloat16/float32/float64)."""

    name = "cuda"
    # csrc/cuda/launch.h kMaxK, _C_cuda.max_k: the largest k_eff the kernels
    # draw from, and a hard limit (max_k): a larger k_eff raises ValueError.
    kernel_max_k = 64
    max_k = 64
    ops = OPS
    single_pass_ops = SINGLE_PASS_OPS

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
        ok, reason = super().supports(logits)  # device and dtype
        if not ok:
            return ok, reason
        major, minor = torch.cuda.get_device_capability(logits.device)
        cc = 10 * major + minor
        archs = _ARCHS
        # SASS for sm_X runs on sm_X.y (same major, y >= 0); PTX of the
        # highest arch is JIT-compiled on newer majors.
        if not any(a // 10 == major and a <= cc for a in archs) and not (archs and cc > max(archs)):
            return False, f"_C_cuda was built for {_C_cuda.archs}, not for this GPU (sm_{cc}); set CRINGE_CUDA_ARCH_LIST"
        return True, ""
