"""The session lifecycle as enums with pure transition functions, and its record.

Three things live here, none of them imports Trio:

* :class:`SessionStatus`, the public status of the protocol. A live recording
  moves ``STARTING → RECORDING → UPLOADING → COMPLETED``, or to ``FAILED``
  from any non-terminal state. Two other movers have a few more moves, each
  named in :class:`Mover`: a restarted node's recovery, and an operator's
  ``retry-upload``. Nothing else is legal; a refused move raises
  :class:`~edge_recorder.errors.IllegalTransitionError` naming both ends, so a
  bug shows up as a clear error instead of a row that lies.
* :class:`Phase`, a live session's finer internal phase (stop asked, worker
  exited, …), with its own table (:func:`advance`) and its public status
  (:attr:`Phase.status`). Every public change :func:`advance` makes goes
  through :func:`transition`.
* :class:`SessionRecord`, the one state record: built by a live session, from
  a metadata row (recovery, lookups) and moved by recovery and
  ``retry-upload``, always through :func:`transition`. :meth:`SessionRecord.to_wire`
  is the protocol's JSON object.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_recorder.errors import IllegalTransitionError, public_message


class SessionStatus(enum.Enum):
    """Where a recording is in its life. Values are the wire names of the protocol."""

    # Sockets are being bound and the media worker started; no media yet.
    STARTING = "STARTING"
    # The media worker runs; streams may come and go.
    RECORDING = "RECORDING"
    # Media is finalised on disk; the artifact is being moved to its destination.
    UPLOADING = "UPLOADING"
    # The artifact is at its destination (a bucket, or the local directory).
    COMPLETED = "COMPLETED"
    # Terminal failure; ``error`` in the state record says what an operator can do.
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (SessionStatus.COMPLETED, SessionStatus.FAILED)


_ALLOWED: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.STARTING: frozenset({SessionStatus.RECORDING, SessionStatus.FAILED}),
    SessionStatus.RECORDING: frozenset({SessionStatus.UPLOADING, SessionStatus.FAILED}),
    SessionStatus.UPLOADING: frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED}),
    SessionStatus.COMPLETED: frozenset(),
    SessionStatus.FAILED: frozenset(),
}


class Mover(enum.Enum):
    """Who moves a status: each has the live lifecycle's moves and, below, a few of its own."""

    # The live session on this node: only the lifecycle's moves.
    SESSION = "session"
    # A restarted node finishing a session a crash left behind: its media is
    # on disk (or already in the store), so any non-terminal status may go
    # straight to UPLOADING or COMPLETED (the spool-gone case finds the object).
    RECOVERY = "recovery"
    # An operator's ``retry-upload``: FAILED is terminal for everyone else;
    # this is the one way back (FAILED → UPLOADING), plus recovery's moves.
    OPERATOR_RETRY = "operator-retry"


_NON_TERMINAL = (SessionStatus.STARTING, SessionStatus.RECORDING, SessionStatus.UPLOADING)
_RECOVERY_EXTRA: frozenset[tuple[SessionStatus, SessionStatus]] = frozenset(
    (current, target)
    for current in _NON_TERMINAL
    for target in (SessionStatus.UPLOADING, SessionStatus.COMPLETED)
    if current is not target
)
_EXTRA: dict[Mover, frozenset[tuple[SessionStatus, SessionStatus]]] = {
    Mover.SESSION: frozenset(),
    Mover.RECOVERY: _RECOVERY_EXTRA,
    Mover.OPERATOR_RETRY: _RECOVERY_EXTRA | {(SessionStatus.FAILED, SessionStatus.UPLOADING)},
}


def transition(current: SessionStatus, target: SessionStatus, *, by: Mover = Mover.SESSION) -> SessionStatus:
    """Check one lifecycle move.

    Args:
        current: the state the session is in.
        target: the state asked for.
        by: who moves it (recovery and an operator's retry have a few more moves).

    Returns:
        ``target``, when the move is legal.

    Raises:
        IllegalTransitionError: the move is not in the lifecycle (for example
            ``COMPLETED → RECORDING``, or any move out of a terminal state).
    """
    if target not in _ALLOWED[current] and (current, target) not in _EXTRA[by]:
        if by is not Mover.SESSION:
            extra = sorted(t.value for c, t in _EXTRA[by] if c is current)
            allowed = ", ".join(sorted({s.value for s in _ALLOWED[current]} | set(extra))) or "nothing"
            why = f"for {by.value}, from {current.value} only {allowed} may follow"
        elif current.terminal:
            why = f"{current.value} is terminal"
        else:
            allowed = ", ".join(sorted(s.value for s in _ALLOWED[current]))
            why = f"from {current.value} only {allowed} may follow"
        raise IllegalTransitionError(f"cannot move {current.value} → {target.value}: {why}")
    return target


