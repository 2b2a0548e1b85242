"""Public API surface: signatures, details, reductions, modules, backends registry, info."""

import inspect
import subprocess
import sys

import pytest
import torch

import cringe_kernels as ck

from helpers import cpu_kernel_backends, random_case

BINARY_KWARGS = ["k", "alpha", "ignore_index", "reduction", "detach_positives", "ct_on_positives",
                 "num_items_in_batch", "generator", "uniform", "backend", "return_details"]
PAIRWISE_KWARGS = ["k", "alpha", "margin", "temperature", "gate_grad", "length_normalize", "ignore_index",
                   "reduction", "num_items_in_batch", "generator", "uniform", "backend", "return_details"]


def test_signatures_are_the_documented_ones():
    sig = inspect.signature(ck.cringe_loss)
    assert list(sig.parameters)[:3] == ["logits", "target", "feedback"]
    assert all(sig.parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in BINARY_KWARGS)
    defaults = {n: sig.parameters[n].default for n in BINARY_KWARGS}
    assert defaults["k"] == 5 and defaults["alpha"] == 1.0 and defaults["ignore_index"] == -100
    assert defaults["reduction"] == "mean" and defaults["backend"] == "auto"
    sig = inspect.signature(ck.pairwise_cringe_loss)
    assert list(sig.parameters)[:4] == ["chosen_logits", "chosen_target", "rejected_logits", "rejected_target"]
    assert all(sig.parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in PAIRWISE_KWARGS)
    assert sig.parameters["margin"].default == 0.0 and sig.parameters["temperature"].default == 1.0
    assert sig.parameters["gate_grad"].default is False


def test_details_fields():
    assert ck.CringeOutput._fields == ("loss", "ce_loss", "cringe_loss", "sample_index", "logp")
    assert ck.PairwiseCringeOutput._fields[4:] == ("gate", "margin", "logp_chosen", "logp_rejected")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_loss_dtype_is_the_accumulation_dtype(dtype):
    logits, target, feedback, _ = random_case(2, 3, 8, dtype=dtype)
    loss = ck.cringe_loss(logits, target, feedback)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_reductions_are_consistent():
    logits, target, feedback, u = random_case(4, 6, 10, seed=1)
    none = ck.cringe_loss(logits, target, feedback, uniform=u, reduction="none")
    total = ck.cringe_loss(logits, target, feedback, uniform=u, reduction="sum")
    mean = ck.cringe_loss(logits, target, feedback, uniform=u)
    assert none.shape == target.shape and torch.all(none[target == -100] == 0)
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(mean, total / (target != -100).sum())
    torch.testing.assert_close(ck.cringe_loss(logits, target, feedback, uniform=u, num_items_in_batch=7), total / 7)
    torch.testing.assert_close(
        ck.cringe_loss(logits, target, feedback, uniform=u, num_items_in_batch=torch.tensor(7)), total / 7)


def test_logp_detail_is_the_target_log_probability():
    logits, target, feedback, u = random_case(2, 5, 13, seed=7)
    out = ck.cringe_loss(logits, target, feedback, uniform=u, return_details=True)
    expected = logits.log_softmax(-1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logp, torch.where(target != -100, expected, 0.0))


def test_generator_makes_draws_reproducible():
    logits, target, _, _ = random_case(3, 5, 12, seed=2)
    runs = [ck.cringe_loss(logits, target, 0, generator=torch.Generator().manual_seed(9), return_details=True)
            for _ in range(2)]
    assert torch.equal(runs[0].sample_index, runs[1].sample_index)
    u = torch.rand(target.shape, generator=torch.Generator().manual_seed(9))
    by_uniform = ck.cringe_loss(logits, target, 0, uniform=u, return_details=True)
    assert torch.equal(by_uniform.sample_index, runs[0].sample_index)


def test_feedback_forms_are_equivalent():
    logits, target, _, u = random_case(3, 5, 12, seed=3)
    per_seq = torch.tensor([[True], [False], [True]])
    forms = [per_seq, per_seq.int(), per_seq.float(), per_seq.expand(3, 5).clone()]
    losses = [ck.cringe_loss(logits, target, f, uniform=u) for f in forms]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0])
    torch.testing.assert_close(ck.cringe_loss(logits, target, True, uniform=u),
                               ck.cringe_loss(logits, target, torch.ones(3, 5), uniform=u))


