"""FleetSlots against a real redis-server: every outcome, expiry, holds, releases, and the races."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import trio

from edge_recorder.errors import SharedStateError
from edge_recorder.fleet.slots import (
    FleetSlots,
    Reservation,
    SlotOutcome,
    room_claim_key,
    slot_costs_key,
    slots_key,
)
from edge_recorder.state.redis import RedisStateStore, node_key
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

# Short enough that Redis-side expiry needs only a brief real wait, long
# enough that nothing expires while a test is still setting up.
SHORT_TTL_S = 0.4
PAST_SHORT_TTL_S = SHORT_TTL_S + 0.4

_ids = itertools.count()


def sid() -> str:
    return f"s-{next(_ids)}"


def room() -> str:
    return f"room-{next(_ids)}"


def capacity(**overrides: Any) -> dict[str, Any]:
    """A registration's capacity as this version writes it."""
    fields: dict[str, Any] = {
        "activeSessions": 0,
        "maxSessions": 2,
        "load": 0.0,
        "version": "test",
        "ready": True,
        "draining": False,
        "cpuBudget": 2.0,
        "cpuUsed": 0.0,
        "announcedIp": "127.0.0.1",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStateStore]:  # noqa: F811
    store = RedisStateStore(redis_server.url, lease_ttl_s=15)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:  # noqa: F811
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


def redis_ms(raw: redis.Redis) -> float:
    seconds, micros = raw.time()
    return seconds * 1000 + micros / 1000


RESERVED = Reservation(SlotOutcome.RESERVED)
FULL = Reservation(SlotOutcome.FULL)
UNAVAILABLE = Reservation(SlotOutcome.UNAVAILABLE)
GONE = Reservation(SlotOutcome.GONE)


# --- each outcome ------------------------------------------------------------------


async def test_reserve_takes_a_slot_with_its_cost_and_claims_the_room(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    slots = FleetSlots(store, reservation_ttl_s=30)
    await store.heartbeat("node-a", capacity())
    s, r = sid(), room()
    before = redis_ms(raw)
    assert await slots.reserve("node-a", s, r, 0.5) == RESERVED
    after = redis_ms(raw)
    assert await slots.occupancy("node-a") == (1, 0.5)
    expiry = raw.zscore(slots_key("node-a"), s)
    assert expiry is not None and before + 30_000 - 5 <= expiry <= after + 30_000 + 5
    assert raw.hget(slot_costs_key("node-a"), s) == "0.5"
    assert raw.get(room_claim_key(r)) == s
    assert 29_000 < raw.pttl(room_claim_key(r)) <= 30_000
    # The keys expire past their newest slot, so a node that never returns leaves nothing.
    assert 29_000 < raw.pttl(slots_key("node-a")) <= 30_000
    assert 29_000 < raw.pttl(slot_costs_key("node-a")) <= 30_000
    assert await slots.occupancy("node-b") == (0, 0.0)


async def test_a_node_without_a_live_registration_is_gone(redis_server: RedisServer, raw: redis.Redis) -> None:  # noqa: F811
    store = RedisStateStore(redis_server.url, lease_ttl_s=SHORT_TTL_S)
    try:
        slots = FleetSlots(store)
        r = room()
        assert await slots.reserve("never-registered", sid(), r, 0.5) == GONE
        await store.heartbeat("node-a", capacity())
        assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED
        await trio.sleep(PAST_SHORT_TTL_S)  # the registration's lease lapses
        assert (await store.nodes())[0]["alive"] is False
        assert await slots.reserve("node-a", sid(), r, 0.5) == GONE
        assert raw.get(room_claim_key(r)) is None  # a refusal claims nothing
    finally:
        await store.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"draining": True},
        {"ready": False},
        {"ready": "yes"},  # not a bool: unreadable, so not placeable
        {"maxSessions": "4"},
        {"maxSessions": 1.5},
        {"cpuBudget": "lots"},
    ],
)
async def test_a_draining_unready_or_unreadable_node_is_unavailable(
    store: RedisStateStore, raw: redis.Redis, fields: dict[str, Any]
) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(**fields))
    r = room()
    assert await slots.reserve("node-a", sid(), r, 0.5) == UNAVAILABLE
    assert raw.get(room_claim_key(r)) is None
    assert await slots.occupancy("node-a") == (0, 0.0)


