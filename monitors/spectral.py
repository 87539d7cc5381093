"""Spectral summaries of a window of hidden states, computed from the tiny T×T Gram matrix.

With ``Xc`` the centred window (T tokens × d dimensions), the covariance's non-zero eigenvalues are
those of ``G = Xc Xcᵀ``, so ``PR = tr(G)² / ‖G‖_F²`` needs no eigendecomposition.
"""

import numpy as np

_EPS = 1e-12
_TINY = 1e-300
_ROUNDOFF = 1e-24  # squared-norm ratio below which centred rows are rounding noise
_RANK_TOL = 1e-10  # eigenvalues below this fraction of the largest are rounding noise


def normalize_rows(states: np.ndarray) -> np.ndarray:
    """Scale every row to unit L2 norm (rows of zeros stay zero)."""
    norms = np.linalg.norm(states, axis=-1, keepdims=True)
    return states / np.maximum(norms, _EPS)


def centred_gram(gram: np.ndarray) -> np.ndarray:
    """Gram matrix of the mean-centred rows, from the Gram matrix of the raw rows: ``H G H``."""
    row_means = gram.mean(axis=1, keepdims=True)
    return gram - row_means - row_means.T + gram.mean()


def participation_ratio_from_gram(centred: np.ndarray) -> float:
    """``(Σλ)² / Σλ²`` of the eigenvalues of a centred Gram matrix; 0 for a degenerate window."""
    trace = float(np.trace(centred))
    frob_sq = float(np.sum(centred * centred))
    if frob_sq <= _TINY or trace <= _TINY:
        return 0.0
    return trace * trace / frob_sq


def effective_rank_from_gram(centred: np.ndarray) -> float:
    """``exp(H(σ/Σσ))`` with σ the singular values of the centred window (square roots of G's eigenvalues)."""
    eigenvalues = np.linalg.eigvalsh(centred)
    eigenvalues = np.where(eigenvalues > _RANK_TOL * eigenvalues.max(initial=0.0), eigenvalues, 0.0)
    if eigenvalues.sum() <= _TINY:  # no variance at all (as for the participation ratio)
        return 0.0
    singular = np.sqrt(eigenvalues)
    total = singular.sum()
    p = singular[singular > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(states: np.ndarray, row_normalised: bool = True) -> float:
    """Participation ratio of the covariance of a window of states (rows = tokens)."""
    return participation_ratio_from_gram(_centred_window_gram(states, row_normalised))


def effective_rank(states: np.ndarray, row_normalised: bool = True) -> float:
    """Entropy-based effective rank of a window of states (rows = tokens)."""
    return effective_rank_from_gram(_centred_window_gram(states, row_normalised))


def _centred_window_gram(states: np.ndarray, row_normalised: bool) -> np.ndarray:
    """Gram matrix of the centred window, centring the rows themselves (more accurate than ``H G H``)."""
    x = np.asarray(states, dtype=np.float64)
    if row_normalised:
        x = normalize_rows(x)
    centred = x - x.mean(axis=0)
    if np.sum(centred * centred) <= _ROUNDOFF * np.sum(x * x):  # all rows equal up to rounding
        centred = np.zeros_like(centred)
    return centred @ centred.T
