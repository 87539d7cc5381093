"""Rank exhaustion apart from loops: the novel PR is undefined in a pure loop, low on a trajectory that keeps
moving in few directions, and the detector turns the second (not the first) into ``rank_exhaustion``."""

import json
from dataclasses import replace

import numpy as np
import pytest

from monitors.bands import LayerBand
from monitors.calibration import Calibration, load_calibration, rank_overlay_path
from monitors.detector import StabilityDetector
from monitors.features import FeatureExtractor
from monitors.rank_exhaustion import (
    MIN_NOVEL_STATES,
    band_recurrence_levels,
    fit_rank_floors,
    fit_recurrence_levels,
    novel_participation_ratios,
    rank_overlay,
)
from monitors.spectral import unit_grams
from monitors.verdict import VerdictLevel

BAND = (LayerBand("late", (1,)),)
WIDTH = 64
LEVEL = 0.95


def _loop(tokens: int, period: int = 4, seed: int = 0) -> np.ndarray:
    """A pure loop: ``period`` random states repeated, with a little noise."""
    rng = np.random.default_rng(seed)
    cycle = rng.standard_normal((period, WIDTH))
    return np.stack([cycle[t % period] + 0.01 * rng.standard_normal(WIDTH) for t in range(tokens)])


def _arc(tokens: int, step: float = 0.2) -> np.ndarray:
    """A trajectory that never returns (a slow turn in one plane, plus a fixed offset): no state recurs, yet
    it spans about two directions."""
    angles = step * np.arange(tokens)
    states = np.zeros((tokens, WIDTH))
    states[:, 0], states[:, 1] = np.cos(angles), np.sin(angles)
    return states


