"""The in-memory twin of the Redis state store, for one node without Redis and for tests.

Same semantics as :class:`~edge_recorder.state.redis.RedisStateStore` (one
contract suite runs against both): the "terminal is sticky" rule, leases with
a TTL, the ``node-lost`` sweep, node registrations and the ``edge:state``
announcements. Leases and registrations expire on an injectable monotonic
clock (``trio.current_time`` by default), so tests drive expiry with a fake
clock or ``autojump_clock`` instead of sleeping.

Several "nodes" in one process share state by sharing one instance. Nothing
here blocks: every method is a checkpoint and never raises SharedStateError.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from edge_recorder.state.store import (
    Record,
    accepts,
    check_node,
    check_record,
    copy_json,
    is_terminal,
    newest_first,
    node_lost_record,
    pick_for_room,
    utc_now_iso,
)

__all__ = ["MemoryStateStore"]

log = logging.getLogger(__name__)

# Messages a subscriber may fall behind by before the oldest are dropped.
SUBSCRIBER_BUFFER = 1000


class MemoryStateStore:
    """A :class:`~edge_recorder.state.store.StateStore` in this process's memory.

    Args:
        lease_ttl_s: lifetime of a lease and of a node registration, seconds.
        clock: monotonic seconds; ``trio.current_time`` when None.
        wall_clock: UTC ISO 8601 for ``lastSeen``; the system clock when None.
    """

    def __init__(
        self,
        *,
        lease_ttl_s: float = 15.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], str] | None = None,
    ) -> None:
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock or trio.current_time
        self._wall_clock = wall_clock or utc_now_iso
        self._records: dict[str, Record] = {}
        self._rooms: dict[str, set[str]] = {}
        self._node_sessions: dict[str, set[str]] = {}
        self._active: set[str] = set()
        self._leases: dict[str, tuple[str, float]] = {}  # session id -> (server id, expires at)
        self._nodes: dict[str, Record] = {}
        self._node_expiry: dict[str, float] = {}
        self._subscribers: list[trio.MemorySendChannel[Record]] = []
        # Announcements a slow subscriber missed (its buffer was full).
        self.subscriber_drops = 0

    async def publish(self, record: Mapping[str, Any]) -> bool:
        copy = check_record(record)
        await trio.lowlevel.checkpoint()
        sid = copy["sessionId"]
        if not accepts(self._records.get(sid), copy):
            return False
        self._records[sid] = copy
        self._rooms.setdefault(copy["roomId"], set()).add(sid)
        self._node_sessions.setdefault(copy["serverId"], set()).add(sid)
        if is_terminal(copy):
            self._active.discard(sid)
        else:
            self._active.add(sid)
            self._leases[sid] = (copy["serverId"], self._clock() + self.lease_ttl_s)
        self._announce(copy)
        return True

    async def get(self, session_id: str) -> Record | None:
        await trio.lowlevel.checkpoint()
        record = self._records.get(session_id)
        return None if record is None else copy_json(record)

    async def by_room(self, room_id: str) -> Record | None:
        await trio.lowlevel.checkpoint()
        chosen = pick_for_room(self._records[sid] for sid in self._rooms.get(room_id, ()))
        return None if chosen is None else copy_json(chosen)

    async def list(self, limit: int = 100) -> builtins.list[Record]:
        await trio.lowlevel.checkpoint()
        if limit <= 0:
            return []
        return [copy_json(r) for r in newest_first(self._records.values())[:limit]]

    async def heartbeat(self, server_id: str, capacity: Mapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        entry = check_node(server_id, capacity, self._wall_clock())
        self._nodes[server_id] = entry
        self._node_expiry[server_id] = self._clock() + self.lease_ttl_s

    async def nodes(self) -> builtins.list[Record]:
        await trio.lowlevel.checkpoint()
        now = self._clock()
        return [
            {**copy_json(self._nodes[sid]), "alive": self._node_expiry.get(sid, 0.0) > now}
            for sid in sorted(self._nodes)
        ]

    async def renew_leases(self, server_id: str, session_ids: Iterable[str]) -> None:
        await trio.lowlevel.checkpoint()
        expires = self._clock() + self.lease_ttl_s
        for sid in session_ids:
            self._leases[sid] = (server_id, expires)

    def lease_holder(self, session_id: str) -> str | None:
        """The server holding a live lease on the session, or None (for tests)."""
        lease = self._leases.get(session_id)
        if lease is None or lease[1] <= self._clock():
            return None
        return lease[0]

    async def sweep_expired(self, now_iso: str) -> builtins.list[Record]:
        await trio.lowlevel.checkpoint()
        swept: builtins.list[Record] = []
        for sid in sorted(self._active):
            if self.lease_holder(sid) is not None:
                continue
            failed = node_lost_record(self._records[sid], now_iso)
            self._records[sid] = failed
            self._active.discard(sid)
            self._leases.pop(sid, None)
            self._announce(failed)
            swept.append(copy_json(failed))
        return swept

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[Record]]:
        send, receive = trio.open_memory_channel[Record](SUBSCRIBER_BUFFER)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        for send in self._subscribers:
            send.close()

    def _announce(self, record: Record) -> None:
        for send in self._subscribers:
            try:
                send.send_nowait(copy_json(record))
            except trio.WouldBlock:
                self.subscriber_drops += 1
            except trio.ClosedResourceError:
                pass

