"""The session manager: owns every recording's nursery.

A control connection asks the manager to start, change or stop a session; it
never owns one, so a dropped WebSocket cannot end a recording. Connections
that drive a session are recorded as its *controllers*: when all of them have
been gone for ``RECORDING_CONTROLLER_GRACE_S``, the watchdog stops the session
with reason ``controller-lost`` and it is finalised like any other stop.

The manager's nursery is opened by the service (or the demo) and lives as long
as it; each session runs in it next to its watchdog task.

The manager's rules (capacity, one recording per room, durable idempotency,
the enabled switch, the free-disk floor, readiness) need little of a session:
:class:`ManagedSession` says what. Sessions come from a *session factory*
(:class:`SessionFactory`; by default :func:`recording_sessions` builds
:class:`~edge_recorder.session.session.RecordingSession`), so the rules are
unit-tested with a fake session and no media worker.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, overload

import trio

from edge_recorder.config import Settings
from edge_recorder.media.layout import LayoutName
from edge_recorder.errors import (
    AtCapacityError,
    EdgeRecorderError,
    InsufficientStorageError,
    RecordingDisabledError,
    RoomAlreadyRecordingError,
    SessionError,
    ShuttingDownError,
    UnknownSessionError,
)
from edge_recorder.fleet.placement import session_cost
from edge_recorder.session.autostop import AutoStopRules
from edge_recorder.session.ports import PortAllocator
from edge_recorder.session.destination import Destination, DestinationFactory
from edge_recorder.session.session import OutputOptions, RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from edge_recorder.spool import NodeSpool

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.5
# How long ended sessions stay answerable from memory (recording.get/list)
# before they are forgotten; shared state in Redis keeps them longer (issue #4).
ENDED_SESSIONS_KEPT = 256
# UDP ports a new recording needs at least for /readyz to say ready: one audio
# and one video stream with RTCP multiplexed.
MIN_FREE_PORTS = 2

# Finds a recording by id in the durable places (shared state, metadata);
# None when no node has ever recorded it.
KnownSessionLookup = Callable[[str], Awaitable["dict[str, Any] | None"]]


class Intake(enum.Enum):
    """Whether the node takes new recordings: the service moves it OPEN → DRAINING → CLOSED, never back.

    DRAINING (SIGTERM): no new recording here, the live ones run to their
    natural end. CLOSED: the rest are being finalised.
    """

    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class _Packets(Protocol):
    @property
    def packets(self) -> int: ...


class ManagedSession(Protocol):
    """What the manager needs of a session (:class:`RecordingSession` is the real one)."""

    @property
    def session_id(self) -> str: ...
    @property
    def room_id(self) -> str: ...
    @property
    def status(self) -> SessionStatus: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def streams(self) -> Sequence[object]: ...
    def receiver_stats(self) -> Sequence[_Packets]: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record until stopped; ``task_status.started()`` once RECORDING (or FAILED). Never raises for media failures."""

    async def stop(self, reason: str = "host") -> None:
        """Stop gracefully; returns once the media is final."""


S = TypeVar("S", bound=ManagedSession)
S_co = TypeVar("S_co", bound=ManagedSession, covariant=True)


@dataclass(frozen=True)
class SessionRequest:
    """What ``recording.start`` asked for, handed to the session factory."""

    room_id: str
    session_id: str | None = None
    layout: LayoutName | None = None
    output: OutputOptions | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    host_peer_id: str | None = None


class SessionFactory(Protocol[S_co]):
    """Builds one session; it reports every status change to ``on_change`` and keyframe needs to ``on_keyframe``."""

    def __call__(
        self,
        request: SessionRequest,
        *,
        on_change: Callable[[S_co], None],
        on_keyframe: Callable[[S_co, StreamSpec], None],
    ) -> S_co: ...


def recording_sessions(
    settings: Settings,
    ports: PortAllocator,
    spool: NodeSpool,
    *,
    destination: DestinationFactory | None = None,
    defer_spool_removal: bool = False,
) -> SessionFactory[RecordingSession]:
    """The factory of real sessions: each runs a media worker, on these ports and this spool."""

    def build(
        request: SessionRequest,
        *,
        on_change: Callable[[RecordingSession], None],
        on_keyframe: Callable[[RecordingSession, StreamSpec], None],
    ) -> RecordingSession:
        session = RecordingSession(
            session_id=request.session_id,
            room_id=request.room_id,
            settings=settings,
            ports=ports,
            layout=request.layout,
            output=request.output,
            on_change=on_change,
            on_keyframe_request=on_keyframe,
            drain_timeout_s=settings.lifecycle.drain_timeout_s,
            destination=destination,
            spool=spool,
            defer_spool_removal=defer_spool_removal,
        )
        session.metadata = request.metadata
        session.host_peer_id = request.host_peer_id
        return session

    return build


