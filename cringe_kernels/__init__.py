"""cringe_kernels: fast, exact Cringe losses for PyTorch.

Public API
----------
cringe_loss, pairwise_cringe_loss
    The binary and pairwise Cringe losses on logits (docs/spec.md sections 2, 3).
linear_cringe_loss, linear_pairwise_cringe_loss
    The same losses from hidden states and the output layer's weight, never
    holding the ``[N, V]`` logits (docs/spec.md section 5).
CringeLoss, PairwiseCringeLoss, LinearCringeLoss, LinearPairwiseCringeLoss
    ``torch.nn.Module`` forms holding the hyperparameters.
CringeOutput, PairwiseCringeOutput
    Named results of ``return_details=True``.
token_logps
    ``log p(target)`` per row, differentiable, in one read of the logits.
available_backends, backend_info
    Which backends exist and can run here.
set_value_checks, value_checks
    How the value checks run: "on" (no host wait), "strict" or "off".

Subpackages: :mod:`cringe_kernels.hf` (Hugging Face trainers),
:mod:`cringe_kernels.iterative` (the train-generate-label loop),
:mod:`cringe_kernels.feedback` (organic feedback filtering),
:mod:`cringe_kernels.bench` (the benchmark suite).

Importing the package touches no GPU and compiles nothing.
"""

from .backends import BackendUnavailableError, available_backends, backend_info
from .linear import LinearCringeLoss, LinearPairwiseCringeLoss, linear_cringe_loss, linear_pairwise_cringe_loss
from .losses import (
    CringeLoss,
    CringeOutput,
    PairwiseCringeLoss,
    PairwiseCringeOutput,
    cringe_loss,
    pairwise_cringe_loss,
)
from .primitive import token_logps
from .validate import set_value_checks, value_checks

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CringeLoss",
    "CringeOutput",
    "LinearCringeLoss",
    "LinearPairwiseCringeLoss",
    "PairwiseCringeLoss",
    "PairwiseCringeOutput",
    "available_backends",
    "backend_info",
    "cringe_loss",
    "linear_cringe_loss",
    "linear_pairwise_cringe_loss",
    "pairwise_cringe_loss",
    "set_value_checks",
    "token_logps",
    "value_checks",
    "__version__",
]
