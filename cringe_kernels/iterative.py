"""The iterative Cringe procedure: generate, judge, pair (or label), train; repeat.

This is the loop of the Cringe papers (Adolphs et al. 2022; Xu et al. 2023)
and BlenderBot 3x as a library function, :func:`run_iterative`, and a
command::

    python -m cringe_kernels.iterative --model PATH_OR_DIR [--gguf-file F] \\
        --prompts prompts.txt --reward mypkg.rewards:politeness --rounds 3

Each round

1. samples ``num_generations`` completions per prompt from the current model;
2. scores them with reward functions in TRL's signature,
   ``f(prompts, completions, **kwargs) -> list[float]`` (weighted sum);
3. builds training data: the best and the worst completion of each prompt
   as a pair (``mode="pairwise"``), or every completion labelled by a
   reward threshold (``mode="binary"``);
4. measures the per-token log-likelihood of the chosen / rejected
   completions, trains one :class:`~cringe_kernels.hf.PairwiseCringeTrainer`
   or :class:`~cringe_kernels.hf.CringeTrainer` pass, and measures again;
5. writes the metrics so far as a table (Markdown, CSV, JSON) and, with
   matplotlib installed, a PNG plot.

After the last round the final model is sampled and judged once more, so
the table shows the judge's score of the model that each round produced.

Needs the ``[hf]`` extra (``transformers``); matplotlib is optional.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import torch

from .hf import CringeTrainer, PairwiseCringeTrainer, completion_logps

__all__ = ["Completion", "IterativeConfig", "RoundResult", "generate_completions", "run_iterative", "main"]

RewardFunc = Callable[..., List[float]]


@dataclasses.dataclass
class IterativeConfig:
    """Settings of :func:`run_iterative`.

    Attributes
    ----------
    rounds : int
        Generate-judge-train rounds.
    mode : {"pairwise", "binary"}
        Pairwise Cringe on (best, worst) per prompt, or binary Cringe on every
        completion labelled by ``threshold``.
    num_generations : int
        Completions sampled per prompt and round.
    max_new_tokens, temperature, top_p : generation settings (sampling).
    generation_batch_size : int
        Prompts per ``generate`` call.
    threshold : float, optional
        Binary mode: a completion is positive when its reward is at least
        this; None uses the median reward of the round.
    min_gap : float
        Pairwise mode: a prompt makes a pair only when best - worst > min_gap.
    loss_kwargs : dict
        For the loss (``k``, ``alpha``, ``margin``, ``temperature``,
        ``length_normalize``, ``backend``...).
    training_args : dict
        Overrides for ``transformers.TrainingArguments`` of each round.
    use_chat_template : bool
        Wrap each prompt as one user turn with the tokenizer's chat template
        (when it has one).
    system_prompt : str, optional
        A system turn before the prompt; None keeps the template's default.
    reward_weights : list of float, optional
        One per reward function; default 1 each.
    seed : int
    output_dir : str, optional
        Where the table, plots and samples go; nothing is written when None.
    progress : bool
        Progress bars (tqdm) for generation and training.
    """

    rounds: int = 3
    mode: str = "pairwise"
    num_generations: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    generation_batch_size: int = 16
    threshold: Optional[float] = None
    min_gap: float = 0.0
    loss_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    training_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    max_length: Optional[int] = None
    use_chat_template: bool = True
    system_prompt: Optional[str] = None
    reward_weights: Optional[List[float]] = None
    seed: int = 0
    output_dir: Optional[str] = None
    progress: bool = True

    def __post_init__(self):
        if self.mode not in ("pairwise", "binary"):
            raise ValueError(f"mode must be 'pairwise' or 'binary', got {self.mode!r}")
        if self.rounds < 1 or self.num_generations < 2:
            raise ValueError(f"need rounds >= 1 and num_generations >= 2, got {self.rounds}, {self.num_generations}")


@dataclasses.dataclass
class RoundResult:
    """Metrics of one round (``round = rounds + 1`` is the final judge-only row).

    ``reward_*`` describe the completions sampled at the start of the round,
    that is, the model produced by the previous round. ``logp_*`` are mean
    per-token log-likelihoods of this round's chosen / rejected completions
    (binary: positive / negative) before and after the round's training.
    """

    round: int
    reward_mean: float
    reward_std: float
    reward_per_func: Dict[str, float]
    examples: int = 0
    logp_chosen_before: float = math.nan
    logp_chosen_after: float = math.nan
    logp_rejected_before: float = math.nan
    logp_rejected_after: float = math.nan
    train_loss: float = math.nan
    seconds: float = 0.0
    train_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


def _format_prompt(tokenizer, prompt: str, use_chat_template: bool, system_prompt: Optional[str]) -> str:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


class Completion(NamedTuple):
    """A sampled reply: its text (no special tokens) and whether the model ended it with EOS."""

    text: str
    finished: bool


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: Sequence[str], *, num_generations: int, max_new_tokens: int,
                         temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                         progress: bool = False) -> List[List[Completion]]:
    """Sample ``num_generations`` completions for each (already formatted) prompt.

    Returns
    -------
    list of list of Completion
        ``result[i][j]``: the j-th completion of prompt i.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    # Left padding so that every prompt ends where generation starts.
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = [stop] if isinstance(stop, int) else list(stop or [])
    if tokenizer.eos_token_id is not None:
        stop.append(tokenizer.eos_token_id)
    stop_ids = torch.tensor(stop, dtype=torch.long, device=device)
    result: List[List[Completion]] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in _progress(starts, progress, desc="generate", leave=False):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=True).to(device)
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, num_return_sequences=num_generations,
                                 pad_token_id=pad_id)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            finished = torch.isin(new_tokens, stop_ids).any(dim=1).tolist()
            for i in range(len(chunk)):
                part = slice(i * num_generations, (i + 1) * num_generations)
                result.append([Completion(t.strip(), f) for t, f in zip(texts[part], finished[part])])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return result


