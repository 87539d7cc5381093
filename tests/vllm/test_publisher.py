"""The worker's publisher: the embedded engine's feature extractor per request, one message per step and gateway."""

import numpy as np
import pytest
import zmq

from monitors.features import FeatureExtractor
from monitors.vllm_plugin.publisher import MAX_PENDING_STEPS, CapturedStep, FeaturePublisher
from monitors.vllm_plugin.settings import PluginSettings
from monitors.vllm_plugin.sinks import SinkSockets
from monitors.vllm_plugin.tap import new_extractor_factory
from monitors.vllm_plugin.wire import RequestTag, decode_batch, monitor_profile


@pytest.fixture
def sink():
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0")
    yield pull
    pull.close()
    context.term()


@pytest.fixture
def publisher(calibration):
    sockets = SinkSockets(PluginSettings.from_env({}).allowed_sinks)
    publisher = FeaturePublisher(
        new_extractor_factory(calibration, calibration.bands), monitor_profile(calibration, calibration.bands), sockets
    )
    yield publisher
    publisher.close()


def _states(calibration, steps: int, seed: int) -> np.ndarray:
    layers = len({layer for band in calibration.bands for layer in band.layers})
    return np.random.default_rng(seed).normal(size=(steps, layers, 576)).astype(np.float32)


def _receive(pull) -> tuple[str, list]:
    assert pull.poll(5000), "no message from the publisher"
    return decode_batch(pull.recv())


def test_features_equal_those_of_the_embedded_engines_extractor(calibration, publisher, sink):
    address = sink.getsockopt_string(zmq.LAST_ENDPOINT)
    tags = [RequestTag("gw-a", address), RequestTag("gw-b", address)]
    states = {"a": _states(calibration, 5, 1), "b": _states(calibration, 5, 2)}
    expected = {
        name: FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
        for name in states
    }
    for step in range(5):
        rows = np.stack([states["a"][step], states["b"][step]])
        publisher.process(CapturedStep(["e-a", "e-b"], tags, [10 + step, 20 + step], rows, np.array([1.0, 2.0])))
        profile, items = _receive(sink)
        assert profile == monitor_profile(calibration, calibration.bands)
        assert [rid for rid, _ in items] == ["gw-a", "gw-b"]
        for (_, got), name, entropy, token in zip(items, "ab", (1.0, 2.0), (10 + step, 20 + step), strict=True):
            want = expected[name].push(states[name][step], entropy, token)
            assert got.index == want.index == step and got.token_id == token
            assert got.values == pytest.approx(want.values, rel=1e-12, abs=1e-12)


def test_each_gateway_gets_its_own_requests(calibration, publisher, sink):
    context = zmq.Context()
    other = context.socket(zmq.PULL)
    other.bind("tcp://127.0.0.1:0")
    try:
        tags = [
            RequestTag("r1", sink.getsockopt_string(zmq.LAST_ENDPOINT)),
            RequestTag("r2", other.getsockopt_string(zmq.LAST_ENDPOINT)),
        ]
        publisher.process(CapturedStep(["e1", "e2"], tags, [1, 2], _states(calibration, 2, 0), np.ones(2)))
        assert [rid for rid, _ in _receive(sink)[1]] == ["r1"]
        assert [rid for rid, _ in _receive(other)[1]] == ["r2"]
    finally:
        other.close()
        context.term()


def test_an_ended_request_loses_its_window(calibration, publisher, sink):
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    states = _states(calibration, 3, 0)
    publisher.process(CapturedStep(["e"], [tag], [1], states[:1], np.ones(1)))
    publisher.process(CapturedStep(["e"], [tag], [1], states[1:2], np.ones(1), ended=["e"]))
    publisher.process(CapturedStep(["e"], [tag], [1], states[2:3], np.ones(1)))
    indices = [_receive(sink)[1][0][1].index for _ in range(3)]
    assert indices == [0, 1, 0]


def test_the_thread_publishes_what_is_submitted_and_refuses_when_far_behind(calibration, publisher, sink):
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    step = CapturedStep(["e"], [tag], [1], _states(calibration, 1, 0), np.ones(1))
    assert all(publisher.submit(step) for _ in range(MAX_PENDING_STEPS))
    assert not publisher.submit(step)
    publisher.start()
    assert _receive(sink)[1][0][0] == "r"
