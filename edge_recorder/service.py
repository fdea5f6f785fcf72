"""``edge-recorder serve``: everything in one top-level nursery.

::

    serve (top nursery)
    ├── SessionManager.run      every recording's nursery lives here
    ├── serve_http              /metrics, /healthz, /readyz
    ├── serve_control           the SFU's WebSocket (JSON-RPC 2.0)
    └── dial_out                optional: the same protocol over a connection we open

Around the sessions (issue #4): every status change goes through the
:class:`~edge_recorder.bookkeeping.Bookkeeper` to SQL, shared state and
webhooks; sessions stream their spool to the bucket while recording; a
scheduled cleanup removes old local artifacts (never ones that are not safely
uploaded).

The adapters (metadata, shared state, webhooks, the bucket) are assembled by
:func:`edge_recorder.wiring.build_parts`, which the operator commands use too.

Start-up order, so that no request can race what is already on disk:

1. the node's spool directory is locked (``RECORDING_TMP_DIR/<serverId>``; a
   second node on it refuses to start, naming the holder);
2. the database is migrated, and the sessions a previous run left unfinished
   are read and *fenced*: a ``recording.start`` with one of their ids is
   answered with its record while recovery finishes it in the background;
3. only then does the control port accept connections. ``recording.start``
   with any id already known to shared state or the database answers with
   that recording, never a new one over it.

Shutdown is three steps, :class:`Shutdown` and :func:`next_shutdown_step`:

1. **Drain** (SIGTERM, or ``drain`` set in tests): take no new recording
   (``/readyz`` turns 503, the registration says ``draining`` at once so no
   node places one here, starts get ``SHUTTING_DOWN``) and let the live ones
   run to their natural end (the SFU's stop, the auto-stop rules), for up to
   ``RECORDING_DRAIN_DEADLINE_S``. A rolling update or a scale-down cuts no
   meeting short. The control connections stay open meanwhile.
2. **Finalise** (the deadline, a second signal, SIGINT, or ``shutdown`` in
   tests; at once when the deadline is 0): stop every session left with reason
   ``shutdown`` and wait for their files within ``RECORDING_DRAIN_TIMEOUT_S``,
   then exit 0.
3. **Force** (one more signal): sessions are cancelled, their workers killed,
   their files kept up to the last complete fragment.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from edge_recorder.bookkeeping import Bookkeeper
from edge_recorder.config import Settings
from edge_recorder.control.listener import serve_control
from edge_recorder.control.server import ControlHub, dial_out, dial_url_warning
from edge_recorder.doctor import log_startup_probes
from edge_recorder.errors import ConfigError
from edge_recorder.fleet.relay import FleetRelay
from edge_recorder.fleet.router import FleetRouter
from edge_recorder.fleet.slots import FleetSlots
from edge_recorder.housekeeping import cleanup
from edge_recorder.http import health_routes, serve_http
from edge_recorder.metrics import NodeReadings, RecorderMetrics
from edge_recorder.recovery import record_from_row, recover_session
from edge_recorder.session.manager import Intake, SessionManager
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.spool import NodeSpool
from edge_recorder.webhooks import transport_warnings
from edge_recorder.wiring import ServiceParts, build_parts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceAddresses:
    """What the service bound, reported through ``nursery.start``."""

    control: tuple[str, int]
    http: tuple[str, int]


class Shutdown(enum.Enum):
    """How far the service is on its way out; only ever moves forward."""

    SERVING = "serving"
    DRAINING = "draining"
    FINALISING = "finalising"
    FORCED = "forced"


def next_shutdown_step(step: Shutdown, signum: int | None, drain_deadline_s: float) -> Shutdown:
    """The step after a signal (``signum``; None: the deadline passed).

    SIGTERM while serving drains, unless the deadline is 0; SIGINT (an operator
    at a terminal) and anything while draining finalise; anything while
    finalising forces. Pure.
    """
    if step is Shutdown.SERVING:
        return Shutdown.DRAINING if signum == signal.SIGTERM and drain_deadline_s > 0 else Shutdown.FINALISING
    if step is Shutdown.DRAINING:
        return Shutdown.FINALISING
    return Shutdown.FORCED


# A host name of 12 or 64 hex digits is what a container runtime makes up.
_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{12}|[0-9a-f]{64}")


def identity_warning(settings: Settings) -> str | None:
    """Why this node's id will not survive a restart, or None.

    Crash recovery finds a node's unfinished recordings by its server id; a
    container's made-up host name changes on every start.
    """
    if not _CONTAINER_ID_RE.fullmatch(settings.server_id):
        return None
    return (
        f"RECORDING_SERVER_ID is {settings.server_id}, which looks like a container's generated host name: "
        "a restarted container gets a new one and never recovers what this one leaves after a crash. "
        "Set RECORDING_SERVER_ID (or --hostname), or run as a StatefulSet"
    )


def check_control_exposure(settings: Settings) -> None:
    """Refuse a control port open to the network without a token.

    Raises:
        ConfigError: non-loopback ``RECORDING_CONTROL_HOST``, no
            ``RECORDING_CONTROL_TOKEN`` and no ``RECORDING_CONTROL_ALLOW_INSECURE``.
    """
    control = settings.control
    if control.token is None and not control.allow_insecure and not ipaddress.ip_address(control.host).is_loopback:
        raise ConfigError(
            "RECORDING_CONTROL_TOKEN",
            f"is unset while RECORDING_CONTROL_HOST={control.host} is not a loopback address: anyone who "
            "reaches the port could start recordings. Set a token, or RECORDING_CONTROL_ALLOW_INSECURE=true "
            "if the network is trusted",
        )


def log_startup_warnings(settings: Settings) -> list[str]:
    """Log, as WARNING, settings that work but expose something (issue #9); returns the texts.

    Unsigned or plain-http webhooks to a non-loopback host, and a control token
    sent over ``ws://`` to a non-loopback dial-out URL.
    """
    state, control = settings.state, settings.control
    texts = transport_warnings(state.webhook_urls, state.webhook_secret is not None)
    identity = identity_warning(settings)
    if identity is not None:
        texts.append(identity)
    if control.dial_url:
        dial = dial_url_warning(control.dial_url, control.token is not None)
        if dial is not None:
            texts.append(dial)
    for text in texts:
        log.warning("Insecure setting: %s", text)
    return texts


def _track(metrics: RecorderMetrics, manager: SessionManager[RecordingSession], session: RecordingSession) -> None:
    """Keep the runbook's counters in step with session status changes."""
    if session.status is SessionStatus.RECORDING:
        metrics.session_started()
    elif session.status is SessionStatus.COMPLETED:
        metrics.session_completed(session.duration_s)
    elif session.status is SessionStatus.FAILED:
        metrics.session_failed(session.reason or "error")
    if session.status.terminal:
        metrics.retire_session(session)
    metrics.set_active(len(manager.active()))


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    drain: trio.Event | None = None,
    task_status: trio.TaskStatus[ServiceAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until a signal (or ``shutdown``) and a drain.

    Args:
        settings: validated settings.
        shutdown: set to finalise the recordings and return, as SIGINT would (for tests).
        drain: set to drain, as SIGTERM would (for tests).

    Raises:
        ConfigError: the control exposure check failed (before anything binds).
    """
    check_control_exposure(settings)
    log_startup_warnings(settings)
    spool = NodeSpool(Path(settings.tmp_dir), settings.server_id)
    # Before anything else: a second node on this spool must not touch it.
    await trio.to_thread.run_sync(spool.acquire)
    try:
        await _serve(settings, spool, shutdown=shutdown, drain=drain, task_status=task_status)
    finally:
        spool.release()


async def _serve(
    settings: Settings,
    spool: NodeSpool,
    *,
    shutdown: trio.Event | None,
    drain: trio.Event | None,
    task_status: trio.TaskStatus[ServiceAddresses],
) -> None:
    parts = await build_parts(settings)
    metrics = RecorderMetrics(settings.server_id)
    # What a previous run left unfinished, read before the control port opens.
    try:
        leftover: list[dict[str, Any]] = await parts.metadata.nonterminal_sessions(settings.server_id)
    except BaseException:
        with trio.move_on_after(5, shield=True):
            await parts.aclose()
        raise
    fenced = {str(row["sessionId"]): row for row in leftover}
    manager = SessionManager(
        settings,
        enforce_enabled=True,
        destination=parts.destination,
        known_session=partial(_known_session, parts, fenced),
        defer_spool_removal=True,
    )
    manager.add_state_listener(partial(_track, metrics, manager))
    bookkeeper = Bookkeeper(
        settings,
        metadata=parts.metadata,
        state=parts.state,
        webhooks=parts.webhooks,
        active_sessions=manager.active,
        capacity=manager.capacity,
    )
    manager.add_state_listener(bookkeeper.on_change)
    metrics.watch_metadata_backlog(lambda: bookkeeper.pending)
    metrics.attach(manager.active)
    metrics.watch_capacity(manager.free_slots, manager.total_slots, lambda: manager.intake is not Intake.OPEN)
    metrics.watch_node(
        NodeReadings(
            udp_ports_in_use=lambda: len(manager.ports.in_use),
            udp_ports=lambda: manager.ports.capacity,
            spool_free_bytes=manager.spool.free_bytes,
            upload_backlog_bytes=lambda: sum(_upload_backlog(s) for s in manager.active()),
            shared_state_up=lambda: 1.0 if getattr(parts.state, "connected", True) else 0.0,
            database_up=lambda: 1.0 if bookkeeper.database_up else 0.0,
            heartbeat_last_success=lambda: bookkeeper.last_heartbeat_s,
        )
    )
    if parts.webhooks is not None:
        webhooks = parts.webhooks
        metrics.watch_webhooks(
            lambda: {
                "delivered": webhooks.stats.delivered,
                "failed": webhooks.stats.failed,
                "dropped": webhooks.stats.dropped,
                "retried": webhooks.stats.retries,
            }
        )
    fleet = _fleet_router(settings, parts, manager)
    if fleet is not None:
        metrics.watch_fleet(fleet.counters)
    hub = ControlHub(
        manager, settings, state=parts.state, store=parts.store, metadata=parts.metadata, metrics=metrics, fleet=fleet
    )
    alive = True
    control = settings.control
    try:
        async with trio.open_nursery() as top:
            await top.start(parts.run_state)
            # What `edge-recorder check` says, in the log (never blocks the start).
            top.start_soon(log_startup_probes, settings)
            if parts.webhooks is not None:
                await top.start(parts.webhooks.run)
            top.start_soon(bookkeeper.run)
            if fleet is not None:
                await top.start(fleet.run)
            await top.start(manager.run)
            top.start_soon(_recover_then_clean, settings, parts, bookkeeper, leftover, fenced)
            routes = health_routes(metrics, lambda: alive, manager.readiness)
            http_address = await top.start(
                partial(
                    serve_http,
                    control.metrics_host,
                    control.metrics_port,
                    routes,
                    request_timeout_s=control.metrics_request_timeout_s,
                    max_connections=control.metrics_max_connections,
                    metrics=metrics,
                )
            )
            control_address = await top.start(serve_control, hub)
            if control.dial_url:
                top.start_soon(dial_out, hub, control.dial_url)
            log.info(
                "edge-recorder serving",
                extra={"control": f"ws://{control_address[0]}:{control_address[1]}{control.path}", "http": f"{http_address[0]}:{http_address[1]}", "settings": settings.describe()},
            )
            task_status.started(ServiceAddresses(control=control_address, http=http_address))

            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                step = Shutdown.SERVING
                moved = trio.lowlevel.ParkingLot()

                def advance(signum: int | None, why: str) -> None:
                    nonlocal step
                    following = next_shutdown_step(step, signum, settings.lifecycle.drain_deadline_s)
                    if following is step:
                        return
                    step = following
                    if step is Shutdown.DRAINING:
                        log.info(
                            "Draining: no new recordings; the live ones run to their end",
                            extra={"why": why, "active": len(manager.active()), "deadlineS": settings.lifecycle.drain_deadline_s},
                        )
                    elif step is Shutdown.FINALISING:
                        log.info("Shutting down: finalising the recordings", extra={"why": why, "active": len(manager.active())})
                    else:
                        log.warning("Forcing the stop", extra={"why": why})
                        top.cancel_scope.cancel()
                    moved.unpark_all()

                async def on_signal() -> None:
                    async for signum in signals:
                        advance(signum, signal.Signals(signum).name)

                async def on_event(event: trio.Event | None, signum: int) -> None:
                    if event is not None:
                        await event.wait()
                        advance(signum, "requested")

                top.start_soon(on_signal)
                top.start_soon(on_event, shutdown, signal.SIGINT)
                top.start_soon(on_event, drain, signal.SIGTERM)
                while step is Shutdown.SERVING:
                    await moved.park()
                if step is Shutdown.DRAINING:
                    manager.intake = Intake.DRAINING
                    bookkeeper.beat_now()  # placement elsewhere skips this node from now on
                    with trio.move_on_after(settings.lifecycle.drain_deadline_s) as deadline:
                        async with trio.open_nursery() as waiting:

                            async def finalise_requested() -> None:
                                while step is Shutdown.DRAINING:
                                    await moved.park()
                                waiting.cancel_scope.cancel()

                            waiting.start_soon(finalise_requested)
                            await manager.wait_idle()
                            log.info("Drained: every recording ended")
                            waiting.cancel_scope.cancel()
                    if deadline.cancelled_caught:
                        advance(None, "RECORDING_DRAIN_DEADLINE_S passed")
                manager.intake = Intake.CLOSED
                with trio.move_on_after(settings.lifecycle.drain_timeout_s) as finalising:
                    await manager.stop_all("shutdown")
                    # A stop returns once the media is final (UPLOADING to a
                    # bucket); the last parts are still going up: wait for them,
                    # or the cancellation below would fail uploads at the finish.
                    await manager.wait_idle()
                if finalising.cancelled_caught:
                    log.error("RECORDING_DRAIN_TIMEOUT_S passed while finalising; cancelling the remaining recordings")
                # Let every SFU read the final state notifications before we go.
                with trio.move_on_after(5):
                    await hub.close_all()
                # Every final row written before the writer is cancelled.
                with trio.move_on_after(10) as settle:
                    await bookkeeper.settle()
                if settle.cancelled_caught:
                    log.error(
                        "metadata records not written at shutdown; the next start recovers those sessions",
                        extra={"pending": bookkeeper.pending},
                    )
                alive = False
                top.cancel_scope.cancel()
    finally:
        # Close the database and Redis connections even when cancelled.
        with trio.move_on_after(5, shield=True):
            await parts.aclose()


def _upload_backlog(session: RecordingSession) -> int:
    """Bytes of complete fragments the session wrote that its destination has not safely stored yet."""
    if not session.destination.removes_spool:
        return 0  # a local destination keeps the file where it is written
    return max(0, session.complete_bytes - session.destination.uploaded_bytes)


def _fleet_router(settings: Settings, parts: ServiceParts, manager: SessionManager[RecordingSession]) -> FleetRouter | None:
    """The fleet's router, with Redis and ``RECORDING_FLEET``; None: this node answers for its own sessions only."""
    if parts.redis is None or not settings.state.fleet:
        return None
    redis = parts.redis

    def relay_for(router: FleetRouter) -> FleetRelay:
        return FleetRelay(
            redis,
            settings.server_id,
            handler=router.answer,
            on_notification=router.on_notification,
            on_touch=router.on_touch,
        )

    return FleetRouter(settings, manager, parts.state, FleetSlots(redis), relay_for)


async def _known_session(parts: ServiceParts, fenced: dict[str, dict[str, Any]], session_id: str) -> dict[str, Any] | None:
    """``session_id``'s durable record: under recovery, in shared state, or in the database."""
    if session_id in fenced:
        return record_from_row(fenced[session_id])
    record: dict[str, Any] | None = await parts.state.get(session_id)
    if record is not None:
        return record
    row = await parts.metadata.get_session(session_id)
    return record_from_row(row, with_asset=True) if row is not None else None


async def _recover_then_clean(
    settings: Settings,
    parts: ServiceParts,
    bookkeeper: Bookkeeper,
    leftover: list[dict[str, Any]],
    fenced: dict[str, dict[str, Any]],
) -> None:
    """Recover what a previous run left (fenced until done), then clean up old artifacts on a schedule."""
    for row in leftover:
        sid = str(row["sessionId"])
        log.warning("Recovering a recording left by a previous run", extra={"sessionId": sid, "status": row.get("status")})
        try:
            # What shared state still knows of its streams names the tracks' peers in a rebuilt manifest.
            last = await parts.state.get(sid)
            await recover_session(row, settings, bookkeeper=bookkeeper, uploader_for=parts.uploader_for, last_record=last)
        except Exception:
            log.exception("recovery failed; the session stays as the database says", extra={"sessionId": sid})
        finally:
            # The database now tells (the bookkeeper queued the final record);
            # until it is written the lookup still finds the row as it was.
            fenced.pop(sid, None)
    interval = settings.state.cleanup_older_than_s
    if interval <= 0:
        return
    while True:
        try:
            await cleanup(settings, parts.metadata, older_than_s=interval, force=False)
        except Exception:
            log.exception("scheduled cleanup failed")
        await trio.sleep(min(3600.0, interval))
