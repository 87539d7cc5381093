"""Fixtures the plugin's tests share."""

import pytest
import zmq


@pytest.fixture
def sink():
    """A bound PULL socket on loopback: where a reducer under test pushes its features."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0")
    yield pull
    pull.close()
    context.term()
