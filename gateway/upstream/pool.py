"""Several OpenAI-compatible upstreams used as one: health checks, balancing, failover, metrics.

Each upstream is checked every ``health_interval`` seconds with ``GET <base>/models``, which also says
which models it serves; each on its own schedule, and a check that takes longer than ``health_timeout``
in all marks its upstream down (one upstream that drips its answer holds up no other). A request goes to
the healthy upstream serving its model with the fewest requests outstanding (ties rotate). Before
anything has been sent to the client, a failed upstream (connection refused or broken before answering,
or a 429/5xx status) is left for the next candidate: that is failover before the first byte. Once a
response is handed out, its faults surface as ``UpstreamError`` (502) or ``UpstreamTimeout`` (504) and
are counted by kind.

Deadlines: an upstream has ``read_timeout`` seconds from the request for its response head, and for its
whole answer when not streaming (or its first event when streaming); a stream then has ``event_timeout``
seconds for each next event (keepalive comments do not count) (:mod:`gateway.upstream.sse`).

Each request sent carries ``x-request-id`` and the trace context (``traceparent``): when tracing is on, a
span per upstream tried, from sending to the response's close (:mod:`gateway.telemetry.spans`).

Both the ``openai`` and the ``vllm`` backends serve through an :class:`UpstreamPool`.
"""

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway import metrics
from gateway.errors import OpenAIError, UpstreamError, UpstreamRejected, UpstreamTimeout
from gateway.telemetry.spans import end_upstream_span, start_upstream_span
from gateway.upstream.http import (
    ConnectFailed,
    Deadline,
    HttpPool,
    HttpResponse,
    Origin,
    ReadTimeout,
    TransportError,
)

__all__ = ["PoolConfig", "UpstreamPool", "UpstreamResponse", "parse_upstreams"]

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
ERROR_BODY_LIMIT = 1 << 16


@dataclass(frozen=True)
class PoolConfig:
    """Timeouts and sizes shared by every upstream of a pool."""

    connect_timeout: float = 2.0
    read_timeout: float = 300.0
    event_timeout: float = 60.0
    max_response_bytes: int = 16 << 20
    health_interval: float = 5.0
    health_timeout: float = 5.0
    max_connections: int = 1024
    max_idle: int = 256
    api_key: str = ""


def parse_upstreams(spec: str) -> list[tuple[str, str]]:
    """``"a=http://h1:8000/v1, http://h2:8000/v1"`` -> ``[("a", url1), ("upstream-2", url2)]``.

    An unnamed upstream is named by its position: names are metric label values and appear on ``/metrics``,
    which need not tell its readers where the upstreams live.
    """
    named: list[tuple[str, str]] = []
    for position, entry in enumerate(filter(None, (part.strip() for part in spec.split(","))), start=1):
        name, url = entry.split("=", 1) if "=" in entry.split("://", 1)[0] else ("", entry)
        named.append((name.strip() or f"upstream-{position}", Origin(url.strip()).url))
    for kind, values in (("names", [name for name, _ in named]), ("URLs", [url for _, url in named])):
        if len(set(values)) != len(values):
            raise ValueError(f"upstream {kind} must be unique: {', '.join(values)}")
    return named


def transport_error(error: TransportError) -> UpstreamError:
    """The client-facing error for a transport failure."""
    if isinstance(error, ReadTimeout):
        return UpstreamTimeout(f"upstream timeout: {error}")
    code = {"connect": "upstream_unreachable", "reset": "upstream_reset", "malformed": "upstream_malformed"}
    return UpstreamError(f"upstream failure: {error}", code=code.get(error.kind, "upstream_error"))


def status_error(status: int, body: bytes) -> OpenAIError:
    """The client-facing error for an upstream's non-2xx answer: client errors pass through as they came."""
    error: dict = {}
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            inner = parsed.get("error", parsed)
            error = inner if isinstance(inner, dict) else {"message": str(inner)}
            if "message" not in error and "detail" in parsed:
                error = {"message": str(parsed["detail"])}
    if 400 <= status < 500:
        return UpstreamRejected(status, error)
    detail = f": {error['message']}" if isinstance(error.get("message"), str) else ""
    return UpstreamError(f"the upstream failed with status {status}{detail}", code="upstream_status")


