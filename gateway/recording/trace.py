"""One generation's signals as the detector saw them, token by token, and the record written for it.

A record is one JSON object: the generation's per-token trajectories (every signal the detector compared with
a threshold, rounded to :data:`DIGITS` decimals, ``null`` where a signal was not defined yet), their extremes,
its length and finish reason, the model and backend, the sampling parameters that shape loops, and the setup
the signals were computed with (calibration, layer bands, window, outlier dimensions, recurrence levels) so
that a calibration fitted on the recording can check it matches. Every token is kept (no down-sampling): the
tracked statistics (EWMA, CUSUM) are recomputed from the raw values at fit time. Token ids only with
``--record-text``.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from monitors.calibration import Calibration

__all__ = ["DIGITS", "RECORD_VERSION", "SignalTrace", "calibration_setup", "generation_record"]

RECORD_VERSION = 1
DIGITS = 4
# Derived from the floors of the calibration in force: recomputed from ``<band>.pr_novel`` at fit time.
_DERIVED_SUFFIX = ".rank_margin"


@dataclass
class SignalTrace:
    """Per-token signal values of one generation (``None`` before a signal exists)."""

    values: dict[str, list[float | None]] = field(default_factory=dict)
    tokens: int = 0

    def add(self, values: dict[str, float]) -> None:
        """One token's signals."""
        for name, value in values.items():
            if name.endswith(_DERIVED_SUFFIX):
                continue
            column = self.values.get(name)
            if column is None:
                column = self.values[name] = [None] * self.tokens
            column.append(round(value, DIGITS) if math.isfinite(value) else None)
        self.tokens += 1
        for column in self.values.values():
            if len(column) < self.tokens:
                column.append(None)

    def extremes(self) -> dict[str, dict[str, float]]:
        """Per signal, its lowest and highest defined value."""
        out = {}
        for name, column in self.values.items():
            defined = [v for v in column if v is not None]
            if defined:
                out[name] = {"min": min(defined), "max": max(defined)}
        return out


def calibration_setup(calibration: Calibration, digest: str) -> dict[str, Any]:
    """What the recorded signals depend on: the calibration in force (``model@created`` and its file's sha256),
    the layer bands, the window and the extractor's reference (outlier dimensions, recurrence levels)."""
    return {
        "calibration": f"{calibration.model}@{calibration.created}",
        "calibration_sha256": digest,
        "bands": {band.name: list(band.layers) for band in calibration.bands},
        "window": calibration.window,
        "outlier_dims": {str(layer): dims for layer, dims in calibration.outlier_dims.items()},
        "recurrence_levels": {str(layer): level for layer, level in calibration.recurrence_levels.items()},
    }


def generation_record(
    trace: SignalTrace,
    context: dict[str, Any],
    finish_reason: str,
    token_ids: list[int] | None,
    finished_at: float,
) -> dict[str, Any]:
    """The JSON record of a generation that finished at ``finished_at`` (epoch seconds; ``context``: model,
    backend, endpoint, sampling, setup)."""
    record = {
        "version": RECORD_VERSION,
        "time": round(finished_at, 3),
        **context,
        "tokens": trace.tokens,
        "finish_reason": finish_reason,
        "extremes": trace.extremes(),
        "signals": trace.values,
    }
    if token_ids is not None:
        record["token_ids"] = token_ids
    return record
