"""Property-based tests (hypothesis): every backend equals the reference on random inputs.

Shapes, leading strides (HF's ``logits[:, :-1]``), dtypes, ``k`` (including
``k >= V - 1``), feedback patterns, ignored rows, ``-inf`` masks and
reductions are drawn at random; the invariants are checked on each backend
that runs on this machine's CPU.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cringe_kernels as ck

from helpers import TOLERANCES, cpu_kernel_backends

BACKENDS = ["reference"] + cpu_kernel_backends()


@st.composite
def binary_cases(draw):
    B = draw(st.integers(0, 3))
    T = draw(st.integers(1, 5))
    V = draw(st.integers(2, 70))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(B, T + 1, V, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    if draw(st.booleans()):  # quantise so that ties are common
        full = full.round()
    if draw(st.booleans()):  # -inf masks, never on a target
        full[torch.rand(full.shape, generator=g) < 0.3] = float("-inf")
    strided = draw(st.booleans())
    logits = full.to(dtype)[:, :-1] if strided else full[:, :T].to(dtype).contiguous()
    target = torch.randint(0, V, (B, T), generator=g)
    rows = torch.arange(B)[:, None], torch.arange(T)[None, :]
    logits[rows[0], rows[1], target] = logits[rows[0], rows[1], target].nan_to_num(neginf=0.0)
    target[torch.rand(B, T, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = -100
    feedback = draw(st.sampled_from(["seq", "token", "all_pos", "all_neg"]))
    if feedback == "seq":
        fb = torch.randint(0, 2, (B, 1), generator=g)
    elif feedback == "token":
        fb = torch.randint(0, 2, (B, T), generator=g).bool()
    else:
        fb = torch.tensor(feedback == "all_pos")
    uniform = torch.rand(B, T, generator=g)
    kw = dict(
        k=draw(st.sampled_from([1, 2, 3, 5, 8, 64])),
        alpha=draw(st.sampled_from([0.5, 1.0])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        ct_on_positives=draw(st.booleans()),
        detach_positives=draw(st.booleans()),
        single_pass=draw(st.booleans()),  # the single pass, where a backend has one
    )
    return logits, target, fb, uniform, kw


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=binary_cases(), upstream=st.sampled_from([1.0, 0.5]))
def test_binary_backend_equals_reference(backend, case, upstream):
    # upstream 0.5: the single pass's guess of d loss / d lse is then wrong on
    # every weighted row, and the backward must still be exact.
    logits, target, fb, uniform, kw = case
    x = logits.detach().clone().requires_grad_(True)
    out = ck.cringe_loss(x, target, fb, uniform=uniform, backend=backend, return_details=True, **kw)
    ref_x = logits.detach().clone().requires_grad_(True)
    ref = ck.cringe_loss(ref_x, target, fb, uniform=uniform, backend="reference", return_details=True, **kw)
    assert torch.equal(out.sample_index, ref.sample_index)
    tol = TOLERANCES[logits.dtype]
    torch.testing.assert_close(out.loss, ref.loss, equal_nan=True, **TOLERANCES[torch.float32])
    valid = target != -100
    sampled = out.sample_index >= 0
    assert torch.all(out.sample_index[sampled] != target[sampled])
    assert not torch.any(sampled & ~valid)
    assert torch.all(out.loss.detach()[~valid] == 0) if kw["reduction"] == "none" else True
    # masked columns are never sampled while a finite candidate exists
    if sampled.any():
        picked = logits.detach().float()[sampled].gather(1, out.sample_index[sampled][:, None]).squeeze(1)
        masked = logits.detach().float()[sampled].clone()
        masked[torch.arange(masked.shape[0]), target[sampled]] = float("-inf")
        has_finite = torch.isfinite(masked).any(dim=1)
        assert torch.all(torch.isfinite(picked) | ~has_finite)
    if torch.isfinite(ref.loss).all() and x.numel():
        g, = torch.autograd.grad(out.loss.sum() * upstream, x)
        gr, = torch.autograd.grad(ref.loss.sum() * upstream, ref_x)
        torch.testing.assert_close(g.float(), gr.float(), **tol)
        assert torch.all(g[~valid] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=binary_cases(), margin=st.sampled_from([-1.0, 0.0, 2.0]), temperature=st.sampled_from([0.5, 1.0]),
       length_normalize=st.booleans(), gate_grad=st.booleans())
def test_pairwise_backend_equals_reference(backend, case, margin, temperature, length_normalize, gate_grad):
    logits, target, _, uniform, kw = case
    if logits.shape[0] == 0:
        return
    kw = dict(k=kw["k"], alpha=kw["alpha"], reduction=kw["reduction"], margin=margin, temperature=temperature,
              length_normalize=length_normalize, gate_grad=gate_grad,
              single_pass=kw["single_pass"] and not gate_grad)
    chosen = logits.flip(1).detach().clone()
    out = ck.pairwise_cringe_loss(chosen, target.flip(1), logits, target, uniform=uniform, backend=backend,
                                  return_details=True, **kw)
    ref = ck.pairwise_cringe_loss(chosen, target.flip(1), logits, target, uniform=uniform, backend="reference",
                                  return_details=True, **kw)
    assert torch.equal(out.sample_index, ref.sample_index)
    # The margin is a difference of sums of log-probabilities (equal sums here,
    # since chosen mirrors rejected), so its error scales with the sums, not
    # with the margin; the gate and losses inherit it.
    scale = torch.cat([ref.logp_chosen, ref.logp_rejected]).abs().nan_to_num(0).max().item()
    tol = TOLERANCES[torch.float32]
    for a, b in zip(out, ref):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, equal_nan=True, rtol=tol["rtol"], atol=tol["atol"] + tol["rtol"] * scale)


@given(case=binary_cases())
def test_reductions_agree(case):
    logits, target, fb, uniform, kw = case
    kw = {k: v for k, v in kw.items() if k not in ("reduction", "single_pass")}
    none = ck.cringe_loss(logits, target, fb, uniform=uniform, reduction="none", **kw)
    total = ck.cringe_loss(logits, target, fb, uniform=uniform, reduction="sum", **kw)
    mean = ck.cringe_loss(logits, target, fb, uniform=uniform, reduction="mean", **kw)
    torch.testing.assert_close(total, none.sum(), equal_nan=True)
    count = max(int((target != -100).sum()), 1)
    torch.testing.assert_close(mean, total / count, equal_nan=True)
    assert torch.all((none >= 0) | torch.isnan(none))
