"""Prometheus metrics, declared once with fixed label names; label values come from closed sets.

Request metrics follow the OpenTelemetry GenAI conventions where they fit (operation = endpoint,
token type = input/output); units are seconds; counters end in ``_total``.
"""

import asyncio

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from monitors.calibration import Calibration
from monitors.verdict import UNCALIBRATED, VerdictLevel

__all__ = [
    "AUTH_FAILURES",
    "BUILD_INFO",
    "COMPLETION_TOKENS",
    "ENGINE_ACTIVE",
    "ENGINE_WAITING",
    "ERRORS",
    "GATEWAY_OVERHEAD",
    "GATE_ACTIONS",
    "HTTP_REFUSED",
    "IN_FLIGHT",
    "PARTICIPATION_RATIO",
    "PREFILL_RISK",
    "RANK_MARGIN",
    "RATE_LIMITED",
    "RECORDED_GENERATIONS",
    "RECORDING_FAILURES",
    "REQUESTS",
    "REQUEST_DURATION",
    "RESCUES",
    "RESCUE_ATTEMPTS",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS",
    "TOKENS_DISCARDED",
    "TOKENS_WITHHELD",
    "UNMONITORED",
    "UNMONITORED_REASONS",
    "UPSTREAM_ERRORS",
    "UPSTREAM_IN_FLIGHT",
    "UPSTREAM_REQUESTS",
    "UPSTREAM_UP",
    "VERDICTS",
    "VLLM_STATS",
    "calibration_in_force",
    "endpoint_label",
    "model_ready",
    "watch_event_loop",
]

# No ``*_created`` series: they double the series count and nothing here queries them.
disable_created_metrics()

# OpenTelemetry GenAI advisory boundaries (gen_ai.server.request.duration, gen_ai.server.time_to_first_token),
# extended upwards because CPU decoding of long completions takes minutes.
LATENCY_BUCKETS = tuple(0.01 * 2**i for i in range(16))  # 0.01 s doubling to 327.68 s
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40)
# Row-normalised PR of a window is at most the window length (32 by default). Normal requests of the shipped
# model average 11 to 19 per band; half steps around its calibrated rank floors (6.5 to 7.5) resolve collapses.
PR_BUCKETS = (1, 2, 3, 4, 5, 6, 6.5, 7, 7.5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 24, 32)
# Lowest margin above the calibrated floor (normal requests: about 2 to 10); ``le="0.0"`` counts dips below it.
RISK_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
MARGIN_BUCKETS = (-8, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
# OpenTelemetry gen_ai.client.token.usage boundaries, with 128/512/2048/8192 for short-context models.
TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)

BUILD_INFO = Info("sinkwatch_build", "Version and backend of this gateway")

