"""Every error rule of docs/spec.md section 4, and the edge cases that must not error."""

import pytest
import torch

import cringe_kernels as ck

from helpers import cpu_kernel_backends, random_case

BACKENDS = ["reference"] + cpu_kernel_backends()


def good():
    logits, target, feedback, uniform = random_case(2, 4, 9, seed=0)
    return dict(logits=logits, target=target, feedback=feedback)


def call(**overrides):
    args = good()
    args.update(overrides)
    return ck.cringe_loss(args.pop("logits"), args.pop("target"), args.pop("feedback"), **args)


BAD_BINARY = [
    # (overrides, exception, words the message must contain)
    (dict(logits=torch.zeros(2, 4, 9, dtype=torch.long)), TypeError, ["logits", "floating"]),
    (dict(logits=[1.0, 2.0]), TypeError, ["logits"]),
    (dict(logits=torch.zeros(2, 4, 1)), ValueError, ["logits", "V >= 2"]),
    (dict(target=torch.zeros(2, 4)), TypeError, ["target", "integer"]),
    (dict(target=torch.zeros(2, 5, dtype=torch.long)), ValueError, ["target", "(2, 4)", "(2, 5)"]),
    (dict(target=torch.full((2, 4), 9)), ValueError, ["target", "[0, 9)", "9"]),
    (dict(target=torch.full((2, 4), -1)), ValueError, ["target", "-1"]),
    (dict(feedback=torch.tensor([[2], [0]])), ValueError, ["feedback", "2"]),
    (dict(feedback=torch.tensor([[0.5], [1.0]])), ValueError, ["feedback", "0.5"]),
    (dict(feedback=torch.ones(3, 1)), ValueError, ["feedback", "broadcast"]),
    (dict(feedback="yes"), TypeError, ["feedback"]),
    (dict(k=0), ValueError, ["k", "0"]),
    (dict(k=2.5), TypeError, ["k"]),
    (dict(k=True), TypeError, ["k"]),
    (dict(alpha="1"), TypeError, ["alpha"]),
    (dict(alpha=float("nan")), ValueError, ["alpha"]),
    (dict(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    (dict(backend="fast"), ValueError, ["backend", "'fast'"]),
    (dict(uniform=torch.rand(2, 3)), ValueError, ["uniform", "(2, 3)"]),
    (dict(uniform=torch.full((2, 4), 1.0)), ValueError, ["uniform", "[0, 1)", "1.0"]),
    (dict(uniform=torch.full((2, 4), -0.5)), ValueError, ["uniform", "-0.5"]),
    (dict(uniform=torch.full((2, 4), float("nan"))), ValueError, ["uniform", "nan"]),
    (dict(uniform=torch.zeros(2, 4, dtype=torch.long)), TypeError, ["uniform", "floating"]),
    (dict(generator=123), TypeError, ["generator"]),
    (dict(num_items_in_batch=0), ValueError, ["num_items_in_batch", "0"]),
    (dict(num_items_in_batch=torch.ones(2)), ValueError, ["num_items_in_batch"]),
    (dict(detach_positives=1), TypeError, ["detach_positives"]),
    (dict(ignore_index=1.5), TypeError, ["ignore_index"]),
]


@pytest.mark.parametrize("overrides,exc,words", BAD_BINARY, ids=[f"{i}-{list(o)[0]}" for i, (o, _, _) in enumerate(BAD_BINARY)])
def test_binary_errors_name_the_argument(overrides, exc, words):
    with pytest.raises(exc) as info:
        call(**overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def pair_args():
    chosen, tw, _, _ = random_case(2, 3, 9, seed=1)
    rejected, tl, _, _ = random_case(2, 4, 9, seed=2)
    return dict(chosen_logits=chosen, chosen_target=tw, rejected_logits=rejected, rejected_target=tl)


BAD_PAIRWISE = [
    (dict(chosen_logits=torch.zeros(6, 9)), ValueError, ["chosen_logits"]),
    (dict(rejected_logits=torch.zeros(3, 4, 9)), ValueError, ["rejected_logits", "batch size"]),
    (dict(rejected_logits=torch.zeros(2, 4, 8)), ValueError, ["rejected_logits", "vocabulary"]),
    (dict(rejected_target=torch.zeros(2, 5, dtype=torch.long)), ValueError, ["rejected_target"]),
    (dict(chosen_target=torch.full((2, 3), 99)), ValueError, ["chosen_target", "99"]),
    (dict(rejected_target=torch.full((2, 4), 9)), ValueError, ["rejected_target", "9"]),
    (dict(temperature=0.0), ValueError, ["temperature", "> 0"]),
    (dict(temperature=-1), ValueError, ["temperature"]),
    (dict(margin=None), TypeError, ["margin"]),
    (dict(uniform=torch.rand(2, 3)), ValueError, ["uniform", "rejected_target"]),
    (dict(gate_grad="no"), TypeError, ["gate_grad"]),
]


@pytest.mark.parametrize("overrides,exc,words", BAD_PAIRWISE, ids=[f"{i}-{list(o)[0]}" for i, (o, _, _) in enumerate(BAD_PAIRWISE)])
def test_pairwise_errors_name_the_argument(overrides, exc, words):
    args = pair_args()
    args.update(overrides)
    with pytest.raises(exc) as info:
        ck.pairwise_cringe_loss(args.pop("chosen_logits"), args.pop("chosen_target"), args.pop("rejected_logits"),
                                args.pop("rejected_target"), **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_module_constructor_validates():
    with pytest.raises(ValueError, match="k"):
        ck.CringeLoss(k=0)
    with pytest.raises(ValueError, match="temperature"):
        ck.PairwiseCringeLoss(temperature=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_zero_grad(backend, reduction):
    logits = torch.randn(3, 4, 7, requires_grad=True)
    target = torch.full((3, 4), -100)
    out = ck.cringe_loss(logits, target, torch.tensor([[1], [0], [0]]), reduction=reduction, backend=backend,
                         return_details=True)
    assert torch.all(out.loss == 0) and not torch.isnan(out.loss).any()
    assert torch.all(out.sample_index == -1)
    g, = torch.autograd.grad(out.loss.sum(), logits)
    assert torch.all(g == 0)
    pair = ck.pairwise_cringe_loss(logits, target, logits, target, reduction=reduction, backend=backend)
    assert torch.all(pair == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    logits = torch.randn(0, 5, 11, requires_grad=True)
    target = torch.zeros(0, 5, dtype=torch.long)
    loss = ck.cringe_loss(logits, target, 0, backend=backend)
    assert loss.item() == 0
    g, = torch.autograd.grad(loss, logits)
    assert g.shape == logits.shape
    assert ck.cringe_loss(logits, target, 0, backend=backend, reduction="none").shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_only_from_counted_rows(backend):
    logits, target, feedback, u = random_case(2, 3, 8, seed=3)
    target[0, 0] = 1
    target[1, 1] = -100
    logits[1, 1, 2] = float("nan")  # in an ignored row: no effect
    logits.requires_grad_(True)
    loss = ck.cringe_loss(logits, target, feedback, uniform=u, backend=backend)
    assert torch.isfinite(loss)
    g, = torch.autograd.grad(loss, logits)
    assert torch.all(g[1, 1] == 0) and torch.isfinite(g).all()
    bad = logits.detach().clone()
    bad[0, 0, 5] = float("nan")  # in a counted row: NaN loss, no crash
    out = ck.cringe_loss(bad, target, feedback, uniform=u, backend=backend, reduction="none", return_details=True)
    assert torch.isnan(out.loss[0, 0]) and torch.isfinite(out.loss[1]).all()
    negative_nan = bad.clone()
    negative_nan[1, 0, 3] = float("nan")
    out = ck.cringe_loss(negative_nan, target, feedback, uniform=u, backend=backend, reduction="none",
                         return_details=True)
    s = out.sample_index[1, 0].item()
    assert torch.isnan(out.loss[1, 0]) and 0 <= s < 8 and s != target[1, 0].item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_checks_can_be_switched_off(backend):
    logits, target, feedback, u = random_case(2, 3, 8, seed=4)
    target[0, 0] = 8
    target[1, 2] = -7
    with pytest.raises(ValueError):
        ck.cringe_loss(logits, target, feedback, backend=backend)
    with ck.value_checks(False):
        # no check: the bad rows give NaN, never an out-of-bounds access
        out = ck.cringe_loss(logits, target, feedback, uniform=u, backend=backend, reduction="none",
                             return_details=True)
        assert torch.isnan(out.loss[0, 0]) and torch.isnan(out.loss[1, 2])
        ok = torch.ones_like(target, dtype=torch.bool)
        ok[0, 0] = ok[1, 2] = False
        assert torch.isfinite(out.loss[ok]).all()
        assert out.sample_index[0, 0] == -1 and out.sample_index[1, 2] == -1
    with pytest.raises(ValueError):  # back on after the block
        ck.cringe_loss(logits, target, feedback, backend=backend)


VALUE_ERRORS = [
    (dict(target=8), "target"),
    (dict(target=-7), "target"),
    (dict(uniform=1.0), "uniform"),
    (dict(uniform=float("nan")), "uniform"),
    (dict(feedback=0.5), "feedback"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("single_pass", [False, True])
@pytest.mark.parametrize("bad,name", VALUE_ERRORS, ids=[f"{n}-{list(b.values())[0]}" for b, n in VALUE_ERRORS])
def test_value_errors_reach_the_caller_on_every_backend(backend, single_pass, bad, name):
    # Kernel backends launch before they learn the outcome of the value
    # checks: the error must still come out of the call, naming the argument.
    logits, target, feedback, u = random_case(2, 3, 8, seed=6)
    feedback = feedback.float().expand(2, 3).clone()
    if "target" in bad:
        target[1, 1] = bad["target"]
    if "uniform" in bad:
        u[0, 2] = bad["uniform"]
    if "feedback" in bad:
        feedback[1, 0] = bad["feedback"]
    with pytest.raises(ValueError, match=name):
        ck.cringe_loss(logits.requires_grad_(True), target, feedback, uniform=u, backend=backend,
                       single_pass=single_pass)
    if name != "feedback":  # the pairwise loss has no feedback
        with pytest.raises(ValueError, match=name):
            ck.pairwise_cringe_loss(logits, target, logits.detach() + 1, target, uniform=u, backend=backend,
                                    single_pass=single_pass)


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_uniform_gives_a_valid_draw_without_checks(backend):
    # With the checks off (or before they are waited for) a uniform outside
    # [0, 1) must still select one of the candidates, never stray.
    logits, target, feedback, u = random_case(2, 4, 8, seed=7, ignore_frac=0.0)
    u = torch.tensor([[float("nan"), 1.0, -0.5, 7.0], [float("inf"), -float("inf"), 0.999999, 1e-30]])
    with ck.value_checks(False):
        out = ck.cringe_loss(logits, target, torch.zeros_like(feedback), uniform=u, backend=backend, k=3,
                             reduction="none", return_details=True)
    s = out.sample_index
    assert bool(((s >= 0) & (s < 8) & (s != target)).all()), s
    assert bool(torch.isfinite(out.loss).all())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_value_checks_step_aside_during_cuda_graph_capture(backend):
    # With the checks on (the default) a captured loss must neither wait for
    # the device nor lose its result: replaying the graph gives the eager loss.
    if backend not in ck.available_backends("cuda"):
        pytest.skip(f"backend {backend!r} does not run here")
    logits, target, feedback, u = random_case(2, 3, 50, seed=8, device="cuda")
    eager = ck.cringe_loss(logits, target, feedback, uniform=u, backend=backend)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # first calls (lazy init, autotuning) outside the capture
        for _ in range(2):
            ck.cringe_loss(logits, target, feedback, uniform=u, backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ck.cringe_loss(logits, target, feedback, uniform=u, backend=backend)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


def test_devices_must_match():
    logits, target, feedback, u = random_case(2, 3, 8, seed=5)
    meta = torch.zeros(2, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="target is on meta"):
        ck.cringe_loss(logits, meta, feedback)
    with pytest.raises(ValueError, match="uniform is on meta"):
        ck.cringe_loss(logits, target, feedback, uniform=torch.zeros(2, 3, device="meta"))
    with pytest.raises(ValueError, match="feedback is on meta"):
        ck.cringe_loss(logits, target, torch.zeros(2, 1, device="meta"))
