"""The row-statistics primitive (autograd.Function) and gradcheck of everything in float64.

Parametrised over every primitive backend that runs on this machine's CPU,
so the kernel backends inherit these checks when they land.
"""

import pytest
import torch

import cringe_kernels as ck
from cringe_kernels import autograd, backends, reference

from helpers import cpu_kernel_backends, random_case
from kernel_checks import nonfinite_rows

KERNELS = cpu_kernel_backends()


def gradcheck(fn, inputs, backend):
    """Full gradcheck, or its random-projection fast mode under Triton's interpreter.

    The full check costs one forward per input element, about a minute per
    case for interpreted Triton kernels; fast mode compares the Jacobian
    along random directions (a few forwards) and still catches a wrong
    coefficient. test_triton_backend.py runs a full check on a small case.
    """
    return torch.autograd.gradcheck(fn, inputs, fast_mode=backend == "triton")


def stats_inputs(B=2, T=5, V=13, seed=0, dtype=torch.float64):
    logits, target, _, u = random_case(B, T, V, dtype=dtype, seed=seed)
    return logits, target.reshape(-1), u.reshape(-1)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("k", [0, 1, 4, 12, 30])
def test_forward_matches_reference_row_stats(name, k):
    logits, target, u = stats_inputs(seed=k)
    backend = backends.resolve(name, logits)
    got = backend.forward(logits, target, u if k else None, k, -100)
    want = reference.row_stats(logits, target, u if k else None, k, -100)
    assert torch.equal(got.sample_index, want.sample_index)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b)
    assert got.lse.dtype == torch.float64 and got.sample_index.dtype == torch.long


@pytest.mark.parametrize("name", KERNELS)
def test_primitive_gradcheck(name):
    logits, target, u = stats_inputs(seed=1)
    logits.requires_grad_(True)
    backend = backends.resolve(name, logits)
    weights = torch.randn(3, target.shape[0], dtype=torch.float64)

    def f(x):
        st = autograd.row_stats(x, target, u, 3, -100, backend)
        return (weights[0] * st.lse + weights[1] * st.target_logit + weights[2] * st.sample_logit).sum()

    assert gradcheck(f, (logits,), name)


@pytest.mark.parametrize("name", KERNELS)
def test_primitive_with_unused_outputs(name):
    # autograd passes None for outputs that do not reach the loss
    logits, target, u = stats_inputs(seed=2)
    logits.requires_grad_(True)
    backend = backends.resolve(name, logits)
    st = autograd.row_stats(logits, target, u, 3, -100, backend)
    g, = torch.autograd.grad(st.lse.sum(), logits)
    valid = (target != -100).reshape(2, 5, 1)
    torch.testing.assert_close(g, torch.where(valid, torch.softmax(logits.detach(), -1), 0.0))


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("ct_on_positives", [False, True])
def test_binary_gradcheck(backend, ct_on_positives):
    # detach_positives=True is not the derivative of the loss by design;
    # its gradient is checked against the analytic one in test_reference.py.
    logits, target, feedback, u = random_case(3, 4, 11, dtype=torch.float64, seed=3)
    logits.requires_grad_(True)

    def f(x):
        return ck.cringe_loss(x, target, feedback, k=3, alpha=0.7, uniform=u, backend=backend,
                              ct_on_positives=ct_on_positives)

    assert gradcheck(f, (logits,), backend)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
def test_pairwise_gradcheck(backend):
    # gate_grad=False holds the gate constant on purpose, so only gate_grad=True
    # is the loss's derivative; the other is checked in test_pairwise.py.
    chosen, tw, _, _ = random_case(2, 3, 9, dtype=torch.float64, seed=4)
    rejected, tl, _, u = random_case(2, 4, 9, dtype=torch.float64, seed=5)
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)

    def f(c, r):
        return ck.pairwise_cringe_loss(c, tw, r, tl, k=2, margin=0.3, temperature=0.7, gate_grad=True,
                                       length_normalize=True, uniform=u, backend=backend)

    assert gradcheck(f, (chosen, rejected), backend)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inplace_backward_equals_out_of_place(name, dtype):
    logits, target, feedback, u = random_case(3, 5, 17, dtype=dtype, seed=6)
    base = logits.clone().requires_grad_(True)
    loss = ck.cringe_loss(base, target, feedback, uniform=u, backend=name)
    g, = torch.autograd.grad(loss, base)

    scratch = logits.clone().requires_grad_(True)
    holder = scratch * 1  # a non-leaf the kernel may overwrite, as a model's output would be
    loss_inplace = ck.cringe_loss(holder, target, feedback, uniform=u, backend=name, inplace_backward=True)
    g_inplace, = torch.autograd.grad(loss_inplace, scratch)
    torch.testing.assert_close(loss_inplace, loss)
    torch.testing.assert_close(g_inplace, g)
    # the gradient was written over the logits' memory
    torch.testing.assert_close(holder.detach(), g)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("V", [9, 100, 5000])
def test_nonfinite_rows_match_reference(name, V):
    x, target, u = nonfinite_rows(V)
    backend = backends.resolve(name, x)
    for block_v in ((None, 8) if name == "triton" else (None,)):
        if block_v:
            from cringe_kernels.backends.triton_backend import TritonRowStats

            backend = TritonRowStats(block_v=block_v)
        got = backend.forward(x, target, u, 3, -100)
        want = reference.row_stats(x, target, u, 3, -100)
        torch.testing.assert_close(got.lse, want.lse, equal_nan=True)
        assert torch.equal(got.sample_index, want.sample_index)
