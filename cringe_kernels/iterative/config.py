"""Settings and per-round results of the iterative procedure."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional

MODES = ("pairwise", "binary")


@dataclasses.dataclass
class IterativeConfig:
    """Settings of :func:`~cringe_kernels.iterative.run_iterative`.

    Attributes
    ----------
    rounds : int
        Generate-judge-train rounds.
    mode : {"pairwise", "binary"}
        Pairwise Cringe on (best, worst) per prompt, or binary Cringe on every
        completion labelled good or bad.
    num_generations : int
        Completions sampled per prompt and round.
    max_new_tokens, temperature, top_p : generation settings (sampling).
    generation_batch_size : int
        Prompts per ``generate`` call.
    threshold : float, optional
        Binary mode, default labeller: a completion is good when its reward
        is at least this; None uses the median reward of the round.
    min_gap : float
        Pairwise mode: a prompt makes a pair only when best - worst > min_gap.
    loss_kwargs : dict
        Loss fields of the trainer's config (``k``, ``alpha``, ``margin``,
        ``temperature``, ``length_normalize``, ``backend``...).
    training_args : dict
        Other fields of each round's :class:`~cringe_kernels.hf.CringeConfig`
        / :class:`~cringe_kernels.hf.PairwiseCringeConfig`.
    max_length : int, optional
        Truncation of prompt + completion in training and scoring (None: none).
    use_chat_template : bool
        Text prompts become one user turn rendered with the tokenizer's chat
        template (when it has one). Conversational prompts (lists of
        messages) always go through the template.
    system_prompt : str, optional
        A system turn before a text prompt's user turn.
    reward_weights : list of float, optional
        One per reward function; default 1 each.
    seed : int
    output_dir : str, optional
        Where the table, plots, samples and models go; nothing is written when None.
    save_final_model : bool
        Save the trained model and its tokenizer to ``output_dir/final_model``.
    save_round_models : bool
        Also save each round's model to ``output_dir/round_N_model``.
    progress : bool
        Progress bars (tqdm) for generation, tokenization and training.
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
    save_final_model: bool = True
    save_round_models: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'pairwise' or 'binary', got {self.mode!r}")
        if self.rounds < 1 or self.num_generations < 2:
            raise ValueError(f"need rounds >= 1 and num_generations >= 2, got {self.rounds}, {self.num_generations}")


@dataclasses.dataclass
class RoundResult:
    """Metrics of one round; the row after the last round (``final=True``) only judges.

    ``reward_*`` describe the completions sampled at the start of the round,
    that is, the model produced by the previous round. ``logp_*`` are mean
    per-token log-likelihoods of this round's chosen / rejected completions
    (binary: good / bad) before and after the round's training; NaN where
    nothing was measured (written as null in JSON).
    """

    round: int
    reward_mean: float
    reward_std: float
    reward_per_func: Dict[str, float]
    final: bool = False
    examples: int = 0
    logp_chosen_before: float = math.nan
    logp_chosen_after: float = math.nan
    logp_rejected_before: float = math.nan
    logp_rejected_after: float = math.nan
    train_loss: float = math.nan
    seconds: float = 0.0
    train_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    label_stats: Dict[str, Any] = dataclasses.field(default_factory=dict)
