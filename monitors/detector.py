"""Streaming detector: tracks each calibrated signal (EWMA or CUSUM), counts persistent crossings, emits a verdict.

Every signal has its own calibrated alarm level (see :mod:`monitors.calibration`); the verdict is
``rank_exhaustion`` when a rank-floor signal holds past its level, ``sink`` when at least
``min_agreeing`` sink signals do, and ``warn`` while some signal is past its level but not yet for
``persistence`` tokens (or too few agree).

With a prefill probe whose alarm level the request's prefill risk reaches (:mod:`monitors.prefill`), the
verdict is ``sink`` from the first token, with the reason ``prefill.risk`` and no stable token.

Beside the verdict it keeps a score: the largest margin (in normal-traffic standard deviations) by which
any signal has held past its level for its persistence, maximised over the generation so far; with the
calibration's risk model that is ``stability.risk`` (:mod:`monitors.risk`).
"""

from collections import deque
from dataclasses import dataclass, field

from monitors.calibration import CUSUM_SLACK, Calibration, SignalThreshold
from monitors.features import StepFeatures
from monitors.rank_exhaustion import NOVEL_PR
from monitors.risk import SCORE_CLIP
from monitors.text import PeriodicityTracker
from monitors.verdict import Reason, Verdict, VerdictLevel

__all__ = ["PERIODICITY_SIGNAL", "PREFILL_SIGNAL", "StabilityDetector", "usable_values"]

PERIODICITY_SIGNAL = "text.periodicity"
PREFILL_SIGNAL = "prefill.risk"


@dataclass
class _SignalState:
    spec: SignalThreshold
    persistence: int
    statistic: float | None = None
    run: int = 0
    since: int | None = None
    margins: deque[float] = field(default_factory=deque)

    @property
    def held_margin(self) -> float:
        """The margin past the threshold this signal has held for its whole persistence (-SCORE_CLIP before)."""
        return min(self.margins) if len(self.margins) >= self.persistence else -SCORE_CLIP

    def update(self, value: float, alpha: float, index: int) -> bool:
        if self.spec.span:
            alpha = 2.0 / (self.spec.span + 1)
        if self.spec.method == "cusum":
            excess = self.spec.standardised(value) - CUSUM_SLACK
            self.statistic = max(0.0, (self.statistic or 0.0) + excess)
        else:
            self.statistic = value if self.statistic is None else alpha * value + (1 - alpha) * self.statistic
        self.margins.append(self.spec.margin(self.statistic))
        if len(self.margins) > self.persistence:
            self.margins.popleft()
        if self.spec.crossed(self.statistic):
            self.run += 1
            self.since = index if self.since is None else self.since
        else:
            self.run, self.since = 0, None
        return self.run > 0


def usable_values(features: StepFeatures, window: int) -> dict[str, float]:
    """The features comparable to calibration: window statistics only once the window is full."""
    if features.window >= window:
        return dict(features.values)
    return {name: v for name, v in features.values.items() if "." not in name}


def with_rank_margins(values: dict[str, float], floors: dict[str, float]) -> dict[str, float]:
    """``values`` plus ``<band>.rank_margin = <band>.pr_novel - floor`` for every band with a calibrated floor
    and a novel PR this token (see :mod:`monitors.rank_exhaustion`)."""
    margins = {
        f"{band}.rank_margin": values[f"{band}.{NOVEL_PR}"] - floor
        for band, floor in floors.items()
        if f"{band}.{NOVEL_PR}" in values
    }
    return {**values, **margins}


