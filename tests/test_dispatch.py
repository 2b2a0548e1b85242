"""Eager calls skip the op dispatcher only where nothing needs to see the op."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cringe_kernels as ck
from cringe_kernels import backends
from cringe_kernels.backends import _dispatch
from cringe_kernels.backends.cpu_backend import OPS, SINGLE_PASS_OPS

from helpers import random_case

pytestmark = pytest.mark.skipif(not backends.status("cpu").installed, reason=backends.status("cpu").reason)


class CountingBody:
    """Wraps an EagerOp's body and counts the direct calls."""

    def __init__(self, eager_op, monkeypatch):
        self.calls = 0
        body = eager_op.body

        def counted(*args):
            self.calls += 1
            return body(*args)

        monkeypatch.setattr(eager_op, "body", counted)


class SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _primitive_args(seed=0):
    logits, target, _, u = random_case(2, 3, 50, seed=seed)
    return logits, target.reshape(-1), u.reshape(-1).contiguous()


def test_plain_eager_call_runs_the_body(monkeypatch):
    counter = CountingBody(OPS.forward, monkeypatch)
    logits, target, u = _primitive_args()
    direct = OPS.forward(logits, target, u, 5, -100)
    assert counter.calls == 1
    via_op = OPS.forward.op(logits, target, u, 5, -100)
    for a, b in zip(direct, via_op):
        assert torch.equal(a, b)


def test_dispatch_mode_sees_the_op(monkeypatch):
    counter = CountingBody(OPS.forward, monkeypatch)
    logits, target, u = _primitive_args()
    with SeenOps() as mode:
        OPS.forward(logits, target, u, 5, -100)
    assert counter.calls == 0
    assert any("cpu_row_stats" in name for name in mode.names), mode.names


def test_fake_tensors_take_the_op(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    counter = CountingBody(OPS.forward, monkeypatch)
    logits, target, u = _primitive_args()
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (logits, target, u)]
        lse, *_ = OPS.forward(*fake, 5, -100)
    assert counter.calls == 0 and tuple(lse.shape) == (6,)


def test_subclass_arguments_take_the_op():
    class Tagged(torch.Tensor):
        pass

    logits, target, u = _primitive_args()
    assert _dispatch.direct_call_ok((logits, target, u, 5))
    assert not _dispatch.direct_call_ok((logits.as_subclass(Tagged), target, u, 5))
    with torch.device("cpu"):  # a __torch_function__ mode
        assert not _dispatch.direct_call_ok((logits, target, u, 5))


def test_backward_and_single_pass_bodies_match_their_ops():
    logits, target, u = _primitive_args(seed=3)
    lse, t, s, idx = OPS.forward(logits, target, u, 5, -100)
    g = torch.randn(3, 6, dtype=torch.float32)
    args = (target, idx, lse, g[0], g[1], g[2], -100)
    assert torch.equal(OPS.backward(logits, *args), OPS.backward.op(logits, *args))
    w = torch.rand(6)
    direct = SINGLE_PASS_OPS.forward(logits, target, u, 5, -100, w)
    via_op = SINGLE_PASS_OPS.forward.op(logits, target, u, 5, -100, w)
    for a, b in zip(direct, via_op):
        assert torch.equal(a, b)


def test_loss_under_compile_still_traces_the_op():
    # Compiled, the loss must reach the op (its fake gives the shapes); the
    # body runs only at run time, inside the compiled graph's call.
    logits, target, feedback, u = random_case(2, 3, 16, seed=5)
    eager = ck.cringe_loss(logits, target, feedback, uniform=u, backend="cpu")
    compiled = torch.compile(lambda x: ck.cringe_loss(x, target, feedback, uniform=u, backend="cpu"),
                             backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits), eager, rtol=0, atol=0)


def test_triton_bodies_match_their_ops():
    pytest.importorskip("triton")
    if "cpu" not in backends.status("triton").devices:
        pytest.skip("the triton backend does not run on the CPU here (TRITON_INTERPRET unset)")
    from cringe_kernels.backends import triton_backend as tb

    logits, target, u = _primitive_args(seed=4)
    direct = tb.triton_row_stats(logits, target, u, 5, -100, 0, 0)
    via_op = tb.triton_row_stats.op(logits, target, u, 5, -100, 0, 0)
    for a, b in zip(direct, via_op):
        assert torch.equal(a, b)
    g = torch.randn(3, 6)
    args = (target, direct[3], direct[0], g[0], g[1], g[2], -100, 0)
    assert torch.equal(tb.triton_row_grad(logits, *args), tb.triton_row_grad.op(logits, *args))