class Phase(enum.Enum):
    """Where a live session is, finer than its public status (which :attr:`status` gives)."""

    # Spool checked, worker spawned, waiting for its ready handshake. Public STARTING.
    STARTING = "starting"
    # Media flows to the worker; streams may come and go. Public RECORDING.
    RECORDING = "recording"
    # A stop was asked: the stop instant went to the worker, which flushes its
    # encoders and closes the file under the drain deadline. Public RECORDING.
    DRAINING = "draining"
    # The worker exited (asked to or not): the file is being judged and, on a
    # failure, cut to its last complete fragment. Public RECORDING.
    FINALISING = "finalising"
    # The media is final on disk; the destination is taking it. Public UPLOADING.
    UPLOADING = "uploading"
    # The artifact is at its destination. Public COMPLETED.
    COMPLETED = "completed"
    # Terminal failure; the record's ``error`` says what an operator can do. Public FAILED.
    FAILED = "failed"

    @property
    def status(self) -> SessionStatus:
        """The protocol's status for this phase."""
        return _PUBLIC[self]

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def stopping(self) -> bool:
        """Past recording: the media is being finalised or the session ended.

        No new stream, layout or speaker change reaches the worker, and the
        session's loops (speaker, polling, liveness) end.
        """
        return self not in (Phase.STARTING, Phase.RECORDING)


_PUBLIC: dict[Phase, SessionStatus] = {
    Phase.STARTING: SessionStatus.STARTING,
    Phase.RECORDING: SessionStatus.RECORDING,
    Phase.DRAINING: SessionStatus.RECORDING,
    Phase.FINALISING: SessionStatus.RECORDING,
    Phase.UPLOADING: SessionStatus.UPLOADING,
    Phase.COMPLETED: SessionStatus.COMPLETED,
    Phase.FAILED: SessionStatus.FAILED,
}

_PHASES: dict[Phase, frozenset[Phase]] = {
    # The worker got ready (RECORDING), or never did, or the start was cancelled.
    Phase.STARTING: frozenset({Phase.RECORDING, Phase.FAILED}),
    # stop() (DRAINING); the worker exiting on its own (FINALISING, then FAILED);
    # a forced stop or a crash of the session (FAILED).
    Phase.RECORDING: frozenset({Phase.DRAINING, Phase.FINALISING, Phase.FAILED}),
    # The worker exited (FINALISING); the drain deadline passed or a forced stop (FAILED).
    Phase.DRAINING: frozenset({Phase.FINALISING, Phase.FAILED}),
    # The file is final (UPLOADING) or not (FAILED, cut to its last fragment).
    Phase.FINALISING: frozenset({Phase.UPLOADING, Phase.FAILED}),
    Phase.UPLOADING: frozenset({Phase.COMPLETED, Phase.FAILED}),
    Phase.COMPLETED: frozenset(),
    Phase.FAILED: frozenset(),
}


def advance(current: Phase, target: Phase) -> Phase:
    """Check one move of a live session's phase (and of its public status, when that changes).

    Returns:
        ``target``, when the move is legal.

    Raises:
        IllegalTransitionError: the move is not in the table (for example
            ``DRAINING → RECORDING``: a stop is never taken back), or the
            public status move it implies is refused by :func:`transition`.
    """
    if target not in _PHASES[current]:
        if current.terminal:
            why = f"{current.value} is terminal"
        else:
            allowed = ", ".join(sorted(p.value for p in _PHASES[current]))
            why = f"from {current.value} only {allowed} may follow"
        raise IllegalTransitionError(f"cannot move phase {current.value} → {target.value}: {why}")
    if current.status is not target.status:
        transition(current.status, target.status)
    return target


def iso_timestamp(value: dt.datetime) -> str:
    """A datetime as the records write it (as :func:`~edge_recorder.state.store.utc_now_iso`)."""
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_time(value: Any) -> str | None:
    """A stored time (a datetime from SQL, or already text) as the records write it."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return iso_timestamp(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream of a state record's ``streams``."""

    producer_id: str
    peer_id: str
    kind: str
    source: str

    def to_wire(self) -> dict[str, Any]:
        return {"producerId": self.producer_id, "peerId": self.peer_id, "kind": self.kind, "source": self.source}


