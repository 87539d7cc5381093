"""ZMQ PUSH sockets to the gateways that asked for statistics, one per sink address, bounded in number.

A sink address arrives inside a request, so it is checked before the worker connects anywhere: it must be
``tcp://HOST:PORT`` with HOST resolving only into the allowed networks. Sends never block the worker: a
message that cannot be queued (the gateway is gone and the high-water mark is reached) is dropped; the
gateway notices the gap and counts it.
"""

import ipaddress
import logging
import socket
from collections import OrderedDict
from urllib.parse import urlsplit

import zmq

from monitors.vllm_plugin.settings import Network

__all__ = ["SinkSockets", "sink_allowed"]

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log

MAX_SINKS = 64  # gateways served at once; the least recently used socket is closed beyond that
SEND_HWM = 4096  # messages queued per gateway (about a minute of steps) before dropping


def sink_allowed(sink: str, allowed: tuple[Network, ...]) -> bool:
    """True when ``sink`` is ``tcp://host:port`` and every address of host lies in ``allowed``."""
    parts = urlsplit(sink)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        return False
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    return bool(addresses) and all(any(a in net for net in allowed if a.version == net.version) for a in addresses)


class SinkSockets:
    """Lazily connected PUSH sockets keyed by sink address."""

    def __init__(self, allowed: tuple[Network, ...]) -> None:
        self._allowed = allowed
        self._context = zmq.Context()
        self._sockets: OrderedDict[str, zmq.Socket | None] = OrderedDict()
        self.dropped = 0

    def send(self, sink: str, message: bytes) -> bool:
        """Queue ``message`` for ``sink``; False when the sink is refused or its queue is full."""
        sock = self._socket(sink)
        if sock is None:
            return False
        try:
            sock.send(message, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        return True

    def _socket(self, sink: str) -> zmq.Socket | None:
        if sink in self._sockets:
            self._sockets.move_to_end(sink)
            return self._sockets[sink]
        sock = None
        if sink_allowed(sink, self._allowed):
            sock = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            sock.connect(sink)
        else:
            log.warning("sinkwatch: refusing statistics sink %r (not in SINKWATCH_VLLM_ALLOWED_SINKS)", sink)
        self._sockets[sink] = sock
        while len(self._sockets) > MAX_SINKS:
            _, old = self._sockets.popitem(last=False)
            if old is not None:
                old.close()
        return sock

    def close(self) -> None:
        for sock in self._sockets.values():
            if sock is not None:
                sock.close()
        self._sockets.clear()
        self._context.term()
