"""Shared state in Redis, and the wrapper that keeps a Redis outage away from recordings.

Client choice: redis-py's asyncio API runs on asyncio only, not under Trio, so
:class:`RedisStateStore` uses redis-py's **sync** client in worker threads,
through one door: every call goes through ``trio.to_thread.run_sync`` under the
store's own :class:`trio.CapacityLimiter` (house style, "blocking work goes
through one door"). Sockets have short timeouts (``socket_timeout_s``, 0.5 s by
default, for connect and for each reply) and redis-py retries a failed command
once on a fresh connection (after a restart every pooled connection is stale),
so a thread never hangs on a dead server. coredis (native anyio, so Trio) was
the alternative; it is one more dependency, and the sync client is the
best-kept Python Redis client (maintained by Redis itself, first to support new
server features).

Cancellation: a call already in its thread is not abandoned; cancelling waits
for it to finish, which the socket timeouts bound (at most ``4 × socket_timeout_s``
when packets are black-holed, milliseconds when the server refuses or resets).
Never abandoning a thread keeps writes in the order they were made.

Layout in Redis (``docs/shared-state.md`` has the full table)::

    edge:session:<id>            hash: record (canonical JSON), status, serverId, roomId
    edge:room:<roomId>           zset: the room's session ids, score startedAt (Unix ms)
    edge:node:<serverId>:sessions  zset: the node's session ids, score startedAt
    edge:sessions                zset: every session id, score startedAt
    edge:active                  set: ids of STARTING/RECORDING/UPLOADING sessions (the sweeper's worklist)
    edge:lease:<id>              string: the owning server id, PX lease_ttl_s
    edge:nodes                   hash: serverId -> registration JSON (kept after a node dies)
    edge:node:<serverId>         string: registration JSON, PX lease_ttl_s (liveness)
    edge:state                   channel: every written record, canonical JSON

A publish is one Lua script (atomic: the record, its indexes, its lease and the
PUBLISH happen together or not at all, and the "terminal is sticky" rule is
checked against the stored status in the same step). The sweeper reads the
candidates, computes each FAILED record in Python and writes it through the
same script as a compare-and-set on the exact stored JSON *and* the lease's
absence, so of several sweepers (or a late renewal) exactly one wins. The
script never decodes JSON: Lua's cjson turns ``[]`` into ``{}``.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import redis
import redis.exceptions
import trio
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from edge_recorder.errors import SharedStateError
from edge_recorder.state.store import (
    CHANNEL,
    Record,
    StateStore,
    accepts,
    check_node,
    check_record,
    copy_json,
    encode_record,
    is_terminal,
    newest_first,
    node_lost_record,
    pick_for_room,
    started_at_ms,
    utc_now_iso,
)

__all__ = ["RedisStateStore", "ResilientStateStore", "ResilientStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")

ALL_SESSIONS = "edge:sessions"
ACTIVE_SESSIONS = "edge:active"
NODES = "edge:nodes"
# Messages a subscriber may fall behind by before new ones are dropped (counted).
SUBSCRIBER_BUFFER = 1000
# How long one pub/sub poll blocks its thread; also how late a cancelled
# subscription notices.
_POLL_S = 0.2


def session_key(session_id: str) -> str:
    return f"edge:session:{session_id}"


def room_key(room_id: str) -> str:
    return f"edge:room:{room_id}"


def node_sessions_key(server_id: str) -> str:
    return f"edge:node:{server_id}:sessions"


def node_key(server_id: str) -> str:
    return f"edge:node:{server_id}"


def lease_key(session_id: str) -> str:
    return f"edge:lease:{session_id}"


# KEYS: 1 session hash, 2 room zset, 3 node zset, 4 all zset, 5 active set, 6 lease
# ARGV: 1 session id, 2 record JSON, 3 status, 4 server id, 5 room id, 6 score,
#       7 terminal "1"|"0", 8 channel, 9 lease ms, 10 expected stored JSON ("" = plain publish)
_PUBLISH_LUA = """
local stored = redis.call('HMGET', KEYS[1], 'record', 'status', 'serverId')
if ARGV[10] ~= '' then
  -- the sweeper's compare-and-set: unchanged since read, and the lease still gone
  if stored[1] ~= ARGV[10] or redis.call('EXISTS', KEYS[6]) == 1 then return 0 end
