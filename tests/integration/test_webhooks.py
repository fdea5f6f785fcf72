"""WebhookNotifier against a real HTTP receiver (trio + h11) on a local port."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio

from edge_recorder.webhooks import WebhookNotifier, sign, verify

pytestmark = pytest.mark.integration

SECRET = "a-webhook-secret-of-some-length"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then 200), recording every request."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.requests) < count:
                self.changed = trio.Event()
                await self.changed.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, b""
                    continue
                if isinstance(event, h11.Data):
                    body += event.data
                    continue
                if isinstance(event, h11.EndOfMessage):
                    self.requests.append(
                        Received(
                            request.target.decode(),
                            {k.decode().lower(): v.decode() for k, v in request.headers},
                            body,
                        )
                    )
                    self.changed.set()
                    status = self.statuses.pop(0) if self.statuses else 200
                    await stream.send_all(
                        conn.send(h11.Response(status_code=status, headers=[("Content-Length", "0")]))
                    )
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    conn.start_next_cycle()
                    continue
                return  # ConnectionClosed or a protocol error
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> AsyncIterator[Receiver]:
    r = Receiver()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
    r.port = listeners[0].socket.getsockname()[1]
    yield r


def notifier(urls: list[str], **kwargs: Any) -> WebhookNotifier:
    defaults: dict[str, Any] = {
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 2.0,
        "rng": random.Random(7),
    }
    return WebhookNotifier(urls, kwargs.pop("secret", SECRET), **{**defaults, **kwargs})


def state(sid: str, status: str) -> dict[str, Any]:
    return {"sessionId": sid, "roomId": "room-1", "status": status, "streams": []}


def test_sign_and_verify() -> None:
    body = b'{"a":1}'
    signature = sign(SECRET, 1714557600, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify(SECRET, "1714557600", body, signature)
    assert not verify(SECRET, 1714557601, body, signature)  # the timestamp is in the MAC
    assert not verify(SECRET, 1714557600, b'{"a":2}', signature)
    assert not verify("another-secret-entirely", 1714557600, body, signature)
    assert not verify(SECRET, 1714557600, body, "sha256=" + "0" * 64)


async def test_retries_5xx_then_delivers_everything_in_order_signed(
    receiver: Receiver, nursery: trio.Nursery
) -> None:
    receiver.statuses = [503, 503]
    hooks = notifier([receiver.url()])
    await nursery.start(hooks.run)
    statuses = ["STARTING", "RECORDING", "UPLOADING", "COMPLETED"]
    for status in statuses:
        hooks.notify(state("s1", status))
    await receiver.wait_for(2 + len(statuses))
    with trio.fail_after(5):
        while hooks.stats.delivered < len(statuses):
            await trio.sleep(0.01)

    requests = receiver.requests
    delivered = requests[2:]
    # The first event was tried three times with one delivery id, then the rest in order.
    assert [r.headers["x-edge-recorder-delivery"] for r in requests[:3]] == [
        requests[0].headers["x-edge-recorder-delivery"]
    ] * 3
    assert [json.loads(r.body)["status"] for r in delivered] == statuses
    for r in requests:
        assert r.path == "/hook"
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-edge-recorder-event"] == "recording.state"
        assert verify(SECRET, r.headers["x-edge-recorder-timestamp"], r.body, r.headers["x-edge-recorder-signature"])
        assert r.body == json.dumps(json.loads(r.body), separators=(",", ":"), sort_keys=True).encode()
    assert len({r.headers["x-edge-recorder-delivery"] for r in delivered}) == len(statuses)
    assert (hooks.stats.delivered, hooks.stats.retries, hooks.stats.failed, hooks.stats.dropped) == (4, 2, 0, 0)


async def test_a_400_is_not_retried(receiver: Receiver, nursery: trio.Nursery) -> None:
    receiver.statuses = [400]
    hooks = notifier([receiver.url()], secret=None)
    await nursery.start(hooks.run)
    hooks.notify(state("s1", "STARTING"))
    hooks.notify(state("s1", "RECORDING"))
    await receiver.wait_for(2)
    with trio.fail_after(5):
        while hooks.stats.delivered < 1:
            await trio.sleep(0.01)
    assert [json.loads(r.body)["status"] for r in receiver.requests] == ["STARTING", "RECORDING"]
    assert "x-edge-recorder-signature" not in receiver.requests[0].headers
    assert (hooks.stats.failed, hooks.stats.retries, hooks.stats.dropped) == (1, 0, 0)


async def test_429_is_retried_and_attempts_are_bounded(receiver: Receiver, nursery: trio.Nursery) -> None:
    receiver.statuses = [429, 500, 502, 200]
    hooks = notifier([receiver.url()], max_attempts=3)
    await nursery.start(hooks.run)
    hooks.notify(state("s1", "FAILED"))
    hooks.notify(state("s2", "COMPLETED"))
    await receiver.wait_for(4)
    with trio.fail_after(5):
        while hooks.stats.delivered < 1:
            await trio.sleep(0.01)
    # s1: 429, 500, 502 -> given up after 3 attempts; s2 delivered at once.
    assert [json.loads(r.body)["sessionId"] for r in receiver.requests] == ["s1", "s1", "s1", "s2"]
    assert (hooks.stats.dropped, hooks.stats.retries, hooks.stats.delivered) == (1, 2, 1)


async def test_network_errors_are_retried_until_max_age(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as sock:  # a port with nobody listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hooks = notifier([f"http://127.0.0.1:{port}/hook"], max_attempts=100, max_age_s=0.2)
    await nursery.start(hooks.run)
    hooks.notify(state("s1", "RECORDING"))
    with trio.fail_after(5):
        while hooks.stats.dropped < 1:
            await trio.sleep(0.01)
    assert hooks.stats.retries >= 2
    assert hooks.stats.delivered == 0


async def test_a_full_queue_drops_the_oldest_and_never_blocks(receiver: Receiver, nursery: trio.Nursery) -> None:
    hooks = notifier([receiver.url()], max_queue=3)
    for i in range(10):  # nothing delivers yet: run() has not started
        hooks.notify(state(f"s{i}", "RECORDING"))
    assert hooks.pending() == 3
    assert (hooks.stats.dropped, hooks.stats.dropped_queue_full) == (7, 7)
    await nursery.start(hooks.run)
    await receiver.wait_for(3)
    assert [json.loads(r.body)["sessionId"] for r in receiver.requests] == ["s7", "s8", "s9"]


async def test_each_url_has_its_own_ordered_queue(receiver: Receiver, nursery: trio.Nursery) -> None:
    receiver.statuses = [503]  # whichever URL is first gets one 503
    hooks = notifier([receiver.url("/a"), receiver.url("/b")])
    await nursery.start(hooks.run)
    for status in ("STARTING", "RECORDING", "COMPLETED"):
        hooks.notify(state("s1", status))
    await receiver.wait_for(7)
    for path in ("/a", "/b"):
        seen = [json.loads(r.body)["status"] for r in receiver.requests if r.path == path]
        assert seen[-3:] == ["STARTING", "RECORDING", "COMPLETED"]
    with trio.fail_after(5):
        while hooks.stats.delivered < 6:
            await trio.sleep(0.01)
