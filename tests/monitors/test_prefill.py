"""The prefill probe: the sampling prior's inputs, the logistic fit, the out-of-fold prompt scores, the
combined risk, its JSON form, and the first-token feature the extractor emits for it."""

import json
from dataclasses import replace

import numpy as np
import pytest

from monitors.bands import LayerBand
from monitors.calibration import Calibration, load_calibration, shipped_calibration_path
from monitors.detector import PREFILL_SIGNAL, StabilityDetector
from monitors.features import FeatureExtractor, StepFeatures
from monitors.prefill import (
    PREFILL_FEATURE,
    SAMPLING_FEATURES,
    PrefillProbe,
    RequestSampling,
    fit_logistic,
    fit_prefill_probe,
    grouped_folds,
    out_of_fold_prompt_scores,
)
from monitors.probe import LinearProbe
from monitors.verdict import VerdictLevel


def test_sampling_features_measure_how_far_each_inducer_is_pushed():
    plain = RequestSampling(temperature=0.7, max_tokens=128).features()
    assert dict(zip(SAMPLING_FEATURES, plain, strict=True)) == {
        "repetition_penalty_below_1": 0.0,
        "negative_frequency_penalty": 0.0,
        "negative_presence_penalty": 0.0,
        "positive_logit_bias": 0.0,
        "greedy": 0.0,
        "log2_max_tokens": 7.0,
    }
    pushed = RequestSampling(0.0, 0.8, -1.0, -1.5, 6.0, 128).features()
    assert pushed[:5] == pytest.approx([0.2, 1.0, 1.5, 6.0, 1.0])
    # penalties that discourage repetition are not inducers
    assert RequestSampling(1.0, 1.3, 0.5, 0.5, -100.0).features()[:4].tolist() == [0, 0, 0, 0]


def test_the_logistic_fit_recovers_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 2))
    p = 1 / (1 + np.exp(-(1.5 * x[:, 0] - 2.0 * x[:, 1] + 0.5)))
    y = rng.random(4000) < p
    weights, bias = fit_logistic(x, y, l2=1e-3)
    assert weights == pytest.approx([1.5, -2.0], abs=0.2)
    assert bias == pytest.approx(0.5, abs=0.15)


def test_folds_keep_a_prompt_together():
    groups = ["a", "a", "b", "c", "b", "d", "e"]
    fold = grouped_folds(groups, 3)
    for name in set(groups):
        assert len({fold[i] for i, g in enumerate(groups) if g == name}) == 1
    assert set(fold) == {0, 1, 2}


