"""The path from a loss call to the kernels: autograd safety, no host wait,
compile-safe resolution, and the single pass's one name and its scale."""

import subprocess
import sys
import warnings

import pytest
import torch

import cringe_kernels as ck
from cringe_kernels import autograd, backends

from helpers import cpu_kernel_backends, random_case

KERNELS = [b for b in cpu_kernel_backends() if b != "triton"]  # triton: interpreter, slow; covered elsewhere
SINGLE_PASS = [b for b in KERNELS if backends.resolve(b, torch.zeros(1, 2)).single_pass]


@pytest.fixture
def fresh_miss_warning(monkeypatch):
    """The single pass's miss warning, reset (it warns once a process)."""
    monkeypatch.setattr(autograd, "single_pass_misses", autograd._SinglePassMisses())


@pytest.mark.parametrize("backend", KERNELS)
def test_inplace_backward_misuse_raises_torchs_inplace_error(backend):
    # The logits are saved by another op (sin) and then overwritten by the
    # in-place backward: torch must refuse, not return a wrong gradient.
    logits, target, feedback, u = random_case(2, 3, 17, seed=1)
    leaf = logits.clone().requires_grad_(True)
    x = leaf * 1.0
    other = x.sin().sum()
    loss = ck.cringe_loss(x, target, feedback, uniform=u, backend=backend, inplace_backward=True) + other
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", KERNELS)
def test_inplace_backward_refuses_overlapping_logits(backend):
    row = torch.randn(1, 1, 11)
    logits = row.expand(2, 3, 11).requires_grad_(False).clone().requires_grad_(True)[:, :, :]
    overlapping = torch.randn(1, 1, 11, requires_grad=True).expand(2, 3, 11)
    target = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="logits has elements that share memory"):
        ck.cringe_loss(overlapping, target, 0, backend=backend, inplace_backward=True)
    ck.cringe_loss(logits, target, 0, backend=backend, inplace_backward=True).backward()  # a real copy is fine


@pytest.mark.parametrize("backend", KERNELS)
def test_backward_is_once_differentiable(backend):
    logits, target, feedback, u = random_case(1, 4, 13, seed=2)
    x = logits.clone().requires_grad_(True)
    scale = torch.tensor(2.0, requires_grad=True)  # so the upstream gradient has a graph
    loss = ck.cringe_loss(x, target, feedback, uniform=u, backend=backend, single_pass=False) * scale
    g, = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("backend", SINGLE_PASS)
def test_no_gradient_is_written_where_none_is_asked_for(backend, monkeypatch):
    calls = []
    chosen = backends.resolve(backend, torch.zeros(1, 2))
    original = type(chosen).forward_with_grad

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(type(chosen), "forward_with_grad", spy)
    logits, target, feedback, u = random_case(2, 3, 19, seed=3)
    with torch.no_grad():
        ck.cringe_loss(logits.clone().requires_grad_(True), target, feedback, uniform=u, backend=backend,
                       single_pass=True)
    ck.cringe_loss(logits, target, feedback, uniform=u, backend=backend, single_pass=True)  # no requires_grad
    assert calls == []
    ck.cringe_loss(logits.clone().requires_grad_(True), target, feedback, uniform=u, backend=backend)
    assert calls == [1], "single_pass=None takes the single pass where a gradient will be needed"


