"""Scoring completions: their log-likelihood under a model."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch

from ..primitive import token_logps
from .collators import CringeCollator
from .labels import IGNORE_INDEX, logits_of, shift_labels


@torch.no_grad()
def completion_logps(model, tokenizer, prompts: Sequence[Any], completions: Sequence[Any], *, batch_size: int = 8,
                     max_length: Optional[int] = None, add_eos: bool = True, normalize: bool = True) -> List[float]:
    """Log-likelihood of each completion given its prompt under ``model``.

    Prompts and completions are tokenized as the trainers do (any form of
    :mod:`cringe_kernels.hf.data`: text, or conversations through the chat
    template).

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer.
    prompts, completions : sequences, same length
    batch_size : int
    max_length : int, optional
        Truncate prompt + completion (keeping the start).
    add_eos : bool
        End plain-text completions with one EOS before scoring.
    normalize : bool
        Per-token mean (True) or sum (False) of the completion's log-probabilities.

    Returns
    -------
    list of float
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    collate = CringeCollator(tokenizer, max_length=max_length, add_eos=add_eos)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    result: List[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [{"prompt": p, "completion": c, "label": 1}
                    for p, c in zip(prompts[start:start + batch_size], completions[start:start + batch_size])]
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
            target = shift_labels(batch["labels"])
            logp = token_logps(logits, target, ignore_index=IGNORE_INDEX)
            n = (target != IGNORE_INDEX).sum(dim=1)
            total = logp.sum(dim=1)
            values = total / n.clamp(min=1) if normalize else total
            result.extend(values.tolist())
    finally:
        model.train(was_training)
    return result