async def test_a_registration_that_is_not_json_is_unavailable(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store)
    raw.set(node_key("node-a"), "{not json", px=15_000)
    assert await slots.reserve("node-a", sid(), room(), 0.5) == UNAVAILABLE
    raw.set(node_key("node-a"), "[1, 2]", px=15_000)
    assert await slots.reserve("node-a", sid(), room(), 0.5) == UNAVAILABLE


async def test_null_ready_and_draining_count_as_ready_and_not_draining(store: RedisStateStore) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(ready=None, draining=None, cpuBudget=None))
    assert await slots.reserve("node-a", sid(), room(), 50.0) == RESERVED


async def test_a_node_is_full_by_count(store: RedisStateStore) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(maxSessions=2, cpuBudget=100.0))
    assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED
    assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED
    assert await slots.reserve("node-a", sid(), room(), 0.5) == FULL
    assert await slots.occupancy("node-a") == (2, 1.0)


async def test_a_node_is_full_by_cpu_budget(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(maxSessions=10, cpuBudget=1.0))
    assert await slots.reserve("node-a", sid(), room(), 0.6) == RESERVED
    r = room()
    assert await slots.reserve("node-a", sid(), r, 0.5) == FULL
    assert raw.get(room_claim_key(r)) is None
    # Exactly the budget fits (float sums within the epsilon).
    assert await slots.reserve("node-a", sid(), room(), 0.4) == RESERVED
    assert await slots.reserve("node-a", sid(), room(), 0.001) == FULL
    assert await slots.reserve("node-a", sid(), room(), 0.0) == RESERVED
    count, used = await slots.occupancy("node-a")
    assert count == 3 and used == pytest.approx(1.0)


async def test_a_room_claimed_by_another_session_is_taken_naming_the_holder(store: RedisStateStore) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity())
    await store.heartbeat("node-b", capacity())
    first, second, r = sid(), sid(), room()
    assert await slots.reserve("node-a", first, r, 0.5) == RESERVED
    # On another node too: the claim is the room's, not the node's.
    assert await slots.reserve("node-b", second, r, 0.5) == Reservation(SlotOutcome.ROOM_TAKEN, first)
    assert await slots.occupancy("node-b") == (0, 0.0)


async def test_re_reserving_ones_own_slot_refreshes_it(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store, reservation_ttl_s=30)
    await store.heartbeat("node-a", capacity(maxSessions=1))
    s, r = sid(), room()
    assert await slots.reserve("node-a", s, r, 0.5) == RESERVED
    first_expiry = raw.zscore(slots_key("node-a"), s)
    raw.pexpire(room_claim_key(r), 1_000)
    await trio.sleep(0.05)
    # The node is full, yet the session's own retry (a lost reply) succeeds and takes nothing more.
    assert await slots.reserve("node-a", s, r, 0.5) == RESERVED
    assert await slots.occupancy("node-a") == (1, 0.5)
    second_expiry = raw.zscore(slots_key("node-a"), s)
    assert first_expiry is not None and second_expiry is not None and second_expiry > first_expiry
    assert raw.pttl(room_claim_key(r)) > 29_000  # the claim is refreshed too
    assert await slots.reserve("node-a", sid(), room(), 0.5) == FULL


# --- expiry and holds --------------------------------------------------------------