REQUESTS = Counter(
    "sinkwatch_requests_total",
    "Requests finished, by outcome (ok, client_error, server_error, cancelled)",
    ["model", "endpoint", "backend", "outcome"],
)
ERRORS = Counter(
    "sinkwatch_errors_total",
    "Error responses sent, by OpenAI error type",
    ["endpoint", "type"],
)
REQUEST_DURATION = Histogram(
    "sinkwatch_request_duration_seconds",
    "Time from request received to last byte of the response",
    ["model", "endpoint", "backend"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "sinkwatch_time_to_first_token_seconds",
    "Time from request received to the first completion token released to the client",
    ["model", "endpoint", "backend"],
    buckets=TTFT_BUCKETS,
)
TOKENS = Counter(
    "sinkwatch_tokens_total",
    "Tokens processed, by type (input = prompt, output = completion)",
    ["model", "backend", "type"],
)
COMPLETION_TOKENS = Histogram(
    "sinkwatch_completion_tokens",
    "Completion length per request, in tokens",
    ["model", "backend"],
    buckets=TOKEN_BUCKETS,
)
IN_FLIGHT = Gauge("sinkwatch_requests_in_flight", "Requests being served now", ["model", "endpoint"])
ENGINE_WAITING = Gauge("sinkwatch_engine_waiting_requests", "Embedded engine: requests waiting for a batch slot")
ENGINE_ACTIVE = Gauge("sinkwatch_engine_active_requests", "Embedded engine: requests in the decoding batch")
MODEL_READY = Gauge("sinkwatch_model_ready", "1 once the backend can serve the model", ["model", "backend"])
MODEL_CALIBRATED = Gauge(
    "sinkwatch_model_calibrated",
    "1 when a served model's verdicts come from its own calibration; 0 when it is served uncalibrated (monitored, "
    "never judged: verdict 'uncalibrated', block and rescue do not act)",
    ["model"],
)
CALIBRATION = Info("sinkwatch_calibration", "The calibration behind a model's verdicts (date, size)", ["model"])
RECORDED_GENERATIONS = Counter(
    "sinkwatch_recorded_generations_total",
    "Monitored generations under observe written to the traffic recording (--record-dir)",
    ["model"],
)
RECORDING_FAILURE_REASONS = ("queue_full", "write_error")
RECORDING_FAILURES = Counter(
    "sinkwatch_recording_failures_total",
    "Generations the traffic recording dropped, by reason (queue_full, write_error)",
    ["reason"],
)
for _reason in RECORDING_FAILURE_REASONS:  # series exist from the start, for rate()
    RECORDING_FAILURES.labels(_reason)
CALIBRATION_TARGET_FPR = Gauge(
    "sinkwatch_calibration_target_false_positive_ratio",
    "Share of normal generations the calibration lets fire a rank-exhaustion verdict (and a sink verdict, "
    "unless its sink target counts tokens); alert thresholds are multiples of it",
    ["model"],
)
CALIBRATION_TARGET_PER_1K_TOKENS = Gauge(
    "sinkwatch_calibration_target_false_alarms_per_1k_tokens",
    "Sink verdicts per 1,000 healthy completion tokens the calibration allows (calibrations whose target "
    "counts tokens); the per-token sink alert is a multiple of it",
    ["model"],
)

VERDICTS = Counter(
    "sinkwatch_verdicts_total",
    "Final stability verdict per monitored request",
    ["model", "verdict"],
)
PARTICIPATION_RATIO = Histogram(
    "sinkwatch_participation_ratio",
    "Mean row-normalised participation ratio of a request's full windows, per layer band",
    ["model", "band"],
    buckets=PR_BUCKETS,
)
RANK_MARGIN = Histogram(
    "sinkwatch_rank_margin",
    "Lowest participation-ratio margin above the calibrated floor in a request, per layer band",
    ["model", "band"],
    buckets=MARGIN_BUCKETS,
)

STABILITY_RISK = Histogram(
    "sinkwatch_stability_risk",
    "Calibrated probability that a monitored request's generation was sinking (its highest stability.risk)",
    ["model"],
    buckets=RISK_BUCKETS,
)

PREFILL_RISK = Histogram(
    "sinkwatch_prefill_risk",
    "Probability, before the first token, that a monitored request's answer loops (its stability.prefill_risk)",
    ["model"],
    buckets=RISK_BUCKETS,
)

GATE_ACTIONS = Counter(
    "sinkwatch_gate_actions_total",
    "What the gate did per monitored request (pass, annotate, block, rescue), by the verdict behind it",
    ["model", "policy", "action", "reason"],
)
RESCUE_ATTEMPTS = Counter(
    "sinkwatch_rescue_attempts_total",
    "Rescue attempts (resampling from the last stable token), by whether the attempt finished stable",
    ["model", "outcome"],
)
RESCUES = Counter(
    "sinkwatch_rescues_total",
    "Requests that needed rescue, by final outcome (success, fallback_block)",
    ["model", "outcome"],
)
TOKENS_WITHHELD = Counter(
    "sinkwatch_tokens_withheld_total",
    "Generated tokens never sent because the gate blocked the generation",
    ["model"],
)
TOKENS_DISCARDED = Counter(
    "sinkwatch_tokens_discarded_total",
    "Generated tokens rolled back and regenerated by rescue",
    ["model"],
)

# Upstream pool (openai and vllm backends); ``upstream`` is a configured upstream's name.
UPSTREAM_REQUESTS = Counter(
    "sinkwatch_upstream_requests_total",
    "Requests sent to an upstream, by outcome (ok, error, cancelled)",
    ["upstream", "outcome"],
)
UPSTREAM_ERRORS = Counter(
    "sinkwatch_upstream_errors_total",
    "Upstream failures by kind (connect, timeout, reset, malformed, status)",
    ["upstream", "kind"],
)
UPSTREAM_UP = Gauge("sinkwatch_upstream_up", "1 while an upstream passes its health checks", ["upstream"])
UPSTREAM_IN_FLIGHT = Gauge("sinkwatch_upstream_in_flight", "Requests outstanding at an upstream", ["upstream"])
# Sub-millisecond buckets: the proxy's own cost is measured in microseconds; up to 1 s for a loaded event loop.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
GATEWAY_OVERHEAD = Histogram(
    "sinkwatch_gateway_overhead_seconds",
    "Time a request spent in the gateway itself, excluding waits on the upstream",
    ["endpoint", "backend"],
    buckets=OVERHEAD_BUCKETS,
)
HTTP_REFUSED = Counter(
    "sinkwatch_http_refused_total",
    "Client connections and requests refused at the HTTP edge, by reason "
    "(header_too_large, header_timeout, body_timeout, connection_limit, bad_request, upgrade)",
    ["reason"],
)
AUTH_FAILURES = Counter("sinkwatch_auth_failures_total", "Rejected API keys, by reason (missing, invalid)", ["reason"])
RATE_LIMITED = Counter("sinkwatch_rate_limited_total", "Requests refused by a rate limit, by limit", ["limit"])
EVENT_LOOP_TASKS = Gauge(
    "sinkwatch_event_loop_tasks", "Tasks alive in the gateway's event loop (a steady climb is a leak)"
)


def watch_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Export the number of tasks of ``loop``, computed at each scrape."""
    EVENT_LOOP_TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))


VLLM_STATS = Counter(
    "sinkwatch_vllm_stats_total",
    "vLLM backend: per-token features from the engine plugin, by outcome (received with their token; missing: "
    "the token went on without them; late: they arrived after their token)",
    ["outcome"],
)

UNMONITORED_REASONS = ("capacity", "endpoint", "uncalibrated")
UNMONITORED = Counter(
    "sinkwatch_unmonitored_requests_total",
    "Requests relayed without monitoring (marked stability.verdict 'unmonitored'), by reason: capacity (the "
    "reader is reading its --reader-max-streams), endpoint (no monitored path: embeddings, responses on the "
    "openai backend), uncalibrated (no calibration for the model, or --no-capture)",
    ["reason"],
)
for _reason in UNMONITORED_REASONS:  # series exist from the start, for rate()
    UNMONITORED.labels(_reason)


def model_ready(model: str, backend: str, calibration: Calibration | None, digest: str = "") -> None:
    """Mark ``model`` ready, export its calibration, and create its closed label sets at zero.

    A counter series that first appears at 1 hides that first increment from ``rate()``; alert ratios
    (sink share, rescue failures) must see every event, so their series exist from the start.
    """
    MODEL_READY.labels(model, backend).set(1)
    if calibration is not None:  # monitored: by its own calibration, or uncalibrated
        MODEL_CALIBRATED.labels(model).set(calibration.calibrated)
    for level in (*(level.value for level in VerdictLevel), UNCALIBRATED):
        VERDICTS.labels(model, level)
    for outcome in ("success", "failed"):
        RESCUE_ATTEMPTS.labels(model, outcome)
    for outcome in ("success", "fallback_block"):
        RESCUES.labels(model, outcome)
    if calibration is not None and calibration.calibrated:
        calibration_in_force(model, calibration, digest)


def calibration_in_force(model: str, calibration: Calibration, digest: str) -> None:
    """Export the calibration behind ``model``'s verdicts (at start and after each reload): its target, date, size
    and the sha256 of its file (empty when it did not come from a file); a model that was served uncalibrated
    is calibrated from then on."""
    MODEL_CALIBRATED.labels(model).set(calibration.calibrated)
    CALIBRATION_TARGET_FPR.labels(model).set(calibration.target_fpr)
    if calibration.target_unit == "per_1k_tokens":
        CALIBRATION_TARGET_PER_1K_TOKENS.labels(model).set(calibration.target_fpr)
    CALIBRATION.labels(model).info(
        {"created": calibration.created, "generations": str(calibration.n_generations), "sha256": digest}
    )


def endpoint_label(path: str) -> str:
    """A closed label set for the metrics: the route's last path segment, or 'other'."""
    for name in ("chat", "completions", "models", "responses", "embeddings"):
        if path.startswith(f"/v1/{name}" if name != "chat" else "/v1/chat/completions"):
            return name
    return "other"
