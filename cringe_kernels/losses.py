"""The public losses: binary Cringe and Pairwise Cringe (docs/spec.md sections 2, 3).

Each loss validates its inputs, gets the per-row statistics from a backend
(the reference, or a kernel through :mod:`cringe_kernels.autograd`) and then
applies a few lines of differentiable algebra on ``[N]`` vectors. The algebra
is the same for every backend, so a kernel only has to get the statistics and
their backward right.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from . import autograd, backends, validate
from .backends.base import stats_dtype
from .primitive import row_stats, row_view


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


def _resolve_single_pass(requested, backend, logits: torch.Tensor, inplace_backward: bool) -> bool:
    """Whether the forward writes the gradient (the single pass).

    ``None`` (auto) and ``True`` take it where the backend has a single-pass
    kernel and autograd will ask for the logits' gradient; never otherwise,
    so no ``[N, V]`` gradient is written under ``no_grad`` or for logits
    that do not require it. It is the default because it reads the logits
    once less: its kernels beat the two passes' at every row length
    measured on an H100, and so did the whole loss at V = 128256; whole-loss
    comparisons at shorter rows are owed (docs/performance.md).
    """
    if requested is False or inplace_backward or backend == backends.REFERENCE or not backend.single_pass:
        return False
    return logits.requires_grad and torch.is_grad_enabled()


def _check_single_pass(single_pass, grad_scale, inplace_backward: bool) -> None:
    if single_pass is not None:
        validate.check_bool("single_pass", single_pass)
    if single_pass and inplace_backward:
        raise ValueError("single_pass=True and inplace_backward=True exclude each other: the single pass keeps the "
                         "logits to complete the gradient exactly")
    if isinstance(grad_scale, torch.Tensor):
        if grad_scale.numel() != 1 or not grad_scale.is_floating_point():
            raise ValueError(f"grad_scale must be a float or a floating scalar tensor, got shape "
                             f"{tuple(grad_scale.shape)} and dtype {grad_scale.dtype}")
    else:
        validate.check_float("grad_scale", grad_scale)


def inverse_denominator(valid: tuple, num_items_in_batch, reduction: str, dtype: torch.dtype):
    """``1 / denominator`` of ``"mean"`` (None for the other reductions):
    ``num_items_in_batch`` if given, else the count of rows that the masks in
    ``valid`` mark, never 0. A Python number stays one (no host-to-device
    copy)."""
    if reduction != "mean":
        return None
    if num_items_in_batch is None:
        count = valid[0].sum(dtype=dtype)
        for mask in valid[1:]:
            count = count + mask.sum(dtype=dtype)
        return count.clamp_(min=1).reciprocal_()
    if isinstance(num_items_in_batch, torch.Tensor):
        return num_items_in_batch.to(dtype).reciprocal()
    return 1.0 / num_items_in_batch


def reduce_rows(values: torch.Tensor, inv_denominator, reduction: str, shape) -> torch.Tensor:
    """docs/spec.md reductions; ``inv_denominator`` from :func:`inverse_denominator`.
    ``"mean"`` multiplies by it, as the fused losses' backward does, so the
    single pass's guess of ``d loss / d lse`` holds bit for bit."""
    if reduction == "none":
        return values.reshape(shape)
    total = values.sum()
    return total if inv_denominator is None else total * inv_denominator


