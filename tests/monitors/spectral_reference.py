"""Participation ratio and effective rank of one window straight from their definitions (the covariance's
eigenvalues), as the reference the batched Gram-matrix maths is checked against."""

import numpy as np


def _covariance_eigenvalues(states: np.ndarray, row_normalised: bool) -> np.ndarray:
    x = np.asarray(states, dtype=np.float64)
    if row_normalised:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    centred = x - x.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred)
    return np.where(eigenvalues > 1e-10 * max(eigenvalues.max(), 0.0), eigenvalues, 0.0)


def participation_ratio(states: np.ndarray, row_normalised: bool = True) -> float:
    """``(Σλ)² / Σλ²`` of the window's covariance; 0 when it has no variance."""
    eigenvalues = _covariance_eigenvalues(states, row_normalised)
    if eigenvalues.sum() <= 1e-12:
        return 0.0
    return float(eigenvalues.sum() ** 2 / np.sum(eigenvalues**2))


def effective_rank(states: np.ndarray, row_normalised: bool = True) -> float:
    """``exp(H(σ/Σσ))`` of the window's singular values; 0 when it has no variance."""
    eigenvalues = _covariance_eigenvalues(states, row_normalised)
    if eigenvalues.sum() <= 1e-12:
        return 0.0
    singular = np.sqrt(eigenvalues[eigenvalues > 0])
    p = singular / singular.sum()
    return float(np.exp(-np.sum(p * np.log(p))))
