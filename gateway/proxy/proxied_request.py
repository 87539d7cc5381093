"""The proxy fast path's core: one OpenAI request relayed to the upstream pool, the answer's bytes passed through.

When the backend has nothing to monitor (``openai`` without a reader), a generation request does not need the
full serving path (pydantic models, session, gate, response shaping): a :class:`ProxiedRequest` answers ``POST
/v1/chat/completions`` and ``POST /v1/completions`` itself, before FastAPI routing (through
:mod:`gateway.proxy.asgi_passthrough` or the native path). It checks what it must (JSON object, a served
model, the types of the fields it reads), leaves the rest to the upstream (whose client errors pass through as
they came), and relays the upstream's answer: a JSON body checked and forwarded as is, or server-sent events
checked one by one and forwarded as received. Only two things change: the ``sinkwatch`` body extension is
removed, and a stream asks the upstream for usage (to count tokens) whose usage chunk is dropped again if the
client did not ask.

Under ``sinkwatch serve`` most such requests never reach ASGI: the native fast path
(``gateway.proxy.native``) runs the same :class:`ProxiedRequest` on the connection itself. Either way the
request talks to its client through a :class:`~gateway.proxy.channel.ClientChannel`.

Faults of the upstream become OpenAI errors (a final error event then ``[DONE]`` once streaming has
begun); a client that goes away cancels the upstream request, and so does the end of a shutdown's
timeout (``gateway.drain``), which the client is told as a 503 or a final error event.
"""

import asyncio
import time

import orjson

from gateway.backends.openai import OpenAIBackend
from gateway.drain import Drain, Hold, shutdown_error
from gateway.errors import ModelNotFound, NotReady, OpenAIError, error_event
from gateway.gate.policy import POLICY_HEADER
from gateway.proxy.channel import JSON_HEADERS, ClientChannel
from gateway.proxy.checks import checked_request
from gateway.request_metrics import RequestSeries
from gateway.security.admission import charge_tokens
from gateway.telemetry.request_scope import RequestScope
from gateway.upstream.event_stream import check_event_stream, event_batches, malformed
from gateway.upstream.pool import UpstreamResponse

__all__ = ["ROUTES", "ProxiedRequest"]

ROUTES = {"/v1/chat/completions": ("chat", "/chat/completions"), "/v1/completions": ("completions", "/completions")}
DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
POLICY_HEADER_BYTES = POLICY_HEADER.encode()


