"""Dial-out, the exposure check, the enabled switch over the wire, and a
producer replaced under the same producerId."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any

import av
import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from edge_recorder.config import Secret
from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.errors import ConfigError
from edge_recorder.service import check_control_exposure, serve
from tests.integration.sfu_client import RpcError, SfuClient, open_client
from tests.integration.test_control import Service, service_settings

pytestmark = pytest.mark.integration


async def test_dial_out_speaks_the_protocol_and_reconnects(settings: Any, nursery: trio.Nursery) -> None:
    """A fake SFU listens; the recorder dials it, answers requests over that
    connection, and dials again after the SFU drops it."""
    seen_auth: list[str] = []
    answers: list[dict[str, Any]] = []
    connected = trio.Event()

    async def sfu_side(request: WebSocketRequest) -> None:
        seen_auth.extend(v.decode() for k, v in request.headers if k.lower() == b"authorization")
        ws = await request.accept()
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": len(answers) + 1, "method": "recorder.info"}))
        answers.append(json.loads(await ws.get_message()))
        connected.set()
        await ws.aclose()  # drop it: the recorder must come back

    server = await nursery.start(partial(serve_websocket, sfu_side, "127.0.0.1", 0, ssl_context=None))
    token = "dial-token-0123456789abcdef"
    svc_settings = service_settings(settings, dial_url=f"ws://127.0.0.1:{server.port}/recorder", token=Secret(token))
    shutdown = trio.Event()
    await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    with trio.fail_after(15):
        while len(answers) < 2:
            await connected.wait()
            connected = trio.Event()
    assert all(a["result"]["serverId"] == "test-node" for a in answers)
    assert seen_auth[:2] == [f"Bearer {token}"] * 2
    shutdown.set()


def test_control_open_to_the_network_needs_a_token(settings: Any) -> None:
    exposed = dataclasses.replace(settings, control=dataclasses.replace(settings.control, host="0.0.0.0"))
    with pytest.raises(ConfigError) as info:
        check_control_exposure(exposed)
    assert info.value.variable == "RECORDING_CONTROL_TOKEN"
    check_control_exposure(dataclasses.replace(exposed, control=dataclasses.replace(exposed.control, allow_insecure=True)))
    check_control_exposure(
        dataclasses.replace(exposed, control=dataclasses.replace(exposed.control, token=Secret("t" * 20)))
    )


async def _client(url: str, nursery: trio.Nursery) -> SfuClient:
    return await open_client(nursery, url)


async def test_disabled_recorder_answers_info_but_refuses_to_record(settings: Any, nursery: trio.Nursery) -> None:
    svc_settings = dataclasses.replace(service_settings(settings), recording_enabled=False)
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await _client(Service(addresses, shutdown, svc_settings).url, nursery)
    assert (await sfu.call("recorder.info"))["serverId"] == "test-node"
    with pytest.raises(RpcError) as info:
        await sfu.call("recording.start", {"roomId": "room"})
    assert info.value.code == -32001 and "RECORDING_ENABLED" in info.value.error["message"]
    await sfu.aclose()
    shutdown.set()


async def test_a_producer_replaced_under_the_same_id_keeps_recording(settings: Any, nursery: trio.Nursery) -> None:
    svc_settings = service_settings(settings)
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await _client(Service(addresses, shutdown, svc_settings).url, nursery)
    await sfu.call("recording.start", {"roomId": "room-replace", "sessionId": "replace"})
    first = demo_producers()["alice-cam"]
    async with trio.open_nursery() as senders:
        ports = await sfu.call("recording.addStream", first.add_stream_params("replace"))
        old = trio.CancelScope()

        async def send_old() -> None:
            with old:
                await run_producer(first, (ports["ip"], ports["port"]))

        senders.start_soon(send_old)
        await trio.sleep(1.5)
        # The camera restarts: same producerId, new SSRC, new colour (Bob's blue).
        second = dataclasses.replace(demo_producers()["bob-cam"], producer_id="alice-cam", peer_id="alice", display_name="Alice")
        new_ports = await sfu.call("recording.addStream", second.add_stream_params("replace"))
        old.cancel()
        senders.start_soon(partial(run_producer, second, (new_ports["ip"], new_ports["port"])))
        await trio.sleep(2.0)
        record = await sfu.call("recording.get", {"sessionId": "replace"})
        stopped = await sfu.call("recording.stop", {"sessionId": "replace"})
        senders.cancel_scope.cancel()
    assert [s["producerId"] for s in record["streams"]] == ["alice-cam"]
    assert stopped["status"] == "COMPLETED"
    path = (await sfu.call("recording.get", {"sessionId": "replace"}))["asset"]["url"].removeprefix("file://")
    with av.open(path) as container:
        frames = list(container.decode(video=0))
    h, w = frames[-1].height, frames[-1].width
    early = frames[int(1.2 * 30)].to_ndarray(format="rgb24")[h // 2, w // 2]
    late = frames[-1].to_ndarray(format="rgb24")[h // 2, w // 2]
    assert early[0] > 150 and early[2] < 100, f"Alice's red expected first, got {early}"
    assert late[2] > 150 and late[0] < 100, f"the replacement's blue expected last, got {late}"
    await sfu.aclose()
    shutdown.set()


async def test_starting_is_announced_to_every_connection_before_the_reply(settings: Any, nursery: trio.Nursery) -> None:
    """Issue #10: the first status a client saw was RECORDING; the runbook's
    checklist asks for STARTING -> RECORDING -> UPLOADING/COMPLETED."""
    shutdown = trio.Event()
    svc_settings = service_settings(settings)
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    url = Service(addresses, shutdown, svc_settings).url
    sfu = await open_client(nursery, url)
    observer = await open_client(nursery, url)
    await sfu.call("recorder.info")
    await observer.call("recorder.info")
    reply = await sfu.call("recording.start", {"roomId": "room-s", "sessionId": "s-starting"})
    assert reply == {"sessionId": "s-starting", "status": "RECORDING"}
    # Read before the reply (one connection's messages arrive in order).
    assert sfu.states("s-starting") == ["STARTING", "RECORDING"]
    with trio.fail_after(10):
        while observer.states("s-starting")[:2] != ["STARTING", "RECORDING"]:
            await observer.notified.wait()
    await sfu.call("recording.stop", {"sessionId": "s-starting"})
    await sfu.wait_for_state("s-starting", "COMPLETED")
    assert sfu.states("s-starting") == ["STARTING", "RECORDING", "UPLOADING", "COMPLETED"]
    await sfu.aclose()
    await observer.aclose()
    shutdown.set()
