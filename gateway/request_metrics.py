"""The one place a request's metrics are written: its series, its outcome, its tokens and its stability.

Both serving paths record through here: the full serving session (:mod:`gateway.serving.session`) and the
proxy fast path (:mod:`gateway.proxy.proxied_request`). The series of a (model, endpoint, backend) are
looked up once and kept, so the fast path pays a dictionary lookup per request, not a label resolution
per metric.
"""

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from prometheus_client import Counter

from gateway import metrics
from gateway.errors import OpenAIError
from monitors.verdict import UNCALIBRATED

__all__ = ["GateOutcome", "RequestSeries", "outcome_of"]


def outcome_of(error: BaseException | None) -> str:
    """The ``outcome`` label of a request that ended with ``error``: ok, client_error, server_error or
    cancelled."""
    if error is None:
        return "ok"
    if isinstance(error, OpenAIError):
        return "client_error" if error.status_code < 500 else "server_error"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "server_error"


@dataclass(frozen=True)
class GateOutcome:
    """What the monitors and the gate concluded for one monitored request, as the metrics need it."""

    policy: str
    action: str
    verdict: str
    fired: bool
    rescue: str | None
    rescue_attempts: tuple[str, ...]
    withheld_tokens: int
    discarded_tokens: int
    band_stats: dict[str, dict[str, float]]
    risk: float | None = None
    prefill_risk: float | None = None


class RequestSeries:
    """The labelled metric series of one (model, endpoint, backend), created once and kept."""

    _known: ClassVar[dict[tuple[str, str, str], "RequestSeries"]] = {}

    def __init__(self, model: str, endpoint: str, backend: str) -> None:
        self.model, self.endpoint, self.backend = model, endpoint, backend
        labels = (model, endpoint, backend)
        self._labels = labels
        self.in_flight = metrics.IN_FLIGHT.labels(model, endpoint)
        self.duration = metrics.REQUEST_DURATION.labels(*labels)
        self.ttft = metrics.TIME_TO_FIRST_TOKEN.labels(*labels)
        self.overhead = metrics.GATEWAY_OVERHEAD.labels(endpoint, backend)
        self.input_tokens = metrics.TOKENS.labels(model, backend, "input")
        self.output_tokens = metrics.TOKENS.labels(model, backend, "output")
        self.completion_tokens = metrics.COMPLETION_TOKENS.labels(model, backend)
        self._requests: dict[str, object] = {}

    @classmethod
    def of(cls, model: str, endpoint: str, backend: str) -> "RequestSeries":
        """The series of a served model (models come from the backend's list: a closed set)."""
        key = (model, endpoint, backend)
        series = cls._known.get(key)
        if series is None:
            series = cls._known[key] = cls(model, endpoint, backend)
        return series

    def begin(self) -> float:
        """A request started: counted in flight; the time it started."""
        self.in_flight.inc()
        return time.perf_counter()

    def first_token(self, started_at: float, at: float) -> None:
        """The client got its first text ``at`` (a ``perf_counter`` time)."""
        self.ttft.observe(at - started_at)

    def end(self, started_at: float, outcome: str, overhead: float | None = None) -> None:
        """The request ended with ``outcome``; ``overhead``: seconds spent in the gateway itself (fast path)."""
        self.in_flight.dec()
        counter = self._requests.get(outcome)
        if counter is None:
            counter = self._requests[outcome] = metrics.REQUESTS.labels(*self._labels, outcome)
        counter.inc()
        self.duration.observe(time.perf_counter() - started_at)
        if overhead is not None:
            self.overhead.observe(overhead)

    def tokens(self, prompt: int, generated: int, completion: int) -> None:
        """Tokens of a request that ended well: read, generated (rescues included) and answered."""
        self.input_tokens.inc(prompt)
        self.output_tokens.inc(generated)
        self.completion_tokens.observe(completion)

    @staticmethod
    def unmonitored(reason: str) -> None:
        """A request was relayed without monitoring, for ``reason`` (``metrics.UNMONITORED_REASONS``)."""
        metrics.UNMONITORED.labels(reason).inc()

    def stability(self, gate: GateOutcome) -> None:
        """The verdict, the bands' statistics and what the gate did, for a monitored request."""
        model = self.model
        metrics.VERDICTS.labels(model, gate.verdict).inc()
        if gate.risk is not None:
            metrics.STABILITY_RISK.labels(model).observe(gate.risk)
        if gate.prefill_risk is not None:
            metrics.PREFILL_RISK.labels(model).observe(gate.prefill_risk)
        for band, stats in gate.band_stats.items():
            if "pr_mean" in stats:
                metrics.PARTICIPATION_RATIO.labels(model, band).observe(stats["pr_mean"])
            if "rank_margin_min" in stats:
                metrics.RANK_MARGIN.labels(model, band).observe(stats["rank_margin_min"])
        reason = gate.verdict if gate.fired or gate.verdict == UNCALIBRATED else "none"
        metrics.GATE_ACTIONS.labels(model, gate.policy, gate.action, reason).inc()
        _count(metrics.RESCUE_ATTEMPTS, model, gate.rescue_attempts)
        if gate.rescue is not None:
            metrics.RESCUES.labels(model, gate.rescue).inc()
        metrics.TOKENS_WITHHELD.labels(model).inc(gate.withheld_tokens)
        metrics.TOKENS_DISCARDED.labels(model).inc(gate.discarded_tokens)


def _count(counter: Counter, model: str, outcomes: Iterable[str]) -> None:
    for outcome in outcomes:
        counter.labels(model, outcome).inc()