def _prompts(rng: np.random.Generator, n: int, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    looping = rng.random(n) < 0.5
    states = rng.standard_normal((n, 2, 4)) + np.where(looping[:, None, None], direction, 0.0)
    return states, looping.astype(float)


def test_out_of_fold_scores_never_see_their_own_prompt():
    rng = np.random.default_rng(1)
    states = rng.standard_normal((40, 2, 32))  # noise, more dimensions than prompts
    labels = (rng.random(40) < 0.5).astype(float)
    groups = [f"p{i}" for i in range(40)]
    rows = np.ones(40, dtype=bool)
    oof = out_of_fold_prompt_scores(states, labels, rows, groups, (3, 4), l2=1e-6, folds=5)
    in_sample = fit_prefill_probe(states, labels, [RequestSampling()] * 40, groups, (3, 4), l2=1e-6).prompt
    in_sample_scores = in_sample.score(states)
    assert np.corrcoef(in_sample_scores, labels)[0, 1] > 0.9
    assert np.corrcoef(oof, labels)[0, 1] < 0.5


def test_the_combined_risk_rises_with_the_prompt_direction_and_with_an_inducer():
    rng = np.random.default_rng(2)
    direction = rng.standard_normal((2, 4))
    states, prompt_loops = _prompts(rng, 300, direction)
    induced = rng.random(300) < 0.3
    labels = np.maximum(prompt_loops, induced.astype(float))
    sampling = [RequestSampling(0.0, frequency_penalty=-1.0 if i else 0.0) for i in induced]
    groups = [f"p{i // 2}" for i in range(300)]
    probe = fit_prefill_probe(states, labels, sampling, groups, (3, 4), prompt_rows=~induced, l2=1.0)
    assert probe.prompt_weight > 0
    assert probe.sampling_weights[SAMPLING_FEATURES.index("negative_frequency_penalty")] > 0
    calm = probe.prompt_score(np.zeros((2, 4)))
    loopy = probe.prompt_score(direction)
    plain, pushed = RequestSampling(0.0), RequestSampling(0.0, frequency_penalty=-1.0)
    assert probe.risk(loopy, plain) > probe.risk(calm, plain)
    assert probe.risk(calm, pushed) > probe.risk(calm, plain)
    assert 0.0 < probe.risk(calm, plain) < 0.5 < probe.risk(loopy, pushed) < 1.0


def _probe() -> PrefillProbe:
    prompt = LinearProbe((3, 4), (0.5, -1.0, 0.25, 0.0, 1.0, 0.5, -0.5, 2.0), -0.2, (0.0,) * 8, (1.0,) * 8)
    return PrefillProbe(prompt, 1.25, (2.0, 1.0, 0.5, 0.1, 0.3, 0.05), -3.0)


def test_the_probe_round_trips_and_refuses_other_features():
    probe = _probe()
    assert PrefillProbe.from_dict(probe.to_dict()) == probe
    other = probe.to_dict() | {"sampling_features": ["greedy"]}
    with pytest.raises(ValueError, match="sampling features"):
        PrefillProbe.from_dict(other)


def test_the_risk_is_the_logistic_of_both_parts():
    probe = _probe()
    sampling = RequestSampling(0.0, 0.8, max_tokens=128)
    expected = -3.0 + 1.25 * 0.7 + float(np.dot(probe.sampling_weights, sampling.features()))
    assert probe.risk(0.7, sampling) == pytest.approx(1 / (1 + np.exp(-expected)))


def test_the_extractor_scores_the_prompt_on_the_first_token_only():
    bands = (LayerBand("a", (3,)), LayerBand("b", (4,)))
    probe = _probe()
    extractor = FeatureExtractor(bands, window=4, prefill_probe=probe.prompt)
    rng = np.random.default_rng(3)
    states = [rng.standard_normal((2, 4)) for _ in range(3)]
    first, *rest = [extractor.push(s, 1.0, 7) for s in states]
    assert first.values[PREFILL_FEATURE] == pytest.approx(probe.prompt_score(states[0]))
    assert all(PREFILL_FEATURE not in step.values for step in rest)
    assert PREFILL_FEATURE not in FeatureExtractor(bands, window=4).push(states[0], 1.0, 7).values


def test_the_calibration_field_is_optional_and_round_trips():
    shipped = load_calibration(shipped_calibration_path("SmolLM2-135M-Instruct"))
    without = replace(shipped, prefill_probe=None)
    assert "prefill_probe" not in json.loads(without.to_json())
    assert Calibration.from_json(without.to_json()).prefill_probe is None
    assert FeatureExtractor(without.bands, **without.extractor_options())._prefill is None
    with_probe = replace(shipped, prefill_probe=_probe())
    assert Calibration.from_json(with_probe.to_json()).prefill_probe == _probe()


def _detector_with_alarm(level: float | None) -> StabilityDetector:
    shipped = load_calibration(shipped_calibration_path("SmolLM2-135M-Instruct"))
    return StabilityDetector(replace(shipped, prefill_probe=replace(_probe(), alarm_level=level)))


def test_a_prefill_risk_at_the_alarm_level_fires_the_verdict_from_the_first_token():
    detector = _detector_with_alarm(0.8)
    detector.note_prefill_risk(0.85)
    verdict = detector.update(StepFeatures(0, 11, 1, {"entropy": 2.0}))
    assert verdict.level is VerdictLevel.SINK and verdict.fired
    assert [(r.signal, r.value, r.threshold, r.since_token) for r in verdict.reasons] == [
        (PREFILL_SIGNAL, 0.85, 0.8, 0)
    ]
    assert (verdict.onset_token, verdict.last_stable_token) == (0, None)
    assert verdict.risk == 0.85  # the risk it fired at, not the quiet signals' (was 0.07 when blocked)
    later = detector.update(StepFeatures(1, 12, 2, {"entropy": 2.0}))
    assert later.level is VerdictLevel.SINK and later.last_stable_token is None


@pytest.mark.parametrize(("level", "risk"), [(0.8, 0.79), (None, 0.99)])
def test_below_the_alarm_level_or_without_one_the_prefill_risk_changes_nothing(level, risk):
    detector = _detector_with_alarm(level)
    detector.note_prefill_risk(risk)
    verdict = detector.update(StepFeatures(0, 11, 1, {"entropy": 2.0}))
    assert verdict.level is VerdictLevel.OK and verdict.reasons == ()
    assert verdict.last_stable_token == 0
    assert verdict.risk == max(risk, detector.calibration.risk.probability(detector.score))
