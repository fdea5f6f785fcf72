"""Bad input on the control side: every case gets a JSON-RPC error, the
connection keeps working, and a session recording meanwhile is unharmed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from edge_recorder.demo.sfu import demo_producers
from edge_recorder.service import serve
from tests.integration.sfu_client import RpcError, SfuClient, open_client
from tests.integration.test_control import Service, service_settings

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
async def secured(settings: Any, nursery: trio.Nursery) -> Any:
    from edge_recorder.config import Secret

    shutdown = trio.Event()
    svc_settings = service_settings(settings, token=Secret(TOKEN))
    addresses = await nursery.start(lambda task_status: serve(svc_settings, shutdown=shutdown, task_status=task_status))
    yield Service(addresses, shutdown, svc_settings)
    shutdown.set()


async def _client(url: str, nursery: trio.Nursery, token: str | None = TOKEN) -> SfuClient:
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
    return await open_client(nursery, url, headers)


async def _raw(client: SfuClient, frame: str | bytes) -> dict[str, Any]:
    before = len(client.raw)
    await client.ws.send_message(frame)
    with trio.fail_after(10):
        while len(client.raw) == before:
            await trio.sleep(0.01)
    return client.raw[before]


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
async def test_missing_or_wrong_token_is_refused_at_the_handshake(secured: Service, token: str | None) -> None:
    # A hand-written upgrade request (trio-websocket's client leaks its socket
    # when a handshake is rejected), so the test sees the raw HTTP answer.
    host, port = secured.addresses.control
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET {secured.settings.control.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{auth}\r\n"
    )
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(request.encode())
        with trio.fail_after(5):
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]


async def test_the_right_token_is_accepted(secured: Service, nursery: trio.Nursery) -> None:
    sfu = await _client(secured.url, nursery)
    assert (await sfu.call("recorder.info"))["serverId"] == "test-node"
    await sfu.aclose()


async def test_every_kind_of_bad_message_gets_an_error_and_nothing_breaks(secured: Service, nursery: trio.Nursery) -> None:
    sfu = await _client(secured.url, nursery)
    bystander = await _client(secured.url, nursery)
    session = await bystander.call("recording.start", {"roomId": "room-calm", "sessionId": "calm"})
    assert session["status"] == "RECORDING"

    reply = await _raw(sfu, "{not json")
    assert reply["error"]["code"] == -32700 and reply["id"] is None
    reply = await _raw(sfu, b"\x00\x01binary")
    assert reply["error"]["code"] in (-32700, -32600)
    reply = await _raw(sfu, json.dumps([1, 2, 3]))
    assert reply["error"]["code"] == -32600
    reply = await _raw(sfu, json.dumps({"jsonrpc": "1.0", "id": 5, "method": "recorder.info"}))
    assert reply["error"]["code"] == -32600
    reply = await _raw(sfu, json.dumps({"jsonrpc": "2.0", "id": 6, "method": "recording.explode"}))
    assert reply["error"]["code"] == -32601 and reply["id"] == 6
    reply = await _raw(sfu, json.dumps({"jsonrpc": "2.0", "id": 7, "method": "recording.start", "params": {"roomId": "x" * 5000}}))
    assert reply["error"]["code"] in (-32602, -32600)
    reply = await _raw(sfu, "x" * (300 * 1024))
    assert reply["error"]["code"] == -32600

    with pytest.raises(RpcError) as info:
        await sfu.call("recording.start", {})
    assert info.value.code == -32602 and info.value.data["field"] == "roomId"
    with pytest.raises(RpcError) as info:
        await sfu.call("recording.start", {"roomId": 42})
    assert info.value.code == -32602 and info.value.data["field"] == "roomId"
    params = demo_producers()["alice-cam"].add_stream_params("calm")
    params["rtpParameters"]["codecs"][0]["clockRate"] = "fast"
    with pytest.raises(RpcError) as info:
        await sfu.call("recording.addStream", params)
    assert info.value.code == -32602 and "clockRate" in info.value.data["field"]
    with pytest.raises(RpcError) as info:
        await sfu.call("recording.stop", {"sessionId": "no-such-session"})
    assert info.value.code == -32002
    with pytest.raises(RpcError) as info:
        await sfu.call("recording.start", {"roomId": "room-calm", "sessionId": "other"})
    assert info.value.code == -32003 and info.value.data["sessionId"] == "calm"

    # A flood: the excess is refused with RATE_LIMITED, nothing else happens.
    flood = 400
    for i in range(flood):
        await sfu.ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 10_000 + i, "method": "recording.list"}))
    with trio.fail_after(20):
        while sum(1 for m in sfu.raw if isinstance(m.get("id"), int) and m["id"] >= 10_000) < flood:
            await trio.sleep(0.05)
    codes = [m.get("error", {}).get("code") for m in sfu.raw if isinstance(m.get("id"), int) and m["id"] >= 10_000]
    assert codes.count(-32008) > 0 and codes.count(None) > 0

    # The connection still works, and so does the other session.
    await trio.sleep(1.1)
    assert (await sfu.call("recorder.info"))["capacity"]["activeSessions"] == 1
    record = await bystander.call("recording.get", {"sessionId": "calm"})
    assert record["status"] == "RECORDING"
    stopped = await bystander.call("recording.stop", {"sessionId": "calm"})
    assert stopped["status"] == "COMPLETED"
    await sfu.aclose()
    await bystander.aclose()


async def test_port_exhaustion_is_a_clear_error_and_harms_nothing(settings: Any, nursery: trio.Nursery) -> None:
    import dataclasses

    shutdown = trio.Event()
    small = dataclasses.replace(service_settings(settings), port_max=settings.port_min + 1)
    addresses = await nursery.start(lambda task_status: serve(small, shutdown=shutdown, task_status=task_status))
    svc = Service(addresses, shutdown, small)
    sfu = await _client(svc.url, nursery, token=None)
    await sfu.call("recording.start", {"roomId": "room-ports", "sessionId": "ports"})
    producers = demo_producers()
    first = await sfu.call("recording.addStream", producers["alice-cam"].add_stream_params("ports"))
    await sfu.call("recording.addStream", producers["alice-mic"].add_stream_params("ports"))
    with pytest.raises(RpcError) as info:
        await sfu.call("recording.addStream", producers["bob-cam"].add_stream_params("ports"))
    assert info.value.code == -32004 and "RECORDING_PORT_MAX" in info.value.error["message"]
    # Removing a stream gives its port back; the next addStream gets it.
    await sfu.call("recording.removeStream", {"sessionId": "ports", "producerId": "alice-cam"})
    again = await sfu.call("recording.addStream", producers["bob-cam"].add_stream_params("ports"))
    assert again["port"] == first["port"]
    assert (await sfu.call("recording.stop", {"sessionId": "ports"}))["status"] == "COMPLETED"
    await sfu.aclose()
    shutdown.set()
