"""The C++/OpenMP ``cpu`` backend against the reference, through the public API.

Shapes are small (the reference is slow); together they cover every branch
of the kernel: dtypes, V not a power of two and > 65536, k from 1 to V - 1
and beyond, strided rows, ignored / all ignored / empty batches, -inf
masks, ties, NaN, in-place backward, out-of-range targets with value checks
off, and the torch.library registration.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cringe_kernels as ck
from cringe_kernels import backends
from kernel_checks import (check_nan_rows, check_single_pass_completion, compare_binary, compare_pairwise,
                           compare_ties, half_negative, random_logits, random_target, run_binary)

pytestmark = pytest.mark.skipif(not backends.status("cpu").installed, reason=backends.status("cpu").reason)

DEV = "cpu"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def every_thread(monkeypatch):
    """The backend gives small problems one thread (fork and join cost more);
    these tests are small, so they lower that bar to keep every OpenMP thread
    (and its slice of the top-k workspace) in play."""
    from cringe_kernels.backends import cpu_backend

    monkeypatch.setattr(cpu_backend, "_LOGITS_PER_THREAD", 1)


def test_small_problems_take_one_thread(monkeypatch):
    from cringe_kernels.backends import cpu_backend

    monkeypatch.setattr(cpu_backend, "_LOGITS_PER_THREAD", 1 << 17)
    threads = torch.get_num_threads()
    assert cpu_backend._threads(torch.empty(1, 8, 64)) == 1
    assert cpu_backend._threads(torch.empty(2, 64, 4096)) == min(threads, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threads_give_bitwise_the_same_result(dtype):
    # Each row is one thread's work, so the number of threads changes nothing.
    x = random_logits((3, 9, 2000), dtype, DEV, seed=3)
    y = random_target((3, 9), 2000, DEV)
    fb, u = half_negative((3, 9), DEV), torch.rand(3, 9)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            results.append(run_binary(x, y, fb, "cpu", k=5, uniform=u, ct_on_positives=True))
    finally:
        torch.set_num_threads(previous)
    (one, grad_1), (three, grad_3) = results
    assert torch.equal(one.loss, three.loss) and torch.equal(one.sample_index, three.sample_index)
    assert torch.equal(grad_1, grad_3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [2, 3, 33, 1000, 4099])
@pytest.mark.parametrize("k", [1, 5, 17, 64])
def test_binary_matches_reference(dtype, V, k):
    x = random_logits((3, 7, V), dtype, DEV, seed=V + k)
    y = random_target((3, 7), V, DEV, seed=V)
    compare_binary(x, y, half_negative((3, 7), DEV), "cpu", k=k, ct_on_positives=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("V,k", [(300, 65), (4099, 100), (4099, 1000), (500, 499)])
def test_large_k_heap_path(dtype, V, k):
    # k_eff > 64 switches the kernel from the sorted list to the heap.
    x = random_logits((2, 5, V), dtype, DEV, seed=k)
    y = random_target((2, 5), V, DEV)
    compare_binary(x, y, half_negative((2, 5), DEV), "cpu", k=k, ct_on_positives=True)


@pytest.mark.parametrize("k", [6, 7, 100])
def test_k_at_least_v_minus_1(k):
    V = 7
    x = random_logits((4, 5, V), torch.float32, DEV)
    y = random_target((4, 5), V, DEV)
    got, _ = compare_binary(x, y, half_negative((4, 5), DEV), "cpu", k=k, ct_on_positives=True)
    s, t = got.sample_index.reshape(-1), y.reshape(-1)
    assert bool(((s != t) | (t == -100)).all())


@pytest.mark.parametrize("k", [5, 64])
def test_vocab_above_65536(k):
    V = 70001
    x = random_logits((2, 3, V), torch.float32, DEV, seed=3)
    y = random_target((2, 3), V, DEV, ignore_frac=0.0)
    compare_binary(x, y, half_negative((2, 3), DEV), "cpu", k=k, ct_on_positives=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_rows(dtype):
    # HF's logits[:, :-1]: rows cannot be flattened with one stride; and a
    # transposed view whose leading strides are out of order. Odd V makes the
    # rows start at every alignment.
    V = 1001
    full = random_logits((3, 6, V), dtype, DEV, seed=5)
    x = full[:, :-1]
    assert not x.is_contiguous()
    y = random_target((3, 5), V, DEV)
    compare_binary(x, y, half_negative((3, 5), DEV), "cpu", k=5, ct_on_positives=True)
    xt = random_logits((5, 3, V), dtype, DEV, seed=6).transpose(0, 1)
    compare_binary(xt, y, half_negative((3, 5), DEV), "cpu", k=5, ct_on_positives=True)


def test_ignored_rows_have_zero_gradient():
    x = random_logits((2, 4, 50), torch.float32, DEV)
    x[0, 1] = float("nan")  # an ignored row may hold anything
    y = random_target((2, 4), 50, DEV, ignore_frac=0.0)
    y[0, 1] = -100
    y[1, 3] = -100
    got, grad = compare_binary(x, y, half_negative((2, 4), DEV), "cpu", k=5)
    assert bool((grad[0, 1] == 0).all()) and bool((grad[1, 3] == 0).all())
    assert bool(torch.isfinite(got.loss).all())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_and_empty(reduction):
    for shape in ((3, 4), (0, 4)):
        x = random_logits(shape + (20,), torch.float32, DEV).requires_grad_(True)
        y = torch.full(shape, -100, dtype=torch.long)
        loss = ck.cringe_loss(x, y, half_negative(shape, DEV), backend="cpu", reduction=reduction)
        loss.backward()
        assert loss.item() == 0.0
        assert x.grad is not None and bool((x.grad == 0).all())


def test_neg_inf_masks():
    V = 40
    x = random_logits((4, 6, V), torch.float32, DEV, seed=9)
    x[..., ::2] = float("-inf")                  # half the vocabulary masked
    x[0, 0, 5:] = float("-inf")                  # fewer finite candidates than k
    x[1, 1, :] = float("-inf")                   # only the target is finite
    y = random_target((4, 6), V, DEV, ignore_frac=0.0)
    y[0, 0], y[1, 1] = 1, 3
    x[1, 1, 3] = 0.5
    got, _ = compare_binary(x, y, half_negative((4, 6), DEV), "cpu", k=8, ct_on_positives=True, check_grad=False)
    rows = x.reshape(-1, V)
    s = got.sample_index.reshape(-1)
    finite_left = torch.isfinite(rows).sum(1) > 1
    picked = rows.gather(1, s.clamp(min=0)[:, None]).squeeze(1)
    assert bool(torch.isfinite(picked[finite_left]).all()), "a -inf column was sampled while a finite one existed"


def test_neg_inf_gradients_match():
    V = 40
    x = random_logits((2, 3, V), torch.float64, DEV, seed=10)
    x[..., 1::3] = float("-inf")
    y = random_target((2, 3), V, DEV, ignore_frac=0.0)
    y = torch.where(y % 3 == 1, y - 1, y)  # finite targets
    compare_binary(x, y, half_negative((2, 3), DEV), "cpu", k=5, ct_on_positives=True)


def test_ties_follow_column_order():
    compare_ties("cpu", DEV, (1, 3, 17))


def test_nan_propagates_without_bad_index():
    got, grad = check_nan_rows("cpu", DEV)
    finite = torch.ones(2, 4, dtype=torch.bool)
    finite[0, 2] = finite[1, 0] = False
    assert bool(torch.isfinite(got.loss[finite]).all())
    assert bool(torch.isfinite(grad[finite]).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_backward_equals_out_of_place(dtype):
    V = 257
    full = random_logits((3, 5, V), dtype, DEV, seed=11)
    x = full[:, :-1]
    y = random_target((3, 4), V, DEV)
    fb = half_negative((3, 4), DEV)
    u = torch.rand(3, 4)
    _, g_out = run_binary(x, y, fb, "cpu", k=5, uniform=u, ct_on_positives=True)
    _, g_in = run_binary(x, y, fb, "cpu", k=5, uniform=u, ct_on_positives=True, inplace=True)
    assert torch.equal(g_out, g_in)


def test_out_of_range_target_gives_nan_not_a_crash():
    V = 16
    x = random_logits((2, 3, V), torch.float32, DEV).requires_grad_(True)
    y = torch.tensor([[0, V, 3], [-5, 2, 10**12]])
    with ck.value_checks(False):
        out = ck.cringe_loss(x, y, half_negative((2, 3), DEV), backend="cpu", reduction="none", return_details=True,
                             ct_on_positives=True)
        out.loss.sum().backward()
    bad = torch.tensor([[False, True, False], [True, False, True]])
    assert bool(torch.isnan(out.loss[bad]).all())
    assert bool(torch.isfinite(out.loss[~bad]).all())
    assert bool((out.sample_index[bad] == -1).all())
    # The primitive itself: NaN statistics and no sample on those rows.
    stats = backends.resolve("cpu", x).forward(x.detach(), y.reshape(-1), torch.rand(6), 5, -100)
    assert bool(torch.isnan(stats.lse[bad.reshape(-1)]).all())
    assert bool((stats.sample_index[bad.reshape(-1)] == -1).all())


def test_k_zero_primitive():
    x = random_logits((2, 3, 10), torch.float32, DEV)
    y = random_target((2, 3), 10, DEV, ignore_frac=0.0)
    stats = backends.resolve("cpu", x).forward(x, y.reshape(-1), None, 0, -100)
    assert bool((stats.sample_index == -1).all()) and bool((stats.sample_logit == 0).all())
    torch.testing.assert_close(stats.lse, torch.logsumexp(x.reshape(-1, 10), 1))


def test_gradcheck_float64():
    V = 9
    x = random_logits((2, 3, V), torch.float64, DEV).requires_grad_(True)
    y = random_target((2, 3), V, DEV)
    u = torch.rand(2, 3)
    fb = half_negative((2, 3), DEV)
    torch.autograd.gradcheck(
        lambda t: ck.cringe_loss(t, y, fb, k=3, uniform=u, backend="cpu", ct_on_positives=True), (x,))
    xc = random_logits((2, 3, V), torch.float64, DEV, seed=1).requires_grad_(True)
    yc = random_target((2, 3), V, DEV, seed=1)
    torch.autograd.gradcheck(
        lambda a, b: ck.pairwise_cringe_loss(a, yc, b, y, k=3, uniform=u, backend="cpu", gate_grad=True),
        (xc, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_pairwise_matches_reference(dtype, length_normalize):
    V = 301
    chosen = random_logits((3, 6, V), dtype, DEV, seed=1)[:, :-1]
    rejected = random_logits((3, 4, V), dtype, DEV, seed=2)
    ct = random_target((3, 5), V, DEV, seed=1)
    rt = random_target((3, 4), V, DEV, seed=2)
    compare_pairwise(chosen, ct, rejected, rt, "cpu", k=5, margin=0.5, temperature=2.0,
                     length_normalize=length_normalize)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 300), k=st.integers(1, 70),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    mask=st.floats(0.0, 0.9), ties=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, T, V, k, dtype, mask, ties, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    if ties:
        x = x.round()
    x = x.masked_fill(torch.rand(B, T, V, generator=g) < mask, float("-inf")).to(dtype)
    y = random_target((B, T), V, DEV, seed=seed)
    # Keep every target finite so the reference's loss is finite too.
    rows = x.reshape(-1, V)
    yy = y.reshape(-1)
    ok = yy >= 0
    rows[ok, yy[ok]] = 0.0
    compare_binary(x, y, half_negative((B, T), DEV), "cpu", k=k, ct_on_positives=True,
                   uniform=torch.rand(B, T, generator=g))


def test_status_and_auto():
    st_ = backends.status("cpu")
    assert st_.installed and st_.devices == ("cpu",) and st_.reason == ""
    assert backends.resolve("auto", torch.zeros(2, 3)).name == "cpu"


def test_torch_library_opcheck():
    V = 37
    x = random_logits((2, 3, V), torch.float32, DEV)[:, :2]
    y = random_target((2, 2), V, DEV).reshape(-1)
    u = torch.rand(4)
    torch.library.opcheck(torch.ops.cringe_kernels.cpu_row_stats.default, (x, y, u, 5, -100))
    torch.library.opcheck(torch.ops.cringe_kernels.cpu_row_stats.default, (x, y, None, 0, -100))
    lse, t, s_logit, s_idx = torch.ops.cringe_kernels.cpu_row_stats(x, y, u, 5, -100)
    g = torch.rand(4)
    args = (y, s_idx, lse, g, g.clone(), g.clone(), -100)
    torch.library.opcheck(torch.ops.cringe_kernels.cpu_row_stats_backward.default, (x, *args))
    torch.library.opcheck(torch.ops.cringe_kernels.cpu_row_stats_backward_.default, (x.clone(), *args))


def test_bad_arguments_raise():
    # The ops check what the backend's methods take on trust from the losses.
    from cringe_kernels.backends.cpu_backend import OPS

    def be_forward(*args):
        return OPS.forward(*args)

    x = torch.zeros(1, 2, 5)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="target"):
        be_forward(x, y.int(), torch.rand(2), 1, -100)
    with pytest.raises(ValueError, match="uniform"):
        be_forward(x, y, torch.rand(3), 1, -100)
    with pytest.raises(ValueError, match="last stride"):
        be_forward(torch.zeros(1, 5, 2).transpose(1, 2), y[:1].repeat(5)[:5], torch.rand(5), 1, -100)
    with pytest.raises(TypeError, match="float16"):
        be_forward(x.int(), y, torch.rand(2), 1, -100)


def test_torch_compile_fullgraph():
    # The registry imports backends lazily, which dynamo cannot trace: load it first.
    x = random_logits((2, 5, 50), torch.float32, DEV).requires_grad_(True)
    backends.resolve("cpu", x)
    y = random_target((2, 5), 50, DEV)
    fb = half_negative((2, 5), DEV)
    u = torch.rand(2, 5)

    def f(x):
        return ck.cringe_loss(x, y, fb, uniform=u, backend="cpu", ct_on_positives=True)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (grad,) = torch.autograd.grad(loss, x)
    loss_eager = f(x)
    (grad_eager,) = torch.autograd.grad(loss_eager, x)
    torch.testing.assert_close(loss, loss_eager)
    torch.testing.assert_close(grad, grad_eager)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_match_torch(dtype):
    # Upcast of every 16-bit pattern (read back as the target logit) and the
    # rounding of float32 values at the gradient store (g_t on a zero row).
    be = backends.resolve("cpu", torch.zeros(1, 2))
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    x = torch.zeros(1, bits.numel(), 2, dtype=dtype)
    x[0, :, 0] = bits.view(dtype)
    n = bits.numel()
    stats = be.forward(x, torch.zeros(n, dtype=torch.long), None, 0, -100)
    assert torch.equal(stats.target_logit.isnan(), x[0, :, 0].float().isnan())
    ok = ~stats.target_logit.isnan()
    assert torch.equal(stats.target_logit[ok], x[0, :, 0].float()[ok])

    g = torch.Generator().manual_seed(0)
    vals = torch.cat([
        torch.randn(20000, generator=g) * torch.logspace(-30, 30, 20000),
        torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, 6e-8, 3e-8, 2.9e-8, 1e-9, float("inf"),
                      -float("inf"), float("nan"), 1.0009765625, 1.00048828125, 1.000732421875]),
    ])
    m = vals.numel()
    zeros = torch.zeros(1, m, 2, dtype=dtype)
    y = torch.zeros(m, dtype=torch.long)
    z = torch.zeros(m)
    grad = be.backward(zeros, y, torch.full((m,), -1), z, z, vals, z, -100, False)
    want = vals.to(dtype)
    got = grad[0, :, 0]
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~want.isnan()], want[~want.isnan()])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,k", [(2, 1), (7, 6), (1001, 5), (4099, 100), (70001, 5)])
def test_single_pass_completes_to_the_two_pass_gradient(dtype, V, k):
    # single_pass: the forward also writes lse_weight * exp(x - lse) (from
    # L2, right after the row's statistics); the backward completes it, bit
    # for bit the two-pass gradient, whatever grad_lse it gets.
    check_single_pass_completion(backends.resolve("cpu", torch.zeros(1, 1, 2)), dtype, V, k)
