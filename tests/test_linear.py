"""The hidden-state losses against the logits losses on ``hidden @ weight.T (+ bias)``."""

import subprocess
import sys

import pytest
import torch

import cringe_kernels as ck
from cringe_kernels import linear
from cringe_kernels.linear import (LinearCringeLoss, LinearPairwiseCringeLoss, choose_chunk_size, linear_cringe_loss,
                                   linear_pairwise_cringe_loss)

from helpers import cpu_kernel_backends

# The linear losses run the primitive on chunks: "reference" runs it in
# PyTorch (the internal "torch" backend: forward, then backward), "cpu" by
# the compiled kernels (the single pass).
BACKENDS = ["reference"] + [b for b in ("cpu",) if b in cpu_kernel_backends()]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def make_case(B=2, T=9, D=8, V=23, *, dtype=torch.float64, seed=0, ignore_frac=0.25, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, D, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype) if with_bias else None
    target = torch.randint(0, V, (B, T), generator=g)
    target[torch.rand(B, T, generator=g) < ignore_frac] = -100
    feedback = (torch.arange(B) % 2 == 0)[:, None]
    uniform = torch.rand(B, T, generator=g)
    return hidden, weight, bias, target, feedback, uniform


def head_logits(hidden, weight, bias=None, logit_scale=None, logit_softcap=None):
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    if logit_scale is not None:
        z = z * logit_scale
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    return z


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]


def grads_of(value, inputs, upstream):
    value = (value * upstream).sum()
    wanted = [x for x in inputs if x is not None]
    got = iter(torch.autograd.grad(value, wanted))
    return [None if x is None else next(got) for x in inputs]


def assert_same(got, expected, tol):
    for a, b in zip(got, expected):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **tol)


def compare_binary(case, *, backend, upstream=0.37, transforms=None, chunk_size=None, **kwargs):
    """Loss, details and the gradients of hidden, weight and bias, both paths."""
    hidden, weight, bias, target, feedback, uniform = case
    transforms = transforms or {}
    tol = TOL[hidden.dtype]
    h, w, b = leaves(hidden, weight, bias)
    out = linear_cringe_loss(h, w, target, feedback, bias=b, uniform=uniform, backend=backend, return_details=True,
                             chunk_size=chunk_size, **transforms, **kwargs)
    h2, w2, b2 = leaves(hidden, weight, bias)
    ref = ck.cringe_loss(head_logits(h2, w2, b2, **transforms), target, feedback, uniform=uniform,
                         backend="reference", return_details=True, **kwargs)
    torch.testing.assert_close(out.loss, ref.loss, **tol)
    torch.testing.assert_close(out.ce_loss, ref.ce_loss, **tol)
    torch.testing.assert_close(out.cringe_loss, ref.cringe_loss, **tol)
    torch.testing.assert_close(out.logp, ref.logp, **tol)
    assert torch.equal(out.sample_index, ref.sample_index)
    if callable(upstream):
        upstream = upstream(out.loss)
    assert_same(grads_of(out.loss, (h, w, b), upstream), grads_of(ref.loss, (h2, w2, b2), upstream), tol)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, chunk_size", [(torch.float64, None), (torch.float64, 1), (torch.float32, 4)])
def test_binary_matches_the_logits_loss(backend, dtype, chunk_size):
    compare_binary(make_case(dtype=dtype), backend=backend, chunk_size=chunk_size)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [
    dict(reduction="sum"),
    dict(reduction="none"),  # a random upstream vector: the backward recomputes the chunks
    dict(ct_on_positives=True, detach_positives=True, alpha=0.5),
    dict(num_items_in_batch=11),
    dict(k=1),
])
def test_binary_options(backend, options):
    upstream = (lambda loss: torch.randn(loss.shape, dtype=loss.dtype, generator=torch.Generator().manual_seed(3))
                if loss.dim() else 0.37)
    compare_binary(make_case(seed=1), backend=backend, upstream=upstream, chunk_size=5, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, transforms", [(torch.float64, dict(logit_softcap=2.5)),
                                               (torch.float64, dict(logit_scale=0.6)),
                                               (torch.float32, dict(logit_scale=1.7, logit_softcap=4.0))])
