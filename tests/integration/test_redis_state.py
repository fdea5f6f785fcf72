"""The StateStore contract, run against MemoryStateStore and a real redis-server alike,
plus what only Redis has: several client instances ("nodes"), a killed server.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from edge_recorder.errors import SharedStateError
from edge_recorder.state.memory import MemoryStateStore
from edge_recorder.state.redis import RedisStateStore, ResilientStateStore
from edge_recorder.state.store import StateStore
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

# Short enough that Redis-side expiry needs only a brief real wait, long enough
# that nothing expires while a test is still setting up.
LEASE_TTL_S = 0.5
NOW = "2024-05-01T12:00:00.000Z"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_ids = itertools.count()


def record(
    session_id: str | None = None,
    *,
    room: str = "room-1",
    status: str = "RECORDING",
    server: str = "node-a",
    started: str = "2024-05-01T10:00:00.000Z",
    **extra: Any,
) -> dict[str, Any]:
    sid = session_id or f"s-{next(_ids)}"
    rec: dict[str, Any] = {
        "sessionId": sid,
        "roomId": room,
        "status": status,
        "previousStatus": None,
        "startedAt": started,
        "updatedAt": started,
        "serverId": server,
        "layout": "pip",
        "streams": [],
    }
    rec.update(extra)
    return rec


@dataclass
class Backend:
    """One shared backend; ``node()`` is another node's view of it."""

    kind: str
    node: Callable[[], StateStore]
    expire_leases: Callable[[], Awaitable[None]]
    stores: list[StateStore] = field(default_factory=list)


@pytest.fixture(params=["memory", "redis"])
def backend_server(request: pytest.FixtureRequest) -> RedisServer | None:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server
    return None


@pytest.fixture
async def backend(backend_server: RedisServer | None) -> AsyncIterator[Backend]:
    if backend_server is None:
        clock = FakeClock()
        shared = MemoryStateStore(lease_ttl_s=LEASE_TTL_S, clock=clock)

        async def advance() -> None:
            clock.now += LEASE_TTL_S + 0.1

        b = Backend("memory", lambda: shared, advance)
    else:
        url = backend_server.url

        def node() -> StateStore:
            store = RedisStateStore(url, lease_ttl_s=LEASE_TTL_S)
            b.stores.append(store)
            return store

        async def wait() -> None:
            await trio.sleep(LEASE_TTL_S + 0.2)

        b = Backend("redis", node, wait)
    try:
        yield b
    finally:
        for store in b.stores:
            await store.close()


# --- the contract ------------------------------------------------------------------


async def test_publish_then_get_returns_an_equal_copy(backend: Backend) -> None:
    store = backend.node()
    rec = record(asset={"key": "recordings/x.mp4", "bytes": 12}, streams=[{"kind": "video"}])
    assert await store.publish(rec) is True
    got = await store.get(rec["sessionId"])
    assert got == rec
    assert got is not rec
    got["status"] = "mutated"
    assert (await store.get(rec["sessionId"])) == rec
    assert await store.get("no-such-session") is None


async def test_publish_refuses_a_malformed_record(backend: Backend) -> None:
    store = backend.node()
    bad = record()
    del bad["roomId"]
    with pytest.raises(ValueError, match="roomId"):
        await store.publish(bad)
    with pytest.raises(ValueError, match="status"):
        await store.publish(record(status="PAUSED"))
    with pytest.raises(ValueError, match="startedAt"):
        await store.publish(record(started="yesterday"))


async def test_a_second_node_sees_what_the_first_published(backend: Backend) -> None:
    first, second = backend.node(), backend.node()
    rec = record(room="shared-room")
    await first.publish(rec)
    assert await second.get(rec["sessionId"]) == rec
    assert await second.by_room("shared-room") == rec
    rec2 = {**rec, "status": "UPLOADING", "previousStatus": "RECORDING"}
    await second.publish(rec2)
    assert await first.get(rec["sessionId"]) == rec2


async def test_by_room_prefers_the_active_session_then_the_newest(backend: Backend) -> None:
    store = backend.node()
    old_done = record(room="r", status="COMPLETED", started="2024-05-01T09:00:00.000Z")
    active = record(room="r", status="RECORDING", started="2024-05-01T10:00:00.000Z")
    new_failed = record(room="r", status="FAILED", started="2024-05-01T11:00:00.000Z")
    other_room = record(room="elsewhere", started="2024-05-01T12:00:00.000Z")
    for rec in (old_done, active, new_failed, other_room):
        await store.publish(rec)
    assert await store.by_room("r") == active
    await store.publish({**active, "status": "FAILED", "previousStatus": "RECORDING"})
    newest = await store.by_room("r")
    assert newest is not None and newest["sessionId"] == new_failed["sessionId"]
    assert await store.by_room("no-such-room") is None


