"""The gate outside the HTTP server: the embedded model behind a :class:`GateController`, with timings.

Used by ``sinkwatch bench holdback`` and ``sinkwatch eval rescue``: both need the exact serving path
(backend, monitor, hold-back, rescue) without HTTP in the measurement.
"""

import time
from dataclasses import dataclass

from gateway.backends.factory import build_backend
from gateway.config import Settings
from gateway.errors import ContentBlocked
from gateway.gate.controller import GateController
from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import Backend, GenerationRequest, StartEvent
from monitors.calibration import Calibration, load_calibration

__all__ = ["GatedRun", "run_gated", "start_embedded"]


@dataclass
class GatedRun:
    """One request through the gate: what was released and when (seconds since submission)."""

    gate: GateController
    releases: list[tuple[float, str]]
    finished_at: float

    @property
    def text(self) -> str:
        return "".join(piece for _, piece in self.releases)

    @property
    def first_release_at(self) -> float | None:
        """Time to the first released text (the client's time to first token, minus HTTP)."""
        return next((at for at, piece in self.releases if piece), None)


async def start_embedded(model: str) -> tuple[Backend, Calibration]:
    """The embedded backend for ``model`` with its shipped calibration, started."""
    settings = Settings().replace(model=model)
    calibration = load_calibration(settings.served_name())
    backend = build_backend(settings, calibration)
    await backend.start()
    return backend, calibration


async def run_gated(
    backend: Backend,
    calibration: Calibration,
    request: GenerationRequest,
    policy: Policy,
    config: GateConfig,
    streaming: bool = True,
) -> GatedRun:
    """Serve ``request`` as the gateway would, recording every release."""
    gate = GateController(backend, request, policy, config, lambda: RequestMonitor(calibration), streaming)
    started = time.perf_counter()
    events = backend.generate(request)
    first = await anext(events)
    if not isinstance(first, StartEvent):
        raise RuntimeError(f"backend {backend.name} did not start the generation properly")
    releases = []
    try:
        async for piece in gate.run(events):
            releases.append((time.perf_counter() - started, piece))
    except ContentBlocked:
        pass
    return GatedRun(gate, releases, time.perf_counter() - started)
