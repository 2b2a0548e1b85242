"""Organic feedback (cringe_kernels.feedback): records, cross-validated trust, filters, simulation.

Most tests use small stub classifiers, so they need no scikit-learn; the
ones that check the default classifier finds a troll import it (the
``feedback`` extra) and skip without it, as do the simulation's corpus tests.
"""

import json
import random
import warnings

import numpy as np
import pytest

from cringe_kernels.feedback import (
    FilterResult,
    check_records,
    choose_user_threshold,
    cross_val_probabilities,
    filter_feedback,
    load_feedback,
    score_users,
)
from cringe_kernels.feedback.trust import assign_folds, filter_by_probabilities

UP_WORDS = ["thank you so much", "I love this", "wonderful kind reply", "great and happy answer",
            "lovely friendly help", "nice work friend"]
DOWN_WORDS = ["this is awful", "I hate it", "terrible rude reply", "stupid and boring answer",
              "ugly hostile nonsense", "bad work idiot"]


def _population(helpers=15, flippers=1, per_user=12, helper_noise=0.05, seed=0):
    """Records over a separable text task: helpers (a little noise) and users who flip every label."""
    rng = random.Random(seed)
    records = []
    for u in range(helpers + flippers):
        flipper = u >= helpers
        for k in range(per_user):
            truth = rng.random() < 0.5
            words = rng.choice(UP_WORDS if truth else DOWN_WORDS)
            label = (not truth) if flipper else (truth != (rng.random() < helper_noise))
            records.append(dict(user_id=f"{'flip' if flipper else 'help'}{u}", prompt=f"question {rng.randrange(50)}",
                                completion=f"{words} number {k}", label=label))
    return records


class RecordingClassifier:
    """Predicts 0.5 + tiny text hash and records every training and test set it saw."""

    def __init__(self):
        self.calls = []

    def __call__(self, train_texts, train_labels, test_texts):
        assert len(train_texts) == len(train_labels)
        self.calls.append((list(train_texts), list(test_texts)))
        return [0.25 + 0.5 * (sum(map(ord, t)) % 2) for t in test_texts]


def _unique_records(n_users=7, sizes=(1, 2, 3, 6, 9, 11, 4)):
    records = []
    for u in range(n_users):
        for k in range(sizes[u % len(sizes)]):
            records.append(dict(user_id=u, prompt=f"p{u}-{k}", completion=f"reply {u} {k}", label=(u + k) % 3 == 0))
    return records


# --------------------------------------------------------------------------
# Cross-validation: no example judges itself
# --------------------------------------------------------------------------


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_no_record_is_in_its_own_training_data(folds):
    records = _unique_records()
    classifier = RecordingClassifier()
    probs = cross_val_probabilities(records, classifier=classifier, folds=folds, seed=3)
    texts = [f"{r['prompt']}\n{r['completion']}" for r in records]
    assert len(classifier.calls) == folds
    predicted = []
    for train, test in classifier.calls:
        assert not set(train) & set(test), "a record was in the training data of its own prediction"
        # Every other record is in the training data: nothing is wasted.
        assert sorted(train + test) == sorted(texts)
        predicted += test
    assert sorted(predicted) == sorted(texts), "each record is predicted exactly once"
    # The probability returned for a record is the one its fold predicted.
    expected = {t: 0.25 + 0.5 * (sum(map(ord, t)) % 2) for t in texts}
    np.testing.assert_allclose(probs, [expected[t] for t in texts])


def test_folds_spread_every_user_and_label():
    records = _unique_records()
    folds = 3
    fold_of = assign_folds(records, folds, seed=0)
    sizes = np.bincount(fold_of, minlength=folds)
    assert sizes.max() - sizes.min() <= 1
    for user in {r["user_id"] for r in records}:
        counts = np.bincount([f for r, f in zip(records, fold_of) if r["user_id"] == user], minlength=folds)
        # A user's records differ by at most one between folds (dealt round-robin).
        assert counts.max() - counts.min() <= 1


