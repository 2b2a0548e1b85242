"""The ``torch.autograd.Function`` objects over the row-statistics primitive.

Two kinds:

* :class:`RowStatsFunction` (and :class:`RowStatsSinglePassFunction`)
  return the differentiable per-row statistics; any loss written as
  ordinary PyTorch on them gets its gradient from autograd. The losses use
  them when details are asked for (:mod:`cringe_kernels.losses`), and
  :func:`cringe_kernels.token_logps` uses them.
* :class:`BinaryCringeFunction` and :class:`PairwiseCringeFunction` are the
  whole loss in one node: the forward runs the kernel and the loss algebra
  on ``[N]`` vectors, and keeps the per-row derivatives of the loss with
  respect to ``lse``, the target logit and the sampled logit, which are
  closed-form (docs/design.md section 1); the backward scales them by the
  upstream gradient and runs the backward kernel. No autograd graph over
  the algebra: a loss call records one node instead of about ten, which is
  most of the host time of a small call.

The single pass: where a gradient will be asked for and the backend has a
single-pass kernel, the forward also writes the logits' gradient for the
expected ``d loss / d lse`` (``lse_weight``: the CE rows' reduction weight
times ``grad_scale``, the upstream gradient the caller announces); the
backward then completes it on two columns a row, and rewrites in full only
the rows whose actual ``d loss / d lse`` differs (exact either way; a miss
warns once, since it costs the two-pass traffic and more).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backends.base import RowStats, RowStatsBackend

Tensor = torch.Tensor


def _zeros_for_none(grads, like: Tensor):
    """Autograd passes None for an output that did not reach the loss."""
    return tuple(torch.zeros_like(like) if g is None else g.contiguous() for g in grads)


class RowStatsFunction(torch.autograd.Function):
    """Differentiable row statistics; use :func:`row_stats` rather than ``apply``."""

    @staticmethod
    def forward(ctx, logits, target, uniform, k, ignore_index, backend, inplace_backward):
        stats = backend.forward(logits, target, uniform, k, ignore_index)
        ctx.mark_non_differentiable(stats.sample_index)
        ctx.save_for_backward(logits, target, stats.sample_index, stats.lse)
        ctx.backend = backend
        ctx.ignore_index = ignore_index
        ctx.inplace_backward = inplace_backward
        return tuple(stats)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse, grad_target, grad_sample, _grad_index):
        logits, target, sample_index, lse = ctx.saved_tensors
        grad_lse, grad_target, grad_sample = _zeros_for_none((grad_lse, grad_target, grad_sample), lse)
        grad_logits = ctx.backend.backward(
            logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ctx.ignore_index, ctx.inplace_backward
        )
        return grad_logits, None, None, None, None, None, None


class RowStatsSinglePassFunction(torch.autograd.Function):
    """:class:`RowStatsFunction` by the single pass, for a guess of
    ``d loss / d lse`` (``lse_weight``). Use :func:`row_stats`."""

    @staticmethod
    def forward(ctx, logits, target, uniform, k, ignore_index, backend, lse_weight):
        stats, grad = backend.forward_with_grad(logits, target, uniform, k, ignore_index, lse_weight)
        ctx.mark_non_differentiable(stats.sample_index)
        ctx.save_for_backward(logits, target, stats.sample_index, stats.lse, lse_weight)
        ctx.backend = backend
        ctx.ignore_index = ignore_index
        ctx.grad = grad  # neither input nor output: kept on ctx, handed out once
        return tuple(stats)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse, grad_target, grad_sample, _grad_index):
        logits, target, sample_index, lse, lse_weight = ctx.saved_tensors
        grad_lse, grad_target, grad_sample = _zeros_for_none((grad_lse, grad_target, grad_sample), lse)
        # A second backward (retain_graph) must not write into the tensor the
        # first one returned: it gets the two-pass gradient instead.
        grad, ctx.grad = ctx.grad, None
        grad_logits = ctx.backend.backward_with_grad(
            grad, logits, target, sample_index, lse, lse_weight, grad_lse, grad_target, grad_sample, ctx.ignore_index
        )
        return grad_logits, None, None, None, None, None, None


def row_stats(
    logits: Tensor,
    target: Tensor,
    uniform: Optional[Tensor],
    k: int,
    ignore_index: int,
    backend: RowStatsBackend,
    inplace_backward: bool = False,
    lse_weight: Optional[Tensor] = None,
) -> RowStats:
    """Differentiable row statistics computed by a kernel backend.

    Parameters
    ----------
    logits : Tensor, ``[B, T, V]``, last stride 1
    target : Tensor, ``[B * T]``, int64, contiguous
    uniform : Tensor, ``[B * T]``, float32, contiguous, or None when ``k == 0``
    k : int
        Candidates; 0 disables sampling.
    ignore_index : int
    backend : RowStatsBackend
    inplace_backward : bool
        Write the gradient over ``logits`` (the caller must not reuse them).
    lse_weight : Tensor, ``[B * T]``, optional
        The expected ``d loss / d lse``: the single pass. Not with
        ``inplace_backward``.

    Returns
    -------
    RowStats
        See :mod:`cringe_kernels.backends.base`.
    """
    if lse_weight is not None:
        return RowStats(*RowStatsSinglePassFunction.apply(logits, target, uniform, k, ignore_index, backend,
                                                          lse_weight))
    return RowStats(*RowStatsFunction.apply(logits, target, uniform, k, ignore_index, backend, inplace_backward))


# -- the fused losses ---------------------------------------------------------


class LossOptions(NamedTuple):
    """What a fused loss needs besides tensors (constants for ``torch.compile``).

    ``single_pass``: write the gradient in the forward; ``grad_scale``: the
    upstream gradient it assumes (a float or a 0-dim tensor); ``reduction``
    and ``alpha`` as in the losses.
    """

    k: int
    ignore_index: int
    alpha: float
    reduction: str
    backend: RowStatsBackend
    inplace_backward: bool
    single_pass: bool
    grad_scale: Union[float, Tensor]


def row_weight(upstream: Union[float, Tensor], inv_denominator, like: Tensor) -> Tensor:
    """``d loss / d row`` of the reduction for an upstream gradient: ``upstream
    / denominator`` for ``"mean"`` (``inv_denominator`` given), else ``upstream``.

    The single pass guesses with this same function, the backward computes
    with it, so the guess and the value are equal bit for bit when the
    upstream gradient is the announced one.
    """
    if not isinstance(upstream, Tensor):
        upstream = like.new_full((), upstream)
    return upstream if inv_denominator is None else upstream * inv_denominator


class _SinglePassMisses:
    """Warns once when a backward's upstream gradient differs from the
    ``grad_scale`` the single pass assumed.

    On CPU the comparison is read at once; on a GPU its flag is copied to
    pinned memory without a wait and read by a later call, once the device
    has reached it, so the check never holds the host back. Compiled steps
    and captured CUDA graphs are not checked.
    """

    def __init__(self):
        self.warned = False
        self.pending = []

    def note(self, upstream: Tensor, grad_scale) -> None:
        # A compiled step or a captured CUDA graph has no host flag to read.
        if self.warned or torch.compiler.is_compiling() or (
                upstream.is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        miss = (upstream != grad_scale).any()
        if miss.device.type == "cpu":
            self._report(bool(miss))
            return
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(miss, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))
        while self.pending and self.pending[0][1].query():
            self._report(bool(self.pending.pop(0)[0]))

    def _report(self, missed: bool) -> None:
        if missed and not self.warned:
            self.warned = True
            self.pending.clear()
            warnings.warn(
                "cringe_kernels: the single pass wrote the gradient for an upstream gradient of grad_scale, but the "
                "backward got another one, so every row was rewritten in full (correct, but slower than two passes). "
                "Pass the scale your trainer applies to the loss (loss scaling, 1 / accumulation steps) as "
                "grad_scale=, or single_pass=False.", RuntimeWarning, stacklevel=3)


single_pass_misses = _SinglePassMisses()


def _logits_grad(opts: LossOptions, grad, logits, target, sample_index, lse, lse_weight, g_lse, g_t, g_s,
                 upstream) -> Tensor:
    """The backward kernel, or the single pass's completion of ``grad`` (what
    the forward wrote; None in a second backward, which gets two passes)."""
    if lse_weight is not None:
        if grad is not None:
            single_pass_misses.note(upstream, opts.grad_scale)
        return opts.backend.backward_with_grad(grad, logits, target, sample_index, lse, lse_weight, g_lse, g_t, g_s,
                                               opts.ignore_index)
    return opts.backend.backward(logits, target, sample_index, lse, g_lse, g_t, g_s, opts.ignore_index,
                                 opts.inplace_backward)


class BinaryCringeFunction(torch.autograd.Function):
    """The binary Cringe loss in one autograd node (docs/spec.md section 2).

    ``forward(logits [B, T, V], target [N], uniform [N], valid [N] bool,
    positive [N] bool, inv_denominator, opts, detach_positives,
    ct_on_positives)`` returns the reduced loss (``[N]`` rows for
    ``"none"``).
    """

    @staticmethod
    def forward(ctx, logits, target, uniform, valid, positive, inv_denominator, opts: LossOptions,
                detach_positives: bool, ct_on_positives: bool):
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        positive_f = positive.to(dtype)
        lse_weight = None
        if opts.single_pass:
            lse_weight = positive_f * row_weight(opts.grad_scale, inv_denominator, positive_f)
            stats, ctx.grad = opts.backend.forward_with_grad(logits, target, uniform, opts.k, opts.ignore_index,
                                                             lse_weight)
        else:
            stats, ctx.grad = opts.backend.forward(logits, target, uniform, opts.k, opts.ignore_index), None
        lse, t, sampled, sample_index = stats
        negative_f = (valid ^ positive).to(dtype)
        gap = t - sampled
        # Ignored rows hold zero statistics: their softplus(0) is masked by
        # negative_f, and no ignored row is NaN.
        contrast = F.softplus(gap).mul_(negative_f)
        if ct_on_positives:
            contrast = torch.where(positive, F.softplus(-gap), contrast)
        if opts.alpha != 1:
            contrast = contrast.mul_(opts.alpha)
        rows = torch.where(positive, lse - t, contrast)
        if ct_on_positives:
            rows = rows + torch.where(positive, contrast, 0.0)
        loss = rows if opts.reduction == "none" else rows.sum()
        if inv_denominator is not None:
            loss = loss * inv_denominator
        ctx.opts = opts
        ctx.detach_positives = detach_positives
        ctx.ct_on_positives = ct_on_positives
        ctx.inv_denominator = inv_denominator
        ctx.save_for_backward(logits, target, sample_index, lse, positive, positive_f, negative_f, gap, lse_weight)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        logits, target, sample_index, lse, positive, positive_f, negative_f, gap, lse_weight = ctx.saved_tensors
        opts: LossOptions = ctx.opts
        w = row_weight(grad_loss, ctx.inv_denominator, lse)
        # d contrast / d t per row, and minus d contrast / d sampled logit
        slope = torch.sigmoid(gap).mul_(negative_f)
        if ctx.ct_on_positives:
            slope = torch.where(positive, torch.sigmoid(gap).sub_(1), slope)  # -sigmoid(-gap)
        if opts.alpha != 1:
            slope = slope.mul_(opts.alpha)
        g_lse = positive_f * w
        g_t = (slope - positive_f).mul_(w)
        g_s = torch.zeros_like(g_t) if ctx.detach_positives else slope.neg_().mul_(w)
        # Handed out once: a second backward (retain_graph) must not write
        # into the tensor the first one returned.
        written, ctx.grad = ctx.grad, None
        grad = _logits_grad(opts, written, logits, target, sample_index, lse, lse_weight, g_lse, g_t, g_s, grad_loss)
        return grad, None, None, None, None, None, None, None, None


class PairwiseCringeFunction(torch.autograd.Function):
    """The Pairwise Cringe loss in one autograd node (docs/spec.md section 3).

    ``forward(chosen [B, Tw, V], chosen_target [B*Tw], rejected [B, Tl, V],
    rejected_target [B*Tl], uniform [B*Tl], valid_chosen [B, Tw] bool,
    valid_rejected [B, Tl] bool, inv_denominator, opts, margin, temperature,
    gate_grad, length_normalize)`` returns the reduced loss (``[B]`` for
    ``"none"``), then ``gate, M, LP_w, LP_l`` (``[B]``, non-differentiable).

    With the gate constant, ``lse`` enters only the chosen rows' CE, so the
    single pass guesses the reduction weight there and 0 on rejected rows;
    through the gate (``gate_grad``) every row's ``lse`` carries the gate's
    derivative, known only after all statistics: no single pass then.
    """

    @staticmethod
    def forward(ctx, chosen, chosen_target, rejected, rejected_target, uniform, valid_w, valid_l, inv_denominator,
                opts: LossOptions, margin: float, temperature: float, gate_grad: bool, length_normalize: bool):
        B = chosen.shape[0]
        dtype_w = torch.float64 if chosen.dtype == torch.float64 else torch.float32
        dtype_l = torch.float64 if rejected.dtype == torch.float64 else torch.float32
        valid_w_f = valid_w.reshape(-1).to(dtype_w)
        weight_w = weight_l = None
        backend = opts.backend
        if opts.single_pass:
            weight_w = valid_w_f * row_weight(opts.grad_scale, inv_denominator, valid_w_f)
            weight_l = torch.zeros(rejected_target.shape, dtype=dtype_l, device=rejected.device)
            win, ctx.grad_w = backend.forward_with_grad(chosen, chosen_target, None, 0, opts.ignore_index, weight_w)
            lose, ctx.grad_l = backend.forward_with_grad(rejected, rejected_target, uniform, opts.k,
                                                         opts.ignore_index, weight_l)
        else:
            win = backend.forward(chosen, chosen_target, None, 0, opts.ignore_index)
            lose = backend.forward(rejected, rejected_target, uniform, opts.k, opts.ignore_index)
            ctx.grad_w = ctx.grad_l = None
        # Ignored rows hold lse = t = 0: their log-probability is already 0.
        logp_w = (win.target_logit - win.lse).reshape(B, -1).sum(dim=1)
        logp_l = (lose.target_logit - lose.lse).reshape(B, -1).sum(dim=1)
        ce_b = -logp_w
        count_w = count_l = None
        if length_normalize:
            count_w = valid_w.sum(dim=1).clamp(min=1)
            count_l = valid_l.sum(dim=1).clamp(min=1)
            logp_w = logp_w / count_w
            logp_l = logp_l / count_l
        gap_b = logp_w - logp_l
        gate = torch.sigmoid((margin - gap_b) / temperature)
        gap_rows = lose.target_logit - lose.sample_logit
        contrast_b = torch.where(valid_l.reshape(-1), F.softplus(gap_rows), 0.0).reshape(B, -1).sum(dim=1)
        cr_b = gate * contrast_b
        total = ce_b + (cr_b if opts.alpha == 1 else opts.alpha * cr_b)
        if opts.reduction == "none":
            loss = total
        else:
            loss = total.sum()
            if inv_denominator is not None:
                loss = loss * inv_denominator
        ctx.opts = opts
        ctx.inv_denominator = inv_denominator
        ctx.gate_options = (B, temperature, gate_grad)
        ctx.save_for_backward(chosen, chosen_target, win.sample_index, win.lse, valid_w_f, weight_w,
                              rejected, rejected_target, lose.sample_index, lose.lse, weight_l,
                              valid_l, gap_rows, gate, contrast_b, count_w, count_l)
        ctx.mark_non_differentiable(gate, gap_b, logp_w, logp_l)
        return loss, gate, gap_b, logp_w, logp_l

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *_unused):
        (chosen, chosen_target, win_index, win_lse, valid_w_f, weight_w, rejected, rejected_target, lose_index,
         lose_lse, weight_l, valid_l, gap_rows, gate, contrast_b, count_w, count_l) = ctx.saved_tensors
        opts: LossOptions = ctx.opts
        B, temperature, gate_grad = ctx.gate_options
        w = row_weight(grad_loss, ctx.inv_denominator, win_lse)  # scalar, or [B] for "none"
        w_b = w.reshape(-1, 1)  # [1, 1] or [B, 1]: broadcasts over a pair's rows
        valid_w_f = valid_w_f.view(B, -1)
        valid_l_f = valid_l.to(gap_rows.dtype)
        # chosen rows: CE
        g_lse_w = valid_w_f * w_b
        g_t_w = -g_lse_w
        # rejected rows: alpha * gate * softplus(t - x+), two columns a row
        scale_b = (gate.view(B, 1) * w_b) if opts.alpha == 1 else (opts.alpha * gate.view(B, 1)) * w_b
        g_t_l = torch.sigmoid(gap_rows).view(B, -1).mul_(valid_l_f).mul_(scale_b)
        g_s_l = -g_t_l
        g_lse_l = torch.zeros_like(g_t_l)
        if gate_grad:
            # d L_b / d M_b = alpha * w_b * CR_b * d gate / d M, then M = LP_w - LP_l
            d_gap = (opts.alpha * w_b.reshape(-1) * contrast_b) * (-gate * (1 - gate) / temperature)
            d_lp_w = d_gap if count_w is None else d_gap / count_w
            d_lp_l = -d_gap if count_l is None else -d_gap / count_l
            row_w = valid_w_f * d_lp_w.to(valid_w_f.dtype).view(B, 1)
            row_l = valid_l_f * d_lp_l.to(valid_l_f.dtype).view(B, 1)
            g_t_w = g_t_w + row_w
            g_lse_w = g_lse_w - row_w
            g_t_l = g_t_l + row_l
            g_lse_l = g_lse_l - row_l
        g_lse_w, g_t_w, g_t_l, g_s_l, g_lse_l = (g.reshape(-1) for g in (g_lse_w, g_t_w, g_t_l, g_s_l, g_lse_l))
        written_w, written_l, ctx.grad_w, ctx.grad_l = ctx.grad_w, ctx.grad_l, None, None  # handed out once
        grad_w = _logits_grad(opts, written_w, chosen, chosen_target, win_index, win_lse, weight_w, g_lse_w, g_t_w,
                              torch.zeros_like(g_t_w), grad_loss)
        grad_l = _logits_grad(opts, written_l, rejected, rejected_target, lose_index, lose_lse, weight_l, g_lse_l,
                              g_t_l, g_s_l, grad_loss)
        return grad_w, None, grad_l, None, None, None, None, None, None, None, None, None, None
