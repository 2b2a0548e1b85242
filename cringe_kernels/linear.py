"""The Cringe losses from hidden states and the LM head (docs/spec.md section 5).

``linear_cringe_loss(hidden, weight, target, feedback)`` is
``cringe_loss(softcap(logit_scale * (hidden @ weight.T + bias)), target,
feedback)`` without ever holding the ``[N, V]`` logits or their gradient: the
rows are taken in chunks; per chunk the logits are made by one matmul into a
buffer reused across chunks, the row-statistics primitive reads them, and,
where the loss's ``d loss / d lse`` is known before the statistics (every
scalar reduction without ``gate_grad``), the same pass writes the chunk's
softmax gradient, which two more matmuls fold into the gradients of
``hidden``, ``weight`` and ``bias`` at once. The backward then only scales
those by the upstream gradient and adds the two columns a row touches through
its target and sampled logits (gathered ``weight`` rows, and an accumulating
``index_put_`` into ``grad_weight``). Where ``d loss / d lse`` is not known in
the forward (``reduction="none"`` with an arbitrary upstream vector,
``gate_grad=True``, a gradient through the details), the backward recomputes
the logits of the rows concerned (a second matmul pass). docs/linear.md
gives the cost and memory model.

The loss algebra on the ``[N]`` statistics is that of
:mod:`cringe_kernels.losses`, in differentiable PyTorch, so every detail and
reduction has its exact gradient.

Order of the logit transforms (as Hugging Face's models apply them):
``z = hidden @ weight.T + bias``; ``x = logit_scale * z`` (Cohere's
``logit_scale``); ``logits = logit_softcap * tanh(x / logit_softcap)``
(Gemma 2/3's ``final_logit_softcapping``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from . import backends, losses, validate
from .backends._dispatch import direct_call_ok
from .backends.base import RowStats, stats_dtype
from .losses import CringeOutput, PairwiseCringeOutput

Tensor = torch.Tensor

__all__ = [
    "LinearCringeLoss",
    "LinearPairwiseCringeLoss",
    "choose_chunk_size",
    "linear_cringe_loss",
    "linear_pairwise_cringe_loss",
]

# The chunk's logits buffer may hold twice the bytes of the hidden states
# (so the buffer and the single pass's gradient together are 4 D / V of the
# logits' size: 0.13 at D=4096, V=128256, a sixteenth of the logits and
# their gradient that the logits path holds), and at least 64 MiB. Why not less:
# each chunk's grad_weight update reads and writes all of [V, D] with an
# inner dimension of only the chunk's rows, so it is memory-bound below
# about 1000 rows on an H100 (bf16: 2 * rows flops per 4 bytes against a
# ridge near 300 flops per byte); on the CPU, 128-row chunks ran the
# matmuls markedly slower than 512-row ones.
_MIN_BUFFER_BYTES = 64 << 20
# Chunks above this many rows are cut to a multiple of it (whole matmul tiles).
_ROW_MULTIPLE = 64

# How the backward finds the rows whose d loss / d lse is not in the
# gradients folded in the forward (the details' lse is apart: see
# _LinearRowStats).
_TRUST = "trust"  # the loss's structure guarantees there are none
_ALL = "all"  # every row may have some: recompute them all


def choose_chunk_size(num_rows: int, vocab_size: int, hidden_size: int, dtype: torch.dtype) -> int:
    """Rows per chunk for the hidden-state losses.

    The chunk's ``[rows, V]`` logits buffer gets at most twice the byte size
    of the hidden states ``[N, D]`` (at least 64 MiB), rounded down to a
    multiple of 64 rows when above 64, and never more than ``num_rows``.

    Parameters
    ----------
    num_rows, vocab_size, hidden_size : int
        ``N``, ``V`` and ``D``.
    dtype : torch.dtype
        The logits' (inputs') dtype.

    Returns
    -------
    int
        At least 1.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    budget = max(2 * num_rows * hidden_size * itemsize, _MIN_BUFFER_BYTES)
    rows = max(1, budget // (vocab_size * itemsize))
    if rows > _ROW_MULTIPLE:
        rows -= rows % _ROW_MULTIPLE
    return int(max(1, min(rows, num_rows)))


# --------------------------------------------------------------------------
# The chunked primitive: row statistics of the logits made from hidden states


def _kernel_backend(name: str, V: int, dtype: torch.dtype, device: torch.device, k: int):
    """The row-statistics backend object for chunks of ``[rows, V]`` logits;
    ``"reference"`` runs as the primitive in PyTorch (same formulas)."""
    probe = torch.empty((0, V), dtype=dtype, device=device)
    chosen = backends.resolve(name, probe, k)
    if chosen == backends.REFERENCE:
        chosen = backends.resolve("torch", probe, k)
    return chosen


def _chunks(rows_per_chunk: int, count: int, index: Optional[Tensor]):
    """Row chunks: slices of ``range(count)``, or pieces of ``index`` (rows
    gathered; ``count`` is then ``index.numel()``)."""
    for lo in range(0, count, rows_per_chunk):
        hi = min(count, lo + rows_per_chunk)
        yield slice(lo, hi) if index is None else index[lo:hi]


def _take(t: Tensor, rows) -> Tensor:
    """``t[rows]``: a view for a slice, a contiguous gather for an index."""
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


def _put(dst: Tensor, rows, src: Tensor) -> None:
    if isinstance(rows, slice):
        dst[rows] = src
    else:
        dst.index_copy_(0, rows, src)


def _count(rows) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else rows.numel()


def _split_rows(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """Indices of the rows where ``mask`` holds, and of the others (a host read)."""
    return mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)


def _logits_into(out: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], scale: float,
                 softcap: float) -> None:
    """``out = softcap(scale * (hidden @ weight.T + bias))`` (``softcap`` 0: none)."""
    if bias is None:
        torch.mm(hidden, weight.t(), out=out)
        if scale != 1.0:
            out.mul_(scale)
    else:
        torch.addmm(bias, hidden, weight.t(), beta=scale, alpha=scale, out=out)
    if softcap:
        out.div_(softcap).tanh_().mul_(softcap)