def draws(uniform, target: torch.Tensor, target_name: str, generator, device) -> torch.Tensor:
    """The ``[N]`` float32 draws: ``uniform`` (checked) or fresh ones."""
    if uniform is None:
        return torch.rand(target.numel(), generator=generator, device=device)
    validate.check_uniform(uniform, target, target_name)
    uniform = uniform.reshape(-1)
    return (uniform if uniform.dtype == torch.float32 else uniform.float()).contiguous()


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
    single_pass: Optional[bool] = None,
    grad_scale: Union[float, torch.Tensor] = 1.0,
) -> Union[torch.Tensor, CringeOutput]:
    """Binary Cringe loss (docs/spec.md section 2).

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
        Return a :class:`CringeOutput` (every part differentiable) instead
        of the loss.
    inplace_backward : bool
        Kernel backends write the gradient over ``logits`` (no ``[N, V]``
        allocation); the caller must not use the logits after backward.
        Logits whose elements overlap (an ``expand``) are rejected.
    single_pass : bool, optional
        Write the logits' gradient during the forward (one read and one
        write of the logits in all instead of two reads and one write); the
        backward then adds two columns a row. None (default): wherever the
        backend has a single-pass kernel and a gradient will be needed.
        Exact for any upstream gradient; rows whose upstream gradient is not
        ``grad_scale`` are rewritten in full, at more than the two passes'
        cost (warned once). Not with ``inplace_backward``.
    grad_scale : float or scalar Tensor
        The gradient that will reach this loss from above: 1 for
        ``loss.backward()``; a trainer that scales the loss (``1 /
        accumulation steps``, a loss scale) passes that factor.

    Returns
    -------
    Tensor or CringeOutput
        float32 (float64 for float64 logits).
    """
    V = validate.check_logits("logits", logits)
    validate.check_target("target", target, "logits", logits)
    validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction)
    for name, flag in (("detach_positives", detach_positives), ("ct_on_positives", ct_on_positives),
                       ("return_details", return_details), ("inplace_backward", inplace_backward)):
        validate.check_bool(name, flag)
    _check_single_pass(single_pass, grad_scale, inplace_backward)
    validate.check_generator(generator, logits.device)
    validate.check_num_items(num_items_in_batch, logits.device)
    chosen_backend = backends.resolve(backend, logits, k)
    if inplace_backward:
        validate.check_no_overlap("logits", logits)

    feedback = validate.check_feedback(feedback, target)
    uniform_rows = draws(uniform, target, "target", generator, logits.device)
    target_rows = target.reshape(-1)
    valid = target_rows != ignore_index
    validate.check_values([("target", target_rows, V, valid)], ignore_index,
                          feedback=feedback,
                          uniform=None if uniform is None else uniform_rows)
    positive = valid & (feedback.reshape(-1) if feedback.dtype == torch.bool else feedback.reshape(-1).bool())
    dtype = stats_dtype(logits.dtype)
    inv_denominator = inverse_denominator((valid,), num_items_in_batch, reduction, dtype)
    use_single_pass = _resolve_single_pass(single_pass, chosen_backend, logits, inplace_backward)

    if not return_details and chosen_backend != backends.REFERENCE:
        opts = autograd.LossOptions(k, ignore_index, float(alpha), reduction, chosen_backend, inplace_backward,
                                    use_single_pass, grad_scale)
        if target_rows.dtype != torch.int64:
            target_rows = target_rows.long()
        loss = autograd.BinaryCringeFunction.apply(row_view(logits), target_rows.contiguous(), uniform_rows, valid,
                                                   positive, inv_denominator, opts, detach_positives,
                                                   ct_on_positives)
        return loss.reshape(target.shape) if reduction == "none" else loss

    lse_weight = None
    if use_single_pass:
        positive_f = positive.to(dtype)
        lse_weight = positive_f * autograd.row_weight(grad_scale, inv_denominator, positive_f)
    stats = row_stats(logits, target, uniform_rows, k, ignore_index, chosen_backend, inplace_backward, lse_weight)
    return binary_algebra(stats, valid, positive, inv_denominator, alpha=alpha, reduction=reduction,
                          detach_positives=detach_positives, ct_on_positives=ct_on_positives, shape=target.shape,
                          return_details=return_details)


