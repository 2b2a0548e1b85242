"""The per-row statistics every loss is made of, and the public ``token_logps``.

A loss of docs/spec.md needs four numbers per row of logits (``lse``, the
target logit, the sampled column and its logit: :class:`RowStats`); the
kernels compute them in one read of the logits and write the gradient from
three per-row coefficients. This module turns user-shaped tensors into the
kernels' row layout and exposes the statistic users ask for most,
``log p(target)`` per row.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import autograd, backends, reference, validate
from .backends.base import RowStats, stats_dtype

__all__ = ["RowStats", "row_view", "row_stats", "stats_dtype", "token_logps"]


def row_view(logits: torch.Tensor) -> torch.Tensor:
    """``logits [..., V]`` as a ``[B, T, V]`` view with last stride 1.

    Two leading dims with free strides cover HF's ``logits[:, :-1]`` (rows
    that cannot be flattened into one stride) without a copy; anything else
    that cannot be viewed so is copied once.
    """
    V = logits.shape[-1]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if logits.dim() == 3:
        return logits
    lead = logits.shape[:-1]
    for p in [0] + list(range(1, len(lead))):
        try:
            return logits.view(math.prod(lead[:p]), math.prod(lead[p:]), V)
        except RuntimeError:
            continue
    return logits.contiguous().view(1, -1, V)


def row_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    uniform: Optional[torch.Tensor],
    k: int,
    ignore_index: int,
    backend,
    inplace_backward: bool = False,
    lse_weight: Optional[torch.Tensor] = None,
) -> RowStats:
    """Flattened, differentiable row statistics from a resolved backend.

    Parameters
    ----------
    logits : Tensor, ``[..., V]``
    target : Tensor, the logits' leading shape, integer
    uniform : Tensor, the target's shape, or None when ``k == 0``
    k, ignore_index
        As in the losses (``k = 0``: no draw).
    backend : str or RowStatsBackend
        What :func:`cringe_kernels.backends.resolve` returned.
    inplace_backward : bool
    lse_weight : Tensor, ``[N]``, optional
        The single pass's guess of ``d loss / d lse`` (kernel backends).

    Returns
    -------
    RowStats
        Every field ``[N]``, ``N`` the number of rows.
    """
    target = target.reshape(-1)
    if target.dtype != torch.int64:
        target = target.long()
    if uniform is not None:
        uniform = uniform.reshape(-1)
        if uniform.dtype != torch.float32:
            uniform = uniform.float()
    if backend == backends.REFERENCE:
        return reference.row_stats(logits, target, uniform, k, ignore_index)
    return autograd.row_stats(row_view(logits), target.contiguous(), uniform, k, ignore_index, backend,
                              inplace_backward, lse_weight)


def token_logps(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
                backend: str = "auto") -> torch.Tensor:
    """``log p(target)`` per row, differentiable, in one read of the logits.

    Parameters
    ----------
    logits : Tensor, ``[..., V]``, float16/bfloat16/float32/float64
        May be a strided view such as HF's ``logits[:, :-1]``.
    target : Tensor, ``[...]`` (the logits' leading shape), integer
        Column per row in ``[0, V)``, or ``ignore_index``.
    ignore_index : int
    backend : {"auto", "reference", "triton", "cuda", "cpu"}

    Returns
    -------
    Tensor, the target's shape, float32 (float64 for float64 logits)
        ``x[target] - logsumexp(x)``, 0 on ignored rows.
    """
    V = validate.check_logits("logits", logits)
    validate.check_target("target", target, "logits", logits)
    validate.check_int("ignore_index", ignore_index)
    chosen = backends.resolve(backend, logits, None)
    valid = target.reshape(-1) != ignore_index
    validate.check_values([("target", target.reshape(-1), V, valid)], ignore_index)
    stats = row_stats(logits, target, None, 0, ignore_index, chosen)
    return torch.where(valid, stats.target_logit - stats.lse, 0.0).reshape(target.shape)