elseif stored[2] == 'COMPLETED' or stored[2] == 'FAILED' then
  -- terminal is sticky: only a terminal record of the same server replaces it
  if ARGV[7] ~= '1' or stored[3] ~= ARGV[4] then return 0 end
end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'serverId', ARGV[4], 'roomId', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
if ARGV[7] == '1' then
  redis.call('SREM', KEYS[5], ARGV[1])
else
  redis.call('SADD', KEYS[5], ARGV[1])
  redis.call('SET', KEYS[6], ARGV[4], 'PX', ARGV[9])
end
redis.call('PUBLISH', ARGV[8], ARGV[2])
return 1
"""


class RedisStateStore:
    """A :class:`~edge_recorder.state.store.StateStore` in Redis, shared by every node.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (may carry a password;
            it never appears in errors or logs).
        lease_ttl_s: lifetime of a lease and of a node registration, seconds.
        socket_timeout_s: connect and per-reply timeout of every Redis call.
        max_threads: the door's width: Redis calls in flight at once.
        wall_clock: UTC ISO 8601 for ``lastSeen``; the system clock when None.

    Every method raises :class:`~edge_recorder.errors.SharedStateError` when
    Redis fails or does not answer, translated from redis-py's errors.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_ttl_s: float = 15.0,
        socket_timeout_s: float = 0.5,
        max_threads: int = 4,
        wall_clock: Callable[[], str] | None = None,
    ) -> None:
        self.lease_ttl_s = lease_ttl_s
        self._lease_ms = max(1, math.ceil(lease_ttl_s * 1000))
        self._wall_clock = wall_clock or utc_now_iso
        self._limiter = trio.CapacityLimiter(max_threads)
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # One retry on a fresh connection, no sleep: after a restart every
            # pooled connection is stale and fails once.
            retry=Retry(NoBackoff(), 1),
            client_name="edge-recorder",
        )
        self._publish_script = self._client.register_script(_PUBLISH_LUA)
        # Announcements a slow subscriber missed (its buffer was full).
        self.subscriber_drops = 0

    @property
    def client(self) -> redis.Redis:
        """The redis-py client, for the fleet's own keys (``edge_recorder.fleet``); use it only inside :meth:`blocking`."""
        return self._client

    async def blocking(self, fn: Callable[[], T], what: str, *, limiter: trio.CapacityLimiter | None = None) -> T:
        """The one door: run blocking redis-py work in a thread under our limiter.

        Args:
            fn: the blocking work (redis-py calls on :attr:`client`).
            what: names the call in the error.
            limiter: another limiter instead of the store's, for a caller
                that holds a thread for long (a subscription's reader) and
                must not take a slot from the short calls.

        Raises:
            SharedStateError: redis-py raised (translated, password-free).
        """
        try:
            return await trio.to_thread.run_sync(fn, limiter=limiter or self._limiter)
        except redis.exceptions.RedisError as exc:
            raise SharedStateError(f"redis {what} failed: {exc}") from exc

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        return await self.blocking(fn, what)

    def _write(self, record: Record, expect: str = "") -> bool:
        sid = record["sessionId"]
        payload = encode_record(record)
        result = self._publish_script(
            keys=[
                session_key(sid),
                room_key(record["roomId"]),
                node_sessions_key(record["serverId"]),
                ALL_SESSIONS,
                ACTIVE_SESSIONS,
                lease_key(sid),
            ],
            args=[
                sid,
                payload,
                record["status"],
                record["serverId"],
                record["roomId"],
                repr(started_at_ms(record)),
                "1" if is_terminal(record) else "0",
                CHANNEL,
                self._lease_ms,
                expect,
            ],
        )
        return bool(result)

    def _records(self, session_ids: builtins.list[str]) -> builtins.list[Record]:
        if not session_ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for sid in session_ids:
            pipe.hget(session_key(sid), "record")
        return [json.loads(raw) for raw in pipe.execute() if raw is not None]

    async def publish(self, record: Mapping[str, Any]) -> bool:
        copy = check_record(record)
        return await self._call(lambda: self._write(copy), "publish")

    async def get(self, session_id: str) -> Record | None:
        def get() -> Record | None:
            raw = self._client.hget(session_key(session_id), "record")
            return None if raw is None else _loads(raw)

        return await self._call(get, "get")

    async def by_room(self, room_id: str) -> Record | None:
        def by_room() -> Record | None:
            ids = _strings(self._client.zrange(room_key(room_id), 0, -1))
            return pick_for_room(self._records(ids))

        return await self._call(by_room, "by_room")

    async def list(self, limit: int = 100) -> builtins.list[Record]:
        if limit <= 0:
            return []

        def list_() -> builtins.list[Record]:
            ids = _strings(self._client.zrevrange(ALL_SESSIONS, 0, limit - 1))
            return self._records(ids)

        return await self._call(list_, "list")

    async def heartbeat(self, server_id: str, capacity: Mapping[str, Any]) -> None:
        payload = json.dumps(check_node(server_id, capacity, self._wall_clock()), sort_keys=True)

        def heartbeat() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(NODES, server_id, payload)
            pipe.set(node_key(server_id), payload, px=self._lease_ms)
            pipe.execute()

        await self._call(heartbeat, "heartbeat")

    async def nodes(self) -> builtins.list[Record]:
        def nodes() -> builtins.list[Record]:
            registered: dict[str, str] = dict(self._client.hgetall(NODES))  # type: ignore[arg-type]
            ids = sorted(registered)
            if not ids:
                return []
            pipe = self._client.pipeline(transaction=False)
            for sid in ids:
                pipe.exists(node_key(sid))
            alive = pipe.execute()
            return [{**_loads(registered[sid]), "alive": bool(up)} for sid, up in zip(ids, alive)]

        return await self._call(nodes, "nodes")

    async def renew_leases(self, server_id: str, session_ids: Iterable[str]) -> None:
        ids = builtins.list(session_ids)
        if not ids:
            return

        def renew() -> None:
            pipe = self._client.pipeline(transaction=False)
            for sid in ids:
                pipe.set(lease_key(sid), server_id, px=self._lease_ms)
            pipe.execute()

        await self._call(renew, "renew_leases")

    async def sweep_expired(self, now_iso: str) -> builtins.list[Record]:
        def sweep() -> builtins.list[Record]:
            ids = sorted(_strings(self._client.smembers(ACTIVE_SESSIONS)))
            if not ids:
                return []
            pipe = self._client.pipeline(transaction=False)
            for sid in ids:
                pipe.exists(lease_key(sid))
                pipe.hget(session_key(sid), "record")
            replies = pipe.execute()
            swept: builtins.list[Record] = []
            for sid, leased, raw in zip(ids, replies[0::2], replies[1::2]):
                if leased or raw is None:
                    continue
                stored = _loads(raw)
                if is_terminal(stored):
                    continue
                failed = node_lost_record(stored, now_iso)
                if self._write(failed, expect=raw):
                    swept.append(failed)
            return swept

        return await self._call(sweep, "sweep_expired")

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[Record]]:
        """Follow ``edge:state``.

        Raises:
            SharedStateError: subscribing failed. A failure later closes the
                channel (the reader sees end-of-channel) and is logged.
        """
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            await self._call(lambda: pubsub.subscribe(CHANNEL), "subscribe")
            send, receive = trio.open_memory_channel[Record](SUBSCRIBER_BUFFER)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, pubsub, send)
                try:
                    async with receive:
                        yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(4 * _POLL_S + 2, shield=True):
                await trio.to_thread.run_sync(pubsub.close)

    async def _pump(self, pubsub: PubSub, send: trio.MemorySendChannel[Record]) -> None:
        async with send:
            while True:
                try:
                    message = await self._call(
                        lambda: pubsub.get_message(timeout=_POLL_S), "pubsub read"
                    )
                except SharedStateError as exc:
                    log.warning("state subscription ended: %s", exc)
                    return
                if not message or message.get("type") != "message":
                    continue
                try:
                    send.send_nowait(_loads(message["data"]))
                except trio.WouldBlock:
                    self.subscriber_drops += 1
                except trio.BrokenResourceError:
                    return

    async def ping(self) -> None:
        await self._call(self._client.ping, "ping")

    async def close(self) -> None:
        with trio.move_on_after(2, shield=True):
            await trio.to_thread.run_sync(self._client.close)