async def test_a_reservation_expires_with_its_room_claim(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store, reservation_ttl_s=SHORT_TTL_S)
    await store.heartbeat("node-a", capacity(maxSessions=1))
    s, r = sid(), room()
    assert await slots.reserve("node-a", s, r, 0.5) == RESERVED
    assert await slots.reserve("node-a", sid(), room(), 0.5) == FULL
    await trio.sleep(PAST_SHORT_TTL_S)
    assert await slots.occupancy("node-a") == (0, 0.0)
    later = sid()
    assert await slots.reserve("node-a", later, r, 0.5) == RESERVED  # the room's claim lapsed too
    assert raw.hget(slot_costs_key("node-a"), s) is None  # purged with its slot
    assert raw.zrange(slots_key("node-a"), 0, -1) == [later]


async def test_hold_keeps_slots_past_the_reservation_and_adds_unreserved_ones(store: RedisStateStore) -> None:
    slots = FleetSlots(store, reservation_ttl_s=SHORT_TTL_S)
    await store.heartbeat("node-a", capacity(maxSessions=2))
    reserved, unreserved = sid(), sid()
    assert await slots.reserve("node-a", reserved, room(), 0.5) == RESERVED
    await slots.hold("node-a", {reserved: 0.75, unreserved: 0.25}, ttl_s=10)
    await trio.sleep(PAST_SHORT_TTL_S)
    assert await slots.occupancy("node-a") == (2, 1.0)  # the held cost replaces the reserved one
    assert await slots.reserve("node-a", sid(), room(), 0.1) == FULL


async def test_hold_never_shortens_a_longer_reservation(store: RedisStateStore) -> None:
    slots = FleetSlots(store, reservation_ttl_s=30)
    await store.heartbeat("node-a", capacity())
    s = sid()
    assert await slots.reserve("node-a", s, room(), 0.5) == RESERVED
    await slots.hold("node-a", {s: 0.5}, ttl_s=0.1)
    await trio.sleep(0.4)
    assert await slots.occupancy("node-a") == (1, 0.5)


async def test_hold_purges_the_nodes_expired_slots(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store, reservation_ttl_s=SHORT_TTL_S)
    await store.heartbeat("node-a", capacity())
    lapsed, keeper = sid(), sid()
    await slots.hold("node-a", {keeper: 0.25}, ttl_s=10)  # keeps the keys themselves alive
    assert await slots.reserve("node-a", lapsed, room(), 0.5) == RESERVED
    await trio.sleep(PAST_SHORT_TTL_S)
    assert await slots.occupancy("node-a") == (1, 0.25)
    assert raw.zscore(slots_key("node-a"), lapsed) is not None  # occupancy() only reads
    await slots.hold("node-a", {}, ttl_s=10)
    assert raw.zrange(slots_key("node-a"), 0, -1) == [keeper]
    assert raw.hkeys(slot_costs_key("node-a")) == [keeper]


async def test_the_keys_lapse_with_their_last_slot(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store, reservation_ttl_s=SHORT_TTL_S)
    await store.heartbeat("node-a", capacity())
    assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED
    await trio.sleep(PAST_SHORT_TTL_S)
    assert raw.exists(slots_key("node-a"), slot_costs_key("node-a")) == 0


# --- releases ----------------------------------------------------------------------


async def test_release_gives_the_slot_and_its_cost_back(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(maxSessions=1))
    s = sid()
    assert await slots.reserve("node-a", s, room(), 0.5) == RESERVED
    await slots.release("node-a", s)
    assert await slots.occupancy("node-a") == (0, 0.0)
    assert raw.hget(slot_costs_key("node-a"), s) is None
    await slots.release("node-a", s)  # twice is harmless
    await slots.release("node-b", "never-reserved")
    assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED


async def test_release_room_deletes_only_its_own_claim(store: RedisStateStore, raw: redis.Redis) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity())
    s, r = sid(), room()
    assert await slots.reserve("node-a", s, r, 0.5) == RESERVED
    assert await slots.release_room(r, "someone-else") is False
    assert raw.get(room_claim_key(r)) == s
    assert await slots.release_room(r, s) is True
    assert raw.get(room_claim_key(r)) is None
    assert await slots.release_room(r, s) is False
    # The slot stays (the recording runs); only the room is free to claim again.
    assert await slots.occupancy("node-a") == (1, 0.5)
    other = sid()
    assert await slots.reserve("node-a", other, r, 0.5) == RESERVED
    assert await slots.release_room(r, s) is False  # a late release of the old claim spares the new one
    assert raw.get(room_claim_key(r)) == other


