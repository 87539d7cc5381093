"""What a worker process knows of its siblings and of its supervisor."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.security.ratelimit import SharedBuckets

__all__ = ["WorkerContext"]


@dataclass(frozen=True)
class WorkerContext:
    """Worker ``index`` of ``count``, started by process ``supervisor_pid``.

    ``run_dir`` holds each worker's metrics socket; ``restarts`` (shared memory, written by the supervisor)
    counts how often each worker was started again. Each worker reads the API keys itself (and reloads
    them); the rate-limit ``buckets`` are the ones they all take from.
    """

    index: int
    count: int
    supervisor_pid: int
    run_dir: Path
    restarts: Sequence[int]
    buckets: SharedBuckets

    def exposition_path(self, index: int) -> Path:
        """The unix socket where worker ``index`` serves its metrics."""
        return self.run_dir / f"worker-{index}.sock"

    def exposition_paths(self) -> list[Path]:
        """Every worker's metrics socket, by index."""
        return [self.exposition_path(index) for index in range(self.count)]
