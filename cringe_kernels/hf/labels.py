"""Label alignment: Hugging Face's unshifted labels to the loss's targets.

A causal LM's logit at position ``t`` predicts token ``t + 1``. Hugging Face
batches carry ``labels`` aligned with ``input_ids`` (``labels[:, t]`` is token
``t``, ``-100`` where no loss is wanted) and shift inside the loss. Here the
*targets* are shifted instead (``target = labels[:, 1:]`` with one
``ignore_index`` column appended), so the loss reads the model's full
``[B, T, V]`` logits as they are: slicing them to ``logits[:, :-1]`` would
either copy ``B * T * V`` values or hand the kernels a non-contiguous view.
The last position's logit is then simply an ignored row.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# Batch entries that may carry binary feedback: "feedback" is ours, "label"
# is the column of TRL's unpaired preference data.
FEEDBACK_KEYS = ("feedback", "label")


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Targets for the unshifted logits: ``labels[:, 1:]`` plus one ignored column.

    Parameters
    ----------
    labels : Tensor, ``[B, T]``, integer
        Hugging Face labels, aligned with ``input_ids``.
    ignore_index : int

    Returns
    -------
    Tensor, ``[B, T]``, labels' dtype
        ``target[:, t] = labels[:, t + 1]``; ``target[:, -1] = ignore_index``.
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def shift_feedback(feedback, labels: torch.Tensor) -> torch.Tensor:
    """Feedback broadcastable to the shifted targets.

    Parameters
    ----------
    feedback : Tensor or sequence, ``[B]``, ``[B, 1]`` or ``[B, T]``, bool or 0/1
        Per sequence, or per token aligned with ``labels``.
    labels : Tensor, ``[B, T]``

    Returns
    -------
    Tensor
        ``[B, 1]`` for per-sequence feedback; per-token feedback shifted like
        the labels (its padded last column is an ignored row: value moot).
    """
    feedback = torch.as_tensor(feedback, device=labels.device)
    if feedback.dim() == 1:
        return feedback.view(-1, 1)
    if feedback.shape == labels.shape and labels.shape[-1] > 1:
        return F.pad(feedback[..., 1:], (0, 1), value=1)
    return feedback


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output (``ModelOutput``, dict or tuple)."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        return logits
    return outputs[0]
