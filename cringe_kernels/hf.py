"""Hugging Face ``transformers`` integration: a ``compute_loss_func`` and two trainers.

Needs the ``[hf]`` extra (``pip install cringe_kernels[hf]``). Importing
:mod:`cringe_kernels` never imports this module; importing this module
imports ``transformers``.

Three ways in, from the least to the most opinionated:

:func:`make_compute_loss_func`
    A loss for a plain ``transformers.Trainer(..., compute_loss_func=...)``.
    It takes Hugging Face's *unshifted* ``labels`` (the convention of every
    ``*ForCausalLM`` model) and the full logits, and divides by Trainer's
    ``num_items_in_batch`` so that gradient accumulation gives the gradient
    of one big batch.
:class:`CringeTrainer`
    Binary feedback on ``prompt`` / ``completion`` / ``label`` examples (the
    unpaired layout that TRL's KTO trainer reads).
:class:`PairwiseCringeTrainer`
    Preference pairs on ``prompt`` / ``chosen`` / ``rejected`` examples (the
    layout that TRL's DPO trainer reads). Chosen and rejected responses go
    through the model in one forward pass of ``2 * B`` rows.

Neither trainer needs a reference model: the Cringe losses contrast the
model's own top-k tokens, not a frozen copy.

Label alignment
---------------
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

import math
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

try:
    from transformers import Trainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cringe_kernels.hf needs the 'transformers' package: pip install 'cringe_kernels[hf]'"
    ) from err

from .losses import cringe_loss, pairwise_cringe_loss

__all__ = [
    "CringeCollator",
    "CringeLossFunc",
    "CringeTrainer",
    "PairwiseCringeCollator",
    "PairwiseCringeTrainer",
    "completion_logps",
    "make_compute_loss_func",
    "shift_labels",
]

IGNORE_INDEX = -100

# Keys that may carry binary feedback in a batch: "feedback" is ours, "label"
# is the KTO column (and survives Trainer's remove_unused_columns, which
# always keeps a column called "label").
FEEDBACK_KEYS = ("feedback", "label")


# --------------------------------------------------------------------------
# Alignment helpers
# --------------------------------------------------------------------------


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Targets for the unshifted logits: ``labels[:, 1:]`` plus one ignored column.

    Parameters
    ----------
    labels : Tensor, ``[B, T]``, integer
        Hugging Face labels, aligned with ``input_ids``.
    ignore_index : int

    Returns
    -------
    Tensor, ``[B, T]``
        ``target[:, t] = labels[:, t + 1]``; ``target[:, -1] = ignore_index``.
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def _shift_feedback(feedback: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Feedback broadcastable to the shifted targets.

    Per-sequence feedback (``[B]`` or ``[B, 1]``) becomes ``[B, 1]``; per-token
    feedback (``[B, T]``, aligned with ``labels``) is shifted like the labels.
    """
    feedback = torch.as_tensor(feedback, device=labels.device)
    if feedback.dim() == 1:
        return feedback.view(-1, 1)
    if feedback.shape == labels.shape and labels.shape[-1] > 1:
        # The padded last column is an ignored row: its feedback value is moot.
        return F.pad(feedback[..., 1:], (0, 1), value=1)
    return feedback


def _logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output (ModelOutput, dict or tuple)."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        return logits
    return outputs[0]


def _num_items_value(num_items_in_batch, fallback: torch.Tensor) -> torch.Tensor:
    """The loss denominator: Trainer's count when given, else this batch's (never 0)."""
    if num_items_in_batch is None:
        return fallback.clamp(min=1)
    return torch.as_tensor(num_items_in_batch, device=fallback.device)


@torch.no_grad()
def _token_logps(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int, backend: str) -> torch.Tensor:
    """Per-row ``log p(target)``, 0 on ignored rows; for metrics, not gradients.

    Uses the package's own kernels (the ``logp`` detail of an all-positive
    Cringe loss) so that no ``[N, V]`` log-softmax is materialised.
    """
    ones = torch.ones((), dtype=torch.bool, device=logits.device)
    return cringe_loss(logits.detach(), target, ones, k=1, ignore_index=ignore_index, backend=backend,
                       return_details=True).logp


