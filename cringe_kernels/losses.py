"""The public losses: binary Cringe and Pairwise Cringe (SPEC.md sections 2, 3).

Each loss validates its inputs, gets the per-row statistics from a backend
(the reference, or a kernel through :mod:`cringe_kernels.autograd`) and then
applies a few lines of differentiable algebra on ``[N]`` vectors. The algebra
is the same for every backend, so a kernel only has to get the statistics and
their backward right.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from . import autograd, backends, reference, validate
from .backends.base import RowStats, stats_dtype


class CringeOutput(NamedTuple):
    """Result of :func:`cringe_loss` with ``return_details=True``.

    Attributes
    ----------
    loss : Tensor
        ``ce_loss + alpha * cringe_loss``; a scalar, or the target's shape for
        ``reduction="none"``. float32 (float64 for float64 logits).
    ce_loss : Tensor
        Cross-entropy part, same reduction and denominator.
    cringe_loss : Tensor
        Contrastive part before ``alpha``, same reduction and denominator.
    sample_index : Tensor
        int64, the target's shape: the sampled column per row, -1 where the
        row was not sampled (ignored rows, and positives unless
        ``ct_on_positives``).
    logp : Tensor
        The target's shape: ``log p(target)`` per row (``t - lse``), 0 on
        ignored rows, unreduced and differentiable; free, since the loss
        computes it anyway (trainers log it without a second pass).
    """

    loss: torch.Tensor
    ce_loss: torch.Tensor
    cringe_loss: torch.Tensor
    sample_index: torch.Tensor
    logp: torch.Tensor


class PairwiseCringeOutput(NamedTuple):
    """Result of :func:`pairwise_cringe_loss` with ``return_details=True``.

    ``loss``, ``ce_loss`` and ``cringe_loss`` (which includes the gate, so
    ``loss = ce_loss + alpha * cringe_loss``) follow the reduction;
    ``sample_index`` has the rejected targets' shape; ``gate``, ``margin``
    (``M = logp_chosen - logp_rejected``), ``logp_chosen`` and
    ``logp_rejected`` have shape ``[B]``.
    """

    loss: torch.Tensor
    ce_loss: torch.Tensor
    cringe_loss: torch.Tensor
    sample_index: torch.Tensor
    gate: torch.Tensor
    margin: torch.Tensor
    logp_chosen: torch.Tensor
    logp_rejected: torch.Tensor


def _row_view(logits: torch.Tensor) -> torch.Tensor:
    """``logits [..., V]`` as a ``[B, T, V]`` view with last stride 1.

    Two leading dims with free strides cover HF's ``logits[:, :-1]`` (rows
    that cannot be flattened into one stride) without a copy; anything else
    that cannot be viewed so is copied once.
    """
    V = logits.shape[-1]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    lead = logits.shape[:-1]
    splits = [0] + list(range(1, len(lead)))
    for p in splits:
        try:
            return logits.view(math.prod(lead[:p]), math.prod(lead[p:]), V)
        except RuntimeError:
            continue
    return logits.contiguous().view(1, -1, V)


def _row_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    uniform: Optional[torch.Tensor],
    k: int,
    ignore_index: int,
    backend,
    inplace_backward: bool,
    lse_weight: Optional[torch.Tensor] = None,
) -> RowStats:
    """Flattened row statistics from the chosen backend (``lse_weight``: see :func:`_lse_weight`)."""
    target = target.reshape(-1).long()
    if uniform is not None:
        uniform = uniform.reshape(-1).to(torch.float32).contiguous()
    if backend == backends.REFERENCE:
        return reference.row_stats(logits, target, uniform, k, ignore_index)
    return autograd.row_stats(_row_view(logits), target.contiguous(), uniform, k, ignore_index, backend,
                              inplace_backward, lse_weight)


def _binary_masks(target: torch.Tensor, feedback: torch.Tensor, ignore_index: int, num_items_in_batch,
                  reduction: str, dtype: torch.dtype):
    """``valid`` and ``positive`` rows (``[N]`` bool: not ignored; and with
    feedback 1) of :func:`cringe_loss`, and the ``"mean"`` denominator
    (:func:`_mean_denominator`, from the count of ``valid``). The negative
    rows are ``valid ^ positive``."""
    valid = target.reshape(-1) != ignore_index
    denominator = _mean_denominator(valid.sum(), num_items_in_batch, reduction, dtype)
    return valid, valid & _as_dtype(feedback.reshape(-1), torch.bool), denominator


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatch when it is already so (host time)."""
    return t if t.dtype == dtype else t.to(dtype)


