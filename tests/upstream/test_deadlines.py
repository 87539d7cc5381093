"""Upstream deadlines and caps: a response head that never ends, a stream of keepalive comments, an answer
past the size cap, a health check dripped a header line at a time. Each ends as a counted OpenAI error
(or a down upstream), against small hostile servers on loopback."""

import asyncio
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway import metrics
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream.event_stream import event_batches
from gateway.upstream.pool import PoolConfig, UpstreamPool
from lab.fakes.fake_upstream import FakeUpstream, FakeUpstreamConfig
from tests.hostile.hostile_upstream import Behaviour, HostileUpstream

pytestmark = pytest.mark.anyio
CONFIG = PoolConfig(connect_timeout=1, read_timeout=0.5, event_timeout=0.3, health_interval=60, health_timeout=0.5)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileUpstream]:
    with HostileUpstream(request.param, interval=0.05, huge_bytes=8 << 20) as upstream:
        yield upstream


def _errors(name: str, kind: str) -> float:
    return metrics.UPSTREAM_ERRORS.labels(name, kind)._value.get()


async def _pool(upstream: HostileUpstream, name: str, config: PoolConfig = CONFIG) -> UpstreamPool:
    pool = UpstreamPool([(name, upstream.base_url)], config)
    await pool.upstreams[0].check_health(config.health_timeout)
    return pool


def _body(model: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})


@pytest.mark.parametrize("hostile", [Behaviour.ENDLESS_HEAD], indirect=True)
async def test_a_response_head_that_never_ends_times_out_at_the_read_deadline(hostile: HostileUpstream):
    pool = await _pool(hostile, "endless-head")
    before = _errors("endless-head", "timeout")
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.5 s"):
        await pool.open("/chat/completions", _body(hostile.model), model=hostile.model, request_id="r")
    assert time.monotonic() - started < 5
    assert _errors("endless-head", "timeout") == before + 1
    await pool.close()


@pytest.mark.parametrize("hostile", [Behaviour.KEEPALIVE_ONLY], indirect=True)
async def test_keepalive_comments_do_not_count_as_events(hostile: HostileUpstream):
    pool = await _pool(hostile, "keepalive")
    before = _errors("keepalive", "timeout")
    response = await pool.open("/chat/completions", _body(hostile.model, True), model=hostile.model, request_id="r")
    batches = []
    with pytest.raises(UpstreamTimeout, match=r"no event for 0\.3 s"):
        async for batch in event_batches(response):
            batches.append(batch)
    await response.aclose()
    assert len(batches) == 1  # the one event, then comments only
    assert _errors("keepalive", "timeout") == before + 1
    await pool.close()


@pytest.mark.parametrize("hostile", [Behaviour.HUGE_BODY], indirect=True)
async def test_an_answer_past_the_size_cap_is_refused_while_it_is_read(hostile: HostileUpstream):
    config = PoolConfig(read_timeout=10, health_interval=60, max_response_bytes=1 << 20)
    pool = await _pool(hostile, "huge", config)
    before = _errors("huge", "malformed")
    response = await pool.open("/chat/completions", _body(hostile.model), model=hostile.model, request_id="r")
    with pytest.raises(UpstreamError, match="larger than 1048576 bytes"):
        await response.read_all(config.max_response_bytes)
    await response.aclose()
    assert _errors("huge", "malformed") == before + 1
    await asyncio.sleep(0.2)
    assert hostile.sent_bytes < hostile.huge_bytes  # the rest was never read
    await pool.close()


@pytest.mark.parametrize("hostile", [Behaviour.DRIP_MODELS], indirect=True)
async def test_a_dripping_health_check_ends_at_its_deadline_and_holds_up_no_other_upstream(hostile: HostileUpstream):
    async with FakeUpstream(FakeUpstreamConfig(model="good-model")) as good:
        config = PoolConfig(connect_timeout=1, health_interval=0.1, health_timeout=0.5)
        pool = UpstreamPool([("drip", hostile.base_url), ("good", good.base_url)], config)
        started = time.monotonic()
        await pool.start()
        assert time.monotonic() - started < 5
        drip, fine = pool.upstreams
        assert not drip.up and fine.up
        fine.mark(False)  # as after a restart: the next check of its own marks it up again
        await asyncio.sleep(0.4)
        assert fine.up
        await pool.close()