# --- older registrations -----------------------------------------------------------


async def test_a_registration_without_cpu_fields_has_no_cpu_limit(store: RedisStateStore) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("old-node", {"activeSessions": 0, "maxSessions": 2, "load": 0.0, "version": "0.0.9"})
    assert await slots.reserve("old-node", sid(), room(), 500.0) == RESERVED
    assert await slots.reserve("old-node", sid(), room(), 500.0) == RESERVED
    assert await slots.reserve("old-node", sid(), room(), 0.1) == FULL  # the count still limits


async def test_a_registration_without_max_sessions_takes_the_fallback(store: RedisStateStore) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("old-node", {"version": "0.0.1"})
    assert await slots.reserve("old-node", sid(), room(), 0.5) == UNAVAILABLE
    assert await slots.reserve("old-node", sid(), room(), 0.5, max_sessions_fallback=1) == RESERVED
    assert await slots.reserve("old-node", sid(), room(), 0.5, max_sessions_fallback=1) == FULL


# --- the races ---------------------------------------------------------------------

RACERS = 20


async def _race(url: str, calls: list[tuple[str, str, str]], cost: float) -> list[tuple[str, Reservation]]:
    """Every (server, session, room) reserved at once, each through its own store (client, door, threads)."""
    stores = [RedisStateStore(url, lease_ttl_s=15) for _ in calls]
    results: list[tuple[str, Reservation]] = []
    go = trio.Event()

    async def one(slots: FleetSlots, server_id: str, session_id: str, room_id: str) -> None:
        await go.wait()
        results.append((session_id, await slots.reserve(server_id, session_id, room_id, cost)))

    try:
        for racer in stores:
            await racer.ping()  # connected before the start, so the calls overlap
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for racer, (server_id, session_id, room_id) in zip(stores, calls):
                    nursery.start_soon(one, FleetSlots(racer), server_id, session_id, room_id)
                await trio.sleep(0.05)
                go.set()
    finally:
        for racer in stores:
            await racer.close()
    return results


async def test_concurrent_reserves_for_one_free_slot_have_exactly_one_winner(
    redis_server: RedisServer, store: RedisStateStore  # noqa: F811
) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(maxSessions=3, cpuBudget=10.0))
    await slots.hold("node-a", {"running-1": 0.5, "running-2": 0.5}, ttl_s=15)  # one slot left
    results = await _race(redis_server.url, [("node-a", sid(), room()) for _ in range(RACERS)], 0.5)
    outcomes = [reservation.outcome for _, reservation in results]
    assert len(outcomes) == RACERS
    assert outcomes.count(SlotOutcome.RESERVED) == 1
    assert outcomes.count(SlotOutcome.FULL) == RACERS - 1
    assert await slots.occupancy("node-a") == (3, 1.5)


async def test_concurrent_reserves_for_one_cpu_share_have_exactly_one_winner(
    redis_server: RedisServer, store: RedisStateStore  # noqa: F811
) -> None:
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity(maxSessions=100, cpuBudget=1.0))
    await slots.hold("node-a", {"running-1": 0.5}, ttl_s=15)  # room for one more at 0.5
    results = await _race(redis_server.url, [("node-a", sid(), room()) for _ in range(RACERS)], 0.5)
    outcomes = [reservation.outcome for _, reservation in results]
    assert outcomes.count(SlotOutcome.RESERVED) == 1
    assert outcomes.count(SlotOutcome.FULL) == RACERS - 1


