"""The shared state store's contract, and the pure rules every implementation shares.

Several nodes share session state so any node can answer ``recording.get`` and
``recording.list``. A :class:`StateStore` holds each session's latest *state
record* (``RecordingSession.state_record()``), a few indexes over them, one
registration per node, and one lease per active session.

Two implementations keep identical semantics, checked by one contract suite:
:class:`~edge_recorder.state.memory.MemoryStateStore` (one process, no Redis,
fake-clock leases) and :class:`~edge_recorder.state.redis.RedisStateStore`.
:class:`~edge_recorder.state.redis.ResilientStateStore` wraps either so an
outage of the store never disturbs a recording.

Rules (see ``docs/shared-state.md``):

* **Terminal is sticky.** A stored COMPLETED or FAILED record is never replaced
  by a non-terminal one (a stale resync after the sweeper declared the node
  lost, or reordered writes). It may be replaced by another terminal record
  *from the session's own server*, so a node that was only partitioned still
  reports where its file went. :func:`accepts` is the rule.
* **Leases.** Publishing a non-terminal record takes the session's lease for
  its server; the owning node renews it every heartbeat. A non-terminal session
  whose lease has expired is swept to FAILED with reason ``node-lost``
  (:func:`node_lost_record`), exactly once however many nodes sweep at once.
* Records are plain JSON objects; the store keeps and returns copies.

This module is pure: it imports no ``trio`` and no client library.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from edge_recorder.session.state import SessionStatus, iso_timestamp, transition

if TYPE_CHECKING:
    import trio

__all__ = [
    "ACTIVE_STATUSES",
    "CHANNEL",
    "NODE_LOST_REASON",
    "TERMINAL_STATUSES",
    "Record",
    "StateStore",
    "accepts",
    "check_node",
    "check_record",
    "copy_json",
    "encode_record",
    "is_terminal",
    "newest_first",
    "node_lost_record",
    "pick_for_room",
    "started_at_ms",
    "utc_now_iso",
]

Record = dict[str, Any]
"""One session's state record: a JSON object (see ``RecordingSession.state_record``)."""

# The pub/sub channel every published record is announced on.
CHANNEL = "edge:state"
# Statuses a live node still owns; a session in one of them needs a lease.
ACTIVE_STATUSES = frozenset({"STARTING", "RECORDING", "UPLOADING"})
# Statuses nothing moves out of (except to another terminal record, see accepts()).
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})
# The machine-readable reason of a session whose node stopped renewing its lease.
NODE_LOST_REASON = "node-lost"

_REQUIRED_STRINGS = ("sessionId", "roomId", "status", "startedAt", "serverId")


