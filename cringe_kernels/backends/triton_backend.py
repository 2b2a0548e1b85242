"""The Triton backend of the row-statistics primitive.

This module owns allocation, launch parameters and the ``torch.library``
registration; the kernels are in :mod:`cringe_kernels.backends.triton_kernels`
and the conventions in :mod:`cringe_kernels.backends.base`.

The two kernels are registered as custom ops
(``cringe_kernels::triton_row_stats``, ``cringe_kernels::triton_row_grad`` and
the in-place ``cringe_kernels::triton_row_grad_``) with fake implementations,
so ``torch.compile`` keeps them in the graph instead of breaking it on a
Triton launch. On a GPU they are ``torch.library.triton_op`` ops, which
Inductor can see into; under the CPU interpreter (``TRITON_INTERPRET=1`` at
import) they are opaque ``torch.library.custom_op`` ops, because an
interpreted launch cannot be captured into a graph and would otherwise vanish
from it. Nothing here synchronises with the host.

Importing this module touches no GPU: it defines the kernels (Triton compiles
lazily, at the first launch) and registers the ops.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple

import torch

from . import heuristics
from ._dispatch import EagerOp
from .base import BackendStatus, RowStats, RowStatsBackend, stats_dtype

try:
    import triton

    from . import triton_kernels as _k
except ImportError as err:  # pragma: no cover - depends on the environment
    _IMPORT_ERROR: Optional[BaseException] = err
else:
    _IMPORT_ERROR = None

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Largest k_eff the kernel handles. The draw compares every pair of candidates
# ([KPAD, KPAD] registers), which stops fitting on chip beyond this; larger k
# (an unusual setting: the papers use k = 5) is computed by the PyTorch
# implementation of the primitive (exact, with [N, V] temporaries).
MAX_KERNEL_K = 256


# Triton reads TRITON_INTERPRET when it is imported; so does this module, once.
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def _interpreting() -> bool:
    return _INTERPRETING


def _acc(dtype: torch.dtype):
    return _k.tl.float64 if dtype == torch.float64 else _k.tl.float32


def _tracing(t: torch.Tensor) -> bool:
    """True for a fake (or meta) tensor: there is nothing to compute.

    On a GPU, ``wrap_triton`` turns a launch on fake tensors into a graph node.
    Under the interpreter it returns the raw kernel, which would read the fake
    tensors' (absent) data, so the launchers skip it themselves.
    """
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type == "meta" or is_fake(t)


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _check_layout(logits: torch.Tensor) -> None:
    """The kernels' addressing: ``[B, T, V]``, unit last stride, int32 columns."""
    if logits.dim() != 3 or logits.stride(-1) != 1:
        raise ValueError(
            f"the triton backend needs [B, T, V] logits with last stride 1; got shape "
            f"{tuple(logits.shape)}, strides {logits.stride()}"
        )
    V = logits.shape[-1]
    if V >= _k.EMPTY.value:
        raise ValueError(f"the triton backend supports V < 2**30 columns; got V={V}")


def _as_stats(logits: torch.Tensor, *vectors: torch.Tensor):
    """Per-row vectors in the statistics' dtype, contiguous, as the kernels read them."""
    acc = stats_dtype(logits.dtype)
    return tuple(v.to(acc).contiguous() for v in vectors)


def _forward_config(V: int, k: int, block_v: int, sub_v: int) -> heuristics.TritonForwardConfig:
    """:func:`heuristics.triton_forward_config`, with the block and the offer's
    piece given by the caller where they are not 0 (tests take small blocks)."""
    if block_v <= 0:
        config = heuristics.triton_forward_config(V, k)
        return config if sub_v <= 0 else config._replace(sub=min(sub_v, config.block))
    return heuristics.TritonForwardConfig(block_v, heuristics.triton_num_warps(block_v),
                                          min(sub_v, block_v) if sub_v > 0 else block_v)


