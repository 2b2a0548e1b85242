"""The labelling step of a round: completions in, rewards (and labels) out.

The loop calls a *labeller* once per round::

    labeller(prompts, completions, round_index, **columns) -> Labels

``prompts`` and ``completions`` are flat lists (one entry per completion,
prompts as the user gave them), ``columns`` the prompt file's other columns
repeated per completion (TRL's reward keyword arguments). The default,
:class:`RewardLabeller`, scores with reward functions in TRL's signature;
a labeller of simulated or real users returns their labels (and may leave
completions out of training with a ``None`` label).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

RewardFunc = Callable[..., List[float]]


class Labels(NamedTuple):
    """A round's judgement of its completions.

    Attributes
    ----------
    rewards : list of float
        One per completion (the table's judge score; pairs are made from it).
    per_func : dict of str to float
        Mean reward of each reward function.
    labels : list of (bool or None), optional
        Binary mode: the label of each completion, None to leave it out of
        training. None: the loop labels by ``IterativeConfig.threshold``.
    stats : dict
        Anything else to record in the round's ``label_stats``.
    """

    rewards: List[float]
    per_func: Dict[str, float]
    labels: Optional[List[Optional[bool]]] = None
    stats: Dict[str, Any] = {}


def _name(func) -> str:
    return getattr(func, "__name__", type(func).__name__)


class RewardLabeller:
    """Weighted sum of reward functions ``f(prompts, completions, **kwargs) -> list[float]``.

    Parameters
    ----------
    reward_funcs : sequence of callables
        TRL's signature; each gets the prompts, the completions' text and the
        prompt file's other columns as keyword arguments.
    weights : sequence of float, optional
        One per function; default 1 each.
    """

    def __init__(self, reward_funcs: Sequence[RewardFunc], weights: Optional[Sequence[float]] = None):
        self.reward_funcs = list(reward_funcs)
        if not self.reward_funcs:
            raise ValueError("need at least one reward function")
        self.weights = list(weights) if weights is not None else [1.0] * len(self.reward_funcs)
        if len(self.weights) != len(self.reward_funcs):
            raise ValueError(f"{len(self.weights)} reward weights for {len(self.reward_funcs)} reward functions")

    def __call__(self, prompts: List[Any], completions: List[str], round_index: int, **columns) -> Labels:
        total = [0.0] * len(completions)
        per_func = {}
        for func, weight in zip(self.reward_funcs, self.weights):
            values = [float(v) for v in func(prompts, completions, **columns)]
            if len(values) != len(completions):
                raise ValueError(f"reward function {_name(func)} returned {len(values)} values for "
                                 f"{len(completions)} completions")
            per_func[_name(func)] = statistics.fmean(values)
            total = [t + weight * v for t, v in zip(total, values)]
        return Labels(total, per_func)