def _score(reward_funcs: Sequence[RewardFunc], weights: Sequence[float], prompts: List[str],
           completions: List[str]):
    """Weighted total reward per completion and the mean of each function."""
    total = [0.0] * len(completions)
    per_func = {}
    for func, weight in zip(reward_funcs, weights):
        values = [float(v) for v in func(prompts, completions)]
        if len(values) != len(completions):
            raise ValueError(f"reward function {_name(func)} returned {len(values)} values for {len(completions)} completions")
        per_func[_name(func)] = statistics.fmean(values)
        total = [t + weight * v for t, v in zip(total, values)]
    return total, per_func


def _name(func) -> str:
    return getattr(func, "__name__", type(func).__name__)


def _build_examples(config: IterativeConfig, prompts: List[str], groups: List[List[Completion]],
                    rewards: List[List[float]], eos_token: Optional[str]):
    """Training examples plus the (prompt, completion) lists of the chosen and rejected sides.

    A completion's training text ends with the EOS token only when the model
    ended it so: a reply cut by ``max_new_tokens`` must not teach (or
    unteach) stopping there.
    """
    def text(c: Completion) -> str:
        return c.text + eos_token if c.finished and eos_token else c.text

    groups = [[text(c) for c in group] for group in groups]
    examples, chosen, rejected = [], [], []
    if config.mode == "pairwise":
        for prompt, texts, scores in zip(prompts, groups, rewards):
            best = max(range(len(texts)), key=lambda j: scores[j])
            # Never the best one itself, even when every score ties.
            worst = min((j for j in range(len(texts)) if j != best), key=lambda j: scores[j])
            if scores[best] - scores[worst] <= config.min_gap or texts[best] == texts[worst]:
                continue
            examples.append({"prompt": prompt, "chosen": texts[best], "rejected": texts[worst]})
            chosen.append((prompt, texts[best]))
            rejected.append((prompt, texts[worst]))
    else:
        flat = [s for scores in rewards for s in scores]
        threshold = config.threshold if config.threshold is not None else statistics.median(flat)
        for prompt, texts, scores in zip(prompts, groups, rewards):
            for text, score in zip(texts, scores):
                label = score >= threshold
                examples.append({"prompt": prompt, "completion": text, "label": label})
                (chosen if label else rejected).append((prompt, text))
    return examples, chosen, rejected


def _mean_logp(model, tokenizer, pairs, max_length) -> float:
    if not pairs:
        return math.nan
    values = completion_logps(model, tokenizer, [p for p, _ in pairs], [c for _, c in pairs],
                              max_length=max_length, add_eos=False)
    return statistics.fmean(values)


def _train(model, tokenizer, examples, config: IterativeConfig):
    from transformers import TrainingArguments

    # Nothing is saved (save_strategy="no"); Trainer still wants a folder.
    scratch = tempfile.mkdtemp(prefix="cringe_iterative_")
    options = dict(output_dir=scratch, per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-5,
                   lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no",
                   seed=config.seed, disable_tqdm=not config.progress,
                   use_cpu=not torch.cuda.is_available())
    options.update(config.training_args)
    args = TrainingArguments(**options)
    trainer_cls = PairwiseCringeTrainer if config.mode == "pairwise" else CringeTrainer
    trainer = trainer_cls(model, args, train_dataset=examples, processing_class=tokenizer, add_eos=False,
                          max_length=config.max_length, loss_kwargs=dict(config.loss_kwargs))
    output = trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = sorted({k for entry in steps for k in entry if k not in ("epoch", "step", "learning_rate")})
    averaged = {k: statistics.fmean(e[k] for e in steps if k in e) for k in keys}
    return float(output.training_loss), averaged


