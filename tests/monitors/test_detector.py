"""The streaming detector: tracking methods, persistence, verdict levels, reasons and lead estimate."""

from dataclasses import replace

import pytest

from monitors.calibration import SignalThreshold, load_calibration
from monitors.detector import StabilityDetector
from monitors.features import StepFeatures
from monitors.verdict import VerdictLevel

BASE = load_calibration("SmolLM2-135M-Instruct")


def _calibration(*signals: SignalThreshold, persistence: int = 3, min_agreeing: int = 1):
    return replace(BASE, signals=signals, persistence=persistence, min_agreeing=min_agreeing, expected_lead_tokens=7.0)


def _feed(detector: StabilityDetector, values: list[dict[str, float]]):
    verdicts = []
    for i, v in enumerate(values):
        verdicts.append(detector.update(StepFeatures(i, 1000 + i, BASE.window, v)))
    return verdicts


def test_a_low_signal_fires_only_after_it_persists():
    calibration = _calibration(SignalThreshold("entropy", "low", 0.5, "sink"))
    verdicts = _feed(StabilityDetector(calibration), [{"entropy": 2.0}] * 5 + [{"entropy": 0.0}] * 30)
    first = next(v for v in verdicts if v.fired)
    assert first.level is VerdictLevel.SINK
    assert first.reasons[0].signal == "entropy"
    assert first.token_index >= first.onset_token + calibration.persistence - 1
    assert first.expected_lead_tokens == 7.0
    assert first.last_stable_token < first.onset_token


def test_a_fired_verdict_is_sticky():
    calibration = _calibration(SignalThreshold("entropy", "low", 0.5, "sink"), persistence=1)
    verdicts = _feed(StabilityDetector(calibration), [{"entropy": 0.0}] * 10 + [{"entropy": 5.0}] * 20)
    assert verdicts[-1].fired


def test_a_rank_family_signal_gives_rank_exhaustion():
    calibration = _calibration(SignalThreshold("late.pr", "low", 4.0, "rank"), persistence=1)
    verdict = _feed(StabilityDetector(calibration), [{"late.pr": 2.0}] * 10)[-1]
    assert verdict.level is VerdictLevel.RANK_EXHAUSTION


def test_a_visible_loop_stays_sink_when_a_rank_floor_is_crossed_too():
    rank = SignalThreshold("late.pr", "low", 4.0, "rank")
    loop = SignalThreshold("entropy", "low", 0.5, "sink")
    detector = StabilityDetector(_calibration(rank, loop, persistence=1))
    verdicts = _feed(detector, [{"late.pr": 2.0, "entropy": 2.0}] * 4 + [{"late.pr": 2.0, "entropy": 0.0}] * 12)
    assert verdicts[3].level is VerdictLevel.RANK_EXHAUSTION  # fewer directions, no loop in sight yet
    assert verdicts[-1].level is VerdictLevel.SINK
    assert {r.signal for r in verdicts[-1].reasons} == {"late.pr", "entropy"}


def test_cusum_tracks_a_moderate_sustained_shift_that_a_level_threshold_misses():
    cusum = SignalThreshold("probe", "high", 4.0, "sink", "cusum", mean=0.0, std=1.0)
    level = SignalThreshold("probe", "high", 2.0, "sink", "ewma")
    values = [{"probe": 0.0}] * 10 + [{"probe": 1.2}] * 30
    assert _feed(StabilityDetector(_calibration(cusum)), values)[-1].fired
    assert not _feed(StabilityDetector(_calibration(level)), values)[-1].fired


def test_window_features_are_ignored_until_the_window_is_full():
    calibration = _calibration(SignalThreshold("late.pr", "low", 4.0, "rank"), persistence=1)
    detector = StabilityDetector(calibration)
    verdict = detector.update(StepFeatures(0, 5, 2, {"late.pr": 1.0}))
    assert verdict.level is VerdictLevel.OK


def test_too_few_agreeing_sink_signals_only_warn():
    calibration = _calibration(
        SignalThreshold("entropy", "low", 0.5, "sink"),
        SignalThreshold("late.cosine", "high", 0.9, "sink"),
        persistence=1,
        min_agreeing=2,
    )
    verdict = _feed(StabilityDetector(calibration), [{"entropy": 0.0, "late.cosine": 0.1}] * 5)[-1]
    assert verdict.level is VerdictLevel.WARN


def test_the_summary_reports_band_means_and_rank_margins():
    calibration = _calibration(SignalThreshold("entropy", "low", 0.5, "sink"))
    detector = StabilityDetector(calibration)
    _feed(detector, [{"entropy": 1.0, "late.pr_novel": 10.0}, {"entropy": 3.0, "late.pr_novel": 12.0}])
    summary = detector.summary()
    assert summary["entropy_mean"] == pytest.approx(2.0)
    assert summary["bands"]["late"]["rank_margin_min"] == pytest.approx(
        10.0 - calibration.rank_floors["late"], abs=1e-3
    )


def test_a_warning_that_passes_lets_the_stable_point_move_on():
    calibration = _calibration(SignalThreshold("entropy", "low", 0.5, "sink", span=1), persistence=6)
    values = [{"entropy": 2.0}] * 5 + [{"entropy": 0.0}] * 2 + [{"entropy": 2.0}] * 20
    verdicts = _feed(StabilityDetector(calibration), values)
    assert any(v.level is VerdictLevel.WARN for v in verdicts)
    assert not any(v.fired for v in verdicts)
    last = verdicts[-1]
    assert last.level is VerdictLevel.OK and last.reasons == () and last.onset_token is None
    assert last.last_stable_token == len(values) - 1
