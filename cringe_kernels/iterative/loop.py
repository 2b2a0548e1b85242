"""The iterative Cringe loop: generate, label, pair (or label), train; repeat."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ..hf import CringeConfig, CringeTrainer, PairwiseCringeConfig, PairwiseCringeTrainer, completion_logps
from .config import IterativeConfig, RoundResult
from .generate import Completion, as_conversation, generate_completions
from .labelling import Labels, RewardFunc, RewardLabeller
from .report import plot_rounds, write_samples, write_table


def _rows(prompts: Sequence[Any]) -> List[Dict[str, Any]]:
    """Each prompt as a row ``{"prompt": ..., other columns...}``."""
    rows = []
    for p in prompts:
        if isinstance(p, Mapping):
            if "prompt" not in p:
                raise ValueError(f"a prompt row needs a 'prompt' entry, got keys {sorted(p)}")
            rows.append(dict(p))
        else:
            rows.append({"prompt": p})
    return rows


def build_examples(config: IterativeConfig, prompts: List[Any], groups: List[List[Completion]],
                   rewards: List[List[float]], labels: Optional[List[List[Optional[bool]]]],
                   eos_token: Optional[str]):
    """Training rows plus the (prompt, completion) lists of the chosen and rejected sides.

    A completion's training text ends with the EOS token only when the model
    ended it so: a reply cut by ``max_new_tokens`` must not teach (or
    unteach) stopping there.
    """
    def text(c: Completion) -> str:
        return c.text + eos_token if c.finished and eos_token else c.text

    texts = [[text(c) for c in group] for group in groups]
    examples, chosen, rejected = [], [], []
    if config.mode == "pairwise":
        for prompt, options, scores in zip(prompts, texts, rewards):
            best = max(range(len(options)), key=lambda j: scores[j])
            # Never the best one itself, even when every score ties.
            worst = min((j for j in range(len(options)) if j != best), key=lambda j: scores[j])
            if scores[best] - scores[worst] <= config.min_gap or options[best] == options[worst]:
                continue
            examples.append({"prompt": prompt, "chosen": options[best], "rejected": options[worst]})
            chosen.append((prompt, options[best]))
            rejected.append((prompt, options[worst]))
        return examples, chosen, rejected
    if labels is None:
        flat = [s for scores in rewards for s in scores]
        threshold = config.threshold if config.threshold is not None else statistics.median(flat)
        labels = [[s >= threshold for s in scores] for scores in rewards]
    for prompt, options, marks in zip(prompts, texts, labels):
        for option, label in zip(options, marks):
            if label is None:
                continue
            examples.append({"prompt": prompt, "completion": option, "label": bool(label)})
            (chosen if label else rejected).append((prompt, option))
    return examples, chosen, rejected


def _mean_logp(model, tokenizer, pairs, max_length) -> float:
    if not pairs:
        return math.nan
    values = completion_logps(model, tokenizer, [p for p, _ in pairs], [c for _, c in pairs],
                              max_length=max_length, add_eos=False)
    return statistics.fmean(values)


@contextlib.contextmanager
def _datasets_progress(enabled: bool):
    import datasets

    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


def train_round(model, tokenizer, examples, config: IterativeConfig):
    """One trainer pass over ``examples``; ``(training loss, mean of each logged metric)``."""
    pairwise = config.mode == "pairwise"
    config_cls = PairwiseCringeConfig if pairwise else CringeConfig
    trainer_cls = PairwiseCringeTrainer if pairwise else CringeTrainer
    # Nothing is saved by the trainer (save_strategy="no"); it still wants a folder.
    with tempfile.TemporaryDirectory(prefix="cringe_iterative_") as scratch:
        options = dict(output_dir=scratch, per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-5,
                       lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no",
                       seed=config.seed, disable_tqdm=not config.progress, use_cpu=not torch.cuda.is_available(),
                       max_length=config.max_length, add_eos=False)
        options.update(config.loss_kwargs)
        options.update(config.training_args)
        args = config_cls(**options)
        with _datasets_progress(config.progress):
            trainer = trainer_cls(model, args, train_dataset=examples, processing_class=tokenizer)
            output = trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = sorted({k for entry in steps for k in entry if k not in ("epoch", "step", "learning_rate", "num_tokens")})
    averaged = {k: statistics.fmean(e[k] for e in steps if k in e) for k in keys}
    if steps and "num_tokens" in steps[-1]:
        averaged["num_tokens"] = steps[-1]["num_tokens"]
    return float(output.training_loss), averaged


def save_model(model, tokenizer, path: str) -> str:
    """``save_pretrained`` of the model and its tokenizer into ``path``."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


Labeller = Callable[..., Labels]


