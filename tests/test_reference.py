"""The reference against independent definitions: F.cross_entropy, ParlAI's rule, the sampling law."""

import math

import pytest
import torch
import torch.nn.functional as F

import cringe_kernels as ck
from cringe_kernels import reference

from helpers import random_case


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_positives_equal_cross_entropy(reduction, dtype):
    logits, target, _, _ = random_case(3, 9, 37, dtype=dtype, seed=1)
    logits.requires_grad_(True)
    loss = ck.cringe_loss(logits, target, True, reduction=reduction, backend="reference")
    expected = F.cross_entropy(logits.float().reshape(-1, 37), target.reshape(-1), ignore_index=-100,
                               reduction=reduction)
    if reduction == "none":
        expected = expected.reshape(3, 9)
    torch.testing.assert_close(loss.float(), expected, rtol=1e-5, atol=1e-6)
    g, = torch.autograd.grad(loss.sum(), logits)
    x = logits.detach().float().requires_grad_(True)
    ge, = torch.autograd.grad(F.cross_entropy(x.reshape(-1, 37), target.reshape(-1), reduction=reduction).sum(), x)
    torch.testing.assert_close(g.float(), ge, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)


def test_custom_ignore_index_equals_cross_entropy():
    logits, target, _, _ = random_case(2, 5, 11, seed=2)
    target[target == -100] = 7  # a legal column used as ignore_index
    loss = ck.cringe_loss(logits, target, 1, ignore_index=7, backend="reference")
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), ignore_index=7))


def parlai_k_rule(x, y, k):
    """Transcription of ParlAI's ContrastiveCrossEntropyLoss candidate rule.

    Top-(k+1) logits; drop the target if it is among them, else drop the last;
    the remaining k are the candidates (in topk order). Returns their values
    and columns, ``[n, k]``.
    """
    vals, idx = x.topk(k + 1, dim=-1)
    drop = idx == y[:, None]
    drop[~drop.any(dim=1), -1] = True
    keep = ~drop
    return vals[keep].view(-1, k), idx[keep].view(-1, k)


