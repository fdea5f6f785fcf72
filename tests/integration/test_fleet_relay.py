"""FleetRelay between two nodes ("n1", "n2") on one real redis-server: calls, errors,
timeouts, busy owners, ordered notifications, touches, hostile messages, a Redis restart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import trio

from edge_recorder.control.protocol import ErrorCode, notification_message
from edge_recorder.errors import JsonRpcError, NodeUnavailableError
from edge_recorder.fleet.envelope import (
    ControllerTouch,
    ErrorBody,
    ForwardedReply,
    ForwardedRequest,
    RelayedNotification,
    encode,
)
from edge_recorder.fleet.relay import (
    BUSY_MESSAGE,
    NOTIFY_CHANNEL,
    FleetRelay,
    LinkState,
    reply_channel,
    rpc_channel,
)
from edge_recorder.state.redis import RedisStateStore
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

# Generous: two noisy cores, a thread hop per Redis call.
WAIT_S = 10.0


class Node:
    """One node: its store, its relay, and what reached it."""

    def __init__(self, url: str, server_id: str, **relay_options: Any) -> None:
        self.store = RedisStateStore(url, lease_ttl_s=15, socket_timeout_s=0.2)
        self.notes: list[str] = []
        self.touches: list[ControllerTouch] = []
        self.requests: list[ForwardedRequest] = []
        # "slow" requests wait for release; holding counts those that started.
        self.release = trio.Event()
        self.holding = 0
        self.relay = FleetRelay(
            self.store,
            server_id,
            handler=self.handle,
            on_notification=self.notes.append,
            on_touch=self.touches.append,
            **relay_options,
        )

    async def handle(self, request: ForwardedRequest) -> ForwardedReply:
        self.requests.append(request)
        params = request.params if isinstance(request.params, dict) else {}
        if request.method == "slow":
            self.holding += 1
            await self.release.wait()
        if request.method == "fail":
            return ForwardedReply(request.request_id, None, ErrorBody(-32002, "unknown session s-9", {"sessionId": "s-9"}))
        if request.method == "raise":
            raise JsonRpcError(ErrorCode.SESSION_NOT_ACTIVE, "session s-1 is COMPLETED", {"sessionId": "s-1"})
        if request.method == "crash":
            raise RuntimeError("a bug in the handler")
        if request.method == "unencodable":
            return ForwardedReply(request.request_id, {"a set": {1, 2}}, None)
        return ForwardedReply(request.request_id, {"node": self.relay.server_id, "echo": params}, None)


@asynccontextmanager
async def fleet(server: RedisServer, **n2_options: Any) -> AsyncIterator[tuple[Node, Node]]:
    """n1 and n2 running (subscribed) on ``server``; cancelled and closed on exit."""
    n1, n2 = Node(server.url, "n1"), Node(server.url, "n2", **n2_options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(n1.relay.run)
            await nursery.start(n2.relay.run)
            assert n1.relay.link is n2.relay.link is LinkState.UP
            yield n1, n2
            nursery.cancel_scope.cancel()
    finally:
        await n1.store.close()
        await n2.store.close()


async def eventually(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.01)


def note(i: int) -> str:
    return notification_message("recording.state", {"sessionId": f"s-{i}", "seq": i})


# ------------------------------------------------------------------ calls


async def test_a_call_gets_the_owners_result(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, n2):
        result = await n1.relay.call("n2", "c3", "recording.get", {"sessionId": "s-1"}, timeout_s=WAIT_S)
        assert result == {"node": "n2", "echo": {"sessionId": "s-1"}}
        [request] = n2.requests
        assert (request.origin, request.connection, request.method) == ("n1", "c3", "recording.get")
        assert request.request_id.startswith("n1:")
        # And the other way, concurrently, with ids that never collide.
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for i in range(20):
                async def one(i: int = i) -> None:
                    results.append(await n2.relay.call("n1", f"c{i}", "echo", {"i": i}, timeout_s=WAIT_S))
                nursery.start_soon(one)
        assert sorted(r["echo"]["i"] for r in results) == list(range(20))
        assert len({r.request_id for r in n1.requests}) == 20
        # A reply can reach its caller before the owner's publish returns and
        # counts it: the counters settle a moment later (bounded).
        with trio.move_on_after(WAIT_S):
            while n1.relay.stats.answered < 20 or n2.relay.stats.answered < 1:
                await trio.sleep(0.01)
        assert (n1.relay.stats.forwarded, n2.relay.stats.answered) == (1, 1)
        assert (n2.relay.stats.forwarded, n1.relay.stats.answered) == (20, 20)


async def test_error_replies_surface_as_json_rpc_errors(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, _n2):
        with pytest.raises(JsonRpcError) as info:
            await n1.relay.call("n2", "c1", "fail", None, timeout_s=WAIT_S)
        assert (info.value.code, info.value.message, info.value.data) == (-32002, "unknown session s-9", {"sessionId": "s-9"})

        with pytest.raises(JsonRpcError) as info:
            await n1.relay.call("n2", "c1", "raise", {}, timeout_s=WAIT_S)
        assert (info.value.code, info.value.message, info.value.data) == (-32007, "session s-1 is COMPLETED", {"sessionId": "s-1"})

        with pytest.raises(JsonRpcError) as info:
            await n1.relay.call("n2", "c1", "crash", {}, timeout_s=WAIT_S)
        assert (info.value.code, info.value.message) == (ErrorCode.INTERNAL_ERROR, "internal error")

        with pytest.raises(JsonRpcError) as info:
            await n1.relay.call("n2", "c1", "unencodable", {}, timeout_s=WAIT_S)
        assert info.value.code == ErrorCode.INTERNAL_ERROR

        # The owner lives on.
        assert await n1.relay.call("n2", "c1", "echo", [], timeout_s=WAIT_S) == {"node": "n2", "echo": {}}


async def test_a_call_to_a_node_nobody_runs_fails_at_once(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, _n2):
        began = trio.current_time()
        with pytest.raises(NodeUnavailableError, match="not listening") as info:
            await n1.relay.call("n9", "c1", "recording.get", {}, timeout_s=30)
        assert trio.current_time() - began < 5  # far under the 30 s timeout
        assert info.value.server_id == "n9"
        assert n1.relay.stats.unavailable == 1
        assert n1.relay.stats.timeouts == 0


async def test_a_handler_slower_than_the_timeout_is_node_unavailable(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, n2):
        began = trio.current_time()
        with pytest.raises(NodeUnavailableError, match="no reply to slow within 0.5 s") as info:
            await n1.relay.call("n2", "c1", "slow", {}, timeout_s=0.5)
        assert trio.current_time() - began >= 0.5
        assert info.value.server_id == "n2"
        assert n1.relay.stats.timeouts == 1
        # The owner answers late: the reply is dropped, counted.
        n2.release.set()
        await eventually(lambda: n1.relay.stats.dropped_late == 1, "the late reply")
        assert await n1.relay.call("n2", "c1", "slow", {}, timeout_s=WAIT_S) == {"node": "n2", "echo": {}}


async def test_a_busy_owner_refuses_at_once(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server, max_in_flight=1) as (n1, n2):
        async with trio.open_nursery() as nursery:
            held: list[Any] = []

            async def hold() -> None:
                held.append(await n1.relay.call("n2", "c1", "slow", {}, timeout_s=WAIT_S))

            nursery.start_soon(hold)
            await eventually(lambda: n2.holding == 1, "the first request to be running")
            with pytest.raises(JsonRpcError) as info:
                await n1.relay.call("n2", "c2", "echo", {}, timeout_s=WAIT_S)
            assert (info.value.code, info.value.message) == (ErrorCode.RATE_LIMITED, BUSY_MESSAGE)
            assert n2.relay.stats.busy == 1
            n2.release.set()
        assert held == [{"node": "n2", "echo": {}}]
        # A slot is free again.
        assert await n1.relay.call("n2", "c2", "echo", {}, timeout_s=WAIT_S) == {"node": "n2", "echo": {}}


# ------------------------------------------------------------------ notifications and touches


async def test_notifications_arrive_in_order_and_not_at_their_origin(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, n2):
        sent = [note(i) for i in range(200)]
        for message in sent:
            n1.relay.notify(message)
        await eventually(lambda: len(n2.notes) >= 200, "200 notifications at n2")
        assert n2.notes == sent
        # n2's own: once n1 has it, n1 has read past all of its own (one channel, Redis order).
        n2.relay.notify(note(999))
        await eventually(lambda: len(n1.notes) >= 1, "n2's notification at n1")
        assert n1.notes == [note(999)]
        assert n2.notes == sent
        assert n1.relay.stats.dropped_outbox == n1.relay.stats.unsent == 0


async def test_touches_reach_the_owner(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, n2):
        n1.relay.touch("n2", [("c3", "s-1"), ("c4", "s-2")])
        n1.relay.touch("n2", (("c3", "s-1"),), detach=True)
        await eventually(lambda: len(n2.touches) >= 2, "two touches")
        assert n2.touches == [
            ControllerTouch("n1", (("c3", "s-1"), ("c4", "s-2")), False),
            ControllerTouch("n1", (("c3", "s-1"),), True),
        ]
        assert n1.touches == []


async def test_a_full_outbox_drops_and_counts() -> None:
    store = RedisStateStore("redis://127.0.0.1:1/0")  # never connected: nothing drains the outbox
    relay = FleetRelay(store, "n1", handler=_never, on_notification=print, on_touch=print, outbox=4)
    try:
        for i in range(10):
            relay.notify(note(i))
        relay.touch("n2", [("c1", "s-1")])
        assert relay.stats.dropped_outbox == 7
    finally:
        await store.close()


async def test_a_queued_outbox_leaves_in_order_once_running(redis_server: RedisServer) -> None:  # noqa: F811
    n3 = Node(redis_server.url, "n3", outbox=4)
    for i in range(6):
        n3.relay.notify(note(i))  # before run: 4 queued, 2 dropped
    assert n3.relay.stats.dropped_outbox == 2
    try:
        async with fleet(redis_server) as (_n1, n2):
            async with trio.open_nursery() as nursery:
                await nursery.start(n3.relay.run)
                await eventually(lambda: len(n2.notes) >= 4, "the queued notifications")
                assert n2.notes == [note(i) for i in range(4)]
                nursery.cancel_scope.cancel()
    finally:
        await n3.store.close()


async def _never(request: ForwardedRequest) -> ForwardedReply:
    raise AssertionError("no request expected")


# ------------------------------------------------------------------ hostile input


async def test_garbage_on_the_channels_is_counted_and_the_relay_keeps_working(redis_server: RedisServer) -> None:  # noqa: F811
    raw = redis_server.client()
    bytes_client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2)
    valid_reply = encode(ForwardedReply("n1:1:00000000", 1))
    garbage: list[tuple[str, str | bytes]] = [
        (rpc_channel("n2"), "not json"),
        (rpc_channel("n2"), b"x" * (2 * 1024 * 1024)),  # 2 MiB
        (rpc_channel("n2"), json.dumps({"v": 2, "t": "touch", "origin": "n1", "sessions": [], "detach": False})),
        (rpc_channel("n2"), json.dumps({"v": 1, "t": "request", "id": "r", "origin": "n1", "connection": "c1", "method": "m", "params": 7})),
        (rpc_channel("n2"), '{"v":1,"v":1,"t":"touch","origin":"n1","sessions":[],"detach":false}'),
        (rpc_channel("n2"), valid_reply),  # a reply on a request channel
        (reply_channel("n2"), encode(ControllerTouch("n1", (), False))),  # a touch on a reply channel
        (reply_channel("n2"), "[]"),
        (rpc_channel("n2"), b"\xff\xfe not UTF-8"),  # redis-py cannot decode it: n2 subscribes again
        (rpc_channel("n2"), "{" * 100_000),
    ]
    try:
        async with fleet(redis_server) as (n1, n2):
            for count, (channel, data) in enumerate(garbage, start=1):
                receivers = await trio.to_thread.run_sync(bytes_client.publish, channel, data)
                assert receivers == 1
                await eventually(lambda: n2.relay.stats.dropped_bad == count and n2.relay.link is LinkState.UP, f"garbage #{count} counted")
            assert n2.requests == [] and n2.touches == []
            # On edge:notify both nodes see it: both count it, neither delivers it.
            valid = encode(RelayedNotification("n9", note(1)))
            not_a_notification = valid.replace('\\"jsonrpc\\":\\"2.0\\"', '\\"jsonrpc\\":\\"1.0\\"')
            assert not_a_notification != valid
            for data in ("garbage", not_a_notification, json.dumps({"v": 99})):
                await trio.to_thread.run_sync(raw.publish, NOTIFY_CHANNEL, data)
            await eventually(lambda: n1.relay.stats.dropped_bad == 3, "garbage at n1")
            await eventually(lambda: n2.relay.stats.dropped_bad == len(garbage) + 3, "garbage at n2")
            assert n1.notes == n2.notes == []
            # Both still work, both ways.
            assert await n1.relay.call("n2", "c1", "echo", {"after": "garbage"}, timeout_s=WAIT_S) == {"node": "n2", "echo": {"after": "garbage"}}
            assert await n2.relay.call("n1", "c1", "echo", {}, timeout_s=WAIT_S) == {"node": "n1", "echo": {}}
            n1.relay.notify(note(1))
            await eventually(lambda: n2.notes == [note(1)], "a notification after the garbage")
            assert n2.relay.stats.resubscribes == 1  # the undecodable message only
    finally:
        raw.close()
        bytes_client.close()


# ------------------------------------------------------------------ Redis restarts


async def test_the_relay_survives_a_redis_restart(redis_server: RedisServer) -> None:  # noqa: F811
    async with fleet(redis_server) as (n1, n2):
        assert await n1.relay.call("n2", "c1", "echo", {}, timeout_s=WAIT_S) == {"node": "n2", "echo": {}}
        await trio.to_thread.run_sync(redis_server.kill)
        await eventually(lambda: n1.relay.link is not LinkState.UP and n2.relay.link is not LinkState.UP, "both links down")
        with pytest.raises(NodeUnavailableError, match="could not be published"):
            await n1.relay.call("n2", "c1", "echo", {}, timeout_s=WAIT_S)
        n1.relay.notify(note(0))  # Redis is down: not sent, counted
        await eventually(lambda: n1.relay.stats.unsent == 1, "the unsent notification")

        await trio.to_thread.run_sync(redis_server.start)  # empty: no persistence
        await eventually(lambda: n1.relay.link is LinkState.UP and n2.relay.link is LinkState.UP, "both links up again")
        assert n1.relay.stats.resubscribes == n2.relay.stats.resubscribes == 1
        assert await n1.relay.call("n2", "c1", "echo", {"again": True}, timeout_s=WAIT_S) == {"node": "n2", "echo": {"again": True}}
        assert await n2.relay.call("n1", "c1", "echo", {}, timeout_s=WAIT_S) == {"node": "n1", "echo": {}}
        n1.relay.notify(note(1))
        await eventually(lambda: n2.notes == [note(1)], "a notification after the restart")


async def test_run_reports_started_only_once_subscribed(redis_server: RedisServer) -> None:  # noqa: F811
    await trio.to_thread.run_sync(redis_server.kill)
    n1 = Node(redis_server.url, "n1")
    started = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            async def start() -> None:
                await nursery.start(n1.relay.run)
                started.set()

            nursery.start_soon(start)
            await trio.sleep(1.0)  # several attempts fail meanwhile
            assert not started.is_set()
            assert n1.relay.link is not LinkState.UP
            await trio.to_thread.run_sync(redis_server.start)
            with trio.fail_after(WAIT_S):
                await started.wait()
            assert n1.relay.link is LinkState.UP
            nursery.cancel_scope.cancel()
    finally:
        await n1.store.close()
