"""Whether a watched file (a keys file, a calibration) was written or replaced since the last look."""

import os
from pathlib import Path

__all__ = ["file_stamp"]


def file_stamp(path: str | Path) -> tuple[int, int, int] | None:
    """What changes when a file is written or replaced: its inode, size and modification time (None when it
    cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