def test_k1_negatives_equal_parlai_rule():
    torch.manual_seed(3)
    n, V = 64, 50
    x = torch.randn(n, V, dtype=torch.float64)  # distinct values: topk order is unambiguous
    y = torch.randint(0, V, (n,))
    y[::3] = x.argmax(dim=1)[::3]  # the target is sometimes the top logit
    out = ck.cringe_loss(x, y, 0, k=1, reduction="none", backend="reference", return_details=True)
    cand_vals, cand_idx = parlai_k_rule(x, y, 1)
    assert torch.equal(out.sample_index, cand_idx[:, 0])
    t = x.gather(1, y[:, None])
    # ParlAI's contrast: cross-entropy over [sampled, target] with the sampled
    # logit as the class: -log(e^{x+} / (e^{x+} + e^{t})).
    pair = torch.cat([cand_vals, t], dim=1)
    expected = F.cross_entropy(pair, torch.zeros(n, dtype=torch.long), reduction="none")
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("k", [3, 8])
def test_candidates_equal_parlai_candidate_set(k):
    torch.manual_seed(4)
    x = torch.randn(40, 30, dtype=torch.float64)
    y = torch.randint(0, 30, (40,))
    y[::2] = x.topk(k + 1).indices[::2, k // 2]
    ours = reference.top_candidates(x, y, k)
    _, theirs = parlai_k_rule(x, y, k)
    assert torch.equal(ours, theirs)


# Upper 1e-6 quantile of the standard normal: each frequency test below fails
# by chance with probability about 1e-6 (inputs are seeded, so a given
# version of the code either passes or fails deterministically).
Z_1E6 = 4.753


def chi2_critical(df, z=Z_1E6):
    """Wilson-Hilferty approximation of the chi-square upper quantile."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize("k", [2, 5, 12])
def test_sampling_frequencies_match_topk_softmax(k):
    g = torch.Generator().manual_seed(10 + k)
    V, draws = 40, 20000
    row = torch.randn(V, generator=g, dtype=torch.float64)
    y = int(row.argsort()[V // 2])
    x = row.expand(draws, V)
    target = torch.full((draws,), y)
    out = ck.cringe_loss(x, target, 0, k=k, reduction="none", backend="reference", return_details=True, generator=g)
    cols = reference.top_candidates(row[None], torch.tensor([y]), k)[0]
    p = torch.softmax(row[cols], dim=0)
    counts = torch.stack([(out.sample_index == c).sum() for c in cols]).double()
    assert counts.sum() == draws  # nothing outside the top-k is ever drawn
    stat = ((counts - draws * p) ** 2 / (draws * p)).sum().item()
    assert stat < chi2_critical(k - 1), (stat, counts, draws * p)


def test_ties_order_by_lower_column():
    x = torch.ones(1, 6)
    y = torch.tensor([2])
    assert reference.top_candidates(x, y, 3).tolist() == [[0, 1, 3]]
    x = torch.tensor([[0.0, 2.0, 1.0, 2.0, 2.0, 1.0]])
    assert reference.top_candidates(x, torch.tensor([3]), 4).tolist() == [[1, 4, 2, 5]]
    # equal probabilities: the draw splits [0, 1) evenly in candidate order
    u = torch.tensor([0.1, 0.4, 0.6, 0.99])
    xs = torch.ones(4, 5)
    s = reference.sample_columns(xs, torch.zeros(4, dtype=torch.long), u, 3)
    assert s.tolist() == [1, 2, 2, 3]


def test_draw_boundaries_and_rounding_fallback():
    vals = torch.tensor([[0.0, 0.0, -float("inf")]] * 3)
    # q = [0.5, 0.5, 0]: u = 0.5 is not < 0.5, so the second candidate
    assert reference.inverse_cdf(vals, torch.tensor([0.0, 0.5, 0.9999999])).tolist() == [0, 1, 1]
    # cumsum rounding below u falls back to the last candidate of positive weight, never a -inf one
    # (float32: these q sum to 0.99999988 < 1 - 2**-24)
    w = torch.tensor([[1.5, -0.25, -0.375, -0.5, -float("inf")]])
    assert reference.inverse_cdf(w, torch.tensor([1.0 - 2**-24])).tolist() == [3]


def test_minus_inf_masks_are_never_sampled():
    inf = float("inf")
    x = torch.tensor([[0.0, -inf, -inf, 2.0, -inf, -inf]] * 200)
    target = torch.full((200,), 3)
    out = ck.cringe_loss(x, target, 0, k=4, reduction="none", backend="reference", return_details=True,
                         generator=torch.Generator().manual_seed(0))
    assert (out.sample_index == 0).all()
    assert torch.isfinite(out.loss).all()
    # no finite candidate at all: the first candidate (lowest column), loss is +inf
    x = torch.tensor([[-inf, -inf, 5.0]])
    out = ck.cringe_loss(x, torch.tensor([2]), 0, k=2, backend="reference", return_details=True)
    assert out.sample_index.tolist() == [0] and out.loss.item() == inf


@pytest.mark.parametrize("k", [4, 5, 50])
def test_k_at_least_v_minus_one_uses_every_other_column(k):
    torch.manual_seed(5)
    x = torch.randn(300, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (300,))
    out = ck.cringe_loss(x, y, 0, k=k, reduction="none", backend="reference", return_details=True)
    assert (out.sample_index != y).all()
    assert set(out.sample_index.tolist()) == set(range(5))


def test_negative_loss_formula_and_parts():
    torch.manual_seed(6)
    x = torch.randn(4, 6, 13, dtype=torch.float64)
    y = torch.randint(0, 13, (4, 6))
    fb = torch.tensor([[1], [0], [1], [0]])
    u = torch.rand(4, 6)
    out = ck.cringe_loss(x, y, fb, alpha=0.7, reduction="none", uniform=u, backend="reference",
                         return_details=True)
    lse = x.logsumexp(-1)
    t = x.gather(-1, y[..., None]).squeeze(-1)
    xs = x.gather(-1, out.sample_index.clamp(min=0)[..., None]).squeeze(-1)
    pos = fb.bool().expand(4, 6)
    expected = torch.where(pos, lse - t, 0.7 * F.softplus(t - xs))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.loss, out.ce_loss + 0.7 * out.cringe_loss)
    assert (out.sample_index[pos] == -1).all() and (out.sample_index[~pos] >= 0).all()
    on = ck.cringe_loss(x, y, fb, alpha=0.7, reduction="none", uniform=u, backend="reference",
                        ct_on_positives=True, return_details=True)
    xs_on = x.gather(-1, on.sample_index[..., None]).squeeze(-1)
    torch.testing.assert_close(on.loss, torch.where(pos, lse - t + 0.7 * F.softplus(xs_on - t), expected))


def test_detach_positives_stops_gradient_into_sampled_column():
    torch.manual_seed(7)
    x = torch.randn(8, 9, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 9, (8,))
    u = torch.rand(8)
    out = ck.cringe_loss(x, y, 0, uniform=u, detach_positives=True, backend="reference", return_details=True)
    g, = torch.autograd.grad(out.loss, x)
    p = torch.softmax(x.detach(), -1)
    coef = torch.sigmoid(x.detach().gather(1, y[:, None]) - x.detach().gather(1, out.sample_index[:, None])) / 8
    expected = torch.zeros_like(g).scatter_(1, y[:, None], coef)  # only the target column moves
    torch.testing.assert_close(g, expected)
    assert p.shape == g.shape


def test_reference_runs_in_chunks_for_large_rows():
    # more than one chunk of _CHUNK_ELEMENTS: rows processed in pieces give the same samples
    torch.manual_seed(8)
    V = 70001
    x = torch.randn(70, V)
    y = torch.randint(0, V, (70,))
    u = torch.rand(70)
    whole = reference.sample_columns(x, y, u, 5)
    parts = torch.cat([reference.sample_columns(x[i:i + 1], y[i:i + 1], u[i:i + 1], 5) for i in range(70)])
    assert torch.equal(whole, parts)
