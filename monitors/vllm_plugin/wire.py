"""What travels between the vLLM plugin and the gateway: request tags out, feature batches back.

The gateway tags each monitored request through vLLM's ``vllm_xargs`` (they reach the worker as
``SamplingParams.extra_args``): its own request id and the ZMQ endpoint where it collects statistics.
The worker answers with one JSON message per engine step and gateway: the :class:`StepFeatures` of every
token it sampled for that gateway's requests, stamped with the monitoring profile (calibration and
bands) the features were computed with, so that a gateway never mixes features from another setup.
"""

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from monitors.bands import LayerBand, format_bands
from monitors.calibration import Calibration
from monitors.features import StepFeatures

__all__ = [
    "CHOICES_ARG",
    "REQUEST_ID_ARG",
    "SINK_ARG",
    "RequestTag",
    "choice_request_id",
    "decode_batch",
    "encode_batch",
    "monitor_profile",
    "profile_accepts",
]

REQUEST_ID_ARG = "sinkwatch_request_id"
SINK_ARG = "sinkwatch_sink"
CHOICES_ARG = "sinkwatch_choices"
# vLLM runs a request with ``n > 1`` as one child request per choice, its engine id prefixed "<index>_".
_CHILD_ID = re.compile(r"^(\d+)_")


def choice_request_id(request_id: str, choice: int) -> str:
    """The id features of choice ``choice`` of a request with several choices are published under."""
    return f"{request_id}#{choice}"


@dataclass(frozen=True)
class RequestTag:
    """A monitored request as the worker sees it: the gateway's id for it and where to send its features."""

    request_id: str
    sink: str
    choices: int = 1

    def to_xargs(self) -> dict[str, str | int]:
        """The ``vllm_xargs`` entries that carry this tag in an OpenAI request body."""
        xargs: dict[str, str | int] = {REQUEST_ID_ARG: self.request_id, SINK_ARG: self.sink}
        if self.choices > 1:
            xargs[CHOICES_ARG] = self.choices
        return xargs

    def for_engine_request(self, engine_id: str) -> "RequestTag":
        """The tag of one engine request: with several choices, each child publishes under its own id
        (:func:`choice_request_id`), so the gateway can tell the choices' tokens apart."""
        child = _CHILD_ID.match(engine_id) if self.choices > 1 else None
        if child is None:
            return self
        return RequestTag(choice_request_id(self.request_id, int(child.group(1))), self.sink)

    @classmethod
    def from_extra_args(cls, extra_args: Mapping | None) -> "RequestTag | None":
        """The tag in a request's ``SamplingParams.extra_args``, or None for an unmonitored request."""
        if not extra_args:
            return None
        request_id, sink = extra_args.get(REQUEST_ID_ARG), extra_args.get(SINK_ARG)
        if not isinstance(request_id, str) or not isinstance(sink, str) or not request_id or not sink:
            return None
        choices = extra_args.get(CHOICES_ARG, 1)
        return cls(request_id, sink, choices if isinstance(choices, int) and choices > 1 else 1)


def monitor_profile(calibration: Calibration, bands: Iterable[LayerBand]) -> str:
    """Names everything that shapes the features: the model, the calibration's extractor reference (mean states,
    outlier dimensions, probe, recurrence levels; not its thresholds, so a calibration refitted on traffic
    agrees with the one the features were computed with), bands and window. Both sides must agree. An
    uncalibrated model's is ``<model>@uncalibrated``: each side derives its reference from the model itself
    (:func:`profile_accepts`)."""
    if not calibration.calibrated:
        return f"{calibration.model}@{calibration.created}|{format_bands(bands)}|w{calibration.window}"
    reference = json.dumps(calibration.extractor_reference(), sort_keys=True)
    digest = hashlib.sha256(reference.encode()).hexdigest()[:12]
    return f"{calibration.model}#{digest}|{format_bands(bands)}|w{calibration.window}"


def profile_accepts(expected: str, received: str) -> bool:
    """Whether features computed under profile ``received`` serve a gateway expecting ``expected``: the same
    profile, or, when the gateway has no calibration for the model (and so no bands of its own: it cannot see
    the model's depth), the same model, uncalibrated, and window on the worker's own bands."""
    if received == expected:
        return True
    expected_parts, received_parts = expected.split("|"), received.split("|")
    if len(expected_parts) != 3 or len(received_parts) != 3:
        return False
    (model, bands, window), (received_model, _, received_window) = expected_parts, received_parts
    return model.endswith("@uncalibrated") and not bands and (received_model, received_window) == (model, window)


def encode_batch(profile: str, items: Iterable[tuple[str, StepFeatures]]) -> bytes:
    """One message: the profile and ``(gateway request id, features)`` pairs."""
    return json.dumps({"profile": profile, "steps": [[rid, f.to_wire()] for rid, f in items]}).encode()


def decode_batch(message: bytes) -> tuple[str, list[tuple[str, StepFeatures]]]:
    """Inverse of :func:`encode_batch`; raises ``ValueError`` on anything malformed."""
    try:
        data = json.loads(message)
        return str(data["profile"]), [(str(rid), StepFeatures.from_wire(wire)) for rid, wire in data["steps"]]
    except (KeyError, TypeError, ValueError) as bad:
        raise ValueError(f"malformed sinkwatch stats message: {bad}") from bad