def _launch_forward(logits, target, uniform, k, ignore_index, config: heuristics.TritonForwardConfig,
                    lse_weight=None, grad=None):
    """The forward kernel with an explicit ``config`` (``benchmarks/kernel_tune.py`` times others)."""
    B, T, V = logits.shape
    N = B * T
    acc = stats_dtype(logits.dtype)
    lse = torch.empty(N, dtype=acc, device=logits.device)
    t_logit = torch.empty(N, dtype=acc, device=logits.device)
    s_logit = torch.empty(N, dtype=acc, device=logits.device)
    s_index = torch.empty(N, dtype=torch.long, device=logits.device)
    if N == 0 or (_interpreting() and _tracing(logits)):
        return lse, t_logit, s_logit, s_index
    with_grad = grad is not None
    kpad = triton.next_power_of_2(max(k, 1))
    # With k == 0 the uniform is never read; any pointer will do.
    u = uniform if uniform is not None else lse
    with _on_device(logits):
        torch.library.wrap_triton(_k.row_stats_fwd_kernel)[(N,)](
            logits, target, u, lse, t_logit, s_logit, s_index,
            lse_weight if with_grad else lse, grad if with_grad else logits,
            T, V, logits.stride(0), logits.stride(1),
            grad.stride(0) if with_grad else 0, grad.stride(1) if with_grad else 0, ignore_index,
            ACC=_acc(logits.dtype), K=k, KPAD=kpad, BLOCK=config.block, SUB=config.sub, WITH_GRAD=with_grad,
            BF16_BY_HAND=with_grad and _interpreting() and logits.dtype == torch.bfloat16,
            num_warps=config.num_warps,
        )
    return lse, t_logit, s_logit, s_index


def _launch_backward(logits, out, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, block_v,
                     lse_weight=None):
    B, T, V = logits.shape
    N = B * T
    if N == 0 or (_interpreting() and _tracing(logits)):
        return
    block = block_v if block_v > 0 else heuristics.triton_backward_block(V)
    args = (logits, out, target, sample_index, lse, grad_lse, grad_target, grad_sample)
    strides = (logits.stride(0), logits.stride(1), out.stride(0), out.stride(1))
    bf16_by_hand = _interpreting() and logits.dtype == torch.bfloat16
    with _on_device(logits):
        if lse_weight is not None:
            # A few waves of programs with a row vector each (see the kernel).
            rows = heuristics.TRITON_COMPLETE_ROWS
            torch.library.wrap_triton(_k.row_stats_complete_kernel)[(triton.cdiv(N, rows),)](
                *args, lse_weight, N, T, V, *strides, ignore_index, ACC=_acc(logits.dtype), ROWS=rows,
                BLOCK=block, BF16_BY_HAND=bf16_by_hand, num_warps=heuristics.triton_num_warps(block),
            )
            return
        # The column blocks go on the grid's second axis, limited to 65535.
        block = max(block, triton.next_power_of_2(triton.cdiv(V, 65535)))
        torch.library.wrap_triton(_k.row_stats_bwd_kernel)[(N, triton.cdiv(V, block))](
            *args, T, V, *strides, ignore_index, ACC=_acc(logits.dtype), BLOCK=block, BF16_BY_HAND=bf16_by_hand,
            num_warps=heuristics.triton_num_warps(block),
        )


def _register(name: str, mutates_args):
    """``triton_op`` on a GPU; an opaque ``custom_op`` under the interpreter.

    The decorated name becomes an :class:`~cringe_kernels.backends._dispatch.EagerOp`:
    plain eager calls run the body without the dispatcher's host overhead.
    """

    def wrap(fn):
        if not _interpreting():
            torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        else:
            op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
            # The body allocates the outputs and skips the launch on fake tensors.
            op.register_fake(fn)
        return EagerOp.registered(name, fn)

    return wrap