def _softcap_chain_(grad: Tensor, logits: Tensor, softcap: float) -> None:
    """``grad *= d logits / d x`` for the softcap, ``1 - (logits / softcap)^2``;
    overwrites ``logits``."""
    if softcap:
        grad.mul_(logits.div_(softcap).square_().neg_().add_(1.0))


def _fold_(grad_logits: Tensor, hidden: Tensor, weight: Tensor, scale: float, grad_hidden: Optional[Tensor],
           grad_weight: Optional[Tensor], grad_bias: Optional[Tensor], rows) -> None:
    """Add one chunk's ``d loss / d z = scale * grad_logits`` (``[rows, V]``)
    to the gradients; ``rows`` (a slice or an index) says which rows of
    ``grad_hidden`` the chunk's are."""
    if grad_hidden is not None:
        part = grad_logits @ weight
        if scale != 1.0:
            part.mul_(scale)
        if isinstance(rows, slice):
            grad_hidden[rows] += part
        else:
            grad_hidden.index_put_((rows,), part, accumulate=True)
    if grad_weight is not None:
        grad_weight.addmm_(grad_logits.t(), hidden, alpha=scale)
    if grad_bias is not None:
        grad_bias.add_(grad_logits.sum(0, dtype=grad_bias.dtype), alpha=scale)


def _empty(like: Tensor, dtype=None) -> Tensor:
    return like.new_empty((0,), dtype=dtype or like.dtype)


@torch.no_grad()
def _forward_impl(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, uniform: Optional[Tensor],
                  lse_weight: Optional[Tensor], k: int, ignore_index: int, backend: str, logit_scale: float,
                  logit_softcap: float, chunk_size: int, need_hidden: bool, need_weight: bool, need_bias: bool):
    """Row statistics of the logits made from ``hidden``, chunk by chunk, and,
    given ``lse_weight``, the gradients for ``d loss / d lse = lse_weight``
    (zero ``d loss / d target_logit`` and ``d loss / d sample_logit``).

    Returns ``(lse, target_logit, sample_logit, sample_index, grad_hidden,
    grad_weight, grad_bias)``; a gradient not asked for (or without
    ``lse_weight``) is an empty tensor. ``grad_bias`` is in the statistics'
    dtype (a ``[V]`` sum, kept wide until the backward casts it).
    """
    N, D = hidden.shape
    V = weight.shape[0]
    dtype = hidden.dtype
    sd = stats_dtype(dtype)
    kernel = _kernel_backend(backend, V, dtype, hidden.device, k)
    lse, t, xs = (hidden.new_empty((N,), dtype=sd) for _ in range(3))
    sample_index = hidden.new_empty((N,), dtype=torch.int64)
    fold = lse_weight is not None
    gh = hidden.new_zeros((N, D)) if fold and need_hidden else _empty(hidden)
    gw = torch.zeros_like(weight) if fold and need_weight else _empty(weight)
    gb = weight.new_zeros((V,), dtype=sd) if fold and need_bias else _empty(weight, sd)
    if N == 0:
        return lse, t, xs, sample_index, gh, gw, gb
    # (rows to gather or None for all, whether their gradient is folded)
    groups = [(None, fold)]
    if fold and hidden.device.type == "cpu":
        # Rows whose d loss / d lse is 0 (negative or ignored rows) need no
        # softmax gradient: on the CPU, where finding them costs no wait,
        # they skip the gradient pass and the two folding matmuls.
        with_grad, without = _split_rows(lse_weight != 0)
        if without.numel():
            groups = [(with_grad, True), (without, False)]
    rows_per_chunk = max(1, min(chunk_size, N))
    buffer = hidden.new_empty((rows_per_chunk, V))
    zeros = torch.zeros((rows_per_chunk,), dtype=sd, device=hidden.device)
    for index, fold_group in groups:
        count = N if index is None else index.numel()
        for rows in _chunks(rows_per_chunk, count, index):
            n = _count(rows)
            h = _take(hidden, rows)
            x = buffer[:n]
            _logits_into(x, h, weight, bias, logit_scale, logit_softcap)
            x3 = x.view(1, n, V)
            y = _take(target, rows)
            u = _take(uniform, rows) if uniform is not None and k > 0 else None
            if fold_group:
                w = _take(lse_weight, rows)
                if kernel.single_pass:
                    stats, grad = kernel.forward_with_grad(x3, y, u, k, ignore_index, w)
                else:
                    stats = kernel.forward(x3, y, u, k, ignore_index)
                    # In place over the buffer unless the softcap still needs the logits.
                    grad = kernel.backward(x3, y, stats.sample_index, stats.lse, w, zeros[:n], zeros[:n],
                                           ignore_index, not logit_softcap)
                grad = grad.view(n, V)
                _softcap_chain_(grad, x, logit_softcap)
                _fold_(grad, h, weight, logit_scale, gh if need_hidden else None, gw if need_weight else None,
                       gb if need_bias else None, rows)
            else:
                stats = kernel.forward(x3, y, u, k, ignore_index)
            for dst, src in zip((lse, t, xs, sample_index), stats):
                _put(dst, rows, src)
    return lse, t, xs, sample_index, gh, gw, gb