# --------------------------------------------------------------------------
# compute_loss_func for a plain Trainer
# --------------------------------------------------------------------------


class CringeLossFunc:
    """A ``compute_loss_func`` for ``transformers.Trainer`` (made by :func:`make_compute_loss_func`).

    Called by Trainer as ``loss_func(outputs, labels, num_items_in_batch=...)``
    (the signature of transformers 4.46 to 5.x). Returns
    ``sum of per-row losses / num_items_in_batch``: Trainer counts the
    non-ignored *shifted* labels over every micro-batch of an optimizer step,
    so the accumulated gradient equals the gradient of the whole batch's
    ``"mean"`` loss. Without ``num_items_in_batch`` (evaluation, older
    Trainer paths) it is this batch's mean. (Older transformers count the
    unshifted labels; the counts agree whenever each sequence's first label
    is ignored, as it always is with this module's collators, whose first
    token belongs to the prompt.)

    Binary mode needs the feedback, which Trainer does not pass to a
    ``compute_loss_func``. Either call it yourself with ``feedback=``, or
    let :meth:`attach` take the ``feedback`` (or ``label``) entry out of each
    batch before the model sees it.

    Pairwise mode (``pairwise=True``) needs no feedback: the batch holds
    ``B`` chosen rows followed by ``B`` rejected rows, as
    :class:`PairwiseCringeCollator` builds it, and the logits are split into
    two views (no copy).

    Attributes
    ----------
    loss_kwargs : dict
        Keyword arguments for :func:`~cringe_kernels.cringe_loss` or
        :func:`~cringe_kernels.pairwise_cringe_loss`.
    last_metrics : dict of float
        Metrics of the last call (see :meth:`compute`).
    """

    def __init__(self, *, pairwise: bool = False, feedback_keys: Sequence[str] = FEEDBACK_KEYS,
                 compute_logps: bool = True, **loss_kwargs):
        for key in ("reduction", "num_items_in_batch", "return_details"):
            if key in loss_kwargs:
                raise TypeError(f"{key} is set by the Trainer integration; do not pass it (got {key}={loss_kwargs[key]!r})")
        self.pairwise = bool(pairwise)
        self.feedback_keys = tuple(feedback_keys)
        self.compute_logps = bool(compute_logps)
        self.loss_kwargs = dict(loss_kwargs)
        self.ignore_index = int(self.loss_kwargs.get("ignore_index", IGNORE_INDEX))
        self.backend = self.loss_kwargs.get("backend", "auto")
        self.last_metrics: Dict[str, float] = {}
        self._stashed_feedback: Optional[torch.Tensor] = None
        self._hook = None

    # -- feedback routing ------------------------------------------------

    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        """Route each batch's feedback entry from ``model``'s inputs to this loss.

        Installs a forward pre-hook on ``model`` that removes the first of
        ``feedback_keys`` found in the keyword inputs (so ``model.forward``
        never sees it) and keeps it for the next call of this loss. Returns
        ``model`` so that it reads ``Trainer(model=loss.attach(model), ...)``.
        """
        if self._hook is not None:
            self._hook.remove()

        def take_feedback(module, args, kwargs):
            for key in self.feedback_keys:
                if key in kwargs:
                    self._stashed_feedback = kwargs.pop(key)
                    break
            return args, kwargs

        self._hook = model.register_forward_pre_hook(take_feedback, with_kwargs=True)
        return model

    def detach(self) -> None:
        """Remove the hook installed by :meth:`attach`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- the loss ----------------------------------------------------------

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None, *, feedback=None, **_ignored):
        loss, metrics = self.compute(_logits_of(outputs), labels, num_items_in_batch, feedback=feedback)
        self.last_metrics = metrics
        return loss

    def compute(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None, *, feedback=None):
        """Loss and metrics from full logits and unshifted labels.

        Parameters
        ----------
        logits : Tensor, ``[B, T, V]`` (pairwise: ``[2B, T, V]``, chosen rows first)
        labels : Tensor, ``[B, T]``, unshifted, ``ignore_index`` where no loss is wanted
        num_items_in_batch : int or Tensor, optional
            Denominator (Trainer's count over the accumulated batch).
        feedback : Tensor, optional
            Binary mode: ``[B]`` per sequence or ``[B, T]`` per token aligned
            with ``labels``. Taken from :meth:`attach`'s hook when None.

        Returns
        -------
        loss : Tensor
            Scalar, differentiable.
        metrics : dict of float-valued 0-dim tensors
            Binary: ``ce`` (mean cross-entropy per positive token), ``cringe``
            (mean contrastive term per negative token), ``positive_fraction``
            of the non-ignored tokens, and with ``compute_logps`` the mean
            per-token log-probabilities ``logps/positive``, ``logps/negative``.
            Pairwise: ``ce`` per chosen token, ``cringe`` (gated) per rejected
            token, ``gate``, ``margin``, ``margin_accuracy`` (share of pairs
            with ``M > 0``), ``logps/chosen``, ``logps/rejected`` (per pair,
            summed or length-normalised as the loss is configured).
        """
        if labels is None:
            raise ValueError("the Cringe losses need labels; the batch has none")
        target = shift_labels(labels, self.ignore_index)
        if self.pairwise:
            return self._pairwise(logits, target, num_items_in_batch)
        if feedback is None:
            feedback, self._stashed_feedback = self._stashed_feedback, None
        if feedback is None:
            raise ValueError(
                "binary Cringe loss needs feedback: pass feedback=..., or call loss_func.attach(model) and put a "
                f"{' or '.join(map(repr, self.feedback_keys))} entry in each batch"
            )
        return self._binary(logits, target, _shift_feedback(feedback, labels), num_items_in_batch)

    def _binary(self, logits, target, feedback, num_items_in_batch):
        valid = target != self.ignore_index
        positive = torch.broadcast_to(feedback, target.shape).to(torch.bool) & valid
        negative = valid & ~positive
        n_pos, n_neg = positive.sum(), negative.sum()
        # sum / count as the loss's own "mean" with that count, so that
        # grad_in_forward's guess of d loss / d lse is exactly what autograd
        # passes back (Trainer backpropagates this loss with weight 1).
        count = _num_items_value(num_items_in_batch, valid.sum())
        out = cringe_loss(logits, target, feedback, reduction="mean", num_items_in_batch=count, return_details=True,
                          **self.loss_kwargs)
        loss = out.loss
        metrics = {
            "ce": out.ce_loss.detach() * count / n_pos.clamp(min=1),
            "cringe": out.cringe_loss.detach() * count / n_neg.clamp(min=1),
            "positive_fraction": n_pos / valid.sum().clamp(min=1),
        }
        if self.compute_logps:
            logp = out.logp.detach()
            # torch.where, not boolean indexing: no host sync in the step.
            metrics["logps/positive"] = torch.where(positive, logp, 0.0).sum() / n_pos.clamp(min=1)
            metrics["logps/negative"] = torch.where(negative, logp, 0.0).sum() / n_neg.clamp(min=1)
        return loss, metrics

    def _pairwise(self, logits, target, num_items_in_batch):
        rows = logits.shape[0]
        if rows % 2:
            raise ValueError(f"pairwise batches hold chosen rows then rejected rows; got an odd batch of {rows}")
        half = rows // 2
        valid = target != self.ignore_index
        n_w, n_l = valid[:half].sum(), valid[half:].sum()
        # The loss's own "mean" with Trainer's count, as in _binary.
        count = _num_items_value(num_items_in_batch, n_w + n_l)
        # Views along the batch dim: contiguous, no copy of the logits.
        out = pairwise_cringe_loss(logits[:half], target[:half], logits[half:], target[half:], reduction="mean",
                                   num_items_in_batch=count, return_details=True, **self.loss_kwargs)
        loss = out.loss
        metrics = {
            "ce": out.ce_loss.detach() * count / n_w.clamp(min=1),
            "cringe": out.cringe_loss.detach() * count / n_l.clamp(min=1),
            "gate": out.gate.detach().mean(),
            "margin": out.margin.detach().mean(),
            "margin_accuracy": (out.margin.detach() > 0).float().mean(),
            "logps/chosen": out.logp_chosen.detach().mean(),
            "logps/rejected": out.logp_rejected.detach().mean(),
        }
        return loss, metrics


def make_compute_loss_func(*, pairwise: bool = False, feedback_keys: Sequence[str] = FEEDBACK_KEYS,
                           compute_logps: bool = True, **loss_kwargs) -> CringeLossFunc:
    """A ``compute_loss_func`` for ``transformers.Trainer``.

    Parameters
    ----------
    pairwise : bool
        False: binary Cringe loss with feedback (see :class:`CringeLossFunc`).
        True: Pairwise Cringe loss on batches of ``B`` chosen rows followed by
        ``B`` rejected rows.
    feedback_keys : sequence of str
        Batch entries that :meth:`CringeLossFunc.attach` routes to the loss.
    compute_logps : bool
        Binary mode: also compute per-token log-probability metrics (one
        more read of the logits, no gradient).
    **loss_kwargs
        Passed to :func:`~cringe_kernels.cringe_loss` (``k``, ``alpha``,
        ``detach_positives``, ``ct_on_positives``, ``ignore_index``,
        ``backend``, ``inplace_backward``, ``generator``...) or
        :func:`~cringe_kernels.pairwise_cringe_loss` (``margin``,
        ``temperature``, ``gate_grad``, ``length_normalize``...). The
        reduction is fixed: sum over rows divided by ``num_items_in_batch``.

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
    return CringeLossFunc(pairwise=pairwise, feedback_keys=feedback_keys, compute_logps=compute_logps,
                          **loss_kwargs)


# --------------------------------------------------------------------------
# Collators
# --------------------------------------------------------------------------


class _Tokenize:
    """Shared tokenisation: prompt then completion, prompt tokens masked."""

    def __init__(self, tokenizer, max_length: Optional[int] = None, add_eos: bool = True,
                 pad_to_multiple_of: Optional[int] = None, ignore_index: int = IGNORE_INDEX):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.add_eos = add_eos
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ignore_index = ignore_index
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")

    def encode(self, prompt: str, completion: str):
        """``(input_ids, labels)`` lists; the prompt is tokenised on its own so the boundary is exact."""
        tok = self.tokenizer
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        eos = tok.eos_token_id
        if self.add_eos and eos is not None and (not c or c[-1] != eos):
            c = c + [eos]
        if self.max_length is not None and len(p) + len(c) > self.max_length:
            # Keep the prompt's end (closest to the completion), then cut the completion.
            p = p[-max(1, self.max_length // 2):] if len(p) >= self.max_length else p
            c = c[: max(0, self.max_length - len(p))]
        return p + c, [self.ignore_index] * len(p) + list(c)

    def pad(self, rows: List[tuple]) -> Dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            width = int(math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), self.ignore_index, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            # Right padding: positions stay 0..n-1, so the logits of a sequence
            # do not depend on how long its neighbours are.
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class CringeCollator(_Tokenize):
    """Collate ``{"prompt", "completion", "label"}`` examples for the binary loss.

    Output: ``input_ids``, ``attention_mask``, ``labels`` (``[B, T]``, prompt
    and padding set to ``-100``) and ``feedback`` (``[B]``, int64, 1 for a
    positive completion). Examples that are already tokenised (with
    ``input_ids`` and ``labels``) are padded as they are.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
    max_length : int, optional
        Truncate prompt + completion to this many tokens.
    add_eos : bool
        Append EOS to each completion, so the model learns (or unlearns) to stop.
    feedback_key : str
        The example's feedback column; ``"label"`` as in TRL's KTO data.
    pad_to_multiple_of : int, optional
    """

    def __init__(self, tokenizer, max_length: Optional[int] = None, add_eos: bool = True,
                 feedback_key: str = "label", pad_to_multiple_of: Optional[int] = None,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__(tokenizer, max_length, add_eos, pad_to_multiple_of, ignore_index)
        self.feedback_key = feedback_key

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        rows, feedback = [], []
        for ex in examples:
            if "input_ids" in ex:
                rows.append((list(ex["input_ids"]), list(ex["labels"])))
            else:
                rows.append(self.encode(ex["prompt"], ex["completion"]))
            key = self.feedback_key if self.feedback_key in ex else "feedback"
            value = ex[key]
            if value not in (0, 1, True, False):
                raise ValueError(f"{key} must be a bool or 0/1, got {value!r}")
            feedback.append(int(value))
        batch = self.pad(rows)
        batch["feedback"] = torch.tensor(feedback, dtype=torch.long)
        return batch


class PairwiseCringeCollator(_Tokenize):
    """Collate ``{"prompt", "chosen", "rejected"}`` examples for the pairwise loss.

    Output: ``input_ids``, ``attention_mask``, ``labels`` of shape
    ``[2B, T]``: rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` are
    prompt + rejected, padded together so that one forward pass serves both
    and Trainer's label count (``num_items_in_batch``) is the SPEC's pairwise
    denominator, chosen plus rejected tokens.
    """

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        chosen = [self.encode(ex["prompt"], ex["chosen"]) for ex in examples]
        rejected = [self.encode(ex["prompt"], ex["rejected"]) for ex in examples]
        return self.pad(chosen + rejected)


# --------------------------------------------------------------------------
# Trainers
# --------------------------------------------------------------------------


class _CringeTrainerBase(Trainer):
    """Shared plumbing: our loss as ``compute_loss_func``, metrics through ``log``."""

    _collator_cls = None

    def __init__(self, model=None, args=None, *, loss_func: CringeLossFunc, data_collator=None,
                 processing_class=None, max_length: Optional[int] = None, add_eos: bool = True, **kwargs):
        if args is not None and getattr(args, "remove_unused_columns", False):
            # Our collator reads prompt/completion columns that model.forward
            # does not take; Trainer would drop them before collation.
            args.remove_unused_columns = False
        if data_collator is None:
            if processing_class is None:
                raise ValueError(f"{type(self).__name__} needs processing_class (a tokenizer) or a data_collator")
            data_collator = self._collator_cls(processing_class, max_length=max_length, add_eos=add_eos,
                                               ignore_index=loss_func.ignore_index)
        self.loss_func = loss_func
        self._cringe_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # Passing the loss as compute_loss_func makes Trainer count
        # num_items_in_batch over the accumulated batch and treat our loss as
        # already scaled for gradient accumulation, in every version >= 4.46.
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class,
                         compute_loss_func=loss_func, **kwargs)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        feedback = None
        for key in FEEDBACK_KEYS:
            if key in inputs:
                feedback = inputs.pop(key)
                break
        outputs = model(**inputs)
        loss, metrics = self.loss_func.compute(_logits_of(outputs), labels, num_items_in_batch,
                                               feedback=feedback)
        mode = "train" if model.training else "eval"
        for name, value in metrics.items():
            self._cringe_metrics[mode][name].append(value)
        if (num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False)
                and self.accelerator.num_processes > 1):
            # Trainer's count then spans every process, and DDP averages the
            # gradients: undo the average, as Trainer.compute_loss does.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Our batches carry columns (feedback) that the generic prediction
        # path would pass to the model; evaluation needs only the loss.
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs)).detach()
        return loss, None, None

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        store = self._cringe_metrics[mode]
        for name, values in store.items():
            logs[prefix + name] = torch.stack([v.float().cpu() for v in values]).mean().item()
        store.clear()
        super().log(logs, *args, **kwargs)


