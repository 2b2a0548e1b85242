"""Every input check of SPEC.md section 4, in one place, for every backend.

Checks run before any kernel. Shape, dtype, device and hyperparameter checks
read only metadata. Checks of tensor *values* (targets in range, feedback in
{0, 1}, uniforms in [0, 1)) are folded into one small reduction and one host
synchronisation per call; they are skipped while ``torch.compile`` traces
(a sync would break the graph) and can be switched off with
:func:`set_value_checks` by callers who cannot afford the sync. Kernels stay
memory-safe either way: an out-of-range target gives NaN, never an
out-of-bounds access.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Optional, Sequence

import torch

REDUCTIONS = ("none", "sum", "mean")

_value_checks = os.environ.get("CRINGE_KERNELS_VALUE_CHECKS", "1") != "0"


def set_value_checks(enabled: bool) -> bool:
    """Turn the value checks (one host sync per loss call) on or off.

    Parameters
    ----------
    enabled : bool
        New setting. The environment variable ``CRINGE_KERNELS_VALUE_CHECKS=0``
        sets the initial value to off.

    Returns
    -------
    bool
        The previous setting.
    """
    global _value_checks
    previous, _value_checks = _value_checks, bool(enabled)
    return previous


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Context manager form of :func:`set_value_checks`."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    return repr(value)


def check_int(name: str, value, minimum: Optional[int] = None) -> int:
    """An ``int`` (not ``bool``) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name: str, value, positive: bool = False) -> float:
    """A finite real number (strictly positive if ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_hyperparameters(*, k, alpha, ignore_index, reduction, margin=0.0, temperature=1.0) -> None:
    """The scalar arguments shared by both losses."""
    check_int("k", k, minimum=1)
    check_float("alpha", alpha)
    check_int("ignore_index", ignore_index)
    check_choice("reduction", reduction, REDUCTIONS)
    check_float("margin", margin)
    check_float("temperature", temperature, positive=True)


def check_logits(name: str, logits, min_rank: int = 1) -> int:
    """Floating ``[..., V]`` with ``V >= 2``; returns ``V``."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(logits)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {logits.dtype}")
    if logits.dim() < min_rank:
        raise ValueError(f"{name} must have at least {min_rank} dims ([..., V]), got shape {tuple(logits.shape)}")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name} must have a vocabulary size V >= 2 in its last dim, got shape {tuple(logits.shape)}")
    return logits.shape[-1]


def check_target(name: str, target, logits_name: str, logits: torch.Tensor) -> None:
    """Integer tensor with the logits' leading shape, on their device."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(target)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{name} must have shape {tuple(logits.shape[:-1])} (the leading dims of {logits_name} "
            f"{tuple(logits.shape)}), got {tuple(target.shape)}"
        )
    check_device(name, target, logits_name, logits)


def check_device(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if tensor.device != ref.device:
        raise ValueError(f"{name} is on {tensor.device} but {ref_name} is on {ref.device}; put them on one device")


def check_feedback(feedback, target: torch.Tensor) -> torch.Tensor:
    """Broadcast ``feedback`` to the target's shape; returns a bool tensor."""
    if not isinstance(feedback, torch.Tensor):
        if isinstance(feedback, numbers.Number) or (
            isinstance(feedback, (list, tuple)) and all(isinstance(v, numbers.Number) for v in feedback)
        ):
            feedback = torch.as_tensor(feedback, device=target.device)
        else:
            raise TypeError(f"feedback must be a tensor, a bool or 0/1, got {_describe(feedback)}")
    check_device("feedback", feedback, "target", target)
    if feedback.is_complex():
        raise TypeError(f"feedback must be bool, integer or floating 0/1, got dtype {feedback.dtype}")
    try:
        return torch.broadcast_to(feedback, target.shape)
    except RuntimeError:
        raise ValueError(
            f"feedback of shape {tuple(feedback.shape)} does not broadcast to the target's shape {tuple(target.shape)}"
        ) from None


def check_uniform(uniform, target: torch.Tensor, target_name: str) -> None:
    if not isinstance(uniform, torch.Tensor):
        raise TypeError(f"uniform must be a torch.Tensor or None, got {_describe(uniform)}")
    if not uniform.is_floating_point():
        raise TypeError(f"uniform must be a floating tensor, got dtype {uniform.dtype}")
    if tuple(uniform.shape) != tuple(target.shape):
        raise ValueError(f"uniform must have the shape of {target_name} {tuple(target.shape)}, got {tuple(uniform.shape)}")
    check_device("uniform", uniform, target_name, target)


def check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {_describe(generator)}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the logits are on {device}")


def check_num_items(num_items_in_batch, device: torch.device) -> None:
    if num_items_in_batch is None:
        return
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(f"num_items_in_batch must be a scalar, got shape {tuple(num_items_in_batch.shape)}")
        return
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, numbers.Real):
        raise TypeError(f"num_items_in_batch must be a number, a scalar tensor or None, got {_describe(num_items_in_batch)}")
    if not num_items_in_batch > 0:
        raise ValueError(f"num_items_in_batch must be > 0, got {num_items_in_batch}")


def check_values(
    targets: Sequence[tuple],
    ignore_index: int,
    feedback: Optional[torch.Tensor] = None,
    uniform: Optional[torch.Tensor] = None,
) -> None:
    """Value checks with a single host sync.

    Parameters
    ----------
    targets : sequence of ``(name, target, V)``
    ignore_index : int
    feedback : bool/int/float tensor, optional
    uniform : floating tensor, optional
    """
    if not _value_checks or torch.compiler.is_compiling():
        return
    bad = {}
    for name, target, V in targets:
        if target.numel():
            bad[name] = ~(((target >= 0) & (target < V)) | (target == ignore_index))
    if feedback is not None and feedback.dtype != torch.bool and feedback.numel():
        bad["feedback"] = ~((feedback == 0) | (feedback == 1))
    if uniform is not None and uniform.numel():
        bad["uniform"] = ~((uniform >= 0) & (uniform < 1))
    if not bad:
        return
    flags = torch.stack([b.any() for b in bad.values()]).tolist()  # the one sync
    for (name, mask), is_bad in zip(bad.items(), flags):
        if not is_bad:
            continue
        source = dict(feedback=feedback, uniform=uniform)
        for tname, target, V in targets:
            source[tname] = target
        where = mask.nonzero()[0].tolist()
        value = source[name][tuple(where)].item()
        if name == "feedback":
            rule = "must be 0/False (negative) or 1/True (positive)"
        elif name == "uniform":
            rule = "must lie in [0, 1)"
        else:
            V = next(V for tname, _, V in targets if tname == name)
            rule = f"must lie in [0, {V}) or equal ignore_index={ignore_index}"
        raise ValueError(f"{name} {rule}; found {value} at index {tuple(where)}")