def test_user_with_fewer_records_than_folds_gets_a_rate():
    records = _unique_records()  # user 0 has 1 record, user 1 has 2, with folds=5

    def always_up(train_texts, train_labels, test_texts):
        return [1.0] * len(test_texts)

    scores = score_users(records, classifier=always_up, folds=5, seed=0)
    for user in scores:
        own = [r for r in records if r["user_id"] == user]
        assert scores[user] == pytest.approx(sum(not r["label"] for r in own) / len(own))
    assert scores[0] in (0.0, 1.0) and scores[1] in (0.0, 0.5, 1.0)


# --------------------------------------------------------------------------
# The default classifier finds the troll and keeps the helpers
# --------------------------------------------------------------------------


def test_user_who_flips_every_label_is_found_and_noisy_helpers_kept():
    pytest.importorskip("sklearn")
    records = _population(helpers=15, flippers=2, helper_noise=0.05)
    result = filter_feedback(records, method="user")
    assert isinstance(result, FilterResult)
    flippers = {r["user_id"] for r in records if r["user_id"].startswith("flip")}
    helpers = {r["user_id"] for r in records} - flippers
    for user in flippers:
        assert result.scores[user] > result.threshold
    for user in helpers:
        assert result.scores[user] <= result.threshold, (user, result.scores[user], result.threshold)
    assert {r["user_id"] for r in result.dropped} == flippers
    # The kept records are the helpers', the same objects, in input order.
    assert result.kept == [r for r in records if r["user_id"] in helpers]
    assert all(a is b for a, b in zip(result.kept, [r for r in records if r["user_id"] in helpers]))
    # The flippers disagree almost always, helpers rarely.
    assert min(result.scores[u] for u in flippers) > 0.7
    assert max(result.scores[u] for u in helpers) < 0.35


def test_same_seed_same_result_other_seed_other_folds():
    pytest.importorskip("sklearn")
    records = _population(helpers=10, flippers=2, seed=1)
    a = filter_feedback(records, method="user", seed=7)
    b = filter_feedback(records, method="user", seed=7)
    assert a.scores == b.scores and a.threshold == b.threshold
    assert [id(r) for r in a.kept] == [id(r) for r in b.kept]
    np.testing.assert_array_equal(cross_val_probabilities(records, seed=7), cross_val_probabilities(records, seed=7))
    assert not np.array_equal(assign_folds(records, 5, 7), assign_folds(records, 5, 8))


# --------------------------------------------------------------------------
# Methods, thresholds, edge cases
# --------------------------------------------------------------------------


def _stub_probability(table):
    """A classifier that looks the probability up by the completion text."""
    def classifier(train_texts, train_labels, test_texts):
        return [table[t.split("\n", 1)[1]] for t in test_texts]
    return classifier


def test_example_and_user_methods_against_hand_counts():
    records = [
        dict(user_id="a", prompt="q", completion="c1", label=True),
        dict(user_id="a", prompt="q", completion="c2", label=False),
        dict(user_id="b", prompt="q", completion="c3", label=True),
        dict(user_id="b", prompt="q", completion="c4", label=True),
        dict(user_id="c", prompt="q", completion="c5", label=False),
        dict(user_id="c", prompt="q", completion="c6", label=1),
    ]
    probs = {"c1": 0.9, "c2": 0.8, "c3": 0.2, "c4": 0.3, "c5": 0.1, "c6": 0.6}
    clf = _stub_probability(probs)
    # Disagreements: c2 (label down, p=0.8), c3, c4 (up, p<0.5). a: 1/2, b: 2/2, c: 0/2.
    assert score_users(records, classifier=clf, folds=2) == {"a": 0.5, "b": 1.0, "c": 0.0}
    user = filter_feedback(records, method="user", threshold=0.5, classifier=clf, folds=2)
    assert [r["completion"] for r in user.dropped] == ["c3", "c4"]
    assert user.threshold == 0.5
    example = filter_feedback(records, method="example", classifier=clf, folds=2)
    assert example.threshold == 0.5
    assert [r["completion"] for r in example.dropped] == ["c2", "c3", "c4"]
    # A stricter example threshold also drops c6 (its own label gets 0.6 < 0.7).
    strict = filter_feedback(records, method="example", threshold=0.7, classifier=clf, folds=2)
    assert [r["completion"] for r in strict.dropped] == ["c2", "c3", "c4", "c6"]
    assert filter_feedback(records, method="none") == FilterResult(records, [], {}, None)


