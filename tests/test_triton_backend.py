"""Tests of the Triton backend against the reference (docs/spec.md sections 1-4).

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1,
set by conftest.py), which is slow: shapes stay small and many cases use a
small ``block_v`` so that a short row still spans several blocks and the
streaming top-k's merge path is exercised. bf16/fp16 run here on small
shapes; tests marked ``gpu`` (real sizes, N * V > 2**31, no host sync) run
only where CUDA exists, and the torch.compile tests use Inductor there
(aot_eager here).

A sampled column may legitimately differ from the reference's when ``u`` lies
within rounding of a CDF boundary (the two sum the probabilities in different
orders); :func:`assert_same_samples` allows exactly that and nothing else.
"""

from __future__ import annotations


import pytest
import torch

import cringe_kernels as ck
from cringe_kernels import reference
from cringe_kernels.backends.base import stats_dtype
from kernel_checks import (GRAD_TOL, STAT_TOL, assert_same_samples, check_single_pass_completion, nonfinite_rows,
                           random_logits, random_target)

triton = pytest.importorskip("triton")

from cringe_kernels.backends import triton_backend  # noqa: E402
from cringe_kernels.backends.triton_backend import TritonRowStats  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
IGNORE = -100
pytestmark = [
    pytest.mark.skipif(
        DEVICE not in triton_backend.TritonRowStats().status().devices,
        reason="the triton backend cannot run here (no GPU and TRITON_INTERPRET is not 1)",
    ),
    # The interpreter runs the kernels in numpy, which warns on the inf/NaN
    # arithmetic that the -inf and NaN tests make on purpose.
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
]


# ----------------------------------------------------------------- helpers


def make_logits(B, T, V, dtype=torch.float32, strided=False, seed=0, scale=2.0):
    """``[B, T, V]`` logits; ``strided`` gives HF's ``logits[:, :-1]`` view."""
    x = random_logits((B, T + int(strided), V), dtype, DEVICE, seed=seed, scale=scale)
    return x[:, :-1] if strided else x


def make_target(B, T, V, seed=0, ignore_frac=0.25):
    return random_target((B, T), V, DEVICE, seed=seed, ignore_frac=ignore_frac)


def make_uniform(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed + 2)).to(DEVICE)


def compare_row_stats(x, target, uniform, k, block_v=None, sub_v=None):
    """Backend statistics vs ``reference.row_stats`` on the same rows."""
    flat_t = target.reshape(-1)
    u = None if uniform is None else uniform.reshape(-1).float()
    got = TritonRowStats(block_v, sub_v).forward(x, flat_t, u, k, IGNORE)
    want = reference.row_stats(x, flat_t, u, k, IGNORE)
    tol = STAT_TOL[x.dtype]
    for name in ("lse", "target_logit", "sample_logit"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == stats_dtype(x.dtype), name
        if name == "sample_logit":
            # Compare the logit of the column each one sampled.
            continue
        torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=lambda m: f"{name}: {m}")
    assert got.sample_index.dtype == torch.long
    if k == 0:
        assert (got.sample_index == -1).all() and (got.sample_logit == 0).all()
        return got
    assert_same_samples(x, flat_t, u, k, got.sample_index, want.sample_index)
    rows = x.reshape(-1, x.shape[-1]).to(stats_dtype(x.dtype))
    sampled = got.sample_index >= 0
    expect = torch.where(sampled, rows.gather(1, got.sample_index.clamp(min=0)[:, None]).squeeze(1), 0.0)
    torch.testing.assert_close(got.sample_logit, expect, equal_nan=True, rtol=0, atol=0)
    ignored = flat_t == IGNORE
    assert (got.sample_index[ignored] == -1).all()
    assert (got.lse[ignored] == 0).all() and (got.target_logit[ignored] == 0).all()
    assert (got.sample_index[~ignored] != flat_t[~ignored]).all()
    return got