def _healthy(tokens: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((tokens, WIDTH))


def _features(states: np.ndarray, levels: dict[int, float] | None = None) -> list[dict[str, float]]:
    extractor = FeatureExtractor(BAND, window=32, recurrence_levels=levels or {1: LEVEL})
    return [extractor.push(s[None], 1.0, t).values for t, s in enumerate(states)]


def _reference_novel_pr(window: np.ndarray, level: float) -> float:
    """The definition written out: drop rows with a cosine above ``level`` to a row two or more apart, then
    the PR of the centred, row-normalised rest."""
    unit = window / np.linalg.norm(window, axis=1, keepdims=True)
    cosines = unit @ unit.T
    apart = np.abs(np.subtract.outer(np.arange(len(window)), np.arange(len(window)))) > 1
    keep = ~((cosines > level) & apart).any(axis=1)
    if keep.sum() < MIN_NOVEL_STATES:
        return float("nan")
    rows = unit[keep] - unit[keep].mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(rows @ rows.T)
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def test_the_streaming_novel_pr_matches_the_definition_on_a_wrapped_window():
    rng = np.random.default_rng(3)
    states = _healthy(50)
    states[40:] = states[20:30] + 0.001 * rng.standard_normal((10, WIDTH))  # some states recur
    values = _features(states)
    expected = _reference_novel_pr(states[-32:], LEVEL)
    assert values[-1]["late.pr_novel"] == pytest.approx(expected, rel=1e-6)


def test_a_pure_loop_has_low_plain_pr_and_no_novel_pr():
    last = _features(_loop(64))[-1]
    assert last["late.pr"] < 4.0
    assert "late.pr_novel" not in last


def test_a_low_rank_trajectory_that_never_recurs_has_a_low_novel_pr():
    low, healthy = _features(_arc(64))[-1], _features(_healthy(64))[-1]
    assert low["late.pr_novel"] < 3.0
    assert healthy["late.pr_novel"] > 15.0


def test_without_levels_there_is_no_novel_pr():
    extractor = FeatureExtractor(BAND, window=32)
    values = [extractor.push(s[None], 1.0, t).values for t, s in enumerate(_healthy(40))]
    assert "late.pr_novel" not in values[-1]


def test_the_batched_path_gives_each_generation_its_own_novel_pr():
    streams = [_arc(40), _healthy(40), _loop(40)]
    alone = [_features(s)[-1].get("late.pr_novel") for s in streams]
    extractors = [FeatureExtractor(BAND, window=32, recurrence_levels={1: LEVEL}) for _ in streams]
    for t in range(40):
        batch = FeatureExtractor.push_many(extractors, np.stack([s[t][None] for s in streams]), [1.0] * 3, [t] * 3)
    together = [step.values.get("late.pr_novel") for step in batch]
    assert together[:2] == pytest.approx(alone[:2])
    assert together[2] is None and alone[2] is None


def test_novel_pr_is_nan_when_too_few_rows_are_left():
    unit = unit_grams(np.ones((1, 10, 10)))  # every row the same: all recur
    pr, kept = novel_participation_ratios(unit, np.array([10]), np.arange(10)[None], np.array([0.5]))
    assert np.isnan(pr[0]) and kept[0] == 0


def test_floors_are_the_fpr_quantile_of_per_generation_lows_and_missing_bands_do_not_count():
    lows = [{"late": float(v), "early": 5.0} for v in range(1, 101)] + [{"early": 5.0}]
    floors = fit_rank_floors(lows, 0.05)
    assert floors["late"] == pytest.approx(np.quantile(np.arange(1, 101), 0.05))
    assert floors["early"] == 5.0


def test_floors_keep_the_union_of_bands_within_the_rate():
    rng = np.random.default_rng(0)
    lows = [{"early": float(a), "late": float(b)} for a, b in rng.standard_normal((400, 2))]
    floors = fit_rank_floors(lows, 0.05)
    fired = np.mean([lows_["early"] < floors["early"] or lows_["late"] < floors["late"] for lows_ in lows])
    assert 0.03 <= fired <= 0.05


def test_recurrence_levels_are_per_layer_quantiles():
    levels = fit_recurrence_levels({4: np.linspace(0, 1, 101), 7: np.array([])}, 0.5)
    assert levels == {4: pytest.approx(0.5)}


def _with_overlay(tmp_path, floors: dict[str, float]) -> Calibration:
    base = load_calibration("SmolLM2-135M-Instruct")
    path = tmp_path / "model.json"
    path.write_text(replace(base, bands=BAND, recurrence_levels={}, window=32).to_json())
    overlay = rank_overlay({1: LEVEL}, floors, persistence=4, notes={"test": True})
    rank_overlay_path(path).write_text(json.dumps(overlay))
    return load_calibration(path)


def test_the_overlay_merges_levels_floors_and_rank_signals(tmp_path):
    calibration = _with_overlay(tmp_path, {"late": 6.0})
    assert calibration.recurrence_levels == {1: LEVEL}
    assert calibration.rank_floors == {"late": 6.0}
    rank = [s for s in calibration.signals if s.family == "rank"]
    assert [(s.name, s.threshold, s.persistence) for s in rank] == [("late.rank_margin", 0.0, 4)]
    assert any(s.family == "sink" for s in calibration.signals)
    assert Calibration.from_json(calibration.to_json()).recurrence_levels == {1: LEVEL}


def _verdicts(calibration: Calibration, states: np.ndarray) -> list:
    extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
    detector = StabilityDetector(calibration)
    return [detector.update(extractor.push(s[None], 2.0, 1000 + t)) for t, s in enumerate(states)]


def test_the_detector_says_rank_exhaustion_on_a_low_rank_trajectory_and_not_on_a_loop(tmp_path):
    calibration = _with_overlay(tmp_path, {"late": 6.0})
    calibration = replace(calibration, signals=tuple(s for s in calibration.signals if s.family == "rank"))
    low = _verdicts(calibration, _arc(64))
    assert low[-1].level is VerdictLevel.RANK_EXHAUSTION
    assert low[-1].reasons[0].signal == "late.rank_margin"
    assert _verdicts(calibration, _loop(64))[-1].level is VerdictLevel.OK
    assert _verdicts(calibration, _healthy(64))[-1].level is VerdictLevel.OK
    assert low[-1].token_index >= calibration.window - 1 + 3  # needs a full window, then 4 tokens below


def test_band_recurrence_levels_give_each_layer_its_bands_quantile():
    recurrence = {"early": np.array([0.2, 0.4, 0.6, 0.8]), "late": np.array([0.9, 0.95, 1.0]), "middle": np.array([])}
    levels = band_recurrence_levels(recurrence, {"early": (3, 4), "middle": (8, 10), "late": (14, 16)}, 0.5)
    assert levels == {3: pytest.approx(0.5), 4: pytest.approx(0.5), 14: 0.95, 16: 0.95}  # no values: no level
