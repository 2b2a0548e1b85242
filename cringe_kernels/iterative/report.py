"""Output of the iterative procedure: samples, a table (Markdown, CSV, JSON) and a plot."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, List, Optional, Sequence

from .config import RoundResult
from .generate import Completion


def _strict(value: Any) -> Any:
    """NaN and infinities as None, recursively: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_json(path: str, value: Any) -> None:
    """Strict JSON (``allow_nan=False``; NaN written as null)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(_strict(value), fh, indent=2, allow_nan=False)


def write_samples(output_dir: str, round_index: int, prompts: Sequence[Any], groups: Sequence[List[Completion]],
                  rewards: Sequence[List[float]]) -> str:
    """``samples_round_N.jsonl``: each prompt with its completions, their ``finished`` flags and rewards."""
    path = os.path.join(output_dir, f"samples_round_{round_index}.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for prompt, group, scores in zip(prompts, groups, rewards):
            record = {"prompt": prompt, "completions": [c.text for c in group],
                      "finished": [c.finished for c in group], "rewards": list(scores)}
            fh.write(json.dumps(_strict(record), allow_nan=False) + "\n")
    return path


COLUMNS = ("round", "final", "reward_mean", "reward_std", "examples", "logp_chosen_before", "logp_chosen_after",
           "logp_rejected_before", "logp_rejected_after", "train_loss", "seconds")


def round_name(result: RoundResult) -> str:
    return "final" if result.final else str(result.round)


def write_table(results: Sequence[RoundResult], output_dir: str) -> str:
    """Write ``metrics.md``, ``metrics.csv`` and ``metrics.json``; return the Markdown table."""
    rows = [dataclasses.asdict(r) for r in results]
    write_json(os.path.join(output_dir, "metrics.json"), rows)
    with open(os.path.join(output_dir, "metrics.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if isinstance(row[c], float) and math.isnan(row[c]) else row[c] for c in COLUMNS])
    table = format_table(results)
    with open(os.path.join(output_dir, "metrics.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    return table


def format_table(results: Sequence[RoundResult]) -> str:
    """Markdown table of the rounds."""
    head = ("| round | judge mean | judge std | examples | logp chosen before -> after "
            "| logp rejected before -> after | train loss | seconds |")
    lines = [head, "|" + "---|" * 8]

    def fmt(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    for r in results:
        lines.append(f"| {round_name(r)} | {r.reward_mean:.4f} | {r.reward_std:.4f} | {r.examples} "
                     f"| {fmt(r.logp_chosen_before)} -> {fmt(r.logp_chosen_after)} "
                     f"| {fmt(r.logp_rejected_before)} -> {fmt(r.logp_rejected_after)} "
                     f"| {fmt(r.train_loss)} | {r.seconds:.0f} |")
    return "\n".join(lines)


def plot_rounds(results: Sequence[RoundResult], path: str) -> Optional[str]:
    """PNG of the judge score per round and the chosen / rejected log-likelihoods.

    Returns the path, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [r.round for r in results]
    ax1.errorbar(rounds, [r.reward_mean for r in results], yerr=[r.reward_std for r in results], marker="o",
                 capsize=3)
    ax1.set_xlabel("round (samples of the model before it trains)")
    ax1.set_ylabel("judge score (mean and std of samples)")
    ax1.set_title("judge score per round")
    trained = [r for r in results if not math.isnan(r.train_loss)]
    for attr, name, style in (("logp_chosen", "chosen", "tab:green"), ("logp_rejected", "rejected", "tab:red")):
        for i, r in enumerate(trained):
            ax2.plot([r.round - 0.2, r.round + 0.2], [getattr(r, attr + "_before"), getattr(r, attr + "_after")],
                     color=style, marker="o", label=f"{name} (before -> after training)" if i == 0 else None)
    ax2.set_xlabel("round")
    ax2.set_ylabel("mean per-token log-likelihood")
    ax2.set_title("this round's chosen vs rejected")
    if trained:
        ax2.legend(loc="best")
    for ax in (ax1, ax2):
        ax.set_xticks(rounds, [round_name(r) for r in results])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
