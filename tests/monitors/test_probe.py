"""The linear probe: training recovers a separating direction; serialisation round-trips."""

import numpy as np

from monitors.probe import LinearProbe, fit_ridge, train_probe


def test_the_least_squares_probe_separates_linearly_separable_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5))
    y = (x[:, 0] - 0.5 * x[:, 2] > 0).astype(float)
    w, b, mean, scale = fit_ridge(x, y, l2=1e-4)
    predictions = ((x - mean) / scale) @ w + b > 0.5
    assert np.mean(predictions == y) > 0.97


def test_a_trained_probe_scores_positive_generations_higher():
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(8)
    sinks = [rng.standard_normal((30, 2, 4)) + direction.reshape(2, 4) for _ in range(5)]
    normal = [rng.standard_normal((30, 2, 4)) for _ in range(5)]
    probe = train_probe(sinks + normal, [np.ones(30)] * 5 + [np.zeros(30)] * 5, (3, 4), l2=1e-3, horizon=16)
    assert min(probe.score(s).mean() for s in sinks) > max(probe.score(s).mean() for s in normal)


def test_probe_round_trips_through_its_dict_form():
    probe = LinearProbe((1, 2), (0.5, -1.25), 0.1, (0.0, 1.0), (1.0, 2.0), horizon=32)
    again = LinearProbe.from_dict(probe.to_dict())
    assert again == probe
