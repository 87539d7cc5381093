"""A fake vLLM server with the sinkwatch plugin, for backend tests that need no real engine.

It answers like vLLM's OpenAI server with ``return_token_ids`` (every chunk names its token ids, the
usage chunk ends the stream) and, for requests tagged through ``vllm_xargs``, does what the plugin does:
runs a real :class:`FeatureExtractor` over (synthetic, seeded) states and pushes each token's features to
the sink named in the request, before the token's chunk leaves, as the real worker does. Knobs make it
send features late or not at all, or fail.
"""

import asyncio
import json
from dataclasses import dataclass, field

import numpy as np
import zmq
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from monitors.calibration import Calibration
from monitors.features import FeatureExtractor
from monitors.vllm_plugin.wire import RequestTag, encode_batch, monitor_profile

MODEL = "SmolLM2-135M-Instruct"
WIDTH = 576


@dataclass
class FakeVLLMConfig:
    """What the fake does; fields may be changed between requests."""

    tokens: int = 8
    features: str = "before"  # before: pushed before each token's chunk; after: delay seconds after; none
    delay: float = 0.0
    status: int = 200  # a non-200 status answers an OpenAI error instead of generating
    profile: str | None = None  # overrides the profile stamped on messages


@dataclass
class FakeVLLM:
    """The Starlette app and what it saw."""

    calibration: Calibration
    config: FakeVLLMConfig = field(default_factory=FakeVLLMConfig)
    bodies: list[dict] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._context = zmq.Context()
        self._sockets: dict[str, zmq.Socket] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.generate, methods=["POST"]),
                Route("/v1/completions", self.generate, methods=["POST"]),
            ]
        )

    @staticmethod
    def token_id(index: int) -> int:
        """The fake's ``index``-th generated token id (text ``" t<index>"``)."""
        return 1000 + index

    async def models(self, _: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm"}]})

    async def generate(self, request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        self.bodies.append(body)
        self.request_ids.append(request.headers.get("x-request-id", ""))
        config = self.config
        if config.status != 200:
            error = {"message": f"fake failure {config.status}", "type": "BadRequestError", "param": None, "code": 400}
            return JSONResponse({"error": error}, status_code=config.status)
        tag = RequestTag.from_extra_args(body.get("vllm_xargs"))
        limit = min(int(body.get("max_tokens") or config.tokens), config.tokens)
        return StreamingResponse(self._events(body, tag, limit), media_type="text/event-stream")

    async def _events(self, body: dict, tag: RequestTag | None, count: int):
        chat = "messages" in body
        calibration = self.calibration
        extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
        states = np.random.default_rng(count).normal(size=(count, len(extractor.layers), WIDTH))
        profile = self.config.profile or monitor_profile(calibration, calibration.bands)
        if chat:
            yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for i in range(count):
            token = self.token_id(i)
            if tag is not None and self.config.features != "none":
                message = encode_batch(profile, [(tag.request_id, extractor.push(states[i], 1.0 + i / 10, token))])
                if self.config.features == "before":
                    self._push(tag.sink, message)
                else:
                    asyncio.get_running_loop().call_later(self.config.delay, self._push, tag.sink, message)
            text = f" t{i}"
            finish = "length" if i == count - 1 else None
            choice = {"index": 0, "finish_reason": finish, "token_ids": [token]}
            choice.update({"delta": {"content": text}} if chat else {"text": text})
            yield _sse({"choices": [choice]})
            await asyncio.sleep(0.001)
        usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": count + 5}
        yield _sse({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    def _push(self, sink: str, message: bytes) -> None:
        if sink not in self._sockets:
            self._sockets[sink] = self._context.socket(zmq.PUSH)
            self._sockets[sink].setsockopt(zmq.LINGER, 0)
            self._sockets[sink].connect(sink)
        self._sockets[sink].send(message)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._context.term()


def _sse(event: dict) -> str:
    return f"data: {json.dumps({'id': 'cmpl-fake', 'model': MODEL, **event})}\n\n"
