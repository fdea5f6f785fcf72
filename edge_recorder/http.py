"""A small HTTP/1.1 server for ``/metrics``, ``/healthz`` and ``/readyz``.

h11 does the protocol (sans-IO); this module is the thin Trio loop around it.
It serves a fixed table of routes, each a plain synchronous callable returning
``(status, body, content type)``: enough for probes and a Prometheus scrape,
without a web framework in a media server.

Shape (every task has a parent you can name)::

    serve_http            (nursery owned by the server, started with nursery.start)
    ├── _accept_loop      one per listening socket
    └── _serve_connection one per accepted connection, at most ``max_connections``

Limits, so a misbehaving client cannot hold the server (issue #9: 64 slow
clients once blocked ``/healthz`` for 30 s per wave):

* a request (its head, and any body) must arrive within
  ``request_timeout_s`` of the connection's accept, or on a kept-alive
  connection of the next request's first byte; a slowloris client that sends a
  partial head, or a body that never ends, and stalls is cut off then, not at
  the idle timeout;
* a whole request, and a whole response, within ``idle_timeout_s``, which is
  also how long an idle keep-alive connection stays open;
* request heads are capped at about 16 KiB (431) and bodies at 64 KiB (413);
* past ``max_connections`` open connections, or ``max_connections_per_ip``
  from one address (a quarter of ``max_connections`` by default, so slow
  clients from one address cannot take every slot), new connections are closed
  at once, before anything is read. Refusals and head timeouts are counted in
  ``edge_recorder_http_connections_refused_total{reason}`` and logged as one summary line
  per minute, never per connection.

An error on one connection closes that connection only.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import trio

from edge_recorder.metrics import RecorderMetrics

__all__ = [
    "Route",
    "health_routes",
    "serve_http",
]

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, bytes, str]]
"""A handler: returns (status code, body, content type)."""

IDLE_TIMEOUT_S = 30.0  # per connection: a whole request, a whole response, or idle keep-alive
REQUEST_TIMEOUT_S = 5.0  # a request head, from accept (or the next request's first byte)
MAX_CONNECTIONS = 64  # concurrent connections; more are closed on accept
PER_IP_SHARE = 4  # one address may hold at most 1/PER_IP_SHARE of MAX_CONNECTIONS
MAX_HEAD_BYTES = 16 * 1024  # request line + headers (h11 checks an incomplete head, so
# a head that completes within the same read may reach MAX_HEAD_BYTES + RECEIVE_CHUNK_BYTES)
MAX_BODY_BYTES = 64 * 1024  # probes and scrapes send none; read and discard up to this
RECEIVE_CHUNK_BYTES = 4 * 1024
CLOSE_TIMEOUT_S = 1.0  # bound on closing a socket in cleanup
LINGER_S = 1.0  # after an error response, how long to drain what the client still sends
LINGER_MAX_BYTES = 256 * 1024
_ACCEPT_BACKOFF_S = 0.1  # after EMFILE and friends, as trio.serve_listeners does
_REJECT_LOG_INTERVAL_S = 60.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_ALLOWED_METHODS = (b"GET", b"HEAD")


class _Limits:
    """Connection bookkeeping shared by the accept loops of one server.

    Pure (the caller passes the time): which connection may open, and a
    summary of refusals at most once per ``_REJECT_LOG_INTERVAL_S``.
    """

    def __init__(self, max_connections: int, max_per_ip: int, metrics: RecorderMetrics | None) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.open = 0
        self.by_ip: dict[str, int] = {}
        self.rejected = 0
        self._metrics = metrics
        self._unlogged: dict[str, int] = {}
        self._last_reject_log: float | None = None

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip`` in, or return why it is refused."""
        if self.open >= self.max_connections:
            return "max_connections"
        if self.by_ip.get(ip, 0) >= self.max_per_ip:
            return "max_connections_per_ip"
        self.open += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.open -= 1
        left = self.by_ip.get(ip, 0) - 1
        if left > 0:
            self.by_ip[ip] = left
        else:
            self.by_ip.pop(ip, None)

    def note_refused(self, reason: str, now: float) -> None:
        """Count a refused connection or a head timeout; log a summary now and then."""
        self.rejected += 1
        if self._metrics is not None:
            self._metrics.http_connection_refused(reason)
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        if self._last_reject_log is None or now - self._last_reject_log >= _REJECT_LOG_INTERVAL_S:
            self._last_reject_log = now
            log.warning(
                "HTTP connections refused or cut off: %s",
                ", ".join(f"{n} {why}" for why, n in sorted(self._unlogged.items())),
                extra={"maxConnections": self.max_connections, "maxConnectionsPerIp": self.max_per_ip, "refused": self.rejected},
            )
            self._unlogged.clear()