class Upstream:
    """One upstream server: its connections, health and outstanding requests."""

    def __init__(self, name: str, url: str, config: PoolConfig) -> None:
        self.name = name
        self.origin = Origin(url)
        headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else None
        self.http = HttpPool(
            self.origin,
            max_connections=config.max_connections,
            max_idle=config.max_idle,
            connect_timeout=config.connect_timeout,
            headers=headers,
        )
        self.up = False
        self.models: frozenset[str] = frozenset()
        self.cards: dict[str, dict] = {}  # the upstream's own model cards, by id
        self.in_flight = 0
        self._up_gauge = metrics.UPSTREAM_UP.labels(name)
        metrics.UPSTREAM_IN_FLIGHT.labels(name).set_function(lambda: self.in_flight)  # read when scraped
        outcomes = ("ok", "client_error", "error", "cancelled")
        self._outcomes = {outcome: metrics.UPSTREAM_REQUESTS.labels(name, outcome) for outcome in outcomes}
        self._up_gauge.set(0)

    def mark(self, up: bool) -> None:
        """Record the upstream's health."""
        if up != self.up:
            level = logging.INFO if up else logging.WARNING
            log.log(level, "upstream %s (%s) is %s", self.name, self.origin.url, "up" if up else "down")
        self.up = up
        self._up_gauge.set(1 if up else 0)

    def count_error(self, kind: str) -> None:
        """One failure of ``kind`` (connect, timeout, reset, malformed, status)."""
        metrics.UPSTREAM_ERRORS.labels(self.name, kind).inc()

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, outcome: str) -> None:
        self.in_flight -= 1
        self._outcomes[outcome].inc()

    async def check_health(self, timeout: float) -> None:
        """``GET <base>/models``: up when it answers 200 with a model list (which also names its models)
        within ``timeout`` seconds in all."""
        try:
            async with asyncio.timeout(timeout):
                response = await self.http.request("GET", "/models", read_timeout=timeout)
                async with response:
                    body = await response.read_all(ERROR_BODY_LIMIT * 16)
            listed = orjson.loads(body)["data"] if response.status == 200 else None
            if listed is not None:
                self.cards = {str(card["id"]): card for card in listed if isinstance(card, dict)}
                self.models = frozenset(self.cards)
            self.mark(listed is not None)
        except (TransportError, orjson.JSONDecodeError, KeyError, TypeError, TimeoutError) as problem:
            if self.up:
                reason = str(problem) or f"no whole answer within {timeout:g} s"
                log.warning("upstream %s failed its health check: %s", self.name, reason)
            self.mark(False)


