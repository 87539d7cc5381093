"""The worker's side (publisher thread, reducer process) and the reducer: the embedded engine's feature
extractor per request, one message per step and gateway."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from monitors.bands import format_bands
from monitors.features import FeatureExtractor
from monitors.vllm_plugin import publisher as publisher_module
from monitors.vllm_plugin.publisher import MAX_PENDING_STEPS, REDUCER_MALLOC_ENV, FeaturePublisher
from monitors.vllm_plugin.reducer import FeatureReducer, new_extractor_factory
from monitors.vllm_plugin.settings import PluginSettings
from monitors.vllm_plugin.sinks import SinkSockets
from monitors.vllm_plugin.step import CapturedStep
from monitors.vllm_plugin.wire import RequestTag, decode_batch, monitor_profile


@pytest.fixture
def reducer(calibration):
    sockets = SinkSockets(PluginSettings.from_env({}).allowed_sinks)
    reducer = FeatureReducer(
        new_extractor_factory(calibration, calibration.bands), monitor_profile(calibration, calibration.bands), sockets
    )
    yield reducer
    reducer.close()


def _states(calibration, steps: int, seed: int) -> np.ndarray:
    layers = len({layer for band in calibration.bands for layer in band.layers})
    return np.random.default_rng(seed).normal(size=(steps, layers, 576)).astype(np.float32)


def _receive(pull, timeout_ms: int = 5000) -> tuple[str, list]:
    assert pull.poll(timeout_ms), "no message from the plugin"
    return decode_batch(pull.recv())


def test_features_equal_those_of_the_embedded_engines_extractor(calibration, reducer, sink):
    address = sink.getsockopt_string(zmq.LAST_ENDPOINT)
    tags = [RequestTag("gw-a", address), RequestTag("gw-b", address)]
    states = {"a": _states(calibration, 5, 1), "b": _states(calibration, 5, 2)}
    expected = {
        name: FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
        for name in states
    }
    for step in range(5):
        rows = np.stack([states["a"][step], states["b"][step]])
        reducer.process(CapturedStep(["e-a", "e-b"], tags, [10 + step, 20 + step], rows, np.array([1.0, 2.0])))
        profile, items = _receive(sink)
        assert profile == monitor_profile(calibration, calibration.bands)
        assert [rid for rid, _ in items] == ["gw-a", "gw-b"]
        for (_, got), name, entropy, token in zip(items, "ab", (1.0, 2.0), (10 + step, 20 + step), strict=True):
            want = expected[name].push(states[name][step], entropy, token)
            assert got.index == want.index == step and got.token_id == token
            assert got.values == pytest.approx(want.values, rel=1e-12, abs=1e-12)


def test_each_gateway_gets_its_own_requests(calibration, reducer, sink):
    context = zmq.Context()
    other = context.socket(zmq.PULL)
    other.bind("tcp://127.0.0.1:0")
    try:
        tags = [
            RequestTag("r1", sink.getsockopt_string(zmq.LAST_ENDPOINT)),
            RequestTag("r2", other.getsockopt_string(zmq.LAST_ENDPOINT)),
        ]
        reducer.process(CapturedStep(["e1", "e2"], tags, [1, 2], _states(calibration, 2, 0), np.ones(2)))
        assert [rid for rid, _ in _receive(sink)[1]] == ["r1"]
        assert [rid for rid, _ in _receive(other)[1]] == ["r2"]
    finally:
        other.close()
        context.term()


def test_an_ended_request_loses_its_window(calibration, reducer, sink):
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    states = _states(calibration, 3, 0)
    reducer.process(CapturedStep(["e"], [tag], [1], states[:1], np.ones(1)))
    reducer.process(CapturedStep(["e"], [tag], [1], states[1:2], np.ones(1), ended=["e"]))
    reducer.process(CapturedStep(["e"], [tag], [1], states[2:3], np.ones(1)))
    indices = [_receive(sink)[1][0][1].index for _ in range(3)]
    assert indices == [0, 1, 0]


def _runner_logits() -> torch.Tensor:
    """A row of logits as the model runner leaves them (an inference tensor): uniform over 4 tokens, ln 4 nats."""
    with torch.inference_mode():
        return torch.zeros(1, 4)


def test_steps_go_through_the_reducer_process_and_entropies_come_from_logits(calibration, sink):

    publisher = FeaturePublisher(calibration, calibration.bands, cpus="inherit")
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        assert all(
            publisher.submit(CapturedStep(["e"], [tag], [7], _states(calibration, 1, 0), None, logits=_runner_logits()))
            for _ in range(MAX_PENDING_STEPS)
        )
        assert not publisher.submit(CapturedStep(["e"], [tag], [7], _states(calibration, 1, 0), np.ones(1)))
        publisher.start()
        received = [_receive(sink, timeout_ms=60_000)[1][0] for _ in range(MAX_PENDING_STEPS)]
        assert [features.index for _, features in received] == list(range(MAX_PENDING_STEPS))
        assert received[0][1].values["entropy"] == pytest.approx(np.log(4.0))
        reducer = publisher._reducer
        environment = dict(
            entry.split(b"=", 1) for entry in Path(f"/proc/{reducer.pid}/environ").read_bytes().split(b"\0") if entry
        )
        for name, value in REDUCER_MALLOC_ENV.items():  # the heap settings that spare it a page fault per temporary
            assert environment[name.encode()] == value.encode()
    finally:
        publisher.close()
    assert reducer.returncode == 0  # stopped when told to


def test_a_step_waits_for_the_runner_to_start_the_next_one(calibration, sink, monkeypatch):
    monkeypatch.setattr(publisher_module, "HANDOFF_GRACE_S", 600.0)  # longer than the test: only the runner frees it
    publisher = FeaturePublisher(calibration, calibration.bands, cpus="inherit")
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        publisher.start()
        publisher.runner_started_step()  # the step below is captured during this engine step
        assert publisher.submit(CapturedStep(["e"], [tag], [7], _states(calibration, 1, 0), np.ones(1)))
        assert not sink.poll(2000)  # between engine steps: the work waits
        publisher.runner_started_step()
        assert _receive(sink, timeout_ms=60_000)[1][0][1].token_id == 7
    finally:
        publisher.close()


def test_steps_of_an_idle_runner_wait_once_for_the_grace(calibration, sink, monkeypatch):
    monkeypatch.setattr(publisher_module, "HANDOFF_GRACE_S", 0.5)
    publisher = FeaturePublisher(calibration, calibration.bands, cpus="inherit")
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        for token in range(3):  # no engine step follows any of them
            assert publisher.submit(CapturedStep(["e"], [tag], [token], _states(calibration, 1, token), np.ones(1)))
        publisher.start()
        assert [_receive(sink, timeout_ms=60_000)[1][0][1].token_id for _ in range(3)] == [0, 1, 2]
        assert publisher._runner_idle_at == 0  # the first waited out the grace, the others went at once
    finally:
        publisher.close()


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two cores: the one vLLM binds, another for the reducer"
)
def test_the_reducer_runs_on_its_cores_despite_the_openmp_binding_vllm_leaves_in_the_environment(
    calibration, sink, monkeypatch
):
    model_core, spare_core = sorted(os.sched_getaffinity(0))[:2]
    # what vLLM's CPU worker runs with: torch's OpenMP runtime preloaded, bound to the model's core
    monkeypatch.setenv("LD_PRELOAD", str(Path(torch.__file__).parent / "lib" / "libgomp.so.1"))
    monkeypatch.setenv("GOMP_CPU_AFFINITY", str(model_core))
    publisher = FeaturePublisher(calibration, calibration.bands, cpus=str(spare_core))
    tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        publisher.start()
        assert publisher.submit(CapturedStep(["e"], [tag], [7], _states(calibration, 1, 0), np.ones(1)))
        _receive(sink, timeout_ms=60_000)  # the reducer is up and serving
        status = Path(f"/proc/{publisher._reducer.pid}/status").read_text()
        assert f"Cpus_allowed_list:\t{spare_core}\n" in status
    finally:
        publisher.close()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_reducer_stops_when_its_worker_is_gone(calibration, tmp_path):
    config = {
        "calibration": calibration.to_json(),
        "bands": format_bands(calibration.bands),
        "endpoint": f"ipc://{tmp_path}/worker/pipe",
    }
    (tmp_path / "worker").mkdir()
    pid_file = tmp_path / "pid"
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))  # a calibration is too long for a command line
    worker = (  # starts the reducer as the publisher does and exits at once, before the reducer is even up
        "import json, os, subprocess, sys\n"
        f"config = {{**json.load(open({str(config_file)!r})), 'worker_pid': os.getpid()}}\n"
        f"open({str(config_file)!r}, 'w').write(json.dumps(config))\n"
        "p = subprocess.Popen([sys.executable, '-m', 'monitors.vllm_plugin.reducer'],"
        f" stdin=open({str(config_file)!r}))\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
    )
    subprocess.run([sys.executable, "-c", worker], check=True, timeout=60)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the reducer outlived its worker")
    assert not (tmp_path / "worker").exists()  # it removed the pipe its worker left behind


def test_a_terminated_reducer_removes_its_pipe(calibration, sink, tmp_path):
    (tmp_path / "worker").mkdir()
    endpoint = f"ipc://{tmp_path}/worker/pipe"
    config = {
        "calibration": calibration.to_json(),
        "bands": format_bands(calibration.bands),
        "endpoint": endpoint,
        "worker_pid": os.getpid(),
    }
    context = zmq.Context()
    pipe = context.socket(zmq.PUSH)  # the worker's end
    pipe.bind(endpoint)
    reducer = subprocess.Popen([sys.executable, "-m", "monitors.vllm_plugin.reducer"], stdin=subprocess.PIPE)
    try:
        reducer.stdin.write(json.dumps(config).encode())
        reducer.stdin.close()
        tag = RequestTag("r", sink.getsockopt_string(zmq.LAST_ENDPOINT))
        pipe.send(pickle.dumps(CapturedStep(["e"], [tag], [1], _states(calibration, 1, 0), np.ones(1))))
        _receive(sink, timeout_ms=60_000)  # it is serving
        reducer.send_signal(signal.SIGTERM)
        assert reducer.wait(30) == 0
    finally:
        reducer.kill()
        pipe.close(linger=0)
        context.term()
    assert not (tmp_path / "worker").exists()
