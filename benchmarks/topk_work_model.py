"""How much top-k work each CUDA forward strategy does per row (a model, no GPU).

The CUDA forward's cost beyond streaming is its top-k bookkeeping, so this
replays the three strategies of ``csrc/cuda/forward.cu`` (``ForwardGate``) on
random rows in exactly the kernels' column order and counts what each does:

* ``thread``: each of 256 threads keeps a sorted list of its own columns'
  best k; a 16-byte pack whose max beats the thread's k-th key (or arrives
  before the list is full) is offered column by column ("slow packs"), and
  every offer that enters the list is an insertion.
* ``warp``: the same, with a pack also skipped when its max is below the best
  full-list k-th key among the thread's warp.
* ``row``: one list per row; per round (4 packs per thread) the columns at or
  above the row's k-th key go to a 1024-entry buffer, merged by one warp
  when a round overflows it or fills its entry 128, and at the end of the
  row; ``row-eager`` is the same with a merge after every round that
  offered anything (the kernel until 2026-11-27); ``row-unseeded`` starts
  round 0 at threshold -inf, so it offers every column of that round (the
  kernel until 2026-11-28, when round 0 got a seed threshold: per warp the
  ``ceil((k+1)/8)``-th largest of the lanes' maxima over their round-0
  columns, the smallest of those over the warps, then a merge).

``triton`` replays the Triton forward's offers of 2048-column blocks in
512-column pieces; ``triton-seeded`` the same with a seed floor for the
first block, a variant modelled and not adopted (PERF_NOTES.md, session 9).

Usage: ``python benchmarks/topk_work_model.py [--V 128256] [--k 5] [--rows 4]``
(bf16: 8 columns per pack). Prints the averages per row; PERF_NOTES.md quotes
them.
"""

from __future__ import annotations

import argparse

import numpy as np

THREADS, UNROLL, BUFFER, MERGE_AT = 256, 4, 1024, 128


