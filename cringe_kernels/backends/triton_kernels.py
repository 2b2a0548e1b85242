"""Triton kernels of the row-statistics primitive (forward and backward).

Only ``@triton.jit`` code lives here; allocation, launch parameters and the
``torch.library`` registration are in :mod:`cringe_kernels.backends.triton_backend`.
The meaning of every input and output is in :mod:`cringe_kernels.backends.base`.

Forward, one program per row, one streaming read of the row in blocks of
``BLOCK`` columns:

* the log-sum-exp as one partial sum per lane, ``s += exp(x - shift)``: the
  block max is the only reduction per block, and it raises the (row-wide)
  shift only when the running max grows, about ``log(V / BLOCK)`` times per
  row, so the steady state is a max, an exp and an add per column;
* a streaming top-k that skips the target column. The running list is a
  ``KPAD``-wide register array of (key, column) pairs, unsorted, of which the
  first ``K`` slots are live. The pair order is docs/spec.md's: key descending, then
  column ascending; the key is the logit with NaN mapped to ``+inf`` (as the
  reference orders it). The list's worst live pair is the threshold. The
  same block max gates it: a block whose max is below the threshold costs
  nothing more; only a block holding pairs that beat the threshold enters the
  insertion loop, which moves the block's best pair into the worst slot until
  no pair of the block beats the (rising) threshold, so it runs at most ``K``
  times per block and, on typical rows, only in the first few blocks. A row
  holding a NaN (whose key, +inf, the NaN-ignoring max cannot see) is
  streamed a second time with every block offered;
* the inverse-CDF draw over the ``K`` candidates with the row's uniform. The
  list stays unsorted: each slot's position in SPEC order is the number of
  live slots that beat it, and its CDF value the sum of ``q`` over the slots
  at or before it (``[KPAD, KPAD]`` comparisons, once per row). The sums
  round differently from the reference's cumsum, so a ``u`` within rounding
  of a CDF boundary may pick the neighbouring candidate.

Sentinel columns keep the order total without value tricks: an empty slot
holds ``(-inf, EMPTY + slot)`` and the target column and the padding past
``V`` hold ``(-inf, EXCLUDED)``, with ``V <= EMPTY < EMPTY + KPAD <= EXCLUDED``.
So every real column, ``-inf`` included, beats an empty slot, nothing beats a
live slot by being excluded, and a ``-inf`` logit can still be a candidate
when fewer than ``K`` finite ones exist (docs/spec.md: -inf is legal, rarely picked).

Backward, one program per (row, block of columns): one read of the logits and
one write of the gradient, fp32 math (fp64 for fp64 logits) and a single cast
at the store, so the target column's ``grad_target`` term is not rounded to
bf16 on its own.

All memory offsets are int64 (``N * V`` may exceed ``2**31``); columns are
int32 (the launcher checks ``V < 2**30``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Column sentinels (int32). Real columns are < 2**30 (checked by the launcher).
EMPTY: tl.constexpr = tl.constexpr(1 << 30)
EXCLUDED: tl.constexpr = tl.constexpr((1 << 31) - 1)


@triton.jit
def _best_pair(v, i, NO_COL: tl.constexpr):
    """Best (key, column) of a block: largest key, lowest column among ties.

    Two plain reductions rather than one over pairs: max/min reductions are
    native on the GPU, and the interpreter runs a custom combine element by
    element.
    """
    best_v = tl.max(v, 0)
    best_i = tl.min(tl.where(v == best_v, i, NO_COL), 0)
    return best_v, best_i


@triton.jit
def _worst_live(top_v, top_i, live):
    """Worst live (key, column) of the list: smallest key, highest column among ties."""
    worst_v = tl.min(tl.where(live, top_v, float("inf")), 0)
    worst_i = tl.max(tl.where(live & (top_v == worst_v), top_i, -1), 0)
    return worst_v, worst_i


@triton.jit
def _to_bf16_rtne(v):
    """float32 -> bfloat16, round to nearest even, in integer arithmetic.

    The GPU's conversion rounds to nearest even; Triton's CPU interpreter
    truncates. This reproduces the GPU's result so that the interpreter's
    bf16 gradients are the ones a GPU writes. (A NaN stays NaN: its quiet
    bit survives the carry.)
    """
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + (((bits >> 16) & 1) + 0x7FFF)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _row_base(row, T, stride_b, stride_t):
    """int64 offset of row ``row = b * T + t`` in a ``[B, T, V]`` view."""
    row = row.to(tl.int64)
    return (row // T) * stride_b + (row % T) * stride_t


@triton.jit
def _topk_block(x, cols, inside, y32, top_v, top_i, thr_v, thr_i, live):
    """Offer one block of columns to the running top-k list (exact, SPEC order).

    The key is the logit with NaN mapped to ``+inf``; the target column and
    the padding past ``V`` are excluded. Only a block whose best key reaches
    the threshold enters the insertion loop, which moves the block's best
    pair into the worst live slot until no pair of the block beats the
    (rising) threshold: at most ``K`` rounds, and on typical rows only in the
    first few blocks.
    """
    key = tl.where(x != x, float("inf"), x)
    excluded = (cols == y32) | (~inside)
    key = tl.where(excluded, float("-inf"), key)
    b_v = tl.max(key, 0)
    if b_v >= thr_v:
        idx = tl.where(excluded, EXCLUDED, cols).to(tl.int32)
        b_i = tl.min(tl.where(key == b_v, idx, EXCLUDED), 0)
        while (b_v > thr_v) | ((b_v == thr_v) & (b_i < thr_i)):
            # The threshold pair is unique among live slots (distinct
            # columns), so this replaces exactly one.
            slot = live & (top_i == thr_i)
            top_v = tl.where(slot, b_v, top_v)
            top_i = tl.where(slot, b_i, top_i)
            thr_v, thr_i = _worst_live(top_v, top_i, live)
            taken = idx == b_i
            key = tl.where(taken, float("-inf"), key)
            idx = tl.where(taken, EXCLUDED, idx)
            b_v, b_i = _best_pair(key, idx, EXCLUDED)
    return top_v, top_i, thr_v, thr_i


@triton.jit
def row_stats_fwd_kernel(
    x_ptr,            # [B, T, V] logits, last stride 1
    target_ptr,       # [N] int64
    uniform_ptr,      # [N] float32 (unused when K == 0)
    lse_ptr,          # [N] ACC
    tlogit_ptr,       # [N] ACC
    slogit_ptr,       # [N] ACC
    sidx_ptr,         # [N] int64
    w_ptr,            # [N] ACC, the guess of d loss / d lse (WITH_GRAD only)
    out_ptr,          # [B, T, V] gradient, last stride 1 (WITH_GRAD only)
    T,
    V,
    stride_b,
    stride_t,
    out_stride_b,
    out_stride_t,
    ignore_index,
    ACC: tl.constexpr,      # tl.float32, or tl.float64 for float64 logits
    K: tl.constexpr,        # k_eff = min(k, V - 1); 0 disables sampling
    KPAD: tl.constexpr,     # power of two >= max(K, 1)
    BLOCK: tl.constexpr,    # columns per step, power of two
    SUB: tl.constexpr,      # columns per top-k offer, a power of two dividing BLOCK
    WITH_GRAD: tl.constexpr = False,    # the single pass: also write w * exp(x - lse)
    BF16_BY_HAND: tl.constexpr = False,  # bfloat16 gradient under the interpreter
):
    row = tl.program_id(0)
    base = _row_base(row, T, stride_b, stride_t)
    y = tl.load(target_ptr + row)
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < V)
    y32 = tl.where(in_range, y, 0).to(tl.int32)

    if ignored:
        tl.store(lse_ptr + row, 0.0)
        tl.store(tlogit_ptr + row, 0.0)
        tl.store(slogit_ptr + row, 0.0)
        tl.store(sidx_ptr + row, -1)
        if WITH_GRAD:
            out_base = _row_base(row, T, out_stride_b, out_stride_t)
            for start in range(0, V, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                tl.store(out_ptr + out_base + cols, tl.zeros((BLOCK,), out_ptr.dtype.element_ty), mask=cols < V)
    else:
        cols0 = tl.arange(0, BLOCK)
        slots = tl.arange(0, KPAD)
        live = slots < K
        # Running top-k list and its worst live pair (the threshold).
        top_v = tl.full((KPAD,), float("-inf"), ACC)
        top_i = (slots + EMPTY).to(tl.int32)
        thr_v, thr_i = _worst_live(top_v, top_i, live)
        # Online log-sum-exp, one partial sum per lane: sum_j exp(x_j) =
        # sum(s) * exp(shift), shift = the running max m when finite, else 0
        # (so exp(x - shift) needs no guard: -inf adds 0, +inf adds +inf, NaN
        # poisons its lane). The block max is the only reduction per block;
        # it also gates the top-k (it includes the target column, so the gate
        # can only open too often).
        m = tl.full((), float("-inf"), ACC)
        shift = tl.zeros((), ACC)
        s = tl.zeros((BLOCK,), ACC)
        for start in range(0, V, BLOCK):
            cols = start + cols0
            inside = cols < V
            x = tl.load(x_ptr + base + cols, mask=inside, other=float("-inf")).to(ACC)
            bm = tl.max(x, 0)
            if bm > m:
                # Rare: the running max grows about log(V / BLOCK) times per
                # row. A zero lane stays zero (0 * exp(+large) would be NaN).
                new_shift = tl.where(bm == float("inf"), 0.0, bm).to(ACC)
                s = tl.where(s == 0, s, s * tl.exp(shift - new_shift))
                m = bm
                shift = new_shift
            s += tl.exp(x - shift)
            if K > 0:
                if bm >= thr_v:
                    if SUB == BLOCK:
                        top_v, top_i, thr_v, thr_i = _topk_block(x, cols, inside, y32, top_v, top_i, thr_v,
                                                                 thr_i, live)
                    else:
                        # Offer the block in SUB-column pieces read again
                        # (from L1/L2: just loaded), so that no BLOCK-wide
                        # key/column arrays are live here: the kernel's
                        # register peak, hence the rows in flight per SM,
                        # stays near the streaming loop's.
                        for sub in range(0, BLOCK, SUB):
                            scols = start + sub + tl.arange(0, SUB)
                            sin = scols < V
                            xs = tl.load(x_ptr + base + scols, mask=sin, other=float("-inf")).to(ACC)
                            top_v, top_i, thr_v, thr_i = _topk_block(xs, scols, sin, y32, top_v, top_i, thr_v,
                                                                     thr_i, live)
        total = tl.sum(s, 0)
        if K > 0:
            if total != total:
                # A NaN logit: the block max may have skipped it (max ignores
                # NaN on the GPU), but its top-k key is +inf. Rare and already
                # a NaN loss: rebuild the list with every block offered.
                top_v = tl.full((KPAD,), float("-inf"), ACC)
                top_i = (slots + EMPTY).to(tl.int32)
                thr_v, thr_i = _worst_live(top_v, top_i, live)
                for start in range(0, V, SUB):
                    scols = start + tl.arange(0, SUB)
                    sin = scols < V
                    xs = tl.load(x_ptr + base + scols, mask=sin, other=float("-inf")).to(ACC)
                    top_v, top_i, thr_v, thr_i = _topk_block(xs, scols, sin, y32, top_v, top_i, thr_v, thr_i, live)

        lse = shift + tl.log(total)
        t_logit = tl.load(x_ptr + base + y32, mask=in_range, other=0.0).to(ACC)
        nan = tl.full((), float("nan"), ACC)
        if K > 0:
            # The inverse-CDF draw over the (unsorted) live slots. Position in
            # SPEC order of slot j = number of live slots that beat it; the
            # CDF at j sums q over the slots at or before j.
            u = tl.load(uniform_ptr + row).to(ACC)
            c1 = tl.max(tl.where(live, top_v, float("-inf")), 0)
            w = tl.where(live & (top_v != float("-inf")), tl.exp(top_v - c1), 0.0)
            q = w / tl.sum(w, 0)
            vj = top_v[:, None]
            ij = top_i[:, None]
            vl = top_v[None, :]
            il = top_i[None, :]
            beats = live[None, :] & ((vl > vj) | ((vl == vj) & (il < ij)))
            rank = tl.sum(beats.to(tl.int32), 1)
            cdf = tl.sum(tl.where(beats | (il == ij), q[None, :], 0.0), 1)
            hit = live & (cdf > u)
            positive = live & (q > 0)
            first_hit = tl.min(tl.where(hit, rank, KPAD), 0)
            last_positive = tl.max(tl.where(positive, rank, -1), 0)
            pick = tl.where(first_hit < KPAD, first_hit, tl.where(last_positive >= 0, last_positive, 0))
            s_col = tl.sum(tl.where(live & (rank == pick), top_i, 0), 0)
            # Every live slot holds a real column once the row is streamed
            # (K <= V - 1 and any real column beats an empty slot); the mask
            # only guarantees that no input can make this load stray.
            sampled = in_range & (s_col < V)
            s_logit = tl.load(x_ptr + base + s_col, mask=sampled, other=float("nan")).to(ACC)
            tl.store(slogit_ptr + row, tl.where(sampled, s_logit, nan))
            tl.store(sidx_ptr + row, tl.where(sampled, s_col.to(tl.int64), -1))
        else:
            tl.store(slogit_ptr + row, tl.where(in_range, 0.0, nan).to(ACC))
            tl.store(sidx_ptr + row, -1)
        tl.store(lse_ptr + row, tl.where(in_range, lse, nan))
        tl.store(tlogit_ptr + row, tl.where(in_range, t_logit, nan))
        if WITH_GRAD:
            # The row again, as the backward computes its dense term: same
            # operations, same rounding. A target out of range leaves the
            # row to the backward. From the row's end: L2 (50 MB) turns over
            # in ~17 us at 3 TB/s, much less than a row's first pass, so
            # only the end just read is still there.
            if in_range:
                out_base = _row_base(row, T, out_stride_b, out_stride_t)
                lse_w = tl.load(w_ptr + row).to(ACC)
                n_blocks = tl.cdiv(V, BLOCK)
                for i in range(0, n_blocks):
                    cols = (n_blocks - 1 - i) * BLOCK + tl.arange(0, BLOCK)
                    # The dense term only: no target or sampled column (-1).
                    _write_grad(x_ptr + base, out_ptr + out_base, cols, cols < V, cols.to(tl.int64), -1, -1, lse,
                                lse_w, 0.0, 0.0, True, ACC, BF16_BY_HAND)


@triton.jit
def row_stats_bwd_kernel(
    x_ptr,            # [B, T, V] logits, last stride 1
    out_ptr,          # [B, T, V] gradient, last stride 1 (may be x_ptr)
    target_ptr,       # [N] int64
    sidx_ptr,         # [N] int64, -1 where not sampled
    lse_ptr,          # [N] ACC
    glse_ptr,         # [N] ACC
    gt_ptr,           # [N] ACC
    gs_ptr,           # [N] ACC
    T,
    V,
    stride_b,
    stride_t,
    out_stride_b,
    out_stride_t,
    ignore_index,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    BF16_BY_HAND: tl.constexpr,  # bfloat16 output under the interpreter
):
    row = tl.program_id(0)
    _write_row_block(x_ptr, out_ptr, target_ptr, sidx_ptr, lse_ptr, glse_ptr, gt_ptr, gs_ptr, row,
                     tl.program_id(1) * BLOCK, T, V, stride_b, stride_t, out_stride_b, out_stride_t, ignore_index,
                     ACC, BLOCK, BF16_BY_HAND)


@triton.jit
def _write_row_block(x_ptr, out_ptr, target_ptr, sidx_ptr, lse_ptr, glse_ptr, gt_ptr, gs_ptr, row, lo, T, V,
                     stride_b, stride_t, out_stride_b, out_stride_t, ignore_index, ACC: tl.constexpr,
                     BLOCK: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    """The gradient of columns ``[lo, lo + BLOCK)`` of row ``row`` (a scalar)."""
    cols = lo + tl.arange(0, BLOCK)
    base = _row_base(row, T, stride_b, stride_t)
    out_base = _row_base(row, T, out_stride_b, out_stride_t)
    y = tl.load(target_ptr + row)
    # cols are in [0, V), so an out-of-range target or a -1 sample index
    # simply matches nothing.
    _write_grad(x_ptr + base, out_ptr + out_base, cols, cols < V, cols.to(tl.int64), y, tl.load(sidx_ptr + row),
                tl.load(lse_ptr + row).to(ACC), tl.load(glse_ptr + row).to(ACC), tl.load(gt_ptr + row).to(ACC),
                tl.load(gs_ptr + row).to(ACC), y != ignore_index, ACC, BF16_BY_HAND)


@triton.jit
def _guess_holds(y, g_lse, lse_w, V):
    """Whether a non-ignored row needs only its target and sampled columns
    after the single-pass forward: its target is in range and its g_lse is
    the forward's guess (else it is written in full)."""
    return (y >= 0) & (y < V) & (g_lse == lse_w)


