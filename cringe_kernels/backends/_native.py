"""What the compiled backends (``cpu``, ``cuda``) share: argument checks, packing,
their ``torch.library`` custom ops and the backend class that calls them.

The compiled modules take raw pointers, so everything that would otherwise
be an out-of-bounds access or a wrong reinterpretation of memory is checked
here, before a pointer leaves Python: dtypes, shapes, unit last stride,
contiguity of the ``[N]`` vectors, one device for all tensors.

:func:`define_row_stats_ops` registers, for a device type ``D``,

``cringe_kernels::D_row_stats(logits, target, uniform, k, ignore_index)``
    -> ``(lse, target_logit, sample_logit, sample_index)``
``cringe_kernels::D_row_stats_backward(logits, target, sample_index, lse,
grad_lse, grad_target, grad_sample, ignore_index)`` -> ``grad [B, T, V]``
``cringe_kernels::D_row_stats_backward_(...)``
    the same, written over ``logits`` (mutates it, returns nothing),

each with a fake implementation, so that ``torch.compile`` traces through
them; a backend supplies only the two calls into its compiled module. They
come back as :class:`~cringe_kernels.backends._dispatch.EagerOp`: a plain
eager call runs the op's body without the dispatcher's host overhead.
"""

import contextlib
from typing import Callable, ContextManager, NamedTuple, Optional, Tuple

import torch

from ..validate import check_no_overlap
from ._dispatch import EagerOp
from .base import RowStats, RowStatsBackend, stats_dtype

Tensor = torch.Tensor

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


def _no_guard(device: torch.device) -> ContextManager:
    return contextlib.nullcontext()


def _register(qualname: str, body: Callable, mutates_args, device_type: str, fake: Callable,
              unchecked_body: Callable) -> EagerOp:
    """Register ``body`` as the custom op ``qualname`` with the fake ``fake``;
    ``unchecked_body`` is ``body`` without its argument checks
    (:meth:`EagerOp.unchecked`)."""
    op = torch.library.custom_op(qualname, body, mutates_args=mutates_args, device_types=device_type)
    op.register_fake(fake)
    return EagerOp.registered(qualname, body, unchecked_body)


class RowStatsOps(NamedTuple):
    """The three ops of one device type (:class:`EagerOp`: the ``torch.ops``
    overload packet is ``.op``)."""

    forward: object
    backward: object
    backward_: object


