"""The batched Gram-matrix maths of participation ratio and effective rank: equal to their definitions,
and with their invariants (property-based)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from monitors.spectral import centred_grams, effective_ranks, participation_ratios, unit_grams
from tests.monitors import spectral_reference

windows = st.integers(3, 12).flatmap(
    lambda t: st.integers(2, 16).flatmap(
        lambda d: arrays(np.float64, (t, d), elements=st.floats(-10, 10, allow_nan=False, width=32))
    )
)


def _padded_gram(x: np.ndarray, row_normalised: bool, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One window's Gram matrix, zero-padded to ``size`` rows as the feature extractor's ring holds it."""
    gram = np.zeros((1, size, size))
    gram[0, : len(x), : len(x)] = x @ x.T
    return (unit_grams(gram) if row_normalised else gram), np.array([len(x)])


def participation_ratio(x: np.ndarray, row_normalised: bool = True, size: int = 16) -> float:
    gram, n = _padded_gram(x, row_normalised, size)
    return float(participation_ratios(gram, n)[0])


def effective_rank(x: np.ndarray, row_normalised: bool = True, size: int = 16) -> float:
    gram, n = _padded_gram(x, row_normalised, size)
    return float(effective_ranks(centred_grams(gram, n))[0])


def _non_degenerate(x: np.ndarray) -> bool:
    centred = x - x.mean(axis=0)
    return np.linalg.norm(centred) > 1e-3 and np.all(np.linalg.norm(x, axis=1) > 1e-3)


def _random_rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


@settings(max_examples=60, deadline=None)
@given(windows, st.booleans())
def test_the_gram_maths_equals_the_definitions_whatever_the_padding(x, row_normalised):
    """Centring through the Gram matrix loses about log10(|X|^2 / |Xc|^2) digits to cancellation: checked to 1e-6
    where the spread is at least a thousandth of the states' energy (hidden-state windows are far from that)."""
    centred = x - x.mean(axis=0)
    if not _non_degenerate(x) or np.sum(centred**2) < 1e-3 * np.sum(x**2):
        return
    for size in (len(x), 16):
        assert np.isclose(
            participation_ratio(x, row_normalised, size),
            spectral_reference.participation_ratio(x, row_normalised),
            rtol=1e-6,
        )
        assert np.isclose(
            effective_rank(x, row_normalised, size), spectral_reference.effective_rank(x, row_normalised), rtol=1e-5
        )


@settings(max_examples=60, deadline=None)
@given(windows, st.booleans())
def test_pr_lies_between_one_and_the_rank_of_the_centred_window(x, row_normalised):
    pr = participation_ratio(x, row_normalised)
    if pr == 0.0:
        return
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if row_normalised else x
    rank = np.linalg.matrix_rank(xn - xn.mean(axis=0))
    assert 1.0 - 1e-9 <= pr <= rank + 1e-6


@settings(max_examples=60, deadline=None)
@given(windows, st.integers(0, 10_000), st.floats(0.01, 100))
def test_pr_and_effective_rank_are_invariant_to_rotation_and_scale(x, seed, scale):
    if not _non_degenerate(x):
        return
    rotated = scale * x @ _random_rotation(x.shape[1], seed)
    for row_normalised in (True, False):
        assert np.isclose(
            participation_ratio(rotated, row_normalised), participation_ratio(x, row_normalised), rtol=1e-6
        )
        assert np.isclose(effective_rank(rotated, row_normalised), effective_rank(x, row_normalised), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10_000))
def test_k_orthogonal_equal_directions_give_pr_k(k, seed):
    d = k + 3
    basis = _random_rotation(d, seed)[:k]
    # ±e_i for each direction: centred, the covariance has k equal eigenvalues
    x = np.concatenate([basis, -basis]) * 3.0
    assert np.isclose(participation_ratio(x, row_normalised=False), k, rtol=1e-9)
    assert np.isclose(effective_rank(x, row_normalised=False), k, rtol=1e-6)


def test_a_window_of_identical_states_has_no_dimension():
    x = np.tile(np.arange(1.0, 6.0), (8, 1))
    assert participation_ratio(x) == 0.0
    assert effective_rank(x) == 0.0


@settings(max_examples=40, deadline=None)
@given(windows)
def test_effective_rank_is_between_one_and_the_rank(x):
    er = effective_rank(x, row_normalised=False)
    if er == 0.0:
        return
    rank = np.linalg.matrix_rank(x - x.mean(axis=0))
    assert 1.0 - 1e-9 <= er <= rank + 1e-6
