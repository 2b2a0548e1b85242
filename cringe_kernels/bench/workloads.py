"""Input tensors for one benchmark point.

Every loss at a point moves the same ``N x V`` logits, so the providers are
comparable row for row:

- ``binary``: logits ``[B, T, V]`` with ``B = N // T`` sequences; feedback per
  sequence ``[B, 1]``, even sequences positive, odd ones negative (half the
  rows get cross-entropy, half the sampled contrast).
- ``pairwise``: ``B / 2`` pairs; chosen and rejected logits ``[B/2, T, V]``
  each, two separate leaves (slices of one tensor would make autograd build a
  full-size zero gradient per slice, which no training step pays).
- ``ce``: logits ``[N, V]`` and targets ``[N]`` for the cross-entropy floor.

Targets are uniform over ``[0, V)``; no row is ignored. Logits are standard
normal. The draws ``uniform`` are fixed per point so every provider samples
the same columns. Logits are leaves that require grad, and gradients are
taken with ``torch.autograd.grad`` so nothing accumulates into ``.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .config import DTYPES

#: The losses' default ``ignore_index``, which the providers use.
IGNORE_INDEX = -100


def shape_rows(N: int, seq_len: int) -> Tuple[int, int]:
    """``(B, T)`` with ``B * T == N``, ``B`` even and ``T <= seq_len``.

    Raises
    ------
    ValueError
        When ``N`` cannot be split into an even number of sequences.
    """
    if N < 2 or N % 2:
        raise ValueError(f"N must be even and >= 2 (sequences come in halves/pairs), got {N}")
    T = min(seq_len, N // 2)
    while N % T or (N // T) % 2:
        T -= 1
    return N // T, T


@dataclass
class Workload:
    """Tensors of one ``(loss, V, N, dtype)`` point.

    Attributes
    ----------
    loss : str
        ``"binary"``, ``"pairwise"`` or ``"ce"``.
    args : tuple of Tensor
        Positional arguments of the providers' loss functions for this loss.
    leaves : tuple of Tensor
        The logits tensors (gradients are taken with respect to them).
    rows_read : int
        Rows whose target is not ``ignore_index`` (-100): the rows a kernel
        reads, counted by the byte model.
    """

    loss: str
    V: int
    N: int
    dtype: str
    args: tuple
    leaves: tuple
    seed: int
    rows_read: int = 0

    @property
    def logits_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.leaves)

    def refill(self) -> None:
        """Restore the logits after a provider overwrote them in place."""
        gen = torch.Generator(device=self.leaves[0].device).manual_seed(self.seed)
        with torch.no_grad():
            for t in self.leaves:
                t.normal_(generator=gen)


def make_workload(loss: str, V: int, N: int, dtype: str, device, seq_len: int, seed: int = 0) -> Workload:
    """Build the tensors of one point.

    Parameters
    ----------
    loss : {"binary", "pairwise", "ce"}
    V, N : int
    dtype : str
        Key of :data:`.config.DTYPES`.
    device : str or torch.device
    seq_len : int
        Tokens per sequence (see :func:`shape_rows`).
    seed : int

    Returns
    -------
    Workload
    """
    device = torch.device(device)
    tdtype = DTYPES[dtype]
    B, T = shape_rows(N, seq_len)
    gen = torch.Generator(device=device).manual_seed(seed)

    def logits(*shape):
        # Filled in place so a bf16 tensor never passes through an fp32 copy
        # (at 256000 x 16384 that copy alone is 16 GiB).
        x = torch.empty(*shape, V, dtype=tdtype, device=device)
        with torch.no_grad():
            x.normal_(generator=gen)
        return x.requires_grad_(True)

    def targets(*shape):
        return torch.randint(0, V, shape, generator=gen, device=device)

    def read(*ys) -> int:
        return int(sum((y != IGNORE_INDEX).sum().item() for y in ys))

    if loss == "binary":
        x = logits(B, T)
        y = targets(B, T)
        feedback = (torch.arange(B, device=device) % 2 == 0).unsqueeze(1)
        u = torch.rand(B, T, generator=gen, device=device)
        return Workload(loss, V, N, dtype, (x, y, feedback, u), (x,), seed, read(y))
    if loss == "pairwise":
        P = B // 2
        xw, xl = logits(P, T), logits(P, T)
        yw, yl = targets(P, T), targets(P, T)
        u = torch.rand(P, T, generator=gen, device=device)
        return Workload(loss, V, N, dtype, (xw, yw, xl, yl, u), (xw, xl), seed, read(yw, yl))
    if loss == "ce":
        x = logits(N)
        y = targets(N)
        return Workload(loss, V, N, dtype, (x, y), (x,), seed, read(y))
    raise ValueError(f"unknown loss {loss!r}")