@triton.jit
def row_stats_complete_kernel(
    x_ptr, out_ptr, target_ptr, sidx_ptr, lse_ptr, glse_ptr, gt_ptr, gs_ptr,  # as row_stats_bwd_kernel
    w_ptr,            # [N] ACC: the guess of g_lse the forward (WITH_GRAD) wrote with
    N,                # rows
    T, V, stride_b, stride_t, out_stride_b, out_stride_t, ignore_index,  # as row_stats_bwd_kernel
    ACC: tl.constexpr,
    ROWS: tl.constexpr,   # rows a program, a power of two
    BLOCK: tl.constexpr,  # columns a step of a row written in full
    BF16_BY_HAND: tl.constexpr,
):
    """Completes the gradient the single-pass forward wrote.

    The forward wrote ignored rows (zeros) and, for its guess of g_lse, the
    dense term: where the guess holds only the target and sampled columns
    remain. A program takes ROWS rows as one vector and writes those two
    columns of each (a gather and a scatter); then it writes in full, one
    after another, its rows where the guess does not hold (an upstream
    gradient other than the one the loss promised). One program per row and
    column block instead (the two-pass grid) cost ~0.6 ms at N = 16384,
    V = 128256 on an H200 (benchmarks/results/cuda-h200-5, tune.csv): ~262K
    programs that each wrote at most two columns.
    """
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < N
    y = tl.load(target_ptr + rows, mask=live, other=ignore_index)
    s_col = tl.load(sidx_ptr + rows, mask=live, other=-1)
    lse = tl.load(lse_ptr + rows, mask=live, other=0.0).to(ACC)
    g_lse = tl.load(glse_ptr + rows, mask=live, other=0.0).to(ACC)
    g_t = tl.load(gt_ptr + rows, mask=live, other=0.0).to(ACC)
    g_s = tl.load(gs_ptr + rows, mask=live, other=0.0).to(ACC)
    guessed = _guess_holds(y, g_lse, tl.load(w_ptr + rows, mask=live, other=0.0).to(ACC), V)
    x_row = x_ptr + _row_base(rows, T, stride_b, stride_t)
    out_row = out_ptr + _row_base(rows, T, out_stride_b, out_stride_t)
    # The target column, with the sampled term where the sample is the
    # target; then the sampled column elsewhere (-1 when k = 0). Same
    # formula and rounding as a row written in full.
    valid = y != ignore_index
    y_col = tl.where(guessed, y, 0).to(tl.int64)
    _write_grad(x_row, out_row, y_col, live & guessed, y_col, y, s_col, lse, g_lse, g_t, g_s, valid, ACC,
                BF16_BY_HAND)
    s_here = live & guessed & (s_col >= 0) & (s_col < V) & (s_col != y)
    s_safe = tl.where(s_here, s_col, 0).to(tl.int64)
    _write_grad(x_row, out_row, s_safe, s_here, s_safe, y, s_col, lse, g_lse, g_t, g_s, valid, ACC, BF16_BY_HAND)
    for r in range(0, ROWS):
        row = tl.program_id(0) * ROWS + r
        if row < N:
            yr = tl.load(target_ptr + row)
            redo = (yr != ignore_index) & ~_guess_holds(yr, tl.load(glse_ptr + row).to(ACC),
                                                        tl.load(w_ptr + row).to(ACC), V)
            if redo:
                for lo in range(0, V, BLOCK):
                    _write_row_block(x_ptr, out_ptr, target_ptr, sidx_ptr, lse_ptr, glse_ptr, gt_ptr, gs_ptr, row,
                                     lo, T, V, stride_b, stride_t, out_stride_b, out_stride_t, ignore_index, ACC,
                                     BLOCK, BF16_BY_HAND)


@triton.jit
def _write_grad(x_row, out_row, cols, mask, c64, y, s_col, lse, g_lse, g_t, g_s, valid, ACC: tl.constexpr,
                BF16_BY_HAND: tl.constexpr):
    """dx = g_lse exp(x - lse) + g_t [col == y] + g_s [col == s] at ``cols`` (where ``mask``), rounded once."""
    x = tl.load(x_row + cols, mask=mask, other=0.0).to(ACC)
    dx = g_lse * tl.exp(x - lse) + tl.where(c64 == y, g_t, 0.0) + tl.where(c64 == s_col, g_s, 0.0)
    # Ignored rows get exact zeros even where their logits are NaN or inf.
    dx = tl.where(valid, dx, 0.0)
    if BF16_BY_HAND:
        dx = _to_bf16_rtne(dx)
    else:
        dx = dx.to(out_row.dtype.element_ty)
    tl.store(out_row + cols, dx, mask=mask)
