"""A lean load generator for OpenAI endpoints: many concurrent keep-alive clients, whole or streamed.

Used by ``sinkwatch bench proxy`` and the load tests. It speaks HTTP through the gateway's own lean client
(``gateway.upstream.http``), so that the generator costs little next to what it measures, and it
checks every answer: a 200, JSON or an event stream that ends with ``[DONE]`` and carries no error.
"""

import asyncio
import time
from dataclasses import dataclass, field

from gateway.upstream.event_stream import DONE, EventSplitter
from gateway.upstream.http import HttpPool, Origin, TransportError

__all__ = ["LoadClient", "LoadResult", "percentile", "run_load"]


@dataclass
class LoadResult:
    """What a load run saw: answers, errors, latencies (seconds) and, for streams, time to first token."""

    requests: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.requests / self.elapsed if self.elapsed else 0.0


def _carries_text(payload: bytes) -> bool:
    """A chunk with a non-empty text delta (cheaply: without parsing the JSON)."""
    return (b'"content":"' in payload and b'"content":""' not in payload) or (
        b'"text":"' in payload and b'"text":""' not in payload
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class LoadClient:
    """Keep-alive connections to one base URL (``http://host:port/v1``)."""

    def __init__(self, base_url: str, connections: int, read_timeout: float = 60.0) -> None:
        self._pool = HttpPool(Origin(base_url), max_connections=connections, max_idle=connections, connect_timeout=10)
        self._read_timeout = read_timeout

    async def call(self, path: str, body: bytes, stream: bool, result: LoadResult) -> None:
        """One request, checked; its latency (and time to first token) or its error lands in ``result``."""
        started = time.perf_counter()
        try:
            response = await self._pool.request("POST", path, body=body, read_timeout=self._read_timeout)
            async with response:
                if response.status != 200:
                    text = await response.read_all(1 << 16)
                    result.errors.append(f"{response.status}: {text[:200]!r}")
                    return
                if stream:
                    await self._read_stream(response, started, result)
                else:
                    await response.read_all(1 << 24)
        except TransportError as error:
            result.errors.append(f"{type(error).__name__}: {error}")
            return
        result.requests += 1
        result.latencies.append(time.perf_counter() - started)

    async def _read_stream(self, response, started: float, result: LoadResult) -> None:
        splitter = EventSplitter()
        done = False
        tokens = 0
        while chunk := await response.read_chunk():
            events, problem = splitter.feed(chunk)
            for _, payload in events:
                if payload == DONE:
                    done = True
                elif payload.startswith(b'{"error"'):
                    result.errors.append(f"error event: {payload[:200]!r}")
                    return
                elif _carries_text(payload):
                    if not tokens:
                        result.first_tokens.append(time.perf_counter() - started)
                    tokens += 1
                    result.tokens += 1
            if problem:
                result.errors.append(f"malformed stream: {problem}")
                return
        if not done:
            result.errors.append("stream ended without [DONE]")

    def close(self) -> None:
        self._pool.close()


async def run_load(
    base_url: str,
    path: str,
    body: bytes,
    *,
    stream: bool,
    concurrency: int,
    duration: float,
) -> LoadResult:
    """``concurrency`` clients sending requests back to back for ``duration`` seconds."""
    client = LoadClient(base_url, concurrency)
    result = LoadResult()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def one_client() -> None:
        while loop.time() < deadline:
            await client.call(path, body, stream, result)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    finally:
        client.close()
    result.elapsed = time.perf_counter() - started
    return result
