"""cringe_kernels: fast, exact Cringe losses for PyTorch.

Public API
----------
cringe_loss, pairwise_cringe_loss
    The binary and pairwise Cringe losses (see SPEC.md).
CringeLoss, PairwiseCringeLoss
    ``torch.nn.Module`` wrappers holding the hyperparameters.
CringeOutput, PairwiseCringeOutput
    Named results of ``return_details=True``.
available_backends, backend_info
    Which backends exist and can run here.
set_value_checks, value_checks
    Switch off the value checks (one host wait per call, after the launch).

Importing the package touches no GPU and compiles nothing.
"""

from .backends import BackendUnavailableError, available_backends, backend_info
from .losses import (
    CringeLoss,
    CringeOutput,
    PairwiseCringeLoss,
    PairwiseCringeOutput,
    cringe_loss,
    pairwise_cringe_loss,
)
from .validate import set_value_checks, value_checks

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CringeLoss",
    "CringeOutput",
    "PairwiseCringeLoss",
    "PairwiseCringeOutput",
    "available_backends",
    "backend_info",
    "cringe_loss",
    "pairwise_cringe_loss",
    "set_value_checks",
    "value_checks",
    "__version__",
]
