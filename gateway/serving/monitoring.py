"""Runs a generation's features through the detector and turns the result into a stability report."""

from gateway import metrics
from gateway.protocol.stability import BandReport, StabilityReason, StabilityReport
from monitors.calibration import Calibration
from monitors.detector import StabilityDetector
from monitors.features import StepFeatures
from monitors.verdict import Verdict


class RequestMonitor:
    """One per request: feed it each token's features; ask it for the verdict and the report."""

    def __init__(self, calibration: Calibration, policy: str) -> None:
        self.calibration = calibration
        self.policy = policy
        self._detector = StabilityDetector(calibration)
        self.tokens = 0

    def observe(self, features: StepFeatures) -> Verdict:
        """Update the detector with one token."""
        self.tokens += 1
        return self._detector.update(features)

    @property
    def verdict(self) -> Verdict:
        return self._detector.verdict

    def report(self) -> StabilityReport:
        """The ``stability`` object for the response."""
        verdict = self._detector.verdict
        summary = self._detector.summary()
        bands = {
            band.name: BandReport(layers=list(band.layers), **summary["bands"].get(band.name, {}))
            for band in self.calibration.bands
        }
        return StabilityReport(
            verdict=verdict.level.value,
            reasons=[StabilityReason(**r.to_dict()) for r in verdict.reasons],
            onset_token=verdict.onset_token,
            last_stable_token=verdict.last_stable_token,
            tokens_monitored=self.tokens,
            entropy_mean=summary.get("entropy_mean"),
            repetition_mean=summary.get("text_repetition_mean"),
            bands=bands,
            calibration=f"{self.calibration.model}@{self.calibration.created}",
            policy=self.policy,
        )

    def record_metrics(self, model: str) -> None:
        """Export the final verdict and the per-band statistics."""
        if self.tokens == 0:
            return
        metrics.VERDICTS.labels(model, self._detector.verdict.level.value).inc()
        for band, stats in self._detector.summary()["bands"].items():
            if "pr_mean" in stats:
                metrics.PARTICIPATION_RATIO.labels(model, band).observe(stats["pr_mean"])
            if "rank_margin_min" in stats:
                metrics.RANK_MARGIN.labels(model, band).observe(stats["rank_margin_min"])
