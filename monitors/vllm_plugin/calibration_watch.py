"""The calibration file (``SINKWATCH_CALIBRATION``) watched from the feature reducer, so that vLLM need not
restart for a new calibration.

The reducer looks at the file's inode, size and modification time at most once per
:data:`WATCH_INTERVAL_S` (between engine steps, and every second while idle). When it was written or
replaced, the calibration is loaded again: requests that start from then on get extractors with its
reference (mean states, outlier dimensions, probe, recurrence levels) and its monitoring profile, requests
under way keep theirs. The captured layers are fixed when the worker starts, so a file with other bands
or another window is refused; so is one that cannot be loaded. Either way the calibration in force stays
and the log says why. A calibration that changes only thresholds (``sinkwatch calibrate --from-traffic``)
changes nothing here: the profile names the reference, not the thresholds.
"""

import logging
import time
from pathlib import Path

from monitors.bands import LayerBand
from monitors.calibration import Calibration, load_calibration
from monitors.file_stamp import file_stamp

__all__ = ["WATCH_INTERVAL_S", "CalibrationWatch"]

log = logging.getLogger("sinkwatch.reducer")

WATCH_INTERVAL_S = 1.0


class CalibrationWatch:
    """Notices a new calibration at ``path`` with ``current``'s bands and window; ``bands`` are those the
    worker captures (``SINKWATCH_BANDS``, else the calibration's)."""

    def __init__(self, path: Path, current: Calibration, bands: tuple[LayerBand, ...]) -> None:
        self.path = path
        self.current = current
        self.bands = bands
        self._stamp = file_stamp(path)
        self._looked_at = time.monotonic()

    def changed(self) -> Calibration | None:
        """The new calibration when the file changed since the last look and can be used, else None."""
        now = time.monotonic()
        if now - self._looked_at < WATCH_INTERVAL_S:
            return None
        self._looked_at = now
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        name = f"{self.current.model}@{self.current.created}"
        try:
            calibration = load_calibration(self.path)
        except (OSError, ValueError, KeyError, TypeError) as problem:
            log.error("sinkwatch: keeping calibration %s, %s cannot be loaded: %s", name, self.path, problem)
            return None
        if calibration.window != self.current.window or calibration.bands != self.current.bands:
            log.error(
                "sinkwatch: keeping calibration %s, %s has other bands or another window than the layers this "
                "worker captures (a restart of vLLM applies it)",
                name,
                self.path,
            )
            return None
        self.current = calibration
        log.info("sinkwatch: calibration %s@%s in force for new requests", calibration.model, calibration.created)
        return calibration
