"""Spectral summaries of windows of hidden states, computed in batches from the windows' tiny T×T Gram matrices.

With ``Xc`` a centred window (T tokens × d dimensions), the covariance's non-zero eigenvalues are those of
``G = Xc Xcᵀ``, so the participation ratio ``PR = tr(G)² / ‖G‖_F²`` needs no eigendecomposition, and the
effective rank needs only the eigenvalues of a T×T matrix. Every function takes a stack of Gram matrices
(one per window and layer) and ``n``, the rows each window really has (the rest is zero padding).
"""

import numpy as np

__all__ = ["RANK_TOL", "centred_grams", "effective_ranks", "participation_ratios", "unit_grams"]

_EPS = 1e-12
RANK_TOL = 1e-10  # eigenvalues below this fraction of the largest are rounding noise


def unit_grams(gram: np.ndarray) -> np.ndarray:
    """The Gram matrix of the same rows scaled to unit norm: one new array, scaled in place (these batches are
    large enough that every temporary costs as much as the arithmetic)."""
    inverse_norms = 1.0 / np.sqrt(np.maximum(np.diagonal(gram, axis1=1, axis2=2), _EPS))
    unit = gram * inverse_norms[:, :, None]
    unit *= inverse_norms[:, None, :]
    return unit


def centred_grams(gram: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Each Gram matrix of the centred rows, for windows of ``n`` rows zero-padded to the matrix size
    (the padding stays zero, so its eigenvalues are zeros)."""
    n = n[:, None].astype(np.float64)
    row_means = _row_sums(gram) / n
    grand_mean = row_means.sum(axis=1, keepdims=True) / n
    centred = gram - row_means[:, :, None]
    centred -= row_means[:, None, :]
    centred += grand_mean[:, :, None]
    if (n < gram.shape[-1]).any():
        inside = (np.arange(gram.shape[-1]) < n).astype(np.float64)
        centred *= inside[:, :, None]
        centred *= inside[:, None, :]
    return centred


def _row_sums(gram: np.ndarray) -> np.ndarray:
    """Row sums of a stack of matrices (a product with ones: several times faster than ``sum`` over 32 columns)."""
    return gram @ np.ones(gram.shape[-1])


def participation_ratios(gram: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Participation ratio of the centred rows behind each Gram matrix, without forming ``H G H``.

    With ``r = G1`` and ``s = 1ᵀG1`` (n rows): ``tr(HGH) = tr(G) - s/n`` and
    ``‖HGH‖_F² = ‖G‖_F² - (2/n)‖r‖² + s²/n²``. Rows past ``n`` (zero padding) add nothing to the sums.
    """
    row_sums = _row_sums(gram)
    total = row_sums.sum(axis=1)
    trace = np.trace(gram, axis1=1, axis2=2) - total / n
    flat = gram.reshape(len(gram), 1, -1)
    gram_frob_sq = (flat @ flat.transpose(0, 2, 1))[:, 0, 0]
    frob_sq = gram_frob_sq - 2.0 / n * np.einsum("li,li->l", row_sums, row_sums) + total**2 / n**2
    return np.where((frob_sq > _EPS) & (trace > _EPS), trace * trace / np.maximum(frob_sq, _EPS), 0.0)


def effective_ranks(centred: np.ndarray) -> np.ndarray:
    """Entropy-based effective rank ``exp(H(σ/Σσ))`` of each centred Gram matrix (σ: the window's singular
    values, the square roots of the matrix's eigenvalues); 0 for a window with no variance."""
    eigenvalues = np.linalg.eigvalsh(centred)
    eigenvalues = np.where(eigenvalues > RANK_TOL * eigenvalues.max(axis=1, keepdims=True), eigenvalues, 0.0)
    singular = np.sqrt(eigenvalues)
    total = singular.sum(axis=1, keepdims=True)
    p = singular / np.maximum(total, _EPS)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, _EPS)), 0.0), axis=1)
    return np.where(eigenvalues.sum(axis=1) > _EPS, np.exp(entropy), 0.0)
