"""Every input check of SPEC.md section 4, in one place, for every backend.

Shape, dtype, device and hyperparameter checks read only metadata and run
before any kernel. Checks of tensor *values* (targets in range, feedback in
{0, 1}, uniforms in [0, 1)) are small reductions enqueued before the kernels
(:func:`start_value_checks`); the losses wait for their outcome after the
kernels are launched, so the one host wait per call never leaves the GPU
idle, and raise before returning. They are skipped while ``torch.compile``
traces (a wait would break the graph) and can be switched off with
:func:`set_value_checks`. Kernels stay memory-safe either way: an
out-of-range target gives NaN and any uniform a valid draw, never an
out-of-bounds access (the reference backend included).
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
    """Turn the value checks (one host wait per loss call) on or off.

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


class PendingValueChecks:
    """Value checks that have been enqueued on the inputs' device.

    :meth:`wait` blocks the host until the checks' small reductions have run
    and raises the first failure. On CUDA the flags come back through a
    non-blocking copy into pinned memory and an event, so a caller that
    launches its kernels before waiting never leaves the GPU idle for them:
    the wait only holds the host back until the device reaches the checks,
    while the work queued after them keeps the device busy.

    Parameters
    ----------
    checks : list of ``(name, bad_mask, source, rule)``
        Per checked argument: the device mask of its bad entries, the
        argument itself (to quote a bad value) and the rule it broke.
    flags : Tensor, ``[len(checks)]`` bool
        Whether each mask has a bad entry (host memory once ``event`` is done).
    event : torch.cuda.Event, optional
    """

    __slots__ = ("_checks", "_flags", "_event")

    def __init__(self, checks=(), flags=None, event=None):
        self._checks = list(checks)
        self._flags = flags
        self._event = event

    def wait(self) -> None:
        """Raise ``ValueError`` naming the first bad argument, if there is one.

        A second call does nothing (the outcome is settled by the first).
        """
        if not self._checks:
            return
        if self._event is not None:
            self._event.synchronize()
        checks, self._checks = self._checks, []
        for (name, mask, source, rule), is_bad in zip(checks, self._flags.tolist()):
            if not is_bad:
                continue
            # The error path only: these syncs cost nothing on good input.
            where = mask.nonzero()[0].tolist()
            value = source[tuple(where)].item()
            raise ValueError(f"{name} {rule}; found {value} at index {tuple(where)}")


_NOTHING_PENDING = PendingValueChecks()


def start_value_checks(
    targets: Sequence[tuple],
    ignore_index: int,
    feedback: Optional[torch.Tensor] = None,
    uniform: Optional[torch.Tensor] = None,
) -> PendingValueChecks:
    """Enqueue the value checks; :meth:`PendingValueChecks.wait` raises.

    Nothing is enqueued while the checks are off, while ``torch.compile``
    traces (a host wait would break the graph) or while a CUDA graph is
    captured (a wait is not allowed then).

    Parameters
    ----------
    targets : sequence of ``(name, target, V)``
        Each ``target`` must hold columns in ``[0, V)`` or ``ignore_index``.
    ignore_index : int
    feedback : bool/int/float tensor, optional
        Must hold 0 or 1 (a bool tensor is not checked).
    uniform : floating tensor, optional
        Must lie in ``[0, 1)``.

    Returns
    -------
    PendingValueChecks
    """
    if not _value_checks or torch.compiler.is_compiling():
        return _NOTHING_PENDING
    # Nothing may wait for the device while a CUDA graph is being captured;
    # the captured kernels are memory-safe on any value.
    if targets and targets[0][1].is_cuda and torch.cuda.is_current_stream_capturing():
        return _NOTHING_PENDING
    checks = []
    for name, target, V in targets:
        if target.numel():
            checks.append((name, ~(((target >= 0) & (target < V)) | (target == ignore_index)), target,
                           f"must lie in [0, {V}) or equal ignore_index={ignore_index}"))
    if feedback is not None and feedback.dtype != torch.bool and feedback.numel():
        checks.append(("feedback", (feedback != 0) & (feedback != 1), feedback,
                       "must be 0/False (negative) or 1/True (positive)"))
    if uniform is not None and uniform.numel():
        checks.append(("uniform", ~((uniform >= 0) & (uniform < 1)), uniform, "must lie in [0, 1)"))
    if not checks:
        return _NOTHING_PENDING
    flags = torch.stack([mask.any() for _, mask, _, _ in checks])
    event = None
    if flags.device.type == "cuda":
        host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(flags.device))
        flags = host
    return PendingValueChecks(checks, flags, event)