def binary_algebra(stats, valid, positive, inv_denominator, *, alpha, reduction, detach_positives, ct_on_positives,
                   shape, return_details, logp_lse=None):
    """The binary loss as differentiable PyTorch on row statistics.

    Parameters
    ----------
    stats : RowStats
        ``[N]`` each, differentiable.
    valid, positive : Tensor, ``[N]`` bool
    inv_denominator
        From :func:`inverse_denominator`.
    alpha, reduction, detach_positives, ct_on_positives, return_details
        As in :func:`cringe_loss`.
    shape : torch.Size
        The target's shape.
    logp_lse : Tensor, ``[N]``, optional
        The ``lse`` the details' ``logp`` reads (default ``stats.lse``).

    Returns
    -------
    Tensor or CringeOutput
    """
    lse, t, sampled_logit = stats.lse, stats.target_logit, stats.sample_logit
    if detach_positives:
        sampled_logit = sampled_logit.detach()
    negative = valid ^ positive
    ce_rows = torch.where(positive, lse - t, 0.0)
    cr_rows = torch.where(negative, F.softplus(t - sampled_logit), 0.0)
    if ct_on_positives:
        cr_rows = cr_rows + torch.where(positive, F.softplus(sampled_logit - t), 0.0)
    ce = reduce_rows(ce_rows, inv_denominator, reduction, shape)
    cr = reduce_rows(cr_rows, inv_denominator, reduction, shape)
    loss = ce + (cr if alpha == 1 else alpha * cr)
    if not return_details:
        return loss
    sampled = valid if ct_on_positives else negative
    sample_index = torch.where(sampled, stats.sample_index, -1).reshape(shape)
    logp = torch.where(valid, t - (lse if logp_lse is None else logp_lse), 0.0).reshape(shape)
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
    single_pass: Optional[bool] = None,
    grad_scale: Union[float, torch.Tensor] = 1.0,
) -> Union[torch.Tensor, PairwiseCringeOutput]:
    """Pairwise Cringe loss (docs/spec.md section 3).

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
    return_details, inplace_backward, grad_scale
        As in :func:`cringe_loss`; only rejected rows are sampled and
        ``uniform`` has the rejected targets' shape.
    single_pass : bool, optional
        As in :func:`cringe_loss`; never with ``gate_grad=True`` (through the
        gate, ``d loss / d lse`` depends on every row's statistics).
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
                       ("return_details", return_details), ("inplace_backward", inplace_backward)):
        validate.check_bool(name, flag)
    _check_single_pass(single_pass, grad_scale, inplace_backward)
    if single_pass and gate_grad:
        raise ValueError("single_pass=True cannot be combined with gate_grad=True: through the gate, d loss / d lse "
                         "depends on the statistics themselves")
    device = chosen_logits.device
    validate.check_generator(generator, device)
    validate.check_num_items(num_items_in_batch, device)
    chosen_backend = backends.resolve(backend, chosen_logits, k)
    if inplace_backward:
        validate.check_no_overlap("chosen_logits", chosen_logits)
        validate.check_no_overlap("rejected_logits", rejected_logits)
    uniform_rows = draws(uniform, rejected_target, "rejected_target", generator, device)

    B = chosen_logits.shape[0]
    valid_w = (chosen_target != ignore_index).reshape(B, -1)
    valid_l = (rejected_target != ignore_index).reshape(B, -1)
    validate.check_values([("chosen_target", chosen_target.reshape(-1), V, valid_w.reshape(-1)),
                           ("rejected_target", rejected_target.reshape(-1), V, valid_l.reshape(-1))],
                          ignore_index, uniform=None if uniform is None else uniform_rows)
    # In the wider of the two statistics' dtypes: converted to either, it is
    # the value a multiplication in that dtype would use.
    dtype = torch.promote_types(stats_dtype(chosen_logits.dtype), stats_dtype(rejected_logits.dtype))
    inv_denominator = inverse_denominator((valid_w, valid_l), num_items_in_batch, reduction, dtype)
    use_single_pass = not gate_grad and _resolve_single_pass(
        single_pass, chosen_backend, chosen_logits if chosen_logits.requires_grad else rejected_logits,
        inplace_backward)

    if not return_details and chosen_backend != backends.REFERENCE:
        opts = autograd.LossOptions(k, ignore_index, float(alpha), reduction, chosen_backend, inplace_backward,
                                    use_single_pass, grad_scale)
        targets = [t.reshape(-1) if t.dtype == torch.int64 else t.reshape(-1).long()
                   for t in (chosen_target, rejected_target)]
        loss, *_ = autograd.PairwiseCringeFunction.apply(
            row_view(chosen_logits), targets[0].contiguous(), row_view(rejected_logits), targets[1].contiguous(),
            uniform_rows, valid_w, valid_l, inv_denominator, opts, float(margin), float(temperature), gate_grad,
            length_normalize)
        return loss

    weight_w = weight_l = None
    if use_single_pass:
        # With the gate constant, lse enters only the chosen rows' CE.
        valid_f = valid_w.reshape(-1).to(stats_dtype(chosen_logits.dtype))
        weight_w = valid_f * autograd.row_weight(grad_scale, inv_denominator, valid_f)
        weight_l = torch.zeros(valid_l.numel(), dtype=stats_dtype(rejected_logits.dtype), device=device)
    # Chosen rows need no sample (k=0 skips the top-k in the kernels).
    win = row_stats(chosen_logits, chosen_target, None, 0, ignore_index, chosen_backend, inplace_backward, weight_w)
    lose = row_stats(rejected_logits, rejected_target, uniform_rows, k, ignore_index, chosen_backend,
                     inplace_backward, weight_l)

    return pairwise_algebra(win, lose, valid_w, valid_l, inv_denominator, alpha=alpha, margin=margin,
                            temperature=temperature, gate_grad=gate_grad, length_normalize=length_normalize,
                            reduction=reduction, rejected_shape=rejected_target.shape, return_details=return_details)


def pairwise_algebra(win, lose, valid_w, valid_l, inv_denominator, *, alpha, margin, temperature, gate_grad,
                     length_normalize, reduction, rejected_shape, return_details, logp_lse=(None, None)):
    """The pairwise loss as differentiable PyTorch on row statistics.

    Parameters
    ----------
    win, lose : RowStats
        The chosen and rejected rows' statistics, ``[B * Tw]`` and ``[B * Tl]``.
    valid_w, valid_l : Tensor, ``[B, Tw]`` and ``[B, Tl]`` bool
    inv_denominator
        From :func:`inverse_denominator`.
    alpha, margin, temperature, gate_grad, length_normalize, reduction, return_details
        As in :func:`pairwise_cringe_loss`.
    rejected_shape : torch.Size
    logp_lse : pair of Tensor or None
        The ``lse`` the log-likelihoods (the gate's input) read, per side
        (default the statistics' own).

    Returns
    -------
    Tensor or PairwiseCringeOutput
    """
    B = valid_w.shape[0]
    lse_w = win.lse if logp_lse[0] is None else logp_lse[0]
    lse_l = lose.lse if logp_lse[1] is None else logp_lse[1]
    # Ignored rows hold lse = t = 0, so their log-probability is already 0.
    logp_w = (win.target_logit - lse_w).reshape(B, -1).sum(dim=1)
    logp_l = (lose.target_logit - lse_l).reshape(B, -1).sum(dim=1)
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

    ce = reduce_rows(ce_b, inv_denominator, reduction, (B,))
    cr = reduce_rows(cr_b, inv_denominator, reduction, (B,))
    loss = ce + (cr if alpha == 1 else alpha * cr)
    if not return_details:
        return loss
    sample_index = lose.sample_index.reshape(rejected_shape)
    return PairwiseCringeOutput(loss, ce, cr, sample_index, gate, gap, logp_w, logp_l)


class CringeLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`cringe_loss`; holds the hyperparameters.

    ``forward(logits, target, feedback, *, num_items_in_batch=None,
    generator=None, uniform=None, return_details=False, grad_scale=1.0)``.
    """

    def __init__(self, *, k: int = 5, alpha: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 detach_positives: bool = False, ct_on_positives: bool = False, backend: str = "auto",
                 inplace_backward: bool = False, single_pass: Optional[bool] = None):
        super().__init__()
        validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction)
        self.options = dict(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                            detach_positives=detach_positives, ct_on_positives=ct_on_positives,
                            backend=backend, inplace_backward=inplace_backward, single_pass=single_pass)

    def forward(self, logits, target, feedback, *, num_items_in_batch=None, generator=None, uniform=None,
                return_details: bool = False, grad_scale=1.0):
        return cringe_loss(logits, target, feedback, num_items_in_batch=num_items_in_batch, generator=generator,
                           uniform=uniform, return_details=return_details, grad_scale=grad_scale, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class PairwiseCringeLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`pairwise_cringe_loss`; holds the hyperparameters.

    ``forward(chosen_logits, chosen_target, rejected_logits, rejected_target,
    *, num_items_in_batch=None, generator=None, uniform=None,
    return_details=False, grad_scale=1.0)``.
    """

    def __init__(self, *, k: int = 5, alpha: float = 1.0, margin: float = 0.0, temperature: float = 1.0,
                 gate_grad: bool = False, length_normalize: bool = False, ignore_index: int = -100,
                 reduction: str = "mean", backend: str = "auto", inplace_backward: bool = False,
                 single_pass: Optional[bool] = None):
        super().__init__()
        validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                                       margin=margin, temperature=temperature)
        self.options = dict(k=k, alpha=alpha, margin=margin, temperature=temperature, gate_grad=gate_grad,
                            length_normalize=length_normalize, ignore_index=ignore_index, reduction=reduction,
                            backend=backend, inplace_backward=inplace_backward, single_pass=single_pass)

    def forward(self, chosen_logits, chosen_target, rejected_logits, rejected_target, *, num_items_in_batch=None,
                generator=None, uniform=None, return_details: bool = False, grad_scale=1.0):
        return pairwise_cringe_loss(chosen_logits, chosen_target, rejected_logits, rejected_target,
                                    num_items_in_batch=num_items_in_batch, generator=generator, uniform=uniform,
                                    return_details=return_details, grad_scale=grad_scale, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
