"""What a detector says about a generation: a level, the reasons behind it, and when it started."""

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["UNCALIBRATED", "Reason", "Verdict", "VerdictLevel"]

# What the report and the metrics say instead of a level for a model served without a calibration: its
# monitors run, nothing judges them (``monitors.model_profile.uncalibrated``).
UNCALIBRATED = "uncalibrated"


class VerdictLevel(StrEnum):
    """Ordered from harmless to worst; ``ok`` < ``warn`` < ``sink`` = ``rank_exhaustion``."""

    OK = "ok"
    WARN = "warn"
    SINK = "sink"
    RANK_EXHAUSTION = "rank_exhaustion"

    @property
    def severity(self) -> int:
        """0 for ok, 1 for warn, 2 for the two collapse modes."""
        return {"ok": 0, "warn": 1}.get(self.value, 2)


@dataclass(frozen=True, slots=True)
class Reason:
    """One signal past its calibrated threshold."""

    signal: str
    value: float
    threshold: float
    direction: str
    since_token: int

    def to_dict(self) -> dict:
        """JSON-ready form for the stability report."""
        return {
            "signal": self.signal,
            "value": round(self.value, 4),
            "threshold": round(self.threshold, 4),
            "direction": self.direction,
            "since_token": self.since_token,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The detector's state after a token: level, reasons, onset and the last stable token.

    ``expected_lead_tokens`` is the calibrated estimate of how many tokens this detector fires before
    the text-level repetition detector would (median over the calibration's sinking generations);
    ``risk`` the calibrated probability that the generation is sinking (None without a risk model).
    """

    level: VerdictLevel
    token_index: int
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    onset_token: int | None = None
    last_stable_token: int | None = None
    expected_lead_tokens: float | None = None
    risk: float | None = None

    @property
    def fired(self) -> bool:
        """True for ``sink`` and ``rank_exhaustion``: the verdicts a gate acts on."""
        return self.level.severity >= 2
