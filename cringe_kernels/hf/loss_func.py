"""The Cringe losses as a ``compute_loss_func`` for ``transformers.Trainer``.

:func:`make_compute_loss_func` returns a :class:`CringeLossFunc`: Trainer
calls it with the model's outputs, Hugging Face's *unshifted* labels and
``num_items_in_batch``; it returns ``sum of per-token losses /
num_items_in_batch``. The trainers of this package call its
:meth:`~CringeLossFunc.compute` directly, which also returns the metrics
as ``(sum, count)`` pairs (see :mod:`cringe_kernels.hf.metrics`).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from ..linear import linear_cringe_loss, linear_pairwise_cringe_loss
from ..losses import cringe_loss, pairwise_cringe_loss
from .labels import FEEDBACK_KEYS, IGNORE_INDEX, logits_of, shift_feedback, shift_labels

BINARY_METRICS = ("ce", "cringe", "positive_fraction", "logps/chosen", "logps/rejected")
PAIRWISE_METRICS = ("ce", "cringe", "gate", "margins", "accuracies", "logps/chosen", "logps/rejected")

# Entries our collators add that model.forward does not take.
_BATCH_ONLY_KEYS = ("row_id",)
# Options of the logits losses that the hidden-state losses do not take
# (they always fold the gradient in the forward and never hold the logits).
_LOGITS_ONLY = ("single_pass", "grad_scale", "inplace_backward")


class LossResult(NamedTuple):
    """What :meth:`CringeLossFunc.compute` returns.

    Attributes
    ----------
    loss : Tensor
        Scalar, differentiable.
    metrics : dict of (Tensor, Tensor)
        ``{name: (sum, count)}`` of this micro-batch, 0-dim tensors.
    gate : Tensor or None
        Pairwise: the gate of each pair (``[B]``, detached); else None.
    """

    loss: torch.Tensor
    metrics: Dict[str, Tuple[torch.Tensor, torch.Tensor]]
    gate: Optional[torch.Tensor]


class CringeLossFunc:
    """A ``compute_loss_func`` for ``transformers.Trainer`` (made by :func:`make_compute_loss_func`).

    Called by Trainer as ``loss_func(outputs, labels, num_items_in_batch=...)``
    (transformers 4.46 to 5.x). Returns ``sum of per-token losses /
    num_items_in_batch``: Trainer counts the non-ignored shifted labels over
    every micro-batch of an optimizer step, so the accumulated gradient is
    that of the whole batch's mean loss. Without ``num_items_in_batch``
    (evaluation) it is this batch's mean.

    Binary mode needs the feedback, which Trainer does not pass to a
    ``compute_loss_func``: call it with ``feedback=``, or let :meth:`attach`
    take the batch's ``feedback`` (or ``label``) entry before the model sees it.
    Pairwise mode reads batches of ``B`` chosen rows followed by ``B``
    rejected rows (:class:`~cringe_kernels.hf.PairwiseCringeCollator`); the
    logits are split into two views (no copy).

    Attributes
    ----------
    loss_kwargs : dict
        Keyword arguments for :func:`~cringe_kernels.cringe_loss` or
        :func:`~cringe_kernels.pairwise_cringe_loss`.
    metric_names : tuple of str
        The metrics :meth:`compute` reports.
    last_metrics : dict of Tensor
        Means of the last call's metrics (0-dim tensors; NaN where the
        count is 0, e.g. ``cringe`` on a batch without negatives).
    """

    def __init__(self, *, pairwise: bool = False, feedback_keys: Sequence[str] = FEEDBACK_KEYS, **loss_kwargs):
        for key in ("reduction", "num_items_in_batch", "return_details"):
            if key in loss_kwargs:
                raise TypeError(f"{key} is set by the Trainer integration; do not pass it "
                                f"(got {key}={loss_kwargs[key]!r})")
        self.pairwise = bool(pairwise)
        self.feedback_keys = tuple(feedback_keys)
        self.loss_kwargs = dict(loss_kwargs)
        self.ignore_index = int(self.loss_kwargs.get("ignore_index", IGNORE_INDEX))
        self.metric_names = PAIRWISE_METRICS if self.pairwise else BINARY_METRICS
        self.last_metrics: Dict[str, torch.Tensor] = {}
        self._stashed_feedback: Optional[torch.Tensor] = None
        self._hook = None

    # -- feedback routing --------------------------------------------------

    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        """Route each batch's feedback entry from ``model``'s inputs to this loss.

        Installs a forward pre-hook on ``model`` that removes the first of
        ``feedback_keys`` found in the keyword inputs (so ``model.forward``
        never sees it), keeps it for the next call of this loss, and drops
        the collators' ``row_id``. Returns ``model``:
        ``Trainer(model=loss.attach(model), ...)``.
        """
        self.detach()

        def take_feedback(module, args, kwargs):
            for key in self.feedback_keys:
                if key in kwargs:
                    self._stashed_feedback = kwargs.pop(key)
                    break
            for key in _BATCH_ONLY_KEYS:
                kwargs.pop(key, None)
            return args, kwargs

        self._hook = model.register_forward_pre_hook(take_feedback, with_kwargs=True)
        return model

    def detach(self) -> None:
        """Remove the hook installed by :meth:`attach`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- the loss ------------------------------------------------------------

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None, *, feedback=None, **_ignored):
        result = self.compute(logits_of(outputs), labels, num_items_in_batch, feedback=feedback)
        self.last_metrics = {name: total / count for name, (total, count) in result.metrics.items()}
        return result.loss

    def compute(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None, *, feedback=None,
                uniform: Optional[torch.Tensor] = None, num_processes: int = 1, head=None) -> LossResult:
        """Loss and metrics from full logits (or hidden states) and unshifted labels.

        Parameters
        ----------
        logits : Tensor, ``[B, T, V]`` (pairwise: ``[2B, T, V]``, chosen rows first), floating
            With ``head``: the last hidden states, ``[B, T, D]`` (``[2B, T, D]``).
        labels : Tensor, ``[B, T]`` (pairwise ``[2B, T]``), int64, unshifted, ``ignore_index`` where no loss is wanted
        num_items_in_batch : int or Tensor, optional
            Denominator: Trainer's count over the accumulated batch.
        feedback : Tensor, optional
            Binary mode: ``[B]`` per sequence or ``[B, T]`` per token aligned
            with ``labels``. Taken from :meth:`attach`'s hook when None.
        uniform : Tensor, ``[B, T]``, float32, optional
            Draws of the sampled tokens, aligned with the shifted targets
            (pairwise: ``B`` rows, for the rejected sequences); default: the
            loss's ``torch.rand``.
        num_processes : int
            ``num_items_in_batch`` spans this many processes whose gradients
            data parallelism averages: the count is divided by it, so the
            averaged gradient is the whole batch's and the loss's upstream
            gradient stays 1 (the single pass's default ``grad_scale``).
        head : LMHead, optional
            The LM head (:class:`~cringe_kernels.hf.lm_head.LMHead`): the loss
            is computed by :mod:`cringe_kernels.linear` from the hidden
            states, never holding the ``[B, T, V]`` logits.

        Returns
        -------
        LossResult
            Binary metrics: ``ce`` (per positive token), ``cringe`` (per
            negative token, before ``alpha``), ``positive_fraction`` (of the
            loss's tokens), and with per-sequence feedback ``logps/chosen``,
            ``logps/rejected`` (summed log-probability of a positive /
            negative completion, per sequence). Pairwise: ``ce`` (per chosen
            token), ``cringe`` (gated, per rejected token), ``gate``,
            ``margins`` (the gate's ``M``, summed or per-token as the loss is
            configured), ``accuracies`` (share of pairs with ``M > 0``),
            ``logps/chosen``, ``logps/rejected`` (summed per sequence, per pair).
        """
        if labels is None:
            raise ValueError("the Cringe losses need labels; the batch has none")
        target = shift_labels(labels, self.ignore_index)
        if self.pairwise:
            return self._pairwise(logits, target, num_items_in_batch, uniform, num_processes, head)
        if feedback is None:
            feedback, self._stashed_feedback = self._stashed_feedback, None
        if feedback is None:
            raise ValueError(
                "binary Cringe loss needs feedback: pass feedback=..., or call loss_func.attach(model) and put a "
                f"{' or '.join(map(repr, self.feedback_keys))} entry in each batch"
            )
        return self._binary(logits, target, shift_feedback(feedback, labels), num_items_in_batch, uniform,
                            num_processes, head)

    def _count(self, num_items_in_batch, fallback: torch.Tensor, num_processes: int) -> torch.Tensor:
        if num_items_in_batch is None:
            return fallback.clamp(min=1)
        count = num_items_in_batch
        if not isinstance(count, torch.Tensor):
            count = torch.full((), float(count), device=fallback.device)
        return count / num_processes if num_processes > 1 else count

    def _head_kwargs(self, head) -> dict:
        kwargs = {k: v for k, v in self.loss_kwargs.items() if k not in _LOGITS_ONLY}
        return dict(kwargs, bias=head.bias, logit_softcap=head.logit_softcap, logit_scale=head.logit_scale)

    def _binary(self, logits, target, feedback, num_items_in_batch, uniform, num_processes, head) -> LossResult:
        valid = target != self.ignore_index
        positive = torch.broadcast_to(feedback, target.shape).to(torch.bool) & valid
        negative = valid & ~positive
        n_pos, n_neg = positive.sum(), negative.sum()
        count = self._count(num_items_in_batch, valid.sum(), num_processes)
        # The loss's own "mean" with that count: Trainer backpropagates the
        # loss with weight 1, the single pass's default grad_scale.
        common = dict(reduction="mean", num_items_in_batch=count, uniform=uniform, return_details=True)
        if head is None:
            out = cringe_loss(logits, target, feedback, **common, **self.loss_kwargs)
        else:
            out = linear_cringe_loss(logits, head.weight, target, feedback, **common, **self._head_kwargs(head))
        metrics = {
            "ce": (out.ce_loss.detach() * count, n_pos),
            "cringe": (out.cringe_loss.detach() * count, n_neg),
            "positive_fraction": (n_pos, valid.sum()),
        }
        if feedback.dim() == 2 and feedback.shape[1] == 1 and feedback.shape[0] == target.shape[0]:
            # Per-sequence feedback: TRL's per-sequence summed log-probabilities.
            logp_seq = out.logp.detach().sum(dim=1)
            has_tokens = valid.any(dim=1)
            good = feedback.view(-1).to(torch.bool) & has_tokens
            bad = ~feedback.view(-1).to(torch.bool) & has_tokens
            metrics["logps/chosen"] = (torch.where(good, logp_seq, 0.0).sum(), good.sum())
            metrics["logps/rejected"] = (torch.where(bad, logp_seq, 0.0).sum(), bad.sum())
        return LossResult(out.loss, metrics, None)

    def _pairwise(self, logits, target, num_items_in_batch, uniform, num_processes, head) -> LossResult:
        rows = logits.shape[0]
        if rows % 2:
            raise ValueError(f"pairwise batches hold chosen rows then rejected rows; got an odd batch of {rows}")
        half = rows // 2
        valid = target != self.ignore_index
        n_w_rows, n_l_rows = valid[:half].sum(dim=1), valid[half:].sum(dim=1)
        n_w, n_l = n_w_rows.sum(), n_l_rows.sum()
        count = self._count(num_items_in_batch, n_w + n_l, num_processes)
        # Views along the batch dim: contiguous, no copy of the logits.
        common = dict(reduction="mean", num_items_in_batch=count, uniform=uniform, return_details=True)
        if head is None:
            out = pairwise_cringe_loss(logits[:half], target[:half], logits[half:], target[half:], **common,
                                       **self.loss_kwargs)
        else:
            out = linear_pairwise_cringe_loss(logits[:half], target[:half], logits[half:], target[half:],
                                              head.weight, **common, **self._head_kwargs(head))
        gate, margin = out.gate.detach(), out.margin.detach()
        lp_w, lp_l = out.logp_chosen.detach(), out.logp_rejected.detach()
        if self.loss_kwargs.get("length_normalize", False):
            lp_w, lp_l = lp_w * n_w_rows.clamp(min=1), lp_l * n_l_rows.clamp(min=1)
        pairs = torch.full((), half, device=gate.device)
        metrics = {
            "ce": (out.ce_loss.detach() * count, n_w),
            "cringe": (out.cringe_loss.detach() * count, n_l),
            "gate": (gate.sum(), pairs),
            "margins": (margin.sum(), pairs),
            "accuracies": ((margin > 0).sum(), pairs),
            "logps/chosen": (lp_w.sum(), pairs),
            "logps/rejected": (lp_l.sum(), pairs),
        }
        return LossResult(out.loss, metrics, gate)


