"""The hand-written ``cuda`` backend against the reference.

Every check runs twice: on a GPU (``gpu`` marked; skips cleanly without one)
and on the CPU through the SIMT simulator (``cuda_sim``, tests/cuda_sim.py),
which executes the same kernel sources thread by thread, so the kernels'
logic is checked on every CI run. The checks are those of
test_cpu_backend.py plus half precision, the refusal of k above the
shared-memory top-k limit, rows split into pieces and the single pass's
launch shapes (chosen through cringe_kernels/backends/heuristics.py, which
the tests override); a batch with more than 2^31 logits (int64 offsets) is
GPU only. Nothing here touches the GPU at import or collection time.
"""

from typing import NamedTuple

import pytest
import torch

import cringe_kernels as ck
from cringe_kernels import backends, reference
from cringe_kernels.backends.base import stats_dtype
from kernel_checks import (GRAD_TOL, STAT_TOL, adversarial_topk_rows, check_nan_rows, check_single_pass_completion,
                           compare_binary, compare_pairwise, compare_ties, half_negative, launch_with, nonfinite_rows,
                           random_logits, random_target, run_binary)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


class Target(NamedTuple):
    """Where the kernels run: backend name, tensor device."""

    name: str
    dev: str


@pytest.fixture(params=[pytest.param(Target("cuda", "cuda"), marks=pytest.mark.gpu, id="gpu"),
                        pytest.param(Target("cuda_sim", "cpu"), id="sim")])
def kern(request):
    st = backends.status(request.param.name)
    if request.param.dev not in st.devices:
        pytest.skip(f"{request.param.name} backend cannot run: {st.reason}")
    return request.param


def _module(kern):
    """The compiled module behind ``kern``: ``_C_cuda`` or its simulator build."""
    if kern.name == "cuda":
        from cringe_kernels import _C_cuda

        return _C_cuda
    import cuda_sim

    return cuda_sim.MODULE


def check_forward(kern, x, target, u, k, **lse_tol) -> None:
    """The forward's statistics against the reference's: the same sampled
    columns and logits (NaN where the reference has NaN), lse within
    ``lse_tol`` (assert_close's defaults when empty)."""
    got = backends.resolve(kern.name, x).forward(x, target, u, k, -100)
    want = reference.row_stats(x, target, u, k, -100)
    torch.testing.assert_close(got.lse, want.lse, equal_nan=True, **lse_tol)
    torch.testing.assert_close(got.sample_logit, want.sample_logit, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got.sample_index, want.sample_index)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [2, 3, 33, 1000, 4099, 32000])
@pytest.mark.parametrize("k", [1, 5, 17, 64])
def test_binary_matches_reference(kern, dtype, V, k):
    x = random_logits((3, 7, V), dtype, kern.dev, seed=V + k)
    y = random_target((3, 7), V, kern.dev, seed=V)
    compare_binary(x, y, half_negative((3, 7), kern.dev), kern.name, k=k, ct_on_positives=True)


@pytest.mark.parametrize("k", [6, 7, 100])
def test_k_at_least_v_minus_1(kern, k):
    x = random_logits((4, 5, 7), torch.float32, kern.dev)
    y = random_target((4, 5), 7, kern.dev)
    compare_binary(x, y, half_negative((4, 5), kern.dev), kern.name, k=k, ct_on_positives=True)


@pytest.mark.parametrize("k", [65, 200])
def test_k_above_kernel_limit_is_a_clear_error(kern, k):
    """k_eff above the shared-memory top-k (64) is refused by name, forward
    and single pass; k at or above V - 1 is k_eff = V - 1 and runs."""
    x = random_logits((2, 5, 1000), torch.float32, kern.dev)
    y = random_target((2, 5), 1000, kern.dev)
    for single in (False, True):
        with pytest.raises(ValueError, match=f"at most 64 candidates; got k={k} "):
            ck.cringe_loss(x.clone().requires_grad_(True), y, half_negative((2, 5), kern.dev), k=k, backend=kern.name,
                           single_pass=single)
    x = random_logits((2, 5, 60), torch.float32, kern.dev)
    compare_binary(x, random_target((2, 5), 60, kern.dev), half_negative((2, 5), kern.dev), kern.name, k=k,
                   ct_on_positives=True)


@pytest.mark.gpu
def test_auto_takes_triton_above_the_cuda_limit():
    """backend="auto" on a GPU: CUDA up to k_eff = 64, Triton above (whose
    kernel draws from up to 256 candidates)."""
    if "cuda" not in backends.status("cuda").devices or "cuda" not in backends.status("triton").devices:
        pytest.skip("needs the cuda and triton backends on a GPU")
    x = torch.zeros(1, 2, 1000, device="cuda")
    assert backends.resolve("auto", x, k=64).name == "cuda"
    assert backends.resolve("auto", x, k=65).name == "triton"
    y = random_target((1, 2), 1000, "cuda", ignore_frac=0.0)
    compare_binary(random_logits((1, 2, 1000), torch.float32, "cuda"), y, half_negative((1, 2), "cuda"), "auto",
                   k=100, ct_on_positives=True)


