"""The HTTP server's protocol: uvicorn's, with the native proxy fast path when the app has one."""

from fastapi import FastAPI

from gateway.proxy.native import FastPathProtocol, protocol_class


def http_protocol(app: FastAPI) -> type[FastPathProtocol] | str:
    """uvicorn's ``http`` setting for a :func:`gateway.app.create_app` app."""
    fast_path = getattr(app.state, "fast_path", None)
    return protocol_class(fast_path) if fast_path is not None else "auto"
