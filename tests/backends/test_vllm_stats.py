"""The gateway's receiver of the plugin's features: matching by request id and token index, timeouts, metrics."""

import asyncio
import time

import pytest
import zmq
from prometheus_client import REGISTRY

from gateway.backends.vllm_stats import StatsReceiver
from monitors.features import StepFeatures
from monitors.vllm_plugin.wire import encode_batch

PROFILE = "m@1|late=1|w32"


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("sinkwatch_vllm_stats_total", {"outcome": outcome}) or 0.0


def _features(index: int) -> StepFeatures:
    return StepFeatures(index=index, token_id=-1, window=index + 1, values={"entropy": float(index)})


async def _with_receiver(test, timeout: float = 0.3, bind: str = "tcp://127.0.0.1:0", address: str = ""):
    receiver = StatsReceiver(bind, address, PROFILE, timeout)
    await receiver.start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(receiver.address)
    try:
        return await test(receiver, push)
    finally:
        push.close()
        context.term()
        await receiver.close()


def _send(push, request_id: str, *indices: int, profile: str = PROFILE) -> None:
    push.send(encode_batch(profile, [(request_id, _features(i)) for i in indices]))


def test_features_already_there_are_taken_with_the_streams_token_id():
    async def test(receiver, push):
        stream = receiver.open("r")
        _send(push, "r", 0, 1)
        first = await stream.take(0, 42)
        second = await stream.take(1, 43)
        return first, second

    received = _count("received")
    first, second = asyncio.run(_with_receiver(test, timeout=2.0))
    assert (first.index, first.token_id, second.index, second.token_id) == (0, 42, 1, 43)
    assert _count("received") - received == 2


def test_a_token_waits_for_features_still_on_their_way():
    async def test(receiver, push):
        stream = receiver.open("r")
        asyncio.get_running_loop().call_later(0.1, _send, push, "r", 0)
        return await stream.take(0, 1)

    assert asyncio.run(_with_receiver(test, timeout=2.0)).index == 0


def test_missing_features_time_out_once_then_tokens_stop_waiting_until_features_flow_again():
    async def test(receiver, push):
        stream = receiver.open("r")
        started = time.monotonic()
        assert await stream.take(0, 1) is None
        waited_first = time.monotonic() - started
        started = time.monotonic()
        assert await stream.take(1, 1) is None
        waited_second = time.monotonic() - started
        _send(push, "r", 3)
        await asyncio.sleep(0.1)
        assert await stream.take(2, 1) is None  # features flow again: token 2 waited for its own
        return waited_first, waited_second, await stream.take(3, 1)

    missing = _count("missing")
    waited_first, waited_second, fourth = asyncio.run(_with_receiver(test, timeout=0.3))
    assert waited_first >= 0.29 and waited_second < 0.05
    assert fourth is not None and fourth.index == 3
    assert _count("missing") - missing == 3


def test_features_after_their_token_and_for_unknown_requests_count_as_late():
    async def test(receiver, push):
        stream = receiver.open("r")
        assert await stream.take(0, 1) is None
        _send(push, "r", 0)
        _send(push, "nobody", 0)
        await asyncio.sleep(0.2)
        stream.close()

    late = _count("late")
    asyncio.run(_with_receiver(test, timeout=0.1))
    assert _count("late") - late == 2


def test_features_computed_with_another_profile_are_dropped():
    async def test(receiver, push):
        stream = receiver.open("r")
        _send(push, "r", 0, profile="other@2|late=2|w32")
        return await stream.take(0, 1)

    assert asyncio.run(_with_receiver(test, timeout=0.3)) is None


def test_a_request_keeps_the_profile_it_was_opened_with_when_a_reload_changes_the_receivers():
    """The plugin gives requests under way the extractors they started with and new ones the reloaded file's."""
    reloaded = "m#abc|late=2|w32"

    async def test(receiver, push):
        before = receiver.open("before")
        receiver.profile = reloaded
        after = receiver.open("after")
        _send(push, "before", 0)
        _send(push, "after", 0)  # computed with the old file (the plugin has not reloaded yet): dropped
        _send(push, "after", 1, profile=reloaded)
        return await before.take(0, 1), await after.take(0, 2), await after.take(1, 3)

    kept, dropped, taken = asyncio.run(_with_receiver(test, timeout=0.5))
    assert kept is not None and kept.index == 0
    assert dropped is None
    assert taken is not None and taken.index == 1


def test_a_malformed_message_does_not_stop_the_receiver():
    async def test(receiver, push):
        stream = receiver.open("r")
        push.send(b"garbage")
        _send(push, "r", 0)
        return await stream.take(0, 1)

    assert asyncio.run(_with_receiver(test, timeout=2.0)) is not None


def test_listening_everywhere_needs_an_address_to_advertise():
    async def test(receiver, push):
        return receiver.address

    with pytest.raises(ValueError, match="vllm-stats-address"):
        asyncio.run(_with_receiver(test, bind="tcp://0.0.0.0:0"))
    assert asyncio.run(_with_receiver(test, bind="tcp://0.0.0.0:0", address="tcp://10.0.0.7:1")) == "tcp://10.0.0.7:1"
