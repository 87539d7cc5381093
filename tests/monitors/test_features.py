"""The streaming feature extractor agrees with direct computations on the same window."""

import numpy as np
import pytest

from monitors.bands import LayerBand
from monitors.features import FeatureExtractor, StepFeatures
from monitors.probe import LinearProbe
from tests.monitors.spectral_reference import effective_rank, participation_ratio

BANDS = (LayerBand("early", (1, 2)), LayerBand("late", (5,)))
WIDTH = 12


def _states(tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(WIDTH) * 3
    return base + rng.standard_normal((tokens, 3, WIDTH))


def _run(states: np.ndarray, window: int, **options) -> list[StepFeatures]:
    extractor = FeatureExtractor(BANDS, window, **options)
    return [extractor.push(s, 1.0, t) for t, s in enumerate(states)]


def test_window_pr_and_effective_rank_match_the_direct_computation_after_the_ring_wraps():
    states = _states(20)
    last = _run(states, window=8)[-1]
    window = states[-8:]
    assert last.window == 8
    early = np.mean([participation_ratio(window[:, i]) for i in (0, 1)])
    assert last.values["early.pr"] == pytest.approx(early, rel=1e-9)
    assert last.values["early.pr_raw"] == pytest.approx(
        np.mean([participation_ratio(window[:, i], row_normalised=False) for i in (0, 1)]), rel=1e-9
    )
    assert last.values["late.eff_rank"] == pytest.approx(effective_rank(window[:, 2]), rel=1e-6)


def test_removing_outlier_dimensions_equals_the_pr_of_the_window_without_them():
    states = _states(10)
    states[:, :, 3] += 50.0  # a massive dimension, as real residual streams have
    last = _run(states, window=10, outlier_dims={1: [3], 2: [3], 5: [3]})[-1]
    stripped = np.delete(states, 3, axis=2)
    assert last.values["early.pr_clip"] == pytest.approx(
        np.mean([participation_ratio(stripped[:, i]) for i in (0, 1)]), rel=1e-6
    )
    assert last.values["early.pr_clip"] != pytest.approx(last.values["early.pr"])


def test_consecutive_cosine_and_drift_toward_the_mean_state():
    states = _states(3)
    mean = np.ones(WIDTH)
    steps = _run(states, window=4, mean_states={1: mean, 2: mean, 5: mean})
    a, b = states[1, 2], states[2, 2]
    assert steps[2].values["late.cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert steps[2].values["late.drift"] == pytest.approx(b @ mean / np.linalg.norm(b) / np.linalg.norm(mean))
    assert "late.cosine" not in steps[0].values


def test_path_length_is_the_sum_of_steps_across_captured_layers_relative_to_the_last_state():
    states = _states(1)
    x = states[0]
    expected = (np.linalg.norm(x[1] - x[0]) + np.linalg.norm(x[2] - x[1])) / np.linalg.norm(x[2])
    assert _run(states, window=4)[0].values["path"] == pytest.approx(expected)


def test_probe_score_equals_the_probe_applied_to_the_captured_layers():
    rng = np.random.default_rng(1)
    probe = LinearProbe(
        (2, 5), tuple(rng.standard_normal(2 * WIDTH)), 0.3, tuple(rng.standard_normal(2 * WIDTH)), (2.0,) * (2 * WIDTH)
    )
    states = _states(2)
    step = _run(states, window=4, probe=probe)[1]
    assert step.values["probe"] == pytest.approx(float(probe.score(states[1, 1:3])))


def test_a_probe_on_layers_that_are_not_captured_is_ignored():
    probe = LinearProbe((7,), (0.0,) * WIDTH, 0.0, (0.0,) * WIDTH, (1.0,) * WIDTH)
    assert "probe" not in _run(_states(1), window=4, probe=probe)[0].values


def test_step_features_survive_the_wire():
    step = _run(_states(5), window=4)[-1]
    assert StepFeatures.from_wire(step.to_wire()) == step


def test_recurrence_is_the_closest_earlier_state_but_the_previous_one():
    states = _states(6)
    states[5] = states[1] * 2.0  # the trajectory returns to where it was four tokens ago
    last = _run(states, window=8)[-1]
    assert last.values["late.recurrence"] == pytest.approx(1.0)


def test_a_window_that_is_not_full_yet_matches_the_direct_computation():
    states = _states(5)
    last = _run(states, window=8)[-1]
    assert last.window == 5
    assert last.values["early.pr"] == pytest.approx(
        np.mean([participation_ratio(states[:, i]) for i in (0, 1)]), rel=1e-9
    )
    assert last.values["late.eff_rank"] == pytest.approx(effective_rank(states[:, 2]), rel=1e-6)


def test_generations_pushed_together_get_what_each_would_get_alone():
    rng = np.random.default_rng(2)
    mean = {layer: rng.standard_normal(WIDTH) for layer in (1, 2, 5)}
    options = {"mean_states": mean, "outlier_dims": {1: [3], 2: [3, 4], 5: [0]}}
    lengths = (1, 2, 3, 7, 12)  # not full, full, and wrapped windows side by side
    runs = [_states(length, seed=length) for length in lengths]
    alone = [_run(states, window=6, **options)[-1] for states in runs]
    together = [FeatureExtractor(BANDS, 6, **options) for _ in lengths]
    for step in range(max(lengths)):
        rows = [i for i, length in enumerate(lengths) if step < length]
        pushed = FeatureExtractor.push_many(
            [together[i] for i in rows], np.stack([runs[i][step] for i in rows]), [1.0] * len(rows), [7] * len(rows)
        )
        for i, features in zip(rows, pushed, strict=True):
            if step == lengths[i] - 1:
                assert features.index == alone[i].index and features.window == alone[i].window
                assert features.values.keys() == alone[i].values.keys()
                assert features.values == pytest.approx(alone[i].values, rel=1e-9, abs=1e-12)