@dataclass(frozen=True, slots=True)
class AssetEntry:
    """A state record's ``asset`` block: where the recording is."""

    bucket: str | None
    key: str | None
    size: int | None
    url: str

    def to_wire(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "url": self.url}


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """The protocol's state record of one recording (see ``docs/control-protocol.md``).

    ``error`` is the operator's text (kept file, worker stderr): the metadata
    row and the log have it. The wire's ``error`` is :attr:`public_error`
    (no node paths, no stderr), unless asked for the operator's view.
    """

    session_id: str
    room_id: str
    status: SessionStatus
    server_id: str
    started_at: str
    updated_at: str
    previous_status: SessionStatus | None = None
    layout: str = "pip"
    streams: tuple[StreamEntry, ...] = ()
    reason: str | None = None
    error: str | None = None
    stopped_at: str | None = None
    asset: AssetEntry | None = None
    # The keys of session/controls.py's RecordingControls.to_wire(): paused,
    # pauses, layoutState, excludedPeers, events. None: a record from before them.
    controls: Mapping[str, Any] | None = None
    # Issue #14's keys when the session keeps tracks: outputs, tracks,
    # manifest (RecordingSession._tracks_wire). None: the composite only.
    tracks: Mapping[str, Any] | None = None

    @property
    def public_error(self) -> str | None:
        return public_message(self.error) if self.error is not None else None

    def moved(self, target: SessionStatus, *, by: Mover, now: str, **changes: Any) -> "SessionRecord":
        """This record moved to ``target`` (checked by :func:`transition`), with ``changes``.

        Raises:
            IllegalTransitionError: ``by`` may not make this move.
        """
        status = transition(self.status, target, by=by)
        if status not in (SessionStatus.STARTING, SessionStatus.RECORDING) and "controls" not in changes:
            # Out of RECORDING nothing is captured any more: a session that
            # left it paused (a crash, recovered by another process) has its
            # open pause closed here, as a live stop closes it.
            changes["controls"] = controls_after_capture(self.controls, now)
        return dataclasses.replace(self, status=status, previous_status=self.status, updated_at=now, **changes)

    def to_wire(self, *, operator: bool = False) -> dict[str, Any]:
        """The JSON object of the protocol; ``operator=True`` puts the operator's text in ``error``.

        Optional keys (``reason``, ``error``, ``stoppedAt``, ``asset``) are
        left out while they have no value.
        """
        record: dict[str, Any] = {
            "sessionId": self.session_id,
            "roomId": self.room_id,
            "status": self.status.value,
            "previousStatus": self.previous_status.value if self.previous_status else None,
            "startedAt": self.started_at,
            "updatedAt": self.updated_at,
            "serverId": self.server_id,
            "layout": self.layout,
            "streams": [s.to_wire() for s in self.streams],
        }
        error = self.error if operator else self.public_error
        if self.reason:
            record["reason"] = self.reason
        if error:
            record["error"] = error
        if self.stopped_at:
            record["stoppedAt"] = self.stopped_at
        if self.asset is not None:
            record["asset"] = self.asset.to_wire()
        if self.controls is not None:
            record.update(self.controls)
        if self.tracks is not None:
            record.update(self.tracks)
        return record

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, with_asset: bool = False) -> "SessionRecord":
        """The record of a metadata row (``MetadataRepository.get_session``), its asset if asked.

        A status the lifecycle does not know reads as FAILED (it cannot be
        resumed); timestamps become the records' ISO text.
        """
        try:
            status = SessionStatus(row.get("status"))
        except ValueError:
            status = SessionStatus.FAILED
        try:
            previous = SessionStatus(row["previousStatus"]) if row.get("previousStatus") else None
        except ValueError:
            previous = None
        asset = row.get("asset")
        entry = None
        if with_asset and isinstance(asset, Mapping) and asset.get("url"):
            entry = AssetEntry(asset.get("bucket"), asset.get("key"), asset.get("sizeBytes"), str(asset["url"]))
        return cls(
            session_id=str(row["sessionId"]),
            room_id=str(row.get("roomId")),
            status=status,
            previous_status=previous,
            server_id=str(row.get("serverId")),
            started_at=record_time(row.get("startedAt")) or "",
            updated_at=record_time(row.get("updatedAt")) or "",
            stopped_at=record_time(row.get("stoppedAt")),
            layout=row.get("layout") or "pip",
            reason=row.get("reason"),
            error=row.get("error"),
            asset=entry,
            controls=_controls_of_row(row),
        )


def controls_after_capture(controls: Mapping[str, Any] | None, at: str) -> Mapping[str, Any] | None:
    """``controls`` (the record's wire keys) with an open pause closed at ``at`` (pure).

    The media of a pause that never ended stops where the pause started, so
    its media end is its media start (as ``RecordingControls.stopped`` does
    without a media time).
    """
    if controls is None or not controls.get("paused"):
        return controls
    pauses = [dict(p) if isinstance(p, Mapping) else p for p in controls.get("pauses") or []]
    if pauses and isinstance(pauses[-1], dict) and pauses[-1].get("endedAt") is None:
        last = pauses[-1]
        last["endedAt"] = at
        if last.get("mediaEndS") is None:
            last["mediaEndS"] = last.get("mediaStartS")
    return {**controls, "paused": False, "pauses": pauses}


def _controls_of_row(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The control fields of a metadata row (None for a row from before them).

    ``events`` is empty here: the audit rows are another table, which the
    caller adds (``MetadataRepository.control_events``).
    """
    if "paused" not in row:
        return None
    return {
        "paused": bool(row.get("paused")),
        "pauses": list(row.get("pauses") or []),
        "layoutState": row.get("layoutState"),
        "excludedPeers": list(row.get("excludedPeers") or []),
        "events": [],
    }