class _Stopwatch:
    """Time spent in the gateway: running, except while paused (waiting on the upstream)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._since = time.perf_counter()

    def pause(self) -> None:
        self.total += time.perf_counter() - self._since

    def resume(self) -> None:
        self._since = time.perf_counter()


class ProxiedRequest:
    """One request on the fast path: check, send, relay, record (in the metrics, and in the request's
    ``scope`` for its access line and span)."""

    def __init__(
        self,
        backend: OpenAIBackend,
        route: tuple[str, str],
        channel: ClientChannel,
        scope: RequestScope,
        drain: Drain,
    ):
        self.backend = backend
        self.drain = drain
        self.endpoint, self.path = route
        self.channel = channel
        self.scope = scope
        self.started_at = time.perf_counter()
        self.clock = _Stopwatch()
        self.response_started = False
        self.finished = False
        self.cancelled = False
        self.first_token_at: float | None = None
        self.usage: dict | None = None

    async def serve(self) -> None:
        try:
            policy = self.channel.header(POLICY_HEADER_BYTES)
            body = await self.channel.read_body()
            request, forward, include_usage = checked_request(body, self.endpoint, policy and policy.decode("latin-1"))
            if not self.backend.ready:
                raise NotReady("no upstream is ready; retry shortly")
            model = request["model"]
            self.scope.served(self.endpoint, model)
            if not self.backend.pool.serves(model):
                message = f"The model '{model}' does not exist or you do not have access to it."
                raise ModelNotFound(message, param="model")
        except OpenAIError as error:
            await self.channel.respond_error(error, self.endpoint)
            return
        with self.drain.hold() as hold:
            await self._proxy(model, forward, bool(request.get("stream")), include_usage, hold)

    async def _proxy(self, model: str, body: bytes, stream: bool, include_usage: bool, hold: Hold) -> None:
        series = RequestSeries.of(model, self.endpoint, self.backend.name)
        series.begin()
        task = asyncio.current_task()
        stop_watching = self.channel.watch_disconnect(lambda: self._client_gone(task))
        response: UpstreamResponse | None = None
        outcome = "server_error"
        try:
            self.clock.pause()
            response = await self.backend.pool.open(self.path, body, model=model, request_id=self.scope.request_id)
            self.clock.resume()
            if not response.ok:
                raise await response.error()
            if stream:
                await self._relay_stream(response, include_usage)
            else:
                await self._relay_whole(response)
            outcome = "ok"
        except OpenAIError as error:
            outcome = "client_error" if error.status_code < 500 else "server_error"
            await self._fail(error)
        except asyncio.CancelledError:
            ended = hold.absorb()  # the shutdown timeout ran out
            if self.cancelled:  # the client went away
                task.uncancel()
                outcome = "cancelled"
            elif ended:
                await self._fail(shutdown_error())
            else:
                raise
        finally:
            self.finished = True
            hold.release()
            stop_watching()
            if response is not None:
                await response.aclose()
            self._record(series, outcome)

    def _client_gone(self, task: asyncio.Task) -> None:
        if not self.finished:
            self.cancelled = True
            task.cancel()

    async def _start(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.response_started = True
        await self.channel.start(200, headers)

    async def _fail(self, error: OpenAIError) -> None:
        """An error response, or a final error event when the stream has begun."""
        if not self.response_started:
            await self.channel.respond_error(error, self.endpoint)
            return
        event = error_event(error, self.endpoint) + DONE
        await self.channel.send(event, more=False)

    async def _relay_whole(self, response: UpstreamResponse) -> None:
        self.clock.pause()
        body = await response.read_all(self.backend.pool.config.max_response_bytes)
        self.clock.resume()
        if response.content_type != "application/json":
            raise malformed(response, f"'{response.content_type or 'no content type'}' instead of JSON")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed(response, "a body that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise malformed(response, "JSON that is not a completion")
        self.usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
        self.scope.finish_reasons = _finish_reasons(answer)
        await self._start([*JSON_HEADERS, (b"content-length", b"%d" % len(body))])
        await self.channel.send(body, more=False)

    async def _relay_stream(self, response: UpstreamResponse, include_usage: bool) -> None:
        check_event_stream(response)
        await self._start(_SSE_HEADERS)
        events = event_batches(response)
        try:
            while True:
                self.clock.pause()
                batch = await anext(events, None)
                self.clock.resume()
                if batch is None:
                    break
                out = []
                for raw, event in batch:
                    if "usage" in event and isinstance(event["usage"], dict):
                        self.usage = event["usage"]
                        if not include_usage and not event.get("choices"):
                            continue
                    if self.first_token_at is None and _has_text(event):
                        self.first_token_at = time.perf_counter()
                        self.scope.first_token_at = self.first_token_at
                    self.scope.finish_reasons += _finish_reasons(event)
                    out.append(raw)
                    out.append(b"\n\n")
                if out:
                    await self.channel.send(b"".join(out), more=True)
        finally:
            await events.aclose()
        await self.channel.send(DONE, more=False)

    def _record(self, series: RequestSeries, outcome: str) -> None:
        self.clock.pause()
        series.end(self.started_at, outcome, overhead=self.clock.total)
        if self.first_token_at is not None:
            series.first_token(self.started_at, self.first_token_at)
        if outcome == "ok" and self.usage is not None:
            prompt, completion = self.usage.get("prompt_tokens"), self.usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                self.scope.input_tokens, self.scope.output_tokens = prompt, completion
                series.tokens(prompt, completion, completion)
                charge_tokens(prompt + completion)


def _has_text(event: dict) -> bool:
    choices = event.get("choices")
    if not choices or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta")
    return bool(delta.get("content") if isinstance(delta, dict) else choice.get("text"))


def _finish_reasons(answer: dict) -> tuple[str, ...]:
    """The finish reasons of a completion's (or a chunk's) choices."""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return ()
    return tuple(c["finish_reason"] for c in choices if isinstance(c, dict) and isinstance(c.get("finish_reason"), str))
