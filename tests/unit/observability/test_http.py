"""The probe/metrics HTTP server over real sockets on port 0."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, AsyncIterator

import h11
import pytest
import trio
import trio.testing

from edge_recorder.config import Settings
from edge_recorder.http import Route, health_routes, serve_http
from edge_recorder.metrics import RecorderMetrics
from edge_recorder.session.manager import Intake, SessionManager
from tests.fakes.sessions import FakeSession, FakeSessionFactory

SERVER = "node-http"


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection, parsed with h11's client side."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None) -> Response:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", "test"), *(headers or [])]
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=path, headers=all_headers))
            + self.conn.send(h11.EndOfMessage())
        )
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                headers_out = {k.decode(): v.decode() for k, v in response.headers}
                return Response(response.status_code, headers_out, body)
            else:
                raise AssertionError(f"unexpected {event!r}")


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


@dataclasses.dataclass
class Service:
    """What the routes look at, mutable from the test: a real session manager (the readiness
    ``serve`` runs) over fake sessions."""

    manager: SessionManager[FakeSession]
    alive: bool = True


async def start(nursery: trio.Nursery, routes: dict[str, Route], **kw: Any) -> tuple[str, int]:
    address: tuple[str, int] = await nursery.start(lambda task_status: serve_http("127.0.0.1", 0, routes, task_status=task_status, **kw))
    return address


@pytest.fixture
async def service(settings: Settings, nursery: trio.Nursery) -> Service:
    lifecycle = dataclasses.replace(settings.lifecycle, media_timeout_s=0, room_empty_grace_s=0, controller_grace_s=0, max_duration_s=0)
    manager = SessionManager(
        dataclasses.replace(settings, recording_enabled=True, max_sessions=2, lifecycle=lifecycle),
        session_factory=FakeSessionFactory(),
        enforce_enabled=True,
    )
    await nursery.start(manager.run)
    return Service(manager)


@pytest.fixture
def metrics() -> RecorderMetrics:
    m = RecorderMetrics(SERVER)
    m.session_started()
    m.set_active(1)
    return m


@pytest.fixture
def routes(service: Service, metrics: RecorderMetrics) -> dict[str, Route]:
    return health_routes(
        metrics,
        is_alive=lambda: service.alive,
        readiness=service.manager.readiness,  # what serve passes
    )


@pytest.fixture
async def client(nursery: trio.Nursery, routes: dict[str, Route]) -> AsyncIterator[Client]:
    host, port = await start(nursery, routes)
    async with await trio.open_tcp_stream(host, port) as stream:
        yield Client(stream)


async def test_reports_the_bound_port(nursery: trio.Nursery, routes: dict[str, Route]) -> None:
    host, port = await start(nursery, routes)
    assert host == "127.0.0.1"
    assert port > 0


async def test_metrics(client: Client) -> None:
    r = await client.request("GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    assert f'recordings_active{{server="{SERVER}"}} 1.0' in text
    assert f'recordings_started_total{{server="{SERVER}"}} 1.0' in text
    assert f'recordings_failed_total{{server="{SERVER}"}} 0.0' in text


async def test_healthz(client: Client, service: Service) -> None:
    r = await client.request("GET", "/healthz")
    assert (r.status, r.json()) == (200, {"status": "ok"})
    assert r.headers["content-type"] == "application/json"
    service.alive = False
    r = await client.request("GET", "/healthz")
    assert r.status == 503


def _failing(body: dict[str, Any]) -> set[str]:
    return {name for name, ok in body.items() if ok is False}


async def test_readyz_ready_then_each_failing_condition(
    client: Client, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = service.manager
    r = await client.request("GET", "/readyz")
    assert r.status == 200
    assert r.json() == {"status": "ready", "enabled": True, "accepting": True, "capacity": True, "ports": True, "disk": True}

    sessions = [await manager.start("room-1"), await manager.start("room-2")]  # max_sessions is 2
    r = await client.request("GET", "/readyz")
    assert r.status == 503
    assert r.json()["status"] == "not ready"
    assert _failing(r.json()) == {"capacity"}

    for session in sessions:
        await session.stop("host")
    capacity = manager.ports.capacity
    monkeypatch.setattr(type(manager.ports), "in_use", property(lambda _self: frozenset(range(capacity - 1))))  # 1 free
    manager.settings = dataclasses.replace(manager.settings, recording_enabled=False)
    r = await client.request("GET", "/readyz")
    assert r.status == 503
    assert _failing(r.json()) == {"enabled", "ports"}

    monkeypatch.undo()
    manager.settings = dataclasses.replace(manager.settings, recording_enabled=True)
    manager.intake = Intake.DRAINING  # SIGTERM
    r = await client.request("GET", "/readyz")
    assert (r.status, _failing(r.json())) == (503, {"accepting"})


async def test_unknown_path_is_404_and_query_is_ignored(client: Client) -> None:
    assert (await client.request("GET", "/nope")).status == 404
    assert (await client.request("GET", "/healthz?verbose=1")).status == 200


async def test_other_methods_are_405_with_allow(client: Client) -> None:
    r = await client.request("DELETE", "/metrics")
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"
    # The connection stays usable after a 405.
    assert (await client.request("GET", "/healthz")).status == 200


async def test_head_sends_headers_only(client: Client) -> None:
    r = await client.request("HEAD", "/healthz")
    assert r.status == 200
    assert r.body == b""
    assert r.headers["content-length"] == str(len(b'{"status":"ok"}'))


async def test_keep_alive_serves_two_requests_on_one_connection(client: Client) -> None:
    first = await client.request("GET", "/healthz")
    second = await client.request("GET", "/metrics")
    assert (first.status, second.status) == (200, 200)
    assert "connection" not in first.headers


async def test_connection_close_is_honoured(client: Client) -> None:
    r = await client.request("GET", "/healthz", headers=[("connection", "close")])
    assert r.status == 200
    assert await read_until_eof(client.stream) == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno-colon-here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    ],
)
async def test_malformed_request_is_400_then_closed(
    nursery: trio.Nursery, routes: dict[str, Route], raw: bytes
) -> None:
    host, port = await start(nursery, routes)
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(raw)
        reply = await read_until_eof(stream)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in reply.lower()


async def test_oversized_head_is_refused(nursery: trio.Nursery, routes: dict[str, Route]) -> None:
    host, port = await start(nursery, routes)
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 65536 + b"\r\n\r\n")
        reply = await read_until_eof(stream)
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_oversized_body_is_413(nursery: trio.Nursery, routes: dict[str, Route]) -> None:
    host, port = await start(nursery, routes)
    body = b"x" * 200_000
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(
            b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        reply = await read_until_eof(stream)
    assert reply.startswith(b"HTTP/1.1 413 ")


async def test_failing_handler_is_500_and_the_server_survives(nursery: trio.Nursery) -> None:
    def boom() -> tuple[int, bytes, str]:
        raise RuntimeError("handler bug")

    host, port = await start(nursery, {"/boom": boom, "/ok": lambda: (200, b"ok", "text/plain")})
    async with await trio.open_tcp_stream(host, port) as stream:
        client = Client(stream)
        assert (await client.request("GET", "/boom")).status == 500
        assert (await client.request("GET", "/ok")).body == b"ok"


async def test_a_peer_vanishing_mid_request_does_not_stop_the_server(
    nursery: trio.Nursery, routes: dict[str, Route]
) -> None:
    host, port = await start(nursery, routes)
    rude = await trio.open_tcp_stream(host, port)
    await rude.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")  # no blank line
    await rude.aclose()
    async with await trio.open_tcp_stream(host, port) as stream:
        assert (await Client(stream).request("GET", "/healthz")).status == 200


async def test_connection_cap_closes_extra_connections(nursery: trio.Nursery, routes: dict[str, Route]) -> None:
    host, port = await start(nursery, routes, max_connections=1)
    first = Client(await trio.open_tcp_stream(host, port))
    assert (await first.request("GET", "/healthz")).status == 200  # accepted and held open

    async with await trio.open_tcp_stream(host, port) as extra:
        try:
            await extra.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert await read_until_eof(extra) == b""
        except trio.BrokenResourceError:
            pass  # closed with the request unread: a reset is as good as an EOF

    # Once the first connection goes, a new one is served again.
    await first.stream.aclose()
    with trio.fail_after(5):
        while True:
            again = await trio.open_tcp_stream(host, port)
            try:
                response = await Client(again).request("GET", "/healthz")
            except (trio.BrokenResourceError, h11.RemoteProtocolError):
                await again.aclose()
                await trio.sleep(0.01)  # the server has not yet seen the first close
                continue
            assert response.status == 200
            await again.aclose()
            break


async def test_idle_connection_is_closed_after_the_timeout(
    nursery: trio.Nursery, routes: dict[str, Route], autojump_clock: trio.testing.MockClock
) -> None:
    host, port = await start(nursery, routes, idle_timeout_s=30.0)
    async with await trio.open_tcp_stream(host, port) as stream:
        client = Client(stream)
        assert (await client.request("GET", "/healthz")).status == 200
        start_time = trio.current_time()
        assert await stream.receive_some(100) == b""
        assert trio.current_time() - start_time == pytest.approx(30.0, abs=0.5)


async def _trickle_until_closed(stream: trio.SocketStream, every_s: float) -> None:
    """A slowloris: one header line every ``every_s``, never the blank line, until the server closes."""
    for i in range(1000):
        try:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n" if i == 0 else b"x-slow: 1\r\n")
        except trio.BrokenResourceError:
            return
        try:
            with trio.move_on_after(every_s):
                if await stream.receive_some(100) == b"":
                    return
        except trio.BrokenResourceError:
            return  # closed with our last line unread: a reset
    raise AssertionError("the server never closed the slow connection")


async def test_slow_request_head_is_cut_off_at_the_request_timeout(
    nursery: trio.Nursery, routes: dict[str, Route], autojump_clock: trio.testing.MockClock
) -> None:
    # The head deadline, not the (longer) idle timeout, bounds a trickled head.
    metrics = RecorderMetrics(SERVER)
    host, port = await start(nursery, routes, idle_timeout_s=30.0, request_timeout_s=5.0, metrics=metrics)
    async with await trio.open_tcp_stream(host, port) as stream:
        start_time = trio.current_time()
        await _trickle_until_closed(stream, every_s=1.0)
        assert trio.current_time() - start_time == pytest.approx(5.0, abs=1.1)
    await trio.sleep(0.1)
    assert b'edge_recorder_http_connections_refused_total{reason="request_timeout",server="node-http"} 1.0' in metrics.render()[0]


async def test_keep_alive_idle_is_not_cut_by_the_head_deadline(
    nursery: trio.Nursery, routes: dict[str, Route], autojump_clock: trio.testing.MockClock
) -> None:
    host, port = await start(nursery, routes, idle_timeout_s=30.0, request_timeout_s=5.0)
    async with await trio.open_tcp_stream(host, port) as stream:
        client = Client(stream)
        assert (await client.request("GET", "/healthz")).status == 200
        await trio.sleep(20)  # idle past the head deadline, within the idle timeout
        assert (await client.request("GET", "/healthz")).status == 200
        # On a kept-alive connection the head deadline runs from the first byte.
        await trio.sleep(20)
        start_time = trio.current_time()
        await _trickle_until_closed(stream, every_s=1.0)
        assert trio.current_time() - start_time == pytest.approx(5.0, abs=1.1)


async def test_one_address_gets_a_quarter_of_the_connections(nursery: trio.Nursery, routes: dict[str, Route]) -> None:
    host, port = await start(nursery, routes, max_connections=8)
    held = [await trio.open_tcp_stream(host, port) for _ in range(2)]
    try:
        # The third from the same address is closed at once, unread.
        async with await trio.open_tcp_stream(host, port) as extra:
            try:
                await extra.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                assert await read_until_eof(extra) == b""
            except trio.BrokenResourceError:
                pass  # a reset is as good as an EOF
    finally:
        for stream in held:
            await stream.aclose()


async def test_cancelling_the_server_closes_listener_and_connections() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await start(nursery, {"/ok": lambda: (200, b"ok", "text/plain")})
        client = Client(await trio.open_tcp_stream(host, port))
        assert (await client.request("GET", "/ok")).status == 200
        nursery.cancel_scope.cancel()
    async with client.stream:
        assert await read_until_eof(client.stream) == b""
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, port)