if _IMPORT_ERROR is None:

    @_register("cringe_kernels::triton_row_stats", mutates_args=())
    def triton_row_stats(
        logits: torch.Tensor,
        target: torch.Tensor,
        uniform: Optional[torch.Tensor],
        k: int,
        ignore_index: int,
        block_v: int,
        sub_v: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward statistics: ``(lse, target_logit, sample_logit, sample_index)``.

        Parameters
        ----------
        logits : Tensor, ``[B, T, V]``, last stride 1, float16/bfloat16/float32/float64
        target : Tensor, ``[N]``, int64, contiguous
        uniform : Tensor, ``[N]``, float32, contiguous, or None when ``k == 0``
        k : int
            ``k_eff`` (already ``min(k, V - 1)``), ``0 <= k <= MAX_KERNEL_K``.
        ignore_index : int
        block_v : int
            Columns per step; 0 picks the default (tests use small blocks).
        sub_v : int
            Columns per top-k offer (a power of two); 0 picks the default.

        Returns
        -------
        tuple of Tensor
            ``[N]`` each: three in the statistics dtype, then int64.
        """
        config = _forward_config(logits.shape[-1], k, block_v, sub_v)
        return _launch_forward(logits, target, uniform, k, ignore_index, config)

    @_register("cringe_kernels::triton_row_grad", mutates_args=())
    def triton_row_grad(
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_index: torch.Tensor,
        lse: torch.Tensor,
        grad_lse: torch.Tensor,
        grad_target: torch.Tensor,
        grad_sample: torch.Tensor,
        ignore_index: int,
        block_v: int,
    ) -> torch.Tensor:
        """Gradient of the logits as a new contiguous ``[B, T, V]`` tensor of their dtype."""
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        _launch_backward(logits, out, target, sample_index, lse, grad_lse, grad_target, grad_sample,
                         ignore_index, block_v)
        return out

    @_register("cringe_kernels::triton_row_grad_", mutates_args={"logits"})
    def triton_row_grad_(
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_index: torch.Tensor,
        lse: torch.Tensor,
        grad_lse: torch.Tensor,
        grad_target: torch.Tensor,
        grad_sample: torch.Tensor,
        ignore_index: int,
        block_v: int,
    ) -> None:
        """Gradient of the logits written over ``logits`` (same strides)."""
        _launch_backward(logits, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample,
                         ignore_index, block_v)

    @_register("cringe_kernels::triton_row_stats_with_grad", mutates_args=())
    def triton_row_stats_with_grad(
        logits: torch.Tensor,
        target: torch.Tensor,
        uniform: Optional[torch.Tensor],
        k: int,
        ignore_index: int,
        block_v: int,
        sub_v: int,
        lse_weight: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The single pass: the statistics and ``lse_weight * exp(x - lse)``
        (zeros on ignored rows) as a new ``[B, T, V]`` tensor; see
        :meth:`cringe_kernels.backends.base.RowStatsBackend.forward_with_grad`."""
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        config = _forward_config(logits.shape[-1], k, block_v, sub_v)
        stats = _launch_forward(logits, target, uniform, k, ignore_index, config, lse_weight, grad)
        return (*stats, grad)

    @_register("cringe_kernels::triton_row_grad_complete_", mutates_args={"grad"})
    def triton_row_grad_complete_(
        grad: torch.Tensor,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_index: torch.Tensor,
        lse: torch.Tensor,
        lse_weight: torch.Tensor,
        grad_lse: torch.Tensor,
        grad_target: torch.Tensor,
        grad_sample: torch.Tensor,
        ignore_index: int,
        block_v: int,
    ) -> None:
        """Completes ``grad`` from :func:`triton_row_stats_with_grad` in place."""
        _launch_backward(logits, grad, target, sample_index, lse, grad_lse, grad_target, grad_sample,
                         ignore_index, block_v, lse_weight)


class TritonRowStats(RowStatsBackend):
    """Row statistics with Triton kernels (CUDA, or the CPU interpreter).

    Parameters
    ----------
    block_v : int, optional
        Columns per kernel step for both kernels (a power of two); ``None``
        picks the default per ``V``. Small blocks let the CPU tests exercise
        the multi-block streaming paths on small vocabularies.
    sub_v : int, optional
        Columns per top-k offer in the forward (a power of two, at most the
        block; see :func:`heuristics.triton_forward_config`); ``None`` picks the default.
    """

    name = "triton"
    kernel_max_k = MAX_KERNEL_K

    def __init__(self, block_v: Optional[int] = None, sub_v: Optional[int] = None):
        for name, value in (("block_v", block_v), ("sub_v", sub_v)):
            if value and (value < 1 or value & (value - 1)):
                raise ValueError(f"{name} must be a power of two; got {value!r}")
        self.block_v = int(block_v or 0)
        self.sub_v = int(sub_v or 0)

    def status(self) -> BackendStatus:
        if _IMPORT_ERROR is not None:
            return BackendStatus(self.name, False, (), f"triton cannot be imported: {_IMPORT_ERROR}")
        devices = ()
        if torch.cuda.is_available():
            devices += ("cuda",)
        if _interpreting():
            devices += ("cpu",)
        reason = "" if devices else (
            "no CUDA GPU is available (set TRITON_INTERPRET=1 before importing triton to run on the CPU, slowly)"
        )
        return BackendStatus(self.name, True, devices, reason)

    def supports(self, logits: torch.Tensor) -> tuple:
        ok, reason = super().supports(logits)
        if not ok:
            return ok, reason
        if logits.dtype not in _DTYPES:
            return False, f"the triton backend does not support {logits.dtype}"
        return True, ""

    @torch.no_grad()
    def forward(self, logits, target, uniform: Optional[torch.Tensor], k: int, ignore_index: int) -> RowStats:
        _check_layout(logits)
        k_eff = min(k, logits.shape[-1] - 1)
        if k_eff > MAX_KERNEL_K:
            from .torch_impl import TorchRowStats

            return TorchRowStats().forward(logits, target, uniform, k, ignore_index)
        if k_eff == 0:
            uniform = None
        return RowStats(*triton_row_stats(
            logits, target, uniform, k_eff, ignore_index, self.block_v, self.sub_v))

    single_pass = True

    @torch.no_grad()
    def forward_with_grad(self, logits, target, uniform, k, ignore_index, lse_weight):
        _check_layout(logits)
        k_eff = min(k, logits.shape[-1] - 1)
        if k_eff > MAX_KERNEL_K:  # the PyTorch fallback has no single pass
            return super().forward_with_grad(logits, target, uniform, k, ignore_index, lse_weight)
        *stats, grad = triton_row_stats_with_grad(
            logits, target, uniform if k_eff > 0 else None, k_eff, ignore_index, self.block_v, self.sub_v,
            *_as_stats(logits, lse_weight))
        return RowStats(*stats), grad

    @torch.no_grad()
    def backward_with_grad(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target,
                           grad_sample, ignore_index):
        if grad is None:
            return super().backward_with_grad(grad, logits, target, sample_index, lse, lse_weight, grad_lse,
                                              grad_target, grad_sample, ignore_index)
        _check_layout(logits)
        grad_lse, grad_target, grad_sample, lse_weight = _as_stats(logits, grad_lse, grad_target, grad_sample,
                                                                   lse_weight)
        triton_row_grad_complete_(
            grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target, grad_sample, ignore_index,
            self.block_v)
        return grad

    @torch.no_grad()
    def backward(self, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, inplace):
        _check_layout(logits)
        grad_lse, grad_target, grad_sample = _as_stats(logits, grad_lse, grad_target, grad_sample)
        args = (target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, self.block_v)
        if inplace:
            triton_row_grad_(logits, *args)
            return logits
        return triton_row_grad(logits, *args)
