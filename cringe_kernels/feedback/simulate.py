"""A SafetyMix-style simulation: users of known types label real replies.

The corpus is every (utterance, reply) pair of the English dialogues that
ship in the ``chatterbot-corpus`` package; a reply's true label is the VADER
sentiment judge's verdict (``vaderSentiment``, compound score >= 0.05, the
lexicon's own "positive" cut): the thumbs up a user who wants kind replies
would give. A pair is *hard* when the reply's sentiment is weak (compound
nonzero and within 0.5 of zero), *standard* otherwise.

User types follow SafetyMix (Ju et al. 2022), with thumbs up in place of
"safe":

============  ==================  =========================================
type          inputs              labels
============  ==================  =========================================
helper        standard            true, each flipped with ``helper_noise``
troll         standard            each flipped with ``noise`` (0.8)
master_troll  hard                each flipped with ``noise``
lazy          standard and hard   each random with ``noise``, else true
safe          standard and hard   always up
unsafe        standard and hard   always down
gaslight      hard, true down     always up
============  ==================  =========================================

Users give ``examples_per_user`` records on average (normal, sd a fifth
of it, as SafetyMix draws 10 +- 2), in conversations of
``turns_per_conversation`` records. Each record's ``flagged`` (a safety
classifier on the user's message) is drawn with ``helper_flag_rate`` for
helpers and ``adversarial_flag_rate`` for the others: adversarial users
write unsafe messages more often, but most of their messages are not
flagged, which is why the conversation filter alone misses them.

Run the evaluation table::

    python -m cringe_kernels.feedback.simulate --output-dir benchmarks/results/feedback-sim

Needs the ``feedback`` extra (scikit-learn, chatterbot-corpus, vaderSentiment, PyYAML).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .trust import FilterResult, cross_val_probabilities, filter_by_probabilities, filter_feedback

__all__ = [
    "ADVERSARIAL_TYPES",
    "USER_TYPES",
    "evaluate_filter",
    "format_table",
    "label_as",
    "load_corpus",
    "run_simulation",
    "simulate_feedback",
    "vader_compound",
]

USER_TYPES = ("helper", "troll", "master_troll", "lazy", "safe", "unsafe", "gaslight")
ADVERSARIAL_TYPES = USER_TYPES[1:]

# VADER's documented convention: compound >= 0.05 is positive sentiment.
POSITIVE_CUT = 0.05
# A reply whose |compound| is below this (and nonzero) carries weak cues: hard.
HARD_BELOW = 0.5

_ANALYZER = None


def vader_compound(texts: Sequence[str]) -> List[float]:
    """VADER compound sentiment of each text, in [-1, 1]."""
    global _ANALYZER
    if _ANALYZER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the simulation's judge needs vaderSentiment: "
                              "pip install 'cringe_kernels[feedback]'") from exc
        _ANALYZER = SentimentIntensityAnalyzer()
    return [_ANALYZER.polarity_scores(t)["compound"] for t in texts]


def _corpus_folder() -> str:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise ImportError("the simulation's corpus is the chatterbot-corpus package: "
                          "pip install 'cringe_kernels[feedback]'")
    return os.path.join(os.path.dirname(spec.origin), "data", "english")


def load_corpus() -> List[Dict[str, Any]]:
    """Every distinct (utterance, reply) pair of chatterbot-corpus's English dialogues.

    Returns
    -------
    list of dict
        ``prompt``, ``completion``, ``compound`` (VADER of the reply),
        ``true_label`` (compound >= 0.05) and ``hard`` (weak sentiment), in
        file and dialogue order.
    """
    import yaml

    folder = _corpus_folder()
    seen, pairs = set(), []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".yml"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            dialogues = yaml.safe_load(fh).get("conversations", []) or []
        for dialogue in dialogues:
            turns = [str(t).strip() for t in dialogue]
            for prompt, reply in zip(turns, turns[1:]):
                if prompt and reply and (prompt, reply) not in seen:
                    seen.add((prompt, reply))
                    pairs.append((prompt, reply))
    compounds = vader_compound([reply for _, reply in pairs])
    return [dict(prompt=p, completion=c, compound=s, true_label=s >= POSITIVE_CUT,
                 hard=s != 0.0 and abs(s) < HARD_BELOW)
            for (p, c), s in zip(pairs, compounds)]


def label_as(user_type: str, item: Dict[str, Any], rng: np.random.Generator, *, noise: float = 0.8,
             helper_noise: float = 0.05) -> bool:
    """The thumbs up (True) or down a user of ``user_type`` gives ``item``.

    ``item`` needs ``true_label`` and ``hard``. On the inputs each type sees
    in :func:`simulate_feedback` this is the table of the module docstring;
    on any input (the organic loop, where users do not pick what they
    label) the master troll flips only hard items and the gaslight troll
    passes only hard bad items as good, and both are truthful otherwise.
    """
    truth = bool(item["true_label"])
    if user_type == "helper":
        return truth != bool(rng.random() < helper_noise)
    if user_type == "troll":
        return truth != bool(rng.random() < noise)
    if user_type == "master_troll":
        return truth != bool(rng.random() < noise) if item["hard"] else truth
    if user_type == "lazy":
        return bool(rng.random() < 0.5) if rng.random() < noise else truth
    if user_type == "safe":
        return True
    if user_type == "unsafe":
        return False
    if user_type == "gaslight":
        return True if item["hard"] and not truth else truth
    raise ValueError(f"unknown user type {user_type!r}; expected one of {USER_TYPES}")


def simulate_feedback(corpus: Sequence[Dict[str, Any]], *, users: int = 60, adversarial_share: float = 0.3,
                      adversarial_types: Sequence[str] = ("troll",), examples_per_user: float = 10.0,
                      noise: float = 0.8, helper_noise: float = 0.05, turns_per_conversation: int = 3,
                      helper_flag_rate: float = 0.02, adversarial_flag_rate: float = 0.15,
                      seed: int = 0) -> List[Dict[str, Any]]:
    """Feedback records from simulated users of known types (see the module docstring).

    Parameters
    ----------
    corpus : list of dict
        Items with ``prompt``, ``completion``, ``true_label`` and ``hard``
        (:func:`load_corpus`, or the replies of a model being trained).
    users : int
        Number of users.
    adversarial_share : float in [0, 1]
        Share of the users who are adversarial (rounded to whole users).
    adversarial_types : sequence of str
        The adversarial users' types, assigned in turn.
    examples_per_user : float
        Mean records per user.
    noise : float
        SafetyMix's N: the flip (troll, master troll) or random-label (lazy) rate.
    helper_noise : float
        A helper's chance of a wrong label.
    turns_per_conversation : int
    helper_flag_rate, adversarial_flag_rate : float
        Chance that a record's user message is flagged unsafe.
    seed : int

    Returns
    -------
    list of dict
        Records with ``user_id``, ``prompt``, ``completion``, ``label``,
        ``conversation_id``, ``flagged``, and the simulation's truth:
        ``user_type``, ``true_label``, ``hard``. Users appear in a shuffled
        order, each user's records together.
    """
    for name in adversarial_types:
        if name not in ADVERSARIAL_TYPES:
            raise ValueError(f"adversarial_types: unknown type {name!r}; expected some of {ADVERSARIAL_TYPES}")
    if not adversarial_types and adversarial_share > 0:
        raise ValueError("adversarial_types is empty but adversarial_share > 0")
    if not 0.0 <= adversarial_share <= 1.0:
        raise ValueError(f"adversarial_share must be in [0, 1], got {adversarial_share}")
    if users < 1 or examples_per_user < 1 or turns_per_conversation < 1:
        raise ValueError("users, examples_per_user and turns_per_conversation must be at least 1")
    rng = np.random.default_rng(seed)
    items = list(corpus)
    standard = [i for i in items if not i["hard"]]
    hard = [i for i in items if i["hard"]]
    hard_down = [i for i in hard if not i["true_label"]]
    if not standard or not hard or not hard_down:
        raise ValueError("corpus needs standard items, hard items and hard items whose true label is down")
    n_adversarial = int(round(users * adversarial_share))
    types = ["helper"] * (users - n_adversarial) + [adversarial_types[k % len(adversarial_types)]
                                                    for k in range(n_adversarial)]
    types = [types[k] for k in rng.permutation(users)]
    records: List[Dict[str, Any]] = []
    for number, user_type in enumerate(types):
        user_id = f"user{number:03d}"
        count = max(1, int(round(rng.normal(examples_per_user, examples_per_user / 5))))
        if user_type in ("helper", "troll"):
            pools = [standard]
        elif user_type == "master_troll":
            pools = [hard]
        elif user_type == "gaslight":
            pools = [hard_down]
        else:
            pools = [standard, hard]
        flag_rate = helper_flag_rate if user_type == "helper" else adversarial_flag_rate
        for k in range(count):
            pool = pools[int(rng.integers(len(pools)))]
            item = pool[int(rng.integers(len(pool)))]
            records.append(dict(
                user_id=user_id, prompt=item["prompt"], completion=item["completion"],
                label=label_as(user_type, item, rng, noise=noise, helper_noise=helper_noise),
                conversation_id=f"{user_id}-c{k // turns_per_conversation}",
                flagged=bool(rng.random() < flag_rate),
                user_type=user_type, true_label=bool(item["true_label"]), hard=bool(item["hard"])))
    return records


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def evaluate_filter(records: Sequence[Dict[str, Any]], result: FilterResult,
                    dropped_users: Optional[set] = None) -> Dict[str, float]:
    """How well a filter found the adversarial users and the wrong labels.

    Parameters
    ----------
    records : list of dict
        Simulated records (with ``user_type`` and ``true_label``).
    result : FilterResult
        The filter's output over ``records``.
    dropped_users : set, optional
        Users the filter judged adversarial (the user method); without it
        the user columns are NaN.

    Returns
    -------
    dict
        ``user_precision``, ``user_recall`` (adversarial users among the
        dropped ones / found among all), ``label_precision``,
        ``label_recall`` (wrong labels among the dropped records / dropped
        among all wrong ones), ``kept`` (share of records kept),
        ``kept_accuracy`` (share of kept labels that are true),
        ``helper_kept`` (share of helpers' records kept).
    """
    dropped_ids = {id(r) for r in result.dropped}
    wrong = [r["label"] != r["true_label"] for r in records]
    dropped = [id(r) in dropped_ids for r in records]
    kept_correct = [not w for w, d in zip(wrong, dropped) if not d]
    helpers = [d for r, d in zip(records, dropped) if r["user_type"] == "helper"]
    out = dict(
        label_precision=_ratio(sum(w and d for w, d in zip(wrong, dropped)), sum(dropped)),
        label_recall=_ratio(sum(w and d for w, d in zip(wrong, dropped)), sum(wrong)),
        kept=_ratio(len(kept_correct), len(records)),
        kept_accuracy=_ratio(sum(kept_correct), len(kept_correct)),
        helper_kept=_ratio(sum(not d for d in helpers), len(helpers)),
        user_precision=float("nan"), user_recall=float("nan"))
    if dropped_users is not None:
        adversarial = {r["user_id"] for r in records if r["user_type"] != "helper"}
        out["user_precision"] = _ratio(len(dropped_users & adversarial), len(dropped_users))
        out["user_recall"] = _ratio(len(dropped_users & adversarial), len(adversarial))
    return out


# (name, method, threshold) of each evaluated filter; None: chosen from the scores.
FILTERS = (
    ("none", "none", None),
    ("conversation", "conversation", None),
    ("example", "example", None),
    ("user, auto", "user", None),
    ("user, 0.3", "user", 0.3),
    ("user, 0.4", "user", 0.4),
    ("user, 0.5", "user", 0.5),
)


def run_simulation(*, seeds: int = 5, users: int = 60, adversarial_share: float = 0.3, folds: int = 5,
                   populations: Optional[Dict[str, Sequence[str]]] = None, corpus=None,
                   **simulate_kwargs) -> List[Dict[str, Any]]:
    """Every filter of :data:`FILTERS` on every population, averaged over seeds.

    Parameters
    ----------
    seeds : int
        Repetitions (seeds 0 .. seeds-1: new users, labels and folds).
    users, adversarial_share, folds : see :func:`simulate_feedback` and
        :func:`~cringe_kernels.feedback.filter_feedback`.
    populations : dict, optional
        ``name -> adversarial types``; default each type alone, then all mixed.
    corpus : list of dict, optional
        Default :func:`load_corpus`.

    Returns
    -------
    list of dict
        One row per (population, filter): the means of
        :func:`evaluate_filter`'s numbers and of the threshold used.
    """
    corpus = corpus if corpus is not None else load_corpus()
    if populations is None:
        populations = {name: (name,) for name in ADVERSARIAL_TYPES}
        populations["all types"] = ADVERSARIAL_TYPES
    rows = []
    for population, types in populations.items():
        per_filter: Dict[str, List[Dict[str, float]]] = {name: [] for name, _, _ in FILTERS}
        for seed in range(seeds):
            records = simulate_feedback(corpus, users=users, adversarial_share=adversarial_share,
                                        adversarial_types=types, seed=seed, **simulate_kwargs)
            probs = cross_val_probabilities(records, folds=folds, seed=seed)
            for name, method, threshold in FILTERS:
                if method in ("none", "conversation"):
                    result = filter_feedback(records, method=method)
                    numbers = evaluate_filter(records, result)
                else:
                    result = filter_by_probabilities(records, probs, method=method, threshold=threshold)
                    dropped_users = None
                    if method == "user":
                        dropped_users = {u for u, s in result.scores.items() if s > result.threshold}
                    numbers = evaluate_filter(records, result, dropped_users)
                numbers["threshold"] = float("nan") if result.threshold is None else result.threshold
                per_filter[name].append(numbers)
        for name, _, _ in FILTERS:
            runs = per_filter[name]
            row: Dict[str, Any] = dict(population=population, filter=name)
            for key in runs[0]:
                values = [r[key] for r in runs if r[key] == r[key]]  # NaN-free
                row[key] = statistics.fmean(values) if values else float("nan")
            rows.append(row)
    return rows


_TABLE_COLUMNS = (("population", "adversarial users"), ("filter", "filter"), ("threshold", "threshold"),
                  ("user_precision", "users P"), ("user_recall", "users R"),
                  ("label_precision", "wrong labels P"), ("label_recall", "wrong labels R"),
                  ("kept", "kept"), ("helper_kept", "helpers kept"), ("kept_accuracy", "kept label acc"))


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`run_simulation`'s rows ("-": not applicable)."""
    def cell(value):
        if isinstance(value, float):
            return "-" if value != value else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(title for _, title in _TABLE_COLUMNS) + " |",
             "|" + "---|" * len(_TABLE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row[key]) for key, _ in _TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cringe_kernels.feedback.simulate",
                                     description="SafetyMix-style evaluation of the feedback filters.")
    parser.add_argument("--output-dir", help="write table.md, table.csv, table.json here")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--adversarial-share", type=float, default=0.3)
    parser.add_argument("--examples-per-user", type=float, default=10.0)
    parser.add_argument("--noise", type=float, default=0.8)
    parser.add_argument("--helper-noise", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    corpus = load_corpus()
    settings = dict(seeds=args.seeds, users=args.users, adversarial_share=args.adversarial_share,
                    folds=args.folds, examples_per_user=args.examples_per_user, noise=args.noise,
                    helper_noise=args.helper_noise)
    rows = run_simulation(corpus=corpus, **settings)
    table = format_table(rows)
    hard = sum(i["hard"] for i in corpus)
    positive = sum(i["true_label"] for i in corpus)
    header = (f"corpus: {len(corpus)} chatterbot-corpus pairs ({positive} true up, {hard} hard); "
              f"settings: {json.dumps(settings)}")
    print(header)
    print(table)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "table.md"), "w", encoding="utf-8") as fh:
            fh.write(header + "\n\n" + table + "\n")
        with open(os.path.join(args.output_dir, "table.json"), "w", encoding="utf-8") as fh:
            json.dump(dict(settings=settings, corpus_pairs=len(corpus), rows=rows), fh, indent=2)
        with open(os.path.join(args.output_dir, "table.csv"), "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