def test_module_equals_function():
    logits, target, feedback, u = random_case(2, 4, 9, seed=4)
    module = ck.CringeLoss(k=3, alpha=0.5, ct_on_positives=True, backend="reference")
    torch.testing.assert_close(module(logits, target, feedback, uniform=u),
                               ck.cringe_loss(logits, target, feedback, k=3, alpha=0.5, ct_on_positives=True,
                                              uniform=u, backend="reference"))
    assert "k=3" in repr(module)


def test_registry():
    info = ck.backend_info()
    assert list(info) == ["reference", "triton", "cuda", "cpu"]
    assert info["reference"].installed and "cpu" in info["reference"].devices
    for name, st in info.items():
        if not st.devices:
            assert st.reason, name  # every backend that cannot run says why
    assert "reference" in ck.available_backends("cpu")
    assert "reference" in ck.available_backends()


def test_unavailable_backend_says_what_is_missing():
    logits, target, feedback, _ = random_case(1, 2, 5)
    for name, st in ck.backend_info().items():
        if "cpu" in st.devices:
            continue
        with pytest.raises(ck.BackendUnavailableError, match=name):
            ck.cringe_loss(logits, target, feedback, backend=name)


def test_auto_picks_the_first_available_backend():
    logits, target, feedback, u = random_case(2, 3, 9, seed=5)
    auto = ck.cringe_loss(logits, target, feedback, uniform=u, return_details=True)
    first = ck.available_backends("cpu")[0]
    chosen = ck.cringe_loss(logits, target, feedback, uniform=u, backend=first, return_details=True)
    torch.testing.assert_close(auto.loss, chosen.loss)


def test_auto_passes_over_a_backend_whose_kernels_stop_short_of_k(monkeypatch):
    """"auto" keeps its order unless the first backend's kernels stop short of
    min(k, V - 1) (the CUDA kernels at 64, then a PyTorch fallback) while a
    later one's do not; with every backend short it keeps the first."""
    from cringe_kernels import backends

    monkeypatch.setitem(backends._AUTO_ORDER, "cpu", ("cpu", "torch"))
    monkeypatch.setattr(backends, "_resolved", {})  # resolutions are cached per key
    cpu_type = type(backends.resolve("cpu", torch.zeros(1, 2)))
    torch_type = type(backends.resolve("torch", torch.zeros(1, 2)))
    monkeypatch.setattr(cpu_type, "kernel_max_k", 4)
    x = torch.zeros(2, 100)
    assert backends.resolve("auto", x).name == "cpu"
    assert backends.resolve("auto", x, k=4).name == "cpu"
    assert backends.resolve("auto", x, k=5).name == "torch"
    assert backends.resolve("auto", torch.zeros(2, 5), k=64).name == "cpu"  # k_eff = V - 1 = 4
    monkeypatch.setattr(torch_type, "kernel_max_k", 3)
    backends.clear_resolution_cache()
    assert backends.resolve("auto", x, k=5).name == "cpu"
    logits, target, feedback, u = random_case(2, 3, 9, seed=5)
    monkeypatch.setattr(cpu_type, "kernel_max_k", 2)
    monkeypatch.setattr(torch_type, "kernel_max_k", None)
    calls = []
    forward = torch_type.forward
    monkeypatch.setattr(torch_type, "forward", lambda self, *a: calls.append(a[3]) or forward(self, *a))
    ck.cringe_loss(logits, target, feedback, uniform=u, k=3)
    assert calls == [3]


def test_info_command_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "cringe_kernels.info"], capture_output=True, text=True, check=True)
    for name in ("reference", "triton", "cuda", "cpu"):
        assert name in out.stdout
    assert 'backend="auto" on cpu' in out.stdout


def test_import_touches_no_gpu_and_no_compiled_module():
    code = ("import sys, cringe_kernels; "
            "bad = [m for m in sys.modules if m.startswith(('triton', 'cringe_kernels._C', 'transformers'))]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", ["reference"] + cpu_kernel_backends())
def test_hf_shifted_logits_view_needs_no_copy(backend):
    logits, target, feedback, u = random_case(2, 6, 10, seed=6)
    logits.requires_grad_(True)
    view = logits[:, :-1]  # rows of one sequence are contiguous, sequences are not
    loss = ck.cringe_loss(view, target[:, 1:], feedback, uniform=u[:, 1:], backend=backend)
    copy = logits.detach()[:, :-1].contiguous().requires_grad_(True)
    expected = ck.cringe_loss(copy, target[:, 1:], feedback, uniform=u[:, 1:], backend="reference")
    torch.testing.assert_close(loss, expected)
    g, = torch.autograd.grad(loss, logits)
    ge, = torch.autograd.grad(expected, copy)
    torch.testing.assert_close(g[:, :-1], ge)
    assert torch.all(g[:, -1] == 0)