def _forward_fake(hidden, weight, bias, target, uniform, lse_weight, k, ignore_index, backend, logit_scale,
                  logit_softcap, chunk_size, need_hidden, need_weight, need_bias):
    N, D = hidden.shape
    V = weight.shape[0]
    sd = stats_dtype(hidden.dtype)
    fold = lse_weight is not None
    return (hidden.new_empty((N,), dtype=sd), hidden.new_empty((N,), dtype=sd), hidden.new_empty((N,), dtype=sd),
            hidden.new_empty((N,), dtype=torch.int64),
            hidden.new_empty((N, D)) if fold and need_hidden else _empty(hidden),
            weight.new_empty((V, D)) if fold and need_weight else _empty(weight),
            weight.new_empty((V,), dtype=sd) if fold and need_bias else _empty(weight, sd))


@torch.no_grad()
def _backward_impl(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, sample_index: Tensor,
                   lse: Tensor, target_logit: Tensor, sample_logit: Tensor, lse_weight: Optional[Tensor],
                   grad_lse: Tensor, grad_target: Tensor, grad_sample: Tensor, grad_detail: Optional[Tensor],
                   fold_hidden: Tensor, fold_weight: Tensor, fold_bias: Tensor, folded: bool, residual: str,
                   ignore_index: int, backend: str, logit_scale: float, logit_softcap: float, chunk_size: int,
                   need_hidden: bool, need_weight: bool, need_bias: bool, reuse: bool = False):
    """Gradients of ``hidden``, ``weight`` and ``bias`` from the statistics' gradients.

    With ``folded``, ``fold_*`` hold the forward's gradients for
    ``d loss / d lse = lse_weight``: they are scaled by the upstream factor
    ``c`` (the least-squares ratio of ``grad_lse`` to ``lse_weight``; exact
    when one is a multiple of the other, as the loss's structure ensures),
    written over ``fold_*`` when ``reuse`` (eager calls only: a registered op
    may not return its inputs). The rest of ``d loss / d lse`` (nonzero on
    every row for ``residual="all"``, on none for ``"trust"``) and
    ``grad_detail`` (the gradient of the details' copy of ``lse``, None when
    nothing reached it) are recomputed chunk by chunk; the target
    and sampled columns are added by gathers of ``weight`` rows and
    accumulating ``index_put_`` (which sums in float32 for 16-bit weights
    on a GPU).

    Returns ``(grad_hidden, grad_weight, grad_bias)``; empty where not asked
    for; ``grad_bias`` in the bias's dtype.
    """
    N, D = hidden.shape
    V = weight.shape[0]
    sd = stats_dtype(hidden.dtype)
    valid = target != ignore_index
    in_range = valid & (target >= 0) & (target < V)
    sampled = sample_index >= 0
    grad_lse = torch.where(in_range, grad_lse, 0.0)

    if folded:
        w = lse_weight
        scale_up = (grad_lse * w).sum() / (w * w).sum().clamp(min=torch.finfo(sd).tiny)
        residual_coef = grad_lse - scale_up * w if residual == _ALL else None
        if reuse:
            gh, gw, gb = fold_hidden.mul_(scale_up), fold_weight.mul_(scale_up), fold_bias.mul_(scale_up)
        else:
            gh, gw, gb = fold_hidden * scale_up, fold_weight * scale_up, fold_bias * scale_up
    else:
        residual_coef = grad_lse if residual == _ALL else None
        gh = hidden.new_zeros((N, D)) if need_hidden else _empty(hidden)
        gw = torch.zeros_like(weight) if need_weight else _empty(weight)
        gb = weight.new_zeros((V,), dtype=sd) if need_bias else _empty(weight, sd)
    gh_, gw_, gb_ = (gh if need_hidden else None), (gw if need_weight else None), (gb if need_bias else None)
    rows_per_chunk = max(1, min(chunk_size, N))

    # Dense part: the rows whose d loss / d lse is not in the folded gradients.
    if grad_detail is not None:
        grad_detail = torch.where(in_range, grad_detail, 0.0)
        residual_coef = grad_detail if residual_coef is None else residual_coef + grad_detail
    redo, count = None, 0
    if residual_coef is None:
        pass
    elif residual == _ALL and hidden.device.type != "cpu":
        count = N  # every row, without a host wait
    else:
        # Only the details' gradient (through logp, margin, ...: one host
        # wait, paid only when such a gradient exists), or on the CPU, where
        # finding the rows costs no wait and skips those with nothing to add.
        redo = (residual_coef != 0).nonzero().squeeze(1)
        count = redo.numel()
    if count:
        kernel = _kernel_backend(backend, V, hidden.dtype, hidden.device, 0)
        buffer = hidden.new_empty((min(rows_per_chunk, count), V))
        zeros = torch.zeros((buffer.shape[0],), dtype=sd, device=hidden.device)
        for rows in _chunks(rows_per_chunk, count, redo):
            n = _count(rows)
            h = _take(hidden, rows)
            x = buffer[:n]
            _logits_into(x, h, weight, bias, logit_scale, logit_softcap)
            grad = kernel.backward(x.view(1, n, V), _take(target, rows), _take(sample_index, rows), _take(lse, rows),
                                   _take(residual_coef, rows), zeros[:n], zeros[:n], ignore_index,
                                   not logit_softcap).view(n, V)
            _softcap_chain_(grad, x, logit_softcap)
            _fold_(grad, h, weight, logit_scale, gh_, gw_, gb_, rows)

    # Sparse part: d loss / d z at the target and sampled columns.
    def dz_dx(value):
        return logit_scale * (1 - (value / logit_softcap) ** 2) if logit_softcap else logit_scale

    # [2, N]: the target column's row, then the sampled column's
    coef = torch.stack([torch.where(in_range, grad_target * dz_dx(target_logit), 0.0),
                        torch.where(sampled, grad_sample * dz_dx(sample_logit), 0.0)])
    cols = torch.stack([torch.where(in_range, target, 0), torch.where(sampled, sample_index, 0)])
    for rows in _chunks(rows_per_chunk, N, None):
        n = rows.stop - rows.start
        c, y = coef[:, rows].reshape(2 * n, 1), cols[:, rows].reshape(2 * n)
        if gh_ is not None:
            gh_[rows] += (c * weight[y]).view(2, n, D).sum(0).to(gh_.dtype)
        if gw_ is not None:
            gw_.index_put_((y,), (c * hidden[rows].repeat(2, 1)).to(gw_.dtype), accumulate=True)
        if gb_ is not None:
            gb_.index_put_((y,), c[:, 0].to(gb_.dtype), accumulate=True)
    gb = gb.to(bias.dtype) if need_bias else _empty(weight)
    return gh, gw, gb


