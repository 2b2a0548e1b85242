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
  (several passes when a round overflows it).

Usage: ``python benchmarks/topk_work_model.py [--V 128256] [--k 5] [--rows 4]``
(bf16: 8 columns per pack). Prints the averages per row; PERF_NOTES.md quotes
them.
"""

from __future__ import annotations

import argparse

import numpy as np

THREADS, UNROLL, BUFFER = 256, 4, 1024


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


def row_threshold(x, k, per_pack):
    per_round = THREADS * UNROLL * per_pack
    best = np.full(k, -np.inf)
    offered = merges = rounds_with_work = 0
    for start in range(0, x.size, per_round):
        chunk = x[start:start + per_round]
        pending = chunk[chunk >= best[-1]]
        if pending.size:
            rounds_with_work += 1
        while pending.size:
            take, pending = pending[:BUFFER], pending[BUFFER:]
            offered += take.size
            best = np.sort(np.concatenate([best, take]))[::-1][:k]
            merges += 1
            pending = pending[pending >= best[-1]]
    return dict(offered=offered, merges=merges, rounds_with_work=rounds_with_work,
                rounds=-(-x.size // per_round))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()
    per_pack = 8
    V = args.V - args.V % per_pack
    rng = np.random.default_rng(0)
    results = {"thread": [], "warp": [], "row": []}
    for _ in range(args.rows):
        x = (rng.standard_normal(V) * 2).astype(np.float32)
        results["thread"].append(thread_lists(x, args.k, per_pack, warp_gate=False))
        results["warp"].append(thread_lists(x, args.k, per_pack, warp_gate=True))
        results["row"].append(row_threshold(x, args.k, per_pack))
    print(f"V={V} k={args.k}, {THREADS} threads, {per_pack} columns per pack, mean of {args.rows} random rows:")
    for name, rows in results.items():
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        print(f"  {name:6s} " + ", ".join(f"{key} {value:.4g}" for key, value in mean.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
