"""Pairwise Cringe loss: reduction to the binary loss, the gate, length normalisation."""

import pytest
import torch
import torch.nn.functional as F

import cringe_kernels as ck

from helpers import cpu_kernel_backends, random_case

BACKENDS = ["reference"] + cpu_kernel_backends()


def pair_case(seed=0, B=3, Tw=5, Tl=7, V=19, dtype=torch.float64):
    chosen, tw, _, _ = random_case(B, Tw, V, dtype=dtype, seed=seed)
    rejected, tl, _, u = random_case(B, Tl, V, dtype=dtype, seed=seed + 100)
    return chosen, tw, rejected, tl, u


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gate_one_equals_binary_on_concatenation(backend, reduction):
    chosen, tw, rejected, tl, u = pair_case(1)
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    # margin far above any gap: the gate is exactly 1.0
    out = ck.pairwise_cringe_loss(chosen, tw, rejected, tl, margin=1e4, alpha=0.6, reduction=reduction, uniform=u,
                                  backend=backend, return_details=True)
    assert torch.all(out.gate == 1)
    logits = torch.cat([chosen, rejected], dim=1)
    target = torch.cat([tw, tl], dim=1)
    feedback = torch.cat([torch.ones_like(tw), torch.zeros_like(tl)], dim=1)
    u_cat = torch.cat([torch.zeros(tw.shape), u], dim=1)
    binary = ck.cringe_loss(logits, target, feedback, alpha=0.6, uniform=u_cat, backend=backend,
                            reduction="none" if reduction == "none" else reduction, return_details=True)
    expected = binary.loss.sum(dim=1) if reduction == "none" else binary.loss
    torch.testing.assert_close(out.loss, expected)
    assert torch.equal(out.sample_index, binary.sample_index[:, tw.shape[1]:])
    g = torch.autograd.grad(out.loss.sum(), (chosen, rejected))
    ge = torch.autograd.grad(expected.sum(), (chosen, rejected))
    for a, b in zip(g, ge):
        torch.testing.assert_close(a, b)


def manual_pairwise(chosen, tw, rejected, tl, sample_index, *, alpha, margin, temperature, length_normalize,
                    gate_grad=True):
    """docs/spec.md section 3 written out per pair."""
    valid_w, valid_l = tw != -100, tl != -100
    lpw = torch.where(valid_w, chosen.log_softmax(-1).gather(-1, tw.clamp(min=0)[..., None]).squeeze(-1), 0)
    lpl = torch.where(valid_l, rejected.log_softmax(-1).gather(-1, tl.clamp(min=0)[..., None]).squeeze(-1), 0)
    LPw, LPl = lpw.sum(1), lpl.sum(1)
    if length_normalize:
        LPw, LPl = LPw / valid_w.sum(1).clamp(min=1), LPl / valid_l.sum(1).clamp(min=1)
    gate = torch.sigmoid((margin - (LPw - LPl)) / temperature)
    if not gate_grad:
        gate = gate.detach()
    t = rejected.gather(-1, tl.clamp(min=0)[..., None]).squeeze(-1)
    xs = rejected.gather(-1, sample_index.clamp(min=0)[..., None]).squeeze(-1)
    CR = torch.where(valid_l, F.softplus(t - xs), 0).sum(1)
    CE = -lpw.sum(1)
    return CE + alpha * gate * CR, gate, LPw, LPl


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length_normalize", [False, True])
@pytest.mark.parametrize("gate_grad", [False, True])
def test_gate_and_length_normalize_match_spec(backend, length_normalize, gate_grad):
    chosen, tw, rejected, tl, u = pair_case(2)
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    kw = dict(alpha=0.8, margin=0.5, temperature=2.0)
    out = ck.pairwise_cringe_loss(chosen, tw, rejected, tl, length_normalize=length_normalize, gate_grad=gate_grad,
                                  reduction="none", uniform=u, backend=backend, return_details=True, **kw)
    L, gate, LPw, LPl = manual_pairwise(chosen, tw, rejected, tl, out.sample_index,
                                        length_normalize=length_normalize, **kw)
    torch.testing.assert_close(out.loss, L)
    torch.testing.assert_close(out.gate, gate)
    torch.testing.assert_close(out.logp_chosen, LPw)
    torch.testing.assert_close(out.logp_rejected, LPl)
    torch.testing.assert_close(out.margin, LPw - LPl)
    torch.testing.assert_close(out.loss, out.ce_loss + 0.8 * out.cringe_loss)
    g = torch.autograd.grad(out.loss.sum(), (chosen, rejected))
    expected = manual_pairwise(chosen, tw, rejected, tl, out.sample_index, length_normalize=length_normalize,
                               gate_grad=gate_grad, **kw)[0]
    ge = torch.autograd.grad(expected.sum(), (chosen, rejected))
    for a, b in zip(g, ge):
        torch.testing.assert_close(a, b)