def test_conversation_method_drops_flagged_conversations():
    records = [
        dict(user_id="a", prompt="q", completion="x", label=True, conversation_id=1, flagged=False),
        dict(user_id="a", prompt="q", completion="y", label=False, conversation_id=1, flagged=True),
        dict(user_id="a", prompt="q", completion="z", label=True, conversation_id=2, flagged=False),
        dict(user_id="b", prompt="q", completion="w", label=True, conversation_id=1),
        dict(user_id="b", prompt="q", completion="v", label=True, flagged=True),
        dict(user_id="b", prompt="q", completion="u", label=True),
    ]
    result = filter_feedback(records, method="conversation")
    assert [r["completion"] for r in result.kept] == ["z", "w", "u"]
    assert [r["completion"] for r in result.dropped] == ["x", "y", "v"]
    assert result.scores == {} and result.threshold is None
    with pytest.raises(ValueError, match="flagged"):
        filter_feedback([dict(user_id=1, prompt="q", completion="c", label=True)], method="conversation")


def test_choose_user_threshold_by_hand():
    # Median 0.1, 10 records each: binomial spread sqrt(0.09/10) = 0.0949, MAD spread
    # 1.4826 * 0.05 = 0.0741, one disagreement 0.1 -> 0.1 + 3 * 0.1 = 0.4.
    assert choose_user_threshold([0.0, 0.1, 0.1, 0.15, 0.9], [10] * 5) == pytest.approx(0.4)
    # A noisy classifier (median 0.3): capped at 0.5.
    assert choose_user_threshold([0.2, 0.3, 0.3, 0.4, 1.0], [10] * 5) == 0.5
    # Many records per user: the MAD spread decides.
    scores = [0.05, 0.08, 0.1, 0.12, 0.15, 0.8]
    m, mad = 0.11, 1.4826 * 0.035
    assert choose_user_threshold(scores, [400] * 6) == pytest.approx(m + 3 * mad)


def test_auto_threshold_is_reported_and_applied():
    records = _unique_records()
    result = filter_feedback(records, method="user", classifier=RecordingClassifier(), folds=3)
    assert 0.0 <= result.threshold <= 0.5
    assert {r["user_id"] for r in result.dropped} == {u for u, s in result.scores.items() if s > result.threshold}


