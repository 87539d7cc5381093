"""``--metrics-port``: ``/metrics`` on a port of its own, served from a thread (prometheus_client's
server), by a single gateway process or by the supervisor of several workers."""

from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from gateway.config import Settings

__all__ = ["serve_metrics_apart"]


def serve_metrics_apart(settings: Settings, registry: CollectorRegistry = REGISTRY) -> Callable[[], None]:
    """Serve ``/metrics`` (``registry``'s) on its own port when ``--metrics-port`` is set; returns what
    stops it."""
    if not settings.metrics_port:
        return lambda: None
    server, thread = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