@pytest.mark.parametrize("k", [5, 64])
def test_vocab_above_65536(kern, k):
    V = 70001
    x = random_logits((2, 3, V), torch.float32, kern.dev, seed=3)
    y = random_target((2, 3), V, kern.dev, ignore_frac=0.0)
    compare_binary(x, y, half_negative((2, 3), kern.dev), kern.name, k=k, ct_on_positives=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_misaligned_rows(kern, dtype):
    V = 1001  # odd: rows start at every alignment, so head / packs / tail all run
    full = random_logits((3, 6, V), dtype, kern.dev, seed=5)
    y = random_target((3, 5), V, kern.dev)
    compare_binary(full[:, :-1], y, half_negative((3, 5), kern.dev), kern.name, k=5, ct_on_positives=True)
    xt = random_logits((5, 3, V), dtype, kern.dev, seed=6).transpose(0, 1)
    compare_binary(xt, y, half_negative((3, 5), kern.dev), kern.name, k=5, ct_on_positives=True)


def test_ignored_all_ignored_and_empty(kern):
    x = random_logits((2, 4, 50), torch.float32, kern.dev)
    x[0, 1] = float("nan")
    y = random_target((2, 4), 50, kern.dev, ignore_frac=0.0)
    y[0, 1] = -100
    _, grad = compare_binary(x, y, half_negative((2, 4), kern.dev), kern.name, k=5)
    assert bool((grad[0, 1] == 0).all())
    for shape in ((3, 4), (0, 4)):
        xx = random_logits(shape + (20,), torch.float32, kern.dev).requires_grad_(True)
        yy = torch.full(shape, -100, dtype=torch.long, device=kern.dev)
        loss = ck.cringe_loss(xx, yy, half_negative(shape, kern.dev), backend=kern.name)
        loss.backward()
        assert loss.item() == 0.0 and bool((xx.grad == 0).all())


def test_neg_inf_masks_and_ties(kern):
    V = 40
    x = random_logits((4, 6, V), torch.float32, kern.dev, seed=9)
    x[..., ::2] = float("-inf")
    x[0, 0, 5:] = float("-inf")
    y = random_target((4, 6), V, kern.dev, ignore_frac=0.0)
    y[0, 0] = 1
    compare_binary(x, y, half_negative((4, 6), kern.dev), kern.name, k=8, ct_on_positives=True, check_grad=False)
    compare_ties(kern.name, kern.dev, (1, 3, 17, 64))


@pytest.mark.parametrize("V", [9, 100, 5000, 128256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nonfinite_rows_match_reference(kern, V, dtype):
    check_forward(kern, *nonfinite_rows(V, dtype, kern.dev), 3)


def test_nan_propagates_without_bad_index(kern):
    check_nan_rows(kern.name, kern.dev)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_backward_equals_out_of_place(kern, dtype):
    V = 257
    x = random_logits((3, 5, V), dtype, kern.dev, seed=11)[:, :-1]
    y = random_target((3, 4), V, kern.dev)
    fb = half_negative((3, 4), kern.dev)
    u = torch.rand(3, 4, device=kern.dev)
    _, g_out = run_binary(x, y, fb, kern.name, k=5, uniform=u, ct_on_positives=True)
    _, g_in = run_binary(x, y, fb, kern.name, k=5, uniform=u, ct_on_positives=True, inplace=True)
    assert torch.equal(g_out, g_in)


def test_out_of_range_target_gives_nan_not_a_crash(kern):
    x = random_logits((2, 3, 16), torch.float32, kern.dev).requires_grad_(True)
    y = torch.tensor([[0, 16, 3], [-5, 2, 10**12]], device=kern.dev)
    with ck.value_checks(False):
        out = ck.cringe_loss(x, y, half_negative((2, 3), kern.dev), backend=kern.name, reduction="none",
                             return_details=True, ct_on_positives=True)
        out.loss.sum().backward()
    if kern.dev == "cuda":
        torch.cuda.synchronize()
    bad = torch.tensor([[False, True, False], [True, False, True]], device=kern.dev)
    assert bool(torch.isnan(out.loss[bad]).all()) and bool((out.sample_index[bad] == -1).all())


def test_gradcheck_float64(kern):
    V = 9
    x = random_logits((2, 3, V), torch.float64, kern.dev).requires_grad_(True)
    y = random_target((2, 3), V, kern.dev)
    u = torch.rand(2, 3, device=kern.dev)
    fb = half_negative((2, 3), kern.dev)
    torch.autograd.gradcheck(lambda t: ck.cringe_loss(t, y, fb, k=3, uniform=u, backend=kern.name,
                                                      ct_on_positives=True), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pairwise_matches_reference(kern, dtype):
    V = 301
    chosen = random_logits((3, 6, V), dtype, kern.dev, seed=1)[:, :-1]
    rejected = random_logits((3, 4, V), dtype, kern.dev, seed=2)
    compare_pairwise(chosen, random_target((3, 5), V, kern.dev, seed=1), rejected, random_target((3, 4), V, kern.dev, seed=2),
                     kern.name, k=5, margin=0.5, temperature=2.0)


def test_torch_library_opcheck(kern):
    x = random_logits((2, 3, 37), torch.float32, kern.dev)[:, :2]
    y = random_target((2, 2), 37, kern.dev).reshape(-1)
    u = torch.rand(4, device=kern.dev)
    forward, backward, backward_ = (getattr(torch.ops.cringe_kernels, f"{kern.name}_row_stats{s}")
                                    for s in ("", "_backward", "_backward_"))
    torch.library.opcheck(forward.default, (x, y, u, 5, -100))
    lse, _, _, s_idx = forward(x, y, u, 5, -100)
    g = torch.rand(4, device=kern.dev)
    args = (y, s_idx, lse, g, g.clone(), g.clone(), -100)
    torch.library.opcheck(backward.default, (x, *args))
    torch.library.opcheck(backward_.default, (x.clone(), *args))


@pytest.mark.parametrize("single", [False, True])
def test_torch_compile_full_loss_fullgraph(kern, single):
    """The whole loss through the CUDA ops in one graph (``backend="auto"``
    takes them on a GPU): two passes, and the single pass, whose gradient
    rides on the autograd context; Inductor on a GPU."""
    x = random_logits((2, 5, 300), torch.float32, kern.dev, seed=9)[:, :4]
    y = random_target((2, 4), 300, kern.dev)
    fb, u = half_negative((2, 4), kern.dev), torch.rand(2, 4, device=kern.dev)
    backends.resolve(kern.name, x)  # Dynamo cannot trace the backend's first import

    def loss_fn(logits):
        return ck.cringe_loss(logits, y, fb, uniform=u, backend=kern.name, single_pass=single,
                              ct_on_positives=True)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="inductor" if kern.dev == "cuda" else "aot_eager")
    out = []
    for fn in (compiled, loss_fn):
        leaf = x.detach().clone().requires_grad_(True)
        loss = fn(leaf)
        loss.backward()
        out.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


@pytest.mark.gpu
def test_auto_picks_cuda_first_on_a_gpu(monkeypatch):
    """backend="auto" takes the CUDA kernels on a GPU they run on (the faster
    on the H100 and H200 measured) and Triton where they cannot run."""
    if "cuda" not in backends.status("cuda").devices:
        pytest.skip(f"cuda backend cannot run: {backends.status('cuda').reason}")
    x = torch.zeros(1, 2, 8, device="cuda")
    assert backends.resolve("auto", x).name == "cuda"
    assert ck.available_backends("cuda")[0] == "cuda"
    if "cuda" in backends.status("triton").devices:
        cuda_type = type(backends.resolve("cuda", x))
        monkeypatch.setattr(cuda_type, "supports", lambda self, logits: (False, "not this GPU"))
        assert backends.resolve("auto", x).name == "triton"


def _big_batch(kern):
    """bf16 ``[1, 16400, 131072]`` logits (2.15e9 elements, 4.3 GB), targets,
    uniforms and three coefficient vectors, on the GPU."""
    if kern.dev not in backends.status(kern.name).devices:
        pytest.skip(f"cuda backend cannot run: {backends.status(kern.name).reason}")
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs about 20 GB of GPU memory")
    N, V = 16400, 131072
    assert N * V > 2**31
    g = torch.Generator(device=kern.dev).manual_seed(0)
    x = torch.randn(1, N, V, device=kern.dev, dtype=torch.bfloat16, generator=g)
    y = torch.randint(0, V, (N,), device=kern.dev, generator=g)
    u = torch.rand(N, device=kern.dev, generator=g)
    return x, y, u, *(torch.rand(N, device=kern.dev, generator=g) for _ in range(3))


def _check_big_rows(x, y, u, stats, grad, gl, gt, gs):
    """Rows 0, 1, N/2 and the last two (past 2^31 elements) against the reference."""
    N = x.shape[1]
    rows = torch.tensor([0, 1, N // 2, N - 2, N - 1], device=x.device)
    xr = x[0, rows].float()
    ref = reference.row_stats(xr[None], y[rows], u[rows], 5, -100)
    torch.testing.assert_close(stats.lse[rows], ref.lse, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(stats.target_logit[rows], ref.target_logit)
    assert torch.equal(stats.sample_index[rows], ref.sample_index)
    want = gl[rows, None] * torch.exp(xr - stats.lse[rows, None])
    ar = torch.arange(len(rows), device=x.device)
    want[ar, y[rows]] += gt[rows]
    want[ar, stats.sample_index[rows]] += gs[rows]
    torch.testing.assert_close(grad[0, rows].float(), want.to(torch.bfloat16).float(), rtol=1.6e-2, atol=1e-6)


@pytest.mark.slow
@pytest.mark.gpu
def test_more_than_2_31_logits_single_pass():
    """The single pass and its completion (rows whose grad_lse is the guess:
    two columns; the others rewritten) past 2^31 elements."""
    kern = Target("cuda", "cuda")
    x, y, u, w, gt, gs = _big_batch(kern)
    be = backends.resolve(kern.name, x)
    stats, grad = be.forward_with_grad(x, y, u, 5, -100, w)
    gl = torch.where(torch.arange(len(w), device=w.device) % 2 == 0, w, w * 0.5)
    grad = be.backward_with_grad(grad, x, y, stats.sample_index, stats.lse, w, gl, gt, gs, -100)
    _check_big_rows(x, y, u, stats, grad, gl, gt, gs)


@pytest.mark.slow
@pytest.mark.gpu
def test_more_than_2_31_logits():
    # Gradient as much again. GPU only: the simulator would need hours and 9 GB for it.
    kern = Target("cuda", "cuda")
    x, y, u, gl, gt, gs = _big_batch(kern)
    be = backends.resolve(kern.name, x)
    stats = be.forward(x, y, u, 5, -100)
    grad = be.backward(x, y, stats.sample_index, stats.lse, gl, gt, gs, -100, False)
    _check_big_rows(x, y, u, stats, grad, gl, gt, gs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("V,k", [(33, 5), (4099, 17), (32000, 64), (128256, 5)])
def test_long_rows_one_block_each_match_reference(kern, dtype, V, k, monkeypatch):
    """One block per row (the choice for many rows) over rows of up to
    V = 128256: the same samples and statistics as the reference."""
    launch_with(monkeypatch, pieces=1)
    x = random_logits((2, 24, V), dtype, kern.dev, seed=V + k)
    y = random_target((2, 24), V, kern.dev)
    compare_binary(x, y, half_negative((2, 24), kern.dev), kern.name, k=k, ct_on_positives=True)
    compare_ties(kern.name, kern.dev, (1, 3, 17, 64))
    check_forward(kern, *nonfinite_rows(V, dtype, kern.dev), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [7, 300, 9000, 70001])
@pytest.mark.parametrize("k", [1, 5, 64])
def test_topk_on_adversarial_rows(kern, dtype, V, k, monkeypatch):
    # Ties everywhere, ascending and descending rows, ties at the threshold,
    # candidates only at the end or the start: the candidate buffer
    # overflows and the threshold rises every round. One block per row.
    launch_with(monkeypatch, pieces=1)
    check_forward(kern, *adversarial_topk_rows(V, dtype, kern.dev), k, rtol=2e-5, atol=2e-6)


def seed_rows(V, k, dtype, device, threads=256, unroll=4):
    """Rows aimed at round 0's seed threshold (csrc/cuda/forward.cu,
    round0_seed), with targets and uniforms.

    The row-threshold kernel gives pack ``q`` of round 0 to thread
    ``q % threads``; a thread's unit is its max over its packs there, and
    the seed is the smallest over the 8 warps of each warp's j-th largest
    unit, ``j = ceil((k_eff + 1) / 8)``. Rows (``-inf`` unless said):
    0, j hot units in every warp, distinct values, the target the lowest of
    them (for k_eff + 1 = 8j the bound is exact: k_eff non-target columns
    reach it); 1, j - 1 high units and one low one in every warp, the
    target the highest (for k_eff = 8m a seed one unit short per warp
    misses the k_eff-th candidate); 2, as 1 with one warp a unit short (no
    finite seed); 3, the whole top-k inside one
    thread's columns, random elsewhere; 4, every unit's max tied at one
    value, random below (every candidate equals the seed: the column order
    decides); 5, a NaN in a thread that is otherwise low; 6, hot units in
    one warp only, random (lower) elsewhere. Rows 0-2 draw with u just
    below 1, so they sample the k_eff-th candidate, the one a seed set too
    high would lose. The rows are padded to 16 bytes so that column 0
    starts a pack.
    """
    per_pack = 16 // torch.empty((), dtype=dtype).element_size()
    Vp = -(-V // per_pack) * per_pack
    slots = unroll * per_pack
    k_eff = min(k, V - 1)
    j = -(-(k_eff + 1) // (threads // 32))
    g = torch.Generator().manual_seed(V * 131 + k)

    def col(thread, slot):  # slot-th column of `thread` in round 0
        return ((slot // per_pack) * threads + thread) * per_pack + slot % per_pack

    def some_threads(n, lo, hi):
        return (lo + torch.randperm(hi - lo, generator=g)[:n]).tolist()

    def slot():
        return int(torch.randint(0, slots, (1,), generator=g))

    x = torch.full((1, 7, Vp), float("-inf"), dtype=torch.float64)
    target = torch.randint(0, V, (7,), generator=g)
    hot = [col(t, slot()) for w in range(threads // 32) for t in some_threads(j, 32 * w, 32 * w + 32)]
    # Distinct and exact in every dtype (bfloat16 has steps of 1/128 in
    # [1, 2) and 1/64 in [2, 4); at most 72 hot units), close enough that
    # the k_eff-th candidate keeps a fair share of the draw.
    values = 1.0 + torch.randperm(len(hot), generator=g).double() / 128
    x[0, 0, hot] = values
    target[0] = hot[int(values.argmin())]
    # Rows 1 and 2: in every warp j - 1 high units and one low one, so that
    # exactly the high ones reach a seed taken one unit short per warp.
    low = torch.arange(len(hot)) % j == j - 1
    layered = torch.where(low, 0.0, 0.5) + 1.0 + torch.randperm(len(hot), generator=g).double() / 256
    x[0, 1, hot] = layered
    x[0, 2, hot] = layered
    x[0, 2, hot[0]] = float("-inf")
    target[1] = hot[int(layered.argmax())]
    target[2] = hot[int(layered[1:].argmax()) + 1]
    x[0, 3] = torch.randn(Vp, generator=g, dtype=torch.float64)
    top = min(k_eff + 1, slots)
    x[0, 3, [col(5, s) for s in range(top)]] = 10.0 + torch.arange(top, dtype=torch.float64)
    x[0, 4] = torch.rand(Vp, generator=g, dtype=torch.float64) - 1.0
    x[0, 4, [col(t, slot()) for t in range(threads)]] = 0.5
    x[0, 5] = torch.randn(Vp, generator=g, dtype=torch.float64)
    x[0, 5, col(7, slot())] = float("nan")
    x[0, 6] = torch.randn(Vp, generator=g, dtype=torch.float64) - 10.0
    x[0, 6, [col(t, slot()) for t in some_threads(min(k_eff + 1, 32), 64, 96)]] = 3.0
    u = torch.rand(7, generator=g)
    u[:3] = 1.0 - 2.0 ** -20
    return x.to(dtype).to(device)[..., :V], target.to(device), u.to(device)


# Every dtype at V=9000; the second row length in bf16 alone (its rows cost
# the simulator most, and the dtypes were covered at the first).
@pytest.mark.parametrize("dtype,V,k", [(d, 9000, k) for d in DTYPES for k in (1, 7, 8, 16, 63, 64)]
                         + [(torch.bfloat16, 70001, 5)])
def test_round0_seed_on_adversarial_rows(kern, dtype, V, k, monkeypatch):
    """Round 0 starts from a seed threshold instead of -inf: rows where the
    bound is exact, not finite, tied with every candidate, or built around
    one thread or one warp (seed_rows) give the reference's samples, with
    1 to 8 units taken per warp. One block per row."""
    launch_with(monkeypatch, pieces=1)
    check_forward(kern, *seed_rows(V, k, dtype, kern.dev), k, rtol=2e-5, atol=2e-6)


# ---- The single pass (cringe_loss(..., single_pass=True)) --------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction,num_items,scale", [("mean", None, 1.0), ("sum", None, 1.0), ("mean", 37, 1.0),
                                                       ("none", None, 1.0), ("mean", None, 0.25)])
def test_single_pass_matches_reference(kern, dtype, reduction, num_items, scale, monkeypatch):
    """Loss and gradient as the reference's; with an upstream gradient of 1
    the backward finds grad_lse equal to the forward's guess on every row
    (so it only adds two columns a row), with 0.25 it does not (rows redone)."""
    be = backends.resolve(kern.name, random_logits((1, 1, 4), torch.float32, kern.dev))
    assert be.single_pass
    matched = []
    backward_with_grad = type(be).backward_with_grad

    def spy(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, *rest):
        matched.append(torch.equal(grad_lse, lse_weight))
        return backward_with_grad(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, *rest)

    monkeypatch.setattr(type(be), "backward_with_grad", spy)
    V = 1001
    x = random_logits((3, 6, V), dtype, kern.dev, seed=5)[:, :-1]
    y = random_target((3, 5), V, kern.dev)
    fb, u = half_negative((3, 5), kern.dev), torch.rand(3, 5, device=kern.dev)
    out = {}
    for backend, single in (("reference", False), (kern.name, True)):
        xx = x.detach().clone().requires_grad_(True)
        loss = ck.cringe_loss(xx, y, fb, k=5, uniform=u, backend=backend, reduction=reduction,
                              num_items_in_batch=num_items, single_pass=single, ct_on_positives=True)
        (loss.sum() * scale).backward()
        out[backend] = (loss.detach(), xx.grad)
    torch.testing.assert_close(out[kern.name][0], out["reference"][0], **STAT_TOL[dtype])
    torch.testing.assert_close(out[kern.name][1], out["reference"][1], **GRAD_TOL[dtype])
    assert matched == [scale == 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("V,k", [(2, 1), (7, 6), (1001, 5), (4099, 64), (70001, 5)])
def test_single_pass_backward_equals_two_pass(kern, dtype, V, k):
    check_single_pass_completion(backends.resolve(kern.name, torch.zeros(1, 1, 2, device=kern.dev)), dtype, V, k,
                                 kern.dev)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [40, 1001])
def test_single_pass_completion_with_many_rows_a_block(kern, dtype, V):
    """The completion after a single pass takes several rows a block (one
    thread each: complete_kernel, sized to about one wave), and rewrites in
    full, block-wide, the rows whose grad_lse is not the guess: with 472
    rows the simulator's blocks hold 3 to 10 rows of every kind (guessed,
    not guessed, ignored, out of range)."""
    check_single_pass_completion(backends.resolve(kern.name, torch.zeros(1, 1, 2, device=kern.dev)), dtype, V, 5,
                                 kern.dev, batch=8, seq=60)


def test_single_pass_second_backward_leaves_the_first_alone(kern):
    x = random_logits((2, 3, 300), torch.float32, kern.dev).requires_grad_(True)
    y = random_target((2, 3), 300, kern.dev)
    loss = ck.cringe_loss(x, y, half_negative((2, 3), kern.dev), backend=kern.name, single_pass=True)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    first = g1.clone()
    (g2,) = torch.autograd.grad(loss * 2, x)
    assert torch.equal(g1, first)
    torch.testing.assert_close(g2, 2 * first)


def test_single_pass_opcheck(kern):
    x = random_logits((2, 3, 37), torch.float32, kern.dev)[:, :2]
    y = random_target((2, 2), 37, kern.dev).reshape(-1)
    u = torch.rand(4, device=kern.dev)
    w = torch.full((4,), 0.25, device=kern.dev)
    forward = getattr(torch.ops.cringe_kernels, f"{kern.name}_row_stats_with_grad")
    backward_ = getattr(torch.ops.cringe_kernels, f"{kern.name}_row_stats_with_grad_backward_")
    torch.library.opcheck(forward.default, (x, y, u, 5, -100, w))
    lse, _, _, s_idx, grad = forward(x, y, u, 5, -100, w)
    g = torch.rand(4, device=kern.dev)
    torch.library.opcheck(backward_.default, (grad, x, y, s_idx, lse, w, w.clone(), g, g.clone(), -100))


# (threads, blocks per SM, KB of each row kept in shared memory, staged):
# more rows than blocks and fewer; the whole row (4 KB), part of it (1 KB,
# 2 KB: the sweep reads some packs from shared memory and the rest from the
# logits), more than a block may have or than its share of an SM (clamped);
# more blocks per SM than are resident at once (clamped); staged rounds with
# no cache, with a cache after the stages, 512 threads of stages (64 KB,
# past the 48 KB a block has without opting in); the two shapes
# heuristics.single_pass_shape picks.
SINGLE_PASS_SHAPES = [(512, 1, 0, False), (256, 3, 0, False), (32, 1, 0, False), (128, 32, 0, False),
                      (512, 1, 200, False), (32, 1, 1, False), (64, 2, 2, False), (128, 1, 1024, False),
                      (128, 4, 200, False), (512, 32, 8, False), (256, 4, 0, True), (128, 8, 12, True),
                      (512, 1, 200, True), (64, 6, 1, True), (256, 3, 64, False), (512, 2, 0, True)]


@pytest.mark.parametrize("shape", SINGLE_PASS_SHAPES, ids=lambda s: ",".join(map(str, s)))
def test_single_pass_launch_shapes_give_the_same_result(kern, shape, monkeypatch):
    x = random_logits((3, 7, 1001), torch.float32, kern.dev, seed=3)
    y = random_target((3, 7), 1001, kern.dev)
    fb, u = half_negative((3, 7), kern.dev), torch.rand(3, 7, device=kern.dev)
    out = []
    for value in ((512, 1, 0, False), shape):
        launch_with(monkeypatch, shape=value)
        xx = x.clone().requires_grad_(True)
        loss = ck.cringe_loss(xx, y, fb, uniform=u, backend=kern.name, single_pass=True)
        loss.backward()
        out.append((loss.detach(), xx.grad))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("V,k", [(7, 6), (1001, 5), (70001, 5)])
def test_single_pass_with_row_cache_equals_two_pass(kern, staged, dtype, V, k, monkeypatch):
    """With part of each row kept in shared memory (5 KB: the whole of short
    rows, the first ~5% of V = 70001 in bfloat16), the completed gradient is
    still the two-pass one bit for bit; staged, the cache lies after the two
    halves of the cp.async rounds."""
    launch_with(monkeypatch, shape=(256, 2, 5 * 1024, staged))
    check_single_pass_completion(backends.resolve(kern.name, torch.zeros(1, 1, 2, device=kern.dev)), dtype, V, k,
                                 kern.dev)


@pytest.mark.parametrize("shape", [(512, 1, 0, True), (512, 1, 200 * 1024, True), (64, 2, 1024, True),
                                   (256, 4, 12 * 1024, True), (64, 6, 1024, True)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_single_pass_staged_equals_two_pass(kern, shape, dtype, monkeypatch):
    """The staged single pass: 512 threads take 64 KB of cp.async stages (past
    the 48 KB a block has without opting in), with no cache, with a cache
    clamped to what is left, to a fourth of an SM, and small blocks with a
    partial cache."""
    launch_with(monkeypatch, shape=shape)
    check_single_pass_completion(backends.resolve(kern.name, torch.zeros(1, 1, 2, device=kern.dev)), dtype, 70001, 5,
                                 kern.dev)


@pytest.mark.parametrize("shape", [(100, 1, 0, False), (512, 0, 0, False), (1024, 1, 0, False), (512, 1, -1, False),
                                   (512, 33, 0, True)], ids=str)
def test_bad_single_pass_shape_is_refused_by_the_launcher(kern, shape, monkeypatch):
    """A launch shape outside the kernel's ranges never launches (for the
    tuning script, which passes shapes of its own)."""
    launch_with(monkeypatch, shape=shape)
    x = random_logits((1, 2, 10), torch.float32, kern.dev).requires_grad_(True)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        ck.cringe_loss(x, random_target((1, 2), 10, kern.dev), half_negative((1, 2), kern.dev), backend=kern.name,
                       single_pass=True)


# ---- Split rows (heuristics.row_pieces, csrc/cuda/launch.h RowSplit) ---------


@pytest.mark.parametrize("pieces", [2, 3, 32])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,k", [(33, 5), (1001, 1), (4099, 64), (70001, 17)])
def test_split_rows_match_reference(kern, pieces, dtype, V, k, monkeypatch):
    """Rows cut into pieces (32 pieces of a 33-column row: most are empty):
    the same samples and statistics, forward and backward, strided rows and
    ignored rows included."""
    launch_with(monkeypatch, pieces=pieces)
    full = random_logits((2, 4, V), dtype, kern.dev, seed=V + pieces)
    y = random_target((2, 3), V, kern.dev, seed=V)
    compare_binary(full[:, :-1], y, half_negative((2, 3), kern.dev), kern.name, k=k, ct_on_positives=True)
    check_forward(kern, *nonfinite_rows(V, dtype, kern.dev), 3)


@pytest.mark.parametrize("pieces", [2, 5])
@pytest.mark.parametrize("V", [300, 9000, 70001])
@pytest.mark.parametrize("k", [1, 5, 64])
def test_split_rows_on_adversarial_rows(kern, pieces, V, k, monkeypatch):
    # Ties that straddle the pieces' boundaries and candidates only at a
    # row's start or end: the merge must keep SPEC order across pieces.
    launch_with(monkeypatch, pieces=pieces)
    check_forward(kern, *adversarial_topk_rows(V, torch.bfloat16, kern.dev), k, rtol=2e-5, atol=2e-6)


def test_split_rows_edge_cases(kern, monkeypatch):
    launch_with(monkeypatch, pieces=4)
    compare_ties(kern.name, kern.dev, (1, 3, 17, 64))
    check_nan_rows(kern.name, kern.dev)
    # All rows ignored, k = 0, k >= V - 1, out-of-range targets.
    x = random_logits((2, 3, 50), torch.float32, kern.dev).requires_grad_(True)
    yy = torch.full((2, 3), -100, dtype=torch.long, device=kern.dev)
    loss = ck.cringe_loss(x, yy, half_negative((2, 3), kern.dev), backend=kern.name)
    loss.backward()
    assert loss.item() == 0.0 and bool((x.grad == 0).all())
    for k in (49, 60):
        xk = random_logits((2, 3, 50), torch.float32, kern.dev)
        compare_binary(xk, random_target((2, 3), 50, kern.dev), half_negative((2, 3), kern.dev), kern.name, k=k,
                       ct_on_positives=True)
    yk = random_target((2, 3), 50, kern.dev).reshape(-1)
    check_forward(kern, x.detach(), yk, None, 0)  # k = 0: no draw
    with ck.value_checks(False):
        s = backends.resolve(kern.name, x).forward(x.detach(), torch.tensor([0, 50, -7, 3, 10**12, 1], device=kern.dev),
                                                   torch.rand(6, device=kern.dev), 5, -100)
    assert bool(torch.isnan(s.lse[[1, 2, 4]]).all()) and bool((s.sample_index[[1, 2, 4]] == -1).all())
    assert bool((s.sample_index[[0, 3, 5]] >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_rows_inplace_and_single_pass(kern, dtype, monkeypatch):
    # The in-place backward in pieces; the single pass keeps one block per row
    # whatever the setting, and its completion stays bitwise the two-pass one.
    launch_with(monkeypatch, pieces=3)
    V = 9001
    x = random_logits((2, 3, V), dtype, kern.dev, seed=4)
    y = random_target((2, 3), V, kern.dev)
    fb, u = half_negative((2, 3), kern.dev), torch.rand(2, 3, device=kern.dev)
    _, g_out = run_binary(x, y, fb, kern.name, k=5, uniform=u, ct_on_positives=True)
    _, g_in = run_binary(x, y, fb, kern.name, k=5, uniform=u, ct_on_positives=True, inplace=True)
    assert torch.equal(g_out, g_in)
    check_single_pass_completion(backends.resolve(kern.name, torch.zeros(1, 1, 2, device=kern.dev)), dtype, V, 5,
                                 kern.dev)


def test_split_rows_give_the_same_samples_as_one_block(kern, monkeypatch):
    x = random_logits((1, 5, 70001), torch.bfloat16, kern.dev, seed=8)
    y = random_target((1, 5), 70001, kern.dev, ignore_frac=0.0)
    u = torch.rand(5, device=kern.dev)
    stats = []
    for value in (1, 7):
        launch_with(monkeypatch, pieces=value)
        stats.append(backends.resolve(kern.name, x).forward(x, y.reshape(-1), u, 5, -100))
    assert torch.equal(stats[0].sample_index, stats[1].sample_index)
    assert torch.equal(stats[0].sample_logit, stats[1].sample_logit)
    assert torch.equal(stats[0].target_logit, stats[1].target_logit)
    torch.testing.assert_close(stats[0].lse, stats[1].lse, rtol=1e-6, atol=0)


@pytest.mark.parametrize("pieces", [0, 33])
def test_bad_split_is_refused_by_the_launcher(kern, pieces, monkeypatch):
    launch_with(monkeypatch, pieces=pieces)
    x = random_logits((1, 2, 10), torch.float32, kern.dev)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        ck.cringe_loss(x, random_target((1, 2), 10, kern.dev), half_negative((1, 2), kern.dev), backend=kern.name)


def test_split_policy_and_workspace(kern):
    """The pieces-per-row rule (heuristics.row_pieces, compiled in the same
    form into csrc/cuda/launch.h) on this device's SM count, the workspace
    layout, and the launcher's refusal of a split without a workspace or
    with too many pieces."""
    from cringe_kernels.backends import heuristics

    module = _module(kern)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if kern.dev == "cuda" else 3  # the simulator's
    assert module.sm_count(0) == sms
    want = 4 * sms
    for rule in (heuristics.row_pieces, module.row_pieces):
        assert rule(want, 128256, sms) == 1  # enough rows
        assert rule(1, 128256, sms) == min(want, 128256 // 8192, module.max_pieces)
        # The most pieces that fit one wave of `want` blocks, not the fewest that fill it.
        assert rule(want // 2, 128256, sms) == 2
        assert rule(want // 2 + 1, 128256, sms) == 1
        assert rule(want // 3, 128256, sms) == 3
        assert rule(1, 16383, sms) == 1  # pieces of at least 8192 columns
        assert rule(0, 128256, sms) == 1
    # [m, s] per piece, then k_eff keys and int32 columns per piece.
    assert module.forward_workspace_bytes(0, 3, 100, 5, 4) == 3 * 4 * (4 + 4 + 5 * (4 + 4))
    assert module.forward_workspace_bytes(1, 3, 6, 9, 4) == 3 * 4 * (8 + 8 + 5 * (8 + 4))  # k_eff = V - 1
    assert module.forward_workspace_bytes(3, 3, 100, 5, 1) == 0
    x = random_logits((1, 2, 100), torch.float32, kern.dev)
    y = torch.tensor([1, 2], device=kern.dev)
    out = [torch.empty(2, device=kern.dev) for _ in range(3)] + [torch.empty(2, dtype=torch.long, device=kern.dev)]
    ws = torch.empty(module.forward_workspace_bytes(0, 2, 100, 0, 2), dtype=torch.uint8, device=kern.dev)
    args = (0, x.data_ptr(), 1, 2, 100, x.stride(0), x.stride(1), y.data_ptr(), 0, 0, -100,
            *(t.data_ptr() for t in out), 0, 0)
    module.forward(*args, pieces=2, workspace=ws.data_ptr())
    for bad in (dict(pieces=2), dict(pieces=module.max_pieces + 1, workspace=ws.data_ptr()), dict(pieces=0)):
        with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
            module.forward(*args, **bad)
