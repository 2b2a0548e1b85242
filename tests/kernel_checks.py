"""Numerical checks of a kernel backend against the reference, shared by
test_cpu_backend.py and test_cuda_backend.py (same checks, another device);
test_triton_backend.py uses the tolerances, the draw check and the inputs.

Every check goes through the public API: ``cringe_loss`` /
``pairwise_cringe_loss`` with ``backend=<kernel>`` versus
``backend="reference"``, with explicit ``uniform`` so both must draw the same
column. A differing draw is accepted only where ``u`` lies within ``1e-5`` of
a CDF boundary of the row's candidates (float32 rounding may then
legitimately go either way); anything else is a bug.
"""

from __future__ import annotations

import math

import torch

import cringe_kernels as ck
from cringe_kernels import reference

# Statistics and loss tolerances (statistics are float32 at least, computed
# from the same rounded inputs; only summation order and exp() differ).
STAT_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.bfloat16: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=2e-5, atol=2e-6),
}
# Gradient tolerances: both sides round once to the logits' dtype, so a
# low-precision gradient may differ by one unit in the last place.
GRAD_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-7),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-6),
}
BOUNDARY = 1e-5


def near_boundary(x_row: torch.Tensor, target: int, k: int, u: float) -> bool:
    """Whether ``u`` is within BOUNDARY of a cumulative candidate probability."""
    x = x_row.double()[None]
    k_eff = min(k, x.shape[1] - 1)
    cols = reference.top_candidates(x, torch.tensor([target], device=x.device), k_eff)
    vals = x.gather(1, cols)
    w = torch.where(vals == float("-inf"), 0.0, torch.exp(vals - vals[:, :1]))
    cdf = (w / w.sum()).cumsum(1)
    return bool(((cdf - u).abs() < BOUNDARY).any())


def assert_same_samples(logits, target, uniform, k, got, want, ignore_index=-100):
    """``got == want`` per row, except rows whose draw sits on a CDF boundary."""
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    got, want = got.reshape(-1).cpu(), want.reshape(-1).cpu()
    y, u = target.reshape(-1).cpu(), uniform.reshape(-1).cpu()
    for i in (got != want).nonzero().flatten().tolist():
        assert y[i] != ignore_index and want[i] >= 0 and got[i] >= 0, (
            f"row {i}: sampled {int(got[i])}, reference {int(want[i])} (target {int(y[i])})")
        assert near_boundary(rows[i].cpu(), int(y[i]), k, float(u[i])), (
            f"row {i}: sampled {int(got[i])}, reference {int(want[i])}, u={float(u[i])!r} is not on a CDF boundary")


def run_binary(logits, target, feedback, backend, *, k, uniform, inplace=False, **kw):
    """(details, grad of logits) of cringe_loss(reduction='none').sum()."""
    x = logits.detach().clone().requires_grad_(True)
    out = ck.cringe_loss(x, target, feedback, k=k, uniform=uniform, backend=backend, reduction="none",
                         return_details=True, inplace_backward=inplace, **kw)
    # A fixed non-uniform upstream gradient exercises g_lse, g_t, g_s per row.
    weights = torch.linspace(0.5, 1.5, out.loss.numel(), dtype=out.loss.dtype, device=out.loss.device)
    (out.loss.reshape(-1) * weights).sum().backward()
    return out, x.grad


def compare_binary(logits, target, feedback, backend, *, k=5, uniform=None, check_grad=True, **kw):
    """Kernel backend vs reference on one case; returns the kernel's details."""
    if uniform is None:
        uniform = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)).to(logits.device)
    got, g_got = run_binary(logits, target, feedback, backend, k=k, uniform=uniform, **kw)
    want, g_want = run_binary(logits, target, feedback, "reference", k=k, uniform=uniform, **kw)
    assert_same_samples(logits, target, uniform, k, got.sample_index, want.sample_index)
    same = (got.sample_index == want.sample_index).reshape(-1)
    tol = STAT_TOL[logits.dtype]
    loss_rows = torch.nonzero(same).flatten()
    for a, b in ((got.loss, want.loss), (got.ce_loss, want.ce_loss), (got.cringe_loss, want.cringe_loss)):
        torch.testing.assert_close(a.reshape(-1)[loss_rows], b.reshape(-1)[loss_rows], equal_nan=True, **tol)
    if check_grad:
        V = logits.shape[-1]
        ga, gb = g_got.reshape(-1, V)[loss_rows], g_want.reshape(-1, V)[loss_rows]
        assert g_got.dtype == logits.dtype and g_got.shape == logits.shape
        torch.testing.assert_close(ga, gb, equal_nan=True, **GRAD_TOL[logits.dtype])
    return got, g_got


