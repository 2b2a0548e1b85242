"""Draws for the sampled contrast tokens that do not depend on the batch's layout.

The loss's default draws are ``torch.rand(target.shape)``: the value that
token ``t`` of an example gets depends on how many rows and columns its
micro-batch has, so the same examples split into another number of
micro-batches (gradient accumulation), padded to another width or spread
over another number of processes sample other contrast tokens.

Here each draw is a hash of ``(seed, step, row_id, position)``: the example's
own id (a dataset column made once, when the dataset is prepared), the
token's position in its sequence, the run's seed and the optimizer step.
The same example at the same step gets the same draws whatever else is in
its batch, so gradient accumulation and data parallelism give the gradient
of one big batch exactly, at any ``k``. The hash runs on the batch's device
in a few integer ops: no host sync, no host-to-device copy.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays below 2**63,
# so int64 arithmetic never overflows.
_MUL1 = 0x7FEB352D
_MUL2 = 0x5BD1E995
_GOLDEN = 0x1E3779B9


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """An integer hash of the low 32 bits of an int64 tensor (values in [0, 2**32))."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _MASK32
    return x ^ (x >> 16)


def _mix_int(value: int) -> int:
    return int(_mix32(torch.tensor([value & _MASK32], dtype=torch.int64)).item())


def step_key(seed: int, step: int) -> int:
    """One 32-bit key per (seed, optimizer step), made on the host."""
    return _mix_int(_mix_int(int(seed)) ^ (int(step) * _GOLDEN & _MASK32))


def layout_free_uniform(row_id: torch.Tensor, width: int, key: int) -> torch.Tensor:
    """Draws in ``[0, 1)`` per (row, position), independent of the batch's shape.

    Parameters
    ----------
    row_id : Tensor, ``[B]``, integer
        Each row's example id (the prepared dataset's ``row_id`` column).
    width : int
        Positions per row (the padded sequence length ``T``).
    key : int
        :func:`step_key` of the run's seed and the optimizer step.

    Returns
    -------
    Tensor, ``[B, width]``, float32, on ``row_id``'s device
        Multiples of ``2**-24``; row ``b``, position ``t`` depends only on
        ``(row_id[b], t, key)``.
    """
    row = _mix32(row_id.to(torch.int64).reshape(-1, 1) ^ key)
    position = torch.arange(width, dtype=torch.int64, device=row_id.device).reshape(1, -1)
    h = _mix32(row ^ _mix32(position * _GOLDEN + key))
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))