def define_row_stats_ops(
    device_type: str,
    launch_forward: Callable[..., None],
    launch_backward: Callable[..., None],
    device_guard: Callable[[torch.device], ContextManager] = _no_guard,
    name: Optional[str] = None,
) -> RowStatsOps:
    """Register ``cringe_kernels::<device_type>_row_stats[_backward[_]]`` and their fakes.

    The ops check every argument, allocate the outputs and skip the launch
    when there are no rows; the launches only see checked calls with
    ``B * T > 0``.

    Parameters
    ----------
    device_type : str
        ``"cpu"`` or ``"cuda"``: the ops' ``device_types``, the device type
        the checks require and, unless ``name`` is given, the op names' prefix.
    launch_forward : callable
        ``launch_forward(logits, target, uniform, k, ignore_index, out)``
        fills ``out = (lse, target_logit, sample_logit, sample_index)``.
    launch_backward : callable
        ``launch_backward(grad, logits, target, sample_index, lse, grad_lse,
        grad_target, grad_sample, ignore_index)`` writes the gradient into
        ``grad`` (which may be ``logits`` itself).
    device_guard : callable, optional
        ``device_guard(logits.device)``: the context manager that allocation
        and launch run under (e.g. ``torch.cuda.device``); none by default.
    name : str, optional
        Prefix of the op names when it is not ``device_type`` (the tests run
        the CUDA kernels on CPU tensors under a simulator as ``cuda_sim``).

    Returns
    -------
    RowStatsOps
    """
    name = name or device_type
    prefix = f"cringe_kernels::{name}_row_stats"

    def run_forward(logits, target, uniform, k, ignore_index):
        B, T, _ = logits.shape
        with device_guard(logits.device):
            out = new_stats(logits, B * T)
            if B * T:
                launch_forward(logits, target, uniform, k, ignore_index, out)
        return out

    def row_stats(
        logits: Tensor, target: Tensor, uniform: Optional[Tensor], k: int, ignore_index: int
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Forward primitive; see :mod:`cringe_kernels.backends.base`."""
        check_forward(logits, target, uniform, k, device_type)
        return run_forward(logits, target, uniform, k, ignore_index)

    def run_backward_into(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
        B, T, _ = logits.shape
        if B * T:
            with device_guard(logits.device):
                launch_backward(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample,
                                ignore_index)

    def run_backward(logits, *args):
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        run_backward_into(grad, logits, *args)
        return grad

    def run_backward_(logits, *args):
        run_backward_into(logits, logits, *args)

    def row_stats_backward(
        logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, grad_lse: Tensor, grad_target: Tensor,
        grad_sample: Tensor, ignore_index: int,
    ) -> Tensor:
        """Gradient of the logits as a new contiguous ``[B, T, V]`` tensor of the logits' dtype."""
        check_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, device_type)
        return run_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)

    def row_stats_backward_(
        logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, grad_lse: Tensor, grad_target: Tensor,
        grad_sample: Tensor, ignore_index: int,
    ) -> None:
        """In-place form: the gradient is written over ``logits``."""
        check_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, device_type)
        check_no_overlap("logits", logits)
        run_backward_(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)

    def fake_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index):
        return logits.new_empty(logits.shape)

    return RowStatsOps(
        _register(prefix, row_stats, (), device_type, lambda logits, target, *_: fake_stats(logits, target),
                  run_forward),
        _register(f"{prefix}_backward", row_stats_backward, (), device_type, fake_backward, run_backward),
        _register(f"{prefix}_backward_", row_stats_backward_, ("logits",), device_type, lambda *_: None,
                  run_backward_),
    )


class SinglePassOps(NamedTuple):
    """The single-pass ops of one backend (:func:`define_single_pass_ops`)."""

    forward: object
    backward_: object


