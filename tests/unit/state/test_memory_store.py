"""MemoryStateStore's clock-driven leases, the pure rules, and ResilientStateStore
over a store that fails or hangs on demand (the shared contract suite runs in
tests/integration/test_redis_state.py, against this store and Redis alike).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
import trio

from edge_recorder.errors import SharedStateError
from edge_recorder.state.memory import MemoryStateStore
from edge_recorder.state.redis import ResilientStateStore
from edge_recorder.state.store import Record, accepts, node_lost_record, started_at_ms

NOW = "2024-05-01T12:00:00.000Z"


def record(sid: str, *, status: str = "RECORDING", server: str = "node-a", room: str = "room-1",
           started: str = "2024-05-01T10:00:00.000Z") -> dict[str, Any]:
    return {
        "sessionId": sid, "roomId": room, "status": status, "previousStatus": None,
        "startedAt": started, "updatedAt": started, "serverId": server, "layout": "pip", "streams": [],
    }


# --- pure rules ----------------------------------------------------------------------


def test_started_at_is_scored_in_unix_milliseconds() -> None:
    assert started_at_ms(record("a")) == 1714557600000.0
    assert started_at_ms({"startedAt": "2024-05-01T10:00:00.250+00:00"}) == 1714557600250.0


def test_accepts_keeps_terminal_records_sticky() -> None:
    live, done = record("a"), record("a", status="COMPLETED")
    assert accepts(None, live) and accepts(live, done) and accepts(live, live)
    assert not accepts(done, live)
    assert accepts(done, record("a", status="FAILED"))
    assert not accepts(done, record("a", status="FAILED", server="node-b"))


def test_node_lost_record_names_the_node_and_keeps_the_rest() -> None:
    failed = node_lost_record(record("a", status="UPLOADING"), NOW)
    assert failed["status"] == "FAILED" and failed["previousStatus"] == "UPLOADING"
    assert failed["reason"] == "node-lost"
    assert failed["error"] == "the node node-a stopped renewing its lease"
    assert failed["updatedAt"] == failed["stoppedAt"] == NOW
    assert failed["layout"] == "pip"


# --- MemoryStateStore ----------------------------------------------------------------


async def test_leases_follow_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStateStore(lease_ttl_s=15)
    await store.publish(record("a"))
    assert store.lease_holder("a") == "node-a"
    await trio.sleep(10)
    await store.renew_leases("node-a", ["a"])
    await trio.sleep(10)
    assert store.lease_holder("a") == "node-a"
    assert await store.sweep_expired(NOW) == []
    await trio.sleep(6)
    assert store.lease_holder("a") is None
    [swept] = await store.sweep_expired(NOW)
    assert swept["sessionId"] == "a" and swept["reason"] == "node-lost"


async def test_a_terminal_record_needs_no_lease(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStateStore(lease_ttl_s=15)
    await store.publish(record("a", status="COMPLETED"))
    await trio.sleep(100)
    assert await store.sweep_expired(NOW) == []


async def test_a_slow_subscriber_loses_announcements_not_state() -> None:
    store = MemoryStateStore()
    async with store.subscribe() as updates:
        for i in range(1005):
            await store.publish(record(f"s{i}"))
        assert store.subscriber_drops == 5
        assert (await updates.receive())["sessionId"] == "s0"
    assert len(await store.list(2000)) == 1005


# --- ResilientStateStore -------------------------------------------------------------


class FlakyStore(MemoryStateStore):
    """A MemoryStateStore whose every call fails ("down") or never returns ("hang")."""

    mode = "up"

    async def _gate(self) -> None:
        if self.mode == "down":
            raise SharedStateError("store down")
        if self.mode == "hang":
            await trio.sleep_forever()

    async def publish(self, record: Mapping[str, Any]) -> bool:
        await self._gate()
        return await super().publish(record)

    async def get(self, session_id: str) -> Record | None:
        await self._gate()
        return await super().get(session_id)

    async def list(self, limit: int = 100) -> builtins.list[Record]:
        await self._gate()
        return await super().list(limit)

    async def heartbeat(self, server_id: str, capacity: Mapping[str, Any]) -> None:
        await self._gate()
        await super().heartbeat(server_id, capacity)

    async def renew_leases(self, server_id: str, session_ids: Iterable[str]) -> None:
        await self._gate()
        await super().renew_leases(server_id, session_ids)

    async def ping(self) -> None:
        await self._gate()


@pytest.mark.parametrize("mode", ["down", "hang"])
async def test_publish_never_raises_and_is_bounded(mode: str, autojump_clock: trio.testing.MockClock) -> None:
    inner = FlakyStore()
    store = ResilientStateStore(inner, call_timeout_s=1.0)
    await store.publish(record("a", status="STARTING"))
    inner.mode = mode
    start = trio.current_time()
    assert await store.publish(record("a")) is True  # the one call that finds out
    assert trio.current_time() - start <= 1.0
    assert not store.connected
    start = trio.current_time()
    for _ in range(100):  # the store is known down: no more waiting at all
        await store.publish(record("a", status="UPLOADING"))
    assert trio.current_time() - start == 0
    assert store.pending == 1 and store.stats.deferred == 101 and store.stats.outages == 1
    assert (await store.get("a") or {})["status"] == "UPLOADING"  # from the cache


async def test_run_resyncs_latest_records_and_registration(autojump_clock: trio.testing.MockClock) -> None:
    inner = FlakyStore()
    store = ResilientStateStore(inner, retry_interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        inner.mode = "down"
        await store.heartbeat("node-a", {"activeSessions": 1})
        await store.renew_leases("node-a", ["a"])
        await store.publish(record("a", status="STARTING"))
        await store.publish(record("a", status="RECORDING"))
        await store.publish(record("b", status="COMPLETED"))
        await trio.sleep(5)
        assert not store.connected  # still down: probes fail quietly
        inner.mode = "up"
        await trio.sleep(1.5)
        assert store.connected and store.pending == 0
        assert (await inner.get("a") or {})["status"] == "RECORDING"
        assert (await inner.get("b") or {})["status"] == "COMPLETED"
        assert [n["serverId"] for n in await inner.nodes()] == ["node-a"]
        assert store.stats.resynced == 2
        nursery.cancel_scope.cancel()


async def test_resync_after_node_lost_is_refused_and_the_cache_defers(autojump_clock: trio.testing.MockClock) -> None:
    inner = FlakyStore(lease_ttl_s=15)
    store = ResilientStateStore(inner)
    await store.publish(record("a"))
    inner.mode = "down"
    await store.publish(record("a", status="UPLOADING"))
    inner.mode = "up"
    await trio.sleep(20)
    await inner.sweep_expired(NOW)  # another node declares us lost
    assert await store.resync() is True
    assert store.stats.refused == 1
    assert (await store.get("a") or {})["reason"] == "node-lost"


async def test_cache_evicts_oldest_terminal_records_and_counts_lost_updates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = FlakyStore()
    store = ResilientStateStore(inner, max_records=3)
    inner.mode = "down"
    await store.publish(record("live"))
    for i in range(5):
        await store.publish(record(f"done{i}", status="COMPLETED", started=f"2024-05-01T10:00:0{i}.000Z"))
    assert store.stats.evicted == 3 and store.stats.lost == 3
    assert [r["sessionId"] for r in await store.list(10)] == ["done4", "done3", "live"]
    inner.mode = "up"
    assert await store.resync()
    assert {r["sessionId"] for r in await inner.list(10)} == {"live", "done3", "done4"}


async def test_reads_go_to_the_store_when_up_and_to_the_cache_when_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = FlakyStore()
    store = ResilientStateStore(inner)
    await inner.publish(record("other", server="node-b", started="2024-05-01T11:00:00.000Z"))
    await store.publish(record("mine", status="STARTING"))
    assert [r["sessionId"] for r in await store.list(10)] == ["other", "mine"]
    assert (await store.by_room("room-1") or {})["sessionId"] == "other"
    assert (await store.get("other") or {})["serverId"] == "node-b"
    inner.mode = "down"
    # Possibly stale: only what this node published.
    assert [r["sessionId"] for r in await store.list(10)] == ["mine"]
    assert (await store.by_room("room-1") or {})["sessionId"] == "mine"
    assert await store.get("other") is None