async def test_list_is_newest_first_and_limited(backend: Backend) -> None:
    store = backend.node()
    recs = [record(started=f"2024-05-0{day}T10:00:00.000Z") for day in (3, 1, 4, 2)]
    for rec in recs:
        await store.publish(rec)
    listed = await store.list(10)
    assert [r["startedAt"][:10] for r in listed] == ["2024-05-04", "2024-05-03", "2024-05-02", "2024-05-01"]
    assert [r["startedAt"][:10] for r in await store.list(2)] == ["2024-05-04", "2024-05-03"]
    assert await store.list(0) == []


async def test_list_orders_equal_start_times_by_session_id(backend: Backend) -> None:
    store = backend.node()
    for sid in ("b", "a", "c"):
        await store.publish(record(sid))
    assert [r["sessionId"] for r in await store.list(3)] == ["c", "b", "a"]


async def test_terminal_is_sticky(backend: Backend) -> None:
    store = backend.node()
    rec = record(status="RECORDING", server="node-a")
    await store.publish(rec)
    done = {**rec, "status": "COMPLETED", "previousStatus": "UPLOADING"}
    assert await store.publish(done) is True
    # A stale non-terminal record (a resync, a reordered write) never resurrects it.
    assert await store.publish(rec) is False
    assert await store.get(rec["sessionId"]) == done
    # Another node's terminal record does not replace it either...
    assert await store.publish({**done, "status": "FAILED", "serverId": "node-b"}) is False
    # ...but the owner's own terminal record does (its COMPLETED after a false node-lost).
    fixed = {**done, "asset": {"key": "k"}}
    assert await store.publish(fixed) is True
    assert await store.get(rec["sessionId"]) == fixed


async def test_subscribers_see_every_change_in_order(backend: Backend) -> None:
    publisher, watcher = backend.node(), backend.node()
    changes: list[dict[str, Any]] = []
    for i in range(3):
        rec = record(f"order-{i}")
        for status in ("STARTING", "RECORDING", "UPLOADING", "COMPLETED"):
            changes.append({**rec, "status": status, "updatedAt": f"2024-05-01T10:00:0{len(changes) % 10}.000Z"})
    async with watcher.subscribe() as updates:
        for change in changes:
            await publisher.publish(change)
        await publisher.publish(changes[1])  # refused (terminal is sticky): not announced
        seen: list[dict[str, Any]] = []
        with trio.fail_after(5):
            while len(seen) < len(changes):
                seen.append(await updates.receive())
    assert seen == changes


async def test_heartbeat_registers_a_node_that_expires_but_stays_listed(backend: Backend) -> None:
    store = backend.node()
    capacity = {"activeSessions": 1, "maxSessions": 4, "load": 0.25, "version": "0.1.0"}
    await store.heartbeat("node-b", capacity)
    await store.heartbeat("node-a", {**capacity, "activeSessions": 0})
    nodes = await store.nodes()
    assert [n["serverId"] for n in nodes] == ["node-a", "node-b"]
    assert all(n["alive"] for n in nodes)
    assert {k: nodes[1][k] for k in capacity} == capacity
    assert nodes[1]["lastSeen"].endswith("Z")
    await backend.expire_leases()
    assert [(n["serverId"], n["alive"]) for n in await store.nodes()] == [("node-a", False), ("node-b", False)]


async def test_sweep_fails_active_sessions_whose_lease_expired(backend: Backend) -> None:
    owner, sweeper, watcher = backend.node(), backend.node(), backend.node()
    renewed = record(status="RECORDING", server="node-a")
    lost = record(status="UPLOADING", server="node-a")
    done = record(status="COMPLETED", server="node-a")
    for rec in (renewed, lost, done):
        await owner.publish(rec)
    assert await sweeper.sweep_expired(NOW) == []  # every lease is fresh
    async with watcher.subscribe() as updates:
        await backend.expire_leases()
        await owner.renew_leases("node-a", [renewed["sessionId"]])
        swept = await sweeper.sweep_expired(NOW)
        expected = {
            **lost,
            "status": "FAILED",
            "previousStatus": "UPLOADING",
            "reason": "node-lost",
            "error": "the node node-a stopped renewing its lease",
            "updatedAt": NOW,
            "stoppedAt": NOW,
        }
        assert swept == [expected]
        with trio.fail_after(5):
            assert await updates.receive() == expected
    assert await owner.get(lost["sessionId"]) == expected
    assert (await owner.get(renewed["sessionId"]) or {})["status"] == "RECORDING"
    assert await owner.get(done["sessionId"]) == done
    assert await sweeper.sweep_expired(NOW) == []


async def test_concurrent_sweepers_fail_each_lost_session_exactly_once(backend: Backend) -> None:
    owner = backend.node()
    sweepers = [backend.node() for _ in range(3)]
    recs = [record(status="RECORDING", server="node-gone") for _ in range(30)]
    for rec in recs:
        await owner.publish(rec)
    await backend.expire_leases()
    results: list[list[dict[str, Any]]] = [[] for _ in sweepers]

    async def sweep(i: int) -> None:
        results[i] = await sweepers[i].sweep_expired(NOW)

    async with trio.open_nursery() as nursery:
        for i in range(len(sweepers)):
            nursery.start_soon(sweep, i)
    swept_ids = [r["sessionId"] for result in results for r in result]
    assert sorted(swept_ids) == sorted(r["sessionId"] for r in recs)
    for rec in recs:
        got = await owner.get(rec["sessionId"])
        assert got is not None and got["status"] == "FAILED" and got["reason"] == "node-lost"


