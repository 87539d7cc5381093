"""Offline replay of signals: coarse-graining and the text baselines."""

import numpy as np

from lab.eval.signals import Reference, Sampling, hidden_state_trajectories, hold, zlib_trajectory
from monitors.bands import LayerBand

BANDS = (LayerBand("early", (1,)), LayerBand("late", (3,)))


def _states(tokens: int = 40, layers: int = 4, width: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((tokens, layers, width)).astype(np.float16)


def test_window_features_are_undefined_until_the_window_is_full():
    out = hidden_state_trajectories(_states(), np.ones(40), list(range(40)), Sampling(BANDS, window=8), Reference())
    assert np.isnan(out["late.pr"][:7]).all() and np.isfinite(out["late.pr"][7:]).all()
    assert np.isfinite(out["entropy"]).all()


def test_token_stride_holds_each_sample_until_the_next():
    sampling = Sampling(BANDS, stride=4, window=16)
    out = hidden_state_trajectories(_states(), np.ones(40), list(range(40)), sampling, Reference())
    path = out["path"]
    assert (path[0:4] == path[0]).all() and path[4] != path[0]
    assert np.array_equal(hold(np.arange(10.0), 4), [0, 0, 0, 0, 4, 4, 4, 4, 8, 8])


def test_a_random_projection_keeps_the_participation_ratio_close():
    states = _states(tokens=32, width=256)
    full = hidden_state_trajectories(states, np.ones(32), list(range(32)), Sampling(BANDS, window=32), Reference())
    sampling = Sampling(BANDS, projection=128, window=32)
    reference = Reference(projection=sampling.projection_matrix(256))
    projected = hidden_state_trajectories(states, np.ones(32), list(range(32)), sampling, reference)
    assert abs(projected["late.pr"][-1] - full["late.pr"][-1]) / full["late.pr"][-1] < 0.25


def test_zlib_ratio_drops_when_the_text_repeats():
    fresh = zlib_trajectory(list(range(1000, 1100)))
    looping = zlib_trajectory([5, 6, 7, 8] * 25)
    assert looping[-1] < 0.5 * fresh[-1]
