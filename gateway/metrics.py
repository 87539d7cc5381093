"""Prometheus metrics, declared once with fixed label names; label values come from closed sets.

Request metrics follow the OpenTelemetry GenAI conventions where they fit (operation = endpoint,
token type = input/output); units are seconds; counters end in ``_total``.
"""

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6)
PR_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32)
MARGIN_BUCKETS = (-8, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 4, 8, 16)
TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096)

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
