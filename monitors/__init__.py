"""Hidden-state stability monitors: metrics, streaming detectors, calibration.

Pure numpy/torch, no web code: usable offline, in the gateway and inside a vLLM worker.
"""

from monitors.bands import LayerBand, default_bands
from monitors.calibration import Calibration, load_calibration
from monitors.detector import StabilityDetector
from monitors.features import FeatureExtractor, StepFeatures
from monitors.probe import LinearProbe
from monitors.verdict import Reason, Verdict, VerdictLevel

__all__ = [
    "Calibration",
    "FeatureExtractor",
    "LayerBand",
    "LinearProbe",
    "Reason",
    "StabilityDetector",
    "StepFeatures",
    "Verdict",
    "VerdictLevel",
    "default_bands",
    "load_calibration",
]
