"""``sinkwatch eval prefill``'s measures: the AUROC, its prompt-resampling interval, and how a prefill risk
moves the detector's firing token as a prior or as an alarm."""

import numpy as np
import pytest

from lab.eval.prefill_eval import _Replay, auroc, bootstrap_auroc


def test_auroc_counts_pairs_ranked_right_and_ties_as_half():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.9, 0.3, 0.5], [True, True, False]) == 0.5
    assert auroc([0.9, 0.3], [True, True]) is None


def test_the_interval_resamples_whole_prompts():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=60) + np.repeat([1.0, 0.0], 30)
    labels = np.repeat([True, False], 30)
    prompts = [f"p{i // 3}" for i in range(60)]
    low, high = bootstrap_auroc(scores, labels, prompts, rounds=500)
    assert low < auroc(scores, labels) < high
    # one prompt holding everything: every resample is the same data, the interval is a point
    low, high = bootstrap_auroc(scores, labels, ["p"] * 60, rounds=50)
    assert low == high == pytest.approx(auroc(scores, labels), abs=1e-4)  # rounded to 4 places


def _replay(fired_at: int | None, scores: list[float], risk: float) -> _Replay:
    return _Replay(item=None, fired_at=fired_at, scores=np.array(scores), risk=risk)


def test_a_prior_lowers_the_bar_in_proportion_to_the_risk():
    replay = _replay(5, [-9.0, -3.0, -1.0, -0.5, -0.2, 0.5], risk=0.5)
    assert replay.with_prior(0.0) == 5
    assert replay.with_prior(1.0) == 3  # the bar is -0.5
    assert replay.with_prior(4.0) == 2  # the bar is -2
    assert _replay(None, [-9.0, -1.0], risk=0.5).with_prior(4.0) == 1
    assert _replay(None, [-9.0, -9.0], risk=0.5).with_prior(4.0) is None


def test_an_alarm_fires_at_the_first_token_from_its_level():
    assert _replay(5, [0.0], risk=0.9).with_alarm(0.85) == 0
    assert _replay(5, [0.0], risk=0.8).with_alarm(0.85) == 5
    assert _replay(None, [0.0], risk=0.8).with_alarm(0.85) is None