def same_layout(x, like=None):
    """A copy of ``x`` with the strides of ``like`` (default ``x``): gaps kept."""
    like = x if like is None else like
    return torch.empty_strided(like.shape, like.stride(), dtype=like.dtype, device=like.device).copy_(x)


def losses_and_grads(backend, x, target, feedback, uniform, inplace=False, **kwargs):
    """Details and the logits' gradient, the logits keeping ``x``'s strides."""
    leaf = same_layout(x.detach()).requires_grad_()
    # In place, the kernel writes over its input: give it a differentiable
    # copy (same strides), never the leaf itself.
    logits = same_layout(leaf, like=x) if inplace else leaf
    out = ck.cringe_loss(logits, target, feedback, uniform=uniform, backend=backend,
                         return_details=True, inplace_backward=inplace, **kwargs)
    loss = out.loss.sum() if out.loss.dim() else out.loss
    loss.backward()
    return out, leaf.grad


def compare_cringe(x, target, feedback, uniform, **kwargs):
    ref, g_ref = losses_and_grads("reference", x, target, feedback, uniform, **kwargs)
    got, g_got = losses_and_grads("triton", x, target, feedback, uniform, **kwargs)
    assert_same_samples(x, target, uniform, kwargs.get("k", 5), got.sample_index, ref.sample_index)
    if torch.equal(got.sample_index, ref.sample_index):
        for a, b in zip(got[:3], ref[:3]):
            torch.testing.assert_close(a, b, equal_nan=True, **STAT_TOL[x.dtype])
        torch.testing.assert_close(g_got, g_ref, equal_nan=True, **GRAD_TOL[x.dtype])
    return got, g_got


# ----------------------------------------------------------------- status, registration


def test_status_and_supports():
    st = ck.backends.status("triton")
    assert st.installed
    assert DEVICE in st.devices
    ok, _ = TritonRowStats().supports(torch.zeros(1, 1, 4, device=DEVICE))
    assert ok
    ok, reason = TritonRowStats().supports(torch.zeros(1, 1, 4, dtype=torch.int32, device=DEVICE))
    assert not ok and "int32" in reason
    with pytest.raises(ValueError, match="power of two"):
        TritonRowStats(block_v=48)


def _op_args():
    x = make_logits(2, 3, 20, strided=True)
    target = make_target(2, 3, 20).reshape(-1)
    u = make_uniform(6).float()
    return x, target, u


def test_opcheck():
    x, target, u = _op_args()
    ops = torch.ops.cringe_kernels
    torch.library.opcheck(ops.triton_row_stats, (x, target, u, 5, IGNORE, 0, 0))
    torch.library.opcheck(ops.triton_row_stats, (x, target, None, 0, IGNORE, 8, 0))
    torch.library.opcheck(ops.triton_row_stats, (x, target, u, 5, IGNORE, 8, 2))
    st = ops.triton_row_stats(x, target, u, 5, IGNORE, 0, 0)
    g = [torch.randn(6, device=DEVICE) for _ in range(3)]
    torch.library.opcheck(ops.triton_row_grad, (x, target, st[3], st[0], *g, IGNORE, 0))
    torch.library.opcheck(ops.triton_row_grad_, (x.clone(), target, st[3], st[0], *g, IGNORE, 8))


# Under the interpreter the ops are opaque custom ops (a launch cannot be
# captured), so aot_eager checks the graph here; Inductor runs on a GPU.
COMPILE_BACKEND = "inductor" if HAS_CUDA else "aot_eager"