def thread_lists(x, k, per_pack, warp_gate):
    packs = x.reshape(-1, per_pack)
    n_packs = packs.shape[0]
    slow = insertions = 0
    lists = [[] for _ in range(THREADS)]  # descending values, at most k
    for step in range((n_packs + THREADS - 1) // THREADS):
        thr = [lst[-1] if len(lst) == k else -np.inf for lst in lists]
        for t in range(THREADS):
            p = step * THREADS + t
            if p >= n_packs:
                continue
            pm = packs[p].max()
            lst = lists[t]
            may_hold = len(lst) < k or pm > lst[-1]
            if warp_gate:
                w = t // 32
                may_hold = may_hold and pm >= max(thr[w * 32:(w + 1) * 32])
            if not may_hold:
                continue
            slow += 1
            for v in packs[p]:
                if len(lst) < k or v > lst[-1]:
                    lst.append(v)
                    lst.sort(reverse=True)
                    del lst[k:]
                    insertions += 1
    return dict(slow_packs=slow / n_packs, insertions=insertions)


def round0_seed(chunk, k, per_pack):
    """The kernel's seed threshold of round 0 (forward.cu, round0_seed): at
    least k + 1 disjoint thread units hold a column at or above it."""
    warps = THREADS // 32
    j = -(-(k + 1) // warps)
    if j > 32:
        return -np.inf
    packs = np.full((UNROLL * THREADS, per_pack), -np.inf, dtype=chunk.dtype)
    packs.reshape(-1)[:chunk.size] = chunk
    # Pack q = u * THREADS + t belongs to thread t.
    unit = packs.max(axis=1).reshape(UNROLL, THREADS).max(axis=0)
    return min(np.sort(unit[w * 32:(w + 1) * 32])[::-1][j - 1] for w in range(warps))


def row_threshold(x, k, per_pack, lazy=True, seeded=True):
    """The row gate. ``lazy`` (the kernel now): the buffer is merged only when
    a round's candidates overflow it or fill entry MERGE_AT, and once at
    the end of the row; else (before) after every round that offered
    anything. ``seeded``: round 0 starts at the seed threshold and ends
    with a merge."""
    per_round = THREADS * UNROLL * per_pack
    best = np.full(k, -np.inf)
    buffered = np.empty(0, dtype=x.dtype)
    offered = merges = rounds_with_work = 0

    def merge():
        nonlocal best, buffered, merges
        best = np.sort(np.concatenate([best, buffered]))[::-1][:k]
        buffered = buffered[:0]
        merges += 1

    for start in range(0, x.size, per_round):
        chunk = x[start:start + per_round]
        seed = round0_seed(chunk, k, per_pack) if seeded and start == 0 else -np.inf
        pending = chunk[chunk >= max(best[-1], seed)]
        if pending.size:
            rounds_with_work += 1
        while pending.size:
            room = BUFFER - buffered.size
            take, pending = pending[:room], pending[room:]
            offered += take.size
            buffered = np.concatenate([buffered, take])
            if pending.size or not lazy or buffered.size > MERGE_AT or (seeded and start == 0):
                merge()
                pending = pending[pending >= best[-1]]
    if buffered.size:
        merge()
    return dict(offered=offered, merges=merges, rounds_with_work=rounds_with_work,
                rounds=-(-x.size // per_round))


def triton_offers(x, k, block=2048, sub=512, seeded=False):
    """The Triton forward (triton_kernels.row_stats_fwd_kernel, no target
    column): a block whose max reaches the threshold offers its ``sub``-column
    pieces; a piece whose best key reaches it enters the insertion loop, one
    round per pair inserted (each round two reductions over the piece).
    ``seeded`` (a variant modelled, not adopted): the first block's pieces
    pass by keys below the ``k``-th largest of 64 group maxima, a lower
    bound of the row's ``k``-th key."""
    top = []  # (key, -column) of the live pairs, best first
    offers = entered = rounds = 0
    for start in range(0, x.size, block):
        blk = x[start:start + block]
        floor = -np.inf
        groups = min(block, 64)
        if seeded and start == 0 and 2 * k <= groups and blk.size == block:
            floor = np.sort(blk.reshape(groups, -1).max(axis=1))[::-1][k - 1]
        thr = top[-1] if len(top) == k else (-np.inf, -np.inf)
        if blk.max() < thr[0]:
            continue
        for lo in range(0, blk.size, sub):
            piece = [(float(v), -(start + lo + i)) for i, v in enumerate(blk[lo:lo + sub]) if v >= floor]
            offers += 1
            thr = top[-1] if len(top) == k else (-np.inf, -np.inf)
            beat = sorted((p for p in piece if p > thr), reverse=True)
            if piece and max(piece)[0] >= thr[0]:
                entered += 1
            for p in beat:
                thr = top[-1] if len(top) == k else (-np.inf, -np.inf)
                if p <= thr:
                    break
                top = sorted(top + [p], reverse=True)[:k]
                rounds += 1
    return dict(offers=offers, entered=entered, rounds=rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()
    per_pack = 8
    V = args.V - args.V % per_pack
    rng = np.random.default_rng(0)
    results = {"thread": [], "warp": [], "row": [], "row-unseeded": [], "row-eager": [], "triton": [],
               "triton-seeded": []}
    for _ in range(args.rows):
        x = (rng.standard_normal(V) * 2).astype(np.float32)
        results["thread"].append(thread_lists(x, args.k, per_pack, warp_gate=False))
        results["warp"].append(thread_lists(x, args.k, per_pack, warp_gate=True))
        results["row"].append(row_threshold(x, args.k, per_pack))
        results["row-unseeded"].append(row_threshold(x, args.k, per_pack, seeded=False))
        results["row-eager"].append(row_threshold(x, args.k, per_pack, lazy=False, seeded=False))
        results["triton"].append(triton_offers(x, args.k))
        results["triton-seeded"].append(triton_offers(x, args.k, seeded=True))
    print(f"V={V} k={args.k}, {THREADS} threads, {per_pack} columns per pack, mean of {args.rows} random rows:")
    for name, rows in results.items():
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        print(f"  {name:15s} " + ", ".join(f"{key} {value:.4g}" for key, value in mean.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
