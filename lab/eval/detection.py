"""Replay a calibrated :class:`monitors.detector.StabilityDetector` over a corpus generation's trajectories."""

from dataclasses import dataclass

import numpy as np

from lab.eval.dataset import Generation
from monitors.calibration import Calibration
from monitors.detector import StabilityDetector
from monitors.features import StepFeatures
from monitors.verdict import VerdictLevel

__all__ = ["detect", "step_features"]

# Trajectories that are not features of the served extractor (the detector computes text repetition itself).
_NOT_FEATURES = ("text.", "offline.", "lens.", "attn.")


@dataclass(frozen=True)
class Detection:
    """Where the detector fired (None: never), the worst level it reached, its final score (the margin behind
    ``stability.risk``) and, with a risk model, the first token at which each risk level was reached."""

    fired_at: int | None
    level: VerdictLevel
    score: float
    risk_trajectory: tuple[float, ...] = ()

    def risk_reached_at(self, level: float) -> int | None:
        """The first token where the risk was at least ``level`` (None: never, or no risk model)."""
        return next((i for i, r in enumerate(self.risk_trajectory) if r >= level), None)


def step_features(generation: Generation, window: int) -> list[StepFeatures]:
    """The StepFeatures the engine would have emitted for this generation."""
    names = [n for n in generation.trajectories if not n.startswith(_NOT_FEATURES)]
    steps = []
    for t, token in enumerate(generation.entry.output_ids):
        values = {n: float(generation.trajectories[n][t]) for n in names if np.isfinite(generation.trajectories[n][t])}
        full = any("." in n for n in values)
        steps.append(StepFeatures(index=t, token_id=token, window=window if full else 0, values=values))
    return steps


def detect(calibration: Calibration, generation: Generation) -> Detection:
    """Run the detector token by token; report the first token where its verdict fired."""
    detector = StabilityDetector(calibration)
    fired_at, risks = None, []
    for step in step_features(generation, calibration.window):
        verdict = detector.update(step)
        if verdict.fired and fired_at is None:
            fired_at = step.index
        if verdict.risk is not None:
            risks.append(verdict.risk)
    return Detection(fired_at, detector.verdict.level, detector.score, tuple(risks))
