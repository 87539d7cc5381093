"""Log lines: plain text or one JSON object per line, each stamped with the request it was written for.

``--log-format text|json`` picks the format for every process of the gateway (the supervisor and its
workers, uvicorn's own loggers included: they propagate to the root handler configured here). While a
request is served, every line carries its request id (the client's ``x-request-id`` when short and
plain, else a generated one: :mod:`gateway.telemetry.request_scope`); a line may carry structured
``fields`` (``logger.info(message, extra={"fields": {...}})``), which JSON lines hold as keys and text
lines append as ``key=value``.
"""

import logging
import os
import time

import orjson

from gateway.telemetry.request_scope import current_scope

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served (``request_id``, None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = current_scope()
        record.request_id = scope.request_id if scope is not None else None
        record.request_tag = f" [{scope.request_id}]" if scope is not None else ""
        return True


def _fields(record: logging.LogRecord) -> dict:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, with a record's fields appended as ``key=value`` (values JSON when not plain)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        for name, value in _fields(record).items():
            if value is not None:
                shown = value if isinstance(value, int | float | str) and " " not in str(value) else _json(value)
                line += f" {name}={shown}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, worker, fields, exception."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None) is not None:
            entry["request_id"] = record.request_id
        if self.worker is not None:
            entry["worker"] = self.worker
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _json(entry)


def _json(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


def _utc(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-01-02T03:04:05.678Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def formatter(log_format: str, worker: int | None = None) -> logging.Formatter:
    """The formatter of ``--log-format``, ``text`` or ``json`` (a worker's lines name the worker)."""
    if log_format == "json":
        return JsonFormatter(worker)
    name = "%(name)s" if worker is None else f"worker {worker} %(name)s"
    return TextFormatter(LOG_FORMAT.replace("%(name)s", name))


def configure_logging(level: str, log_format: str, worker: int | None = None) -> None:
    """One handler on the root logger, on stderr, in ``log_format``; uvicorn's loggers propagate to it
    (the server is started with ``log_config=None``), and so do Python's warnings. Called before the
    model libraries are imported: in JSON, their progress bars are off (they are not lines)."""
    if log_format == "json":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, worker))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level.upper())
