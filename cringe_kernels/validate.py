"""Every input check of docs/spec.md section 4, in one place, for every backend.

Shape, dtype, device and hyperparameter checks read only metadata and run
before any kernel. Checks of tensor *values* (targets in range, feedback in
{0, 1}, uniforms in [0, 1)) are a few small reductions
(:func:`check_values`). The default path never makes the host wait for the
device: on CPU tensors a bad value raises the ``ValueError`` at once (the
values are on the host); on a GPU the check is a device-side assertion
(``torch._assert_async``), enqueued before the kernels, that stops the
process's CUDA work with a message naming the argument before an optimizer
step can use the gradient, as PyTorch's own losses do. ``"strict"`` raises
the ``ValueError`` on a GPU too, at the cost of one wait; ``"off"`` skips
the checks. Kernels stay memory-safe either way: an out-of-range target
gives NaN and any uniform a valid draw, never an out-of-bounds access.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Optional, Sequence, Union

import torch

REDUCTIONS = ("none", "sum", "mean")
VALUE_CHECK_MODES = ("on", "strict", "off")


def _value_check_mode(setting: Union[bool, str]) -> str:
    if setting is True or setting is False:
        return "on" if setting else "off"
    if setting not in VALUE_CHECK_MODES:
        raise ValueError(f"value checks must be True, False or one of {', '.join(map(repr, VALUE_CHECK_MODES))}; "
                         f"got {setting!r}")
    return setting


# Read once, at import: no environment read on the loss path.
_value_checks = _value_check_mode({"0": "off", "1": "on"}.get(
    os.environ.get("CRINGE_KERNELS_VALUE_CHECKS", "on"), os.environ.get("CRINGE_KERNELS_VALUE_CHECKS", "on")))


def set_value_checks(mode: Union[bool, str]) -> str:
    """Choose how the value checks run.

    Parameters
    ----------
    mode : {"on", "strict", "off"} or bool
        ``"on"`` (default, or True): a ``ValueError`` on CPU tensors and a
        device-side assertion on a GPU, with no host wait; ``"strict"``: a
        ``ValueError`` on every device (one host wait per loss call on a
        GPU); ``"off"`` (or False): no value checks. The environment
        variable ``CRINGE_KERNELS_VALUE_CHECKS`` (``on``/``strict``/``off``,
        or ``1``/``0``) sets the initial mode when the package is imported.

    Returns
    -------
    str
        The previous mode.
    """
    global _value_checks
    previous, _value_checks = _value_checks, _value_check_mode(mode)
    return previous


@contextlib.contextmanager
def value_checks(mode: Union[bool, str]):
    """Context manager form of :func:`set_value_checks`."""
    previous = set_value_checks(mode)
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
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name: str, value, positive: bool = False) -> float:
    """A finite real number (strictly positive if ``positive``)."""
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
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
    """``feedback`` broadcast to the target's shape, as a tensor on its device.

    A Python bool or 0/1 is checked on the host and becomes a filled tensor
    (no host-to-device copy); a tensor's values are checked by
    :func:`check_values`.
    """
    if not isinstance(feedback, torch.Tensor):
        if isinstance(feedback, numbers.Number) and not isinstance(feedback, complex):
            if feedback not in (0, 1):
                raise ValueError(f"feedback must be 0/False (negative) or 1/True (positive), got {feedback!r}")
            return torch.full(target.shape, bool(feedback), device=target.device)
        if isinstance(feedback, (list, tuple)) and all(isinstance(v, numbers.Number) for v in feedback):
            feedback = torch.as_tensor(feedback)
            if target.device.type == "cuda":
                feedback = feedback.pin_memory().to(target.device, non_blocking=True)
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


def check_no_overlap(name: str, tensor: torch.Tensor) -> None:
    """No two elements of ``tensor`` share memory (an in-place write would race)."""
    if torch._debug_has_internal_overlap(tensor) == 1:
        raise ValueError(f"{name} has elements that share memory (an expand or a stride-0 view); "
                         "inplace_backward=True cannot write its gradient there: pass a contiguous tensor")


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


def _first_bad(name: str, bad: torch.Tensor, source: torch.Tensor, rule: str) -> ValueError:
    """The error naming ``name`` and its first bad entry (the error path only)."""
    where = bad.nonzero()[0].tolist()
    return ValueError(f"{name} {rule}; found {source[tuple(where)].item()} at index {tuple(where)}")


def check_values(
    targets: Sequence[tuple],
    ignore_index: int,
    feedback: Optional[torch.Tensor] = None,
    uniform: Optional[torch.Tensor] = None,
) -> None:
    """The value checks of docs/spec.md section 4, in the current mode.

    Each argument costs one reduction (``aminmax``); a failure then finds
    the first bad entry for the message. While ``torch.compile`` traces, the
    checks become device-side assertions on every device (a host read would
    break the graph); while a CUDA graph is captured they are assertions too.

    Parameters
    ----------
    targets : sequence of ``(name, target, V, valid)``
        Each ``target`` must hold columns in ``[0, V)`` or ``ignore_index``;
        ``valid`` is the ``target != ignore_index`` mask the loss builds
        anyway (or None).
    ignore_index : int
    feedback : tensor, optional
        Must hold 0 or 1 (a bool tensor is not checked).
    uniform : floating tensor, optional
        Must lie in ``[0, 1)``.

    Raises
    ------
    ValueError
        Naming the first bad argument and value (CPU tensors; any device in
        ``"strict"`` mode).
    RuntimeError
        A device-side assertion, naming the argument, on a GPU in ``"on"`` mode.
    """
    mode = _value_checks
    if mode == "off":
        return
    checks = []  # (name, min, max, low, high_exclusive, the argument, its bad-entry mask maker, rule)
    for name, target, V, valid in targets:
        if target.numel():
            clean = target if valid is None else target * valid  # ignored rows read as column 0
            lo, hi = torch.aminmax(clean)
            checks.append((name, lo, hi, 0, V, target,
                           lambda t=target, V=V: ~(((t >= 0) & (t < V)) | (t == ignore_index)),
                           f"must lie in [0, {V}) or equal ignore_index={ignore_index}"))
    if feedback is not None and feedback.dtype != torch.bool and feedback.numel():
        bad_feedback = lambda f=feedback: (f != 0) & (f != 1)  # noqa: E731
        if feedback.is_floating_point():  # 0.5 lies between the bounds: test each value
            lo, hi = torch.aminmax(bad_feedback().to(torch.uint8))
            bounds = (0, 1)
        else:
            lo, hi = torch.aminmax(feedback)
            bounds = (0, 2)
        checks.append(("feedback", lo, hi, *bounds, feedback, bad_feedback,
                       "must be 0/False (negative) or 1/True (positive)"))
    if uniform is not None and uniform.numel():
        lo, hi = torch.aminmax(uniform)
        checks.append(("uniform", lo, hi, 0.0, 1.0, uniform, lambda u=uniform: ~((u >= 0) & (u < 1)),
                       "must lie in [0, 1)"))
    if not checks:
        return
    device = checks[0][5].device
    on_host = device.type == "cpu" or mode == "strict"
    if torch.compiler.is_compiling() or (not on_host) or (device.type == "cuda"
                                                         and torch.cuda.is_current_stream_capturing()):
        for name, lo, hi, low, high, _, _, rule in checks:
            torch._assert_async((lo >= low) & (hi < high), f"{name} {rule}")
        return
    if device.type == "cpu":
        bounds = [(lo.item(), hi.item()) for _, lo, hi, *_ in checks]
    else:  # strict mode on a GPU: one read of all the bounds, the one wait
        bounds = torch.stack([torch.stack([lo.double(), hi.double()]) for _, lo, hi, *_ in checks]).tolist()
    for (name, _, _, low, high, source, bad_mask, rule), (lo, hi) in zip(checks, bounds):
        if not (lo >= low and hi < high):
            raise _first_bad(name, bad_mask(), source, rule)
