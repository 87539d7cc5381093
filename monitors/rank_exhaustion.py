"""Rank exhaustion apart from loops: the participation ratio of a window's *novel* states.

A window of recurring states has low rank by construction, so the plain window PR is lowest in every
visible loop, which ``sink`` already reports. Rank exhaustion is the loss of dimensionality the text does
not show as recurrence: the PR of the window after removing every state that recurs, i.e. whose cosine to
another state of the window (not its own neighbour in time) is above the layer's calibrated recurrence
level. A pure loop leaves fewer than :data:`MIN_NOVEL_STATES` novel states and the feature is undefined
there (it neither fires nor clears), while a trajectory that keeps moving in few directions stays low.

Everything here takes the row-normalised Gram matrices the feature extractor already keeps, in batches
(``[windows, T, T]``), and the fit is a pure function of per-generation band statistics, so recorded
summaries calibrate it as well as replayed states do.
"""

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

from monitors.spectral import participation_ratios

__all__ = [
    "LEVEL_QUANTILE",
    "MIN_NOVEL_STATES",
    "NOVEL_PR",
    "band_recurrence_levels",
    "fit_rank_floors",
    "fit_recurrence_levels",
    "novel_participation_ratios",
    "rank_overlay",
    "recurrent_rows",
]

NOVEL_PR = "pr_novel"  # the per-band feature name: ``<band>.pr_novel``
MIN_NOVEL_STATES = 8  # fewer novel states than this and the window's novel PR is not defined
Key = TypeVar("Key", int, str)  # a captured layer, or a band's name
# A state recurs above its layer's median healthy recurrence: the definition's level (see docs/EVALUATION.md).
LEVEL_QUANTILE = 0.5


def recurrent_rows(unit: np.ndarray, n: np.ndarray, ages: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Which rows of each window recur: cosine above the window's level to a real row at least two tokens away.

    ``unit``: row-normalised Gram matrices ``[W, T, T]``; ``n``: real rows per window; ``ages``: how many
    tokens ago each slot was written ``[W, T]`` (slots with age ≥ n are padding); ``levels``: per window.
    """
    real = ages < n[:, None]
    apart = np.abs(ages[:, :, None] - ages[:, None, :]) > 1
    candidates = apart & real[:, None, :] & real[:, :, None]
    return (np.where(candidates, unit, -1.0) > levels[:, None, None]).any(axis=2) & real


def novel_participation_ratios(
    unit: np.ndarray, n: np.ndarray, ages: np.ndarray, levels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each window's PR over its non-recurrent rows, NaN where fewer than :data:`MIN_NOVEL_STATES` remain;
    and how many rows remained."""
    real = ages < n[:, None]
    keep = (real & ~recurrent_rows(unit, n, ages, levels)).astype(np.float64)
    kept = keep.sum(axis=1)
    masked = unit * keep[:, :, None] * keep[:, None, :]  # removed rows become padding: zero rows add nothing
    pr = participation_ratios(masked, np.maximum(kept, 1.0))
    return np.where(kept >= MIN_NOVEL_STATES, pr, np.nan), kept


def fit_recurrence_levels(recurrence: Mapping[Key, np.ndarray], quantile: float) -> dict[Key, float]:
    """Per layer (or band), the cosine that healthy traffic's per-token recurrence (largest cosine to an earlier,
    non-adjacent state of the window) stays under at ``quantile``."""
    return {key: float(np.quantile(values, quantile)) for key, values in recurrence.items() if len(values)}


def band_recurrence_levels(
    recurrence: Mapping[str, np.ndarray], band_layers: Mapping[str, Sequence[int]], quantile: float
) -> dict[int, float]:
    """The levels of :func:`fit_recurrence_levels` from *band* recurrence (per token, the mean over the band's
    layers: what a recording holds): each band's ``quantile``, the level of every layer of the band."""
    return {
        layer: level
        for band, level in fit_recurrence_levels(recurrence, quantile).items()
        for layer in band_layers[band]
    }


def fit_rank_floors(band_lows: Sequence[Mapping[str, float]], fpr: float) -> dict[str, float]:
    """Per band, a floor such that at most a fraction ``fpr`` of healthy generations go below *any* band's.

    ``band_lows``: one mapping per healthy generation, band -> the lowest value its tracked novel PR held for
    the calibrated persistence (from replayed states), or the lowest novel PR in its recorded summary (a
    stricter statistic: fitting on it gives floors no higher). Bands missing from a generation (too short,
    or all recurrent) do not count. Every band's floor is the same quantile ``q`` of its lows, ``q`` the
    largest (of ``fpr`` and below) for which the union of the bands stays within ``fpr``.
    """
    bands = sorted({band for lows in band_lows for band in lows})
    values = {band: np.array([lows[band] for lows in band_lows if band in lows], dtype=np.float64) for band in bands}
    floors: dict[str, float] = {}
    for q in np.linspace(fpr, 0.0, 101):
        floors = {band: float(np.quantile(v, q)) for band, v in values.items() if len(v)}
        below = [any(lows.get(band, np.inf) < floor for band, floor in floors.items()) for lows in band_lows]
        if not below or np.mean(below) <= fpr:
            break
    return floors


def rank_overlay(
    levels: Mapping[int, float], floors: Mapping[str, float], persistence: int, notes: Mapping[str, object]
) -> dict:
    """The calibration overlay (``<model>.rank.json``) for these levels and floors: one ``rank`` signal per
    band on ``<band>.rank_margin`` (novel PR minus floor, low below 0), held ``persistence`` tokens."""
    signals = [
        {
            "name": f"{band}.rank_margin",
            "direction": "low",
            "threshold": 0.0,
            "family": "rank",
            "persistence": persistence,
        }
        for band in floors
    ]
    return {
        "recurrence_levels": {str(layer): level for layer, level in levels.items()},
        "rank_floors": dict(floors),
        "signals": signals,
        "notes": dict(notes),
    }
