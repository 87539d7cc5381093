"""Scores for detection quality: AUROC, false positives at fixed recall, online firing and lead time.

A signal's *online* behaviour is that of the streaming detector: its tracked statistic (EWMA or CUSUM,
:func:`monitors.calibration.tracked`) must stay past a threshold for ``persistence`` tokens; it fires
at the token where that happens. A generation's *score* is the most abnormal tracked value it holds for
``persistence`` tokens, so that thresholding the score is exactly asking whether the online detector
would fire.
"""

from collections.abc import Sequence

import numpy as np

from monitors.calibration import SignalThreshold, persistent_extreme, tracked

__all__ = ["auroc", "firing_token", "fpr_at_recall", "generation_score", "median_or_nan"]


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = np.asarray([p for p in positives if np.isfinite(p)], dtype=np.float64)
    neg = np.asarray([n for n in negatives if np.isfinite(n)], dtype=np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = _midranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def fpr_at_recall(positives: Sequence[float], negatives: Sequence[float], recall: float) -> float:
    """Fraction of negatives at or above the score that catches ``recall`` of the positives."""
    pos = np.sort(np.asarray([p for p in positives if np.isfinite(p)]))[::-1]
    neg = np.asarray([n for n in negatives if np.isfinite(n)])
    if not len(pos) or not len(neg):
        return float("nan")
    needed = int(np.ceil(recall * len(pos)))
    threshold = pos[max(needed, 1) - 1]
    return float(np.mean(neg >= threshold))


def generation_score(values: np.ndarray, spec: SignalThreshold, span: int, persistence: int) -> float:
    """The most abnormal tracked value held for ``persistence`` tokens, oriented so that higher is worse."""
    persistence = spec.persistence or persistence
    finite = values[np.isfinite(values)]
    if len(finite) < persistence:
        return float("nan")
    statistic = tracked(finite, spec, span)
    if spec.method == "cusum":
        return persistent_extreme(statistic, "high", persistence)
    extreme = persistent_extreme(statistic, spec.direction, persistence)
    return -extreme if spec.direction == "low" else extreme


def firing_token(values: np.ndarray, spec: SignalThreshold, span: int, persistence: int) -> int | None:
    """Token at which the online detector for this signal fires (None if never).

    Tokens where the signal is not yet defined (NaN, e.g. before the window fills) are skipped, exactly
    as the streaming detector skips them.
    """
    persistence = spec.persistence or persistence
    defined = np.flatnonzero(np.isfinite(values))
    if len(defined) < persistence:
        return None
    statistic = tracked(values[defined], spec, span)
    crossed = (
        statistic > spec.threshold
        if spec.method == "cusum" or spec.direction == "high"
        else (statistic < spec.threshold)
    )
    run = 0
    for i, hit in enumerate(crossed):
        run = run + 1 if hit else 0
        if run >= persistence:
            return int(defined[i])
    return None


def median_or_nan(values: Sequence[float]) -> float:
    """Median of a possibly empty sequence."""
    return float(np.median(values)) if len(values) else float("nan")
