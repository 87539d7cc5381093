"""Who may send an API request now: API keys (when configured), failed-key throttling per client address,
per-key request rate limits and per-key token budgets.

Asked once per ``/v1/`` request, by the ASGI :class:`~gateway.security.guards.Guard` and by the
native proxy fast path alike. Refusals are counted here. The keys and limits in force can be replaced
while serving (:meth:`Admission.configure`, by the reloader of ``gateway.security.reload``); each request
is judged by those in force when it arrives.

A request let in under a token budget carries its key's budget in a context variable, so that whatever
serves it can charge the tokens it used once it knows them (:func:`charge_tokens`), without the key's
name travelling through every layer.
"""

import contextvars
import math
from dataclasses import dataclass

from gateway import metrics
from gateway.errors import AuthenticationFailed, OpenAIError, RateLimited
from gateway.security.auth_throttle import AuthThrottle
from gateway.security.keys import ApiKeys
from gateway.security.ratelimit import RateLimiter
from gateway.telemetry.request_scope import current_scope

__all__ = ["ANONYMOUS", "Admission", "charge_tokens", "client_address", "header"]

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


@dataclass(frozen=True)
class _Tab:
    """A request's key and the token budget it will be charged on."""

    budget: RateLimiter
    key: str


_TAB: contextvars.ContextVar[_Tab | None] = contextvars.ContextVar("sinkwatch_token_tab", default=None)


def charge_tokens(used: int) -> None:
    """Charge ``used`` model tokens to the budget of the key that sent the current request, if it has one."""
    tab = _TAB.get()
    if tab is not None:
        tab.budget.check(tab.key, used, owe=True)
        _TAB.set(None)  # once per request


class Admission:
    """API keys, request rate limits and token budgets; :attr:`enabled` when any is configured. With keys, an
    address that keeps failing authentication is throttled (``throttle``)."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter, budget: RateLimiter, throttle: AuthThrottle) -> None:
        self.throttle = throttle
        self.configure(keys, limiter, budget)

    def configure(self, keys: ApiKeys, limiter: RateLimiter, budget: RateLimiter) -> None:
        """Put these keys, request ``limiter`` and token ``budget`` in force (for requests from now on)."""
        self.keys, self.limiter, self.budget = keys, limiter, budget

    @property
    def enabled(self) -> bool:
        return self.keys.enabled or self.limiter.enabled or self.budget.enabled

    def refusal(self, headers: list[tuple[bytes, bytes]], address: str) -> tuple[OpenAIError, dict[str, str]] | None:
        """Why a ``/v1/`` request with these headers from client ``address`` is refused (counted), with the
        headers to answer; or None."""
        keys, limiter, budget = self.keys, self.limiter, self.budget
        name = ANONYMOUS
        if keys.enabled:
            if self.throttle.enabled and (wait := self.throttle.wait(address)):
                metrics.RATE_LIMITED.labels("auth_failures").inc()
                error = RateLimited(
                    "Too many requests with a missing or wrong API key from this address; "
                    f"try again in {math.ceil(wait)}s.",
                    code="auth_failures",
                )
                return error, {"retry-after": str(math.ceil(wait))}
            name = self._identify(keys, headers)
            if name is None:
                if self.throttle.enabled:
                    self.throttle.failed(address)
                return self._unauthorized(headers)
        if self.enabled and (scope := current_scope()) is not None:
            scope.key = name  # for the access line: the key's name (anonymous under limits alone), never the key
        if limiter.enabled and (wait := limiter.check(name)):
            return _rate_limited("requests", wait)
        if budget.enabled:
            if wait := budget.check(name, cost=0):
                return _rate_limited("tokens", wait)
            _TAB.set(_Tab(budget, name))
        return None

    @staticmethod
    def _identify(keys: ApiKeys, headers: list[tuple[bytes, bytes]]) -> str | None:
        authorization = header(headers, b"authorization")
        scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return keys.identify(token.strip())

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


def _rate_limited(limit: str, wait: float) -> tuple[OpenAIError, dict[str, str]]:
    """429 for the ``requests`` or ``tokens`` limit, with the seconds to wait in ``retry-after`` (counted)."""
    metrics.RATE_LIMITED.labels(limit).inc()
    error = RateLimited(f"Rate limit reached for {limit}; try again in {wait:.2f}s.")
    return error, {"retry-after": str(math.ceil(wait))}