def test_torch_compile_ops_fullgraph():
    B, T, V = 2, 4, 300
    x = make_logits(B, T, V, strided=True, seed=1)
    target = make_target(B, T, V, seed=1).reshape(-1)
    u = make_uniform((B * T,), seed=1)

    def stats(logits, target, u):
        out = torch.ops.cringe_kernels.triton_row_stats(logits, target, u, 5, IGNORE, 0, 0)
        g = torch.ones_like(out[0])
        grad = torch.ops.cringe_kernels.triton_row_grad(logits, target, out[3], out[0], g, -g, g, IGNORE, 0)
        return out[0], out[3], grad

    compiled = torch.compile(stats, fullgraph=True, backend=COMPILE_BACKEND)
    for p, q in zip(compiled(x, target, u), stats(x, target, u)):
        torch.testing.assert_close(p, q)


def test_torch_compile_full_loss_fullgraph():
    """The whole loss (validation, autograd.Function, ops) in one graph."""
    B, T, V = 2, 4, 50
    x = make_logits(B, T, V, strided=True, seed=1)
    target = make_target(B, T, V, seed=1)
    u = make_uniform((B, T), seed=1)
    feedback = torch.tensor([[0], [1]], device=DEVICE)
    # The registry imports a backend on first use, which Dynamo cannot trace;
    # load it first, as any eager call would.
    ck.backends.status("triton")

    def loss_fn(logits):
        return ck.cringe_loss(logits, target, feedback, uniform=u, backend="triton")

    leaf = x.detach().clone().requires_grad_()
    loss = torch.compile(loss_fn, fullgraph=True, backend=COMPILE_BACKEND)(leaf)
    loss.backward()
    ref_leaf = x.detach().clone().requires_grad_()
    ref = loss_fn(ref_leaf)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


# ----------------------------------------------------------------- forward statistics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "B,T,V,k,block_v,strided",
    [
        (2, 3, 37, 5, 16, True),      # V not a power of two, several blocks
        (2, 3, 37, 5, (16, 4), True),  # the same, offered to the top-k in 4-column pieces
        (1, 4, 300, 17, 64, False),   # k not a power of two
        (2, 2, 10, 64, None, True),   # k >= V - 1: every non-target column
        (3, 2, 2, 1, None, False),    # smallest vocabulary
        (2, 3, 130, 3, None, True),   # default block, one block per row
    ],
)
def test_row_stats_match_reference(dtype, B, T, V, k, block_v, strided):
    x = make_logits(B, T, V, dtype, strided=strided, seed=V + k)
    target = make_target(B, T, V, seed=V)
    block_v, sub_v = block_v if isinstance(block_v, tuple) else (block_v, None)
    compare_row_stats(x, target, make_uniform((B, T), seed=k), k, block_v, sub_v)


@pytest.mark.parametrize("k", [1, 3, 5, 17, 64])
def test_k_values(k):
    B, T, V = 1, 4, 100
    x = make_logits(B, T, V, strided=True, seed=k)
    target = make_target(B, T, V, seed=k, ignore_frac=0.0)
    compare_row_stats(x, target, make_uniform((B, T), seed=k), k, block_v=32)


def test_k_zero_skips_sampling():
    x = make_logits(2, 2, 33, strided=True)
    target = make_target(2, 2, 33)
    compare_row_stats(x, target, None, 0, block_v=16)


def test_large_vocabulary():
    """V > 65536 (odd), several default-size blocks, forward and backward."""
    B, T, V = 1, 2, 70001
    x = make_logits(B, T, V, seed=3)
    target = torch.tensor([[5, V - 1]], device=DEVICE)
    u = make_uniform((B, T), seed=3)
    compare_row_stats(x, target, u, 5)
    compare_cringe(x, target, torch.tensor([[0]], device=DEVICE), u, k=5)