class CringeTrainer(_CringeTrainerBase):
    """``transformers.Trainer`` for the binary Cringe loss.

    Data: examples ``{"prompt": str, "completion": str, "label": bool}``
    (TRL's unpaired preference layout), collated by :class:`CringeCollator`
    unless ``data_collator`` is given. Positive completions get
    cross-entropy, negative ones the Cringe contrast. No reference model.

    Logged (per logging step, averaged over micro-batches; ``eval_`` prefix
    in evaluation): ``ce``, ``cringe``, ``positive_fraction``,
    ``logps/positive``, ``logps/negative`` (see :meth:`CringeLossFunc.compute`).

    Parameters
    ----------
    model, args, train_dataset, eval_dataset, processing_class, callbacks, ...
        As for ``transformers.Trainer``.
    loss_kwargs : dict, optional
        For :func:`~cringe_kernels.cringe_loss` (``k``, ``alpha``, ``backend``...).
    max_length : int, optional
        Truncation for the default collator.
    add_eos : bool
        The default collator appends EOS to each completion (turn it off
        when completions carry their own EOS only where the model stopped).
    compute_logps : bool
        Log the per-token log-probabilities (one more no-grad read of the logits).
    """

    _collator_cls = CringeCollator

    def __init__(self, model=None, args=None, *, loss_kwargs: Optional[dict] = None, compute_logps: bool = True,
                 **kwargs):
        loss_func = make_compute_loss_func(compute_logps=compute_logps, **(loss_kwargs or {}))
        super().__init__(model, args, loss_func=loss_func, **kwargs)


