"""Recording slots on the fleet's nodes, reserved atomically in Redis.

:func:`~edge_recorder.fleet.placement.placement_order` ranks nodes from
registrations up to a heartbeat old; two entry nodes may pick the same node
for the same last free slot at the same moment. :meth:`FleetSlots.reserve`
settles it: one Lua script reads the node's registration, its live slots and
the room's claim, and takes a slot only if the node still has room, so
concurrent starts never oversubscribe a node and never start one room twice.

Layout in Redis (beside ``edge_recorder.state.redis``'s keys)::

    edge:node:<serverId>        string: the registration JSON, PX lease (read only here)
    edge:slots:<serverId>       zset: session id -> expiry of its slot (Unix ms, Redis's clock)
    edge:slotcost:<serverId>    hash: session id -> its cost in CPU cores
    edge:roomclaim:<roomId>     string: the session id starting in the room, PX reservation ttl

Rules:

* **A slot expires** unless renewed: a reservation holds it for
  ``reservation_ttl_s`` (the entry node forwards the start meanwhile); the
  owning node's heartbeat (:meth:`FleetSlots.hold`) renews the slot of every
  session it runs, and gives it back (:meth:`FleetSlots.release`) when one
  ends. A node that dies stops renewing; its slots lapse with the lease.
  Expired slots are purged by the next script that touches the node, and the
  keys themselves carry a TTL past their newest slot, so a node that never
  comes back leaves nothing behind.
* **Room claims** close the window between placing a start and the owner's
  first state record: while a claim names another session, a reservation for
  the same room is refused (``ROOM_TAKEN``). Past that window the room's
  active record in shared state says the room is taken; the entry node drops
  the claim with :meth:`FleetSlots.release_room` (compare-and-delete).
* **Time is Redis's** (``redis.call('TIME')``), so nodes' clocks may disagree
  without moving an expiry.
* **The registration is only read**: the script decodes it with ``cjson`` to
  test ``draining``, ``ready``, ``maxSessions`` and ``cpuBudget`` and never
  encodes JSON (cjson would turn ``[]`` into ``{}``). Missing or null
  ``ready``/``draining`` are ready and not draining; a missing ``cpuBudget``
  is no CPU limit; a missing ``maxSessions`` takes the caller's fallback. A
  registration that does not decode, or whose fields have the wrong type, makes
  the node ``UNAVAILABLE``.
* **Every script is idempotent** (re-reserving one's own slot refreshes it), so
  redis-py's one retry after a lost reply cannot take two slots.

Requires Redis 6.2 or later (``ZADD GT``), not Redis Cluster (a script's keys
span hash slots).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_recorder.errors import SharedStateError
from edge_recorder.fleet.placement import CPU_EPSILON, MAX_CORES, MAX_SERVER_ID_CHARS
from edge_recorder.state.redis import RedisStateStore, node_key

__all__ = [
    "MAX_HELD_SESSIONS",
    "MAX_ID_CHARS",
    "FleetSlots",
    "Reservation",
    "SlotOutcome",
    "room_claim_key",
    "slot_costs_key",
    "slots_key",
]

# Longest server, session or room id accepted into a key or a slot (the
# control protocol's ids are at most 128 characters already).
MAX_ID_CHARS = MAX_SERVER_ID_CHARS
# Most sessions one hold() renews (a node runs at most RECORDING_MAX_SESSIONS, 256).
MAX_HELD_SESSIONS = 4096
# Longest slot lifetime accepted, seconds: a day is far beyond any heartbeat.
MAX_TTL_S = 86_400.0
# A registration larger than this is not ours: the script refuses to decode it.
MAX_REGISTRATION_BYTES = 65_536


def slots_key(server_id: str) -> str:
    return f"edge:slots:{server_id}"


def slot_costs_key(server_id: str) -> str:
    return f"edge:slotcost:{server_id}"


def room_claim_key(room_id: str) -> str:
    return f"edge:roomclaim:{room_id}"


class SlotOutcome(enum.Enum):
    """What :meth:`FleetSlots.reserve` did."""

    # The slot is the session's (new, or its own refreshed) and the room is claimed for it.
    RESERVED = "reserved"
    # One more session would exceed the node's maxSessions or cpuBudget.
    FULL = "full"
    # The node is draining, not ready, or its registration is unreadable.
    UNAVAILABLE = "unavailable"
    # The node has no live registration (never registered, or its lease lapsed).
    GONE = "gone"
    # Another session holds the room's claim (named in Reservation.room_holder).
    ROOM_TAKEN = "room-taken"


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of :meth:`FleetSlots.reserve`.

    Attributes:
        outcome: what happened.
        room_holder: the session id holding the room's claim, when ``ROOM_TAKEN``; else None.
    """

    outcome: SlotOutcome
    room_holder: str | None = None


