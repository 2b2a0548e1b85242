"""Plots of time and peak memory against V, one line per provider.

matplotlib is optional (the ``bench`` extra): without it :func:`plot_all`
returns no files and a note saying so, and the sweep's other outputs are
unaffected.
"""

from __future__ import annotations

import os
from typing import List, Tuple

from . import output


def plot_all(records: List[dict], out_dir: str, title: str = "") -> Tuple[List[str], str]:
    """One PNG per (loss, dtype, N): median time (top) and peak memory (bottom) vs V.

    Columns are the modes. Cross-entropy providers are drawn dashed on every
    Cringe figure of the same point, as the floor.

    Returns
    -------
    (list of str, str)
        Paths written, and a note (empty when all went well).
    """
    plt = output.pyplot()
    if plt is None:
        return [], output.NO_MATPLOTLIB
    ok = [r for r in records if r["status"] == "ok"]
    losses = sorted({r["loss"] for r in ok if r["loss"] != "ce"}) or ["ce"]
    modes = [m for m in ("fwd", "bwd", "full") if any(r["mode"] == m for r in ok)]
    paths = []
    for loss in losses:
        for dtype in sorted({r["dtype"] for r in ok}):
            for N in sorted({r["N"] for r in ok}):
                rows = [r for r in ok if r["dtype"] == dtype and r["N"] == N and r["loss"] in (loss, "ce")]
                if not rows or not modes:
                    continue
                fig, axes = plt.subplots(2, len(modes), figsize=(4.2 * len(modes), 7), squeeze=False)
                providers = list(dict.fromkeys(r["provider"] for r in rows))
                for j, mode in enumerate(modes):
                    for p in providers:
                        pts = sorted((r["V"], r["median_ms"], r.get("peak_mem_mib")) for r in rows
                                     if r["provider"] == p and r["mode"] == mode)
                        if not pts:
                            continue
                        style = "--" if any(r["loss"] == "ce" for r in rows if r["provider"] == p) else "-"
                        axes[0][j].plot([v for v, _, _ in pts], [t for _, t, _ in pts], style, marker="o", label=p)
                        mem = [(v, m) for v, _, m in pts if m is not None]
                        if mem:
                            axes[1][j].plot([v for v, _ in mem], [m for _, m in mem], style, marker="o", label=p)
                    axes[0][j].set_title(f"{loss} {mode}, N={N}, {dtype}")
                    axes[0][j].set_ylabel("median time (ms)")
                    axes[1][j].set_ylabel("peak memory beyond inputs (MiB)")
                    for i in (0, 1):
                        axes[i][j].set_xlabel("V")
                        axes[i][j].set_xscale("log")
                        axes[i][j].grid(True, which="both", alpha=0.3)
                    axes[0][j].set_yscale("log")
                handles, labels = axes[0][0].get_legend_handles_labels()
                for ax in axes.flat:
                    for h, l in zip(*ax.get_legend_handles_labels()):
                        if l not in labels:
                            handles.append(h)
                            labels.append(l)
                fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small")
                if title:
                    fig.suptitle(title, fontsize="small")
                fig.tight_layout(rect=(0, 0.06, 1, 0.97))
                path = os.path.join(out_dir, f"plot_{loss}_{dtype}_N{N}.png")
                fig.savefig(path, dpi=90)
                plt.close(fig)
                paths.append(path)
    return paths, ""
