"""The calibration reloaded while serving, on SIGHUP: new requests are judged by the new thresholds, requests
under way keep the monitors (and thresholds) they started with.

The file reloaded is ``--calibration``, else the one shipped for the served model. A file that cannot be
loaded (unreadable, not a calibration) or that would change the features themselves (layer bands, window,
mean states, outlier dimensions, probe, recurrence levels: the backend computes features with them, a restart
applies them) leaves the calibration in force as it was, and the log says why. The ``vllm`` backend is the
exception (:class:`~gateway.generation.FeaturesUpstream`): its plugin computes the features from its own
``SINKWATCH_CALIBRATION``, which it reloads itself, so any file is taken and new requests expect the features
the new file makes (a gateway started uncalibrated in front of vLLM takes its fitted file on SIGHUP).
Which calibration is in force is logged and exported as ``sinkwatch_calibration_info{created, sha256}``.
"""

import hashlib
import logging
from pathlib import Path

from gateway import metrics
from gateway.generation import FeaturesUpstream
from gateway.serving.serving_context import ServingContext
from monitors.calibration import Calibration, load_calibration, rank_overlay_path

__all__ = ["CalibrationReloader", "calibration_digest"]

log = logging.getLogger(__name__)


def calibration_digest(path: Path) -> str:
    """sha256 of a calibration file and of its rank overlay when it has one (what ``load_calibration`` reads)."""
    digest = hashlib.sha256(path.read_bytes())
    overlay = rank_overlay_path(path)
    if overlay.is_file():
        digest.update(overlay.read_bytes())
    return digest.hexdigest()


def _feature_setup(calibration: Calibration) -> tuple:
    """What the backend computes features with: a reload must leave it as it is."""
    return calibration.bands, calibration.window, calibration.extractor_reference()


class CalibrationReloader:
    """Reloads the calibration file ``path`` into ``ctx`` (on SIGHUP, through :meth:`reload`)."""

    def __init__(self, ctx: ServingContext, path: Path) -> None:
        self.ctx = ctx
        self.path = path

    def reload(self, why: str) -> bool:
        """Load the file again and put it in force; False (logged, the old one kept) when it cannot be."""
        current = self.ctx.calibration
        try:
            calibration = load_calibration(self.path)
            digest = calibration_digest(self.path)
        except (OSError, ValueError, KeyError, TypeError) as problem:
            log.error(
                "%s: keeping calibration %s, %s cannot be loaded: %s", why, self._name(current), self.path, problem
            )
            return False
        upstream = self.ctx.backend if isinstance(self.ctx.backend, FeaturesUpstream) else None
        if current is not None and upstream is None and _feature_setup(calibration) != _feature_setup(current):
            log.error(
                "%s: keeping calibration %s, %s changes the features (bands, window or the extractor's reference: "
                "mean states, outlier dimensions, probe, recurrence levels), which takes a restart",
                why,
                self._name(current),
                self.path,
            )
            return False
        if digest == self.ctx.calibration_digest:
            log.info("%s: calibration %s unchanged (sha256 %s)", why, self._name(calibration), digest[:12])
            return True
        if upstream is not None:
            upstream.use_calibration(calibration)
        self.ctx.use_calibration(calibration, digest)
        for model in self.ctx.backend.model_names():
            metrics.calibration_in_force(model, calibration, digest)
        log.info(
            "%s: calibration %s in force (sha256 %s) from %s", why, self._name(calibration), digest[:12], self.path
        )
        return True

    @staticmethod
    def _name(calibration: Calibration | None) -> str:
        return f"{calibration.model}@{calibration.created}" if calibration else "none"
