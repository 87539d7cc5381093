"""Start the gateway: one process serving the app, or a supervisor and ``--workers`` processes.

This module sits above the app and the worker supervisor so that neither imports the other: the
supervisor is handed :func:`run_worker` as what each worker process runs.
"""

import os
import socket
import sys

from gateway.config import Settings
from gateway.logs import configure_logging
from gateway.workers.worker_context import WorkerContext

__all__ = ["run_worker", "serve"]


def serve(settings: Settings) -> None:
    """Serve with ``settings`` until told to stop (exits with the supervisor's status when it has workers)."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from gateway.workers.supervisor import serve_workers  # no app in the supervisor process

        sys.exit(serve_workers(settings, run_worker))
    from gateway.app import create_app
    from gateway.engine.provision import provision
    from gateway.server import run_server
    from gateway.telemetry import tracing

    tracing.configure(os.environ)  # the process that serves exports its spans

    if settings.backend == "embedded":
        provision(settings.model)
    run_server(create_app(settings), settings)


def run_worker(settings: Settings, listener: socket.socket, context: WorkerContext) -> None:
    """One worker process: its own app, served on the supervisor's listening socket."""
    configure_logging(settings.log_level, settings.log_format, worker=context.index)
    from gateway.app import create_app
    from gateway.server import run_server
    from gateway.telemetry import tracing

    tracing.configure(os.environ)  # each worker exports its own spans

    run_server(create_app(settings, worker=context), settings, sockets=[listener])
