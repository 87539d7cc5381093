"""stability.risk: a logistic curve fitted on the detector's score, and the score the detector keeps."""

import numpy as np

from monitors.bands import LayerBand
from monitors.calibration import Calibration, SignalThreshold
from monitors.detector import StabilityDetector
from monitors.features import StepFeatures
from monitors.risk import RiskModel, fit_risk


def test_the_fitted_risk_grows_with_the_score_and_matches_the_rates_it_was_fitted_on():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(-3.0, 1.0, 400), rng.normal(1.0, 1.0, 400)])
    labels = np.array([False] * 400 + [True] * 400)
    model = fit_risk(scores, labels)
    assert list(model.probabilities) == sorted(model.probabilities)
    assert model.probability(-6) < 0.05 < 0.95 < model.probability(4)
    # calibrated in the large: the mean predicted risk is the observed rate
    assert abs(np.mean([model.probability(x) for x in scores]) - labels.mean()) < 0.01


def test_healthy_generations_tied_at_the_threshold_get_a_low_risk():
    # Thresholds are set on healthy traffic, so many healthy generations sit exactly at score 0.
    model = fit_risk([0.0] * 50 + [-2.0] * 50 + [3.0] * 20, [False] * 100 + [True] * 20)
    assert model.probability(0.0) < 0.02
    assert model.probability(3.0) > 0.9
    assert model.probability(-10) > 0 and model.probability(10) < 1


CALIBRATION = Calibration(
    model="m",
    window=32,
    bands=(LayerBand("late", (1,)),),
    ewma_span=1,
    persistence=3,
    min_agreeing=1,
    target_fpr=0.05,
    signals=(SignalThreshold("entropy", "low", 1.0, "sink", std=0.5),),
    rank_floors={},
    risk=RiskModel(scores=(-10.0, 0.0, 10.0), probabilities=(0.0, 0.4, 1.0)),
)


def test_the_detector_reports_risk_from_the_margin_held_for_the_persistence():
    detector = StabilityDetector(CALIBRATION)
    risks, fired = [], []
    for i, entropy in enumerate([3.0] * 5 + [0.5] * 5):
        verdict = detector.update(StepFeatures(index=i, token_id=i, window=0, values={"entropy": entropy}))
        risks.append(verdict.risk)
        fired.append(verdict.fired)
    p = CALIBRATION.risk.probability
    # Entropy 3.0 is 4 normal-traffic stds (0.5) short of the threshold 1.0, 0.5 is one past it; a margin
    # counts once held for the persistence (3 tokens), which is also when the verdict fires.
    assert risks == [p(-10)] * 2 + [p(-4)] * 5 + [p(1)] * 3
    assert fired.index(True) == 7


def test_a_calibration_keeps_its_risk_model_through_json():
    assert Calibration.from_json(CALIBRATION.to_json()).risk == CALIBRATION.risk
