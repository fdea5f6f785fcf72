"""The control WebSocket's listener and its admission rules.

:func:`serve_control` owns its accept loop (not ``serve_websocket``'s), so
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
``edge_recorder_control_connections_refused_total{reason}`` and logged as one summary line
per minute, never a traceback: that is client misbehaviour, not our fault.
"""

from __future__ import annotations

import enum
import errno
import hmac
import ipaddress
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from edge_recorder.control.server import WEBSOCKET_FRAME_LIMIT, ControlHub
from edge_recorder.metrics import RecorderMetrics

log = logging.getLogger(__name__)


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
