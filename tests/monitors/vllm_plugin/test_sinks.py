"""Where a worker may send statistics, and how it sends them."""

import ipaddress

import zmq

from monitors.vllm_plugin.settings import PluginSettings
from monitors.vllm_plugin.sinks import SinkSockets, sink_allowed

LOCAL = PluginSettings.from_env({}).allowed_sinks


def test_loopback_and_private_sinks_are_allowed_by_default():
    assert sink_allowed("tcp://127.0.0.1:5599", LOCAL)
    assert sink_allowed("tcp://localhost:5599", LOCAL)
    assert sink_allowed("tcp://10.2.3.4:5599", LOCAL)


def test_public_addresses_other_schemes_and_missing_ports_are_refused():
    assert not sink_allowed("tcp://8.8.8.8:5599", LOCAL)
    assert not sink_allowed("ipc:///tmp/sock", LOCAL)
    assert not sink_allowed("tcp://127.0.0.1", LOCAL)
    assert not sink_allowed("tcp://no-such-host.invalid:5599", LOCAL)


def test_an_allow_list_narrows_the_networks():
    only = (ipaddress.ip_network("10.9.0.0/16"),)
    assert sink_allowed("tcp://10.9.1.1:1", only)
    assert not sink_allowed("tcp://127.0.0.1:1", only)


def test_messages_reach_an_allowed_sink_and_never_a_refused_one():
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0")
    sockets = SinkSockets(LOCAL)
    try:
        assert sockets.send(pull.getsockopt_string(zmq.LAST_ENDPOINT), b"hello")
        assert pull.poll(5000) and pull.recv() == b"hello"
        assert not sockets.send("tcp://8.8.8.8:5599", b"hello")
    finally:
        sockets.close()
        pull.close()
        context.term()