@dataclass(frozen=True)
class KnownSession:
    """A recording this node does not run, found by its id in shared state or metadata.

    ``recording.start`` with the id of a recording that exists (finished, on
    another node, or from before a restart) answers with it: never a new
    recording over it.
    """

    session_id: str
    room_id: str
    status: SessionStatus
    record: dict[str, Any]


class SessionManager(Generic[S]):
    """Starts, finds and stops recordings.

    Args:
        settings: the service settings.
        on_change: called after every status change of any session (more can
            be added with :meth:`add_state_listener`).
        on_keyframe_request: called when any stream asks for a keyframe.
        enforce_enabled: refuse starts when ``RECORDING_ENABLED`` is false (the
            service); the demo records regardless.
        destination: builds each real session's destination (bucket or local
            directory; default local). Ignored with ``session_factory``.
        known_session: finds an id in the durable places (idempotency).
        defer_spool_removal: real sessions leave an uploaded spool for the
            bookkeeper to remove. Ignored with ``session_factory``.
        session_factory: builds the sessions; default :func:`recording_sessions`
            on this manager's ports and spool.
    """

    @overload
    def __init__(
        self: "SessionManager[RecordingSession]",
        settings: Settings,
        *,
        on_change: Callable[[RecordingSession], None] | None = None,
        on_keyframe_request: Callable[[RecordingSession, StreamSpec], None] | None = None,
        enforce_enabled: bool = False,
        destination: DestinationFactory | None = None,
        known_session: KnownSessionLookup | None = None,
        defer_spool_removal: bool = False,
        session_factory: None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: "SessionManager[S]",
        settings: Settings,
        *,
        on_change: Callable[[S], None] | None = None,
        on_keyframe_request: Callable[[S, StreamSpec], None] | None = None,
        enforce_enabled: bool = False,
        destination: None = None,
        known_session: KnownSessionLookup | None = None,
        defer_spool_removal: bool = False,
        session_factory: SessionFactory[S],
    ) -> None: ...

    def __init__(
        self,
        settings: Settings,
        *,
        on_change: Callable[[Any], None] | None = None,
        on_keyframe_request: Callable[[Any, StreamSpec], None] | None = None,
        enforce_enabled: bool = False,
        destination: DestinationFactory | None = None,
        known_session: KnownSessionLookup | None = None,
        defer_spool_removal: bool = False,
        session_factory: SessionFactory[Any] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = NodeSpool(Path(settings.tmp_dir), settings.server_id)
        self._known_session = known_session
        self.ports = PortAllocator(
            settings.bind_ip,
            settings.port_min,
            settings.port_max,
            receive_buffer_bytes=settings.ingest.udp_receive_buffer_bytes,
        )
        self._factory: SessionFactory[S] = session_factory or recording_sessions(  # type: ignore[assignment]
            settings, self.ports, self.spool, destination=destination, defer_spool_removal=defer_spool_removal
        )
        self.sessions: dict[str, S] = {}
        self.intake = Intake.OPEN
        # CPU cores each live session was admitted at (RECORDING_CPU_BUDGET's bookkeeping).
        self._costs: dict[str, float] = {}
        # Woken on every status change: wait_idle() parks here.
        self._status_lot = trio.lowlevel.ParkingLot()
        self._enforce_enabled = enforce_enabled
        self._state_listeners: list[Callable[[S], None]] = [on_change] if on_change else []
        self._keyframe_listeners: list[Callable[[S, StreamSpec], None]] = [on_keyframe_request] if on_keyframe_request else []
        # session id -> controller connection -> when it stops counting (trio
        # time; inf for a connection of this node, which detach_connection ends).
        self._controllers: dict[str, dict[str, float]] = {}
        self._nursery: trio.Nursery | None = None

    # -- listeners -------------------------------------------------------------------

    def add_state_listener(self, listener: Callable[[S], None]) -> None:
        self._state_listeners.append(listener)

    def add_keyframe_listener(self, listener: Callable[[S, StreamSpec], None]) -> None:
        self._keyframe_listeners.append(listener)

    @property
    def accepting(self) -> bool:
        """Whether new recordings are taken here (intake OPEN)."""
        return self.intake is Intake.OPEN

    def _changed(self, session: S) -> None:
        if session.status.terminal:
            self._costs.pop(session.session_id, None)
        self._status_lot.unpark_all()
        for listener in self._state_listeners:
            try:
                listener(session)
            except Exception:
                # A broken listener (metrics, a notifier) must not break the
                # session that reported the change.
                log.exception("state listener failed", extra={"sessionId": session.session_id})

    def _keyframe(self, session: S, spec: StreamSpec) -> None:
        for listener in self._keyframe_listeners:
            try:
                listener(session, spec)
            except Exception:
                log.exception("keyframe listener failed", extra={"sessionId": session.session_id})

    # -- life ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery until cancelled (which fails open sessions)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def active(self) -> list[S]:
        return [s for s in self.sessions.values() if not s.status.terminal]

    async def wait_idle(self) -> None:
        """Return once no session is active (the drain's natural end)."""
        while self.active():
            await self._status_lot.park()

    def cost_of(self, session_id: str) -> float:
        """CPU cores the session was admitted at (0 when unknown or ended)."""
        return self._costs.get(session_id, 0.0)

    def cpu_used(self) -> float:
        """CPU cores the live sessions were admitted at."""
        return sum(self._costs.get(s.session_id, 0.0) for s in self.active())

    def default_cost(self) -> float:
        """CPU cores a recording at this node's default output costs."""
        out = self.settings.output
        return session_cost(out.width_px, out.height_px, out.fps, base_cost=self.settings.session_cpu_cost)

    def free_slots(self, ready: bool | None = None) -> int:
        """Recordings at the default output this node could start now, by count and CPU budget; 0 unless ready.

        Args:
            ready: :meth:`readiness`'s verdict when the caller has it (it costs a statvfs).
        """
        if not (self.readiness()[0] if ready is None else ready):
            return 0
        by_count = self.settings.max_sessions - len(self.active())
        by_cpu = math.floor((self.settings.cpu_budget - self.cpu_used()) / self.default_cost() + 1e-9)
        return max(0, min(by_count, by_cpu))

    def total_slots(self) -> int:
        """Recordings at the default output this node holds when idle."""
        return max(0, min(self.settings.max_sessions, math.floor(self.settings.cpu_budget / self.default_cost() + 1e-9)))

    def capacity(self) -> dict[str, Any]:
        """``recorder.info``'s capacity block, also the node's registration in shared state.

        ``activeSessions``/``maxSessions``/``load`` as always; ``ready`` (what
        ``/readyz`` says), ``draining``, ``cpuBudget``/``cpuUsed`` (cores) and
        ``announcedIp`` let another node place a recording here.
        """
        active = len(self.active())
        maximum = self.settings.max_sessions
        ready = self.readiness()[0]
        return {
            "activeSessions": active,
            "maxSessions": maximum,
            "load": round(active / maximum, 3),
            "ready": ready,
            "draining": self.intake is not Intake.OPEN,
            "cpuBudget": round(self.settings.cpu_budget, 3),
            "cpuUsed": round(self.cpu_used(), 3),
            "freeSlots": self.free_slots(ready),
            "announcedIp": self.settings.rtp_address,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this node accepts a new recording now, and why not: ``/readyz``'s one implementation.

        Returns:
            ``(ready, checks)``: each condition (``enabled``, ``accepting``,
            ``capacity``, ``ports``: at least :data:`MIN_FREE_PORTS` free,
            ``disk``: above ``RECORDING_MIN_FREE_DISK_MIB``) to true/false.
            One ``statvfs``, on the caller's thread (a probe's handler is sync).
        """
        checks = {
            "enabled": bool(self.settings.recording_enabled) or not self._enforce_enabled,
            "accepting": self.accepting,
            "capacity": len(self.active()) < self.settings.max_sessions
            and self.cpu_used() + self.default_cost() <= self.settings.cpu_budget + 1e-9,
            "ports": self.ports.capacity - len(self.ports.in_use) >= MIN_FREE_PORTS,
            "disk": self._disk_problem() is None,
        }
        return all(checks.values()), checks

    def _disk_problem(self) -> InsufficientStorageError | None:
        """Why the spool's disk cannot take a new recording, or None.

        One ``statvfs`` call: cheap enough for a readiness probe and a start.
        """
        floor = self.settings.lifecycle.min_free_disk_mib << 20
        if floor <= 0:
            return None
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            return InsufficientStorageError(f"cannot read the free space of RECORDING_TMP_DIR: {exc.strerror or exc}")
        if free >= floor:
            return None
        return InsufficientStorageError(
            f"RECORDING_TMP_DIR has {free >> 20} MiB free, below RECORDING_MIN_FREE_DISK_MIB="
            f"{floor >> 20}; this node starts no recording until space is freed"
        )

    async def start(
        self,
        room_id: str,
        *,
        session_id: str | None = None,
        layout: LayoutName | None = None,
        output: OutputOptions | None = None,
        controller: str | None = None,
        metadata: dict[str, Any] | None = None,
        host_peer_id: str | None = None,
    ) -> S:
        """Start a recording (or return the one with this id) once it is RECORDING.

        Returns:
            The session. A repeated start with the same ``session_id`` returns
            the existing session of this run, whatever its state (idempotent).
            :meth:`start_or_find` also answers for ids known durably.

        Raises:
            RecordingDisabledError, ShuttingDownError, RoomAlreadyRecordingError,
            AtCapacityError, InsufficientStorageError: as their names say;
            nothing was started.
            SpoolError: the id's spool file exists although nothing knows the
            id (the file is left alone).
        """
        if self._nursery is None:
            raise SessionError("the session manager is not running")
        if session_id is not None and session_id in self.sessions:
            existing = self.sessions[session_id]
            if existing.room_id != room_id:
                raise RoomAlreadyRecordingError(existing.room_id, session_id)
            if controller is not None:
                self.attach_controller(session_id, controller)
            return existing
        if self._enforce_enabled and not self.settings.recording_enabled:
            raise RecordingDisabledError("recording is disabled on this node (RECORDING_ENABLED=false)")
        if self.intake is Intake.DRAINING:
            raise ShuttingDownError(
                "the recorder is draining: its recordings run to their end and it starts no new one; use another node"
            )
        if self.intake is Intake.CLOSED:
            raise ShuttingDownError("the recorder is shutting down and starts no new recordings")
        for other in self.active():
            if other.room_id == room_id:
                raise RoomAlreadyRecordingError(room_id, other.session_id)
        active = len(self.active())
        if active >= self.settings.max_sessions:
            raise AtCapacityError(active, self.settings.max_sessions)
        out = output or OutputOptions.from_settings(self.settings)
        cost = session_cost(out.width, out.height, out.fps, base_cost=self.settings.session_cpu_cost)
        used = self.cpu_used()
        if used + cost > self.settings.cpu_budget + 1e-9:
            raise AtCapacityError(active, self.settings.max_sessions, cpu_used=used, cpu_budget=self.settings.cpu_budget)
        # statvfs off the loop: the spool may be on a slow or network disk.
        disk = await trio.to_thread.run_sync(self._disk_problem)
        if disk is not None:
            raise disk
        request = SessionRequest(
            room_id, session_id, layout=layout, output=output, metadata=metadata or {}, host_peer_id=host_peer_id
        )
        session = self._factory(request, on_change=self._changed, on_keyframe=self._keyframe)
        # Registered before the first await, so a concurrent start with the
        # same id finds this one instead of racing it.
        self.sessions[session.session_id] = session
        self._costs[session.session_id] = cost
        try:
            # Exclusive: an existing file is a recording, never written over.
            await trio.to_thread.run_sync(self.spool.create, session.session_id)
        except BaseException:
            del self.sessions[session.session_id]
            self._costs.pop(session.session_id, None)
            raise
        if controller is not None:
            self.attach_controller(session.session_id, controller)
        self._forget_old_sessions()
        await self._nursery.start(self._run_session, session)
        return session

    async def start_or_find(self, room_id: str, *, session_id: str | None = None, **options: Any) -> S | KnownSession:
        """:meth:`start`, unless ``session_id`` names a recording known durably.

        This is ``recording.start``'s idempotency: the in-memory table is lost
        on restart and holds the last few hundred sessions only, so an id is
        also looked up in shared state and the metadata database. A known id
        (finished, on another node, or from before a restart) is answered
        with its record, never a new recording over it.

        Raises:
            RoomAlreadyRecordingError: the id is known for another room.
            Everything :meth:`start` raises.
        """
        if session_id is not None and session_id not in self.sessions:
            known = await self._find_known(session_id)
            if known is not None:
                if known.room_id != room_id:
                    raise RoomAlreadyRecordingError(known.room_id, session_id)
                log.info(
                    "recording.start for a known session: answered with its record",
                    extra={"sessionId": session_id, "status": known.status.value},
                )
                return known
        return await self.start(room_id, session_id=session_id, **options)

    async def _find_known(self, session_id: str) -> KnownSession | None:
        """The durable record of ``session_id``, if any place has one.

        A lookup that fails (Redis or the database down) is logged and taken
        as "unknown": the exclusive spool and the upload's refusal to replace
        an object stay as the last line, so nothing is written over either way.
        """
        if self._known_session is None:
            return None
        try:
            record = await self._known_session(session_id)
        except EdgeRecorderError as exc:
            log.warning("could not look up session %s: %s", session_id, exc, extra={"sessionId": session_id})
            return None
        if record is None:
            return None
        try:
            status = SessionStatus(record.get("status"))
        except ValueError:
            status = SessionStatus.FAILED
        return KnownSession(session_id, str(record.get("roomId", "")), status, record)

    async def _run_session(self, session: S, *, task_status: trio.TaskStatus[None]) -> None:
        """The session and its watchdog, side by side; both end when the session does."""
        try:
            async with trio.open_nursery() as nursery:

                async def supervise(*, task_status: trio.TaskStatus[None]) -> None:
                    try:
                        await session.run(task_status=task_status)
                    finally:
                        nursery.cancel_scope.cancel()  # the watchdog has nothing left to watch

                await nursery.start(supervise)
                nursery.start_soon(self._watch, session)
                task_status.started()
        except Exception:
            # A bug in one session must not end the others.
            log.exception("session crashed", extra={"sessionId": session.session_id})

    async def _watch(self, session: S) -> None:
        """Auto-stop: sample the session and stop it when a rule says so."""
        lifecycle = self.settings.lifecycle
        rules = AutoStopRules(
            room_empty_grace_s=lifecycle.room_empty_grace_s,
            media_timeout_s=lifecycle.media_timeout_s,
            controller_grace_s=lifecycle.controller_grace_s,
            max_duration_s=lifecycle.max_duration_s,
            started_at=trio.current_time(),
        )
        while session.status is SessionStatus.STARTING:
            await trio.sleep(WATCHDOG_INTERVAL_S)
        while session.status is SessionStatus.RECORDING and not session.stopping:
            reason = rules.observe(
                trio.current_time(),
                packets=sum(s.packets for s in session.receiver_stats()),
                streams=len(session.streams),
                controllers=len(self.controllers(session.session_id)),
                paused=session.paused,
            )
            if reason is not None:
                log.info(
                    "Recording auto-stopped",
                    extra={"sessionId": session.session_id, "roomId": session.room_id, "reason": reason},
                )
                await session.stop(reason)
                return
            await trio.sleep(WATCHDOG_INTERVAL_S)

    def _forget_old_sessions(self) -> None:
        ended = [s for s in self.sessions.values() if s.status.terminal]
        for session in ended[: max(0, len(ended) - ENDED_SESSIONS_KEPT)]:
            del self.sessions[session.session_id]
            self._costs.pop(session.session_id, None)
            self._controllers.pop(session.session_id, None)

    # -- lookups ---------------------------------------------------------------------

    def get(self, session_id: str) -> S | None:
        return self.sessions.get(session_id)

    def require(self, session_id: str) -> S:
        """The session with this id.

        Raises:
            UnknownSessionError: there is none.
        """
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownSessionError(f"unknown session {session_id}")
        return session

    def by_room(self, room_id: str) -> S | None:
        """The room's active session, else its most recent one."""
        candidates = [s for s in self.sessions.values() if s.room_id == room_id]
        active = [s for s in candidates if not s.status.terminal]
        chosen = active or candidates
        return chosen[-1] if chosen else None

    # -- controllers -------------------------------------------------------------------

    def attach_controller(self, session_id: str, connection_id: str, *, for_s: float | None = None) -> None:
        """Record that a control connection drives this session.

        Args:
            for_s: a connection of another node (``"<serverId>/<connection>"``,
                its requests forwarded here) counts for this long unless
                touched again: that node may die without saying goodbye.
                None: a connection of this node, until :meth:`detach_connection`.
        """
        until = math.inf if for_s is None else trio.current_time() + for_s
        self._controllers.setdefault(session_id, {})[connection_id] = until

    def detach_connection(self, connection_id: str) -> None:
        """A control connection is gone: it no longer drives any session."""
        for controllers in self._controllers.values():
            controllers.pop(connection_id, None)

    def controllers(self, session_id: str) -> tuple[str, ...]:
        """The connections that drive the session now (remote ones until they expire)."""
        now = trio.current_time()
        return tuple(conn for conn, until in self._controllers.get(session_id, {}).items() if until > now)

    # -- stopping ----------------------------------------------------------------------

    async def stop_all(self, reason: str) -> None:
        """Stop every active session concurrently and wait for all of them."""
        async with trio.open_nursery() as nursery:
            for session in self.active():
                nursery.start_soon(session.stop, reason)
