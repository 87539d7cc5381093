"""How the gateway's processes log: one format, set up once per process (a worker names itself)."""

import logging

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, worker: int | None = None) -> None:
    """Log at ``level`` in :data:`LOG_FORMAT`; a worker process (``worker``: its index) says which it is."""
    log_format = LOG_FORMAT if worker is None else LOG_FORMAT.replace("%(name)s", f"worker {worker} %(name)s")
    logging.basicConfig(level=level.upper(), format=log_format)
