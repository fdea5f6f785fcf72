"""The control plane's Trio shell: WebSocket connections speaking JSON-RPC 2.0.

The parsing, params and error mapping are pure (``control/protocol.py``);
this module only moves frames. One :class:`ControlHub` serves every
connection, listening ones (:func:`serve_control`) and the dial-out one
(:func:`dial_out`) alike:

* a connection asks the :class:`~edge_recorder.session.manager.SessionManager`
  and never owns a session, so a dropped WebSocket ends no recording; the
  connections that drove a session are its controllers (see the manager);
* every reply and notification for a connection goes through its outbox,
  bounded by ``OUTBOX_MESSAGES`` messages and ``OUTBOX_BYTES`` bytes, and one
  writer task, so notifications arrive in order. Policy when an outbox is
  full (either bound; counted in ``control_outbox_overflows_total{limit}``):
  the peer is not reading, and dropping a state notification would leave it
  with a wrong picture, so the send in progress is abandoned, the connection
  closed (1008), and the SFU reconnects and re-reads state with
  ``recording.list``;
* each request runs in its own task (``recording.stop`` waits for the media to
  be finalised; others need not wait behind it), at most
  ``MAX_IN_FLIGHT`` per connection; past that, and past the token bucket, the
  reply is ``RATE_LIMITED`` and nothing runs;
* a bad frame gets an error reply and the connection carries on;
* error replies never carry an absolute path of this node, and neither they
  nor state records carry the media worker's stderr: those are for the
  operator's log, not the SFU.

The listener (:func:`serve_control`) is ours, not ``serve_websocket``'s, so
that anyone who reaches the port cannot exhaust file descriptors before
authenticating (issue #9: 250 idle TCP connections made a ``recording.start``
fail with EMFILE). At accept, before a byte is parsed, :class:`Admission`
refuses (closes at once) a connection past any of:

* ``max_connections`` open in all, ``max_connections_per_ip`` from one
  address (``RECORDING_CONTROL_MAX_CONNECTIONS[_PER_IP]``);
* half of each of those still handshaking ("pending"): a client without the
  token can only ever be pending, so it cannot take the slots of SFUs that
  authenticated;
* the process's free file descriptors falling below a reserve,
  ``max(64, 10 % of RLIMIT_NOFILE)``, kept for the recordings' sockets and files.

A pending connection has ``handshake_timeout_s`` to complete its handshake and
is closed when it passes, or as soon as the peer closes: no socket lingers.
Refusals and failed handshakes are counted in
``control_connections_refused_total{reason}`` and logged as one summary line
per minute, never a traceback: that is client misbehaviour, not our fault.
"""

from __future__ import annotations

import enum
import errno
import hmac
import ipaddress
import itertools
import logging
import os
import random
import resource
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)

from edge_recorder import __version__
from edge_recorder.control import protocol as rpc
from edge_recorder.errors import EdgeRecorderError, SessionNotActiveError, UnknownSessionError, public_message
from edge_recorder.metrics import RecorderMetrics
from edge_recorder.rtp.parameters import recorder_rtp_capabilities
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import OutputOptions, RecordingSession
from edge_recorder.session.stream import StreamSpec

log = logging.getLogger(__name__)

OUTBOX_MESSAGES = 1024
# The outbox is bounded in bytes too: 1024 large `recording.list` replies
# would otherwise hold gigabytes for a peer that stopped reading. One message
# always fits in an empty outbox, whatever its size.
OUTBOX_BYTES = 16 * 1024 * 1024
MAX_IN_FLIGHT = 32
# trio-websocket closes the connection (1009) on frames past its own limit; we
# set it well above MAX_MESSAGE_BYTES so oversized requests get a JSON-RPC
# error reply instead, and only absurd frames cost the connection.
WEBSOCKET_FRAME_LIMIT = 4 * 1024 * 1024


