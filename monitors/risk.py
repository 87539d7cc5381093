"""``stability.risk``: a calibrated probability that a generation is sinking, from the detector's score.

The detector's score after a token is the largest margin, in normal-traffic standard deviations, by
which any of its signals has stayed past its alarm level for the signal's persistence (negative while
none has; 0 is exactly where the verdict fires). A generation's score so far is the running maximum. A
logistic curve fitted on the tune split (score of each whole generation against its label) maps it to a
probability, so an operator can act at a chosen risk instead of at the calibrated alarm level.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SCORE_CLIP", "RiskModel", "fit_risk"]

# Scores are clipped to this range: far past any threshold the probability is settled anyway.
SCORE_CLIP = 10.0


@dataclass(frozen=True)
class RiskModel:
    """``risk = 1 / (1 + exp(-(slope * score + intercept)))``; ``slope`` is positive."""

    slope: float
    intercept: float

    def probability(self, score: float) -> float:
        """The calibrated probability of sinking at this score."""
        z = self.slope * min(max(score, -SCORE_CLIP), SCORE_CLIP) + self.intercept
        return 1.0 / (1.0 + math.exp(-z))


def fit_risk(scores: Sequence[float], sinking: Sequence[bool], l2: float = 1e-3, steps: int = 50) -> RiskModel:
    """Logistic regression of ``sinking`` on the clipped score by Newton's method (a light ridge keeps it
    finite when the classes separate)."""
    x = np.clip(np.asarray(scores, dtype=np.float64), -SCORE_CLIP, SCORE_CLIP)
    y = np.asarray(sinking, dtype=np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (p - y) + l2 * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.eye(2)
        w -= np.linalg.solve(hessian, gradient)
    return RiskModel(slope=float(max(w[0], 1e-6)), intercept=float(w[1]))