def test_empty_input_single_class_and_bad_arguments():
    assert score_users([]) == {}
    assert filter_feedback([]) == FilterResult([], [], {}, None)
    assert filter_feedback([], method="conversation") == FilterResult([], [], {}, None)
    ups = [dict(user_id=u % 3, prompt="q", completion=f"c{u}", label=True) for u in range(9)]
    clf = RecordingClassifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_users(ups, classifier=clf, folds=3)
    assert scores == {0: 0.0, 1: 0.0, 2: 0.0} and not clf.calls
    assert any("nothing to cross-check" in str(w.message) for w in caught)
    records = _unique_records()
    with pytest.raises(ValueError, match="folds=5 needs at least 5 records"):
        score_users(records[:3], classifier=clf, folds=5)
    with pytest.raises(ValueError, match="folds must be at least 2"):
        score_users(records, classifier=clf, folds=1)
    with pytest.raises(TypeError, match="folds"):
        score_users(records, classifier=clf, folds=2.5)
    with pytest.raises(ValueError, match="method"):
        filter_feedback(records, method="users")
    with pytest.raises(ValueError, match="threshold"):
        filter_feedback(records, threshold=1.5, classifier=clf)
    with pytest.raises(ValueError, match="3 probabilities for"):
        score_users(records, classifier=lambda a, b, c: [0.5, 0.5, 0.5], folds=2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        score_users(records, classifier=lambda a, b, c: [2.0] * len(c), folds=2)
    with pytest.raises(ValueError, match=r"shape"):
        filter_by_probabilities(records, np.zeros(3))
    with pytest.raises(ValueError, match=r"records\[1\]: missing field 'label'"):
        check_records([records[0], dict(user_id=1, prompt="q", completion="c")])
    with pytest.raises(TypeError, match="list of dicts"):
        check_records("not records")


def test_default_classifier_single_class_fold_is_constant():
    pytest.importorskip("sklearn")
    from cringe_kernels.feedback import tfidf_logistic_classifier

    np.testing.assert_array_equal(tfidf_logistic_classifier(["a", "b"], [True, True], ["c", "d", "e"]), [1.0] * 3)
    np.testing.assert_array_equal(tfidf_logistic_classifier(["a"], [False], ["c"]), [0.0])
    probs = tfidf_logistic_classifier(["good nice", "bad awful"] * 3, [True, False] * 3, ["nice", "awful"])
    assert probs.shape == (2,) and probs[0] > 0.5 > probs[1]


# --------------------------------------------------------------------------
# Reading records
# --------------------------------------------------------------------------


def _write(tmp_path, lines):
    path = tmp_path / "feedback.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_feedback_reads_and_normalises(tmp_path):
    lines = [json.dumps(dict(user_id="u1", prompt="hi", completion="hello", label=1, flagged=0)), "",
             json.dumps(dict(user_id=7, prompt="hi", completion="go away", label=False, conversation_id="c",
                             extra="kept"))]
    records = load_feedback(_write(tmp_path, lines))
    assert len(records) == 2
    assert records[0]["label"] is True and records[0]["flagged"] is False
    assert records[1]["label"] is False and records[1]["extra"] == "kept"


@pytest.mark.parametrize("record, line_message", [
    (dict(user_id="u", prompt="p", completion="c"), "line 2: missing field 'label'"),
    (dict(prompt="p", completion="c", label=True), "line 2: missing field 'user_id'"),
    (dict(user_id="u", prompt="p", completion="c", label="yes"), "line 2: field 'label' must be true/false or 0/1"),
    (dict(user_id="u", prompt="p", completion="c", label=2), "line 2: field 'label'"),
    (dict(user_id="u", prompt=3, completion="c", label=True), "line 2: field 'prompt' must be a string"),
    (dict(user_id=None, prompt="p", completion="c", label=True), "line 2: field 'user_id'"),
    (dict(user_id="u", prompt="p", completion="c", label=True, flagged="no"), "line 2: field 'flagged'"),
    ([1, 2], "line 2: a record must be a JSON object"),
])
def test_load_feedback_names_the_line_and_field(tmp_path, record, line_message):
    good = json.dumps(dict(user_id="u", prompt="p", completion="c", label=True))
    path = _write(tmp_path, [good, json.dumps(record)])
    with pytest.raises(ValueError, match=line_message):
        load_feedback(path)


def test_load_feedback_bad_json(tmp_path):
    path = _write(tmp_path, ['{"user_id": "u", "prompt": "p", "completion": "c", "label": true}', "{not json"])
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_feedback(path)


# --------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------


def _toy_corpus():
    items = []
    for k in range(40):
        truth = k % 2 == 0
        items.append(dict(prompt=f"p{k}", completion=("kind " if truth else "rude ") + str(k),
                          true_label=truth, hard=k % 4 in (0, 1)))
    return items


def test_simulated_user_types_label_as_specified():
    from cringe_kernels.feedback.simulate import simulate_feedback

    corpus = _toy_corpus()
    types = ("troll", "master_troll", "lazy", "safe", "unsafe", "gaslight")
    records = simulate_feedback(corpus, users=140, adversarial_share=6 / 7, adversarial_types=types,
                                examples_per_user=30, helper_noise=0.05, noise=0.8, seed=0)
    by_type = {t: [r for r in records if r["user_type"] == t] for t in ("helper",) + types}
    assert all(len(v) > 300 for v in by_type.values())

    def wrong(rs):
        return np.mean([r["label"] != r["true_label"] for r in rs])

    assert wrong(by_type["helper"]) == pytest.approx(0.05, abs=0.03)
    assert wrong(by_type["troll"]) == pytest.approx(0.8, abs=0.05)
    assert wrong(by_type["master_troll"]) == pytest.approx(0.8, abs=0.05)
    assert wrong(by_type["lazy"]) == pytest.approx(0.4, abs=0.06)
    assert all(r["label"] for r in by_type["safe"]) and not any(r["label"] for r in by_type["unsafe"])
    assert all(r["label"] and not r["true_label"] and r["hard"] for r in by_type["gaslight"])
    assert not any(r["hard"] for r in by_type["helper"] + by_type["troll"])
    assert all(r["hard"] for r in by_type["master_troll"])
    # Records are checked-valid feedback, and the seed fixes them.
    check_records(records)
    assert records == simulate_feedback(corpus, users=140, adversarial_share=6 / 7, adversarial_types=types,
                                        examples_per_user=30, helper_noise=0.05, noise=0.8, seed=0)


def test_evaluate_filter_by_hand():
    from cringe_kernels.feedback.simulate import evaluate_filter

    rs = [dict(user_id="h", user_type="helper", label=True, true_label=True),
          dict(user_id="h", user_type="helper", label=False, true_label=True),
          dict(user_id="t", user_type="troll", label=False, true_label=True),
          dict(user_id="t", user_type="troll", label=True, true_label=True)]
    result = FilterResult(kept=[rs[0], rs[1]], dropped=[rs[2], rs[3]], scores={}, threshold=0.5)
    numbers = evaluate_filter(rs, result, dropped_users={"t"})
    assert numbers["user_precision"] == 1.0 and numbers["user_recall"] == 1.0
    assert numbers["label_precision"] == 0.5 and numbers["label_recall"] == 0.5
    assert numbers["kept"] == 0.5 and numbers["kept_accuracy"] == 0.5 and numbers["helper_kept"] == 1.0


def test_simulation_on_the_shipped_corpus_finds_trolls():
    pytest.importorskip("sklearn")
    pytest.importorskip("chatterbot_corpus")
    pytest.importorskip("vaderSentiment")
    from cringe_kernels.feedback.simulate import run_simulation

    rows = run_simulation(seeds=1, populations={"troll": ("troll",)})
    by_filter = {r["filter"]: r for r in rows}
    none, user = by_filter["none"], by_filter["user, auto"]
    # Filtering by user removes most trolls and keeps nearly all helpers' labels.
    assert user["user_precision"] > 0.7 and user["user_recall"] > 0.5
    assert user["helper_kept"] > 0.9
    assert user["kept_accuracy"] > none["kept_accuracy"] + 0.1


# --------------------------------------------------------------------------
# Organic feedback for the loop (users persist across rounds)
# --------------------------------------------------------------------------


def _kind_classifier(train_texts, train_labels, test_texts):
    """Knows the truth of the toy replies: 'kind' ones are good."""
    return [0.9 if "kind" in t else 0.1 for t in test_texts]


def test_user_pool_is_fixed_by_its_seed():
    from cringe_kernels.feedback.organic import UserPool

    pool = UserPool(users=10, adversarial_share=0.3, seed=4)
    assert sorted(pool.types.values()).count("troll") == 3 and len(pool.types) == 10
    assert pool.types == UserPool(users=10, adversarial_share=0.3, seed=4).types
    items = [dict(prompt="p", completion=f"kind {k}", true_label=True, hard=False) for k in range(30)]
    assert pool.label(items, 1) == pool.label(items, 1)
    assert pool.label(items, 1) != pool.label(items, 2)
    with pytest.raises(ValueError, match="adversarial_types"):
        UserPool(adversarial_types=("ogre",))


def test_organic_feedback_filters_the_log_and_returns_this_round():
    from cringe_kernels.feedback.organic import OrganicFeedback, UserPool

    feedback = OrganicFeedback(UserPool(users=10, adversarial_share=0.3, noise=1.0, helper_noise=0.0, seed=1),
                               method="user", threshold=0.5, classifier=_kind_classifier)
    trolls = {u for u, t in feedback.pool.types.items() if t == "troll"}
    for round_index in (1, 2):
        completions = [("kind " if k % 2 else "rude ") + str(k) for k in range(40)]
        scores = [0.8 if k % 2 else -0.8 for k in range(40)]
        step = feedback(["p"] * 40, completions, scores, round_index)
        assert [r["index"] for r in step.records] == list(range(40))
        assert all(r["round"] == round_index for r in step.records)
        # Helpers are always right here and trolls always wrong: the filter keeps exactly the helpers.
        assert step.kept == [r for r in step.records if r["user_id"] not in trolls]
        assert step.stats["kept_accuracy"] == 1.0 and step.stats["helpers_dropped"] == 0
        assert step.stats["adversarial_dropped"] == step.stats["adversarial_users"] == len(
            trolls & {r["user_id"] for r in feedback.log})
    assert len(feedback.log) == 80
    clean = OrganicFeedback(None)(["p", "p"], ["kind", "rude"], [0.5, -0.5], 1)
    assert [r["label"] for r in clean.kept] == [True, False] and clean.stats["wrong_labels"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        clean_feedback = OrganicFeedback(None)
        clean_feedback(["p"], ["a", "b"], [0.1, 0.2], 1)


# --------------------------------------------------------------------------
# The loop's organic mode (cringe_kernels.iterative.organic)
# --------------------------------------------------------------------------


def _kind_judge(prompts, completions, **kwargs):
    return [0.8 if "kind" in c else -0.8 for c in completions]


def test_organic_labeller_leaves_dropped_feedback_out(tmp_path):
    pytest.importorskip("transformers")
    from cringe_kernels.feedback.organic import OrganicFeedback, UserPool
    from cringe_kernels.iterative.organic import OrganicLabeller

    feedback = OrganicFeedback(UserPool(users=8, adversarial_share=0.25, noise=1.0, helper_noise=0.0, seed=2),
                               method="user", threshold=0.5, classifier=_kind_classifier)
    labeller = OrganicLabeller([_kind_judge], feedback, output_dir=str(tmp_path), last_round=1)
    completions = [("kind " if k % 3 else "rude ") + str(k) for k in range(30)]
    prompts = [[{"role": "user", "content": f"hello {k}"}] for k in range(30)]
    out = labeller(prompts, completions, 1)
    assert out.rewards == _kind_judge(prompts, completions)
    step = labeller.rounds[0]
    trolls = {u for u, t in feedback.pool.types.items() if t == "troll"}
    for record, label in zip(step.records, out.labels):
        # Trolls' labels are left out (None); helpers' are the truth.
        assert label is None if record["user_id"] in trolls else label == ("kind" in record["completion"])
    assert step.records[0]["prompt"] == "hello 0"
    assert out.stats["kept"] == sum(label is not None for label in out.labels)
    written = [json.loads(line) for line in (tmp_path / "feedback_round_1.jsonl").read_text().splitlines()]
    assert [w["kept"] for w in written] == [label is not None for label in out.labels]
    # After the last round: judged only, no new feedback.
    final = labeller(prompts, completions, 2)
    assert final.labels is None and len(feedback.log) == 30 and len(labeller.rounds) == 1


def test_run_organic_trains_on_kept_labels(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from hf_tiny import tiny_model, tiny_tokenizer

    from cringe_kernels.feedback.organic import OrganicFeedback, UserPool
    from cringe_kernels.iterative import IterativeConfig
    from cringe_kernels.iterative.organic import run_organic

    tok = tiny_tokenizer()
    config = IterativeConfig(rounds=1, mode="binary", num_generations=3, max_new_tokens=4, output_dir=str(tmp_path),
                             progress=False, save_final_model=False,
                             training_args=dict(per_device_train_batch_size=8, logging_steps=1))

    def judge(prompts, completions, **kwargs):
        return [((sum(map(ord, c)) % 5) - 2) / 2 for c in completions]

    feedback = OrganicFeedback(UserPool(users=4, adversarial_share=0.25, seed=0), method="user",
                               classifier=_kind_classifier, folds=2)
    results = run_organic(tiny_model(len(tok)), tok, [f"Q{i}?" for i in range(6)], [judge], feedback, config,
                          log=lambda line: None)
    assert len(results) == 2 and results[-1].final
    stats = results[0].label_stats
    assert stats["labelled"] == 18 and results[0].examples == stats["kept"]
    assert (tmp_path / "feedback_round_1.jsonl").exists() and not (tmp_path / "feedback_round_2.jsonl").exists()
    with pytest.raises(ValueError, match="binary"):
        run_organic(None, tok, ["Q?"], [judge], feedback, IterativeConfig(mode="pairwise"))
