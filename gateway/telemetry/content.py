"""Opt-in content logging (``--log-content``): a request's headers and bodies, capped and redacted.

For debugging only: prompts and completions are what the access line never shows. Each body keeps at
most ``limit`` bytes; credentials are replaced by ``[REDACTED]``: the values of the headers that carry
them, and wherever the request's own key appears in a body.
"""

from dataclasses import dataclass

__all__ = ["REDACTED", "ContentCapture", "ContentLogging"]

REDACTED = "[REDACTED]"
SECRET_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"x-api-key", b"api-key", b"cookie", b"openai-organization"}
)


@dataclass(frozen=True)
class ContentLogging:
    """The ``--log-content`` settings: each body is capped at ``limit`` bytes."""

    limit: int

    def capture(self, headers: list[tuple[bytes, bytes]]) -> "ContentCapture":
        """A capture for one request with these headers."""
        return ContentCapture(self.limit, headers)


class ContentCapture:
    """One request's content as logged: redacted headers, the first bytes of each body."""

    def __init__(self, limit: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.limit = limit
        self.headers: dict[str, str] = {}
        self.secrets: list[str] = []
        for name, value in headers:
            text = value.decode("latin-1")
            if name in SECRET_HEADERS:
                self.secrets.append(text.partition(" ")[2].strip() if name.endswith(b"authorization") else text)
                text = REDACTED
            self.headers[name.decode("latin-1")] = text
        # Kept past the limit by the longest secret, so that one cut by the limit is still found and redacted.
        self._keep = limit + max((len(secret) for secret in self.secrets), default=0)
        self.request = bytearray()
        self.response = bytearray()
        self.request_bytes = 0
        self.response_bytes = 0

    def request_body(self, data: bytes) -> None:
        """Request body bytes as they arrive."""
        self.request_bytes += len(data)
        self.request += data[: max(0, self._keep - len(self.request))]

    def response_body(self, data: bytes) -> None:
        """Response body bytes as they leave."""
        self.response_bytes += len(data)
        self.response += data[: max(0, self._keep - len(self.response))]

    def fields(self) -> dict:
        """What the content line says."""
        return {
            "request_headers": self.headers,
            "request_body": self._shown(self.request, self.request_bytes),
            "response_body": self._shown(self.response, self.response_bytes),
        }

    def _shown(self, kept: bytearray, total: int) -> str:
        text = bytes(kept).decode("utf-8", "replace")
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        if total <= self.limit:
            return text
        return f"{text[: self.limit]}… [{total} bytes in all]"
