"""The session manager: owns every recording's nursery.

A control connection asks the manager to start, change or stop a session; it
never owns one, so a dropped WebSocket cannot end a recording. The manager's
own nursery is opened by the service (or the demo) and lives as long as it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import trio

from edge_recorder.errors import SessionError
from edge_recorder.session.ports import PortAllocator
from edge_recorder.session.session import OutputOptions, RecordingSession
from edge_recorder.session.stream import StreamSpec

log = logging.getLogger(__name__)


class SessionManager:
    """Starts, finds and stops recordings.

    Args:
        settings: the service settings.
        on_change: called after every status change of any session.
        on_keyframe_request: called when any stream asks for a keyframe.
    """

    def __init__(
        self,
        settings: Any,
        *,
        on_change: Callable[[RecordingSession], None] | None = None,
        on_keyframe_request: Callable[[RecordingSession, StreamSpec], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ports = PortAllocator(
            settings.bind_ip,
            settings.port_min,
            settings.port_max,
            receive_buffer_bytes=settings.ingest.udp_receive_buffer_bytes,
        )
        self.sessions: dict[str, RecordingSession] = {}
        self._on_change = on_change
        self._on_keyframe_request = on_keyframe_request
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery until cancelled (which fails open sessions)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def active(self) -> list[RecordingSession]:
        return [s for s in self.sessions.values() if not s.status.terminal]

    async def start(
        self,
        room_id: str,
        *,
        session_id: str | None = None,
        layout: str | None = None,
        output: OutputOptions | None = None,
    ) -> RecordingSession:
        """Start a recording and return once it is RECORDING (or FAILED).

        Raises:
            SessionError: the manager is not running.
        """
        if self._nursery is None:
            raise SessionError("the session manager is not running")
        session = RecordingSession(
            session_id=session_id,
            room_id=room_id,
            settings=self.settings,
            ports=self.ports,
            layout=layout,
            output=output,
            on_change=self._on_change,
            on_keyframe_request=self._on_keyframe_request,
        )
        self.sessions[session.session_id] = session
        await self._nursery.start(self._run_session, session)
        return session

    async def _run_session(self, session: RecordingSession, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await session.run(task_status=task_status)
        except Exception:  # noqa: BLE001 - a bug in one session must not end the others
            log.exception("session crashed", extra={"sessionId": session.session_id})

    def get(self, session_id: str) -> RecordingSession | None:
        return self.sessions.get(session_id)

    async def stop_all(self, reason: str) -> None:
        """Stop every active session concurrently and wait for all of them."""
        async with trio.open_nursery() as nursery:
            for session in self.active():
                nursery.start_soon(session.stop, reason)
