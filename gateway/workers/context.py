"""What a worker process knows of its siblings."""

from dataclasses import dataclass
from pathlib import Path

from gateway.security.ratelimit import SharedBuckets


@dataclass(frozen=True)
class WorkerContext:
    """Worker ``index`` of ``count``: where each worker serves its own metrics (unix sockets in
    ``run_dir``), and the rate-limit buckets they all take from (None without rate limits)."""

    index: int
    count: int
    run_dir: Path
    buckets: SharedBuckets | None

    def exposition_path(self, index: int) -> Path:
        """The unix socket where worker ``index`` serves its metrics."""
        return self.run_dir / f"worker-{index}.sock"

    def exposition_paths(self) -> list[Path]:
        """Every worker's metrics socket, by index."""
        return [self.exposition_path(index) for index in range(self.count)]