def compare_pairwise(chosen, chosen_t, rejected, rejected_t, backend, *, k=5, **kw):
    """Pairwise Cringe: kernel backend vs reference (loss details and both gradients)."""
    u = torch.rand(rejected_t.shape, generator=torch.Generator().manual_seed(2)).to(rejected.device)
    res = {}
    for b in (backend, "reference"):
        c = chosen.detach().clone().requires_grad_(True)
        r = rejected.detach().clone().requires_grad_(True)
        out = ck.pairwise_cringe_loss(c, chosen_t, r, rejected_t, k=k, uniform=u, backend=b, return_details=True,
                                      **kw)
        out.loss.sum().backward()
        res[b] = (out, c.grad, r.grad)
    (got, gc, gr), (want, wc, wr) = res[backend], res["reference"]
    assert_same_samples(rejected, rejected_t, u, k, got.sample_index, want.sample_index)
    if bool((got.sample_index == want.sample_index).all()):
        tol = STAT_TOL[chosen.dtype]
        for name in ("loss", "ce_loss", "cringe_loss", "gate", "margin", "logp_chosen", "logp_rejected"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **tol)
        torch.testing.assert_close(gc, wc, **GRAD_TOL[chosen.dtype])
        torch.testing.assert_close(gr, wr, **GRAD_TOL[chosen.dtype])


def compare_ties(backend, device, ks):
    """Logits in {0, 1, 2} (ties everywhere), so the draw must follow the column order, for each ``k``."""
    V = 64
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (5, 8, V), generator=g).float().to(device)
    y = random_target((5, 8), V, device)
    for k in ks:
        compare_binary(x, y, half_negative((5, 8), device), backend, k=k, ct_on_positives=True)


def check_nan_rows(backend, device):
    """One NaN logit in row ``[0, 2]`` and an all-NaN row ``[1, 0]``: those losses are
    NaN and every draw is still a valid non-target column.

    Returns
    -------
    (details, grad of logits) of :func:`run_binary`, for further checks.
    """
    V = 30
    x = random_logits((2, 4, V), torch.float32, device)
    x[0, 2, 7] = float("nan")
    x[1, 0, :] = float("nan")
    y = random_target((2, 4), V, device, ignore_frac=0.0)
    got, grad = run_binary(x, y, half_negative((2, 4), device), backend, k=5, ct_on_positives=True,
                           uniform=torch.rand(2, 4, device=device))
    assert math.isnan(got.loss[0, 2].item()) and math.isnan(got.loss[1, 0].item())
    s = got.sample_index
    assert bool(((s >= 0) & (s < V) & (s != y)).all())
    return got, grad


def random_logits(shape, dtype, device, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def random_target(shape, V, device, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed + 1)
    t = torch.randint(0, V, shape, generator=g)
    t[torch.rand(shape, generator=g) < ignore_frac] = -100
    return t.to(device)


def half_negative(shape, device):
    """Feedback: alternate positive / negative rows."""
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n) % 2 == 0).reshape(shape).to(device)


def nonfinite_rows(V, dtype=torch.float32, device="cpu"):
    """Rows of every non-finite shape the log-sum-exp must get right.

    Row 0: two +inf (lse +inf, not inf - inf = NaN); row 1: all -inf but one
    +inf; row 2: all -inf but two finite, in the last column; row 3: a NaN
    and a +inf (NaN wins); row 4: ordinary. The targets avoid the special
    columns.
    """
    g = torch.Generator().manual_seed(V)
    x = torch.randn(1, 5, V, generator=g, dtype=torch.float64).to(dtype)
    x[0, 0, [3, V - 2]] = float("inf")
    x[0, 1, :] = float("-inf")
    x[0, 1, 4] = float("inf")
    x[0, 2, :] = float("-inf")
    x[0, 2, [0, V - 1]] = torch.tensor([-300.0, 2.0], dtype=dtype)
    x[0, 3, 5] = float("nan")
    x[0, 3, 6] = float("inf")
    target = torch.tensor([1, 2, 1, 2, 1])
    return x.to(device), target.to(device), torch.rand(5, generator=g).to(device)


