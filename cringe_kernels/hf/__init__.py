"""Hugging Face ``transformers`` integration: configs, trainers and a ``compute_loss_func``.

Needs the ``[hf]`` extra (``pip install cringe_kernels[hf]``: transformers,
accelerate, datasets, peft). Importing :mod:`cringe_kernels` never imports this
package; importing this package imports ``transformers``.

Three ways in, from the least to the most opinionated:

:func:`make_compute_loss_func`
    A loss for a plain ``transformers.Trainer(..., compute_loss_func=...)``
    (:mod:`.loss_func`), with :class:`CringeCollator` /
    :class:`PairwiseCringeCollator` (:mod:`.collators`).
:class:`CringeTrainer` with :class:`CringeConfig`
    Binary feedback on labelled completions (:mod:`.trainers`, :mod:`.config`).
:class:`PairwiseCringeTrainer` with :class:`PairwiseCringeConfig`
    Preference pairs.

Modules: :mod:`.labels` (label shifting), :mod:`.data` (TRL's data forms,
chat templates, tokenization), :mod:`.collators`, :mod:`.draws` (draws
independent of the batch layout), :mod:`.loss_func`, :mod:`.metrics`,
:mod:`.config`, :mod:`.lm_head` (the hidden-state path), :mod:`.trainers`,
:mod:`.scoring` (:func:`completion_logps`). The guide: ``docs/training.md``.
"""

try:
    import transformers  # noqa: F401  (the clear error below, before any submodule's)
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cringe_kernels.hf needs the 'transformers' package: pip install 'cringe_kernels[hf]'"
    ) from err

from .collators import CringeCollator, PairwiseCringeCollator
from .config import CringeConfig, PairwiseCringeConfig
from .data import prepare_dataset
from .labels import IGNORE_INDEX, shift_labels
from .loss_func import CringeLossFunc, make_compute_loss_func
from .scoring import completion_logps
from .trainers import CringeTrainer, PairwiseCringeTrainer

__all__ = [
    "IGNORE_INDEX",
    "CringeCollator",
    "CringeConfig",
    "CringeLossFunc",
    "CringeTrainer",
    "PairwiseCringeCollator",
    "PairwiseCringeConfig",
    "PairwiseCringeTrainer",
    "completion_logps",
    "make_compute_loss_func",
    "prepare_dataset",
    "shift_labels",
]
