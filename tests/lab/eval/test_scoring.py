"""Detection-quality scores: AUROC, FPR at recall, online firing."""

import numpy as np
import pytest

from lab.eval.scoring import auroc, firing_token, fpr_at_recall, generation_score
from monitors.calibration import SignalThreshold


def test_auroc_is_one_for_perfect_separation_and_a_half_for_identical_scores():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


def test_auroc_matches_the_pairwise_definition_and_ignores_nan():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc([*pos, np.nan], neg) == pytest.approx(pairwise)


def test_fpr_at_recall_counts_negatives_at_or_above_the_recall_threshold():
    assert fpr_at_recall([5, 6, 7, 8], [1, 2, 6.5, 9], recall=0.5) == 0.25
    assert fpr_at_recall([5, 6, 7, 8], [1, 2, 6.5, 9], recall=0.75) == 0.5
    assert fpr_at_recall([5, 6, 7, 8], [1, 2, 3, 4], recall=1.0) == 0.0


def test_the_online_detector_fires_when_the_smoothed_signal_has_persisted():
    spec = SignalThreshold("x", "high", 0.5, "sink")
    values = np.concatenate([np.full(10, np.nan), np.zeros(10), np.ones(10)])
    fired = firing_token(values, spec, span=1, persistence=3)
    assert fired == 22
    assert firing_token(np.zeros(30), spec, span=1, persistence=3) is None


def test_the_generation_score_crosses_the_threshold_exactly_when_the_detector_fires():
    rng = np.random.default_rng(3)
    spec = SignalThreshold("x", "low", 0.0, "rank")
    for _ in range(50):
        values = rng.normal(0.5, 1.0, 40)
        score = generation_score(values, spec, span=4, persistence=3)
        assert (score > -spec.threshold) == (firing_token(values, spec, span=4, persistence=3) is not None)
