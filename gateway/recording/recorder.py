"""The bounded, rotating directory that recorded generations are written to, off the event loop.

Records go through a bounded queue to one writer thread, which builds them (their extremes and
serialisation cost O(signals × tokens), kept off the event loop) and appends them as JSON lines to the current
segment, ``traffic-<pid>-<start time>-<n>.jsonl`` (the process id keeps processes sharing the directory
apart). A segment is closed once it passes a tenth of ``max_bytes``; then the oldest segments of the
directory are deleted until it holds at most ``max_bytes``. Recording never holds up or fails a request: a
full queue drops the record and a write error (full disk, unwritable directory) is logged and the record
dropped, both counted in ``sinkwatch_recording_failures_total``.
"""

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import metrics

__all__ = ["SEGMENT_SHARE", "TrafficRecorder", "segments"]

log = logging.getLogger(__name__)

SEGMENT_SHARE = 10  # a segment closes at max_bytes / SEGMENT_SHARE: rotation frees about a tenth at a time
QUEUE_LIMIT = 1024  # records waiting for the writer; beyond, new records are dropped (and counted)
_STOP = object()


def segments(directory: Path) -> list[Path]:
    """The directory's segments, oldest first."""
    return sorted(directory.glob("traffic-*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))


class TrafficRecorder:
    """Writes records to ``directory``, keeping it under ``max_bytes``; ``record_text`` keeps token ids."""

    def __init__(self, directory: Path, max_bytes: int, record_text: bool = False) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.record_text = record_text
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_LIMIT)
        self._segment: Path | None = None
        self._written = 0
        self._count = 0
        self._started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._thread = threading.Thread(target=self._run, name="sinkwatch-recorder", daemon=True)
        self._thread.start()

    def submit(self, build: Callable[[], dict[str, Any]]) -> None:
        """Queue a record (``build`` makes it, on the writer's thread) for writing; never blocks (a full queue
        drops it, counted)."""
        try:
            self._queue.put_nowait(build)
        except queue.Full:
            metrics.RECORDING_FAILURES.labels("queue_full").inc()

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while (build := self._queue.get()) is not _STOP:
            try:
                self._write(build())
            except (OSError, TypeError, ValueError) as problem:
                log.error("traffic recording: dropped a record, cannot write to %s: %s", self.directory, problem)
                metrics.RECORDING_FAILURES.labels("write_error").inc()
                self._segment = None

    def _write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        if self._segment is None or self._written + len(line) > self.max_bytes // SEGMENT_SHARE:
            self._rotate()
        with self._segment.open("ab") as out:
            out.write(line)
        self._written += len(line)
        metrics.RECORDED_GENERATIONS.labels(str(record.get("model", ""))).inc()

    def _rotate(self) -> None:
        """Start a new segment and delete the oldest ones beyond ``max_bytes``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        self._segment = self.directory / f"traffic-{os.getpid()}-{self._started}-{self._count:06d}.jsonl"
        self._written = 0
        existing = segments(self.directory)
        total = sum(_size(p) for p in existing) + self.max_bytes // SEGMENT_SHARE
        for old in existing:
            if total <= self.max_bytes:
                break
            total -= _size(old)
            old.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # deleted meanwhile by a process sharing the directory
        return 0
