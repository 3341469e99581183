"""The numpy core of triage and of the evaluation reports: what a team reads off them must be right."""

from __future__ import annotations

import numpy as np

from ticket_rag.tickets import classifier
from ticket_rag.tickets.triage import floor_for
from ticket_rag.tools.duplicates_eval import average_precision, best_threshold, prf
from ticket_rag.tools.triage_eval import accuracy_at_coverage, expected_calibration_error, macro_f1


def test_linear_model_learns_classes_the_vote_cannot_separate() -> None:
    # Two classes that differ along one direction only, with noise everywhere else.
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 200
    x = rng.normal(size=(400, 50)).astype(np.float32)
    x[:, 0] += np.where(np.array(labels) == "a", 1.5, -1.5)
    model = classifier.fit_linear(classifier.features(x, [""] * 400, None, tfidf_weight=0), labels)
    test = rng.normal(size=(100, 50)).astype(np.float32)
    test[:, 0] += 1.5
    probabilities = model.probabilities(classifier.features(test, [""] * 100, None, tfidf_weight=0))
    assert model.classes == ["a", "b"]
    assert (probabilities[:, 0] > 0.5).mean() > 0.9
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_vote_weighs_closer_neighbours_more_and_ignores_unlabelled() -> None:
    shares = classifier.vote([0.9, 0.5, 0.5, 0.8], ["x", "y", "y", None])
    assert next(iter(shares)) == "x"
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert classifier.vote([0.9], [None]) == {}


def test_tfidf_vocabulary_keeps_terms_seen_twice_and_ranks_rare_terms_higher() -> None:
    vocabulary = classifier.Vocabulary.build(["vpn drop", "vpn slow", "invoic vpn", "invoic wrong"])
    assert set(vocabulary.index) == {"vpn", "invoic"}
    assert vocabulary.idf_of("wrong") > vocabulary.idf_of("vpn")
    rows = vocabulary.transform(["vpn vpn invoic", "nothing known"]).dot(np.eye(2, dtype=np.float32))
    assert np.isclose(np.linalg.norm(rows[0]), 1.0) and not rows[1].any()
    assert rows[0][vocabulary.index["vpn"]] > rows[0][vocabulary.index["invoic"]]


def test_floor_is_the_lowest_confidence_that_keeps_the_target_accuracy() -> None:
    confidence = np.array([0.95] * 30 + [0.6] * 30 + [0.4] * 40)
    correct = np.array([1.0] * 30 + [1.0] * 24 + [0.0] * 6 + [1.0] * 10 + [0.0] * 30)
    # Kept at >= 0.6: 54 of 60 right (0.9); at >= 0.4: 64 of 100.
    assert floor_for(confidence, correct, 0.9) == 0.6
    assert floor_for(confidence, correct, 0.99) == 0.95
    assert floor_for(confidence[60:], correct[60:], 0.9) is None


def test_report_metrics() -> None:
    assert macro_f1(["a", "a", "b", "b"], ["a", "a", "a", "b"]) == (0.8 + 2 / 3) / 2
    confidence, correct = np.array([0.9, 0.8, 0.3, 0.2]), np.array([1.0, 1.0, 0.0, 1.0])
    assert accuracy_at_coverage(confidence, correct, 0.5) == 1.0
    assert accuracy_at_coverage(confidence, correct, 1.0) == 0.75
    assert np.isclose(expected_calibration_error(np.array([0.8, 0.8]), np.array([1.0, 0.0])), 0.3)


def test_duplicate_metrics_and_threshold_choice() -> None:
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0])
    assert np.isclose(average_precision(scores, labels), (1 + 1 + 0.75) / 3)
    assert prf(scores, labels, 0.75) == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "flagged": 2}
    # F1 at 0.55 (all three duplicates, one false flag) is 6/7 > 0.8: the cut lies halfway between 0.5 and 0.6.
    assert np.isclose(best_threshold(scores, labels), 0.55)


def test_sampled_non_duplicates_count_for_the_reports_they_stand_for() -> None:
    # One sampled non-duplicate standing for 10 reports: a false flag costs 10, not 1.
    scores, labels = np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])
    weight = np.array([1.0, 10.0, 1.0])
    flagged = prf(scores, labels, 0.75, weight)
    assert flagged["precision"] == 1 / 11 and flagged["recall"] == 0.5 and flagged["flagged"] == 11
    assert np.isclose(average_precision(scores, labels, weight), (1 + 2 / 12) / 2)
    assert np.isclose(average_precision(scores, labels), (1 + 2 / 3) / 2)