def run_iterative(model, tokenizer, prompts: Sequence[Any], reward_funcs: Optional[Sequence[RewardFunc]] = None,
                  config: Optional[IterativeConfig] = None, *, labeller: Optional[Labeller] = None,
                  log: Callable[[str], None] = print) -> List[RoundResult]:
    """Run the iterative Cringe procedure.

    Each round samples ``num_generations`` completions per prompt from the
    current model, labels them (reward functions, or any ``labeller``),
    builds pairs (best vs worst per prompt) or labelled completions,
    measures the chosen and rejected completions' log-likelihood, trains one
    trainer pass, and measures again. After the last round the final model
    is sampled and judged once more (the ``final`` row).

    Parameters
    ----------
    model : PreTrainedModel
        A causal LM; trained in place.
    tokenizer : PreTrainedTokenizerBase
    prompts : sequence of (str, list of messages, or dict)
        Prompts as text, as conversations, or as rows ``{"prompt": ...,
        other columns}`` whose other columns reach the reward functions as
        keyword arguments (lists, one entry per completion), as in TRL.
    reward_funcs : sequence of callables, optional
        ``f(prompts, completions, **kwargs) -> list[float]``; higher is
        better. They get the prompts as given and the completions' text.
    config : IterativeConfig, optional
    labeller : callable, optional
        Instead of ``reward_funcs``: ``labeller(prompts, completions,
        round_index, **columns) -> Labels`` (see
        :mod:`cringe_kernels.iterative.labelling`).
    log : callable
        Receives one line of text per event (default ``print``).

    Returns
    -------
    list of RoundResult
        One per round, then the final model's judge-only row (``final=True``).
    """
    config = config or IterativeConfig()
    if labeller is None:
        labeller = RewardLabeller(list(reward_funcs or []), config.reward_weights)
    elif reward_funcs:
        raise ValueError("pass reward_funcs or a labeller, not both")
    rows = _rows(prompts)
    if not rows:
        raise ValueError("need at least one prompt")
    raw_prompts = [row["prompt"] for row in rows]
    extra = sorted({key for row in rows for key in row if key != "prompt"})
    conversations = [as_conversation(p, tokenizer, config.use_chat_template, config.system_prompt)
                     for p in raw_prompts]
    if config.output_dir:
        os.makedirs(config.output_dir, exist_ok=True)
    n = config.num_generations
    results: List[RoundResult] = []

    for round_index in range(1, config.rounds + 2):
        final = round_index == config.rounds + 1
        start = time.perf_counter()
        torch.manual_seed(config.seed * 1000 + round_index)
        groups = generate_completions(model, tokenizer, conversations, num_generations=n,
                                      max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                      top_p=config.top_p, batch_size=config.generation_batch_size,
                                      progress=config.progress)
        flat_prompts = [p for p in raw_prompts for _ in range(n)]
        flat_texts = [c.text for group in groups for c in group]
        columns = {key: [row.get(key) for row in rows for _ in range(n)] for key in extra}
        judged = labeller(flat_prompts, flat_texts, round_index, **columns)
        if len(judged.rewards) != len(flat_texts):
            raise ValueError(f"the labeller returned {len(judged.rewards)} rewards for {len(flat_texts)} completions")
        rewards = [list(judged.rewards[i * n:(i + 1) * n]) for i in range(len(groups))]
        labels = None
        if judged.labels is not None:
            if len(judged.labels) != len(flat_texts):
                raise ValueError(f"the labeller returned {len(judged.labels)} labels for {len(flat_texts)} "
                                 "completions")
            labels = [list(judged.labels[i * n:(i + 1) * n]) for i in range(len(groups))]
        result = RoundResult(round_index, statistics.fmean(judged.rewards), statistics.pstdev(judged.rewards),
                             dict(judged.per_func), final=final, label_stats=dict(judged.stats))
        name = "final" if final else f"round {round_index}/{config.rounds}"
        log(f"[{name}] judge score of {len(flat_texts)} samples: mean {result.reward_mean:.4f} "
            f"(std {result.reward_std:.4f})")
        if config.output_dir:
            write_samples(config.output_dir, round_index, raw_prompts, groups, rewards)
        if not final:
            examples, chosen, rejected = build_examples(config, conversations, groups, rewards, labels,
                                                        tokenizer.eos_token)
            result.examples = len(examples)
            if examples:
                result.logp_chosen_before = _mean_logp(model, tokenizer, chosen, config.max_length)
                result.logp_rejected_before = _mean_logp(model, tokenizer, rejected, config.max_length)
                result.train_loss, result.train_metrics = train_round(model, tokenizer, examples, config)
                result.logp_chosen_after = _mean_logp(model, tokenizer, chosen, config.max_length)
                result.logp_rejected_after = _mean_logp(model, tokenizer, rejected, config.max_length)
            log(f"[{name}] {len(examples)} {config.mode} examples; per-token log-likelihood "
                f"chosen {result.logp_chosen_before:.4f} -> {result.logp_chosen_after:.4f}, "
                f"rejected {result.logp_rejected_before:.4f} -> {result.logp_rejected_after:.4f}; "
                f"train loss {result.train_loss:.4f}")
            if config.output_dir and config.save_round_models:
                save_model(model, tokenizer, os.path.join(config.output_dir, f"round_{round_index}_model"))
        result.seconds = time.perf_counter() - start
        results.append(result)
        if config.output_dir:
            write_table(results, config.output_dir)
            plot_rounds(results, os.path.join(config.output_dir, f"round_{round_index}.png"))
    if config.output_dir and config.save_final_model:
        path = save_model(model, tokenizer, os.path.join(config.output_dir, "final_model"))
        log(f"saved the final model and tokenizer to {path}")
    return results
