"""Which feedback to trust: cross-validated disagreement per user (Ju et al. 2022).

For every record, a classifier trained on the *other* folds of the data
predicts the label; a user's score is the share of their records whose
label disagrees with that prediction. Honest users disagree only where the
classifier errs; a troll who flips labels disagrees far more often.
:func:`filter_feedback` then drops untrustworthy users (the method that
worked best in the paper and in BlenderBot 3x), single disagreeing
examples, or conversations a safety classifier flagged.

Folds are dealt per user: each user's records (shuffled by ``seed``, then
grouped by label) go round-robin over the folds, so every fold holds about
the same share of every user and of each label, and no record is ever in
the training data of its own prediction. A user with fewer records than
folds simply appears in fewer folds; their score is still the share of
their records that disagree (coarse: 0, 1/n, ..., 1).

The default classifier is TF-IDF features of ``prompt + "\\n" +
completion`` and a logistic regression (scikit-learn, the ``feedback``
extra); any ``classifier(train_texts, train_labels, test_texts) ->
probabilities of True`` replaces it.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any, Callable, Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from .records import check_records, label_of

__all__ = [
    "Classifier",
    "FilterResult",
    "METHODS",
    "choose_user_threshold",
    "cross_val_probabilities",
    "filter_by_probabilities",
    "filter_feedback",
    "record_text",
    "score_users",
    "tfidf_logistic_classifier",
]

Classifier = Callable[[List[str], List[bool], List[str]], Sequence[float]]

METHODS = ("user", "example", "conversation", "none")

# An example is dropped by method="example" when the classifier gives its
# label less than this probability, i.e. the prediction disagrees with it.
DEFAULT_EXAMPLE_THRESHOLD = 0.5


def record_text(record: Mapping[str, Any]) -> str:
    """The text the classifier sees: the prompt, a newline, the completion."""
    return f"{record['prompt']}\n{record['completion']}"


def tfidf_logistic_classifier(train_texts: List[str], train_labels: List[bool],
                              test_texts: List[str]) -> np.ndarray:
    """The default classifier: TF-IDF (words and word pairs) + logistic regression.

    Parameters
    ----------
    train_texts : list of str, length n
    train_labels : list of bool, length n
    test_texts : list of str, length m

    Returns
    -------
    numpy.ndarray, shape (m,), float64
        Probability that each test text's label is True. When the training
        labels hold one class only, that class's probability (1.0 or 0.0).

    Notes
    -----
    ``class_weight="balanced"``: thumbs up and down are rarely balanced,
    and an unweighted model that leans to the majority label would make
    every minority-label record look like a disagreement. Deterministic
    (the lbfgs solver has no randomness).
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the default feedback classifier needs scikit-learn: "
                          "pip install 'cringe_kernels[feedback]'") from exc
    labels = np.asarray(train_labels, dtype=bool)
    if len(test_texts) == 0:
        return np.zeros(0, dtype=np.float64)
    if labels.all() or not labels.any():
        return np.full(len(test_texts), float(labels[0]) if labels.size else 0.5, dtype=np.float64)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=1000)
    model.fit(features, labels)
    return model.predict_proba(vectorizer.transform(test_texts))[:, 1].astype(np.float64)


def _check_folds(folds: Any, count: int) -> int:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)):
        raise TypeError(f"folds must be an integer, got {type(folds).__name__}")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if folds > count:
        raise ValueError(f"folds={folds} needs at least {folds} records, got {count}")
    return int(folds)


def assign_folds(records: Sequence[Mapping[str, Any]], folds: int, seed: int) -> np.ndarray:
    """Fold index of each record, dealt round-robin per user (see the module docstring).

    Returns
    -------
    numpy.ndarray, shape (len(records),), int64
    """
    rng = np.random.default_rng(seed)
    by_user: Dict[Hashable, List[int]] = {}
    for index in rng.permutation(len(records)):
        by_user.setdefault(records[index]["user_id"], []).append(int(index))
    result = np.empty(len(records), dtype=np.int64)
    position = 0
    for indices in by_user.values():
        # Stable sort by label: the round-robin then spreads each label evenly too.
        for index in sorted(indices, key=lambda i: label_of(records[i])):
            result[index] = position % folds
            position += 1
    return result


