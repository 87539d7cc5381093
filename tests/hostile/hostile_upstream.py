"""An upstream that misbehaves at the HTTP level, for the hostile suite: a tiny asyncio server on a thread.

It answers ``GET /v1/models`` with one model (named for its behaviour), unless told to drip it; a generation
request (any ``POST``) gets the misbehaviour it was started with; ``GET /stats`` says how many body bytes it
has written. In a test's own process (:class:`HostileUpstream`, on a thread) or, where it works hard and must
not take the test's CPU and interpreter lock from the ``/healthz`` probe, in its own
(:func:`hostile_upstream_process`). Well-behaved upstreams are the lab's fake upstream.
"""

import argparse
import asyncio
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum

import httpx
import orjson

from lab.fakes.processes import free_port, running

_CHUNKED = b"transfer-encoding: chunked\r\n"
_UNAVAILABLE = b'{"error": {"message": "not serving", "type": "server_error", "param": null, "code": null}}'


def _chunk_event(content: str) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}


_ROLE = orjson.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})


HUGE_BYTES = 63 * 1000 * 1000


class Behaviour(StrEnum):
    """What the upstream does wrong."""

    DRIP_MODELS = "drip_models"  # GET /models: one more header line every `interval` seconds, never ending
    KEEPALIVE_ONLY = "keepalive_only"  # POST: a stream with one event, then only `: keepalive` comments
    ENDLESS_HEAD = "endless_head"  # POST: a response head whose header lines never end
    HUGE_BODY = "huge_body"  # POST: a non-streamed answer of `huge_bytes`, chunked (no length declared)
    FLOOD = "flood"  # POST: a stream of 8 KB events, as fast as it is read, never ending


class HostileUpstream:
    """The server on its own event loop in a background thread; ``with`` starts and stops it."""

    def __init__(
        self, behaviour: Behaviour, interval: float = 0.2, huge_bytes: int = HUGE_BYTES, port: int = 0
    ) -> None:
        self.behaviour = behaviour
        self.model = behaviour.value
        self._models_body = orjson.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]})
        self.interval = interval
        self.huge_bytes = huge_bytes
        self.sent_bytes = 0  # body bytes of HUGE_BODY and FLOOD answers written so far
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-upstream", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "HostileUpstream":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def start(self) -> None:
        """Listen on loopback (on a free port when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                lines = head.lower().split(b"\r\n")
                length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if path == b"/stats":
                    stats = orjson.dumps({"sent_bytes": self.sent_bytes})
                    writer.write(_head(b"application/json", b"content-length: %d\r\n" % len(stats)) + stats)
                elif method == b"GET":
                    await self._models(writer)
                else:
                    await self._generation(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _models(self, writer: asyncio.StreamWriter) -> None:
        if self.behaviour is not Behaviour.DRIP_MODELS:
            body = self._models_body
            writer.write(_head(b"application/json", b"content-length: %d\r\n" % len(body)) + body)
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await self._endless_header(writer)

    async def _generation(self, writer: asyncio.StreamWriter) -> None:
        if self.behaviour is Behaviour.ENDLESS_HEAD:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
            await self._endless_header(writer)
        elif self.behaviour is Behaviour.KEEPALIVE_ONLY:
            writer.write(_head(b"text/event-stream", _CHUNKED) + _chunk(b"data: %s\n\n" % _ROLE))
            while True:
                writer.write(_chunk(b": keepalive\n\n"))
                await writer.drain()
                await asyncio.sleep(self.interval)
        elif self.behaviour is Behaviour.HUGE_BODY:
            writer.write(_head(b"application/json", _CHUNKED))
            size = 1 << 20
            piece = _chunk(b" " * size)
            while self.sent_bytes < self.huge_bytes:
                writer.write(piece)
                await writer.drain()
                self.sent_bytes += size
            writer.write(_chunk(b'{"choices": []}') + b"0\r\n\r\n")
            await writer.drain()
        elif self.behaviour is Behaviour.FLOOD:
            writer.write(_head(b"text/event-stream", _CHUNKED))
            event = _chunk(b"data: %s\n\n" % orjson.dumps(_chunk_event("x" * 8192)))
            while True:
                writer.write(event)
                await writer.drain()
                self.sent_bytes += len(event)
        else:
            framing = b"content-length: %d\r\n" % len(_UNAVAILABLE)
            writer.write(_head(b"application/json", framing, b"503 Service Unavailable") + _UNAVAILABLE)
            await writer.drain()

    async def _endless_header(self, writer: asyncio.StreamWriter) -> None:
        line = 0
        while True:
            line += 1
            writer.write(b"x-still-coming-%d: yes\r\n" % line)
            await writer.drain()
            await asyncio.sleep(self.interval)


def _head(content_type: bytes, framing: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n" + framing + b"\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True)
class HostileProcess:
    """A :class:`HostileUpstream` in its own process."""

    base_url: str
    model: str

    def sent_bytes(self) -> int:
        """Body bytes of HUGE_BODY and FLOOD answers it has written so far."""
        return httpx.get(self.base_url.removesuffix("/v1") + "/stats", timeout=10).json()["sent_bytes"]


@contextmanager
def hostile_upstream_process(behaviour: Behaviour, interval: float = 0.2) -> Iterator[HostileProcess]:
    """``python -m tests.hostile.hostile_upstream`` on a free port."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tests.hostile.hostile_upstream", behaviour.value]
    command += ["--port", str(port), "--interval", str(interval)]
    with running(command, f"{root}/stats", f"{root}/v1", timeout=30):
        yield HostileProcess(f"{root}/v1", behaviour.value)


def main(argv: list[str] | None = None) -> None:
    """Serve one misbehaviour until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("behaviour", type=Behaviour, choices=list(Behaviour))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)

    async def serve() -> None:
        await HostileUpstream(args.behaviour, args.interval, port=args.port).start()
        await asyncio.Event().wait()

    with suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