class PairwiseCringeTrainer(_CringeTrainerBase):
    """``transformers.Trainer`` for the Pairwise Cringe loss.

    Data: examples ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's
    paired preference layout), collated by :class:`PairwiseCringeCollator`
    unless ``data_collator`` is given. No reference model.

    Logged: ``ce``, ``cringe``, ``gate``, ``margin``, ``margin_accuracy``,
    ``logps/chosen``, ``logps/rejected`` (see :meth:`CringeLossFunc.compute`).

    Parameters
    ----------
    loss_kwargs : dict, optional
        For :func:`~cringe_kernels.pairwise_cringe_loss` (``k``, ``alpha``,
        ``margin``, ``temperature``, ``gate_grad``, ``length_normalize``...).
    """

    _collator_cls = PairwiseCringeCollator

    def __init__(self, model=None, args=None, *, loss_kwargs: Optional[dict] = None, **kwargs):
        loss_func = make_compute_loss_func(pairwise=True, **(loss_kwargs or {}))
        super().__init__(model, args, loss_func=loss_func, **kwargs)


# --------------------------------------------------------------------------
# Scoring completions
# --------------------------------------------------------------------------


@torch.no_grad()
def completion_logps(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], *,
                     batch_size: int = 8, max_length: Optional[int] = None, add_eos: bool = True,
                     normalize: bool = True) -> List[float]:
    """Log-likelihood of each completion given its prompt under ``model``.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer.
    prompts, completions : sequences of str, same length
    normalize : bool
        Per-token mean (True) or sum (False) of the completion's log-probabilities.

    Returns
    -------
    list of float
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    tok = _Tokenize(tokenizer, max_length=max_length, add_eos=add_eos)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    result: List[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [tok.encode(p, c) for p, c in zip(prompts[start:start + batch_size],
                                                      completions[start:start + batch_size])]
            batch = {k: v.to(device) for k, v in tok.pad(rows).items()}
            logits = _logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
            target = shift_labels(batch["labels"])
            logp = _token_logps(logits.float(), target, ignore_index=IGNORE_INDEX, backend="auto")
            n = (target != IGNORE_INDEX).sum(dim=1)
            total = logp.sum(dim=1)
            values = total / n.clamp(min=1) if normalize else total
            result.extend(values.tolist())
    finally:
        model.train(was_training)
    return result
