"""ASGI middleware that guards the API: request size limit, strict JSON, API keys, per-key rate limits.

Plain ASGI (no ``BaseHTTPMiddleware``), so each costs a function call per request. Refusals are
OpenAI error bodies: 413 ``request_too_large``, 400 ``invalid_json``, 401 ``invalid_api_key``,
429 ``rate_limit_exceeded`` with ``retry-after``.
"""

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InvalidRequest, OpenAIError, RequestTooLarge, render_error
from gateway.metrics import endpoint_label
from gateway.security.admission import Admission, client_address, header

__all__ = ["BodyLimit", "Guard", "StrictJson", "invalid_json", "too_large"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _refuse(error: OpenAIError, headers: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
    body = render_error(error, endpoint_label(scope["path"]))
    response = Response(body, status_code=error.status_code, media_type="application/json", headers=headers)
    await response(scope, receive, send)


class BodyLimit:
    """Reads a request's body up front (413 past ``max_bytes``) and hands it on in one message."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = header(scope["headers"], b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _refuse(too_large(self.max_bytes), {"connection": "close"}, scope, receive, send)


def too_large(max_bytes: int) -> RequestTooLarge:
    """The error for a body over ``max_bytes`` (answered with ``connection: close``: the rest is not read)."""
    return RequestTooLarge(f"The request body is larger than the limit of {max_bytes} bytes.")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the whole body first, then whatever the server sends (disconnects)."""
    return _replay_message({"type": "http.request", "body": body, "more_body": False}, receive)


def _replay_message(message: Message, receive: Receive) -> Receive:
    """A ``receive`` that gives ``message`` first, then what ``receive`` gives."""
    pending = [message]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def invalid_json(problem: orjson.JSONDecodeError) -> InvalidRequest:
    """The error for a body that is not strict JSON."""
    return InvalidRequest(
        f"We could not parse the JSON body of your request ({problem.msg}). The body must be valid JSON.",
        code="invalid_json",
    )


class StrictJson:
    """Refuses API request bodies that are not strict JSON (RFC 8259): invalid UTF-8, lone surrogates,
    NaN, nesting past 1024 levels. Python's ``json`` accepts some of these, and a lone surrogate in a
    prompt would break the tokenizer far from here; this answers 400 ``invalid_json`` instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] == "http.request":
            try:
                orjson.loads(message.get("body", b"") or b"{}")
            except orjson.JSONDecodeError as problem:
                await _refuse(invalid_json(problem), {}, scope, receive, send)
                return
        await self.app(scope, _replay_message(message, receive), send)


class Guard:
    """API keys (when configured) and rate limits on ``/v1/`` routes; health and metrics stay open."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            refused = self.admission.refusal(scope["headers"], client_address(scope.get("client")))
            if refused is not None:
                await _refuse(*refused, scope, receive, send)
                return
        await self.app(scope, receive, send)
