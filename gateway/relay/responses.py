"""The report of a Responses API answer (``/v1/responses`` on the ``vllm`` backend).

vLLM's Responses API does not name the tokens of its events, but the plugin publishes every generated
token's features, and the answer's ``usage.output_tokens`` says how many there were: once the answer (or
its final stream event, ``response.completed``) arrives, the reporter takes that many features in order
and runs them through a monitor. This is the reporter of the policies that do not act (annotate,
observe): nothing is held back (the report's ``gate.action`` says ``annotate``, or ``pass``); under block
and rescue :mod:`gateway.relay.responses_gate` holds the events back instead.
"""

from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import Policy
from gateway.protocol.stability import GateReport
from gateway.relay.seam import FeatureSource
from gateway.request_metrics import GateOutcome
from monitors.verdict import UNCALIBRATED

__all__ = ["ResponsesReporter"]


class ResponsesReporter:
    """Builds the ``stability`` object of one Responses answer from its tokens' features."""

    def __init__(self, features: FeatureSource, monitor: RequestMonitor, policy: Policy) -> None:
        self._features = features
        self._monitor = monitor
        self._policy = policy
        self._outcome: GateOutcome | None = None

    async def report(self, final: dict) -> dict | None:
        response = final.get("response") if isinstance(final.get("response"), dict) else final
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        count = usage.get("output_tokens")
        count = count if isinstance(count, int) and count > 0 else 0
        for index in range(count):
            features = await self._features.take(index, None)
            if features is not None:
                self._monitor.observe(features)
        report = self._monitor.report()
        report.policy = self._policy.value
        report.covered = {"output": self._monitor.tokens}
        verdict = self._monitor.verdict.level.value if self._monitor.tokens else "ok"
        action = "annotate" if self._policy is Policy.ANNOTATE else "pass"
        refused = self._policy.acts and not self._monitor.judges  # block or rescue on an uncalibrated model
        report.gate = GateReport(
            action="none" if refused else action,
            reason=UNCALIBRATED if refused else None,
            detected=verdict,
            holdback_tokens=0,
        )
        self._outcome = GateOutcome(
            policy=self._policy.value,
            action="none" if refused else action,
            verdict=verdict if self._monitor.judges else UNCALIBRATED,
            fired=self._monitor.tokens > 0 and self._monitor.verdict.fired,
            rescue=None,
            rescue_attempts=(),
            withheld_tokens=0,
            discarded_tokens=0,
            band_stats=self._monitor.band_stats(),
        )
        return report.model_dump(mode="json") if self._policy is not Policy.OBSERVE else None

    def outcome(self) -> GateOutcome | None:
        return self._outcome

    def close(self) -> None:
        self._features.close()
