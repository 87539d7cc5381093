"""Clients that attack the HTTP edge, on raw sockets, against real gateway processes: the native fast path
(a proxying gateway) and the ASGI path (the embedded model). Oversized heads, slowloris heads and bodies,
``Expect: 100-continue`` with no body, an ``Upgrade: h2c`` request smuggling a second one in its body,
streaming clients that never read, more connections than allowed. Every attack gets a clean answer or a
closed connection, other users' requests are served, ``/healthz`` answers quickly throughout, and memory
and open files return to their baseline."""

import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from openai import OpenAI

from lab.fakes.processes import Process, fake_upstream_process, gateway_process
from tests.conftest import MODEL, root
from tests.hostile.hostile_upstream import Behaviour, HostileProcess, hostile_upstream_process
from tests.hostile.probes import HealthWatch, settles_to

pytestmark = pytest.mark.hostile

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
ORIGIN = "http://client.example"  # a cross-origin request takes the ASGI path of a proxying gateway
DEADLINES = ["--http-header-timeout", str(HEADER_TIMEOUT), "--http-body-timeout", str(BODY_TIMEOUT)]


@pytest.fixture(scope="module")
def flood() -> Iterator[HostileProcess]:
    """An upstream that streams as fast as it is read, for ever."""
    with hostile_upstream_process(Behaviour.FLOOD) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxying(flood: HostileProcess) -> Iterator[Process]:
    """The native fast path: a gateway proxying to a fake upstream (``fake-model``) and the flood."""
    with fake_upstream_process(tokens=8) as fake:
        upstreams = f"fake={fake.base_url},flood={flood.base_url}"
        flags = ["--backend", "openai", "--upstreams", upstreams, "--cors-origins", ORIGIN, *DEADLINES]
        with gateway_process(*flags, timeout=60) as process:
            yield process


@pytest.fixture(scope="module")
def embedded() -> Iterator[Process]:
    """The ASGI path: the embedded model, warmed up (its first generation allocates for good)."""
    with gateway_process("--max-batch", "2", *DEADLINES, timeout=180) as process:
        _serve_others(process)()
        yield process


@pytest.fixture(params=["native", "asgi"])
def gateway(request: pytest.FixtureRequest) -> Process:
    return request.getfixturevalue("proxying" if request.param == "native" else "embedded")


def _address(process: Process) -> tuple[str, int]:
    host, port = process.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    return host, int(port)


def _serve_others(process: Process) -> Callable[[], None]:
    """What another user asks meanwhile: a short completion of whatever the gateway serves."""
    client = OpenAI(base_url=process.base_url, api_key="x", max_retries=0, timeout=60)
    model = "fake-model" if "fake-model" in {card.id for card in client.models.list().data} else MODEL

    def request() -> None:
        answer = client.completions.create(model=model, prompt="Hello", max_tokens=2)
        assert answer.choices[0].text is not None

    return request


def _under_attack(process: Process, attack: Callable[[], object], others: int = 3) -> object:
    """Run ``attack`` while other users' requests are served and ``/healthz`` is watched; its result."""
    served = _serve_others(process)
    with HealthWatch(root(process)) as watch, ThreadPoolExecutor(1) as pool:
        running = pool.submit(attack)
        time.sleep(0.2)
        for _ in range(others):
            served()
        result = running.result(timeout=120)
    watch.assert_healthy()
    return result


def _read_all(connection: socket.socket, timeout: float = 10) -> bytes:
    """What the server sends until it closes the connection (or ``timeout``)."""
    connection.settimeout(timeout)
    received = bytearray()
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return bytes(received)


def _error(response: bytes) -> dict:
    return orjson.loads(response.partition(b"\r\n\r\n")[2])["error"]


