"""Who may send an API request now: API keys (when configured), failed-key throttling per client address,
and per-key rate limits.

Asked once per ``/v1/`` request, by the ASGI :class:`~gateway.security.guards.Guard` and by the
native proxy fast path alike. Refusals are counted here.
"""

import math

from gateway import metrics
from gateway.errors import AuthenticationFailed, OpenAIError, RateLimited
from gateway.security.auth_throttle import AuthThrottle
from gateway.security.keys import ApiKeys
from gateway.security.ratelimit import RateLimiter
from gateway.telemetry.request_scope import current_scope

__all__ = ["ANONYMOUS", "Admission", "client_address", "header"]

ANONYMOUS = "anonymous"


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in an ASGI header list."""
    for key, value in headers:
        if key == name:
            return value
    return None


def client_address(peer: tuple[str, int] | list | None) -> str:
    """The host of a connection's peer (ASGI ``client``, uvicorn's ``protocol.client``); "" when unknown."""
    return str(peer[0]) if peer else ""


class Admission:
    """API keys and rate limits; :attr:`enabled` when either is configured. With keys, an address that keeps
    failing authentication is throttled (``throttle``)."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter, throttle: AuthThrottle) -> None:
        self.keys = keys
        self.limiter = limiter
        self.throttle = throttle

    @property
    def enabled(self) -> bool:
        return self.keys.enabled or self.limiter.enabled

    def refusal(self, headers: list[tuple[bytes, bytes]], address: str) -> tuple[OpenAIError, dict[str, str]] | None:
        """Why a ``/v1/`` request with these headers from client ``address`` is refused (counted), with the
        headers to answer; or None."""
        name = ANONYMOUS
        if self.keys.enabled:
            if self.throttle.enabled and (wait := self.throttle.wait(address)):
                metrics.RATE_LIMITED.labels("auth_failures").inc()
                error = RateLimited(
                    "Too many requests with a missing or wrong API key from this address; "
                    f"try again in {math.ceil(wait)}s.",
                    code="auth_failures",
                )
                return error, {"retry-after": str(math.ceil(wait))}
            name = self._identify(headers)
            if name is None:
                if self.throttle.enabled:
                    self.throttle.failed(address)
                return self._unauthorized(headers)
        if (scope := current_scope()) is not None:
            scope.key = name  # for the access line: the key's name, never the key
        if self.limiter.enabled and (wait := self.limiter.check(name)):
            metrics.RATE_LIMITED.labels("requests").inc()
            error = RateLimited(f"Rate limit reached for requests; try again in {wait:.2f}s.")
            return error, {"retry-after": str(math.ceil(wait))}
        return None

    def _identify(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        authorization = header(headers, b"authorization")
        scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.keys.identify(token.strip())

    def _unauthorized(self, headers: list[tuple[bytes, bytes]]) -> tuple[OpenAIError, dict[str, str]]:
        if header(headers, b"authorization") is None:
            metrics.AUTH_FAILURES.labels("missing").inc()
            error = AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            metrics.AUTH_FAILURES.labels("invalid").inc()
            error = AuthenticationFailed("Incorrect API key provided.")
        return error, {"www-authenticate": "Bearer"}
