"""The row-statistics primitive written in PyTorch.

It is the template every kernel backend follows (same inputs, same outputs,
same backward formula) and lets the tests check the autograd plumbing of
:class:`cringe_kernels.autograd.RowStatsFunction` against the reference
before any kernel exists. It is internal (``backend="torch"``), not one of
the public backends.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .base import BackendStatus, RowStats, RowStatsBackend, stats_dtype


class TorchRowStats(RowStatsBackend):
    """Forward from :func:`cringe_kernels.reference.row_stats`, backward by formula."""

    name = "torch"

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, True, ("cpu", "cuda"))

    @torch.no_grad()
    def forward(self, logits, target, uniform: Optional[torch.Tensor], k: int, ignore_index: int) -> RowStats:
        return reference.row_stats(logits, target, uniform, k, ignore_index)

    @torch.no_grad()
    def backward(self, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index, inplace):
        V = logits.shape[-1]
        x = logits.reshape(-1, V).to(stats_dtype(logits.dtype))
        valid = (target != ignore_index)[:, None]
        grad = grad_lse[:, None] * torch.exp(x - lse[:, None])
        rows = torch.arange(x.shape[0], device=x.device)
        grad[rows, target.clamp(0, V - 1)] += torch.where(target == ignore_index, 0, grad_target)
        sampled = sample_index >= 0
        grad[rows, sample_index.clamp(min=0)] += torch.where(sampled, grad_sample, 0)
        grad = torch.where(valid, grad, 0).view(logits.shape)
        if inplace:
            return logits.copy_(grad)
        return grad.to(logits.dtype).contiguous()
