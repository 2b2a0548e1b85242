"""Organic feedback for a training loop: simulated users label each round's replies.

:class:`UserPool` is a fixed population of simulated users (a given share
adversarial, of the types of :mod:`.simulate`); users persist across rounds,
as on a deployed model. :class:`OrganicFeedback` turns a round's judged
replies into the users' feedback records, appends them to the log of all
rounds, filters the whole log (a user's trust uses every label they ever
gave) and returns this round's records with what was kept. With no pool it
returns the judge's own verdicts: the clean-label baseline.

The judge's score decides each reply's true label (``score >=
positive_cut``) and whether it is hard (``score`` nonzero and ``|score| <
hard_below``, weak cues), as in :mod:`.simulate` with VADER.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .simulate import ADVERSARIAL_TYPES, HARD_BELOW, POSITIVE_CUT, label_as
from .trust import METHODS, filter_feedback

__all__ = ["OrganicFeedback", "OrganicRound", "UserPool"]


@dataclasses.dataclass
class UserPool:
    """A fixed population of simulated users.

    Attributes
    ----------
    users : int
    adversarial_share : float in [0, 1]
        Share of adversarial users (rounded to whole users).
    adversarial_types : tuple of str
        Their types (see :mod:`.simulate`), assigned in turn.
    noise, helper_noise : float
        As in :func:`~cringe_kernels.feedback.simulate.simulate_feedback`.
    seed : int
        Fixes who is adversarial and who labels which reply.
    """

    users: int = 10
    adversarial_share: float = 0.3
    adversarial_types: Sequence[str] = ("troll",)
    noise: float = 0.8
    helper_noise: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.users < 1:
            raise ValueError(f"users must be at least 1, got {self.users}")
        if not 0.0 <= self.adversarial_share <= 1.0:
            raise ValueError(f"adversarial_share must be in [0, 1], got {self.adversarial_share}")
        for name in self.adversarial_types:
            if name not in ADVERSARIAL_TYPES:
                raise ValueError(f"adversarial_types: unknown type {name!r}; expected some of {ADVERSARIAL_TYPES}")
        self.adversarial_types = tuple(self.adversarial_types)
        rng = np.random.default_rng(self.seed)
        count = int(round(self.users * self.adversarial_share))
        types = ["helper"] * (self.users - count) + [self.adversarial_types[k % len(self.adversarial_types)]
                                                     for k in range(count)]
        self.types: Dict[str, str] = {f"user{k:03d}": types[j] for k, j in enumerate(rng.permutation(self.users))}

    def label(self, items: Sequence[Dict[str, Any]], round_index: int) -> List[Dict[str, Any]]:
        """Feedback records on ``items``: each labelled by a user drawn uniformly.

        Parameters
        ----------
        items : list of dict
            ``prompt``, ``completion``, ``true_label``, ``hard``.
        round_index : int
            With ``seed``, fixes the draws of this round.

        Returns
        -------
        list of dict
            One record per item, in order: ``user_id``, ``prompt``,
            ``completion``, ``label``, ``conversation_id`` and the truth
            (``user_type``, ``true_label``, ``hard``), plus ``round``.
        """
        rng = np.random.default_rng([self.seed, round_index])
        ids = list(self.types)
        records = []
        for index, item in enumerate(items):
            user_id = ids[int(rng.integers(len(ids)))]
            user_type = self.types[user_id]
            records.append(dict(
                user_id=user_id, prompt=item["prompt"], completion=item["completion"],
                label=label_as(user_type, item, rng, noise=self.noise, helper_noise=self.helper_noise),
                conversation_id=f"{user_id}-r{round_index}", user_type=user_type,
                true_label=bool(item["true_label"]), hard=bool(item["hard"]), round=round_index, index=index))
        return records


@dataclasses.dataclass
class OrganicRound:
    """One round's feedback.

    Attributes
    ----------
    records : list of dict
        This round's records, one per reply, in reply order (``index``).
    kept : list of dict
        Those the filter kept (train on these).
    stats : dict
        ``labelled``, ``kept``, ``kept_accuracy`` (share of kept labels that
        are true; None when nothing is kept), ``wrong_labels`` (share of this round's labels that are
        wrong), ``adversarial_dropped`` / ``adversarial_users`` (adversarial
        users seen so far and how many the filter drops), ``helpers_dropped``,
        ``threshold``.
    """

    records: List[Dict[str, Any]]
    kept: List[Dict[str, Any]]
    stats: Dict[str, Any]


class OrganicFeedback:
    """Labels each round's replies by simulated users and filters the feedback log.

    Parameters
    ----------
    pool : UserPool or None
        The users; None labels every reply by the judge (clean labels).
    method : {"user", "example", "conversation", "none"}
        The filter, over the log of all rounds so far
        (:func:`~cringe_kernels.feedback.filter_feedback`).
    threshold, classifier, folds : see :func:`~cringe_kernels.feedback.filter_feedback`.
    seed : int
        The filter's fold seed.
    positive_cut, hard_below : float
        A reply's true label is ``score >= positive_cut``; it is hard when
        its score is nonzero and ``|score| < hard_below``.
    """

    def __init__(self, pool: Optional[UserPool], *, method: str = "user", threshold: Optional[float] = None,
                 classifier: Optional[Callable] = None, folds: int = 5, seed: int = 0,
                 positive_cut: float = POSITIVE_CUT, hard_below: float = HARD_BELOW):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.pool = pool
        self.method = method
        self.threshold = threshold
        self.classifier = classifier
        self.folds = folds
        self.seed = seed
        self.positive_cut = positive_cut
        self.hard_below = hard_below
        self.log: List[Dict[str, Any]] = []

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], scores: Sequence[float],
                 round_index: int) -> OrganicRound:
        """This round's feedback on ``completions`` (judge ``scores``), filtered.

        Parameters
        ----------
        prompts, completions : sequence of str, length n
            Raw prompt of each reply, and the reply.
        scores : sequence of float, length n
            The judge's score of each reply.
        round_index : int
        """
        if not len(prompts) == len(completions) == len(scores):
            raise ValueError(f"prompts, completions and scores differ in length: "
                             f"{len(prompts)}, {len(completions)}, {len(scores)}")
        items = [dict(prompt=p, completion=c, true_label=s >= self.positive_cut,
                      hard=s != 0 and abs(s) < self.hard_below) for p, c, s in zip(prompts, completions, scores)]
        if self.pool is None:
            records = [dict(user_id="judge", prompt=i["prompt"], completion=i["completion"], label=i["true_label"],
                            user_type="helper", true_label=i["true_label"], hard=i["hard"], round=round_index,
                            index=k) for k, i in enumerate(items)]
            return OrganicRound(records, list(records), self._stats(records, records, set(), None))
        records = self.pool.label(items, round_index)
        self.log.extend(records)
        result = filter_feedback(self.log, method=self.method, threshold=self.threshold,
                                 classifier=self.classifier, folds=min(self.folds, len(self.log)), seed=self.seed)
        kept_ids = {id(r) for r in result.kept}
        kept = [r for r in records if id(r) in kept_ids]
        dropped_users = {r["user_id"] for r in self.log if id(r) not in kept_ids} if self.method == "user" else set()
        return OrganicRound(records, kept, self._stats(records, kept, dropped_users, result.threshold))

    def _stats(self, records, kept, dropped_users, threshold) -> Dict[str, Any]:
        seen = {r["user_id"]: r["user_type"] for r in self.log} if self.pool is not None else {}
        adversarial = {u for u, t in seen.items() if t != "helper"}
        return dict(
            labelled=len(records), kept=len(kept),
            kept_accuracy=float(np.mean([r["label"] == r["true_label"] for r in kept])) if kept else None,
            wrong_labels=float(np.mean([r["label"] != r["true_label"] for r in records])) if records else 0.0,
            adversarial_users=len(adversarial), adversarial_dropped=len(adversarial & dropped_users),
            helpers_dropped=len(dropped_users - adversarial), threshold=threshold)
