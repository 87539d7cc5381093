"""The HTTP server: uvicorn, with the gateway's edge protocol (and the native proxy fast path when the app has
one)."""

import contextlib
import socket

import uvicorn
from fastapi import FastAPI

from gateway.config import Settings
from gateway.edge.limits import EdgeLimits
from gateway.edge.protocol import EdgeProtocol
from gateway.proxy.native import protocol_class

__all__ = ["http_protocol", "run_server"]


def http_protocol(app: FastAPI) -> type[EdgeProtocol]:
    """uvicorn's ``http`` setting for a :func:`gateway.app.create_app` app: the edge protocol held to the
    app's ``http_*`` settings, with the native fast path when the app has one."""
    limits = EdgeLimits.from_settings(app.state.serving.settings)
    fast_path = getattr(app.state, "fast_path", None)
    protocol = protocol_class(fast_path) if fast_path is not None else EdgeProtocol
    return protocol.bound(limits)


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
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the signal it caught again once shut down
        server.run(sockets=sockets)
