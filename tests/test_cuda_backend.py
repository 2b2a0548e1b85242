"""The hand-written ``cuda`` backend against the reference (needs a GPU).

The same checks as test_cpu_backend.py on CUDA tensors, plus half precision,
k above the shared-memory top-k limit, and a batch with more than 2^31
logits (int64 offsets), checked on a few rows against the reference on
those rows only. Every test is marked ``gpu`` and skips cleanly without one;
nothing here touches the GPU at import or collection time.
"""

import pytest
import torch

import cringe_kernels as ck
from cringe_kernels import backends, reference
from kernel_checks import (check_nan_rows, nonfinite_rows, compare_binary, compare_pairwise, compare_ties, half_negative,
                           random_logits, random_target, run_binary)

pytestmark = pytest.mark.gpu

DEV = "cuda"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _need_backend():
    st = backends.status("cuda")
    if "cuda" not in st.devices:
        pytest.skip(f"cuda backend cannot run: {st.reason}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [2, 3, 33, 1000, 4099, 32000])
@pytest.mark.parametrize("k", [1, 5, 17, 64])
def test_binary_matches_reference(dtype, V, k):
    x = random_logits((3, 7, V), dtype, DEV, seed=V + k)
    y = random_target((3, 7), V, DEV, seed=V)
    compare_binary(x, y, half_negative((3, 7), DEV), "cuda", k=k, ct_on_positives=True)


@pytest.mark.parametrize("k", [6, 7, 100])
def test_k_at_least_v_minus_1(k):
    x = random_logits((4, 5, 7), torch.float32, DEV)
    y = random_target((4, 5), 7, DEV)
    compare_binary(x, y, half_negative((4, 5), DEV), "cuda", k=k, ct_on_positives=True)


@pytest.mark.parametrize("k", [65, 200])
def test_k_above_kernel_limit_falls_back(k):
    x = random_logits((2, 5, 1000), torch.float32, DEV)
    y = random_target((2, 5), 1000, DEV)
    compare_binary(x, y, half_negative((2, 5), DEV), "cuda", k=k, ct_on_positives=True)


@pytest.mark.parametrize("k", [5, 64])
def test_vocab_above_65536(k):
    V = 70001
    x = random_logits((2, 3, V), torch.float32, DEV, seed=3)
    y = random_target((2, 3), V, DEV, ignore_frac=0.0)
    compare_binary(x, y, half_negative((2, 3), DEV), "cuda", k=k, ct_on_positives=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_misaligned_rows(dtype):
    V = 1001  # odd: rows start at every alignment, so head / packs / tail all run
    full = random_logits((3, 6, V), dtype, DEV, seed=5)
    y = random_target((3, 5), V, DEV)
    compare_binary(full[:, :-1], y, half_negative((3, 5), DEV), "cuda", k=5, ct_on_positives=True)
    xt = random_logits((5, 3, V), dtype, DEV, seed=6).transpose(0, 1)
    compare_binary(xt, y, half_negative((3, 5), DEV), "cuda", k=5, ct_on_positives=True)


def test_ignored_all_ignored_and_empty():
    x = random_logits((2, 4, 50), torch.float32, DEV)
    x[0, 1] = float("nan")
    y = random_target((2, 4), 50, DEV, ignore_frac=0.0)
    y[0, 1] = -100
    _, grad = compare_binary(x, y, half_negative((2, 4), DEV), "cuda", k=5)
    assert bool((grad[0, 1] == 0).all())
    for shape in ((3, 4), (0, 4)):
        xx = random_logits(shape + (20,), torch.float32, DEV).requires_grad_(True)
        yy = torch.full(shape, -100, dtype=torch.long, device=DEV)
        loss = ck.cringe_loss(xx, yy, half_negative(shape, DEV), backend="cuda")
        loss.backward()
        assert loss.item() == 0.0 and bool((xx.grad == 0).all())


def test_neg_inf_masks_and_ties():
    V = 40
    x = random_logits((4, 6, V), torch.float32, DEV, seed=9)
    x[..., ::2] = float("-inf")
    x[0, 0, 5:] = float("-inf")
    y = random_target((4, 6), V, DEV, ignore_frac=0.0)
    y[0, 0] = 1
    compare_binary(x, y, half_negative((4, 6), DEV), "cuda", k=8, ct_on_positives=True, check_grad=False)
    compare_ties("cuda", DEV, (1, 3, 17, 64))


@pytest.mark.parametrize("V", [9, 100, 5000, 128256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nonfinite_rows_match_reference(V, dtype):
    x, target, u = nonfinite_rows(V, dtype, DEV)
    got = backends.resolve("cuda", x).forward(x, target, u, 3, -100)
    want = reference.row_stats(x, target, u, 3, -100)
    torch.testing.assert_close(got.lse, want.lse, equal_nan=True)
    assert torch.equal(got.sample_index, want.sample_index)


def test_nan_propagates_without_bad_index():
    check_nan_rows("cuda", DEV)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_backward_equals_out_of_place(dtype):
    V = 257
    x = random_logits((3, 5, V), dtype, DEV, seed=11)[:, :-1]
    y = random_target((3, 4), V, DEV)
    fb = half_negative((3, 4), DEV)
    u = torch.rand(3, 4, device=DEV)
    _, g_out = run_binary(x, y, fb, "cuda", k=5, uniform=u, ct_on_positives=True)
    _, g_in = run_binary(x, y, fb, "cuda", k=5, uniform=u, ct_on_positives=True, inplace=True)
    assert torch.equal(g_out, g_in)


def test_out_of_range_target_gives_nan_not_a_crash():
    x = random_logits((2, 3, 16), torch.float32, DEV).requires_grad_(True)
    y = torch.tensor([[0, 16, 3], [-5, 2, 10**12]], device=DEV)
    with ck.value_checks(False):
        out = ck.cringe_loss(x, y, half_negative((2, 3), DEV), backend="cuda", reduction="none",
                             return_details=True, ct_on_positives=True)
        out.loss.sum().backward()
    torch.cuda.synchronize()
    bad = torch.tensor([[False, True, False], [True, False, True]], device=DEV)
    assert bool(torch.isnan(out.loss[bad]).all()) and bool((out.sample_index[bad] == -1).all())


def test_gradcheck_float64():
    V = 9
    x = random_logits((2, 3, V), torch.float64, DEV).requires_grad_(True)
    y = random_target((2, 3), V, DEV)
    u = torch.rand(2, 3, device=DEV)
    fb = half_negative((2, 3), DEV)
    torch.autograd.gradcheck(lambda t: ck.cringe_loss(t, y, fb, k=3, uniform=u, backend="cuda",
                                                      ct_on_positives=True), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pairwise_matches_reference(dtype):
    V = 301
    chosen = random_logits((3, 6, V), dtype, DEV, seed=1)[:, :-1]
    rejected = random_logits((3, 4, V), dtype, DEV, seed=2)
    compare_pairwise(chosen, random_target((3, 5), V, DEV, seed=1), rejected, random_target((3, 4), V, DEV, seed=2),
                     "cuda", k=5, margin=0.5, temperature=2.0)


def test_torch_library_opcheck():
    x = random_logits((2, 3, 37), torch.float32, DEV)[:, :2]
    y = random_target((2, 2), 37, DEV).reshape(-1)
    u = torch.rand(4, device=DEV)
    torch.library.opcheck(torch.ops.cringe_kernels.cuda_row_stats.default, (x, y, u, 5, -100))
    lse, _, _, s_idx = torch.ops.cringe_kernels.cuda_row_stats(x, y, u, 5, -100)
    g = torch.rand(4, device=DEV)
    args = (y, s_idx, lse, g, g.clone(), g.clone(), -100)
    torch.library.opcheck(torch.ops.cringe_kernels.cuda_row_stats_backward.default, (x, *args))
    torch.library.opcheck(torch.ops.cringe_kernels.cuda_row_stats_backward_.default, (x.clone(), *args))


@pytest.mark.slow
def test_more_than_2_31_logits():
    # bf16 [16400, 131072]: 2.15e9 elements (4.3 GB), gradient as much again.
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs about 20 GB of GPU memory")
    N, V = 16400, 131072
    assert N * V > 2**31
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(1, N, V, device=DEV, dtype=torch.bfloat16, generator=g)
    y = torch.randint(0, V, (N,), device=DEV, generator=g)
    u = torch.rand(N, device=DEV, generator=g)
    be = backends.resolve("cuda", x)
    stats = be.forward(x, y, u, 5, -100)
    gl, gt, gs = (torch.rand(N, device=DEV, generator=g) for _ in range(3))
    grad = be.backward(x, y, stats.sample_index, stats.lse, gl, gt, gs, -100, False)
    rows = torch.tensor([0, 1, N // 2, N - 2, N - 1], device=DEV)  # the last ones lie past 2^31
    xr = x[0, rows].float()
    ref = reference.row_stats(xr[None], y[rows], u[rows], 5, -100)
    torch.testing.assert_close(stats.lse[rows], ref.lse, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(stats.target_logit[rows], ref.target_logit)
    assert torch.equal(stats.sample_index[rows], ref.sample_index)
    want = gl[rows, None] * torch.exp(xr - stats.lse[rows, None])
    ar = torch.arange(len(rows), device=DEV)
    want[ar, y[rows]] += gt[rows]
    want[ar, stats.sample_index[rows]] += gs[rows]
    torch.testing.assert_close(grad[0, rows].float(), want.to(torch.bfloat16).float(), rtol=1.6e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V,k", [(33, 5), (4099, 17), (32000, 64), (128256, 5)])
def test_warp_gate_matches_reference(dtype, V, k, monkeypatch):
    """The warp-shared top-k gate (CRINGE_KERNELS_CUDA_FWD_GATE=warp) only skips
    packs that cannot hold a candidate: the same samples and statistics."""
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_FWD_GATE", "warp")
    x = random_logits((2, 24, V), dtype, DEV, seed=V + k)
    y = random_target((2, 24), V, DEV)
    compare_binary(x, y, half_negative((2, 24), DEV), "cuda", k=k, ct_on_positives=True)
    compare_ties("cuda", DEV, (1, 3, 17, 64))
    x, target, u = nonfinite_rows(V, dtype, DEV)
    got = backends.resolve("cuda", x).forward(x, target, u, 3, -100)
    want = reference.row_stats(x, target, u, 3, -100)
    torch.testing.assert_close(got.lse, want.lse, equal_nan=True)
    assert torch.equal(got.sample_index, want.sample_index)


def test_bad_gate_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_FWD_GATE", "block")
    x = random_logits((1, 2, 10), torch.float32, DEV)
    with pytest.raises(ValueError, match="CRINGE_KERNELS_CUDA_FWD_GATE"):
        ck.cringe_loss(x, random_target((1, 2), 10, DEV), half_negative((1, 2), DEV), backend="cuda")