def test_first_call_inside_fullgraph_compile():
    # a fresh process, so that the backend is first imported while Dynamo traces
    code = """
import torch, cringe_kernels as ck
x = torch.randn(2, 8, 50, requires_grad=True)
y = torch.randint(0, 50, (2, 8))
u = torch.rand(2, 8)
step = torch.compile(lambda x: ck.cringe_loss(x, y, torch.tensor([[1], [0]]), uniform=u, backend="auto"),
                     fullgraph=True, backend="aot_eager")
loss = step(x)
loss.backward()
ref = ck.cringe_loss(x.detach(), y, torch.tensor([[1], [0]]), uniform=u, backend="reference")
assert torch.allclose(loss, ref), (loss, ref)
print("ok", ck.available_backends("cpu")[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("backend", ["reference"] + cpu_kernel_backends())
def test_single_pass_gives_the_same_loss_and_gradient(backend):
    # A request every backend accepts; only those with a single-pass kernel
    # (cuda, and its simulated build) change how the gradient is made.
    logits, target, feedback, u = random_case(2, 5, 40, seed=7)
    out = []
    for single in (False, True):
        x = logits.clone().requires_grad_(True)
        loss = ck.cringe_loss(x, target, feedback, uniform=u, backend=backend, single_pass=single)
        loss.backward()
        out.append((loss.detach(), x.grad))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=2e-6, atol=1e-9)
    module = ck.CringeLoss(backend=backend, single_pass=True)
    torch.testing.assert_close(module(logits, target, feedback, uniform=u), out[1][0])


def test_single_pass_and_inplace_backward_exclude_each_other():
    logits, target, feedback, _ = random_case(1, 2, 9)
    with pytest.raises(ValueError, match="single_pass=True and inplace_backward=True"):
        ck.cringe_loss(logits, target, feedback, single_pass=True, inplace_backward=True)
    with pytest.raises(TypeError, match="single_pass"):
        ck.cringe_loss(logits, target, feedback, single_pass="yes")


@pytest.mark.parametrize("backend", ["reference"] + cpu_kernel_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_logps_is_log_softmax_at_the_target(backend, dtype):
    logits, target, _, _ = random_case(3, 6, 37, dtype=dtype, seed=11)
    base = logits.clone().requires_grad_(True)
    view = base[:, :-1]  # strided rows, as HF's logits[:, :-1]
    y = target[:, 1:]
    got = ck.token_logps(view, y, backend=backend)
    valid = y != -100
    expected = torch.where(valid, torch.log_softmax(view.detach().to(torch.float64), -1)
                           .gather(-1, y.clamp(min=0)[..., None]).squeeze(-1), 0.0)
    assert got.shape == y.shape and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    weights = torch.randn(y.shape, dtype=got.dtype)
    (got * weights).sum().backward()
    ref = logits.clone().to(torch.float64).requires_grad_(True)
    lp = torch.log_softmax(ref[:, :-1], -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
    (torch.where(valid, lp, 0.0) * weights.double()).sum().backward()
    torch.testing.assert_close(base.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


def test_token_logps_rejects_bad_targets():
    logits, target, _, _ = random_case(1, 3, 7)
    with pytest.raises(ValueError, match="target must lie in"):
        ck.token_logps(logits, torch.full_like(target, 7))


def test_auto_never_picks_a_backend_that_refuses_k(monkeypatch):
    """A backend's max_k is a hard limit (CUDA: 64, then ValueError): "auto"
    drops it for a larger k_eff even when every other one is slower there."""
    from cringe_kernels import backends

    monkeypatch.setitem(backends._AUTO_ORDER, "cpu", ("cpu", "torch"))
    monkeypatch.setattr(backends, "_resolved", {})
    cpu_type = type(backends.resolve("cpu", torch.zeros(1, 2)))
    torch_type = type(backends.resolve("torch", torch.zeros(1, 2)))
    monkeypatch.setattr(cpu_type, "max_k", 4)
    monkeypatch.setattr(cpu_type, "kernel_max_k", 4)
    monkeypatch.setattr(torch_type, "kernel_max_k", 3)  # short too, but no hard limit
    x = torch.zeros(2, 100)
    assert backends.resolve("auto", x, k=4).name == "cpu"
    assert backends.resolve("auto", x, k=9).name == "torch"
    monkeypatch.setattr(torch_type, "max_k", 8)
    backends.clear_resolution_cache()
    assert backends.resolve("auto", x, k=9) == "reference"
