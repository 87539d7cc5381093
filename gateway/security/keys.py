"""API keys: configured in clear or as SHA-256 digests, kept only as digests, checked in constant time.

An entry is ``name:key`` or ``name:sha256:<64 hex digits>`` (``printf %s "$KEY" | sha256sum`` gives the
digest, so the key itself need not be written in any configuration). The name identifies the key in
rate limits; the key itself is never stored, logged or exported.
"""

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ApiKeys", "parse_entry"]

_DIGEST_PREFIX = "sha256:"


def digest(key: str) -> bytes:
    """SHA-256 of a key."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKey:
    """A named key, known by its digest only."""

    name: str
    digest: bytes


def parse_entry(entry: str) -> ApiKey:
    """``name:key`` or ``name:sha256:HEX``."""
    name, sep, secret = entry.strip().partition(":")
    if not sep or not name or not secret:
        raise ValueError("an API key entry must be 'name:key' or 'name:sha256:HEX' (the key itself is not shown)")
    if secret.startswith(_DIGEST_PREFIX):
        hex_digest = secret[len(_DIGEST_PREFIX) :]
        try:
            raw = bytes.fromhex(hex_digest)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"API key '{name}': a sha256 digest is 64 hex digits")
        return ApiKey(name, raw)
    return ApiKey(name, digest(secret))


class ApiKeys:
    """The keys a gateway accepts; empty means authentication is off."""

    def __init__(self, keys: list[ApiKey]) -> None:
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        self._keys = tuple(keys)

    @classmethod
    def load(cls, entries: str, file: str = "") -> "ApiKeys":
        """Keys from a comma-separated setting and from a file (one entry per line, ``#`` comments)."""
        lines = [part for part in entries.split(",") if part.strip()]
        if file:
            lines += [line for line in Path(file).read_text().splitlines() if line.strip() and not line.startswith("#")]
        return cls([parse_entry(line) for line in lines])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def names(self) -> list[str]:
        """The keys' names (what rate limits count by)."""
        return [key.name for key in self._keys]

    def identify(self, presented: str) -> str | None:
        """The name of the key presented, or None. Every stored digest is compared, in constant time each."""
        candidate = digest(presented)
        found = None
        for key in self._keys:
            if hmac.compare_digest(candidate, key.digest):
                found = key.name
        return found