def _loads(raw: Any) -> Record:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise SharedStateError(f"redis holds a value that is not a JSON object: {str(raw)[:80]!r}")
    return value


def _strings(reply: Any) -> builtins.list[str]:
    return [str(item) for item in reply]


# --- resilience ----------------------------------------------------------------------


@dataclasses.dataclass
class ResilientStats:
    """Counters of :class:`ResilientStateStore` (exported as metrics)."""

    # Times the store went from answering to not answering.
    outages: int = 0
    # Publishes kept locally because the store did not answer.
    deferred: int = 0
    # Records written by a resync after an outage.
    resynced: int = 0
    # Resynced records the store refused (another node had declared them lost).
    refused: int = 0
    # Records evicted from the local cache (terminal ones, oldest first).
    evicted: int = 0
    # Evicted records that had not reached the store yet: those updates are lost.
    lost: int = 0


class _Failed:
    """Marks a call that failed or timed out."""


_FAILED = _Failed()


class ResilientStateStore:
    """Wraps a store so that its outage never disturbs a recording.

    * :meth:`publish` never raises for the store and returns within
      ``call_timeout_s`` when the store refuses or fails (the one call that
      finds out about black-holed packets may take the inner store's socket
      bound, ~2 s, see the module's note on threads): it keeps the record
      in a local cache, tries the store once when it is believed up, and marks
      it dirty when that fails. While the store is down it does not try at all.
    * :meth:`run` (a background task) probes the store every
      ``retry_interval_s`` while it is down and then resyncs: every dirty
      record (latest version only, oldest first), the node's registration and
      its leases. The store counts as up again once nothing is dirty.
    * Reads go to the store when it is up, and fall back to the local cache
      when it is down or fails. **The fallback is possibly stale**: it holds
      only what this node published, as it last saw it. Records this node has
      not yet written to the store are served from the cache even when up.
    * The cache keeps the latest record per session, at most ``max_records``
      beyond the active ones: the oldest terminal records are evicted first
      (``stats.evicted``; ``stats.lost`` when not yet written to the store).
      Active records are never evicted (a node has at most
      ``RECORDING_MAX_SESSIONS`` of them).

    Args:
        inner: the store to protect (a :class:`RedisStateStore`).
        call_timeout_s: longest a caller waits for one store call.
        retry_interval_s: pause between probes while the store is down.
        max_records: cache size beyond the active records.
    """

    def __init__(
        self,
        inner: StateStore,
        *,
        call_timeout_s: float = 1.0,
        retry_interval_s: float = 1.0,
        max_records: int = 1000,
    ) -> None:
        self.inner = inner
        self._call_timeout_s = call_timeout_s
        self._retry_interval_s = retry_interval_s
        self._max_records = max_records
        # Latest record per session, least recently published first.
        self._cache: collections.OrderedDict[str, Record] = collections.OrderedDict()
        # Sessions whose latest record the store has not acknowledged.
        self._dirty: set[str] = set()
        self._up = True
        # Writes go one at a time so they reach the store in publish order.
        self._write_lock = trio.Lock()
        self._registration: tuple[str, Record] | None = None
        self._leases: tuple[str, builtins.list[str]] | None = None
        self.stats = ResilientStats()

    @property
    def connected(self) -> bool:
        """Whether the store answered the last call (for ``/healthz``)."""
        return self._up

    @property
    def pending(self) -> int:
        """Records waiting to be written to the store."""
        return len(self._dirty)

    async def _attempt(self, call: Callable[[], Awaitable[T]], what: str) -> T | _Failed:
        """One store call, bounded by ``call_timeout_s``; a failure marks the store down."""
        with trio.move_on_after(self._call_timeout_s):
            try:
                return await call()
            except SharedStateError as exc:
                self._mark_down(f"{what}: {exc}")
                return _FAILED
        self._mark_down(f"{what}: no answer within {self._call_timeout_s:g} s")
        return _FAILED

    def _mark_down(self, why: str) -> None:
        if self._up:
            self._up = False
            self.stats.outages += 1
            log.warning(
                "shared state store unavailable (%s); recordings continue, "
                "state is kept locally and resynced when it answers", why
            )

    def _remember(self, record: Record) -> None:
        sid = record["sessionId"]
        self._cache[sid] = record
        self._cache.move_to_end(sid)
        excess = len(self._cache) - self._max_records
        if excess <= 0:
            return
        for old_sid in [s for s, r in self._cache.items() if is_terminal(r)][:excess]:
            del self._cache[old_sid]
            self.stats.evicted += 1
            if old_sid in self._dirty:
                self._dirty.discard(old_sid)
                self.stats.lost += 1

    async def publish(self, record: Mapping[str, Any]) -> bool:
        """Publish without ever raising for the store or blocking for long.

        Returns:
            False only when the record breaks the "terminal is sticky" rule
            (locally or in the store); True when written or kept for a resync.

        Raises:
            ValueError: the record is malformed (a bug in the caller).
        """
        copy = check_record(record)
        sid = copy["sessionId"]
        if not accepts(self._cache.get(sid), copy):
            return False
        self._remember(copy)
        if self._up:

            async def write() -> bool:
                async with self._write_lock:
                    return await self.inner.publish(copy)

            written = await self._attempt(write, "publish")
            if not isinstance(written, _Failed):
                if self._cache.get(sid) is copy:
                    self._dirty.discard(sid)
                    if not written:
                        del self._cache[sid]  # the store's terminal record is the truth
                return written
        else:
            await trio.lowlevel.checkpoint()
        if sid in self._cache:  # else evicted meanwhile (counted there)
            self._dirty.add(sid)
        self.stats.deferred += 1
        return True

    async def get(self, session_id: str) -> Record | None:
        local = self._cache.get(session_id)
        if session_id not in self._dirty and self._up:
            found = await self._attempt(lambda: self.inner.get(session_id), "get")
            if not isinstance(found, _Failed):
                return found
        return None if local is None else copy_json(local)

    async def by_room(self, room_id: str) -> Record | None:
        local = [r for r in self._cache.values() if r["roomId"] == room_id]
        if self._up:
            found = await self._attempt(lambda: self.inner.by_room(room_id), "by_room")
            if not isinstance(found, _Failed):
                dirty = [r for r in local if r["sessionId"] in self._dirty]
                candidates = dirty + ([found] if found is not None else [])
                return pick_for_room(_first_per_session(candidates))
        chosen = pick_for_room(local)
        return None if chosen is None else copy_json(chosen)

    async def list(self, limit: int = 100) -> builtins.list[Record]:
        if limit <= 0:
            return []
        merged: dict[str, Record] = {}
        if self._up:
            found = await self._attempt(lambda: self.inner.list(limit), "list")
            if not isinstance(found, _Failed):
                merged = {r["sessionId"]: r for r in found}
                merged.update({sid: self._cache[sid] for sid in self._dirty if sid in self._cache})
                return [copy_json(r) for r in newest_first(merged.values())[:limit]]
        return [copy_json(r) for r in newest_first(self._cache.values())[:limit]]

    async def heartbeat(self, server_id: str, capacity: Mapping[str, Any]) -> None:
        """Register the node; remembered and replayed by the resync when the store is down."""
        self._registration = (server_id, dict(capacity))
        if self._up:
            await self._attempt(lambda: self.inner.heartbeat(server_id, capacity), "heartbeat")

    async def nodes(self) -> builtins.list[Record]:
        """Registered nodes; when the store is down, only this node (stale)."""
        if self._up:
            found = await self._attempt(self.inner.nodes, "nodes")
            if not isinstance(found, _Failed):
                return found
        if self._registration is None:
            return []
        server_id, capacity = self._registration
        return [{**copy_json(capacity), "serverId": server_id, "alive": True}]

    async def renew_leases(self, server_id: str, session_ids: Iterable[str]) -> None:
        ids = builtins.list(session_ids)
        self._leases = (server_id, ids)
        if self._up:
            await self._attempt(lambda: self.inner.renew_leases(server_id, ids), "renew_leases")

    async def sweep_expired(self, now_iso: str) -> builtins.list[Record]:
        """Sweep when the store answers; a node that cannot reach it sweeps nothing."""
        if not self._up:
            return []
        swept = await self._attempt(lambda: self.inner.sweep_expired(now_iso), "sweep_expired")
        return [] if isinstance(swept, _Failed) else swept

    def subscribe(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Record]]:
        """The inner store's subscription (not resilient: raises SharedStateError)."""
        return self.inner.subscribe()

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        with trio.move_on_after(self._call_timeout_s + 2, shield=True):
            await self.inner.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resync after outages, forever. Cancel it to stop; nothing is left half-done
        that the next start would not redo (every write is idempotent)."""
        task_status.started()
        while True:
            await trio.sleep(self._retry_interval_s)
            if not self._up or self._dirty:
                await self.resync()

    async def resync(self) -> bool:
        """Probe the store and write everything it missed.

        Returns:
            True when the store is up and nothing is pending.
        """
        if isinstance(await self._attempt(self.inner.ping, "ping"), _Failed):
            return False
        if self._registration is not None:
            server_id, capacity = self._registration
            if isinstance(
                await self._attempt(lambda: self.inner.heartbeat(server_id, capacity), "heartbeat"),
                _Failed,
            ):
                return False
        if self._leases is not None:
            server_id, ids = self._leases
            if isinstance(
                await self._attempt(lambda: self.inner.renew_leases(server_id, ids), "renew_leases"),
                _Failed,
            ):
                return False
        written = 0
        while self._dirty:
            sid = next((s for s in self._cache if s in self._dirty), "")
            if not sid:
                self._dirty.clear()  # only ids evicted meanwhile; nothing to write
                break
            record = self._cache[sid]

            async def write() -> bool:
                async with self._write_lock:
                    return await self.inner.publish(record)

            result = await self._attempt(write, "resync")
            if isinstance(result, _Failed):
                return False
            if not result:
                self.stats.refused += 1
                log.warning(
                    "session %s: the shared store refused our %s record; it holds a terminal "
                    "one (another node declared this node lost while it was unreachable)",
                    sid,
                    record["status"],
                )
            if self._cache.get(sid) is record:
                self._dirty.discard(sid)
                if not result:
                    del self._cache[sid]  # the store's terminal record is the truth
            written += 1
            self.stats.resynced += 1
        if not self._up:
            log.info("shared state store answers again; resynced %d records", written)
        self._up = True
        return True


def _first_per_session(records: Iterable[Record]) -> builtins.list[Record]:
    """One record per session id: the first seen (callers put local versions first)."""
    chosen: dict[str, Record] = {}
    for record in records:
        chosen.setdefault(record["sessionId"], record)
    return builtins.list(chosen.values())
