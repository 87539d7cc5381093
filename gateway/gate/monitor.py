"""Runs a generation's features through the detector and turns the result into a stability report."""

from dataclasses import replace

from gateway.generation import SamplingParams
from gateway.protocol.stability import BandReport, SignalValues, StabilityReason, StabilityReport
from gateway.recording.shadow import ShadowRecording
from monitors.calibration import Calibration
from monitors.detector import StabilityDetector
from monitors.features import StepFeatures
from monitors.prefill import PREFILL_FEATURE, RequestSampling
from monitors.verdict import UNCALIBRATED, Verdict

__all__ = ["RequestMonitor", "prefill_sampling", "shifted"]


def prefill_sampling(params: SamplingParams) -> RequestSampling:
    """What the prefill risk's prior reads of a generation request's sampling."""
    return RequestSampling(
        temperature=params.temperature,
        repetition_penalty=params.repetition_penalty,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        max_logit_bias=max(params.logit_bias.values(), default=0.0),
        max_tokens=params.max_tokens or RequestSampling.max_tokens,
    )


class RequestMonitor:
    """One per generation attempt: feed it each token's features; ask it for the verdict and the report."""

    def __init__(self, calibration: Calibration, recording: ShadowRecording | None = None) -> None:
        self.calibration = calibration
        self.recording = recording
        self._detector = StabilityDetector(calibration)
        self._offset = 0
        self._sampling: RequestSampling | None = None
        self.tokens = 0
        self.prefill_risk: float | None = None

    def expect_prefill(self, sampling: RequestSampling) -> None:
        """Compute the prefill risk from the first token's features (the prompt's last position) and the
        request's ``sampling``, when the calibration has a prefill probe."""
        self._sampling = sampling

    def prime(self, token_ids: list[int]) -> None:
        """Continue after an accepted prefix (a rescue): the detector's text history starts with it, and
        verdicts count tokens from the start of the completion rather than of this attempt."""
        self._detector.prime(token_ids)
        self._offset = len(token_ids)

    def observe(self, features: StepFeatures) -> Verdict:
        """Update the detector with one token."""
        self.tokens += 1
        probe = self.calibration.prefill_probe
        prompt_score = features.values.get(PREFILL_FEATURE)
        if self.tokens == 1 and probe is not None and prompt_score is not None and self._sampling is not None:
            self.prefill_risk = round(probe.risk(prompt_score, self._sampling), 4)
            self._detector.note_prefill_risk(self.prefill_risk)
        self._detector.update(features)
        if self.recording is not None:
            self.recording.trace.add(self._detector.values)
        return self.verdict

    def finish(self, finish_reason: str, token_ids: list[int]) -> None:
        """The generation ended well: write its record when it is being recorded (shadow mode)."""
        if self.recording is not None:
            self.recording.finish(finish_reason, token_ids)

    @property
    def judges(self) -> bool:
        """False for a model without a calibration: its verdict is always ``ok`` and means nothing."""
        return self.calibration.calibrated

    @property
    def verdict(self) -> Verdict:
        """The detector's verdict, indexed in the completion."""
        return shifted(self._detector.verdict, self._offset)

    def report(self) -> StabilityReport:
        """The ``stability`` object for this attempt (the gate adds its own section); an uncalibrated model's
        says ``uncalibrated`` and carries the raw signals instead of reasons."""
        verdict = self.verdict
        summary = self._detector.summary()
        layers = {band.name: list(band.layers) for band in self.calibration.bands}
        if not self.judges:  # bands named by the features alone: an uncalibrated vLLM upstream's own thirds
            layers |= {name: [] for name in summary["bands"] if name not in layers}
        bands = {name: BandReport(layers=layers[name], **summary["bands"].get(name, {})) for name in layers}
        if not self.judges:
            return StabilityReport(
                verdict=UNCALIBRATED,
                reason=UNCALIBRATED,
                tokens_monitored=self.tokens,
                entropy_mean=summary.get("entropy_mean"),
                repetition_mean=summary.get("text_periodicity_mean"),
                bands=bands,
                signals={name: SignalValues(**values) for name, values in self._detector.signals().items()},
            )
        return StabilityReport(
            verdict=verdict.level.value,
            reasons=[StabilityReason(**r.to_dict()) for r in verdict.reasons],
            onset_token=verdict.onset_token,
            last_stable_token=verdict.last_stable_token,
            tokens_monitored=self.tokens,
            entropy_mean=summary.get("entropy_mean"),
            repetition_mean=summary.get("text_periodicity_mean"),
            risk=None if verdict.risk is None else round(verdict.risk, 4),
            prefill_risk=self.prefill_risk,
            bands=bands,
            calibration=f"{self.calibration.model}@{self.calibration.created}",
        )

    def band_stats(self) -> dict[str, dict[str, float]]:
        """Per-band window statistics of this attempt (empty before its first token)."""
        return self._detector.summary()["bands"] if self.tokens else {}


def shifted(verdict: Verdict, offset: int) -> Verdict:
    """``verdict`` with its token indices moved ``offset`` tokens later."""
    if not offset:
        return verdict

    def later(index: int | None) -> int | None:
        return None if index is None else index + offset

    return replace(
        verdict,
        token_index=verdict.token_index + offset,
        reasons=tuple(replace(r, since_token=r.since_token + offset) for r in verdict.reasons),
        onset_token=later(verdict.onset_token),
        last_stable_token=later(verdict.last_stable_token),
    )
