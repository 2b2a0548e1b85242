"""The row-statistics primitive that every kernel backend implements.

Every loss in docs/spec.md is a function of four numbers per row of logits, so a
kernel backend only computes those (``forward``) and the gradient of the
logits from three per-row coefficients (``backward``). The loss algebra on
the ``[N]`` vectors lives in :mod:`cringe_kernels.losses` and is shared by all
backends.

Conventions shared by every backend
-----------------------------------
``logits``
    A ``[B, T, V]`` tensor whose last dimension has stride 1 and whose two
    leading dimensions may have any strides (so HF's ``logits[:, :-1]`` is
    passed without a copy). Row ``i = b * T + t``. Dtype float16, bfloat16,
    float32 or float64. Offsets must be computed in int64.
``target``
    ``[N]`` int64, contiguous, ``N = B * T``. A row whose target equals
    ``ignore_index`` is *ignored*. A target outside ``[0, V)`` that is not
    ``ignore_index`` (possible only when value checks are off) must never
    cause an out-of-bounds access: that row's float outputs are NaN and its
    ``sample_index`` is -1.
``uniform``
    ``[N]`` float32, contiguous, values in ``[0, 1)``; ``None`` when ``k == 0``.
``k``
    Number of candidates (``0`` means: do not sample; ``sample_logit`` is 0
    and ``sample_index`` is -1 for every row). Backends use
    ``k_eff = min(k, V - 1)``.
Statistics dtype
    float64 for float64 logits, float32 otherwise (:func:`stats_dtype`).

Outputs of ``forward`` (all ``[N]``, contiguous)
    ``lse``           log-sum-exp of the row
    ``target_logit``  ``x[i, target[i]]``
    ``sample_logit``  ``x[i, sample_index[i]]``
    ``sample_index``  int64 sampled column (docs/spec.md section 1), never the
                      target column, always in ``[0, V)`` for a sampled row
    Ignored rows give ``0, 0, 0, -1``.

The draw (all backends must agree on it): the candidates ``c_1..c_k`` are the
``k_eff`` largest logits excluding the target column, ordered by value
descending then column ascending. With ``w_j = exp(c_j - c_1)`` (0 where
``c_j`` is ``-inf``), ``q_j = w_j / sum(w)``, the sampled candidate is the
first ``j`` with ``q_1 + .. + q_j > u``; if rounding leaves none, the last
candidate with ``q_j > 0``; if there is none (no finite candidate, or NaN),
the first candidate. NaN rows may sample any column in ``[0, V)`` other than
the target; their loss is NaN anyway.

``backward`` writes, for every non-ignored row,
``dx[i, j] = grad_lse[i] * exp(x[i, j] - lse[i]) + grad_target[i] * [j == target[i]]
+ grad_sample[i] * [j == sample_index[i]]`` (the last term only where
``sample_index[i] >= 0``, the middle only where the target is in range), and
exactly 0 on ignored rows. With ``inplace=True`` it writes over ``logits``
and returns it (the caller promised not to reuse the logits); otherwise it
returns a new contiguous ``[B, T, V]`` tensor of the logits' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


class RowStats(NamedTuple):
    """Per-row statistics of the forward pass; every field has shape ``[N]``."""

    lse: torch.Tensor
    target_logit: torch.Tensor
    sample_logit: torch.Tensor
    sample_index: torch.Tensor


@dataclass(frozen=True)
class BackendStatus:
    """What :func:`cringe_kernels.backend_info` reports for one backend.

    Attributes
    ----------
    name : str
        The backend's public name.
    installed : bool
        Whether its code (Python package or compiled module) is present.
    devices : tuple of str
        Device types it can run on in this process (empty when none).
    reason : str
        Why it cannot run somewhere, or ``""``.
    """

    name: str
    installed: bool
    devices: tuple
    reason: str = ""


def stats_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the statistics: float64 for float64, else float32."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


class RowStatsBackend:
    """Base class of a kernel backend for the row-statistics primitive.

    Subclasses set ``name`` and implement :meth:`status`, :meth:`forward`
    and :meth:`backward` with the conventions in this module's docstring.
    """

    name: str = "?"
    # The largest ``k_eff`` the kernels draw from themselves; beyond it a
    # backend may fall back to slower PyTorch code, which ``backend="auto"``
    # avoids when another backend has no such limit there. None: any k.
    kernel_max_k: Optional[int] = None
    # The largest ``k_eff`` the backend accepts at all (a larger one raises
    # ValueError); None: any k.
    max_k: Optional[int] = None

    def status(self) -> BackendStatus:  # pragma: no cover - interface
        raise NotImplementedError

    def supports(self, logits: torch.Tensor) -> tuple:
        """Return ``(ok, reason)`` for running on these logits (device, dtype).

        The default checks the device type only; a backend that lacks a dtype
        overrides this so that ``backend="auto"`` can pass it by.
        """
        st = self.status()
        if logits.device.type in st.devices:
            return True, ""
        return False, st.reason or f"backend {self.name!r} does not run on {logits.device.type}"

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        uniform: Optional[torch.Tensor],
        k: int,
        ignore_index: int,
    ) -> RowStats:  # pragma: no cover - interface
        raise NotImplementedError

    def backward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_index: torch.Tensor,
        lse: torch.Tensor,
        grad_lse: torch.Tensor,
        grad_target: torch.Tensor,
        grad_sample: torch.Tensor,
        ignore_index: int,
        inplace: bool,
    ) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # Single pass (the gradient written while the forward reads the rows).
    # A backend with such a kernel overrides both methods below; the defaults
    # are the two passes, so every backend accepts the request and gives the
    # same result. ``single_pass`` says which, as a plain class attribute
    # (torch.compile reads it while tracing), set for each subclass.
    single_pass = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "single_pass" not in cls.__dict__:
            cls.single_pass = cls.forward_with_grad is not RowStatsBackend.forward_with_grad

    def forward_with_grad(self, logits, target, uniform, k, ignore_index, lse_weight):
        """:meth:`forward`, plus the gradient for a guess of ``d loss / d lse``.

        Parameters
        ----------
        lse_weight : Tensor, ``[N]``, the statistics' dtype, contiguous
            The expected ``grad_lse`` of the backward.

        Returns
        -------
        (RowStats, Tensor or None)
            The statistics, and a ``[B, T, V]`` tensor of the logits' dtype
            holding ``lse_weight * exp(x - lse)`` on rows with a target in
            range and 0 on ignored rows (None when the backend has no single
            pass); :meth:`backward_with_grad` completes it.
        """
        return self.forward(logits, target, uniform, k, ignore_index), None

    def backward_with_grad(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target,
                           grad_sample, ignore_index) -> torch.Tensor:
        """The gradient of the logits, completing ``grad`` from :meth:`forward_with_grad`.

        Exact for any ``grad_lse``: rows where it equals ``lse_weight`` only
        get their target and sampled columns, the others are written in full.
        Returns ``grad`` (modified in place), or a new tensor when ``grad`` is None.
        """
        return self.backward(logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index,
                             False)
