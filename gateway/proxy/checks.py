"""What the proxy fast path checks before relaying a request: the fields it reads itself, nothing more.

The upstream validates the rest and its client errors pass through. Error bodies match those of the
full serving path (``gateway.errors``).
"""

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from gateway.errors import InvalidRequest, validation_error
from gateway.gate.policy import GateConfig, resolve_policy
from gateway.protocol.common import GateOptions
from gateway.security.guards import invalid_json

__all__ = ["ParsedRequest", "checked_request", "parsed_request"]

_PROMPT_FIELD = {"chat": "messages", "completions": "prompt", "responses": "input", "embeddings": "input"}


def _missing(name: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def _invalid(name: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{name}': expected {expected}.", param=name)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(request: dict, endpoint: str) -> None:
    if "model" not in request:
        raise _missing("model")
    if not isinstance(request["model"], str):
        raise _invalid("model", "a string")
    prompt_field = _PROMPT_FIELD[endpoint]
    if prompt_field not in request:
        raise _missing(prompt_field)
    prompt = request[prompt_field]
    if endpoint == "chat" and not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        raise _invalid("messages", "a non-empty array of message objects")
    if endpoint == "completions" and not isinstance(prompt, str | list):
        raise _invalid("prompt", "a string or an array")
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is not None and not (_is_int(value) and value >= 1):
            raise _invalid(name, "an integer of at least 1")
    if request.get("stream") not in (None, True, False):
        raise _invalid("stream", "a boolean")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options", "an object")


def _check_extension(request: dict, header_policy: str | None) -> str | None:
    """The ``sinkwatch`` extension and the policy header get the same 400s as on the full serving path:
    the extension is validated by the same model, the header by the same resolution.

    Nothing is monitored on the fast path, so a valid policy changes nothing there; an invalid one is still an
    error. Returns the body's policy (the relay path acts on it).
    """
    extension = request.get("sinkwatch")
    body_policy = None
    if extension is not None:
        try:
            body_policy = GateOptions.model_validate(extension).policy
        except ValidationError as problem:
            located = [{**e, "loc": ("body", "sinkwatch", *e["loc"])} for e in problem.errors()]
            raise validation_error(located) from None
    resolve_policy(GateConfig(), body_policy, header_policy)
    return body_policy


@dataclass(frozen=True)
class ParsedRequest:
    """A request as the upstream gets it, the policy its ``sinkwatch`` extension asks for, whether a streaming
    client asked for usage, and whether the request differs from the client's bytes."""

    request: dict
    body_policy: str | None
    include_usage: bool
    changed: bool


def parsed_request(body: bytes, endpoint: str, header_policy: str | None = None) -> ParsedRequest:
    """Check only what the gateway reads; remove the extension (no upstream knows it), and make a stream ask
    for usage so that tokens can be counted."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as problem:
        raise invalid_json(problem) from None
    if not isinstance(request, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    _check_fields(request, endpoint)
    body_policy = _check_extension(request, header_policy)
    changed = "sinkwatch" in request
    request.pop("sinkwatch", None)
    include_usage = False
    if request.get("stream") and endpoint in ("chat", "completions"):
        options = request.get("stream_options") or {}
        include_usage = options.get("include_usage") is True
        if not include_usage:
            request["stream_options"] = {**options, "include_usage": True}
            changed = True
    return ParsedRequest(request, body_policy, include_usage, changed)


def checked_request(body: bytes, endpoint: str, header_policy: str | None = None) -> tuple[dict, bytes, bool]:
    """The parsed request, the bytes to send upstream, and whether a streaming client asked for usage.

    The bytes are the client's own unless something had to change (:func:`parsed_request`).
    """
    parsed = parsed_request(body, endpoint, header_policy)
    forward = orjson.dumps(parsed.request) if parsed.changed else body
    return parsed.request, forward, parsed.include_usage
