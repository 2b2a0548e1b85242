"""Collators: truncate, pad and mask tokenized rows into model batches.

Rows come from :func:`~cringe_kernels.hf.data.prepare_dataset` (token ids)
or, for a plain ``transformers.Trainer``, as text rows that the collator
tokenizes itself with the same rules. Padding is on the right, so a
sequence's positions (and its logits) do not depend on its neighbours.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .data import TRUNCATION_MODES, tokenize_binary_example, tokenize_preference_example
from .labels import IGNORE_INDEX


class _Collator:
    def __init__(self, tokenizer=None, *, max_length: Optional[int] = None, truncation_mode: str = "keep_start",
                 pad_to_multiple_of: Optional[int] = None, add_eos: bool = True, ignore_index: int = IGNORE_INDEX,
                 pad_token_id: Optional[int] = None):
        if truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 2):
            raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation_mode = truncation_mode
        self.pad_to_multiple_of = pad_to_multiple_of
        self.add_eos = add_eos
        self.ignore_index = ignore_index
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_token_id is None:
            raise ValueError("need a pad token id: pass pad_token_id= or a tokenizer with a pad or EOS token")
        self.pad_token_id = int(pad_token_id)

    def _tokenized(self, example: Mapping[str, Any], tokenize) -> Mapping[str, Any]:
        if "prompt_ids" in example:
            return example
        if self.tokenizer is None:
            raise ValueError("text rows need a tokenizer: pass one to the collator, or tokenize the dataset first")
        return dict(example, **tokenize(example, self.tokenizer, self.add_eos))

    def _sequence(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> Tuple[List[int], List[int]]:
        """``(input_ids, labels)`` of one sequence, truncated to ``max_length``."""
        ids = list(prompt_ids) + list(completion_ids)
        labels = [self.ignore_index] * len(prompt_ids) + list(completion_ids)
        if self.max_length is not None and len(ids) > self.max_length:
            keep_start = self.truncation_mode == "keep_start"
            part = slice(None, self.max_length) if keep_start else slice(-self.max_length, None)
            ids, labels = ids[part], labels[part]
        return ids, labels

    def _pad(self, rows: List[Tuple[List[int], List[int]]]) -> Dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            width = int(math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), self.ignore_index, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    @staticmethod
    def _row_ids(examples: Sequence[Mapping[str, Any]], batch: Dict[str, torch.Tensor]) -> None:
        if examples and all("row_id" in ex for ex in examples):
            batch["row_id"] = torch.tensor([int(ex["row_id"]) for ex in examples], dtype=torch.long)


class CringeCollator(_Collator):
    """Collate labelled completions for the binary loss.

    Rows: ``prompt_ids``/``completion_ids`` (from
    :func:`~cringe_kernels.hf.data.prepare_dataset`) or text
    ``prompt``/``completion`` in any form of :mod:`cringe_kernels.hf.data`,
    each with ``label`` (or ``feedback``): bool or 0/1, 1 for a good completion.

    Returns
    -------
    dict of Tensor
        ``input_ids``, ``attention_mask``, ``labels`` (``[B, T]``, int64; the
        prompt and the padding are ``-100``), ``feedback`` (``[B]``, int64) and,
        when every row has one, ``row_id`` (``[B]``, int64).

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase, optional
        Needed for text rows and for the pad token.
    max_length : int, optional
        Truncate prompt + completion to this many tokens.
    truncation_mode : {"keep_start", "keep_end"}
        Keep the first (or last) ``max_length`` tokens.
    pad_to_multiple_of : int, optional
    add_eos : bool
        Text rows: end a plain-text completion with one EOS.
    ignore_index : int
    pad_token_id : int, optional
        Default: the tokenizer's pad token, else its EOS token.
    """

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        rows, feedback = [], []
        for ex in examples:
            key = "label" if "label" in ex else "feedback"
            if key not in ex:
                raise ValueError("binary rows need a 'label' (or 'feedback') entry: 1 for a good completion, 0 for a "
                                 "bad one")
            value = ex[key]
            if value not in (0, 1, True, False):
                raise ValueError(f"{key} must be a bool or 0/1, got {value!r}")
            ex = self._tokenized(ex, tokenize_binary_example)
            rows.append(self._sequence(ex["prompt_ids"], ex["completion_ids"]))
            feedback.append(int(value))
        batch = self._pad(rows)
        batch["feedback"] = torch.tensor(feedback, dtype=torch.long)
        self._row_ids(examples, batch)
        return batch


class PairwiseCringeCollator(_Collator):
    """Collate preference pairs for the pairwise loss.

    Rows: ``prompt_ids``/``chosen_ids``/``rejected_ids`` or text
    ``prompt``/``chosen``/``rejected`` (parameters as :class:`CringeCollator`).

    Returns
    -------
    dict of Tensor
        ``input_ids``, ``attention_mask``, ``labels`` of shape ``[2B, T]``:
        rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` prompt +
        rejected, padded together so one forward pass serves both and
        Trainer's label count (``num_items_in_batch``) is the pairwise
        loss's denominator, chosen plus rejected tokens. ``row_id``
        (``[B]``) when every row has one.
    """

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        examples = [self._tokenized(ex, tokenize_preference_example) for ex in examples]
        chosen = [self._sequence(ex["prompt_ids"], ex["chosen_ids"]) for ex in examples]
        rejected = [self._sequence(ex["prompt_ids"], ex["rejected_ids"]) for ex in examples]
        batch = self._pad(chosen + rejected)
        self._row_ids(examples, batch)
        return batch