# Shared by every script: Redis's clock, the purge of expired slots, and the
# keys' own TTL (kept at least as long as their newest slot).
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function purge(slots, costs, now)
  local expired = redis.call('ZRANGEBYSCORE', slots, '-inf', string.format('%d', now))
  for _, sid in ipairs(expired) do redis.call('HDEL', costs, sid) end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', slots, '-inf', string.format('%d', now)) end
end
local function summed(slots, costs)
  local total = 0
  for _, sid in ipairs(redis.call('ZRANGE', slots, 0, -1)) do
    total = total + (tonumber(redis.call('HGET', costs, sid)) or 0)
  end
  return total
end
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function slot(slots, costs, sid, cost, now, ttl)
  -- GT: never shortens a slot that a longer reservation or hold already holds
  redis.call('ZADD', slots, 'GT', string.format('%d', now + ttl), sid)
  redis.call('HSET', costs, sid, cost)
  keep(slots, ttl)
  keep(costs, ttl)
end
"""

# KEYS: 1 registration, 2 slots zset, 3 costs hash, 4 room claim
# ARGV: 1 session id, 2 cost (cores), 3 ttl ms, 4 maxSessions fallback ('' = none),
#       5 cpu epsilon, 6 largest registration decoded (bytes)
_RESERVE_LUA = _PRELUDE + """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'gone'} end
if #raw > tonumber(ARGV[6]) then return {'unavailable'} end
local ok, reg = pcall(cjson.decode, raw)
if not ok or type(reg) ~= 'table' then return {'unavailable'} end
local function field(name)
  local value = reg[name]
  if value == cjson.null then return nil end
  return value
end
local function finite(value)
  return type(value) == 'number' and value == value and value >= 0 and value < math.huge
end
local draining, ready = field('draining'), field('ready')
if draining ~= nil and draining ~= false then return {'unavailable'} end
if ready ~= nil and ready ~= true then return {'unavailable'} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[1] then return {'room-taken', holder} end
local now, cost, ttl = now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3])
purge(KEYS[2], KEYS[3], now)
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  local max = field('maxSessions')
  if max == nil and ARGV[4] ~= '' then max = tonumber(ARGV[4]) end
  if not finite(max) or max ~= math.floor(max) then return {'unavailable'} end
  if redis.call('ZCARD', KEYS[2]) + 1 > max then return {'full'} end
  local budget = field('cpuBudget')
  if budget ~= nil then
    if not finite(budget) then return {'unavailable'} end
    if summed(KEYS[2], KEYS[3]) + cost > budget + tonumber(ARGV[5]) then return {'full'} end
  end
end
slot(KEYS[2], KEYS[3], ARGV[1], ARGV[2], now, ttl)
redis.call('SET', KEYS[4], ARGV[1], 'PX', ttl)
return {'reserved'}
"""

# KEYS: 1 slots zset, 2 costs hash
# ARGV: 1 ttl ms, then pairs of session id, cost
_HOLD_LUA = _PRELUDE + """
local now, ttl = now_ms(), tonumber(ARGV[1])
purge(KEYS[1], KEYS[2], now)
for i = 2, #ARGV - 1, 2 do
  slot(KEYS[1], KEYS[2], ARGV[i], ARGV[i + 1], now, ttl)
