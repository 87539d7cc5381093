"""The HTTP server: uvicorn, with the gateway's edge protocol (and the native proxy fast path when the app has
one), and a graceful drain on SIGTERM.

The drain, for rolling restarts behind a load balancer or a Kubernetes Service: SIGTERM turns
``/readyz`` to 503 while the gateway goes on accepting and serving for ``--drain-delay`` seconds (time
for the endpoint to be taken out of rotation); then it stops accepting (new connections are refused)
and lets in-flight requests and streams finish for up to ``--shutdown-timeout`` seconds; then the
requests still running are ended (``gateway.drain``: a stream with an OpenAI error event and ``[DONE]``).
Whatever is still left :data:`LAST_GRACE` seconds later is cancelled by uvicorn. SIGINT (Ctrl-C), or a
second SIGTERM during the delay, skips what is left of the delay.
"""

import asyncio
import contextlib
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from gateway.config import Settings
from gateway.drain import Drain
from gateway.edge.limits import EdgeLimits
from gateway.edge.protocol import EdgeProtocol
from gateway.proxy.native import protocol_class

__all__ = ["LAST_GRACE", "DrainingServer", "http_protocol", "run_server"]

log = logging.getLogger(__name__)

LAST_GRACE = 5.0  # seconds after the shutdown timeout for ended requests to say so before uvicorn cancels


def http_protocol(app: FastAPI) -> type[EdgeProtocol]:
    """uvicorn's ``http`` setting for a :func:`gateway.app.create_app` app: the edge protocol held to the
    app's ``http_*`` settings, with the native fast path when the app has one."""
    limits = EdgeLimits.from_settings(app.state.serving.settings)
    fast_path = getattr(app.state, "fast_path", None)
    protocol = protocol_class(fast_path) if fast_path is not None else EdgeProtocol
    return protocol.bound(limits)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the drain delay before it stops accepting and the shutdown timeout after."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay: float, timeout: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay = delay
        self.timeout = timeout
        self._exit_at: float | None = None
        self._exit_signal: tuple[int, FrameType | None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first SIGTERM begins the drain and stops the server after the delay; another signal, now."""
        self.drain.begin()
        if sig == signal.SIGTERM and self._exit_at is None and not self.should_exit:
            log.info("SIGTERM: draining (not ready) for %g s, then stopping", self.delay)
            self._exit_at = time.monotonic() + self.delay
            self._exit_signal = (sig, frame)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_signal is not None and time.monotonic() >= self._exit_at:
            super().handle_exit(*self._exit_signal)  # uvicorn stops, and raises the signal again once done
            self._exit_signal = None
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, with the requests still running ended when the timeout runs out."""
        self.drain.begin()
        timer = asyncio.get_running_loop().call_later(self.timeout, self._time_up)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _time_up(self) -> None:
        ended = self.drain.end_requests()
        if ended:
            log.warning("shutdown timeout (%g s) ran out: ending %d request(s) with an error", self.timeout, ended)


def run_server(app: FastAPI, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Serve on ``settings``' address, or on ``sockets`` already bound, until a signal says stop (a Ctrl-C
    is not an error; uvicorn exits with its own status when the server cannot start)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers propagate to the gateway's handler (gateway/logs.py)
        access_log=False,  # one access line per request comes from gateway/telemetry
        http=http_protocol(app),
        timeout_graceful_shutdown=settings.shutdown_timeout + LAST_GRACE,
    )
    server = DrainingServer(config, app.state.serving.drain, settings.drain_delay, settings.shutdown_timeout)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not fatal while starting: the app's reloader takes it then
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the signal it caught again once shut down
        server.run(sockets=sockets)
