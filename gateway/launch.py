"""Start the gateway: one process serving the app, or a supervisor and ``--workers`` processes.

This module sits above the app and the worker supervisor so that neither imports the other: the
supervisor is handed :func:`run_worker` as what each worker process runs.
"""

import functools
import os
import socket
import sys
from collections.abc import Callable

from gateway.config import Settings
from gateway.logs import configure_logging
from gateway.workers.worker_context import WorkerContext

__all__ = ["run_worker", "serve"]


def serve(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> None:
    """Serve with ``settings`` until told to stop (exits with the supervisor's status when it has workers);
    API keys and rate limits are reloaded from the settings ``reload_settings`` returns (it must pickle)."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from gateway.workers.supervisor import serve_workers  # no app in the supervisor process

        sys.exit(serve_workers(settings, functools.partial(run_worker, reload_settings=reload_settings)))
    from gateway.app import create_app
    from gateway.engine.provision import provision
    from gateway.server import run_server
    from gateway.telemetry import tracing

    tracing.configure(os.environ)  # the process that serves exports its spans

    if settings.backend == "embedded":
        provision(settings.model)
    run_server(create_app(settings, reload_settings=reload_settings), settings)


def run_worker(
    settings: Settings,
    listener: socket.socket,
    context: WorkerContext,
    reload_settings: Callable[[], Settings] | None = None,
) -> None:
    """One worker process: its own app, served on the supervisor's listening socket."""
    configure_logging(settings.log_level, settings.log_format, worker=context.index)
    from gateway.app import create_app
    from gateway.server import run_server
    from gateway.telemetry import tracing

    tracing.configure(os.environ)  # each worker exports its own spans

    run_server(create_app(settings, worker=context, reload_settings=reload_settings), settings, sockets=[listener])
