"""A fake vLLM server with the sinkwatch plugin, for backend tests that need no real engine.

It answers like vLLM's OpenAI server (whole or streamed; with ``return_token_ids`` every chunk names
its token ids; ``n`` choices, streamed one after the other; content, tool-call or reasoning deltas) and,
for requests tagged through ``vllm_xargs``, does what the plugin does: runs a real
:class:`FeatureExtractor` over (synthetic, seeded) states and pushes each token's features to the sink
named in the request (each choice's under its own id), before the token's chunk leaves, as the real
worker does. Knobs make it send features late or not at all, fail, or fall into a loop.
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
    kind: str = "content"  # content | tool_calls | reasoning (the first half reasoning, then content)
    loop_from: int | None = None  # from this token on: a 3-token cycle at low entropy (a sink)
    loop_choices: tuple[int, ...] = (0,)  # the choices that loop (with several), and only the first attempt
    loop_requests: int = 1  # how many requests loop (later ones, e.g. rescues, do not)
    held: int = 0  # the first tokens come as vLLM sends tokens its parser holds back: an empty delta
    loop_text: bool = False  # the loop's text repeats too (for a reader, which reads the text, not the features)


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
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
            ]
        )

    @staticmethod
    def token_id(index: int) -> int:
        """The fake's ``index``-th generated token id (text ``" t<index>"``)."""
        return 1000 + index

    async def models(self, _: Request) -> JSONResponse:
        card = {"id": MODEL, "object": "model", "created": 1, "owned_by": "vllm", "max_model_len": 2048}
        return JSONResponse({"object": "list", "data": [card]})

    async def embeddings(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.bodies.append(body)
        data = [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}]
        usage = {"prompt_tokens": 2, "total_tokens": 2}
        return JSONResponse({"object": "list", "data": data, "model": MODEL, "usage": usage})

    async def responses(self, request: Request) -> JSONResponse | StreamingResponse:
        """The Responses API as vLLM serves it: one output item per kind of token, an event per token (its
        features pushed first, as the plugin does), ``response.completed`` with the whole response."""
        body = await request.json()
        self.bodies.append(body)
        config = self.config
        tag = RequestTag.from_extra_args(body.get("vllm_xargs"))
        limit = min(int(body.get("max_output_tokens") or config.tokens), config.tokens)
        features: list[tuple[str, bytes]] = []
        tokens = self._choice(body, tag, limit, 0, len(self.bodies) <= config.loop_requests, features)
        events = _response_events(tokens)
        if not body.get("stream"):
            for sink, message in features:
                self._push(sink, message)
            return JSONResponse(events[-1]["response"])
        return StreamingResponse(self._response_stream(events, features), media_type="text/event-stream")

    async def _response_stream(self, events: list[dict], features: list[tuple[str, bytes]]):
        for number, event in enumerate(events):
            if event["type"].endswith(".delta") and features:
                self._push(*features.pop(0))
            yield f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': number})}\n\n"
            await asyncio.sleep(0.001)

    async def generate(self, request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        self.bodies.append(body)
        self.request_ids.append(request.headers.get("x-request-id", ""))
        config = self.config
        if config.status != 200:
            error = {"message": f"fake failure {config.status}", "type": "BadRequestError", "param": "n", "code": 400}
            return JSONResponse({"error": error}, status_code=config.status)
        tag = RequestTag.from_extra_args(body.get("vllm_xargs"))
        limit = min(int(body.get("max_tokens") or config.tokens), config.tokens)
        looping = len(self.bodies) <= config.loop_requests
        choices = [self._choice(body, tag, limit, i, looping) for i in range(int(body.get("n") or 1))]
        if body.get("stream"):
            return StreamingResponse(self._events(body, choices), media_type="text/event-stream")
        return JSONResponse(self._whole(body, choices))

    def _choice(
        self, body: dict, tag: RequestTag | None, count: int, index: int, looping: bool, later: list | None = None
    ) -> list[tuple]:
        """The choice's tokens as (id, text, kind), its features pushed (or scheduled) as the plugin would;
        with ``later``, each token's (sink, message) is put there for the caller to push with its event."""
        calibration, config = self.calibration, self.config
        extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
        states = np.random.default_rng(count + index).normal(size=(count, len(extractor.layers), WIDTH))
        profile = config.profile or monitor_profile(calibration, calibration.bands)
        loops = looping and config.loop_from is not None and index in config.loop_choices
        tokens = []
        for i in range(count):
            in_loop = loops and i >= config.loop_from
            token = 1000 + i % 3 if in_loop else self.token_id(i) + 100 * index
            entropy = 0.05 if in_loop else 1.0 + i / 10
            kind = config.kind if config.kind != "reasoning" else ("reasoning" if i < count // 2 else "content")
            shown = config.loop_from + (i - config.loop_from) % 3 if in_loop and config.loop_text else i
            tokens.append((token, f" t{shown}", kind))
            if tag is not None and config.features != "none":
                published = tag.for_engine_request(f"{index}_{tag.request_id}") if tag.choices > 1 else tag
                features = extractor.push(states[i], entropy, token)
                message = encode_batch(profile, [(published.request_id, features)])
                if later is not None:
                    later.append((tag.sink, message))
                elif config.features == "before":
                    self._push(tag.sink, message)
                else:
                    asyncio.get_running_loop().call_later(config.delay + i * 0.002, self._push, tag.sink, message)
        return tokens

    async def _events(self, body: dict, choices: list[list[tuple]]):
        chat = "messages" in body
        with_ids = body.get("return_token_ids") is True
        first = {"prompt_token_ids": [1, 2, 3, 4, 5]} if with_ids else {}
        if chat:
            for index in range(len(choices)):
                yield _sse({**first, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}}]})
                first = {}
        for index, tokens in enumerate(choices):
            for i, (token, text, kind) in enumerate(tokens):
                finish = "length" if i == len(tokens) - 1 else None
                choice = {"index": index, "finish_reason": finish}
                delta = {} if i < self.config.held else _delta(kind, text, i)
                choice.update({"delta": delta} if chat else {"text": text})
                if with_ids:
                    choice["token_ids"] = [token]
                elif not delta and chat:
                    continue  # vLLM sends a held token's chunk only when token ids are asked for
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": text, "logprob": -0.5, "top_logprobs": []}]}
                yield _sse({**first, "choices": [choice]})
                first = {}
                await asyncio.sleep(0.001)
        count = sum(len(tokens) for tokens in choices)
        usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": count + 5}
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    def _whole(self, body: dict, choices: list[list[tuple]]) -> dict:
        chat = "messages" in body
        with_ids = body.get("return_token_ids") is True
        answer: dict = {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion", "model": MODEL}
        if with_ids:
            answer["prompt_token_ids"] = [1, 2, 3, 4, 5]
        answer["choices"] = []
        for index, tokens in enumerate(choices):
            text = "".join(t for _, t, _ in tokens)
            kinds = {kind for _, _, kind in tokens}
            choice: dict = {"index": index, "finish_reason": "length", "logprobs": _whole_logprobs(body, tokens)}
            if chat:
                message: dict = {"role": "assistant", "content": None if kinds == {"tool_calls"} else text}
                if "reasoning" in kinds:
                    message["reasoning_content"] = "".join(t for _, t, kind in tokens if kind == "reasoning")
                    message["content"] = "".join(t for _, t, kind in tokens if kind == "content")
                if "tool_calls" in kinds:
                    message["tool_calls"] = [
                        {"id": "call-0", "type": "function", "function": {"name": "f", "arguments": text}}
                    ]
                choice["message"] = message
            else:
                choice["text"] = text
            if with_ids:
                choice["token_ids"] = [token for token, _, _ in tokens]
            answer["choices"].append(choice)
        count = sum(len(tokens) for tokens in choices)
        answer["usage"] = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": count + 5}
        answer["kv_transfer_params"] = None
        return answer

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


def _whole_logprobs(body: dict, tokens: list[tuple]) -> dict | None:
    """A whole choice's log-probabilities as vLLM gives them, one entry per token (chat or completions form)."""
    if "messages" in body:
        if body.get("logprobs") is not True:
            return None
        return {"content": [{"token": text, "logprob": -0.5, "top_logprobs": []} for _, text, _ in tokens]}
    if not isinstance(body.get("logprobs"), int):
        return None
    return {"tokens": [text for _, text, _ in tokens], "token_logprobs": [-0.5] * len(tokens)}


def _delta(kind: str, text: str, i: int) -> dict:
    if kind == "tool_calls":
        call = {"index": 0, "function": {"arguments": text}}
        if i == 0:
            call.update(id="call-0", type="function", function={"name": "f", "arguments": text})
        return {"tool_calls": [call]}
    if kind == "reasoning":
        return {"reasoning_content": text}
    return {"content": text}


_RESPONSE_ITEMS = {
    "content": ("message", "response.output_text.delta", "output_text"),
    "reasoning": ("reasoning", "response.reasoning_text.delta", "reasoning_text"),
    "tool_calls": ("function_call", "response.function_call_arguments.delta", None),
}


def _response_events(tokens: list[tuple]) -> list[dict]:
    """A Responses stream of ``tokens`` (id, text, kind): an output item per run of one kind, a delta per token."""
    response = {"id": "resp-fake", "object": "response", "model": MODEL, "status": "in_progress", "output": []}
    events: list[dict] = [{"type": "response.created", "response": response}]
    items: list[dict] = []
    for _, text, kind in tokens:
        item_type, delta_type, part_type = _RESPONSE_ITEMS[kind]
        if not items or items[-1]["type"] != item_type:
            if items:
                items[-1]["status"] = "completed"
                events.append({"type": "response.output_item.done", "output_index": len(items) - 1, "item": items[-1]})
            item: dict = {"id": f"item-{len(items)}", "type": item_type, "status": "in_progress"}
            item.update({"content": []} if part_type else {"name": "f", "arguments": "", "call_id": "call-0"})
            items.append(item)
            events.append({"type": "response.output_item.added", "output_index": len(items) - 1, "item": dict(item)})
            if part_type:
                part = {"type": part_type, "text": ""}
                events.append({"type": "response.content_part.added", "output_index": len(items) - 1, "part": part})
                item["content"] = [dict(part)]
        events.append({"type": delta_type, "output_index": len(items) - 1, "content_index": 0, "delta": text})
        if part_type:
            items[-1]["content"][0]["text"] += text
        else:
            items[-1]["arguments"] += text
    items[-1]["status"] = "completed"
    events.append({"type": "response.output_item.done", "output_index": len(items) - 1, "item": items[-1]})
    usage = {"input_tokens": 5, "output_tokens": len(tokens), "total_tokens": len(tokens) + 5}
    done = {**response, "status": "completed", "output": items, "usage": usage}
    return [*events, {"type": "response.completed", "response": done}]


def _sse(event: dict) -> str:
    return f"data: {json.dumps({'id': 'cmpl-fake', 'model': MODEL, **event})}\n\n"