@pytest.mark.parametrize("backend", SINGLE_PASS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
def test_grad_scale_keeps_the_completion_to_two_columns(backend, reduction, scale, fresh_miss_warning, monkeypatch):
    # The completion rewrites a row in full only where the upstream d loss /
    # d lse differs from the forward's guess; with grad_scale equal to the
    # upstream gradient no row differs, and nothing warns.
    guesses = []
    chosen = backends.resolve(backend, torch.zeros(1, 2))
    original = type(chosen).backward_with_grad

    def spy(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, *rest):
        guesses.append(torch.equal(lse_weight, grad_lse))
        return original(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, *rest)

    monkeypatch.setattr(type(chosen), "backward_with_grad", spy)
    logits, target, feedback, u = random_case(3, 5, 23, seed=4)
    x = logits.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = ck.cringe_loss(x, target, feedback, uniform=u, backend=backend, reduction=reduction, grad_scale=scale)
        (loss * scale).sum().backward()
    assert guesses == [True]
    expected = logits.clone().requires_grad_(True)
    (ck.cringe_loss(expected, target, feedback, uniform=u, backend="reference", reduction=reduction)
     * scale).sum().backward()
    torch.testing.assert_close(x.grad, expected.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", SINGLE_PASS)
def test_a_missed_scale_is_exact_and_warns_once(backend, fresh_miss_warning):
    logits, target, feedback, u = random_case(2, 4, 29, seed=5)
    for _ in range(2):
        x = logits.clone().requires_grad_(True)
        loss = ck.cringe_loss(x, target, feedback, uniform=u, backend=backend)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (loss / 4).backward()
        expected = logits.clone().requires_grad_(True)
        (ck.cringe_loss(expected, target, feedback, uniform=u, backend="reference") / 4).backward()
        torch.testing.assert_close(x.grad, expected.grad, rtol=1e-5, atol=1e-8)
        if _ == 0:
            assert any("grad_scale" in str(w.message) for w in caught)
        else:
            assert not caught, "the miss warns once"


@pytest.mark.parametrize("backend", SINGLE_PASS)
def test_pairwise_grad_scale(backend, fresh_miss_warning):
    torch.manual_seed(6)
    cw, rw = torch.randn(2, 3, 21), torch.randn(2, 4, 21)
    yw, yl = torch.randint(0, 21, (2, 3)), torch.randint(0, 21, (2, 4))
    yl[0, -1] = -100
    u = torch.rand(2, 4)
    grads = []
    for b in (backend, "reference"):
        c, r = cw.clone().requires_grad_(True), rw.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = ck.pairwise_cringe_loss(c, yw, r, yl, uniform=u, backend=b, grad_scale=0.5, margin=0.5)
            (loss * 0.5).backward()
        grads.append((c.grad, r.grad))
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


def test_resolution_is_cached_and_never_traced():
    # A fresh process: the first resolution happens while Dynamo traces a
    # fullgraph step, with a status() that Dynamo cannot trace (a graph
    # break is an error under fullgraph=True, and nothing when run eagerly).
    code = """
import torch, cringe_kernels as ck
from cringe_kernels.backends import cpu_backend
original = cpu_backend.CpuRowStats.status
calls = []
def status(self):
    torch._dynamo.graph_break()
    calls.append(1)
    return original(self)
cpu_backend.CpuRowStats.status = status
torch.manual_seed(0)
head = torch.nn.Linear(16, 50)
h = torch.randn(2, 8, 16)
y = torch.randint(0, 50, (2, 8))
u = torch.rand(2, 8)
def step(h):
    return ck.cringe_loss(head(h), y, torch.tensor([[1], [0]]), uniform=u, backend="auto")
loss = torch.compile(step, fullgraph=True, backend="aot_eager")(h)
loss.backward()
grad = head.weight.grad.clone()
head.weight.grad = None
ref = ck.cringe_loss(head(h), y, torch.tensor([[1], [0]]), uniform=u, backend="reference")
ref.backward()
assert torch.allclose(loss, ref), (loss, ref)
assert torch.allclose(grad, head.weight.grad, atol=1e-6), (grad - head.weight.grad).abs().max()
from cringe_kernels import backends
assert backends._resolved and calls, "resolved eagerly, and cached"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_value_checks_raise_on_cpu_in_every_mode_but_off():
    logits, target, feedback, _ = random_case(1, 3, 7)
    bad = target.clone()
    bad[0, 1] = 7
    for mode in ("on", "strict", True):
        with ck.value_checks(mode):
            with pytest.raises(ValueError, match=r"target must lie in \[0, 7\)"):
                ck.cringe_loss(logits, bad, feedback)
    with ck.value_checks("off"):
        assert torch.isnan(ck.cringe_loss(logits, bad, 1, backend="reference", reduction="none")[0, 1])
    with pytest.raises(ValueError, match="value checks must be"):
        ck.set_value_checks("sometimes")


def test_value_checks_in_a_compiled_step_are_assertions():
    logits, target, feedback, u = random_case(1, 3, 7)
    bad = target.clone()
    bad[0, 0] = 9
    step = torch.compile(lambda x, t: ck.cringe_loss(x, t, 1, uniform=u), fullgraph=True, backend="aot_eager")
    step(logits, target)
    with pytest.raises(RuntimeError, match="target must lie in"):
        step(logits, bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "cuda", "triton"])
def test_a_training_step_never_waits_for_the_gpu(backend):
    if backend != "auto" and not backends.status(backend).devices:
        pytest.skip(backends.status(backend).reason)
    torch.manual_seed(0)
    x = torch.randn(4, 16, 1000, device="cuda", requires_grad=True)
    y = torch.randint(0, 1000, (4, 16), device="cuda")
    feedback = torch.tensor([[1], [0], [1], [0]], device="cuda")
    cw, rw = x[:2].detach().clone().requires_grad_(True), x[2:].detach().clone().requires_grad_(True)
    ck.cringe_loss(x, y, feedback, backend=backend).backward()  # first call: resolution, caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ck.cringe_loss(x, y, feedback, backend=backend, num_items_in_batch=37).backward()
        ck.cringe_loss(x, y, 1, backend=backend, return_details=True).loss.backward()
        ck.pairwise_cringe_loss(cw, y[:2], rw, y[2:], backend=backend).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
