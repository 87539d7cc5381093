"""Streaming detector: smooths each calibrated signal, tracks threshold crossings, emits a verdict."""

from dataclasses import dataclass

from monitors.calibration import Calibration, SignalThreshold
from monitors.features import StepFeatures
from monitors.text import RepetitionTracker
from monitors.verdict import Reason, Verdict, VerdictLevel

REPETITION_SIGNAL = "text.repetition"


@dataclass
class _SignalState:
    spec: SignalThreshold
    smoothed: float | None = None
    run: int = 0
    since: int | None = None

    def update(self, value: float, alpha: float, index: int) -> bool:
        self.smoothed = value if self.smoothed is None else alpha * value + (1 - alpha) * self.smoothed
        if self.spec.crossed(self.smoothed):
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


class StabilityDetector:
    """One per generation: feed it :class:`StepFeatures`, read back a :class:`Verdict` after each token."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self._alpha = 2.0 / (calibration.ewma_span + 1)
        self._signals = [_SignalState(spec) for spec in calibration.signals]
        self._repetition = RepetitionTracker()
        self._onset: int | None = None
        self._last_stable: int | None = None
        self._fired_level = VerdictLevel.OK
        self._stats = _RunningStats()
        self.verdict = Verdict(VerdictLevel.OK, token_index=-1)

    def update(self, features: StepFeatures) -> Verdict:
        """Take one token's features; return the verdict so far (a fired verdict is sticky)."""
        values = usable_values(features, self.calibration.window)
        values[REPETITION_SIGNAL] = self._repetition.push(features.token_id)
        self._stats.add(values, self.calibration.rank_floors)
        crossing = []
        for state in self._signals:
            value = values.get(state.spec.name)
            if value is None:
                continue
            if state.update(value, self._alpha, features.index) and state.run >= self.calibration.persistence:
                crossing.append(state)
        level = self._level(crossing)
        if crossing and self._onset is None:
            self._onset = min(s.since for s in crossing)
        if not crossing and self._fired_level is VerdictLevel.OK:
            self._last_stable = features.index
        if level.severity > self._fired_level.severity:
            self._fired_level = level
        reasons = tuple(Reason(s.spec.name, s.smoothed, s.spec.threshold, s.spec.direction, s.since) for s in crossing)
        self.verdict = Verdict(
            level=max(level, self._fired_level, key=lambda v: v.severity),
            token_index=features.index,
            reasons=reasons or self.verdict.reasons,
            onset_token=self._onset,
            last_stable_token=self._last_stable,
        )
        return self.verdict

    def _level(self, crossing: list[_SignalState]) -> VerdictLevel:
        if any(s.spec.family == "rank" for s in crossing):
            return VerdictLevel.RANK_EXHAUSTION
        if sum(s.spec.family == "sink" for s in crossing) >= self.calibration.min_agreeing:
            return VerdictLevel.SINK
        return VerdictLevel.WARN if crossing else VerdictLevel.OK

    def summary(self) -> dict:
        """Per-band and global statistics of the generation so far, for the stability report."""
        return self._stats.summary()


class _RunningStats:
    """Means and extremes of the features over a generation, with the rank margin to each band's floor."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._min: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def add(self, values: dict[str, float], floors: dict[str, float]) -> None:
        extended = dict(values)
        for band, floor in floors.items():
            if f"{band}.pr" in values:
                extended[f"{band}.rank_margin"] = values[f"{band}.pr"] - floor
        for name, value in extended.items():
            self._sum[name] = self._sum.get(name, 0.0) + value
            self._count[name] = self._count.get(name, 0) + 1
            self._min[name] = min(self._min.get(name, value), value)

    def summary(self) -> dict:
        bands: dict[str, dict[str, float]] = {}
        overall: dict[str, float] = {}
        for name, total in self._sum.items():
            mean = total / self._count[name]
            band, _, metric = name.rpartition(".")
            if band and band != "text":
                entry = bands.setdefault(band, {})
                entry[f"{metric}_mean"] = round(mean, 4)
                if metric in ("pr", "rank_margin"):
                    entry[f"{metric}_min"] = round(self._min[name], 4)
            else:
                overall[f"{name.replace('.', '_')}_mean"] = round(mean, 4)
        return {"bands": bands, **overall}