async def test_a_late_owner_cannot_resurrect_a_swept_session(backend: Backend) -> None:
    owner, sweeper = backend.node(), backend.node()
    rec = record(status="RECORDING", server="node-a")
    await owner.publish(rec)
    await backend.expire_leases()
    [failed] = await sweeper.sweep_expired(NOW)
    assert await owner.publish({**rec, "status": "UPLOADING"}) is False
    done = {**rec, "status": "COMPLETED", "previousStatus": "UPLOADING", "asset": {"key": "k"}}
    assert await owner.publish(done) is True  # where the file went is still worth knowing
    assert await sweeper.get(rec["sessionId"]) == done
    assert failed["reason"] == "node-lost"


# --- Redis only --------------------------------------------------------------------


async def test_redis_key_layout(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStateStore(redis_server.url, lease_ttl_s=15)
    raw = redis_server.client()
    try:
        rec = record("layout-1", room="room-x", server="node-x")
        await store.publish(rec)
        await store.heartbeat("node-x", {"activeSessions": 1})
        assert raw.hget("edge:session:layout-1", "status") == "RECORDING"
        assert raw.hget("edge:session:layout-1", "serverId") == "node-x"
        assert raw.zrange("edge:room:room-x", 0, -1) == ["layout-1"]
        assert raw.zrange("edge:node:node-x:sessions", 0, -1) == ["layout-1"]
        assert raw.zscore("edge:sessions", "layout-1") == 1714557600000.0
        assert raw.smembers("edge:active") == {"layout-1"}
        assert raw.get("edge:lease:layout-1") == "node-x"
        assert 14_000 < raw.pttl("edge:lease:layout-1") <= 15_000
        assert 14_000 < raw.pttl("edge:node:node-x") <= 15_000
        assert "node-x" in raw.hkeys("edge:nodes")
        await store.publish({**rec, "status": "COMPLETED"})
        assert raw.smembers("edge:active") == set()
    finally:
        raw.close()
        await store.close()


async def test_redis_errors_become_shared_state_errors(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStateStore(redis_server.url, lease_ttl_s=15, socket_timeout_s=0.2)
    try:
        redis_server.kill()
        with trio.fail_after(5):
            with pytest.raises(SharedStateError, match="redis publish failed") as info:
                await store.publish(record())
            with pytest.raises(SharedStateError):
                await store.get("x")
        assert redis_server.url not in str(info.value)
        assert info.value.__cause__ is not None
    finally:
        await store.close()


async def test_resilient_store_rides_out_a_killed_redis(redis_server: RedisServer) -> None:  # noqa: F811
    inner = RedisStateStore(redis_server.url, lease_ttl_s=15, socket_timeout_s=0.2)
    store = ResilientStateStore(inner, call_timeout_s=1.0, retry_interval_s=0.1)
    observer = RedisStateStore(redis_server.url, lease_ttl_s=15)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.heartbeat("node-a", {"activeSessions": 2, "maxSessions": 4})
            a = record("res-a", server="node-a", status="STARTING")
            b = record("res-b", server="node-a", status="STARTING")
            await store.publish(a)
            await store.publish(b)
            await store.renew_leases("node-a", ["res-a", "res-b"])
            assert await observer.get("res-a") == a

            redis_server.kill()
            latest: dict[str, dict[str, Any]] = {}
            start = trio.current_time()
            for i in range(20):
                for rec in (a, b):
                    status = "RECORDING" if i < 19 or rec is a else "UPLOADING"
                    latest[rec["sessionId"]] = {**rec, "status": status, "updatedAt": f"2024-05-01T10:00:{i:02d}.000Z"}
                    with trio.fail_after(1.5):  # each publish is bounded, and never raises
                        assert await store.publish(latest[rec["sessionId"]]) is True
            assert trio.current_time() - start < 3.0
            assert not store.connected
            assert store.pending == 2
            assert store.stats.outages == 1
            # Reads fall back to the local (possibly stale) cache.
            assert await store.get("res-b") == latest["res-b"]
            assert await store.by_room("room-1") == latest["res-b"]
            assert [r["sessionId"] for r in await store.list(10)] == ["res-b", "res-a"]
            assert [n["serverId"] for n in await store.nodes()] == ["node-a"]
            assert await store.sweep_expired(NOW) == []

            await trio.to_thread.run_sync(redis_server.restart)  # empty: no persistence
            with trio.fail_after(10):
                while not (store.connected and store.pending == 0):
                    await trio.sleep(0.05)
            assert await observer.get("res-a") == latest["res-a"]
            assert await observer.get("res-b") == latest["res-b"]
            assert [n["serverId"] for n in await observer.nodes()] == ["node-a"]
            assert await observer.sweep_expired(NOW) == []  # leases were re-taken
            assert store.stats.resynced == 2
            nursery.cancel_scope.cancel()
    finally:
        await store.close()
        await observer.close()