end
return 1
"""

# KEYS: 1 slots zset, 2 costs hash. Read only: {live slot count, summed cost as text}.
_OCCUPANCY_LUA = _PRELUDE + """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now_ms()), '+inf')
local total = 0
for _, sid in ipairs(live) do total = total + (tonumber(redis.call('HGET', KEYS[2], sid)) or 0) end
return {#live, tostring(total)}
"""

# KEYS: 1 room claim. ARGV: 1 session id. Compare-and-delete: 1 when deleted.
_RELEASE_ROOM_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class FleetSlots:
    """The fleet's slot reservations, in the Redis of a :class:`RedisStateStore`.

    Every call is one round trip through the store's door
    (:meth:`RedisStateStore.blocking`): a thread under its limiter, with its
    socket timeouts. Cancelling a call waits for the call in flight to finish
    (the store never abandons a thread); the script ran entirely or not at all.

    Args:
        store: the shared state store whose Redis holds the registrations.
        reservation_ttl_s: how long a reservation holds its slot and the
            room's claim before the owner's first :meth:`hold`, seconds.

    Raises:
        ValueError: ``reservation_ttl_s`` is not in (0, 86400].
    """

    def __init__(self, store: RedisStateStore, *, reservation_ttl_s: float = 30.0) -> None:
        self._store = store
        self._reservation_ttl_ms = _ttl_ms(reservation_ttl_s, "reservation_ttl_s")
        client = store.client
        self._reserve_script = client.register_script(_RESERVE_LUA)
        self._hold_script = client.register_script(_HOLD_LUA)
        self._occupancy_script = client.register_script(_OCCUPANCY_LUA)
        self._release_room_script = client.register_script(_RELEASE_ROOM_LUA)

    async def reserve(
        self,
        server_id: str,
        session_id: str,
        room_id: str,
        cost: float,
        max_sessions_fallback: int | None = None,
    ) -> Reservation:
        """Take a slot on ``server_id`` for ``session_id`` and claim ``room_id`` for it, atomically.

        Checked in this order: the node's live registration (else ``GONE``);
        not draining and ready (else ``UNAVAILABLE``); the room's claim free
        or already this session's (else ``ROOM_TAKEN``); then, after purging
        expired slots, a session that already holds a slot has it refreshed
        (``RESERVED``, idempotent, its cost replaced by ``cost``); otherwise
        one more slot must keep the count of live slots within
        ``maxSessions`` and their summed costs plus ``cost`` within
        ``cpuBudget`` when the node has one (else ``FULL``). The slots, not the
        registration's ``activeSessions``/``cpuUsed`` (up to a heartbeat old),
        are what is counted: the owner's :meth:`hold` puts every live session
        there. A reserved slot and the room's claim last ``reservation_ttl_s``.

        Args:
            server_id: the node to place on.
            session_id: the recording's session id.
            room_id: its room.
            cost: its CPU cost in cores (:func:`~edge_recorder.fleet.placement.session_cost`).
            max_sessions_fallback: the count limit of a node whose
                registration has no ``maxSessions``; None: such a node is
                ``UNAVAILABLE``.

        Raises:
            ValueError: an id is empty or longer than 256 characters, the cost
                is negative or not finite, or the fallback is not a count.
            SharedStateError: Redis failed or did not answer.
        """
        _check_id("server_id", server_id)
        _check_id("session_id", session_id)
        _check_id("room_id", room_id)
        cost_text = _cost_text(cost)
        if max_sessions_fallback is not None and (
            isinstance(max_sessions_fallback, bool)
            or not isinstance(max_sessions_fallback, int)
            or max_sessions_fallback < 0
        ):
            raise ValueError(f"max_sessions_fallback must be a count >= 0 or None, got {max_sessions_fallback!r}")
        keys = [node_key(server_id), slots_key(server_id), slot_costs_key(server_id), room_claim_key(room_id)]
        args: list[str | int] = [
            session_id,
            cost_text,
            self._reservation_ttl_ms,
            "" if max_sessions_fallback is None else str(max_sessions_fallback),
            repr(CPU_EPSILON),
            MAX_REGISTRATION_BYTES,
        ]
        reply = await self._store.blocking(lambda: self._reserve_script(keys=keys, args=args), "slot reserve")
        return _reservation(reply)

    async def release(self, server_id: str, session_id: str) -> None:
        """Give back the session's slot on ``server_id`` (and its cost); nothing when it holds none.

        Raises:
            ValueError: an id is empty or longer than 256 characters.
            SharedStateError: Redis failed or did not answer.
        """
        _check_id("server_id", server_id)
        _check_id("session_id", session_id)

        def release() -> None:
            pipe = self._store.client.pipeline(transaction=True)
            pipe.zrem(slots_key(server_id), session_id)
            pipe.hdel(slot_costs_key(server_id), session_id)
            pipe.execute()

        await self._store.blocking(release, "slot release")

    async def release_room(self, room_id: str, session_id: str) -> bool:
        """Drop the room's claim if it still names ``session_id`` (compare-and-delete).

        Returns:
            True when this call deleted the claim; False when it had expired
            or names another session (which keeps it).

        Raises:
            ValueError: an id is empty or longer than 256 characters.
            SharedStateError: Redis failed or did not answer.
        """
        _check_id("room_id", room_id)
        _check_id("session_id", session_id)
        reply = await self._store.blocking(
            lambda: self._release_room_script(keys=[room_claim_key(room_id)], args=[session_id]), "room release"
        )
        return bool(reply)

    async def hold(self, server_id: str, costs: Mapping[str, float], ttl_s: float) -> None:
        """The owner's heartbeat: hold a slot for each of its live sessions for another ``ttl_s``.

        Takes the slot of a session that has none (one started without a
        reservation), sets each session's cost to the one given, never
        shortens a slot already held for longer (a fresh reservation), and
        purges the node's expired slots. Sessions not named keep their slots
        until they expire or are released: a reserved start may still be on
        its way. One round trip, one script.

        Args:
            server_id: this node.
            costs: session id -> its cost in cores, for every live session.
            ttl_s: how long the slots hold, seconds (the state lease).

        Raises:
            ValueError: an id is empty or too long, a cost is negative or not
                finite, more than 4096 sessions, or ``ttl_s`` not in (0, 86400].
            SharedStateError: Redis failed or did not answer.
        """
        _check_id("server_id", server_id)
        if len(costs) > MAX_HELD_SESSIONS:
            raise ValueError(f"hold: at most {MAX_HELD_SESSIONS} sessions, got {len(costs)}")
        args: list[str | int] = [_ttl_ms(ttl_s, "ttl_s")]
        for session_id, cost in costs.items():
            _check_id("session_id", session_id)
            args += [session_id, _cost_text(cost)]
        keys = [slots_key(server_id), slot_costs_key(server_id)]
        await self._store.blocking(lambda: self._hold_script(keys=keys, args=args), "slot hold")

    async def occupancy(self, server_id: str) -> tuple[int, float]:
        """The node's live (unexpired) slots: how many, and their summed cost in cores.

        Raises:
            ValueError: the id is empty or longer than 256 characters.
            SharedStateError: Redis failed or did not answer, or answered nonsense.
        """
        _check_id("server_id", server_id)
        keys = [slots_key(server_id), slot_costs_key(server_id)]
        reply = await self._store.blocking(lambda: self._occupancy_script(keys=keys), "slot occupancy")
        try:
            count, total = reply
            return int(count), float(total)
        except (TypeError, ValueError) as exc:
            raise SharedStateError(f"redis slot occupancy answered {str(reply)[:80]!r}") from exc


def _reservation(reply: Any) -> Reservation:
    """The reserve script's answer: ``{outcome}`` or ``{'room-taken', holder}``."""
    try:
        outcome = SlotOutcome(reply[0])
        if outcome is SlotOutcome.ROOM_TAKEN:
            return Reservation(outcome, str(reply[1]))
        return Reservation(outcome)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise SharedStateError(f"redis slot reserve answered {str(reply)[:80]!r}") from exc


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ValueError(f"{name} must be a string of 1..{MAX_ID_CHARS} characters")


def _cost_text(cost: float) -> str:
    """A cost as the scripts read it (``tonumber``): ``repr`` of the float, exact."""
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost <= MAX_CORES:
        raise ValueError(f"cost must be a number of cores in 0..{MAX_CORES:g}, got {cost!r}")
    return repr(float(cost))


def _ttl_ms(ttl_s: float, name: str) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"{name} must be in (0, {MAX_TTL_S:g}] seconds, got {ttl_s!r}")
    return max(1, math.ceil(ttl_s * 1000))