def _lse_weight(rows: torch.Tensor, denominator: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``d loss / d lse`` per row for an upstream gradient of 1.

    Only cross-entropy involves ``lse``, on ``rows`` (bool, ``[N]``), with the
    weight of the reduction: ``1 / denominator`` for ``"mean"`` (None
    otherwise), by the same division the loss's gradient makes
    (:func:`_reduce`), so that autograd's ``grad_lse`` equals it bit for bit
    and the single-pass backward only touches two columns a row. Two or
    three small ops: they run before the kernel's launch, host time the
    device waits for.
    """
    weight = rows.to(dtype)
    return weight if denominator is None else weight.div_(_as_dtype(denominator, dtype))


def _draws(uniform, target: torch.Tensor, target_name: str, generator, device) -> torch.Tensor:
    if uniform is None:
        return torch.rand(target.shape, generator=generator, device=device)
    validate.check_uniform(uniform, target, target_name)
    return uniform


def _mean_denominator(count: torch.Tensor, num_items_in_batch, reduction: str,
                      dtype: torch.dtype) -> Optional[torch.Tensor]:
    """What ``"mean"`` divides by (None for the other reductions):
    ``num_items_in_batch`` if given, else the non-ignored row count, never 0.
    Made once a call and shared by every reduction and weight of it."""
    if reduction != "mean":
        return None
    if num_items_in_batch is not None:
        return torch.as_tensor(num_items_in_batch, device=count.device).to(dtype)
    return count.clamp(min=1).to(dtype)


def _reduce(values: torch.Tensor, denominator: Optional[torch.Tensor], reduction: str, shape) -> torch.Tensor:
    """SPEC.md reductions; ``denominator`` from :func:`_mean_denominator`."""
    if reduction == "none":
        return values.reshape(shape)
    total = values.sum()
    if reduction == "sum":
        return total
    return total / _as_dtype(denominator, total.dtype)


def cringe_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    feedback,
    *,
    k: int = 5,
    alpha: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    detach_positives: bool = False,
    ct_on_positives: bool = False,
    num_items_in_batch=None,
    generator: Optional[torch.Generator] = None,
    uniform: Optional[torch.Tensor] = None,
    backend: str = "auto",
    return_details: bool = False,
    inplace_backward: bool = False,
    grad_in_forward: bool = False,
) -> Union[torch.Tensor, CringeOutput]:
    """Binary Cringe loss (SPEC.md section 2).

    Positive rows get cross-entropy; negative rows get
    ``alpha * softplus(x_target - x_sampled)``, where ``x_sampled`` is drawn from
    the softmax over the ``k`` largest non-target logits.

    Parameters
    ----------
    logits : Tensor, ``[..., V]``, float16/bfloat16/float32/float64
        May be a strided view such as HF's ``logits[:, :-1]`` (no copy).
    target : Tensor, ``[...]``, integer
        Column per row in ``[0, V)``, or ``ignore_index``.
    feedback : Tensor, bool or 0/1, broadcastable to ``target``
        1/True marks a positive row, 0/False a negative one (per sequence
        ``[B, 1]`` or per token).
    k : int
        Candidates for the sampled contrast token (``min(k, V - 1)`` used).
    alpha : float
        Weight of the contrastive term.
    ignore_index : int
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the number of non-ignored rows (or by
        ``num_items_in_batch``); 0 when there are none.
    detach_positives : bool
        Stop the gradient into the sampled logit.
    ct_on_positives : bool
        Add ``alpha * softplus(x_sampled - x_target)`` on positive rows.
    num_items_in_batch : int or scalar Tensor, optional
        Denominator of ``"mean"`` (Hugging Face gradient accumulation).
    generator : torch.Generator, optional
        Source of the draws when ``uniform`` is None.
    uniform : Tensor, target's shape, floating in ``[0, 1)``, optional
        Explicit draws (converted to float32); the same draws give the same
        samples on every backend.
    backend : {"auto", "reference", "triton", "cuda", "cpu"}
    return_details : bool
        Return a :class:`CringeOutput` instead of the loss.
    inplace_backward : bool
        Kernel backends write the gradient over ``logits`` (no ``[N, V]``
        allocation); the caller must not use the logits after backward.
    grad_in_forward : bool
        Single pass: the kernel backends write the logits' gradient during
        the forward (one read and one write of the logits in all, instead of
        two reads and one write), for an upstream gradient of 1 on the loss
        (``loss.backward()``; ones for ``reduction="none"``); the backward
        then only adds two columns per row. Exact for any upstream gradient:
        rows whose gradient differs are rewritten in full (two-pass cost).
        The ``[N, V]`` gradient is allocated in the forward; the reference
        ignores the flag. Not with ``inplace_backward``.

    Returns
    -------
    Tensor or CringeOutput
        float32 (float64 for float64 logits).
    """
    V = validate.check_logits("logits", logits)
    validate.check_target("target", target, "logits", logits)
    validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction)
    for name, flag in (("detach_positives", detach_positives), ("ct_on_positives", ct_on_positives),
                       ("return_details", return_details), ("inplace_backward", inplace_backward),
                       ("grad_in_forward", grad_in_forward)):
        validate.check_bool(name, flag)
    if grad_in_forward and inplace_backward:
        raise ValueError("grad_in_forward and inplace_backward cannot both be True: the single pass keeps the "
                         "logits to complete the gradient exactly")
    validate.check_generator(generator, logits.device)
    validate.check_num_items(num_items_in_batch, logits.device)
    feedback = validate.check_feedback(feedback, target)
    uniform = _draws(uniform, target, "target", generator, logits.device)
    pending = validate.start_value_checks([("target", target, V)], ignore_index, feedback=feedback, uniform=uniform)
    chosen_backend = backends.resolve(backend, logits, k)

    # Only the single pass needs the row masks before the kernel; otherwise
    # they are built while it runs, off the path to its launch.
    single_pass = grad_in_forward and chosen_backend != backends.REFERENCE
    lse_weight = None
    masks = (target, feedback, ignore_index, num_items_in_batch, reduction, stats_dtype(logits.dtype))
    if single_pass:
        valid, positive, denominator = _binary_masks(*masks)
        lse_weight = _lse_weight(positive, denominator, stats_dtype(logits.dtype))
    stats = _row_stats(logits, target, uniform, k, ignore_index, chosen_backend, inplace_backward, lse_weight)
    if not single_pass:
        valid, positive, denominator = _binary_masks(*masks)
    lse, t, sampled_logit = stats.lse, stats.target_logit, stats.sample_logit
    if detach_positives:
        sampled_logit = sampled_logit.detach()

    negative = valid ^ positive
    ce_rows = torch.where(positive, lse - t, 0.0)
    cr_rows = torch.where(negative, F.softplus(t - sampled_logit), 0.0)
    if ct_on_positives:
        cr_rows = cr_rows + torch.where(positive, F.softplus(sampled_logit - t), 0.0)

    ce = _reduce(ce_rows, denominator, reduction, target.shape)
    cr = _reduce(cr_rows, denominator, reduction, target.shape)
    loss = ce + (cr if alpha == 1 else alpha * cr)  # a host op less each way for the default
    # The outcome of the value checks, now that the kernels are queued behind
    # them (every backend is memory-safe on any value).
    pending.wait()
    if not return_details:
        return loss
    sampled = valid if ct_on_positives else negative
    sample_index = torch.where(sampled, stats.sample_index, -1).reshape(target.shape)
    logp = torch.where(valid, t - lse, 0.0).reshape(target.shape)
    return CringeOutput(loss, ce, cr, sample_index, logp)


def pairwise_cringe_loss(
    chosen_logits: torch.Tensor,
    chosen_target: torch.Tensor,
    rejected_logits: torch.Tensor,
    rejected_target: torch.Tensor,
    *,
    k: int = 5,
    alpha: float = 1.0,
    margin: float = 0.0,
    temperature: float = 1.0,
    gate_grad: bool = False,
    length_normalize: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    generator: Optional[torch.Generator] = None,
    uniform: Optional[torch.Tensor] = None,
    backend: str = "auto",
    return_details: bool = False,
    inplace_backward: bool = False,
    grad_in_forward: bool = False,
) -> Union[torch.Tensor, PairwiseCringeOutput]:
    """Pairwise Cringe loss (SPEC.md section 3).

    ``L_b = CE_w[b] + alpha * g_b * CR_l[b]`` with the gate
    ``g_b = sigmoid((margin - (LP_w[b] - LP_l[b])) / temperature)``: the
    contrastive push on the rejected response fades once the chosen one is
    more likely by the margin.

    Parameters
    ----------
    chosen_logits : Tensor, ``[B, Tw, V]``, floating
    chosen_target : Tensor, ``[B, Tw]``, integer
    rejected_logits : Tensor, ``[B, Tl, V]``, floating
    rejected_target : Tensor, ``[B, Tl]``, integer
    k, alpha, ignore_index, num_items_in_batch, generator, backend,
    return_details, inplace_backward
        As in :func:`cringe_loss`; only rejected rows are sampled and
        ``uniform`` has the rejected targets' shape.
    grad_in_forward : bool
        The single pass, as in :func:`cringe_loss`. Needs ``gate_grad=False``:
        only then is ``d loss / d lse`` known before the statistics (the
        reduction weight on chosen rows, 0 on rejected ones).
    margin : float
        Log-likelihood gap beyond which the gate closes.
    temperature : float
        Softness of the gate, ``> 0``.
    gate_grad : bool
        Differentiate through the gate (default: constant in backward).
    length_normalize : bool
        Divide ``LP_w``, ``LP_l`` by each response's number of non-ignored rows.
    reduction : {"mean", "sum", "none"}
        ``"none"`` gives ``L_b`` of shape ``[B]``; ``"mean"`` divides the sum
        by the number of non-ignored chosen plus rejected rows.

    Returns
    -------
    Tensor or PairwiseCringeOutput
    """
    V = validate.check_logits("chosen_logits", chosen_logits, min_rank=3)
    validate.check_logits("rejected_logits", rejected_logits, min_rank=3)
    for name, x in (("chosen_logits", chosen_logits), ("rejected_logits", rejected_logits)):
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape [B, T, V], got {tuple(x.shape)}")
    if rejected_logits.shape[0] != chosen_logits.shape[0] or rejected_logits.shape[2] != V:
        raise ValueError(
            f"rejected_logits {tuple(rejected_logits.shape)} must match chosen_logits {tuple(chosen_logits.shape)} "
            "in the batch size B and the vocabulary size V"
        )
    validate.check_device("rejected_logits", rejected_logits, "chosen_logits", chosen_logits)
    validate.check_target("chosen_target", chosen_target, "chosen_logits", chosen_logits)
    validate.check_target("rejected_target", rejected_target, "rejected_logits", rejected_logits)
    validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                                   margin=margin, temperature=temperature)
    for name, flag in (("gate_grad", gate_grad), ("length_normalize", length_normalize),
                       ("return_details", return_details), ("inplace_backward", inplace_backward),
                       ("grad_in_forward", grad_in_forward)):
        validate.check_bool(name, flag)
    if grad_in_forward and (inplace_backward or gate_grad):
        raise ValueError("grad_in_forward cannot be combined with " + ("inplace_backward" if inplace_backward else
                         "gate_grad: through the gate, d loss / d lse depends on the statistics themselves"))
    device = chosen_logits.device
    validate.check_generator(generator, device)
    validate.check_num_items(num_items_in_batch, device)
    uniform = _draws(uniform, rejected_target, "rejected_target", generator, device)
    pending = validate.start_value_checks(
        [("chosen_target", chosen_target, V), ("rejected_target", rejected_target, V)], ignore_index, uniform=uniform)
    chosen_backend = backends.resolve(backend, chosen_logits, k)

    B = chosen_logits.shape[0]
    valid_w = (chosen_target != ignore_index).reshape(B, -1)
    valid_l = (rejected_target != ignore_index).reshape(B, -1)
    count = valid_w.sum() + valid_l.sum()
    # In the wider of the two statistics' dtypes: converted to either, it is
    # the value a division in that dtype would use.
    denominator = _mean_denominator(count, num_items_in_batch, reduction,
                                    torch.promote_types(stats_dtype(chosen_logits.dtype),
                                                        stats_dtype(rejected_logits.dtype)))
    weight_w = weight_l = None
    if grad_in_forward and chosen_backend != backends.REFERENCE:
        # With the gate constant, lse enters only the chosen rows' CE.
        weight_w = _lse_weight(valid_w.reshape(-1), denominator, stats_dtype(chosen_logits.dtype))
        weight_l = torch.zeros(valid_l.numel(), dtype=stats_dtype(rejected_logits.dtype), device=device)
    # Chosen rows need no sample (k=0 skips the top-k in the kernels).
    win = _row_stats(chosen_logits, chosen_target, None, 0, ignore_index, chosen_backend, inplace_backward, weight_w)
    lose = _row_stats(rejected_logits, rejected_target, uniform, k, ignore_index, chosen_backend, inplace_backward,
                      weight_l)

    # Ignored rows hold lse = t = 0, so their log-probability is already 0.
    logp_w = (win.target_logit - win.lse).reshape(B, -1).sum(dim=1)
    logp_l = (lose.target_logit - lose.lse).reshape(B, -1).sum(dim=1)
    if length_normalize:
        logp_w = logp_w / valid_w.sum(dim=1).clamp(min=1)
        logp_l = logp_l / valid_l.sum(dim=1).clamp(min=1)
    gap = logp_w - logp_l
    gate = torch.sigmoid((margin - gap) / temperature)
    if not gate_grad:
        gate = gate.detach()

    ce_b = torch.where(valid_w, (win.lse - win.target_logit).reshape(B, -1), 0.0).sum(dim=1)
    contrast = F.softplus(lose.target_logit - lose.sample_logit).reshape(B, -1)
    cr_b = gate * torch.where(valid_l, contrast, 0.0).sum(dim=1)

    ce = _reduce(ce_b, denominator, reduction, (B,))
    cr = _reduce(cr_b, denominator, reduction, (B,))
    loss = ce + (cr if alpha == 1 else alpha * cr)  # a host op less each way for the default
    pending.wait()
    if not return_details:
        return loss
    sample_index = lose.sample_index.reshape(rejected_target.shape)
    return PairwiseCringeOutput(loss, ce, cr, sample_index, gate, gap, logp_w, logp_l)


class CringeLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`cringe_loss`; holds the hyperparameters.

    ``forward(logits, target, feedback, *, num_items_in_batch=None,
    generator=None, uniform=None, return_details=False)``.
    """

    def __init__(self, *, k: int = 5, alpha: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 detach_positives: bool = False, ct_on_positives: bool = False, backend: str = "auto",
                 inplace_backward: bool = False, grad_in_forward: bool = False):
        super().__init__()
        validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction)
        self.options = dict(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                            detach_positives=detach_positives, ct_on_positives=ct_on_positives,
                            backend=backend, inplace_backward=inplace_backward, grad_in_forward=grad_in_forward)

    def forward(self, logits, target, feedback, *, num_items_in_batch=None, generator=None, uniform=None,
                return_details: bool = False):
        return cringe_loss(logits, target, feedback, num_items_in_batch=num_items_in_batch, generator=generator,
                           uniform=uniform, return_details=return_details, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class PairwiseCringeLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`pairwise_cringe_loss`; holds the hyperparameters.

    ``forward(chosen_logits, chosen_target, rejected_logits, rejected_target,
    *, num_items_in_batch=None, generator=None, uniform=None,
    return_details=False)``.
    """

    def __init__(self, *, k: int = 5, alpha: float = 1.0, margin: float = 0.0, temperature: float = 1.0,
                 gate_grad: bool = False, length_normalize: bool = False, ignore_index: int = -100,
                 reduction: str = "mean", backend: str = "auto", inplace_backward: bool = False,
                 grad_in_forward: bool = False):
        super().__init__()
        validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                                       margin=margin, temperature=temperature)
        self.options = dict(k=k, alpha=alpha, margin=margin, temperature=temperature, gate_grad=gate_grad,
                            length_normalize=length_normalize, ignore_index=ignore_index, reduction=reduction,
                            backend=backend, inplace_backward=inplace_backward, grad_in_forward=grad_in_forward)

    def forward(self, chosen_logits, chosen_target, rejected_logits, rejected_target, *, num_items_in_batch=None,
                generator=None, uniform=None, return_details: bool = False):
        return pairwise_cringe_loss(chosen_logits, chosen_target, rejected_logits, rejected_target,
                                    num_items_in_batch=num_items_in_batch, generator=generator, uniform=uniform,
                                    return_details=return_details, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