def make_compute_loss_func(*, pairwise: bool = False, feedback_keys: Sequence[str] = FEEDBACK_KEYS,
                           **loss_kwargs) -> CringeLossFunc:
    """A ``compute_loss_func`` for ``transformers.Trainer``.

    Parameters
    ----------
    pairwise : bool
        False: binary Cringe loss with feedback (see :class:`CringeLossFunc`).
        True: Pairwise Cringe loss on batches of ``B`` chosen rows followed
        by ``B`` rejected rows.
    feedback_keys : sequence of str
        Batch entries that :meth:`CringeLossFunc.attach` routes to the loss.
    **loss_kwargs
        Passed to :func:`~cringe_kernels.cringe_loss` (``k``, ``alpha``,
        ``detach_positives``, ``ct_on_positives``, ``ignore_index``,
        ``backend``, ``single_pass``, ``generator``...) or
        :func:`~cringe_kernels.pairwise_cringe_loss` (``margin``,
        ``temperature``, ``gate_grad``, ``length_normalize``...). The
        reduction is fixed: sum over tokens divided by ``num_items_in_batch``.

    Returns
    -------
    CringeLossFunc

    Examples
    --------
    >>> loss_func = make_compute_loss_func(k=5, alpha=1.0)          # doctest: +SKIP
    >>> trainer = Trainer(model=loss_func.attach(model), args=args,  # doctest: +SKIP
    ...                   train_dataset=ds, data_collator=CringeCollator(tok),
    ...                   compute_loss_func=loss_func)
    """
    return CringeLossFunc(pairwise=pairwise, feedback_keys=feedback_keys, **loss_kwargs)
