"""The row-statistics primitive as a ``torch.autograd.Function``.

Forward asks a kernel backend for the per-row statistics (DESIGN.md
section 1); backward receives ``d loss / d lse``, ``d loss / d target_logit``
and ``d loss / d sample_logit`` from autograd (the loss algebra in
:mod:`cringe_kernels.losses` is ordinary PyTorch) and asks the same backend to
write the logits' gradient in one pass. One backward kernel serves every loss.
"""

from __future__ import annotations

from typing import Optional

import torch

from .backends.base import RowStats, RowStatsBackend


class RowStatsFunction(torch.autograd.Function):
    """Autograd wrapper; use :func:`row_stats` rather than ``apply``."""

    @staticmethod
    def forward(ctx, logits, target, uniform, k, ignore_index, backend, inplace_backward):
        stats = backend.forward(logits, target, uniform, k, ignore_index)
        ctx.mark_non_differentiable(stats.sample_index)
        ctx.save_for_backward(logits, target, stats.sample_index, stats.lse)
        ctx.backend = backend
        ctx.ignore_index = ignore_index
        ctx.inplace_backward = inplace_backward
        return tuple(stats)

    @staticmethod
    def backward(ctx, grad_lse, grad_target, grad_sample, _grad_index):
        logits, target, sample_index, lse = ctx.saved_tensors
        # Autograd passes None for an output that did not reach the loss.
        grad_lse, grad_target, grad_sample = (
            torch.zeros_like(lse) if g is None else g.contiguous() for g in (grad_lse, grad_target, grad_sample)
        )
        grad_logits = ctx.backend.backward(
            logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ctx.ignore_index, ctx.inplace_backward
        )
        return grad_logits, None, None, None, None, None, None


class RowStatsWithGradFunction(torch.autograd.Function):
    """The single pass: the forward also writes the gradient for a guess of
    ``d loss / d lse`` (``lse_weight``); the backward completes it, exactly,
    whatever ``grad_lse`` turns out to be. Use :func:`row_stats`."""

    @staticmethod
    def forward(ctx, logits, target, uniform, k, ignore_index, backend, lse_weight):
        stats, grad = backend.forward_with_grad(logits, target, uniform, k, ignore_index, lse_weight)
        ctx.mark_non_differentiable(stats.sample_index)
        ctx.save_for_backward(logits, target, stats.sample_index, stats.lse, lse_weight)
        ctx.backend = backend
        ctx.ignore_index = ignore_index
        ctx.grad = grad  # neither input nor output: kept on ctx, handed out once
        return tuple(stats)

    @staticmethod
    def backward(ctx, grad_lse, grad_target, grad_sample, _grad_index):
        logits, target, sample_index, lse, lse_weight = ctx.saved_tensors
        grad_lse, grad_target, grad_sample = (
            torch.zeros_like(lse) if g is None else g.contiguous() for g in (grad_lse, grad_target, grad_sample)
        )
        # A second backward (retain_graph) must not write into the tensor the
        # first one returned: it gets the two-pass gradient instead.
        grad, ctx.grad = ctx.grad, None
        grad_logits = ctx.backend.backward_with_grad(
            grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target, grad_sample, ctx.ignore_index
        )
        return grad_logits, None, None, None, None, None, None


def row_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    uniform: Optional[torch.Tensor],
    k: int,
    ignore_index: int,
    backend: RowStatsBackend,
    inplace_backward: bool = False,
    lse_weight: Optional[torch.Tensor] = None,
) -> RowStats:
    """Differentiable row statistics computed by a kernel backend.

    Parameters
    ----------
    logits : Tensor, ``[B, T, V]``, last stride 1
    target : Tensor, ``[B * T]``, int64, contiguous
    uniform : Tensor, ``[B * T]``, float32, contiguous, or None when ``k == 0``
    k : int
        Candidates; 0 disables sampling.
    ignore_index : int
    backend : RowStatsBackend
    inplace_backward : bool
        Write the gradient over ``logits`` (the caller must not reuse them).
    lse_weight : Tensor, ``[B * T]``, optional
        The expected ``d loss / d lse``: the gradient is then written during
        the forward (single pass, where the backend has one) and completed
        by the backward. Not with ``inplace_backward``.

    Returns
    -------
    RowStats
        See :mod:`cringe_kernels.backends.base`.
    """
    if lse_weight is not None:
        return RowStats(*RowStatsWithGradFunction.apply(logits, target, uniform, k, ignore_index, backend, lse_weight))
    return RowStats(*RowStatsFunction.apply(logits, target, uniform, k, ignore_index, backend, inplace_backward))
