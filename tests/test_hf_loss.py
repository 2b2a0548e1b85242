"""cringe_kernels.hf loss function, metrics store and layout-free draws."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from cringe_kernels import cringe_loss, pairwise_cringe_loss  # noqa: E402
from cringe_kernels.hf import make_compute_loss_func  # noqa: E402
from cringe_kernels.hf.draws import layout_free_uniform, step_key  # noqa: E402
from cringe_kernels.hf.metrics import MetricStore  # noqa: E402


def test_import_does_not_import_transformers():
    code = "import sys, cringe_kernels; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_binary_loss_func_matches_manual_shift():
    torch.manual_seed(0)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[0, :3] = -100
    labels[2, -2:] = -100
    feedback = torch.tensor([1, 0, 1])
    uniform = torch.rand(B, T)
    func = make_compute_loss_func(k=3, alpha=0.7, backend="reference")
    result = func.compute(logits, labels, 17, feedback=feedback, uniform=uniform)
    # The textbook alignment: drop the last logit, drop the first label.
    manual = cringe_loss(logits[:, :-1], labels[:, 1:], feedback[:, None], k=3, alpha=0.7, reduction="sum",
                         uniform=uniform[:, :-1], backend="reference") / 17
    torch.testing.assert_close(result.loss, manual)
    g1, = torch.autograd.grad(result.loss, logits)
    g2, = torch.autograd.grad(manual, logits)
    torch.testing.assert_close(g1, g2)
    assert g1[:, -1].abs().max() == 0  # the last position predicts nothing

    # Metrics as (sum, count): per positive token, per negative token, per sequence.
    target = labels[:, 1:]
    logp = torch.log_softmax(logits.detach()[:, :-1], -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    valid = target != -100
    logp = torch.where(valid, logp, 0.0)
    positive = valid & feedback[:, None].bool()
    ce_sum, n_pos = result.metrics["ce"]
    assert int(n_pos) == int(positive.sum())
    torch.testing.assert_close(ce_sum.float(), -(logp * positive).sum(), rtol=1e-5, atol=1e-5)
    chosen_sum, n_chosen = result.metrics["logps/chosen"]
    assert int(n_chosen) == 2
    torch.testing.assert_close(chosen_sum.float(), logp[[0, 2]].sum(), rtol=1e-5, atol=1e-5)
    rejected_sum, n_rejected = result.metrics["logps/rejected"]
    assert int(n_rejected) == 1
    torch.testing.assert_close(rejected_sum.float(), logp[1].sum(), rtol=1e-5, atol=1e-5)


def test_all_positive_is_hf_cross_entropy():
    torch.manual_seed(1)
    B, T, V = 2, 6, 9
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[1, :2] = -100
    func = make_compute_loss_func(backend="reference")
    # num_items_in_batch=None: the batch's own mean, as HF's causal LM loss.
    loss = func({"logits": logits}, labels, feedback=torch.ones(B))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    assert func.last_metrics["cringe"].isnan()  # no negative token: nothing to average


def test_pairwise_loss_func_matches_manual_shift():
    torch.manual_seed(2)
    B, T, V = 2, 6, 13
    logits = torch.randn(2 * B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (2 * B, T))
    labels[:, :2] = -100
    uniform = torch.rand(B, T)
    func = make_compute_loss_func(pairwise=True, k=4, margin=0.5, length_normalize=True, backend="reference")
    result = func.compute(logits, labels, 30, uniform=uniform)
    manual = pairwise_cringe_loss(logits[:B, :-1], labels[:B, 1:], logits[B:, :-1], labels[B:, 1:], k=4,
                                  margin=0.5, length_normalize=True, reduction="sum", uniform=uniform[:, :-1],
                                  backend="reference", return_details=True)
    torch.testing.assert_close(result.loss, manual.loss / 30)
    # logps/* are TRL's summed log-probabilities, whatever the gate uses.
    n_rows = (labels[:, 1:] != -100).sum(1)
    torch.testing.assert_close(result.metrics["logps/chosen"][0].float(), (manual.logp_chosen * n_rows[:B]).sum())
    torch.testing.assert_close(result.metrics["margins"][0].float(), manual.margin.sum())
    assert int(result.metrics["accuracies"][0]) == int((manual.margin > 0).sum())


def test_count_over_processes_keeps_the_upstream_gradient_one():
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    func = make_compute_loss_func(backend="reference")
    one = func.compute(logits, labels, 16, feedback=torch.ones(2)).loss
    two = func.compute(logits, labels, 16, feedback=torch.ones(2), num_processes=2).loss
    torch.testing.assert_close(two, 2 * one)


def test_wrong_use_is_a_clear_error():
    func = make_compute_loss_func(backend="reference")
    with pytest.raises(ValueError, match="feedback"):
        func({"logits": torch.randn(1, 3, 5)}, torch.tensor([[1, 2, 3]]))
    with pytest.raises(TypeError, match="reduction"):
        make_compute_loss_func(reduction="sum")
    with pytest.raises(ValueError, match="odd batch"):
        make_compute_loss_func(pairwise=True).compute(torch.randn(3, 4, 5), torch.zeros(3, 4, dtype=torch.long))


def test_metric_store_weights_by_counts_and_skips_empty_metrics():
    store = MetricStore(("ce", "cringe", "num_tokens"), totals=("num_tokens",))
    # Micro-batch 1: 10 positive tokens with CE sum 20, no negative token.
    store.add("train", {"ce": (torch.tensor(20.0), torch.tensor(10)), "cringe": (torch.tensor(0.0), torch.tensor(0)),
                        "num_tokens": (torch.tensor(12), 0)})
    # Micro-batch 2: 30 positive tokens with CE sum 30, 4 negatives with sum 2.
    store.add("train", {"ce": (torch.tensor(30.0), torch.tensor(30)), "cringe": (torch.tensor(2.0), torch.tensor(4)),
                        "num_tokens": (torch.tensor(40), 0)})
    assert store.reduce("train") == {"ce": 50 / 40, "cringe": 0.5, "num_tokens": 52}
    store.add("eval", {"ce": (torch.tensor(3.0), torch.tensor(2)), "cringe": (torch.tensor(0.0), torch.tensor(0))})
    assert store.reduce("eval") == {"ce": 1.5, "num_tokens": 0.0}
    assert store.reduce("train") == {"num_tokens": 0.0}  # cleared


def test_layout_free_draws():
    key = step_key(0, 3)
    rows = torch.tensor([5, 9, 2])
    wide = layout_free_uniform(rows, 40, key)
    narrow = layout_free_uniform(rows[1:2], 17, key)
    # The same example gets the same draws whatever its batch and padding.
    assert torch.equal(narrow[0], wide[1, :17])
    assert wide.dtype == torch.float32 and wide.min() >= 0 and wide.max() < 1
    assert not torch.equal(layout_free_uniform(rows, 40, step_key(0, 4)), wide)  # fresh draws each step
    assert not torch.equal(layout_free_uniform(rows, 40, step_key(1, 3)), wide)  # and each seed
    # Close to uniform: mean and deciles of many draws.
    many = layout_free_uniform(torch.arange(2000), 50, key).flatten()
    assert abs(many.mean().item() - 0.5) < 0.01
    counts = torch.histc(many, bins=10, min=0, max=1) / many.numel()
    assert (counts - 0.1).abs().max() < 0.01