async def test_concurrent_claims_of_one_room_have_exactly_one_winner(
    redis_server: RedisServer, store: RedisStateStore  # noqa: F811
) -> None:
    # Entry nodes place one room's start on different nodes at once.
    nodes = [f"node-{i}" for i in range(4)]
    for node in nodes:
        await store.heartbeat(node, capacity(maxSessions=100, cpuBudget=100.0))
    r = room()
    calls = [(nodes[i % len(nodes)], sid(), r) for i in range(RACERS)]
    results = await _race(redis_server.url, calls, 0.5)
    winners = [session for session, reservation in results if reservation.outcome is SlotOutcome.RESERVED]
    assert len(winners) == 1
    losers = [reservation for _, reservation in results if reservation.outcome is not SlotOutcome.RESERVED]
    assert losers == [Reservation(SlotOutcome.ROOM_TAKEN, winners[0])] * (RACERS - 1)
    occupied = [await FleetSlots(store).occupancy(node) for node in nodes]
    assert sum(count for count, _ in occupied) == 1


# --- failures and bounds -----------------------------------------------------------


async def test_redis_failures_raise_shared_state_error(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStateStore(redis_server.url, lease_ttl_s=15, socket_timeout_s=0.2)
    try:
        slots = FleetSlots(store)
        await store.heartbeat("node-a", capacity())
        redis_server.kill()
        with trio.fail_after(10):
            with pytest.raises(SharedStateError, match="slot reserve"):
                await slots.reserve("node-a", sid(), room(), 0.5)
            with pytest.raises(SharedStateError, match="slot hold"):
                await slots.hold("node-a", {"s": 0.5}, ttl_s=5)
            with pytest.raises(SharedStateError):
                await slots.release("node-a", "s")
            with pytest.raises(SharedStateError):
                await slots.release_room("r", "s")
            with pytest.raises(SharedStateError):
                await slots.occupancy("node-a")
    finally:
        await store.close()


async def test_the_scripts_reload_after_a_redis_restart(redis_server: RedisServer, store: RedisStateStore) -> None:  # noqa: F811
    slots = FleetSlots(store)
    await store.heartbeat("node-a", capacity())
    assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED
    redis_server.restart()  # empty, and without our scripts in its cache
    await store.heartbeat("node-a", capacity())
    assert await slots.reserve("node-a", sid(), room(), 0.5) == RESERVED
    assert await slots.occupancy("node-a") == (1, 0.5)


async def test_oversized_or_invalid_input_is_refused_before_redis(store: RedisStateStore) -> None:
    slots = FleetSlots(store)
    long_id = "x" * 257
    with pytest.raises(ValueError, match="session_id"):
        await slots.reserve("node-a", long_id, "r", 0.5)
    with pytest.raises(ValueError, match="room_id"):
        await slots.reserve("node-a", "s", long_id, 0.5)
    with pytest.raises(ValueError, match="server_id"):
        await slots.reserve("", "s", "r", 0.5)
    with pytest.raises(ValueError, match="cost"):
        await slots.reserve("node-a", "s", "r", float("nan"))
    with pytest.raises(ValueError, match="cost"):
        await slots.reserve("node-a", "s", "r", -1.0)
    with pytest.raises(ValueError, match="max_sessions_fallback"):
        await slots.reserve("node-a", "s", "r", 0.5, max_sessions_fallback=True)
    with pytest.raises(ValueError, match="session_id"):
        await slots.hold("node-a", {long_id: 0.5}, ttl_s=5)
    with pytest.raises(ValueError, match="ttl_s"):
        await slots.hold("node-a", {}, ttl_s=0)
    with pytest.raises(ValueError, match="at most"):
        await slots.hold("node-a", {f"s-{i}": 0.1 for i in range(5000)}, ttl_s=5)
    with pytest.raises(ValueError, match="session_id"):
        await slots.release_room("r", long_id)
    with pytest.raises(ValueError, match="reservation_ttl_s"):
        FleetSlots(store, reservation_ttl_s=float("inf"))
    assert await slots.reserve("node-a", "x" * 256, "y" * 256, 0.5) == GONE  # 256 is still fine
