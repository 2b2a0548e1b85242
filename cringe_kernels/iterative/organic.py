"""The loop's organic mode: simulated users label each round, the filter decides what trains.

BlenderBot 3x learns from the thumbs up / down of a deployed model's users,
some of them adversarial. Here each round's completions are judged (the
table's judge score, and each completion's true label), labelled by
simulated users (:class:`~cringe_kernels.feedback.organic.UserPool`, a share
of them adversarial), and the feedback log of all rounds is filtered
(:func:`~cringe_kernels.feedback.filter_feedback`); the loop trains binary
Cringe on the kept labels only (the others are ``None``: left out)::

    from cringe_kernels.feedback.organic import OrganicFeedback, UserPool
    from cringe_kernels.iterative import IterativeConfig
    from cringe_kernels.iterative.organic import run_organic

    feedback = OrganicFeedback(UserPool(users=10, adversarial_share=0.3), method="user")
    run_organic(model, tokenizer, prompts, [judge], feedback, IterativeConfig(mode="binary"))

``OrganicFeedback(None)`` labels by the judge itself: the clean-label
baseline. Needs the ``[hf]`` and ``[feedback]`` extras.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, List, Optional, Sequence

from ..feedback.organic import OrganicFeedback, OrganicRound
from .config import IterativeConfig, RoundResult
from .labelling import Labels, RewardFunc, RewardLabeller
from .loop import run_iterative

__all__ = ["OrganicLabeller", "run_organic"]


def _prompt_text(prompt: Any) -> str:
    """A prompt as the feedback classifier reads it: text, or a conversation's contents joined."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


class OrganicLabeller:
    """A labeller for :func:`~cringe_kernels.iterative.run_iterative`: judge, users, filter.

    Parameters
    ----------
    reward_funcs : sequence of callables
        The judge, in TRL's signature (weighted sum with ``weights``): its
        score is the table's judge score and decides each completion's true
        label (see :class:`~cringe_kernels.feedback.organic.OrganicFeedback`).
    feedback : OrganicFeedback
        The users and the filter; keeps the log across rounds.
    weights : sequence of float, optional
    output_dir : str, optional
        Writes each round's feedback records (with the judge's score and
        whether they were kept) to ``feedback_round_N.jsonl`` there.
    last_round : int, optional
        Rounds after it are judged only (the loop's final, judge-only row:
        no users label it and the log does not grow).

    Attributes
    ----------
    rounds : list of OrganicRound
        Each round's feedback, in order.
    """

    def __init__(self, reward_funcs: Sequence[RewardFunc], feedback: OrganicFeedback, *,
                 weights: Optional[Sequence[float]] = None, output_dir: Optional[str] = None,
                 last_round: Optional[int] = None):
        if not isinstance(feedback, OrganicFeedback):
            raise TypeError(f"feedback must be an OrganicFeedback, got {type(feedback).__name__}")
        self.judge = RewardLabeller(reward_funcs, weights)
        self.feedback = feedback
        self.output_dir = output_dir
        self.last_round = last_round
        self.rounds: List[OrganicRound] = []

    def __call__(self, prompts: List[Any], completions: List[str], round_index: int, **columns) -> Labels:
        judged = self.judge(prompts, completions, round_index, **columns)
        if self.last_round is not None and round_index > self.last_round:
            return judged
        step = self.feedback([_prompt_text(p) for p in prompts], completions, judged.rewards, round_index)
        self.rounds.append(step)
        labels: List[Optional[bool]] = [None] * len(completions)
        for record in step.kept:
            labels[record["index"]] = bool(record["label"])
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            kept = {id(r) for r in step.kept}
            path = os.path.join(self.output_dir, f"feedback_round_{round_index}.jsonl")
            with open(path, "w", encoding="utf-8") as fh:
                for record in step.records:
                    row = dict(record, score=judged.rewards[record["index"]], kept=id(record) in kept)
                    fh.write(json.dumps(row) + "\n")
        return Labels(judged.rewards, judged.per_func, labels, dict(step.stats))


def run_organic(model, tokenizer, prompts: Sequence[Any], reward_funcs: Sequence[RewardFunc],
                feedback: OrganicFeedback, config: Optional[IterativeConfig] = None, *,
                log: Callable[[str], None] = print) -> List[RoundResult]:
    """:func:`~cringe_kernels.iterative.run_iterative` with an :class:`OrganicLabeller`.

    Parameters
    ----------
    model, tokenizer, prompts : as for ``run_iterative``.
    reward_funcs : sequence of callables
        The judge.
    feedback : OrganicFeedback
    config : IterativeConfig, optional
        ``mode`` must be "binary" (the feedback is thumbs up / down);
        default ``IterativeConfig(mode="binary")``.
    log : callable

    Returns
    -------
    list of RoundResult
        Each round's ``label_stats`` holds the feedback's numbers
        (labelled, kept, kept label accuracy, adversarial users dropped...).
    """
    config = config or IterativeConfig(mode="binary")
    if config.mode != "binary":
        raise ValueError(f"organic feedback is thumbs up / down: config.mode must be 'binary', got {config.mode!r}")
    labeller = OrganicLabeller(reward_funcs, feedback, weights=config.reward_weights, output_dir=config.output_dir,
                               last_round=config.rounds)
    return run_iterative(model, tokenizer, prompts, config=config, labeller=labeller, log=log)
