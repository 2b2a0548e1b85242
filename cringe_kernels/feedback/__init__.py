"""Learning from organic feedback: keep the helpers, ignore the trolls.

Feedback from users of a deployed chat model (thumbs up / down on its
replies) is mixed: some users label adversarially. Following Ju et al. 2022
and BlenderBot 3x, each record's label is compared with a classifier's
prediction trained on the other folds; users who disagree too often are
dropped before the loss sees their feedback.

Public API
----------
load_feedback(path)
    Read JSONL records, with errors naming the line and field.
score_users(records, *, classifier=None, folds=5, seed=0)
    ``user_id -> disagreement rate`` in [0, 1].
filter_feedback(records, *, method="user", threshold=None, classifier=None, folds=5, seed=0)
    ``FilterResult(kept, dropped, scores, threshold)``; methods "user",
    "example", "conversation", "none".
tfidf_logistic_classifier
    The default classifier (needs scikit-learn: the ``feedback`` extra).

The simulation with known user types is :mod:`cringe_kernels.feedback.simulate`.
"""

from .records import check_records, load_feedback
from .trust import (
    METHODS,
    FilterResult,
    choose_user_threshold,
    cross_val_probabilities,
    filter_feedback,
    score_users,
    tfidf_logistic_classifier,
)

__all__ = [
    "METHODS",
    "FilterResult",
    "check_records",
    "choose_user_threshold",
    "cross_val_probabilities",
    "filter_feedback",
    "load_feedback",
    "score_users",
    "tfidf_logistic_classifier",
]