class StateStore(Protocol):
    """Where session state records, node registrations and leases live.

    Every method is async; a store backed by a network service may raise
    :class:`~edge_recorder.errors.SharedStateError` from any of them (wrap it
    in :class:`~edge_recorder.state.redis.ResilientStateStore` where a failure
    must not reach the caller). Timeouts belong to the caller.
    """

    async def publish(self, record: Mapping[str, Any]) -> bool:
        """Store a session's latest record, index it, and announce it on ``edge:state``.

        Returns:
            True when written; False when refused because the stored record is
            terminal (see :func:`accepts`).

        Raises:
            ValueError: the record lacks a required field or is not JSON.
        """
        ...

    async def get(self, session_id: str) -> Record | None:
        """The latest record of one session, or None."""
        ...

    async def by_room(self, room_id: str) -> Record | None:
        """The room's active session (newest if several), else its newest one, else None."""
        ...

    async def list(self, limit: int = 100) -> list[Record]:
        """Up to ``limit`` records, newest ``startedAt`` first."""
        ...

    async def heartbeat(self, server_id: str, capacity: Mapping[str, Any]) -> None:
        """Register (or refresh) a node with its capacity for ``lease_ttl_s``.

        Args:
            server_id: the node's ``RECORDING_SERVER_ID``.
            capacity: JSON fields kept as they are, conventionally
                ``activeSessions``, ``maxSessions``, ``load``, ``version``.
                ``serverId`` and ``lastSeen`` (UTC ISO 8601) are added.
        """
        ...

    async def nodes(self) -> builtins.list[Record]:
        """Every node ever registered, sorted by ``serverId``, with ``alive``:
        whether its registration is younger than ``lease_ttl_s``."""
        ...

    async def renew_leases(self, server_id: str, session_ids: Iterable[str]) -> None:
        """Hold (or take) each session's lease for ``server_id`` for another ``lease_ttl_s``."""
        ...

    async def sweep_expired(self, now_iso: str) -> builtins.list[Record]:
        """Fail every active session whose lease expired (reason ``node-lost``).

        Safe to run on several nodes at once: each swept session is returned
        by exactly one of them.

        Returns:
            The FAILED records this call wrote (and published).
        """
        ...

    def subscribe(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Record]]:
        """Follow ``edge:state``: every record published from now on, in publish order.

        A subscriber that falls behind by more than its buffer loses the
        oldest-pending messages (counted by the store); state is in the store,
        the channel only says that it changed.
        """
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise SharedStateError when it does not."""
        ...

    async def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...


def check_record(record: Mapping[str, Any]) -> Record:
    """Validate a state record and return a JSON-round-tripped copy.

    Raises:
        ValueError: a required field is missing or not a non-empty string, the
            status is unknown, ``startedAt`` is not ISO 8601, or the record is
            not JSON-serialisable.
    """
    for name in _REQUIRED_STRINGS:
        value = record.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"state record: {name} must be a non-empty string, got {value!r}")
    status = record["status"]
    if status not in ACTIVE_STATUSES and status not in TERMINAL_STATUSES:
        raise ValueError(f"state record: unknown status {status!r}")
    started_at_ms(record)
    try:
        copy: Record = json.loads(encode_record(record))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state record of session {record['sessionId']} is not JSON: {exc}") from exc
    return copy


def encode_record(record: Mapping[str, Any]) -> str:
    """The canonical JSON of a record: compact, keys sorted (stored and published as is)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def started_at_ms(record: Mapping[str, Any]) -> float:
    """``startedAt`` as Unix milliseconds: the score of the sorted indexes.

    Raises:
        ValueError: ``startedAt`` is not an ISO 8601 timestamp.
    """
    text = record.get("startedAt")
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        raise ValueError(f"state record: startedAt {text!r} is not ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp() * 1000.0


def is_terminal(record: Mapping[str, Any]) -> bool:
    return record.get("status") in TERMINAL_STATUSES


def accepts(stored: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> bool:
    """Whether ``incoming`` may replace ``stored`` (the "terminal is sticky" rule).

    A terminal record is replaced only by a terminal record of the same
    ``serverId``: the owner's COMPLETED after a false ``node-lost`` is the
    truth; its stale RECORDING is not.
    """
    if stored is None or not is_terminal(stored):
        return True
    return is_terminal(incoming) and incoming.get("serverId") == stored.get("serverId")


def node_lost_record(record: Mapping[str, Any], now_iso: str) -> Record:
    """The FAILED record the sweeper writes for an active session whose lease expired.

    The move is the lifecycle's (:func:`~edge_recorder.session.state.transition`):
    callers sweep only non-terminal records, so a terminal one here is a bug and
    raises. A status no version of ours writes is failed all the same.
    """
    if record["status"] in _STATUS_NAMES:
        transition(SessionStatus(record["status"]), SessionStatus.FAILED)
    failed = dict(record)
    failed["previousStatus"] = record["status"]
    failed["status"] = SessionStatus.FAILED.value
    failed["reason"] = NODE_LOST_REASON
    failed["error"] = f"the node {record['serverId']} stopped renewing its lease"
    failed["updatedAt"] = now_iso
    failed["stoppedAt"] = now_iso
    return failed


_STATUS_NAMES = frozenset(status.value for status in SessionStatus)


def utc_now_iso() -> str:
    """Wall-clock UTC time as the records spell it: ``2024-05-01T12:00:00.000Z``."""
    return iso_timestamp(dt.datetime.now(dt.timezone.utc))


def newest_first(records: Iterable[Record]) -> list[Record]:
    """Sort by ``startedAt`` descending, ties by ``sessionId`` descending (Redis ZREVRANGE's order)."""
    return sorted(records, key=lambda r: (started_at_ms(r), r["sessionId"]), reverse=True)


def pick_for_room(records: Iterable[Record]) -> Record | None:
    """The room's active session (newest if several), else its newest one."""
    ordered = newest_first(records)
    for record in ordered:
        if not is_terminal(record):
            return record
    return ordered[0] if ordered else None


def check_node(server_id: str, capacity: Mapping[str, Any], last_seen: str) -> Record:
    """A node registration: the capacity fields plus ``serverId`` and ``lastSeen``.

    Raises:
        ValueError: the server id is empty or the capacity is not JSON.
    """
    if not server_id:
        raise ValueError("heartbeat: server_id must be a non-empty string")
    entry = {**capacity, "serverId": server_id, "lastSeen": last_seen}
    entry.pop("alive", None)  # computed by nodes(), never stored
    return copy_json(entry)


def copy_json(value: Mapping[str, Any]) -> Record:
    """A deep copy through JSON, as a networked store would hand it back.

    Raises:
        ValueError: the value is not JSON-serialisable.
    """
    try:
        copied: Record = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a JSON object: {exc}") from exc
    return copied