def _run_classifier(classifier: Classifier, train_texts, train_labels, test_texts) -> np.ndarray:
    probs = np.asarray(classifier(train_texts, train_labels, test_texts), dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(test_texts):
        raise ValueError(f"classifier returned {probs.shape[0]} probabilities for {len(test_texts)} texts")
    if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0.0 or probs.max(initial=0.0) > 1.0:
        raise ValueError("classifier must return probabilities in [0, 1]")
    return probs


def cross_val_probabilities(records: Sequence[Mapping[str, Any]], *, classifier: Optional[Classifier] = None,
                            folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each record's probability of a True label, predicted by a classifier that never saw it.

    Parameters
    ----------
    records : list of dict
        Feedback records (see :mod:`cringe_kernels.feedback.records`).
    classifier : callable, optional
        ``classifier(train_texts, train_labels, test_texts) -> probabilities``;
        default :func:`tfidf_logistic_classifier`. Called once per fold with
        the records of the other folds.
    folds : int
        Number of folds, at least 2 and at most ``len(records)``.
    seed : int
        Seeds the fold assignment (the same seed gives the same folds).

    Returns
    -------
    numpy.ndarray, shape (len(records),), float64
        When every label is the same there is nothing to cross-check: the
        classifier is not called and every probability is that label (a
        warning says so).
    """
    records = check_records(records)
    if not records:
        return np.zeros(0, dtype=np.float64)
    folds = _check_folds(folds, len(records))
    classifier = classifier or tfidf_logistic_classifier
    labels = [label_of(r) for r in records]
    if all(labels) or not any(labels):
        warnings.warn(f"every feedback label is {labels[0]}: nothing to cross-check, every user scores 0",
                      stacklevel=3)
        return np.full(len(records), float(labels[0]), dtype=np.float64)
    texts = [record_text(r) for r in records]
    fold_of = assign_folds(records, folds, seed)
    probs = np.empty(len(records), dtype=np.float64)
    for fold in range(folds):
        test = np.flatnonzero(fold_of == fold)
        train = np.flatnonzero(fold_of != fold)
        probs[test] = _run_classifier(classifier, [texts[i] for i in train], [labels[i] for i in train],
                                      [texts[i] for i in test])
    return probs


def _disagreements(records, probs) -> np.ndarray:
    """True where the prediction (probability >= 0.5 means True) differs from the label."""
    labels = np.array([label_of(r) for r in records], dtype=bool)
    return (probs >= 0.5) != labels


def _user_scores(records, disagree) -> Dict[Hashable, float]:
    totals: Dict[Hashable, List[int]] = {}
    for record, bad in zip(records, disagree):
        entry = totals.setdefault(record["user_id"], [0, 0])
        entry[0] += int(bad)
        entry[1] += 1
    return {user: bad / count for user, (bad, count) in totals.items()}


def score_users(records: Sequence[Mapping[str, Any]], *, classifier: Optional[Classifier] = None,
                folds: int = 5, seed: int = 0) -> Dict[Hashable, float]:
    """Each user's disagreement rate with the cross-validated classifier.

    Parameters
    ----------
    records : list of dict
    classifier : callable, optional
        See :func:`cross_val_probabilities`.
    folds : int
    seed : int

    Returns
    -------
    dict
        ``user_id -> score`` in [0, 1], in order of first appearance: the
        share of the user's records whose label disagrees with the
        prediction (higher is less trustworthy). Empty for no records.
    """
    records = check_records(records)
    probs = cross_val_probabilities(records, classifier=classifier, folds=folds, seed=seed)
    return _user_scores(records, _disagreements(records, probs))


def choose_user_threshold(scores: Sequence[float], counts: Sequence[int]) -> float:
    """A user-score threshold from the scores' distribution.

    ``min(0.5, m + 3 * s)`` where ``m`` is the median score and ``s`` the
    larger of the scores' robust spread (1.4826 * median absolute
    deviation) and the binomial spread of an honest user's rate,
    ``sqrt(m (1 - m) / n)`` with ``n`` the median records per user (at
    least ``1 / n``: one disagreement). Why: the median user is honest
    whenever fewer than half the users are adversarial, so ``m`` measures
    the classifier's own error; honest users scatter around it by sampling
    noise, and a user three spreads above is unlikely to be honest. The cap
    of 0.5 drops anyone who disagrees more often than they agree, however
    noisy the classifier.

    Parameters
    ----------
    scores : sequence of float
        One per user.
    counts : sequence of int
        Records per user, aligned with ``scores``.

    Returns
    -------
    float
    """
    if not len(scores):
        return 0.5
    m = statistics.median(scores)
    n = max(statistics.median(counts), 1)
    mad = 1.4826 * statistics.median(abs(s - m) for s in scores)
    spread = max(mad, math.sqrt(m * (1.0 - m) / n), 1.0 / n)
    return min(0.5, m + 3.0 * spread)


class FilterResult(NamedTuple):
    """What :func:`filter_feedback` kept and dropped.

    Attributes
    ----------
    kept, dropped : list of dict
        The input records (the same objects), in input order.
    scores : dict
        ``user_id -> disagreement rate`` (methods "user" and "example";
        empty for "conversation" and "none", which need no classifier).
    threshold : float or None
        The threshold applied: on user scores ("user"), on the probability
        of the record's own label ("example"); None otherwise.
    """

    kept: List[Mapping[str, Any]]
    dropped: List[Mapping[str, Any]]
    scores: Dict[Hashable, float]
    threshold: Optional[float]


def filter_feedback(records: Sequence[Mapping[str, Any]], *, method: str = "user",
                    threshold: Optional[float] = None, classifier: Optional[Classifier] = None,
                    folds: int = 5, seed: int = 0) -> FilterResult:
    """Drop the feedback not to learn from.

    Parameters
    ----------
    records : list of dict
        Feedback records (see :mod:`cringe_kernels.feedback.records`).
    method : {"user", "example", "conversation", "none"}
        ``"user"``: drop every record of each user whose score (see
        :func:`score_users`) is above ``threshold``. ``"example"``: drop each
        record whose own label gets a cross-validated probability below
        ``threshold``. ``"conversation"``: drop every record of each
        conversation in which a record has ``flagged`` true (records need a
        ``flagged`` field; without ``conversation_id`` a record is its own
        conversation). ``"none"``: keep everything.
    threshold : float in [0, 1], optional
        None picks one: for "user" :func:`choose_user_threshold` over the
        users' scores; for "example" 0.5 (drop where the prediction
        disagrees). Ignored by "conversation" and "none".
    classifier : callable, optional
        ``classifier(train_texts, train_labels, test_texts) -> probabilities``.
    folds : int
    seed : int

    Returns
    -------
    FilterResult
        ``(kept, dropped, scores, threshold)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number or None, got {type(threshold).__name__}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    records = check_records(records)
    if method == "none":
        return FilterResult(list(records), [], {}, None)
    if method == "conversation":
        return _filter_conversations(records)
    if not records:
        return FilterResult([], [], {}, threshold)
    probs = cross_val_probabilities(records, classifier=classifier, folds=folds, seed=seed)
    return filter_by_probabilities(records, probs, method=method, threshold=threshold)