def run_iterative(model, tokenizer, prompts: Sequence[str], reward_funcs: Sequence[RewardFunc],
                  config: Optional[IterativeConfig] = None, *, log: Callable[[str], None] = print) -> List[RoundResult]:
    """Run the iterative Cringe procedure (see the module docstring).

    Parameters
    ----------
    model : PreTrainedModel
        A causal LM; trained in place.
    tokenizer : PreTrainedTokenizerBase
    prompts : sequence of str
        Raw user prompts (wrapped with the chat template when configured).
    reward_funcs : sequence of callables
        ``f(prompts, completions, **kwargs) -> list[float]``; higher is better.
        They get the raw prompts and the completions' text.
    config : IterativeConfig, optional
    log : callable
        Receives one line of text per event (default ``print``).

    Returns
    -------
    list of RoundResult
        One per round, then one judge-only row for the final model.
    """
    config = config or IterativeConfig()
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise ValueError("need at least one reward function")
    weights = config.reward_weights or [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(f"{len(weights)} reward weights for {len(reward_funcs)} reward functions")
    raw_prompts = list(prompts)
    formatted = [_format_prompt(tokenizer, p, config.use_chat_template, config.system_prompt) for p in raw_prompts]
    if config.output_dir:
        os.makedirs(config.output_dir, exist_ok=True)
    results: List[RoundResult] = []

    for round_index in range(1, config.rounds + 2):
        final = round_index == config.rounds + 1
        start = time.perf_counter()
        torch.manual_seed(config.seed * 1000 + round_index)
        groups = generate_completions(model, tokenizer, formatted, num_generations=config.num_generations,
                                      max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                      top_p=config.top_p, batch_size=config.generation_batch_size,
                                      progress=config.progress)
        flat_prompts = [p for p, texts in zip(raw_prompts, groups) for _ in texts]
        flat_texts = [c.text for texts in groups for c in texts]
        flat_rewards, per_func = _score(reward_funcs, weights, flat_prompts, flat_texts)
        n = config.num_generations
        rewards = [flat_rewards[i * n:(i + 1) * n] for i in range(len(groups))]
        result = RoundResult(round_index, statistics.fmean(flat_rewards),
                             statistics.pstdev(flat_rewards), per_func)
        label = "final" if final else f"round {round_index}/{config.rounds}"
        log(f"[{label}] judge score of {len(flat_texts)} samples: mean {result.reward_mean:.4f} "
            f"(std {result.reward_std:.4f})")
        if config.output_dir:
            _write_samples(config.output_dir, round_index, raw_prompts, groups, rewards)
        if not final:
            examples, chosen, rejected = _build_examples(config, formatted, groups, rewards, tokenizer.eos_token)
            result.examples = len(examples)
            if examples:
                result.logp_chosen_before = _mean_logp(model, tokenizer, chosen, config.max_length)
                result.logp_rejected_before = _mean_logp(model, tokenizer, rejected, config.max_length)
                result.train_loss, result.train_metrics = _train(model, tokenizer, examples, config)
                result.logp_chosen_after = _mean_logp(model, tokenizer, chosen, config.max_length)
                result.logp_rejected_after = _mean_logp(model, tokenizer, rejected, config.max_length)
            log(f"[{label}] {len(examples)} {config.mode} examples; per-token log-likelihood "
                f"chosen {result.logp_chosen_before:.4f} -> {result.logp_chosen_after:.4f}, "
                f"rejected {result.logp_rejected_before:.4f} -> {result.logp_rejected_after:.4f}; "
                f"train loss {result.train_loss:.4f}")
        result.seconds = time.perf_counter() - start
        results.append(result)
        if config.output_dir:
            write_table(results, config.output_dir)
            plot_rounds(results, os.path.join(config.output_dir, f"round_{round_index}.png"))
    return results


# --------------------------------------------------------------------------
# Output: samples, table, plot
# --------------------------------------------------------------------------


def _write_samples(output_dir, round_index, prompts, groups, rewards):
    path = os.path.join(output_dir, f"samples_round_{round_index}.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for prompt, group, scores in zip(prompts, groups, rewards):
            record = {"prompt": prompt, "completions": [c.text for c in group],
                      "finished": [c.finished for c in group], "rewards": scores}
            fh.write(json.dumps(record) + "\n")


_COLUMNS = ("round", "reward_mean", "reward_std", "examples", "logp_chosen_before", "logp_chosen_after",
            "logp_rejected_before", "logp_rejected_after", "train_loss", "seconds")


def write_table(results: Sequence[RoundResult], output_dir: str) -> str:
    """Write ``metrics.md``, ``metrics.csv`` and ``metrics.json``; return the Markdown table."""
    rows = [dataclasses.asdict(r) for r in results]
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(rows, fh, indent=2)
    with open(os.path.join(output_dir, "metrics.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in _COLUMNS])
    table = format_table(results)
    with open(os.path.join(output_dir, "metrics.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    return table


def _is_final(result: RoundResult) -> bool:
    """The judge-only row that follows the last round (nothing trained)."""
    return not result.examples and math.isnan(result.train_loss)


def format_table(results: Sequence[RoundResult]) -> str:
    """Markdown table of the rounds."""
    head = ("| round | judge mean | judge std | examples | logp chosen before -> after "
            "| logp rejected before -> after | train loss | seconds |")
    lines = [head, "|" + "---|" * 8]
    last = max(r.round for r in results)

    def fmt(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    for r in results:
        name = "final" if r.round == last and _is_final(r) else str(r.round)
        lines.append(f"| {name} | {r.reward_mean:.4f} | {r.reward_std:.4f} | {r.examples} "
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
        xs, ys = [], []
        for r in trained:
            xs += [r.round - 0.2, r.round + 0.2]
            ys += [getattr(r, attr + "_before"), getattr(r, attr + "_after")]
        for i in range(0, len(xs), 2):
            ax2.plot(xs[i:i + 2], ys[i:i + 2], color=style, marker="o",
                     label=f"{name} (before -> after training)" if i == 0 else None)
    ax2.set_xlabel("round")
    ax2.set_ylabel("mean per-token log-likelihood")
    ax2.set_title("this round's chosen vs rejected")
    if trained:
        ax2.legend(loc="best")
    labels = [str(r) for r in rounds]
    if results and _is_final(results[-1]):
        labels[-1] = "final"
    for ax in (ax1, ax2):
        ax.set_xticks(rounds, labels)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def load_reward(spec: str) -> RewardFunc:
    """``"package.module:function"`` -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise argparse.ArgumentTypeError(f"reward must look like package.module:function, got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def load_prompts(path: str) -> List[str]:
    """One prompt per line of a text file, or a ``prompt`` field per line of a ``.jsonl`` file."""
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    if path.endswith(".jsonl"):
        return [json.loads(line)["prompt"] for line in lines]
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cringe_kernels.iterative",
                                     description="Iterative Cringe training: generate, judge, train; repeat.")
    parser.add_argument("--model", required=True, help="model directory (or hub name, if reachable)")
    parser.add_argument("--gguf-file", help="GGUF file inside --model to load (dequantised to float32)")
    parser.add_argument("--prompts", required=True, help="text file (one per line) or .jsonl with 'prompt'")
    parser.add_argument("--max-prompts", type=int, help="use only the first N prompts")
    parser.add_argument("--reward", action="append", required=True, type=load_reward,
                        help="module:function with TRL's signature; repeatable")
    parser.add_argument("--reward-weight", action="append", type=float, help="one per --reward")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("pairwise", "binary"), default="pairwise")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--generation-batch-size", type=int, default=16)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--min-gap", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--gate-temperature", type=float, default=1.0)
    parser.add_argument("--length-normalize", action="store_true")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--no-chat-template", action="store_true")
    parser.add_argument("--system-prompt", help="system turn for the chat template (default: the template's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> IterativeConfig:
    loss_kwargs: Dict[str, Any] = dict(k=args.k, alpha=args.alpha, backend=args.backend)
    if args.mode == "pairwise":
        loss_kwargs.update(margin=args.margin, temperature=args.gate_temperature,
                           length_normalize=args.length_normalize)
    return IterativeConfig(
        rounds=args.rounds, mode=args.mode, num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        generation_batch_size=args.generation_batch_size, threshold=args.threshold, min_gap=args.min_gap,
        loss_kwargs=loss_kwargs, max_length=args.max_length, use_chat_template=not args.no_chat_template,
        system_prompt=args.system_prompt,
        reward_weights=args.reward_weight, seed=args.seed, output_dir=args.output_dir,
        progress=not args.no_progress,
        training_args=dict(learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                           per_device_train_batch_size=args.batch_size,
                           gradient_accumulation_steps=args.gradient_accumulation_steps),
    )


def load_model(name: str, gguf_file: Optional[str] = None):
    """Model (float32) and tokenizer from a directory, optionally a GGUF file in it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers
    from packaging.version import Version

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(name, **extra)
    # transformers 4.56 renamed torch_dtype to dtype.
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(name, **{dtype_key: torch.float32}, **extra)
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        # The GGUF weights are already dequantised to float32, but the model
        # stays tagged as quantised, and Trainer refuses to fine-tune that:
        # move the weights into a plain model of the same config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, **{dtype_key: torch.float32})
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    return model, tokenizer


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    prompts = load_prompts(args.prompts)[: args.max_prompts]
    model, tokenizer = load_model(args.model, args.gguf_file)
    results = run_iterative(model, tokenizer, prompts, args.reward, config)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
