"""The ``vllm`` backend: vLLM servers running sinkwatch's plugin, through the upstream pool.

Every generation is streamed from the upstream (whatever the client asked; the gateway shapes the answer)
with ``return_token_ids`` on, so each chunk names the tokens it carries. A monitored request also carries
``vllm_xargs`` with the gateway's request id and the address of its statistics receiver; the plugin in
the engine computes each generated token's features (the embedded engine's :class:`FeatureExtractor`,
over the decode-time hidden states) and pushes them there. The backend joins the two streams by request
id and token index, so the monitors, the gate and the stability report work exactly as with the
embedded engine. Rescue continues an accepted prefix with vLLM's ``continue_final_message``.

Client requests take :meth:`VLLMBackend.relay` (``gateway.backends.vllm_relay``): the body as the client
sent it, the answer as vLLM sent it, each choice monitored; :meth:`generate` serves the lab's harnesses.
"""

import logging
from collections.abc import AsyncIterator

import orjson

from gateway import metrics
from gateway.backends.openai import chunk_choice, finish_event, upstream_request
from gateway.backends.vllm_relay import feature_tap, relay_to_vllm
from gateway.backends.vllm_stats import FeatureStream, StatsReceiver
from gateway.config import Settings
from gateway.generation import GenerationEvent, GenerationRequest, StartEvent, TokenEvent
from gateway.relay.seam import FeatureTap, RelayCall, RelayItem
from gateway.upstream.event_stream import check_event_stream, event_batches
from gateway.upstream.pool import UpstreamPool
from monitors.bands import LayerBand
from monitors.calibration import Calibration
from monitors.model_profile import ModelProfile, uncalibrated
from monitors.vllm_plugin.wire import RequestTag, monitor_profile

__all__ = ["vllm_backend"]

log = logging.getLogger(__name__)

# The gateway's side of an uncalibrated vLLM upstream: no bands of its own (it takes the plugin's).
NO_PROFILE = ModelProfile((), {}, {})


class VLLMBackend:
    """Generations from vLLM upstreams, with features from the engine plugin when a receiver is given."""

    name = "vllm"
    continues = True  # vLLM continues a partial assistant message (continue_final_message)

    def __init__(
        self,
        pool: UpstreamPool,
        receiver: StatsReceiver | None,
        calibration: Calibration | None = None,
        configured: bool = False,
        bands: tuple[LayerBand, ...] = (),
    ) -> None:
        self.pool = pool
        self.receiver = receiver
        self.calibration = calibration
        self._bands = bands  # --bands: the layers the plugin was told to capture, whatever the calibration's
        self._configured = configured  # the operator named the calibration file: used whatever the upstream serves

    @property
    def ready(self) -> bool:
        return self.pool.ready

    def model_names(self) -> list[str]:
        return self.pool.model_names()

    async def start(self) -> None:
        if self.receiver is not None:
            await self.receiver.start()
            for outcome in ("received", "missing", "late"):  # series exist from the start, for rate()
                metrics.VLLM_STATS.labels(outcome)
        await self.pool.start()
        self._own_calibration_only()

    def _own_calibration_only(self) -> None:
        """A calibration found by name for another model than the upstream serves never judges it: the upstream's
        model is then monitored uncalibrated (the plugin does the same on its side)."""
        served = self.model_names()
        calibration = self.calibration
        if self._configured or calibration is None or not served or calibration.model in served:
            return
        log.warning(
            "the upstream serves %s, not %s whose calibration was found by name: serving it uncalibrated",
            ", ".join(served),
            calibration.model,
        )
        self.use_calibration(uncalibrated(served[0], NO_PROFILE))

    def use_calibration(self, calibration: Calibration) -> None:
        """Requests opened from now on expect the plugin's features under ``calibration`` (a reload: the plugin
        watches its own ``SINKWATCH_CALIBRATION`` and gives new requests the new extractors); requests under
        way keep the profile they were opened with."""
        self.calibration = calibration
        if self.receiver is not None:
            self.receiver.profile = monitor_profile(calibration, self._bands or calibration.bands)

    async def close(self) -> None:
        await self.pool.close()
        if self.receiver is not None:
            await self.receiver.close()

    def relay(self, call: RelayCall) -> AsyncIterator[RelayItem]:
        """Relay a client's request as sent, with each choice's tokens and features (``vllm_relay``)."""
        return relay_to_vllm(self.pool, self.receiver, call)

    def feature_tap(self, call: RelayCall) -> FeatureTap:
        """``call`` tagged for the plugin (the Responses API: its answer has no token ids to match)."""
        return feature_tap(self.receiver, call)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        path, body = upstream_request(request, "continue_final_message")
        body["return_token_ids"] = True
        stream: FeatureStream | None = None
        if self.receiver is not None and request.monitor:
            stream = self.receiver.open(request.request_id)
            body["vllm_xargs"] = RequestTag(request.request_id, self.receiver.address).to_xargs()
        try:
            response = await self.pool.open(
                path, orjson.dumps(body), model=request.model, request_id=request.request_id
            )
            async with response:
                if not response.ok:
                    raise await response.error()
                check_event_stream(response)
                yield StartEvent(prompt_tokens=None)
                index, finish_reason, usage = 0, None, {}
                async for batch in event_batches(response):
                    for _, event in batch:
                        text, token_ids, reason = chunk_choice(event)
                        finish_reason = reason or finish_reason
                        usage = event.get("usage") or usage
                        if not token_ids and text:
                            yield TokenEvent(text, None)
                        for position, token_id in enumerate(token_ids, start=1):
                            features = await stream.take(index, token_id) if stream is not None else None
                            index += 1
                            yield TokenEvent(text if position == len(token_ids) else "", token_id, features)
                yield finish_event(finish_reason, usage, index)
        finally:
            if stream is not None:
                stream.close()


def vllm_backend(
    settings: Settings, calibration: Calibration | None, bands: tuple[LayerBand, ...] | None
) -> VLLMBackend:
    """The ``vllm`` backend the settings describe; features are collected only when they can be used."""
    receiver = None
    if settings.capture:
        # Without a calibration the model's depth is unknown here: the plugin's own thirds are taken.
        calibration = calibration or uncalibrated(settings.served_name(), NO_PROFILE)
        profile = monitor_profile(calibration, bands or calibration.bands)
        receiver = StatsReceiver(
            settings.vllm_stats_bind, settings.vllm_stats_address, profile, settings.vllm_stats_timeout
        )
    # Found by name: no file named, and the calibration is the one of the name the settings serve (a calibration
    # handed to the app for another name was chosen for this upstream).
    by_name = not settings.calibration and calibration is not None and calibration.model == settings.served_name()
    pool = UpstreamPool.from_settings(settings)
    return VLLMBackend(pool, receiver, calibration if settings.capture else None, not by_name, bands or ())
