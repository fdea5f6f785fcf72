"""The control plane's Trio shell: WebSocket connections speaking JSON-RPC 2.0.

The parsing, params and error mapping are pure (``control/protocol.py``);
this module only moves frames. One :class:`ControlHub` serves every
connection, listening ones (:func:`~edge_recorder.control.listener.serve_control`) and the dial-out one
(:func:`dial_out`) alike:

* a connection asks the :class:`~edge_recorder.session.manager.SessionManager`
  and never owns a session, so a dropped WebSocket ends no recording; the
  connections that drove a session are its controllers (see the manager);
* every reply and notification for a connection goes through its outbox,
  bounded by ``OUTBOX_MESSAGES`` messages and ``OUTBOX_BYTES`` bytes, and one
  writer task, so notifications arrive in order. Policy when an outbox is
  full (either bound; counted in ``edge_recorder_control_outbox_overflows_total{limit}``):
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

The listener, with its admission rules, is :mod:`edge_recorder.control.listener`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
import random
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from edge_recorder import __version__
from edge_recorder.config import Settings
from edge_recorder.control import protocol as rpc
from edge_recorder.errors import (
    EdgeRecorderError,
    NodeUnavailableError,
    SessionNotActiveError,
    UnknownSessionError,
    public_message,
)
from edge_recorder.metrics import RecorderMetrics
from edge_recorder.rtp.parameters import recorder_rtp_capabilities
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import OutputOptions, RecordingSession
from edge_recorder.session.stream import StreamSpec
from edge_recorder.state.store import StateStore

if TYPE_CHECKING:
    from edge_recorder.fleet.router import FleetRouter
    from edge_recorder.metadata import MetadataStore
    from edge_recorder.sink.store import RecordingStore

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
        manager: SessionManager[RecordingSession],
        settings: Settings,
        *,
        clock: Callable[[], float] = trio.current_time,
        state: StateStore | None = None,
        store: RecordingStore | None = None,
        metadata: MetadataStore | None = None,
        metrics: RecorderMetrics | None = None,
        fleet: FleetRouter | None = None,
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
        # In a fleet: requests for other nodes' sessions go there, and their
        # notifications come here (edge_recorder.fleet.router).
        self.fleet = fleet
        if fleet is not None:
            fleet.bind(self.run_here, self.broadcast)

    # -- notifications (called synchronously, in order, from the sessions) -----------

    def _on_state(self, session: RecordingSession) -> None:
        self._announce(rpc.state_notification(public_record(session.state_record().to_wire())))

    def _on_keyframe_request(self, session: RecordingSession, spec: StreamSpec) -> None:
        self._announce(rpc.keyframe_request_notification(session.session_id, spec.producer_id))

    def _announce(self, message: str) -> None:
        """A notification of this node's session: to our connections and, in a fleet, every other node's."""
        self.broadcast(message)
        if self.fleet is not None:
            self.fleet.publish(message)

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
            if self.fleet is not None:
                self.fleet.connection_closed(conn.id)
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
        """Run one request, here or (in a fleet) on the node that owns or gets its session.

        Returns its result or raises one of our errors (a forwarded request's
        error as the owner sent it).
        """
        params = rpc.parse_request_params(request.method, request.params, request.id)
        if self.fleet is not None:
            if isinstance(params, rpc.StartParams):
                return await self.fleet.start(connection_id, request, params)
            session_id = getattr(params, "session_id", None)
            if isinstance(params, _FORWARDED_PARAMS) and isinstance(session_id, str):
                owner = await self.fleet.owner_of(session_id)
                if owner is not None:
                    try:
                        return (await self.fleet.forward(owner, connection_id, request)).result
                    except NodeUnavailableError:
                        if not isinstance(params, rpc.GetParams):
                            raise
                        # recording.get still answers, from shared state.
        return await self._run(connection_id, request, params)

    async def run_here(self, connection_id: str, request: rpc.Request) -> Any:
        """Run one request on this node, never forwarded (the fleet router's door back in)."""
        return await self._run(connection_id, request, rpc.parse_request_params(request.method, request.params, request.id))

    async def _run(self, connection_id: str, request: rpc.Request, params: rpc.Params) -> Any:
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
                output=self._output(params.output, params.outputs),
                controller=connection_id,
                metadata=params.metadata,
                host_peer_id=params.host_peer_id,
            )
            return {"sessionId": session.session_id, "status": session.status.value}
        if isinstance(params, rpc.ListParams):
            records = {s.session_id: s.state_record().to_wire() for s in self.manager.sessions.values()}
            if self._state is not None:
                for shared in await self._state.list(500):
                    records.setdefault(shared["sessionId"], shared)
            return {"sessions": [public_record(r) for r in records.values()]}
        if isinstance(params, rpc.GetParams):
            found = (
                self.manager.get(params.session_id) if params.session_id is not None else self.manager.by_room(params.room_id or "")
            )
            record = found.state_record().to_wire() if found is not None else None
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
            if found is None and self._metadata is not None and record.get("events") == []:
                # The audit trail outlives the session (and a crash): every event, from its own table.
                record = {**record, "events": await self._metadata.control_events(str(record["sessionId"]))}
            return await self._with_presigned_url(public_record(record))
        session = self.manager.require(params.session_id)
        if isinstance(params, rpc.StopParams):
            await session.stop(params.reason)
            return {"sessionId": session.session_id, "status": session.status.value}
        if session.stopping or session.status.terminal:
            raise SessionNotActiveError(f"session {session.session_id} is {session.status.value}{' and stopping' if session.stopping and not session.status.terminal else ''}")
        self.manager.attach_controller(session.session_id, connection_id)
        if isinstance(params, rpc.AddStreamParams):
            return await session.add_stream(params.spec)
        if isinstance(params, rpc.RemoveStreamParams):
            await session.remove_stream(params.producer_id)
            return {}
        if isinstance(params, rpc.SetActiveSpeakerParams):
            await session.set_active_speaker(params.peer_id)
            return {}
        # Issue #13's controls: each change is an event naming who asked.
        conn = self.connections.get(connection_id)
        asked = {"connection": connection_id, "remote": conn.remote if conn is not None else None}
        if isinstance(params, rpc.PauseParams):
            return await session.pause(**asked)
        if isinstance(params, rpc.ResumeParams):
            return await session.resume(**asked)
        if isinstance(params, rpc.UpdateLayoutParams):
            return await session.update_layout(
                layout=params.layout,
                spotlight=params.spotlight,
                set_spotlight=params.set_spotlight,
                overlay_corner=params.overlay_corner,
                overlay_width_pct=params.overlay_width_pct,
                **asked,
            )
        if isinstance(params, rpc.PeerParams):
            try:
                return await session.set_peer_excluded(params.peer_id, params.exclude, **asked)
            except ValueError as exc:
                raise rpc.JsonRpcError(rpc.ErrorCode.INVALID_PARAMS, str(exc), {"field": "peerId"}, request.id) from None
        raise AssertionError(f"unhandled params {type(params).__name__}")

    async def _with_presigned_url(self, record: dict[str, Any]) -> dict[str, Any]:
        asset = record.get("asset")
        if self._store is None or not self.settings.s3.presign_in_state or not asset or not asset.get("key"):
            return record
        url = await self._store.presign(asset["key"], self.settings.s3.presign_expiry_s)
        return {**record, "asset": {**asset, "url": url}}

    def _output(self, output: rpc.OutputParams | None, outputs: tuple[rpc.OutputKind, ...] | None) -> OutputOptions | None:
        tracks = outputs is not None and "tracks" in outputs
        audio = outputs is not None and "audio" in outputs
        composite = outputs is None or "composite" in outputs
        if output is None and not tracks and not audio:
            return None
        base = OutputOptions.from_settings(self.settings)
        if output is None:
            return dataclasses.replace(base, tracks=tracks, audio=audio, composite=composite)
        return OutputOptions(
            width=output.width or base.width,
            height=output.height or base.height,
            fps=output.fps or base.fps,
            video_bitrate_kbps=(output.video_bitrate // 1000) if output.video_bitrate else base.video_bitrate_kbps,
            audio_bitrate_kbps=(output.audio_bitrate // 1000) if output.audio_bitrate else base.audio_bitrate_kbps,
            x264_preset=base.x264_preset,
            keyframe_interval_s=base.keyframe_interval_s,
            x264_threads=base.x264_threads,
            tracks=tracks,
            audio=audio,
            composite=composite,
        )


# The requests for one session that its owner answers (``recording.start`` is placed instead).
_FORWARDED_PARAMS = (
    rpc.AddStreamParams,
    rpc.RemoveStreamParams,
    rpc.SetActiveSpeakerParams,
    rpc.StopParams,
    rpc.PauseParams,
    rpc.ResumeParams,
    rpc.UpdateLayoutParams,
    rpc.PeerParams,
    rpc.GetParams,
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
