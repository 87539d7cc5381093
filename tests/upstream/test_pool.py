"""The upstream pool: balancing, failover before the first byte, health checks, keep-alive."""

import asyncio
from contextlib import AsyncExitStack

import orjson
import pytest

from gateway import metrics
from gateway.errors import UpstreamError
from gateway.upstream.pool import PoolConfig, UpstreamPool, UpstreamResponse, parse_upstreams
from lab.fakes.fake_upstream import FakeUpstream, FakeUpstreamConfig, Fault
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
BODY = orjson.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True})
CONFIG = PoolConfig(connect_timeout=1, read_timeout=5, health_interval=60)


def _errors(name: str, kind: str) -> float:
    return metrics.UPSTREAM_ERRORS.labels(name, kind)._value.get()


async def _fakes(stack: AsyncExitStack, *configs: FakeUpstreamConfig) -> list[FakeUpstream]:
    return [await stack.enter_async_context(FakeUpstream(config)) for config in configs]


async def _pool(stack: AsyncExitStack, urls: list[tuple[str, str]], config: PoolConfig = CONFIG) -> UpstreamPool:
    pool = UpstreamPool(urls, config)
    await pool.start()
    stack.push_async_callback(pool.close)
    return pool


async def _open(pool: UpstreamPool, body: bytes = BODY) -> UpstreamResponse:
    return await pool.open("/chat/completions", body, model="fake-model", request_id="r")


async def _ask(pool: UpstreamPool, body: bytes = BODY) -> bytes:
    async with await _open(pool, body) as response:
        assert response.ok
        return await response.read_all(1 << 20)


def test_unnamed_upstreams_are_named_by_position_not_by_address():
    """Names are the ``upstream`` label on /metrics: configured, never host:port (issue 19)."""
    assert parse_upstreams("a=http://h1:8000/v1, http://h2:9000/v1") == [
        ("a", "http://h1:8000/v1"),
        ("upstream-2", "http://h2:9000/v1"),
    ]
    with pytest.raises(ValueError, match="URLs must be unique"):
        parse_upstreams("http://h:1/v1,http://h:1/v1")
    with pytest.raises(ValueError, match="names must be unique"):
        parse_upstreams("a=http://h:1/v1,a=http://h:2/v1")
    with pytest.raises(ValueError, match="http"):
        parse_upstreams("ftp://h/v1")


async def test_requests_go_to_the_upstream_with_fewest_outstanding():
    async with AsyncExitStack() as stack:
        slow = FakeUpstreamConfig(tokens=50, token_interval=0.05)
        a, b = await _fakes(stack, slow, slow)
        pool = await _pool(stack, [("a", a.base_url), ("b", b.base_url)])
        held = [await _open(pool, STREAM) for _ in range(4)]
        assert sorted(response.upstream.name for response in held) == ["a", "a", "b", "b"]
        on_a = [response for response in held if response.upstream.name == "a"]
        for response in on_a:
            await response.aclose()
        following = [await _open(pool, STREAM) for _ in range(2)]
        assert [response.upstream.name for response in following] == ["a", "a"]
        for response in [*held, *following]:
            await response.aclose()
        assert [u.in_flight for u in pool.upstreams] == [0, 0]


async def test_a_refused_connection_fails_over_and_marks_the_upstream_down():
    async with AsyncExitStack() as stack:
        (live,) = await _fakes(stack, FakeUpstreamConfig())
        dead = f"http://127.0.0.1:{free_port()}/v1"
        pool = await _pool(stack, [("dead", dead), ("live", live.base_url)])
        assert [u.up for u in pool.upstreams] == [False, True]
        pool.upstreams[0].up = True  # as if it had just died after passing a health check
        pool.upstreams[0].models = frozenset({"fake-model"})
        refused = _errors("dead", "connect")
        for _ in range(2):  # whichever comes first in the rotation
            assert b" w0" in await _ask(pool)
        assert _errors("dead", "connect") - refused == 1
        assert not pool.upstreams[0].up


async def test_a_5xx_answer_fails_over_before_anything_is_used():
    async with AsyncExitStack() as stack:
        broken, live = await _fakes(stack, FakeUpstreamConfig(), FakeUpstreamConfig())
        pool = await _pool(stack, [("broken", broken.base_url), ("live", live.base_url)])
        broken.config.fault = Fault.STATUS_503
        for _ in range(4):
            assert b" w0" in await _ask(pool)
        assert live.stats.completed == 4 + 1  # and its health check


async def test_when_every_upstream_fails_the_last_error_is_raised():
    async with AsyncExitStack() as stack:
        failing = (FakeUpstreamConfig(fault=Fault.STATUS_500), FakeUpstreamConfig(fault=Fault.STATUS_503))
        a, b = await _fakes(stack, *failing)
        pool = await _pool(stack, [("a", a.base_url), ("b", b.base_url)])
        response = await _open(pool)
        error = await response.error()
        assert isinstance(error, UpstreamError)
        assert error.code == "upstream_status"
        assert a.stats.completed + b.stats.completed == 2 + 2  # one each, plus the health checks


async def test_health_checks_follow_an_upstream_down_and_up():
    async with AsyncExitStack() as stack:
        fake = FakeUpstream(FakeUpstreamConfig(model="m1"))
        await fake.start()
        pool = await _pool(stack, [("only", fake.base_url)])
        assert pool.ready and pool.model_names() == ["m1"] and pool.serves("m1")
        await fake.stop()
        await pool.check_health()
        assert not pool.ready
        assert metrics.UPSTREAM_UP.labels("only")._value.get() == 0
        revived = FakeUpstream(FakeUpstreamConfig(model="m1"), port=fake.port)
        await stack.enter_async_context(revived)
        await pool.check_health()
        assert pool.ready


async def test_requests_reuse_one_keep_alive_connection():
    async with AsyncExitStack() as stack:
        (fake,) = await _fakes(stack, FakeUpstreamConfig())
        pool = await _pool(stack, [("only", fake.base_url)])
        for _ in range(10):
            await _ask(pool)
        await _ask(pool, STREAM)
        assert fake.stats.connections == 1


async def test_an_idle_connection_closed_by_the_upstream_is_replaced_transparently():
    async with AsyncExitStack() as stack:
        (fake,) = await _fakes(stack, FakeUpstreamConfig())
        pool = await _pool(stack, [("only", fake.base_url)])
        await _ask(pool)
        for connection in fake._connections:
            connection.transport.close()
        await asyncio.sleep(0.05)
        assert b" w0" in await _ask(pool)


async def test_a_response_closed_early_closes_its_connection_and_counts_as_cancelled():
    async with AsyncExitStack() as stack:
        (fake,) = await _fakes(stack, FakeUpstreamConfig(tokens=100, token_interval=0.02))
        pool = await _pool(stack, [("only", fake.base_url)])
        cancelled = metrics.UPSTREAM_REQUESTS.labels("only", "cancelled")._value.get()
        response = await _open(pool, STREAM)
        await response.read_chunk()
        await response.aclose()
        await asyncio.sleep(0.1)
        assert fake.stats.cancelled == 1
        assert metrics.UPSTREAM_REQUESTS.labels("only", "cancelled")._value.get() - cancelled == 1