def adversarial_topk_rows(V, dtype=torch.float32, device="cpu"):
    """Rows that defeat a streaming top-k's shortcuts, with targets and uniforms.

    Row 0: all equal (every column ties, the column order decides); row 1:
    ascending (each column beats every earlier one, so a threshold must keep
    rising); row 2: descending; row 3: three distinct values in a repeating
    pattern (ties at the threshold); row 4: the best columns at the very end,
    and the target is the row's maximum; row 5: the best columns at the start.
    """
    g = torch.Generator().manual_seed(V + 1)
    ramp = torch.linspace(-4.0, 4.0, V, dtype=torch.float64)
    x = torch.randn(1, 6, V, generator=g, dtype=torch.float64)
    x[0, 0] = 0.5
    x[0, 1] = ramp
    x[0, 2] = ramp.flip(0)
    x[0, 3] = (torch.arange(V) % 3).double()
    x[0, 4, -8:] += 20.0
    x[0, 5, :8] += 20.0
    target = torch.tensor([V // 2, V - 1, 0, 1, V - 3, V - 1])
    x[0, 4, V - 3] = 40.0
    return x.to(dtype).to(device), target.to(device), torch.rand(6, generator=g).to(device)


def check_single_pass_completion(be, dtype, V, k, device="cpu", block_v=None, batch=2, seq=5):
    """The single pass at kernel level, against the same backend's two passes.

    ``be.forward_with_grad`` must give the statistics of ``be.forward`` (to
    rounding: another launch shape may sum in another order), and for the
    guessed, another and a zero ``grad_lse`` the completed gradient must be
    the two-pass gradient bit for bit. Rows (``batch * (seq - 1)``): ignored,
    a target out of range (left to the backward), strided logits.
    """
    from cringe_kernels.backends.base import stats_dtype

    n = batch * (seq - 1)
    x = random_logits((batch, seq, V), dtype, device, seed=V)[:, :-1]
    y = random_target((batch, seq - 1), V, device).reshape(-1)
    y[3] = V + 5  # out of range (value checks are the loss's; the kernels must cope)
    u = torch.rand(n, generator=torch.Generator().manual_seed(V)).to(device)
    sd = stats_dtype(dtype)
    g = torch.Generator().manual_seed(V)
    weight = torch.where(torch.rand(n, generator=g) < 0.5, 0.125, 0.0).to(sd).to(device)
    stats, grad = be.forward_with_grad(x, y, u, k, -100, weight)
    assert grad is not None, f"backend {be.name!r} has no single pass"
    ref = be.forward(x, y, u, k, -100)
    for name in ("lse", "target_logit", "sample_logit", "sample_index"):
        torch.testing.assert_close(getattr(stats, name), getattr(ref, name), rtol=2e-6, atol=1e-6, equal_nan=True)
    gt, gs = (torch.randn(n, generator=g).to(sd).to(device) for _ in range(2))
    other = torch.where(torch.arange(n) % 3 == 0, 0.5, 0.125).to(sd).to(device)
    for grad_lse in (weight, other, torch.zeros_like(weight)):
        got = be.backward_with_grad(grad.clone(), x, y, stats.sample_index, stats.lse, weight, grad_lse, gt, gs, -100)
        want = be.backward(x, y, stats.sample_index, stats.lse, grad_lse, gt, gs, -100, False)
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def launch_with(monkeypatch, pieces=None, shape=None) -> None:
    """Make the CUDA launchers (GPU and simulator) take these launch choices
    instead of :mod:`cringe_kernels.backends.heuristics`' for the rest of the
    test: ``pieces`` per row for every forward and backward, and ``shape``,
    ``(threads, blocks_per_sm, cache_bytes, staged)``, for every single pass."""
    from cringe_kernels.backends import heuristics

    if pieces is not None:
        monkeypatch.setattr(heuristics, "row_pieces", lambda n_rows, V, sm_count: pieces)
    if shape is not None:
        monkeypatch.setattr(heuristics, "single_pass_shape", lambda row_bytes: heuristics.SinglePassShape(*shape))