def test_softcap_and_scale(backend, dtype, transforms):
    compare_binary(make_case(seed=2, dtype=dtype), backend=backend, transforms=transforms, chunk_size=7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_bias_and_with_k_beyond_the_vocabulary(backend):
    compare_binary(make_case(V=6, seed=4, with_bias=False), backend=backend, k=10, chunk_size=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored_give_zero_loss_and_zero_gradients(backend):
    hidden, weight, bias, target, feedback, uniform = make_case(seed=5)
    target = torch.full_like(target, -100)
    h, w, b = leaves(hidden, weight, bias)
    for reduction in ("mean", "sum", "none"):
        loss = linear_cringe_loss(h, w, target, feedback, bias=b, uniform=uniform, backend=backend,
                                  reduction=reduction, chunk_size=4)
        assert torch.all(loss == 0)
        for g in torch.autograd.grad(loss.sum(), (h, w, b)):
            assert torch.all(g == 0)
    empty = linear_cringe_loss(h[:0], w, target[:0], feedback[:0], bias=b, backend=backend)
    assert empty.item() == 0
    for g in torch.autograd.grad(empty, (h, w, b)):
        assert torch.all(g == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_hidden_view(backend):
    hidden, weight, bias, target, feedback, uniform = make_case(T=10, seed=6)
    full = hidden.clone().requires_grad_(True)
    view = full[:, :-1]  # HF's shift: rows that cannot be flattened into one stride
    loss = linear_cringe_loss(view, weight, target[:, 1:], feedback, bias=bias, uniform=uniform[:, 1:],
                              backend=backend, chunk_size=4)
    (g,) = torch.autograd.grad(loss * 1.5, full)
    copy = hidden[:, :-1].clone().requires_grad_(True)
    ref = ck.cringe_loss(head_logits(copy, weight, bias), target[:, 1:], feedback, uniform=uniform[:, 1:],
                         backend="reference")
    (ge,) = torch.autograd.grad(ref * 1.5, copy)
    torch.testing.assert_close(loss, ref, **TOL[torch.float64])
    torch.testing.assert_close(g[:, :-1], ge, **TOL[torch.float64])
    assert torch.all(g[:, -1] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_sample_the_lower_column(backend):
    # Integer hidden states and duplicated weight rows: exact, tied logits in
    # both paths, so the candidates' tie order decides the samples.
    g = torch.Generator().manual_seed(7)
    hidden = torch.randint(-2, 3, (2, 6, 4), generator=g).double()
    weight = torch.randint(-1, 2, (5, 4), generator=g).double().repeat(3, 1)  # V=15, each row 3 times
    target = torch.randint(0, 15, (2, 6), generator=g)
    case = (hidden, weight, None, target, torch.tensor([[0], [0]]), torch.rand(2, 6, generator=g))
    out = compare_binary(case, backend=backend, k=4, chunk_size=5)
    assert torch.all(out.sample_index >= 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_the_details(backend):
    # d loss / d lse other than the loss's own (through logp): the rows that
    # differ are found and recomputed, so the gradient stays exact.
    hidden, weight, bias, target, feedback, uniform = make_case(seed=8)
    h, w, b = leaves(hidden, weight, bias)
    out = linear_cringe_loss(h, w, target, feedback, bias=b, uniform=uniform, backend=backend, return_details=True,
                             chunk_size=4)
    h2, w2, b2 = leaves(hidden, weight, bias)
    ref = ck.cringe_loss(head_logits(h2, w2, b2), target, feedback, uniform=uniform, backend="reference",
                         return_details=True)
    mix = torch.linspace(-1, 1, target.numel(), dtype=torch.float64).reshape(target.shape)
    got = torch.autograd.grad(out.loss * 2 + (out.logp * mix).sum(), (h, w, b))
    expected = torch.autograd.grad(ref.loss * 2 + (ref.logp * mix).sum(), (h2, w2, b2))
    assert_same(got, expected, TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gate_grad", [False, True])
def test_pairwise_gradient_through_the_details(backend, gate_grad):
    hw, yw, hl, yl, weight, bias, uniform = make_pair(seed=6)
    inputs = leaves(hw, hl, weight, bias)
    out = linear_pairwise_cringe_loss(inputs[0], yw, inputs[1], yl, inputs[2], bias=inputs[3], uniform=uniform,
                                      backend=backend, gate_grad=gate_grad, return_details=True, chunk_size=4)
    ref_inputs = leaves(hw, hl, weight, bias)
    a, c, w, b = ref_inputs
    ref = ck.pairwise_cringe_loss(head_logits(a, w, b), yw, head_logits(c, w, b), yl, uniform=uniform,
                                  backend="reference", gate_grad=gate_grad, return_details=True)
    got = torch.autograd.grad(out.loss + (out.margin * torch.tensor([0.5, -1.0, 2.0])).sum(), inputs)
    expected = torch.autograd.grad(ref.loss + (ref.margin * torch.tensor([0.5, -1.0, 2.0])).sum(), ref_inputs)
    assert_same(got, expected, TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_gives_the_same_gradient_twice(backend):
    hidden, weight, bias, target, feedback, uniform = make_case(seed=9)
    h, w, b = leaves(hidden, weight, bias)
    loss = linear_cringe_loss(h, w, target, feedback, bias=b, uniform=uniform, backend=backend, chunk_size=4)
    first = torch.autograd.grad(loss, (h, w, b), retain_graph=True)
    second = torch.autograd.grad(loss * 3, (h, w, b))
    assert_same([g * 3 for g in first], second, TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_are_as_accurate_as_the_logits_path(dtype):
    # Positive rows only (no draw, which rounding could flip), against a
    # float64 oracle on the same rounded inputs: the loss within a sixteenth
    # of the dtype's epsilon, the gradients' error at most about that of the
    # logits path in the same dtype (both round each logit once or twice).
    hidden, weight, bias, target, _, _ = make_case(B=4, T=64, D=32, V=300, dtype=dtype, seed=19)
    losses, grads = [], []
    for path in ("linear", "logits", "oracle"):
        inputs = leaves(*(x if path != "oracle" else x.double() for x in (hidden, weight, bias)))
        h, w, b = inputs
        if path == "linear":
            loss = linear_cringe_loss(h, w, target, 1, bias=b, chunk_size=64, logit_softcap=20.0)
        else:
            loss = ck.cringe_loss(head_logits(h, w, b, logit_softcap=20.0), target, 1)
        losses.append(loss.double())
        grads.append([g.double() for g in torch.autograd.grad(loss, inputs)])
    eps = torch.finfo(dtype).eps
    assert (losses[0] - losses[2]).abs() <= eps / 16 * losses[2].abs()
    for g_linear, g_logits, g_oracle in zip(*grads):
        scale = g_oracle.abs().max()
        err_linear = (g_linear - g_oracle).abs().max() / scale
        err_logits = (g_logits - g_oracle).abs().max() / scale
        assert err_linear <= 2 * err_logits + eps / 2, (err_linear, err_logits)


def test_autocast_casts_like_a_linear_layer():
    hidden, weight, bias, target, feedback, uniform = make_case(seed=21, dtype=torch.float32)
    h, w, b = leaves(hidden, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cringe_loss(h, w, target, feedback, bias=b, uniform=uniform, chunk_size=4)
    h2, w2, b2 = leaves(hidden, weight, bias)
    expected = linear_cringe_loss(h2.bfloat16(), w2.bfloat16(), target, feedback, bias=b2.bfloat16(),
                                  uniform=uniform, chunk_size=4)
    torch.testing.assert_close(loss, expected)
    got = torch.autograd.grad(loss, (h, w, b))
    assert all(g.dtype == torch.float32 for g in got)
    assert_same(got, torch.autograd.grad(expected, (h2, w2, b2)), dict(rtol=0, atol=0))


def test_tied_embedding_weight_gets_both_gradients():
    hidden, weight, _, target, feedback, uniform = make_case(seed=10)
    emb = torch.nn.Embedding(weight.shape[0], weight.shape[1]).double()
    with torch.no_grad():
        emb.weight.copy_(weight)
    tokens = target.clamp(min=0)
    for path in ("linear", "logits"):
        emb.weight.grad = None
        h = emb(tokens) + hidden
        if path == "linear":
            loss = linear_cringe_loss(h, emb.weight, target, feedback, uniform=uniform, chunk_size=4)
        else:
            loss = ck.cringe_loss(h @ emb.weight.T, target, feedback, uniform=uniform, backend="reference")
        loss.backward()
        if path == "linear":
            got = emb.weight.grad.clone()
    torch.testing.assert_close(got, emb.weight.grad, **TOL[torch.float64])


def test_generator_draws_as_the_logits_loss():
    hidden, weight, bias, target, feedback, _ = make_case(seed=11)
    out = linear_cringe_loss(hidden, weight, target, 0, bias=bias, generator=torch.Generator().manual_seed(5),
                             return_details=True, chunk_size=3)
    ref = ck.cringe_loss(head_logits(hidden, weight, bias), target, 0, generator=torch.Generator().manual_seed(5),
                         return_details=True, backend="reference")
    assert torch.equal(out.sample_index, ref.sample_index)


def test_no_grad_and_frozen_head():
    hidden, weight, bias, target, feedback, uniform = make_case(seed=12)
    with torch.no_grad():
        loss = linear_cringe_loss(hidden, weight, target, feedback, bias=bias, uniform=uniform, chunk_size=4)
    ref = ck.cringe_loss(head_logits(hidden, weight, bias), target, feedback, uniform=uniform, backend="reference")
    torch.testing.assert_close(loss, ref, **TOL[torch.float64])
    h = hidden.clone().requires_grad_(True)  # the head frozen: only the hidden states' gradient
    (g,) = torch.autograd.grad(linear_cringe_loss(h, weight, target, feedback, bias=bias, uniform=uniform), h)
    h2 = hidden.clone().requires_grad_(True)
    (ge,) = torch.autograd.grad(ck.cringe_loss(head_logits(h2, weight, bias), target, feedback, uniform=uniform,
                                               backend="reference"), h2)
    torch.testing.assert_close(g, ge, **TOL[torch.float64])
    w = weight.clone().requires_grad_(True)  # the trunk frozen: only the head's gradient
    (g,) = torch.autograd.grad(linear_cringe_loss(hidden, w, target, feedback, bias=bias, uniform=uniform), w)
    w2 = weight.clone().requires_grad_(True)
    (ge,) = torch.autograd.grad(ck.cringe_loss(head_logits(hidden, w2, bias), target, feedback, uniform=uniform,
                                               backend="reference"), w2)
    torch.testing.assert_close(g, ge, **TOL[torch.float64])


def test_logits_are_made_in_chunks_and_only_where_needed(monkeypatch):
    shapes = []
    original = linear._logits_into

    def recording(out, *args):
        shapes.append(out.shape[0])
        return original(out, *args)

    monkeypatch.setattr(linear, "_logits_into", recording)
    hidden, weight, bias, target, feedback, uniform = make_case(B=3, T=10, seed=13)
    h = hidden.clone().requires_grad_(True)
    positive = ((target != -100) & feedback).sum().item()
    # A scalar loss: one matmul per row, in the forward; none in the backward,
    # also with the details (nothing differentiates them here).
    linear_cringe_loss(h, weight, target, feedback, bias=bias, uniform=uniform, chunk_size=8).backward()
    assert max(shapes) == 8 and sum(shapes) == 30
    shapes.clear()
    out = linear_cringe_loss(h, weight, target, feedback, bias=bias, uniform=uniform, chunk_size=8,
                             return_details=True)
    (out.loss * 2).backward()
    assert sum(shapes) == 30
    # "none": the backward recomputes the rows with a softmax gradient (on
    # the CPU only those: the positive rows).
    shapes.clear()
    linear_cringe_loss(h, weight, target, feedback, bias=bias, uniform=uniform, chunk_size=8,
                       reduction="none").sum().backward()
    assert max(shapes) == 8 and sum(shapes) == 30 + positive
    # Pairwise with a constant gate: each row once.
    shapes.clear()
    hw, yw, hl, yl, w, b, u = make_pair(seed=5)
    hw.requires_grad_(True)
    linear_pairwise_cringe_loss(hw, yw, hl, yl, w, bias=b, uniform=u, chunk_size=4).backward()
    assert max(shapes) == 4 and sum(shapes) == yw.numel() + yl.numel()


def test_chunk_size_rule():
    # 16384 x 4096 bf16 hidden states (128 MiB) against V = 128256: 1024 rows
    assert choose_chunk_size(16384, 128256, 4096, torch.bfloat16) == 1024
    assert choose_chunk_size(8192, 32000, 512, torch.float32) == 512  # the 64 MiB floor
    assert choose_chunk_size(10, 50, 8, torch.float32) == 10
    assert choose_chunk_size(100, 10 ** 9, 8, torch.float32) == 1


# ---------------------------------------------------------------------------
# Pairwise


def make_pair(B=3, Tw=5, Tl=6, D=8, V=19, *, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hw = torch.randn(B, Tw, D, generator=g, dtype=torch.float64).to(dtype)
    hl = torch.randn(B, Tl, D, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, D, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    yw = torch.randint(0, V, (B, Tw), generator=g)
    yl = torch.randint(0, V, (B, Tl), generator=g)
    yw[torch.rand(B, Tw, generator=g) < 0.2] = -100
    yl[torch.rand(B, Tl, generator=g) < 0.2] = -100
    return hw, yw, hl, yl, weight, bias, torch.rand(B, Tl, generator=g)


def compare_pairwise(pair, *, backend, upstream=0.37, transforms=None, chunk_size=None, **kwargs):
    hw, yw, hl, yl, weight, bias, uniform = pair
    transforms = transforms or {}
    tol = TOL[hw.dtype]
    inputs = leaves(hw, hl, weight, bias)
    a, c, w, b = inputs
    out = linear_pairwise_cringe_loss(a, yw, c, yl, w, bias=b, uniform=uniform, backend=backend, return_details=True,
                                      chunk_size=chunk_size, **transforms, **kwargs)
    ref_inputs = leaves(hw, hl, weight, bias)
    a2, c2, w2, b2 = ref_inputs
    ref = ck.pairwise_cringe_loss(head_logits(a2, w2, b2, **transforms), yw, head_logits(c2, w2, b2, **transforms),
                                  yl, uniform=uniform, backend="reference", return_details=True, **kwargs)
    for name in ("loss", "ce_loss", "cringe_loss", "gate", "margin", "logp_chosen", "logp_rejected"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), **tol)
    assert torch.equal(out.sample_index, ref.sample_index)
    if callable(upstream):
        upstream = upstream(out.loss)
    assert_same(grads_of(out.loss, inputs, upstream), grads_of(ref.loss, ref_inputs, upstream), tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gate_grad", [False, True])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_pairwise_matches_the_logits_loss(backend, gate_grad, length_normalize):
    compare_pairwise(make_pair(seed=1), backend=backend, gate_grad=gate_grad, length_normalize=length_normalize,
                     margin=0.5, temperature=2.0, chunk_size=4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(reduction="sum", alpha=0.3), dict(reduction="none"),
                                     dict(num_items_in_batch=torch.tensor(9)),
                                     dict(gate_grad=True, reduction="none")])
def test_pairwise_options(backend, options):
    upstream = (lambda loss: torch.randn(loss.shape, dtype=loss.dtype, generator=torch.Generator().manual_seed(4))
                if loss.dim() else -1.3)
    compare_pairwise(make_pair(seed=2), backend=backend, upstream=upstream, chunk_size=1, **options)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pairwise_softcap_and_scale(dtype):
    compare_pairwise(make_pair(seed=3, dtype=dtype), backend="auto", chunk_size=7,
                     transforms=dict(logit_scale=0.8, logit_softcap=3.0))


def test_modules_equal_the_functions():
    hidden, weight, bias, target, feedback, uniform = make_case(seed=14)
    module = LinearCringeLoss(k=3, alpha=0.5, logit_softcap=5.0, chunk_size=4)
    expected = linear_cringe_loss(hidden, weight, target, feedback, bias=bias, uniform=uniform, k=3, alpha=0.5,
                                  logit_softcap=5.0)
    torch.testing.assert_close(module(hidden, weight, target, feedback, bias=bias, uniform=uniform), expected)
    assert "logit_softcap=5.0" in repr(module)
    hw, yw, hl, yl, w, b, u = make_pair(seed=4)
    pairwise = LinearPairwiseCringeLoss(margin=1.0, gate_grad=True, chunk_size=2)
    torch.testing.assert_close(pairwise(hw, yw, hl, yl, w, bias=b, uniform=u),
                               linear_pairwise_cringe_loss(hw, yw, hl, yl, w, bias=b, uniform=u, margin=1.0,
                                                           gate_grad=True))


# ---------------------------------------------------------------------------
# gradcheck, torch.compile, bad inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    hidden, weight, bias, target, feedback, uniform = make_case(B=2, T=3, D=3, V=7, seed=15)
    feedback = torch.tensor([[1], [0]])

    def binary(h, w, b):
        return linear_cringe_loss(h, w, target, feedback, bias=b, uniform=uniform, backend=backend, chunk_size=2,
                                  logit_softcap=3.0, ct_on_positives=True)

    assert torch.autograd.gradcheck(binary, leaves(hidden, weight, bias))
    hw, yw, hl, yl, w, b, u = make_pair(B=2, Tw=2, Tl=3, D=3, V=7, seed=16)

    def pairwise(a, c, w, b):
        return linear_pairwise_cringe_loss(a, yw, c, yl, w, bias=b, uniform=u, backend=backend, gate_grad=True,
                                           chunk_size=2, reduction="none")

    assert torch.autograd.gradcheck(pairwise, leaves(hw, hl, w, b))


def test_compiled_training_step_fullgraph():
    # A fresh process: the step is traced from the first call.
    code = """
import torch, cringe_kernels.linear as L
torch.manual_seed(0)
head = torch.nn.Linear(8, 31)
body = torch.nn.Linear(8, 8)
x = torch.randn(2, 7, 8)
y = torch.randint(0, 31, (2, 7)); y[0, :2] = -100
u = torch.rand(2, 7)
fb = torch.tensor([[1], [0]])

def step(x):
    h = torch.tanh(body(x))
    return L.linear_cringe_loss(h, head.weight, y, fb, bias=head.bias, uniform=u, chunk_size=4, logit_softcap=5.0)

compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
loss = compiled(x)
loss.backward()
got = [p.grad.clone() for p in (*head.parameters(), *body.parameters())]
for p in (*head.parameters(), *body.parameters()):
    p.grad = None
ref = step(x)
ref.backward()
assert torch.allclose(loss, ref), (loss, ref)
for a, p in zip(got, (*head.parameters(), *body.parameters())):
    assert torch.allclose(a, p.grad, atol=1e-6), (a - p.grad).abs().max()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_opcheck_of_the_chunked_ops():
    hidden, weight, bias, target, feedback, uniform = make_case(seed=17, dtype=torch.float32)
    h2, t = hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1)
    w = (t != -100).float() / 10
    checks = ("test_schema", "test_faketensor")
    forward = (h2, weight, bias, t, uniform.reshape(-1), w, 3, -100, "auto", 1.0, 0.0, 5, True, True, True)
    torch.library.opcheck(torch.ops.cringe_kernels.linear_row_stats, forward, test_utils=checks)
    lse, tl, xs, s, gh, gw, gb = torch.ops.cringe_kernels.linear_row_stats(*forward)
    g = torch.linspace(-1, 1, t.numel())
    backward = (h2, weight, bias, t, s, lse, tl, xs, w, w * 2, g, -g, g.flip(0), gh, gw, gb, True, "trust", -100,
                "auto", 1.0, 0.0, 5, True, True, True)
    torch.library.opcheck(torch.ops.cringe_kernels.linear_row_stats_backward, backward, test_utils=checks)


@pytest.mark.parametrize("call, error, match", [
    (lambda h, w, b, y, f: linear_cringe_loss(h, w[:, :-1], y, f), ValueError, "hidden size D"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w.T, y, f), ValueError, "hidden size D"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w[None], y, f), ValueError, r"weight must have shape \[V, D\]"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y, f, bias=b[:-1]), ValueError, r"bias must have shape \[V\]"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w.float(), y, f), TypeError, "weight has dtype"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y, f, bias=b.float()), TypeError, "bias has dtype"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w.to("meta"), y, f), ValueError, "weight is on meta"),
    (lambda h, w, b, y, f: linear_cringe_loss(h.long(), w, y, f), TypeError, "hidden must be a floating"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y[:, :-1], f), ValueError, "target must have shape"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y.float(), f), TypeError, "target must be an integer"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y, f, chunk_size=0), ValueError, "chunk_size"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y, f, logit_softcap=0.0), ValueError, "logit_softcap"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y, f, logit_scale="2"), TypeError, "logit_scale"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y, f, backend="nope"), ValueError, "backend"),
    (lambda h, w, b, y, f: linear_cringe_loss(h, w, y.clamp(max=5) + 40, f), ValueError, "target must lie"),
    (lambda h, w, b, y, f: linear_pairwise_cringe_loss(h, y, h[:, :, :-1], y, w), ValueError, "hidden size D"),
    (lambda h, w, b, y, f: linear_pairwise_cringe_loss(h, y, h.float(), y, w), TypeError, "weight has dtype"),
    (lambda h, w, b, y, f: linear_pairwise_cringe_loss(h[0], y[0], h[0], y[0], w), ValueError, r"\[B, T, D\]"),
    (lambda h, w, b, y, f: linear_pairwise_cringe_loss(h, y, h[:1], y[:1], w), ValueError, "batch size"),
])
def test_bad_inputs_name_the_argument(call, error, match):
    hidden, weight, bias, target, feedback, _ = make_case(seed=18)
    with pytest.raises(error, match=match):
        call(hidden, weight, bias, target, feedback)