def define_single_pass_ops(
    device_type: str,
    launch_forward: Callable[..., None],
    launch_backward: Callable[..., None],
    device_guard: Callable[[torch.device], ContextManager] = _no_guard,
    name: Optional[str] = None,
) -> SinglePassOps:
    """Register ``cringe_kernels::<name>_row_stats_with_grad[_backward_]`` and their fakes.

    ``<name>_row_stats_with_grad(logits, target, uniform, k, ignore_index,
    lse_weight)`` -> ``(lse, target_logit, sample_logit, sample_index, grad)``
    and ``<name>_row_stats_with_grad_backward_(grad, logits, target,
    sample_index, lse, lse_weight, grad_lse, grad_target, grad_sample,
    ignore_index)`` (completes ``grad`` in place): see
    :meth:`cringe_kernels.backends.base.RowStatsBackend.forward_with_grad`.
    The launches are those of :func:`define_row_stats_ops`, called with the
    keywords ``lse_weight`` and ``grad``.
    """
    name = name or device_type
    prefix = f"cringe_kernels::{name}_row_stats_with_grad"

    def check_grad_inputs(logits, lse_weight, grad=None):
        n = logits.shape[0] * logits.shape[1]
        check_vector("lse_weight", lse_weight, n, stats_dtype(logits.dtype), logits.device)
        if grad is not None:
            _need(isinstance(grad, torch.Tensor) and grad.shape == logits.shape and grad.dtype == logits.dtype
                  and grad.is_contiguous() and grad.device == logits.device, ValueError,
                  "grad must be a contiguous tensor of the logits' shape, dtype and device")

    def run_with_grad(logits, target, uniform, k, ignore_index, lse_weight):
        B, T, _ = logits.shape
        with device_guard(logits.device):
            out = new_stats(logits, B * T)
            grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
            if B * T:
                launch_forward(logits, target, uniform, k, ignore_index, out, lse_weight=lse_weight, grad=grad)
        return (*out, grad)

    def with_grad(
        logits: Tensor, target: Tensor, uniform: Optional[Tensor], k: int, ignore_index: int, lse_weight: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Forward primitive plus the gradient for d loss / d lse = ``lse_weight``."""
        check_forward(logits, target, uniform, k, device_type)
        check_grad_inputs(logits, lse_weight)
        return run_with_grad(logits, target, uniform, k, ignore_index, lse_weight)

    def fake_with_grad(logits, target, uniform, k, ignore_index, lse_weight):
        return (*fake_stats(logits, target), logits.new_empty(logits.shape))

    def run_with_grad_backward_(grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target,
                                grad_sample, ignore_index):
        B, T, _ = logits.shape
        if B * T:
            with device_guard(logits.device):
                launch_backward(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample,
                                ignore_index, lse_weight=lse_weight)

    def with_grad_backward_(
        grad: Tensor, logits: Tensor, target: Tensor, sample_index: Tensor, lse: Tensor, lse_weight: Tensor,
        grad_lse: Tensor, grad_target: Tensor, grad_sample: Tensor, ignore_index: int,
    ) -> None:
        """Completes ``grad`` (from the forward with the same ``lse_weight``) in place."""
        check_backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, device_type)
        check_grad_inputs(logits, lse_weight, grad)
        run_with_grad_backward_(grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target,
                                grad_sample, ignore_index)

    return SinglePassOps(
        _register(prefix, with_grad, (), device_type, fake_with_grad, run_with_grad),
        _register(f"{prefix}_backward_", with_grad_backward_, ("grad",), device_type, lambda *_: None,
                  run_with_grad_backward_),
    )


class NativeRowStats(RowStatsBackend):
    """Base class of the compiled backends: calls the ops of :func:`define_row_stats_ops`.

    Subclasses set ``name``, ``ops`` (what :func:`define_row_stats_ops`
    returned) and implement :meth:`status`. The methods take arguments
    already in the layout of :mod:`cringe_kernels.backends.base` (the losses
    make it) and call the ops without repeating their argument checks; the
    ops themselves, called by name, check everything. The autograd
    Functions call them with gradients off.
    """

    ops: RowStatsOps

    def supports(self, logits: torch.Tensor) -> tuple:
        ok, reason = super().supports(logits)
        if ok and logits.dtype not in DTYPE_CODES:
            return False, f"backend '{self.name}' does not support {logits.dtype}"
        return ok, reason

    def forward(self, logits, target, uniform, k, ignore_index) -> RowStats:
        return RowStats(*self.ops.forward.unchecked(logits, target, uniform, k, ignore_index))

    # What define_single_pass_ops returned, for a backend with a single pass.
    single_pass_ops: Optional[SinglePassOps] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.single_pass = cls.single_pass_ops is not None

    def forward_with_grad(self, logits, target, uniform, k, ignore_index, lse_weight):
        if self.single_pass_ops is None:
            return super().forward_with_grad(logits, target, uniform, k, ignore_index, lse_weight)
        *stats, grad = self.single_pass_ops.forward.unchecked(logits, target, uniform, k, ignore_index, lse_weight)
        return RowStats(*stats), grad

    def backward_with_grad(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target,
                           grad_sample, ignore_index):
        if self.single_pass_ops is None or grad is None:
            return super().backward_with_grad(grad, logits, target, sample_index, lse, lse_weight, grad_lse,
                                              grad_target, grad_sample, ignore_index)
        self.single_pass_ops.backward_.unchecked(grad, logits, target, sample_index, lse, lse_weight, grad_lse,
                                                 grad_target, grad_sample, ignore_index)
        return grad

    def backward(self, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, inplace):
        args = (target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index)
        if inplace:
            self.ops.backward_.unchecked(logits, *args)
            return logits
        return self.ops.backward.unchecked(logits, *args)
