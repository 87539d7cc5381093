"""The limits the HTTP edge holds every client connection to, from the settings."""

import logging
import resource
from dataclasses import dataclass

from gateway.config import Settings

__all__ = ["EdgeLimits", "connection_capacity"]

log = logging.getLogger(__name__)

FD_SPARE = 64
"""File descriptors kept free of client connections: listening sockets, logs, model and metric files."""


@dataclass(frozen=True)
class EdgeLimits:
    """Head size, deadlines (seconds) and connections allowed per process."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 5.0
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> "EdgeLimits":
        """The ``http_*`` settings; the connection limit never above :func:`connection_capacity`."""
        capacity = connection_capacity()
        wanted = settings.http_max_connections or capacity
        if wanted > capacity:
            log.warning("http_max_connections %d lowered to %d: the file-descriptor limit", wanted, capacity)
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
            keepalive_timeout=settings.http_keepalive_timeout,
            max_connections=min(wanted, capacity),
        )


def connection_capacity() -> int:
    """Client connections this process's file-descriptor limit has room for: a proxied request holds an
    upstream connection beside its client's, and :data:`FD_SPARE` descriptors stay free, so that accepting
    never fails for want of one (EMFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, (soft - FD_SPARE) // 2)