class UpstreamResponse:
    """An upstream's answer (headers received): read it, then close it; the outcome is counted once."""

    def __init__(
        self, upstream: Upstream, response: HttpResponse, deadline: Deadline, event_timeout: float, span: Any = None
    ) -> None:
        self.upstream = upstream
        self._response = response
        self.deadline = deadline  # for the whole answer (not streaming) or the first event (streaming)
        self.event_timeout = event_timeout
        self.status = response.status
        self.headers = response.headers
        self._outcome: str | None = None
        self._failure: str | None = None  # the kind of failure counted, if any
        self._span = span

    @property
    def content_type(self) -> str:
        return self._response.content_type

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    async def read_chunk(self, deadline: Deadline | None = None) -> bytes:
        """The next body bytes (by ``deadline``); ``b""`` at the end. Transport failures become counted
        ``UpstreamError``s."""
        try:
            return await self._response.read_chunk(deadline)
        except TransportError as error:
            raise self.fail(error.kind, transport_error(error)) from None

    async def read_all(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes, by the answer's deadline."""
        try:
            return await self._response.read_all(limit, self.deadline)
        except TransportError as error:
            raise self.fail(error.kind, transport_error(error)) from None

    async def error(self) -> OpenAIError:
        """The OpenAI error for a non-2xx answer (the body is read and the response closed)."""
        try:
            body = await self.read_all(ERROR_BODY_LIMIT)
        except UpstreamError:
            body = b""
        error = status_error(self.status, body)
        if self.status >= 500 or self.status == 429:
            self.fail("status", error)
        else:
            self._outcome = "client_error"
        await self.aclose()
        return error

    def fail(self, kind: str, error: OpenAIError) -> OpenAIError:
        """Count a failure of this response (``kind`` as in ``sinkwatch_upstream_errors_total``); returns ``error``."""
        if self._outcome is None:
            self._outcome, self._failure = "error", kind
            self.upstream.count_error(kind)
        return error

    async def aclose(self) -> None:
        """Release the connection (closing it when the body was not read to its end: the upstream sees a
        client that went away)."""
        if self._response is None:
            return
        response, self._response = self._response, None
        complete = response._connection.complete
        await response.aclose()
        outcome = self._outcome or ("ok" if complete else "cancelled")
        self.upstream.finished(outcome)
        end_upstream_span(self._span, self.status, self._failure or ("cancelled" if outcome == "cancelled" else None))

    async def __aenter__(self) -> "UpstreamResponse":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class UpstreamPool:
    """The upstreams of a backend, used as one."""

    def __init__(self, upstreams: Iterable[tuple[str, str]], config: PoolConfig | None = None) -> None:
        self.config = config or PoolConfig()
        self.upstreams = [Upstream(name, url, self.config) for name, url in upstreams]
        if not self.upstreams:
            raise ValueError("the pool needs at least one upstream (--upstreams)")
        self._rotation = itertools.count()
        self._health_tasks: list[asyncio.Task] = []

    @classmethod
    def from_settings(cls, settings: "Settings") -> "UpstreamPool":
        """The pool of ``--upstreams`` with the ``--upstream-*`` timeouts and sizes."""
        config = PoolConfig(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            event_timeout=settings.upstream_event_timeout,
            max_response_bytes=settings.upstream_max_response_bytes,
            health_interval=settings.upstream_health_interval,
            health_timeout=settings.upstream_health_timeout,
            max_connections=settings.upstream_max_connections,
            api_key=settings.upstream_api_key.get_secret_value(),
        )
        return cls(parse_upstreams(settings.upstreams), config)

    @property
    def ready(self) -> bool:
        """At least one upstream is up."""
        return any(upstream.up for upstream in self.upstreams)

    def _healthy(self) -> list[Upstream]:
        return [u for u in self.upstreams if u.up] or self.upstreams

    def model_names(self) -> list[str]:
        """Models served by the healthy upstreams (by any upstream when none is healthy)."""
        return sorted(set().union(*(u.models for u in self._healthy())))

    def model_cards(self) -> list[dict]:
        """The healthy upstreams' own model cards (``owned_by``, ``max_model_len``, ...), one per model."""
        cards: dict[str, dict] = {}
        for upstream in self._healthy():
            cards = {**upstream.cards, **cards}
        return [cards[name] for name in sorted(cards)]

    def serves(self, model: str) -> bool:
        """Whether :meth:`model_names` includes ``model`` (cheaply: asked once per request)."""
        return any(model in u.models for u in self._healthy())

    async def check_health(self) -> None:
        """Check every upstream once, concurrently."""
        await asyncio.gather(*(u.check_health(self.config.health_timeout) for u in self.upstreams))

    async def start(self) -> None:
        """First health check, then keep checking each upstream in the background, on its own."""
        await self.check_health()
        self._health_tasks = [asyncio.create_task(self._keep_checking(upstream)) for upstream in self.upstreams]

    async def _keep_checking(self, upstream: Upstream) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await upstream.check_health(self.config.health_timeout)

    async def close(self) -> None:
        """Stop health checks and close idle connections."""
        for task in self._health_tasks:
            task.cancel()
        for task in self._health_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in self.upstreams:
            upstream.http.close()

    def candidates(self, model: str) -> list[Upstream]:
        """Upstreams to try for ``model``, best first: healthy ones by outstanding requests, then the rest."""
        start = next(self._rotation) % len(self.upstreams)
        rotated = self.upstreams[start:] + self.upstreams[:start]
        serving = [u for u in rotated if model in u.models or not u.models]
        healthy = sorted((u for u in serving if u.up), key=lambda u: u.in_flight)  # stable: ties keep rotating
        return healthy or serving

    async def open(
        self,
        path: str,
        body: bytes,
        *,
        model: str,
        request_id: str,
        method: str = "POST",
    ) -> UpstreamResponse:
        """Send the request to the best upstream, failing over before any byte of an answer is used.

        Returns the response of the first upstream that answers with neither a failure nor a retryable
        status (or the last answer when every upstream answered a retryable status).
        """
        candidates = self.candidates(model)
        if not candidates:
            raise UpstreamError(f"no upstream serves the model '{model}'", code="upstream_unavailable")
        last_error: OpenAIError | None = None
        timeout = self.config.read_timeout
        for attempt, upstream in enumerate(candidates):
            is_last = attempt == len(candidates) - 1
            origin = upstream.origin
            span, trace = start_upstream_span(upstream.name, origin.host, origin.port, path, model)
            headers = {"x-request-id": request_id, **trace}
            upstream.started()
            deadline = Deadline.after(timeout, f"the upstream did not answer within {timeout:g} s")
            try:
                answer = await upstream.http.request(
                    method, path, body=body, headers=headers, read_timeout=timeout, deadline=deadline
                )
            except TransportError as error:
                upstream.count_error(error.kind)
                upstream.finished("error")
                end_upstream_span(span, None, error.kind)
                if isinstance(error, ConnectFailed):
                    upstream.mark(False)
                last_error = transport_error(error)
                if isinstance(error, ConnectFailed) and not is_last:
                    continue
                raise last_error from None
            except BaseException:
                upstream.finished("cancelled")
                end_upstream_span(span, None, "cancelled")
                raise
            response = UpstreamResponse(upstream, answer, deadline, self.config.event_timeout, span)
            if response.status in RETRYABLE_STATUS and not is_last:
                last_error = await response.error()
                log.warning("upstream %s answered %d; trying the next one", upstream.name, response.status)
                continue
            if not upstream.up and response.ok:
                upstream.mark(True)
            return response
        raise last_error or UpstreamError("no upstream answered")