def test_ties_follow_column_order():
    """Integer-valued logits: many equal values, ordered by column ascending."""
    B, T, V = 2, 4, 40
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (B, T, V), generator=g).float().to(DEVICE)
    x[0, 0] = 1.0  # a whole row of ties
    x[0, 1, ::2] = -0.0  # -0.0 ties with +0.0
    x[0, 1, 1::2] = 0.0
    target = make_target(B, T, V, seed=7, ignore_frac=0.0)
    for k in (1, 4, 9):
        got = compare_row_stats(x, target, make_uniform((B, T), seed=k), k, block_v=8)
    # Row 0 is all ties: the candidates are the lowest non-target columns,
    # and u = 0 picks the first of them.
    u = torch.zeros(B, T, device=DEVICE)
    got = TritonRowStats(8).forward(x, target.reshape(-1), u.reshape(-1), 3, IGNORE)
    y = int(target[0, 0])
    assert int(got.sample_index[0]) == (1 if y == 0 else 0)


def test_neg_inf_masks():
    """-inf entries are legal and never sampled while a finite candidate exists."""
    B, T, V = 1, 5, 24
    x = make_logits(B, T, V, seed=11)
    x[0, 0, 3:] = float("-inf")           # 3 finite columns, k = 6 > 2 finite candidates
    x[0, 1, :] = float("-inf")            # all -inf: lse = -inf, first candidate sampled
    x[0, 1, 7] = 2.0
    x[0, 2, :] = float("-inf")            # every column -inf
    x[0, 3, ::2] = float("-inf")
    x[0, 4] -= 200.0                      # exp(200) overflows float32 ...
    x[0, 4, :8] = float("-inf")           # ... after a first block of -inf only
    target = torch.tensor([[0, 7, 4, 1, 2]], device=DEVICE)
    u = torch.tensor([[0.999, 0.5, 0.3, 0.7, 0.2]], device=DEVICE)
    got = compare_row_stats(x, target, u, 6, block_v=8)
    assert int(got.sample_index[0]) in (1, 2)
    assert int(got.sample_index[1]) == 0  # only -inf candidates: the first, column 0
    assert got.lse[2] == float("-inf")
    finite_rows = [0, 3, 4]
    assert torch.isfinite(got.sample_logit[finite_rows]).all()


@pytest.mark.parametrize("V,block_v,sub_v", [(9, None, None), (100, 8, None), (100, 16, 4), (5000, None, None)]
                         + ([(128256, None, None), (128256, 4096, 256)] if HAS_CUDA else []))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nonfinite_rows(V, block_v, sub_v, dtype):
    """Several +inf (lse +inf), all -inf but one, NaN with +inf: as the reference."""
    x, target, u = nonfinite_rows(V, dtype, DEVICE)
    got = TritonRowStats(block_v=block_v, sub_v=sub_v).forward(x, target, u, 3, IGNORE)
    want = reference.row_stats(x, target, u, 3, IGNORE)
    torch.testing.assert_close(got.lse, want.lse, equal_nan=True)
    assert torch.equal(got.sample_index, want.sample_index)


def test_nan_rows():
    """NaN gives NaN in the loss of its row, a valid column, no effect elsewhere."""
    B, T, V = 1, 4, 19
    x = make_logits(B, T, V, seed=5)
    x[0, 0, 4] = float("nan")
    x[0, 1, :] = float("nan")
    target = torch.tensor([[4, 2, 3, 8]], device=DEVICE)
    feedback = torch.tensor([[0, 1, 0, 0]], device=DEVICE).reshape(1, 4)
    u = make_uniform((B, T), seed=5)
    got = TritonRowStats(8).forward(x, target.reshape(-1), u.reshape(-1), 5, IGNORE)
    s = got.sample_index
    assert ((s >= 0) & (s < V) & (s != target.reshape(-1))).all()
    assert torch.isnan(got.lse[:2]).all() and torch.isfinite(got.lse[2:]).all()
    out = ck.cringe_loss(x, target, feedback, uniform=u, backend="triton", reduction="none")
    ref = ck.cringe_loss(x, target, feedback, uniform=u, backend="reference", reduction="none")
    assert torch.isnan(out[0, :2]).all()
    torch.testing.assert_close(out[0, 2:], ref[0, 2:], **STAT_TOL[torch.float32])


