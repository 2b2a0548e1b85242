"""Pure PyTorch reference of docs/spec.md: the oracle every backend is tested against.

Readable first. The row statistics are computed with ordinary differentiable
PyTorch ops (``logsumexp``, ``gather``), so autograd, not a hand-written
formula, gives the reference gradient; the sampled column is computed under
``no_grad`` (the draw is not differentiated, docs/spec.md section 2).

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
        (docs/spec.md section 1). NaN is ordered as ``+inf`` so that a NaN row still
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
    """Position of the sampled candidate (docs/spec.md section 1).

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
    dtype = stats_dtype(logits.dtype)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < V)
    # Ignored rows enter the arithmetic as zeros and leave it through
    # torch.where, so they get an exact zero gradient even when their logits
    # hold NaN or inf; no boolean indexing, so no host sync and static shapes
    # (torch.compile traces this without a graph break).
    x = torch.where(valid[:, None], rows.to(dtype), 0.0)
    y = torch.where(in_range, target, 0)
    lse = torch.logsumexp(x, dim=1)
    t = x.gather(1, y[:, None]).squeeze(1)
    sample_index = torch.full_like(target, -1)
    sample_logit = torch.zeros_like(lse)
    if k > 0:
        s = sample_columns(x.detach(), y, uniform, k)
        sample_index = torch.where(valid & in_range, s, -1)
        sample_logit = x.gather(1, s[:, None]).squeeze(1)

    def finish(stat):
        # zero on ignored rows; NaN where the target is out of range (only
        # reachable with value checks off), as every backend does
        return torch.where(valid, torch.where(in_range, stat, float("nan")), 0.0)

    return RowStats(finish(lse), finish(t), finish(sample_logit) if k > 0 else sample_logit, sample_index)