def _backward_fake(hidden, weight, bias, target, sample_index, lse, target_logit, sample_logit, lse_weight, grad_lse,
                   grad_target, grad_sample, grad_detail, fold_hidden, fold_weight, fold_bias, folded, residual,
                   ignore_index, backend, logit_scale, logit_softcap, chunk_size, need_hidden, need_weight, need_bias):
    return (hidden.new_empty(hidden.shape) if need_hidden else _empty(hidden),
            weight.new_empty(weight.shape) if need_weight else _empty(weight),
            bias.new_empty(bias.shape) if need_bias else _empty(weight))


def _backward_op_body(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, sample_index: Tensor,
                      lse: Tensor, target_logit: Tensor, sample_logit: Tensor, lse_weight: Optional[Tensor],
                      grad_lse: Tensor, grad_target: Tensor, grad_sample: Tensor, grad_detail: Optional[Tensor],
                      fold_hidden: Tensor, fold_weight: Tensor, fold_bias: Tensor, folded: bool, residual: str,
                      ignore_index: int, backend: str, logit_scale: float, logit_softcap: float, chunk_size: int,
                      need_hidden: bool, need_weight: bool, need_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(hidden, weight, bias, target, sample_index, lse, target_logit, sample_logit, lse_weight,
                          grad_lse, grad_target, grad_sample, grad_detail, fold_hidden, fold_weight, fold_bias, folded,
                          residual, ignore_index, backend, logit_scale, logit_softcap, chunk_size, need_hidden,
                          need_weight, need_bias, reuse=False)


def _forward_op_body(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor,
                     uniform: Optional[Tensor], lse_weight: Optional[Tensor], k: int, ignore_index: int, backend: str,
                     logit_scale: float, logit_softcap: float, chunk_size: int, need_hidden: bool, need_weight: bool,
                     need_bias: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward_impl(hidden, weight, bias, target, uniform, lse_weight, k, ignore_index, backend, logit_scale,
                         logit_softcap, chunk_size, need_hidden, need_weight, need_bias)


# Opaque to torch.compile (the chunk loop, and the backward's optional host
# wait, are not traced): each is one node with a fake that gives the shapes.
_forward_op = torch.library.custom_op("cringe_kernels::linear_row_stats", _forward_op_body, mutates_args=())
_forward_op.register_fake(_forward_fake)
_backward_op = torch.library.custom_op("cringe_kernels::linear_row_stats_backward", _backward_op_body,
                                       mutates_args=())
_backward_op.register_fake(_backward_fake)


class _LinearRowStats(torch.autograd.Function):
    """Row statistics of ``softcap(scale * (hidden @ weight.T + bias))``; use :func:`_linear_row_stats`.

    Outputs ``lse, target_logit, sample_logit, sample_index`` and a second
    copy of ``lse`` for the details (``logp``, the pairwise margin): the
    loss's own gradient reaches the first with the structure the forward
    folded (``residual="trust"``), and anything else, which only a gradient
    through the details can bring, arrives apart, so the backward recomputes
    rows only when such a gradient exists.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, uniform, lse_weight, k, ignore_index, backend, logit_scale,
                logit_softcap, chunk_size, residual):
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        if not any(need):
            lse_weight = None
        args = (hidden, weight, bias, target, uniform, lse_weight, k, ignore_index, backend, logit_scale,
                logit_softcap, chunk_size, *need)
        direct = direct_call_ok(args)
        lse, t, xs, sample_index, gh, gw, gb = (_forward_impl if direct else _forward_op)(*args)
        ctx.mark_non_differentiable(sample_index)
        saved = (hidden, weight, bias, target, sample_index, lse, t, xs, lse_weight)
        if direct:
            # Eager: the folded gradients stay off the saved tensors, so that
            # the backward may scale them in place and hand them out.
            ctx.save_for_backward(*saved)
            ctx.fold = (gh, gw, gb)
        else:
            ctx.save_for_backward(*saved, gh, gw, gb)
            ctx.fold = None
        ctx.options = (ignore_index, backend, logit_scale, logit_softcap, chunk_size, *need)
        ctx.folded = lse_weight is not None
        ctx.residual = residual
        ctx.set_materialize_grads(False)  # None, not zeros, for an output nothing used
        return lse, t, xs, sample_index, lse.clone()

    @staticmethod
    def backward(ctx, grad_lse, grad_target, grad_sample, _grad_index, grad_detail):
        saved = ctx.saved_tensors
        lse = saved[5]
        grad_lse, grad_target, grad_sample = (
            torch.zeros_like(lse) if g is None else g for g in (grad_lse, grad_target, grad_sample))
        folded, residual, reuse = ctx.folded, ctx.residual, False
        if len(saved) > 9:  # traced (torch.compile): the folded gradients were saved
            fold = saved[9:]
        elif ctx.fold is not None:  # eager, first backward: hand them out
            fold, ctx.fold, reuse = ctx.fold, None, True
        else:
            # A second backward (retain_graph): the first one handed the
            # folded gradients out, so every row is recomputed.
            fold = (_empty(saved[0]), _empty(saved[1]), _empty(saved[1]))
            if folded:
                folded, residual = False, _ALL
        args = (*saved[:9], grad_lse, grad_target, grad_sample, grad_detail, *fold, folded, residual, *ctx.options)
        if direct_call_ok(args):
            grads = _backward_impl(*args, reuse=reuse and folded)
        else:
            grads = _backward_op(*args)
        need_hidden, need_weight, need_bias = ctx.options[-3:]
        gh, gw, gb = (g if n else None for g, n in zip(grads, (need_hidden, need_weight, need_bias)))
        return gh, gw, gb, None, None, None, None, None, None, None, None, None, None


def _linear_row_stats(hidden2d, weight, bias, target, uniform, lse_weight, k, ignore_index, backend, logit_scale,
                      logit_softcap, chunk_size, residual):
    """``(lse, target_logit, sample_logit, sample_index, lse_for_details)``, differentiable."""
    return _LinearRowStats.apply(hidden2d, weight, bias, target, uniform, lse_weight, k, ignore_index, backend,
                                 logit_scale, logit_softcap, chunk_size, residual)


# --------------------------------------------------------------------------
# Checks and the public losses


def _autocast(*tensors):
    """The floating tensors cast to the autocast dtype where autocast is on for
    their device, as ``F.linear`` would cast them; unchanged otherwise."""
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if first is None or not torch.is_autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def _check_head(hidden_name: str, hidden, weight, bias) -> Tuple[int, int]:
    """``hidden [..., D]``, ``weight [V, D]``, ``bias [V]``: one floating dtype,
    one device; returns ``(V, D)``."""
    for name, x in ((hidden_name, hidden), ("weight", weight)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if hidden.dim() < 1:
        raise ValueError(f"{hidden_name} must have shape [..., D], got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, D] (as nn.Linear's weight), got {tuple(weight.shape)}")
    V, D = weight.shape
    if hidden.shape[-1] != D:
        raise ValueError(f"{hidden_name} has hidden size D={hidden.shape[-1]} in its last dim (shape "
                         f"{tuple(hidden.shape)}) but weight {tuple(weight.shape)} has D={D}")
    if V < 2:
        raise ValueError(f"weight must have a vocabulary size V >= 2 rows, got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but {hidden_name} has {hidden.dtype}; use one dtype")
    validate.check_device("weight", weight, hidden_name, hidden)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias must have shape [V] = ({V},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but {hidden_name} has {hidden.dtype}; use one dtype")
        validate.check_device("bias", bias, hidden_name, hidden)
    return V, D


def _check_transforms(logit_scale, logit_softcap, chunk_size) -> Tuple[float, float, Optional[int]]:
    scale = 1.0 if logit_scale is None else validate.check_float("logit_scale", logit_scale)
    cap = 0.0 if logit_softcap is None else validate.check_float("logit_softcap", logit_softcap, positive=True)
    if chunk_size is not None:
        chunk_size = validate.check_int("chunk_size", chunk_size, minimum=1)
    return scale, cap, chunk_size


def _check_target(name: str, target, hidden_name: str, hidden: Tensor) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{name} must have shape {tuple(hidden.shape[:-1])} (the leading dims of {hidden_name} "
                         f"{tuple(hidden.shape)}), got {tuple(target.shape)}")
    validate.check_device(name, target, hidden_name, hidden)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _stats(hidden: Tensor, weight, bias, target: Tensor, uniform, lse_weight, k, ignore_index, backend, scale, cap,
           chunk_size, residual):
    """Row statistics of one ``hidden [..., D]`` (rows flattened)."""
    D = hidden.shape[-1]
    hidden2d = hidden.reshape(-1, D)
    N, V = hidden2d.shape[0], weight.shape[0]
    if chunk_size is None:
        chunk_size = choose_chunk_size(N, V, D, hidden.dtype)
    target = target.reshape(-1).long().contiguous()
    if uniform is not None:
        uniform = uniform.reshape(-1).to(torch.float32).contiguous()
    return _linear_row_stats(hidden2d, weight, bias, target, uniform, lse_weight, k, ignore_index, backend, scale,
                             cap, chunk_size, residual)


def linear_cringe_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    feedback,
    *,
    bias: Optional[Tensor] = None,
    k: int = 5,
    alpha: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    detach_positives: bool = False,
    ct_on_positives: bool = False,
    num_items_in_batch=None,
    generator: Optional[torch.Generator] = None,
    uniform: Optional[Tensor] = None,
    backend: str = "auto",
    return_details: bool = False,
    logit_softcap: Optional[float] = None,
    logit_scale: Optional[float] = None,
    chunk_size: Optional[int] = None,
) -> Union[Tensor, CringeOutput]:
    """Binary Cringe loss of the logits ``hidden @ weight.T (+ bias)``, never holding them.

    Equals :func:`cringe_loss` on ``softcap(logit_scale * (hidden @ weight.T
    + bias))``, with gradients for ``hidden``, ``weight`` and ``bias``; the
    logits are made and consumed ``chunk_size`` rows at a time.

    Parameters
    ----------
    hidden : Tensor, ``[..., D]``, float16/bfloat16/float32/float64
        Final hidden states; may be a strided view (``hidden[:, :-1]``).
    weight : Tensor, ``[V, D]``, ``hidden``'s dtype and device
        The LM head's weight as in ``nn.Linear`` (may be tied to the input
        embedding). Under ``torch.autocast`` the hidden states, weight and
        bias are cast to the autocast dtype first, as ``F.linear`` would.
    target : Tensor, ``[...]`` (``hidden``'s leading shape), integer
        Column per row in ``[0, V)``, or ``ignore_index``.
    feedback : Tensor, bool or 0/1, broadcastable to ``target``
        1/True marks a positive row, 0/False a negative one.
    bias : Tensor, ``[V]``, optional
    k, alpha, ignore_index, reduction, detach_positives, ct_on_positives,
    num_items_in_batch, generator, uniform, backend, return_details
        As in :func:`cringe_kernels.cringe_loss`; the same ``uniform`` gives
        the same samples as that function on the full logits (wherever the
        logits' rounding does not reorder the candidates).
    logit_softcap : float, optional
        ``logits = logit_softcap * tanh(x / logit_softcap)`` (Gemma 2/3's
        ``final_logit_softcapping``), applied after ``logit_scale``.
    logit_scale : float, optional
        ``x = logit_scale * (hidden @ weight.T + bias)`` (Cohere's
        ``logit_scale``).
    chunk_size : int, optional
        Rows per chunk; default :func:`choose_chunk_size`.

    Returns
    -------
    Tensor or CringeOutput
        float32 (float64 for float64 inputs).
    """
    hidden, weight, bias = _autocast(hidden, weight, bias)
    V, _ = _check_head("hidden", hidden, weight, bias)
    _check_target("target", target, "hidden", hidden)
    validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction)
    for name, flag in (("detach_positives", detach_positives), ("ct_on_positives", ct_on_positives),
                       ("return_details", return_details)):
        validate.check_bool(name, flag)
    scale, cap, chunk_size = _check_transforms(logit_scale, logit_softcap, chunk_size)
    device = hidden.device
    validate.check_generator(generator, device)
    validate.check_num_items(num_items_in_batch, device)
    feedback = validate.check_feedback(feedback, target)
    backends.resolve(backend, torch.empty((0, V), dtype=hidden.dtype, device=device), k)
    fresh_draws = uniform is None
    uniform = losses.draws(uniform, target, "target", generator, device)
    valid = target.reshape(-1) != ignore_index
    validate.check_values([("target", target, V, valid.reshape(target.shape))], ignore_index, feedback=feedback,
                          uniform=None if fresh_draws else uniform)

    sd = stats_dtype(hidden.dtype)
    positive = valid & feedback.reshape(-1).to(torch.bool)
    inv_denominator = losses.inverse_denominator((valid,), num_items_in_batch, reduction, sd)
    lse_weight, residual = None, _ALL
    if reduction != "none" and _needs_grad(hidden, weight, bias):
        # d loss / d lse for an upstream gradient of 1: only cross-entropy
        # involves lse; any scalar upstream gradient is a multiple of it.
        lse_weight = positive.to(sd)
        if inv_denominator is not None:
            lse_weight = lse_weight * inv_denominator
        residual = _TRUST
    lse, t, sampled_logit, sample_idx, lse_detail = _stats(hidden, weight, bias, target, uniform, lse_weight, k,
                                                           ignore_index, backend, scale, cap, chunk_size, residual)
    return losses.binary_algebra(RowStats(lse, t, sampled_logit, sample_idx), valid, positive, inv_denominator,
                                 alpha=alpha, reduction=reduction, detach_positives=detach_positives,
                                 ct_on_positives=ct_on_positives, shape=target.shape, return_details=return_details,
                                 logp_lse=lse_detail)


def linear_pairwise_cringe_loss(
    chosen_hidden: Tensor,
    chosen_target: Tensor,
    rejected_hidden: Tensor,
    rejected_target: Tensor,
    weight: Tensor,
    *,
    bias: Optional[Tensor] = None,
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
    uniform: Optional[Tensor] = None,
    backend: str = "auto",
    return_details: bool = False,
    logit_softcap: Optional[float] = None,
    logit_scale: Optional[float] = None,
    chunk_size: Optional[int] = None,
) -> Union[Tensor, PairwiseCringeOutput]:
    """Pairwise Cringe loss of the logits ``hidden @ weight.T (+ bias)``, never holding them.

    Equals :func:`pairwise_cringe_loss` on the logits of both responses.
    With the gate constant (``gate_grad=False``), the chosen rows' gradient
    is folded in the forward and the rejected rows need no softmax gradient
    at all (their only term is the two-column contrast, scaled by the gate
    in the backward).

    Parameters
    ----------
    chosen_hidden : Tensor, ``[B, Tw, D]``, floating
    chosen_target : Tensor, ``[B, Tw]``, integer
    rejected_hidden : Tensor, ``[B, Tl, D]``, the same dtype and device
    rejected_target : Tensor, ``[B, Tl]``, integer
    weight : Tensor, ``[V, D]``
    bias : Tensor, ``[V]``, optional
    k, alpha, margin, temperature, gate_grad, length_normalize, ignore_index,
    reduction, num_items_in_batch, generator, uniform, backend, return_details
        As in :func:`cringe_kernels.pairwise_cringe_loss`.
    logit_softcap, logit_scale, chunk_size
        As in :func:`linear_cringe_loss`.

    Returns
    -------
    Tensor or PairwiseCringeOutput
    """
    chosen_hidden, rejected_hidden, weight, bias = _autocast(chosen_hidden, rejected_hidden, weight, bias)
    V, D = _check_head("chosen_hidden", chosen_hidden, weight, bias)
    _check_head("rejected_hidden", rejected_hidden, weight, bias)
    for name, x in (("chosen_hidden", chosen_hidden), ("rejected_hidden", rejected_hidden)):
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape [B, T, D], got {tuple(x.shape)}")
    if rejected_hidden.shape[0] != chosen_hidden.shape[0]:
        raise ValueError(f"rejected_hidden {tuple(rejected_hidden.shape)} must match chosen_hidden "
                         f"{tuple(chosen_hidden.shape)} in the batch size B")
    _check_target("chosen_target", chosen_target, "chosen_hidden", chosen_hidden)
    _check_target("rejected_target", rejected_target, "rejected_hidden", rejected_hidden)
    validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction, margin=margin,
                                   temperature=temperature)
    for name, flag in (("gate_grad", gate_grad), ("length_normalize", length_normalize),
                       ("return_details", return_details)):
        validate.check_bool(name, flag)
    scale, cap, chunk_size = _check_transforms(logit_scale, logit_softcap, chunk_size)
    device = chosen_hidden.device
    validate.check_generator(generator, device)
    validate.check_num_items(num_items_in_batch, device)
    backends.resolve(backend, torch.empty((0, V), dtype=chosen_hidden.dtype, device=device), k)
    fresh_draws = uniform is None
    uniform = losses.draws(uniform, rejected_target, "rejected_target", generator, device)
    B = chosen_hidden.shape[0]
    sd = stats_dtype(chosen_hidden.dtype)
    valid_w = chosen_target != ignore_index
    valid_l = rejected_target != ignore_index
    validate.check_values([("chosen_target", chosen_target, V, valid_w), ("rejected_target", rejected_target, V,
                                                                         valid_l)], ignore_index,
                          uniform=None if fresh_draws else uniform)
    valid_w, valid_l = valid_w.reshape(B, -1), valid_l.reshape(B, -1)
    inv_denominator = losses.inverse_denominator((valid_w, valid_l), num_items_in_batch, reduction, sd)
    weight_w, residual_w, residual_l = None, _ALL, _ALL
    if reduction != "none" and not gate_grad and _needs_grad(chosen_hidden, rejected_hidden, weight, bias):
        # With the gate constant, lse enters only the chosen rows' CE; the
        # rejected rows' d loss / d lse is 0.
        weight_w = valid_w.reshape(-1).to(sd)
        if inv_denominator is not None:
            weight_w = weight_w * inv_denominator
        residual_w = residual_l = _TRUST
    win = _stats(chosen_hidden, weight, bias, chosen_target, None, weight_w, 0, ignore_index, backend, scale, cap,
                 chunk_size, residual_w)
    lose = _stats(rejected_hidden, weight, bias, rejected_target, uniform, None, k, ignore_index, backend, scale, cap,
                  chunk_size, residual_l)
    # The log-likelihoods (the gate's input and details) read the details'
    # lse: with the gate constant, only a gradient through the details
    # reaches them.
    return losses.pairwise_algebra(RowStats(*win[:4]), RowStats(*lose[:4]), valid_w, valid_l, inv_denominator,
                                   alpha=alpha, margin=margin, temperature=temperature, gate_grad=gate_grad,
                                   length_normalize=length_normalize, reduction=reduction,
                                   rejected_shape=rejected_target.shape, return_details=return_details,
                                   logp_lse=(win[4], lose[4]))


class LinearCringeLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`linear_cringe_loss`; holds the hyperparameters.

    ``forward(hidden, weight, target, feedback, *, bias=None,
    num_items_in_batch=None, generator=None, uniform=None,
    return_details=False)``: the head's ``weight`` (and ``bias``) are passed
    per call, so one module serves a head tied to the input embedding.
    """

    def __init__(self, *, k: int = 5, alpha: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 detach_positives: bool = False, ct_on_positives: bool = False, backend: str = "auto",
                 logit_softcap: Optional[float] = None, logit_scale: Optional[float] = None,
                 chunk_size: Optional[int] = None):
        super().__init__()
        validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction)
        _check_transforms(logit_scale, logit_softcap, chunk_size)
        self.options = dict(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                            detach_positives=detach_positives, ct_on_positives=ct_on_positives, backend=backend,
                            logit_softcap=logit_softcap, logit_scale=logit_scale, chunk_size=chunk_size)

    def forward(self, hidden, weight, target, feedback, *, bias=None, num_items_in_batch=None, generator=None,
                uniform=None, return_details: bool = False):
        return linear_cringe_loss(hidden, weight, target, feedback, bias=bias, num_items_in_batch=num_items_in_batch,
                                  generator=generator, uniform=uniform, return_details=return_details, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class LinearPairwiseCringeLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`linear_pairwise_cringe_loss`; holds the hyperparameters.

    ``forward(chosen_hidden, chosen_target, rejected_hidden, rejected_target,
    weight, *, bias=None, num_items_in_batch=None, generator=None,
    uniform=None, return_details=False)``.
    """

    def __init__(self, *, k: int = 5, alpha: float = 1.0, margin: float = 0.0, temperature: float = 1.0,
                 gate_grad: bool = False, length_normalize: bool = False, ignore_index: int = -100,
                 reduction: str = "mean", backend: str = "auto", logit_softcap: Optional[float] = None,
                 logit_scale: Optional[float] = None, chunk_size: Optional[int] = None):
        super().__init__()
        validate.check_hyperparameters(k=k, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                                       margin=margin, temperature=temperature)
        _check_transforms(logit_scale, logit_softcap, chunk_size)
        self.options = dict(k=k, alpha=alpha, margin=margin, temperature=temperature, gate_grad=gate_grad,
                            length_normalize=length_normalize, ignore_index=ignore_index, reduction=reduction,
                            backend=backend, logit_softcap=logit_softcap, logit_scale=logit_scale,
                            chunk_size=chunk_size)

    def forward(self, chosen_hidden, chosen_target, rejected_hidden, rejected_target, weight, *, bias=None,
                num_items_in_batch=None, generator=None, uniform=None, return_details: bool = False):
        return linear_pairwise_cringe_loss(chosen_hidden, chosen_target, rejected_hidden, rejected_target, weight,
                                           bias=bias, num_items_in_batch=num_items_in_batch, generator=generator,
                                           uniform=uniform, return_details=return_details, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