async def serve_http(
    host: str,
    port: int,
    routes: Mapping[str, Route],
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    max_connections_per_ip: int | None = None,
    metrics: RecorderMetrics | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` over HTTP/1.1 until cancelled.

    Start it with ``await nursery.start(serve_http, host, port, routes)``,
    which returns the bound ``(host, port)``.

    Args:
        host: the address to listen on (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``).
        port: the TCP port; 0 picks a free one (reported through ``task_status``).
        routes: path → handler. Handlers run on the Trio thread for GET and
            HEAD (HEAD sends the headers only); other methods get 405, unknown
            paths 404, malformed requests 400, a handler that raises 500.
            The query string is ignored for routing.
        idle_timeout_s: per connection, the time allowed to receive a whole
            request (or to wait for the next one on a kept-alive connection)
            and to send a whole response; past it the connection is closed.
        request_timeout_s: the time allowed for a request (head and any
            body), from the accept, or on a kept-alive connection from
            the first byte of the next request; past it the connection is
            closed without an answer (``RECORDING_METRICS_REQUEST_TIMEOUT_S``).
        max_connections: connections served at once; more are closed as soon
            as they are accepted (``RECORDING_METRICS_MAX_CONNECTIONS``).
        max_connections_per_ip: connections served at once for one source
            address; a quarter of ``max_connections`` (at least 1) when None.
        metrics: counts refusals (``edge_recorder_http_connections_refused_total``), if given.
        task_status: reports the bound ``(host, port)``.

    Raises:
        OSError: the address cannot be bound (before ``task_status.started``).

    On cancellation every connection is closed (each close bounded by
    ``CLOSE_TIMEOUT_S``) and the listening sockets are closed; nothing is left
    running.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        # Each listener would get a different ephemeral port; serve one.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    per_ip = max_connections_per_ip if max_connections_per_ip is not None else max(1, max_connections // PER_IP_SHARE)
    limits = _Limits(max_connections, per_ip, metrics)
    timeouts = _Timeouts(idle_s=idle_timeout_s, head_s=request_timeout_s)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, nursery, routes, limits, timeouts)
            log.info("HTTP server listening", extra={"host": bound_host, "port": bound_port})
            task_status.started((str(bound_host), int(bound_port)))
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            for listener in listeners:
                await listener.aclose()


@dataclass(frozen=True)
class _Timeouts:
    idle_s: float  # a whole request or response; an idle keep-alive connection
    head_s: float  # a request (head and body), from accept or from the next request's first byte


class _HeadTimeout(Exception):
    """A request (head and body) did not arrive within ``request_timeout_s``."""


def _peer_ip(stream: trio.SocketStream) -> str:
    """The "one address" of the per-address cap: the IPv4 address, or the IPv6 /64."""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "?"  # already reset by the peer; it will fail on the first read
    host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        # A host is usually handed a whole /64; a mapped IPv4 counts as itself.
        return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(ipaddress.IPv6Network((addr, 64), strict=False))
    return host


async def _accept_loop(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    routes: Mapping[str, Route],
    limits: _Limits,
    timeouts: _Timeouts,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            log.error("HTTP server cannot accept: %s; retrying", errno.errorcode.get(exc.errno or 0, exc))
            await trio.sleep(_ACCEPT_BACKOFF_S)
            continue
        ip = _peer_ip(stream)
        refused = limits.admit(ip)
        if refused is not None:
            limits.note_refused(refused, trio.current_time())
            await _close(stream)
            continue
        nursery.start_soon(_connection_task, stream, ip, routes, limits, timeouts)


async def _connection_task(
    stream: trio.SocketStream, ip: str, routes: Mapping[str, Route], limits: _Limits, timeouts: _Timeouts
) -> None:
    try:
        await _serve_connection(stream, routes, timeouts)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away; nothing to tell anyone
    except _HeadTimeout:
        limits.note_refused("request_timeout", trio.current_time())
    except Exception:  # noqa: BLE001 - one connection's bug must not stop the server
        log.exception("HTTP connection failed")
    finally:
        limits.release(ip)
        await _close(stream)


async def _close(stream: trio.SocketStream) -> None:
    """Close a connection, bounded and shielded; safe to call twice."""
    with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        await stream.aclose()


class _Closed(Exception):
    """The connection is done: EOF, a timeout, or a response that ends it."""


async def _serve_connection(stream: trio.SocketStream, routes: Mapping[str, Route], timeouts: _Timeouts) -> None:
    """Serve requests on one connection until it closes.

    Raises:
        _HeadTimeout: a request was not complete within ``timeouts.head_s``.
    """
    idle_timeout_s = timeouts.idle_s
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    kept_alive = False
    while True:
        try:
            with trio.fail_after(idle_timeout_s):
                if kept_alive:
                    await _await_next_request(conn, stream)
                # The request's own deadline runs from the accept, or from the
                # first byte of a kept-alive connection's next request, and
                # covers a body too: probes and scrapes send none, and a
                # chunked one that never ends held the slot for the whole
                # connection timeout.
                with trio.move_on_after(timeouts.head_s) as head:
                    request = await _read_head(conn, stream)
                    names = {name for name, _ in request.headers}
                    if b"transfer-encoding" in names and b"content-length" in names:
                        # RFC 9112 §6.1: ambiguous framing (the shape of request
                        # smuggling); refused at once, the connection closed.
                        raise h11.RemoteProtocolError("both Transfer-Encoding and Content-Length", error_status_hint=400)
                    body_too_large = await _discard_body(conn, stream)
                if head.cancelled_caught:
                    raise _HeadTimeout
        except (_Closed, trio.TooSlowError):
            return
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint if 400 <= exc.error_status_hint < 600 else 400
                with trio.move_on_after(idle_timeout_s):
                    await _send(conn, stream, status, _json({"error": str(exc)}), _JSON, head_only=False, close=True)
                    await _linger(stream)
            return

        if body_too_large:
            status, body, content_type = 413, _json({"error": "request body too large"}), _JSON
        else:
            status, body, content_type = _dispatch(request, routes)
        keep_alive = not body_too_large and conn.their_state is h11.DONE
        with trio.move_on_after(idle_timeout_s) as sending:
            await _send(
                conn,
                stream,
                status,
                body,
                content_type,
                head_only=request.method == b"HEAD",
                close=not keep_alive,
                allow=status == 405,
            )
        if sending.cancelled_caught:
            return
        if body_too_large:
            await _linger(stream)
            return
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return  # either side asked to close (Connection: close, HTTP/1.0)
        kept_alive = True


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then drain for a moment so the client reads our error.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the response before the client reads it (RFC 9112 §9.6).
    Bounded by ``LINGER_S`` and ``LINGER_MAX_BYTES``.
    """
    with trio.move_on_after(LINGER_S):
        try:
            await stream.send_eof()
            drained = 0
            while drained < LINGER_MAX_BYTES:
                data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                if not data:
                    return
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def _await_next_request(conn: h11.Connection, stream: trio.SocketStream) -> None:
    """The keep-alive idle wait: until the next request's first byte (or EOF).

    Returns at once when a pipelined request is already buffered.
    """
    buffered, closed = conn.trailing_data
    if not buffered and not closed:
        conn.receive_data(await stream.receive_some(RECEIVE_CHUNK_BYTES))


async def _read_head(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request:
    """Read one request head (the request line and headers).

    Raises:
        _Closed: the peer closed before a complete head.
        h11.RemoteProtocolError: the bytes are not HTTP/1.1.
    """
    event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed):
        raise _Closed
    if not isinstance(event, h11.Request):  # h11 yields a Request first, or raises
        raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", error_status_hint=400)
    return event


async def _discard_body(conn: h11.Connection, stream: trio.SocketStream) -> bool:
    """Read and discard the body of the request whose head was read.

    Returns:
        Whether the body went over ``MAX_BODY_BYTES``; if it did, the rest is
        not read and the connection must close.

    Raises:
        _Closed: the peer closed in the middle of the body.
        h11.RemoteProtocolError: the bytes are not HTTP/1.1.
    """
    body_bytes = 0
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.EndOfMessage):
            return False
        if isinstance(event, h11.Data):
            body_bytes += len(event.data)
            if body_bytes > MAX_BODY_BYTES:
                return True
            continue
        raise _Closed  # ConnectionClosed in the middle of a body


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
        conn.receive_data(data)  # b"" is EOF; h11 turns it into ConnectionClosed or an error


def _dispatch(request: h11.Request, routes: Mapping[str, Route]) -> tuple[int, bytes, str]:
    target = request.target.split(b"?", 1)[0]
    try:
        path = target.decode("ascii")
    except UnicodeDecodeError:
        return 400, _json({"error": "request target is not ASCII"}), _JSON
    route = routes.get(path)
    if route is None:
        return 404, _json({"error": "not found", "path": path}), _JSON
    if request.method not in _ALLOWED_METHODS:
        return 405, _json({"error": "method not allowed", "allow": ["GET", "HEAD"]}), _JSON
    try:
        return route()
    except Exception:  # noqa: BLE001 - a failing probe answers 500, the server stays up
        log.exception("HTTP handler failed", extra={"path": path})
        return 500, _json({"error": "internal error"}), _JSON


async def _send(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool,
    close: bool,
    allow: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    if close:
        headers.append((b"connection", b"close"))
    parts = [conn.send(h11.Response(status_code=status, headers=headers))]
    if body and not head_only:
        parts.append(conn.send(h11.Data(data=body)))
    parts.append(conn.send(h11.EndOfMessage()))
    await stream.send_all(b"".join(p for p in parts if p))


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")


# --------------------------------------------------------------------------- routes


def health_routes(
    metrics: RecorderMetrics,
    is_alive: Callable[[], bool],
    readiness: Callable[[], tuple[bool, dict[str, Any]]],
) -> dict[str, Route]:
    """The service's HTTP routes.

    Args:
        metrics: rendered at ``/metrics`` in the Prometheus text format.
        is_alive: ``/healthz`` answers 200 ``{"status":"ok"}`` while it returns
            True, else 503 ``{"status":"unhealthy"}`` (a liveness probe: restart me).
        readiness: returns (ready, details); ``/readyz`` answers 200 when ready,
            else 503, with ``{"status": "ready"|"not ready", **details}`` as
            JSON. The service passes
            :meth:`~edge_recorder.session.manager.SessionManager.readiness`,
            the one readiness implementation.

    Returns:
        path → handler, for :func:`serve_http`.
    """

    def metrics_route() -> tuple[int, bytes, str]:
        body, content_type = metrics.render()
        return 200, body, content_type

    def healthz() -> tuple[int, bytes, str]:
        if is_alive():
            return 200, _json({"status": "ok"}), _JSON
        return 503, _json({"status": "unhealthy"}), _JSON

    def readyz() -> tuple[int, bytes, str]:
        ready, details = readiness()
        body = {"status": "ready" if ready else "not ready", **details}
        return (200 if ready else 503), _json(body), _JSON

    return {"/metrics": metrics_route, "/healthz": healthz, "/readyz": readyz}
