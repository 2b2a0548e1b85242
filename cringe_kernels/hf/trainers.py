"""``CringeTrainer`` and ``PairwiseCringeTrainer``: ``transformers.Trainer`` subclasses.

Neither needs a reference model: the Cringe losses contrast the model's own
top-k tokens, not a frozen copy.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Dict

import torch
from transformers import Trainer

from .collators import CringeCollator, PairwiseCringeCollator
from .config import CringeConfig, PairwiseCringeConfig, as_config
from .data import prepare_dataset
from .draws import layout_free_uniform, step_key
from .labels import FEEDBACK_KEYS, logits_of
from .lm_head import head_of, rebuilds_logits
from .loss_func import CringeLossFunc, make_compute_loss_func
from .metrics import MetricStore

logger = logging.getLogger(__name__)

# A gate this close to 0 (or 1) has no say: the Cringe term is off (or
# always fully on) whatever the pair.
GATE_SHUT = 1e-3

_CONFIG_FIELDS = ("loss_kwargs", "max_length", "add_eos", "compute_logps")


class _CringeTrainerBase(Trainer):
    """Shared plumbing: datasets tokenized once, our loss, metrics through ``log``."""

    _config_cls: type = CringeConfig
    _collator_cls: type = CringeCollator
    _pairwise = False
    _columns = ("prompt_ids", "completion_ids", "label", "feedback", "row_id")

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, peft_config=None, compute_metrics=None,
                 preprocess_logits_for_metrics=None, **kwargs):
        for name in _CONFIG_FIELDS:
            if name in kwargs:
                raise TypeError(f"{type(self).__name__} takes no {name}=: set the loss and data options on "
                                f"{self._config_cls.__name__} (e.g. {self._config_cls.__name__}(k=5, alpha=1.0, "
                                "max_length=1024))")
        if compute_metrics is not None or preprocess_logits_for_metrics is not None:
            raise ValueError(f"{type(self).__name__} does not take compute_metrics or preprocess_logits_for_metrics: "
                             "its evaluation returns no predictions (they would be [B, T, V] logits). It logs its own "
                             "eval metrics (eval_ce, eval_cringe, eval_logps/chosen...); for generation-based "
                             "metrics, generate from the model in a callback")
        args = as_config(args, self._config_cls)
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            name = model
            model = AutoModelForCausalLM.from_pretrained(name, **(args.model_init_kwargs or {}))
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(name)
        elif args.model_init_kwargs:
            raise ValueError("model_init_kwargs apply only when the model is given by name or path; the model "
                             "passed is already built")
        if peft_config is not None:
            try:
                from peft import get_peft_model
            except ImportError as err:
                raise ImportError("peft_config= needs the 'peft' package: pip install peft") from err
            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
                # Frozen embeddings give checkpointed blocks inputs without
                # grad; the adapters inside them would get none.
                model.enable_input_require_grads()

        self.loss_func: CringeLossFunc = make_compute_loss_func(pairwise=self._pairwise, **args.loss_kwargs())
        self._own_collator = data_collator is None
        if self._own_collator:
            if processing_class is None:
                raise ValueError(f"{type(self).__name__} needs processing_class (a tokenizer) or a data_collator")
            data_collator = self._collator_cls(processing_class, max_length=args.max_length,
                                               truncation_mode=args.truncation_mode,
                                               pad_to_multiple_of=args.pad_to_multiple_of, add_eos=args.add_eos,
                                               ignore_index=self.loss_func.ignore_index)
            with args.main_process_first(desc="tokenizing the datasets"):
                train_dataset = self._prepare(train_dataset, processing_class, args, "train")
                if isinstance(eval_dataset, dict):
                    eval_dataset = {key: self._prepare(value, processing_class, args, f"eval {key}")
                                    for key, value in eval_dataset.items()}
                else:
                    eval_dataset = self._prepare(eval_dataset, processing_class, args, "eval")

        self._metric_store = MetricStore(self.loss_func.metric_names + ("num_tokens",), totals=("num_tokens",))
        self._num_tokens = 0.0
        self._gate_checked = not self._pairwise
        # The hidden-state path: None until the first batch decides it.
        self._head = None
        self._head_checked = not args.use_hidden_states
        # As compute_loss_func, our loss makes Trainer count
        # num_items_in_batch over the accumulated batch and treat the loss as
        # already scaled for gradient accumulation.
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_loss_func=self.loss_func, **kwargs)

    def _prepare(self, dataset, tokenizer, args, name):
        if dataset is None:
            return None
        return prepare_dataset(dataset, tokenizer, pairwise=self._pairwise, add_eos=args.add_eos,
                               max_length=args.max_length, truncation_mode=args.truncation_mode,
                               num_proc=args.dataset_num_proc, name=name)

    def _set_signature_columns_if_needed(self):
        # With remove_unused_columns=True (the default) Trainer keeps the
        # columns that model.forward takes; ours are what the collator reads.
        if self._signature_columns is None and self._own_collator:
            self._signature_columns = list(self._columns)
        super()._set_signature_columns_if_needed()

    # -- the loss -------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        feedback = None
        for key in FEEDBACK_KEYS:
            if key in inputs:
                feedback = inputs.pop(key)
                break
        row_id = inputs.pop("row_id", None)
        outputs, features, head = self._forward(model, inputs)
        uniform = None
        if self.args.layout_free_draws and row_id is not None:
            key = step_key(self.args.seed, self.state.global_step)
            uniform = layout_free_uniform(row_id, labels.shape[-1], key)
        processes = 1
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.accelerator.num_processes > 1):
            # Trainer's count then spans every process and DDP averages
            # the gradients: a count per process keeps the sum right.
            processes = self.accelerator.num_processes
        result = self.loss_func.compute(features, labels, num_items_in_batch, feedback=feedback, uniform=uniform,
                                        num_processes=processes, head=head)
        mode = "train" if model.training else "eval"
        metrics = dict(result.metrics)
        if mode == "train" and "attention_mask" in inputs:
            metrics["num_tokens"] = (inputs["attention_mask"].sum(), 0)
        self._metric_store.add(mode, metrics)
        if not self._gate_checked and mode == "train":
            self._gate_checked = True
            self._warn_if_gate_shut(result.gate)
        return (result.loss, outputs) if return_outputs else result.loss

    def _forward(self, model, inputs):
        """``(outputs, features, head)``: features are the last hidden states with ``head``, else the logits."""
        if not self._head_checked:
            self._head_checked = True
            self._head, reason = head_of(model)
            if self._head is not None:
                outputs = model(**inputs, logits_to_keep=1, output_hidden_states=True)
                states = getattr(outputs, "hidden_states", None)
                hidden = states[-1] if states else None
                if hidden is not None and rebuilds_logits(self._head, hidden, logits_of(outputs)):
                    logger.info("%s: loss from the last hidden states and the LM head (no [B, T, V] logits)",
                                type(self).__name__)
                    return outputs, hidden, self._head
                self._head = None
                reason = ("the model returns no hidden states" if hidden is None else
                          "the LM head's weight, bias and logit transforms do not rebuild the model's logits")
            logger.warning("%s: loss from the logits ([B, T, V]), not from the hidden states: %s",
                           type(self).__name__, reason)
        if self._head is not None:
            outputs = model(**inputs, logits_to_keep=1, output_hidden_states=True)
            return outputs, outputs.hidden_states[-1], self._head
        outputs = model(**inputs)
        return outputs, logits_of(outputs), None

    def _warn_if_gate_shut(self, gate: torch.Tensor) -> None:
        """One host sync, at the first training step."""
        low = (gate < GATE_SHUT).float().mean().item()
        high = (gate > 1 - GATE_SHUT).float().mean().item()
        if low > 0.5 or high > 0.5:
            where = "below" if low > 0.5 else "above 1 -"
            effect = ("the Cringe term barely acts: training is close to plain SFT on the chosen replies"
                      if low > 0.5 else "the gate is always open: every pair gets the full Cringe term")
            warnings.warn(
                f"PairwiseCringeTrainer: at the first step {max(low, high):.0%} of the pairs have a gate {where} "
                f"{GATE_SHUT} ({effect}). The gate is sigmoid((margin - M) / temperature) with M the chosen minus "
                f"rejected log-likelihood; with length_normalize={self.args.length_normalize}, "
                f"margin={self.args.margin}, temperature={self.args.temperature}. Try length_normalize=True "
                "(per-token log-likelihoods), a larger temperature, or a margin near the typical M.",
                UserWarning, stacklevel=2)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation needs only the loss (and our metrics); the generic path
        # would pass feedback and row_id to the model.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- metrics ----------------------------------------------------------------

    def log(self, logs: Dict[str, float], *args: Any, **kwargs: Any) -> None:
        eval_prefix = next((key[: -len("loss")] for key in logs
                            if key.startswith("eval") and key.endswith("_loss")), None)
        mode = "train" if eval_prefix is None else "eval"
        values = self._metric_store.reduce(mode, self.accelerator, device=self.args.device)
        tokens = values.pop("num_tokens", 0.0)
        prefix = eval_prefix or ""
        for name, value in values.items():
            logs[prefix + name] = value
        if mode == "train":
            self._num_tokens += tokens
            logs["num_tokens"] = self._num_tokens
        super().log(logs, *args, **kwargs)


class CringeTrainer(_CringeTrainerBase):
    """``transformers.Trainer`` for the binary Cringe loss.

    Data (see :mod:`cringe_kernels.hf.data`): labelled completions
    (``prompt``, ``completion``, ``label``; TRL's unpaired preference form)
    or preference pairs (each unpaired into a good and a bad completion), as
    text or conversations, or already tokenized; tokenized once, with
    ``datasets.map``. Good completions get cross-entropy, bad ones the
    Cringe contrast. No reference model.

    Logged every ``logging_steps`` (``eval_``-prefixed in evaluation), each a
    mean weighted by its count over the micro-batches since the last log and
    over all processes: ``ce`` (per good token), ``cringe`` (per bad token,
    before ``alpha``), ``positive_fraction`` (of the tokens), ``logps/chosen``
    and ``logps/rejected`` (summed log-probability of a good / bad
    completion), ``num_tokens`` (input tokens seen so far, training only).

    Parameters
    ----------
    model : PreTrainedModel or str
        A causal LM, or its name or path (loaded with ``from_pretrained`` and
        ``args.model_init_kwargs``; the tokenizer too when
        ``processing_class`` is None).
    args : CringeConfig or TrainingArguments, optional
        Other ``TrainingArguments`` (TRL's configs included) are copied into
        a :class:`CringeConfig` with their values; the object is not changed.
    data_collator : optional
        Default :class:`CringeCollator`; with your own, the datasets are
        passed to it as they are.
    train_dataset, eval_dataset, processing_class, callbacks, optimizers...
        As for ``transformers.Trainer``.
    peft_config : peft.PeftConfig, optional
        Wrap the model with ``peft.get_peft_model``.
    """

    _config_cls = CringeConfig
    _collator_cls = CringeCollator
    _pairwise = False
    _columns = ("prompt_ids", "completion_ids", "label", "feedback", "row_id")


class PairwiseCringeTrainer(_CringeTrainerBase):
    """``transformers.Trainer`` for the Pairwise Cringe loss.

    Data: preference pairs (``prompt``, ``chosen``, ``rejected``, or
    ``chosen``/``rejected`` sharing their start), as text or conversations,
    or tokenized. Chosen and rejected sequences go through the model in one
    forward pass of ``2B`` rows. No reference model.

    Logged like :class:`CringeTrainer`: ``ce`` (per chosen token), ``cringe``
    (gated, per rejected token), ``gate`` (mean over pairs), ``margins``
    (the gate's ``M``), ``accuracies`` (share of pairs with ``M > 0``),
    ``logps/chosen``, ``logps/rejected`` (summed per sequence), ``num_tokens``.
    Warns once, at the first step, when most pairs' gate is below 1e-3 or
    above 1 - 1e-3.

    Parameters
    ----------
    As :class:`CringeTrainer`, with a :class:`PairwiseCringeConfig`.
    """

    _config_cls = PairwiseCringeConfig
    _collator_cls = PairwiseCringeCollator
    _pairwise = True
    _columns = ("prompt_ids", "chosen_ids", "rejected_ids", "row_id")