def filter_by_probabilities(records: Sequence[Mapping[str, Any]], probs: np.ndarray, *, method: str = "user",
                            threshold: Optional[float] = None) -> FilterResult:
    """:func:`filter_feedback`'s "user" / "example" step from given cross-validated probabilities.

    Lets one cross-validation serve several thresholds (the simulation).

    Parameters
    ----------
    records : list of dict, length n
    probs : numpy.ndarray, shape (n,), float64
        From :func:`cross_val_probabilities` over the same records.
    method : {"user", "example"}
    threshold : float, optional
    """
    if method not in ("user", "example"):
        raise ValueError(f"method must be 'user' or 'example', got {method!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(records),):
        raise ValueError(f"probs must have shape ({len(records)},), got {probs.shape}")
    disagree = _disagreements(records, probs)
    scores = _user_scores(records, disagree)
    if method == "user":
        if threshold is None:
            counts: Dict[Hashable, int] = {}
            for record in records:
                counts[record["user_id"]] = counts.get(record["user_id"], 0) + 1
            threshold = choose_user_threshold(list(scores.values()), [counts[u] for u in scores])
        drop = [scores[r["user_id"]] > threshold for r in records]
    else:
        threshold = DEFAULT_EXAMPLE_THRESHOLD if threshold is None else float(threshold)
        own_label_prob = [p if label_of(r) else 1.0 - p for r, p in zip(records, probs)]
        drop = [q < threshold for q in own_label_prob]
    kept = [r for r, d in zip(records, drop) if not d]
    dropped = [r for r, d in zip(records, drop) if d]
    return FilterResult(kept, dropped, scores, float(threshold))


def _filter_conversations(records) -> FilterResult:
    if records and not any("flagged" in r and r["flagged"] is not None for r in records):
        raise ValueError("method='conversation' needs a 'flagged' field on the records; none has one")
    flagged_conversations = set()
    for index, record in enumerate(records):
        if record.get("flagged"):
            flagged_conversations.add(_conversation_key(record, index))
    drop = [_conversation_key(r, i) in flagged_conversations for i, r in enumerate(records)]
    kept = [r for r, d in zip(records, drop) if not d]
    dropped = [r for r, d in zip(records, drop) if d]
    return FilterResult(kept, dropped, {}, None)


def _conversation_key(record, index):
    conv = record.get("conversation_id")
    # Conversation ids are only unique per user in some logs: key on both.
    return ("conversation", record["user_id"], conv) if conv is not None else ("record", index)
