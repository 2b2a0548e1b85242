"""Pure PyTorch reference of SPEC.md: the oracle every backend is tested against.

Readable first. The row statistics are computed with ordinary differentiable
PyTorch ops (``logsumexp``, ``gather``), so autograd, not a hand-written
formula, gives the reference gradient; the sampled column is computed under
``no_grad`` (the draw is not differentiated, SPEC.md section 2).

The rule for candidates and the draw (:func:`sample_columns`) is the one
every kernel must reproduce; see :mod:`cringe_kernels.backends.base`.
"""

from __future__ import annotations

from typing import Optional

import torch

from .backends.base import RowStats, stats_dtype

# Rows per chunk in sample_columns: bounds the [rows, V] temporaries to about
# 2**22 elements whatever N is, so the reference also runs at benchmark sizes.
_CHUNK_ELEMENTS = 1 << 22


def top_candidates(x: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the ``k`` largest logits per row, excluding the target column.

    Parameters
    ----------
    x : Tensor, ``[n, V]``, floating
        Logits of ``n`` non-ignored rows.
    target : Tensor, ``[n]``, int64
        Target column per row, in ``[0, V)``.
    k : int
        ``1 <= k <= V - 1``.

    Returns
    -------
    Tensor, ``[n, k]``, int64
        Candidate columns ordered by value descending, then column ascending
        (SPEC.md section 1). NaN is ordered as ``+inf`` so that a NaN row still
        yields ``k`` valid columns.
    """
    n, V = x.shape
    key = torch.nan_to_num(x, nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    is_target = torch.zeros_like(key, dtype=torch.bool).scatter_(1, target[:, None], True)
    # The k-th largest value among the non-target columns. Masking the target
    # to -inf adds one value below all others, which leaves the k largest
    # unchanged because k <= V - 1.
    kth = key.masked_fill(is_target, float("-inf")).topk(k, dim=1).values[:, -1:]
    above = (key > kth) & ~is_target
    tied = (key == kth) & ~is_target
    # Among columns equal to the k-th value, the lowest columns fill the rest.
    tied_needed = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= tied_needed))
    column = torch.arange(V, device=x.device).expand(n, V)
    cols = torch.where(chosen, column, V).topk(k, dim=1, largest=False, sorted=True).values
    # cols is ascending, so a stable descending sort by value gives ties in
    # ascending column order.
    order = key.gather(1, cols).sort(dim=1, descending=True, stable=True).indices
    return cols.gather(1, order)


def inverse_cdf(values: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Position of the sampled candidate (SPEC.md section 1).

    Parameters
    ----------
    values : Tensor, ``[n, k]``, float32 or float64
        Candidate logits, ordered by value descending.
    uniform : Tensor, ``[n]``
        Draws in ``[0, 1)``.

    Returns
    -------
    Tensor, ``[n]``, int64
        The first ``j`` with ``q_1 + .. + q_j > u``; else the last ``j`` with
        ``q_j > 0``; else 0.
    """
    k = values.shape[1]
    w = torch.where(values == float("-inf"), 0.0, torch.exp(values - values[:, :1]))
    q = w / w.sum(dim=1, keepdim=True)
    hit = q.cumsum(dim=1) > uniform.to(values.dtype)[:, None]
    positive = q > 0
    last_positive = (k - 1) - positive.flip(1).int().argmax(dim=1)
    fallback = torch.where(positive.any(dim=1), last_positive, 0)
    return torch.where(hit.any(dim=1), hit.int().argmax(dim=1), fallback)


@torch.no_grad()
def sample_columns(x: torch.Tensor, target: torch.Tensor, uniform: torch.Tensor, k: int) -> torch.Tensor:
    """Sampled column per row: top-k candidates without the target, then the draw.

    Parameters
    ----------
    x : Tensor, ``[n, V]``, float32 or float64
    target : Tensor, ``[n]``, int64, in ``[0, V)``
    uniform : Tensor, ``[n]``, in ``[0, 1)``
    k : int, ``>= 1``

    Returns
    -------
    Tensor, ``[n]``, int64
    """
    n, V = x.shape
    k_eff = min(k, V - 1)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // V)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        cols = top_candidates(x[lo:hi], target[lo:hi], k_eff)
        pick = inverse_cdf(x[lo:hi].gather(1, cols), uniform[lo:hi])
        out[lo:hi] = cols.gather(1, pick[:, None]).squeeze(1)
    return out


def row_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    uniform: Optional[torch.Tensor],
    k: int,
    ignore_index: int,
) -> RowStats:
    """Differentiable row statistics in plain PyTorch.

    Parameters
    ----------
    logits : Tensor, ``[..., V]``, floating
    target : Tensor, ``[N]``, int64 (``N`` = product of the leading dims)
    uniform : Tensor, ``[N]``, float32, or None when ``k == 0``
    k : int
        ``0`` disables sampling.
    ignore_index : int

    Returns
    -------
    RowStats
        ``[N]`` vectors in the statistics dtype; ignored rows hold
        ``0, 0, 0, -1``. Gradients flow into ``logits`` through ``lse``,
        ``target_logit`` and ``sample_logit``.
    """
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    n = rows.shape[0]
    dtype = stats_dtype(logits.dtype)
    valid = (target != ignore_index).nonzero().squeeze(1)
    # Only non-ignored rows enter the arithmetic, so an ignored row gets an
    # exact zero gradient even when its logits hold NaN or inf.
    x = rows.index_select(0, valid).to(dtype)
    y = target.index_select(0, valid)
    lse = torch.logsumexp(x, dim=1)
    t = x.gather(1, y[:, None]).squeeze(1)
    zeros = rows.new_zeros(n, dtype=dtype)
    sample_index = torch.full((n,), -1, dtype=torch.long, device=rows.device)
    sample_logit = zeros
    if k > 0:
        s = sample_columns(x.detach(), y, uniform.index_select(0, valid), k)
        sample_index = sample_index.index_put((valid,), s)
        sample_logit = zeros.index_put((valid,), x.gather(1, s[:, None]).squeeze(1))
    return RowStats(
        zeros.index_put((valid,), lse),
        zeros.index_put((valid,), t),
        sample_logit,
        sample_index,
    )