def _head(path: str = "/v1/completions", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: gateway"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _oversized_head(address: tuple[str, int]) -> bytes:
    """Send a head with a 16 MiB header, a MiB at a time until the server answers; the answer."""
    piece = b"a" * (1 << 20)
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: gateway\r\nx-big: ")
        try:
            for _ in range(16):
                connection.sendall(piece)
                if select.select([connection], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_all(connection)


def test_a_16_mib_header_is_refused_with_431_and_memory_stays_bounded(gateway: Process):
    address = _address(gateway)
    baseline = gateway.rss_bytes()

    def attack() -> list[bytes]:
        with ThreadPoolExecutor(10) as pool:
            return list(pool.map(lambda _: _oversized_head(address), range(100)))

    answers = _under_attack(gateway, attack)
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers), {a[:40] for a in answers}
    assert _error(answers[0])["code"] == "request_header_too_large"
    settles_to(gateway.rss_bytes, baseline, slack=32 << 20)


def test_slowloris_heads_and_bodies_are_cut_off_at_their_deadlines(gateway: Process):
    address = _address(gateway)
    baseline = gateway.open_files()

    def attack() -> tuple[list[bytes], float]:
        """500 connections: half dribble their head, half their body, a byte every 0.2 s."""
        started = time.monotonic()
        connections = []
        for index in range(500):
            connection = socket.create_connection(address, timeout=10)
            if index % 2:
                connection.sendall(_head(content_type="application/json", content_length="1000"))
            else:
                connection.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: gateway\r\n")
            connection.setblocking(False)
            connections.append(connection)
        answers: list[bytes] = []
        deadline = time.monotonic() + max(HEADER_TIMEOUT, BODY_TIMEOUT) + 10
        while connections and time.monotonic() < deadline:
            for connection in list(connections):
                try:
                    answer = connection.recv(65536)
                    if not answer:
                        raise ConnectionResetError
                    answers.append(answer)
                except BlockingIOError:
                    try:
                        connection.send(b"x")
                        continue
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass
                except OSError:
                    pass
                connection.close()
                connections.remove(connection)
            time.sleep(0.2)
        left = len(connections)
        for connection in connections:
            connection.close()
        assert left == 0, f"{left} slow connections still open"
        return answers, time.monotonic() - started

    answers, took = _under_attack(gateway, attack)
    assert took < max(HEADER_TIMEOUT, BODY_TIMEOUT) + 10
    assert answers and all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    assert {_error(answer)["code"] for answer in answers} == {"request_timeout"}
    settles_to(gateway.open_files, baseline, slack=4)


def test_expect_100_continue_without_a_body_is_answered_then_timed_out(gateway: Process):
    def attack() -> bytes:
        with socket.create_connection(_address(gateway), timeout=10) as connection:
            connection.sendall(_head(content_type="application/json", content_length="100", expect="100-continue"))
            return _read_all(connection, timeout=BODY_TIMEOUT + 10)

    answer = _under_attack(gateway, attack)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408 ")
    assert _error(answer.split(b"\r\n\r\n", 1)[1])["code"] == "request_timeout"


def test_an_h2c_upgrade_with_a_body_is_refused_and_its_body_never_parsed_as_a_request(gateway: Process):
    smuggled = b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n"
    upgrade = {"connection": "Upgrade, HTTP2-Settings", "upgrade": "h2c", "http2_settings": "AAMAAABkAARAAAAAAAIAAAAA"}

    def attack() -> list[bytes]:
        answers = []
        for split in (False, True):  # the body with the head, or after it
            with socket.create_connection(_address(gateway), timeout=10) as connection:
                connection.sendall(_head(content_length=str(len(smuggled)), **upgrade))
                if split:
                    time.sleep(0.2)
                connection.sendall(smuggled)
                answers.append(_read_all(connection))
        return answers

    for answer in _under_attack(gateway, attack):
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1
        assert _error(answer)["code"] == "upgrade_refused"


def test_an_h2c_upgrade_without_a_body_is_served_as_http_1_and_closes_the_connection(gateway: Process):
    with socket.create_connection(_address(gateway), timeout=10) as connection:
        request = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        connection.sendall(request + b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n")
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("path", ["native", "asgi"])
def test_streaming_clients_that_never_read_cost_bounded_memory(proxying: Process, flood: HostileProcess, path: str):
    """100 clients ask for endless streams and read nothing: the gateway stops reading the upstream."""
    address = _address(proxying)
    body = orjson.dumps({"model": "flood", "prompt": "hi", "stream": True})
    origin = {"origin": ORIGIN} if path == "asgi" else {}
    request = _head(content_type="application/json", content_length=str(len(body)), **origin) + body
    baseline_memory, baseline_files = proxying.rss_bytes(), proxying.open_files()

    def attack() -> int:
        clients = []
        for _ in range(100):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(address)
            client.sendall(request)
            clients.append(client)
        time.sleep(2)
        sent = flood.sent_bytes()
        time.sleep(1)
        stalled = flood.sent_bytes() - sent
        for client in clients:
            client.close()
        return stalled

    stalled = _under_attack(proxying, attack)
    assert stalled < 1 << 20  # the flood had stopped: nobody reads its bytes
    settles_to(proxying.open_files, baseline_files, slack=4)
    settles_to(proxying.rss_bytes, baseline_memory, slack=96 << 20)


def test_connections_beyond_the_limit_are_answered_503_and_the_server_recovers():
    with fake_upstream_process(tokens=4) as fake:
        flags = ["--backend", "openai", "--upstreams", fake.base_url, "--http-max-connections", "50", *DEADLINES]
        with gateway_process(*flags, timeout=60) as process:
            address = _address(process)
            held = [socket.create_connection(address, timeout=10) for _ in range(120)]
            time.sleep(1)
            refused = [answer for answer in map(_answered, held) if answer]
            assert len(refused) >= 70
            assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused)
            assert _error(refused[0])["code"] == "too_many_connections"
            for connection in held:
                connection.close()
            with HealthWatch(root(process)) as watch:
                time.sleep(HEADER_TIMEOUT)
                _serve_others(process)()
            watch.assert_healthy()


def test_running_out_of_file_descriptors_does_not_take_the_server_down(proxying: Process):
    """Accepting fails (EMFILE) while the process is at its file-descriptor limit; it serves again after."""
    limits = resource.prlimit(proxying.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(proxying.pid, resource.RLIMIT_NOFILE, (proxying.open_files() + 20, limits[1]))
    try:
        held = [socket.create_connection(_address(proxying), timeout=10) for _ in range(60)]
        time.sleep(0.5)
        for connection in held:
            connection.close()
    finally:
        resource.prlimit(proxying.pid, resource.RLIMIT_NOFILE, limits)
    assert proxying.popen.poll() is None
    with HealthWatch(root(proxying)) as watch:
        time.sleep(HEADER_TIMEOUT)
        _serve_others(proxying)()
    watch.assert_healthy()


def _answered(connection: socket.socket) -> bytes:
    """What the server has sent on ``connection`` already (nothing on a connection it kept open)."""
    if not select.select([connection], [], [], 0)[0]:
        return b""
    return _read_all(connection)
