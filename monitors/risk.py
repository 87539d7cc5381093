"""``stability.risk``: a calibrated probability that a generation is sinking, from the detector's score.

The detector's score after a token is the largest margin, in normal-traffic standard deviations, by
which any of its signals has stayed past its alarm level for the signal's persistence (negative while
none has; a verdict fires past 0). A generation's score so far is the running maximum. An isotonic
regression fitted on the tune split (each whole generation's score against its label) maps it to a
probability: monotone, and honest where scores tie (healthy generations often sit exactly at a
threshold set on them), which a logistic curve is not. An operator can then act at a chosen risk instead
of at the calibrated alarm level.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SCORE_CLIP", "RiskModel", "fit_risk"]

# Scores are clipped to this range: far past any threshold the probability is settled anyway.
SCORE_CLIP = 10.0
# Pseudo-counts that keep a fitted probability off exactly 0 and 1 (a handful of generations never proves
# that something cannot happen).
PRIOR_WEIGHT = 1.0


@dataclass(frozen=True)
class RiskModel:
    """A non-decreasing step function: ``probabilities[i]`` from ``scores[i]`` up to the next score."""

    scores: tuple[float, ...]
    probabilities: tuple[float, ...]

    def probability(self, score: float) -> float:
        """The calibrated probability of sinking at this score."""
        step = int(np.searchsorted(self.scores, min(max(score, -SCORE_CLIP), SCORE_CLIP), side="right")) - 1
        return self.probabilities[max(step, 0)]


def fit_risk(scores: Sequence[float], sinking: Sequence[bool]) -> RiskModel:
    """Isotonic regression of ``sinking`` on the clipped score (pool-adjacent-violators over the distinct
    scores), each block's rate shrunk toward the overall rate by ``PRIOR_WEIGHT`` pseudo-generations (and
    kept non-decreasing, which the shrinkage of small blocks could break)."""
    x = np.clip(np.asarray(scores, dtype=np.float64), -SCORE_CLIP, SCORE_CLIP)
    y = np.asarray(sinking, dtype=np.float64)
    prior = float(y.mean()) if len(y) else 0.5
    values, inverse = np.unique(x, return_inverse=True)
    blocks = [[float(v), float(y[inverse == i].sum()), float((inverse == i).sum())] for i, v in enumerate(values)]
    merged: list[list[float]] = []
    for block in blocks:
        merged.append(block)
        while len(merged) > 1 and merged[-2][1] / merged[-2][2] >= merged[-1][1] / merged[-1][2]:
            last = merged.pop()
            merged[-1] = [merged[-1][0], merged[-1][1] + last[1], merged[-1][2] + last[2]]
    rates = np.maximum.accumulate([(s + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT) for _, s, n in merged])
    return RiskModel(scores=tuple(b[0] for b in merged), probabilities=tuple(float(r) for r in rates))
