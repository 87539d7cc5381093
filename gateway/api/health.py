"""Liveness, readiness and the Prometheus endpoint."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import NotFound

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(http: Request) -> JSONResponse:
    """200 once the backend can serve (model loaded), 503 before and from the start of a shutdown on."""
    serving = getattr(http.app.state, "serving", None)
    if serving is not None and serving.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    ready = serving is not None and serving.backend.ready
    return JSONResponse({"status": "ready" if ready else "loading"}, status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus_metrics(http: Request) -> Response:
    """Prometheus text exposition of every ``sinkwatch_`` metric, every worker's when there are several
    (404 when served on ``--metrics-port``)."""
    serving = getattr(http.app.state, "serving", None)
    if serving is not None and serving.settings.metrics_port:
        raise NotFound(f"Invalid URL (GET {http.url.path}); metrics are served on another port")
    expositions = getattr(http.app.state, "worker_expositions", None)
    body = await asyncio.to_thread(expositions.render) if expositions is not None else generate_latest()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