@dataclass(eq=False)
class _Connection:
    id: str
    ws: WebSocketConnection
    # (frame, its UTF-8 size): the size is counted in and out of queued_bytes.
    send: trio.MemorySendChannel[tuple[str, int]]
    receive: trio.MemoryReceiveChannel[tuple[str, int]]
    limiter: rpc.RateLimiter
    in_flight: int = 0
    queued_bytes: int = 0
    # The send in progress: cancelled when the outbox overflows, since a
    # peer that is not reading would hold it (and the socket) forever.
    sending: trio.CancelScope | None = None
    remote: str = ""
    closed: bool = field(default=False)
    # Close code once the outbox is drained: 1008 for a peer that stopped
    # reading, 1001 ("going away") when the service shuts down.
    close_code: int = 1008
    done: trio.Event = field(default_factory=trio.Event)


class ControlHub:
    """Dispatches JSON-RPC requests to the session manager; fans out notifications.

    Args:
        manager: the session manager (owned by the service, not by us).
        settings: the service settings.
        clock: seconds for the rate limiter (Trio's clock by default).
        metrics: counts outbox overflows and listener refusals, if given.
    """

    def __init__(
        self,
        manager: SessionManager,
        settings: Any,
        *,
        clock: Callable[[], float] = trio.current_time,
        state: Any = None,
        store: Any = None,
        metadata: Any = None,
        metrics: RecorderMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics
        # Shared state answers for sessions of other nodes (and ended ones
        # this node forgot); the store presigns asset URLs when enabled.
        self._state = state
        self._store = store
        # The metadata database answers for sessions no live store knows (an
        # ended session after a restart, with no Redis configured).
        self._metadata = metadata
        self._clock = clock
        self.connections: dict[str, _Connection] = {}
        self._ids = itertools.count(1)
        manager.add_state_listener(self._on_state)
        manager.add_keyframe_listener(self._on_keyframe_request)

    # -- notifications (called synchronously, in order, from the sessions) -----------

    def _on_state(self, session: RecordingSession) -> None:
        self.broadcast(rpc.state_notification(public_record(session.state_record())))

    def _on_keyframe_request(self, session: RecordingSession, spec: StreamSpec) -> None:
        self.broadcast(rpc.keyframe_request_notification(session.session_id, spec.producer_id))

    def broadcast(self, message: str) -> None:
        """Queue one notification for every connection, in order."""
        for conn in list(self.connections.values()):
            self._queue(conn, message)

    def _queue(self, conn: _Connection, message: str) -> None:
        if conn.closed:
            return
        size = len(message.encode())
        try:
            if conn.queued_bytes and conn.queued_bytes + size > OUTBOX_BYTES:
                self._overflow(conn, "bytes")
                return
            conn.send.send_nowait((message, size))
            conn.queued_bytes += size
        except trio.WouldBlock:
            self._overflow(conn, "messages")
        except trio.ClosedResourceError:
            conn.closed = True

    def _overflow(self, conn: _Connection, limit: str) -> None:
        # The peer is not reading; see the module docstring for why we close
        # rather than drop.
        log.warning(
            "control connection not reading; closing it",
            extra={"connection": conn.id, "limit": limit, "queuedBytes": conn.queued_bytes},
        )
        if self.metrics is not None:
            self.metrics.control_outbox_overflow(limit)
        conn.closed = True
        conn.send.close()
        if conn.sending is not None:
            conn.sending.cancel()

    async def close_all(self) -> None:
        """Shutdown: deliver what is queued (the final state notifications), then
        close every connection with 1001. Bounded by the caller's deadline."""
        conns = list(self.connections.values())
        for conn in conns:
            conn.close_code = 1001
            conn.closed = True
            conn.send.close()
        for conn in conns:
            await conn.done.wait()

    # -- connections ---------------------------------------------------------------------

    async def serve_connection(self, ws: WebSocketConnection, *, remote: str = "") -> None:
        """Serve one connection until it closes. Never raises for the peer's sake."""
        send, receive = trio.open_memory_channel[tuple[str, int]](OUTBOX_MESSAGES)
        limiter = rpc.RateLimiter(rate_per_s=self.settings.control.rate_limit_per_s, burst=2 * self.settings.control.rate_limit_per_s)
        conn = _Connection(f"c{next(self._ids)}", ws, send, receive, limiter, remote=remote)
        self.connections[conn.id] = conn
        log.info("Control connection opened", extra={"connection": conn.id, "remote": remote})
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, conn, nursery.cancel_scope)
                await self._read_loop(conn, nursery)
                nursery.cancel_scope.cancel()
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.done.set()
            self.connections.pop(conn.id, None)
            # The sessions it drove carry on; the manager's watchdog ends them
            # only if no controller comes back within the grace period.
            self.manager.detach_connection(conn.id)
            log.info("Control connection closed", extra={"connection": conn.id})

    async def _write_loop(self, conn: _Connection, scope: trio.CancelScope) -> None:
        async with conn.receive:
            async for message, size in conn.receive:
                conn.queued_bytes -= size
                with trio.CancelScope() as conn.sending:
                    try:
                        await conn.ws.send_message(message)
                    except ConnectionClosed:
                        break
                if conn.sending.cancelled_caught:
                    break  # the outbox overflowed: what is queued is not sent
        # The outbox was closed (peer not reading, or shutdown after the last
        # notification) or the socket died.
        with trio.move_on_after(2, shield=True):
            await conn.ws.aclose(code=conn.close_code, reason="going away" if conn.close_code == 1001 else "not reading")
        scope.cancel()

    async def _read_loop(self, conn: _Connection, nursery: trio.Nursery) -> None:
        while True:
            try:
                frame = await conn.ws.get_message()
            except ConnectionClosed:
                return
            try:
                message = rpc.parse_message_untrusted(frame)
            except rpc.JsonRpcError as exc:
                self._queue(conn, rpc.error_message(exc.id, exc.code, public_message(exc.message), exc.data))
                continue
            if not isinstance(message, rpc.Request):
                continue  # notifications and responses from the peer need no answer
            if not conn.limiter.allow(self._clock()) or conn.in_flight >= MAX_IN_FLIGHT:
                err = rpc.rate_limited_error(message.id, rate_per_s=conn.limiter.rate_per_s, burst=conn.limiter.burst)
                self._queue(conn, rpc.error_message(err.id, err.code, err.message, err.data))
                continue
            conn.in_flight += 1
            nursery.start_soon(self._answer, conn, message)

    async def _answer(self, conn: _Connection, request: rpc.Request) -> None:
        try:
            result = await self.dispatch(conn.id, request)
            reply = rpc.result_message(request.id, result)
        except EdgeRecorderError as exc:
            err = rpc.error_from_exception(exc, request.id)
            if err.code == rpc.ErrorCode.INTERNAL_ERROR:
                log.exception("control request failed", extra={"method": request.method, "connection": conn.id})
            public = public_message(err.message)
            if public != err.message and err.code != rpc.ErrorCode.INTERNAL_ERROR:
                # What the SFU was not told, for the operator.
                log.info("control request refused: %s", err.message, extra={"method": request.method, "connection": conn.id})
            reply = rpc.error_message(err.id, err.code, public, err.data)
        except Exception:
            log.exception("control request failed", extra={"method": request.method, "connection": conn.id})
            reply = rpc.error_message(request.id, rpc.ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            conn.in_flight -= 1
        self._queue(conn, reply)

    # -- methods ---------------------------------------------------------------------------

    async def dispatch(self, connection_id: str, request: rpc.Request) -> Any:
        """Run one request; returns its result or raises one of our errors."""
        params = rpc.parse_request_params(request.method, request.params, request.id)
        if isinstance(params, rpc.InfoParams):
            return {
                "serverId": self.settings.server_id,
                "version": __version__,
                "rtpCapabilities": recorder_rtp_capabilities(),
                "capacity": self.manager.capacity(),
            }
        if isinstance(params, rpc.StartParams):
            session = await self.manager.start_or_find(
                params.room_id,
                session_id=params.session_id,
                layout=params.layout,
                output=self._output(params.output),
                controller=connection_id,
                metadata=params.metadata,
                host_peer_id=params.host_peer_id,
            )
            return {"sessionId": session.session_id, "status": session.status.value}
        if isinstance(params, rpc.ListParams):
            records = {s.session_id: s.state_record() for s in self.manager.sessions.values()}
            if self._state is not None:
                for record in await self._state.list(500):
                    records.setdefault(record["sessionId"], record)
            return {"sessions": [public_record(r) for r in records.values()]}
        if isinstance(params, rpc.GetParams):
            found = (
                self.manager.get(params.session_id) if params.session_id is not None else self.manager.by_room(params.room_id or "")
            )
            record = found.state_record() if found is not None else None
            if record is None and self._state is not None:
                record = (
                    await self._state.get(params.session_id)
                    if params.session_id is not None
                    else await self._state.by_room(params.room_id or "")
                )
            if record is None and self._metadata is not None and params.session_id is not None:
                from edge_recorder.recovery import record_from_row

                row = await self._metadata.get_session(params.session_id)
                record = record_from_row(row, with_asset=True) if row is not None else None
            if record is None:
                raise UnknownSessionError(f"unknown session {params.session_id or 'for room ' + str(params.room_id)}")
            return await self._with_presigned_url(public_record(record))
        session = self.manager.require(params.session_id)
        if isinstance(params, rpc.StopParams):
            await session.stop(params.reason)
            return {"sessionId": session.session_id, "status": session.status.value}
        if session.stopping or session.status.terminal:
            raise SessionNotActiveError(f"session {session.session_id} is {session.status.value}{' and stopping' if session.stopping else ''}")
        self.manager.attach_controller(session.session_id, connection_id)
        if isinstance(params, rpc.AddStreamParams):
            return await session.add_stream(params.spec)
        if isinstance(params, rpc.RemoveStreamParams):
            await session.remove_stream(params.producer_id)
            return {}
        if isinstance(params, rpc.SetActiveSpeakerParams):
            await session.set_active_speaker(params.peer_id)
            return {}
        raise AssertionError(f"unhandled params {type(params).__name__}")

    async def _with_presigned_url(self, record: dict[str, Any]) -> dict[str, Any]:
        asset = record.get("asset")
        if self._store is None or not self.settings.s3.presign_in_state or not asset or not asset.get("key"):
            return record
        url = await self._store.presign(asset["key"], self.settings.s3.presign_expiry_s)
        return {**record, "asset": {**asset, "url": url}}

    def _output(self, output: rpc.OutputParams | None) -> OutputOptions | None:
        if output is None:
            return None
        base = OutputOptions.from_settings(self.settings)
        return OutputOptions(
            width=output.width or base.width,
            height=output.height or base.height,
            fps=output.fps or base.fps,
            video_bitrate_kbps=(output.video_bitrate // 1000) if output.video_bitrate else base.video_bitrate_kbps,
            audio_bitrate_kbps=(output.audio_bitrate // 1000) if output.audio_bitrate else base.audio_bitrate_kbps,
            x264_preset=base.x264_preset,
            keyframe_interval_s=base.keyframe_interval_s,
            x264_threads=base.x264_threads,
        )


# -- what the SFU may see -------------------------------------------------------------

def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A state record as the SFU gets it: ``error`` without node paths or worker stderr.

    Records from this node's sessions already are; ones read back from the
    metadata database carry the operator's text, which stays in the log and
    the database (``retry-upload`` finds the spool by its session id).
    """
    error = record.get("error")
    if isinstance(error, str):
        public = public_message(error)
        if public != error:
            return {**record, "error": public}
    return record


# -- the listener --------------------------------------------------------------------


class Phase(enum.Enum):
    """Where one accepted control connection is, for :class:`Admission`."""

    # Accepted; the WebSocket handshake (and the token check) is not done.
    PENDING = "pending"
    # Handshake accepted: an authenticated SFU speaking JSON-RPC.
    ESTABLISHED = "established"
    # Handshake refused, timed out or broken, and counted as such; the socket
    # still holds its pending slot until it is closed.
    REFUSED = "refused"


def next_phase(current: Phase, new: Phase) -> Phase:
    """The one legal move out of PENDING; anything else is a bug of ours.

    Raises:
        ValueError: ``current`` is not PENDING, or ``new`` is.
    """
    if current is not Phase.PENDING or new is Phase.PENDING:
        raise ValueError(f"a control connection cannot go from {current.value} to {new.value}")
    return new


@dataclass(frozen=True)
class ListenerLimits:
    """The caps :class:`Admission` enforces; see the module docstring."""

    max_connections: int
    max_per_ip: int
    max_pending: int
    max_pending_per_ip: int

    @classmethod
    def from_settings(cls, control: Any) -> ListenerLimits:
        return cls(
            max_connections=control.max_connections,
            max_per_ip=control.max_connections_per_ip,
            max_pending=max(1, control.max_connections // 2),
            max_pending_per_ip=max(1, control.max_connections_per_ip // 2),
        )


def source_key(ip: str) -> str:
    """The "one address" the per-address caps count: an IPv4 address, or an IPv6 /64.

    An IPv6 host is usually handed a whole /64, so counting single addresses
    would give it billions of shares; an IPv4-mapped address counts as its IPv4.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def fd_reserve(limit: int) -> int:
    """File descriptors kept free for recordings under an ``RLIMIT_NOFILE`` of ``limit``."""
    return max(64, limit // 10)


def free_fds() -> int | None:
    """File descriptors this process may still open, or None when that cannot be read."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
    return soft - in_use


def _fd_headroom_ok() -> bool:
    free = free_fds()
    if free is None:
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return free >= fd_reserve(soft)


class Admission:
    """Which control connections may open, counted per phase and source address.

    Pure bookkeeping (no I/O but the injected descriptor check): the accept
    loop asks :meth:`admit` before anything is read, reports the handshake's
    end with :meth:`established`, and :meth:`release` when the socket closes.

    Args:
        limits: the caps.
        fd_headroom_ok: whether the process may spend one more descriptor on a
            control connection (``max(64, 10 %)`` of ``RLIMIT_NOFILE`` free by default).
    """

    def __init__(self, limits: ListenerLimits, fd_headroom_ok: Callable[[], bool] = _fd_headroom_ok) -> None:
        self.limits = limits
        self._fd_headroom_ok = fd_headroom_ok
        self.open = 0
        self.pending = 0
        self._open_by_ip: dict[str, int] = {}
        self._pending_by_ip: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip`` in as pending, or return why it is refused."""
        lim = self.limits
        if self.open >= lim.max_connections:
            return "max_connections"
        if self._open_by_ip.get(ip, 0) >= lim.max_per_ip:
            return "max_connections_per_ip"
        if self.pending >= lim.max_pending:
            return "max_pending"
        if self._pending_by_ip.get(ip, 0) >= lim.max_pending_per_ip:
            return "max_pending_per_ip"
        if not self._fd_headroom_ok():
            return "fd_reserve"
        self.open += 1
        self.pending += 1
        _bump(self._open_by_ip, ip, 1)
        _bump(self._pending_by_ip, ip, 1)
        return None

    def established(self, ip: str) -> None:
        """The connection from ``ip`` completed its handshake: it is no longer pending."""
        self.pending -= 1
        _bump(self._pending_by_ip, ip, -1)

    def release(self, ip: str, phase: Phase) -> None:
        """The connection from ``ip`` closed in ``phase``."""
        if phase is not Phase.ESTABLISHED:
            self.established(ip)
        self.open -= 1
        _bump(self._open_by_ip, ip, -1)


def _bump(counts: dict[str, int], key: str, by: int) -> None:
    n = counts.get(key, 0) + by
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


REFUSAL_LOG_INTERVAL_S = 60.0


class RefusalLog:
    """Counts refusals by reason; logs one summary line at most every ``interval_s``.

    Pure: the caller passes the time. A flood of refusals costs one counter
    increment each and a log line a minute.
    """

    def __init__(self, metrics: RecorderMetrics | None, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._unlogged: dict[str, int] = {}
        self._last: float | None = None

    def note(self, reason: str, now: float) -> None:
        if self._metrics is not None:
            self._metrics.control_connection_refused(reason)
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        if self._last is None or now - self._last >= self._interval_s:
            self._last = now
            summary = ", ".join(f"{n} {why}" for why, n in sorted(self._unlogged.items()))
            log.warning("Control connections refused or failed their handshake: %s", summary, extra={"refused": dict(self._unlogged)})
            self._unlogged.clear()


class _HandshakeStream(trio.abc.Stream):
    """The accepted socket as trio-websocket sees it, telling us when the peer is gone.

    trio-websocket waits for the upgrade request until its caller gives up,
    even after the peer closed or its request was malformed (the library then
    closes the stream itself): cancelling ``gone`` ends that wait at once, so
    a closed socket is released now and not at the handshake deadline.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.gone = trio.CancelScope()
        self.ended: str | None = None  # "peer_closed" or "bad_handshake", once known

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        self.gone.cancel()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end("peer_closed")
            raise
        if not data:
            self._end("peer_closed")
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end("peer_closed")
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        self._end("bad_handshake")  # trio-websocket closes the stream on a malformed request
        await self.stream.aclose()


# The peer's misbehaviour (resets, closes mid-handshake): counted, no traceback.
_PEER_ERRORS = (ConnectionClosed, HandshakeError, trio.BrokenResourceError, trio.ClosedResourceError)
_ACCEPT_BACKOFF_S = 0.1  # after EMFILE and friends, as trio.serve_listeners does
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CLOSE_TIMEOUT_S = 1.0


def _authorized(request: WebSocketRequest, token: str | None) -> bool:
    if token is None:
        return True
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, presented = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
                return True
    return False


@dataclass(frozen=True)
class _Listener:
    """What every connection of one :func:`serve_control` shares."""

    hub: ControlHub
    admission: Admission
    refusals: RefusalLog
    path: str
    token: str | None
    handshake_timeout_s: float


async def serve_control(
    hub: ControlHub,
    *,
    admission: Admission | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen for SFU connections until cancelled; reports the bound (host, port).

    A handshake on another path gets 404; with a token configured, one without
    ``Authorization: Bearer <token>`` gets 401 before any message is read.
    Connections past the caps are closed at accept (see the module docstring).

    Args:
        hub: serves the connections; its settings give the address and caps.
        admission: the caps' bookkeeping (tests inject one); from
            ``hub.settings.control`` when None.

    Raises:
        OSError: the address cannot be bound (before ``task_status.started``).

    On cancellation every connection and the listening socket are closed.
    """
    control = hub.settings.control
    shared = _Listener(
        hub=hub,
        admission=admission if admission is not None else Admission(ListenerLimits.from_settings(control)),
        refusals=RefusalLog(hub.metrics),
        path=control.path,
        token=control.token.reveal() if control.token is not None else None,
        handshake_timeout_s=control.handshake_timeout_s,
    )
    listeners = await trio.open_tcp_listeners(control.port, host=control.host)
    if control.port == 0 and len(listeners) > 1:
        for extra in listeners[1:]:  # each would get a different ephemeral port; serve one
            await extra.aclose()
        listeners = listeners[:1]
    port = int(listeners[0].socket.getsockname()[1])
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, nursery, shared)
            log.info("Control WebSocket listening", extra={"host": control.host, "port": port, "path": control.path})
            task_status.started((control.host, port))
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
            for listener in listeners:
                await listener.aclose()


async def _accept_loop(listener: trio.SocketListener, nursery: trio.Nursery, shared: _Listener) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            shared.refusals.note("accept_" + errno.errorcode.get(exc.errno or 0, "error").lower(), trio.current_time())
            await trio.sleep(_ACCEPT_BACKOFF_S)
            continue
        try:
            peer = stream.socket.getpeername()
        except OSError:
            peer = None  # reset before we got to it
        if not isinstance(peer, tuple):
            shared.refusals.note("peer_closed", trio.current_time())
            await _close(stream)
            continue
        ip, remote = source_key(str(peer[0])), _format_peer(peer)
        refused = shared.admission.admit(ip)
        if refused is not None:
            shared.refusals.note(refused, trio.current_time())
            await _close(stream)
            continue
        nursery.start_soon(_connection, stream, ip, remote, shared)


def _format_peer(peer: tuple[Any, ...]) -> str:
    host, port = str(peer[0]), peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _close(stream: trio.abc.AsyncResource) -> None:
    """Close a socket, bounded and shielded; safe to call twice."""
    with trio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
        await stream.aclose()


async def _connection(stream: trio.SocketStream, ip: str, remote: str, shared: _Listener) -> None:
    """One accepted connection: handshake within the deadline, then the hub serves it.

    Never raises: the peer's misbehaviour is counted, a bug of ours logged.
    The socket is closed (and its slot released) whatever happens.
    """
    phase = Phase.PENDING
    try:
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task
            ws = await _handshake(stream, nursery, shared)
            if ws is None:
                phase = next_phase(phase, Phase.REFUSED)
            else:
                phase = next_phase(phase, Phase.ESTABLISHED)
                shared.admission.established(ip)
                await shared.hub.serve_connection(ws, remote=remote)
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
            nursery.cancel_scope.cancel()
    except* _PEER_ERRORS:
        if phase is Phase.PENDING:
            shared.refusals.note("peer_error", trio.current_time())
    except* Exception:
        log.exception("Control connection failed", extra={"remote": remote})
    finally:
        shared.admission.release(ip, phase)
        await _close(stream)


async def _handshake(stream: trio.SocketStream, nursery: trio.Nursery, shared: _Listener) -> WebSocketConnection | None:
    """The WebSocket opening handshake, bounded by ``handshake_timeout_s``.

    Returns:
        The connection, or None when it was refused (404, 401), timed out,
        was malformed or the peer left; each counted with its reason.
    """
    watched = _HandshakeStream(stream)
    refused: str | None = None
    with trio.move_on_after(shared.handshake_timeout_s) as deadline:
        with watched.gone:
            request = await wrap_server_stream(nursery, watched, max_message_size=WEBSOCKET_FRAME_LIMIT)
            if request.path.split("?", 1)[0] != shared.path:
                refused = "wrong_path"
                await request.reject(404, body=b"unknown path\n")
            elif not _authorized(request, shared.token):
                refused = "unauthorized"
                await request.reject(401, extra_headers=[(b"WWW-Authenticate", b"Bearer")], body=b"unauthorized\n")
            else:
                return await request.accept()
    if refused is None:
        refused = "handshake_timeout" if deadline.cancelled_caught else (watched.ended or "peer_closed")
    shared.refusals.note(refused, trio.current_time())
    return None


async def dial_out(hub: ControlHub, url: str) -> None:
    """Keep one connection to an SFU open, reconnecting with jittered backoff.

    The recorder is still the JSON-RPC server on this connection. Backoff grows
    0.5 s → 30 s, with full jitter, and resets after a connection that stayed
    up for 30 s. Runs until cancelled.
    """
    token = hub.settings.control.token
    headers = [(b"Authorization", f"Bearer {token.reveal()}".encode())] if token is not None else []
    delay = 0.5
    while True:
        began = trio.current_time()
        try:
            await _dial_once(hub, url, headers)
        except Exception as exc:  # noqa: BLE001 - refused, reset, handshake failed: keep dialling
            log.warning("Dial-out connection failed: %s", type(exc).__name__, extra={"url": url})
        if trio.current_time() - began > 30:
            delay = 0.5
        await trio.sleep(random.uniform(0, delay))
        delay = min(30.0, delay * 2)


async def _dial_once(hub: ControlHub, url: str, headers: list[tuple[bytes, bytes]]) -> None:
    """One dial-out connection, from TCP connect to close.

    We open and close the TCP stream ourselves: when the peer closes the
    WebSocket, trio-websocket's client waits for a TCP close it then never
    performs, which would leave the socket to the garbage collector. The
    connect and the handshake each get ``handshake_timeout_s``.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timeout_s = hub.settings.control.handshake_timeout_s
    with trio.fail_after(timeout_s):
        tcp = await trio.open_tcp_stream(host, port)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    if parts.scheme == "wss":
        stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host, https_compatible=True)
    async with stream:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout_s):
                ws = await wrap_client_stream(
                    nursery, stream, host, target, extra_headers=headers, max_message_size=WEBSOCKET_FRAME_LIMIT
                )
            log.info("Dialled out to SFU", extra={"url": url})
            await hub.serve_connection(ws, remote=url)
            await ws.aclose()
            nursery.cancel_scope.cancel()


def _is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def dial_url_warning(url: str, token_set: bool) -> str | None:
    """Why dialling ``url`` would expose the control token, or None.

    A ``ws://`` (not ``wss://``) URL to a host that is not loopback sends the
    bearer token in the clear to anyone on the path.
    """
    parts = urllib.parse.urlsplit(url)
    if not token_set or parts.scheme != "ws" or _is_loopback_host(parts.hostname or ""):
        return None
    return (
        f"RECORDING_CONTROL_DIAL_URL is ws:// to {parts.hostname}, not loopback: RECORDING_CONTROL_TOKEN "
        "is sent unencrypted and anyone on the path can read it and drive this recorder; use wss://"
    )