def test_gate_grad_changes_the_chosen_gradient():
    chosen, tw, rejected, tl, u = pair_case(3)
    chosen.requires_grad_(True)
    grads = []
    for gate_grad in (False, True):
        loss = ck.pairwise_cringe_loss(chosen, tw, rejected, tl, gate_grad=gate_grad, uniform=u,
                                       backend="reference")
        grads.append(torch.autograd.grad(loss, chosen)[0])
    assert not torch.allclose(grads[0], grads[1])


def test_mean_divides_by_all_non_ignored_rows():
    chosen, tw, rejected, tl, u = pair_case(4)
    total = ck.pairwise_cringe_loss(chosen, tw, rejected, tl, uniform=u, reduction="sum", backend="reference")
    mean = ck.pairwise_cringe_loss(chosen, tw, rejected, tl, uniform=u, backend="reference")
    count = (tw != -100).sum() + (tl != -100).sum()
    torch.testing.assert_close(mean, total / count)
    mean_n = ck.pairwise_cringe_loss(chosen, tw, rejected, tl, uniform=u, backend="reference", num_items_in_batch=50)
    torch.testing.assert_close(mean_n, total / 50)


def test_pairwise_module_equals_function():
    chosen, tw, rejected, tl, u = pair_case(5)
    module = ck.PairwiseCringeLoss(k=3, alpha=0.5, margin=1.0, temperature=0.5, backend="reference")
    torch.testing.assert_close(
        module(chosen, tw, rejected, tl, uniform=u),
        ck.pairwise_cringe_loss(chosen, tw, rejected, tl, k=3, alpha=0.5, margin=1.0, temperature=0.5,
                                uniform=u, backend="reference"),
    )
    assert "margin=1.0" in repr(module)


@pytest.mark.parametrize("backend", cpu_kernel_backends())
@pytest.mark.parametrize("reduction,upstream", [("mean", 1.0), ("sum", 1.0), ("none", 1.0), ("mean", 0.5)])
def test_single_pass_is_the_two_pass_loss(backend, reduction, upstream):
    # With the gate constant, d loss / d lse is the reduction weight on chosen
    # rows and 0 on rejected ones, known before the statistics.
    g = torch.Generator().manual_seed(1)
    chosen = torch.randn(3, 6, 37, generator=g)
    rejected = torch.randn(3, 5, 37, generator=g)
    tw, tl = torch.randint(0, 37, (3, 6), generator=g), torch.randint(0, 37, (3, 5), generator=g)
    tw[0, :2] = -100
    u = torch.rand(3, 5, generator=g)
    out = []
    for single in (False, True):
        xw, xl = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
        loss = ck.pairwise_cringe_loss(xw, tw, xl, tl, uniform=u, backend=backend, reduction=reduction,
                                       margin=1.0, single_pass=single)
        (loss.sum() * upstream).backward()
        out.append((loss.detach(), xw.grad, xl.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)


def test_single_pass_needs_a_constant_gate():
    x = torch.randn(1, 2, 9)
    t = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="gate_grad"):
        ck.pairwise_cringe_loss(x, t, x, t, gate_grad=True, single_pass=True)
    with pytest.raises(ValueError, match="inplace_backward"):
        ck.pairwise_cringe_loss(x, t, x, t, inplace_backward=True, single_pass=True)