def test_out_of_range_target_is_memory_safe():
    """With value checks off a bad target gives NaN and -1, never a bad access."""
    x = make_logits(1, 3, 16, seed=2)
    target = torch.tensor([3, 16, -5], device=DEVICE)
    u = make_uniform(3).float()
    got = TritonRowStats(8).forward(x, target, u, 4, IGNORE)
    assert torch.isfinite(got.lse[0]) and got.sample_index[0] >= 0
    for name in ("lse", "target_logit", "sample_logit"):
        assert torch.isnan(getattr(got, name)[1:]).all(), name
    assert (got.sample_index[1:] == -1).all()
    g = torch.ones(3, device=DEVICE)
    dx = TritonRowStats(8).backward(x, target, got.sample_index, got.lse, g, g, g, IGNORE, False)
    assert torch.isfinite(dx[0, 0]).all()


# ----------------------------------------------------------------- losses and gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cringe_loss_and_grad(dtype, reduction):
    B, T, V = 2, 4, 45
    x = make_logits(B, T, V, dtype, strided=True, seed=21)
    target = make_target(B, T, V, seed=21)
    feedback = torch.tensor([[1], [0]], device=DEVICE)
    u = make_uniform((B, T), seed=21)
    compare_cringe(x, target, feedback, u, k=5, reduction=reduction, ct_on_positives=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_small(dtype):
    """bf16/fp16 on small shapes (real sizes: test_gpu_real_sizes)."""
    B, T, V = 2, 3, 50
    x = make_logits(B, T, V, dtype, strided=True, seed=13)
    target = make_target(B, T, V, seed=13)
    u = make_uniform((B, T), seed=13)
    compare_row_stats(x, target, u, 5, block_v=16)
    compare_cringe(x, target, torch.tensor([[0], [1]], device=DEVICE), u, k=5, ct_on_positives=True)


def test_all_rows_ignored_and_empty():
    x = make_logits(2, 3, 12, strided=True)
    target = torch.full((2, 3), IGNORE, device=DEVICE)
    out, grad = losses_and_grads("triton", x, target, torch.zeros(2, 1, device=DEVICE), make_uniform((2, 3)))
    assert out.loss == 0 and torch.isfinite(out.loss)
    assert (grad == 0).all() and (out.sample_index == -1).all()
    empty = torch.zeros(0, 4, 12, device=DEVICE, requires_grad=True)
    loss = ck.cringe_loss(empty, torch.zeros(0, 4, dtype=torch.long, device=DEVICE),
                          torch.zeros(0, 1, device=DEVICE), backend="triton")
    loss.backward()
    assert loss == 0 and empty.grad.shape == empty.shape


def test_ignored_rows_get_exact_zero_grad_even_with_nan():
    x = make_logits(1, 3, 12)
    x[0, 1] = float("nan")
    target = torch.tensor([[2, IGNORE, 5]], device=DEVICE)
    out, grad = losses_and_grads("triton", x, target, torch.zeros(1, 1, device=DEVICE), make_uniform((1, 3)))
    assert torch.isfinite(out.loss)
    assert (grad[0, 1] == 0).all()


def small_binary_case(B, T, V, seed):
    """Strided logits, targets, one negative and one positive sequence, uniforms."""
    return (make_logits(B, T, V, strided=True, seed=seed), make_target(B, T, V, seed=seed),
            torch.tensor([[0], [1]], device=DEVICE), make_uniform((B, T), seed=seed))


def test_inplace_backward_equals_out_of_place():
    B, T, V = 2, 3, 29
    x, target, feedback, u = small_binary_case(B, T, V, seed=4)
    _, g_out = losses_and_grads("triton", x, target, feedback, u)
    _, g_in = losses_and_grads("triton", x, target, feedback, u, inplace=True)
    torch.testing.assert_close(g_in, g_out, rtol=0, atol=0)
    # The in-place kernel writes over a strided view, leaving the skipped rows.
    base = make_logits(B, T, V, strided=False, seed=4)
    full = torch.cat([base, torch.full((B, 1, V), 7.0, device=DEVICE)], 1)
    view = full[:, :-1]
    st = TritonRowStats(8).forward(view, target.reshape(-1), u.reshape(-1), 5, IGNORE)
    g = torch.randn(3, B * T, device=DEVICE)
    out = TritonRowStats(8).backward(view, target.reshape(-1), st.sample_index, st.lse, *g, IGNORE, False)
    res = TritonRowStats(8).backward(view, target.reshape(-1), st.sample_index, st.lse, *g, IGNORE, True)
    assert res.data_ptr() == view.data_ptr()
    torch.testing.assert_close(view, out, rtol=0, atol=0)
    assert (full[:, -1] == 7.0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("V,k,block_v", [(7, 6, None), (100, 5, 16), (1001, 17, None)])
def test_single_pass_completes_to_the_two_pass_gradient(dtype, V, k, block_v):
    # single_pass: the forward writes lse_weight * exp(x - lse), the
    # backward completes it to the two-pass gradient, bit for bit.
    check_single_pass_completion(TritonRowStats(block_v), dtype, V, k, DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_pass_completion_with_many_rows_a_program(dtype):
    # The completion takes 16 rows a program (row_stats_complete_kernel):
    # 40 rows give programs that mix every kind of row (guessed, not
    # guessed and rewritten in full in 16-column steps, ignored, out of
    # range) and a last program with fewer than 16 rows.
    check_single_pass_completion(TritonRowStats(16), dtype, 40, 5, DEVICE, batch=2, seq=21)


def test_single_pass_loss_matches_reference():
    x, target, feedback, u = small_binary_case(2, 3, 40, seed=2)
    want = losses_and_grads("reference", x, target, feedback, u)
    got = losses_and_grads("triton", x, target, feedback, u, single_pass=True)
    torch.testing.assert_close(got[0].loss, want[0].loss, rtol=2e-5, atol=2e-6)
    assert torch.equal(got[0].sample_index, want[0].sample_index)
    torch.testing.assert_close(got[1], want[1], rtol=2e-5, atol=1e-7)
    ops = torch.ops.cringe_kernels
    xx, tt, uu = _op_args()
    w = torch.full((6,), 0.25, device=DEVICE)
    torch.library.opcheck(ops.triton_row_stats_with_grad, (xx, tt, uu, 5, IGNORE, 0, 0, w))
    *st, grad = ops.triton_row_stats_with_grad(xx, tt, uu, 5, IGNORE, 8, 0, w)
    gg = torch.randn(6, device=DEVICE)
    torch.library.opcheck(ops.triton_row_grad_complete_, (grad, xx, tt, st[3], st[0], w, w.clone(), gg, gg, IGNORE, 8))


def test_gradcheck_float64():
    B, T, V = 1, 3, 7
    x = make_logits(B, T, V, torch.float64, seed=9).requires_grad_()
    target = torch.tensor([[1, IGNORE, 6]], device=DEVICE)
    feedback = torch.tensor([[1, 0, 0]], device=DEVICE)
    u = make_uniform((B, T), seed=9)

    def f(logits):
        return ck.cringe_loss(logits, target, feedback, uniform=u, backend="triton", k=3, ct_on_positives=True)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("gate_grad", [False, True])
def test_pairwise_matches_reference(gate_grad):
    B, Tw, Tl, V = 2, 3, 2, 21
    xw = make_logits(B, Tw, V, strided=True, seed=31)
    xl = make_logits(B, Tl, V, seed=32)
    yw = make_target(B, Tw, V, seed=31)
    yl = make_target(B, Tl, V, seed=32, ignore_frac=0.0)
    u = make_uniform((B, Tl), seed=33)
    outs = {}
    for backend in ("reference", "triton"):
        lw, ll = xw.detach().clone().requires_grad_(), xl.detach().clone().requires_grad_()
        out = ck.pairwise_cringe_loss(lw, yw, ll, yl, k=4, uniform=u, backend=backend, gate_grad=gate_grad,
                                      return_details=True, margin=0.5)
        out.loss.backward()
        outs[backend] = (out, lw.grad, ll.grad)
    (a, gwa, gla), (b, gwb, glb) = outs["reference"], outs["triton"]
    assert torch.equal(a.sample_index, b.sample_index)
    for name in ("loss", "ce_loss", "cringe_loss", "gate", "margin", "logp_chosen", "logp_rejected"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), **STAT_TOL[torch.float32])
    torch.testing.assert_close(gwb, gwa, **GRAD_TOL[torch.float32])
    torch.testing.assert_close(glb, gla, **GRAD_TOL[torch.float32])


# ----------------------------------------------------------------- property test

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    B=st.integers(1, 2),
    T=st.integers(1, 3),
    V=st.integers(2, 40),
    k=st.integers(1, 12),
    strided=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    block_v=st.sampled_from([8, None]),
    sub_v=st.sampled_from([None, 2, 4]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, T, V, k, strided, reduction, block_v, sub_v, dtype, seed):
    x = make_logits(B, T, V, dtype, strided=strided, seed=seed)
    target = make_target(B, T, V, seed=seed)
    u = make_uniform((B, T), seed=seed)
    compare_row_stats(x, target, u, k, block_v, sub_v)
    feedback = torch.randint(0, 2, (B, T), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    compare_cringe(x, target, feedback, u, k=k, reduction=reduction)


# ----------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("V,k", [(32000, 5), (50257, 17), (128256, 64), (262144, 5)])
def test_gpu_real_sizes(dtype, V, k):
    B, T = 2, 64
    x = make_logits(B, T, V, dtype, strided=True, seed=V)
    target = make_target(B, T, V, seed=V, ignore_frac=0.1)
    feedback = torch.tensor([[0], [1]], device=DEVICE)
    u = make_uniform((B, T), seed=V)
    compare_row_stats(x, target, u, k)
    compare_row_stats(x, target, u, k, block_v=4096, sub_v=256)  # the tune's register-light variant
    compare_cringe(x, target, feedback, u, k=k, ct_on_positives=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_grad_is_rounded_once(dtype):
    """Each gradient entry is the fp32 formula rounded once at the store.

    Rounding the softmax term to bf16 before adding ``grad_target`` (a known
    failure of fused cross-entropy kernels) changes many target-column
    entries; an fp32 ``exp`` that differs in the last bit may flip a rare one.
    """
    N, V = (256, 1000) if HAS_CUDA else (12, 300)
    x = make_logits(1, N, V, dtype, seed=12, scale=3.0)
    target = torch.randint(0, V, (N,), device=DEVICE)
    u = torch.rand(N, device=DEVICE)
    backend = TritonRowStats()
    st = backend.forward(x, target, u, 5, IGNORE)
    g = [torch.randn(N, device=DEVICE) for _ in range(3)]
    dx = backend.backward(x, target, st.sample_index, st.lse, *g, IGNORE, False)
    xf = x[0].float()
    exact = g[0][:, None] * torch.exp(xf - st.lse[:, None])
    r = torch.arange(N, device=DEVICE)
    exact[r, target] += g[1]
    exact[r, st.sample_index] += g[2]
    same = dx[0] == exact.to(dtype)
    assert same.float().mean() > 0.999
    assert same[r, target].float().mean() > 0.98


@pytest.mark.gpu
def test_gpu_no_host_sync():
    """Forward and backward launch without synchronising with the host."""
    B, T, V = 2, 16, 5000
    x = make_logits(B, T, V, torch.bfloat16, strided=True, seed=6)
    target = make_target(B, T, V, seed=6).reshape(-1)
    u = make_uniform((B * T,), seed=6)
    g = [torch.randn(B * T, device=DEVICE) for _ in range(3)]
    backend = TritonRowStats()
    backend.forward(x, target, u, 5, IGNORE)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        st = backend.forward(x, target, u, 5, IGNORE)
        backend.backward(x, target, st.sample_index, st.lse, *g, IGNORE, False)
        backend.backward(x.clone(), target, st.sample_index, st.lse, *g, IGNORE, True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_gpu_more_than_2_pow_31_elements():
    """int64 offsets: N * V > 2**31, checked on a few rows at both ends."""
    N, V = 16400, 131072
    assert N * V > 2**31
    x = torch.empty(1, N, V, dtype=torch.bfloat16, device=DEVICE)
    x.normal_(generator=torch.Generator(DEVICE).manual_seed(0))
    target = torch.randint(0, V, (N,), device=DEVICE)
    u = torch.rand(N, device=DEVICE)
    backend = TritonRowStats()
    st = backend.forward(x, target, u, 5, IGNORE)
    rows = torch.tensor([0, 1, N // 2, N - 2, N - 1], device=DEVICE)
    xs = x[0, rows][None].float()
    ref = reference.row_stats(xs, target[rows], u[rows], 5, IGNORE)
    torch.testing.assert_close(st.lse[rows], ref.lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.target_logit[rows], ref.target_logit)
    assert_same_samples(xs, target[rows], u[rows], 5, st.sample_index[rows], ref.sample_index)
    g = torch.ones(N, device=DEVICE)
    expect = (torch.exp(xs[0] - ref.lse[:, None]))
    r = torch.arange(len(rows), device=DEVICE)
    expect[r, target[rows]] -= 1
    expect[r, st.sample_index[rows]] += 1
    dx = backend.backward(x, target, st.sample_index, st.lse, g, -g, g, IGNORE, True)
    assert dx.data_ptr() == x.data_ptr()
    torch.testing.assert_close(dx[0, rows].float(), expect, rtol=1.6e-2, atol=1e-3)


def test_large_k_falls_back_to_torch():
    """k_eff beyond the kernel's register budget uses the exact PyTorch path."""
    V = triton_backend.MAX_KERNEL_K + 10
    x = make_logits(1, 2, V, seed=8)
    target = torch.tensor([0, 5], device=DEVICE)
    compare_row_stats(x, target, make_uniform((1, 2), seed=8), V)


def test_mutating_ops_declare_what_they_write():
    """The in-place ops are registered with the argument they write, so that
    torch (and the version-counter bump of eager calls) knows it."""
    for name, written in (("triton_row_grad_", "logits"), ("triton_row_grad_complete_", "grad")):
        schema = getattr(torch.ops.cringe_kernels, name).default._schema
        assert [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write] == [written]
    for name in ("triton_row_stats", "triton_row_grad", "triton_row_stats_with_grad"):
        schema = getattr(torch.ops.cringe_kernels, name).default._schema
        assert not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def test_forward_config_follows_the_heuristics(monkeypatch):
    """The forward takes heuristics.triton_forward_config unless the backend
    was given a block (tests) and nothing from the environment."""
    from cringe_kernels.backends import heuristics, triton_backend

    assert heuristics.triton_forward_config(128256, 5) == (2048, 4, 512)
    assert triton_backend._forward_config(128256, 5, 0, 0) == (2048, 4, 512)
    assert heuristics.triton_forward_config(128256, 9) == (1024, 4, 512)
    assert heuristics.triton_forward_config(100, 5) == (128, 4, 128)
    assert triton_backend._forward_config(128256, 5, 256, 64) == (256, 4, 64)
    assert triton_backend._forward_config(128256, 5, 0, 256) == (2048, 4, 256)
    monkeypatch.setenv("CRINGE_KERNELS_TRITON_FWD", "4096,8,4096")
    assert triton_backend._forward_config(128256, 5, 0, 0) == (2048, 4, 512)
