"""Metrics that are right over micro-batches and processes.

Each metric is kept as a running ``(sum, count)`` pair of device tensors:
the loss reports, per micro-batch, the sum of a quantity and how many
tokens, sequences or pairs it covers. At logging time the pairs of every
process are summed (one all-reduce of one small tensor) and divided, so a
micro-batch without negatives adds nothing to ``cringe`` (instead of a 0 in
an average of averages) and every process's data counts. A metric whose
count is 0 everywhere is not logged. Nothing here syncs the host before
logging time.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

SumCount = Tuple[torch.Tensor, torch.Tensor]


class MetricStore:
    """Running ``(sum, count)`` per metric and mode (``"train"``, ``"eval"``).

    Parameters
    ----------
    names : sequence of str
        Every metric the loss may report, in a fixed order (all processes
        reduce the same vector).
    totals : sequence of str
        Names among ``names`` reported as their summed value, not divided
        by the count (e.g. ``num_tokens``).
    """

    MODES = ("train", "eval")

    def __init__(self, names: Sequence[str], totals: Sequence[str] = ()):
        self.names = tuple(names)
        self.totals = frozenset(totals)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._totals: Dict[str, Optional[torch.Tensor]] = {mode: None for mode in self.MODES}

    def add(self, mode: str, metrics: Mapping[str, SumCount]) -> None:
        """Add one micro-batch's ``{name: (sum, count)}`` (tensors or numbers)."""
        device = next((t.device for pair in metrics.values() for t in pair if isinstance(t, torch.Tensor)), None)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        totals, counts = [zero] * len(self.names), [zero] * len(self.names)
        for name, (total, count) in metrics.items():
            if name not in self._index:
                raise KeyError(f"metric {name!r} is not one of {self.names}")
            i = self._index[name]
            totals[i], counts[i] = _as_float64(total, device), _as_float64(count, device)
        vector = torch.stack([torch.stack(totals), torch.stack(counts)])
        store = self._totals[mode]
        self._totals[mode] = vector if store is None else store + vector.to(store.device)

    def pending(self, mode: str) -> bool:
        return self._totals[mode] is not None

    def reduce(self, mode: str, accelerator=None, device=None) -> Dict[str, float]:
        """Sum over processes, divide, clear; ``{name: mean}`` for counts > 0.

        Names in ``totals`` give their sum, whatever their count.

        Every process must call it at the same point (it all-reduces when
        ``accelerator.num_processes > 1``), with or without pending metrics.
        """
        vector = self._totals[mode]
        self._totals[mode] = None
        if vector is None:
            vector = torch.zeros(2, len(self.names), dtype=torch.float64, device=device)
        if accelerator is not None and accelerator.num_processes > 1:
            vector = accelerator.reduce(vector.to(accelerator.device), reduction="sum")
        totals, counts = vector.cpu().tolist()
        result = {}
        for i, name in enumerate(self.names):
            if name in self.totals:
                result[name] = totals[i]
            elif counts[i] > 0:
                result[name] = totals[i] / counts[i]
        return result


def _as_float64(value, device) -> torch.Tensor:
    """A 0-dim float64 tensor on ``device``; numbers are filled there (no host-to-device copy)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.full((), float(value), dtype=torch.float64, device=device)
