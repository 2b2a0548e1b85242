"""``CringeConfig`` and ``PairwiseCringeConfig``: ``TrainingArguments`` with the loss and data options.

Being ``TrainingArguments`` fields, every option is saved with the run
(``training_args.bin``), printed by ``to_json_string()``, logged as the run
config by the reporting integrations (W&B, MLflow...) and settable from the
command line through ``HfArgumentParser``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from transformers import TrainingArguments

from .. import validate
from .data import TRUNCATION_MODES

logger = logging.getLogger(__name__)


@dataclass
class _CringeArguments(TrainingArguments):
    """The data and loss fields both trainers' configs share (see :class:`CringeConfig`)."""

    max_length: Optional[int] = field(default=1024, metadata={"help": "Truncate prompt + completion to this many "
                                                                        "tokens (None: no truncation)."})
    truncation_mode: str = field(default="keep_start", metadata={"help": "keep_start or keep_end."})
    pad_to_multiple_of: Optional[int] = field(default=None, metadata={"help": "Pad sequence lengths to a multiple."})
    dataset_num_proc: Optional[int] = field(default=None, metadata={"help": "Processes for tokenizing the dataset."})
    add_eos: bool = field(default=True, metadata={"help": "End each plain-text completion with one EOS token."})
    k: int = field(default=5, metadata={"help": "Top-k candidates of the sampled contrast token."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the contrastive (Cringe) term."})
    backend: str = field(default="auto", metadata={"help": "Loss backend: auto, cuda, triton, cpu, reference."})
    single_pass: Optional[bool] = field(default=None, metadata={"help": "Write the logits' gradient during the "
                                                                          "forward; None: where the backend can."})
    layout_free_draws: bool = field(default=True, metadata={"help": "Draws hashed from (seed, step, row, position): "
                                                                    "exact gradient accumulation at any k."})
    use_hidden_states: bool = field(default=True, metadata={"help": "Loss from the last hidden states and the LM "
                                                                    "head, never holding the logits, when the model "
                                                                    "allows (else from the logits, reason logged)."})
    model_init_kwargs: Optional[Dict[str, Any]] = field(default=None, metadata={"help": "from_pretrained kwargs "
                                                                                        "for a model given by name."})


@dataclass
class CringeConfig(_CringeArguments):
    """Training arguments of :class:`~cringe_kernels.hf.CringeTrainer` (binary Cringe loss).

    Every ``transformers.TrainingArguments`` field, plus:

    Data: ``max_length`` (1024; None: no truncation), ``truncation_mode``
    (``"keep_start"``: keep the first ``max_length`` tokens, dropping rows
    whose prompt alone fills them; ``"keep_end"``: keep the last ones),
    ``pad_to_multiple_of``, ``dataset_num_proc`` (processes for
    ``datasets.map``), ``add_eos`` (end plain-text completions with one EOS).

    Loss: ``k``, ``alpha``, ``detach_positives``, ``ct_on_positives``,
    ``backend``, ``single_pass`` (see :func:`~cringe_kernels.cringe_loss`),
    and ``layout_free_draws``: draw the sampled tokens from a hash of
    (seed, step, row, position) so that gradient accumulation and data
    parallelism give exactly the big batch's gradient (see
    :mod:`cringe_kernels.hf.draws`); False uses the loss's ``torch.rand``;
    ``use_hidden_states`` (True): compute the loss from the model's last
    hidden state and its LM head (:mod:`cringe_kernels.linear`), never
    holding the ``[B, T, V]`` logits, wherever the model allows (see
    :mod:`cringe_kernels.hf.lm_head`); elsewhere the logits are used and the
    reason is logged once.

    ``model_init_kwargs``: keyword arguments of ``from_pretrained`` when the
    trainer is given a model name or path.
    """

    detach_positives: bool = field(default=False, metadata={"help": "Stop the gradient into the sampled logit."})
    ct_on_positives: bool = field(default=False, metadata={"help": "Contrastive term on positive tokens too."})

    def __post_init__(self):
        _check_common(self)
        super().__post_init__()

    def loss_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`~cringe_kernels.cringe_loss` held by this config."""
        return dict(k=self.k, alpha=self.alpha, backend=self.backend, single_pass=self.single_pass,
                    detach_positives=self.detach_positives, ct_on_positives=self.ct_on_positives)


@dataclass
class PairwiseCringeConfig(_CringeArguments):
    """Training arguments of :class:`~cringe_kernels.hf.PairwiseCringeTrainer`.

    The data and loss fields of :class:`CringeConfig` except
    ``detach_positives`` / ``ct_on_positives``, plus the gate's ``margin``
    (0.0), ``temperature`` (1.0), ``gate_grad`` (False) and
    ``length_normalize``, which is **True** here (the loss function's
    default is False): the gate then compares per-token log-likelihoods,
    which stay within a few nats for replies of any length, where summed
    ones grow with the length difference and shut the gate (see the
    training guide).
    """

    margin: float = field(default=0.0, metadata={"help": "Gate margin b: the gate closes as M exceeds it."})
    temperature: float = field(default=1.0, metadata={"help": "Gate temperature tau > 0."})
    gate_grad: bool = field(default=False, metadata={"help": "Differentiate through the gate."})
    length_normalize: bool = field(default=True, metadata={"help": "Per-token (True) or summed (False) "
                                                                   "log-likelihoods in the gate."})

    def __post_init__(self):
        _check_common(self)
        validate.check_hyperparameters(k=self.k, alpha=self.alpha, ignore_index=-100, reduction="mean",
                                       margin=self.margin, temperature=self.temperature)
        super().__post_init__()

    def loss_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`~cringe_kernels.pairwise_cringe_loss` held by this config."""
        return dict(k=self.k, alpha=self.alpha, backend=self.backend, single_pass=self.single_pass,
                    margin=self.margin, temperature=self.temperature, gate_grad=self.gate_grad,
                    length_normalize=self.length_normalize)


def _check_common(config) -> None:
    validate.check_hyperparameters(k=config.k, alpha=config.alpha, ignore_index=-100, reduction="mean")
    if config.truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {config.truncation_mode!r}")
    if config.max_length is not None and (isinstance(config.max_length, bool) or not isinstance(config.max_length, int)
                                          or config.max_length < 2):
        raise ValueError(f"max_length must be an int >= 2 or None, got {config.max_length!r}")
    if config.pad_to_multiple_of is not None and (not isinstance(config.pad_to_multiple_of, int)
                                                  or config.pad_to_multiple_of < 1):
        raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {config.pad_to_multiple_of!r}")


# Fields that TRL's configs share with ours under the same name and meaning.
_SHARED_DATA_FIELDS = ("max_length", "truncation_mode", "pad_to_multiple_of", "dataset_num_proc",
                       "model_init_kwargs")


def as_config(args, config_cls, output_dir_default: str = "trainer_output"):
    """``args`` as a ``config_cls`` instance, keeping every value the user set.

    ``None`` gives the defaults. A ``config_cls`` is returned as it is. Any
    other ``TrainingArguments`` (a plain one, TRL's ``DPOConfig``...) is
    copied field by field into a new ``config_cls``: its ``TrainingArguments``
    fields and the data fields TRL shares with us (``max_length``,
    ``truncation_mode``, ``pad_to_multiple_of``, ``dataset_num_proc``,
    ``model_init_kwargs``); the loss fields take their defaults. The user's
    object is not modified.
    """
    if args is None:
        return config_cls(output_dir=output_dir_default)
    if isinstance(args, config_cls):
        return args
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be a {config_cls.__name__} or transformers.TrainingArguments, got "
                        f"{type(args).__name__}")
    ours = {f.name for f in dataclasses.fields(config_cls) if f.init}
    base = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = {}
    for f in dataclasses.fields(args):
        if not (f.init and f.name in ours and (f.name in base or f.name in _SHARED_DATA_FIELDS)):
            continue
        value = getattr(args, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        # Fields left at their default keep it (deprecated aliases among
        # them would warn if passed).
        if f.name == "output_dir" or value != default:
            values[f.name] = value
    if values.get("truncation_mode") not in (None,) + TRUNCATION_MODES:
        raise ValueError(f"truncation_mode {values['truncation_mode']!r} from {type(args).__name__} is not one of "
                         f"{TRUNCATION_MODES}")
    # Resolved by TrainingArguments.__post_init__ into forms its __init__ may
    # not take back; the originals are equivalent.
    for name, value in list(values.items()):
        if hasattr(value, "value") and not isinstance(value, (int, float, str)):
            values[name] = value.value
    config = config_cls(**values)
    if type(args) is not TrainingArguments:
        logger.info("%s given as args: copied into a %s (loss fields at their defaults)", type(args).__name__,
                    config_cls.__name__)
    return config
