"""Argument checks and packing shared by the compiled backends (``cpu``, ``cuda``).

The compiled modules take raw pointers, so everything that would otherwise
be an out-of-bounds access or a wrong reinterpretation of memory is checked
here, before a pointer leaves Python: dtypes, shapes, unit last stride,
contiguity of the ``[N]`` vectors, one device for all tensors.
"""

from typing import Optional

import torch

from .base import stats_dtype

# Must match cringe::DType in csrc/include/cringe/macros.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _need(cond: bool, exc, message: str) -> None:
    if not cond:
        raise exc(message)


def check_logits(logits: torch.Tensor, device_type: str) -> None:
    """``logits``: ``[B, T, V]``, a supported dtype, unit last stride, on ``device_type``."""
    _need(isinstance(logits, torch.Tensor), TypeError, f"logits must be a Tensor; got {type(logits).__name__}")
    _need(logits.dim() == 3, ValueError, f"logits must have shape [B, T, V]; got {tuple(logits.shape)}")
    _need(logits.dtype in DTYPE_CODES, TypeError,
          f"logits must be float16, bfloat16, float32 or float64; got {logits.dtype}")
    _need(logits.device.type == device_type, ValueError, f"logits must be on {device_type}; got {logits.device}")
    _need(logits.shape[2] >= 2, ValueError, f"V must be >= 2; got {logits.shape[2]}")
    _need(logits.stride(2) == 1, ValueError, f"logits must have last stride 1; got strides {logits.stride()}")


def check_vector(name: str, t: Optional[torch.Tensor], n: int, dtype: torch.dtype, device: torch.device) -> None:
    """``t``: a contiguous ``[n]`` tensor of ``dtype`` on ``device``."""
    _need(isinstance(t, torch.Tensor), TypeError, f"{name} must be a Tensor; got {type(t).__name__}")
    _need(t.dtype == dtype, TypeError, f"{name} must be {dtype}; got {t.dtype}")
    _need(tuple(t.shape) == (n,), ValueError, f"{name} must have shape [{n}]; got {tuple(t.shape)}")
    _need(t.is_contiguous(), ValueError, f"{name} must be contiguous")
    _need(t.device == device, ValueError, f"{name} must be on {device}; got {t.device}")


def check_forward(logits, target, uniform, k: int, device_type: str) -> None:
    """All checks of a forward call (see :mod:`cringe_kernels.backends.base`)."""
    check_logits(logits, device_type)
    n = logits.shape[0] * logits.shape[1]
    check_vector("target", target, n, torch.int64, logits.device)
    _need(isinstance(k, int) and k >= 0, ValueError, f"k must be an int >= 0; got {k!r}")
    if k > 0:
        check_vector("uniform", uniform, n, torch.float32, logits.device)


def check_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, device_type: str) -> None:
    """All checks of a backward call (see :mod:`cringe_kernels.backends.base`)."""
    check_logits(logits, device_type)
    n = logits.shape[0] * logits.shape[1]
    check_vector("target", target, n, torch.int64, logits.device)
    check_vector("sample_index", sample_index, n, torch.int64, logits.device)
    dt = stats_dtype(logits.dtype)
    for name, t in (("lse", lse), ("grad_lse", grad_lse), ("grad_target", grad_target), ("grad_sample", grad_sample)):
        check_vector(name, t, n, dt, logits.device)


def ptr(t: Optional[torch.Tensor]) -> int:
    """Data pointer as an int (0 for None)."""
    return 0 if t is None else t.data_ptr()


def new_stats(logits: torch.Tensor, n: int):
    """Uninitialised ``lse, target_logit, sample_logit, sample_index`` (``[n]`` each)."""
    dt = stats_dtype(logits.dtype)
    return (
        torch.empty(n, dtype=dt, device=logits.device),
        torch.empty(n, dtype=dt, device=logits.device),
        torch.empty(n, dtype=dt, device=logits.device),
        torch.empty(n, dtype=torch.int64, device=logits.device),
    )


def fake_stats(logits: torch.Tensor, target: torch.Tensor):
    """Meta/fake outputs of a forward op, for torch.compile."""
    dt = stats_dtype(logits.dtype)
    n = target.shape[0]
    return (logits.new_empty(n, dtype=dt), logits.new_empty(n, dtype=dt), logits.new_empty(n, dtype=dt),
            logits.new_empty(n, dtype=torch.int64))
