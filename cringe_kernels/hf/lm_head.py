"""The hidden-state path: the loss from the decoder's last hidden state and the LM head.

A causal LM's logits are ``softcap(logit_scale * (hidden @ weight.T +
bias))``. :func:`~cringe_kernels.linear.linear_cringe_loss` takes those
parts and never holds the ``[B, T, V]`` logits or their gradient; the
trainers use it when :func:`head_of` finds the parts and a one-time check
shows they rebuild the model's own logits. Otherwise they compute the loss
from the logits and log why, once.

The model is called through its wrapper (DDP...) with
``logits_to_keep=1`` (one logit row per sequence) and
``output_hidden_states=True``; its last hidden state is what the LM head reads.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple, Optional, Tuple

import torch


class LMHead(NamedTuple):
    """The parts of a model's logits: ``softcap(logit_scale * (hidden @ weight.T + bias))``."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    logit_softcap: Optional[float]
    logit_scale: Optional[float]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits these parts make from ``hidden`` (``[..., D]``), as the model does."""
        z = torch.nn.functional.linear(hidden, self.weight, self.bias)
        if self.logit_scale is not None:
            z = z * self.logit_scale
        if self.logit_softcap is not None:
            z = torch.tanh(z / self.logit_softcap) * self.logit_softcap
        return z


# Config entries that change the logits in ways LMHead does not model.
_UNMODELLED = ("logits_scaling", "output_multiplier_scale", "lm_head_multiplier")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module  # DDP and other wrappers
    return model


def _is_sharded(module: torch.nn.Module) -> bool:
    return any("FullyShardedDataParallel" in type(m).__name__ or type(m).__name__.startswith("FSDP")
               for m in module.modules())


def head_of(model: torch.nn.Module) -> Tuple[Optional[LMHead], str]:
    """The model's :class:`LMHead`, or ``(None, why not)``.

    Needs a forward that takes ``logits_to_keep`` (and returns
    ``hidden_states`` when asked: checked on the first batch), an output embedding that is a plain
    ``torch.nn.Linear`` (not, e.g., a LoRA layer), no FSDP sharding (the
    weight is a shard outside the forward), and no logit transform other
    than ``config.logit_scale`` and ``config.final_logit_softcapping``.
    Tied input/output embeddings are fine: the gradient reaches the shared
    weight either way.
    """
    inner = _unwrap(model)
    if _is_sharded(model):
        return None, "the model is sharded by FSDP (the LM head's weight is a shard outside the forward)"
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return None, f"{type(inner).__name__} has no output embedding (get_output_embeddings)"
    if type(head) is not torch.nn.Linear:
        return None, (f"the LM head is a {type(head).__module__}.{type(head).__name__}, not a plain torch.nn.Linear "
                      "(e.g. LoRA on lm_head)")
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if "logits_to_keep" not in params:
        return None, f"{type(inner).__name__}.forward takes no logits_to_keep"
    config = getattr(inner, "config", None)
    for name in _UNMODELLED:
        if getattr(config, name, None) not in (None, 1, 1.0):
            return None, f"config.{name}={getattr(config, name)!r} is a logit transform the hidden-state path lacks"
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    return LMHead(head.weight, head.bias, float(softcap) if softcap else None,
                  float(scale) if scale not in (None, 1, 1.0) else None), ""


def rebuilds_logits(head: LMHead, hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether ``head`` makes ``logits`` (``[B, 1, V]``) from ``hidden``'s last position, within rounding."""
    with torch.no_grad():
        ours = head.logits(hidden[:, -logits.shape[1]:]).float()
        theirs = logits.float()
        eps = max(torch.finfo(logits.dtype).eps, torch.finfo(hidden.dtype).eps)
        tol = max(64 * eps, 1e-4) * (1.0 + theirs.abs().max().item())
        return ours.shape == theirs.shape and bool((ours - theirs).abs().max() <= tol)
