"""Variants of the periodicity tracker for the evaluation: their options, their cost, their trajectories."""

import time
from collections.abc import Sequence
from dataclasses import dataclass

from lab.eval.dataset import Generation
from monitors.detector import PERIODICITY_SIGNAL
from monitors.text import MAX_PERIOD, PERIOD_JITTER, PERIODICITY_WINDOW, PeriodicityTracker, periodicity_trajectory

__all__ = ["PREVIOUS", "SERVED", "Variant", "tokens_per_second", "with_variant"]


@dataclass(frozen=True)
class Variant:
    """The tracker's options: the longest period it sees, the period change it tolerates, its window."""

    max_period: int
    jitter: int
    window: int

    @property
    def name(self) -> str:
        return f"max_period={self.max_period} jitter={self.jitter} window={self.window}"

    def options(self) -> dict[str, int]:
        return {"max_period": self.max_period, "jitter": self.jitter, "window": self.window}


SERVED = Variant(MAX_PERIOD, PERIOD_JITTER, PERIODICITY_WINDOW)
# The tracker served before the long-period work of issue 20: periods up to 64 tokens, exact.
PREVIOUS = Variant(64, 0, PERIODICITY_WINDOW)


def tokens_per_second(variant: Variant, token_ids: Sequence[int]) -> float:
    """Tokens a tracker of this variant takes per second (one push per decode step, as the detector does)."""
    tracker = PeriodicityTracker(**variant.options())
    started = time.perf_counter()
    for token_id in token_ids:
        tracker.push(token_id)
    return len(token_ids) / (time.perf_counter() - started)


def with_variant(generations: Sequence[Generation], variant: Variant) -> list[Generation]:
    """The generations with this variant's periodicity trajectory in place of the served one's."""
    return [
        Generation(
            g.entry,
            g.label,
            {
                **g.trajectories,
                PERIODICITY_SIGNAL: periodicity_trajectory(list(g.entry.output_ids), **variant.options()),
            },
        )
        for g in generations
    ]