class StabilityDetector:
    """One per generation: feed it :class:`StepFeatures`, read back a :class:`Verdict` after each token."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self._alpha = 2.0 / (calibration.ewma_span + 1)
        self._signals = [
            _SignalState(spec, spec.persistence or calibration.persistence) for spec in calibration.signals
        ]
        self._periodicity = PeriodicityTracker()
        self.score = -SCORE_CLIP
        self._primed_tokens = 0
        self._onset: int | None = None
        self._last_stable: int | None = None
        self._fired_level = VerdictLevel.OK
        self._stats = _RunningStats()
        self._prefill_alarm: Reason | None = None
        self._prefill_risk: float | None = None
        self.verdict = Verdict(VerdictLevel.OK, token_index=-1)
        self.values: dict[str, float] = {}  # the last token's signals, as the thresholds saw them

    def note_prefill_risk(self, risk: float) -> None:
        """Before the first token: a prefill risk at the calibration's alarm level fires the verdict from it,
        and the verdict's ``risk`` is never below it (see :meth:`_risk`)."""
        probe = self.calibration.prefill_probe
        self._prefill_risk = risk
        if probe is not None and probe.alarms(risk):
            self._prefill_alarm = Reason(PREFILL_SIGNAL, risk, float(probe.alarm_level), "high", 0)

    def prime(self, token_ids: list[int]) -> None:
        """Seed the text history with tokens already accepted (a rescue continues after them)."""
        for token_id in token_ids:
            self._periodicity.push(token_id)
        self._primed_tokens += len(token_ids)

    def update(self, features: StepFeatures) -> Verdict:
        """Take one token's features; return the verdict so far.

        ``sink`` and ``rank_exhaustion`` are sticky; ``warn`` holds only while a signal crosses its
        threshold, and the last stable token moves on again once it stops.
        """
        values = with_rank_margins(usable_values(features, self.calibration.window), self.calibration.rank_floors)
        values[PERIODICITY_SIGNAL] = self._periodicity.push(features.token_id)
        self._stats.add(values)
        self.values = values
        crossing, persistent = [], []
        for state in self._signals:
            value = values.get(state.spec.name)
            if value is None:
                continue
            if state.update(value, self._alpha, features.index):
                crossing.append(state)
                if state.run >= state.persistence:
                    persistent.append(state)
            self.score = max(self.score, state.held_margin)
        level = self._level(crossing, persistent)
        alarm = self._prefill_alarm
        if alarm is not None:
            level = max(level, VerdictLevel.SINK, key=lambda v: v.severity)
        fired = self._fired_level is not VerdictLevel.OK
        if persistent and self._onset is None:
            self._onset = min(s.since for s in persistent)
        elif not persistent and not fired:
            self._onset = None if alarm is None else alarm.since_token
        if not crossing and not fired and alarm is None:
            self._last_stable = features.index
        if level.severity >= 2 and level.severity > self._fired_level.severity:
            if not fired:
                self._last_stable = self._stable_before_repetition(self._last_stable)
            self._fired_level = level
        reasons = tuple(
            Reason(s.spec.name, s.statistic, s.spec.threshold, s.spec.direction, s.since) for s in persistent
        ) + ((alarm,) if alarm is not None else ())
        self.verdict = Verdict(
            level=max(level, self._fired_level, key=lambda v: v.severity),
            token_index=features.index,
            reasons=reasons or (self.verdict.reasons if fired else ()),
            onset_token=self._onset,
            last_stable_token=self._last_stable,
            expected_lead_tokens=self.calibration.expected_lead_tokens,
            risk=self._risk(),
        )
        return self.verdict

    def _risk(self) -> float | None:
        """``stability.risk``: the probability of sinking the signals' score so far gives, or the prefill risk
        when that is higher (both are calibrated probabilities that this generation loops), so a request the
        prefill alarm fires on reports the risk it fired at, and ``--block-at`` weighs both alike. None
        without a risk model (a traffic calibration has none: it has no labels)."""
        if self.calibration.risk is None:
            return None
        from_signals = self.calibration.risk.probability(self.score)
        return from_signals if self._prefill_risk is None else max(from_signals, self._prefill_risk)

    def _stable_before_repetition(self, last_stable: int | None) -> int | None:
        """Move the last stable token back before the repetitive stretch under way, if any: a loop's text
        starts repeating before the smoothed signals cross. Never into tokens primed from an earlier attempt."""
        start = self._periodicity.stretch_start
        if start is None or start < self._primed_tokens:
            return last_stable
        before = start - self._primed_tokens - 1
        return before if last_stable is None else min(last_stable, before)

    def _level(self, crossing: list[_SignalState], persistent: list[_SignalState]) -> VerdictLevel:
        """This token's level. A visible loop is ``sink`` even where a rank floor is crossed too: rank
        exhaustion is the loss of directions that the text does not already show as recurrence."""
        if sum(s.spec.family == "sink" for s in persistent) >= self.calibration.min_agreeing:
            return VerdictLevel.SINK
        if any(s.spec.family == "rank" for s in persistent):
            return VerdictLevel.RANK_EXHAUSTION
        return VerdictLevel.WARN if crossing else VerdictLevel.OK

    def summary(self) -> dict:
        """Per-band and global statistics of the generation so far, for the stability report."""
        return self._stats.summary()

    def signals(self) -> dict[str, dict[str, float]]:
        """Every feature seen so far: latest value, minimum and maximum (the raw signals of an uncalibrated
        model's report, which no threshold judges)."""
        return self._stats.extremes()


class _RunningStats:
    """Means, minima, maxima and latest values of the features over a generation (rank margins included)."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._min: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._latest: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._sum[name] = self._sum.get(name, 0.0) + value
            self._count[name] = self._count.get(name, 0) + 1
            self._min[name] = min(self._min.get(name, value), value)
            self._max[name] = max(self._max.get(name, value), value)
            self._latest[name] = value

    def extremes(self) -> dict[str, dict[str, float]]:
        """Per feature: its latest value and its extremes over the generation."""
        return {
            name: {"latest": round(latest, 4), "min": round(self._min[name], 4), "max": round(self._max[name], 4)}
            for name, latest in sorted(self._latest.items())
        }

    def summary(self) -> dict:
        bands: dict[str, dict[str, float]] = {}
        overall: dict[str, float] = {}
        for name, total in self._sum.items():
            mean = total / self._count[name]
            band, _, metric = name.rpartition(".")
            if band and band != "text":
                entry = bands.setdefault(band, {})
                entry[f"{metric}_mean"] = round(mean, 4)
                if metric in ("pr", NOVEL_PR, "rank_margin"):
                    entry[f"{metric}_min"] = round(self._min[name], 4)
            else:
                overall[f"{name.replace('.', '_')}_mean"] = round(mean, 4)
        return {"bands": bands, **overall}
