"""``edge-recorder serve``: everything in one top-level nursery.

::

    serve (top nursery)
    ├── SessionManager.run      every recording's nursery lives here
    ├── serve_http              /metrics, /healthz, /readyz
    ├── serve_control           the SFU's WebSocket (JSON-RPC 2.0)
    └── dial_out                optional: the same protocol over a connection we open

Shutdown (SIGTERM or SIGINT, or ``shutdown`` set in tests): stop accepting
work (``/readyz`` turns 503, starts get ``SHUTTING_DOWN``), stop every session
with reason ``shutdown`` and wait for their files within
``RECORDING_DRAIN_TIMEOUT_S``, then exit 0. A second signal forces the stop:
sessions are cancelled, their workers killed, their files kept up to the last
complete fragment.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from edge_recorder.control.server import ControlHub, dial_out, serve_control
from edge_recorder.errors import ConfigError
from edge_recorder.http import health_routes, serve_http
from edge_recorder.metrics import RecorderMetrics
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import SessionStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceAddresses:
    """What the service bound, reported through ``nursery.start``."""

    control: tuple[str, int]
    http: tuple[str, int]


def check_control_exposure(settings: Any) -> None:
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


def _track(metrics: RecorderMetrics, manager: SessionManager, session: RecordingSession) -> None:
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
    settings: Any,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[ServiceAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until a signal (or ``shutdown``) and a drain.

    Args:
        settings: validated settings.
        shutdown: set to drain and return, as SIGTERM would (for tests).

    Raises:
        ConfigError: the control exposure check failed (before anything binds).
    """
    check_control_exposure(settings)
    metrics = RecorderMetrics(settings.server_id)
    manager = SessionManager(settings, enforce_enabled=True)
    manager.add_state_listener(partial(_track, metrics, manager))
    metrics.attach(manager.active)
    hub = ControlHub(manager, settings)
    alive = True
    control = settings.control
    async with trio.open_nursery() as top:
        await top.start(manager.run)
        routes = health_routes(metrics, lambda: alive, manager.readiness)
        http_address = await top.start(serve_http, control.metrics_host, control.metrics_port, routes)
        control_address = await top.start(serve_control, hub)
        if control.dial_url:
            top.start_soon(dial_out, hub, control.dial_url)
        log.info(
            "edge-recorder serving",
            extra={"control": f"ws://{control_address[0]}:{control_address[1]}{control.path}", "http": f"{http_address[0]}:{http_address[1]}", "settings": settings.describe()},
        )
        task_status.started(ServiceAddresses(control=control_address, http=http_address))

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            first = trio.Event()

            async def on_signal() -> None:
                async for signum in signals:
                    if not first.is_set():
                        log.info("Shutting down: draining recordings", extra={"signal": signal.Signals(signum).name})
                        first.set()
                    else:
                        log.warning("Second signal: forcing the stop", extra={"signal": signal.Signals(signum).name})
                        top.cancel_scope.cancel()

            async def on_event() -> None:
                if shutdown is not None:
                    await shutdown.wait()
                    first.set()

            top.start_soon(on_signal)
            top.start_soon(on_event)
            await first.wait()
            manager.accepting = False
            with trio.move_on_after(settings.lifecycle.drain_timeout_s) as drain:
                await manager.stop_all("shutdown")
            if drain.cancelled_caught:
                log.error("Drain deadline passed; cancelling the remaining recordings")
            # Let every SFU read the final state notifications before we go.
            with trio.move_on_after(5):
                await hub.close_all()
            alive = False
            top.cancel_scope.cancel()
